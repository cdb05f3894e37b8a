//! The ofi transport (cargo feature `ofi`): one-sided operations through libfabric, so that the
//! same fabric API can run on RDMA NICs (`verbs;ofi_rxm`, `efa`) and, here, on its software
//! providers over loopback (`tcp;ofi_rxm`, `sockets`, `shm`). See docs/ofi.md.
//!
//! Each node opens the provider once ([`OfiTransport::start`]): one domain, two reliable
//! datagram endpoints (a target side and an initiator side) with a completion queue each, and
//! every area of its [`NodeMemory`] registered as a memory region. What a peer needs to reach
//! it (endpoint names, and per area its id, access key, size, registration key and base) is its
//! [`OfiCard`]: handed over with [`OfiTransport::add_peer`], or found on demand through a card
//! source ([`OfiTransport::find_cards_with`]; node processes read it from the node's manifest,
//! [`card`]). Connections are the provider's, made on first use and reused.
//!
//! - READ and WRITE are `fi_read`/`fi_write` into the target's registration, CAS is
//!   `fi_compare_atomic` (64-bit compare-and-swap) where the provider has atomics known to be
//!   atomic against the target CPU's (the software providers here). Nothing on the
//!   target's CPU runs for them, except the progress the provider needs (below).
//! - PERSIST, NOTIFY, and CAS on any other provider (or with [`OfiConfig::atomics`] off) are
//!   messages (`fi_tsend`, the tcp transport's REQUEST frame) to the target's NIC
//!   thread, which executes them on its own memory with [`exec::execute`] (flush of the range,
//!   doorbell ring, CPU compare-and-swap) and answers with a RESPONSE frame, as the tcp
//!   transport's NIC thread does. libfabric has no portable remote flush; this is the route
//!   instead.
//! - The target's NIC thread sleeps on its completion queue's wait object (`fi_cq_sread`): on
//!   providers with manual data progress (`tcp;ofi_rxm`, `shm`) it is also what makes incoming
//!   READ and WRITE progress, so it must run for the node to be reachable.
//! - A batch is driven to completion inside [`OfiTransport::post`], so
//!   [`crate::fabric::Pending`] is always ready; the batches of several threads are in flight
//!   at once, one waiter at a time reads the initiator queue and files each completion under
//!   its batch for that batch's waiter (`Mailboxes`), so a batch to a silent peer holds up
//!   only itself. On a
//!   provider that promises to place RMA in posting order (`sockets`), a run of READ/WRITE/CAS is
//!   posted at once (`FI_MORE` on all but the last: one doorbell); on one that does not
//!   (`tcp;ofi_rxm`, `shm`), each waits for the previous one's delivery
//!   (`FI_DELIVERY_COMPLETE`), which keeps the fabric's rule that a batch executes in order.
//! - Waiting spins for [`SPIN_POLLS_MAX`] polls, then sleeps on the queue's wait object.
//! - One object's transfer between nodes ([`transfer`]): by copy, messages the owner's NIC
//!   thread answers from its memory, or zero copy, a READ of the range the owner's NIC thread
//!   registers for that transfer alone; [`transfer::TransferPolicy`] chooses by size.
//!
//! Every operation is checked against the target's card (area, key, alignment, bounds) before it
//! is posted, giving the same [`AccessError`]s as the other transports; the provider checks the
//! registration key and bounds again on its side. A provider failure (a peer gone, a stale card)
//! is [`OpError::Unreachable`] naming the provider, the call and the target, and fails the rest
//! of that batch only: the node keeps serving and reaching the others. A batch that gets no
//! completion within [`OP_TIMEOUT`] fails the same way. What a failed batch still has posted is
//! withdrawn (`fi_cancel`: a message's reply receive) and its completion read before the buffer
//! is freed; what cannot be withdrawn in time is leaked, since the provider may still write into
//! it.
//!
//! The NIC thread serves the members of the node's configuration only ([`OfiNic::set_membership`]):
//! it neither executes nor answers another node's messages, and every area is registered once
//! per member, so that a removed node's registrations are closed and the provider refuses its
//! one-sided operations (the fence). Not built: lease checks for one-sided operations (only the
//! NIC thread's messages check the lease), registering areas on their own (an area placed after start is registered when the owner calls
//! [`OfiTransport::register_new_areas`]; an area replaced under a registered id keeps the old
//! registration), and a new connection after a provider broke one (on
//! `tcp;ofi_rxm` a remote access error leaves that pair of endpoints unusable, as a queue pair's
//! error state does on RDMA hardware; the node's other pairs are unaffected).
// Posting to libfabric hands it raw pointers into buffers this module keeps alive: each such
// call is an `unsafe` block saying how.
#![allow(unsafe_code)]

pub mod card;
pub mod sys;
pub mod transfer;

use crate::addr::{NodeId, RegionId};
use crate::fabric::membership::{Membership, ServedMembership};
use crate::fabric::memory::NodeMemory;
use crate::fabric::tcp::frame::{self, Frame, Request, Response};
use crate::fabric::{Completion, Op, OpError, OpResult, Pending, exec};
use crate::hash::FastMap;
use crate::region::{AccessError, AccessKey, Region, check_access};
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;
use sys::{CqEntry, Handle, Side};

/// Polls of a completion queue before a waiter sleeps on its wait object. Small: on providers
/// that progress in a thread of their own (`sockets`), a spinning waiter takes the core that
/// thread needs; on two cores, 2,000 polls made the ring test ten times slower than 100.
pub const SPIN_POLLS_MAX: u32 = 100;
/// How long a post the provider is too busy to take sleeps between tries, after
/// [`SPIN_POLLS_MAX`] tries spinning.
const BUSY_SLEEP: Duration = Duration::from_micros(200);
/// How long one sleep on a completion queue lasts before the sleeper looks at its stop flag.
const SLEEP_SLICE_MS: i32 = 50;
/// How long an initiator waits for a batch's completions before it gives up on the target, on
/// the node's clock (docs/failures.md#clock), like every deadline of the fabric; the sleeps on a
/// completion queue that wake a waiter to look at it are real time.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch waits for the completions of what it withdrew (`fi_cancel`: a message's
/// receive, once its send failed or the target did not answer) before it leaks their buffers
/// instead: the provider writes a withdrawn receive's completion at once, so this is only
/// reached for what it could not withdraw (an RMA operation still under way).
const WITHDRAW_REAP_TIMEOUT: Duration = Duration::from_millis(200);
/// Receive buffers the NIC thread keeps posted.
const RECEIVES_POSTED: usize = 16;
/// Largest message (request or response frame) either side sends: CAS, PERSIST and NOTIFY
/// requests are under 50 bytes, a response at most a reason of [`frame::REASON_BYTES_MAX`].
const MESSAGE_BYTES_MAX: usize = 2048;
/// Completion entries read per call.
const ENTRIES_PER_READ: usize = 16;
/// A message's tag: the sender's node id in the top 16 bits, then [`TAG_TRANSFER_BIT`], then
/// the batch's sequence number in the low 47 bits (a reply receive matches its exact tag, so the
/// sequence must not come round while a late reply to an earlier batch may still be parked at
/// the initiator: at a million batches a second, 2^47 takes four years).
const TAG_NODE_SHIFT: u32 = 48;
/// The tag bit that marks a message of the hybrid transfer ([`transfer`]) rather than a
/// REQUEST frame; the sequence number is below it.
const TAG_TRANSFER_BIT: u64 = 1 << 47;

/// The tag of a message `me` sends in batch `batch`: the reply comes back with the same one.
fn message_tag(me: NodeId, batch: u64, transfer: bool) -> u64 {
    let seq = batch & (TAG_TRANSFER_BIT - 1);
    let kind = if transfer { TAG_TRANSFER_BIT } else { 0 };
    ((me.0 as u64) << TAG_NODE_SHIFT) | kind | seq
}

/// The sender a message's tag names.
fn tag_sender(tag: u64) -> NodeId {
    NodeId((tag >> TAG_NODE_SHIFT) as u16)
}

/// The request id of a REQUEST frame sent in batch `batch` by a node whose initiator endpoint's
/// name has fingerprint `fingerprint`: the fingerprint in the high 32 bits, the batch's low 32
/// bits below. The RESPONSE echoes it, and the initiator checks it.
fn request_id(fingerprint: u32, batch: u64) -> u64 {
    ((fingerprint as u64) << 32) | (batch & 0xffff_ffff)
}

/// 32 bits of an endpoint name (FNV-1a, folded). Every request carries its sender's (a REQUEST
/// frame in its request id, a transfer request in its last field), so that a NIC thread holding
/// the card of an earlier process of the same node id (a client that restarted, with new
/// endpoints) sees that it would answer the wrong endpoint and looks the card up again. Two
/// names share one with odds of 1 in 2^32; the earlier process's endpoint is then answered
/// instead, and the new one's requests time out until its card is looked up for another reason.
fn name_fingerprint(name: &[u8]) -> u32 {
    let hash = name.iter().fold(0xcbf2_9ce4_8422_2325u64, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    (hash ^ (hash >> 32)) as u32
}

/// Providers whose atomics are known to be atomic against the target CPU's own atomics on the
/// same word. Acre's CAS must be: the target's NIC thread and its local transactions CAS the
/// same lock words. On these software providers the provider's own code on the target runs the
/// CAS with the CPU (the conformance suite's concurrent CAS case checks it, local and remote
/// threads together). On RDMA NICs (`verbs`, `efa`) a NIC atomic is commonly atomic only
/// against other NIC atomics, so until that is verified on a device, CAS there goes through
/// the target's NIC thread.
const CPU_COHERENT_ATOMICS: &[&str] = &["tcp;ofi_rxm", "sockets", "shm"];

/// Whether `provider`'s (as libfabric names it) atomics are known to be atomic against the
/// target CPU's compare-and-swap, so that CAS may use them.
pub fn atomics_are_cpu_coherent(provider: &str) -> bool {
    CPU_COHERENT_ATOMICS.contains(&provider)
}

/// A first batch number in `[1, 2^40)`; a tag keeps its low 31 bits, which differ from an
/// earlier transport's of the same node with odds of 1 in 2^31.
fn random_batch_start() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    (u64::from_le_bytes(bytes) >> 24).max(1)
}
/// The loopback address endpoints listen on unless told otherwise.
pub const ADDRESS_DEFAULT: &str = "127.0.0.1";

