//! The cluster file (`cluster.toml` in a cluster directory): the configuration and how the
//! node processes of one host reach each other. `acre cluster up` writes it; every node
//! process and client node reads it.

use crate::process::{ClusterError, fail};
use acre_engine::fabric::transport_kind::TransportKind;
use acre_nvm_log::{MapOptions, PersistMode};
use acre_txn::Configuration;
use std::path::Path;

/// Name of the cluster file inside a cluster directory.
pub const CLUSTER_FILE: &str = "cluster.toml";
/// Client node ids start here (memory nodes are numbered from 1).
pub const CLIENT_ID_BASE: u16 = 100;

/// The cluster file: the configuration and how the nodes reach each other.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub transport: TransportKind,
    /// auto | flush | msync (acre-nvm-log's PersistMode).
    pub persist: String,
    pub ring_bytes: u64,
    pub config: Configuration,
}

impl ClusterFile {
    pub fn read(path: &Path) -> Result<ClusterFile, ClusterError> {
        let what = format!("cluster file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| fail(&what)(e.to_string()))?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| fail(&what)(e.to_string()))?;
        file.config
            .validate()
            .map_err(|e| fail(&what)(e.to_string()))?;
        if PersistMode::parse(&file.persist).is_none() {
            return Err(fail(&what)(format!(
                "persist = {:?}: expected auto, flush or msync",
                file.persist
            )));
        }
        Ok(file)
    }

    pub fn write(&self, path: &Path) -> Result<(), ClusterError> {
        let text = toml::to_string(self).map_err(|e| ClusterError(e.to_string()))?;
        std::fs::write(path, text)
            .map_err(|e| ClusterError(format!("write {}: {e}", path.display())))
    }

    pub(crate) fn map_options(&self) -> MapOptions {
        MapOptions {
            persist: PersistMode::parse(&self.persist).unwrap_or_default(),
        }
    }
}
