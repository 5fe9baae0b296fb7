//! `workers = 2` between two vmsecd hosts: the TUN has two queues and a second thread transmits. Sixteen TCP
//! connections each way carry 8 MiB of distinct data; every byte must arrive intact and in order (the receiver
//! returns the SHA-256 of what it read), both transmit threads of the sending host must have carried some of
//! them, and the Child SA's counters must agree on both sides.

use std::path::Path;
use std::time::Duration;

use vmsecd_e2e::netns::{output_of, Netns, NetnsGuard};
use vmsecd_e2e::traffic::{ping_until_ok, require_tool};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Vmsecd};

const PSK: &str = "transmit-workers-test-psk-0123456";
const FLOWS: u32 = 16;
const BYTES: u32 = 8 << 20;

/// A TCP sink that answers each connection with the SHA-256 of what it received, and a source that opens
/// FLOWS connections at once, each sending its own pseudo-random data, and counts the answers that match.
const SCRIPT: &str = r#"
import hashlib, random, socket, sys, threading
mode, addr, port, flows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "sink":
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(flows)
    print("listening", flush=True)
    def serve(c):
        h = hashlib.sha256()
        while True:
            b = c.recv(1 << 16)
            if not b:
                break
            h.update(b)
        c.sendall(h.hexdigest().encode())
        c.close()
    threads = []
    for _ in range(flows):
        c, _ = s.accept()
        t = threading.Thread(target=serve, args=(c,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
else:
    size = int(sys.argv[5])
    ok = [False] * flows
    def run(i):
        data = random.Random(i).randbytes(size)
        c = socket.create_connection((addr, port), timeout=60)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            b = c.recv(128)
            if not b:
                break
            got += b
        ok[i] = got.decode() == hashlib.sha256(data).hexdigest()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(flows)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(ok), flush=True)
"#;

/// Sends FLOWS connections of BYTES each from `client` to `server_addr` in `server`; returns how many
/// arrived intact.
fn transfer(script: &Path, server: &Netns, client: &Netns, server_addr: &str) -> u32 {
    let port = "7001";
    let mut sink = server.spawn(
        server
            .command("python3")
            .arg(script)
            .args(["sink", server_addr, port, &FLOWS.to_string()])
            .stdout(std::process::Stdio::piped()),
    );
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = sink.child_mut().stdout.take().expect("sink stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("sink says it listens");
    }
    assert_eq!(line.trim(), "listening");
    let out = output_of(
        client
            .command("timeout")
            .arg("120")
            .arg("python3")
            .arg(script)
            .args([
                "source",
                server_addr,
                port,
                &FLOWS.to_string(),
                &BYTES.to_string(),
            ]),
    );
    sink.wait_timeout(Duration::from_secs(10));
    sink.kill();
    assert!(
        out.status.success(),
        "source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("source prints a count")
}

/// Nanoseconds each thread of `pid` has run, by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let t = t.expect("task").path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(t.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        v.push((name.trim().to_owned(), ns));
    }
    v
}

fn tx_thread_ns(v: &Vmsecd, name: &str) -> u64 {
    thread_cpu(v.pid())
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ns)| ns)
        .sum()
}

#[test]
fn two_transmit_workers_carry_many_flows_intact() {
    vmsecd_e2e::netns::require_root_and_ip();
    require_tool("python3", &["--version"], "python3");
    let mut g = NetnsGuard::new("workers");
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let script = root.join("flows.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let mut m = Mesh::two_hosts(PSK);
    m.workers = Some(2);
    let mut va = Vmsecd::start(&a, &root.join("a"), &m, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    assert!(
        va.log().contains("workers=2"),
        "the daemon reports its workers:\n{}",
        va.log()
    );

    for (from, to, server, client, addr) in [
        (&va, &vb, &bvm, &avm, "198.19.2.10"),
        (&vb, &va, &avm, &bvm, "198.19.1.10"),
    ] {
        let (main0, tx0) = (
            tx_thread_ns(from, "vmsecd"),
            tx_thread_ns(from, "vmsecd-tx1"),
        );
        let intact = transfer(&script, server, client, addr);
        assert_eq!(
            intact,
            FLOWS,
            "every connection arrives intact\n{}\n{}",
            from.diagnostics(),
            to.diagnostics()
        );
        let (main1, tx1) = (
            tx_thread_ns(from, "vmsecd"),
            tx_thread_ns(from, "vmsecd-tx1"),
        );
        // Sending 128 MiB costs tens of milliseconds of encryption; with 16 flows spread over two queues,
        // each thread gets a share (all 16 on one queue has odds of 2 in 65536).
        assert!(
            tx1 - tx0 > 5_000_000,
            "the second transmit thread ran {} us",
            (tx1 - tx0) / 1000
        );
        assert!(main1 - main0 > 5_000_000);
    }

    // Both ends count the packets of the Child SA, whichever thread sent them: the receiver counts what the
    // sender counted, less what the underlay dropped (a socket buffer may overflow under 16 flows; TCP resends).
    let (sa, sb) = (va.status().expect("status"), vb.status().expect("status"));
    let (ca, cb) = (&peer(&sa, "hB").children[0], &peer(&sb, "hA").children[0]);
    for (sent, received, dir) in [
        (ca.out.packets, cb.r#in.packets, "a to b"),
        (cb.out.packets, ca.r#in.packets, "b to a"),
    ] {
        assert!(
            received <= sent && received >= sent - sent / 50,
            "{dir}: sent {sent}, received {received}"
        );
    }
    assert!(ca.out.bytes > u64::from(FLOWS * BYTES));
    va.terminate(Duration::from_secs(5));
    vb.terminate(Duration::from_secs(5));
}
