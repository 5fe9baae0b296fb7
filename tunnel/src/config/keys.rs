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
use ike::crypto::x509::{self, Certificate, TrustAnchors};
use zeroize::Zeroizing;

use super::KeyFileError;

/// A certificate file's read error, with the hint that fits a certificate rather than a key.
fn cert_read(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    read(path, false).map_err(|e| match e {
        KeyFileError::Unreadable { path, error } => KeyFileError::UnreadableCert { path, error },
        other => other,
    })
}

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
    // Mode 0600 protects nothing if the owner is someone else: that user reads the key, or replaces it with one
    // of theirs and so becomes this host in the mesh's eyes.
    let uid = std::os::unix::fs::MetadataExt::uid(&meta);
    // SAFETY: geteuid has no preconditions and cannot fail.
    if private && uid != 0 && uid != unsafe { libc::geteuid() } {
        return Err(KeyFileError::Owner {
            path: path.to_owned(),
            uid,
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

/// A private key file's bytes, checked as this host's IKE key is (owner, mode 0600 or 0400, size), for keys
/// another library parses (etcd's TLS client key).
pub(crate) fn read_private(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    read(path, true)
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

/// A certificate file: the host's certificate first, then any intermediates to send with it (PEM, as
/// strongSwan's `pki --issue --outform pem` and OpenSSL write them).
#[derive(Debug, Clone)]
pub struct CertFile {
    /// The file.
    pub path: PathBuf,
    /// The certificates, the host's own first.
    pub chain: Vec<Certificate>,
}

impl CertFile {
    /// Reads and parses every certificate of the file.
    pub fn read(path: &Path) -> Result<CertFile, KeyFileError> {
        let bytes = cert_read(path)?;
        let chain = x509::parse_certificates(&bytes).map_err(|error| KeyFileError::Cert {
            path: path.to_owned(),
            error,
        })?;
        Ok(CertFile {
            path: path.to_owned(),
            chain,
        })
    }

    /// The host's own certificate.
    pub fn cert(&self) -> &Certificate {
        &self.chain[0]
    }
}

/// The mesh's CA certificates (`ca`): one file, one or more CA certificates.
#[derive(Debug, Clone)]
pub struct CaFile {
    /// The file.
    pub path: PathBuf,
    /// The CAs.
    pub anchors: std::sync::Arc<TrustAnchors>,
}

impl CaFile {
    /// Reads the CA certificates; each must be a CA (basicConstraints cA).
    pub fn read(path: &Path) -> Result<CaFile, KeyFileError> {
        let cert_err = |error| KeyFileError::Cert {
            path: path.to_owned(),
            error,
        };
        let bytes = cert_read(path)?;
        let cas = x509::parse_certificates(&bytes).map_err(cert_err)?;
        let anchors = TrustAnchors::new(cas).map_err(cert_err)?;
        Ok(CaFile {
            path: path.to_owned(),
            anchors: std::sync::Arc::new(anchors),
        })
    }
}
