//! Which transport a node process uses (shm, tcp or ofi), as a cluster file names it, and
//! opening it: the shm transport maps its peers' files in the cluster directory, the tcp
//! transport starts this node's NIC thread, the ofi transport opens its libfabric provider and
//! starts its NIC thread. Peers are reached through what their manifests publish ([`reach`]).

use crate::addr::NodeId;
use crate::directory::{self, NodeManifest, OfiEntry};
use crate::fabric::Transport;
use crate::fabric::membership::Membership;
use crate::fabric::memory::NodeMemory;
use crate::fabric::shm::ShmTransport;
use crate::fabric::tcp::{ClusterSecret, NicServer, SecretFileError, TcpTransport};
use acre_nvm_log::MapOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// Which transport a node process uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    Shm,
    Tcp,
    /// libfabric (docs/ofi.md); only in an `acre` built with the cargo feature `ofi`.
    Ofi,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Shm => "shm",
            TransportKind::Tcp => "tcp",
            TransportKind::Ofi => "ofi",
        }
    }

    /// Whether this build can open it (ofi needs the cargo feature `ofi`).
    pub fn is_built(self) -> bool {
        self != TransportKind::Ofi || cfg!(feature = "ofi")
    }
}

/// The libfabric provider of the ofi transport when the cluster file names none.
pub const OFI_PROVIDER_DEFAULT: &str = "tcp;ofi_rxm";

/// How a node opens its transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportSpec {
    pub kind: TransportKind,
    /// Where the NIC thread listens (tcp) or the endpoints are opened (ofi, its IP only); on
    /// loopback if `None`.
    pub listen: Option<SocketAddr>,
    /// The libfabric provider, for ofi ([`OFI_PROVIDER_DEFAULT`] if `None`).
    pub ofi_provider: Option<String>,
    /// For ofi: large reads (data recovery's, and transactions' of large objects) go by the
    /// hybrid transfer, zero copy from this many
    /// bytes and by copy below; `None`: plain READs (docs/ofi.md, "Hybrid transfer").
    pub ofi_transfer_threshold: Option<u64>,
}

/// Why a node's transport could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The tcp transport needs the cluster secret (`acre cluster up` writes one).
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    #[error("cannot listen on {addr} for the NIC thread: {source}; free the port or pick another")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "this acre was built without the ofi transport: build it with `--features ofi` \
         (libfabric's headers and library are needed: Debian's libfabric-dev)"
    )]
    OfiNotBuilt,
    #[cfg(feature = "ofi")]
    #[error(transparent)]
    Ofi(#[from] crate::fabric::ofi::OfiError),
}

/// Loopback, on a port the system picks: where a NIC thread listens unless told otherwise.
pub const LISTEN_DEFAULT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The thread that serves a node's memory to the others, where its transport has one.
pub enum NodeNic {
    Tcp(NicServer),
    #[cfg(feature = "ofi")]
    Ofi(crate::fabric::ofi::OfiNic),
}

impl NodeNic {
    /// Serves `membership`'s members only from now on (see each transport's). An error means
    /// the fence may not have taken (on ofi, a removed node's registration could not be
    /// closed): the configuration must not be acknowledged.
    pub fn set_membership(&self, membership: Membership) -> Result<(), OpenError> {
        match self {
            NodeNic::Tcp(nic) => {
                nic.set_membership(membership);
                Ok(())
            }
            #[cfg(feature = "ofi")]
            NodeNic::Ofi(nic) => Ok(nic.set_membership(membership)?),
        }
    }

    /// Whether the node's card changes with its membership (on ofi each member gets its own
    /// registration keys), so that the node must publish its manifest again after
    /// [`NodeNic::set_membership`] for new members to reach it.
    pub fn card_follows_membership(&self) -> bool {
        match self {
            NodeNic::Tcp(_) => false,
            #[cfg(feature = "ofi")]
            NodeNic::Ofi(_) => true,
        }
    }
}

