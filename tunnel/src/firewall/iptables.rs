//! The iptables side (libvirt before 10.4, or `firewall_backend = "iptables"`): rules at the top of the
//! built-in chains, ahead of libvirt's jumps, read back with `iptables-save` and written with
//! `iptables-restore --noflush` (one transaction per table).

use std::collections::BTreeMap;

use super::{run, ChainState, Error, Family, Report, COMMENT_TAG};
use crate::prefix::Prefix;

/// Which iptables implementation `iptables -V` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft: x_tables syntax stored in nf_tables (Debian 11 and newer by default).
    Nft,
    /// iptables-legacy: the x_tables kernel interface.
    Legacy,
}

/// `iptables -V`: which backend, or `None` if the command is not installed.
pub(super) fn iptables_backend(family: Family) -> Result<Option<Backend>, Error> {
    match run(family.tool(), &["-V"], None) {
        Ok(v) if v.contains("legacy") => Ok(Some(Backend::Legacy)),
        Ok(_) => Ok(Some(Backend::Nft)),
        Err(Error::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One rule vmsecd owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Rule {
    /// iptables or ip6tables.
    pub(super) family: Family,
    /// `nat`, `filter` or `mangle`.
    pub(super) table: &'static str,
    /// The built-in chain.
    pub(super) chain: &'static str,
    /// The match arguments, e.g. `-s 198.19.1.0/24 -d 198.19.2.0/24`.
    pub(super) matches: String,
    /// The target and its arguments, e.g. `-j ACCEPT`.
    pub(super) target: String,
    /// The comment after [`COMMENT_TAG`]; unique among the rules of one chain.
    pub(super) comment: String,
    /// Whether it must sit above every `LIBVIRT_` jump of its chain.
    pub(super) ahead_of_libvirt: bool,
}

impl Rule {
    /// The rule as `iptables-restore` reads it, after `-A CHAIN` or `-I CHAIN N`.
    fn spec(&self) -> String {
        format!(
            "{} -m comment --comment \"{}\" {}",
            self.matches, self.comment, self.target
        )
    }
}

/// The rules for a host with `local` subnets whose peers have `remote` subnets, with the TUN `interface`:
/// for each pair of the same family, no NAT (nat POSTROUTING) and accept both ways (filter FORWARD), ahead of
/// libvirt's jumps; and for each family with a pair, the MSS clamp into the TUN (mangle FORWARD).
pub(super) fn rules(
    local: &[Prefix],
    remote: &[Prefix],
    guarded: &[Prefix],
    interface: &str,
) -> Vec<Rule> {
    let mut out = Vec::new();
    for family in [Family::V4, Family::V6] {
        let pairs: Vec<(&Prefix, &Prefix)> = local
            .iter()
            .filter(|l| Family::of(l) == family)
            .flat_map(|l| {
                remote
                    .iter()
                    .filter(|r| Family::of(r) == family)
                    .map(move |r| (l, r))
            })
            .collect();
        if pairs.is_empty() {
            continue;
        }
        let rule = |table, chain, matches: String, target: &str, comment: String, ahead| Rule {
            family,
            table,
            chain,
            matches,
            target: target.to_owned(),
            comment: format!("{COMMENT_TAG} {comment}"),
            ahead_of_libvirt: ahead,
        };
        for (l, r) in &pairs {
            out.push(rule(
                "nat",
                "POSTROUTING",
                format!("-s {l} -d {r}"),
                "-j ACCEPT",
                format!("no NAT {l} -> {r}"),
                true,
            ));
        }
        for (l, r) in &pairs {
            out.push(rule(
                "filter",
                "FORWARD",
                format!("-s {r} -d {l} -i {interface}"),
                "-j ACCEPT",
                format!("accept {r} -> {l} from {interface}"),
                true,
            ));
            out.push(rule(
                "filter",
                "FORWARD",
                format!("-s {l} -d {r} -o {interface}"),
                "-j ACCEPT",
                format!("accept {l} -> {r} into {interface}"),
                true,
            ));
        }
        // The remote subnets are reached through the TUN only, so a packet from one of them that arrives on any
        // other interface came in clear text (spoofed on the underlay, or a local VM posing as a remote one):
        // libvirt's own rules would let it in (a `route` network accepts all forwarding to it, a `nat` one
        // accepts whatever conntrack calls ESTABLISHED, and conntrack does not look at the interface), and IPv6
        // has no reverse-path filter, IPv4's loose one (Debian's default) passes it as long as the TUN route
        // exists. Dropped in raw PREROUTING, before conntrack sees it, when its route does not lead back to the
        // interface it came in on (`rpfilter`: the route into the TUN while vmsecd runs, the fail-closed
        // `unreachable` route after a crash, both refusing it). A host whose own network duplicates a remote
        // subnet (a libvirt `default` network not renumbered: vmsecd's route is refused beside the bridge's) keeps
        // its local VMs: their source routes back to their bridge. These rules outlive a SIGKILL, like the
        // fail-closed routes.
        //= https://www.rfc-editor.org/rfc/rfc4301#section-5
        //# If no policy is found in the SPD that matches a packet (for either inbound or outbound traffic), the
        //# packet MUST be discarded.
        // (The mesh's subnets have PROTECT entries only: no SPD-I entry BYPASSes unprotected traffic from them,
        // section 5.2 step 3b.) Linux XFRM does the same for kernel IPsec with its `dir fwd`/`dir in` policies.
        // `guarded`: every prefix that leaves only through the tunnel (the fail-closed routes' prefixes: listed
        // subnets, and a libvirt host's whole range, learned or not), with the remote subnets.
        let guard = super::outermost(
            pairs
                .iter()
                .map(|(_, r)| **r)
                .chain(guarded.iter().copied().filter(|g| Family::of(g) == family))
                .collect(),
        );
        for r in guard {
            out.push(rule(
                "raw",
                "PREROUTING",
                format!("-s {r} ! -i {interface} -m rpfilter --invert"),
                "-j DROP",
                format!("drop {r} not from {interface}"),
                true,
            ));
        }
        out.push(rule(
            "mangle",
            "FORWARD",
            format!("-o {interface} -p tcp -m tcp --tcp-flags SYN,RST SYN"),
            "-j TCPMSS --clamp-mss-to-pmtu",
            format!("clamp MSS into {interface}"),
            false,
        ));
    }
    out
}

/// The rule lines of every chain, as `iptables-save` prints them: (table, chain) → the text after
/// `-A CHAIN `, in order.
type Saved = BTreeMap<(String, String), Vec<String>>;

fn parse_save(text: &str) -> Saved {
    let mut out = Saved::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("-A ") {
            let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry((table.clone(), chain.to_owned()))
                .or_default()
                .push(spec.to_owned());
        }
    }
    out
}

/// The comment of a rule line if it is one of vmsecd's (starts with [`COMMENT_TAG`]).
fn our_comment(line: &str) -> Option<String> {
    let rest = &line[line.find("--comment ")? + "--comment ".len()..];
    let comment = match rest.strip_prefix('"') {
        Some(q) => {
            let mut s = String::new();
            let mut chars = q.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => s.extend(chars.next()),
                    '"' => break,
                    c => s.push(c),
                }
            }
            s
        }
        None => rest.split_whitespace().next().unwrap_or("").to_owned(),
    };
    comment.starts_with(COMMENT_TAG).then_some(comment)
}

