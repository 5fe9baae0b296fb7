//! libreswan 4.10's pluto as a kernel IPsec peer in a guest (see [`crate::kernel_peer`]).
//!
//! Debian's `libreswan` conflicts with strongSwan's packages, so it is not installed: `scripts/setup` unpacks it
//! (`apt-get download libreswan`, `dpkg-deb -x`) into `/var/cache/vmsecd-tests/libreswan` (`VT_LIBRESWAN_DIR`
//! overrides), and the guest bind-mounts its `/usr/libexec/ipsec` (pluto execs its helpers from there). pluto
//! runs with its own `--config`, `--ipsecdir`, `--nssdir`, `--rundir` and `--secretsfile` under the guest's
//! `/tmp/lsw`; `protostack=xfrm`, `ikev2=yes` (4.10 does not take `keyexchange=ikev2`) and `leftsourceip` (else it
//! installs no route back to the remote subnet). `leftupdown` names the unpacked `_updown`: pluto's default
//! path is where strongSwan keeps its own, different script on this host.
//!
//! pluto does not print IKE SPIs; its side of a tunnel is read from the guest kernel's XFRM states (`ip xfrm
//! state`: ESP SPIs, algorithms, UDP encapsulation), which is what carries the traffic anyway.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::guest::{Guest, GuestOutput};
use crate::kernel_peer::{KernelPeer, PeerSa};

/// Where the unpacked package is looked for, unless `VT_LIBRESWAN_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "/var/cache/vmsecd-tests/libreswan";
const LSW: &str = "/tmp/lsw";
const CTL: &str = "/run/pluto/pluto.ctl";

/// The unpacked libreswan tree; panics saying how to get it.
pub fn libreswan_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("VT_LIBRESWAN_DIR").unwrap_or_else(|_| DEFAULT_DIR.into()));
    assert!(
        dir.join("usr/libexec/ipsec/pluto").is_file(),
        "libreswan is not unpacked in {} (run `scripts/setup test`, or: apt-get download libreswan && dpkg-deb -x \
         libreswan_*.deb {}; it also needs libldns3 libevent-pthreads-2.1-7 libnss3-tools). These tests never skip.",
        dir.display(),
        dir.display()
    );
    dir
}

/// One ipsec.conf `conn` of the guest (host b) towards vmsecd (host a), PSK.
#[derive(Debug, Clone)]
pub struct LswConn {
    /// The conn's name (`whack --name`).
    pub name: String,
    /// The PSK.
    pub psk: String,
    /// This host's underlay address (`left`, also its id).
    pub left: String,
    /// This host's VM subnet.
    pub leftsubnet: String,
    /// This host's address in that subnet (`leftsourceip`).
    pub leftsourceip: String,
    /// The peer's underlay address (`right`, also its id).
    pub right: String,
    /// The peer's VM subnet.
    pub rightsubnet: String,
    /// libreswan's `ike=`.
    pub ike: String,
    /// libreswan's `esp=`.
    pub esp: String,
    /// `encapsulation=`: `auto` (libreswan's default: ESP in UDP when a NAT is detected, and vmsecd's `encap =
    /// "udp"` looks like one) or `yes` (always). Not `no`: that refuses ESP in UDP even when the peer asks for it.
    pub encapsulation: String,
    /// `auto=`: `add` or `start`.
    pub auto: String,
    /// `ikelifetime=`.
    pub ikelifetime: String,
    /// `salifetime=`.
    pub salifetime: String,
    /// `dpddelay=` (with `dpdtimeout`), none by default.
    pub dpddelay: Option<String>,
    /// More `key=value` lines.
    pub extra: Vec<String>,
    /// How both ends authenticate.
    pub auth: LswAuth,
}

/// How a [`LswConn`] authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LswAuth {
    /// `authby=secret`, the ids the underlay addresses, the PSK in ipsec.secrets.
    Psk,
    /// `authby=rsasig` with `leftcert` (an NSS nickname), FQDN ids, the peer's certificate checked against
    /// `rightca` (trusted in NSS, see [`GuestPluto::import_p12`]).
    Cert {
        /// The certificate's NSS nickname.
        nickname: String,
        /// This end's FQDN id (without `@`).
        leftid: String,
        /// The peer's FQDN id.
        rightid: String,
        /// The CA's subject the peer's certificate must chain to.
        rightca: String,
    },
    /// `authby=rsasig` with raw RSA keys in RFC 3110 form (`0s...`): this end's private key is the one in NSS
    /// that matches `leftrsasigkey` (pluto warns that it ignores `leftckaid` when both are given).
    RawRsa {
        /// This end's public key (`leftrsasigkey`).
        left_key: String,
        /// The peer's public key (`rightrsasigkey`).
        right_key: String,
        /// This end's FQDN id.
        leftid: String,
        /// The peer's FQDN id.
        rightid: String,
    },
}

