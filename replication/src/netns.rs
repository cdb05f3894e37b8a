//! Where a tcp cluster's processes live on the network when they do not share loopback: each in
//! a network namespace of its own, with an address of its own, as `acre cluster up --netns`
//! asks and `netns.toml` in the cluster directory records (beside the cluster file, not in it:
//! it says where processes run, not what the cluster is).
//!
//! Memory node `n<id>` runs in namespace `<prefix>-n<id>` and binds its NIC thread, its CM
//! links and its lease socket to `<subnet>.<id>` instead of 127.0.0.1. Clients (and observers
//! such as `acre cluster status`) run where they are started, in the host's namespace, and bind
//! to the host's address on the nodes' network, `<subnet>.254`, where the nodes reach them.
//! This crate only reads the placement; who makes the namespaces, and the links between them,
//! is up to whoever asked for them (`acre jepsen` does, for its partition nemesis).

use crate::cluster_file::CLIENT_ID_BASE;
use acre_engine::addr::NodeId;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The placement's file name in the cluster directory.
pub const NETNS_FILE: &str = "netns.toml";

/// The host's last address byte on the nodes' network (memory node ids are below
/// [`CLIENT_ID_BASE`], so none takes it).
pub const HOST_BYTE: u8 = 254;
const _: () = assert!(CLIENT_ID_BASE <= HOST_BYTE as u16);

/// Each node process in a namespace of its own on one /24.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsPlacement {
    /// Namespace `<prefix>-n<id>` holds node `id`.
    pub prefix: String,
    /// The /24 network (its last byte 0): node `id` has address `.id`.
    pub subnet: Ipv4Addr,
}

/// Why the placement could not be read, written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is malformed: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "netns subnet {subnet} is not a /24 network address (its last byte must be 0, as in \
         10.77.1.0)"
    )]
    Subnet { subnet: Ipv4Addr },
    #[error(
        "netns prefix {prefix:?}: use 1 to 8 letters, digits or '-' (interface names built \
         from it must fit in 15 bytes)"
    )]
    Prefix { prefix: String },
    #[error("{node} has no address: node ids start at 1")]
    NodeId { node: NodeId },
}

impl NetnsPlacement {
    /// The longest prefix: `<prefix>-v<id>` (the host side of a node's link) fits in an
    /// interface name's 15 bytes with ids up to 3 digits.
    pub const PREFIX_BYTES_MAX: usize = 8;

    pub fn validate(&self) -> Result<(), NetnsError> {
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= NetnsPlacement::PREFIX_BYTES_MAX
            && (self.prefix.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !prefix_ok {
            return Err(NetnsError::Prefix {
                prefix: self.prefix.clone(),
            });
        }
        if self.subnet.octets()[3] != 0 {
            return Err(NetnsError::Subnet {
                subnet: self.subnet,
            });
        }
        Ok(())
    }

    /// The namespace of `node`'s process.
    pub fn namespace(&self, node: NodeId) -> String {
        format!("{}-n{}", self.prefix, node.0)
    }

    /// Whether `node` runs in a namespace of its own: memory nodes do; clients and observers
    /// run in the host's.
    pub fn in_namespace(node: NodeId) -> bool {
        node.0 < CLIENT_ID_BASE
    }

    /// The address `node`'s process binds to: its namespace's, or the host's for a client.
    pub fn addr(&self, node: NodeId) -> Result<IpAddr, NetnsError> {
        if node.0 == 0 {
            return Err(NetnsError::NodeId { node });
        }
        let [a, b, c, _] = self.subnet.octets();
        let last = match NetnsPlacement::in_namespace(node) {
            true => node.0 as u8,
            false => HOST_BYTE,
        };
        Ok(IpAddr::V4(Ipv4Addr::new(a, b, c, last)))
    }

    /// The placement recorded in cluster directory `dir`; `None` when its processes share
    /// loopback (no file).
    pub fn read(dir: &Path) -> Result<Option<NetnsPlacement>, NetnsError> {
        let path = dir.join(NETNS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(NetnsError::Read { path, source }),
        };
        let placement: NetnsPlacement = toml::from_str(&text).map_err(|e| NetnsError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        placement.validate()?;
        Ok(Some(placement))
    }

    /// Validates the placement and records it in `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), NetnsError> {
        self.validate()?;
        let path = dir.join(NETNS_FILE);
        let text = toml::to_string(self).map_err(|e| NetnsError::Parse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| NetnsError::Write { path, source })
    }
}

/// Where `node`'s process in cluster directory `dir` binds its sockets: its namespace's address
/// on a port the system picks, or `None` (loopback) when the cluster has no placement.
pub fn bind_addr(dir: &Path, node: NodeId) -> Result<Option<SocketAddr>, NetnsError> {
    match NetnsPlacement::read(dir)? {
        Some(placement) => Ok(Some(SocketAddr::new(placement.addr(node)?, 0))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_round_trips_and_names_each_node() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(NetnsPlacement::read(dir.path()).unwrap(), None);
        let placement = NetnsPlacement {
            prefix: "acrejp7".into(),
            subnet: Ipv4Addr::new(10, 77, 7, 0),
        };
        placement.write(dir.path()).unwrap();
        let read = NetnsPlacement::read(dir.path()).unwrap().unwrap();
        assert_eq!(read, placement);
        assert_eq!(read.namespace(NodeId(3)), "acrejp7-n3");
        assert_eq!(
            read.addr(NodeId(3)).unwrap(),
            IpAddr::V4(Ipv4Addr::new(10, 77, 7, 3))
        );
        assert_eq!(
            read.addr(NodeId(CLIENT_ID_BASE)).unwrap(),
            IpAddr::V4(Ipv4Addr::new(10, 77, 7, HOST_BYTE))
        );
        assert!(matches!(
            read.addr(NodeId(0)),
            Err(NetnsError::NodeId { .. })
        ));
    }

    #[test]
    fn a_bad_subnet_or_prefix_is_refused() {
        let bad_subnet = NetnsPlacement {
            prefix: "acrejp7".into(),
            subnet: Ipv4Addr::new(10, 77, 7, 1),
        };
        assert!(matches!(
            bad_subnet.validate(),
            Err(NetnsError::Subnet { .. })
        ));
        let long_prefix = NetnsPlacement {
            prefix: "acre-jepsen-7".into(),
            subnet: Ipv4Addr::new(10, 77, 7, 0),
        };
        assert!(matches!(
            long_prefix.validate(),
            Err(NetnsError::Prefix { .. })
        ));
    }
}
