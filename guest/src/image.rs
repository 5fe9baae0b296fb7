//! The guest's kernel and initramfs, built once per kernel version and cached in
//! `$TMPDIR/vmsecd-guest-<version>-v1`: the uncompressed `vmlinux` (booted through its PVH entry, no firmware, no
//! disk) taken from the xz payload of `/boot/vmlinuz-<version>`, and a busybox initramfs that loads the virtio,
//! 9p and overlay modules (order from `modprobe --show-depends`), mounts the root and `switch_root`s into it.
//! Built in a private directory and renamed into place, so concurrent users never see half an image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::FileLock;

/// Bumped whenever the cached image's contents change (its directory name carries it).
const IMAGE_VERSION: &str = "v1";
/// The modules the initramfs loads, with their dependencies, before it can mount the root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay"];

/// The cached kernel and initramfs.
#[derive(Debug)]
pub struct Image {
    /// The kernel version (`/lib/modules/<version>`).
    pub version: String,
    /// The uncompressed kernel, booted through its PVH note.
    pub vmlinux: PathBuf,
    /// The busybox initramfs (newc cpio, uncompressed).
    pub initrd: PathBuf,
}

/// Why no image could be had: something to install, or a step that failed on this machine.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A program or file the image (or QEMU) needs is not installed.
    #[error("{path} is missing: apt-get install {package}")]
    Missing {
        /// What was looked for.
        path: String,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// No kernel whose modules can mount the root over 9p.
    #[error(
        "no /boot/vmlinuz-* with virtio/9p modules under /lib/modules: apt-get install linux-image-amd64 (the \
         guest kernel)"
    )]
    NoKernel,
    /// A step of the build failed.
    #[error("building the guest image: {0}")]
    Build(String),
}

/// The guest image, built (or found in the cache) on first use in this process.
pub fn image() -> Result<&'static Image, &'static ImageError> {
    static IMAGE: OnceLock<Result<Image, ImageError>> = OnceLock::new();
    IMAGE.get_or_init(build_or_reuse_image).as_ref()
}

/// What the guests need from the host, checked without building anything: QEMU, busybox-static, a kernel with
/// the modules, python3 (to take the kernel out of its xz wrapper) and modprobe (the modules' order).
pub fn check_host() -> Result<String, ImageError> {
    for (path, package) in [
        ("/usr/bin/qemu-system-x86_64", "qemu-system-x86"),
        ("/bin/busybox", "busybox-static"),
        ("/usr/bin/python3", "python3"),
        ("/sbin/modprobe", "kmod"),
    ] {
        if !Path::new(path).exists() {
            return Err(ImageError::Missing {
                path: path.to_owned(),
                package,
            });
        }
    }
    pick_kernel()
}