/// A node's transport, opened.
pub struct OpenedTransport {
    pub transport: Transport,
    pub nic: Option<NodeNic>,
    /// Where the tcp NIC thread listens.
    pub tcp_addr: Option<SocketAddr>,
}

/// Node `node`'s transport to the others in cluster directory `dir`, as a member of
/// `membership`: shm maps their files there; tcp starts this node's NIC thread on `spec.listen`
/// (default [`LISTEN_DEFAULT`]) serving `memory` to `membership`'s members only, and binds its
/// connections to the others to `membership`'s id; ofi opens `spec.ofi_provider`, starts its
/// NIC thread serving `membership`'s members only, and finds the others' cards in their
/// manifests in `dir` (this node publishes its own with [`publishable_card`]).
///
/// Nothing on shm can refuse a non-member (an initiator stores into the target's mapped files
/// itself): a removed node is fenced by ending its process. On ofi each member gets its own
/// registration of every area, and a removed node's are closed (docs/failures.md#fencing).
pub fn open_transport(
    dir: &Path,
    node: NodeId,
    spec: &TransportSpec,
    options: MapOptions,
    memory: &Arc<NodeMemory>,
    membership: Membership,
) -> Result<OpenedTransport, OpenError> {
    match spec.kind {
        TransportKind::Shm => Ok(OpenedTransport {
            transport: Transport::Shm(ShmTransport::new(dir.to_path_buf(), options)),
            nic: None,
            tcp_addr: None,
        }),
        TransportKind::Tcp => {
            let secret = ClusterSecret::from_file(&dir.join(directory::SECRET_FILE))?;
            let addr = spec.listen.unwrap_or(LISTEN_DEFAULT);
            let config = membership.config();
            let nic = NicServer::start(addr, memory.clone(), secret.clone(), membership)
                .map_err(|source| OpenError::Listen { addr, source })?;
            let local = nic.local_addr();
            Ok(OpenedTransport {
                transport: Transport::Tcp(TcpTransport::new(node, config, secret)),
                nic: Some(NodeNic::Tcp(nic)),
                tcp_addr: Some(local),
            })
        }
        TransportKind::Ofi => open_ofi(dir, spec, memory, Some(membership)),
    }
}

/// The transport of an observer (`acre cluster status`): node `me`, which registers no memory
/// and reaches the nodes of `dir` the way they reach each other. Its NIC, if any, must live as
/// long as the transport.
pub fn open_observer(
    dir: &Path,
    spec: &TransportSpec,
    options: MapOptions,
    config: u64,
    memory: &Arc<NodeMemory>,
) -> Result<(Transport, Option<NodeNic>), OpenError> {
    match spec.kind {
        TransportKind::Shm => Ok((
            Transport::Shm(ShmTransport::new(dir.to_path_buf(), options)),
            None,
        )),
        TransportKind::Tcp => {
            let secret = ClusterSecret::from_file(&dir.join(directory::SECRET_FILE))?;
            Ok((
                Transport::Tcp(TcpTransport::new(memory.node_id(), config, secret)),
                None,
            ))
        }
        TransportKind::Ofi => {
            let opened = open_ofi(dir, spec, memory, None)?;
            Ok((opened.transport, opened.nic))
        }
    }
}

