//! The verbs transport (cargo feature `rdma`): one-sided operations on RDMA NICs through
//! ibverbs, with reliable-connected queue pairs. See docs/verbs.md.
//!
//! **It has not run on RDMA hardware.** Its logic (work-request building, completion handling,
//! error mapping, the connection state machine, the TCP bootstrap, the NIC thread) is written
//! against the [`device::Verbs`] trait and unit-tested against an in-process fake of it
//! (`fake`); the implementation over `rdma-sys` ([`ibverbs`]) is compiled and linted, and only
//! its device-opening errors are tested here.
//!
//! Each node opens one device and port ([`VerbsTransport::start`]), registers every area of its
//! [`NodeMemory`], and runs two threads ([`VerbsNic`]): the NIC thread, which answers the
//! messages its peers send, and the bootstrap listener, where peers ask for a queue pair. What a
//! peer needs to reach a node is its [`VerbsCard`] (per area: id, access key, size, rkey, base
//! address; and the bootstrap address); queue pair details are per connection and go over the
//! bootstrap ([`bootstrap`]), after both ends prove they hold the cluster secret. This node's
//! connection to each peer is one RC queue pair with a completion queue of its own, made on
//! first use and remade after a failure ([`link`]).
//!
//! - READ and WRITE are RDMA_READ and RDMA_WRITE into the target's registration. CAS is
//!   ATOMIC_CMP_AND_SWP only where the target's card says its NIC's atomics may be used on its
//!   memory ([`VerbsConfig::atomics`], off by default: a NIC atomic is commonly atomic only
//!   against other NIC atomics, not the target CPU's, and the target's NIC thread and local
//!   transactions CAS the same lock words).
//! - PERSIST, NOTIFY, and CAS otherwise are messages: a SEND of the tcp transport's REQUEST
//!   frame to the target's NIC thread, which executes it on its own memory with
//!   [`crate::fabric::exec::execute`] and SENDs back a RESPONSE frame into a receive the initiator posted
//!   first.
//! - A batch's operations go in chains posted with one doorbell ([`work`]), in posting order; a
//!   batch to one peer runs while holding that peer's link, so batches to one peer from several
//!   threads run one after the other, and batches to different peers in parallel.
//! - Waiting polls the connection's completion queue [`SPIN_POLLS_MAX`] times, then sleeps on
//!   its completion channel; the NIC thread does the same on its own queue.
//!
//! Every operation is checked against the target's card (area, key, alignment, bounds) before
//! it is posted, giving the same [`AccessError`]s as the other transports; the NIC checks the
//! rkey and bounds again. A failed completion is [`OpError::Unreachable`] naming `verbs`, the
//! device, the verb, the target and the `ibv_wc_status` with what it means; it fails the rest of
//! that batch, puts the link in its error state (a queue pair in error cannot be used again),
//! and the next batch after [`VerbsConfig::reconnect_backoff`] makes a new connection. A batch
//! with no completion within [`VerbsConfig::op_timeout`] fails the same way, after moving the
//! queue pair to the error state so that its requests are flushed before their buffers go (a
//! buffer whose requests are not flushed within [`REAP_TIMEOUT`] is leaked instead). The node
//! keeps serving and reaching the others throughout.
//!
//! Membership fencing (docs/failures.md#fencing, [`VerbsNic::set_membership`]): the target's
//! NIC checks nothing of a READ, WRITE or NIC CAS but the queue pair and the memory key, so a
//! node that adopts a configuration moves every queue pair it has with a node outside it to the
//! error state and destroys it before `set_membership` returns; the removed node's requests on
//! them are then executed nowhere and complete in error at its NIC. The bootstrap refuses a
//! non-member before it makes a queue pair for it (NOT_MEMBER, reported as
//! [`OpError::NotMember`], kept like a failure until the reconnect backoff has passed but not
//! called unreachable); [`VerbsTransport::add_peer`] refuses a non-member's card; the NIC thread
//! executes messages under the membership's lock, and a non-member has no responder to send
//! them on. A member added by a later configuration connects as any peer does (its card added
//! again). Only hardware can show that a real RNIC refuses requests on a queue pair in the
//! error state, and what becomes of requests already on the wire when it is moved there
//! (docs/verbs.md#membership-fencing); the fake refuses them the way ibverbs specifies.
//!
//! Not in this slice, as for ofi: lease checks for one-sided operations (only the NIC thread's
//! messages check the lease), cards in the cluster directory, and registering areas on their
//! own ([`VerbsTransport::register_new_areas`]). The bootstrap's proofs do not bind the
//! configuration (a member's connection is not re-checked against the configuration it claims).
// Registering memory and posting work requests hand the device raw pointers into buffers this
// module keeps alive: each such call is an `unsafe` block saying how.
#![allow(unsafe_code)]

pub mod bootstrap;
pub mod device;
#[cfg(any(test, feature = "rdma-fake"))]
pub mod fake;
pub mod ibverbs;
pub mod link;
mod nic;
pub mod staging;
pub mod work;

use crate::addr::{NodeId, RegionId};
use crate::fabric::membership::ServedMembership;
use crate::fabric::memory::NodeMemory;
use crate::fabric::tcp::ClusterSecret;
use crate::fabric::tcp::frame::{self, Frame, Request, Response};
use crate::fabric::{Completion, Op, OpError, OpResult, Pending};
use crate::hash::FastMap;
use crate::region::{AccessError, AccessKey, Region, check_access};
use device::{CallError, QpCaps, QpEndpoint, QpTransition, Verbs, WcStatus, WorkCompletion};
use link::{Link, Phase};
use staging::Staging;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use work::Remote;

