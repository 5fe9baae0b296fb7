//! `vmsecd`: run the daemon, check a mesh file, ask a running daemon for its status.

use std::io::IsTerminal as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use vmsecd::config::{Config, ControlSocket, DEFAULT_CONFIG_PATH};
use vmsecd::daemon;
use vmsecd::route::Netlink;

/// The CLI's own reports, which the library does not need.
mod cli {
    pub(crate) mod check;
    pub(crate) mod demo_probe;
    pub(crate) mod demo_vm;
}

/// IKEv2/ESP tunnels between the VM subnets of a mesh of hypervisors.
///
/// Logs go to standard error; set RUST_LOG (e.g. RUST_LOG=debug) for more or less of them.
#[derive(Debug, Parser)]
#[command(name = "vmsecd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon for this host: a TUN interface, routes to every peer's subnets, and an IKE SA with a Child
    /// SA towards every peer.
    Run {
        /// The mesh file.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Which [[host]] this machine is; found from its local addresses when not given.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// The control socket to listen on (a path, or @NAME for an abstract socket), instead of the mesh
        /// file's control_socket.
        #[arg(long, value_name = "PATH")]
        control: Option<String>,
        /// This host's private key, instead of the mesh file's private_key (auth = "pubkey").
        #[arg(long, value_name = "FILE")]
        private_key: Option<PathBuf>,
        /// Where this machine's libvirt network definitions are (for subnets = "libvirt"); repeat for several,
        /// the first wins for a network found twice. Default: /run/libvirt/network and
        /// /etc/libvirt/qemu/networks.
        #[arg(long = "libvirt-dir", value_name = "DIR")]
        libvirt_dirs: Vec<PathBuf>,
    },
    /// Validate the mesh file and print the tunnels this host would set up; exit 1 on any error.
    Check {
        /// The mesh file.
        #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Check as this [[host]] (its address need not be on this machine); found from the local addresses
        /// when not given.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
        /// Where this machine's libvirt network definitions are (for subnets = "libvirt"); repeat for several,
        /// the first wins for a network found twice. Default: /run/libvirt/network and
        /// /etc/libvirt/qemu/networks.
        #[arg(long = "libvirt-dir", value_name = "DIR")]
        libvirt_dirs: Vec<PathBuf>,
    },
    /// Show the running daemon's SAs and counters, per peer.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket (default: @vmsecd, the abstract socket of this network namespace).
        #[arg(long, value_name = "PATH")]
        control: Option<String>,
    },
    /// Generate this host's RSA key pair for auth = "pubkey": DIR/private.pem (PKCS#8, mode 0600) and
    /// DIR/NAME.pub.pem (SubjectPublicKeyInfo); print the mesh file lines that use them.
    Keygen {
        /// The folder to write the keys into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// RSA modulus size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 3072)]
        bits: usize,
        /// The host name for the public key's file name (default: this machine's host name).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
    },
    /// Install libvirt's network hook (DIR/network), which asks the running daemon to re-check its firewall
    /// rules whenever libvirt starts a network; an existing hook script is kept. Restart libvirtd afterwards:
    /// it looks for hooks only when it starts.
    InstallHook {
        /// libvirt's hooks folder.
        #[arg(long, value_name = "DIR", default_value = vmsecd::libvirt::hook::DEFAULT_HOOKS_DIR)]
        hooks_dir: PathBuf,
        /// The daemon's control socket the hook talks to (default: @vmsecd).
        #[arg(long, value_name = "PATH")]
        control: Option<String>,
    },
    /// Run the demo as root: three hypervisors b0, c0, d0 in network namespaces on this machine (underlay
    /// 198.18.0.1-3, VM subnets 198.19.1-3.0/24 and 2001:db8:1-3::/64), one mesh file with RSA keys, a vmsecd
    /// on each; waits for the full mesh, pings every VM from every other VM over IPv4 and IPv6 and captures the
    /// underlay. Removes everything it made. Needs only bash, coreutils, grep, sed and iproute2.
    Demo {
        /// Leave the demo running and print the commands to explore it.
        #[arg(long)]
        keep: bool,
        /// A real QEMU guest (TCG, Debian's kernel) per hypervisor instead of a VM namespace; needs
        /// qemu-system-x86, linux-image-amd64, busybox-static and python3. Slower: the guests boot in 5-30 s.
        #[arg(long)]
        vms: bool,
    },
    /// For `demo --vms`: with --check, checks what the guests need and builds their image; else boots guest NAME
    /// on tap TAP of the current namespace, its files in DIR (becomes QEMU: the PID is QEMU's).
    #[command(hide = true)]
    DemoVm {
        #[arg(long)]
        check: bool,
        #[arg(long, required_unless_present = "check")]
        dir: Option<PathBuf>,
        #[arg(long, required_unless_present = "check")]
        name: Option<String>,
        #[arg(long, required_unless_present = "check")]
        tap: Option<String>,
    },
    /// For `demo --vms`: runs SCRIPT with /bin/sh in the guest whose files are in DIR; its output and exit code.
    #[command(hide = true)]
    DemoVmExec {
        #[arg(long)]
        dir: PathBuf,
        /// Seconds to wait for the script.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        script: String,
    },
    /// For the demo script: ICMP echo to DST from the current namespace (raw socket, needs root); prints
    /// "N sent, M received, avg RTT X ms" and fails unless every request was answered.
    #[command(hide = true)]
    DemoPing {
        dst: IpAddr,
        #[arg(long, default_value_t = 3)]
        count: u32,
        /// Seconds between requests.
        #[arg(long, default_value_t = 0.2)]
        interval: f64,
        /// Seconds to wait for answers after the last request.
        #[arg(long, default_value_t = 1.0)]
        timeout: f64,
    },
    /// For the demo script: counts the frames on IFACE by source, destination and protocol until SIGTERM, and
    /// how many carry an address of an --inner prefix in their IP header.
    #[command(hide = true)]
    DemoCapture {
        iface: String,
        #[arg(long)]
        inner: Vec<vmsecd::prefix::Prefix>,
    },
    /// Ask the running daemon to read its mesh file again and apply the difference (as SIGHUP does): tunnels to
    /// new hosts come up, those to removed hosts are deleted, unchanged ones are left alone.
    Reload {
        /// The daemon's control socket (default: @vmsecd).
        #[arg(long, value_name = "PATH")]
        control: Option<String>,
    },
    /// Ask the running daemon to check (and repair) its firewall rules now; what libvirt's network hook runs.
    FirewallCheck {
        /// The daemon's control socket (default: @vmsecd).
        #[arg(long, value_name = "PATH")]
        control: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsecd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run {
            config,
            host,
            control,
            private_key,
            libvirt_dirs,
        } => {
            // Before any secret is read: a crash must not write the PSK or a private key to a core file.
            daemon::forbid_core_dumps().context("cannot disable core dumps")?;
            let mut config =
                load_with_private_key(&config, host.as_deref(), private_key.as_deref())?;
            let libvirt_dirs = libvirt_dirs_or_default(libvirt_dirs);
            if let Some(found) = config.resolve_libvirt(&as_paths(&libvirt_dirs))? {
                tracing::info!(
                    host = %config.local().name,
                    "subnets = \"libvirt\": local subnets {} from libvirt networks {}",
                    cli::check::join(&config.local().subnets),
                    cli::check::join(&found.networks.iter().map(|(n, _)| n).collect::<Vec<_>>())
                );
            }
            if let Some(c) = control {
                config.mesh.settings.control_socket = ControlSocket::parse(&c, Path::new(""))
                    .map_err(|allowed| {
                        anyhow::anyhow!("--control {c:?} cannot be used; allowed: {allowed}")
                    })?;
            }
            tracing::info!(
                host = %config.local().name,
                file = %config.mesh.file.display(),
                peers = config.peers().count(),
                "mesh file loaded"
            );
            // One thread: the daemon's loop is one task, and `block_on` on a multi-thread runtime runs it on this
            // thread while a worker thread polls the sockets, so every packet event crossed threads (a futex wake
            // each time). Measured with benches/e2e.sh (vmsecd <-> vmsecd, 2 runs each): 6.7-7.5 against
            // 5.5-5.9 Gbit/s single stream, 1.3-1.5 against 1.9 CPU s/GB, idle ping 0.25-0.29 against 0.32-0.35
            // ms. The firewall checks still run on tokio's blocking pool, whose threads are named apart from the
            // datapath's (`vmsecd`, `vmsecd-tx1`...) so that per-thread measurements can tell them apart.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("vmsecd-blocking")
                .build()
                .context("cannot start the tokio runtime")?;
            runtime.block_on(daemon::run(config, private_key, libvirt_dirs))?;
            Ok(())
        }
        Command::Check {
            config,
            host,
            libvirt_dirs,
        } => {
            let mut config = load(&config, host.as_deref())?;
            let libvirt_dirs = libvirt_dirs_or_default(libvirt_dirs);
            let dirs = as_paths(&libvirt_dirs);
            let found = config.resolve_libvirt(&dirs)?;
            print!("{}", cli::check::render_check(&config, found.as_ref()));
            // This machine's libvirt networks against the mesh: the check a sysadmin otherwise does by hand.
            print!(
                "{}",
                cli::check::libvirt_report(&vmsecd::libvirt::network::networks(&dirs), &config)
            );
            Ok(())
        }
        Command::Status { json, control } => {
            let sock = ControlSocket::parse(control.as_deref().unwrap_or("@vmsecd"), Path::new(""))
                .map_err(|allowed| {
                    anyhow::anyhow!("--control cannot be used; allowed: {allowed}")
                })?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the tokio runtime")?;
            let status = runtime.block_on(daemon::control::query(&sock))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", daemon::control::render(&status));
            }
            Ok(())
        }
        Command::Keygen { out, bits, name } => keygen(&out, bits, name),
        Command::Demo { keep, vms } => demo(keep, vms),
        Command::DemoVm { check: true, .. } => cli::demo_vm::check(),
        Command::DemoVm {
            dir: Some(dir),
            name: Some(name),
            tap: Some(tap),
            ..
        } => cli::demo_vm::boot(&dir, &name, &tap),
        Command::DemoVm { .. } => {
            anyhow::bail!("demo-vm needs --check, or --dir, --name and --tap")
        }
        Command::DemoVmExec {
            dir,
            timeout,
            script,
        } => {
            let code = cli::demo_vm::exec(
                &dir,
                &script,
                std::time::Duration::from_secs_f64(timeout.clamp(0.1, 3600.0)),
            )?;
            if code != 0 {
                std::process::exit(code.clamp(1, 255));
            }
            Ok(())
        }
        Command::DemoPing {
            dst,
            count,
            interval,
            timeout,
        } => {
            let r = cli::demo_probe::ping(
                dst,
                count,
                std::time::Duration::from_secs_f64(interval.clamp(0.01, 10.0)),
                std::time::Duration::from_secs_f64(timeout.clamp(0.01, 30.0)),
            )?;
            println!(
                "{} sent, {} received, avg RTT {:.3} ms",
                r.sent, r.received, r.avg_ms
            );
            if r.received < r.sent {
                anyhow::bail!(
                    "{} of {} echo requests to {dst} unanswered",
                    r.sent - r.received,
                    r.sent
                );
            }
            Ok(())
        }
        Command::DemoCapture { iface, inner } => {
            let sum = cli::demo_probe::capture(&iface, &inner)?;
            print!("{}", sum.render(12));
            Ok(())
        }
        Command::InstallHook { hooks_dir, control } => {
            let sock = control_socket(control.as_deref())?;
            let exe = std::env::current_exe()
                .context("cannot find the path of this vmsecd binary for the hook to call")?;
            let (path, what) = vmsecd::libvirt::hook::install_hook(&hooks_dir, &exe, &sock)?;
            let what = match what {
                vmsecd::libvirt::hook::HookInstalled::Created => "written",
                vmsecd::libvirt::hook::HookInstalled::Added => "added to the existing script",
                vmsecd::libvirt::hook::HookInstalled::Updated => "updated",
            };
            println!(
                "libvirt network hook {what}: {} (calls {} firewall-check --control {sock}).\n\
                 Restart libvirtd once so that it finds the hook.",
                path.display(),
                exe.display()
            );
            Ok(())
        }
        Command::Reload { control } => {
            let sock = control_socket(control.as_deref())?;
            let answer = vmsecd::control_client::request(&sock, "reload")?;
            let v: serde_json::Value = serde_json::from_str(&answer)
                .with_context(|| format!("the daemon's answer is not JSON: {answer}"))?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                anyhow::bail!("the daemon refused the reload, its mesh is unchanged: {e}");
            }
            for line in v["reloaded"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            Ok(())
        }
        Command::FirewallCheck { control } => {
            let sock = control_socket(control.as_deref())?;
            let answer = vmsecd::control_client::request_check(&sock)?;
            println!("{answer}");
            if answer.contains("\"error\"") {
                anyhow::bail!("the daemon's firewall check failed: {answer}");
            }
            Ok(())
        }
    }
}

