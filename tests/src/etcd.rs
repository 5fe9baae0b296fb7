//! A real etcd cluster (Debian's `etcd-server` 3.4, v3 API) in a test's namespaces: one member per namespace,
//! TLS everywhere (a test CA made with openssl: server certificates with the member's address, one client
//! certificate that the members require), data in the test's directory; members stopped with SIGKILL and
//! started again on the same data by PID. `etcdctl` (Debian's `etcd-client`) writes entries by hand.

use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::{output_of, run_checked, Netns, NsChild};
use crate::traffic::require_tool;

/// The test CA and the certificates made from it.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The client certificate every vmsecd and etcdctl presents.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    run_checked(
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir),
    );
}

impl Pki {
    /// A CA and a client certificate in `dir`.
    pub fn new(dir: &Path) -> Pki {
        require_tool("openssl", &["version"], "openssl");
        std::fs::create_dir_all(dir).expect("pki dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=vmsecd test etcd CA",
            ],
        );
        let p = Pki {
            ca: dir.join("ca.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            dir: dir.to_owned(),
        };
        p.issue("client", "vmsecd", None);
        p
    }

    /// Issues `NAME.pem`/`NAME.key` with common name `cn` and, for a server, an IP subjectAltName.
    fn issue(&self, name: &str, cn: &str, ip: Option<&str>) {
        let d = &self.dir;
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        let ext = d.join(format!("{name}.ext"));
        let san = ip
            .map(|ip| format!("subjectAltName=IP:{ip}\n"))
            .unwrap_or_default();
        std::fs::write(
            &ext,
            format!("{san}extendedKeyUsage=serverAuth,clientAuth\n"),
        )
        .expect("ext");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                ext.to_str().expect("UTF-8"),
            ],
        );
    }
}

/// One member.
#[derive(Debug)]
pub struct Member {
    /// Its namespace.
    pub ns: Netns,
    /// Its name (`e1`...).
    pub name: String,
    /// Its address.
    pub ip: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<NsChild>,
}

/// A cluster of members, one per namespace.
#[derive(Debug)]
pub struct Cluster {
    /// The members, in order.
    pub members: Vec<Member>,
    /// The certificates.
    pub pki: Pki,
}

impl Cluster {
    /// Starts one member per `(namespace, address)` with TLS for clients and peers, data under `dir`, and
    /// waits until the cluster is healthy. Fails loudly without `etcd`, `etcdctl` and `openssl`.
    pub fn start(dir: &Path, members: &[(Netns, &str)]) -> Cluster {
        require_tool("etcd", &["--version"], "etcd-server");
        require_tool("etcdctl", &["version"], "etcd-client");
        let pki = Pki::new(&dir.join("pki"));
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| format!("e{}=https://{ip}:2380", i + 1))
            .collect();
        let mut out = Vec::new();
        for (i, (ns, ip)) in members.iter().enumerate() {
            let name = format!("e{}", i + 1);
            pki.issue(&name, &name, Some(ip));
            let cert = pki.dir.join(format!("{name}.pem"));
            let key = pki.dir.join(format!("{name}.key"));
            let s = |p: &Path| p.display().to_string();
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", dir.join(&name).display()),
                format!("--listen-peer-urls=https://{ip}:2380"),
                format!("--initial-advertise-peer-urls=https://{ip}:2380"),
                format!("--listen-client-urls=https://{ip}:2379"),
                format!("--advertise-client-urls=https://{ip}:2379"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token=vt-{}", std::process::id()),
                format!("--cert-file={}", s(&cert)),
                format!("--key-file={}", s(&key)),
                format!("--trusted-ca-file={}", s(&pki.ca)),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={}", s(&cert)),
                format!("--peer-key-file={}", s(&key)),
                format!("--peer-trusted-ca-file={}", s(&pki.ca)),
                "--peer-client-cert-auth".into(),
                "--heartbeat-interval=100".into(),
                "--election-timeout=1000".into(),
            ];
            let mut m = Member {
                ns: ns.clone(),
                name,
                ip: ip.to_string(),
                args,
                log: dir.join(format!("e{}.log", i + 1)),
                child: None,
            };
            m.start();
            out.push(m);
        }
        let c = Cluster { members: out, pki };
        c.wait_healthy(Duration::from_secs(60));
        c
    }

    /// The client URLs, for `[etcd] endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("https://{}:2379", m.ip))
            .collect()
    }

    /// `etcdctl` with the client certificate against the running members, run from `ns`.
    pub fn ctl(&self, ns: &Netns, args: &[&str]) -> std::process::Output {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("https://{}:2379", m.ip))
            .collect();
        output_of(
            ns.command("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", live.join(",")))
                .arg(format!("--cacert={}", self.pki.ca.display()))
                .arg(format!("--cert={}", self.pki.client_cert.display()))
                .arg(format!("--key={}", self.pki.client_key.display()))
                .args(["--dial-timeout=3s", "--command-timeout=5s"])
                .args(args),
        )
    }

    /// Waits until a write through `etcdctl` succeeds (a leader exists).
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let ns = &self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a member runs")
            .ns;
        loop {
            let out = self.ctl(ns, &["put", "/vt-health", "ok"]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy after {timeout:?}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.diagnostics()
            );
            sleep(Duration::from_millis(300));
        }
    }

    /// The last lines of each member's log.
    pub fn diagnostics(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(&m.log).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    lines[lines.len().saturating_sub(10)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Member {
    /// Starts it (again, on its data directory).
    pub fn start(&mut self) {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("etcd log");
        let mut cmd = self.ns.command("etcd");
        cmd.args(&self.args)
            .stdout(std::process::Stdio::from(f.try_clone().expect("dup")))
            .stderr(std::process::Stdio::from(f));
        self.child = Some(self.ns.spawn(&mut cmd));
    }

    /// Kills it (SIGKILL, by PID).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }
}
