//! vmsecd's own firewall rules: the mesh exempted from libvirt's NAT and REJECT, and TCP MSS clamped into the
//! TUN; installed at start, checked every [`CHECK_INTERVAL`], repaired, and removed on exit.
//!
//! # Why these rules, and why there
//!
//! A libvirt NAT network (`<forward mode='nat'/>`) breaks a route-based mesh in two ways. Measured on Debian 12
//! with libvirt 9.0, which drives `iptables` (iptables-nft there):
//! - nat `POSTROUTING -j LIBVIRT_PRT` MASQUERADEs everything from the VM subnet that is not for the VM subnet
//!   itself (`-s 198.19.1.0/24 ! -d 198.19.1.0/24 -j MASQUERADE`), so a VM's packet to a remote VM would leave
//!   with the hypervisor's address and no longer match the Child SA's traffic selectors;
//! - filter `FORWARD -j LIBVIRT_FWI` accepts into the bridge only `RELATED,ESTABLISHED` and REJECTs the rest,
//!   so a remote VM cannot open a connection to a local VM.
//!
//! libvirt inserts its per-network rules at the top of its *own* chains and re-creates them on every
//! `net-start` and libvirtd restart, so exemptions placed inside `LIBVIRT_*` chains are undone. An nftables
//! table of our own that only `accept`s does not help either: an accept ends only its own base chain, and
//! libvirt's chain still runs and REJECTs or MASQUERADEs. What survived both restarts in the experiment are
//! rules at the top of the *built-in* chains, ahead of libvirt's jumps:
//! - nat `POSTROUTING`: local subnet → remote subnet `ACCEPT` (ends the nat chain before `-j LIBVIRT_PRT`,
//!   so the connection gets no NAT binding);
//! - filter `FORWARD`: remote subnet → local subnet in from the TUN `ACCEPT`, local → remote out to the TUN
//!   `ACCEPT` (before `-j LIBVIRT_FWX/FWI/FWO`). The inbound rule names the TUN (`-i vmsec0`): a packet with
//!   a remote VM source that arrives in clear text from the underlay is not let in by it.
//!
//! libvirt adds its jumps only when its chains do not exist yet (a fresh boot, or after a flush), and then at
//! position 1, above ours. So this module does not trust the order it left: every [`CHECK_INTERVAL`] (and
//! whenever libvirt's network hook pokes the daemon, see `vmsecd install-hook`) it reads the tables back and
//! re-inserts its rules when one is missing or sits below a `LIBVIRT_` jump.
//!
//! The TUN's MTU is below the bridge's (libvirt guests default to 1500), so a `TCPMSS --clamp-mss-to-pmtu`
//! rule in mangle `FORWARD` for SYNs into the TUN keeps TCP working where ICMP "fragmentation needed" is
//! dropped. It needs no particular position (libvirt puts nothing in mangle `FORWARD`).
//!
//! # Ownership
//!
//! Every rule carries the comment `vmsecd: ...` ([`COMMENT_TAG`]); that comment is how the daemon finds its
//! rules, and the only rules it ever deletes. Changes go through `iptables-restore --noflush`, one transaction
//! per table, so a repair never leaves a moment without the rules.
//!
//! # Backends
//!
//! vmsecd calls the same `iptables`/`ip6tables` commands libvirt 9.x calls, so both land in the same backend:
//! iptables-nft (tables `ip nat`, `ip filter` of nf_tables) or iptables-legacy (x_tables). libvirt 10.4 and
//! newer can instead use its own nftables tables (`firewall_backend = "nftables"` in
//! /etc/libvirt/network.conf, tables `ip libvirt_network` and `ip6 libvirt_network`); rules in `ip nat` do
//! not stop those. [`libvirt_backend`] detects that case, and vmsecd then refuses to pretend: it logs what
//! to do and handles nothing (see the README's "libvirt and the firewall").

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, FirewallMode};
use crate::prefix::Prefix;

/// How often the daemon checks that its rules are present and ahead of libvirt's.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The start of the comment of every rule vmsecd owns.
pub const COMMENT_TAG: &str = "vmsecd:";
/// Where libvirt (10.4 and newer) is told which firewall backend to use.
pub const LIBVIRT_NETWORK_CONF: &str = "/etc/libvirt/network.conf";

