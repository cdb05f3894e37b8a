//! The `shm` transport: node processes on one host share file mappings in the cluster directory.
//!
//! To operate on another node's memory, the initiator maps that node's area file, which it can
//! only find by presenting the access key (the key is part of the file name), and then does
//! the operation itself with atomic loads, stores and CAS ([`exec::execute_on`]), exactly as the
//! target would. PERSIST flushes the initiator's view of the shared mapping, which writes back the
//! same physical lines. NOTIFY rings the target's doorbell file, waking its pollers through a
//! process-shared futex. A killed process leaves its memory behind, as NVRAM would.

use crate::addr::{NodeId, RegionId};
use crate::directory::{NodeManifest, doorbell_path};
use crate::fabric::doorbell::Doorbell;
use crate::fabric::{Completion, Op, OpError, OpResult, Pending, exec};
use crate::hash::FastMap;
use crate::region::{AccessError, AccessKey, Region};
use acre_nvm_log::MapOptions;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// What the initiator has mapped of one peer.
struct ShmPeer {
    node: NodeId,
    manifest: NodeManifest,
    doorbell: Doorbell,
    /// Areas mapped so far, by id (mapped with the key that found them).
    areas: RwLock<FastMap<RegionId, Arc<Region>>>,
}

/// One node's path to the other processes of its host.
pub struct ShmTransport {
    dir: PathBuf,
    options: MapOptions,
    peers: RwLock<FastMap<NodeId, Arc<ShmPeer>>>,
}

impl ShmTransport {
    /// A transport to the nodes that publish manifests in `dir`.
    pub fn new(dir: PathBuf, options: MapOptions) -> ShmTransport {
        ShmTransport {
            dir,
            options,
            peers: RwLock::new(FastMap::default()),
        }
    }

    /// Forgets what was mapped of `node` (it restarted: its areas have new keys).
    pub fn forget(&self, node: NodeId) {
        self.peers.write().expect(crate::POISONED).remove(&node);
    }

    fn peer(&self, node: NodeId) -> Result<Arc<ShmPeer>, OpError> {
        if let Some(peer) = self.peers.read().expect(crate::POISONED).get(&node) {
            return Ok(peer.clone());
        }
        let unreachable = |reason: String| OpError::Unreachable { node, reason };
        let manifest = NodeManifest::read(&self.dir, node)
            .map_err(|e| unreachable(format!("read manifest: {e}")))?
            .ok_or(OpError::UnknownNode { node })?;
        let doorbell = Doorbell::open_file(&doorbell_path(&self.dir, node))
            .map_err(|e| unreachable(format!("map doorbell: {e}")))?;
        let peer = Arc::new(ShmPeer {
            node,
            manifest,
            doorbell,
            areas: RwLock::new(FastMap::default()),
        });
        self.peers
            .write()
            .expect(crate::POISONED)
            .insert(node, peer.clone());
        Ok(peer)
    }

    fn area(&self, peer: &ShmPeer, id: RegionId, key: AccessKey) -> Result<Arc<Region>, OpError> {
        if let Some(area) = peer.areas.read().expect(crate::POISONED).get(&id) {
            return Ok(area.clone()); // the key is checked against it by execute_on
        }
        // An area the node created since its manifest was first read (a region a new
        // configuration placed on it): its manifest, republished, lists it now.
        if peer.manifest.area(id).is_none()
            && !NodeManifest::read(&self.dir, peer.node)
                .ok()
                .flatten()
                .is_some_and(|m| {
                    (m.pid, m.started) == (peer.manifest.pid, peer.manifest.started)
                        && m.area(id).is_some()
                })
        {
            return Err(AccessError::UnknownRegion {
                node: peer.node,
                region: id,
            }
            .into());
        }
        let area = match Region::open_file(&self.dir, peer.node, id, key, self.options) {
            Ok(area) => Arc::new(area),
            // The file is named by its key: no file, no such key.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(AccessError::BadKey { region: id }.into());
            }
            Err(e) => {
                return Err(OpError::Unreachable {
                    node: peer.node,
                    reason: format!("map {id}: {e}"),
                });
            }
        };
        peer.areas
            .write()
            .expect(crate::POISONED)
            .insert(id, area.clone());
        Ok(area)
    }

    fn execute(&self, peer: &ShmPeer, op: &Op) -> OpResult {
        let (addr, key) = match op {
            Op::Notify => {
                peer.doorbell.ring();
                return Ok(Completion::Notify);
            }
            Op::Read { addr, key, .. }
            | Op::Write { addr, key, .. }
            | Op::Cas { addr, key, .. }
            | Op::Persist { addr, key, .. } => (*addr, *key),
        };
        let area = self.area(peer, addr.region(), key)?;
        exec::execute_on(&area, peer.node, op)
    }

    pub fn post(&self, target: NodeId, ops: &[Op]) -> Pending {
        let results = match self.peer(target) {
            Ok(peer) => ops.iter().map(|op| self.execute(&peer, op)).collect(),
            Err(error) => ops.iter().map(|_| Err(error.clone())).collect(),
        };
        Pending::ready(results)
    }
}
