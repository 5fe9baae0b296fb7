//! Config errors: which file, where in it, which key, what is wrong and what is allowed.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ike::proposal::ProposalError;

use crate::prefix::{Prefix, PrefixError};

/// A mesh file that cannot be used, with the place to fix it.
///
/// Displays as `FILE:LINE:COLUMN: KEY: PROBLEM`, for example
/// `/etc/vmsecd/mesh.toml:14:12: host[2].subnets[0]: b0 198.19.1.0/24 overlaps c0 198.19.1.128/25: renumber one`.
/// Host indexes count `[[host]]` entries from 0 in file order.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The mesh file.
    pub file: PathBuf,
    /// Line and column (from 1) of the offending value, when known.
    pub location: Option<(usize, usize)>,
    /// The key, as `mesh.psk_file` or `host[2].subnets[0]`; empty when the error is about the whole file.
    pub key: String,
    /// What is wrong (its text is part of this error's, so it is not also given as `source()`).
    pub kind: Box<ErrorKind>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((line, col)) = self.location {
            write!(f, ":{line}:{col}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.kind)
    }
}

/// What is wrong with a mesh file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file cannot be read.
    #[error("cannot read the mesh file: {0}")]
    Read(io::Error),
    /// Not TOML, an unknown key, or a value of the wrong type (the TOML parser's words).
    #[error("{0}")]
    Syntax(String),
    /// A required key is absent.
    #[error("missing: {what}")]
    Missing {
        /// What the key must hold.
        what: String,
    },
    /// A value outside what the key accepts.
    #[error("{problem}; allowed: {allowed}")]
    Invalid {
        /// What is wrong with the value.
        problem: String,
        /// What the key accepts.
        allowed: String,
    },
    /// A subnet that is not a CIDR prefix.
    #[error(transparent)]
    Prefix(#[from] PrefixError),
    /// A proposal with an unknown or missing algorithm.
    #[error(transparent)]
    Proposal(#[from] ProposalError),
    /// Two hosts with one name.
    #[error("host name {name:?} is already used by {first}: host names must be unique")]
    DuplicateName {
        /// The name.
        name: String,
        /// The key of the first host with it.
        first: String,
    },
    /// Two hosts with one address.
    #[error(
        "{name} has address {address}, which {other} has already: each host needs its own address"
    )]
    DuplicateAddress {
        /// The address.
        address: IpAddr,
        /// This host.
        name: String,
        /// The host that has it first.
        other: String,
    },
    /// Two hosts with one IKE identity.
    #[error("{name} has IKE identity {id}, which {other} has already: identities must be unique")]
    DuplicateId {
        /// The identity as written.
        id: String,
        /// This host.
        name: String,
        /// The host that has it first.
        other: String,
    },
    /// Two subnets that share addresses: the routes and traffic selectors would be ambiguous.
    #[error("{first_host} {first_subnet} overlaps {host} {subnet}: renumber one")]
    Overlap {
        /// The host with the subnet met first in the file (may be the same host).
        first_host: String,
        /// That subnet.
        first_subnet: Prefix,
        /// The host whose subnet the key names.
        host: String,
        /// The subnet the key names.
        subnet: Prefix,
    },
    /// A host address inside a subnet: IKE and ESP to that host would be routed into the tunnel.
    #[error(
        "{host}'s address {address} lies inside {owner}'s subnet {subnet}: the route for that subnet would send \
         IKE and ESP for {host} into the tunnel itself; narrow the subnet or renumber the host"
    )]
    AddressInSubnet {
        /// The host whose address it is.
        host: String,
        /// The address.
        address: IpAddr,
        /// The host whose subnet it is.
        owner: String,
        /// The subnet.
        subnet: Prefix,
    },
    /// The pre-shared key file cannot be used.
    #[error(transparent)]
    Psk(#[from] PskError),
    /// A key file for `auth = "pubkey"` cannot be used.
    #[error(transparent)]
    Key(#[from] KeyFileError),
    /// This host's private key is not the one its `pubkey` names.
    #[error(
        "the private key {private} does not belong to {host}: its public key is not {host}'s pubkey {public}; \
         check that the right private key is installed on this host (or --private-key / --host)",
        private = .private.display(), public = .public.display()
    )]
    KeyMismatch {
        /// The private key file.
        private: PathBuf,
        /// The local host.
        host: String,
        /// Its public key file.
        public: PathBuf,
    },
    /// This host's private key is not the one its certificate certifies.
    #[error(
        "the private key {private} does not belong to {host}'s certificate {cert}; check that the right private \
         key is installed on this host (or --private-key / --host)",
        private = .private.display(), cert = .cert.display()
    )]
    CertKeyMismatch {
        /// The private key file.
        private: PathBuf,
        /// The local host.
        host: String,
        /// Its certificate file.
        cert: PathBuf,
    },
    /// `subnets = "libvirt"` on this host, and this machine's libvirt networks cannot provide them: the text
    /// says which networks were looked for, where, and what to do.
    #[error("{0}")]
    Libvirt(String),
    /// Accepted by the schema but not implemented yet.
    #[error("{0}")]
    NotSupported(String),
    /// `--host NAME` names no host in the file.
    #[error("no [[host]] is named {name:?}; hosts in this file: {known}")]
    UnknownHost {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// No `--host` and no host address is on this machine.
    #[error(
        "none of the hosts' addresses is on this machine (local addresses: {local}; hosts: {hosts}): add this \
         machine as a [[host]] with one of its addresses, or pass --host NAME"
    )]
    NotOurs {
        /// This machine's addresses.
        local: String,
        /// The hosts and their addresses.
        hosts: String,
    },
    /// No `--host` and several host addresses are on this machine.
    #[error("the addresses of several hosts are on this machine ({names}): pass --host NAME to pick one")]
    Ambiguous {
        /// The hosts that match.
        names: String,
    },
}

