//! The routes into the TUN put back every second (see [`crate::route::Routes::repair`]), and the log lines
//! about it: a repair that keeps failing (a route to the same prefix through another device that refuses
//! ours, an interface gone) would otherwise warn every second for as long as it lasts. It warns at the first
//! failure, then once a [`REPEAT`] with how many failed meanwhile, and says so when the routes are back.

use std::time::{Duration, Instant};

use super::Daemon;

/// How often a repair that keeps failing is reported again.
pub(super) const REPEAT: Duration = Duration::from_secs(60);

/// A run of failed repairs.
#[derive(Debug, Clone, Copy)]
struct Run {
    since: Instant,
    failures: u64,
    last_warned: Instant,
}

/// What to log about one repair's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Report {
    /// The first failure after success: warn with the error.
    First,
    /// Still failing, [`REPEAT`] after the last warning: warn with the error and the count so far.
    Again { failures: u64, over: Duration },
    /// Still failing, warned about recently: nothing.
    Quiet,
    /// The first success after failures: say the routes are back.
    Recovered { failures: u64, over: Duration },
    /// Success, as before: nothing to say about failures.
    Fine,
}

/// Tracks whether repairs are failing, to decide what [`Daemon::repair_routes`] logs.
#[derive(Debug, Default)]
pub(super) struct FailureLog {
    run: Option<Run>,
}

impl FailureLog {
    /// A repair failed at `now`.
    pub(super) fn failed(&mut self, now: Instant) -> Report {
        match &mut self.run {
            None => {
                self.run = Some(Run {
                    since: now,
                    failures: 1,
                    last_warned: now,
                });
                Report::First
            }
            Some(run) => {
                run.failures += 1;
                if now.saturating_duration_since(run.last_warned) >= REPEAT {
                    run.last_warned = now;
                    Report::Again {
                        failures: run.failures,
                        over: now.saturating_duration_since(run.since),
                    }
                } else {
                    Report::Quiet
                }
            }
        }
    }

    /// A repair succeeded at `now` (whether or not it had anything to put back).
    pub(super) fn succeeded(&mut self, now: Instant) -> Report {
        match self.run.take() {
            Some(run) => Report::Recovered {
                failures: run.failures,
                over: now.saturating_duration_since(run.since),
            },
            None => Report::Fine,
        }
    }
}

impl Daemon {
    /// Puts back the routes into the TUN the kernel dropped (see [`crate::route::Routes::repair`]), saying so;
    /// a failure is logged at once, then once a minute while it lasts, and its end too. From the same dump of
    /// the main table, when there are `subnets = "libvirt"` peers, it hands the control plane this host's
    /// unicast routes through other interfaces than the TUN inside their ranges (see
    /// `Learned::set_host_routes`); a dump that fails keeps the last list.
    pub(super) fn repair_routes(&mut self, now: Instant) {
        let ranges = self.cp.libvirt_ranges();
        let tun = self.ifindex;
        // Filtered as the dump is read: a host with a big routing table keeps only the few routes that matter.
        let (repaired, host_routes) = self.routes.repair_and_list(|r| {
            r.is_unicast() && r.oif != tun && ranges.iter().any(|g| g.contains_prefix(&r.dst))
        });
        if let Some(routes) = host_routes.filter(|_| !ranges.is_empty()) {
            self.cp
                .set_host_routes(now, routes.into_iter().map(|r| r.dst));
        }
        let interface = &self.cp.config().settings().interface;
        match repaired {
            Ok(back) => {
                if let Report::Recovered { failures, over } = self.route_repairs.succeeded(now) {
                    tracing::info!(
                        "the routes into {interface} are complete again, after {failures} failed repairs over \
                         {:.0} s",
                        over.as_secs_f64()
                    );
                }
                if !back.is_empty() {
                    tracing::warn!(
                        "routes into {interface} were gone and are put back: {} (the kernel drops a route when \
                         its source address goes, e.g. at `virsh net-destroy`, or they were flushed by hand)",
                        back.iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
            }
            Err(e) => match self.route_repairs.failed(now) {
                Report::First => tracing::warn!(
                    "cannot check or put back the routes into {interface} ({e}); traffic to a subnet whose route is \
                     missing meets its fail-closed route until the route is back. Retrying every second, reporting once a minute"
                ),
                Report::Again { failures, over } => tracing::warn!(
                    "still cannot check or put back the routes into {interface} ({e}): {failures} failed repairs over \
                     {:.0} s",
                    over.as_secs_f64()
                ),
                _ => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_failure_warns_first_then_once_a_minute_with_the_count_then_recovers() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut log = FailureLog::default();
        assert_eq!(log.succeeded(t0), Report::Fine);
        assert_eq!(log.failed(t0), Report::First);
        // Every second for a minute: nothing more.
        for i in 1..60 {
            assert_eq!(log.failed(t0 + s(i)), Report::Quiet, "second {i}");
        }
        assert_eq!(
            log.failed(t0 + s(60)),
            Report::Again {
                failures: 61,
                over: s(60)
            }
        );
        assert_eq!(log.failed(t0 + s(61)), Report::Quiet);
        assert_eq!(
            log.failed(t0 + s(120)),
            Report::Again {
                failures: 63,
                over: s(120)
            }
        );
        assert_eq!(
            log.succeeded(t0 + s(121)),
            Report::Recovered {
                failures: 63,
                over: s(121)
            }
        );
        assert_eq!(log.succeeded(t0 + s(122)), Report::Fine);
        // A new failure later is a first one again.
        assert_eq!(log.failed(t0 + s(200)), Report::First);
    }

    #[test]
    fn a_single_failure_is_one_warning_and_one_recovery_line() {
        let t0 = Instant::now();
        let mut log = FailureLog::default();
        assert_eq!(log.failed(t0), Report::First);
        assert_eq!(
            log.succeeded(t0 + Duration::from_secs(1)),
            Report::Recovered {
                failures: 1,
                over: Duration::from_secs(1)
            }
        );
    }
}
