//! vmsecd itself in a namespace: write a mesh file, start `vmsecd run`, read `vmsecd status --json`, stop it
//! with SIGTERM.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime};

pub use vmsecd::daemon::control::{ChildStatus, IkeStatus, PeerStatus, Status};

use crate::netns::{output_of, Netns, NsChild};

/// The `vmsecd` binary of this workspace, in the profile the tests were built in.
///
/// # Panics
/// If it is missing, or older than the sources of the daemon (`cargo test -p vmsecd-e2e` alone does not
/// rebuild another package's binary): run the tests with `cargo test --workspace`, or `cargo build -p vmsecd`
/// first.
pub fn vmsecd_bin() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("vmsecd");
    let built = fs::metadata(&bin)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): run the tests with `cargo test --workspace` (or `cargo build -p vmsecd` first)",
                bin.display()
            )
        });
    let newest = ["tunnel/src", "ike/src", "esp/src"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    if let Some(src) = newest {
        assert!(
            src <= built,
            "{} is older than the daemon's sources: run the tests with `cargo test --workspace` (or `cargo build \
             -p vmsecd` first) so that they test the current code",
            bin.display()
        );
    }
    bin
}

/// The newest modification time of the daemon's sources below `dir`. Unit-test modules (`tests.rs`, `*_tests.rs`,
/// and folders `tests/` such as tunnel/src/config/tests/) are left out: they are not part of the binary, so
/// editing them does not make it stale (and cargo does not relink it).
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "tests.rs" || name == "tests" || name.ends_with("_tests.rs") {
            continue;
        }
        let t = if p.is_dir() {
            newest_mtime(&p)
        } else {
            e.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(t);
    }
    newest
}

/// A `[[host]]` entry.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// Name (`--host`).
    pub name: String,
    /// Underlay address.
    pub address: String,
    /// VM subnets.
    pub subnets: Vec<String>,
    /// IKE port, if not 500.
    pub port: Option<u16>,
}

impl HostEntry {
    /// Hypervisor `n` of the dual-stack beds (`dualstack`): underlay 198.18.0.`n`, VM subnets
    /// 198.19.`n`.0/24 and 2001:db8:`n`::/64, IKE on port 500.
    pub fn dual_stack(name: &str, n: u8) -> HostEntry {
        HostEntry {
            name: name.into(),
            address: format!("198.18.0.{n}"),
            subnets: vec![format!("198.19.{n}.0/24"), format!("2001:db8:{n}::/64")],
            port: None,
        }
    }
}

/// The parts of a mesh file the tests vary; the rest is vmsecd's defaults.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The PSK (written to its own file, mode 0600).
    pub psk: String,
    /// `ike_proposals`.
    pub ike_proposals: Vec<String>,
    /// `esp_proposals`.
    pub esp_proposals: Vec<String>,
    /// `encap`: `udp` against strongSwan's kernel-libipsec; empty: no `encap` key (vmsecd's default, `auto`).
    pub encap: String,
    /// `child_lifetime`, e.g. `1h`.
    pub child_lifetime: Option<String>,
    /// `ike_lifetime`.
    pub ike_lifetime: Option<String>,
    /// `rekey_margin`.
    pub rekey_margin: Option<String>,
    /// `dpd_delay` (`0` turns liveness checks off).
    pub dpd_delay: Option<String>,
    /// `firewall`: `auto` or `off` (vmsecd's default: auto).
    pub firewall: Option<String>,
    /// `workers` (vmsecd's default: 1).
    pub workers: Option<u32>,
    /// The hosts.
    pub hosts: Vec<HostEntry>,
}

impl Mesh {
    /// vmsecd on host a (198.18.0.1, 198.19.1.0/24, name `hA`) and a strongSwan gateway on host b
    /// (198.18.0.2, 198.19.2.0/24, name `hB`), ESP in UDP, default proposals.
    pub fn two_hosts(psk: &str) -> Mesh {
        Mesh {
            psk: psk.into(),
            ike_proposals: vec!["aes128gcm16-prfsha256-x25519".into()],
            esp_proposals: vec!["aes128gcm16".into()],
            encap: "udp".into(),
            child_lifetime: None,
            ike_lifetime: None,
            rekey_margin: None,
            dpd_delay: None,
            firewall: None,
            workers: None,
            hosts: vec![
                HostEntry {
                    name: "hA".into(),
                    address: "198.18.0.1".into(),
                    subnets: vec!["198.19.1.0/24".into()],
                    port: None,
                },
                HostEntry {
                    name: "hB".into(),
                    address: "198.18.0.2".into(),
                    subnets: vec!["198.19.2.0/24".into()],
                    port: None,
                },
            ],
        }
    }

