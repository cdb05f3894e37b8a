//! The fabric: one transport-independent API for one-sided operations on registered memory,
//! shaped like RDMA verbs so that the protocol above it is written once.
//!
//! A caller posts a batch of [`Op`]s to one target node and later polls or waits for their
//! completions, which come back in posting order. Operations posted to one node in one batch are
//! executed in order (a WRITE followed by a WRITE to the same ring lands in that order), which is
//! what the ring channels rely on to store a record's commit word last.
//!
//! Transports ([`Transport`]):
//! - `local`: every node in this process; operations are atomic loads, stores and CAS on the
//!   target's memory.
//! - `shm`: node processes on one host; the initiator maps the target's region files (found
//!   through the cluster directory, named by their access keys) and does the same.
//! - `tcp`: any network; each node runs a NIC thread that serves READ/WRITE/CAS/PERSIST on its
//!   registered memory without involving application threads. See [`tcp`].
//! - `ofi` (cargo feature `ofi`): libfabric, so RDMA NICs do READ/WRITE/CAS themselves; here its
//!   software providers over loopback. See `ofi` and docs/ofi.md.
//! - `verbs` (cargo feature `rdma`): ibverbs directly, RC queue pairs set up over a TCP
//!   bootstrap. Not run on RDMA hardware: its logic is tested against a fake verbs layer. See
//!   `verbs` and docs/verbs.md.
//!
//! Every operation is checked against the target area's access key and bounds before it touches
//! memory ([`crate::region::check_access`]); a failure is an [`OpError`] for that operation only.

pub mod doorbell;
pub mod exec;
pub mod fault;
pub mod local;
pub mod membership;
pub mod memory;
#[cfg(feature = "ofi")]
pub mod ofi;
pub mod shm;
pub mod transport_kind;
#[cfg(feature = "rdma")]
pub mod verbs;

use crate::addr::{Addr, NodeId};
use crate::region::{AccessError, AccessKey};
pub use doorbell::Doorbell;
pub use membership::Membership;
pub use memory::NodeMemory;

/// Largest READ or WRITE one operation may carry (also bounds TCP frames).
pub const OP_BYTES_MAX: u32 = 8 << 20;

/// A one-sided operation on a target node's registered memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes (whole aligned words, in increasing address order).
    Read {
        addr: Addr,
        key: AccessKey,
        len: u32,
    },
    /// Write `data` (whole aligned words, in increasing address order).
    Write {
        addr: Addr,
        key: AccessKey,
        data: Vec<u8>,
    },
    /// Compare-and-swap one aligned 8-byte word.
    Cas {
        addr: Addr,
        key: AccessKey,
        expected: u64,
        new: u64,
    },
    /// Make every earlier write to `[addr, addr + len)` durable at the target (RDMA FLUSH).
    Persist {
        addr: Addr,
        key: AccessKey,
        len: u32,
    },
    /// Ring the target's doorbell: wake its pollers (like a WRITE with immediate).
    Notify,
}

impl Op {
    /// Short name for logs and benchmark labels.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Cas { .. } => "cas",
            Op::Persist { .. } => "persist",
            Op::Notify => "notify",
        }
    }
}

/// The result of one successful operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Read(Vec<u8>),
    Write,
    /// The word's value before the CAS: the CAS succeeded iff it equals `expected`.
    Cas {
        previous: u64,
    },
    Persist,
    Notify,
}

