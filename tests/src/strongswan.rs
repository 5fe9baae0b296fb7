//! strongSwan's charon as an IKEv2 peer in a network namespace, driven through swanctl.
//!
//! This kernel has no ESP (shared/conventions.md), so charon runs its userspace ESP, the `kernel-libipsec`
//! plugin: a TUN device `ipsec0`, ESP always in UDP 4500 (`encap = yes` in every connection). Each [`Charon`]
//! has a private directory holding its `strongswan.conf` (`STRONGSWAN_CONF`), `swanctl/swanctl.conf`
//! (`SWANCTL_DIR`), its VICI socket, its log and a `run/` directory bind-mounted over `/run` in a private mount
//! namespace (charon insists on `/run/charon.pid`); nothing under /etc is read or written.
//!
//! [`require_charon`] panics, naming the Debian package to install, when charon, swanctl or a plugin the tests
//! need is missing: the interop tests fail, never skip.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::{output_of, Netns, NsChild};

/// The daemon.
pub const CHARON: &str = "/usr/lib/ipsec/charon";
/// Where charon's plugins live on Debian.
pub const PLUGIN_DIR: &str = "/usr/lib/ipsec/plugins";

/// The plugins charon loads here, in this order (`load_modular = no`): crypto (openssl for ECP and MODP, gcm
/// and chapoly for the AEADs), kernel-libipsec for ESP in userspace, vici for swanctl.
pub const PLUGINS: &[&str] = &[
    "random",
    "nonce",
    "openssl",
    "pem",
    "pkcs1",
    "pkcs8",
    "pubkey",
    "x509",
    "revocation",
    "constraints",
    "kdf",
    "hmac",
    "sha1",
    "sha2",
    "aes",
    "gcm",
    "chapoly",
    "curve25519",
    "kernel-libipsec",
    "kernel-netlink",
    "socket-default",
    "vici",
];

/// The Debian 12 package holding each plugin file.
fn package_of(plugin: &str) -> &'static str {
    match plugin {
        "openssl" | "gcm" => "libstrongswan-standard-plugins",
        "chapoly" | "curve25519" => "libstrongswan-extra-plugins",
        "kernel-libipsec" => "libcharon-extra-plugins",
        "socket-default" => "strongswan-libcharon",
        "vici" => "strongswan-swanctl",
        _ => "libstrongswan",
    }
}

/// Panics with what to install unless charon, swanctl and every plugin of [`PLUGINS`] are there.
pub fn require_charon() {
    let mut missing = Vec::new();
    if !Path::new(CHARON).is_file() {
        missing.push(format!("{CHARON} (apt-get install strongswan-charon)"));
    }
    // `swanctl --help` runs without a daemon; only whether it starts matters.
    if Command::new("swanctl").arg("--help").output().is_err() {
        missing.push("swanctl (apt-get install strongswan-swanctl)".to_owned());
    }
    for p in PLUGINS {
        let file = Path::new(PLUGIN_DIR).join(format!("libstrongswan-{p}.so"));
        if !file.is_file() {
            missing.push(format!(
                "charon plugin {p} ({}; apt-get install {})",
                file.display(),
                package_of(p)
            ));
        }
    }
    if !missing.is_empty() {
        panic!(
            "the strongSwan interop tests need charon 5.9 with kernel-libipsec and the openssl, gcm and chapoly \
             plugins; missing:\n  {}\nThese tests never skip.",
            missing.join("\n  ")
        );
    }
}

