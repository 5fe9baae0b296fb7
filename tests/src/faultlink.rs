//! A faulty underlay between two hypervisors, for a kernel without `sch_netem`: loss from nftables
//! (`numgen random mod 100 < P drop` on each host's underlay input), delay, reordering and duplication from
//! `lossy-relay` (src/bin/lossy-relay.rs) bridging two veth pairs in a namespace of its own; and an
//! [`SaWatch`] that samples `vmsecd status --json` on both hosts to count rekeys from SPIs changing.
//!
//! ```text
//!  VM avm --virbr0-- a (198.18.0.1) u0 ==== ra [relay r] rb ==== u0 b (198.18.0.2) --virbr0-- VM bvm
//! ```
//! `r` has no addresses: a and b share one Ethernet segment through the relay, with permanent neighbour
//! entries for each other so that address resolution is not part of the experiment. The VMs' kernels keep
//! reordered IP fragments however far apart (`ipfrag_max_dist=0`, see [`FaultyPair::new`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::{output_of, Netns, NetnsGuard, NsChild};
use crate::traffic::require_tool;
use crate::vmsecd::{vmsecd_bin, Status};

/// The relay's fault settings (see `lossy-relay --help` in its module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Every IPv4 frame waits this long ...
    pub delay_ms: u64,
    /// ... plus uniform(0..=jitter_ms).
    pub jitter_ms: u64,
    /// Percentage of frames held back `reorder_ms` more, so later frames overtake them.
    pub reorder_pct: f64,
    /// How much more.
    pub reorder_ms: u64,
    /// Percentage of frames sent twice.
    pub duplicate_pct: f64,
}

/// The two hypervisors, their VMs and the relay namespace between them.
pub struct FaultyPair {
    /// Hypervisor a (198.18.0.1, VM subnet 198.19.1.0/24).
    pub a: Netns,
    /// Hypervisor b (198.18.0.2, VM subnet 198.19.2.0/24).
    pub b: Netns,
    /// VM behind a (198.19.1.10).
    pub avm: Netns,
    /// VM behind b (198.19.2.10).
    pub bvm: Netns,
    /// The relay's namespace.
    pub r: Netns,
    dir: PathBuf,
    relay: Option<NsChild>,
    generation: u32,
}

impl FaultyPair {
    /// Builds the topology in `g`'s namespaces. Fails (never skips) without nft.
    pub fn new(g: &mut NetnsGuard) -> FaultyPair {
        require_tool("nft", &["--version"], "nftables");
        let a = g.add_ns("a");
        let b = g.add_ns("b");
        let r = g.add_ns("r");
        r.sysctl("net.ipv6.conf.all.disable_ipv6=1");
        r.sysctl("net.ipv6.conf.default.disable_ipv6=1");
        g.veth(&r, "ra", &a, "u0");
        g.veth(&r, "rb", &b, "u0");
        for i in ["ra", "rb"] {
            r.ip(&["link", "set", i, "promisc", "on"]);
        }
        g.add_addr(&a, "u0", "198.18.0.1/24");
        g.add_addr(&b, "u0", "198.18.0.2/24");
        a.add_neighbor("u0", "198.18.0.2", &b.mac("u0"));
        b.add_neighbor("u0", "198.18.0.1", &a.mac("u0"));
        let avm = g.vm_subnet(&a, 1, "avm");
        let bvm = g.vm_subnet(&b, 2, "bvm");
        // Linux drops an IPv4 fragment queue once 64 other fragments from the same source arrived in between
        // (`ipfrag_max_dist`): with reordering on the link, the VMs' own reassembly would lose the large
        // datagrams of `udp_intact` that vmsecd delivered intact. That heuristic belongs to the VMs' kernel, not
        // to what is tested here, so it is off in the VM namespaces.
        for vm in [&avm, &bvm] {
            vm.sysctl("net.ipv4.ipfrag_max_dist=0");
        }
        let dir = g.dir().join("relay");
        std::fs::create_dir_all(&dir).expect("relay dir");
        FaultyPair {
            a,
            b,
            avm,
            bvm,
            r,
            dir,
            relay: None,
            generation: 0,
        }
    }

