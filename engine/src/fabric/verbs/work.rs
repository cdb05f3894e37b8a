//! Work-request building: how a batch's checked operations become chains of send work requests
//! posted with one doorbell each, where their bytes sit in the staging buffer, and what their
//! work request ids are.
//!
//! A chain is a run of one-sided operations, ended by at most one message (a PERSIST, NOTIFY or
//! CAS for the target's NIC thread): an RC queue pair executes a chain in order, and the
//! message arrives after the writes before it are placed, but what follows a message must wait
//! for its reply (a READ after a CAS executed by the NIC thread must see it), so it starts the
//! next chain. A chain also ends at [`CHAIN_WRS_MAX`] requests (the send queue's depth) or once
//! it holds [`CHAIN_BYTES_MAX`] bytes (an operation larger than that goes alone).
//!
//! Only a chain's last request is signaled: RC completes in order, so its completion says
//! every earlier one succeeded, and an error completes even unsignaled requests, naming the one
//! that failed. A request after a READ or CAS of its chain is fenced, so that it starts only
//! once they have completed: RC lets a later WRITE overtake an earlier READ at the target,
//! which would break the fabric's rule that a batch executes in posting order.

use super::device::{RecvWr, SendKind, SendWr, Sge};
use std::ops::Range;

/// Work requests in one chain at most; the send queue holds this many.
pub const CHAIN_WRS_MAX: usize = 32;
/// Bytes a chain moves at most, unless a single operation is larger (it then goes alone).
pub const CHAIN_BYTES_MAX: usize = 1 << 20;
/// The largest message (request or response frame) either side sends: CAS, PERSIST and NOTIFY
/// requests are under 50 bytes, a response at most a reason of
/// [`crate::fabric::tcp::frame::REASON_BYTES_MAX`].
pub const MESSAGE_BYTES_MAX: usize = 2048;
/// Offsets of each buffer in the staging area are rounded up to this (CAS needs 8).
const SPAN_ALIGN_BYTES: usize = 8;
/// Bits of a work request id below the batch number: the position in the chain and whether it
/// is the reply's receive.
const WR_ID_LOW_BITS: u32 = 16;

/// What one operation of a chain asks of the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    Read {
        remote_addr: u64,
        rkey: u32,
        len: u32,
    },
    Write {
        remote_addr: u64,
        rkey: u32,
        data: Vec<u8>,
    },
    CompareSwap {
        remote_addr: u64,
        rkey: u32,
        expected: u64,
        new: u64,
    },
    /// A REQUEST frame for the target's NIC thread.
    Message { request: Vec<u8> },
}

impl Remote {
    pub fn is_message(&self) -> bool {
        matches!(self, Remote::Message { .. })
    }

    /// Bytes of staging it needs (a message: its request and room for the reply).
    fn staging_bytes(&self) -> usize {
        match self {
            Remote::Read { len, .. } => *len as usize,
            Remote::Write { data, .. } => data.len(),
            Remote::CompareSwap { .. } => 8,
            Remote::Message { request } => request.len(),
        }
    }
}

/// Splits `steps` into chains (ranges of `steps`), by the rules in the module docs.
pub fn chains(steps: &[Remote]) -> Vec<Range<usize>> {
    let mut chains = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, step) in steps.iter().enumerate() {
        let step_bytes = step.staging_bytes();
        let full = index - start == CHAIN_WRS_MAX || bytes + step_bytes > CHAIN_BYTES_MAX;
        if index > start && full {
            chains.push(start..index);
            start = index;
            bytes = 0;
        }
        bytes += step_bytes;
        if step.is_message() {
            chains.push(start..index + 1);
            start = index + 1;
            bytes = 0;
        }
    }
    if start < steps.len() {
        chains.push(start..steps.len());
    }
    chains
}

/// Where a chain's buffers sit in the staging area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Per step: offset and length of its local buffer.
    pub spans: Vec<(usize, usize)>,
    /// The reply's receive buffer, if the chain ends with a message.
    pub reply: Option<(usize, usize)>,
    /// Staging bytes the chain needs.
    pub bytes: usize,
}

pub fn layout(chain: &[Remote]) -> Layout {
    let mut at = 0;
    let mut spans = Vec::with_capacity(chain.len());
    for step in chain {
        let len = step.staging_bytes();
        spans.push((at, len));
        at = (at + len).next_multiple_of(SPAN_ALIGN_BYTES);
    }
    let reply = chain.last().filter(|s| s.is_message()).map(|_| {
        let span = (at, MESSAGE_BYTES_MAX);
        at += MESSAGE_BYTES_MAX;
        span
    });
    Layout {
        spans,
        reply,
        bytes: at,
    }
}

/// The id of request `position` of batch `batch`'s chain (`receive`: the reply's receive).
pub fn wr_id(batch: u64, position: usize, receive: bool) -> u64 {
    assert!(position < CHAIN_WRS_MAX, "position={position}");
    (batch << WR_ID_LOW_BITS) | ((position as u64) << 1) | receive as u64
}

/// The batch (its low 48 bits), position and receive flag of a work request id.
pub fn parse_wr_id(id: u64) -> (u64, usize, bool) {
    (
        id >> WR_ID_LOW_BITS,
        ((id & ((1 << WR_ID_LOW_BITS) - 1)) >> 1) as usize,
        id & 1 == 1,
    )
}

/// The send work requests of `chain`, laid out by `layout` in a staging area at `base` with key
/// `lkey`.
pub fn send_wrs(
    chain: &[Remote],
    layout: &Layout,
    base: u64,
    lkey: u32,
    batch: u64,
) -> Vec<SendWr> {
    assert_eq!(chain.len(), layout.spans.len(), "one span per step");
    assert!(chain.len() <= CHAIN_WRS_MAX, "chain of {}", chain.len());
    let mut after_read_or_atomic = false;
    let last = chain.len().saturating_sub(1);
    chain
        .iter()
        .zip(&layout.spans)
        .enumerate()
        .map(|(position, (step, &(offset, len)))| {
            let kind = match step {
                Remote::Read {
                    remote_addr, rkey, ..
                } => SendKind::Read {
                    remote_addr: *remote_addr,
                    rkey: *rkey,
                },
                Remote::Write {
                    remote_addr, rkey, ..
                } => SendKind::Write {
                    remote_addr: *remote_addr,
                    rkey: *rkey,
                },
                Remote::CompareSwap {
                    remote_addr,
                    rkey,
                    expected,
                    new,
                } => SendKind::CompareSwap {
                    remote_addr: *remote_addr,
                    rkey: *rkey,
                    compare: *expected,
                    swap: *new,
                },
                Remote::Message { .. } => SendKind::Send,
            };
            let wr = SendWr {
                wr_id: wr_id(batch, position, false),
                sge: Sge {
                    addr: base + offset as u64,
                    length: len as u32,
                    lkey,
                },
                kind,
                signaled: position == last,
                fence: after_read_or_atomic,
            };
            after_read_or_atomic |=
                matches!(step, Remote::Read { .. } | Remote::CompareSwap { .. });
            wr
        })
        .collect()
}

/// The receive for a chain's reply, if it ends with a message.
pub fn reply_wr(
    chain: &[Remote],
    layout: &Layout,
    base: u64,
    lkey: u32,
    batch: u64,
) -> Option<RecvWr> {
    let (offset, len) = layout.reply?;
    Some(RecvWr {
        wr_id: wr_id(batch, chain.len() - 1, true),
        sge: Sge {
            addr: base + offset as u64,
            length: len as u32,
            lkey,
        },
    })
}
