//! A client node in an application's process: it holds no regions, claims a client id of a
//! running cluster with a lock file, and coordinates transactions on the cluster's objects
//! (what `Db::connect` runs).
//!
//! An id is claimed only when nothing of an earlier client with that id is left at the memory
//! nodes (docs/failures.md#a-client-that-dies): its lock file is free (no process is that
//! client) and its ring at every memory node is empty (every record it wrote was handled and
//! dropped: no lock, reservation or record of it is held). A client that died leaves its id
//! held until the memory nodes have released what it left; the next client takes another id.

use crate::agent::{ConfigFollower, FOLLOW_TICK, follow_once};
use crate::cluster_file::{ClusterFile, ClusterFileError};
use crate::liveness::client_lock_path;
use crate::process::{ManifestWaitError, NodeStartError, ProcessNode, wait_for_manifests};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::channel::ring_area_id;
use acre_nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
use acre_txn::TxnNode;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client node that stops waits for its last truncations to be sent.
pub const CLIENT_STOP_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a connecting client waits for the cluster's memory nodes to publish their
/// manifests (they are normally there already), and, in all, for a member whose ring it
/// cannot read to answer or be removed by the CM.
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
    /// Every client id is taken: by a running client, or held by what a client that died left
    /// at the memory nodes (released once they have resolved its transactions; those that
    /// reached COMMIT-BACKUP without being committed wait for recovery).
    #[error(
        "all {count} client ids of the cluster are taken ({}): stop a client, wait until the \
         memory nodes have released what a client that died left, or start the cluster with \
         more ids (--clients)",
        taken.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    ClientsInUse { count: usize, taken: Vec<Taken> },
    #[error(transparent)]
    Start(#[from] NodeStartError),
    #[error(transparent)]
    Manifests(#[from] ManifestWaitError),
    #[error("{client} cannot start the thread that follows the CM's configurations: {source}")]
    Follower {
        client: NodeId,
        #[source]
        source: io::Error,
    },
}

/// Why one client id could not be claimed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Taken {
    /// Another process holds the id's lock file: it is that client.
    Running { client: NodeId },
    /// A memory node's ring for the id holds records (`head` to `tail`) of an earlier client
    /// with this id: unread, or kept for a transaction not finished yet.
    Held {
        client: NodeId,
        node: NodeId,
        head: u64,
        tail: u64,
    },
    /// A memory node's ring for the id could not be read, so whether it holds anything is
    /// unknown.
    Unknown {
        client: NodeId,
        node: NodeId,
        reason: String,
    },
}

impl fmt::Display for Taken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Taken::Running { client } => write!(f, "{client} runs in another process"),
            Taken::Held {
                client,
                node,
                head,
                tail,
            } if head < tail => write!(
                f,
                "{client} is held by {node}, whose ring for it still holds {} bytes of records \
                 of a client that died",
                tail - head
            ),
            Taken::Held {
                client,
                node,
                head,
                tail,
            } => write!(
                f,
                "{client} is held by {node}, which read its ring up to {head}, past the tail \
                 {tail} the writer persisted (a client killed in the middle of an append): the \
                 ring must be reset before the id is used again"
            ),
            Taken::Unknown {
                client,
                node,
                reason,
            } => write!(f, "{client}'s ring at {node} cannot be read: {reason}"),
        }
    }
}

/// A client node in an application process: it holds no regions and coordinates transactions
/// on the cluster's objects. Its id is claimed with a lock file, released when it stops (or
/// its process dies).
pub struct ClientNode {
    /// Adopts the configurations the CM commits (a cluster with a CM); stopped before the node.
    _follower: Option<ConfigFollower>,
    node: Arc<ProcessNode>,
    _claim: File,
}

impl ClientNode {
    /// Claims a free client id of the cluster in `cluster_file` and starts a node for it. An
    /// id is free when no process holds its lock file and no memory node holds anything an
    /// earlier client with that id wrote (see the module docs).
    pub fn connect(cluster_file: &Path) -> Result<ClientNode, ConnectError> {
        let mut file = ClusterFile::read(cluster_file)?;
        let dir = cluster_file.parent().unwrap_or(Path::new("."));
        file.config = crate::agent::current_configuration(dir, &file);
        // The memory nodes are not this process's children: only their manifests tell.
        wait_for_manifests(
            dir,
            file.config.nodes.iter().copied(),
            CONNECT_TIMEOUT,
            |_| None,
        )?;
        let mut taken = Vec::new();
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        for &id in &file.config.clients {
            let path = client_lock_path(dir, id);
            let claim = match File::create(&path) {
                Ok(claim) => claim,
                Err(source) => return Err(ConnectError::Claim { path, source }),
            };
            if claim.try_lock().is_err() {
                taken.push(Taken::Running { client: id });
                continue;
            }
            // The rings are read through the fabric, as any one-sided operation, so this
            // needs the node started (over tcp, its connections).
            let node = ProcessNode::start(cluster_file, id)?;
            let follows_cm = file.cm.is_some();
            match vouch(&node, id, follows_cm, deadline) {
                None => {
                    let node = Arc::new(node);
                    let follower =
                        match file.cm {
                            Some(_) => {
                                node.txn()
                                    .set_grower(crate::agent::region_grower(dir.to_path_buf()));
                                Some(ConfigFollower::start(node.clone()).map_err(|source| {
                                    ConnectError::Follower { client: id, source }
                                })?)
                            }
                            None => None,
                        };
                    return Ok(ClientNode {
                        _follower: follower,
                        node,
                        _claim: claim,
                    });
                }
                Some(held) => {
                    tracing::info!("{held}; trying the next client id");
                    taken.push(held);
                    node.stop();
                }
            }
        }
        Err(ConnectError::ClientsInUse {
            count: file.config.clients.len(),
            taken,
        })
    }