/// How a node opens the transport.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfiConfig {
    /// The libfabric provider: `tcp;ofi_rxm`, `verbs;ofi_rxm`, `efa`, `sockets`.
    pub provider: String,
    /// The local address the endpoints listen on.
    pub address: String,
    /// Use the provider's atomics for CAS where it has them and they are known to be atomic
    /// against the target CPU's own compare-and-swap on the same word (the default; see
    /// [`atomics_are_cpu_coherent`]). Off, or on any other provider, CAS takes the route it
    /// takes on providers without atomics: a message the target's NIC thread executes.
    pub atomics: bool,
    /// The configuration whose members the node serves from the start (its areas are
    /// registered for them only); `None`: every node until [`OfiNic::set_membership`] gives
    /// one. A node process gives it, so that no registration to every node ever exists: a key
    /// of one closed later would cut its holder off from this node for good on `tcp;ofi_rxm`.
    pub membership: Option<Membership>,
    /// How [`OfiTransport::read_large`] (data recovery's reads of region copies, transactions'
    /// reads of large objects) moves bytes:
    /// by the hybrid transfer with this policy, or, if `None` (the default), by one READ of the
    /// registered region, which measured faster than either hybrid path here (docs/ofi.md,
    /// "Hybrid transfer").
    pub transfer: Option<transfer::TransferPolicy>,
}

impl OfiConfig {
    /// `provider` on loopback.
    pub fn loopback(provider: &str) -> OfiConfig {
        OfiConfig {
            provider: provider.to_string(),
            address: ADDRESS_DEFAULT.to_string(),
            atomics: true,
            membership: None,
            transfer: None,
        }
    }
}

/// Why the transport could not be opened or a peer added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfiError {
    /// No provider of that name offers what the transport needs (reliable datagram endpoints,
    /// tagged messages, RMA) at that address: install it, or choose another.
    #[error(
        "ofi provider {provider:?} is not available at {address} with messages and RMA \
         ({call}: {reason}): install it or choose another provider"
    )]
    ProviderUnavailable {
        provider: String,
        address: String,
        call: String,
        reason: String,
    },
    /// A libfabric call failed while setting up.
    #[error("ofi provider {provider:?}: {call} failed: {reason}")]
    Setup {
        provider: String,
        call: String,
        reason: String,
    },
    /// A peer's card does not fit this node's transport: it is for another provider, or its
    /// addresses are not this provider's. Nothing was added.
    #[error("ofi provider {provider:?}: the card of {node} is unusable here: {reason}")]
    BadCard {
        provider: String,
        node: NodeId,
        reason: String,
    },
    /// A registration of an area for a node the configuration removed could not be closed: the
    /// provider may still take that node's key, so the fence did not take. Do not acknowledge
    /// the configuration; stop the node (its process ending closes everything).
    #[error(
        "ofi provider {provider:?}: closing the registration of area {area} for {} failed: \
         {reason}; the fence did not take",
        node.map_or("every node".to_string(), |n| n.to_string())
    )]
    Revoke {
        provider: String,
        area: RegionId,
        node: Option<NodeId>,
        reason: String,
    },
}

/// One registered area, as a peer needs it to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfiArea {
    pub id: RegionId,
    pub key: AccessKey,
    pub bytes: u64,
    /// The registration's base address (remote addresses are `base + offset` on providers that
    /// use virtual addresses, offsets otherwise).
    pub base: u64,
    /// The area's registrations, one per node that may reach it ([`OfiGrant`]).
    pub grants: Vec<OfiGrant>,
}

impl OfiArea {
    /// The registration key `node`'s operations on the area use: its own grant's, or that of
    /// a grant to every node; `None` if it has neither.
    pub fn mr_key_for(&self, node: NodeId) -> Option<u64> {
        let grant = |to: Option<NodeId>| self.grants.iter().find(|g| g.node == to);
        grant(Some(node)).or_else(|| grant(None)).map(|g| g.mr_key)
    }
}

/// A registration of an area for one node (or, for a node that serves no configuration, for
/// every node): closing it revokes that node's one-sided access alone (the fence,
/// docs/failures.md#fencing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfiGrant {
    /// The node it is for; `None`: every node. Observers ([`NodeId::OBSERVER`]) get one that
    /// allows READ only.
    pub node: Option<NodeId>,
    /// The registration's key, which the provider checks.
    pub mr_key: u64,
}

/// What a peer needs to reach a node: its provider, endpoint names and registered areas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfiCard {
    pub node: NodeId,
    pub provider: String,
    pub target_name: Vec<u8>,
    pub initiator_name: Vec<u8>,
    /// The configuration whose members the grants are for; `None` while the node serves none
    /// (every area then has one grant, to every node).
    pub config: Option<u64>,
    pub areas: Vec<OfiArea>,
}

/// An area's registrations, holding it mapped for as long as any exists.
struct Registration {
    /// Its grants are those of `mrs`, in the same order.
    area: OfiArea,
    mrs: Vec<*mut sys::RawMr>,
    region: Arc<Region>,
}

/// Who gets a registration of every area while a node serves `membership`: each member, and
/// observers (READ only); every node while it serves none.
fn grantees(membership: Option<&Membership>) -> Vec<Option<NodeId>> {
    match membership {
        None => vec![None],
        Some(membership) => membership
            .members()
            .chain([NodeId::OBSERVER])
            .map(Some)
            .collect(),
    }
}

/// Where a node finds the cards of nodes it does not know yet ([`OfiTransport::find_cards_with`]).
type CardSource = Arc<dyn Fn(NodeId) -> Option<OfiCard> + Send + Sync>;

/// A peer, as inserted into this node's address vector.
struct Peer {
    card: OfiCard,
    /// Its target endpoint, where this node's operations go.
    target: u64,
    /// Its initiator endpoint, where this node's NIC thread answers its messages.
    initiator: u64,
}

/// What the transport and the NIC thread share: the libfabric objects and the peers.
struct Node {
    memory: Arc<NodeMemory>,
    /// One per area, only added while the node lives (see
    /// [`OfiTransport::register_new_areas`]); an area's grants follow the membership
    /// ([`OfiNic::set_membership`]); closed in `Drop`. Locked after the membership.
    registrations: Mutex<Vec<Registration>>,
    /// Counts the registration keys asked for, from a random start (providers that take the
    /// key asked for refuse one in use).
    grant_seq: AtomicU64,
    /// Ranges registered in place for one zero-copy transfer each, until released (closed in
    /// `Drop` with the registrations).
    exposures: Mutex<transfer::Exposures>,
    peers: RwLock<FastMap<NodeId, Arc<Peer>>>,
    /// Where the cards of nodes not known yet come from ([`OfiTransport::find_cards_with`]).
    cards: RwLock<Option<CardSource>>,
    /// The configuration whose members this node serves and looks up
    /// ([`OfiNic::set_membership`]); any known peer while there is none.
    membership: ServedMembership,
    stop: AtomicBool,
    /// Its endpoints and queues are closed before the registrations, the rest after them
    /// (see `Drop`).
    handle: Handle,
}

// SAFETY: the raw registration pointers are only closed in `Drop` (`&mut self`); through
// `&self` they are only stored (under the mutex), never dereferenced or closed; everything else
// is `Sync`, and `Handle` is thread-safe (FI_THREAD_SAFE).
unsafe impl Send for Node {}
// SAFETY: as above.
unsafe impl Sync for Node {}

impl Drop for Node {
    /// Closes in libfabric's order: endpoints and completion queues first, so that nothing of
    /// the provider's (its progress threads, on `sockets`) still moves data into or out of a
    /// region; then the registrations, each releasing its region after it is closed; the
    /// address vector, domain and fabric last, with the handle.
    fn drop(&mut self) {
        // SAFETY: the NIC thread has ended and no `OfiTransport` is left (both hold the last
        // references to this node, which is being dropped), so no call is in progress or
        // follows, other than closing the registrations and dropping the handle.
        unsafe { self.handle.close_endpoints() };
        let registrations = self.registrations.get_mut().expect(crate::POISONED);
        for registration in registrations.drain(..) {
            for mr in registration.mrs {
                // SAFETY: each came from `Handle::register` on this handle and is closed once,
                // here, before the handle (and its domain) is closed. The endpoints are closed:
                // nobody reaches the memory any more, whatever the result.
                let _ = unsafe { self.handle.close_mr(mr) };
            }
            // Its region (`registration.region`) is released here, after its registrations.
        }
        let exposures = self.exposures.get_mut().expect(crate::POISONED);
        // SAFETY: the NIC thread registered every exposure on this handle, which is open until
        // it drops after this; the endpoints are closed, so no READ of one is under way.
        unsafe { exposures.close_all(&self.handle) };
    }
}

impl Node {
    fn provider(&self) -> &str {
        self.handle.provider()
    }

    fn unreachable(&self, node: NodeId, what: impl std::fmt::Display) -> OpError {
        OpError::Unreachable {
            node,
            reason: format!("ofi provider {}: {what}", self.provider()),
        }
    }

    fn peer(&self, node: NodeId) -> Option<Arc<Peer>> {
        self.peers
            .read()
            .expect(crate::POISONED)
            .get(&node)
            .cloned()
    }

    /// Whether `node` is a member of the configuration this node serves (any node while it
    /// has been given none).
    fn admits(&self, node: NodeId) -> bool {
        self.membership.admits(node)
    }

    /// `node` as a peer: known already, or, for a member, found through the card source and
    /// added. `None` for a non-member, and for a node the source has no usable card of.
    fn peer_or_find(&self, node: NodeId) -> Option<Arc<Peer>> {
        if !self.admits(node) {
            return None;
        }
        self.peer(node).or_else(|| self.find(node))
    }

