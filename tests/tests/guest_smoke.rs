//! The guest harness works: a Debian-kernel guest boots (KVM if it works here, else TCG), answers pings over its
//! tap, runs commands with their output and exit code, moves files both ways, and its kernel takes an ESP state
//! with AES-GCM (`rfc4106(gcm(aes))`), which this host's kernel cannot.

use std::time::Instant;

use vmsecd_e2e::guest::{self, Guest, Nic};
use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::traffic;

#[test]
fn guest_boots_pings_and_has_kernel_esp() {
    let t = Instant::now();
    let mut g = NetnsGuard::new("guest-smoke");
    let h = g.add_ns("h");
    let dir = g.dir().join("guest");
    let lock = guest::lock();
    let vm = Guest::boot(&lock, &dir, "smoke", &[Nic::new(&h, "tg0")], 256);
    g.add_addr(&h, "tg0", "198.18.0.1/24");
    vm.run("ip addr add 198.18.0.3/24 dev eth0");
    assert!(
        traffic::ping_until_ok(&h, "198.18.0.3", std::time::Duration::from_secs(20)),
        "no answer from the guest over its tap\n{}",
        vm.diagnostics()
    );
    let (sent, got) = traffic::ping(&h, "198.18.0.3", 5, "0.2");
    assert_eq!((sent, got), (5, 5), "pings to the guest");

    let out = vm.exec("echo out; echo err >&2; exit 3");
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (3, "out\n", "err\n")
    );
    vm.write_file("/tmp/x/in.bin", &[0u8, 1, 2, 255]);
    assert_eq!(vm.read_file("/tmp/x/in.bin"), vec![0u8, 1, 2, 255]);
    assert_eq!(vm.run("hostname").trim(), "smoke");

    vm.run(
        "ip xfrm state add src 198.18.0.3 dst 198.18.0.1 proto esp spi 0x100 reqid 1 mode tunnel \
         aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128",
    );
    let states = vm.run("ip xfrm state");
    assert!(states.contains("rfc4106(gcm(aes))"), "{states}");
    eprintln!(
        "[guest_smoke] accel {}, boot {:.1} s, total {:.1} s",
        guest::accel(),
        vm.booted_in().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
