//! A client node in an application's process: it holds no regions, claims a client id of a
//! running cluster with a lock file, and coordinates transactions on the cluster's objects
//! (what `Db::connect` runs).

use crate::cluster_file::{ClusterFile, ClusterFileError};
use crate::process::{ManifestWaitError, NodeStartError, ProcessNode, wait_for_manifests};
use acre_txn::TxnNode;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client node that stops waits for its last truncations to be sent.
pub const CLIENT_STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connecting client waits for the cluster's memory nodes to publish their
/// manifests (they are normally there already).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client node could not join a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error(transparent)]
    ClusterFile(#[from] ClusterFileError),
    #[error("cannot create the client lock {path}: {source}")]
    Claim {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "all {count} client ids of the cluster are in use: stop a client, or start the cluster \
         with more (--clients)"
    )]
    ClientsInUse { count: usize },
    #[error(transparent)]
    Start(#[from] NodeStartError),
    #[error(transparent)]
    Manifests(#[from] ManifestWaitError),
}

/// A client node in an application process: it holds no regions and coordinates transactions
/// on the cluster's objects. Its id is claimed with a lock file, released when it stops (or
/// its process dies).
pub struct ClientNode {
    node: ProcessNode,
    _claim: File,
}

impl ClientNode {
    /// Claims a free client id of the cluster in `cluster_file` and starts a node for it.
    pub fn connect(cluster_file: &Path) -> Result<ClientNode, ConnectError> {
        let file = ClusterFile::read(cluster_file)?;
        let dir = cluster_file.parent().unwrap_or(Path::new("."));
        for &id in &file.config.clients {
            let path = dir.join(format!("client-{}.lock", id.0));
            let claim = match File::create(&path) {
                Ok(claim) => claim,
                Err(source) => return Err(ConnectError::Claim { path, source }),
            };
            if claim.try_lock().is_err() {
                continue; // another process is this client
            }
            let node = ProcessNode::start(cluster_file, id)?;
            // The memory nodes are not this process's children: only their manifests tell.
            wait_for_manifests(
                dir,
                file.config.nodes.iter().copied(),
                CONNECT_TIMEOUT,
                |_| None,
            )?;
            return Ok(ClientNode {
                node,
                _claim: claim,
            });
        }
        Err(ConnectError::ClientsInUse {
            count: file.config.clients.len(),
        })
    }

    pub fn txn(&self) -> &Arc<TxnNode> {
        self.node.txn()
    }

    /// Sends this client's pending truncations; returns whether none is left within `timeout`.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.txn().links().flush_truncations(Duration::ZERO);
            if !self.txn().links().has_pending_truncations() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for ClientNode {
    fn drop(&mut self) {
        // The participants keep every record of a transaction until it is truncated, and a
        // ring's head cannot pass a kept record: truncations this client never sends would pin
        // its rings until recovery. Send them before the node goes.
        if !self.quiesce(CLIENT_STOP_FLUSH_TIMEOUT) {
            tracing::warn!(
                node = %self.txn().node_id(),
                "the client stopped with truncations unsent; its records stay in the logs until \
                 recovery"
            );
        }
    }
}
