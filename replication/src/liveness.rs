//! Whether a client coordinator is gone: what lets the memory nodes release what a client that
//! died left behind (docs/failures.md#a-client-that-dies). Until leases exist (issue 13), a
//! client's liveness is its process: in a cluster of node processes on one host, whether its
//! lock file is still locked; in an embedded cluster, whether the test stopped it.
//!
//! "Gone" must mean for good: once a node has seen a client gone, it answers questions about
//! the client's transactions and may abort them, which is only safe if the client never acts
//! again. A process that died never does; an id a new process claims is a new client, whose
//! transaction ids differ (docs/protocol.md#transaction-ids).

use acre_engine::addr::NodeId;
use std::collections::HashSet;
use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Tells whether a client coordinator is gone for good.
pub trait Liveness: Send + Sync {
    /// Whether `client` is gone: it will never append another record or read another reply.
    /// When unsure, `false` (what it left then stays until it is sure).
    fn is_gone(&self, client: NodeId) -> bool;
}

/// The lock file whose holder is client `client` (`client-<id>.lock` in the cluster directory):
/// the process that runs the client holds it locked (flock) until it ends, however it ends.
pub fn client_lock_path(dir: &Path, client: NodeId) -> PathBuf {
    dir.join(format!("client-{}.lock", client.0))
}

/// The clients of a cluster of node processes on this host: a client is gone when nobody holds
/// its lock file, which the kernel releases when the process ends, however it ends.
pub struct LockFiles {
    dir: PathBuf,
}

impl LockFiles {
    pub fn new(dir: PathBuf) -> LockFiles {
        LockFiles { dir }
    }
}

impl Liveness for LockFiles {
    fn is_gone(&self, client: NodeId) -> bool {
        let path = client_lock_path(&self.dir, client);
        // Every client that ever ran created its lock file; a missing one proves nothing.
        let Ok(file) = File::open(&path) else {
            return false;
        };
        match file.try_lock() {
            // Taken at once by this probe, released when `file` closes: a client connecting
            // in between sees its id taken and uses another.
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(e)) => {
                warn_unlockable(&path, &e);
                false
            }
        }
    }
}

fn warn_unlockable(path: &Path, error: &io::Error) {
    tracing::warn!(
        "cannot tell whether the client of {} is alive: {error}",
        path.display()
    );
}

/// The nodes of an embedded cluster that were stopped for good
/// ([`crate::EmbeddedCluster::kill`]).
#[derive(Default)]
pub struct Stopped {
    nodes: Mutex<HashSet<NodeId>>,
}

impl Stopped {
    pub fn insert(&self, node: NodeId) {
        self.nodes.lock().expect(crate::POISONED).insert(node);
    }
}

impl Liveness for Stopped {
    fn is_gone(&self, client: NodeId) -> bool {
        self.nodes.lock().expect(crate::POISONED).contains(&client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_gone_once_nobody_holds_its_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let clients = LockFiles::new(dir.path().to_path_buf());
        let client = NodeId(100);
        assert!(!clients.is_gone(client), "never ran: no lock file");
        let claim = File::create(client_lock_path(dir.path(), client)).unwrap();
        claim.try_lock().unwrap();
        assert!(!clients.is_gone(client), "its process holds the lock");
        drop(claim);
        assert!(clients.is_gone(client));
        // The probe let go of the lock: the id can be claimed again.
        let again = File::create(client_lock_path(dir.path(), client)).unwrap();
        assert!(again.try_lock().is_ok());
    }
}
