//! Peer authentication for the TCP transport: the cluster secret and the HMAC-SHA256
//! challenge/response that both ends of a connection complete before any operation.
//!
//! The handshake (frame layouts in [`super::frame`]):
//!
//! 1. client -> server HELLO { magic, version, client node, client config, client nonce }
//! 2. server -> client CHALLENGE { server node, server nonce,
//!    HMAC(secret, "acre server" || client nonce || server nonce || server node) }
//! 3. the client verifies the server's proof, so it never sends an operation to an impostor;
//! 4. client -> server PROOF { HMAC(secret, "acre client" || server nonce || client nonce ||
//!    client node || client config) }
//! 5. the server verifies it (constant-time, through `hmac`'s `verify_slice`) before it reads a
//!    single REQUEST; on failure it sends REFUSED and closes. Then it checks the client is a
//!    member of its configuration ([`crate::fabric::membership`]), or refuses it too.
//!
//! The proof covers the client's configuration id as well as its node id, so the connection is
//! bound to both as firmly as the handshake binds anything.
//!
//! Both nonces are fresh random bytes, so a recorded handshake cannot be replayed, and the
//! labels keep a server's proof from being reflected back as a client's. The server includes its
//! node id so a client that dialled a stale address learns it reached the wrong node.
//!
//! This authenticates peers; it does not encrypt or sign the frames that follow. Someone who can
//! read or rewrite packets on the path between two nodes can still do so: run the cluster on a
//! trusted network (as FaRM does), or under a VPN or TLS tunnel.

use crate::addr::NodeId;
use crate::fabric::tcp::frame::{NONCE_BYTES, PROOF_BYTES};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Bytes of a cluster secret.
pub const SECRET_BYTES: usize = 32;
/// The wire protocol version a HELLO announces; a server refuses any other. Version 2 added
/// the client's configuration id to HELLO and to the client's proof.
pub const PROTOCOL_VERSION: u16 = 2;
/// How long either side waits for the whole handshake before it gives up on the connection.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

const SERVER_LABEL: &[u8] = b"acre server";
const CLIENT_LABEL: &[u8] = b"acre client";
const DERIVE_LABEL: &[u8] = b"acre derive";

type HmacSha256 = Hmac<Sha256>;

/// The secret every node of a cluster shares: whoever holds it may read and write registered
/// memory over TCP, so it is kept in a mode-0600 file and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret([u8; SECRET_BYTES]);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Why a cluster secret file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    #[error("cannot read the cluster secret {path}: {source}; check the path and its permissions")]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "the cluster secret {path} has {len} bytes instead of {SECRET_BYTES}: copy the file again \
         from a node of the cluster, or generate a new secret for every node"
    )]
    WrongLength { path: PathBuf, len: u64 },
    #[error("the cluster secret {path} is readable by others (mode {mode:o}): chmod 600 it")]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "{path} already exists: remove it first if you mean to replace the cluster secret \
         (every node then needs the new one)"
    )]
    AlreadyExists { path: PathBuf },
    #[error("cannot write the cluster secret {path}: {source}; check the directory")]
    Unwritable { path: PathBuf, source: io::Error },
}