impl LswConn {
    /// The guest (198.18.0.2, 198.19.2.0/24) towards vmsecd (198.18.0.1, 198.19.1.0/24), vmsecd's default
    /// proposals in libreswan's words.
    pub fn to_vmsecd(psk: &str) -> LswConn {
        LswConn {
            name: "hA".into(),
            psk: psk.into(),
            left: "198.18.0.2".into(),
            leftsubnet: "198.19.2.0/24".into(),
            leftsourceip: "198.19.2.1".into(),
            right: "198.18.0.1".into(),
            rightsubnet: "198.19.1.0/24".into(),
            ike: "aes_gcm128-sha2_256-dh31".into(),
            esp: "aes_gcm128".into(),
            encapsulation: "auto".into(),
            auto: "add".into(),
            ikelifetime: "24h".into(),
            salifetime: "8h".into(),
            dpddelay: None,
            extra: Vec::new(),
            auth: LswAuth::Psk,
        }
    }

    /// The conn section, as the README's migration section shows it (PSK).
    pub fn render(&self) -> String {
        let (authby, leftid, rightid, auth_lines) = match &self.auth {
            LswAuth::Psk => (
                "secret",
                self.left.clone(),
                self.right.clone(),
                String::new(),
            ),
            LswAuth::Cert {
                nickname,
                leftid,
                rightid,
                rightca,
            } => (
                "rsasig",
                format!("@{leftid}"),
                format!("@{rightid}"),
                format!(
                    "    leftcert={nickname}\n    leftsendcert=always\n    rightca=\"{rightca}\"\n"
                ),
            ),
            LswAuth::RawRsa {
                left_key,
                right_key,
                leftid,
                rightid,
            } => (
                "rsasig",
                format!("@{leftid}"),
                format!("@{rightid}"),
                format!("    leftrsasigkey={left_key}\n    rightrsasigkey={right_key}\n"),
            ),
        };
        let mut o = String::new();
        let _ = write!(
            o,
            "conn {}\n    ikev2=yes\n    authby={authby}\n    left={}\n    leftid={leftid}\n    \
             leftsubnet={}\n    leftsourceip={}\n    right={}\n    rightid={rightid}\n    \
             rightsubnet={}\n    ike={}\n    esp={}\n    encapsulation={}\n    ikelifetime={}\n    \
             salifetime={}\n    auto={}\n    leftupdown=/usr/libexec/ipsec/_updown\n{auth_lines}",
            self.name,
            self.left,
            self.leftsubnet,
            self.leftsourceip,
            self.right,
            self.rightsubnet,
            self.ike,
            self.esp,
            self.encapsulation,
            self.ikelifetime,
            self.salifetime,
            self.auto,
        );
        if let Some(d) = &self.dpddelay {
            let _ = writeln!(
                o,
                "    dpddelay={d}\n    dpdtimeout=60s\n    dpdaction=restart"
            );
        }
        for l in &self.extra {
            let _ = writeln!(o, "    {l}");
        }
        o
    }
}

/// ipsec.conf for these conns.
pub fn ipsec_conf(conns: &[LswConn]) -> String {
    let mut o = format!(
        "config setup\n    protostack=xfrm\n    logfile={LSW}/pluto.log\n    plutodebug=none\n    uniqueids=yes\n\n"
    );
    for c in conns {
        o += &c.render();
        o += "\n";
    }
    o
}

/// ipsec.secrets for these conns.
pub fn ipsec_secrets(conns: &[LswConn]) -> String {
    conns
        .iter()
        .filter(|c| c.auth == LswAuth::Psk)
        .map(|c| format!("{} {} : PSK \"{}\"\n", c.left, c.right, c.psk))
        .collect()
}

/// pluto running in a guest.
pub struct GuestPluto<'g> {
    guest: &'g Guest,
    pid: u32,
}

