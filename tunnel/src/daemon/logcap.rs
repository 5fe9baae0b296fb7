//! Log lines that carry what an unauthenticated sender chose (its proposals, identities, addresses, the error
//! text of an `ike` event about it): capped, escaped and rate-limited here, at the daemon's logging layer, so that
//! a flood of datagrams cannot fill the disk, hide the lines that matter, or forge lines of its own (a newline
//! and a fake timestamp in a proposal). The `ike` crate caps its own strings too; this is the second line.

use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

/// The most bytes of one value a log line shows (after escaping); the rest is counted, not shown.
pub(crate) const MAX_FIELD: usize = 256;

/// `value` as it may go into a log line: control characters (newlines, escape sequences, DEL, C1), and the
/// Unicode characters that reorder or hide text (bidi controls, zero-width) written as `\u{..}`; at most `max`
/// bytes, then `... (N more bytes)`. Never holds more than `max` bytes plus the escape of one character and
/// the note, whatever `value` formats to.
pub(crate) fn clean(value: &dyn fmt::Display, max: usize) -> String {
    struct Capped {
        out: String,
        max: usize,
        dropped: usize,
    }
    impl fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            for c in s.chars() {
                if self.out.len() >= self.max {
                    self.dropped += c.len_utf8();
                } else if needs_escape(c) {
                    let _ = write!(self.out, "\\u{{{:x}}}", u32::from(c));
                } else {
                    self.out.push(c);
                }
            }
            Ok(())
        }
    }
    let mut w = Capped {
        out: String::new(),
        max,
        dropped: 0,
    };
    let _ = write!(w, "{value}");
    if w.dropped > 0 {
        let _ = write!(w.out, "... ({} more bytes)", w.dropped);
    }
    w.out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Zero-width and bidi controls: text that displays differently from what it is.
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2028}' | '\u{2029}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// A token bucket for one kind of log line: `burst` lines at once, then `per_second`; what it holds back is
/// counted and reported in one summary line.
#[derive(Debug)]
pub(crate) struct Limiter {
    kind: &'static str,
    burst: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
    suppressed: u64,
    /// When the first suppressed line of the current run came.
    since: Option<Instant>,
}

/// What [`Limiter::decide`] says about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Log it; first report that `suppressed` lines were held back over `over` (if any were).
    Log { suppressed: u64, over: Duration },
    /// Hold it back (counted).
    Suppress,
}

impl Limiter {
    /// A limiter for lines of `kind` (named in the summary line).
    pub(crate) const fn new(kind: &'static str, burst: u32, per_second: u32) -> Limiter {
        Limiter {
            kind,
            burst: burst as f64,
            per_second: per_second as f64,
            tokens: burst as f64,
            last: None,
            suppressed: 0,
            since: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.per_second).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Whether a line may be logged at `now`, without logging anything.
    pub(crate) fn decide(&mut self, now: Instant) -> Decision {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            let d = Decision::Log {
                suppressed: self.suppressed,
                over: self
                    .since
                    .map_or(Duration::ZERO, |s| now.saturating_duration_since(s)),
            };
            self.suppressed = 0;
            self.since = None;
            d
        } else {
            self.suppressed += 1;
            self.since.get_or_insert(now);
            Decision::Suppress
        }
    }

    /// True if a line may be logged now; logs first how many were suppressed since the last one that was.
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        match self.decide(now) {
            Decision::Log { suppressed, over } => {
                if suppressed > 0 {
                    self.summary(suppressed, over);
                }
                true
            }
            Decision::Suppress => false,
        }
    }

    /// Reports suppressed lines once the flood is over (no line of this kind may come to carry the summary):
    /// called every second or so.
    pub(crate) fn flush(&mut self, now: Instant) {
        self.refill(now);
        if self.suppressed > 0 && self.tokens >= 1.0 {
            let over = self
                .since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
            let n = std::mem::take(&mut self.suppressed);
            self.since = None;
            self.summary(n, over);
        }
    }

    fn summary(&self, n: u64, over: Duration) {
        tracing::warn!(
            kind = self.kind,
            "suppressed {n} similar messages ({}) in the last {:.0} s",
            self.kind,
            over.as_secs_f64().max(1.0)
        );
    }
}

/// The limiters of the daemon's log lines that carry unauthenticated data, one per kind.
#[derive(Debug)]
pub(crate) struct Limits {
    /// "IKE SA down: {reason}" (the reason may quote what the peer sent), for IKE SAs that authenticated or
    /// were ours to start: not to be drowned by the refusals below.
    pub(crate) ike_down: Limiter,
    /// Refusals of IKE requests that never authenticated: anyone who can send from a peer's address can make
    /// as many as they like, so they have a limiter of their own (issue 12 review item 8).
    pub(crate) ike_refused: Limiter,
    /// A Child SA's traffic selectors refused for learning (too many, or clashing).
    pub(crate) learned_refused: Limiter,
    /// "Child SA refused: {reason}".
    pub(crate) child_refused: Limiter,
    /// Receive errors on the sockets (a peer's ICMP errors, memory pressure).
    pub(crate) recv_error: Limiter,
    /// Send errors (towards any address IKE answers, including spoofed ones).
    pub(crate) send_error: Limiter,
}

