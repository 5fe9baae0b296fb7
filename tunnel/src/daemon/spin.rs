//! Keeps one core awake for a moment after each burst of packets, so that the next packet of a conversation (a
//! ping's reply, a request's answer) finds a core that is not halted.
//!
//! On a virtual machine a wake-up of an idle vCPU costs 66-146 us (an inter-processor interrupt and a halt exit,
//! benches/README.md "Idle ping"), and one round trip through two daemons wakes four sleepers. A thread that
//! spins on a core makes that core count as busy for the hypervisor, but it runs under `SCHED_IDLE`: the kernel
//! treats a core running only `SCHED_IDLE` tasks as idle when it places a woken task (`sched_idle_cpu`), and any
//! normal task that wakes there preempts it at once. So it is meant to take no time from the VMs, the peer
//! daemon or the kernel, only to fill time the core would otherwise spend halted, and only for the window after
//! the last packet; at idle it is parked and costs nothing. Measured, it did not pay off (see [`DEFAULT_WINDOW`]).
//!
//! `VMSECD_BUSY_POLL_US` sets the window in microseconds; 0, the default, starts no spinner thread at all (see
//! [`DEFAULT_WINDOW`] for why).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the core is kept awake after the last packet unless `VMSECD_BUSY_POLL_US` says otherwise: zero (no
/// spinner thread). Measured on the 2-core machine of benches/README.md ("Idle ping and busy-polling") while
/// other jobs kept it loaded: a 2 ms window left the idle ping's p50 where it was (0.29-0.30 ms) and a 50 ms
/// window (spinning through the ping's 20 ms gaps) raised its mean from 0.7 to 6.2 ms, so it stays opt-in until
/// a run on an otherwise idle host shows a gain.
pub(super) const DEFAULT_WINDOW: Duration = Duration::ZERO;

struct Shared {
    /// Nanoseconds since `epoch` of the last packet burst the daemon handled.
    last: AtomicU64,
    /// The thread is parked (or about to): the next [`Spinner::touch`] must unpark it.
    parked: AtomicBool,
    stop: AtomicBool,
    epoch: Instant,
    window: u64,
}

impl Shared {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn recent(&self) -> bool {
        self.now().saturating_sub(self.last.load(Ordering::SeqCst)) < self.window
    }
}

/// The spinning thread, if any, and how the daemon's loop tells it about packets.
pub(super) struct Spinner {
    shared: Option<(Arc<Shared>, std::thread::Thread)>,
    handle: Option<JoinHandle<()>>,
}

impl Spinner {
    /// The window from `VMSECD_BUSY_POLL_US`, or [`DEFAULT_WINDOW`].
    pub(super) fn window() -> Duration {
        std::env::var("VMSECD_BUSY_POLL_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(DEFAULT_WINDOW, Duration::from_micros)
    }

    /// Starts the thread (none for a zero window, or if it cannot be started: the daemon works without it).
    pub(super) fn start(window: Duration) -> Spinner {
        let none = Spinner {
            shared: None,
            handle: None,
        };
        if window.is_zero() {
            return none;
        }
        let shared = Arc::new(Shared {
            last: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            epoch: Instant::now(),
            window: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
        });
        let s = shared.clone();
        match std::thread::Builder::new()
            .name("vmsecd-spin".into())
            .spawn(move || spin(&s))
        {
            Ok(h) => Spinner {
                shared: Some((shared, h.thread().clone())),
                handle: Some(h),
            },
            Err(e) => {
                tracing::warn!(
                    "cannot start the busy-poll thread ({e}); idle round trips stay slower"
                );
                none
            }
        }
    }

    /// The daemon handled packets: keep a core awake for the window from now. Two atomic operations, and an
    /// unpark (one futex wake) only for the first burst after a quiet window.
    pub(super) fn touch(&self) {
        if let Some((s, t)) = &self.shared {
            s.last.store(s.now(), Ordering::SeqCst);
            if s.parked.load(Ordering::SeqCst) && s.parked.swap(false, Ordering::SeqCst) {
                t.unpark();
            }
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        if let Some((s, t)) = &self.shared {
            s.stop.store(true, Ordering::SeqCst);
            t.unpark();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn spin(s: &Shared) {
    // SCHED_IDLE: preempted by any normal task at once, placed on like an idle core (see the module documentation).
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; a valid sched_param for SCHED_IDLE (priority 0).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(
            "cannot run the busy-poll thread as SCHED_IDLE ({}): not spinning",
            std::io::Error::last_os_error()
        );
        return;
    }
    while !s.stop.load(Ordering::Relaxed) {
        if s.recent() {
            // No PAUSE (spin_loop hint): under KVM, a PAUSE loop exits to the host as if it were lock contention.
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        // A packet between the check above and `parked`: its touch may have missed the flag.
        if s.recent() || s.stop.load(Ordering::SeqCst) {
            s.parked.store(false, Ordering::SeqCst);
            continue;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parks_when_quiet_and_stops_on_drop() {
        let sp = Spinner::start(Duration::from_millis(5));
        let (s, _) = sp
            .shared
            .as_ref()
            .map(|(s, t)| (s.clone(), t.clone()))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.parked.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "parks within the window");
            std::thread::sleep(Duration::from_millis(1));
        }
        sp.touch();
        assert!(!s.parked.load(Ordering::SeqCst), "a packet wakes it");
        drop(sp);
        assert!(Spinner::start(Duration::ZERO).shared.is_none());
    }
}