    /// The mesh file's text; the PSK file is `psk_file`.
    pub fn render(&self, psk_file: &Path) -> String {
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut o = String::from("[mesh]\n");
        let _ = writeln!(o, "psk_file = {:?}", psk_file.display().to_string());
        let _ = writeln!(o, "ike_proposals = [{}]", list(&self.ike_proposals));
        let _ = writeln!(o, "esp_proposals = [{}]", list(&self.esp_proposals));
        if !self.encap.is_empty() {
            let _ = writeln!(o, "encap = {:?}", self.encap);
        }
        for (k, v) in [
            ("child_lifetime", &self.child_lifetime),
            ("ike_lifetime", &self.ike_lifetime),
            ("rekey_margin", &self.rekey_margin),
            ("dpd_delay", &self.dpd_delay),
            ("firewall", &self.firewall),
        ] {
            if let Some(v) = v {
                let _ = writeln!(o, "{k} = {v:?}");
            }
        }
        if let Some(w) = self.workers {
            let _ = writeln!(o, "workers = {w}");
        }
        for h in &self.hosts {
            let _ = write!(
                o,
                "\n[[host]]\nname = {:?}\naddress = {:?}\nsubnets = [{}]\n",
                h.name,
                h.address,
                list(&h.subnets)
            );
            if let Some(p) = h.port {
                let _ = writeln!(o, "port = {p}");
            }
        }
        o
    }
}

/// A running `vmsecd run` in a namespace, logging at debug level to a file.
#[derive(Debug)]
pub struct Vmsecd {
    ns: Netns,
    bin: PathBuf,
    log: PathBuf,
    child: NsChild,
}

impl Vmsecd {
    /// Writes `mesh` (and its PSK file) into `dir` and starts vmsecd as `host` in `ns`.
    pub fn start(ns: &Netns, dir: &Path, mesh: &Mesh, host: &str) -> Vmsecd {
        fs::create_dir_all(dir).expect("vmsecd dir");
        let psk = dir.join("psk");
        fs::write(&psk, format!("{}\n", mesh.psk)).expect("psk file");
        fs::set_permissions(&psk, fs::Permissions::from_mode(0o600)).expect("chmod psk");
        let file = dir.join("mesh.toml");
        fs::write(&file, mesh.render(&psk)).expect("mesh file");
        Vmsecd::start_with_file(ns, dir, &file, host)
    }

    /// Starts vmsecd as `host` in `ns` with a mesh file the caller wrote (and the keys it names); logs into
    /// `dir`.
    pub fn start_with_file(ns: &Netns, dir: &Path, file: &Path, host: &str) -> Vmsecd {
        Vmsecd::start_with_args(ns, dir, file, host, &[])
    }

    /// [`Vmsecd::start_with_file`] with more arguments for `vmsecd run` (e.g. `--libvirt-dir DIR`).
    pub fn start_with_args(
        ns: &Netns,
        dir: &Path,
        file: &Path,
        host: &str,
        args: &[&str],
    ) -> Vmsecd {
        fs::create_dir_all(dir).expect("vmsecd dir");
        let bin = vmsecd_bin();
        let log = dir.join("vmsecd.log");
        let f = fs::File::create(&log).expect("vmsecd log");
        let mut cmd = ns.command(&bin);
        cmd.args(["run", "--config"])
            .arg(file)
            .args(["--host", host])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("VT_VMSECD_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdout(Stdio::from(f.try_clone().expect("dup")))
            .stderr(Stdio::from(f));
        let child = ns.spawn(&mut cmd);
        Vmsecd {
            ns: ns.clone(),
            bin,
            log,
            child,
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Stops the daemon (SIGSTOP) for `d`, then lets it go on (SIGCONT): it sends and answers nothing meanwhile,
    /// and handles what queued up when it resumes.
    pub fn pause_for(&self, d: Duration) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: plain kill(2) on the vmsecd process this helper started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        std::thread::sleep(d);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT");
    }

    /// `vmsecd status --json`, or the reason it failed (daemon not up yet, or gone).
    pub fn status(&self) -> Result<Status, String> {
        let out = output_of(self.ns.command(&self.bin).args(["status", "--json"]));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "status --json is not a Status document ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls the status until `pred` holds; returns it, or panics after `timeout` with the log.
    pub fn wait_status(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait() {
                panic!(
                    "vmsecd exited ({s}) while waiting for {what}:\n{}",
                    self.diagnostics()
                );
            }
            let last = match self.status() {
                Ok(s) if pred(&s) => return s,
                other => other,
            };
            if Instant::now() > deadline {
                panic!(
                    "vmsecd: {what} not reached in {timeout:?}; last status: {last:#?}\n{}",
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the log contains `needle`; panics after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "vmsecd's log does not show {needle:?} after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The last lines of the log, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- vmsecd log ({}), last 60 lines ---\n{}",
            self.log.display(),
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }

    /// Sends SIGTERM to its PID and waits up to `timeout` for it to exit; `None` if it has not (then it is
    /// killed when dropped).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.signal("TERM");
        self.child.wait_timeout(timeout)
    }

    /// Kills it with SIGKILL (by PID): a crash, nothing cleaned up.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait()
    }
}

/// The status of peer `name`.
pub fn peer<'a>(s: &'a Status, name: &str) -> &'a PeerStatus {
    s.peers
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no peer {name} in the status: {s:#?}"))
}

/// True when peer `name` has an established IKE SA with at least one Child SA.
pub fn is_up(s: &Status, name: &str) -> bool {
    s.peers
        .iter()
        .any(|p| p.name == name && p.state == "established" && !p.children.is_empty())
}