    pub fn txn(&self) -> &Arc<TxnNode> {
        self.node.txn()
    }

    /// Sends this client's pending truncations and waits for its unfinished commits
    /// (docs/protocol.md#unfinished-commits); returns whether none is left within `timeout`
    /// of the node's clock.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let clock = self.txn().clock();
        let deadline = clock.now().saturating_add(timeout);
        loop {
            let _ = self.txn().links().flush_truncations(Duration::ZERO);
            if !self.txn().links().has_pending_truncations() && self.txn().unfinished_commits() == 0
            {
                return true;
            }
            if clock.now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether some memory node of the configuration `node` serves holds anything client `id`
/// wrote ([`held_at`]). While a node's ring cannot be read (it died, or is cut off, and the CM
/// has not removed it yet) and the cluster has a CM (`follows_cm`), `node` follows the CM's
/// configurations until `deadline` and reads again: the configuration that removes the silent
/// node frees the id. Every id would be as unknown at that node, so trying the next one
/// instead would only end in "every id taken" during any failure.
fn vouch(node: &ProcessNode, id: NodeId, follows_cm: bool, deadline: Instant) -> Option<Taken> {
    let mut seen = None;
    loop {
        // The configuration this node started with or adopted since, not the one the caller
        // read before it started: the CM may have removed a node in between.
        let config = node.txn().config();
        match held_at(node.txn(), &config.nodes, id) {
            Some(Taken::Unknown { node: silent, .. })
                if follows_cm && Instant::now() < deadline =>
            {
                tracing::debug!(
                    "{id}'s ring at {silent} cannot be read; waiting for the CM to remove {silent} \
                     or for it to answer"
                );
                std::thread::sleep(FOLLOW_TICK);
                follow_once(node, &mut seen);
            }
            held => return held,
        }
    }
}

/// Whether some memory node in `nodes` holds anything `client` wrote: its ring there is not
/// empty (head and tail differ), or cannot be read. `txn` is the node reading, over the fabric.
fn held_at(txn: &TxnNode, nodes: &[NodeId], client: NodeId) -> Option<Taken> {
    let area = ring_area_id(client);
    // One READ covers both position words.
    let len = (TAIL_OFFSET + 8 - HEAD_OFFSET) as u32;
    for &node in nodes {
        let unknown = |reason: String| Taken::Unknown {
            client,
            node,
            reason,
        };
        let key = match txn.directory().lookup(txn.fabric(), node, area) {
            Ok((key, _)) => key,
            Err(e) => return Some(unknown(e.to_string())),
        };
        let bytes = match txn
            .fabric()
            .read(node, Addr::new(area, HEAD_OFFSET as u32), key, len)
        {
            Ok(bytes) if bytes.len() == len as usize => bytes,
            Ok(bytes) => return Some(unknown(format!("a read returned {} bytes", bytes.len()))),
            Err(e) => return Some(unknown(e.to_string())),
        };
        let word = |offset: u64| {
            let at = (offset - HEAD_OFFSET) as usize;
            let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
            decode_pos_word(word, offset)
        };
        match (word(HEAD_OFFSET), word(TAIL_OFFSET)) {
            (Ok(head), Ok(tail)) if head == tail => {}
            (Ok(head), Ok(tail)) => {
                return Some(Taken::Held {
                    client,
                    node,
                    head,
                    tail,
                });
            }
            (Err(e), _) | (_, Err(e)) => return Some(unknown(e.to_string())),
        }
    }
    None
}

impl Drop for ClientNode {
    fn drop(&mut self) {
        // The participants keep every record of a transaction until it is truncated, and a
        // ring's head cannot pass a kept record: truncations this client never sends would pin
        // its rings until the memory nodes see it gone and settle its transactions. Send them,
        // and finish what is unfinished, before the node goes.
        if !self.quiesce(CLIENT_STOP_FLUSH_TIMEOUT) {
            tracing::warn!(
                node = %self.txn().node_id(),
                unfinished_commits = self.txn().unfinished_commits(),
                "the client stopped with truncations unsent or commits unfinished; the memory \
                 nodes settle its transactions once it is gone (docs/failures.md#a-client-that-dies)"
            );
        }
        // Before the claim on the id goes (a field dropped after this): from then on the client
        // counts as gone, and a gone client appends nothing.
        self.txn().stop_finisher();
    }
}
