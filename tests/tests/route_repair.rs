//! vmsecd's route repair (issue 17): only its own route, the prefix into its TUN, counts as present. A route to
//! the same prefix through another device is someone else's: vmsecd tries to put its own back, the kernel
//! refuses (the other one holds the prefix), and the daemon says so once, not every second; when the other
//! route goes, its own is back within a few seconds and it says that too.

use std::thread::sleep;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{require_root_and_ip, NetnsGuard};
use vmsecd_e2e::vmsecd::{Mesh, Vmsecd};

const REMOTE: &str = "198.19.2.0/24";

#[test]
fn a_route_through_another_device_is_not_ours_and_a_lasting_failure_is_logged_once() {
    require_root_and_ip();
    let mut g = NetnsGuard::new("route_repair");
    let (a, _b, _avm, _bvm) = g.hypervisor_pair();
    let dir = g.dir().join("hA");
    let va = Vmsecd::start(&a, &dir, &Mesh::two_hosts("route repair test psk"), "hA");
    let route = || a.ip(&["route", "show", REMOTE]);
    let t = Instant::now();
    while !route().contains("dev vmsec0") {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no route to {REMOTE} into vmsec0: {}\n{}",
            route(),
            va.diagnostics()
        );
        sleep(Duration::from_millis(100));
    }

    // Another device takes the prefix, with the protocol vmsecd's routes have.
    // (a veth pair: this kernel has no dummy device).
    a.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    a.ip(&["link", "set", "other1", "up"]);
    a.ip(&["link", "set", "other0", "up"]);
    a.ip(&["route", "del", REMOTE, "dev", "vmsec0"]);
    a.ip(&["route", "add", REMOTE, "dev", "other0", "proto", "static"]);
    va.wait_log(
        "cannot put back a route into vmsec0",
        Duration::from_secs(10),
    );
    // Five more repair rounds: no more lines about it (the next one is due a minute after the first).
    sleep(Duration::from_secs(5));
    let log = va.log();
    assert_eq!(log.matches("cannot put back a route").count(), 1, "{log}");
    assert!(
        route().contains("dev other0"),
        "vmsecd touched a route that is not its own: {}",
        route()
    );

    // The other route goes: vmsecd's is back, and the log says the failures ended.
    let gone = Instant::now();
    a.ip(&["route", "del", REMOTE, "dev", "other0"]);
    va.wait_log("complete again", Duration::from_secs(10));
    assert!(route().contains("dev vmsec0"), "{}", route());
    eprintln!(
        "[route_repair] own route back {:.1} s after the other one went",
        gone.elapsed().as_secs_f64()
    );
}