    /// `node` as a peer ([`Node::peer_or_find`]), with its card read again, once, if the card
    /// known does not list every one of `regions` with a registration for this node: the
    /// area may have been placed, or granted to this node (a member that just joined), since.
    fn peer_reaching(
        &self,
        node: NodeId,
        regions: impl IntoIterator<Item = RegionId>,
    ) -> Option<Arc<Peer>> {
        let peer = self.peer_or_find(node)?;
        let me = self.memory.node_id();
        let reaches = |region: RegionId| {
            peer.card
                .areas
                .iter()
                .any(|a| a.id == region && a.mr_key_for(me).is_some())
        };
        if regions.into_iter().all(reaches) {
            return Some(peer);
        }
        Some(self.find(node).unwrap_or(peer))
    }

    /// `node` as a peer this node's NIC thread can answer a message of, whose initiator
    /// endpoint's name has `fingerprint`: as [`Node::peer_or_find`], and if the card known has
    /// another endpoint (an earlier process of that node id), the card is looked up again.
    fn peer_to_answer(&self, node: NodeId, fingerprint: u32) -> Option<Arc<Peer>> {
        let peer = self.peer_or_find(node)?;
        if name_fingerprint(&peer.card.initiator_name) == fingerprint {
            return Some(peer);
        }
        self.find(node)
            .filter(|found| name_fingerprint(&found.card.initiator_name) == fingerprint)
    }

    /// Runs `execute` (a request of `sender`, whose initiator endpoint's name has
    /// `fingerprint`) if this node serves `sender` and can answer it there
    /// ([`Node::peer_to_answer`]): the peer to answer and what `execute` returned. It runs under
    /// the membership's lock, so once [`OfiNic::set_membership`] has returned, nothing of a node
    /// it removed runs any more.
    fn serving<R>(
        &self,
        sender: NodeId,
        fingerprint: u32,
        execute: impl FnOnce() -> R,
    ) -> Option<(Arc<Peer>, R)> {
        let peer = self.peer_to_answer(sender, fingerprint)?;
        let membership = self.membership.read().expect(crate::POISONED);
        if membership.as_ref().is_some_and(|m| !m.contains(sender)) {
            return None;
        }
        let result = execute();
        drop(membership);
        Some((peer, result))
    }

    /// Asks the card source for `node`'s card again (its areas grew, or it restarted) and
    /// makes it the peer's; `None` if it has none, or none usable (said on stderr).
    fn find(&self, node: NodeId) -> Option<Arc<Peer>> {
        let source = self.cards.read().expect(crate::POISONED).clone()?;
        let card = source(node)?;
        if card.node != node {
            eprintln!(
                "acre: ofi: the card found for {node} is {}'s; not used",
                card.node
            );
            return None;
        }
        self.add(card)
            .inspect_err(|e| eprintln!("acre: ofi: {e}"))
            .ok()
    }

    /// Inserts `card`'s endpoint names into the address vector and makes it the peer's card,
    /// unless the peer's known card is of the same endpoints and a later configuration (two
    /// readers of a manifest raced its republication): then that one stays.
    fn add(&self, card: OfiCard) -> Result<Arc<Peer>, OfiError> {
        let node = card.node;
        if let Some(known) = self.peer(node)
            && known.card.target_name == card.target_name
            && known.card.initiator_name == card.initiator_name
            && known.card.config > card.config
        {
            return Ok(known);
        }
        let bad = |reason: String| OfiError::BadCard {
            provider: self.provider().to_string(),
            node,
            reason,
        };
        if card.provider != self.provider() {
            return Err(bad(format!("it is for provider {:?}", card.provider)));
        }
        // fi_av_insert reads as many bytes as this provider's names take (a socket address, or
        // a string up to its NUL): a name from a card is copied into a zeroed buffer of the
        // largest size any name has, so a short or foreign one reads zeros, never past the end.
        for (what, name) in [
            ("target", &card.target_name),
            ("initiator", &card.initiator_name),
        ] {
            if name.is_empty() || name.len() >= sys::NAME_BYTES_MAX {
                return Err(bad(format!(
                    "its {what} name has {} bytes, not 1 to {}",
                    name.len(),
                    sys::NAME_BYTES_MAX - 1
                )));
            }
        }
        let insert = |name: &[u8]| self.handle.insert(name).map_err(|e| bad(e.to_string()));
        let target = insert(&card.target_name)?;
        let initiator = insert(&card.initiator_name)?;
        let peer = Arc::new(Peer {
            card,
            target,
            initiator,
        });
        // Under the membership's lock (taken before the peers', as `set_membership` does), so
        // that a node removed meanwhile is not added back.
        let membership = self.membership.read().expect(crate::POISONED);
        if let Some(membership) = membership.as_ref()
            && !membership.contains(node)
        {
            return Err(bad(format!(
                "it is not a member of configuration {}",
                membership.config()
            )));
        }
        self.peers
            .write()
            .expect(crate::POISONED)
            .insert(node, peer.clone());
        Ok(peer)
    }

    /// Reads what is in `side`'s queue now, or after sleeping on it when `sleep` (and the
    /// queue has a wait object; without one, sleeps a little and polls).
    fn completions(
        &self,
        side: Side,
        entries: &mut [CqEntry],
        sleep: bool,
    ) -> Result<usize, sys::CallError> {
        if !sleep {
            return self.handle.poll(side, entries);
        }
        if self.handle.caps().cq_wait != 0 {
            self.handle.wait(side, entries, SLEEP_SLICE_MS)
        } else {
            std::thread::sleep(Duration::from_micros(200));
            self.handle.poll(side, entries)
        }
    }
}

impl Node {
    /// Registers `region` for each of `grantees` ([`grantees`]).
    fn register_area(
        &self,
        region: Arc<Region>,
        grantees: &[Option<NodeId>],
    ) -> Result<Registration, sys::CallError> {
        let virt_addr = self.handle.caps().virt_addr != 0;
        let base = region.words().as_ptr() as u64;
        let mut registration = Registration {
            area: OfiArea {
                id: region.id(),
                key: region.key(),
                bytes: region.len(),
                base: if virt_addr { base } else { 0 },
                grants: Vec::new(),
            },
            mrs: Vec::new(),
            region,
        };
        for &grantee in grantees {
            if let Err(e) = self.grant(&mut registration, grantee) {
                // Nobody was given these keys yet: a close that fails leaks, nothing more.
                let _ = self.revoke(&mut registration, |_| false);
                return Err(e);
            }
        }
        Ok(registration)
    }

    /// Registers `registration`'s area once more, for `grantee` (READ only for observers).
    fn grant(
        &self,
        registration: &mut Registration,
        grantee: Option<NodeId>,
    ) -> Result<(), sys::CallError> {
        let region = &registration.region;
        let base = region.words().as_ptr() as *mut u8;
        let writable = grantee != Some(NodeId::OBSERVER);
        let requested = region
            .key()
            .0
            .wrapping_add(self.grant_seq.fetch_add(1, Ordering::Relaxed));
        // SAFETY: `registration.region` keeps the mapping alive until this registration is
        // closed (by `revoke`, or in `Node::drop` before the handle); the memory is only ever
        // accessed through atomic words by this process, so a provider writing into it is what
        // a NIC does.
        let (mr, mr_key) = unsafe {
            self.handle
                .register(base, region.len() as usize, writable, requested)
        }?;
        registration.area.grants.push(OfiGrant {
            node: grantee,
            mr_key,
        });
        registration.mrs.push(mr);
        Ok(())
    }