pub use nic::VerbsNic;

/// Polls of a completion queue before a waiter arms it and sleeps on its channel.
pub const SPIN_POLLS_MAX: u32 = 100;
/// How long one sleep on a completion channel lasts before the sleeper looks at its deadline
/// or stop flag again.
const SLEEP_SLICE: Duration = Duration::from_millis(50);
/// How long a failed or timed-out chain waits for the flush completions of what it had posted
/// (the queue pair was moved to the error state) before its staging buffer is leaked instead.
pub const REAP_TIMEOUT: Duration = Duration::from_millis(200);
/// Completions read per poll.
const ENTRIES_PER_POLL: usize = 16;
/// Entries of a connection's completion queue: a chain's sends and its reply's receive.
const CONNECTION_CQ_ENTRIES: u32 = 2 * work::CHAIN_WRS_MAX as u32;
/// Receives a connection keeps room for: one reply per chain.
const CONNECTION_RECV_MAX: u32 = 2;
/// Staging bytes a new connection starts with (grown when a chain needs more).
const STAGING_BYTES_MIN: usize = 64 << 10;

/// How a node opens the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsConfig {
    /// The device, as `ibv_devices` lists it: `mlx5_0`, `rxe0`.
    pub device: String,
    /// The port of the device (ibverbs numbers them from 1).
    pub port: u8,
    /// The index of the GID the queue pairs route by (RoCE needs one; see `show_gids`).
    pub gid_index: u8,
    /// Where the bootstrap listener binds: an address of this host its peers can reach (port 0
    /// picks a free one; the card carries the one bound).
    pub bootstrap_address: String,
    /// Let peers CAS this node's memory with NIC atomics (ATOMIC_CMP_AND_SWP) instead of
    /// messages to its NIC thread. Only where the NIC's atomics are known to be atomic against
    /// the CPU's on the same word; off by default.
    pub atomics: bool,
    /// How long a batch waits for its completions before the target is unreachable.
    pub op_timeout: Duration,
    /// How long each step of the bootstrap (connect, write, read) may take.
    pub bootstrap_timeout: Duration,
    /// How long after a failed connection batches fail at once before one is tried again.
    pub reconnect_backoff: Duration,
    /// The cluster's secret: the bootstrap proves it to peers and checks that they hold it
    /// (under a key derived for the bootstrap alone).
    pub secret: ClusterSecret,
}

impl VerbsConfig {
    /// `device`, port 1, GID index 0, the bootstrap on `bootstrap_address` proving `secret`,
    /// atomics off.
    pub fn new(device: &str, bootstrap_address: &str, secret: &ClusterSecret) -> VerbsConfig {
        VerbsConfig {
            secret: secret.clone(),
            device: device.to_string(),
            port: 1,
            gid_index: 0,
            bootstrap_address: bootstrap_address.to_string(),
            atomics: false,
            op_timeout: Duration::from_secs(5),
            bootstrap_timeout: Duration::from_secs(2),
            reconnect_backoff: Duration::from_millis(200),
        }
    }
}

/// Why the transport could not be opened or a peer added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbsError {
    /// No such device, or no RDMA stack at all: install rdma-core and the NIC's provider, or
    /// choose another device.
    #[error(
        "verbs device {device:?} is not available ({call}: {reason}): install rdma-core and the \
         NIC's provider, or choose another device"
    )]
    DeviceUnavailable {
        device: String,
        call: &'static str,
        reason: String,
    },
    /// The device lacks something the configuration asks for.
    #[error("verbs device {device:?} lacks {capability}: {what_to_do}")]
    MissingCapability {
        device: String,
        capability: &'static str,
        what_to_do: &'static str,
    },
    /// A device call failed while setting up.
    #[error("verbs device {device:?}: {call} failed: {reason}")]
    Setup {
        device: String,
        call: &'static str,
        reason: String,
    },
    /// A peer's card is unusable. Nothing was added.
    #[error("verbs device {device:?}: the card of {node} is unusable here: {reason}")]
    BadCard {
        device: String,
        node: NodeId,
        reason: String,
    },
}

/// One registered area, as a peer needs it to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsArea {
    pub id: RegionId,
    pub key: AccessKey,
    pub bytes: u64,
    /// The registration's remote key, which the NIC checks.
    pub rkey: u32,
    /// The registration's base address: remote addresses are `base + offset`.
    pub base: u64,
}

/// What a peer needs to reach a node. Queue pair numbers, LID, GID and packet sequence numbers
/// are per connection and go over the bootstrap, not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbsCard {
    pub node: NodeId,
    /// The node's device, for errors (devices are named per host, so it need not match).
    pub device: String,
    /// Where its bootstrap listener is.
    pub bootstrap: SocketAddr,
    /// Whether peers may CAS its memory with NIC atomics ([`VerbsConfig::atomics`]).
    pub nic_atomics: bool,
    pub areas: Vec<VerbsArea>,
}

/// One memory registration, holding its area mapped for as long as it exists.
struct Registration<V: Verbs> {
    area: VerbsArea,
    _region: Arc<Region>,
    mr: V::Mr,
}

/// This node's connection to one peer: its queue pair, completion queue and staging buffer.
struct Connection<V: Verbs> {
    qp: V::Qp,
    cq: V::Cq,
    staging: Staging<V>,
}

/// A peer, with the link this node reaches it by.
struct Peer<V: Verbs> {
    card: VerbsCard,
    /// Held for the whole of a batch to this peer.
    link: Mutex<Link<Connection<V>>>,
}