/// `--control`, or the default abstract socket `@vmsecd`.
fn control_socket(control: Option<&str>) -> anyhow::Result<ControlSocket> {
    ControlSocket::parse(control.unwrap_or("@vmsecd"), Path::new(""))
        .map_err(|allowed| anyhow::anyhow!("--control cannot be used; allowed: {allowed}"))
}

/// The demo (scripts/demo), built into the binary so that `vmsecd demo` works wherever vmsecd is installed.
/// It is a shell script because all it does is drive `ip netns`, `ping` and `tcpdump` around vmsecd.
const DEMO_SCRIPT: &str = include_str!("../../scripts/demo");

/// `vmsecd demo`: runs the built-in script with this binary as the daemon.
fn demo(keep: bool, vms: bool) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe().context("cannot find the path of this vmsecd binary")?;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(DEMO_SCRIPT)
        .arg("vmsecd demo")
        .arg("--bin")
        .arg(&exe);
    if keep {
        cmd.arg("--keep");
    }
    if vms {
        cmd.arg("--vms");
    }
    // exec, not spawn: the script becomes this process, so Ctrl-C reaches it alone and its clean-up runs.
    let e = cmd.exec();
    Err(anyhow::anyhow!("cannot run bash for the demo: {e}"))
}

/// `vmsecd keygen`: a new RSA key pair in `out`, never overwriting an existing file.
fn keygen(out: &Path, bits: usize, name: Option<String>) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = match name {
        Some(n) => n,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .context("cannot read this machine's host name; pass --name NAME")?,
    };
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        anyhow::bail!("--name {name:?} cannot be a file name");
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let private_path = out.join("private.pem");
    let public_path = out.join(format!("{name}.pub.pem"));
    for p in [&private_path, &public_path] {
        if p.exists() {
            anyhow::bail!(
                "{} exists already; remove it or choose another --out",
                p.display()
            );
        }
    }
    if ![2048, 3072, 4096].contains(&bits) {
        anyhow::bail!("--bits {bits} cannot be used; allowed: 2048, 3072 or 4096");
    }
    let key = ike::crypto::signature::PrivateKey::generate(bits)
        .map_err(|e| anyhow::anyhow!("cannot generate an RSA key: {e}"))?;
    let pem = key.to_pkcs8_pem();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .with_context(|| format!("cannot create {}", private_path.display()))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", private_path.display()))?;
    std::fs::write(&public_path, key.public_key().to_pem())
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    println!(
        "wrote {} (RSA {bits}, PKCS#8, mode 0600) and {}",
        private_path.display(),
        public_path.display()
    );
    println!("copy {name}.pub.pem next to the mesh file on every host (e.g. into keys/), then:");
    println!("  in [mesh]:         auth = \"pubkey\"");
    let private_abs = std::fs::canonicalize(&private_path).unwrap_or(private_path.clone());
    println!(
        "                     private_key = \"{}\"",
        private_abs.display()
    );
    println!("  in {name}'s [[host]]: pubkey = \"keys/{name}.pub.pem\"");
    Ok(())
}