/// One swanctl connection with one child, as charon's side of a tunnel.
#[derive(Debug, Clone)]
pub struct Conn {
    /// Connection name (`swanctl --terminate --ike NAME`).
    pub name: String,
    /// Child name (`swanctl --initiate --child NAME`).
    pub child: String,
    /// charon's underlay address.
    pub local_addr: String,
    /// The peer's underlay address.
    pub remote_addr: String,
    /// IKE identities (default: the addresses, as in vmsecd).
    pub local_id: String,
    /// The identity the peer must prove.
    pub remote_id: String,
    /// The pre-shared key.
    pub psk: String,
    /// IKE proposals, strongSwan syntax.
    pub proposals: String,
    /// ESP proposals, strongSwan syntax.
    pub esp_proposals: String,
    /// charon's selectors (its VM subnet).
    pub local_ts: String,
    /// The peer's selectors.
    pub remote_ts: String,
    /// IKE SA rekey time; long by default (vmsecd does not rekey IKE SAs yet).
    pub ike_rekey_time: String,
    /// Child SA rekey time.
    pub child_rekey_time: String,
    /// Child SA hard lifetime (default: charon's, 110% of the rekey time).
    pub child_life_time: Option<String>,
    /// Child SA rekey jitter (default: charon's, life_time - rekey_time).
    pub child_rand_time: Option<String>,
    /// `start_action` of the child: `none`, `start` or `trap`.
    pub start_action: String,
    /// Liveness checks after this long idle (`0s`: off).
    pub dpd_delay: String,
    /// Raw RSA public key authentication instead of the PSK (see [`Conn::with_pubkeys`]).
    pub pubkeys: Option<Pubkeys>,
    /// X.509 authentication instead of the PSK: charon's certificate, a file name in `swanctl/x509/` (see
    /// [`Conn::with_cert`]).
    pub cert: Option<String>,
    /// `encap = yes` (force ESP in UDP even without NAT): on by default, as kernel-libipsec needs it; off for a
    /// charon with kernel ESP (raw protocol 50 unless NAT is detected).
    pub encap: bool,
    /// More children, one per subnet pair as a strongSwan gateway with several subnets is often configured:
    /// (name, local_ts, remote_ts), otherwise like the first.
    pub more_children: Vec<(String, String, String)>,
}

/// swanctl's raw public key authentication: `auth = pubkey` with `pubkeys = FILE` on both sides; the files are
/// in the charon's `swanctl/pubkey/`, its private key in `swanctl/private/` (see [`pki_keygen`]).
#[derive(Debug, Clone)]
pub struct Pubkeys {
    /// charon's own public key, a file name in `swanctl/pubkey/`.
    pub local: String,
    /// The public key the peer must sign with, a file name in `swanctl/pubkey/`.
    pub remote: String,
}

impl Conn {
    /// charon on host b (198.18.0.2, VMs in 198.19.2.0/24) towards vmsecd on host a (198.18.0.1,
    /// 198.19.1.0/24), with vmsecd's default proposals.
    pub fn to_vmsecd(psk: &str) -> Conn {
        Conn {
            name: "hA".into(),
            child: "net".into(),
            local_addr: "198.18.0.2".into(),
            remote_addr: "198.18.0.1".into(),
            local_id: "198.18.0.2".into(),
            remote_id: "198.18.0.1".into(),
            psk: psk.into(),
            proposals: "aes128gcm16-prfsha256-x25519".into(),
            esp_proposals: "aes128gcm16".into(),
            local_ts: "198.19.2.0/24".into(),
            remote_ts: "198.19.1.0/24".into(),
            ike_rekey_time: "24h".into(),
            child_rekey_time: "1h".into(),
            child_life_time: None,
            child_rand_time: None,
            start_action: "none".into(),
            dpd_delay: "0s".into(),
            pubkeys: None,
            cert: None,
            encap: true,
            more_children: Vec::new(),
        }
    }

    /// This connection with certificates on both sides instead of the PSK: charon's own is `cert` in
    /// `swanctl/x509/` (see [`pki_issue`]); the peer's must chain to a CA in `swanctl/x509ca/`.
    pub fn with_cert(mut self, cert: &str) -> Conn {
        self.cert = Some(cert.into());
        self
    }

    /// This connection with raw public key authentication on both sides instead of the PSK.
    pub fn with_pubkeys(mut self, local: &str, remote: &str) -> Conn {
        self.pubkeys = Some(Pubkeys {
            local: local.into(),
            remote: remote.into(),
        });
        self
    }

    /// The `local` and `remote` sections' authentication lines (the `id` first: swanctl binds a raw public key
    /// to the identity of its section).
    fn auth_lines(&self, local: bool) -> String {
        let id = if local {
            &self.local_id
        } else {
            &self.remote_id
        };
        if let Some(cert) = &self.cert {
            return if local {
                format!("auth = pubkey\n      id = {id}\n      certs = {cert}")
            } else {
                format!("auth = pubkey\n      id = {id}")
            };
        }
        match &self.pubkeys {
            None => format!("auth = psk\n      id = {id}"),
            Some(p) => format!(
                "auth = pubkey\n      id = {id}\n      pubkeys = {}",
                if local { &p.local } else { &p.remote }
            ),
        }
    }