/// Why the pre-shared key file cannot be used. The secret itself never appears here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PskError {
    /// Cannot be opened or read.
    #[error(
        "cannot read {path}: {error}; create it with: (umask 077; openssl rand -base64 32 > {path})",
        path = .path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A directory or device, not a file.
    #[error("{} is not a regular file", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Group or others have some access to the file.
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); allowed: mode 0600 or 0400, owner only: \
         chmod 600 {path}",
        path = .path.display()
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Owned by a user other than root or the daemon's own: that user can read or replace the key.
    #[error(
        "{path} is owned by uid {uid}: the pre-shared key file must belong to root (or to the user vmsecd runs \
         as), or that user can read and replace the key: chown root:root {path}",
        path = .path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Fewer than [`super::PSK_MIN_LEN`] bytes.
    #[error(
        "{path} holds {len} bytes: a pre-shared key needs at least {min} (e.g. openssl rand -base64 32)",
        path = .path.display(), min = super::PSK_MIN_LEN
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The length after the final newline is removed.
        len: usize,
    },
    /// More than [`super::PSK_MAX_LEN`] bytes: probably the wrong file.
    #[error(
        "{path} is larger than {max} bytes: is it the right file? It should hold only the pre-shared key",
        path = .path.display(), max = super::PSK_MAX_LEN
    )]
    TooLong {
        /// The file.
        path: PathBuf,
    },
}

/// Why a key file (`private_key`, `pubkey`) cannot be used. Key material never appears here.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Cannot be opened or read.
    #[error(
        "cannot read {path}: {error}; create a key pair with: vmsecd keygen --out DIR",
        path = .path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A certificate file that cannot be opened or read.
    #[error(
        "cannot read {path}: {error}; certificates are PEM files issued by the mesh's CA (strongSwan's pki \
         --issue, openssl x509 -req)",
        path = .path.display()
    )]
    UnreadableCert {
        /// The file.
        path: PathBuf,
        /// The OS error.
        error: io::Error,
    },
    /// A directory or device, not a file.
    #[error("{} is not a regular file", .path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// A private key file owned by a user other than root or the daemon's own: that user can read the key or
    /// replace it with one of theirs.
    #[error(
        "private key {path} is owned by uid {uid}: it must belong to root (or to the user vmsecd runs as), or \
         that user can read and replace it: chown root:root {path}",
        path = .path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// A private key file that group or others can access.
    #[error(
        "private key {path} is accessible by group or others (mode {mode:04o}); allowed: mode 0600 or 0400, \
         owner only: chmod 600 {path}",
        path = .path.display()
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Too large to be a key.
    #[error("{} is larger than 64 KiB: is it the right file? It should hold one PEM key", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not a usable RSA key.
    #[error("{path}: {error}", path = .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: ike::crypto::keyfile::KeyError,
    },
    /// A certificate that does not verify, or does not name its host.
    #[error("{path}: {error}", path = .path.display())]
    Cert {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong with it.
        error: ike::crypto::x509::CertError,
    },
}