/// Why one operation failed. Access errors concern only that operation; the others mean the
/// target could not be reached and every operation of the batch failed with them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("{len} bytes in one operation exceeds the maximum of {max}: split it")]
    TooLarge { len: u64, max: u32 },
    #[error("{node} is not a known node of this cluster")]
    UnknownNode { node: NodeId },
    #[error("{node} is unreachable ({reason}): wait for reconfiguration, then retry")]
    Unreachable { node: NodeId, reason: String },
    #[error("persist failed at {node}: {reason}; the write is not durable")]
    PersistFailed { node: NodeId, reason: String },
    #[error("{node} violated the wire protocol: {reason}")]
    Protocol { node: NodeId, reason: String },
    /// The target refused this node: it is not a member of the target's configuration
    /// `config`, or it connected as a member of an older one (or it is an observer and the
    /// operation writes). Nothing of the refused operations executed. Retrying as is cannot
    /// succeed: learn the current configuration first, or stop if this node was removed.
    #[error(
        "{node} refused this node: it is not a member of {node}'s configuration {config} (or \
         is bound to an older one, or is an observer that may only read); nothing was \
         executed: learn the current configuration before retrying"
    )]
    NotMember { node: NodeId, config: u64 },
    /// The target's own lease from the configuration manager has lapsed
    /// (docs/failures.md#leases): it serves nothing until it holds one again, or the CM removes
    /// it. Nothing of the refused operation executed. Retry once the CM has renewed the lease or
    /// installed a configuration without the target.
    #[error(
        "{node}'s lease from the configuration manager has lapsed: nothing was executed; retry \
         once it is renewed or a new configuration is installed"
    )]
    LeaseExpired { node: NodeId },
}

pub type OpResult = Result<Completion, OpError>;

/// Completions of a posted batch, in posting order.
pub struct Pending {
    inner: PendingInner,
}

enum PendingInner {
    /// The results until `poll` hands them out.
    Ready(Option<Vec<OpResult>>),
    Tcp(tcp::PendingBatch),
}

impl Pending {
    pub(crate) fn ready(results: Vec<OpResult>) -> Pending {
        Pending {
            inner: PendingInner::Ready(Some(results)),
        }
    }

    pub(crate) fn tcp(batch: tcp::PendingBatch) -> Pending {
        Pending {
            inner: PendingInner::Tcp(batch),
        }
    }

    /// The completions if every operation has completed, without blocking. They are handed out
    /// once: later calls return `None`.
    pub fn poll(&mut self) -> Option<Vec<OpResult>> {
        match &mut self.inner {
            PendingInner::Ready(results) => results.take(),
            PendingInner::Tcp(batch) => batch.poll(),
        }
    }

    /// Blocks until every operation has completed (spinning briefly, then sleeping). A task of
    /// [`crate::interleave::run`] lets the thread's other tasks run meanwhile.
    pub fn wait(mut self) -> Vec<OpResult> {
        if matches!(self.inner, PendingInner::Tcp(_)) && crate::interleave::may_switch() {
            loop {
                if let Some(results) = self.poll() {
                    crate::interleave::progressed();
                    return results;
                }
                if !crate::interleave::wait_turn() {
                    break;
                }
            }
            let results = self.wait_blocking();
            crate::interleave::progressed();
            return results;
        }
        self.wait_blocking()
    }

    fn wait_blocking(self) -> Vec<OpResult> {
        match self.inner {
            PendingInner::Ready(results) => results.unwrap_or_default(),
            PendingInner::Tcp(batch) => batch.wait(),
        }
    }
}

/// How this node reaches the others.
pub enum Transport {
    Local(local::LocalTransport),
    Shm(shm::ShmTransport),
    Tcp(tcp::TcpTransport),
    /// Completes each batch inside `post`, so its [`Pending`] is always ready.
    #[cfg(feature = "ofi")]
    Ofi(ofi::OfiTransport),
    /// Completes each batch inside `post`, so its [`Pending`] is always ready. Has not run on
    /// RDMA hardware (docs/verbs.md).
    #[cfg(feature = "rdma")]
    Verbs(verbs::VerbsTransport<verbs::ibverbs::IbVerbs>),
    /// The verbs transport on its in-process fake verbs layer (test support, feature
    /// `rdma-fake`): what the conformance suite runs the transport's logic on.
    #[cfg(feature = "rdma-fake")]
    VerbsFake(verbs::VerbsTransport<verbs::fake::FakeVerbs>),
}

/// One node's endpoint on the fabric: its own registered memory and its transport to the others.
pub struct Fabric {
    memory: std::sync::Arc<NodeMemory>,
    transport: Transport,
    /// Faults a test or the simulation injects into this node's batches to others.
    faults: Option<std::sync::Arc<fault::FaultPlan>>,
}

