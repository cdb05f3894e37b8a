//! The cluster directory: where the node processes of one host find each other.
//!
//! Layout (the directory is mode 0700, every file 0600):
//! - `n{id}.manifest`: the node's manifest (TOML): pid, transport, TCP address, and its
//!   registered areas with their sizes and access keys. Written atomically (temporary file, then
//!   rename) once the node is serving, removed when it stops cleanly. It stands in for the
//!   configuration the configuration manager will distribute; because it carries access keys it is
//!   as private as the cluster secret.
//!   A standalone CM replica's process (`acre cm`) publishes one too: its pid and CM addresses,
//!   and no areas.
//! - `n{id}-r{region}-{key}.region`: region and ring files (see [`crate::region`]). They outlive
//!   the node's process: a node never removes them when it stops, since they are what recovery
//!   will read.
//! - `n{id}.doorbell`: the node's doorbell (see [`crate::fabric::doorbell`]).
//! - `cluster.secret`: the TCP cluster secret.

use crate::addr::{NodeId, RegionId};
use crate::region::AccessKey;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Default parent of cluster directories: shared memory, so region files are RAM.
pub const CLUSTER_DIR_PARENT_DEFAULT: &str = "/dev/shm";

/// Name of the cluster secret file inside the cluster directory.
pub const SECRET_FILE: &str = "cluster.secret";

/// What an area of a node's memory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AreaKind {
    /// A region of the global address space.
    Region,
    /// A message ring written by one sender.
    Ring,
}

/// One registered area as published in a manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AreaEntry {
    pub id: RegionId,
    pub kind: AreaKind,
    pub bytes: u64,
    /// The access key in hex (TOML integers are signed 64-bit).
    pub key: String,
}

impl AreaEntry {
    pub fn new(id: RegionId, kind: AreaKind, bytes: u64, key: AccessKey) -> AreaEntry {
        AreaEntry {
            id,
            kind,
            bytes,
            key: format!("{:016x}", key.0),
        }
    }

    pub fn access_key(&self) -> io::Result<AccessKey> {
        u64::from_str_radix(&self.key, 16)
            .map(AccessKey)
            .map_err(|_| {
                invalid(format!(
                    "area {} has a malformed key (16 hex digits expected)",
                    self.id
                ))
            })
    }
}

/// What a node publishes about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeManifest {
    pub node: NodeId,
    pub pid: u32,
    pub transport: String,
    /// `host:port` of the node's NIC thread, for the tcp transport.
    pub tcp_addr: Option<String>,
    pub areas: Vec<AreaEntry>,
    /// When process `pid` started (`procfs::start_time`): tells it from a later process that
    /// reused the pid, so that nothing kills the wrong one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// `host:port` of the node's configuration-manager links (TCP), when the cluster runs a CM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cm_link: Option<String>,
    /// `host:port` of the node's lease thread (UDP), when the cluster runs a CM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// The region copies this node, restarted from its files, found damaged (their blocks did
    /// not match the sums it wrote when it stopped, or the sums file was damaged): it does not
    /// serve them, and the launcher asks the CM for a restart configuration that takes them
    /// into account (docs/failures.md#whole-cluster-restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<RegionId>,
    /// How peers reach the node over the ofi transport: its card (docs/ofi.md#in-a-cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofi: Option<OfiEntry>,
}

/// A node's ofi card as its manifest publishes it: the provider, its two endpoint names and
/// its registered areas. Numbers that may not fit TOML's signed 64-bit integers are in hex.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfiEntry {
    pub provider: String,
    /// The target endpoint's name (where peers' operations go), in hex.
    pub target: String,
    /// The initiator endpoint's name (where the node's NIC thread answers it), in hex.
    pub initiator: String,
    /// The configuration whose members the grants are for; absent while the node serves none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<u64>,
    pub areas: Vec<OfiAreaEntry>,
}

/// One registered area of an [`OfiEntry`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfiAreaEntry {
    pub id: RegionId,
    pub bytes: u64,
    /// The access key, 16 hex digits.
    pub key: String,
    /// The registrations' base address, 16 hex digits.
    pub base: String,
    /// One registration per node that may reach the area.
    pub grants: Vec<OfiGrantEntry>,
}

/// One registration of an [`OfiAreaEntry`]: the node it is for (absent: every node) and its key,
/// 16 hex digits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfiGrantEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub mr_key: String,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

impl NodeManifest {
    pub fn path(dir: &Path, node: NodeId) -> PathBuf {
        dir.join(format!("{node}.manifest"))
    }

    pub fn area(&self, id: RegionId) -> Option<&AreaEntry> {
        self.areas.iter().find(|a| a.id == id)
    }