/// A firewall command that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command could not be started (not installed, not executable).
    #[error("firewall: cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("firewall: `{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The daemon could not be asked over its control socket.
    #[error("cannot reach vmsecd on control socket {socket}: {source}. Is `vmsecd run` running in this network namespace?")]
    Control {
        /// The socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn of(p: &Prefix) -> Family {
        if p.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Which iptables implementation `iptables -V` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// iptables-nft: x_tables syntax stored in nf_tables (Debian 11 and newer by default).
    Nft,
    /// iptables-legacy: the x_tables kernel interface.
    Legacy,
}

/// Which firewall libvirt drives, as far as this host shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibvirtBackend {
    /// `iptables` (libvirt before 10.4, or `firewall_backend = "iptables"`): handled here.
    Iptables,
    /// libvirt's own nftables tables (`libvirt_network`): not handled; see the module documentation.
    Nftables,
}

/// One rule vmsecd owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// iptables or ip6tables.
    pub family: Family,
    /// `nat`, `filter` or `mangle`.
    pub table: &'static str,
    /// The built-in chain.
    pub chain: &'static str,
    /// The match arguments, e.g. `-s 198.19.1.0/24 -d 198.19.2.0/24`.
    pub matches: String,
    /// The target and its arguments, e.g. `-j ACCEPT`.
    pub target: String,
    /// The comment after [`COMMENT_TAG`]; unique among the rules of one chain.
    pub comment: String,
    /// Whether it must sit above every `LIBVIRT_` jump of its chain.
    pub ahead_of_libvirt: bool,
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
pub fn rules(local: &[Prefix], remote: &[Prefix], interface: &str) -> Vec<Rule> {
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

/// What a check found in one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// Our rules are all there, in order, none of them below a libvirt jump.
    Ok,
    /// One is missing, changed, duplicated or stale.
    Missing,
    /// All there, but a `LIBVIRT_` jump sits above one that must be ahead of it.
    Displaced,
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

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Chains whose rules were missing or changed and were written again (`family table chain`).
    pub restored: Vec<String>,
    /// Chains where libvirt's jumps had landed above our rules, which were moved back on top.
    pub reordered: Vec<String>,
}

