//! Where the areas of other nodes are: the access key and size of each region copy, ring and
//! reply area, by node. An embedded cluster fills it in at start; a node process learns it from
//! the manifests peers publish in the cluster directory (and, over tcp, their addresses).

use crate::POISONED;
use crate::error::TxnError;
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::directory::NodeManifest;
use acre_engine::fabric::Fabric;
use acre_engine::fabric::transport_kind;
use acre_engine::hash::FastMap;
use acre_engine::region::AccessKey;
use std::path::PathBuf;
use std::sync::RwLock;

/// Keys and sizes of the areas of every node this one talks to.
pub struct Directory {
    known: RwLock<FastMap<(NodeId, RegionId), (AccessKey, u64)>>,
    /// Where manifests are read from when an area is not known yet.
    cluster_dir: Option<PathBuf>,
}

impl Directory {
    /// A directory filled in by the caller (embedded cluster).
    pub fn fixed() -> Directory {
        Directory {
            known: RwLock::new(FastMap::default()),
            cluster_dir: None,
        }
    }

    /// A directory that reads manifests from `cluster_dir` on a miss.
    pub fn manifests(cluster_dir: PathBuf) -> Directory {
        Directory {
            known: RwLock::new(FastMap::default()),
            cluster_dir: Some(cluster_dir),
        }
    }

    pub fn insert(&self, node: NodeId, area: RegionId, key: AccessKey, bytes: u64) {
        self.known
            .write()
            .expect(POISONED)
            .insert((node, area), (key, bytes));
    }

    /// Forgets what is known of `node` (it restarted with new keys); manifests are read again.
    pub fn forget(&self, node: NodeId) {
        if self.cluster_dir.is_some() {
            self.known
                .write()
                .expect(POISONED)
                .retain(|(n, _), _| *n != node);
        }
    }

    /// The key and size of `area` at `node`.
    pub fn lookup(
        &self,
        fabric: &Fabric,
        node: NodeId,
        area: RegionId,
    ) -> Result<(AccessKey, u64), TxnError> {
        if let Some(found) = self.known.read().expect(POISONED).get(&(node, area)) {
            return Ok(*found);
        }
        let Some(dir) = &self.cluster_dir else {
            return Err(TxnError::Unavailable {
                node,
                reason: format!("it has no area {area}"),
            });
        };
        let unavailable = |reason: String| TxnError::Unavailable { node, reason };
        let manifest = NodeManifest::read(dir, node)
            .map_err(|e| unavailable(format!("read its manifest: {e}")))?
            .ok_or_else(|| unavailable("it has not published a manifest: is it running?".into()))?;
        transport_kind::reach(fabric.transport(), &manifest).map_err(unavailable)?;
        for entry in &manifest.areas {
            let key = entry
                .access_key()
                .map_err(|e| unavailable(format!("manifest: {e}")))?;
            self.insert(node, entry.id, key, entry.bytes);
        }
        self.known
            .read()
            .expect(POISONED)
            .get(&(node, area))
            .copied()
            .ok_or_else(|| unavailable(format!("its manifest lists no area {area}")))
    }
}