    /// Publishes the manifest atomically.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        let text = toml::to_string(self).map_err(|e| invalid(format!("encode manifest: {e}")))?;
        let path = NodeManifest::path(dir, self.node);
        let tmp = path.with_extension("manifest.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    }

    /// Reads a node's manifest; `Ok(None)` if the node has not published one (not started yet,
    /// or stopped).
    pub fn read(dir: &Path, node: NodeId) -> io::Result<Option<NodeManifest>> {
        let text = match fs::read_to_string(NodeManifest::path(dir, node)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let manifest: NodeManifest = toml::from_str(&text)
            .map_err(|e| invalid(format!("manifest of {node} is malformed: {e}")))?;
        if manifest.node != node {
            return Err(invalid(format!(
                "manifest of {node} names {}",
                manifest.node
            )));
        }
        Ok(Some(manifest))
    }

    /// The nodes that have a manifest in `dir`, in id order: what a launcher finds even when
    /// the cluster file is unreadable.
    pub fn list(dir: &Path) -> io::Result<Vec<NodeId>> {
        let mut nodes = Vec::new();
        for entry in fs::read_dir(dir)? {
            let name = entry?.file_name();
            let id = name
                .to_str()
                .and_then(|name| name.strip_prefix('n')?.strip_suffix(".manifest"))
                .and_then(|id| id.parse::<u16>().ok());
            if let Some(id) = id {
                nodes.push(NodeId(id));
            }
        }
        nodes.sort_unstable();
        Ok(nodes)
    }

    pub fn remove(dir: &Path, node: NodeId) -> io::Result<()> {
        match fs::remove_file(NodeManifest::path(dir, node)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// Path of a node's doorbell file.
pub fn doorbell_path(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.doorbell"))
}

/// The area files (region copies, rings, reply area: `n{id}-r{area}-{key}.region`) that `node`
/// has in the cluster directory, by area id, in id order. A file whose name does not parse is
/// not one of them.
pub fn node_area_files(dir: &Path, node: NodeId) -> io::Result<Vec<(RegionId, PathBuf)>> {
    Ok(node_areas(dir, node)?
        .into_iter()
        .map(|(area, _key, path)| (area, path))
        .collect())
}

/// The area files of `node` in `dir` with their access keys (as [`crate::region::Region::file_name`] writes
/// them), sorted by area: what a node restarted from its files maps again.
pub fn node_areas(dir: &Path, node: NodeId) -> io::Result<Vec<(RegionId, AccessKey, PathBuf)>> {
    let prefix = format!("{node}-r");
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        let area = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".region"))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(area, key)| {
                let area = area.parse::<u32>().ok()?;
                let key = u64::from_str_radix(key, 16).ok()?;
                Some((RegionId(area), AccessKey(key)))
            });
        if let Some((area, key)) = area {
            files.push((area, key, dir.join(name)));
        }
    }
    files.sort_by_key(|(area, key, _)| (*area, key.0));
    Ok(files)
}

/// Removes the area and doorbell files a previous run of `node` left in the cluster directory.
/// Only for files that hold nothing anyone needs (a client node's, or a memory node's that
/// never held data): a memory node's region copies and rings are what recovery will read.
pub fn remove_node_files(dir: &Path, node: NodeId) -> io::Result<()> {
    for (_, path) in node_area_files(dir, node)? {
        fs::remove_file(path)?;
    }
    match fs::remove_file(doorbell_path(dir, node)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Creates the cluster directory (mode 0700) if it does not exist.
pub fn create_cluster_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip_and_keep_full_keys() {
        let dir = tempfile::tempdir().unwrap();
        let key = AccessKey(u64::MAX - 5);
        let manifest = NodeManifest {
            node: NodeId(2),
            pid: 42,
            transport: "shm".into(),
            tcp_addr: None,
            areas: vec![AreaEntry::new(RegionId(3), AreaKind::Region, 1 << 20, key)],
            started: None,
            cm_link: None,
            lease: None,
            damaged: vec![RegionId(3)],
            ofi: None,
        };
        manifest.write(dir.path()).unwrap();
        let read = NodeManifest::read(dir.path(), NodeId(2)).unwrap().unwrap();
        assert_eq!(read, manifest);
        assert_eq!(read.areas[0].access_key().unwrap(), key);
        assert!(NodeManifest::read(dir.path(), NodeId(9)).unwrap().is_none());
        std::fs::write(NodeManifest::path(dir.path(), NodeId(4)), "node = [").unwrap();
        assert!(NodeManifest::read(dir.path(), NodeId(4)).is_err());
        std::fs::write(dir.path().join("n2.manifest.tmp"), "").unwrap();
        std::fs::write(dir.path().join("nx.manifest"), "").unwrap();
        assert_eq!(
            NodeManifest::list(dir.path()).unwrap(),
            [NodeId(2), NodeId(4)],
            "manifests by name, whatever they hold; temporary files are none"
        );
    }

    #[test]
    fn a_nodes_area_files_are_listed_by_area_and_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "n1-r2147483650-0a.region",
            "n1-r2-00ff.region",
            "n12-r1-00ff.region",
            "n1-rx-00ff.region",
            "n1.manifest",
            "n1-r3-00ff.region.tmp",
        ];
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let found = node_area_files(dir.path(), NodeId(1)).unwrap();
        assert_eq!(
            found,
            [
                (RegionId(2), dir.path().join("n1-r2-00ff.region")),
                (
                    RegionId(0x8000_0002),
                    dir.path().join("n1-r2147483650-0a.region")
                ),
            ]
        );
    }

    #[test]
    fn a_nodes_leftover_files_go_and_others_stay() {
        let dir = tempfile::tempdir().unwrap();
        let keep = ["n12-r1-00ff.region", "n1.manifest", "n2.doorbell", "n1.log"];
        let gone = ["n1-r1-00ff.region", "n1-r80000002-0a.region", "n1.doorbell"];
        for name in keep.iter().chain(&gone) {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_node_files(dir.path(), NodeId(1)).unwrap();
        for name in keep {
            assert!(dir.path().join(name).exists(), "{name}");
        }
        for name in gone {
            assert!(!dir.path().join(name).exists(), "{name}");
        }
        remove_node_files(dir.path(), NodeId(1)).expect("nothing left to remove is fine");
    }
}