/// [`load`] with `vmsecd run --private-key`.
fn load_with_private_key(
    path: &Path,
    host: Option<&str>,
    private_key: Option<&Path>,
) -> anyhow::Result<Config> {
    let local = local_addrs(host)?;
    Ok(Config::load_with_private_key(
        path,
        host,
        &local,
        private_key,
    )?)
}

/// `--libvirt-dir` as given, or libvirt's own folders.
fn libvirt_dirs_or_default(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    if dirs.is_empty() {
        vmsecd::libvirt::network::NETWORK_DIRS
            .map(PathBuf::from)
            .to_vec()
    } else {
        dirs
    }
}

fn as_paths(dirs: &[PathBuf]) -> Vec<&Path> {
    dirs.iter().map(PathBuf::as_path).collect()
}

/// This machine's addresses, looked up only when `--host` is not given.
fn local_addrs(host: Option<&str>) -> anyhow::Result<Vec<IpAddr>> {
    Ok(match host {
        Some(_) => Vec::new(),
        None => Netlink::open()
            .and_then(|mut nl| nl.local_addresses())
            .context("cannot list this machine's addresses to find which host it is (pass --host NAME instead)")?
            .into_iter()
            .map(|a| a.addr)
            .collect(),
    })
}

/// Loads the mesh file; this machine's addresses are only looked up when `--host` is not given.
fn load(path: &Path, host: Option<&str>) -> anyhow::Result<Config> {
    load_with_private_key(path, host, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "vmsecd",
            "run",
            "--config",
            "m.toml",
            "--host",
            "b0",
            "--control",
            "@x",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Run { host: Some(h), control: Some(c), .. } if h == "b0" && c == "@x")
        );
        let cli = Cli::try_parse_from(["vmsecd", "status", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Status {
                json: true,
                control: None
            }
        ));
    }

    #[test]
    fn cli_parses_install_hook_and_firewall_check() {
        let cli = Cli::try_parse_from(["vmsecd", "install-hook"]).unwrap();
        assert!(
            matches!(cli.command, Command::InstallHook { hooks_dir, control: None } if hooks_dir == Path::new("/etc/libvirt/hooks"))
        );
        let cli = Cli::try_parse_from([
            "vmsecd",
            "install-hook",
            "--hooks-dir",
            "/tmp/h",
            "--control",
            "@x",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::InstallHook { hooks_dir, control: Some(c) } if hooks_dir == Path::new("/tmp/h") && c == "@x")
        );
        let cli = Cli::try_parse_from(["vmsecd", "firewall-check"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::FirewallCheck { control: None }
        ));
    }
}
