//! Other nodes' ALLOC requests, served off the worker thread. Reserving a slot can mean copying
//! a new block's header to every backup of the region and waiting for that
//! (docs/protocol.md#allocation); the worker, which votes on every coordinator's LOCK, must not
//! wait on a slow backup meanwhile. Serving ALLOCs apart is safe: an ALLOC record is not kept,
//! and whatever the coordinator sends about the slot (its LOCK, a RELEASE) comes after the
//! reply it waits for.

use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::slab::AllocError;
use acre_txn::TxnNode;
use acre_txn::alloc::ReserveError;
use acre_txn::record::{ReplyTo, TxnId};
use acre_txn::reply::{Code, alloc_failure};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// ALLOC requests waiting to be served; more are refused at once (the coordinator may retry).
pub const ALLOC_QUEUE_MAX: usize = 1024;

/// One ALLOC request.
pub(crate) struct AllocRequest {
    pub(crate) sender: NodeId,
    pub(crate) reply: ReplyTo,
    pub(crate) txn: TxnId,
    pub(crate) region: RegionId,
    pub(crate) len: u32,
    pub(crate) near: Option<Addr>,
}

/// The thread that serves ALLOC requests, and its queue; the thread ends when this is dropped.
pub(crate) struct Allocations {
    node: Arc<TxnNode>,
    queue: SyncSender<AllocRequest>,
}

impl Allocations {
    pub(crate) fn spawn(node: Arc<TxnNode>) -> std::io::Result<Allocations> {
        let (queue, requests) = sync_channel(ALLOC_QUEUE_MAX);
        let serving = node.clone();
        std::thread::Builder::new()
            .name(format!("acre-{}-allocations", node.node_id()))
            .spawn(move || run(&serving, requests))?;
        Ok(Allocations { node, queue })
    }

    /// Queues `request`; a full queue refuses it at once.
    pub(crate) fn serve(&self, request: AllocRequest) {
        match self.queue.try_send(request) {
            Ok(()) => {}
            Err(TrySendError::Full(request) | TrySendError::Disconnected(request)) => {
                tracing::warn!(node = %self.node.node_id(), "ALLOC queue full: refused");
                let values = [alloc_failure::OTHER, 0, 0];
                answer(&self.node, &request, Code::AllocFailed, values);
            }
        }
    }
}

fn run(node: &TxnNode, requests: Receiver<AllocRequest>) {
    for request in requests {
        let (code, values) = reserve(node, &request);
        answer(node, &request, code, values);
    }
}

/// Reserves the slot and says how it went, in the words of a reply.
fn reserve(node: &TxnNode, request: &AllocRequest) -> (Code, [u64; 3]) {
    match node.reserve_here(request.region, request.len as usize, request.near) {
        Ok(reserved) => {
            node.primary().track_allocation(request.txn, reserved.addr);
            let values = [
                reserved.addr.to_u64(),
                reserved.version,
                reserved.payload_bytes as u64,
            ];
            (Code::Allocated, values)
        }
        Err(ReserveError::Alloc(AllocError::RegionFull { .. })) => {
            (Code::AllocFailed, [alloc_failure::REGION_FULL, 0, 0])
        }
        Err(ReserveError::Alloc(AllocError::Recovering { .. })) => {
            (Code::AllocFailed, [alloc_failure::RECOVERING, 0, 0])
        }
        Err(ReserveError::Alloc(AllocError::TooLarge { max, .. })) => {
            (Code::AllocFailed, [alloc_failure::TOO_LARGE, max as u64, 0])
        }
        // No such primary region here: this node has not adopted the configuration that
        // creates it or makes it primary here (the asker adopted it first), or moved on.
        Err(ReserveError::Alloc(AllocError::NotAnObject { .. })) => (
            Code::AllocFailed,
            [alloc_failure::NOT_PRIMARY, node.config_id(), 0],
        ),
        Err(ReserveError::Unreplicated { backup, .. }) => (
            Code::AllocFailed,
            [alloc_failure::UNREPLICATED, backup.0 as u64, 0],
        ),
        Err(ReserveError::Reconfiguring { config, .. }) => {
            (Code::AllocFailed, [alloc_failure::RECONFIGURING, config, 0])
        }
        Err(ReserveError::Alloc(_)) => (Code::AllocFailed, [alloc_failure::OTHER, 0, 0]),
    }
}

fn answer(node: &TxnNode, request: &AllocRequest, code: Code, values: [u64; 3]) {
    node.reply(request.sender, request.reply, request.txn.seq, code, values);
}
