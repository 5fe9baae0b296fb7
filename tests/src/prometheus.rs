//! Debian's Prometheus server in a test's namespace: a private configuration and TSDB in the test's directory,
//! queried through its HTTP API (`/api/v1/query`) with curl inside the namespace.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::{Netns, NsChild};
use crate::traffic::require_tool;

/// A running `prometheus` in a namespace, scraping the given targets every second.
#[derive(Debug)]
pub struct Prometheus {
    ns: Netns,
    listen: String,
    log: std::path::PathBuf,
    _child: NsChild,
}

impl Prometheus {
    /// Starts Prometheus in `ns`, listening on `listen` (an address of `ns` and a port), scraping
    /// `targets` (`host:port`) every second; its files live in `dir`. Fails loudly without the `prometheus`
    /// and `curl` packages.
    pub fn start(ns: &Netns, dir: &Path, listen: &str, targets: &[&str]) -> Prometheus {
        require_tool("prometheus", &["--version"], "prometheus");
        require_tool("curl", &["--version"], "curl");
        std::fs::create_dir_all(dir.join("data")).expect("prometheus dir");
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: vmsecd\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("prometheus.yml");
        let log = dir.join("prometheus.log");
        let f = std::fs::File::create(&log).expect("prometheus log");
        let mut cmd = ns.command("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .current_dir(dir)
            .stdout(std::process::Stdio::from(f.try_clone().expect("dup")))
            .stderr(std::process::Stdio::from(f));
        let child = ns.spawn(&mut cmd);
        let p = Prometheus {
            ns: ns.clone(),
            listen: listen.to_owned(),
            log,
            _child: child,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while p.get("/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after 60 s:\n{}",
                p.diagnostics()
            );
            sleep(Duration::from_millis(200));
        }
        p
    }

    fn get(&self, path_and_query: &str) -> Option<String> {
        let out = self
            .ns
            .command("curl")
            .args(["-sf", "--max-time", "5", "-G"])
            .arg(format!("http://{}{path_and_query}", self.listen))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant query through the HTTP API: each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let out = self
            .ns
            .command("curl")
            .args(["-sf", "--max-time", "5", "-G"])
            .arg(format!("http://{}/api/v1/query", self.listen))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .expect("curl");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prometheus answered {expr:?} with no JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                self.diagnostics()
            )
        });
        assert_eq!(v["status"], "success", "{v}");
        v["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let val = r["value"][1]
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(f64::NAN);
                        (r["metric"].clone(), val)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls `expr` until `pred` holds for its result; returns it, or panics after `timeout`.
    pub fn wait(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
        pred: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(expr);
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus: {what} not seen in {timeout:?}; {expr} = {r:?}\n{}",
                self.diagnostics()
            );
            sleep(Duration::from_millis(500));
        }
    }

    /// The last lines of its log.
    pub fn diagnostics(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "--- prometheus log, last 30 lines ---\n{}",
            lines[lines.len().saturating_sub(30)..].join("\n")
        )
    }
}