impl Limits {
    pub(crate) const fn new() -> Limits {
        Limits {
            ike_down: Limiter::new("IKE SA down", BURST, PER_SECOND),
            ike_refused: Limiter::new("unauthenticated IKE requests refused", BURST, PER_SECOND),
            learned_refused: Limiter::new("learned subnets refused", BURST, PER_SECOND),
            child_refused: Limiter::new("Child SA refused", BURST, PER_SECOND),
            recv_error: Limiter::new("receive errors", BURST, PER_SECOND),
            send_error: Limiter::new("send errors", BURST, PER_SECOND),
        }
    }

    /// [`Limiter::flush`] on each.
    pub(crate) fn flush(&mut self, now: Instant) {
        for l in [
            &mut self.ike_down,
            &mut self.ike_refused,
            &mut self.learned_refused,
            &mut self.child_refused,
            &mut self.recv_error,
            &mut self.send_error,
        ] {
            l.flush(now);
        }
    }
}

/// Lines of one kind at once before the limit applies.
pub(crate) const BURST: u32 = 10;
/// Lines of one kind per second after the burst.
pub(crate) const PER_SECOND: u32 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_escapes_control_characters_and_caps_the_length() {
        assert_eq!(clean(&"AES_GCM_16/PRF", 100), "AES_GCM_16/PRF");
        // A forged second line, a terminal escape, a bidi override, DEL.
        let evil = "x\n2026-12-03T18:00:00Z  INFO vmsecd: IKE SA established\r\x1b[2J\u{202e}\x7f";
        let c = clean(&evil, 1000);
        assert!(!c.chars().any(|c| c.is_control()), "{c:?}");
        assert!(c.starts_with("x\\u{a}2026-12-03T18:00:00Z"), "{c:?}");
        assert!(c.contains("\\u{d}\\u{1b}[2J\\u{202e}\\u{7f}"), "{c:?}");
        // 40 KB of proposals: 256 bytes shown, the rest counted.
        let long = "A".repeat(40_000);
        let c = clean(&long, MAX_FIELD);
        assert_eq!(c, format!("{}... (39744 more bytes)", "A".repeat(256)));
        // Multi-byte characters are never cut in half.
        let c = clean(&"é".repeat(200), 11);
        assert!(c.starts_with(&"é".repeat(6)), "{c:?}");
        assert!(c.ends_with("... (388 more bytes)"), "{c:?}");
    }

    #[test]
    fn limiter_lets_a_burst_through_then_a_few_per_second_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = Limiter::new("test", 10, 2);
        let first = Decision::Log {
            suppressed: 0,
            over: Duration::ZERO,
        };
        // 1,000 lines in the same instant: 10 logged, 990 held back.
        let logged = (0..1000)
            .filter(|_| l.decide(t0) != Decision::Suppress)
            .count();
        assert_eq!(logged, 10);
        // Half a second later one token has come back: that line carries the count.
        assert_eq!(
            l.decide(t0 + Duration::from_millis(500)),
            Decision::Log {
                suppressed: 990,
                over: Duration::from_millis(500)
            }
        );
        assert_eq!(
            l.decide(t0 + Duration::from_millis(500)),
            Decision::Suppress
        );
        // A flood of one line per millisecond for 10 s: about 2 a second get through, never more than the rate.
        let mut logged = 0;
        let mut reported = 0;
        for ms in 1..=10_000u64 {
            if let Decision::Log { suppressed, .. } = l.decide(t0 + Duration::from_millis(500 + ms))
            {
                logged += 1;
                reported += suppressed;
            }
        }
        assert!((19..=21).contains(&logged), "{logged} lines logged in 10 s");
        // The one held back at 500 ms and those of the flood: each logged, reported or still pending.
        assert_eq!(
            reported + logged + l.suppressed,
            1 + 10_000,
            "every line is logged or counted"
        );
        // Quiet for a minute: a full burst again, nothing to report.
        let later = t0 + Duration::from_secs(70);
        l.flush(later);
        assert_eq!(l.decide(later), first);
        assert_eq!(l.suppressed, 0);
    }

    #[test]
    fn flush_reports_what_a_flood_left_behind() {
        let t0 = Instant::now();
        let mut l = Limiter::new("test", 1, 1);
        assert!(l.allow(t0));
        assert!(!l.allow(t0));
        assert!(!l.allow(t0));
        // Too early: no token, nothing flushed.
        l.flush(t0 + Duration::from_millis(100));
        assert_eq!(l.suppressed, 2);
        l.flush(t0 + Duration::from_secs(2));
        assert_eq!(l.suppressed, 0);
    }
}