    /// (Re)starts the relay (`bin`: the test's `env!("CARGO_BIN_EXE_lossy-relay")`) with `faults` and PRNG
    /// `seed`; it exits by itself after `max_run`. Frames in flight in the old relay are lost in the switch.
    pub fn relay(&mut self, bin: &str, faults: Faults, seed: u64, max_run: Duration) {
        self.relay = None;
        self.generation += 1;
        let ready = self.dir.join(format!("ready-{}", self.generation));
        let mut cmd = self.r.command(bin);
        cmd.args(["--a", "ra", "--b", "rb", "--seed", &seed.to_string()])
            .args(["--duration-secs", &max_run.as_secs().to_string()])
            .args(["--delay-ms", &faults.delay_ms.to_string()])
            .args(["--jitter-ms", &faults.jitter_ms.to_string()])
            .args(["--reorder", &faults.reorder_pct.to_string()])
            .args(["--reorder-ms", &faults.reorder_ms.max(1).to_string()])
            .args(["--duplicate", &faults.duplicate_pct.to_string()])
            .arg("--stats")
            .arg(self.stats_path())
            .arg("--ready-file")
            .arg(&ready);
        let mut child = self.r.spawn(&mut cmd);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ready.exists() {
            if let Some(s) = child.try_wait() {
                panic!("lossy-relay exited at start ({s})");
            }
            assert!(Instant::now() < deadline, "lossy-relay not ready in 5 s");
            sleep(Duration::from_millis(10));
        }
        self.relay = Some(child);
    }

    fn stats_path(&self) -> PathBuf {
        self.dir.join(format!("stats-{}", self.generation))
    }

    /// The running relay's counters (`a2b_sent`, `b2a_overtaken`, ...).
    pub fn relay_stats(&self) -> BTreeMap<String, u64> {
        read_stats(&self.stats_path())
    }

    /// Drops `pct` percent of the IKE and ESP datagrams (UDP and IP protocol 50) arriving on each host's
    /// underlay, independently per datagram (nftables `numgen random`); 0 removes the rule.
    pub fn set_loss(&self, pct: u32) {
        for ns in [&self.a, &self.b] {
            set_loss(ns, pct);
        }
    }

    /// How many datagrams the loss rules have dropped so far, on a and on b.
    pub fn lost(&self) -> (u64, u64) {
        (lost(&self.a), lost(&self.b))
    }
}

fn read_stats(path: &Path) -> BTreeMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

const LOSS_TABLE: &str = "vtloss";

/// Sets the loss rule of `ns` (see [`FaultyPair::set_loss`]).
pub fn set_loss(ns: &Netns, pct: u32) {
    assert!(pct <= 100);
    let _ = ns.output("nft", &["delete", "table", "inet", LOSS_TABLE]);
    if pct == 0 {
        return;
    }
    let rules = format!(
        "table inet {LOSS_TABLE} {{\n  chain input {{\n    type filter hook input priority -10; policy accept;\n    \
         iifname \"u0\" meta l4proto {{ udp, esp }} numgen random mod 100 < {pct} counter drop\n  }}\n}}\n"
    );
    let mut child = ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(rules.as_bytes())
        .expect("write to nft");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ns.run("nft", &["list", "table", "inet", LOSS_TABLE]);
    assert!(
        listed.contains(&format!("< {pct}")),
        "loss rule not in place in {}: {listed}",
        ns.name()
    );
}