/// True for `-j LIBVIRT_...` or `-g LIBVIRT_...`.
fn is_libvirt_jump(line: &str) -> bool {
    let t: Vec<&str> = line.split_whitespace().collect();
    t.windows(2)
        .any(|w| (w[0] == "-j" || w[0] == "-g") && w[1].starts_with("LIBVIRT_"))
}

fn assess(lines: &[String], expected: &[&Rule]) -> ChainState {
    let ours: Vec<(usize, String)> = lines
        .iter()
        .enumerate()
        .filter_map(|(i, l)| our_comment(l).map(|c| (i, c)))
        .collect();
    if !ours
        .iter()
        .map(|(_, c)| c.as_str())
        .eq(expected.iter().map(|r| r.comment.as_str()))
    {
        return ChainState::Missing;
    }
    if let Some(first) = lines.iter().position(|l| is_libvirt_jump(l)) {
        let displaced = ours
            .iter()
            .zip(expected)
            .any(|((i, _), r)| r.ahead_of_libvirt && *i > first);
        if displaced {
            return ChainState::Displaced;
        }
    }
    ChainState::Ok
}

/// The `iptables-restore --noflush` lines that delete our current rules of one chain and put the expected ones
/// back: the ones that must lead at positions 1, 2, ..., the others appended.
fn repair_lines(chain: &str, lines: &[String], expected: &[&Rule]) -> Vec<String> {
    let mut out: Vec<String> = lines
        .iter()
        .filter(|l| our_comment(l).is_some())
        .map(|l| format!("-D {chain} {l}"))
        .collect();
    let mut pos = 0;
    for r in expected {
        if r.ahead_of_libvirt {
            pos += 1;
            out.push(format!("-I {chain} {pos} {}", r.spec()));
        } else {
            out.push(format!("-A {chain} {}", r.spec()));
        }
    }
    out
}