    fn render_connection(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"  {name} {{
    version = 2
    local_addrs = {la}
    remote_addrs = {ra}
    {encap}
    proposals = {prop}
    rekey_time = {ikerk}
    reauth_time = 0
    dpd_delay = {dpd}
    unique = no
    local {{
      {lauth}
    }}
    remote {{
      {rauth}
    }}
    children {{
"#,
            name = self.name,
            la = self.local_addr,
            ra = self.remote_addr,
            prop = self.proposals,
            ikerk = self.ike_rekey_time,
            dpd = self.dpd_delay,
            encap = if self.encap {
                "# kernel-libipsec carries ESP in UDP only: force UDP encapsulation even without NAT.\n    encap = yes"
            } else {
                "encap = no"
            },
            lauth = self.auth_lines(true),
            rauth = self.auth_lines(false),
        );
        self.render_child(out, &self.child, &self.local_ts, &self.remote_ts);
        for (name, lts, rts) in &self.more_children {
            self.render_child(out, name, lts, rts);
        }
        out.push_str("    }\n  }\n");
    }

    fn render_child(&self, out: &mut String, name: &str, lts: &str, rts: &str) {
        let _ = write!(
            out,
            r#"      {name} {{
        mode = tunnel
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        rekey_time = {crk}
"#,
            esp = self.esp_proposals,
            crk = self.child_rekey_time,
        );
        if let Some(l) = &self.child_life_time {
            let _ = writeln!(out, "        life_time = {l}");
        }
        if let Some(r) = &self.child_rand_time {
            let _ = writeln!(out, "        rand_time = {r}");
        }
        let _ = write!(
            out,
            "        start_action = {}\n        dpd_action = clear\n      }}\n",
            self.start_action
        );
    }
}

/// Renders swanctl.conf for these connections (each with its own PSK secret).
pub fn swanctl_conf(conns: &[Conn]) -> String {
    let mut out = String::from("connections {\n");
    for c in conns {
        c.render_connection(&mut out);
    }
    out += "}\nsecrets {\n";
    for (i, c) in conns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pubkeys.is_none() && c.cert.is_none())
    {
        let _ = write!(
            out,
            "  ike-{i} {{\n    id-local = {}\n    id-remote = {}\n    secret = \"{}\"\n  }}\n",
            c.local_id, c.remote_id, c.psk
        );
    }
    out += "}\n";
    out
}

/// Makes an RSA key pair with strongSwan's `pki` for the charon whose directory is `dir`:
/// `swanctl/private/NAME.pem` (PKCS#1, as `pki --gen --type rsa --size BITS --outform pem` writes it, mode 0600)
/// and `swanctl/pubkey/NAME.pub.pem` (SubjectPublicKeyInfo, `pki --pub --outform pem`). Returns the two paths.
///
/// # Panics
/// If `pki` fails (apt-get install strongswan-pki).
pub fn pki_keygen(dir: &Path, name: &str, bits: u32) -> (PathBuf, PathBuf) {
    let private_dir = dir.join("swanctl/private");
    let pubkey_dir = dir.join("swanctl/pubkey");
    fs::create_dir_all(&pubkey_dir).expect("swanctl/pubkey");
    let generated = pki_key(&private_dir, name, bits);
    let private = private_dir.join(format!("{name}.pem"));
    fs::rename(&generated, &private).expect("private key");
    let public = pubkey_dir.join(format!("{name}.pub.pem"));
    let public_pem = pki(&[
        "--pub",
        "--in",
        private.to_str().expect("UTF-8"),
        "--outform",
        "pem",
    ]);
    fs::write(&public, public_pem).expect("public key");
    (private, public)
}

/// The plugins of a charon with the kernel's ESP (in a guest, see `kernel_peer`): [`PLUGINS`] without
/// kernel-libipsec, so kernel-netlink installs XFRM states and policies.
pub fn kernel_plugins() -> Vec<&'static str> {
    PLUGINS
        .iter()
        .copied()
        .filter(|p| *p != "kernel-libipsec")
        .collect()
}