fn lost(ns: &Netns) -> u64 {
    let out = ns.output("nft", &["list", "table", "inet", LOSS_TABLE]);
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `vmsecd status --json` in `ns`.
pub fn status_of(ns: &Netns) -> Result<Status, String> {
    let out = output_of(ns.command(vmsecd_bin()).args(["status", "--json"]));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// What an [`SaWatch`] saw of one host's tunnel to its peer.
#[derive(Debug, Clone, Default)]
pub struct SaHistory {
    /// Samples taken.
    pub samples: u64,
    /// Samples in which the peer was not established with a Child SA (or status failed).
    pub not_up: u64,
    /// IKE SAs seen (`spi_i/spi_r`), in order of first sight.
    pub ike: Vec<String>,
    /// Inbound Child SA SPIs seen, in order of first sight.
    pub child: Vec<String>,
    /// The last replay-drop count seen per inbound SPI.
    pub replay: BTreeMap<String, u64>,
    /// The last authentication-failure count seen per inbound SPI.
    pub auth: BTreeMap<String, u64>,
    /// The host's last `drops` (ESP for no known SA in, no SA out, ...), as `name value` pairs.
    pub global_drops: BTreeMap<&'static str, u64>,
}

impl SaHistory {
    /// IKE SAs that replaced another.
    pub fn ike_changes(&self) -> usize {
        self.ike.len().saturating_sub(1)
    }
    /// Child SAs that replaced another.
    pub fn child_changes(&self) -> usize {
        self.child.len().saturating_sub(1)
    }
    /// Replay drops over every Child SA seen.
    pub fn replay_drops(&self) -> u64 {
        self.replay.values().sum()
    }
    /// Authentication failures over every Child SA seen.
    pub fn auth_drops(&self) -> u64 {
        self.auth.values().sum()
    }

    fn observe(&mut self, st: Result<Status, String>, peer: &str) {
        self.samples += 1;
        let Ok(st) = st else {
            self.not_up += 1;
            return;
        };
        let d = &st.drops;
        for (k, v) in [
            ("no_sa_in", d.no_sa_in),
            ("no_sa_out", d.no_sa_out),
            ("no_route", d.no_route),
            ("policy", d.policy),
            ("encap_failed", d.encap_failed),
        ] {
            self.global_drops.insert(k, v);
        }
        let Some(p) = st.peers.iter().find(|p| p.name == peer) else {
            self.not_up += 1;
            return;
        };
        if p.state != "established" || p.children.is_empty() {
            self.not_up += 1;
        }
        if let Some(ike) = &p.ike {
            let k = format!("{}/{}", ike.spi_i, ike.spi_r);
            if p.state == "established" && !self.ike.contains(&k) {
                self.ike.push(k);
            }
        }
        for c in &p.children {
            if !self.child.contains(&c.spi_in) {
                self.child.push(c.spi_in.clone());
            }
            self.replay.insert(c.spi_in.clone(), c.drops.replay);
            self.auth.insert(c.spi_in.clone(), c.drops.auth);
        }
    }
}

/// Samples both hosts' status every `period` on a thread until stopped.
pub struct SaWatch {
    stop: Arc<AtomicBool>,
    hist: Arc<Mutex<[SaHistory; 2]>>,
    handle: Option<JoinHandle<()>>,
}

impl SaWatch {
    /// Starts sampling a (peer `hB`) and b (peer `hA`).
    pub fn start(a: &Netns, b: &Netns, period: Duration) -> SaWatch {
        SaWatch::start_hosts(vec![(a.clone(), "hB"), (b.clone(), "hA")], period)
    }

    /// Starts sampling a (peer `hB`) only, when b runs another IKE daemon; b's history stays empty.
    pub fn start_a(a: &Netns, period: Duration) -> SaWatch {
        SaWatch::start_hosts(vec![(a.clone(), "hB")], period)
    }

    fn start_hosts(hosts: Vec<(Netns, &'static str)>, period: Duration) -> SaWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let hist = Arc::new(Mutex::new([SaHistory::default(), SaHistory::default()]));
        let (s, h) = (stop.clone(), hist.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let sts: Vec<_> = hosts.iter().map(|(ns, _)| status_of(ns)).collect();
                {
                    let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                    for (i, (st, (_, peer))) in sts.into_iter().zip(&hosts).enumerate() {
                        h[i].observe(st, peer);
                    }
                }
                if let Some(rest) = period.checked_sub(t.elapsed()) {
                    sleep(rest);
                }
            }
        });
        SaWatch {
            stop,
            hist,
            handle: Some(handle),
        }
    }

    /// What has been seen so far, for a and for b.
    pub fn snapshot(&self) -> [SaHistory; 2] {
        self.hist.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops sampling; returns what was seen on a and on b.
    pub fn finish(mut self) -> [SaHistory; 2] {
        self.stop_thread();
        self.snapshot()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for SaWatch {
    fn drop(&mut self) {
        self.stop_thread();
    }
}