/// What the transport and the NIC threads share.
struct Node<V: Verbs> {
    verbs: V,
    memory: Arc<NodeMemory>,
    config: VerbsConfig,
    /// Only grows while the node lives; deregistered in `Drop`.
    registrations: Mutex<Vec<Registration<V>>>,
    peers: RwLock<FastMap<NodeId, Arc<Peer<V>>>>,
    /// The configuration whose members this node serves and reaches ([`VerbsNic::set_membership`]);
    /// any peer while there is none. Taken before `peers`, `responders` and a peer's link
    /// wherever it is held with them, and read-held while the NIC thread executes requests.
    membership: ServedMembership,
    /// The NIC thread's side: one queue pair per peer connected to this node.
    responders: Mutex<nic::Responders<V>>,
    /// The NIC thread's completion queue, shared by the responders' queue pairs. `None` only
    /// in `Drop`.
    nic_cq: Option<V::Cq>,
    bootstrap: SocketAddr,
    /// The key of the bootstrap's proofs ([`bootstrap::bootstrap_secret`]).
    bootstrap_secret: ClusterSecret,
    stop: AtomicBool,
    batch_seq: AtomicU64,
    /// Staging buffers leaked because the device might still write into them.
    buffers_leaked: AtomicU64,
}

impl<V: Verbs> Drop for Node<V> {
    /// Releases in ibverbs' order: queue pairs (so the device stops touching memory), then
    /// buffers and registrations, then completion queues. The NIC threads have ended (they
    /// held references to this node).
    fn drop(&mut self) {
        let responders = std::mem::take(self.responders.get_mut().expect(crate::POISONED));
        responders.retire_all(&self.verbs);
        let peers = std::mem::take(self.peers.get_mut().expect(crate::POISONED));
        for peer in peers.into_values() {
            let connection = peer.link.lock().expect(crate::POISONED).reset();
            if let Some(connection) = connection {
                teardown(&self.verbs, connection, true);
            }
        }
        for registration in self
            .registrations
            .get_mut()
            .expect(crate::POISONED)
            .drain(..)
        {
            self.verbs.deregister(registration.mr);
            // Its region is released here, after its registration.
        }
        if let Some(cq) = self.nic_cq.take() {
            self.verbs.destroy_cq(cq);
        }
    }
}

/// Releases a connection. `drained`: nothing is outstanding on it; otherwise its staging buffer
/// is leaked (the device may still write into it), and the rest released.
fn teardown<V: Verbs>(verbs: &V, connection: Connection<V>, drained: bool) -> bool {
    let Connection { qp, cq, staging } = connection;
    // Flushes anything outstanding; an error here (the queue pair is in error already) changes
    // nothing.
    let _ = verbs.modify_qp(&qp, QpTransition::Error);
    verbs.destroy_qp(qp);
    verbs.destroy_cq(cq);
    if drained {
        staging.release(verbs);
        false
    } else {
        drop(staging); // leaked: see `Staging`
        true
    }
}

impl<V: Verbs> Node<V> {
    fn device(&self) -> &str {
        self.verbs.device_name()
    }

    fn me(&self) -> NodeId {
        self.memory.node_id()
    }

    /// Whether this node serves and reaches `node`: a member of its configuration, or any node
    /// while it has been given none.
    fn admits(&self, node: NodeId) -> bool {
        self.membership.admits(node)
    }

    /// Forgets `peer`'s connection, tearing it down (its queue pair goes to the error state).
    /// Waits for a batch in flight to it to end (it holds the link).
    fn retire_peer(&self, peer: &Peer<V>) {
        let connection = peer.link.lock().expect(crate::POISONED).reset();
        if let Some(connection) = connection {
            teardown(&self.verbs, connection, true);
        }
    }

    fn peer(&self, node: NodeId) -> Option<Arc<Peer<V>>> {
        self.peers
            .read()
            .expect(crate::POISONED)
            .get(&node)
            .cloned()
    }

    fn unreachable(&self, node: NodeId, what: impl std::fmt::Display) -> OpError {
        OpError::Unreachable {
            node,
            reason: format!("verbs device {}: {what}", self.device()),
        }
    }

    /// The error of a failed completion of `verb` to `target`.
    fn failed_completion(&self, target: NodeId, verb: &str, wc: &WorkCompletion) -> OpError {
        self.unreachable(
            target,
            format!(
                "{verb} to {target} completed with {} (vendor error {:#x}): {}",
                wc.status.name(),
                wc.vendor_err,
                wc.status.meaning()
            ),
        )
    }
}

/// A fresh 24-bit packet sequence number.
fn random_psn() -> u32 {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    u32::from_le_bytes(bytes) & device::FIELD_24_MAX
}

/// Registers `region` on `verbs` for remote READ, WRITE and atomics.
fn register_area<V: Verbs>(verbs: &V, region: Arc<Region>) -> Result<Registration<V>, CallError> {
    let base = region.words().as_ptr() as *mut u8;
    // SAFETY: the registration's `_region` keeps the mapping alive until it is deregistered
    // (in `Node::drop`, or by `start_on` on its failure); the memory is only ever accessed
    // through atomic words by this process, so a NIC writing into it is what it is for.
    let mr = unsafe { verbs.register(base, region.len() as usize) }?;
    Ok(Registration {
        area: VerbsArea {
            id: region.id(),
            key: region.key(),
            bytes: region.len(),
            rkey: verbs.mr_keys(&mr).rkey,
            base: base as u64,
        },
        _region: region,
        mr,
    })
}

