//! [`Routes::repair`] against the kernel, in a network namespace of its own (two veth pairs, routes to
//! 198.19.0.0/16 prefixes), deleted on every path. Needs root.

use std::os::fd::AsRawFd;
use std::process::Command;

use super::*;

/// A namespace, deleted when dropped (also on a panic).
struct Ns(String);

impl Ns {
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .expect("ip runs");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Two of our routes are gone (flushed by hand) and someone else's route to the first prefix, through another
/// device, is in the way, so putting that one back fails: the second must still be put back, and the first must
/// stay tracked, to be put back once the other route is gone. (A failed repair used to drop every missing route
/// after the failing one from the tracked list: never put back, traffic to those subnets held by the fail-closed
/// routes until a restart.)
#[test]
fn a_route_that_cannot_be_put_back_does_not_make_repair_forget_the_others() {
    crate::test_root::require_root(
        "a_route_that_cannot_be_put_back_does_not_make_repair_forget_the_others",
        "it creates a network namespace",
    );
    let ns = Ns(format!("vrrep{}", std::process::id()));
    let out = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .expect("ip runs");
    assert!(out.success(), "ip netns add");
    for (d, p) in [("d0", "p0"), ("d1", "p1")] {
        ns.ip(&["link", "add", d, "type", "veth", "peer", "name", p]);
        ns.ip(&["link", "set", d, "up"]);
        ns.ip(&["link", "set", p, "up"]);
    }
    let path = format!("/run/netns/{}", ns.0);
    let ns_name = ns.0.clone();
    let ns = std::sync::Arc::new(ns);
    let inner = ns.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: a valid namespace descriptor; only this thread moves.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        // SAFETY: a NUL-terminated name.
        let d0 = unsafe { libc::if_nametoindex(c"d0".as_ptr()) };
        assert_ne!(d0, 0, "d0 in {ns_name}");
        let mut routes = Routes::new(Netlink::open().expect("netlink"));
        let route = |p: &str| Route {
            dst: p.parse().unwrap(),
            ifindex: d0,
            src: None,
        };
        let (r1, r2) = (route("198.19.1.0/24"), route("198.19.2.0/24"));
        routes.add(r1).unwrap();
        routes.add(r2).unwrap();
        inner.ip(&["route", "del", "198.19.1.0/24", "dev", "d0"]);
        inner.ip(&["route", "del", "198.19.2.0/24", "dev", "d0"]);
        inner.ip(&[
            "route",
            "add",
            "198.19.1.0/24",
            "dev",
            "d1",
            "proto",
            "static",
        ]);
        assert!(routes.repair().is_err(), "the first cannot be put back");
        assert!(
            inner
                .ip(&["route", "show", "198.19.2.0/24"])
                .contains("dev d0"),
            "the second is put back all the same"
        );
        assert_eq!(routes.installed().len(), 2, "both still tracked");
        inner.ip(&["route", "del", "198.19.1.0/24", "dev", "d1"]);
        assert_eq!(routes.repair().unwrap(), vec![r1.dst]);
        assert!(inner
            .ip(&["route", "show", "198.19.1.0/24"])
            .contains("dev d0"));
        assert_eq!(routes.repair().unwrap(), vec![], "nothing more missing");
    })
    .join()
    .expect("namespace thread");
}