impl Fabric {
    /// The endpoint of the node whose memory is `memory`. Its tcp transport, if that is what
    /// `transport` is, reads the node's clock ([`NodeMemory::clock`]) from now on, so a node
    /// has one clock however its pieces were made.
    pub fn new(memory: std::sync::Arc<NodeMemory>, mut transport: Transport) -> Fabric {
        if let Transport::Tcp(tcp) = &mut transport {
            tcp.set_clock(memory.clock().clone());
        }
        Fabric {
            memory,
            transport,
            faults: None,
        }
    }

    /// The node's clock: what every timeout of the node reads (docs/failures.md#clock).
    pub fn clock(&self) -> &crate::clock::Clock {
        self.memory.clock()
    }

    /// The faults injected into this fabric's batches, if any: a fabric with them stands for
    /// a network that can stall.
    pub fn faults(&self) -> Option<&std::sync::Arc<fault::FaultPlan>> {
        self.faults.as_ref()
    }

    /// This fabric with `plan`'s faults injected into the batches it posts to other nodes.
    pub fn with_faults(mut self, plan: std::sync::Arc<fault::FaultPlan>) -> Fabric {
        self.faults = Some(plan);
        self
    }

    pub fn node_id(&self) -> NodeId {
        self.memory.node_id()
    }

    /// This node's registered memory.
    pub fn memory(&self) -> &std::sync::Arc<NodeMemory> {
        &self.memory
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Whether a READ loads a slot's words in increasing address order, each an atomic 8-byte
    /// load (`local`, `shm`, `tcp`: docs/formats.md#the-fabric). Where it does not (`ofi`, whose
    /// providers copy with memcpy, the kernel or a NIC), a READ racing an install may see a
    /// slot's header and trailer agree over words of two installs, which only the object's sum
    /// tells apart: readers then read such a slot again instead of calling it damaged.
    pub fn reads_in_address_order(&self) -> bool {
        match &self.transport {
            Transport::Local(t) => t.reads_in_address_order(),
            Transport::Shm(_) | Transport::Tcp(_) => true,
            #[cfg(feature = "ofi")]
            Transport::Ofi(_) => false,
            // The NIC's DMA reads in whatever order it likes.
            #[cfg(feature = "rdma")]
            Transport::Verbs(_) => false,
            #[cfg(feature = "rdma-fake")]
            Transport::VerbsFake(_) => false,
        }
    }

    pub fn transport_name(&self) -> &'static str {
        match &self.transport {
            Transport::Local(_) => "local",
            Transport::Shm(_) => "shm",
            Transport::Tcp(_) => "tcp",
            #[cfg(feature = "ofi")]
            Transport::Ofi(_) => "ofi",
            #[cfg(feature = "rdma")]
            Transport::Verbs(_) => "verbs",
            #[cfg(feature = "rdma-fake")]
            Transport::VerbsFake(_) => "verbs-fake",
        }
    }

    /// Forgets what this node cached about `node` (mapped files, address): it restarted, so
    /// its areas have new keys. The next operation looks it up afresh.
    pub fn forget_peer(&self, node: NodeId) {
        if let Transport::Shm(shm) = &self.transport {
            shm.forget(node);
        }
    }

    /// Posts `ops` to `target`; they execute in order. Operations on this node's own memory are
    /// done directly on every transport.
    pub fn post(&self, target: NodeId, ops: Vec<Op>) -> Pending {
        if let Some(error) = exec::oversize(&ops) {
            return Pending::ready(ops.iter().map(|_| Err(error.clone())).collect());
        }
        if target == self.node_id() {
            return Pending::ready(
                ops.iter()
                    .map(|op| exec::execute(&self.memory, op))
                    .collect(),
            );
        }
        let action = self
            .faults
            .as_ref()
            .and_then(|plan| plan.decide(self.node_id(), target, &ops));
        match action {
            None => self.post_to_transport(target, ops),
            Some(fault::Action::Fail) => {
                Pending::ready(ops.iter().map(|_| fault::injected(target)).collect())
            }
            Some(fault::Action::Partial(executed)) => {
                let executed = executed.min(ops.len());
                let failed = ops.len() - executed;
                let mut results = self
                    .post_to_transport(target, ops[..executed].to_vec())
                    .wait();
                results.extend((0..failed).map(|_| fault::injected(target)));
                Pending::ready(results)
            }
            Some(fault::Action::Delay(delay)) => {
                // A network's delay is real time, whatever this node's clock says.
                std::thread::sleep(delay);
                self.post_to_transport(target, ops)
            }
        }
    }