/// The initiator side of a node: its path to the others.
pub struct VerbsTransport<V: Verbs> {
    node: Arc<Node<V>>,
}

impl<V: Verbs> std::fmt::Debug for VerbsTransport<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsTransport")
            .field("node", &self.node.me())
            .field("device", &self.node.device())
            .finish()
    }
}

impl VerbsTransport<ibverbs::IbVerbs> {
    /// Opens `config.device` for the node whose memory is `memory` (see
    /// [`VerbsTransport::start_on`]).
    pub fn start(
        config: &VerbsConfig,
        memory: Arc<NodeMemory>,
    ) -> Result<(Self, VerbsNic<ibverbs::IbVerbs>), VerbsError> {
        let verbs = ibverbs::IbVerbs::open(&config.device, config.port, config.gid_index)?;
        VerbsTransport::start_on(verbs, config, memory)
    }
}

impl<V: Verbs> VerbsTransport<V> {
    /// Starts the transport on the opened device `verbs`: registers every area `memory` holds
    /// now, and starts the NIC thread and the bootstrap listener.
    pub fn start_on(
        verbs: V,
        config: &VerbsConfig,
        memory: Arc<NodeMemory>,
    ) -> Result<(VerbsTransport<V>, VerbsNic<V>), VerbsError> {
        let device = verbs.device_name().to_string();
        if config.atomics && !verbs.has_atomics() {
            return Err(VerbsError::MissingCapability {
                device,
                capability: "64-bit atomic compare-and-swap",
                what_to_do: "turn `atomics` off (CAS then goes to the NIC thread)",
            });
        }
        let setup = |e: CallError| VerbsError::Setup {
            device: device.clone(),
            call: e.call,
            reason: e.reason,
        };
        let listener = std::net::TcpListener::bind(&config.bootstrap_address).map_err(|e| {
            VerbsError::Setup {
                device: device.clone(),
                call: "bind the bootstrap listener",
                reason: format!("{}: {e}", config.bootstrap_address),
            }
        })?;
        let bootstrap = listener.local_addr().map_err(|e| VerbsError::Setup {
            device: device.clone(),
            call: "bind the bootstrap listener",
            reason: e.to_string(),
        })?;
        let nic_cq = verbs.create_cq(nic::NIC_CQ_ENTRIES).map_err(setup)?;
        let mut registrations = Vec::new();
        for region in memory.areas() {
            match register_area(&verbs, region) {
                Ok(registration) => registrations.push(registration),
                Err(e) => {
                    for registration in registrations {
                        verbs.deregister(registration.mr);
                    }
                    verbs.destroy_cq(nic_cq);
                    return Err(setup(e));
                }
            }
        }
        let node = Arc::new(Node {
            verbs,
            memory,
            config: config.clone(),
            registrations: Mutex::new(registrations),
            peers: RwLock::new(FastMap::default()),
            membership: ServedMembership::new(None),
            responders: Mutex::new(nic::Responders::default()),
            nic_cq: Some(nic_cq),
            bootstrap,
            bootstrap_secret: bootstrap::bootstrap_secret(&config.secret),
            stop: AtomicBool::new(false),
            batch_seq: AtomicU64::new(1),
            buffers_leaked: AtomicU64::new(0),
        });
        let nic = VerbsNic::spawn(node.clone(), listener).map_err(|e| VerbsError::Setup {
            device: device.clone(),
            call: "spawn the NIC thread",
            reason: e.to_string(),
        })?;
        Ok((VerbsTransport { node }, nic))
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        self.node.device()
    }

    /// How many staging buffers were leaked so far: their requests got no completion, not even
    /// a flush, so the device might still write into them.
    pub fn buffers_leaked(&self) -> u64 {
        self.node.buffers_leaked.load(Ordering::Relaxed)
    }

    /// This node's card, for its peers.
    pub fn card(&self) -> VerbsCard {
        VerbsCard {
            node: self.node.me(),
            device: self.device().to_string(),
            bootstrap: self.node.bootstrap,
            nic_atomics: self.node.config.atomics,
            areas: self
                .node
                .registrations
                .lock()
                .expect(crate::POISONED)
                .iter()
                .map(|r| r.area.clone())
                .collect(),
        }
    }

    /// Registers the areas of the node's memory whose ids have no registration yet and returns
    /// their ids. Peers reach them once they are given the node's new card.
    pub fn register_new_areas(&self) -> Result<Vec<RegionId>, VerbsError> {
        let mut registrations = self.node.registrations.lock().expect(crate::POISONED);
        let mut added = Vec::new();
        for region in self.node.memory.areas() {
            if registrations.iter().any(|r| r.area.id == region.id()) {
                continue;
            }
            let registration =
                register_area(&self.node.verbs, region).map_err(|e| VerbsError::Setup {
                    device: self.device().to_string(),
                    call: e.call,
                    reason: e.reason,
                })?;
            added.push(registration.area.id);
            registrations.push(registration);
        }
        Ok(added)
    }

