//! The pre-shared key: read from its own file (never inline in the mesh file), checked for owner-only
//! permissions and length, kept in a buffer that is zeroed when dropped, and never printed.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{PskError, PSK_MAX_LEN, PSK_MIN_LEN};

/// The mesh's pre-shared key. `Debug` shows the path only.
#[derive(Clone)]
pub struct Psk {
    path: PathBuf,
    secret: Zeroizing<Vec<u8>>,
}

impl Psk {
    /// Reads and checks the key file: a regular file owned by root or by the user we run as, no access for group or others (`mode & 0o077 == 0`), at
    /// least [`PSK_MIN_LEN`] bytes once one final newline (`\n` or `\r\n`) is removed, at most [`PSK_MAX_LEN`].
    ///
    /// The secret is the file's bytes as they are otherwise: `openssl rand -base64 32 > psk` gives the 44
    /// characters of base64 text as the key, which is what strongSwan's `secret = "..."` must then hold.
    pub fn read(path: &Path) -> Result<Psk, PskError> {
        let unreadable = |error| PskError::Unreadable {
            path: path.to_owned(),
            error,
        };
        let mut file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(PskError::NotAFile {
                path: path.to_owned(),
            });
        }
        // Mode 0600 protects nothing if the owner is someone else: that user reads the key, or replaces it with
        // one of theirs and so decides whom this host trusts.
        let uid = std::os::unix::fs::MetadataExt::uid(&meta);
        // SAFETY: geteuid has no preconditions and cannot fail.
        if uid != 0 && uid != unsafe { libc::geteuid() } {
            return Err(PskError::Owner {
                path: path.to_owned(),
                uid,
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PskError::Mode {
                path: path.to_owned(),
                mode,
            });
        }
        // Room for one byte past the limit, allocated once: read_to_end never grows (and so never copies the
        // secret into a buffer that is freed without being zeroed).
        let mut secret = Zeroizing::new(Vec::with_capacity(PSK_MAX_LEN + 2));
        (&mut file)
            .take(PSK_MAX_LEN as u64 + 1)
            .read_to_end(&mut secret)
            .map_err(unreadable)?;
        if secret.len() > PSK_MAX_LEN {
            return Err(PskError::TooLong {
                path: path.to_owned(),
            });
        }
        if secret.last() == Some(&b'\n') {
            secret.pop();
            if secret.last() == Some(&b'\r') {
                secret.pop();
            }
        }
        if secret.len() < PSK_MIN_LEN {
            return Err(PskError::TooShort {
                path: path.to_owned(),
                len: secret.len(),
            });
        }
        Ok(Psk {
            path: path.to_owned(),
            secret,
        })
    }

    /// The file the key was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key bytes, for the IKE AUTH computation (RFC 7296 2.15) and nothing else.
    pub fn secret(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Psk")
            .field("path", &self.path)
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn key_file(dir: &Path) -> PathBuf {
        let path = dir.join("psk");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    /// A key file of mode 0600 that belongs to another user (here nobody, uid 65534) is refused, with the
    /// command that fixes it; once it is root's again it is read. Needs root (to chown).
    #[test]
    fn key_file_owned_by_another_user_is_refused() {
        crate::test_root::require_root(
            "config::psk::tests::key_file_owned_by_another_user_is_refused",
            "it gives the key file to uid 65534 (chown)",
        );
        let dir = tempfile::tempdir().unwrap();
        let path = key_file(dir.path());
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let e = Psk::read(&path).unwrap_err();
        assert!(matches!(e, PskError::Owner { uid: 65534, .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("uid 65534"), "{text}");
        assert!(text.contains("chown root:root"), "{text}");
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        assert_eq!(Psk::read(&path).unwrap().secret().len(), 32);
    }
}