#[cfg(feature = "ofi")]
fn open_ofi(
    dir: &Path,
    spec: &TransportSpec,
    memory: &Arc<NodeMemory>,
    membership: Option<Membership>,
) -> Result<OpenedTransport, OpenError> {
    use crate::fabric::ofi::{OfiCard, OfiConfig, OfiTransport};
    let mut config =
        OfiConfig::loopback(spec.ofi_provider.as_deref().unwrap_or(OFI_PROVIDER_DEFAULT));
    if let Some(listen) = spec.listen {
        config.address = listen.ip().to_string();
    }
    config.transfer = spec
        .ofi_transfer_threshold
        .map(|threshold_bytes| crate::fabric::ofi::transfer::TransferPolicy { threshold_bytes });
    // Registered for the members only from the start (no key to every node is ever handed out).
    config.membership = membership;
    let (transport, nic) = OfiTransport::start(&config, memory.clone())?;
    let dir = dir.to_path_buf();
    transport.find_cards_with(move |node| {
        let manifest = NodeManifest::read(&dir, node).ok().flatten()?;
        OfiCard::from_entry(node, manifest.ofi.as_ref()?)
            .inspect_err(|e| eprintln!("acre: ofi: the manifest of {node}: {e}"))
            .ok()
    });
    Ok(OpenedTransport {
        transport: Transport::Ofi(transport),
        nic: Some(NodeNic::Ofi(nic)),
        tcp_addr: None,
    })
}

#[cfg(not(feature = "ofi"))]
fn open_ofi(
    _dir: &Path,
    _spec: &TransportSpec,
    _memory: &Arc<NodeMemory>,
    _membership: Option<Membership>,
) -> Result<OpenedTransport, OpenError> {
    Err(OpenError::OfiNotBuilt)
}

/// What this node's manifest publishes for the ofi transport, if it uses it: its card, after
/// registering the areas placed on the node since the last call (so that every area the
/// manifest lists is reachable).
pub fn publishable_card(transport: &Transport) -> Result<Option<OfiEntry>, OpenError> {
    match transport {
        #[cfg(feature = "ofi")]
        Transport::Ofi(ofi) => {
            ofi.register_new_areas()?;
            Ok(Some(ofi.card()?.to_entry()))
        }
        _ => Ok(None),
    }
}

/// Makes the node `manifest` describes reachable through `transport` as the manifest says (its
/// tcp address, or its ofi card, replacing what was known: it may have restarted or placed
/// areas since). Nothing to do on shm. Says what is wrong with the manifest otherwise.
pub fn reach(transport: &Transport, manifest: &NodeManifest) -> Result<(), String> {
    match transport {
        Transport::Tcp(tcp) => {
            if let Some(addr) = &manifest.tcp_addr {
                let addr = addr
                    .parse()
                    .map_err(|e| format!("its manifest's tcp_addr {addr:?}: {e}"))?;
                tcp.add_peer(manifest.node, addr);
            }
            Ok(())
        }
        #[cfg(feature = "ofi")]
        Transport::Ofi(ofi) => {
            let entry = manifest
                .ofi
                .as_ref()
                .ok_or("its manifest has no ofi card: is it running on another transport?")?;
            let card = crate::fabric::ofi::OfiCard::from_entry(manifest.node, entry)
                .map_err(|e| format!("its manifest's ofi card: {e}"))?;
            ofi.add_peer(card).map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::Doorbell;

    #[test]
    fn names_round_trip_through_the_cluster_file_spelling() {
        for kind in [TransportKind::Shm, TransportKind::Tcp, TransportKind::Ofi] {
            let text = toml::to_string(&std::collections::BTreeMap::from([("t", kind)])).unwrap();
            assert_eq!(text.trim(), format!("t = \"{}\"", kind.name()));
        }
    }

    #[test]
    fn tcp_without_a_cluster_secret_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Arc::new(NodeMemory::new(
            NodeId(1),
            Arc::new(Doorbell::anonymous().unwrap()),
        ));
        let spec = TransportSpec {
            kind: TransportKind::Tcp,
            listen: None,
            ofi_provider: None,
            ofi_transfer_threshold: None,
        };
        let error = open_transport(
            dir.path(),
            NodeId(1),
            &spec,
            MapOptions::default(),
            &memory,
            Membership::new(1, [NodeId(1)]),
        )
        .err()
        .expect("no secret file");
        assert!(matches!(error, OpenError::Secret(_)), "{error}");
    }
}
