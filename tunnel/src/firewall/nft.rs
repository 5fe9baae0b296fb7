//! libvirt's nftables backend (libvirt 10.4 and newer with `firewall_backend = "nftables"`).
//!
//! There libvirt keeps its rules in tables of its own, `ip libvirt_network` and `ip6 libvirt_network`
//! (libvirt's src/network/network_nftables.c): a base chain `forward` (hook forward, priority filter) jumping
//! to `guest_output`, `guest_input` and `guest_cross`, and a base chain `guest_nat` (hook postrouting,
//! priority srcnat) with the MASQUERADE rules. It inserts each network's rules at the top of those chains. No
//! iptables rule can stop them, and neither can an nft table that only accepts: an accept ends only its own
//! base chain, and libvirt's base chains at the same hooks still run. So vmsecd does two things:
//! - **NAT**: its own table `vmsecd` with a postrouting chain at priority `srcnat - 1` (just before libvirt's)
//!   that does an identity SNAT (`snat to ip saddr`) for local subnet → remote subnet. NAT chains are
//!   consulted only until one sets up the connection's source NAT: once ours has (to the same address), the
//!   kernel never runs libvirt's `guest_nat` for that connection, so it keeps its VM source.
//! - **Forward**: accept rules inserted at the top of libvirt's own `guest_input` (remote → local, in from the
//!   TUN) and `guest_output` (local → remote, out to the TUN), because only a verdict inside libvirt's base
//!   chain can keep it from reaching its REJECT. libvirt inserts its per-network rules above them on every
//!   network start and may re-create its table, which is exactly what the periodic check repairs: ours must be
//!   the first rules of those chains.
//!
//! The MSS clamp is in vmsecd's own table (a forward chain at priority mangle). Everything is applied with
//! `nft -f -`, one transaction per family; vmsecd's own table is replaced as a whole when anything in it is
//! off, and its rules in libvirt's chains are found by their `vmsecd:` comment and deleted by handle.

use serde_json::Value;

use super::{run, ChainState, Error, Family, Report, COMMENT_TAG};
use crate::prefix::Prefix;

/// vmsecd's own table (one per family).
pub(super) const OWN_TABLE: &str = "vmsecd";
/// libvirt's table (one per family).
pub(super) const LIBVIRT_TABLE: &str = "libvirt_network";

/// A rule vmsecd keeps at the top of one of libvirt's chains.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainRule {
    chain: &'static str,
    /// The rule as `nft insert rule` takes it, comment included.
    text: String,
    comment: String,
}

/// vmsecd's nftables rules for one host.
#[derive(Debug)]
pub(super) struct Nft {
    interface: String,
    pairs: Vec<(Family, Prefix, Prefix)>,
    /// What arrives through the TUN only, with the remote subnets (see [`Nft::guarded`]).
    guarded: Vec<Prefix>,
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

impl Nft {
    /// The rules for every (local, remote) pair of one family; `None` when there is no such pair.
    pub(super) fn new(
        local: &[Prefix],
        remote: &[Prefix],
        guarded: &[Prefix],
        interface: &str,
    ) -> Option<Nft> {
        let pairs: Vec<(Family, Prefix, Prefix)> = local
            .iter()
            .flat_map(|l| {
                remote
                    .iter()
                    .filter(move |r| r.is_ipv4() == l.is_ipv4())
                    .map(move |r| (Family::of(l), *l, *r))
            })
            .collect();
        (!pairs.is_empty()).then(|| Nft {
            interface: interface.to_owned(),
            pairs,
            guarded: guarded.to_vec(),
        })
    }

    fn families(&self) -> Vec<Family> {
        let mut f: Vec<Family> = self.pairs.iter().map(|p| p.0).collect();
        f.sort();
        f.dedup();
        f
    }

    fn pairs(&self, f: Family) -> impl Iterator<Item = (&Prefix, &Prefix)> {
        self.pairs
            .iter()
            .filter(move |p| p.0 == f)
            .map(|(_, l, r)| (l, r))
    }

    /// How many rules it keeps (own table and libvirt's chains).
    pub(super) fn len(&self) -> usize {
        self.families()
            .into_iter()
            .map(|f| self.own_comments(f).len() + self.libvirt_rules(f).len())
            .sum()
    }