impl Report {
    /// True when nothing needed fixing.
    pub fn is_ok(&self) -> bool {
        self.restored.is_empty() && self.reordered.is_empty()
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` with `input` on standard input; its standard output, or a typed error naming the
/// command and its standard error.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let command = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables -V`: which backend, or `None` if the command is not installed.
pub fn iptables_backend(family: Family) -> Result<Option<Backend>, Error> {
    match run(family.tool(), &["-V"], None) {
        Ok(v) if v.contains("legacy") => Ok(Some(Backend::Legacy)),
        Ok(_) => Ok(Some(Backend::Nft)),
        Err(Error::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Which firewall libvirt drives here: its nftables backend if `network_conf` sets
/// `firewall_backend = "nftables"` or libvirt's nftables table `ip libvirt_network` exists; iptables otherwise.
pub fn libvirt_backend(network_conf: &Path) -> LibvirtBackend {
    let configured = std::fs::read_to_string(network_conf)
        .map(|t| parse_firewall_backend(&t))
        .unwrap_or(None);
    match configured.as_deref() {
        Some("nftables") => return LibvirtBackend::Nftables,
        Some(_) => return LibvirtBackend::Iptables,
        None => {}
    }
    // libvirt 10.4+ defaults to nftables when built so; its tables then exist once a network has started.
    if run("nft", &["list", "table", "ip", "libvirt_network"], None).is_ok() {
        LibvirtBackend::Nftables
    } else {
        LibvirtBackend::Iptables
    }
}

/// The value of an uncommented `firewall_backend = "..."` line of libvirt's network.conf.
fn parse_firewall_backend(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "firewall_backend").then(|| v.trim().trim_matches('"').to_owned())
        })
}

/// vmsecd's rules on this host and the commands that keep them in place. All calls block on child processes
/// (tens of milliseconds): the daemon runs them off its event loop.
#[derive(Debug)]
pub struct Firewall {
    rules: Vec<Rule>,
    backend: Backend,
    installed: bool,
}

impl Firewall {
    /// The firewall handling the config asks for on this host: `None` when `firewall = "off"`, when there is
    /// nothing to exempt, when `iptables` is not installed, or when libvirt uses its nftables backend (each
    /// logged once, saying what the administrator can do).
    pub fn for_config(config: &Config) -> Result<Option<Firewall>, Error> {
        let s = config.settings();
        if s.firewall == FirewallMode::Off {
            tracing::info!("firewall = \"off\": vmsecd leaves the firewall alone (libvirt's NAT and REJECT rules apply to mesh traffic unless exempted by hand)");
            return Ok(None);
        }
        let remote: Vec<Prefix> = config.peers().flat_map(|p| p.subnets.clone()).collect();
        let rules = rules(&config.local().subnets, &remote, &s.interface);
        if rules.is_empty() {
            return Ok(None);
        }
        let mut backend = None;
        for family in families(&rules) {
            match iptables_backend(family)? {
                Some(b) => backend = Some(b),
                None => {
                    tracing::warn!(
                        "firewall: `{}` is not installed: no firewall handling is done (libvirt's NAT and REJECT \
                         rules, if any, apply to mesh traffic). Install iptables, or set firewall = \"off\" to \
                         say this is intended",
                        family.tool()
                    );
                    return Ok(None);
                }
            }
        }
        let Some(backend) = backend else {
            return Ok(None);
        };
        if libvirt_backend(Path::new(LIBVIRT_NETWORK_CONF)) == LibvirtBackend::Nftables {
            tracing::warn!(
                "firewall: libvirt uses its nftables backend (firewall_backend = \"nftables\" or table ip \
                 libvirt_network): iptables rules cannot exempt the mesh from its NAT and REJECT, and vmsecd does \
                 not handle that backend yet. Set firewall_backend = \"iptables\" in {LIBVIRT_NETWORK_CONF} and \
                 restart libvirtd, or exempt the mesh by hand and set firewall = \"off\""
            );
            return Ok(None);
        }
        Ok(Some(Firewall {
            rules,
            backend,
            installed: false,
        }))
    }

    /// A firewall for explicit rules (tests, tools).
    pub fn new(rules: Vec<Rule>, backend: Backend) -> Firewall {
        Firewall {
            rules,
            backend,
            installed: false,
        }
    }

    /// The rules it keeps in place.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The iptables backend found.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reads the tables back and re-writes whatever chain is missing a rule or has one below a libvirt jump.
    /// The first call installs the rules (and takes over stale ones a killed vmsecd left).
    pub fn check(&mut self) -> Result<Report, Error> {
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
        self.installed = true;
        Ok(report)
    }

    /// Deletes every rule whose comment starts with [`COMMENT_TAG`], in every table and chain, and nothing else.
    /// Returns how many.
    pub fn remove(&mut self) -> Result<usize, Error> {
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
        self.installed = false;
        Ok(n)
    }
}

fn families(rules: &[Rule]) -> Vec<Family> {
    let mut f: Vec<Family> = rules.iter().map(|r| r.family).collect();
    f.sort();
    f.dedup();
    f
}

/// Logs what a check did, in lines a sysadmin can act on.
fn log_report(report: &Report, trigger: &str) {
    for chain in &report.reordered {
        tracing::warn!(%chain, %trigger, "firewall: libvirt moved its rules above ours; re-inserted");
    }
    for chain in &report.restored {
        tracing::warn!(%chain, %trigger, "firewall: our rules were missing or changed (removed by hand, or a flush?); re-inserted");
    }
}

/// The daemon's handle on its firewall rules: installs them when started, checks and repairs them every
/// [`CHECK_INTERVAL`] in a task of its own (off the packet path), on request ([`Handle::check_now`]), and
/// removes them when [`Handle::remove`] is called or it is dropped.
#[derive(Debug)]
pub struct Handle {
    fw: Option<Arc<Mutex<Firewall>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Handle {
    /// Installs the rules the config asks for and starts the periodic check. Must be called within a tokio
    /// runtime. A handle that does nothing when the config or the host rules firewall handling out.
    pub fn start(config: &Config) -> Result<Handle, Error> {
        let Some(mut fw) = Firewall::for_config(config)? else {
            return Ok(Handle {
                fw: None,
                task: None,
            });
        };
        fw.check()?;
        let n = fw.rules().len();
        tracing::info!(
            rules = n,
            backend = ?fw.backend(),
            "firewall: mesh exempted from libvirt's NAT and REJECT (nat POSTROUTING, filter FORWARD, ahead of libvirt's \
             jumps) and TCP MSS clamped into {}; checked every {}s",
            config.settings().interface,
            CHECK_INTERVAL.as_secs()
        );
        let fw = Arc::new(Mutex::new(fw));
        let task_fw = fw.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let fw = task_fw.clone();
                match tokio::task::spawn_blocking(move || lock(&fw).check()).await {
                    Ok(Ok(r)) => log_report(&r, "periodic check"),
                    Ok(Err(e)) => tracing::error!("{e}; retrying in {}s", CHECK_INTERVAL.as_secs()),
                    Err(e) => tracing::error!("firewall check task failed: {e}"),
                }
            }
        });
        Ok(Handle {
            fw: Some(fw),
            task: Some(task),
        })
    }

