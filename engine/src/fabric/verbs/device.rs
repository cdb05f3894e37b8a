//! The verbs layer the transport is written against: the few ibverbs calls it makes (one
//! device and protection domain, memory registration, completion queues with a completion
//! channel, RC queue pairs and their state changes, posting work requests, polling), as a
//! trait with plain Rust types. Two implementations: [`super::ibverbs`] over `rdma-sys`, and
//! the in-process fake the unit tests run the transport against (`super::fake`).
//!
//! The types mirror ibverbs' (`ibv_send_wr`, `ibv_wc`, `ibv_wc_status`) closely enough that the
//! real implementation is a field-by-field translation, so that what the fake tests is what the
//! device would see.

use std::time::Duration;

/// A failed ibverbs call: which call, and the errno it reported.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} failed: {reason}")]
pub struct CallError {
    pub call: &'static str,
    pub reason: String,
}

impl CallError {
    pub fn errno(call: &'static str, errno: i32) -> CallError {
        CallError {
            call,
            // "<description> (os error <errno>)"
            reason: std::io::Error::from_raw_os_error(errno).to_string(),
        }
    }
}

/// `ibv_post_send`/`ibv_post_recv` refused a work request: it and every one after it in the
/// chain were not posted; those before it were.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{call} refused work request {bad_index} of the chain: {reason}")]
pub struct PostError {
    pub call: &'static str,
    pub bad_index: usize,
    pub reason: String,
}

/// Registration keys of one memory region: `lkey` for this node's own work requests, `rkey`
/// for its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrKeys {
    pub lkey: u32,
    pub rkey: u32,
}

/// What a peer's queue pair needs of this one to connect to it (RTR): exchanged over the TCP
/// bootstrap, never in the card (a queue pair is per peer pair and per connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpEndpoint {
    /// The queue pair number (24 bits).
    pub qpn: u32,
    /// The first packet sequence number its send queue uses (24 bits).
    pub psn: u32,
    /// The port's local identifier (InfiniBand); 0 on RoCE.
    pub lid: u16,
    /// The port's GID at the configured index (RoCE routes by it; InfiniBand may ignore it).
    pub gid: [u8; 16],
}

/// The largest value of a 24-bit field (QP number, packet sequence number).
pub const FIELD_24_MAX: u32 = (1 << 24) - 1;

/// The queue pair state changes the transport makes (`ibv_modify_qp`), in their only order:
/// RESET → INIT → RTR → RTS, and ERROR from any state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpTransition {
    /// RESET → INIT: bound to the port, remote READ/WRITE/atomics allowed.
    Init,
    /// INIT → RTR: connected to `remote`, expecting its packet sequence numbers.
    ReadyToReceive { remote: QpEndpoint },
    /// RTR → RTS: sending from packet sequence number `psn`.
    ReadyToSend { psn: u32 },
    /// Any → ERROR: outstanding work requests complete with `WR_FLUSH_ERR`.
    Error,
}

/// One scatter/gather element: `length` bytes at `addr` in a registration with key `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sge {
    pub addr: u64,
    pub length: u32,
    pub lkey: u32,
}

/// What a send work request does (`ibv_wr_opcode` and its `wr.rdma`/`wr.atomic` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// IBV_WR_RDMA_READ: the remote range into the local element.
    Read { remote_addr: u64, rkey: u32 },
    /// IBV_WR_RDMA_WRITE: the local element into the remote range.
    Write { remote_addr: u64, rkey: u32 },
    /// IBV_WR_ATOMIC_CMP_AND_SWP on the aligned remote word; the previous value lands in the
    /// local element (8 bytes).
    CompareSwap {
        remote_addr: u64,
        rkey: u32,
        compare: u64,
        swap: u64,
    },
    /// IBV_WR_SEND: the local element into the peer's next posted receive.
    Send,
}

impl SendKind {
    /// The verb's name, as errors give it.
    pub fn verb(&self) -> &'static str {
        match self {
            SendKind::Read { .. } => "RDMA_READ",
            SendKind::Write { .. } => "RDMA_WRITE",
            SendKind::CompareSwap { .. } => "ATOMIC_CMP_AND_SWP",
            SendKind::Send => "SEND",
        }
    }
}

/// One send work request (`ibv_send_wr`, one scatter/gather element: every buffer the
/// transport posts from is contiguous in its staging registration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWr {
    pub wr_id: u64,
    pub sge: Sge,
    pub kind: SendKind,
    /// IBV_SEND_SIGNALED: a successful completion is reported (an error always is).
    pub signaled: bool,
    /// IBV_SEND_FENCE: starts only after every earlier READ and atomic of the queue pair has
    /// completed.
    pub fence: bool,
}