    /// The comments of the rules of vmsecd's own table, sorted.
    fn own_comments(&self, f: Family) -> Vec<String> {
        let mut c: Vec<String> = self
            .pairs(f)
            .map(|(l, r)| format!("{COMMENT_TAG} no NAT {l} -> {r}"))
            .collect();
        c.push(format!("{COMMENT_TAG} clamp MSS into {}", self.interface));
        c.extend(
            self.guarded(f)
                .into_iter()
                .map(|r| format!("{COMMENT_TAG} drop {r} not from {}", self.interface)),
        );
        c.sort();
        c
    }

    /// The remote subnets and the other prefixes that leave only through the tunnel, of one family, each once:
    /// what may arrive through the TUN only (see the `guard` chain of [`Nft::own_table`], and `iptables.rs`,
    /// which explains why).
    fn guarded(&self, f: Family) -> Vec<Prefix> {
        super::outermost(
            self.pairs(f)
                .map(|(_, r)| *r)
                .chain(self.guarded.iter().copied().filter(|g| Family::of(g) == f))
                .collect(),
        )
    }

    /// vmsecd's own table, whole, as `nft -f` reads it.
    fn own_table(&self, f: Family) -> String {
        let p = fam(f);
        let mut t = format!(
            "table {p} {OWN_TABLE} {{\n  chain nat_postrouting {{\n    \
             type nat hook postrouting priority srcnat - 1; policy accept;\n"
        );
        for (l, r) in self.pairs(f) {
            t += &format!(
                "    {p} saddr {l} {p} daddr {r} snat {p} to {p} saddr comment \"{COMMENT_TAG} no NAT {l} -> {r}\"\n"
            );
        }
        t += &format!(
            "  }}\n  chain mss_clamp {{\n    type filter hook forward priority mangle; policy accept;\n    \
             oifname \"{i}\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu comment \
             \"{COMMENT_TAG} clamp MSS into {i}\"\n  }}\n",
            i = self.interface
        );
        // A remote subnet's packet that did not come out of the TUN, and whose route does not lead back to where
        // it came in (`fib saddr . iif oif missing`, nftables' rpfilter), came in clear text: dropped at priority
        // raw, before conntrack (RFC 4301 section 5: the mesh's subnets have no BYPASS entry; see `iptables.rs`).
        t += "  chain guard {\n    type filter hook prerouting priority raw; policy accept;\n";
        for r in self.guarded(f) {
            t += &format!(
                "    iifname != \"{i}\" {p} saddr {r} fib saddr . iif oif missing drop comment \
                 \"{COMMENT_TAG} drop {r} not from {i}\"\n",
                i = self.interface
            );
        }
        t += "  }\n}\n";
        t
    }

    /// The rules vmsecd keeps at the top of libvirt's `guest_input` and `guest_output`.
    fn libvirt_rules(&self, f: Family) -> Vec<ChainRule> {
        let p = fam(f);
        let i = &self.interface;
        let mut out = Vec::new();
        for (l, r) in self.pairs(f) {
            let comment = format!("{COMMENT_TAG} accept {r} -> {l} from {i}");
            out.push(ChainRule {
                chain: "guest_input",
                text: format!(
                    "iifname \"{i}\" {p} saddr {r} {p} daddr {l} accept comment \"{comment}\""
                ),
                comment,
            });
            let comment = format!("{COMMENT_TAG} accept {l} -> {r} into {i}");
            out.push(ChainRule {
                chain: "guest_output",
                text: format!(
                    "oifname \"{i}\" {p} saddr {l} {p} daddr {r} accept comment \"{comment}\""
                ),
                comment,
            });
        }
        out
    }

