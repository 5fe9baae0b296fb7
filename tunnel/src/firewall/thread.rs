//! The firewall thread ("vmsecd-firewall"): the daemon's [`Handle`] on its rules, and the [`Checker`] the
//! control socket asks. iptables and nft take milliseconds to seconds (the xtables lock), so they run here and
//! never on the event loop: the loop only sends messages, which coalesce while the thread is busy.

use super::{Error, Firewall, Report, CHECK_INTERVAL, COMMENT_TAG};
use crate::config::{Config, FirewallMode};

/// Checks that found something to repair, since the daemon started (the `vmsecd_firewall_repairs` metric).
type Repairs = std::sync::Arc<std::sync::atomic::AtomicU64>;

/// Logs what a check did, in lines a sysadmin can act on: one per kind of repair, naming the chains; counts a
/// check that repaired something.
fn log_report(report: &Report, trigger: &str, repairs: &Repairs) {
    if !report.is_ok() {
        repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if !report.reordered.is_empty() {
        let chains = report.reordered.join(", ");
        tracing::warn!(%chains, %trigger, "firewall: libvirt moved its rules above ours; re-inserted");
    }
    if !report.restored.is_empty() {
        let chains = report.restored.join(", ");
        tracing::warn!(
            %chains, %trigger,
            "firewall: our rules were missing or changed (removed by hand, a flush, or libvirt re-created its \
             table); re-inserted"
        );
    }
}

/// The daemon's handle on its firewall rules: installs them when started, then hands them to a thread of their
/// own ("vmsecd-firewall") that checks and repairs them every [`CHECK_INTERVAL`], on request
/// ([`Checker::check_now`]) and follows new subnets ([`Handle::update`]). The event loop only sends it messages:
/// iptables and nft, which take milliseconds to seconds (the xtables lock), never run on the packet path.
/// Rules are removed when [`Handle::remove`] is called or the handle is dropped.
#[derive(Debug)]
pub struct Handle {
    tx: Option<std::sync::mpsc::Sender<Cmd>>,
    thread: Option<std::thread::JoinHandle<()>>,
    repairs: Repairs,
}

/// What the firewall thread is asked to do.
#[derive(Debug)]
enum Cmd {
    /// Follow the subnets of this configuration. Queued updates coalesce: only the newest is applied.
    Update(Box<Config>),
    /// Check and repair now; the JSON answer goes back.
    Check(tokio::sync::oneshot::Sender<String>),
    /// Remove every rule and end the thread.
    Remove,
}

/// Asks the firewall thread for a check (the control socket's `firewall-check`); cheap to clone.
#[derive(Debug, Clone)]
pub struct Checker(Option<std::sync::mpsc::Sender<Cmd>>);

impl Checker {
    /// A checker with no firewall behind it: every check answers `{"firewall":"off"}`.
    pub fn off() -> Checker {
        Checker(None)
    }

    /// Checks and repairs at once (the answer to the control socket's `firewall-check`, which libvirt's network
    /// hook sends): a JSON document `{"firewall": "ok" | "repaired" | "off"}` or `{"error": "..."}`.
    pub async fn check_now(&self) -> String {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let Some(cmd) = &self.0 else {
            return r#"{"firewall":"off"}"#.to_owned();
        };
        if cmd.send(Cmd::Check(tx)).is_err() {
            return r#"{"error":"the firewall thread has stopped"}"#.to_owned();
        }
        rx.await
            .unwrap_or_else(|_| r#"{"error":"the firewall thread has stopped"}"#.to_owned())
    }
}

/// Installs the rules a config asks for: `None` when it or the host rules firewall handling out.
fn install(config: &Config) -> Result<Option<Firewall>, Error> {
    let Some(mut fw) = Firewall::for_config(config)? else {
        return Ok(None);
    };
    if let Err(e) = fw.check() {
        tracing::error!(
            "{e}. vmsecd cannot put its firewall rules in place: fix the cause, or set firewall = \"off\" in \
             the mesh file to run without firewall handling"
        );
        return Err(e);
    }
    tracing::info!(
        rules = fw.len(),
        backend = fw.describe(),
        "firewall: mesh exempted from libvirt's NAT and REJECT, ahead of libvirt's rules, and TCP MSS clamped \
         into {}; checked every {}s",
        config.settings().interface,
        CHECK_INTERVAL.as_secs()
    );
    Ok(Some(fw))
}

/// The rules for new subnets (a reload, or subnets learned from a `subnets = "libvirt"` peer): the new rules
/// replace the old ones in the same transaction per table (no moment without an exemption, so no connection
/// starts masqueraded), when the old rules cover the same address families; otherwise the old rules are removed
/// and the new ones installed.
fn follow(fw: &mut Option<Firewall>, config: &Config) -> Result<(), Error> {
    let families = |f: &Firewall| {
        let has = |v4: bool| {
            f.local.iter().any(|p| p.is_ipv4() == v4) && f.remote.iter().any(|p| p.is_ipv4() == v4)
        };
        (has(true), has(false))
    };
    if fw.is_none() && config.settings().firewall == FirewallMode::Off {
        return Ok(());
    }
    if let Some(old) = fw.as_mut() {
        if let Some(mut new) = Firewall::for_config(config)? {
            if families(&new) == families(old) && new.describe() == old.describe() {
                // Its report says "changed" for every chain: expected here, so not logged as a repair.
                new.check()?;
                *old = new;
                tracing::info!(rules = old.len(), "firewall: rules follow the new subnets");
                return Ok(());
            }
        }
    }
    remove_rules(fw);
    *fw = install(config)?;
    Ok(())
}

fn remove_rules(fw: &mut Option<Firewall>) {
    if let Some(mut fw) = fw.take() {
        match fw.remove() {
            Ok(n) => tracing::info!("firewall: removed vmsecd's {n} rules"),
            Err(e) => tracing::error!(
                "{e}; vmsecd's rules may be left behind: list them with `iptables-save | grep '{COMMENT_TAG}'`"
            ),
        }
    }
}

fn check_answer(fw: &mut Option<Firewall>, repairs: &Repairs) -> String {
    let Some(fw) = fw.as_mut() else {
        return r#"{"firewall":"off"}"#.to_owned();
    };
    match fw.check() {
        Ok(r) => {
            log_report(&r, "firewall-check request", repairs);
            if r.is_ok() {
                tracing::info!("firewall: check requested over the control socket: rules in place");
                r#"{"firewall":"ok"}"#.to_owned()
            } else {
                r#"{"firewall":"repaired"}"#.to_owned()
            }
        }
        Err(e) => {
            tracing::error!("{e}");
            serde_json::json!({ "error": e.to_string() }).to_string()
        }
    }
}

/// The commands the firewall thread found queued, coalesced.
#[derive(Debug)]
struct Batch {
    /// The newest configuration to follow: older ones queued before it are skipped.
    update: Option<Box<Config>>,
    /// Every check asked for: one check answers them all.
    checks: Vec<tokio::sync::oneshot::Sender<String>>,
    /// Whether the rules are to go (the daemon stops).
    remove: bool,
}

fn coalesce(cmds: impl Iterator<Item = Cmd>) -> Batch {
    let mut b = Batch {
        update: None,
        checks: Vec::new(),
        remove: false,
    };
    for cmd in cmds {
        match cmd {
            Cmd::Update(c) => b.update = Some(c),
            Cmd::Check(reply) => b.checks.push(reply),
            Cmd::Remove => b.remove = true,
        }
    }
    b
}

/// The firewall thread: periodic checks, and the commands of [`Handle`] and [`Checker`], until `Remove` or
/// until every sender is gone.
fn worker(mut fw: Option<Firewall>, rx: std::sync::mpsc::Receiver<Cmd>, repairs: Repairs) {
    use std::sync::mpsc::RecvTimeoutError;
    // A failure that persists is logged once, not every 2 s; so is the recovery.
    let mut failing: Option<String> = None;
    let mut next = std::time::Instant::now() + CHECK_INTERVAL;
    loop {
        let first = match rx.recv_timeout(next.saturating_duration_since(std::time::Instant::now()))
        {
            Ok(c) => c,
            Err(RecvTimeoutError::Timeout) => {
                next = std::time::Instant::now() + CHECK_INTERVAL;
                let Some(f) = fw.as_mut() else { continue };
                match f.check().map_err(|e| e.to_string()) {
                    Ok(r) => {
                        if failing.take().is_some() {
                            tracing::info!("firewall: checks work again");
                        }
                        log_report(&r, "periodic check", &repairs);
                    }
                    Err(e) if failing.as_ref() != Some(&e) => {
                        tracing::error!(
                            "{e}; vmsecd's rules may be missing or below libvirt's. Retrying every {}s (logged \
                             again only if the error changes)",
                            CHECK_INTERVAL.as_secs()
                        );
                        failing = Some(e);
                    }
                    Err(_) => {}
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                remove_rules(&mut fw);
                return;
            }
        };
        // Everything queued meanwhile: updates coalesce (the newest subnets are all that matter), checks are
        // answered by one check.
        let Batch {
            update,
            checks,
            remove,
        } = coalesce(std::iter::once(first).chain(rx.try_iter()));
        if remove {
            remove_rules(&mut fw);
            for reply in checks {
                let _ = reply.send(r#"{"firewall":"off"}"#.to_owned());
            }
            return;
        }
        if let Some(config) = update {
            if let Err(e) = follow(&mut fw, &config) {
                tracing::error!(
                    "FAILED to put the firewall rules for the new subnets in place ({e}): mesh traffic may be \
                     NATed or rejected by libvirt's rules; fix the cause and reload"
                );
            }
        }
        if !checks.is_empty() {
            let answer = check_answer(&mut fw, &repairs);
            for reply in checks {
                let _ = reply.send(answer.clone());
            }
        }
    }
}

impl Handle {
    /// Installs the rules the config asks for (here, before the daemon's loop starts: an error stops the
    /// start-up) and starts the firewall thread. A handle whose thread does nothing but wait for new subnets
    /// when the config or the host rules firewall handling out.
    pub fn start(config: &Config) -> Result<Handle, Error> {
        let fw = install(config)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let repairs = Repairs::default();
        let counted = repairs.clone();
        let thread = std::thread::Builder::new()
            .name("vmsecd-firewall".into())
            .spawn(move || worker(fw, rx, counted))
            .map_err(|source| Error::Spawn {
                command: "the firewall thread".into(),
                source,
            })?;
        Ok(Handle {
            tx: Some(tx),
            thread: Some(thread),
            repairs,
        })
    }

    /// How many checks found rules to repair so far (periodic ones and `firewall-check` requests).
    pub fn repairs(&self) -> u64 {
        self.repairs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Follows new subnets (a reload, or subnets learned from a `subnets = "libvirt"` peer) on the firewall
    /// thread: returns at once; the outcome is logged. Updates queued while one runs coalesce into the newest.
    pub fn update(&mut self, config: &Config) -> Result<(), Error> {
        if let Some(tx) = &self.tx {
            // A stopped thread (after remove) has nothing to update.
            let _ = tx.send(Cmd::Update(Box::new(config.clone())));
        }
        Ok(())
    }

    /// A handle for `firewall-check` requests, usable from other tasks.
    pub fn checker(&self) -> Checker {
        Checker(self.tx.clone())
    }

    /// Stops the firewall thread and deletes exactly vmsecd's rules (by their comment); waits for both.
    /// Idempotent.
    pub fn remove(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Cmd::Remove);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::time::Duration;

    /// A configuration with `firewall = "off"` (nothing runs iptables) and this interface name.
    fn config(dir: &Path, interface: &str) -> Config {
        use std::os::unix::fs::PermissionsExt;
        let psk = dir.join("psk");
        std::fs::write(&psk, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mesh = dir.join("mesh.toml");
        std::fs::write(
            &mesh,
            format!(
                "[mesh]\ninterface = \"{interface}\"\nauth = \"psk\"\npsk_file = \"psk\"\nfirewall = \"off\"\n\
                 [[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n\
                 [[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n"
            ),
        )
        .unwrap();
        Config::load(&mesh, Some("b0"), &[]).unwrap()
    }

    /// Updates queued while the thread was busy collapse into the newest; every check is answered.
    #[test]
    fn queued_updates_coalesce_into_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let c = |name: &str| Box::new(config(dir.path(), name));
        let (t1, _r1) = tokio::sync::oneshot::channel();
        let (t2, _r2) = tokio::sync::oneshot::channel();
        let b = coalesce(
            [
                Cmd::Update(c("vmsec1")),
                Cmd::Check(t1),
                Cmd::Update(c("vmsec2")),
                Cmd::Update(c("vmsec3")),
                Cmd::Check(t2),
            ]
            .into_iter(),
        );
        assert_eq!(b.update.unwrap().settings().interface, "vmsec3");
        assert_eq!(b.checks.len(), 2);
        assert!(!b.remove);
    }

    /// `Handle::update` and a check only send messages: the caller (the event loop) never waits for iptables.
    /// With firewall handling off the thread answers a check with "off", after the updates queued before it.
    #[test]
    fn the_handle_answers_from_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "vmsec1");
        let mut h = Handle::start(&cfg).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..100 {
            h.update(&cfg).unwrap();
        }
        assert!(
            t.elapsed() < Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = rt.block_on(h.checker().check_now());
        assert_eq!(answer, r#"{"firewall":"off"}"#);
        h.remove();
        let after = rt.block_on(h.checker().check_now());
        assert_eq!(
            after, r#"{"firewall":"off"}"#,
            "a removed handle has no thread to ask"
        );
    }
}
