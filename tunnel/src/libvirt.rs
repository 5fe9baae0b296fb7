//! libvirt's network hook: `vmsecd install-hook` makes libvirt poke the daemon whenever a network starts, so
//! that vmsecd puts its firewall rules back ahead of libvirt's at once rather than within its periodic check.
//!
//! libvirt runs `/etc/libvirt/hooks/network NETWORK OPERATION SUB-OPERATION` (network XML on standard input)
//! and waits for it. libvirt looks for hook scripts only when libvirtd starts: after installing the hook,
//! restart libvirtd once. A libvirtd restart itself calls no network hook (measured with libvirt 9.0), which is
//! one reason the daemon also checks every 2 s.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::ControlSocket;

/// Where libvirt looks for hook scripts.
pub const DEFAULT_HOOKS_DIR: &str = "/etc/libvirt/hooks";
/// First line of vmsecd's block in the hook script.
pub const BEGIN_MARKER: &str = "# >>> vmsecd >>>";
/// Last line of vmsecd's block in the hook script.
pub const END_MARKER: &str = "# <<< vmsecd <<<";

/// Writing the hook failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// Reading, writing or creating a file or folder failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What [`install_hook`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookInstalled {
    /// There was no hook script: a new one was written.
    Created,
    /// An existing script got vmsecd's block right after its first line; the rest is unchanged.
    Added,
    /// The script already had vmsecd's block: it was replaced with the current one.
    Updated,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// vmsecd's block of the hook script: on `started` and `updated`, ask the daemon to check its rules; never
/// fail libvirt's operation, never read libvirt's standard input (a script after ours may want it).
pub fn hook_block(vmsecd: &Path, control: &ControlSocket) -> String {
    format!(
        "{BEGIN_MARKER} (written by `vmsecd install-hook`; delete up to the end marker to remove)\n\
         # libvirt has just (re)inserted its iptables rules: ask vmsecd to put its own back ahead of them now.\n\
         case \"$2\" in\n\
         \x20 started|updated) {} firewall-check --control {} </dev/null >/dev/null 2>&1 || true ;;\n\
         esac\n\
         {END_MARKER}\n",
        quote(&vmsecd.display().to_string()),
        quote(&control.to_string()),
    )
}

/// Writes `DIR/network` so that libvirt asks vmsecd to check its firewall rules after every network start.
/// An existing script is kept: vmsecd's block goes right after its `#!` line (so an `exit` at its end cannot
/// skip it), or replaces the block an earlier install left.
pub fn install_hook(
    dir: &Path,
    vmsecd: &Path,
    control: &ControlSocket,
) -> Result<(PathBuf, HookInstalled), HookError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| HookError::Io {
            action,
            path,
            source,
        }
    };
    fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let path = dir.join("network");
    let block = hook_block(vmsecd, control);
    let (text, what) = match fs::read_to_string(&path) {
        Ok(old) => splice(&old, &block),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            (format!("#!/bin/sh\n{block}"), HookInstalled::Created)
        }
        Err(e) => return Err(io("cannot read", &path)(e)),
    };
    fs::write(&path, text).map_err(io("cannot write", &path))?;
    let mode = fs::metadata(&path)
        .map_err(io("cannot stat", &path))?
        .permissions()
        .mode();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode | 0o755))
        .map_err(io("cannot make executable", &path))?;
    Ok((path, what))
}