/// One receive work request (`ibv_recv_wr`, one element).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvWr {
    pub wr_id: u64,
    pub sge: Sge,
}

/// `enum ibv_wc_status`, with the codes ibverbs gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    Success,
    LocLenErr,
    LocQpOpErr,
    LocEecOpErr,
    LocProtErr,
    WrFlushErr,
    MwBindErr,
    BadRespErr,
    LocAccessErr,
    RemInvReqErr,
    RemAccessErr,
    RemOpErr,
    RetryExcErr,
    RnrRetryExcErr,
    LocRddViolErr,
    RemInvRdReqErr,
    RemAbortErr,
    InvEecnErr,
    InvEecStateErr,
    FatalErr,
    RespTimeoutErr,
    GeneralErr,
    /// A code this transport does not know (a newer libibverbs).
    Other(u32),
}

impl WcStatus {
    /// The status of ibverbs code `code`.
    pub fn from_code(code: u32) -> WcStatus {
        use WcStatus::*;
        const BY_CODE: [WcStatus; 22] = [
            Success,
            LocLenErr,
            LocQpOpErr,
            LocEecOpErr,
            LocProtErr,
            WrFlushErr,
            MwBindErr,
            BadRespErr,
            LocAccessErr,
            RemInvReqErr,
            RemAccessErr,
            RemOpErr,
            RetryExcErr,
            RnrRetryExcErr,
            LocRddViolErr,
            RemInvRdReqErr,
            RemAbortErr,
            InvEecnErr,
            InvEecStateErr,
            FatalErr,
            RespTimeoutErr,
            GeneralErr,
        ];
        BY_CODE.get(code as usize).copied().unwrap_or(Other(code))
    }

    /// ibverbs' name for it (`ibv_wc_status_str` spells them differently per version; these
    /// are the enum's names, which a reader can search for).
    pub fn name(&self) -> String {
        use WcStatus::*;
        let name = match self {
            Success => "IBV_WC_SUCCESS",
            LocLenErr => "IBV_WC_LOC_LEN_ERR",
            LocQpOpErr => "IBV_WC_LOC_QP_OP_ERR",
            LocEecOpErr => "IBV_WC_LOC_EEC_OP_ERR",
            LocProtErr => "IBV_WC_LOC_PROT_ERR",
            WrFlushErr => "IBV_WC_WR_FLUSH_ERR",
            MwBindErr => "IBV_WC_MW_BIND_ERR",
            BadRespErr => "IBV_WC_BAD_RESP_ERR",
            LocAccessErr => "IBV_WC_LOC_ACCESS_ERR",
            RemInvReqErr => "IBV_WC_REM_INV_REQ_ERR",
            RemAccessErr => "IBV_WC_REM_ACCESS_ERR",
            RemOpErr => "IBV_WC_REM_OP_ERR",
            RetryExcErr => "IBV_WC_RETRY_EXC_ERR",
            RnrRetryExcErr => "IBV_WC_RNR_RETRY_EXC_ERR",
            LocRddViolErr => "IBV_WC_LOC_RDD_VIOL_ERR",
            RemInvRdReqErr => "IBV_WC_REM_INV_RD_REQ_ERR",
            RemAbortErr => "IBV_WC_REM_ABORT_ERR",
            InvEecnErr => "IBV_WC_INV_EECN_ERR",
            InvEecStateErr => "IBV_WC_INV_EEC_STATE_ERR",
            FatalErr => "IBV_WC_FATAL_ERR",
            RespTimeoutErr => "IBV_WC_RESP_TIMEOUT_ERR",
            GeneralErr => "IBV_WC_GENERAL_ERR",
            Other(code) => return format!("ibv_wc_status {code}"),
        };
        name.to_string()
    }

    /// What the status means for this transport and what to do about it, for the error that
    /// reports it.
    pub fn meaning(&self) -> &'static str {
        use WcStatus::*;
        match self {
            Success => "success",
            RetryExcErr | RespTimeoutErr => {
                "the peer did not acknowledge (gone, or its link is down): wait for \
                 reconfiguration, then retry"
            }
            RnrRetryExcErr => {
                "the peer had no receive posted (its NIC thread is stalled or gone): wait for \
                 reconfiguration, then retry"
            }
            RemAccessErr => {
                "the peer's NIC refused the rkey or range: the card is stale (the node \
                 restarted or re-registered); fetch its card again"
            }
            RemInvReqErr | RemInvRdReqErr => {
                "the peer's NIC found the request invalid (a message larger than its receive, \
                 or an operation its queue pair does not allow)"
            }
            RemOpErr | RemAbortErr => "the peer's NIC could not complete the operation",
            WrFlushErr => {
                "flushed: the queue pair went into the error state before this request ran \
                 (an earlier request failed)"
            }
            LocLenErr | LocProtErr | LocAccessErr | LocQpOpErr | LocEecOpErr | MwBindErr
            | LocRddViolErr => {
                "this node's own work request was malformed (a bug in the transport): report it"
            }
            BadRespErr | InvEecnErr | InvEecStateErr | FatalErr | GeneralErr | Other(_) => {
                "the device failed: check the NIC and its driver"
            }
        }
    }
}