    /// Closes `registration`'s grants to the nodes `keep` refuses, and takes them off the
    /// card. Once a registration is closed, the provider refuses operations under its key:
    /// what its node posts from then on fails at this node (on `tcp;ofi_rxm` its connection to
    /// this node breaks for good). A close that fails is an error naming the grant: the
    /// provider may still take that key (the registration is leaked, not closed again).
    fn revoke(
        &self,
        registration: &mut Registration,
        keep: impl Fn(Option<NodeId>) -> bool,
    ) -> Result<(), OfiError> {
        let mut failure = None;
        let mut index = 0;
        while index < registration.mrs.len() {
            let grant = registration.area.grants[index];
            if keep(grant.node) {
                index += 1;
                continue;
            }
            registration.area.grants.remove(index);
            let mr = registration.mrs.remove(index);
            // SAFETY: registered by `grant` on this handle, closed once, here.
            if let Err(e) = unsafe { self.handle.close_mr(mr) } {
                failure.get_or_insert(OfiError::Revoke {
                    provider: self.provider().to_string(),
                    area: registration.area.id,
                    node: grant.node,
                    reason: e.to_string(),
                });
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Makes every area's grants those of `grantees`: registers the missing ones, then closes
    /// those of any other node. Every step is tried. A registration that fails is said on
    /// stderr (its node's one-sided operations on the area fail as not a member: a liveness
    /// matter); the first close that failed is returned (the fence did not take).
    fn regrant(&self, grantees: &[Option<NodeId>]) -> Result<(), OfiError> {
        let mut failure = None;
        let mut registrations = self.registrations.lock().expect(crate::POISONED);
        for registration in registrations.iter_mut() {
            for &grantee in grantees {
                if grantee.is_none() || registration.area.grants.iter().any(|g| g.node == grantee) {
                    continue;
                }
                if let Err(e) = self.grant(registration, grantee) {
                    eprintln!(
                        "acre: ofi provider {}: registering area {} for {}: {e}; its one-sided \
                         operations there fail as not a member",
                        self.provider(),
                        registration.area.id,
                        grantee.map_or("every node".to_string(), |n| n.to_string())
                    );
                }
            }
            if let Err(e) = self.revoke(registration, |node| grantees.contains(&node)) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// What an operation context is for, in the 64 bytes libfabric may use ahead of it.
#[repr(C)]
struct Context {
    /// `struct fi_context2`: the provider's scratch space (`FI_CONTEXT2` mode).
    scratch: [u64; 8],
    /// The batch (initiator) or the slot (NIC thread) it belongs to.
    batch: u64,
    index: u64,
}

impl Context {
    fn new(batch: u64, index: u64) -> Context {
        Context {
            scratch: [0; 8],
            batch,
            index,
        }
    }
}

/// Reads a context's batch and index from a completion.
fn context_of(pointer: *mut c_void) -> (u64, u64) {
    assert!(!pointer.is_null(), "a completion without a context");
    // SAFETY: every operation this module posts passes a pointer to a `Context` inside a
    // heap allocation that stays alive at least until its completion is read (batches that
    // time out are leaked for that reason), and the provider only writes the scratch part.
    let context = unsafe { &*(pointer as *const Context) };
    (context.batch, context.index)
}

/// The target side of a node: its NIC thread. Dropping it stops the thread.
pub struct OfiNic {
    node: Arc<Node>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for OfiNic {
    fn drop(&mut self) {
        self.node.stop.store(true, Ordering::Release);
        self.node.handle.signal(Side::Target);
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            // Its panic message is printed already; a second panic while unwinding would abort.
            if joined.is_err() && !std::thread::panicking() {
                panic!(
                    "the ofi NIC thread of {} panicked",
                    self.node.memory.node_id()
                );
            }
        }
    }
}

impl OfiNic {
    /// Serves the members of `membership` only from now on:
    /// - every area gets a registration for each member (and a READ-only one for observers)
    ///   and the registrations of every other node are closed, as are the ranges exposed to
    ///   them for a zero-copy transfer, so the provider refuses a removed node's one-sided
    ///   operations from now on (the fence, docs/failures.md#fencing); the members learn their
    ///   new keys from this node's next card;
    /// - the NIC thread neither executes nor answers the messages of a non-member;
    /// - this node forgets its peers that are not members (its operations to them fail as
    ///   [`OpError::UnknownNode`]).
    ///
    /// A member's registrations are kept, so its operations are not disturbed.
    ///
    /// A registration for a member that fails is said on stderr (its one-sided operations on
    /// that area fail as not a member). The membership is in force even on an error, which
    /// is a close that failed: the provider may still take that node's key, the fence did not
    /// take, and the caller must stop the node rather than acknowledge the configuration.
    pub fn set_membership(&self, membership: Membership) -> Result<(), OfiError> {
        let mut current = self.node.membership.write().expect(crate::POISONED);
        self.node
            .peers
            .write()
            .expect(crate::POISONED)
            .retain(|node, _| membership.contains(*node));
        let granted = self.node.regrant(&grantees(Some(&membership)));
        let mut exposures = self.node.exposures.lock().expect(crate::POISONED);
        // SAFETY: every exposure was registered on this node's handle by its NIC thread, and
        // the handle is open while `self.node` lives.
        let unexposed =
            unsafe { exposures.close_unless(&self.node.handle, |node| membership.contains(node)) };
        drop(exposures);
        *current = Some(membership);
        granted?;
        unexposed.map_err(|e| OfiError::Setup {
            provider: self.node.provider().to_string(),
            call: format!("{} (a range exposed to a removed node)", e.call),
            reason: sys::strerror(e.code),
        })
    }
}

/// The initiator side of a node: its path to the others.
pub struct OfiTransport {
    node: Arc<Node>,
    /// The initiator queue's completions, filed by batch for the waiters of any number of
    /// batches in flight at once.
    mailboxes: Mailboxes,
    /// CAS is `fi_compare_atomic` (the provider has atomics and the configuration wants them).
    atomics: bool,
    batch_seq: AtomicU64,
    /// The fingerprint of this node's initiator endpoint name, in every request it sends.
    fingerprint: u32,
    /// Operation slots leaked because the provider might still write into them (their
    /// operation neither completed nor could be withdrawn in time).
    slots_leaked: AtomicU64,
    /// [`OfiConfig::transfer`].
    transfer: Option<transfer::TransferPolicy>,
    /// Reads [`OfiTransport::read_large`] made by the hybrid transfer.
    hybrid_reads: AtomicU64,
}

impl std::fmt::Debug for OfiTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfiTransport")
            .field("node", &self.node.memory.node_id())
            .field("provider", &self.node.provider())
            .finish()
    }
}

/// The slot of one posted operation: its context and its buffers, unmoved until completion.
///
/// What the provider or another thread reaches while the operation is posted is not inline:
/// the context (read by whichever waiter reads the queue, while this slot's owner updates the
/// slot) and the CAS words (written by the provider) are separate allocations behind raw
/// pointers, and the byte buffers are the vectors' heap buffers, so no `&` or `&mut` to the
/// slot covers memory that someone else reads or writes meanwhile.
struct OpSlot {
    /// From `Box::into_raw`, freed with the slot; never written after [`OpSlot::new`].
    context: *mut Context,
    /// READ destination, WRITE source, or message bytes (request, then the response).
    bytes: Vec<u8>,
    /// CAS words: new, expected, previous (written by the provider). From `Box::into_raw`,
    /// freed with the slot.
    words: *mut [u64; 3],
    /// A message's response buffer.
    reply: Vec<u8>,
    /// Completions still expected for this slot (a message has two: send and receive).
    outstanding: u32,
    /// The libfabric call that posted it, for errors.
    call: &'static str,
    failed: Option<String>,
    /// What is outstanding was withdrawn (`fi_cancel`): it is reaped, or leaked after
    /// [`WITHDRAW_REAP_TIMEOUT`].
    withdrawn: bool,
}

impl OpSlot {
    fn new(batch: u64, offset: u64) -> OpSlot {
        OpSlot {
            context: Box::into_raw(Box::new(Context::new(batch, offset))),
            bytes: Vec::new(),
            words: Box::into_raw(Box::new([0; 3])),
            reply: Vec::new(),
            outstanding: 0,
            call: "",
            failed: None,
            withdrawn: false,
        }
    }

    /// The context to post with.
    fn context(&self) -> *mut c_void {
        self.context.cast()
    }

    /// The batch and index it was made for.
    fn batch_and_index(&self) -> (u64, u64) {
        context_of(self.context())
    }

    /// The word a completed CAS read at the target.
    fn previous(&self) -> u64 {
        assert_eq!(self.outstanding, 0, "a CAS still in flight");
        // SAFETY: `words` is the slot's own allocation, alive until it drops; with no
        // completion outstanding, the provider no longer writes it.
        unsafe { (*self.words)[2] }
    }
}

/// A batch's slots. Dropped normally they are freed (settled: nothing of theirs is posted any
/// more); dropped while the thread panics they are leaked, since the provider may still own
/// some of them.
// The boxes keep a slot's own fields unmoved when the vector grows; what the provider reaches
// is in the slot's separate allocations.
#[allow(clippy::vec_box)]
struct Slots(Vec<Box<OpSlot>>);

impl Drop for Slots {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(std::mem::take(&mut self.0));
        }
    }
}

impl std::ops::Deref for Slots {
    type Target = Vec<Box<OpSlot>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Slots {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for OpSlot {
    fn drop(&mut self) {
        // SAFETY: both came from `Box::into_raw` in `new` and are freed once, here. A slot is
        // only dropped with nothing outstanding (settled) or never (leaked), so neither the
        // provider nor a waiter reading the queue still reaches them.
        unsafe {
            drop(Box::from_raw(self.context));
            drop(Box::from_raw(self.words));
        }
    }
}

impl OfiTransport {
    /// Opens `config.provider` for the node whose memory is `memory`, registers every area
    /// the memory holds now, and starts the node's NIC thread.
    pub fn start(
        config: &OfiConfig,
        memory: Arc<NodeMemory>,
    ) -> Result<(OfiTransport, OfiNic), OfiError> {
        let handle = Handle::open(&config.provider, &config.address).map_err(|e| {
            OfiError::ProviderUnavailable {
                provider: config.provider.clone(),
                address: config.address.clone(),
                call: e.call.clone(),
                reason: sys::strerror(e.code),
            }
        })?;
        let setup = |e: sys::CallError| OfiError::Setup {
            provider: config.provider.clone(),
            call: e.call.clone(),
            reason: sys::strerror(e.code),
        };
        let fingerprint = name_fingerprint(&handle.name(Side::Initiator).map_err(setup)?);
        let node = Arc::new(Node {
            memory,
            registrations: Mutex::new(Vec::new()),
            grant_seq: AtomicU64::new(random_batch_start()),
            exposures: Mutex::new(transfer::Exposures::default()),
            peers: RwLock::new(FastMap::default()),
            cards: RwLock::new(None),
            membership: ServedMembership::new(config.membership.clone()),
            stop: AtomicBool::new(false),
            handle,
        });
        // For the members of the configuration given, or every node until one is given
        // ([`OfiNic::set_membership`]). On failure, dropping `node` closes what was registered.
        let grantees = grantees(config.membership.as_ref());
        for region in node.memory.areas() {
            let registration = node.register_area(region, &grantees).map_err(setup)?;
            node.registrations
                .lock()
                .expect(crate::POISONED)
                .push(registration);
        }
        // Never dropped: the provider owns posted receives until the endpoint closes, which is
        // after the NIC thread ends or panics (leaked once per node). If a post fails here, or
        // the thread cannot be spawned, those posted already are leaked too: the endpoint
        // already listens (on tcp and sockets, at a port anything may connect to), so a
        // message could still land in them until it closes.
        let mut receives = ManuallyDrop::new(Vec::with_capacity(RECEIVES_POSTED));
        for index in 0..RECEIVES_POSTED {
            let mut slot = Box::new(ReceiveSlot {
                context: Context::new(NIC_RECEIVE, index as u64),
                buf: vec![0; MESSAGE_BYTES_MAX],
            });
            if let Err(e) = slot.post(&node.handle) {
                return Err(setup(e));
            }
            receives.push(slot);
        }
        let thread = {
            let node = node.clone();
            std::thread::Builder::new()
                .name(format!("ofi-nic-{}", node.memory.node_id()))
                .spawn(move || serve(&node, receives))
                .map_err(|e| OfiError::Setup {
                    provider: config.provider.clone(),
                    call: "spawn the NIC thread".into(),
                    reason: e.to_string(),
                })?
        };
        Ok((
            OfiTransport {
                atomics: config.atomics
                    && node.handle.caps().atomic_cas != 0
                    && atomics_are_cpu_coherent(node.provider()),
                node: node.clone(),
                mailboxes: Mailboxes::default(),
                // A random start, so that a late response to an earlier transport of the same
                // node (same tags) matches no request of this one.
                batch_seq: AtomicU64::new(random_batch_start()),
                fingerprint,
                slots_leaked: AtomicU64::new(0),
                transfer: config.transfer,
                hybrid_reads: AtomicU64::new(0),
            },
            OfiNic {
                node,
                thread: Some(thread),
            },
        ))
    }

    /// The tag of a message this node sends in batch `batch` ([`message_tag`]).
    fn message_tag(&self, batch: u64, transfer: bool) -> u64 {
        message_tag(self.node.memory.node_id(), batch, transfer)
    }

    /// The provider as libfabric names it.
    pub fn provider(&self) -> &str {
        self.node.provider()
    }

    /// Whether CAS is a NIC atomic (`fi_compare_atomic`) rather than a message to the target's
    /// NIC thread: the provider has atomics, they are known to be atomic against the target's
    /// CPU ([`atomics_are_cpu_coherent`]), and [`OfiConfig::atomics`] is on.
    pub fn has_atomics(&self) -> bool {
        self.atomics
    }

    /// Whether a run of one-sided operations is posted at once (the provider places them in
    /// order) rather than one after the other's delivery. On a provider that places them in
    /// order except a write after a read (`tcp;ofi_rxm`), a run is posted at once up to such a
    /// write ([`OfiTransport::run_len`]).
    pub fn posts_runs(&self) -> bool {
        self.node.handle.caps().ordered != 0
    }

    /// How many of `ops` (what is left of a batch) go in the next run, posted together and
    /// waited for together: a message alone (it waits for what was posted before it, and what
    /// follows waits for its answer); one-sided operations as far as the provider places them
    /// in posting order: all of them on a provider that orders every pair (`sockets`); on one
    /// that orders all but a write after a read (`tcp;ofi_rxm`: `FI_ORDER_WAR` missing), up to
    /// the first WRITE or CAS that follows a READ or CAS of the run; one otherwise, each after
    /// the previous one's delivery. So a ring append's record body and commit word (two
    /// WRITEs) go together, the commit word placed after the body.
    fn run_len(&self, ops: &[Op]) -> usize {
        assert!(!ops.is_empty(), "a run of nothing");
        if self.is_message(&ops[0]) {
            return 1;
        }
        let caps = self.node.handle.caps();
        let one_sided = ops.iter().take_while(|op| !self.is_message(op));
        if caps.ordered != 0 {
            return one_sided.count();
        }
        if caps.ordered_but_war == 0 {
            return 1;
        }
        let mut read_before = false;
        let mut len = 0;
        for op in one_sided {
            let (reads, writes) = match op {
                Op::Read { .. } => (true, false),
                Op::Write { .. } => (false, true),
                Op::Cas { .. } => (true, true),
                Op::Persist { .. } | Op::Notify => unreachable!("messages end a run"),
            };
            if writes && read_before {
                break;
            }
            read_before |= reads;
            len += 1;
        }
        len
    }

    /// A large READ of `len` bytes at `addr` of `owner` (data recovery's block and slot reads):
    /// by the hybrid transfer if [`OfiConfig::transfer`] chose it (copy or zero copy by its
    /// threshold), otherwise one READ of the registered region. The same bytes and the same
    /// errors either way.
    pub fn read_large(
        &self,
        owner: NodeId,
        addr: crate::addr::Addr,
        key: AccessKey,
        len: u32,
    ) -> Result<Vec<u8>, OpError> {
        let Some(policy) = self.transfer.filter(|_| len > 0) else {
            let read = Op::Read { addr, key, len };
            let mut results = self.post(owner, &[read]).wait();
            return match results.pop().expect("one result per operation")? {
                Completion::Read(bytes) => Ok(bytes),
                other => Err(OpError::Protocol {
                    node: owner,
                    reason: format!("a READ completed as {other:?}"),
                }),
            };
        };
        // As a READ would: the owner's card, read again if it lacks the area or a registration
        // for this node (a member that just joined), and no message to an owner that gives
        // this node no key (its NIC thread would not answer a non-member: a timeout).
        let peer = self
            .node
            .peer_reaching(owner, [addr.region()])
            .ok_or(OpError::UnknownNode { node: owner })?;
        let me = self.node.memory.node_id();
        let area = peer.card.areas.iter().find(|a| a.id == addr.region());
        if area.is_some_and(|a| a.mr_key_for(me).is_none()) {
            return Err(OpError::NotMember {
                node: owner,
                config: peer.card.config.unwrap_or(0),
            });
        }
        self.hybrid_reads.fetch_add(1, Ordering::Relaxed);
        self.transfer(owner, addr, key, u64::from(len), &policy)
            .map_err(OpError::from)
    }

    /// Whether [`OfiTransport::read_large`] goes by the hybrid transfer.
    pub fn reads_large_by_transfer(&self) -> bool {
        self.transfer.is_some()
    }

    /// How [`OfiTransport::read_large`] moves bytes, for logs.
    pub fn read_large_path(&self) -> String {
        match self.transfer {
            Some(policy) => format!(
                "the hybrid transfer (zero copy from {} bytes, copy below; {} reads by it so \
                 far)",
                policy.threshold_bytes,
                self.hybrid_reads()
            ),
            None => "READ".to_string(),
        }
    }

    /// How many of [`OfiTransport::read_large`]'s reads went by the hybrid transfer.
    pub fn hybrid_reads(&self) -> u64 {
        self.hybrid_reads.load(Ordering::Relaxed)
    }

    /// How many operation slots were leaked so far: their operation got no completion and
    /// could not be withdrawn in time, so the provider might still write into them.
    pub fn slots_leaked(&self) -> u64 {
        self.slots_leaked.load(Ordering::Relaxed)
    }

    /// This node's card, for its peers.
    pub fn card(&self) -> Result<OfiCard, OfiError> {
        let name = |side| {
            self.node.handle.name(side).map_err(|e| OfiError::Setup {
                provider: self.provider().to_string(),
                call: e.call.clone(),
                reason: sys::strerror(e.code),
            })
        };
        Ok(OfiCard {
            node: self.node.memory.node_id(),
            provider: self.provider().to_string(),
            target_name: name(Side::Target)?,
            initiator_name: name(Side::Initiator)?,
            config: self
                .node
                .membership
                .read()
                .expect(crate::POISONED)
                .as_ref()
                .map(Membership::config),
            areas: self
                .node
                .registrations
                .lock()
                .expect(crate::POISONED)
                .iter()
                .map(|r| r.area.clone())
                .collect(),
        })
    }

    /// Registers the areas of the node's memory whose ids have no registration yet (a region
    /// or ring placed on the node after [`OfiTransport::start`]), for the members of the
    /// configuration the node serves, and returns their ids. Peers reach them once they are
    /// given the node's new [`OfiTransport::card`]. An area replaced under an id already
    /// registered keeps the old registration (not handled yet).
    pub fn register_new_areas(&self) -> Result<Vec<RegionId>, OfiError> {
        // The membership first, as `set_membership` locks them: the grants are its members'.
        let membership = self.node.membership.read().expect(crate::POISONED);
        let grantees = grantees(membership.as_ref());
        let mut registrations = self.node.registrations.lock().expect(crate::POISONED);
        let mut added = Vec::new();
        for region in self.node.memory.areas() {
            if registrations.iter().any(|r| r.area.id == region.id()) {
                continue;
            }
            let registration =
                self.node
                    .register_area(region, &grantees)
                    .map_err(|e| OfiError::Setup {
                        provider: self.provider().to_string(),
                        call: e.call.clone(),
                        reason: sys::strerror(e.code),
                    })?;
            added.push(registration.area.id);
            registrations.push(registration);
        }
        Ok(added)
    }

    /// Makes `card`'s node reachable (and lets this node's NIC thread answer it). A card for a
    /// node already known replaces it (a restarted node).
    pub fn add_peer(&self, card: OfiCard) -> Result<(), OfiError> {
        self.node.add(card).map(|_| ())
    }

    /// Where this node finds the card of a node it does not know yet, or whose card lacks an
    /// area an operation names (it placed the area later): node processes read it from the
    /// node's manifest in the cluster directory. Only members of the configuration
    /// [`OfiNic::set_membership`] set are looked up. Without a source, peers are only those
    /// given with [`OfiTransport::add_peer`].
    pub fn find_cards_with(
        &self,
        source: impl Fn(NodeId) -> Option<OfiCard> + Send + Sync + 'static,
    ) {
        *self.node.cards.write().expect(crate::POISONED) = Some(Arc::new(source));
    }

    /// Forgets a peer: operations on it fail as [`OpError::UnknownNode`] from now on.
    pub fn remove_peer(&self, node: NodeId) {
        self.node
            .peers
            .write()
            .expect(crate::POISONED)
            .remove(&node);
    }

    /// Posts `ops` to `target` and drives them to completion, in order.
    pub fn post(&self, target: NodeId, ops: &[Op]) -> Pending {
        let regions = ops.iter().filter_map(op_addr).map(|addr| addr.region());
        let Some(peer) = self.node.peer_reaching(target, regions) else {
            return Pending::ready(
                ops.iter()
                    .map(|_| Err(OpError::UnknownNode { node: target }))
                    .collect(),
            );
        };
        let mut results: Vec<Option<OpResult>> = vec![None; ops.len()];
        let mut index = 0;
        while index < ops.len() {
            let end = index + self.run_len(&ops[index..]);
            let run = self.run(&peer, index, &ops[index..end], &mut results);
            if let Err(error) = run {
                // The target may have restarted (new endpoints) since its card was read: the
                // next batch goes by the card its manifest holds now (a member's only).
                if self.node.admits(target) {
                    self.node.find(target);
                }
                // The target could not be reached: the rest of the batch fails with it.
                for result in results.iter_mut().skip(index).filter(|r| r.is_none()) {
                    *result = Some(Err(error.clone()));
                }
                break;
            }
            index = end;
        }
        Pending::ready(
            results
                .into_iter()
                .map(|r| r.expect("every operation has a result"))
                .collect(),
        )
    }

    fn is_message(&self, op: &Op) -> bool {
        match op {
            Op::Persist { .. } | Op::Notify => true,
            Op::Cas { .. } => !self.has_atomics(),
            Op::Read { .. } | Op::Write { .. } => false,
        }
    }

    /// What `op` needs posted, after checking it against the target's card: `Ok(None)` if it
    /// is done without moving anything (a zero-length READ or WRITE).
    fn precheck(&self, card: &OfiCard, op: &Op) -> Result<Option<Completion>, OpError> {
        let area = match op {
            Op::Notify => return Ok(None),
            Op::Read { addr, key, len } => check(card, *addr, *key, *len as u64)?,
            Op::Write { addr, key, data } => check(card, *addr, *key, data.len() as u64)?,
            Op::Cas { addr, key, .. } => check(card, *addr, *key, 8)?,
            Op::Persist { addr, key, len } => check(card, *addr, *key, *len as u64)?,
        };
        // A one-sided operation needs a registration for this node (a message does not: the
        // target's NIC thread checks its sender).
        if !self.is_message(op) && area.mr_key_for(self.node.memory.node_id()).is_none() {
            return Err(OpError::NotMember {
                node: card.node,
                config: card.config.unwrap_or(0),
            });
        }
        Ok(match op {
            Op::Read { len: 0, .. } => Some(Completion::Read(Vec::new())),
            Op::Write { data, .. } if data.is_empty() => Some(Completion::Write),
            _ => None,
        })
    }

    /// Posts `ops` (results from `first` on) and waits for all their completions. An error
    /// means the target is unreachable; access errors are results.
    fn run(
        &self,
        peer: &Peer,
        first: usize,
        ops: &[Op],
        results: &mut [Option<OpResult>],
    ) -> Result<(), OpError> {
        let target = peer.card.node;
        let batch = self.batch_seq.fetch_add(1, Ordering::Relaxed);
        let mut slots = Slots(Vec::with_capacity(ops.len()));
        let mut to_post = Vec::with_capacity(ops.len());
        for (offset, op) in ops.iter().enumerate() {
            match self.precheck(&peer.card, op) {
                Ok(Some(done)) => results[first + offset] = Some(Ok(done)),
                Ok(None) => to_post.push(offset),
                Err(error) => results[first + offset] = Some(Err(error)),
            }
            slots.push(Box::new(OpSlot::new(batch, offset as u64)));
        }
        // Open before anything is posted: a completion may be read (by any waiter) as soon as
        // its operation is.
        self.mailboxes.open(batch);
        let mut failure = None;
        for (position, &offset) in to_post.iter().enumerate() {
            // FI_MORE on all but the last: the provider may wait for the last to ring once.
            let more = position + 1 < to_post.len();
            let posted = self.post_one(peer, &ops[offset], &mut slots[offset], batch, more);
            if let Err(reason) = posted {
                failure = Some(reason);
                break;
            }
        }
        // What was posted must complete (or time out) before its buffers may go.
        let settled = self.settle(target, batch, &mut slots);
        self.mailboxes.close(batch);
        settled?;
        if failure.is_none() {
            failure = slots.iter().find_map(|slot| slot.failed.clone());
        }
        if let Some(reason) = failure {
            // Settled: nothing of the batch is posted any more (what was is reaped or leaked).
            return Err(self.node.unreachable(target, reason));
        }
        for offset in to_post {
            results[first + offset] = Some(self.result_of(target, &ops[offset], &slots[offset]));
        }
        Ok(())
    }

    /// Posts one checked operation.
    fn post_one(
        &self,
        peer: &Peer,
        op: &Op,
        slot: &mut OpSlot,
        batch: u64,
        more: bool,
    ) -> Result<(), String> {
        if self.is_message(op) {
            return self.post_message(peer, op, slot, batch);
        }
        let handle = &self.node.handle;
        let context = slot.context();
        let (addr, len) = match op {
            Op::Read { addr, len, .. } => (*addr, *len as usize),
            Op::Write { addr, data, .. } => (*addr, data.len()),
            Op::Cas { addr, .. } => (*addr, 8),
            Op::Persist { .. } | Op::Notify => unreachable!("messages are posted above"),
        };
        let area = peer
            .card
            .areas
            .iter()
            .find(|a| a.id == addr.region())
            .expect("checked against the card");
        let remote = area.base + addr.offset() as u64;
        let mr_key = area
            .mr_key_for(self.node.memory.node_id())
            .expect("checked against the card");
        let dest = peer.target;
        slot.call = match op {
            Op::Read { .. } => "fi_read",
            Op::Write { .. } => "fi_write",
            _ => "fi_compare_atomic",
        };
        let posted = match op {
            Op::Read { .. } => {
                slot.bytes = vec![0; len];
                let buf = slot.bytes.as_mut_ptr();
                self.retry_busy(peer.card.node, batch, || {
                    // SAFETY: `slot` is boxed and kept (or leaked) until its completion is read;
                    // `bytes` has `len` bytes and is not touched meanwhile.
                    unsafe { handle.read(buf, len, dest, remote, mr_key, context, more) }
                })
            }
            Op::Write { data, .. } => {
                slot.bytes = data.clone();
                let buf = slot.bytes.as_ptr();
                self.retry_busy(peer.card.node, batch, || {
                    // SAFETY: as for READ: the boxed slot's bytes outlive the operation.
                    unsafe { handle.write(buf, len, dest, remote, mr_key, context, more) }
                })
            }
            Op::Cas { expected, new, .. } => {
                let words = slot.words;
                // SAFETY: the slot's own allocation; nothing is posted with it yet.
                unsafe { *words = [*new, *expected, 0] };
                self.retry_busy(peer.card.node, batch, || {
                    // SAFETY: as for READ: the boxed slot's words outlive the operation.
                    unsafe { handle.compare_swap(words, dest, remote, mr_key, context) }
                })
            }
            Op::Persist { .. } | Op::Notify => unreachable!("messages are posted above"),
        };
        posted.map_err(|e| format!("{e} to {}", peer.card.node))?;
        slot.outstanding = 1;
        Ok(())
    }

    /// Sends `op` as a REQUEST frame to the target's NIC thread, with a receive posted for the
    /// RESPONSE first.
    fn post_message(
        &self,
        peer: &Peer,
        op: &Op,
        slot: &mut OpSlot,
        batch: u64,
    ) -> Result<(), String> {
        let tag = self.message_tag(batch, false);
        slot.bytes = frame::encode_to_vec(&Frame::Request(Request {
            request_id: request_id(self.fingerprint, batch),
            op: op.clone(),
        }));
        slot.reply = vec![0; MESSAGE_BYTES_MAX];
        slot.call = "fi_tsend/fi_trecv (a message to the NIC thread)";
        self.post_exchange(peer, slot, batch, tag)
    }

    /// Posts a receive into `slot.reply` for the answer tagged `tag`, then sends `slot.bytes`
    /// to the target's NIC thread with that tag.
    fn post_exchange(
        &self,
        peer: &Peer,
        slot: &mut OpSlot,
        batch: u64,
        tag: u64,
    ) -> Result<(), String> {
        let handle = &self.node.handle;
        let context = slot.context();
        let (reply, reply_len) = (slot.reply.as_mut_ptr(), slot.reply.len());
        self.retry_busy(peer.card.node, batch, || {
            // SAFETY: the boxed slot's reply buffer outlives the receive (kept or leaked until
            // its completion is read).
            unsafe { handle.receive(Side::Initiator, reply, reply_len, tag, 0, context) }
        })
        .map_err(|e| e.to_string())?;
        slot.outstanding = 1;
        let (request, request_len) = (slot.bytes.as_ptr(), slot.bytes.len());
        let sent = self
            .retry_busy(peer.card.node, batch, || {
                // SAFETY: as for the receive, for the request bytes.
                unsafe {
                    handle.send(
                        Side::Initiator,
                        request,
                        request_len,
                        peer.target,
                        tag,
                        context,
                    )
                }
            })
            .map_err(|e| format!("{e} to {}", peer.card.node));
        if let Err(reason) = sent {
            // No request went out, so no reply will come: the receive is withdrawn (and
            // reaped by `settle` before its buffer goes), and the batch fails at once with
            // the send's reason.
            self.withdraw(slot);
            return Err(reason);
        }
        slot.outstanding = 2;
        Ok(())
    }

    /// Reads the initiator queue once (sleeping on it first if `sleep`) unless another waiter
    /// is reading it, and files what it read under each completion's batch. A waiter that
    /// finds another reading waits for that one's next filing instead (when `sleep`) or
    /// yields. Returns at once if `batch` has completions waiting.
    fn pump(&self, batch: u64, sleep: bool) -> Result<(), sys::CallError> {
        let mailboxes = &self.mailboxes;
        let mut state = mailboxes.state.lock().expect(crate::POISONED);
        if state.by_batch.get(&batch).is_some_and(|a| !a.is_empty()) {
            return Ok(());
        }
        if state.reading {
            if sleep {
                let slice = Duration::from_millis(SLEEP_SLICE_MS as u64);
                drop(mailboxes.arrived.wait_timeout(state, slice));
            } else {
                drop(state);
                std::thread::yield_now();
            }
            return Ok(());
        }
        state.reading = true;
        drop(state);
        // Hands the reading on if `read_queue` panics, so the other waiters do not wait for a
        // reader that is gone.
        let turn = ReadingTurn(mailboxes);
        let read = self.read_queue(sleep);
        std::mem::forget(turn);
        let mut state = mailboxes.state.lock().expect(crate::POISONED);
        state.reading = false;
        let read = read.map(|arrivals| {
            for (batch, arrival) in arrivals {
                // A batch without a mailbox was given up on (its slots leaked): dropped.
                if let Some(mailbox) = state.by_batch.get_mut(&batch) {
                    mailbox.push(arrival);
                }
            }
        });
        drop(state);
        mailboxes.arrived.notify_all();
        read
    }

    /// What the initiator queue holds now (or after sleeping on it if `sleep`), by batch.
    fn read_queue(&self, sleep: bool) -> Result<Vec<(u64, Arrival)>, sys::CallError> {
        let mut entries = [CqEntry::EMPTY; ENTRIES_PER_READ];
        let mut arrivals = Vec::new();
        match self.node.completions(Side::Initiator, &mut entries, sleep) {
            Ok(count) => {
                for entry in entries[..count].iter().filter(|e| !e.op_context.is_null()) {
                    let (batch, index) = context_of(entry.op_context);
                    arrivals.push((
                        batch,
                        Arrival {
                            index,
                            failure: None,
                        },
                    ));
                }
            }
            Err(e) if e.code == sys::FI_EAVAIL => {
                while let Some(error) = self.node.handle.read_error(Side::Initiator) {
                    if error.op_context.is_null() {
                        continue;
                    }
                    let (batch, index) = context_of(error.op_context);
                    let failure = Failure {
                        reason: format!("{} ({})", sys::strerror(error.code), error.message),
                    };
                    arrivals.push((
                        batch,
                        Arrival {
                            index,
                            failure: Some(failure),
                        },
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        Ok(arrivals)
    }

    /// Posts with `post` until the provider takes it, driving progress while it is busy (a
    /// connection being made, a full queue): spinning at first, then sleeping a little, for
    /// [`OP_TIMEOUT`] at most. A dead peer's connection attempts keep it busy all that time, so
    /// the wait also ends once `target` is no longer a member of the configuration this node
    /// serves (the configuration that removed it was adopted meanwhile).
    fn retry_busy(
        &self,
        target: NodeId,
        batch: u64,
        mut post: impl FnMut() -> Result<(), sys::CallError>,
    ) -> Result<(), sys::CallError> {
        let clock = self.node.memory.clock();
        let started = clock.now();
        let mut tries = 0u32;
        loop {
            match post() {
                Err(e) if e.code == sys::FI_EAGAIN && clock.now() - started < OP_TIMEOUT => {
                    if !self.node.admits(target) {
                        return Err(sys::CallError {
                            call: format!(
                                "{} (busy until {target} left the configuration this node serves)",
                                e.call
                            ),
                            code: sys::FI_ECANCELED,
                        });
                    }
                    self.pump(batch, false)?;
                    tries = tries.saturating_add(1);
                    if tries > SPIN_POLLS_MAX {
                        std::thread::sleep(BUSY_SLEEP);
                    } else {
                        std::thread::yield_now();
                    }
                }
                other => return other,
            }
        }
    }

    /// Withdraws what `slot` still has posted that can be withdrawn (a message's receive):
    /// its completion (`FI_ECANCELED`) comes at once and is reaped by [`Self::settle`].
    fn withdraw(&self, slot: &mut OpSlot) {
        slot.withdrawn = true;
        let context = slot.context() as usize;
        // Nothing to withdraw (`FI_ENOENT`: done already, or not withdrawable) is not an
        // error: what is outstanding then completes as it would have, or is leaked.
        let _ = self.node.handle.cancel(Side::Initiator, context);
    }

    /// Waits until every slot of `batch` has no completion outstanding: spins, then sleeps on
    /// the queue (or on another waiter's reading of it).
    ///
    /// A message that failed halfway (its send, or its receive) has the rest withdrawn. If
    /// the target does not answer within [`OP_TIMEOUT`], what is outstanding is withdrawn and
    /// the target is unreachable. What was withdrawn is reaped before its slot may be freed;
    /// what still has no completion [`WITHDRAW_REAP_TIMEOUT`] later is leaked (the provider
    /// may still write into it) and replaced by an empty slot that says so.
    fn settle(&self, target: NodeId, batch: u64, slots: &mut [Box<OpSlot>]) -> Result<(), OpError> {
        let clock = self.node.memory.clock();
        let started = clock.now();
        // How long the batch may wait from `started`: shortened once something is withdrawn.
        let mut limit = OP_TIMEOUT;
        if slots.iter().any(|s| s.withdrawn && s.outstanding > 0) {
            limit = WITHDRAW_REAP_TIMEOUT;
        }
        let mut timed_out = false;
        let mut removed = false;
        let mut polls = 0u32;
        loop {
            for arrival in self.mailboxes.take(batch) {
                let offset = arrival.index as usize;
                assert!(offset < slots.len(), "offset={offset} len={}", slots.len());
                let slot = &mut slots[offset];
                assert!(slot.outstanding > 0, "offset={offset}: extra completion");
                slot.outstanding -= 1;
                let Some(failure) = arrival.failure else {
                    continue;
                };
                // The first failure is the reason (a send's, not its withdrawn receive's).
                if slot.failed.is_none() {
                    slot.failed = Some(format!(
                        "{} to {target} failed: {}",
                        slot.call, failure.reason
                    ));
                }
                // A failed send's reply never comes; a failed receive ends the message too.
                if slot.outstanding > 0 && !slot.withdrawn {
                    self.withdraw(slot);
                    limit = limit.min(clock.now() - started + WITHDRAW_REAP_TIMEOUT);
                }
            }
            if slots.iter().all(|s| s.outstanding == 0) {
                break;
            }
            let elapsed = clock.now() - started;
            let mut just_removed = false;
            if !removed && !self.node.admits(target) {
                // The configuration this node serves removed the target (dead, most likely):
                // what is outstanding is withdrawn, or leaked, as on a timeout, without waiting
                // for it.
                removed = true;
                just_removed = true;
                for slot in slots.iter_mut().filter(|s| s.outstanding > 0) {
                    slot.failed.get_or_insert_with(|| {
                        format!(
                            "{} to {target}: {target} left the configuration this node serves \
                             before it completed",
                            slot.call
                        )
                    });
                }
            }
            if elapsed > limit || just_removed {
                if !timed_out && elapsed > OP_TIMEOUT {
                    timed_out = true;
                }
                let unwithdrawn = slots.iter().any(|s| s.outstanding > 0 && !s.withdrawn);
                if unwithdrawn {
                    for slot in slots.iter_mut().filter(|s| s.outstanding > 0) {
                        self.withdraw(slot);
                    }
                    limit = elapsed + WITHDRAW_REAP_TIMEOUT;
                    continue;
                }
                self.leak_outstanding(target, slots);
                break;
            }
            polls = polls.saturating_add(1);
            if let Err(e) = self.pump(batch, polls > SPIN_POLLS_MAX) {
                self.leak_outstanding(target, slots);
                return Err(self.node.unreachable(target, e));
            }
        }
        if timed_out {
            return Err(self.node.unreachable(
                target,
                format!("no completion from {target} within {OP_TIMEOUT:?}"),
            ));
        }
        Ok(())
    }

    /// Leaks every slot with a completion still outstanding (the provider may still write
    /// into it: never freed), putting in its place an empty one that failed.
    fn leak_outstanding(&self, target: NodeId, slots: &mut [Box<OpSlot>]) {
        for slot in slots.iter_mut().filter(|s| s.outstanding > 0) {
            let (batch, offset) = slot.batch_and_index();
            let mut empty = Box::new(OpSlot::new(batch, offset));
            empty.call = slot.call;
            empty.failed = Some(
                slot.failed
                    .clone()
                    .unwrap_or_else(|| format!("{} to {target}: no completion", slot.call)),
            );
            std::mem::forget(std::mem::replace(slot, empty));
            self.slots_leaked.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn result_of(&self, target: NodeId, op: &Op, slot: &OpSlot) -> OpResult {
        if self.is_message(op) {
            return decode_response(target, slot_tag(slot), &slot.reply);
        }
        Ok(match op {
            Op::Read { .. } => Completion::Read(slot.bytes.clone()),
            Op::Write { .. } => Completion::Write,
            Op::Cas { .. } => Completion::Cas {
                previous: slot.previous(),
            },
            Op::Persist { .. } | Op::Notify => unreachable!("messages are handled above"),
        })
    }
}

/// A completion the NIC thread read from the target queue, waiting to be handled.
enum Event {
    /// A completion: its context, tag and length.
    Done(*mut c_void, u64, usize),
    Failed(sys::ErrorEntry),
}

/// The initiator queue's completions, filed under the batch each belongs to.
///
/// Batches of any number of threads are in flight at once. One waiter at a time reads the
/// queue (whoever finds nobody reading it) and files what it read under each completion's
/// batch; the others wait on `arrived` for their own. So a batch to a peer that stopped
/// answering waits for its own completions only, and while it waits it hands every other
/// batch theirs (on providers with manual progress, those reads are also what moves them).
#[derive(Default)]
struct Mailboxes {
    state: Mutex<MailState>,
    arrived: Condvar,
}

#[derive(Default)]
struct MailState {
    /// A waiter is reading the queue; the others wait on `arrived`.
    reading: bool,
    /// Completions read and not taken yet, by batch. A batch has a mailbox from before it
    /// posts until it is settled; a completion of a batch without one (a batch given up on,
    /// whose slots are leaked) is dropped.
    by_batch: FastMap<u64, Vec<Arrival>>,
}

impl Mailboxes {
    fn open(&self, batch: u64) {
        let mut state = self.state.lock().expect(crate::POISONED);
        let fresh = state.by_batch.insert(batch, Vec::new()).is_none();
        assert!(fresh, "batch {batch} has a mailbox already");
    }

    fn close(&self, batch: u64) {
        let mut state = self.state.lock().expect(crate::POISONED);
        state.by_batch.remove(&batch);
    }

    fn take(&self, batch: u64) -> Vec<Arrival> {
        let mut state = self.state.lock().expect(crate::POISONED);
        state
            .by_batch
            .get_mut(&batch)
            .map(std::mem::take)
            .unwrap_or_default()
    }
}

/// A waiter's turn at reading the initiator queue, given up if it panics while reading.
struct ReadingTurn<'a>(&'a Mailboxes);

impl Drop for ReadingTurn<'_> {
    fn drop(&mut self) {
        // Only reached while panicking (forgotten otherwise): a poisoned lock is taken anyway.
        let mut state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        state.reading = false;
        drop(state);
        self.0.arrived.notify_all();
    }
}

/// One completion of the initiator queue, as its batch needs it.
struct Arrival {
    /// The slot's index in its batch.
    index: u64,
    failure: Option<Failure>,
}

/// An error completion: the provider's words for it.
struct Failure {
    reason: String,
}

/// The result a RESPONSE frame in `reply` carries, if it answers the request `expected`.
fn decode_response(target: NodeId, expected: u64, reply: &[u8]) -> OpResult {
    let protocol = |reason: String| OpError::Protocol {
        node: target,
        reason,
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

/// The request id a message slot was sent with (its request frame's first body field).
fn slot_tag(slot: &OpSlot) -> u64 {
    let at = frame::LEN_BYTES + 1;
    u64::from_le_bytes(slot.bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The address `op` works on; `None` for NOTIFY.
fn op_addr(op: &Op) -> Option<crate::addr::Addr> {
    match op {
        Op::Read { addr, .. }
        | Op::Write { addr, .. }
        | Op::Cas { addr, .. }
        | Op::Persist { addr, .. } => Some(*addr),
        Op::Notify => None,
    }
}

/// Checks an operation against the target's card: the same errors as the target would give.
fn check(
    card: &OfiCard,
    addr: crate::addr::Addr,
    key: AccessKey,
    len: u64,
) -> Result<&OfiArea, OpError> {
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

/// The NIC thread's receive contexts have this batch value; its sends, [`NIC_SEND`].
const NIC_RECEIVE: u64 = u64::MAX;
const NIC_SEND: u64 = u64::MAX - 1;
/// Responses the NIC thread may have in flight to one initiator; a response beyond them is
/// dropped (its requester times out). Bounds what an initiator that stopped reading (gone, or
/// its connection broken) holds of the NIC thread's memory; a live one has at most one message
/// in flight per thread of its node.
const SENDS_IN_FLIGHT_PER_PEER_MAX: usize = 16;
/// How long the NIC thread retries posting one response while the provider is busy (a
/// connection being made, a full queue) before it drops it (its requester times out): short,
/// since the thread answers nobody else meanwhile. A loopback connection takes ~20 ms.
const RESPONSE_RETRY_TIMEOUT: Duration = Duration::from_millis(250);

/// A receive buffer of the NIC thread.
#[repr(C)]
struct ReceiveSlot {
    context: Context,
    buf: Vec<u8>,
}

impl ReceiveSlot {
    fn post(&mut self, handle: &Handle) -> Result<(), sys::CallError> {
        let context = (&mut self.context as *mut Context).cast::<c_void>();
        // SAFETY: the slot is boxed and never dropped (the NIC thread's receives are held in
        // `ManuallyDrop`, leaked when it ends or panics), so it outlives the endpoint, whose
        // closing withdraws what is still posted.
        unsafe {
            handle.receive(
                Side::Target,
                self.buf.as_mut_ptr(),
                self.buf.len(),
                0,
                u64::MAX,
                context,
            )
        }
    }
}

/// A response the NIC thread is sending.
#[repr(C)]
struct SendSlot {
    context: Context,
    bytes: Vec<u8>,
    /// The initiator it goes to.
    to: NodeId,
}

/// The NIC thread: answers the messages peers send (PERSIST, NOTIFY, CAS without atomics) and,
/// on providers with manual progress, makes incoming READ/WRITE/CAS progress by reading its
/// queue. Sleeps on the queue's wait object when idle.
// Boxed: libfabric holds pointers into each slot, which must not move when the vector does.
#[allow(clippy::vec_box)]
fn serve(node: &Node, mut receives: ManuallyDrop<Vec<Box<ReceiveSlot>>>) {
    let mut nic = Nic {
        node,
        sends: ManuallyDrop::new(FastMap::default()),
        sends_by_peer: FastMap::default(),
        next_send: 0,
        backlog: std::collections::VecDeque::new(),
    };
    let mut idle_polls = 0u32;
    while !node.stop.load(Ordering::Acquire) {
        if nic.backlog.is_empty() {
            // Sends in flight do not keep it awake: their completions wake the queue.
            nic.gather(idle_polls > SPIN_POLLS_MAX);
        }
        let Some(event) = nic.backlog.pop_front() else {
            idle_polls = idle_polls.saturating_add(1);
            continue;
        };
        idle_polls = 0;
        let (pointer, tag, len, failed) = match event {
            Event::Done(pointer, tag, len) => (pointer, tag, len, false),
            Event::Failed(error) => (error.op_context, 0, 0, true),
        };
        if pointer.is_null() {
            continue;
        }
        match context_of(pointer) {
            (NIC_SEND, index) => nic.sent(index),
            (NIC_RECEIVE, index) => {
                let slot = &mut receives[index as usize];
                let sender = tag_sender(tag);
                let bytes = &slot.buf[..len.min(slot.buf.len())];
                // Nothing of a non-member's request is executed (nor of one whose card cannot
                // be found: there would be nowhere to answer it).
                let answer = if failed {
                    None
                } else if tag & TAG_TRANSFER_BIT != 0 {
                    transfer::serve(node, sender, tag, bytes)
                } else {
                    serve_request(node, sender, bytes)
                };
                repost(node, slot);
                if let Some((peer, response)) = answer {
                    nic.respond(&peer, tag, response);
                }
            }
            (batch, index) => panic!("a completion of unknown context {batch}/{index}"),
        }
    }
    // Posted receives and sends are cancelled when the endpoints close; their slots must
    // outlive that, so they are never dropped (`ManuallyDrop`: leaked once per node, here or
    // when the thread panics).
}

/// The NIC thread's state besides its receive buffers.
struct Nic<'a> {
    node: &'a Node,
    /// Responses being sent, until their completion is read; leaked with what is in flight
    /// when the thread ends, or panics.
    sends: ManuallyDrop<FastMap<u64, Box<SendSlot>>>,
    /// How many of `sends` go to each initiator (at most [`SENDS_IN_FLIGHT_PER_PEER_MAX`]).
    sends_by_peer: FastMap<NodeId, usize>,
    next_send: u64,
    /// Completions read but not handled yet.
    backlog: std::collections::VecDeque<Event>,
}

impl Nic<'_> {
    fn gather(&mut self, sleep: bool) {
        let mut entries = [CqEntry::EMPTY; ENTRIES_PER_READ];
        match self.node.completions(Side::Target, &mut entries, sleep) {
            Ok(count) => self.backlog.extend(
                entries[..count]
                    .iter()
                    .map(|e| Event::Done(e.op_context, e.tag, e.len)),
            ),
            Err(e) if e.code == sys::FI_EAVAIL => {
                while let Some(error) = self.node.handle.read_error(Side::Target) {
                    self.backlog.push_back(Event::Failed(error));
                }
            }
            // The queue itself failed: nothing this node can serve any more, and a node that
            // cannot serve should stop rather than look alive.
            Err(e) => panic!("ofi NIC thread of {}: {e}", self.node.memory.node_id()),
        }
    }

    /// Sends `response` to `sender`'s initiator endpoint, retrying while the provider is busy
    /// for [`RESPONSE_RETRY_TIMEOUT`] at most. A response that cannot be sent (the initiator
    /// unreachable, or [`SENDS_IN_FLIGHT_PER_PEER_MAX`] responses to it still in flight) is
    /// dropped, and said so: its requester times out, and the thread goes on serving others.
    fn respond(&mut self, peer: &Peer, tag: u64, response: Response) {
        let sender = peer.card.node;
        let in_flight = self.sends_by_peer.get(&sender).copied().unwrap_or(0);
        if in_flight >= SENDS_IN_FLIGHT_PER_PEER_MAX {
            self.dropped(sender, tag, "its earlier responses are not sent yet");
            return;
        }
        let index = self.next_send;
        self.next_send += 1;
        let mut send = Box::new(SendSlot {
            context: Context::new(NIC_SEND, index),
            bytes: frame::encode_to_vec(&Frame::Response(response)),
            to: sender,
        });
        let context = (&mut send.context as *mut Context).cast::<c_void>();
        let clock = self.node.memory.clock();
        let started = clock.now();
        loop {
            // SAFETY: the boxed slot goes into `sends` below, where it stays until its
            // completion is read (or is leaked when the thread ends); if the post fails, the
            // provider holds nothing of it.
            let sent = unsafe {
                self.node.handle.send(
                    Side::Target,
                    send.bytes.as_ptr(),
                    send.bytes.len(),
                    peer.initiator,
                    tag,
                    context,
                )
            };
            match sent {
                Ok(()) => {
                    self.sends.insert(index, send);
                    *self.sends_by_peer.entry(sender).or_insert(0) += 1;
                    return;
                }
                Err(e)
                    if e.code == sys::FI_EAGAIN
                        && clock.now() - started < RESPONSE_RETRY_TIMEOUT =>
                {
                    self.gather(false);
                    std::thread::yield_now();
                }
                Err(e) => {
                    self.dropped(sender, tag, &e.to_string());
                    return;
                }
            }
        }
    }

    /// A response's send completed (or failed): its slot goes.
    fn sent(&mut self, index: u64) {
        let Some(send) = self.sends.remove(&index) else {
            return;
        };
        if let Some(count) = self.sends_by_peer.get_mut(&send.to) {
            *count -= 1;
            if *count == 0 {
                self.sends_by_peer.remove(&send.to);
            }
        }
    }

    /// Says that a response was dropped: its requester will report the target unreachable,
    /// and this is the target's side of that story.
    fn dropped(&self, sender: NodeId, tag: u64, why: &str) {
        eprintln!(
            "acre: ofi NIC thread of {}: dropped the response to {sender} (request {tag:#x}): \
             {why}; its requester times out",
            self.node.memory.node_id()
        );
    }
}

/// A REQUEST frame from `sender` in `bytes`, executed if the sender is a member this node can
/// answer at the endpoint it sent from ([`Node::serving`]): the peer to answer and the response.
/// `None` if `bytes` are not a request frame, or the sender is not served.
fn serve_request(node: &Node, sender: NodeId, bytes: &[u8]) -> Option<(Arc<Peer>, Response)> {
    let Ok(Some((Frame::Request(request), _))) = frame::decode(bytes) else {
        return None; // not a request frame: nothing to answer
    };
    let fingerprint = (request.request_id >> 32) as u32;
    node.serving(sender, fingerprint, || {
        exec::answer_request(&node.memory, request, "ofi")
    })
}

fn repost(node: &Node, slot: &mut ReceiveSlot) {
    // A receive that cannot be reposted leaves one buffer fewer; the others still serve.
    let _ = slot.post(&node.handle);
}

#[cfg(test)]
mod tests;