impl<'g> GuestPluto<'g> {
    /// Writes the configuration, starts pluto, waits for its control socket and adds `conns` (`auto=start`
    /// ones are initiated).
    pub fn start(guest: &'g Guest, conns: &[LswConn]) -> GuestPluto<'g> {
        let dir = libreswan_dir();
        guest.write_file(&format!("{LSW}/ipsec.conf"), ipsec_conf(conns).as_bytes());
        guest.write_file(
            &format!("{LSW}/ipsec.secrets"),
            ipsec_secrets(conns).as_bytes(),
        );
        guest.run(&format!(
            "set -e; chmod 600 {LSW}/ipsec.secrets; mkdir -p {LSW}/nss {LSW}/ipsec.d /run/pluto /usr/libexec/ipsec; \
             mountpoint -q /usr/libexec/ipsec || mount --bind {d}/usr/libexec/ipsec /usr/libexec/ipsec; \
             [ -f {LSW}/nss/cert9.db ] || certutil -N -d sql:{LSW}/nss --empty-password",
            d = dir.display()
        ));
        let pid = guest.spawn(
            &format!(
                "exec /usr/libexec/ipsec/pluto --nofork --config {LSW}/ipsec.conf --ipsecdir {LSW}/ipsec.d \
                 --nssdir {LSW}/nss --rundir /run/pluto --secretsfile {LSW}/ipsec.secrets\n"
            ),
            &format!("{LSW}/pluto.out"),
        );
        let p = GuestPluto { guest, pid };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.whack(&["--status"]).code != 0 {
            assert!(
                Instant::now() < deadline,
                "pluto in the guest: no control socket after 60 s\n{}",
                p.diagnostics()
            );
            sleep(Duration::from_millis(300));
        }
        p.add_all();
        p
    }

    fn add_all(&self) {
        let out = self.guest.exec(&format!(
            "/usr/libexec/ipsec/addconn --config {LSW}/ipsec.conf --ctlsocket {CTL} --autoall"
        ));
        assert!(
            out.code == 0,
            "addconn failed ({}): {}{}\n{}",
            out.code,
            out.stdout,
            out.stderr,
            self.diagnostics()
        );
    }

    /// `whack ARGS` against this pluto.
    pub fn whack(&self, args: &[&str]) -> GuestOutput {
        let mut cmd = format!("/usr/libexec/ipsec/whack --ctlsocket {CTL}");
        for a in args {
            let _ = write!(cmd, " '{a}'");
        }
        self.guest.exec_timeout(&cmd, Duration::from_secs(90))
    }

    /// `whack ARGS`; panics with its output and pluto's log if it fails.
    pub fn whack_ok(&self, args: &[&str]) -> String {
        let out = self.whack(args);
        assert!(
            out.code == 0,
            "whack {args:?} failed ({}):\n{}{}\n{}",
            out.code,
            out.stdout,
            out.stderr,
            self.diagnostics()
        );
        out.stdout
    }

    /// Replaces the configuration: every conn deleted (its SAs with it), the new ones added.
    pub fn reload(&self, conns: &[LswConn]) {
        for c in conns {
            let _ = self.whack(&["--delete", "--name", &c.name]);
        }
        self.guest
            .write_file(&format!("{LSW}/ipsec.conf"), ipsec_conf(conns).as_bytes());
        self.guest.write_file(
            &format!("{LSW}/ipsec.secrets"),
            ipsec_secrets(conns).as_bytes(),
        );
        self.whack_ok(&["--rereadsecrets"]);
        self.add_all();
    }

    /// `whack --initiate --name NAME --asynchronous`.
    pub fn initiate(&self, name: &str) {
        self.whack_ok(&["--initiate", "--name", name, "--asynchronous"]);
    }

    /// The tunnel as the guest's kernel holds it (see [`parse_xfrm_states`]).
    pub fn sas(&self) -> Vec<PeerSa> {
        let text = self.guest.run("ip xfrm state");
        xfrm_peer_sas(&parse_xfrm_states(&text), "198.18.0.2", "198.18.0.1")
    }

    /// Its tunnel from `local` to `remote` as the guest's kernel holds it (a mesh host with several peers).
    pub fn sas_between(&self, local: &str, remote: &str) -> Vec<PeerSa> {
        let text = self.guest.run("ip xfrm state");
        xfrm_peer_sas(&parse_xfrm_states(&text), local, remote)
    }

    /// pluto's log so far.
    pub fn log(&self) -> String {
        self.guest.exec(&format!("cat {LSW}/pluto.log")).stdout
    }

    /// Imports a PKCS#12 file of the host (an end certificate, its key and its chain) into pluto's NSS
    /// database, and trusts `ca_pem` (a file of the host) as a CA under `ca_nickname`.
    pub fn import_p12(
        &self,
        p12: &std::path::Path,
        password: &str,
        ca_pem: &std::path::Path,
        ca_nickname: &str,
    ) {
        let put = |host: &std::path::Path, name: &str| {
            let data = std::fs::read(host).expect("read the file for the guest");
            self.guest.write_file(&format!("{LSW}/{name}"), &data);
        };
        put(p12, "import.p12");
        put(ca_pem, "ca.pem");
        self.guest.run(&format!(
            "set -e; pk12util -i {LSW}/import.p12 -d sql:{LSW}/nss -W '{password}'; \
             certutil -A -d sql:{LSW}/nss -n '{ca_nickname}' -t 'CT,,' -a -i {LSW}/ca.pem; \
             certutil -L -d sql:{LSW}/nss"
        ));
    }

    /// A new RSA key pair in pluto's NSS database (`rsasigkey`, as `ipsec newhostkey` makes it): its public key
    /// as `leftrsasigkey` wants it (`0s...`, RFC 3110) and as PEM (`showhostkey --pem`).
    pub fn new_host_key(&self, bits: u32) -> (String, String) {
        let out = self.guest.run(&format!(
            "/usr/libexec/ipsec/rsasigkey --seeddev /dev/urandom --nssdir {LSW}/nss {bits} 2>&1"
        ));
        let ckaid = out
            .split_whitespace()
            .skip_while(|w| *w != "--ckaid")
            .nth(1)
            .unwrap_or_else(|| panic!("rsasigkey printed no CKAID:\n{out}"))
            .to_owned();
        let left = self.guest.run(&format!(
            "/usr/libexec/ipsec/showhostkey --nssdir {LSW}/nss --left --ckaid {ckaid}"
        ));
        let key = left
            .lines()
            .find_map(|l| l.trim().strip_prefix("leftrsasigkey="))
            .unwrap_or_else(|| panic!("showhostkey --left printed no leftrsasigkey:\n{left}"))
            .to_owned();
        let pem = self.guest.run(&format!(
            "/usr/libexec/ipsec/showhostkey --nssdir {LSW}/nss --pem --ckaid {ckaid}"
        ));
        (key, pem)
    }

    /// Stops pluto (SIGTERM, then waits up to 10 s for it; it deletes its SAs and XFRM states).
    pub fn stop(self) {
        self.guest.exec(&format!(
            "kill {p}; for i in $(seq 100); do kill -0 {p} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 {p}",
            p = self.pid
        ));
    }

    /// `whack --status`.
    pub fn status(&self) -> String {
        self.whack(&["--status"]).stdout
    }

    /// The ESP SPIs of the Child SAs `whack --status` lists between `local` and `remote`: (inbound, outbound),
    /// 8 hex digits (`#2: "hA" esp.946f5380@198.18.0.1 esp.35d1d725@198.18.0.2 ...`: the SPI at the peer is
    /// the outbound one).
    pub fn status_esp_spis(&self, local: &str, remote: &str) -> Vec<(String, String)> {
        esp_spis_of_status(&self.status(), local, remote)
    }

    /// The algorithms of the conn's newest IKE SA as `whack --status` names them, in vmsecd's notation (see
    /// [`ike_algorithms_of_status`]).
    pub fn ike_algorithms(&self) -> Option<String> {
        ike_algorithms_of_status(&self.status())
    }

    /// The end of pluto's log, its output and the guest's XFRM state, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = self.guest.exec(&format!(
            "tail -n 60 {LSW}/pluto.log; echo '--- whack --status (SAs) ---'; \
             /usr/libexec/ipsec/whack --ctlsocket {CTL} --status | grep -e '#[0-9]' -e 'algorithm'; echo '--- pluto.out ---'; tail -n 20 {LSW}/pluto.out; \
             echo '--- ip xfrm state ---'; ip xfrm state | grep -v -e '^\\s*auth' -e '^\\s*enc' -e '^\\s*aead'; \
             echo '--- ip xfrm policy ---'; ip xfrm policy | grep -v socket"
        ));
        format!("--- guest pluto ---\n{}{}", out.stdout, out.stderr)
    }
}