    /// Reads the tables back; replaces vmsecd's own table if anything in it is off, and puts vmsecd's rules
    /// back on top of libvirt's chains where one is missing or a libvirt rule sits above one.
    pub(super) fn check(&mut self) -> Result<Report, Error> {
        let mut report = Report::default();
        for f in self.families() {
            let p = fam(f);
            let mut script = String::new();
            let own = list(f, OWN_TABLE)?;
            let have = own.as_ref().map(|t| {
                let mut c: Vec<String> = t.rules.iter().filter_map(|r| r.comment.clone()).collect();
                c.sort();
                c
            });
            if have.as_ref() != Some(&self.own_comments(f)) {
                report.restored.push(format!("nft {p} {OWN_TABLE}"));
                // "add" first so that "delete" cannot fail: the table is replaced in one transaction.
                script += &format!(
                    "add table {p} {OWN_TABLE}\ndelete table {p} {OWN_TABLE}\n{}",
                    self.own_table(f)
                );
            }
            // No libvirt table: libvirt has started no network yet, and has no REJECT to get ahead of.
            if let Some(lt) = list(f, LIBVIRT_TABLE)? {
                let wanted = self.libvirt_rules(f);
                for chain in ["guest_input", "guest_output"] {
                    if !lt.chains.iter().any(|c| c == chain) {
                        continue;
                    }
                    let rules: Vec<&Listed> =
                        lt.rules.iter().filter(|r| r.chain == chain).collect();
                    let expected: Vec<&ChainRule> =
                        wanted.iter().filter(|r| r.chain == chain).collect();
                    let name = format!("nft {p} {LIBVIRT_TABLE} {chain}");
                    match assess(&rules, &expected) {
                        ChainState::Ok => continue,
                        ChainState::Missing => report.restored.push(name),
                        ChainState::Displaced => report.reordered.push(name),
                    }
                    for r in rules.iter().filter(|r| is_ours(r)) {
                        script += &format!(
                            "delete rule {p} {LIBVIRT_TABLE} {chain} handle {}\n",
                            r.handle
                        );
                    }
                    // Each insert goes to the top: the last inserted ends up first.
                    for r in expected.iter().rev() {
                        script += &format!("insert rule {p} {LIBVIRT_TABLE} {chain} {}\n", r.text);
                    }
                }
            }
            if !script.is_empty() {
                run("nft", &["-f", "-"], Some(&script))?;
            }
        }
        Ok(report)
    }

    /// Deletes vmsecd's own tables and its rules in libvirt's chains (by comment); returns how many rules.
    pub(super) fn remove(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        for f in self.families() {
            let p = fam(f);
            let mut script = String::new();
            if let Some(own) = list(f, OWN_TABLE)? {
                n += own.rules.len();
                script += &format!("delete table {p} {OWN_TABLE}\n");
            }
            if let Some(lt) = list(f, LIBVIRT_TABLE)? {
                for r in lt.rules.iter().filter(|r| is_ours(r)) {
                    n += 1;
                    script += &format!(
                        "delete rule {p} {LIBVIRT_TABLE} {} handle {}\n",
                        r.chain, r.handle
                    );
                }
            }
            if !script.is_empty() {
                run("nft", &["-f", "-"], Some(&script))?;
            }
        }
        Ok(n)
    }
}

/// A rule as `nft -j list table` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    chain: String,
    handle: u64,
    comment: Option<String>,
}

/// A table's chains and rules, in the order nft lists them.
#[derive(Debug, Default)]
struct Table {
    chains: Vec<String>,
    rules: Vec<Listed>,
}

fn is_ours(r: &Listed) -> bool {
    r.comment
        .as_deref()
        .is_some_and(|c| c.starts_with(COMMENT_TAG))
}

