//! The CM's status file (`cm-status.toml` in a cluster directory): what the configuration
//! manager of a process cluster publishes for the processes of its host. The process whose CM
//! replica leads the Raft group and acts as CM ([`crate::agent`]) rewrites it when something
//! changes and at least every [`STATUS_REFRESH`]: the configuration last committed, the CM
//! leader and replicas, each memory node's lease as the CM sees it, and the last
//! reconfigurations with the times of their steps.
//!
//! Two readers: `acre cluster status`, and client nodes, which hold no lease and learn each
//! committed configuration here ([`crate::agent::ConfigFollower`]; docs/failures.md#clients-and-the-configuration).
//! It is written to a temporary file and renamed, so a reader sees a whole file or the previous
//! one. A CM that lost its leadership without knowing it yet may write once more; readers take a
//! configuration only when its id is higher than theirs, so an older file changes nothing.

use acre_engine::addr::NodeId;
use acre_txn::Configuration;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Name of the status file inside a cluster directory.
pub const CM_STATUS_FILE: &str = "cm-status.toml";
/// How often the CM rewrites the file when nothing changed (lease ages move).
pub const STATUS_REFRESH: Duration = Duration::from_secs(1);

/// The status file's contents. Plain values first, tables last (TOML's order).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CmStatusFile {
    /// When it was written, in milliseconds since the Unix epoch (wall clock).
    pub written_unix_ms: u64,
    /// The CM that wrote it.
    pub leader: NodeId,
    /// Its Raft term.
    pub term: u64,
    /// The Raft group's replicas.
    pub replicas: Vec<NodeId>,
    pub lease_ms: u64,
    /// The newest configuration Raft applied (committed or still being distributed).
    pub installed_id: u64,
    /// Each memory node's lease as the CM sees it.
    pub leases: Vec<LeaseRow>,
    /// The last reconfigurations, oldest first (at most [`HISTORY_MAX`]).
    pub history: Vec<ReconfigurationRow>,
    /// The configuration last committed (NEW-CONFIG-COMMIT sent).
    pub committed: Configuration,
    /// The configuration Raft installed after it, while the CM distributes it (NEW-CONFIG
    /// sent, not yet committed): clients adopt it with the members and commit it with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installing: Option<Configuration>,
}

/// Reconfigurations kept in the file.
pub const HISTORY_MAX: usize = 16;

/// One memory node's lease.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LeaseRow {
    pub node: NodeId,
    /// Milliseconds left of the lease the CM granted it; negative once expired; absent when
    /// the CM has granted it none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_ms: Option<i64>,
}

/// One reconfiguration and the times of its steps, in milliseconds from its start (the first
/// suspicion, or the moment the CM became leader).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReconfigurationRow {
    /// `failure of n4`, `new CM leader`.
    pub cause: String,
    pub from_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_id: Option<u64>,
    pub failed: Vec<NodeId>,
    /// When it started on the CM's clock (`acre_engine::clock`, in nanoseconds; the host's
    /// monotonic clock unless the CM's process clock is controlled), so a tool on the same host
    /// can time it from an event it caused.
    pub started_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probed_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_ms: Option<f64>,
    /// `in progress`, `committed`, `superseded`, ...
    pub outcome: String,
}

/// Why the status file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CmStatusError {
    #[error("cannot read the CM status {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the CM status {path} is malformed: {message}")]
    Parse { path: PathBuf, message: String },
}

impl CmStatusFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CM_STATUS_FILE)
    }

    /// Reads the status file of the cluster in `dir`; `Ok(None)` when there is none (no CM, or
    /// none has committed a configuration yet).
    pub fn read(dir: &Path) -> Result<Option<CmStatusFile>, CmStatusError> {
        read_toml(&CmStatusFile::path(dir))
    }

    /// Publishes the file atomically (a temporary file renamed over it).
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        write_toml(&CmStatusFile::path(dir), self)
    }
}

/// Reads a small TOML file of the cluster directory; `Ok(None)` when it does not exist.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, CmStatusError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CmStatusError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| CmStatusError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Writes a small TOML file atomically (a temporary file renamed over it).
pub fn write_toml<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let text = toml::to_string(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let tmp = path.with_extension(format!("toml.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_file_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CmStatusFile::read(dir.path()).unwrap().is_none());
        let committed = Configuration::place(
            3,
            (1..=3).map(NodeId).collect(),
            vec![NodeId(100)],
            1,
            1,
            1 << 20,
            4096,
        )
        .unwrap();
        let status = CmStatusFile {
            written_unix_ms: 5,
            leader: NodeId(2),
            term: 4,
            replicas: vec![NodeId(1), NodeId(2), NodeId(3)],
            lease_ms: 200,
            installed_id: 3,
            leases: vec![LeaseRow {
                node: NodeId(1),
                remaining_ms: Some(-3),
            }],
            history: vec![ReconfigurationRow {
                cause: "failure of n4".into(),
                from_id: 2,
                to_id: Some(3),
                failed: vec![NodeId(4)],
                started_ns: 7,
                probed_ms: Some(1.5),
                installed_ms: None,
                acked_ms: None,
                committed_ms: None,
                outcome: "committed".into(),
            }],
            committed,
            installing: None,
        };
        status.write(dir.path()).unwrap();
        assert_eq!(CmStatusFile::read(dir.path()).unwrap(), Some(status));
        std::fs::write(CmStatusFile::path(dir.path()), "leader = [").unwrap();
        let error = CmStatusFile::read(dir.path()).unwrap_err().to_string();
        assert!(error.contains("malformed"), "{error}");
    }
}
