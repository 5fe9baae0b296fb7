//! The outbound route lookup: which peer owns an inner packet's destination. One hash table per prefix length
//! present (a mesh usually has one or two: /24s, /64s), longest first, so the cost per packet is a hash per
//! length, not a scan over every peer's subnets (at 100 hosts the scan walked 99 prefixes per packet).

use std::collections::HashMap;
use std::net::IpAddr;

use crate::prefix::Prefix;

/// Prefixes to peer indexes, longest match first.
#[derive(Debug, Default)]
pub(crate) struct PrefixTable {
    /// (length, IPv4?, prefixes of that length and family), longest first.
    by_len: Vec<(u8, bool, HashMap<Prefix, usize>)>,
}

impl PrefixTable {
    /// A table of `(prefix, peer index)`; for a prefix listed twice the first wins.
    pub(crate) fn new(routes: impl IntoIterator<Item = (Prefix, usize)>) -> PrefixTable {
        let mut by_len: Vec<(u8, bool, HashMap<Prefix, usize>)> = Vec::new();
        for (p, i) in routes {
            let key = (p.prefix_len(), p.is_ipv4());
            let slot = match by_len.iter().position(|(l, v4, _)| (*l, *v4) == key) {
                Some(s) => s,
                None => {
                    by_len.push((key.0, key.1, HashMap::new()));
                    by_len.len() - 1
                }
            };
            if let Some((_, _, m)) = by_len.get_mut(slot) {
                m.entry(p).or_insert(i);
            }
        }
        by_len.sort_by_key(|(l, _, _)| std::cmp::Reverse(*l));
        PrefixTable { by_len }
    }

    /// The peer index of the longest prefix holding `dst`.
    pub(crate) fn lookup(&self, dst: IpAddr) -> Option<usize> {
        let v4 = dst.is_ipv4();
        self.by_len
            .iter()
            .filter(|(_, f, _)| *f == v4)
            .find_map(|(len, _, m)| m.get(&Prefix::new(dst, *len)).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_and_families_stay_apart() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let t = PrefixTable::new([
            (p("198.19.0.0/16"), 0),
            (p("198.19.7.0/24"), 7),
            (p("2001:db8:7::/64"), 3),
            (p("198.19.7.0/24"), 9),
        ]);
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.lookup(a("198.19.7.10")), Some(7));
        assert_eq!(t.lookup(a("198.19.8.10")), Some(0));
        assert_eq!(t.lookup(a("198.20.0.1")), None);
        assert_eq!(t.lookup(a("2001:db8:7::10")), Some(3));
        assert_eq!(t.lookup(a("2001:db8:8::10")), None);
        // 100 peers' /24s: one table, one hash per packet.
        let t =
            PrefixTable::new((1..=100u8).map(|i| (p(&format!("198.19.{i}.0/24")), usize::from(i))));
        assert_eq!(t.by_len.len(), 1);
        assert_eq!(t.lookup(a("198.19.99.10")), Some(99));
    }
}