    /// Makes `card`'s node reachable, and lets it connect to this node's NIC thread. A card for
    /// a node already known replaces it (a restarted node): its connection is remade. A node
    /// that is not a member of the configuration this node serves
    /// ([`VerbsNic::set_membership`]) is refused, naming the configuration.
    pub fn add_peer(&self, card: VerbsCard) -> Result<(), VerbsError> {
        let bad = |reason: String| VerbsError::BadCard {
            device: self.device().to_string(),
            node: card.node,
            reason,
        };
        if card.node == self.node.me() {
            return Err(bad("it is this node's own".into()));
        }
        if card.bootstrap.ip().is_unspecified() || card.bootstrap.port() == 0 {
            return Err(bad(format!(
                "its bootstrap address {} is not one a peer can connect to",
                card.bootstrap
            )));
        }
        for (index, area) in card.areas.iter().enumerate() {
            if area.base.checked_add(area.bytes).is_none() {
                return Err(bad(format!("area {} ends past the address space", area.id)));
            }
            if card.areas[..index].iter().any(|a| a.id == area.id) {
                return Err(bad(format!("area {} is listed twice", area.id)));
            }
        }
        let node = card.node;
        // Under the membership's lock, so that a node removed meanwhile is not added back.
        let membership = self.node.membership.read().expect(crate::POISONED);
        if let Some(membership) = membership.as_ref()
            && !membership.contains(node)
        {
            return Err(bad(format!(
                "it is not a member of configuration {}, which this node serves: add it once \
                 it is a member of the configuration this node adopts",
                membership.config()
            )));
        }
        let old = self.node.peers.write().expect(crate::POISONED).insert(
            node,
            Arc::new(Peer {
                card,
                link: Mutex::new(Link::default()),
            }),
        );
        drop(membership);
        if let Some(old) = old {
            self.node.retire_peer(&old);
        }
        Ok(())
    }

    /// Forgets a peer: operations on it fail as [`OpError::UnknownNode`] from now on.
    pub fn remove_peer(&self, node: NodeId) {
        let old = self
            .node
            .peers
            .write()
            .expect(crate::POISONED)
            .remove(&node);
        if let Some(old) = old {
            self.node.retire_peer(&old);
        }
    }

    /// Where this node's link to `node` is, if it is a peer.
    pub fn link_phase(&self, node: NodeId) -> Option<Phase> {
        let peer = self.node.peer(node)?;
        let phase = peer.link.lock().expect(crate::POISONED).phase();
        Some(phase)
    }

    /// Whether CAS to `card`'s node is a NIC atomic rather than a message.
    fn cas_by_nic(&self, card: &VerbsCard) -> bool {
        card.nic_atomics && self.node.verbs.has_atomics()
    }