impl ClusterSecret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> ClusterSecret {
        ClusterSecret(random_bytes())
    }

    /// A secret from known bytes (tests, or a secret distributed by other means).
    pub fn from_bytes(bytes: [u8; SECRET_BYTES]) -> ClusterSecret {
        ClusterSecret(bytes)
    }

    /// Reads a secret written by [`ClusterSecret::write_file`]: exactly [`SECRET_BYTES`] raw
    /// bytes in a file no one but its owner may read.
    pub fn from_file(path: &Path) -> Result<ClusterSecret, SecretFileError> {
        let unreadable = |source| SecretFileError::Unreadable {
            path: path.to_path_buf(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(unreadable)?;
        let metadata = file.metadata().map_err(unreadable)?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::Exposed {
                path: path.to_path_buf(),
                mode,
            });
        }
        if metadata.len() != SECRET_BYTES as u64 {
            return Err(SecretFileError::WrongLength {
                path: path.to_path_buf(),
                len: metadata.len(),
            });
        }
        let mut bytes = [0u8; SECRET_BYTES];
        file.read_exact(&mut bytes).map_err(unreadable)?;
        Ok(ClusterSecret(bytes))
    }

    /// Writes the secret to a new file of mode 0600; refuses to overwrite an existing one.
    pub fn write_file(&self, path: &Path) -> Result<(), SecretFileError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                io::ErrorKind::AlreadyExists => SecretFileError::AlreadyExists {
                    path: path.to_path_buf(),
                },
                _ => SecretFileError::Unwritable {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        let unwritable = |source| SecretFileError::Unwritable {
            path: path.to_path_buf(),
            source,
        };
        file.write_all(&self.0).map_err(unwritable)?;
        file.sync_all().map_err(unwritable)
    }

    /// A secret of its own for one protocol (`label` names it, e.g. `"acre cm links"`), derived
    /// from this one: HMAC(secret, "acre derive" || label). Proofs and MACs made with a derived
    /// secret are useless in any other protocol, so a handshake of one cannot be relayed into
    /// another; the fabric's own handshake uses the cluster secret itself.
    pub fn derive(&self, label: &str) -> ClusterSecret {
        let mac = self
            .mac()
            .chain_update(DERIVE_LABEL)
            .chain_update(label.as_bytes());
        ClusterSecret(mac.finalize().into_bytes().into())
    }

    /// The secret's bytes, for a MAC of a protocol's own over a [`Self::derive`]d secret.
    pub fn bytes(&self) -> &[u8; SECRET_BYTES] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    fn server_mac(&self, client_nonce: &Nonce, server_nonce: &Nonce, server: NodeId) -> HmacSha256 {
        self.mac()
            .chain_update(SERVER_LABEL)
            .chain_update(client_nonce)
            .chain_update(server_nonce)
            .chain_update(server.0.to_le_bytes())
    }

    fn client_mac(
        &self,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        client: NodeId,
        config: u64,
    ) -> HmacSha256 {
        self.mac()
            .chain_update(CLIENT_LABEL)
            .chain_update(server_nonce)
            .chain_update(client_nonce)
            .chain_update(client.0.to_le_bytes())
            .chain_update(config.to_le_bytes())
    }

    /// The server's proof that it holds the secret, bound to both nonces and its node id.
    pub fn server_proof(
        &self,
        client_nonce: &Nonce,
        server_nonce: &Nonce,
        server: NodeId,
    ) -> Proof {
        to_proof(self.server_mac(client_nonce, server_nonce, server))
    }

    /// Checks a server's proof in constant time.
    pub fn verify_server_proof(
        &self,
        client_nonce: &Nonce,
        server_nonce: &Nonce,
        server: NodeId,
        proof: &Proof,
    ) -> Result<(), BadProof> {
        self.server_mac(client_nonce, server_nonce, server)
            .verify_slice(proof)
            .map_err(|_| BadProof)
    }

    /// The client's proof that it holds the secret, bound to both nonces, its node id and its
    /// configuration id.
    pub fn client_proof(
        &self,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        client: NodeId,
        config: u64,
    ) -> Proof {
        to_proof(self.client_mac(server_nonce, client_nonce, client, config))
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client_proof(
        &self,
        server_nonce: &Nonce,
        client_nonce: &Nonce,
        client: NodeId,
        config: u64,
        proof: &Proof,
    ) -> Result<(), BadProof> {
        self.client_mac(server_nonce, client_nonce, client, config)
            .verify_slice(proof)
            .map_err(|_| BadProof)
    }
}

/// A handshake nonce.
pub type Nonce = [u8; NONCE_BYTES];
/// An HMAC-SHA256 proof of holding the cluster secret.
pub type Proof = [u8; PROOF_BYTES];

/// A proof did not match: the peer does not hold this cluster's secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the peer's proof does not match this cluster's secret")]
pub struct BadProof;

