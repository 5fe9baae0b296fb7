//! The host's end of a guest's command agent: an uncached 9p share the guest mounts at /vmsecd-agent. A script
//! goes in as `cmd-N.sh` (written then renamed, so the guest never runs half of one), its output and exit code
//! come back as `out-N.stdout`, `out-N.stderr` and `out-N.rc` (the last one renamed into place by the guest, so
//! the host never reads half a result). The guest's side is [`STAGE2`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Stage two, the host's `/bin/sh` in the guest: a fresh `/proc`, `/sys`, `/dev`, `/run` and `/tmp`, links up,
/// then the agent loop: runs `cmd-N.sh` in order, leaving `out-N.stdout`, `out-N.stderr` and `out-N.rc`.
pub const STAGE2: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /run/lock /run/netns
A=/vmsecd-agent
hostname "$(cat $A/hostname)"
ip link set lo up
for i in $(ls /sys/class/net); do ip link set "$i" up; done
echo "vmsecd-guest: agent ready"
echo ready > $A/ready.tmp && mv $A/ready.tmp $A/ready
n=0
while :; do
  if [ -f $A/cmd-$n.sh ]; then
    sh $A/cmd-$n.sh > $A/out-$n.stdout 2> $A/out-$n.stderr < /dev/null
    echo $? > $A/out-$n.rc.tmp
    mv $A/out-$n.rc.tmp $A/out-$n.rc
    n=$((n+1))
  else
    sleep 0.05
  fi
done
"#;

/// What a command in the guest did.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Its exit code.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The host's end of one guest's agent share; see the module documentation.
#[derive(Debug)]
pub struct Agent {
    dir: PathBuf,
    next: Mutex<u64>,
}

impl Agent {
    /// The agent share in `dir` (made by [`Agent::prepare`]).
    pub fn new(dir: PathBuf) -> Agent {
        Agent {
            dir,
            next: Mutex::new(0),
        }
    }

    /// The agent share in `dir` of a guest already running, which earlier processes may have given commands:
    /// the next command number follows the last `cmd-N.sh` there.
    pub fn attach(dir: PathBuf) -> io::Result<Agent> {
        let mut next = 0;
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name();
            let n = name
                .to_str()
                .and_then(|n| n.strip_prefix("cmd-"))
                .and_then(|n| n.strip_suffix(".sh"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(n) = n {
                next = next.max(n + 1);
            }
        }
        Ok(Agent {
            dir,
            next: Mutex::new(next),
        })
    }

    /// The share's folder on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Empties the share for a new boot of guest `hostname`: the stage-2 script and the hostname in it, the
    /// command numbers from 0 again.
    pub fn prepare(&self, hostname: &str) -> io::Result<()> {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir)?;
        fs::write(self.dir.join("stage2.sh"), STAGE2)?;
        fs::write(self.dir.join("hostname"), hostname)?;
        *self.lock() = 0;
        Ok(())
    }

    /// True once the guest's agent runs (it wrote `ready`).
    pub fn is_ready(&self) -> bool {
        self.dir.join("ready").exists()
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number the next command will get (transfer files are named after it, so they never collide).
    pub fn current(&self) -> u64 {
        *self.lock()
    }

    /// Hands `script` to the guest; returns its number for [`Agent::outcome`].
    pub fn submit(&self, script: &str) -> io::Result<u64> {
        let mut next = self.lock();
        let n = *next;
        let tmp = self.dir.join(format!("cmd-{n}.tmp"));
        fs::write(&tmp, script)?;
        fs::rename(&tmp, self.dir.join(format!("cmd-{n}.sh")))?;
        *next += 1;
        Ok(n)
    }

    /// What command `n` returned, once the guest has finished it.
    pub fn outcome(&self, n: u64) -> Option<GuestOutput> {
        let code = fs::read_to_string(self.dir.join(format!("out-{n}.rc"))).ok()?;
        let read = |ext: &str| {
            fs::read_to_string(self.dir.join(format!("out-{n}.{ext}"))).unwrap_or_default()
        };
        Some(GuestOutput {
            code: code.trim().parse().unwrap_or(-1),
            stdout: read("stdout"),
            stderr: read("stderr"),
        })
    }

    /// Runs `script` in the guest and waits up to `timeout` for its outcome (`None` if it did not finish).
    pub fn run(&self, script: &str, timeout: Duration) -> io::Result<Option<GuestOutput>> {
        let n = self.submit(script)?;
        let t = Instant::now();
        loop {
            if let Some(out) = self.outcome(n) {
                return Ok(Some(out));
            }
            if t.elapsed() > timeout {
                return Ok(None);
            }
            sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_continues_after_the_last_command() {
        let dir = std::env::temp_dir().join(format!("vmsecd-agent-unit-{}", std::process::id()));
        let a = Agent::new(dir.clone());
        a.prepare("g").unwrap();
        assert_eq!(a.submit("true").unwrap(), 0);
        assert_eq!(a.submit("true").unwrap(), 1);
        let b = Agent::attach(dir.clone()).unwrap();
        assert_eq!(b.current(), 2);
        // The guest's answer, as STAGE2 leaves it.
        fs::write(dir.join("out-1.stdout"), "hi\n").unwrap();
        fs::write(dir.join("out-1.rc"), "3\n").unwrap();
        let out = b.outcome(1).unwrap();
        assert_eq!((out.code, out.stdout.as_str()), (3, "hi\n"));
        assert!(b.outcome(0).is_none());
        fs::remove_dir_all(dir).unwrap();
    }
}