/// The newest `/boot/vmlinuz-*` whose modules include 9p over virtio.
fn pick_kernel() -> Result<String, ImageError> {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_owned)
                })
                .filter(|v| {
                    Path::new("/lib/modules")
                        .join(v)
                        .join("kernel/net/9p/9pnet_virtio.ko")
                        .exists()
                })
                .collect()
        })
        .unwrap_or_default();
    // Version order, not text order: 6.1.0-10 after 6.1.0-9.
    versions.sort_by_key(|v| {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    versions.pop().ok_or(ImageError::NoKernel)
}

fn build_or_reuse_image() -> Result<Image, ImageError> {
    let version = check_host()?;
    let dir = std::env::temp_dir().join(format!("vmsecd-guest-{version}-{IMAGE_VERSION}"));
    let img = Image {
        version: version.clone(),
        vmlinux: dir.join("vmlinux"),
        initrd: dir.join("initrd.cpio"),
    };
    if dir.join("complete").exists() {
        return Ok(img);
    }
    let io = |what: &str, path: &Path, e: std::io::Error| {
        ImageError::Build(format!("{what} {}: {e}", path.display()))
    };
    // One builder at a time; the others wait and then find the complete directory.
    let lock = sibling(&dir, ".lock");
    let _build = FileLock::acquire(&lock).map_err(|e| io("lock", &lock, e))?;
    if dir.join("complete").exists() {
        return Ok(img);
    }
    let tmp = sibling(&dir, &format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| io("create", &tmp, e))?;
    extract_vmlinux(&format!("/boot/vmlinuz-{version}"), &tmp.join("vmlinux"))?;
    let initrd = initramfs(&version)?;
    fs::write(tmp.join("initrd.cpio"), initrd).map_err(|e| io("write", &tmp, e))?;
    fs::write(tmp.join("complete"), "").map_err(|e| io("write", &tmp, e))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(|e| io("rename into place", &tmp, e))?;
    Ok(img)
}

/// `dir` with `suffix` appended to its last component (`with_extension` would cut at the version's dots).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Runs `cmd`; its standard output, or its error output as the error.
fn run(cmd: &mut Command) -> Result<String, ImageError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Build(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(ImageError::Build(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The uncompressed kernel: Debian's bzImage carries it xz-compressed; Python's lzma takes it out (it stops at
/// the end of the xz stream and ignores what follows).
fn extract_vmlinux(vmlinuz: &str, out: &Path) -> Result<(), ImageError> {
    let script = r#"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0:
    sys.exit('no xz payload in ' + sys.argv[1])
k = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
if k[:4] != b'\x7fELF':
    sys.exit('the xz payload of ' + sys.argv[1] + ' is not an ELF kernel')
open(sys.argv[2], 'wb').write(k)
"#;
    run(Command::new("python3")
        .args(["-c", script, vmlinuz])
        .arg(out))
    .map(drop)
}

/// The module files to insmod, dependencies first, each once.
fn boot_modules(version: &str) -> Result<Vec<PathBuf>, ImageError> {
    let mut files: Vec<PathBuf> = Vec::new();
    for m in BOOT_MODULES {
        let out = run(Command::new("modprobe").args(["-S", version, "--show-depends", m]))?;
        for line in out.lines() {
            let mut w = line.split_whitespace();
            if w.next() == Some("insmod") {
                if let Some(f) = w.next() {
                    let f = PathBuf::from(f);
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            // "builtin NAME": nothing to load.
        }
    }
    Ok(files)
}

/// Stage one, run by busybox as PID 1: modules, the root over 9p under a tmpfs overlay, the agent share, then
/// `switch_root` into the host's own `/bin/sh` running the agent's `stage2.sh` (written by
/// [`crate::agent::Agent::prepare`], so it can change without rebuilding the image).
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /lower /rw /newroot
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
if $B grep -q vmsecd.probe /proc/cmdline; then
  echo VMSECD-GUEST-PROBE-OK
  $B poweroff -f
fi
for m in $($B ls /modules); do
  $B insmod /modules/$m || echo "vmsecd-guest: insmod $m failed"
done
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=262144 hostroot /lower || echo "vmsecd-guest: no root share"
$B mount -t tmpfs -o size=512m,mode=0755 rw /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || echo "vmsecd-guest: no overlay"
$B mkdir -p /newroot/vmsecd-agent
$B mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 agent /newroot/vmsecd-agent || echo "vmsecd-guest: no agent share"
$B umount /proc
$B umount /dev
exec $B switch_root /newroot /bin/sh /vmsecd-agent/stage2.sh
echo "vmsecd-guest: switch_root failed"
$B poweroff -f
"#;

/// A newc cpio archive, written by hand (one format, a dozen entries: no need for a crate or `cpio`).
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }
}

fn initramfs(version: &str) -> Result<Vec<u8>, ImageError> {
    let read =
        |p: &Path| fs::read(p).map_err(|e| ImageError::Build(format!("read {}: {e}", p.display())));
    let mut c = Cpio {
        data: Vec::new(),
        ino: 0,
    };
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        c.entry(d, 0o040755, (0, 0), b"");
    }
    // The kernel opens /dev/console for PID 1 before anything is mounted.
    c.entry("dev/console", 0o020600, (5, 1), b"");
    c.entry(
        "bin/busybox",
        0o100755,
        (0, 0),
        &read(Path::new("/bin/busybox"))?,
    );
    c.entry("init", 0o100755, (0, 0), INIT.as_bytes());
    for (i, m) in boot_modules(version)?.iter().enumerate() {
        let body = read(m)?;
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| ImageError::Build(format!("module path {}", m.display())))?;
        c.entry(&format!("modules/{i:02}-{name}"), 0o100644, (0, 0), &body);
    }
    c.entry("TRAILER!!!", 0, (0, 0), b"");
    Ok(c.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_padded() {
        let mut c = Cpio {
            data: Vec::new(),
            ino: 0,
        };
        c.entry("init", 0o100755, (0, 0), b"abc");
        assert!(c.data.starts_with(b"070701"));
        assert_eq!(c.data.len() % 4, 0);
        // Header (110 bytes) + "init\0" padded to 116, then the 3-byte body padded to 4.
        assert_eq!(c.data.len(), 116 + 4);
        assert_eq!(&c.data[116..119], b"abc");
    }

    #[test]
    fn sibling_keeps_the_version_dots() {
        assert_eq!(
            sibling(Path::new("/tmp/vmsecd-guest-6.1.0-9-amd64-v1"), ".lock"),
            PathBuf::from("/tmp/vmsecd-guest-6.1.0-9-amd64-v1.lock")
        );
    }
}