/// `old` with `block` in it: replacing an earlier block, or after the `#!` line, or first.
fn splice(old: &str, block: &str) -> (String, HookInstalled) {
    if let (Some(b), Some(e)) = (old.find(BEGIN_MARKER), old.find(END_MARKER)) {
        if b < e {
            let end = old[e..].find('\n').map_or(old.len(), |n| e + n + 1);
            return (
                format!("{}{block}{}", &old[..b], &old[end..]),
                HookInstalled::Updated,
            );
        }
    }
    if old.starts_with("#!") {
        let (first, rest) = old.split_at(old.find('\n').map_or(old.len(), |n| n + 1));
        let first = if first.ends_with('\n') {
            first.to_owned()
        } else {
            format!("{first}\n")
        };
        (format!("{first}{block}{rest}"), HookInstalled::Added)
    } else {
        (format!("#!/bin/sh\n{block}{old}"), HookInstalled::Added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_hook_is_an_executable_script_that_pokes_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        let sock = ControlSocket::Abstract("vmsecd".into());
        let (path, what) = install_hook(&hooks, Path::new("/usr/sbin/vmsecd"), &sock).unwrap();
        assert_eq!(what, HookInstalled::Created);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n# >>> vmsecd >>>"), "{text}");
        assert!(
            text.contains(
                "started|updated) '/usr/sbin/vmsecd' firewall-check --control '@vmsecd' </dev/null"
            ),
            "{text}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Installing again replaces the block, nothing else.
        let (_, what) = install_hook(&hooks, Path::new("/opt/it's/vmsecd"), &sock).unwrap();
        assert_eq!(what, HookInstalled::Updated);
        let again = fs::read_to_string(&path).unwrap();
        assert_eq!(again.matches(BEGIN_MARKER).count(), 1);
        assert!(again.contains(r"'/opt/it'\''s/vmsecd'"), "{again}");
        // The script is valid shell.
        let st = std::process::Command::new("sh")
            .arg("-n")
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
    }

    #[test]
    fn an_existing_hook_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network");
        let theirs = "#!/bin/bash\necho \"$1 $2\" >> /var/log/nethook\nexit 0\n";
        fs::write(&path, theirs).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        let sock = ControlSocket::Abstract("vmsecd".into());
        let (_, what) = install_hook(dir.path(), Path::new("/usr/sbin/vmsecd"), &sock).unwrap();
        assert_eq!(what, HookInstalled::Added);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/bash\n# >>> vmsecd >>>"), "{text}");
        assert!(
            text.ends_with("# <<< vmsecd <<<\necho \"$1 $2\" >> /var/log/nethook\nexit 0\n"),
            "{text}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let (_, what) = install_hook(dir.path(), Path::new("/usr/sbin/vmsecd"), &sock).unwrap();
        assert_eq!(what, HookInstalled::Updated);
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
    }
}

/// Where libvirt keeps its network definitions: the running networks (with what libvirt filled in) and the
/// persistent ones. A name found in both is read from the first.
pub const NETWORK_DIRS: [&str; 2] = ["/run/libvirt/network", "/etc/libvirt/qemu/networks"];

/// A libvirt network, as far as the mesh cares: its subnets must be in this host's `subnets` (or its VMs are
/// not reachable through the mesh), and must not overlap another host's (the how-to's first step: renumber
/// 192.168.122.0/24 on all hosts but one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// `<name>`.
    pub name: String,
    /// `<forward mode=...>`: `nat` (also when `<forward>` has no mode), `route`, `open`, ...; `isolated` when
    /// there is no `<forward>` element.
    pub mode: String,
    /// `<bridge name=...>`.
    pub bridge: Option<String>,
    /// One per `<ip address=... netmask=...|prefix=...>`.
    pub subnets: Vec<crate::prefix::Prefix>,
}

/// The attributes of the first element named `tag` at or after `from` in `xml`, and where it ends.
fn element<'a>(xml: &'a str, tag: &str, from: usize) -> Option<(Vec<(&'a str, &'a str)>, usize)> {
    let mut at = from;
    loop {
        let start = at + xml.get(at..)?.find(&format!("<{tag}"))?;
        let after = start + 1 + tag.len();
        let next = xml[after..].chars().next()?;
        if !(next.is_whitespace() || next == '>' || next == '/') {
            at = after;
            continue;
        }
        let end = after + xml[after..].find('>')?;
        let mut attrs = Vec::new();
        let mut rest = &xml[after..end];
        while let Some(eq) = rest.find('=') {
            let key = rest[..eq].trim();
            let value = rest[eq + 1..].trim_start();
            let quote = value.chars().next()?;
            if quote != '\'' && quote != '"' {
                return None;
            }
            let close = value[1..].find(quote)?;
            attrs.push((key, &value[1..1 + close]));
            rest = &value[close + 2..];
        }
        return Some((attrs, end + 1));
    }
}

fn attr<'a>(attrs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Reads one network definition (libvirt's network XML). `None` if it has no `<name>`.
pub fn parse_network(xml: &str) -> Option<Network> {
    let name_start = xml.find("<name>")? + "<name>".len();
    let name = xml[name_start..name_start + xml[name_start..].find("</name>")?]
        .trim()
        .to_owned();
    let mode = match element(xml, "forward", 0) {
        Some((attrs, _)) => attr(&attrs, "mode").unwrap_or("nat").to_owned(),
        None => "isolated".to_owned(),
    };
    let bridge = element(xml, "bridge", 0).and_then(|(a, _)| attr(&a, "name").map(str::to_owned));
    let mut subnets = Vec::new();
    let mut at = 0;
    while let Some((attrs, end)) = element(xml, "ip", at) {
        at = end;
        let Some(addr) = attr(&attrs, "address").and_then(|a| a.parse::<std::net::IpAddr>().ok())
        else {
            continue;
        };
        let len = match (attr(&attrs, "prefix"), attr(&attrs, "netmask")) {
            (Some(p), _) => p.parse::<u8>().ok(),
            (None, Some(m)) => m
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|m| u32::from(m).leading_ones() as u8),
            (None, None) => Some(if addr.is_ipv4() { 24 } else { 64 }),
        };
        if let Some(len) = len {
            subnets.push(crate::prefix::Prefix::new(addr, len));
        }
    }
    Some(Network {
        name,
        mode,
        bridge,
        subnets,
    })
}

