//! Text built from what a peer sent, made safe for one log line.
//!
//! Anything an unauthenticated sender controls (proposals, identities, certificate names, selectors) may be
//! tens of kilobytes long and hold newlines or terminal escapes. Before it goes into an event or a reason it is
//! cut to a bounded length, saying how much was left out, and every control character is escaped, so one
//! datagram is at most one short log line and cannot forge others.

/// Characters of peer-supplied text kept in one field of an event or reason.
pub const MAX_UNTRUSTED_CHARS: usize = 200;

/// `s` with control characters escaped (`\n`, `\u{1b}`, ...) and cut after [`MAX_UNTRUSTED_CHARS`]
/// characters, followed by `... (N more)` when something was cut.
pub fn untrusted(s: &str) -> String {
    capped(s, MAX_UNTRUSTED_CHARS)
}

/// [`untrusted`] with another limit.
pub fn capped(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(2)) + 24);
    let mut chars = s.chars();
    for (kept, c) in chars.by_ref().enumerate() {
        if kept == max {
            let more = 1 + chars.count();
            out.push_str(&format!("... ({more} more)"));
            return out;
        }
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202e}' | '\u{200f}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_caps() {
        assert_eq!(untrusted("plain"), "plain");
        assert_eq!(untrusted("a\nb\r\x1b[31m"), "a\\nb\\r\\u{1b}[31m");
        let long = "x\n".repeat(20_000);
        let u = untrusted(&long);
        assert!(!u.contains('\n'));
        assert!(u.ends_with("... (39800 more)"), "{u}");
        assert!(u.len() < 3 * MAX_UNTRUSTED_CHARS, "{}", u.len());
        // Idempotent on safe short text.
        assert_eq!(untrusted(&untrusted("a\nb")), untrusted("a\nb"));
    }
}