    /// Posts `ops` to `target` and drives them to completion, in order.
    pub fn post(&self, target: NodeId, ops: &[Op]) -> Pending {
        let Some(peer) = self.node.peer(target) else {
            return Pending::ready(
                ops.iter()
                    .map(|_| Err(OpError::UnknownNode { node: target }))
                    .collect(),
            );
        };
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        // Checked against the card first: what fails there, or needs nothing moved, is done.
        let mut steps = Vec::with_capacity(ops.len());
        let mut indexes = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            match self.prepare(&peer.card, op, index) {
                Ok(Ok(step)) => {
                    steps.push(step);
                    indexes.push(index);
                }
                Ok(Err(done)) => results[index] = Some(Ok(done)),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        if !steps.is_empty() {
            let mut link = peer.link.lock().expect(crate::POISONED);
            let outcome = self.run(&peer.card, &mut link, &steps, &indexes, ops, &mut results);
            if let Err(error) = outcome {
                for result in results.iter_mut().filter(|r| r.is_none()) {
                    *result = Some(Err(error.clone()));
                }
            }
        }
        Pending::ready(
            results
                .into_iter()
                .map(|r| r.expect("every operation has a result"))
                .collect(),
        )
    }

    /// What `op` asks of the target once checked against its card, or its completion if it
    /// moves nothing (a zero-length READ or WRITE).
    fn prepare(
        &self,
        card: &VerbsCard,
        op: &Op,
        index: usize,
    ) -> Result<Result<Remote, Completion>, OpError> {
        let message = || Remote::Message {
            request: frame::encode_to_vec(&Frame::Request(Request {
                // The real id is set when the chain is laid out; see `request_id`.
                request_id: index as u64,
                op: op.clone(),
            })),
        };
        Ok(Ok(match op {
            Op::Notify => message(),
            Op::Persist { addr, key, len } => {
                check(card, *addr, *key, *len as u64)?;
                message()
            }
            Op::Read { len: 0, addr, key } => {
                check(card, *addr, *key, 0)?;
                return Ok(Err(Completion::Read(Vec::new())));
            }
            Op::Write { data, addr, key } if data.is_empty() => {
                check(card, *addr, *key, 0)?;
                return Ok(Err(Completion::Write));
            }
            Op::Read { addr, key, len } => {
                let area = check(card, *addr, *key, *len as u64)?;
                Remote::Read {
                    remote_addr: area.base + addr.offset() as u64,
                    rkey: area.rkey,
                    len: *len,
                }
            }
            Op::Write { addr, key, data } => {
                let area = check(card, *addr, *key, data.len() as u64)?;
                Remote::Write {
                    remote_addr: area.base + addr.offset() as u64,
                    rkey: area.rkey,
                    data: data.clone(),
                }
            }
            Op::Cas {
                addr,
                key,
                expected,
                new,
            } => {
                let area = check(card, *addr, *key, 8)?;
                if !self.cas_by_nic(card) {
                    message()
                } else {
                    Remote::CompareSwap {
                        remote_addr: area.base + addr.offset() as u64,
                        rkey: area.rkey,
                        expected: *expected,
                        new: *new,
                    }
                }
            }
        }))
    }

    /// Connects if needed, then posts `steps` chain by chain, filling `results` (at `indexes`).
    /// An error means the target is unreachable: the link is in Error, and every operation
    /// without a result fails with it.
    fn run(
        &self,
        card: &VerbsCard,
        link: &mut Link<Connection<V>>,
        steps: &[Remote],
        indexes: &[usize],
        ops: &[Op],
        results: &mut [Option<OpResult>],
    ) -> Result<(), OpError> {
        let node = &self.node;
        let target = card.node;
        if link.connection().is_none() {
            // A batch that found the peer before `set_membership` dropped it must not connect
            // to it again: the membership was replaced before the peer's link was reset, and
            // this runs under the link's lock.
            if !node.admits(target) {
                return Err(OpError::UnknownNode { node: target });
            }
            let now = node.memory.clock().now();
            let refused_in = link.refused_in();
            link.start_connecting(now, node.config.reconnect_backoff)
                .map_err(|reason| match refused_in {
                    Some(config) => OpError::NotMember {
                        node: target,
                        config,
                    },
                    None => OpError::Unreachable {
                        node: target,
                        reason,
                    },
                })?;
            match self.connect(card) {
                Ok(connection) => link.connected(connection),
                Err(ConnectFailure::NotMember { config, reason }) => {
                    link.refused(reason, config, node.memory.clock().now());
                    return Err(OpError::NotMember {
                        node: target,
                        config,
                    });
                }
                Err(ConnectFailure::Failed(reason)) => {
                    let error = node.unreachable(target, reason);
                    let OpError::Unreachable { reason, .. } = &error else {
                        unreachable!("built as unreachable")
                    };
                    link.failed(reason.clone(), node.memory.clock().now());
                    return Err(error);
                }
            }
        }
        for chain in work::chains(steps) {
            let connection = link.connection().expect("connected above");
            let outcome = self.run_chain(
                target,
                connection,
                &steps[chain.clone()],
                &ops_at(ops, &indexes[chain.clone()]),
            );
            for (offset, result) in outcome.results.into_iter().enumerate() {
                results[indexes[chain.start + offset]] = Some(result);
            }
            if let Some(error) = outcome.failure {
                let OpError::Unreachable { reason, .. } = &error else {
                    unreachable!("chain failures are unreachable errors")
                };
                let broken = link.failed(reason.clone(), node.memory.clock().now());
                let connection = broken.expect("it was connected");
                if teardown(&node.verbs, connection, outcome.drained) {
                    node.buffers_leaked.fetch_add(1, Ordering::Relaxed);
                }
                return Err(error);
            }
        }
        Ok(())
    }

    /// Makes a new connection to `card`'s node: a queue pair in INIT, the bootstrap exchange,
    /// then RTR and RTS.
    fn connect(&self, card: &VerbsCard) -> Result<Connection<V>, ConnectFailure> {
        let node = &self.node;
        let verbs = &node.verbs;
        let target = card.node;
        let context = |e: &dyn std::fmt::Display| {
            format!("connecting to {target} (bootstrap {}): {e}", card.bootstrap)
        };
        let cq = verbs
            .create_cq(CONNECTION_CQ_ENTRIES)
            .map_err(|e| ConnectFailure::Failed(context(&e)))?;
        let caps = QpCaps {
            send_wr_max: work::CHAIN_WRS_MAX as u32,
            recv_wr_max: CONNECTION_RECV_MAX,
        };
        let qp = match verbs.create_qp(&cq, caps) {
            Ok(qp) => qp,
            Err(e) => {
                verbs.destroy_cq(cq);
                return Err(ConnectFailure::Failed(context(&e)));
            }
        };
        let failed = |e: &dyn std::fmt::Display| ConnectFailure::Failed(context(e));
        let made = (|| {
            verbs
                .modify_qp(&qp, QpTransition::Init)
                .map_err(|e| failed(&e))?;
            let (lid, gid) = verbs.port_address();
            let psn = random_psn();
            let mine = QpEndpoint {
                qpn: verbs.qp_num(&qp),
                psn,
                lid,
                gid,
            };
            let remote = bootstrap::request(
                card.bootstrap,
                &node.bootstrap_secret,
                node.me(),
                target,
                mine,
                node.config.bootstrap_timeout,
            )
            .map_err(|e| match e {
                bootstrap::BootstrapError::NotMember { config } => ConnectFailure::NotMember {
                    config,
                    reason: context(&e),
                },
                other => failed(&other),
            })?;
            verbs
                .modify_qp(&qp, QpTransition::ReadyToReceive { remote })
                .map_err(|e| failed(&e))?;
            verbs
                .modify_qp(&qp, QpTransition::ReadyToSend { psn })
                .map_err(|e| failed(&e))?;
            Staging::new(verbs, STAGING_BYTES_MIN).map_err(|e| failed(&e))
        })();
        match made {
            Ok(staging) => Ok(Connection { qp, cq, staging }),
            Err(reason) => {
                verbs.destroy_qp(qp);
                verbs.destroy_cq(cq);
                Err(reason)
            }
        }
    }

    /// Posts one chain and waits for it. See [`ChainOutcome`].
    fn run_chain(
        &self,
        target: NodeId,
        connection: &mut Connection<V>,
        chain: &[Remote],
        ops: &[&Op],
    ) -> ChainOutcome {
        let node = &self.node;
        let verbs = &node.verbs;
        let batch = node.batch_seq.fetch_add(1, Ordering::Relaxed);
        let layout = work::layout(chain);
        if connection.staging.bytes() < layout.bytes {
            let grown = Staging::new(verbs, layout.bytes.max(2 * connection.staging.bytes()));
            match grown {
                Ok(grown) => std::mem::replace(&mut connection.staging, grown).release(verbs),
                Err(e) => {
                    return ChainOutcome::failed_before_posting(
                        node.unreachable(target, format!("growing the staging buffer: {e}")),
                    );
                }
            }
        }
        let staging = &mut connection.staging;
        for (step, &(offset, _)) in chain.iter().zip(&layout.spans) {
            match step {
                Remote::Write { data, .. } => staging.write_at(offset, data),
                Remote::Message { request } => {
                    let request =
                        with_request_id(request, work::wr_id(batch, chain.len() - 1, false));
                    staging.write_at(offset, &request);
                }
                Remote::Read { .. } | Remote::CompareSwap { .. } => {}
            }
        }
        let (base, lkey) = (staging.addr(0), staging.keys().lkey);
        let wrs = work::send_wrs(chain, &layout, base, lkey, batch);
        let reply = work::reply_wr(chain, &layout, base, lkey, batch);
        // What will complete for sure, success or not: the signaled last send, and the reply's
        // receive.
        let mut expected: Vec<u64> = vec![wrs.last().expect("a chain is not empty").wr_id];
        if let Some(reply) = reply {
            // SAFETY: the receive lands in the connection's staging buffer, registered on this
            // device; it is not accessed until the receive's completion is read, or the queue
            // pair is destroyed (teardown) or the buffer leaked.
            let posted = unsafe { verbs.post_recv(&connection.qp, &[reply]) };
            if let Err(e) = posted {
                return ChainOutcome::failed_before_posting(node.unreachable(
                    target,
                    format!("posting the receive for a reply from {target}: {e}"),
                ));
            }
            expected.push(reply.wr_id);
        }
        let mut wait = Wait::new(node, target, batch, expected);
        // SAFETY: as for the receive: every element is in the staging buffer, untouched until
        // the chain's completions are read (`wait`), or leaked.
        let posted = unsafe { verbs.post_send(&connection.qp, &wrs) };
        if let Err(e) = posted {
            // Those before the refused one are posted: flushed, and all of the chain fails.
            // The refused one and those after it are not: the chain's last (signaled) request
            // never completes, and the reply's receive is flushed by the error state.
            let verb = wrs[e.bad_index.min(wrs.len() - 1)].kind.verb();
            wait.fail(
                0,
                node.unreachable(target, format!("posting {verb} to {target}: {e}")),
            );
            let last = wrs.last().expect("a chain is not empty").wr_id;
            wait.expected.retain(|&id| id != last);
            let _ = verbs.modify_qp(&connection.qp, QpTransition::Error);
        }
        let drained = wait.run(connection, chain, &wrs);
        let staging = &connection.staging;
        let done = wait
            .failed_at
            .as_ref()
            .map_or(chain.len(), |(position, _)| *position);
        let mut results = Vec::with_capacity(done);
        for (position, step) in chain.iter().enumerate().take(done) {
            let (offset, len) = layout.spans[position];
            results.push(match step {
                Remote::Read { .. } => Ok(Completion::Read(staging.read_at(offset, len))),
                Remote::Write { .. } => Ok(Completion::Write),
                Remote::CompareSwap { .. } => {
                    let bytes = staging.read_at(offset, 8);
                    Ok(Completion::Cas {
                        previous: u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                    })
                }
                Remote::Message { .. } => {
                    let (reply_offset, reply_room) =
                        layout.reply.expect("a message chain has a reply");
                    // The device's count, kept within the receive buffer whatever it says.
                    let reply_len = wait.reply_len.expect("the reply arrived").min(reply_room);
                    let bytes = staging.read_at(reply_offset, reply_len);
                    let expected = work::wr_id(batch, position, false);
                    decode_response(target, expected, &bytes, ops[position])
                }
            });
        }
        ChainOutcome {
            results,
            failure: wait.failed_at.map(|(_, error)| error),
            drained,
        }
    }
}

/// Why a connection was not made.
enum ConnectFailure {
    /// The peer refused this node as not a member of its configuration `config`: a definite
    /// answer, kept until the backoff has passed like a failure, but not reported as the peer
    /// being unreachable.
    NotMember { config: u64, reason: String },
    /// Anything else (the bootstrap, a queue pair transition, a device call): the peer is
    /// unreachable for now.
    Failed(String),
}

/// The operations at `indexes`.
fn ops_at<'a>(ops: &'a [Op], indexes: &[usize]) -> Vec<&'a Op> {
    indexes.iter().map(|&index| &ops[index]).collect()
}