/// vmsecd's iptables rules on this host and the commands that keep them in place.
#[derive(Debug)]
pub(super) struct Iptables {
    rules: Vec<Rule>,
    backend: Backend,
}

impl Iptables {
    /// The rules for these subnets, if `iptables` (and `ip6tables` where IPv6 pairs need it) is installed;
    /// `Ok(None)` names the missing command.
    pub(super) fn new(
        local: &[Prefix],
        remote: &[Prefix],
        guarded: &[Prefix],
        interface: &str,
    ) -> Result<Result<Iptables, &'static str>, Error> {
        let rules = rules(local, remote, guarded, interface);
        let mut backend = Backend::Nft;
        for family in families(&rules) {
            match iptables_backend(family)? {
                Some(b) => backend = b,
                None => return Ok(Err(family.tool())),
            }
        }
        Ok(Ok(Iptables { rules, backend }))
    }

    /// How many rules it keeps.
    pub(super) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Which iptables.
    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    /// Reads the tables back and re-writes whatever chain is missing a rule or has one below a libvirt jump.
    /// The first call installs the rules (and takes over stale ones a killed vmsecd left).
    pub(super) fn check(&mut self) -> Result<Report, Error> {
        let mut report = Report::default();
        for family in families(&self.rules) {
            let saved = parse_save(&run(family.save(), &[], None)?);
            let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            let mut chains: Vec<(&str, &str)> = self
                .rules
                .iter()
                .filter(|r| r.family == family)
                .map(|r| (r.table, r.chain))
                .collect();
            chains.dedup();
            for (table, chain) in chains {
                let expected: Vec<&Rule> = self
                    .rules
                    .iter()
                    .filter(|r| r.family == family && r.table == table && r.chain == chain)
                    .collect();
                let empty = Vec::new();
                let lines = saved
                    .get(&(table.to_owned(), chain.to_owned()))
                    .unwrap_or(&empty);
                let name = format!("{} {table} {chain}", family.tool());
                match assess(lines, &expected) {
                    ChainState::Ok => continue,
                    ChainState::Missing => report.restored.push(name),
                    ChainState::Displaced => report.reordered.push(name),
                }
                by_table
                    .entry(table)
                    .or_default()
                    .extend(repair_lines(chain, lines, &expected));
            }
            if by_table.is_empty() {
                continue;
            }
            let mut script = String::new();
            for (table, lines) in by_table {
                script += &format!("*{table}\n");
                for l in lines {
                    script += &l;
                    script.push('\n');
                }
                script += "COMMIT\n";
            }
            run(family.restore(), &["-w", "--noflush"], Some(&script))?;
        }
        Ok(report)
    }

    /// Deletes every rule whose comment starts with [`COMMENT_TAG`], in every table and chain, and nothing else.
    /// Returns how many.
    pub(super) fn remove(&mut self) -> Result<usize, Error> {
        let mut n = 0;
        for family in families(&self.rules) {
            let saved = parse_save(&run(family.save(), &[], None)?);
            let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for ((table, chain), lines) in &saved {
                for l in lines.iter().filter(|l| our_comment(l).is_some()) {
                    by_table
                        .entry(table)
                        .or_default()
                        .push(format!("-D {chain} {l}"));
                    n += 1;
                }
            }
            if by_table.is_empty() {
                continue;
            }
            let mut script = String::new();
            for (table, lines) in by_table {
                script += &format!("*{table}\n{}\nCOMMIT\n", lines.join("\n"));
            }
            run(family.restore(), &["-w", "--noflush"], Some(&script))?;
        }
        Ok(n)
    }
}