impl KernelPeer for GuestPluto<'_> {
    fn kind(&self) -> &'static str {
        "pluto"
    }

    fn sas(&self) -> Vec<PeerSa> {
        GuestPluto::sas(self)
    }

    fn initiate_to_vmsecd(&self) -> Result<(), String> {
        let out = self.whack(&["--initiate", "--name", "hA", "--asynchronous"]);
        if out.code == 0 {
            Ok(())
        } else {
            Err(format!(
                "whack --initiate failed:\n{}{}",
                out.stdout, out.stderr
            ))
        }
    }

    fn diagnostics(&self) -> String {
        GuestPluto::diagnostics(self)
    }

    fn forget_sas(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !GuestPluto::sas(self).is_empty() && Instant::now() < deadline {
            sleep(Duration::from_millis(300));
        }
    }
}

/// See [`GuestPluto::status_esp_spis`].
pub fn esp_spis_of_status(status: &str, local: &str, remote: &str) -> Vec<(String, String)> {
    let spi = |w: &str, at: &str| {
        let hex = w.strip_prefix("esp.")?.strip_suffix(&format!("@{at}"))?;
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| format!("{v:08x}"))
    };
    status
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let out = words.iter().find_map(|w| spi(w, remote))?;
            let inb = words.iter().find_map(|w| spi(w, local))?;
            Some((inb, out))
        })
        .collect()
}