/// What a completion is for (`enum ibv_wc_opcode`), as far as this transport posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    Send,
    RdmaWrite,
    RdmaRead,
    CompareSwap,
    Recv,
    /// Error completions need not carry a valid opcode.
    Unknown,
}

/// One work completion (`ibv_wc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    pub wr_id: u64,
    pub status: WcStatus,
    pub opcode: WcOpcode,
    /// Bytes received (receives only).
    pub byte_len: u32,
    /// The local queue pair it completed on.
    pub qp_num: u32,
    /// The device's own code for an error, for its vendor's documentation.
    pub vendor_err: u32,
}

/// Work requests a queue pair's queues hold at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    pub send_wr_max: u32,
    pub recv_wr_max: u32,
}

/// One opened device with one protection domain, on one port: the ibverbs calls the
/// transport makes. Handles are values the implementation hands out and takes back; they are
/// released only through the trait (`deregister`, `destroy_qp`, `destroy_cq`), since releasing
/// one is a device call.
pub trait Verbs: Send + Sync + 'static {
    type Mr: Send + Sync;
    type Cq: Send + Sync;
    type Qp: Send + Sync;

    /// The device's name (`ibv_get_device_name`), for errors.
    fn device_name(&self) -> &str;

    /// The port's LID and GID, for this side of a connection's [`QpEndpoint`].
    fn port_address(&self) -> (u16, [u8; 16]);

    /// Whether the device has 64-bit compare-and-swap (`atomic_cap` is not ATOMIC_NONE).
    fn has_atomics(&self) -> bool;

    /// Registers `[addr, addr + len)` for local access and remote READ, WRITE and atomics.
    ///
    /// # Safety
    /// The range is memory this process owns and keeps mapped until [`Verbs::deregister`]
    /// returns; the device may read and write it meanwhile at any time, so the caller accesses
    /// it only in ways that tolerate that (atomic words, or buffers it does not touch while
    /// work requests on them are outstanding).
    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Self::Mr, CallError>;

    fn mr_keys(&self, mr: &Self::Mr) -> MrKeys;

    /// Releases a registration; the device no longer accesses its range once it returns.
    fn deregister(&self, mr: Self::Mr);

    /// A completion queue of `entries` entries with its own completion channel.
    fn create_cq(&self, entries: u32) -> Result<Self::Cq, CallError>;

    /// Releases a completion queue no queue pair uses any more.
    fn destroy_cq(&self, cq: Self::Cq);

    /// A reliable-connected queue pair in RESET whose send and receive completions go to `cq`.
    fn create_qp(&self, cq: &Self::Cq, caps: QpCaps) -> Result<Self::Qp, CallError>;

    fn qp_num(&self, qp: &Self::Qp) -> u32;

    fn modify_qp(&self, qp: &Self::Qp, transition: QpTransition) -> Result<(), CallError>;

    /// Releases a queue pair; the device no longer accesses its buffers once it returns.
    fn destroy_qp(&self, qp: Self::Qp);

    /// Posts `wrs` to the send queue as one chain (one doorbell).
    ///
    /// # Safety
    /// Every element names memory registered on this device that stays valid, and that the
    /// caller does not access, until the request's completion is read (or the queue pair is
    /// destroyed).
    unsafe fn post_send(&self, qp: &Self::Qp, wrs: &[SendWr]) -> Result<(), PostError>;

    /// Posts `wrs` to the receive queue.
    ///
    /// # Safety
    /// As for [`Verbs::post_send`].
    unsafe fn post_recv(&self, qp: &Self::Qp, wrs: &[RecvWr]) -> Result<(), PostError>;

    /// Appends up to `max` completions to `out`; returns how many.
    fn poll_cq(
        &self,
        cq: &Self::Cq,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> Result<usize, CallError>;

    /// Asks for an event on the completion channel at the next completion
    /// (`ibv_req_notify_cq`).
    fn arm_cq(&self, cq: &Self::Cq) -> Result<(), CallError>;

    /// Sleeps until an event of an armed queue arrives on its channel, for `timeout` at most;
    /// `Ok(true)` if one did (it is read and acknowledged).
    fn wait_cq(&self, cq: &Self::Cq, timeout: Duration) -> Result<bool, CallError>;
}
