//! Which transport a node process uses (shm or tcp), as a cluster file names it, and opening
//! it: the shm transport maps its peers' files in the cluster directory, the tcp transport
//! starts this node's NIC thread.

use crate::addr::NodeId;
use crate::directory;
use crate::fabric::Transport;
use crate::fabric::membership::Membership;
use crate::fabric::memory::NodeMemory;
use crate::fabric::shm::ShmTransport;
use crate::fabric::tcp::{ClusterSecret, NicServer, SecretFileError, TcpTransport};
use acre_nvm_log::MapOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// Which transport a node process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Shm,
    Tcp,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Shm => "shm",
            TransportKind::Tcp => "tcp",
        }
    }
}

/// Why a node's transport could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The tcp transport needs the cluster secret (`acre cluster up` writes one).
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("cannot listen on {addr} for the NIC thread: {source}; free the port or pick another")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Loopback, on a port the system picks: where a NIC thread listens unless told otherwise.
pub const LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Node `node`'s transport to the others in cluster directory `dir`, as a member of
/// `membership`: shm maps their files there; tcp starts this node's NIC thread on `listen`
/// (default [`LISTEN_DEFAULT`]) serving `memory` to `membership`'s members only, and returns
/// it with its address; its connections to the others are bound to `membership`'s id.
///
/// Nothing on shm can refuse a non-member (an initiator stores into the target's mapped files
/// itself): a removed node is fenced by ending its process (docs/failures.md#fencing).
pub fn open_transport(
    dir: &Path,
    node: NodeId,
    kind: TransportKind,
    listen: Option<SocketAddr>,
    options: MapOptions,
    memory: &Arc<NodeMemory>,
    membership: Membership,
) -> Result<(Transport, Option<NicServer>, Option<SocketAddr>), OpenError> {
    match kind {
        TransportKind::Shm => Ok((
            Transport::Shm(ShmTransport::new(dir.to_path_buf(), options)),
            None,
            None,
        )),
        TransportKind::Tcp => {
            let secret = ClusterSecret::from_file(&dir.join(directory::SECRET_FILE))?;
            let addr = listen.unwrap_or(LISTEN_DEFAULT);
            let config = membership.config();
            let nic = NicServer::start(addr, memory.clone(), secret.clone(), membership)
                .map_err(|source| OpenError::Listen { addr, source })?;
            let local = nic.local_addr();
            Ok((
                Transport::Tcp(TcpTransport::new(node, config, secret)),
                Some(nic),
                Some(local),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Doorbell;

    #[test]
    fn names_round_trip_through_the_cluster_file_spelling() {
        for kind in [TransportKind::Shm, TransportKind::Tcp] {
            let text = toml::to_string(&std::collections::BTreeMap::from([("t", kind)])).unwrap();
            assert_eq!(text.trim(), format!("t = \"{}\"", kind.name()));
        }
    }

    #[test]
    fn tcp_without_a_cluster_secret_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(NodeMemory::new(
            NodeId(1),
            Arc::new(Doorbell::anonymous().unwrap()),
        ));
        let error = open_transport(
            dir.path(),
            NodeId(1),
            TransportKind::Tcp,
            None,
            MapOptions::default(),
            &memory,
            Membership::new(1, [NodeId(1)]),
        )
        .err()
        .expect("no secret file");
        assert!(matches!(error, OpenError::Secret(_)), "{error}");
    }
}
