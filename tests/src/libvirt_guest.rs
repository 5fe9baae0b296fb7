//! A real VM under libvirt: libvirtd's QEMU driver ([`crate::libvirt::Libvirtd::start_with_qemu`]) defines and starts a
//! `<domain type='qemu'>` (TCG) that boots the guest image of [`crate::guest`] directly (`<kernel>`,
//! `<initrd>`, `<cmdline>`), the host's root over virtio-9p read-only and the command agent's share as two
//! `<filesystem>`s, and one virtio NIC on a libvirt network (`<interface type='network'>`, a tap libvirt
//! creates and enslaves to the network's bridge, MTU 1500). The guest runs the same agent as [`crate::guest`],
//! so commands run in it the same way.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::guest::{image, Agent, GuestOutput};
use crate::libvirt::QemuConn;

/// A guest defined in a libvirtd (through its [`QemuConn`]); `virsh destroy` and `undefine` when dropped.
pub struct VirtGuest {
    lv: QemuConn,
    name: String,
    dir: PathBuf,
    agent: Agent,
    boots: u32,
}

/// How long a boot under TCG may take on a loaded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

impl VirtGuest {
    /// Defines domain `name` in `lv` with one NIC (MAC `mac`) on libvirt network `network`, its files under
    /// `dir`, and starts it; returns once its agent runs. Hold a [`crate::guest::lock`] meanwhile.
    pub fn define_and_start(
        lv: QemuConn,
        dir: &Path,
        name: &str,
        network: &str,
        mac: &str,
    ) -> VirtGuest {
        let img = image();
        fs::create_dir_all(dir.join("agent")).expect("agent dir");
        let xml = format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 random.trust_cpu=on</cmdline>
  </os>
  <cpu mode='maximum' migratable='off'/>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <driver type='path'/>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='passthrough'>
      <driver type='path'/>
      <source dir='{agent}'/>
      <target dir='agent'/>
    </filesystem>
    <interface type='network'>
      <source network='{network}'/>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
            kernel = img.vmlinux.display(),
            initrd = img.initrd.display(),
            agent = dir.join("agent").display(),
            console = dir.join("console.log").display(),
        );
        let file = dir.join(format!("{name}.xml"));
        fs::write(&file, xml).expect("domain xml");
        let (ok, out) = lv.virsh(&["define", &file.display().to_string()]);
        assert!(ok, "virsh define {name}: {out}\n{}", lv.log());
        let mut g = VirtGuest {
            lv,
            name: name.to_owned(),
            dir: dir.to_owned(),
            agent: Agent::new(dir.join("agent")),
            boots: 0,
        };
        g.start();
        g
    }

    fn agent(&self) -> &Path {
        self.agent.dir()
    }

    /// `virsh start`, then waits for the agent; returns how long the boot took.
    pub fn start(&mut self) -> Duration {
        self.agent.prepare(&self.name);
        let agent = self.agent().to_path_buf();
        self.boots += 1;
        let t = Instant::now();
        let (ok, out) = self.lv.virsh(&["start", &self.name]);
        assert!(ok, "virsh start {}: {out}\n{}", self.name, self.lv.log());
        while !agent.join("ready").exists() {
            assert!(
                t.elapsed() < BOOT_TIMEOUT,
                "guest {}: no agent after {BOOT_TIMEOUT:?}\n{}",
                self.name,
                self.diagnostics()
            );
            sleep(Duration::from_millis(50));
        }
        let took = t.elapsed();
        eprintln!(
            "[libvirt guest] {} started by libvirtd (virsh start, TCG) in {:.1} s",
            self.name,
            took.as_secs_f64()
        );
        took
    }

    /// `virsh destroy` (a power cut).
    pub fn destroy(&self) {
        let (ok, out) = self.lv.virsh(&["destroy", &self.name]);
        assert!(ok, "virsh destroy {}: {out}", self.name);
    }

    /// Runs `script` with `/bin/sh` in the guest (the agent of [`crate::guest`]), waiting up to `timeout`.
    pub fn exec_timeout(&self, script: &str, timeout: Duration) -> GuestOutput {
        let n = self.agent.submit(script);
        let t = Instant::now();
        loop {
            if let Some(out) = self.agent.outcome(n) {
                return out;
            }
            assert!(
                t.elapsed() < timeout,
                "guest {}: {script:?} did not finish in {timeout:?}\n{}",
                self.name,
                self.diagnostics()
            );
            sleep(Duration::from_millis(20));
        }
    }

    /// Runs `script`; panics with its output unless it succeeds. Returns its standard output.
    pub fn run(&self, script: &str) -> String {
        let out = self.exec_timeout(script, Duration::from_secs(120));
        assert!(
            out.code == 0,
            "guest {}: {script:?} failed ({}): {}{}",
            self.name,
            out.code,
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// A file of the agent share, as the guest sees it under /vmsecd-agent.
    pub fn share(&self, name: &str, contents: &str) -> String {
        fs::write(self.agent().join(name), contents).expect("agent share");
        format!("/vmsecd-agent/{name}")
    }

    /// The end of the console and libvirt's QEMU log of this domain.
    pub fn diagnostics(&self) -> String {
        let console = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        format!(
            "--- guest {} console ---\n{}\n--- libvirtd ---\n{}",
            self.name,
            lines[lines.len().saturating_sub(30)..].join("\n"),
            self.lv.log()
        )
    }
}

impl Drop for VirtGuest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        let _ = self.lv.virsh(&["destroy", &self.name]);
        let _ = self.lv.virsh(&["undefine", &self.name]);
    }
}

