//! The cluster file (`cluster.toml` in a cluster directory): the configuration and how the
//! node processes of one host reach each other. `acre cluster up` writes it; every node
//! process and client node reads it.

use acre_engine::channel;
use acre_engine::fabric::transport_kind::{OFI_PROVIDER_DEFAULT, TransportKind, TransportSpec};
use acre_nvm_log::{LogError, MapOptions, PersistMode};
use acre_txn::Configuration;
use acre_txn::config::{ConfigError, TomlError};
use std::io;
use std::path::{Path, PathBuf};

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
    /// The configuration manager, when the cluster runs one (its replicas are the
    /// configuration's `cm_replicas`: memory nodes, whose processes host them, and ids that are
    /// neither nodes nor clients, each a standalone `acre cm` process); without it the
    /// configuration never changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cm: Option<CmSettings>,
    /// How the nodes use the ofi transport, when `transport = "ofi"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofi: Option<OfiSettings>,
    pub config: Configuration,
}

/// The ofi transport's settings (docs/ofi.md#in-a-cluster).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfiSettings {
    /// The libfabric provider: `tcp;ofi_rxm` (the default), `sockets`, `verbs;ofi_rxm`, `efa`.
    pub provider: String,
    /// Data recovery's reads of region copies, and transactions' reads of objects of 4 KiB or
    /// more, by the hybrid transfer: zero copy from this many
    /// bytes, by copy below. Absent (the default): plain READs of the registered regions, which
    /// measured faster here (docs/ofi.md, "Hybrid transfer").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_threshold_bytes: Option<u64>,
}

/// How the cluster's configuration manager runs (docs/failures.md#configuration-manager).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmSettings {
    /// The length of the leases between the CM and every memory node, in milliseconds.
    pub lease_ms: u64,
}

impl CmSettings {
    /// The shortest lease a cluster file may ask for: below it, renewals every fifth of a lease
    /// come faster than this host schedules a thread reliably.
    pub const LEASE_MS_MIN: u64 = 10;
    /// The longest: a failure would go unnoticed for longer than anyone waits.
    pub const LEASE_MS_MAX: u64 = 60_000;

    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.lease_ms)
    }
}

/// Why a cluster file could not be read or written. Each says what to fix; none is worth a
/// retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterFileError {
    #[error(
        "cannot read the cluster file {path}: {source}; is there a cluster (`acre cluster up`)?"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the cluster file {path} is malformed: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: TomlError,
    },
    #[error("the configuration in the cluster file is unusable: {source}")]
    Config {
        #[source]
        source: ConfigError,
    },
    #[error("persist = {persist:?} in the cluster file: expected auto, flush or msync")]
    Persist { persist: String },
    #[error("ring_bytes = {ring_bytes} holds no usable ring: {source}")]
    RingBytes {
        ring_bytes: u64,
        #[source]
        source: LogError,
    },
    #[error(
        "lease_ms = {lease_ms} in the cluster file: expected {} to {} milliseconds",
        CmSettings::LEASE_MS_MIN,
        CmSettings::LEASE_MS_MAX
    )]
    LeaseMs { lease_ms: u64 },
    #[error(
        "the cluster file has a [cm] section but its configuration names no CM replica \
         (cm_replicas): name 1, 3 or 5 memory nodes or standalone CM ids, or remove the section"
    )]
    NoCmReplicas,
    #[error(
        "the cluster file has an [ofi] section but transport = {transport:?}: remove the \
         section or set transport = \"ofi\""
    )]
    OfiSettingsUnused { transport: &'static str },
    #[error(
        "[ofi] provider = \"\" in the cluster file: name a libfabric provider, e.g. {OFI_PROVIDER_DEFAULT:?}"
    )]
    OfiProviderEmpty,
    #[error("cannot encode the cluster file: {source}")]
    Encode {
        #[source]
        source: toml::ser::Error,
    },
    #[error("cannot write the cluster file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ClusterFile {
    /// Reads and validates the cluster file at `path`.
    pub fn read(path: &Path) -> Result<ClusterFile, ClusterFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClusterFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file: ClusterFile = toml::from_str(&text).map_err(|e| ClusterFileError::Parse {
            path: path.to_path_buf(),
            source: TomlError::new(&text, &e),
        })?;
        file.validate()?;
        Ok(file)
    }

    /// Checks what serde cannot: the configuration, the persistence mode and the ring size,
    /// so that a launcher finds a bad value before any node process starts.
    pub fn validate(&self) -> Result<(), ClusterFileError> {
        self.config
            .validate()
            .map_err(|source| ClusterFileError::Config { source })?;
        if PersistMode::parse(&self.persist).is_none() {
            return Err(ClusterFileError::Persist {
                persist: self.persist.clone(),
            });
        }
        channel::ring_geometry(self.ring_bytes).map_err(|source| ClusterFileError::RingBytes {
            ring_bytes: self.ring_bytes,
            source,
        })?;
        if let Some(ofi) = &self.ofi {
            if self.transport != TransportKind::Ofi {
                return Err(ClusterFileError::OfiSettingsUnused {
                    transport: self.transport.name(),
                });
            }
            if ofi.provider.trim().is_empty() {
                return Err(ClusterFileError::OfiProviderEmpty);
            }
        }
        if let Some(cm) = &self.cm {
            if !(CmSettings::LEASE_MS_MIN..=CmSettings::LEASE_MS_MAX).contains(&cm.lease_ms) {
                return Err(ClusterFileError::LeaseMs {
                    lease_ms: cm.lease_ms,
                });
            }
            // A replica is a memory node (its process hosts it) or a standalone `acre cm`
            // process; the configuration refuses a client id.
            if self.config.cm_replicas.is_empty() {
                return Err(ClusterFileError::NoCmReplicas);
            }
        }
        Ok(())
    }

    /// Validates the file and writes it to `path`.
    pub fn write(&self, path: &Path) -> Result<(), ClusterFileError> {
        self.validate()?;
        let text = toml::to_string(self).map_err(|source| ClusterFileError::Encode { source })?;
        std::fs::write(path, text).map_err(|source| ClusterFileError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Whether `node` is a standalone CM replica of this cluster: one of its `cm_replicas`
    /// that is neither a memory node nor a client (an `acre cm` process).
    pub fn is_standalone_cm(&self, node: acre_engine::addr::NodeId) -> bool {
        self.cm.is_some()
            && self.config.cm_replicas.contains(&node)
            && !self.config.members().any(|m| m == node)
    }

    /// The standalone CM replicas (`acre cm` processes), in the order the file lists them.
    pub fn standalone_cms(&self) -> Vec<acre_engine::addr::NodeId> {
        self.config
            .cm_replicas
            .iter()
            .copied()
            .filter(|&r| self.is_standalone_cm(r))
            .collect()
    }

    /// How a node of this cluster opens its transport, listening on `listen` (loopback if
    /// `None`).
    pub fn transport_spec(&self, listen: Option<std::net::SocketAddr>) -> TransportSpec {
        TransportSpec {
            kind: self.transport,
            listen,
            ofi_provider: self.ofi.as_ref().map(|o| o.provider.clone()),
            ofi_transfer_threshold: self.ofi.as_ref().and_then(|o| o.transfer_threshold_bytes),
        }
    }

    pub(crate) fn map_options(&self) -> MapOptions {
        MapOptions {
            persist: PersistMode::parse(&self.persist).unwrap_or_default(),
        }
    }
}