fn to_proof(mac: HmacSha256) -> Proof {
    let mut proof = [0u8; PROOF_BYTES];
    proof.copy_from_slice(&mac.finalize().into_bytes());
    proof
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// A fresh random nonce for one handshake.
pub fn nonce() -> Nonce {
    random_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_secrets_differ_per_label_and_from_the_secret() {
        let secret = ClusterSecret::from_bytes([7; SECRET_BYTES]);
        let a = secret.derive("acre leases");
        let b = secret.derive("acre cm links");
        assert_ne!(a.bytes(), b.bytes());
        assert_ne!(a.bytes(), secret.bytes());
        assert_eq!(
            a.bytes(),
            secret.derive("acre leases").bytes(),
            "deterministic"
        );
        let other = ClusterSecret::from_bytes([8; SECRET_BYTES]).derive("acre leases");
        assert_ne!(a.bytes(), other.bytes());
        // A proof under a derived secret does not verify under the cluster secret.
        let (n1, n2) = ([1; NONCE_BYTES], [2; NONCE_BYTES]);
        let proof = a.server_proof(&n1, &n2, NodeId(1));
        assert!(
            secret
                .verify_server_proof(&n1, &n2, NodeId(1), &proof)
                .is_err()
        );
        assert!(a.verify_server_proof(&n1, &n2, NodeId(1), &proof).is_ok());
    }

    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_nonces_and_node() {
        let secret = ClusterSecret::generate();
        let other = ClusterSecret::generate();
        let (c, s) = (nonce(), nonce());
        let proof = secret.server_proof(&c, &s, NodeId(4));
        assert_eq!(
            secret.verify_server_proof(&c, &s, NodeId(4), &proof),
            Ok(())
        );
        assert_eq!(
            other.verify_server_proof(&c, &s, NodeId(4), &proof),
            Err(BadProof)
        );
        assert_eq!(
            secret.verify_server_proof(&s, &c, NodeId(4), &proof),
            Err(BadProof)
        );
        assert_eq!(
            secret.verify_server_proof(&c, &s, NodeId(5), &proof),
            Err(BadProof)
        );
        // A server's proof is not a client's proof for the same inputs (different labels).
        assert_eq!(
            secret.verify_client_proof(&c, &s, NodeId(4), 0, &proof),
            Err(BadProof)
        );
        let proof = secret.client_proof(&s, &c, NodeId(2), 7);
        assert_eq!(
            secret.verify_client_proof(&s, &c, NodeId(2), 7, &proof),
            Ok(())
        );
        assert_eq!(
            secret.verify_client_proof(&s, &c, NodeId(3), 7, &proof),
            Err(BadProof)
        );
        // The configuration id is bound too: a proof for 7 is not one for 8.
        assert_eq!(
            secret.verify_client_proof(&s, &c, NodeId(2), 8, &proof),
            Err(BadProof)
        );
    }

    #[test]
    fn secret_files_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let secret = ClusterSecret::generate();
        secret.write_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(ClusterSecret::from_file(&path).unwrap(), secret);
        assert!(matches!(
            ClusterSecret::generate().write_file(&path),
            Err(SecretFileError::AlreadyExists { .. })
        ));
        assert_eq!(
            ClusterSecret::from_file(&path).unwrap(),
            secret,
            "not overwritten"
        );
    }

    #[test]
    fn bad_secret_files_get_errors_that_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, [7u8; 31]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = ClusterSecret::from_file(&short).unwrap_err();
        assert!(
            matches!(err, SecretFileError::WrongLength { len: 31, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("copy the file again"), "{err}");

        let exposed = dir.path().join("exposed");
        std::fs::write(&exposed, [7u8; SECRET_BYTES]).unwrap();
        std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecret::from_file(&exposed).unwrap_err();
        assert!(
            matches!(err, SecretFileError::Exposed { mode: 0o644, .. }),
            "{err}"
        );

        let missing = dir.path().join("missing");
        let err = ClusterSecret::from_file(&missing).unwrap_err();
        assert!(matches!(err, SecretFileError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let secret = ClusterSecret::from_bytes([0xab; SECRET_BYTES]);
        let printed = format!("{secret:?} {secret:#?}");
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }
}
