//! The bed of the strongSwan interop tests: two hypervisors (`a` at 198.18.0.1 runs vmsecd as `hA`, `b` at
//! 198.18.0.2 runs charon), a VM behind each, a work directory, and the timing line each test prints.
//!
//! Declare it before a test's daemons, so that they are dropped (killed) before it deletes the namespaces.

use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::{require_root_and_ip, Netns, NetnsGuard};
use crate::strongswan::{require_charon, Charon, Conn};
use crate::traffic::{self, Capture};
use crate::vmsecd::{is_up, peer, Mesh, Vmsecd};

/// One test's world: see the module documentation.
pub struct Bed {
    /// The namespaces and the work directory.
    pub g: NetnsGuard,
    /// vmsecd's hypervisor.
    pub a: Netns,
    /// charon's hypervisor.
    pub b: Netns,
    /// The VM behind `a` (198.19.1.10).
    pub avm: Netns,
    /// The VM behind `b` (198.19.2.10).
    pub bvm: Netns,
    /// The test's name, for its log lines.
    pub name: String,
    started: Instant,
}

impl Bed {
    /// A bed whose namespaces are named after `prefix` and `name`; fails (never skips) without root, iproute2
    /// or charon.
    pub fn new(prefix: &str, name: &str) -> Bed {
        require_root_and_ip();
        require_charon();
        let mut g = NetnsGuard::new(&format!("{prefix}-{name}"));
        let (a, b, avm, bvm) = g.hypervisor_pair();
        Bed {
            g,
            a,
            b,
            avm,
            bvm,
            name: name.to_owned(),
            started: Instant::now(),
        }
    }

    /// A subdirectory of the test's work directory, created.
    pub fn dir(&mut self, sub: &str) -> PathBuf {
        let d = self.g.dir().join(sub);
        std::fs::create_dir_all(&d).expect("test dir");
        d
    }

    /// charon on `b` with these connections.
    pub fn charon(&mut self, conns: &[Conn]) -> Charon {
        let d = self.dir("charon");
        Charon::start(&self.b, &d, conns)
    }

    /// vmsecd on `a` as host `hA` of `mesh`.
    pub fn vmsecd(&mut self, mesh: &Mesh) -> Vmsecd {
        let d = self.dir("vmsecd");
        Vmsecd::start(&self.a, &d, mesh, "hA")
    }

    /// vmsecd on `a` as host `hA` of a mesh file written as given (keys the [`Mesh`] builder does not have).
    pub fn vmsecd_from_text(&mut self, mesh: &str) -> Vmsecd {
        let d = self.dir("vmsecd");
        let file = d.join("mesh.toml");
        std::fs::write(&file, mesh).expect("mesh file");
        Vmsecd::start_with_file(&self.a, &d, &file, "hA")
    }

    /// A capture of the underlay on `a`.
    pub fn capture(&mut self) -> Capture {
        let d = self.dir("capture");
        Capture::start(&self.a, "u0", &d.join("underlay.pcap"))
    }

    /// `a`'s firewall drops every IKE_SA_INIT *request* vmsecd sends, so the only IKE SA that can come up is
    /// one that charon initiates (vmsecd, on the lower address, would otherwise initiate first).
    pub fn block_vmsecd_initiation(&mut self) {
        traffic::require_tool("nft", &["--version"], "nftables");
        let rules = "table ip vt {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
                     udp dport 500 @th,208,8 34 @th,218,1 0 counter drop\n  }\n}\n";
        let file = self.dir("nft").join("block-init.nft");
        std::fs::write(&file, rules).expect("nft rules");
        self.a.run("nft", &["-f", file.to_str().expect("UTF-8")]);
    }
}

impl Bed {
    /// With vmsecd started (and, if charon is to initiate, [`Bed::block_vmsecd_initiation`] done first): charon
    /// initiates `child` unless vmsecd does, then [`Bed::wait_up_and_ping`].
    pub fn connect(&self, v: &mut Vmsecd, c: &Charon, vmsecd_initiates: bool, child: &str) {
        if !vmsecd_initiates {
            v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
            let out = c.initiate(child, 30);
            assert!(
                out.status.success(),
                "swanctl --initiate failed:\n{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                v.diagnostics(),
                c.diagnostics()
            );
        }
        self.wait_up_and_ping(v, c);
    }

    /// Waits until vmsecd (as `hA`) and charon both hold the same established IKE SA towards each other with an
    /// installed Child SA, then VM a pings VM b five times through it.
    pub fn wait_up_and_ping(&self, v: &mut Vmsecd, c: &Charon) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = v.status().ok().filter(|s| is_up(s, PEER));
            let sas = c.list_sas();
            if let Some(st) = st {
                let ike = peer(&st, PEER).ike.clone().expect("established");
                if sas.iter().any(|s| {
                    s.state == "ESTABLISHED"
                        && s.spi_i == ike.spi_i
                        && s.children.iter().any(|c| c.state == "INSTALLED")
                }) {
                    break;
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "not up after 30 s: {sas:#?}\n{}\n{}",
                    v.diagnostics(),
                    c.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
        assert!(
            traffic::ping_until_ok(&self.avm, BVM, Duration::from_secs(5)),
            "VM a cannot reach VM b\n{}\n{}",
            v.diagnostics(),
            c.diagnostics()
        );
        let (sent, got) = traffic::ping(&self.avm, BVM, 5, "0.1");
        assert_eq!(
            (sent, got),
            (5, 5),
            "ping through the tunnel\n{}",
            v.diagnostics()
        );
    }
}

/// charon's host as vmsecd's mesh names it.
const PEER: &str = "hB";
/// The VM behind `b`.
const BVM: &str = "198.19.2.10";

impl Drop for Bed {
    fn drop(&mut self) {
        eprintln!(
            "[{}] {:.1} s{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            if std::thread::panicking() {
                " (failed)"
            } else {
                ""
            }
        );
    }
}