/// The IKE algorithms of `whack --status`'s `IKEv2 algorithm newest: AES_CBC_256-HMAC_SHA2_256-MODP2048` in
/// vmsecd's notation (`AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048`). pluto names one hash for
/// both the PRF and the integrity of a non-AEAD cipher: the integrity is that hash's RFC 4868 truncation.
pub fn ike_algorithms_of_status(status: &str) -> Option<String> {
    let line = status
        .lines()
        .find_map(|l| l.split_once("IKEv2 algorithm newest: "))?
        .1;
    let mut parts = line.trim().split('-');
    let (enc, hash, dh) = (parts.next()?, parts.next()?, parts.next()?);
    let enc = enc
        .strip_suffix("_POLY1305_256")
        .map_or(enc.to_owned(), |c| format!("{c}_POLY1305"));
    let group = match dh {
        "DH31" => "CURVE_25519".to_owned(),
        "DH19" => "ECP_256".to_owned(),
        "DH20" => "ECP_384".to_owned(),
        "DH21" => "ECP_521".to_owned(),
        m => m
            .strip_prefix("MODP")
            .map_or(m.to_owned(), |b| format!("MODP_{b}")),
    };
    let aead = enc.starts_with("AES_GCM") || enc.starts_with("CHACHA20");
    let integ = match hash {
        _ if aead => String::new(),
        "HMAC_SHA2_256" => "/HMAC_SHA2_256_128".into(),
        "HMAC_SHA2_384" => "/HMAC_SHA2_384_192".into(),
        "HMAC_SHA2_512" => "/HMAC_SHA2_512_256".into(),
        h => format!("/{h}"),
    };
    Some(format!("{enc}{integ}/PRF_{hash}/{group}"))
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An RSA public key (a PEM file of the host) as libreswan's `rsasigkey` value: `0s` and the base64 of RFC 3110's
/// form (exponent length, exponent, modulus).
pub fn rsasigkey_of_pem(pem: &std::path::Path, work: &std::path::Path) -> String {
    let path = pem.to_str().expect("UTF-8");
    let text = String::from_utf8(openssl(&["rsa", "-pubin", "-in", path, "-noout", "-text"]))
        .expect("UTF-8");
    let exponent: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Exponent: "))
        .and_then(|e| e.split_whitespace().next())
        .and_then(|e| e.parse().ok())
        .expect("the key's exponent");
    let modulus = String::from_utf8(openssl(&[
        "rsa", "-pubin", "-in", path, "-noout", "-modulus",
    ]))
    .expect("UTF-8");
    let hex = modulus.trim().strip_prefix("Modulus=").expect("Modulus=");
    let e: Vec<u8> = exponent
        .to_be_bytes()
        .into_iter()
        .skip_while(|b| *b == 0)
        .collect();
    let mut raw = vec![u8::try_from(e.len()).expect("short exponent")];
    raw.extend_from_slice(&e);
    for i in (0..hex.len()).step_by(2) {
        raw.push(u8::from_str_radix(&hex[i..i + 2], 16).expect("hex modulus"));
    }
    let file = work.join("rsasigkey.bin");
    std::fs::write(&file, &raw).expect("write the key");
    let b64 = openssl(&["base64", "-A", "-in", file.to_str().expect("UTF-8")]);
    format!("0s{}", String::from_utf8(b64).expect("base64").trim())
}

/// A PKCS#12 file (`out`) of an end certificate, its key and its CA, its friendly name `nickname` (what
/// `leftcert` names once imported into NSS).
pub fn pkcs12(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
    nickname: &str,
    password: &str,
    out: &std::path::Path,
) {
    let s = |p: &std::path::Path| p.to_str().expect("UTF-8").to_owned();
    openssl(&[
        "pkcs12",
        "-export",
        "-in",
        &s(cert),
        "-inkey",
        &s(key),
        "-certfile",
        &s(ca),
        "-name",
        nickname,
        "-passout",
        &format!("pass:{password}"),
        "-out",
        &s(out),
    ]);
}

/// One ESP state of `ip xfrm state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XfrmState {
    /// Outer source.
    pub src: String,
    /// Outer destination.
    pub dst: String,
    /// SPI, 8 hex digits.
    pub spi: String,
    /// Algorithms in vmsecd's notation (`AES_GCM_16_128`, `AES_CBC_256/HMAC_SHA2_256_128`).
    pub algorithms: String,
    /// ESP in UDP.
    pub encap: bool,
}

