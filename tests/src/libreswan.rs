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
use crate::kernel_peer::PeerSa;

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
        }
    }

    /// The conn section, as the README's migration section shows it.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = write!(
            o,
            "conn {}\n    ikev2=yes\n    authby=secret\n    left={l}\n    leftid={l}\n    \
             leftsubnet={}\n    leftsourceip={}\n    right={r}\n    rightid={r}\n    \
             rightsubnet={}\n    ike={}\n    esp={}\n    encapsulation={}\n    ikelifetime={}\n    \
             salifetime={}\n    auto={}\n    leftupdown=/usr/libexec/ipsec/_updown\n",
            self.name,
            self.leftsubnet,
            self.leftsourceip,
            self.rightsubnet,
            self.ike,
            self.esp,
            self.encapsulation,
            self.ikelifetime,
            self.salifetime,
            self.auto,
            l = self.left,
            r = self.right,
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
        .map(|c| format!("{} {} : PSK \"{}\"\n", c.left, c.right, c.psk))
        .collect()
}

/// pluto running in a guest.
pub struct GuestPluto<'g> {
    guest: &'g Guest,
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
        guest.spawn(
            &format!(
                "exec /usr/libexec/ipsec/pluto --nofork --config {LSW}/ipsec.conf --ipsecdir {LSW}/ipsec.d \
                 --nssdir {LSW}/nss --rundir /run/pluto --secretsfile {LSW}/ipsec.secrets\n"
            ),
            &format!("{LSW}/pluto.out"),
        );
        let p = GuestPluto { guest };
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

    /// The end of pluto's log, its output and the guest's XFRM state, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = self.guest.exec(&format!(
            "tail -n 60 {LSW}/pluto.log; echo '--- pluto.out ---'; tail -n 20 {LSW}/pluto.out; \
             echo '--- ip xfrm state ---'; ip xfrm state | grep -v -e '^\\s*auth' -e '^\\s*enc' -e '^\\s*aead'; \
             echo '--- ip xfrm policy ---'; ip xfrm policy | grep -v socket"
        ));
        format!("--- guest pluto ---\n{}{}", out.stdout, out.stderr)
    }
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
    let ins: Vec<&XfrmState> = states
        .iter()
        .filter(|s| s.dst == local && s.src == remote)
        .collect();
    let outs: Vec<&XfrmState> = states
        .iter()
        .filter(|s| s.src == local && s.dst == remote)
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
        assert_eq!(sas[0].children[0].0, "c24b0671");
        assert_eq!(sas[0].children[0].1, "00001234");
    }
}
