//! Carrying out one operation on memory this process has mapped: the target's own memory (every
//! transport's loopback, the TCP NIC thread) or another process's region file (shm).
//!
//! Reads load words in increasing address order with acquire ordering, and writes store them in
//! increasing order with release ordering: the object format's torn-read detection and the ring's
//! commit word depend on exactly that.

use crate::addr::NodeId;
use crate::fabric::memory::NodeMemory;
use crate::fabric::{Completion, OP_BYTES_MAX, Op, OpError, OpResult};
use crate::region::{AccessError, Region};
use std::sync::atomic::Ordering;

/// A NIC thread's answer to `request`, a message of a transport whose READ and WRITE are
/// one-sided (ofi, verbs), so that only PERSIST, NOTIFY and CAS come as messages: executed on
/// `memory` while its lease is open, `LeaseExpired` otherwise; READ and WRITE are a protocol
/// error naming `transport`.
pub fn answer_request(
    memory: &NodeMemory,
    request: crate::fabric::tcp::frame::Request,
    transport: &str,
) -> crate::fabric::tcp::frame::Response {
    use crate::fabric::tcp::frame::{Request, Response};
    let me = memory.node_id();
    let Request { request_id, op } = request;
    let result = match op {
        Op::Persist { .. } | Op::Notify | Op::Cas { .. } if !memory.lease_is_open() => {
            Err(OpError::LeaseExpired { node: me })
        }
        Op::Persist { .. } | Op::Notify | Op::Cas { .. } => execute(memory, &op),
        Op::Read { .. } | Op::Write { .. } => Err(OpError::Protocol {
            node: me,
            reason: format!(
                "READ and WRITE are one-sided on the {transport} transport, not messages"
            ),
        }),
    };
    Response { request_id, result }
}

/// Payload bytes an operation moves.
pub fn op_bytes(op: &Op) -> u64 {
    match op {
        Op::Read { len, .. } | Op::Persist { len, .. } => *len as u64,
        Op::Write { data, .. } => data.len() as u64,
        Op::Cas { .. } => 8,
        Op::Notify => 0,
    }
}

/// The error for a batch with an operation over [`OP_BYTES_MAX`], checked before anything is sent.
pub fn oversize(ops: &[Op]) -> Option<OpError> {
    let len = ops
        .iter()
        .map(op_bytes)
        .find(|&len| len > OP_BYTES_MAX as u64)?;
    Some(OpError::TooLarge {
        len,
        max: OP_BYTES_MAX,
    })
}

/// The order in which a READ loads its words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOrder {
    /// Increasing address order: what every transport here does.
    Ascending,
    /// Decreasing address order: what a NIC's DMA or a provider's copy may do, which no
    /// transport here does; the `local` transport does it on request, so that tests can check
    /// that object reads hold over a transport that does not read in address order.
    Descending,
}

/// Executes `op` on `memory` (the node that owns it).
pub fn execute(memory: &NodeMemory, op: &Op) -> OpResult {
    execute_reading(memory, op, ReadOrder::Ascending)
}

/// [`execute`], with a READ's words loaded in `order`.
pub fn execute_reading(memory: &NodeMemory, op: &Op, order: ReadOrder) -> OpResult {
    let addr = match op {
        Op::Notify => {
            memory.doorbell().ring();
            return Ok(Completion::Notify);
        }
        Op::Read { addr, .. } | Op::Write { addr, .. } | Op::Cas { addr, .. } => *addr,
        Op::Persist { addr, .. } => *addr,
    };
    let region = memory
        .area(addr.region())
        .ok_or(AccessError::UnknownRegion {
            node: memory.node_id(),
            region: addr.region(),
        })?;
    if let (Op::Read { addr, key, len }, ReadOrder::Descending) = (op, order) {
        region.check(*key, *addr, *len as u64)?;
        let words = region.words_at(addr.offset(), *len as u64);
        let mut out = vec![0u8; *len as usize];
        for (index, word) in words.iter().enumerate().rev() {
            out[index * 8..index * 8 + 8]
                .copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
        }
        return Ok(Completion::Read(out));
    }
    execute_on(&region, memory.node_id(), op)
}

/// Executes `op` on `region`, which belongs to `node`, after checking key and bounds.
pub fn execute_on(region: &Region, node: NodeId, op: &Op) -> OpResult {
    match op {
        Op::Read { addr, key, len } => {
            region.check(*key, *addr, *len as u64)?;
            let mut out = Vec::with_capacity(*len as usize);
            for word in region.words_at(addr.offset(), *len as u64) {
                out.extend_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
            }
            Ok(Completion::Read(out))
        }
        Op::Write { addr, key, data } => {
            region.check(*key, *addr, data.len() as u64)?;
            let words = region.words_at(addr.offset(), data.len() as u64);
            for (word, chunk) in words.iter().zip(data.chunks_exact(8)) {
                let value = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8)"));
                word.store(value, Ordering::Release);
            }
            Ok(Completion::Write)
        }
        Op::Cas {
            addr,
            key,
            expected,
            new,
        } => {
            region.check(*key, *addr, 8)?;
            let word = &region.words_at(addr.offset(), 8)[0];
            // A compare-and-swap is ordered after every store of its batch before it, even when
            // it fails (a read, then): a ring writer that appends and then reads the reader's
            // fence this way sees a fence raised before its record could be drained, or its
            // record is drained (`Inbox::raise_fence`). One fence per CAS; on x86 the locked
            // instruction is a full barrier anyway.
            std::sync::atomic::fence(Ordering::SeqCst);
            let previous =
                match word.compare_exchange(*expected, *new, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(previous) | Err(previous) => previous,
                };
            Ok(Completion::Cas { previous })
        }
        Op::Persist { addr, key, len } => {
            region.check(*key, *addr, *len as u64)?;
            region
                .mapping()
                .persist(addr.offset() as usize, *len as usize)
                .map_err(|e| OpError::PersistFailed {
                    node,
                    reason: e.to_string(),
                })?;
            Ok(Completion::Persist)
        }
        Op::Notify => unreachable!("notify has no region; handled by the caller"),
    }
}