/// `request` (a REQUEST frame) with its request id replaced by `id`.
fn with_request_id(request: &[u8], id: u64) -> Vec<u8> {
    let at = frame::LEN_BYTES + 1;
    let mut out = request.to_vec();
    out[at..at + 8].copy_from_slice(&id.to_le_bytes());
    out
}

/// What became of a chain: the results of its operations up to the first that failed, and the
/// failure, if any (the target is then unreachable for the rest of the batch).
struct ChainOutcome {
    results: Vec<OpResult>,
    failure: Option<OpError>,
    /// Every request of the chain has completed (or was never posted): its buffer may go.
    drained: bool,
}

impl ChainOutcome {
    fn failed_before_posting(error: OpError) -> ChainOutcome {
        ChainOutcome {
            results: Vec::new(),
            failure: Some(error),
            drained: true,
        }
    }
}

/// Waiting for one chain's completions on its connection's queue.
struct Wait<'a, V: Verbs> {
    node: &'a Node<V>,
    target: NodeId,
    batch: u64,
    /// Work requests whose completion will come, success or not, and has not yet.
    expected: Vec<u64>,
    /// The first request that failed (position in the chain) and why.
    failed_at: Option<(usize, OpError)>,
    reply_len: Option<usize>,
}

impl<'a, V: Verbs> Wait<'a, V> {
    fn new(node: &'a Node<V>, target: NodeId, batch: u64, expected: Vec<u64>) -> Wait<'a, V> {
        Wait {
            node,
            target,
            batch,
            expected,
            failed_at: None,
            reply_len: None,
        }
    }

    /// Records a failure at `position`, unless one at or before it is known.
    fn fail(&mut self, position: usize, error: OpError) {
        if self.failed_at.as_ref().is_none_or(|(at, _)| position < *at) {
            self.failed_at = Some((position, error));
        }
    }

    /// Reads completions until every expected one has come; spins, then sleeps on the channel.
    /// On the first failure (an error completion, or nothing within the operation timeout) the
    /// queue pair goes to the error state, which flushes the rest, and the wait goes on for
    /// their flush completions until [`REAP_TIMEOUT`]. Returns whether everything completed.
    fn run(
        &mut self,
        connection: &Connection<V>,
        chain: &[Remote],
        wrs: &[device::SendWr],
    ) -> bool {
        let node = self.node;
        let verbs = &node.verbs;
        let clock = node.memory.clock();
        let started = clock.now();
        let mut deadline = started + node.config.op_timeout;
        let mut broken = self.failed_at.is_some();
        if broken {
            deadline = clock.now() + REAP_TIMEOUT;
        }
        let mut entries = Vec::with_capacity(ENTRIES_PER_POLL);
        let mut polls = 0u32;
        while !self.expected.is_empty() {
            entries.clear();
            let mut polled = verbs.poll_cq(&connection.cq, &mut entries, ENTRIES_PER_POLL);
            if matches!(polled, Ok(0)) && polls >= SPIN_POLLS_MAX {
                // Armed before the last look, so a completion after it still wakes the sleep.
                polled = verbs
                    .arm_cq(&connection.cq)
                    .and_then(|()| verbs.poll_cq(&connection.cq, &mut entries, ENTRIES_PER_POLL));
                if matches!(polled, Ok(0)) {
                    let left = deadline.saturating_duration_since(clock.now());
                    polled = verbs
                        .wait_cq(&connection.cq, left.min(SLEEP_SLICE))
                        .map(|_| 0);
                }
            }
            if let Err(e) = polled {
                self.fail(0, node.unreachable(self.target, e));
                return false;
            }
            polls = polls.saturating_add(1);
            for wc in &entries {
                let (batch, position, _) = work::parse_wr_id(wc.wr_id);
                if batch != self.batch & ((1 << 48) - 1) {
                    continue; // a completion of an earlier chain, read after it gave up
                }
                self.expected.retain(|&id| id != wc.wr_id);
                assert!(
                    position < chain.len(),
                    "position={position} len={}",
                    chain.len()
                );
                if wc.status == WcStatus::Success {
                    if wc.wr_id & 1 == 1 {
                        self.reply_len = Some(wc.byte_len as usize);
                    }
                    continue;
                }
                let verb = if wc.wr_id & 1 == 1 {
                    "receive of the reply"
                } else {
                    wrs[position].kind.verb()
                };
                let error = node.failed_completion(self.target, verb, wc);
                self.fail(position, error);
            }
            if !broken && self.failed_at.is_some() {
                broken = true;
                let _ = verbs.modify_qp(&connection.qp, QpTransition::Error);
                deadline = clock.now() + REAP_TIMEOUT;
            }
            if self.expected.is_empty() {
                break;
            }
            if clock.now() > deadline {
                if broken {
                    return false;
                }
                self.fail(
                    0,
                    node.unreachable(
                        self.target,
                        format!(
                            "no completion from {} within {:?}",
                            self.target, node.config.op_timeout
                        ),
                    ),
                );
                broken = true;
                let _ = verbs.modify_qp(&connection.qp, QpTransition::Error);
                deadline = clock.now() + REAP_TIMEOUT;
            }
        }
        true
    }
}

/// The result a RESPONSE frame in `reply` carries, if it answers the request `expected`.
fn decode_response(target: NodeId, expected: u64, reply: &[u8], op: &Op) -> OpResult {
    let protocol = |reason: String| OpError::Protocol {
        node: target,
        reason: format!("the reply to a verbs {} message: {reason}", op.name()),
    };
    match frame::decode(reply) {
        Ok(Some((Frame::Response(Response { request_id, result }), _))) => {
            if request_id != expected {
                return Err(protocol(format!(
                    "response to request {request_id:#x}, expected {expected:#x}"
                )));
            }
            result
        }
        Ok(Some((other, _))) => Err(protocol(format!(
            "kind {} instead of a response",
            other.kind()
        ))),
        Ok(None) => Err(protocol("a truncated response".into())),
        Err(e) => Err(protocol(e.to_string())),
    }
}

/// Checks an operation against the target's card: the same errors as the target would give.
fn check(
    card: &VerbsCard,
    addr: crate::addr::Addr,
    key: AccessKey,
    len: u64,
) -> Result<&VerbsArea, OpError> {
    let area =
        card.areas
            .iter()
            .find(|a| a.id == addr.region())
            .ok_or(AccessError::UnknownRegion {
                node: card.node,
                region: addr.region(),
            })?;
    check_access(area.id, area.key, area.bytes, key, addr, len)?;
    Ok(area)
}

#[cfg(test)]
mod tests;