/// Every libvirt network defined on this machine (see [`NETWORK_DIRS`]), by name; unreadable files are skipped.
pub fn networks(dirs: &[&Path]) -> Vec<Network> {
    let mut found: Vec<Network> = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        for f in files {
            let Some(n) = fs::read_to_string(&f).ok().and_then(|x| parse_network(&x)) else {
                continue;
            };
            if !found.iter().any(|m| m.name == n.name) {
                found.push(n);
            }
        }
    }
    found
}

/// What `vmsecd check` says about this machine's libvirt networks: for each, whether its subnets are in this
/// host's `subnets`, and which other host's subnets it overlaps (that network must be renumbered).
pub fn report(nets: &[Network], config: &crate::config::Config) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if nets.is_empty() {
        return o;
    }
    let me = config.local();
    let _ = writeln!(o, "libvirt networks on this machine:");
    for n in nets {
        let bridge = n.bridge.as_deref().unwrap_or("no bridge");
        for s in &n.subnets {
            let clash: Vec<String> = config
                .peers()
                .filter(|p| p.subnets.iter().any(|q| q.overlaps(s)))
                .map(|p| p.name.clone())
                .collect();
            let verdict = if !clash.is_empty() {
                format!(
                    "OVERLAPS host {}'s subnets: renumber this network (virsh net-edit {}) or the other host's",
                    clash.join(", "),
                    n.name
                )
            } else if me
                .subnets
                .iter()
                .any(|m| m.contains(s.addr()) && m.prefix_len() <= s.prefix_len())
            {
                "in the mesh".to_owned()
            } else {
                format!(
                    "NOT in this host's subnets: add \"{s}\" to host {}'s subnets, or its VMs are not reachable \
                     through the mesh",
                    me.name
                )
            };
            let _ = writeln!(o, "  {} ({}, {bridge}) {s}: {verdict}", n.name, n.mode);
        }
    }
    o
}

#[cfg(test)]
mod network_tests {
    use super::*;

    const DEFAULT: &str = "<network>\n  <name>default</name>\n  <uuid>x</uuid>\n  <forward mode='nat'/>\n  \
        <bridge name='virbr0' stp='on' delay='0'/>\n  <ip address='198.19.1.1' netmask='255.255.255.0'>\n    \
        <dhcp><range start='198.19.1.2' end='198.19.1.254'/></dhcp>\n  </ip>\n  \
        <ip family=\"ipv6\" address=\"fd00:1::1\" prefix=\"64\"/>\n</network>\n";

    #[test]
    fn reads_name_mode_bridge_and_subnets() {
        let n = parse_network(DEFAULT).unwrap();
        assert_eq!(n.name, "default");
        assert_eq!(n.mode, "nat");
        assert_eq!(n.bridge.as_deref(), Some("virbr0"));
        let s: Vec<String> = n.subnets.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["198.19.1.0/24", "fd00:1::/64"]);
        let iso = parse_network("<network><name>iso</name><bridge name='virbr1'/><ip address='198.19.9.1' prefix='25'/></network>").unwrap();
        assert_eq!(iso.mode, "isolated");
        assert_eq!(iso.subnets[0].to_string(), "198.19.9.0/25");
        // <ipv6/> or <iptables/> elsewhere are not <ip>; garbage gives no subnet, never a panic.
        let odd = parse_network("<network><name>o</name><ipv6 x='1'/><ip address='nope'/><ip address='1.2.3.4' netmask=>").unwrap();
        assert!(odd.subnets.is_empty(), "{odd:?}");
        assert!(parse_network("<network/>").is_none());
    }

    #[test]
    fn finds_networks_running_ones_first() {
        let d = tempfile::tempdir().unwrap();
        let (run, etc) = (d.path().join("run"), d.path().join("etc"));
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&etc).unwrap();
        fs::write(run.join("default.xml"), DEFAULT).unwrap();
        fs::write(
            etc.join("default.xml"),
            DEFAULT.replace("198.19.1.1", "198.19.7.1"),
        )
        .unwrap();
        fs::write(etc.join("other.xml"), "<network><name>other</name><forward mode='route'/><ip address='198.19.8.1' prefix='24'/></network>").unwrap();
        fs::write(etc.join("notes.txt"), "not xml").unwrap();
        let nets = networks(&[&run, &etc]);
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0].subnets[0].to_string(), "198.19.1.0/24");
        assert_eq!(
            (nets[1].name.as_str(), nets[1].mode.as_str()),
            ("other", "route")
        );
    }
}
