//! strongSwan's charon as a kernel IPsec peer in a guest (see [`crate::kernel_peer`]): kernel-netlink (XFRM)
//! instead of kernel-libipsec, a private strongswan.conf and swanctl directory in the guest's /tmp.

use std::fmt::Write as _;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::guest::{Guest, GuestOutput};
use crate::kernel_peer::{KernelPeer, PeerSa};
use crate::strongswan::{self, parse_list_sas, IkeSaInfo};

/// The Child SA name of [`strongswan::Conn::to_vmsecd`], which [`KernelPeer::initiate_to_vmsecd`] starts.
pub const CHILD: &str = "net";

/// Where a guest charon keeps its files (in the guest's own tmpfs).
const CHARON_DIR: &str = "/tmp/charon";

/// strongSwan's charon in the guest with the kernel's ESP (kernel-netlink: XFRM states, policies, and routes in
/// table 220), started with a private `strongswan.conf` (`STRONGSWAN_CONF`), driven with swanctl.
pub struct GuestCharon<'g> {
    guest: &'g Guest,
    pid: u32,
}

impl<'g> GuestCharon<'g> {
    /// Writes the configuration, starts charon, waits for VICI and loads `conns`.
    pub fn start(guest: &'g Guest, conns: &[strongswan::Conn]) -> GuestCharon<'g> {
        strongswan::require_charon();
        let dir = Path::new(CHARON_DIR);
        let debug = std::env::var_os("VT_CHARON_DEBUG").is_some();
        let plugins = strongswan::kernel_plugins();
        guest.write_file(
            &format!("{CHARON_DIR}/strongswan.conf"),
            strongswan::strongswan_conf_with(dir, debug, &plugins).as_bytes(),
        );
        guest.write_file(
            &format!("{CHARON_DIR}/swanctl/swanctl.conf"),
            strongswan::swanctl_conf(conns).as_bytes(),
        );
        guest.run(&format!(
            "chmod 600 {CHARON_DIR}/swanctl/swanctl.conf; mkdir -p {CHARON_DIR}/swanctl/x509 \
             {CHARON_DIR}/swanctl/x509ca {CHARON_DIR}/swanctl/private {CHARON_DIR}/swanctl/pubkey"
        ));
        let pid = guest.spawn(
            &format!(
                "export STRONGSWAN_CONF={CHARON_DIR}/strongswan.conf\nexec /usr/lib/ipsec/charon\n"
            ),
            &format!("{CHARON_DIR}/charon.out"),
        );
        let c = GuestCharon { guest, pid };
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.swanctl(&["--stats"]).code != 0 {
            assert!(
                Instant::now() < deadline,
                "charon in the guest: no VICI after 60 s\n{}",
                c.diagnostics()
            );
            sleep(Duration::from_millis(200));
        }
        c.swanctl_ok(&["--load-all", "--noprompt"]);
        c
    }

    /// Copies a file of the host into charon's `swanctl/SUB/` (keys and certificates).
    pub fn put(&self, sub: &str, host_file: &Path) {
        let name = host_file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let data = std::fs::read(host_file).expect("read the file for the guest");
        self.guest
            .write_file(&format!("{CHARON_DIR}/swanctl/{sub}/{name}"), &data);
    }

    /// charon's PID in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `swanctl ARGS` in the guest, whatever its exit code.
    pub fn swanctl(&self, args: &[&str]) -> GuestOutput {
        let mut cmd = format!(
            "STRONGSWAN_CONF={CHARON_DIR}/strongswan.conf SWANCTL_DIR={CHARON_DIR}/swanctl swanctl"
        );
        for a in args {
            let _ = write!(cmd, " '{a}'");
        }
        self.guest.exec_timeout(&cmd, Duration::from_secs(90))
    }

    /// `swanctl ARGS`; panics with its output and charon's log if it fails. Returns stdout.
    pub fn swanctl_ok(&self, args: &[&str]) -> String {
        let out = self.swanctl(args);
        assert!(
            out.code == 0,
            "swanctl {args:?} failed ({}):\n{}\n{}\n{}",
            out.code,
            out.stdout,
            out.stderr,
            self.diagnostics()
        );
        out.stdout
    }

    /// Replaces the configuration with `conns` and loads it (what is gone is unloaded).
    pub fn reload(&self, conns: &[strongswan::Conn]) {
        self.guest.write_file(
            &format!("{CHARON_DIR}/swanctl/swanctl.conf"),
            strongswan::swanctl_conf(conns).as_bytes(),
        );
        self.swanctl_ok(&["--load-all", "--noprompt"]);
    }

    /// `swanctl --initiate --child CHILD`.
    pub fn initiate(&self, child: &str, timeout_secs: u32) -> GuestOutput {
        self.swanctl(&[
            "--initiate",
            "--child",
            child,
            "--timeout",
            &timeout_secs.to_string(),
        ])
    }

    /// The SAs charon has now.
    pub fn list_sas(&self) -> Vec<IkeSaInfo> {
        parse_list_sas(&self.swanctl_ok(&["--list-sas", "--raw"]))
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        self.guest
            .exec(&format!("cat {CHARON_DIR}/charon.log"))
            .stdout
    }

    /// The end of charon's log, its output and the guest's XFRM state, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = self.guest.exec(&format!(
            "tail -n 80 {CHARON_DIR}/charon.log; echo '--- charon.out ---'; cat {CHARON_DIR}/charon.out; \
             echo '--- ip xfrm state ---'; ip xfrm state; echo '--- ip xfrm policy ---'; ip xfrm policy"
        ));
        format!("--- guest charon ---\n{}{}", out.stdout, out.stderr)
    }

    /// Stops charon (SIGTERM, then waits up to 10 s for it).
    pub fn stop(self) {
        self.guest.exec(&format!(
            "kill {p}; for i in $(seq 100); do kill -0 {p} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 {p}",
            p = self.pid
        ));
    }
}

impl From<&IkeSaInfo> for PeerSa {
    fn from(s: &IkeSaInfo) -> PeerSa {
        PeerSa {
            spi_i: s.spi_i.clone(),
            spi_r: s.spi_r.clone(),
            peer_initiated: s.charon_initiated,
            algorithms: s.algorithms.clone(),
            children: s
                .children
                .iter()
                .filter(|c| c.state == "INSTALLED")
                .map(|c| {
                    (
                        c.spi_in.clone(),
                        c.spi_out.clone(),
                        c.algorithms.clone(),
                        c.encap,
                    )
                })
                .collect(),
        }
    }
}

impl KernelPeer for GuestCharon<'_> {
    fn kind(&self) -> &'static str {
        "charon"
    }

    fn sas(&self) -> Vec<PeerSa> {
        self.list_sas().iter().map(PeerSa::from).collect()
    }

    fn initiate_to_vmsecd(&self) -> Result<(), String> {
        let out = self.initiate(CHILD, 30);
        if out.code == 0 {
            Ok(())
        } else {
            Err(format!(
                "swanctl --initiate failed:\n{}{}",
                out.stdout, out.stderr
            ))
        }
    }

    fn diagnostics(&self) -> String {
        GuestCharon::diagnostics(self)
    }

    fn forget_sas(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.list_sas().is_empty() {
            if Instant::now() > deadline {
                self.swanctl(&["--terminate", "--ike", "hA", "--force"]);
                break;
            }
            sleep(Duration::from_millis(200));
        }
    }
}