/// Key length in bits of a hex key `0x...`.
fn key_bits(hex: &str) -> usize {
    hex.trim_start_matches("0x").len() * 4
}

/// Parses `ip xfrm state` (iproute2 6.1) into its ESP states.
pub fn parse_xfrm_states(text: &str) -> Vec<XfrmState> {
    let mut out: Vec<XfrmState> = Vec::new();
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.first().copied() {
            Some("src") if !line.starts_with(char::is_whitespace) => {
                out.push(XfrmState {
                    src: w.get(1).copied().unwrap_or_default().into(),
                    dst: w.get(3).copied().unwrap_or_default().into(),
                    ..XfrmState::default()
                });
            }
            Some("proto") => {
                if let (Some(st), Some(spi)) = (out.last_mut(), w.get(3)) {
                    st.spi = format!(
                        "{:08x}",
                        u32::from_str_radix(spi.trim_start_matches("0x"), 16).unwrap_or(0)
                    );
                }
            }
            Some("aead") => {
                if let Some(st) = out.last_mut() {
                    let name = w.get(1).copied().unwrap_or_default();
                    let bits = w.get(2).map_or(0, |k| key_bits(k));
                    st.algorithms = if name.starts_with("rfc4106") {
                        format!("AES_GCM_16_{}", bits - 32)
                    } else if name.starts_with("rfc7539esp") {
                        "CHACHA20_POLY1305".into()
                    } else {
                        name.into()
                    };
                }
            }
            // iproute2 prints `auth-trunc` before `enc`: either order makes "ENC/INTEG".
            Some("enc") => {
                if let Some(st) = out.last_mut() {
                    let name = w.get(1).copied().unwrap_or_default();
                    let bits = w.get(2).map_or(0, |k| key_bits(k));
                    let e = if name == "cbc(aes)" {
                        format!("AES_CBC_{bits}")
                    } else {
                        name.to_owned()
                    };
                    st.algorithms = format!("{e}{}", st.algorithms);
                }
            }
            Some("auth-trunc") => {
                if let Some(st) = out.last_mut() {
                    let name = w.get(1).copied().unwrap_or_default();
                    let trunc = w.get(3).copied().unwrap_or_default();
                    let integ = match name {
                        "hmac(sha256)" => "HMAC_SHA2_256",
                        "hmac(sha384)" => "HMAC_SHA2_384",
                        "hmac(sha512)" => "HMAC_SHA2_512",
                        other => other,
                    };
                    st.algorithms = format!("{}/{integ}_{trunc}", st.algorithms);
                }
            }
            Some("encap") => {
                if let Some(st) = out.last_mut() {
                    st.encap = true;
                }
            }
            _ => {}
        }
    }
    out
}

