//! libvirt's network hook: `vmsecd install-hook` makes libvirt poke the daemon whenever a network starts, so
//! that vmsecd puts its firewall rules back ahead of libvirt's at once rather than within its periodic check.
//!
//! libvirt runs `/etc/libvirt/hooks/network NETWORK OPERATION SUB-OPERATION` (network XML on standard input)
//! and waits for it. libvirt looks for hook scripts only when libvirtd starts: after installing the hook,
//! restart libvirtd once. A libvirtd restart itself calls no network hook (measured with libvirt 9.0), which is
//! one reason the daemon also checks on its own, every
//! [`crate::firewall::CHECK_INTERVAL`].

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
    // libvirtd runs every script of this folder as root: whoever can write in it, or to the script, is root.
    // Made 0755 when we create it, whatever the umask (`fs::create_dir_all` would leave 0777 under umask 0).
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io("cannot create", dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(io("cannot set the mode of", dir))?;
    }
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
    // Executable, and writable by its owner only: a new file under umask 0 was 0666 (0777 after `| 0o755`),
    // a root-run script any local user could rewrite.
    fs::set_permissions(&path, fs::Permissions::from_mode((mode | 0o755) & !0o022))
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

    /// libvirtd runs the hook as root: neither the script nor a folder vmsecd creates for it may be writable by
    /// others, whatever the umask (under umask 0 both were 0777: any local user could make libvirtd run their
    /// commands as root), and a group- or world-writable script it edits loses that.
    #[test]
    fn the_hook_and_its_folder_are_writable_by_their_owner_only_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("etc").join("hooks");
        let sock = ControlSocket::Abstract("vmsecd".into());
        // SAFETY: umask(2) cannot fail; the old mask is put back right after.
        let old = unsafe { libc::umask(0) };
        let r = install_hook(&hooks, Path::new("/usr/sbin/vmsecd"), &sock);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let (path, _) = r.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o755);
        assert_eq!(mode(&hooks), 0o755);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
        install_hook(&hooks, Path::new("/usr/sbin/vmsecd"), &sock).unwrap();
        assert_eq!(mode(&path), 0o755);
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
