//! IP prefixes in CIDR notation (`198.19.1.0/24`, `2001:db8:1::/48`): the subnets of the mesh file, the routes
//! into the TUN, and the traffic selectors of the Child SAs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ike::message::TrafficSelector;

/// A network prefix: an address whose bits past `len` are zero, and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

/// Why a string is not a prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// Not of the form ADDRESS/LENGTH.
    #[error("{0:?} is not in CIDR notation: write ADDRESS/LENGTH, e.g. 198.19.1.0/24 or 2001:db8:1::/64")]
    Syntax(String),
    /// The length is larger than the address has bits.
    #[error(
        "{text:?}: prefix length {len} is too long: an {family} prefix has at most {max} bits"
    )]
    TooLong {
        /// The input.
        text: String,
        /// The given length.
        len: u32,
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits past the length are set, which usually means a typo.
    #[error("{text:?} has host bits set: did you mean {network}?")]
    HostBits {
        /// The input.
        text: String,
        /// The prefix with the host bits cleared.
        network: Prefix,
    },
}

impl Prefix {
    /// The special-purpose range this prefix overlaps, if any, and its name: no VM subnet lies there, and a
    /// route into the tunnel for one would take the host's own loopback, link-local (a cloud's metadata
    /// service at 169.254.169.254), multicast or reserved traffic. Checked for every subnet and range of the
    /// mesh file and of etcd entries: each becomes a route into the TUN on every host. Overlap, not
    /// containment, so that halves of the address space (`0.0.0.0/1` and `128.0.0.0/1`, `::/1` and `8000::/1`,
    /// a default route in two routes) are refused as well. The ranges are from RFC 6890's special-purpose
    /// address registries (those no VM network is numbered from).
    pub fn special_use(&self) -> Option<(Prefix, &'static str)> {
        const SPECIAL: [(&str, &str); 10] = [
            ("0.0.0.0/8", "\"this network\" (RFC 791)"),
            ("127.0.0.0/8", "loopback"),
            ("169.254.0.0/16", "link-local"),
            ("224.0.0.0/4", "multicast"),
            ("240.0.0.0/4", "reserved and broadcast"),
            ("::/128", "the unspecified address"),
            ("::1/128", "loopback"),
            ("::ffff:0:0/96", "IPv4-mapped"),
            ("fe80::/10", "link-local"),
            ("ff00::/8", "multicast"),
        ];
        SPECIAL.iter().find_map(|(r, name)| {
            let r: Prefix = r.parse().ok()?;
            r.overlaps(self).then_some((r, *name))
        })
    }