/// TCP (`flows` connections of `bytes`, each hashed) from guest `client` to `server_addr` in guest `server`,
/// with the byte-checking script of [`crate::traffic`]: how many arrived intact.
pub fn tcp_intact(
    server: &VirtGuest,
    client: &VirtGuest,
    server_addr: &str,
    flows: u32,
    bytes: u32,
) -> u32 {
    let script = server.share("flows.py", crate::traffic::FLOWS_SCRIPT);
    let _ = client.share("flows.py", crate::traffic::FLOWS_SCRIPT);
    server.run(&format!(
        "rm -f /tmp/sink.out; setsid python3 {script} sink {server_addr} 7001 {flows} > /tmp/sink.out 2>&1 \
         < /dev/null & for i in $(seq 1 100); do grep -q listening /tmp/sink.out && exit 0; sleep 0.1; done; \
         cat /tmp/sink.out; exit 1"
    ));
    let out = client.run(&format!(
        "timeout 300 python3 {script} source {server_addr} 7001 {flows} {bytes}"
    ));
    out.trim().parse().expect("the source prints a count")
}

/// UDP datagrams (1 B to 8 KB, hashed) from guest `client` to `server_addr` in guest `server`: (intact,
/// damaged).
pub fn udp_intact(
    server: &VirtGuest,
    client: &VirtGuest,
    server_addr: &str,
    count: u32,
) -> (u32, u32) {
    let script = server.share("flows.py", crate::traffic::FLOWS_SCRIPT);
    let _ = client.share("flows.py", crate::traffic::FLOWS_SCRIPT);
    server.run(&format!(
        "rm -f /tmp/usink.out; setsid python3 {script} udpsink {server_addr} 7002 {count} 60 > /tmp/usink.out \
         2>&1 < /dev/null & for i in $(seq 1 100); do grep -q listening /tmp/usink.out && exit 0; sleep 0.1; \
         done; cat /tmp/usink.out; exit 1"
    ));
    client.run(&format!(
        "timeout 120 python3 {script} udpsource {server_addr} 7002 {count} 0.01"
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = server.run("cat /tmp/usink.out");
        let mut lines = out.lines().filter(|l| !l.starts_with("listening"));
        if let Some(l) = lines.next() {
            let mut it = l.split_whitespace().map(|x| x.parse().unwrap_or(0));
            return (it.next().unwrap_or(0), it.next().unwrap_or(0));
        }
        assert!(Instant::now() < deadline, "the UDP sink did not finish");
        sleep(Duration::from_millis(300));
    }
}

/// One TCP connection from guest `client` to `server_addr:port` in namespace `server`, whose one-shot server
/// answers with the source address it saw, and the MSS the guest's side uses: shows NAT and the MSS clamp.
pub fn tcp_probe(
    server: &crate::netns::Netns,
    client: &VirtGuest,
    server_addr: &str,
    port: u16,
) -> Result<(String, u32), String> {
    use std::io::BufRead as _;
    let mut srv = server.spawn(
        server
            .command("python3")
            .args(["-c", crate::dualstack::TCP_SERVER, &port.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null()),
    );
    let stdout = srv.child_mut().stdout.take().expect("server stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(line.trim(), "ready", "the TCP server did not start");
    let script = client.share("tcp_client.py", crate::dualstack::TCP_CLIENT);
    let out = client.exec_timeout(
        &format!("python3 {script} {server_addr} {port}"),
        Duration::from_secs(60),
    );
    drop(srv);
    crate::dualstack::probe_outcome(out.code == 0, &out.stdout, &out.stderr)
}

/// [`tcp_probe`] between two guests: the one-shot server in guest `server`, the client in guest `client`.
pub fn tcp_probe_guests(
    server: &VirtGuest,
    client: &VirtGuest,
    server_addr: &str,
    port: u16,
) -> Result<(String, u32), String> {
    let srv = server.share("tcp_server.py", crate::dualstack::TCP_SERVER);
    server.run(&format!(
        "rm -f /tmp/tcpsrv.out; setsid python3 {srv} {port} > /tmp/tcpsrv.out 2>&1 < /dev/null & \
         for i in $(seq 1 100); do grep -q ready /tmp/tcpsrv.out && exit 0; sleep 0.1; done; exit 1"
    ));
    let script = client.share("tcp_client.py", crate::dualstack::TCP_CLIENT);
    let out = client.exec_timeout(
        &format!("python3 {script} {server_addr} {port}"),
        Duration::from_secs(60),
    );
    crate::dualstack::probe_outcome(out.code == 0, &out.stdout, &out.stderr)
}