    fn post_to_transport(&self, target: NodeId, ops: Vec<Op>) -> Pending {
        match &self.transport {
            Transport::Local(t) => t.post(target, &ops),
            Transport::Shm(t) => t.post(target, &ops),
            Transport::Tcp(t) => t.post(target, ops),
            #[cfg(feature = "ofi")]
            Transport::Ofi(t) => t.post(target, &ops),
            #[cfg(feature = "rdma")]
            Transport::Verbs(t) => t.post(target, &ops),
            #[cfg(feature = "rdma-fake")]
            Transport::VerbsFake(t) => t.post(target, &ops),
        }
    }

    /// Posts and waits.
    pub fn execute(&self, target: NodeId, ops: Vec<Op>) -> Vec<OpResult> {
        self.post(target, ops).wait()
    }

    /// One READ.
    pub fn read(
        &self,
        target: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u32,
    ) -> Result<Vec<u8>, OpError> {
        match one(self.execute(target, vec![Op::Read { addr, key, len }]))? {
            Completion::Read(bytes) => Ok(bytes),
            other => Err(mismatch(target, "read", &other)),
        }
    }

    /// A READ of a large range (data recovery's reads of a region copy, a transaction's read of a
    /// large object): on ofi, by the hybrid
    /// transfer where the transport was configured for it ([`ofi::OfiTransport::read_large`]);
    /// one READ otherwise.
    pub fn read_large(
        &self,
        target: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u32,
    ) -> Result<Vec<u8>, OpError> {
        match self.transport() {
            #[cfg(feature = "ofi")]
            Transport::Ofi(ofi) if target != self.node_id() && ofi.reads_large_by_transfer() => {
                ofi.read_large(target, addr, key, len)
            }
            _ => self.read(target, addr, key, len),
        }
    }

    /// How [`Fabric::read_large`] moves bytes, for logs: `READ`, or the hybrid transfer and its
    /// threshold.
    pub fn read_large_path(&self) -> String {
        match self.transport() {
            #[cfg(feature = "ofi")]
            Transport::Ofi(ofi) => ofi.read_large_path(),
            _ => "READ".to_string(),
        }
    }

    /// One WRITE.
    pub fn write(
        &self,
        target: NodeId,
        addr: Addr,
        key: AccessKey,
        data: Vec<u8>,
    ) -> Result<(), OpError> {
        match one(self.execute(target, vec![Op::Write { addr, key, data }]))? {
            Completion::Write => Ok(()),
            other => Err(mismatch(target, "write", &other)),
        }
    }

    /// One CAS; returns the previous value (the CAS succeeded iff it equals `expected`).
    pub fn cas(
        &self,
        target: NodeId,
        addr: Addr,
        key: AccessKey,
        expected: u64,
        new: u64,
    ) -> Result<u64, OpError> {
        match one(self.execute(
            target,
            vec![Op::Cas {
                addr,
                key,
                expected,
                new,
            }],
        ))? {
            Completion::Cas { previous } => Ok(previous),
            other => Err(mismatch(target, "cas", &other)),
        }
    }
}

fn one(mut results: Vec<OpResult>) -> OpResult {
    assert_eq!(results.len(), 1, "one operation posted");
    results.pop().expect("length checked")
}

fn mismatch(node: NodeId, op: &str, got: &Completion) -> OpError {
    OpError::Protocol {
        node,
        reason: format!("{op} completed as {got:?}"),
    }
}

pub mod tcp;
