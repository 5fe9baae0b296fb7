//! Support for the hostile-peer and restart tests: the attacker (`ike-attack`, run in its own namespace),
//! a daemon's peak memory, and a ping that keeps measuring a tunnel while something else happens.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::netns::{output_of, Netns};
use crate::traffic;

/// Runs `ike-attack --target T --peer P ARGS...` in `ns` to completion; returns its JSON summary. `bin` is
/// the tool's path: `env!("CARGO_BIN_EXE_ike-attack")` in the calling test (cargo sets it for tests only).
///
/// # Panics
/// If it fails (usage, no raw socket) or prints no JSON.
pub fn attack(bin: &str, ns: &Netns, target: &str, peer: &str, args: &[&str]) -> serde_json::Value {
    let out = output_of(
        ns.command(bin)
            .args(["--target", target, "--peer", peer])
            .args(args),
    );
    assert!(
        out.status.success(),
        "ike-attack {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ike-attack printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A number from an attack summary (`"cookie"`, or `"sent.init"`), 0 when absent.
pub fn num(v: &serde_json::Value, path: &str) -> u64 {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// A value of `/proc/PID/status` in KiB (`VmHWM`: peak resident set, `VmRSS`: current); `None` once the
/// process is gone.
pub fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pings `dst` from `ns` every 50 ms in one-second rounds until stopped: what a VM sees of the tunnel while an
/// attack runs.
pub struct PingMeter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u32, u32)>>,
}

impl PingMeter {
    /// Starts pinging.
    pub fn start(ns: &Netns, dst: &str) -> PingMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, dst, s) = (ns.clone(), dst.to_owned(), stop.clone());
        let handle = thread::spawn(move || {
            let (mut sent, mut got) = (0, 0);
            while !s.load(Ordering::Relaxed) {
                let (a, b) = traffic::ping(&ns, &dst, 20, "0.05");
                sent += a;
                got += b;
            }
            (sent, got)
        });
        PingMeter {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops it; returns (sent, received).
    pub fn stop(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or((0, 0))
    }
}

impl Drop for PingMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Seconds from `since` until one ping from `ns` to `dst` is answered (one ping each 200 ms, each waiting up to
/// 1 s), or `None` after `timeout`.
pub fn seconds_until_echo(ns: &Netns, dst: &str, since: Instant, timeout: Duration) -> Option<f64> {
    while since.elapsed() < timeout {
        if traffic::ping(ns, dst, 1, "0.2").1 == 1 {
            return Some(since.elapsed().as_secs_f64());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// CPU time a process has used so far (user + system), from `/proc/PID/stat`; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so split after its closing parenthesis): state is
    // field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(100);
    Some(ticks as f64 / hz as f64)
}