/// `nft -j list table FAMILY NAME`; `None` if there is no such table.
fn list(f: Family, name: &str) -> Result<Option<Table>, Error> {
    match run("nft", &["-j", "list", "table", fam(f), name], None) {
        Ok(json) => Ok(Some(parse_table(&json))),
        Err(Error::Failed { stderr, .. }) if stderr.contains("No such file or directory") => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn parse_table(json: &str) -> Table {
    let v: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let mut t = Table::default();
    for item in v["nftables"].as_array().into_iter().flatten() {
        if let Some(name) = item["chain"]["name"].as_str() {
            t.chains.push(name.to_owned());
        }
        let r = &item["rule"];
        if let (Some(chain), Some(handle)) = (r["chain"].as_str(), r["handle"].as_u64()) {
            t.rules.push(Listed {
                chain: chain.to_owned(),
                handle,
                comment: r["comment"].as_str().map(str::to_owned),
            });
        }
    }
    t
}

/// Ours must be exactly the expected rules, in order, and the first rules of the chain.
fn assess(rules: &[&Listed], expected: &[&ChainRule]) -> ChainState {
    let ours: Vec<&str> = rules
        .iter()
        .filter(|r| is_ours(r))
        .filter_map(|r| r.comment.as_deref())
        .collect();
    if !ours
        .iter()
        .copied()
        .eq(expected.iter().map(|r| r.comment.as_str()))
    {
        return ChainState::Missing;
    }
    if rules.iter().take(ours.len()).any(|r| !is_ours(r)) {
        return ChainState::Displaced;
    }
    ChainState::Ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn nft() -> Nft {
        Nft::new(
            &[p("198.19.1.0/24"), p("fd00:1::/64")],
            &[p("198.19.2.0/24"), p("fd00:2::/64")],
            &[],
            "vmsec0",
        )
        .unwrap()
    }

    #[test]
    fn own_table_does_an_identity_snat_before_libvirt_and_clamps_mss() {
        let n = nft();
        let t = n.own_table(Family::V4);
        assert!(
            t.contains("type nat hook postrouting priority srcnat - 1;"),
            "{t}"
        );
        let snat = "ip saddr 198.19.1.0/24 ip daddr 198.19.2.0/24 snat ip to ip saddr comment \
                    \"vmsecd: no NAT 198.19.1.0/24 -> 198.19.2.0/24\"";
        assert!(t.contains(snat), "{t}");
        assert!(t.contains(
            "oifname \"vmsec0\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu"
        ));
        let t6 = n.own_table(Family::V6);
        assert!(t6.starts_with("table ip6 vmsecd {"), "{t6}");
        assert!(t6.contains("snat ip6 to ip6 saddr"), "{t6}");
        // A remote subnet's packets are dropped unless they come out of the TUN, before conntrack.
        assert!(
            t.contains(
                "type filter hook prerouting priority raw; policy accept;\n    iifname != \"vmsec0\" ip saddr \
                 198.19.2.0/24 fib saddr . iif oif missing drop comment \"vmsecd: drop 198.19.2.0/24 not from vmsec0\""
            ),
            "{t}"
        );
        assert!(
            t6.contains(
                "iifname != \"vmsec0\" ip6 saddr fd00:2::/64 fib saddr . iif oif missing drop"
            ),
            "{t6}"
        );
        // 3 own rules + 2 in libvirt's chains, per family.
        assert_eq!(n.len(), 10);
        assert!(Nft::new(&[p("198.19.1.0/24")], &[p("fd00:2::/64")], &[], "vmsec0").is_none());
    }

    /// `nft -j list table ip libvirt_network` after libvirt started a NAT network above vmsecd's rules.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
      {"table": {"family": "ip", "name": "libvirt_network", "handle": 1}},
      {"chain": {"family": "ip", "table": "libvirt_network", "name": "forward", "handle": 1}},
      {"chain": {"family": "ip", "table": "libvirt_network", "name": "guest_input", "handle": 3}},
      {"chain": {"family": "ip", "table": "libvirt_network", "name": "guest_output", "handle": 2}},
      {"rule": {"family": "ip", "table": "libvirt_network", "chain": "guest_input", "handle": 12, "expr": []}},
      {"rule": {"family": "ip", "table": "libvirt_network", "chain": "guest_input", "handle": 9,
                "comment": "vmsecd: accept 198.19.2.0/24 -> 198.19.1.0/24 from vmsec0", "expr": []}},
      {"rule": {"family": "ip", "table": "libvirt_network", "chain": "guest_output", "handle": 10,
                "comment": "vmsecd: accept 198.19.1.0/24 -> 198.19.2.0/24 into vmsec0", "expr": []}},
      {"rule": {"family": "ip", "table": "libvirt_network", "chain": "guest_output", "handle": 11, "expr": []}}]}"#;

    #[test]
    fn ours_must_lead_libvirts_chains() {
        let n = nft();
        let t = parse_table(LISTED);
        assert_eq!(t.chains, ["forward", "guest_input", "guest_output"]);
        let wanted = n.libvirt_rules(Family::V4);
        let chain = |name: &str| -> (Vec<&Listed>, Vec<&ChainRule>) {
            (
                t.rules.iter().filter(|r| r.chain == name).collect(),
                wanted.iter().filter(|r| r.chain == name).collect(),
            )
        };
        let (rules, expected) = chain("guest_input");
        assert_eq!(assess(&rules, &expected), ChainState::Displaced);
        let (rules, expected) = chain("guest_output");
        assert_eq!(assess(&rules, &expected), ChainState::Ok);
        assert_eq!(assess(&[], &expected), ChainState::Missing);
        assert_eq!(
            expected[0].text,
            "oifname \"vmsec0\" ip saddr 198.19.1.0/24 ip daddr 198.19.2.0/24 accept comment \
             \"vmsecd: accept 198.19.1.0/24 -> 198.19.2.0/24 into vmsec0\""
        );
        assert!(parse_table("not json").rules.is_empty());
    }
}