    /// A prefix from an address and a length, with the host bits cleared. `len` is capped at the address width.
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        let len = len.min(max_len(addr));
        Prefix {
            addr: mask(addr, len),
            len,
        }
    }

    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// True for IPv4.
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// True if `addr` lies in the prefix.
    pub fn contains(&self, addr: IpAddr) -> bool {
        addr.is_ipv4() == self.addr.is_ipv4() && mask(addr, self.len) == self.addr
    }

    /// True if the two prefixes share at least one address, that is one contains the other.
    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// True if every address of `other` lies in this prefix.
    pub fn contains_prefix(&self, other: &Prefix) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }

    /// The fewest prefixes that cover exactly the addresses from `start` to `end` (a traffic selector's range,
    /// RFC 7296 3.13.1); empty if the two are of different families or `start > end`.
    pub fn cover(start: IpAddr, end: IpAddr) -> Vec<Prefix> {
        let (mut lo, hi, bits, v4) = match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => (
                u128::from(u32::from(s)),
                u128::from(u32::from(e)),
                32u32,
                true,
            ),
            (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128u32, false),
            _ => return Vec::new(),
        };
        let addr = |x: u128| {
            if v4 {
                IpAddr::V4(Ipv4Addr::from(x as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(x))
            }
        };
        let max = if v4 { u128::from(u32::MAX) } else { u128::MAX };
        if start > end {
            return Vec::new();
        }
        if lo == 0 && hi == max {
            return vec![Prefix::new(addr(0), 0)];
        }
        let mut out = Vec::new();
        loop {
            // The largest block aligned at `lo` that does not run past `hi` (below 2^128: the whole space is
            // handled above).
            let mut k = if lo == 0 {
                bits.min(127)
            } else {
                lo.trailing_zeros().min(bits)
            };
            while (1u128 << k) - 1 > hi - lo {
                k -= 1;
            }
            out.push(Prefix::new(addr(lo), (bits - k) as u8));
            let last = lo + ((1u128 << k) - 1);
            if last >= hi {
                break;
            }
            lo = last + 1;
        }
        out
    }

    /// The traffic selector covering the prefix: all protocols, all ports.
    pub fn selector(&self) -> TrafficSelector {
        TrafficSelector::from_prefix(self.addr, self.len)
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// Parses `ADDRESS/LENGTH` strictly: host bits must be zero, so that `198.19.1.5/24` is caught as a typo.
    fn from_str(text: &str) -> Result<Prefix, PrefixError> {
        let syntax = || PrefixError::Syntax(text.to_owned());
        let (a, l) = text.split_once('/').ok_or_else(syntax)?;
        let addr: IpAddr = a.parse().map_err(|_| syntax())?;
        if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || l.len() > 3 {
            return Err(syntax());
        }
        let len: u32 = l.parse().map_err(|_| syntax())?;
        let max = max_len(addr);
        if len > u32::from(max) {
            return Err(PrefixError::TooLong {
                text: text.to_owned(),
                len,
                family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                max,
            });
        }
        let p = Prefix::new(addr, len as u8);
        if p.addr != addr {
            return Err(PrefixError::HostBits {
                text: text.to_owned(),
                network: p,
            });
        }
        Ok(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn special_use_ranges_are_named_halves_of_the_space_too() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let name = |s: &str| p(s).special_use().map(|(r, n)| format!("{r} {n}"));
        assert_eq!(
            name("169.254.169.254/32").as_deref(),
            Some("169.254.0.0/16 link-local")
        );
        assert_eq!(
            name("224.0.0.0/24").as_deref(),
            Some("224.0.0.0/4 multicast")
        );
        assert_eq!(
            name("127.0.0.1/32").as_deref(),
            Some("127.0.0.0/8 loopback")
        );
        assert!(
            name("0.0.0.0/0").is_some()
                && name("0.0.0.0/1").is_some()
                && name("128.0.0.0/1").is_some()
        );
        assert!(name("::/0").is_some() && name("::/1").is_some() && name("8000::/1").is_some());
        assert_eq!(name("fe80::/64").as_deref(), Some("fe80::/10 link-local"));
        assert_eq!(name("ff02::1/128").as_deref(), Some("ff00::/8 multicast"));
        assert_eq!(
            name("::ffff:198.19.0.0/112").as_deref(),
            Some("::ffff:0.0.0.0/96 IPv4-mapped")
        );
        for ok in [
            "198.19.1.0/24",
            "192.168.122.0/24",
            "10.0.0.0/8",
            "2001:db8:1::/64",
            "fd00::/8",
        ] {
            assert_eq!(name(ok), None, "{ok}");
        }
    }

    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("198.19.1.0/24").to_string(), "198.19.1.0/24");
        assert_eq!(p("0.0.0.0/0").prefix_len(), 0);
        assert_eq!(p("2001:db8:1::/48").to_string(), "2001:db8:1::/48");
        assert_eq!(
            p("198.18.0.1/32").addr(),
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn rejects_bad_text() {
        for bad in [
            "198.19.1.0",
            "198.19.1.0/",
            "/24",
            "198.19.1/24",
            "198.19.1.0/+4",
            "x/1",
        ] {
            assert!(
                matches!(bad.parse::<Prefix>(), Err(PrefixError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "198.19.1.0/33".parse::<Prefix>(),
            Err(PrefixError::TooLong { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Prefix>(),
            Err(PrefixError::TooLong { max: 128, .. })
        ));
        let e = "198.19.1.5/24".parse::<Prefix>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"198.19.1.5/24\" has host bits set: did you mean 198.19.1.0/24?"
        );
    }

    #[test]
    fn containment_and_overlap() {
        let a = p("198.19.1.0/24");
        let b = p("198.19.1.128/25");
        let c = p("198.19.2.0/24");
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
        assert!(a.contains("198.19.1.255".parse().unwrap()));
        assert!(!a.contains("198.19.2.0".parse().unwrap()));
        assert!(!a.contains("::ffff:198.19.1.1".parse().unwrap()));
        assert!(p("0.0.0.0/0").overlaps(&c));
        assert!(!p("::/0").overlaps(&c));
    }

    #[test]
    fn ranges_become_the_fewest_prefixes() {
        let cover = |a: &str, b: &str| {
            Prefix::cover(a.parse().unwrap(), b.parse().unwrap())
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(cover("198.19.2.0", "198.19.2.255"), ["198.19.2.0/24"]);
        assert_eq!(
            cover("198.19.2.0", "198.19.4.127"),
            ["198.19.2.0/23", "198.19.4.0/25"]
        );
        assert_eq!(cover("198.19.2.5", "198.19.2.5"), ["198.19.2.5/32"]);
        assert_eq!(cover("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            cover("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ["::/0"]
        );
        assert_eq!(
            cover("2001:db8::", "2001:db8::ffff:ffff:ffff:ffff"),
            ["2001:db8::/64"]
        );
        assert_eq!(
            cover("255.255.255.254", "255.255.255.255"),
            ["255.255.255.254/31"]
        );
        assert!(cover("198.19.2.5", "198.19.2.4").is_empty());
        assert!(cover("198.19.2.5", "::1").is_empty());
        assert!(p("198.19.0.0/16").contains_prefix(&p("198.19.2.0/24")));
        assert!(!p("198.19.2.0/24").contains_prefix(&p("198.19.0.0/16")));
    }

    #[test]
    fn selector_covers_the_prefix() {
        let ts = p("198.19.2.0/24").selector();
        assert_eq!(ts.start, "198.19.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(ts.end, "198.19.2.255".parse::<IpAddr>().unwrap());
    }
}