    /// Checks and repairs at once (the answer to the control socket's `firewall-check`, which libvirt's network
    /// hook sends): a JSON document `{"firewall": "ok" | "repaired" | "off"}` or `{"error": "..."}`.
    pub async fn check_now(&self) -> String {
        let Some(fw) = self.fw.clone() else {
            return r#"{"firewall":"off"}"#.to_owned();
        };
        match tokio::task::spawn_blocking(move || lock(&fw).check()).await {
            Ok(Ok(r)) => {
                log_report(&r, "firewall-check request");
                if r.is_ok() {
                    tracing::info!(
                        "firewall: check requested over the control socket: rules in place"
                    );
                    r#"{"firewall":"ok"}"#.to_owned()
                } else {
                    r#"{"firewall":"repaired"}"#.to_owned()
                }
            }
            Ok(Err(e)) => {
                tracing::error!("{e}");
                serde_json::json!({ "error": e.to_string() }).to_string()
            }
            Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
        }
    }

    /// Stops the periodic check and deletes exactly vmsecd's rules (by their comment). Idempotent.
    pub fn remove(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        if let Some(fw) = self.fw.take() {
            match lock(&fw).remove() {
                Ok(n) => tracing::info!("firewall: removed vmsecd's {n} rules"),
                Err(e) => tracing::error!(
                    "{e}; vmsecd's rules may be left behind: list them with `iptables-save | grep '{COMMENT_TAG}'`"
                ),
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.remove();
    }
}

fn lock(fw: &Mutex<Firewall>) -> std::sync::MutexGuard<'_, Firewall> {
    fw.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the daemon on `socket` to check its firewall rules now (what libvirt's network hook runs); returns the
/// daemon's answer.
pub fn request_check(socket: &crate::config::ControlSocket) -> Result<String, Error> {
    use std::io::{BufRead as _, BufReader};
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let err = |source| Error::Control {
        socket: socket.to_string(),
        source,
    };
    let addr = match socket {
        crate::config::ControlSocket::Abstract(name) => {
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        crate::config::ControlSocket::Path(p) => SocketAddr::from_pathname(p),
    }
    .map_err(err)?;
    let mut s = UnixStream::connect_addr(&addr).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    s.write_all(b"firewall-check\n").map_err(err)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(err)?;
    Ok(line.trim().to_owned())
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
        rules(&[p("198.19.1.0/24")], &[p("198.19.2.0/24")], "vmsec0")
    }

    fn chain<'a>(rules: &'a [Rule], table: &str) -> Vec<&'a Rule> {
        rules.iter().filter(|r| r.table == table).collect()
    }

    #[test]
    fn rules_cover_every_pair_of_one_family() {
        let r = rules(
            &[p("198.19.1.0/24"), p("fd00:1::/64")],
            &[p("198.19.2.0/24"), p("198.19.3.0/24"), p("fd00:2::/64")],
            "vmsec0",
        );
        let v4: Vec<&Rule> = r.iter().filter(|r| r.family == Family::V4).collect();
        let v6: Vec<&Rule> = r.iter().filter(|r| r.family == Family::V6).collect();
        // 2 pairs: 2 nat + 4 filter + 1 clamp; 1 pair: 1 + 2 + 1.
        assert_eq!(v4.len(), 7);
        assert_eq!(v6.len(), 4);
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
        assert!(rules(&[p("198.19.1.0/24")], &[p("fd00:2::/64")], "vmsec0").is_empty());
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

    #[test]
    fn libvirt_network_conf() {
        assert_eq!(
            parse_firewall_backend("#firewall_backend = \"nftables\"\n"),
            None
        );
        assert_eq!(
            parse_firewall_backend("# x\nfirewall_backend = \"iptables\"\n").as_deref(),
            Some("iptables")
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("network.conf");
        std::fs::write(&conf, "firewall_backend = \"nftables\"\n").unwrap();
        assert_eq!(libvirt_backend(&conf), LibvirtBackend::Nftables);
        std::fs::write(&conf, "firewall_backend=\"iptables\"\n").unwrap();
        assert_eq!(libvirt_backend(&conf), LibvirtBackend::Iptables);
    }
}