fn families(rules: &[Rule]) -> Vec<Family> {
    let mut f: Vec<Family> = rules.iter().map(|r| r.family).collect();
    f.sort();
    f.dedup();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    /// What libvirt 9.0 left in a namespace after `net-start` of a NAT network 198.19.1.0/24 (iptables-save,
    /// trimmed), with vmsecd's rules inserted before libvirt created its chains: libvirt's jumps landed on top.
    const AFTER_FRESH_BOOT: &str = r#"*nat
:POSTROUTING ACCEPT [0:0]
:LIBVIRT_PRT - [0:0]
-A POSTROUTING -j LIBVIRT_PRT
-A POSTROUTING -s 198.19.1.0/24 -d 198.19.2.0/24 -m comment --comment "vmsecd: no NAT 198.19.1.0/24 -> 198.19.2.0/24" -j ACCEPT
-A LIBVIRT_PRT -s 198.19.1.0/24 ! -d 198.19.1.0/24 -j MASQUERADE
COMMIT
*filter
:FORWARD ACCEPT [0:0]
-A FORWARD -s 198.19.2.0/24 -d 198.19.1.0/24 -i vmsec0 -m comment --comment "vmsecd: accept 198.19.2.0/24 -> 198.19.1.0/24 from vmsec0" -j ACCEPT
-A FORWARD -s 198.19.1.0/24 -d 198.19.2.0/24 -o vmsec0 -m comment --comment "vmsecd: accept 198.19.1.0/24 -> 198.19.2.0/24 into vmsec0" -j ACCEPT
-A FORWARD -j LIBVIRT_FWX
-A FORWARD -j LIBVIRT_FWI
-A FORWARD -j LIBVIRT_FWO
-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable
COMMIT
"#;

    fn mesh_rules() -> Vec<Rule> {
        rules(&[p("198.19.1.0/24")], &[p("198.19.2.0/24")], &[], "vmsec0")
    }

    fn chain<'a>(rules: &'a [Rule], table: &str) -> Vec<&'a Rule> {
        rules.iter().filter(|r| r.table == table).collect()
    }

    #[test]
    fn rules_cover_every_pair_of_one_family() {
        let r = rules(
            &[p("198.19.1.0/24"), p("fd00:1::/64")],
            &[p("198.19.2.0/24"), p("198.19.3.0/24"), p("fd00:2::/64")],
            &[
                p("198.19.2.0/24"),
                p("198.19.64.0/18"),
                p("198.19.64.0/24"),
                p("fd00:9::/48"),
            ],
            "vmsec0",
        );
        let v4: Vec<&Rule> = r.iter().filter(|r| r.family == Family::V4).collect();
        let v6: Vec<&Rule> = r.iter().filter(|r| r.family == Family::V6).collect();
        // 2 pairs: 2 nat + 4 filter + 3 raw + 1 clamp; 1 pair: 1 + 2 + 2 + 1.
        assert_eq!(v4.len(), 10);
        assert_eq!(v6.len(), 6);
        // Each remote subnet arrives through the TUN only: from anywhere else it is dropped, ahead of
        // everything in raw PREROUTING.
        let guard: Vec<String> = r
            .iter()
            .filter(|r| r.table == "raw")
            .map(|r| format!("{} {} {}", r.chain, r.matches, r.target))
            .collect();
        assert_eq!(
            guard,
            [
                "PREROUTING -s 198.19.2.0/24 ! -i vmsec0 -m rpfilter --invert -j DROP",
                "PREROUTING -s 198.19.3.0/24 ! -i vmsec0 -m rpfilter --invert -j DROP",
                "PREROUTING -s 198.19.64.0/18 ! -i vmsec0 -m rpfilter --invert -j DROP",
                "PREROUTING -s fd00:2::/64 ! -i vmsec0 -m rpfilter --invert -j DROP",
                "PREROUTING -s fd00:9::/48 ! -i vmsec0 -m rpfilter --invert -j DROP"
            ]
        );
        assert!(r
            .iter()
            .filter(|r| r.table == "raw")
            .all(|r| r.ahead_of_libvirt));
        assert!(r.iter().all(|r| r.comment.starts_with(COMMENT_TAG)));
        let nat = &v4[0];
        assert_eq!(
            (
                nat.table,
                nat.chain,
                nat.matches.as_str(),
                nat.target.as_str()
            ),
            (
                "nat",
                "POSTROUTING",
                "-s 198.19.1.0/24 -d 198.19.2.0/24",
                "-j ACCEPT"
            )
        );
        assert!(r.iter().any(
            |r| r.chain == "FORWARD" && r.matches == "-s fd00:2::/64 -d fd00:1::/64 -i vmsec0"
        ));
        let clamp = r.iter().find(|r| r.table == "mangle").unwrap();
        assert_eq!(clamp.target, "-j TCPMSS --clamp-mss-to-pmtu");
        assert!(!clamp.ahead_of_libvirt);
        // Comments are unique within a chain: they are how the order is checked.
        let mut c: Vec<_> = r.iter().map(|r| (r.family, r.chain, &r.comment)).collect();
        c.sort();
        c.dedup();
        assert_eq!(c.len(), r.len());
        // No pair of one family, no rule of that family.
        assert!(rules(&[p("198.19.1.0/24")], &[p("fd00:2::/64")], &[], "vmsec0").is_empty());
    }

    #[test]
    fn comments_are_read_back_as_iptables_save_prints_them() {
        assert_eq!(
            our_comment(r#"-s 1.0.0.0/8 -m comment --comment "vmsecd: no NAT x -> y" -j ACCEPT"#)
                .as_deref(),
            Some("vmsecd: no NAT x -> y")
        );
        assert_eq!(
            our_comment("-m comment --comment vmsecd:x -j ACCEPT").as_deref(),
            Some("vmsecd:x")
        );
        assert_eq!(
            our_comment(r#"-m comment --comment "libvirt \"x\"" -j ACCEPT"#),
            None
        );
        assert_eq!(our_comment("-j LIBVIRT_PRT"), None);
        assert!(is_libvirt_jump("-j LIBVIRT_FWI"));
        assert!(is_libvirt_jump("-o virbr0 -g LIBVIRT_X"));
        assert!(!is_libvirt_jump("-j ACCEPT"));
    }

    #[test]
    fn a_libvirt_jump_above_ours_is_displaced_and_repaired_to_the_top() {
        let rules = mesh_rules();
        let saved = parse_save(AFTER_FRESH_BOOT);
        let nat_lines = &saved[&("nat".to_owned(), "POSTROUTING".to_owned())];
        let nat = chain(&rules, "nat");
        assert_eq!(assess(nat_lines, &nat), ChainState::Displaced);
        let fix = repair_lines("POSTROUTING", nat_lines, &nat);
        assert_eq!(fix.len(), 2);
        assert!(fix[0].starts_with("-D POSTROUTING -s 198.19.1.0/24 -d 198.19.2.0/24 -m comment"));
        assert_eq!(
            fix[1],
            "-I POSTROUTING 1 -s 198.19.1.0/24 -d 198.19.2.0/24 -m comment --comment \
             \"vmsecd: no NAT 198.19.1.0/24 -> 198.19.2.0/24\" -j ACCEPT"
        );
        // FORWARD: ours are above libvirt's jumps there.
        let fwd = &saved[&("filter".to_owned(), "FORWARD".to_owned())];
        assert_eq!(assess(fwd, &chain(&rules, "filter")), ChainState::Ok);
        // Read back after the repair, the chain is in order.
        let fixed: Vec<String> = vec![
            fix[1].trim_start_matches("-I POSTROUTING 1 ").to_owned(),
            "-j LIBVIRT_PRT".to_owned(),
        ];
        assert_eq!(assess(&fixed, &nat), ChainState::Ok);
    }

    #[test]
    fn missing_stale_and_duplicate_rules_are_rewritten() {
        let rules = mesh_rules();
        let fwd = chain(&rules, "filter");
        assert_eq!(assess(&[], &fwd), ChainState::Missing);
        let one = vec![fwd[0].spec(), "-j LIBVIRT_FWI".to_owned()];
        assert_eq!(assess(&one, &fwd), ChainState::Missing);
        let twice = vec![fwd[0].spec(), fwd[1].spec(), fwd[1].spec()];
        assert_eq!(assess(&twice, &fwd), ChainState::Missing);
        let stale = vec![
            "-s 10.0.0.0/8 -m comment --comment \"vmsecd: old\" -j ACCEPT".to_owned(),
            fwd[0].spec(),
            fwd[1].spec(),
        ];
        assert_eq!(assess(&stale, &fwd), ChainState::Missing);
        let fix = repair_lines("FORWARD", &stale, &fwd);
        // Every rule of ours goes, the stale one included; the expected ones come back at 1 and 2.
        assert_eq!(fix.iter().filter(|l| l.starts_with("-D ")).count(), 3);
        assert!(fix[3].starts_with("-I FORWARD 1 -s 198.19.2.0/24"));
        assert!(fix[4].starts_with("-I FORWARD 2 -s 198.19.1.0/24"));
        // Foreign rules are never touched.
        let foreign = vec![
            "-s 10.0.0.0/8 -j DROP".to_owned(),
            fwd[0].spec(),
            fwd[1].spec(),
        ];
        assert_eq!(assess(&foreign, &fwd), ChainState::Ok);
        assert!(repair_lines("FORWARD", &foreign, &fwd)
            .iter()
            .all(|l| !l.contains("10.0.0.0/8")));
        // The clamp needs no position.
        let mangle = chain(&rules, "mangle");
        let after = vec!["-j SOMETHING".to_owned(), mangle[0].spec()];
        assert_eq!(assess(&after, &mangle), ChainState::Ok);
        assert!(repair_lines("FORWARD", &[], &mangle)[0].starts_with("-A FORWARD -o vmsec0 -p tcp"));
    }
}