/// The peer's view from its kernel of its tunnel from `local` to `remote`: one entry whose children pair each
/// inbound state with an outbound one; more than one of either (a rekey under way) shows as more children, so
/// that the caller waits.
pub fn xfrm_peer_sas(states: &[XfrmState], local: &str, remote: &str) -> Vec<PeerSa> {
    // A state without algorithms is one whose SPI pluto has allocated (XFRM_MSG_ALLOCSPI) but not yet filled
    // in: taken as not there yet, so that callers wait for the Child SA to be installed whole.
    let ins: Vec<&XfrmState> = states
        .iter()
        .filter(|s| s.dst == local && s.src == remote && !s.algorithms.is_empty())
        .collect();
    let outs: Vec<&XfrmState> = states
        .iter()
        .filter(|s| s.src == local && s.dst == remote && !s.algorithms.is_empty())
        .collect();
    if ins.is_empty() && outs.is_empty() {
        return Vec::new();
    }
    let mut children = Vec::new();
    for i in 0..ins.len().max(outs.len()) {
        let (i_st, o_st) = (ins.get(i), outs.get(i));
        children.push((
            i_st.map(|s| s.spi.clone()).unwrap_or_default(),
            o_st.map(|s| s.spi.clone()).unwrap_or_default(),
            i_st.or(o_st)
                .map(|s| s.algorithms.clone())
                .unwrap_or_default(),
            i_st.or(o_st).is_some_and(|s| s.encap),
        ));
    }
    vec![PeerSa {
        children,
        ..PeerSa::default()
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_xfrm_state() {
        let text = "src 198.18.0.1 dst 198.18.0.2\n\tproto esp spi 0xc24b0671 reqid 16389 mode tunnel\n\t\
            replay-window 0 flag af-unspec\n\taead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128\n\t\
            encap type espinudp sport 4500 dport 4500 addr 0.0.0.0\n\tsel src 0.0.0.0/0 dst 0.0.0.0/0\n\
            src 198.18.0.2 dst 198.18.0.1\n\tproto esp spi 0x00001234 reqid 16389 mode tunnel\n\t\
            auth-trunc hmac(sha256) 0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 128\n\t\
            enc cbc(aes) 0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
        let st = parse_xfrm_states(text);
        assert_eq!(st.len(), 2);
        assert_eq!(
            (st[0].spi.as_str(), st[0].algorithms.as_str(), st[0].encap),
            ("c24b0671", "AES_GCM_16_128", true)
        );
        assert_eq!(
            (st[1].spi.as_str(), st[1].algorithms.as_str(), st[1].encap),
            ("00001234", "AES_CBC_256/HMAC_SHA2_256_128", false)
        );
        let sas = xfrm_peer_sas(&st, "198.18.0.2", "198.18.0.1");
        assert_eq!(sas[0].children.len(), 1);
        assert_eq!(
            esp_spis_of_status(
                "000 #2: \"hA\" esp.946f5380@198.18.0.1 esp.35d1d725@198.18.0.2 tun.0@198.18.0.1 \
                 tun.0@198.18.0.2 Traffic: ESPin=2MB ESPout=2MB ESPmax=2^63B\n",
                "198.18.0.2",
                "198.18.0.1"
            ),
            vec![("35d1d725".to_owned(), "946f5380".to_owned())]
        );
        for (status, ours) in [
            (
                "000 \"hA\":   IKEv2 algorithm newest: AES_GCM_16_256-HMAC_SHA2_384-DH20\n",
                "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384",
            ),
            (
                "000 \"hA\":   IKEv2 algorithm newest: AES_CBC_256-HMAC_SHA2_256-MODP2048\n",
                "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
            ),
            (
                "000 \"hA\":   IKEv2 algorithm newest: CHACHA20_POLY1305_256-HMAC_SHA2_256-DH31\n",
                "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
            ),
        ] {
            assert_eq!(ike_algorithms_of_status(status).as_deref(), Some(ours));
        }
        assert_eq!(sas[0].children[0].0, "c24b0671");
        assert_eq!(sas[0].children[0].1, "00001234");
    }
}
