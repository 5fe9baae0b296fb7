//! The namespace guard itself: it must leave nothing behind, on success and on panic, since every other
//! end-to-end test relies on it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{check_test_address, NetnsGuard};

fn netns_list() -> String {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True once `pid` is gone (or only a zombie of a process that is not ours to reap).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gone(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn builds_underlay_and_removes_everything() {
    let mut g = NetnsGuard::new("guard-drop");
    let prefix = g.prefix().to_owned();
    assert!(prefix.starts_with("vt-guard-drop-"), "{prefix}");
    let (a, b) = g.underlay_pair();
    let dir = g.dir();
    assert!(dir.is_dir());

    let list = netns_list();
    assert!(list.contains(a.name()) && list.contains(b.name()), "{list}");
    assert!(a
        .ip(&["-o", "addr", "show", "dev", "u0"])
        .contains("198.18.0.1/24"));
    assert!(b
        .ip(&["-o", "addr", "show", "dev", "u0"])
        .contains("198.18.0.2/24"));
    assert!(a.ip(&["route", "get", "198.18.0.2"]).contains("dev u0"));
    // The veth ends live only inside the namespaces.
    assert!(a
        .ip(&["-o", "-d", "link", "show", "dev", "u0"])
        .contains("veth"));
    assert!(!a.mac("u0").is_empty());

    // A background child, and a grandchild it leaves behind: the child is killed when its NsChild is dropped,
    // the grandchild (which no NsChild knows) when the guard sweeps its namespace.
    let pidfile = dir.join("grandchild.pid");
    let script = format!("sleep 60 & echo $! > {}; exec sleep 60", pidfile.display());
    let child = b.spawn(b.command("sh").args(["-c", &script]));
    let child_pid = child.pid();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pidfile.exists() || std::fs::read_to_string(&pidfile).unwrap().trim().is_empty() {
        assert!(Instant::now() < deadline, "grandchild never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!gone(child_pid) && !gone(grandchild));

    drop(child);
    assert!(gone(child_pid), "NsChild drop did not end its process");
    drop(g);
    assert!(wait_gone(grandchild), "the guard left a process running");
    let list = netns_list();
    assert!(!list.contains(&prefix), "namespaces left behind: {list}");
    assert!(!Path::new(&dir).exists(), "work dir left behind");
}

#[test]
fn removes_namespaces_on_panic() {
    let mut names = Vec::new();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut g = NetnsGuard::new("guard-panic");
        names.push(g.add_ns("x").name().to_owned());
        names.push(g.add_ns("y").name().to_owned());
        assert!(netns_list().contains(&names[1]));
        panic!("test body failed");
    }));
    assert!(r.is_err());
    let list = netns_list();
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} left behind: {list}");
    }
}

#[test]
fn two_guards_with_one_name_get_distinct_prefixes() {
    let g1 = NetnsGuard::new("guard-twice");
    let g2 = NetnsGuard::new("guard-twice");
    assert_ne!(g1.prefix(), g2.prefix());
}

#[test]
fn only_benchmark_range_addresses() {
    check_test_address("198.18.0.1/24");
    check_test_address("198.19.255.10/32");
    check_test_address("198.19.3.1");
    for bad in [
        "10.0.0.1/24",
        "192.168.1.1/24",
        "198.20.0.1/24",
        "198.17.0.1/24",
        "198.18.0.0/8",
        "fd00::1/64",
    ] {
        let r = std::panic::catch_unwind(|| check_test_address(bad));
        assert!(r.is_err(), "{bad} was accepted");
    }
}