/// Renders strongswan.conf for a charon whose files live in `dir`. `debug` raises the IKE log level.
pub fn strongswan_conf(dir: &Path, debug: bool) -> String {
    strongswan_conf_with(dir, debug, PLUGINS)
}

/// [`strongswan_conf`] with this plugin list.
pub fn strongswan_conf_with(dir: &Path, debug: bool, plugins: &[&str]) -> String {
    let d = dir.display();
    let (ike, other) = if debug { (3, 2) } else { (2, 1) };
    format!(
        r#"# Written by vmsecd's interop tests: one private charon per network namespace.
charon {{
  load_modular = no
  load = {plugins}
  install_routes = yes
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
  filelog {{
    charon {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      ike_name = yes
      flush_line = yes
      append = no
      default = {other}
      ike = {ike}
      cfg = 2
      enc = {enc}
      knl = 2
      esp = {other}
      net = {other}
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
  load = random nonce openssl pem pkcs1 pkcs8 pubkey x509
}}
"#,
        plugins = plugins.join(" "),
        enc = if debug { 2 } else { 1 },
    )
}

/// A running charon in a namespace.
#[derive(Debug)]
pub struct Charon {
    ns: Netns,
    dir: PathBuf,
    child: NsChild,
}

/// One SA as `swanctl --list-sas --raw` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IkeSaInfo {
    /// Connection name.
    pub name: String,
    /// `ESTABLISHED`, `CONNECTING`, ...
    pub state: String,
    /// Initiator SPI, 16 hex digits.
    pub spi_i: String,
    /// Responder SPI, 16 hex digits.
    pub spi_r: String,
    /// True if charon initiated it.
    pub charon_initiated: bool,
    /// Algorithms in vmsecd's notation (`AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519`).
    pub algorithms: String,
    /// Its Child SAs.
    pub children: Vec<ChildSaInfo>,
}

/// One Child SA from `swanctl --list-sas --raw`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChildSaInfo {
    /// Child name.
    pub name: String,
    /// `INSTALLED`, `REKEYED`, `DELETING`, ...
    pub state: String,
    /// charon's inbound SPI, 8 hex digits.
    pub spi_in: String,
    /// charon's outbound SPI.
    pub spi_out: String,
    /// Algorithms in vmsecd's notation (`AES_GCM_16_128`, `AES_CBC_256/HMAC_SHA2_256_128`).
    pub algorithms: String,
    /// True if ESP is in UDP.
    pub encap: bool,
    /// Local selectors.
    pub local_ts: Vec<String>,
    /// Remote selectors.
    pub remote_ts: Vec<String>,
    /// Packets in.
    pub packets_in: u64,
    /// Packets out.
    pub packets_out: u64,
}

impl Charon {
    /// Writes the configuration into `dir` (created if needed), starts charon in `ns`, waits for its VICI socket
    /// and loads `conns` with `swanctl --load-all`.
    ///
    /// # Panics
    /// If charon does not come up or the configuration does not load (with charon's log).
    pub fn start(ns: &Netns, dir: &Path, conns: &[Conn]) -> Charon {
        require_charon();
        let debug = std::env::var_os("VT_CHARON_DEBUG").is_some();
        fs::create_dir_all(dir.join("run")).expect("charon run dir");
        fs::create_dir_all(dir.join("swanctl")).expect("swanctl dir");
        fs::write(dir.join("strongswan.conf"), strongswan_conf(dir, debug))
            .expect("strongswan.conf");
        let conf = dir.join("swanctl/swanctl.conf");
        fs::write(&conf, swanctl_conf(conns)).expect("swanctl.conf");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).expect("chmod");
        let out = fs::File::create(dir.join("charon.out")).expect("charon.out");
        let mut cmd = ns.command("env");
        cmd.arg(format!(
            "STRONGSWAN_CONF={}",
            dir.join("strongswan.conf").display()
        ))
        .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
        // Every step execs, so the PID of `ip netns exec` becomes charon's own.
        .arg(format!(
            "mount --bind {} /run && exec {CHARON}",
            dir.join("run").display()
        ))
        .stdout(Stdio::from(out.try_clone().expect("dup")))
        .stderr(Stdio::from(out));
        let child = ns.spawn(&mut cmd);
        let mut charon = Charon {
            ns: ns.clone(),
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = charon.child.try_wait() {
                panic!("charon exited at start-up ({s}):\n{}", charon.diagnostics());
            }
            if charon.dir.join("charon.vici").exists()
                && charon.swanctl(&["--stats"]).status.success()
            {
                break;
            }
            if Instant::now() > deadline {
                panic!(
                    "charon's VICI socket did not come up in 15 s:\n{}",
                    charon.diagnostics()
                );
            }
            sleep(Duration::from_millis(50));
        }
        charon.swanctl_ok(&["--load-all", "--noprompt"]);
        charon
    }

    /// Replaces the configuration with `conns` (`swanctl --load-all` also unloads what is gone).
    pub fn reload(&self, conns: &[Conn]) {
        fs::write(self.dir.join("swanctl/swanctl.conf"), swanctl_conf(conns))
            .expect("swanctl.conf");
        self.swanctl_ok(&["--load-all", "--noprompt"]);
    }

    /// Waits until the log contains `needle`; panics after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if Instant::now() > deadline {
                panic!(
                    "charon's log does not show {needle:?} after {timeout:?}\n{}",
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// charon's PID.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `swanctl ARGS` against this charon; whatever the exit status.
    pub fn swanctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.ns.command("swanctl");
        cmd.env("STRONGSWAN_CONF", self.dir.join("strongswan.conf"))
            .env("SWANCTL_DIR", self.dir.join("swanctl"))
            .args(args);
        output_of(&mut cmd)
    }

    /// `swanctl ARGS`, panicking with its output and charon's log if it fails. Returns stdout.
    pub fn swanctl_ok(&self, args: &[&str]) -> String {
        let out = self.swanctl(args);
        if !out.status.success() {
            panic!(
                "swanctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `swanctl --initiate --child CHILD` (waits for the outcome, at most `timeout_secs`); the output, success
    /// or not.
    pub fn initiate(&self, child: &str, timeout_secs: u32) -> Output {
        self.swanctl(&[
            "--initiate",
            "--child",
            child,
            "--timeout",
            &timeout_secs.to_string(),
        ])
    }

    /// `swanctl --terminate --ike NAME`, waiting for the delete to be acknowledged.
    pub fn terminate_ike(&self, name: &str) -> String {
        self.swanctl_ok(&["--terminate", "--ike", name, "--timeout", "10"])
    }

    /// The SAs charon has now.
    pub fn list_sas(&self) -> Vec<IkeSaInfo> {
        let text = self.swanctl_ok(&["--list-sas", "--raw"]);
        parse_list_sas(&text)
    }

    /// Polls [`Charon::list_sas`] until `pred` holds for it; returns that list, or panics after `timeout`.
    pub fn wait_sas(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[IkeSaInfo]) -> bool,
    ) -> Vec<IkeSaInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let sas = self.list_sas();
            if pred(&sas) {
                return sas;
            }
            if Instant::now() > deadline {
                panic!(
                    "charon: {what} not reached in {timeout:?}; its SAs: {sas:#?}\n{}",
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("charon.log")).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The tail of the log and charon's own output, for failure messages.
    pub fn diagnostics(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        let out = fs::read_to_string(self.dir.join("charon.out")).unwrap_or_default();
        format!(
            "--- charon log ({}), last 80 lines ---\n{tail}\n--- charon stdout/stderr ---\n{out}",
            self.dir.join("charon.log").display()
        )
    }

    /// Stops charon: SIGTERM by PID, then SIGKILL if it has not exited after `timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.signal("TERM");
        let s = self.child.wait_timeout(timeout);
        if s.is_none() {
            self.child.kill();
        }
        s
    }
}

// ---- `swanctl --list-sas --raw` ----

/// A VICI message as swanctl's raw output prints it: `key=value`, `key=[a b]`, `name {...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Vici {
    Value(String),
    List(Vec<String>),
    Section(Vec<(String, Vici)>),
}

impl Vici {
    fn get(&self, key: &str) -> Option<&Vici> {
        match self {
            Vici::Section(items) => items.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> &str {
        match self.get(key) {
            Some(Vici::Value(v)) => v,
            _ => "",
        }
    }

    fn list(&self, key: &str) -> Vec<String> {
        match self.get(key) {
            Some(Vici::List(v)) => v.clone(),
            _ => Vec::new(),
        }
    }
}

fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        match ch {
            '{' | '}' | '[' | ']' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(ch.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_section(toks: &[String], i: &mut usize) -> Vec<(String, Vici)> {
    let mut items = Vec::new();
    while *i < toks.len() {
        let t = &toks[*i];
        *i += 1;
        if t == "}" {
            break;
        }
        if let Some(key) = t.strip_suffix('=') {
            // `key=[` `a` `b` `]`, or `key=` followed by a bare `[` after splitting.
            if toks.get(*i).map(String::as_str) == Some("[") {
                *i += 1;
                let mut v = Vec::new();
                while *i < toks.len() && toks[*i] != "]" {
                    v.push(toks[*i].clone());
                    *i += 1;
                }
                *i += 1;
                items.push((key.to_owned(), Vici::List(v)));
            } else {
                items.push((key.to_owned(), Vici::Value(String::new())));
            }
        } else if let Some((key, value)) = t.split_once('=') {
            items.push((key.to_owned(), Vici::Value(value.to_owned())));
        } else if toks.get(*i).map(String::as_str) == Some("{") {
            *i += 1;
            let inner = parse_section(toks, i);
            items.push((t.clone(), Vici::Section(inner)));
        }
    }
    items
}

/// vmsecd's notation for charon's algorithm keys in `s`.
fn algorithms(s: &Vici) -> String {
    let mut parts = Vec::new();
    let encr = s.str("encr-alg");
    let keysize = s.str("encr-keysize");
    if encr.starts_with("AES") && !keysize.is_empty() {
        parts.push(format!("{encr}_{keysize}"));
    } else {
        parts.push(encr.to_owned());
    }
    for k in ["integ-alg", "prf-alg", "dh-group"] {
        let v = s.str(k);
        if !v.is_empty() {
            parts.push(v.to_owned());
        }
    }
    parts.join("/")
}

/// Parses `swanctl --list-sas --raw`.
pub fn parse_list_sas(text: &str) -> Vec<IkeSaInfo> {
    let mut sas = Vec::new();
    for line in text.lines() {
        let Some(body) = line.strip_prefix("list-sa event ") else {
            continue;
        };
        let toks = tokens(body);
        let mut i = 0;
        if toks.first().map(String::as_str) != Some("{") {
            continue;
        }
        i += 1;
        for (name, sa) in parse_section(&toks, &mut i) {
            let children = match sa.get("child-sas") {
                Some(Vici::Section(cs)) => cs
                    .iter()
                    .map(|(_, c)| ChildSaInfo {
                        name: c.str("name").to_owned(),
                        state: c.str("state").to_owned(),
                        spi_in: c.str("spi-in").to_owned(),
                        spi_out: c.str("spi-out").to_owned(),
                        algorithms: algorithms(c),
                        encap: c.str("encap") == "yes",
                        local_ts: c.list("local-ts"),
                        remote_ts: c.list("remote-ts"),
                        packets_in: c.str("packets-in").parse().unwrap_or(0),
                        packets_out: c.str("packets-out").parse().unwrap_or(0),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            sas.push(IkeSaInfo {
                name,
                state: sa.str("state").to_owned(),
                spi_i: sa.str("initiator-spi").to_owned(),
                spi_r: sa.str("responder-spi").to_owned(),
                charon_initiated: sa.str("initiator") == "yes",
                algorithms: algorithms(&sa),
                children,
            });
        }
    }
    sas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_list_sas() {
        let text = "list-sa event {gw {uniqueid=1 version=2 state=ESTABLISHED local-host=198.18.0.2 \
            initiator=yes initiator-spi=419a427fdcd6797d responder-spi=9c573ae3d25d1ffa nat-remote=yes \
            encr-alg=AES_CBC encr-keysize=256 integ-alg=HMAC_SHA2_256_128 prf-alg=PRF_HMAC_SHA2_256 \
            dh-group=MODP_2048 established=103 child-sas {net-1 {name=net uniqueid=1 reqid=1 \
            state=INSTALLED mode=TUNNEL protocol=ESP encap=yes spi-in=e247672f spi-out=7d199524 \
            encr-alg=AES_GCM_16 encr-keysize=128 bytes-in=34 packets-in=30 local-ts=[198.19.2.0/24] \
            remote-ts=[198.19.1.0/24 198.19.3.0/24]}}}}\nlist-sas reply {}\n";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 1);
        let sa = &sas[0];
        assert_eq!(sa.name, "gw");
        assert!(sa.charon_initiated);
        assert_eq!(sa.spi_i, "419a427fdcd6797d");
        assert_eq!(
            sa.algorithms,
            "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
        );
        let c = &sa.children[0];
        assert_eq!(
            (c.spi_in.as_str(), c.spi_out.as_str()),
            ("e247672f", "7d199524")
        );
        assert_eq!(c.algorithms, "AES_GCM_16_128");
        assert_eq!(c.remote_ts, vec!["198.19.1.0/24", "198.19.3.0/24"]);
        assert_eq!(c.packets_in, 30);
        assert!(parse_list_sas("list-sas reply {}\n").is_empty());
    }
}

/// A key pair and certificate made with strongSwan's `pki`.
#[derive(Debug, Clone)]
pub struct PkiCert {
    /// The private key (PKCS#1 PEM, mode 0600).
    pub key: PathBuf,
    /// The certificate (PEM).
    pub cert: PathBuf,
}

fn pki(args: &[&str]) -> Vec<u8> {
    let out = Command::new("pki")
        .args(args)
        .output()
        .expect("pki (apt-get install strongswan-pki)");
    assert!(
        out.status.success(),
        "pki {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn pki_key(dir: &Path, name: &str, bits: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).expect("pki dir");
    let key = dir.join(format!("{name}.key.pem"));
    let bits = bits.to_string();
    fs::write(
        &key,
        pki(&[
            "--gen",
            "--type",
            "rsa",
            "--size",
            &bits,
            "--outform",
            "pem",
        ]),
    )
    .expect("key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    key
}

/// A self-signed CA made with `pki --self --ca`, in `dir` as NAME.key.pem and NAME.pem.
pub fn pki_ca(dir: &Path, name: &str, bits: u32, dn: &str) -> PkiCert {
    let key = pki_key(dir, name, bits);
    let cert = dir.join(format!("{name}.pem"));
    let pem = pki(&[
        "--self",
        "--ca",
        "--in",
        key.to_str().expect("UTF-8"),
        "--dn",
        dn,
        "--outform",
        "pem",
    ]);
    fs::write(&cert, pem).expect("CA certificate");
    PkiCert { key, cert }
}

/// A certificate issued by `issuer` with `pki --issue`: subject `dn`, one `--san` per entry of `sans`, more
/// `pki --issue` arguments in `extra` (`--ca` for an intermediate, `--not-after ...`), in `dir` as NAME.key.pem
/// and NAME.pem.
pub fn pki_issue(
    dir: &Path,
    issuer: &PkiCert,
    name: &str,
    bits: u32,
    dn: &str,
    sans: &[&str],
    extra: &[&str],
) -> PkiCert {
    let key = pki_key(dir, name, bits);
    let public = dir.join(format!("{name}.pub.pem"));
    fs::write(
        &public,
        pki(&[
            "--pub",
            "--in",
            key.to_str().expect("UTF-8"),
            "--outform",
            "pem",
        ]),
    )
    .expect("public key");
    let mut args: Vec<&str> = vec![
        "--issue",
        "--type",
        "pub",
        "--in",
        public.to_str().expect("UTF-8"),
        "--cacert",
        issuer.cert.to_str().expect("UTF-8"),
        "--cakey",
        issuer.key.to_str().expect("UTF-8"),
        "--dn",
        dn,
        "--outform",
        "pem",
    ];
    for s in sans {
        args.extend(["--san", s]);
    }
    args.extend(extra);
    let cert = dir.join(format!("{name}.pem"));
    fs::write(&cert, pki(&args)).expect("certificate");
    PkiCert { key, cert }
}
