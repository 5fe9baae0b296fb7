//! RSA key files for `auth = "pubkey"`: this host's private key (owner-only permissions, read into a buffer
//! that is zeroed when dropped, never printed) and every host's public key. PEM parsing is `ike`'s
//! ([`ike::crypto::keyfile`]); this module does the file system part and names the file in every error.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ike::crypto::keyfile;
use ike::crypto::signature::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use super::KeyFileError;

/// Key files larger than this are not keys (a 8192-bit PKCS#1 PEM is about 6.5 kB).
const MAX_KEY_FILE: u64 = 64 * 1024;

fn read(path: &Path, private: bool) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let unreadable = |error| KeyFileError::Unreadable {
        path: path.to_owned(),
        error,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(KeyFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    // Allocated once at the final size: read_to_end does not reallocate (and leave copies of the key behind).
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_KEY_FILE as usize + 1));
    (&mut file)
        .take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(bytes)
}

/// This host's private key and the file it came from. `Debug` shows the path and size only.
#[derive(Clone)]
pub struct PrivateKeyFile {
    /// The file.
    pub path: PathBuf,
    /// The key.
    pub key: PrivateKey,
}

impl PrivateKeyFile {
    /// Reads an RSA private key (PKCS#8 or PKCS#1, PEM or DER) from a regular file that group and others cannot
    /// access (`mode & 0o077 == 0`).
    pub fn read(path: &Path) -> Result<PrivateKeyFile, KeyFileError> {
        let bytes = read(path, true)?;
        let key = keyfile::parse_private_key(&bytes).map_err(|error| KeyFileError::Parse {
            path: path.to_owned(),
            error,
        })?;
        Ok(PrivateKeyFile {
            path: path.to_owned(),
            key,
        })
    }
}

impl fmt::Debug for PrivateKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKeyFile")
            .field("path", &self.path)
            .field("key", &self.key)
            .finish()
    }
}

/// A host's public key and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyFile {
    /// The file.
    pub path: PathBuf,
    /// The key.
    pub key: PublicKey,
}

impl PublicKeyFile {
    /// Reads an RSA public key (SubjectPublicKeyInfo or PKCS#1, PEM or DER).
    pub fn read(path: &Path) -> Result<PublicKeyFile, KeyFileError> {
        let bytes = read(path, false)?;
        let key = keyfile::parse_public_key(&bytes).map_err(|error| KeyFileError::Parse {
            path: path.to_owned(),
            error,
        })?;
        Ok(PublicKeyFile {
            path: path.to_owned(),
            key,
        })
    }
}
