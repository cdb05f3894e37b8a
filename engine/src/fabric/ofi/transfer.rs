//! The hybrid transfer of one object from the node that owns it (docs/ofi.md, "Hybrid
//! transfer"): small objects by copy, two-sided messages into a receive buffer the requester
//! posted; large ones by a one-sided READ of the owner's memory registered in place for that
//! transfer alone. [`TransferPolicy`] chooses by size.
//!
//! Both paths are a request to the owner's NIC thread, tagged with `TAG_TRANSFER_BIT` and
//! encoded here (`TransferRequest`); the NIC thread answers with the tcp transport's RESPONSE
//! frame, so errors travel as [`OpError`]s and the answer goes through the same hostile-input
//! decoder as every other response.
//!
//! - Copy: `COPY { addr, key, len }`, at most [`COPY_CHUNK_BYTES`] each, serially. The owner's
//!   NIC thread loads the words into a buffer and sends it; the requester's receive buffer,
//!   posted before the request is sent, takes it and the bytes are copied out.
//! - Zero copy: `EXPOSE { addr, key, len }`: the owner's NIC thread registers exactly that range
//!   (`fi_mr_reg`, a fresh key) and answers with the key and remote address; the requester
//!   `fi_read`s it into its own buffer and sends `RELEASE { mr_key }` (not answered: it waits
//!   only for its send's completion), on which the owner closes the registration. An exposure nobody releases (its requester went away) is closed after
//!   [`EXPOSURE_TIMEOUT`], the next time the owner exposes something.

use super::{
    Node, OP_TIMEOUT, OfiTransport, OpSlot, Peer, Side, Slots, check, decode_response, sys,
};
use crate::addr::{Addr, NodeId};
use crate::clock::Time;
use crate::fabric::tcp::frame::{self, Response};
use crate::fabric::{Completion, OP_BYTES_MAX, Op, OpError, OpResult, exec};
use crate::hash::FastMap;
use crate::region::{AccessError, AccessKey, Region};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The largest piece one copy message carries: the size of the receive buffer the requester
/// posts for it. Larger objects go in pieces of this size, one after the other.
pub const COPY_CHUNK_BYTES: usize = 64 << 10;
/// Where [`TransferPolicy::default`] switches from copy to zero copy: the middle of the
/// crossing points measured on `tcp;ofi_rxm` over loopback on a 2-core VM, 16 to 256 KiB from
/// run to run, the two paths within noise of each other at 64 KiB (docs/ofi.md, "Hybrid
/// transfer"; `cargo bench -p acre-benches --features ofi --bench transfer`). Not a hardware
/// figure: on an RDMA NIC registration pins pages and the READ costs the owner no CPU, so
/// measure there.
pub const THRESHOLD_BYTES_DEFAULT: u64 = 64 << 10;
/// The largest object one transfer moves (either path): the fabric's largest operation.
pub const TRANSFER_BYTES_MAX: u64 = OP_BYTES_MAX as u64;
/// Room in a copy's receive buffer beyond its bytes: the RESPONSE frame's header, or an error
/// with its reason ([`frame::REASON_BYTES_MAX`]).
const REPLY_ROOM_BYTES: usize = 2048;
const _: () = assert!(REPLY_ROOM_BYTES > frame::REASON_BYTES_MAX + 64);
/// Exposures an owner keeps open at once, over all requesters; one more is refused (the
/// requester may retry, or copy).
const EXPOSURES_MAX: usize = 64;
/// How long an exposure stays registered without being released before the owner closes it:
/// longer than any requester's READ of it may take (each of its steps gives up after
/// [`OP_TIMEOUT`]).
pub const EXPOSURE_TIMEOUT: Duration = Duration::from_secs(2 * OP_TIMEOUT.as_secs());
/// The first registration key an owner asks for an exposure; keys count up from it. The keys
/// of areas' grants are their access keys (drawn at random) plus a counter: a clash makes
/// `fi_mr_reg` fail, and the next key is tried, [`EXPOSE_KEY_ATTEMPTS_MAX`] times at most.
const EXPOSE_KEY_FIRST: u64 = 0xac7e_0000_0000_0000;
const EXPOSE_KEY_ATTEMPTS_MAX: u32 = 4;

/// How an object travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferPath {
    /// Two-sided messages: a copy into a send buffer at the owner, one out of the receive
    /// buffer at the requester.
    Copy,
    /// One `fi_read` of the owner's memory registered in place for this transfer.
    ZeroCopy,
}

impl std::fmt::Display for TransferPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransferPath::Copy => "copy",
            TransferPath::ZeroCopy => "zero-copy",
        })
    }
}

/// Chooses the path by size: objects of `threshold_bytes` and more go zero copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferPolicy {
    pub threshold_bytes: u64,
}

impl Default for TransferPolicy {
    /// [`THRESHOLD_BYTES_DEFAULT`], measured on `tcp;ofi_rxm` over loopback.
    fn default() -> TransferPolicy {
        TransferPolicy {
            threshold_bytes: THRESHOLD_BYTES_DEFAULT,
        }
    }
}

impl TransferPolicy {
    /// The path an object of `len` bytes takes.
    pub fn path(&self, len: u64) -> TransferPath {
        if len >= self.threshold_bytes {
            TransferPath::ZeroCopy
        } else {
            TransferPath::Copy
        }
    }
}

/// Why a transfer moved nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A transfer of no bytes: nothing to move; ask for the object's length.
    #[error(
        "ofi provider {provider}: {path} transfer of 0 bytes from {owner}: ask for at least one \
         8-byte word"
    )]
    Empty {
        provider: String,
        path: TransferPath,
        owner: NodeId,
    },
    /// More than [`TRANSFER_BYTES_MAX`] in one transfer: split it.
    #[error(
        "ofi provider {provider}: {path} transfer of {len} bytes from {owner} exceeds the \
         maximum of {max}: split it"
    )]
    TooLarge {
        provider: String,
        path: TransferPath,
        owner: NodeId,
        len: u64,
        max: u64,
    },
    /// The range is not one the requester may read (unknown region, wrong key, misaligned, or
    /// outside the region): checked against the owner's card, and again by the owner. Fix the
    /// address, key or length; retrying as is cannot succeed.
    #[error(
        "ofi provider {provider}: {path} transfer from {owner} refused at {operation}: {source}"
    )]
    Refused {
        provider: String,
        path: TransferPath,
        owner: NodeId,
        operation: &'static str,
        source: AccessError,
    },
    /// The owner could not be reached, or answered with an error, at `operation`: as
    /// [`OpError`] says (wait for reconfiguration and retry, mostly).
    #[error(
        "ofi provider {provider}: {path} transfer from {owner} failed at {operation}: {source}"
    )]
    Failed {
        provider: String,
        path: TransferPath,
        owner: NodeId,
        operation: &'static str,
        source: OpError,
    },
}

impl From<TransferError> for OpError {
    /// The error a plain READ of the same range would have given: what the range check found,
    /// what reaching the owner found, or the size limit.
    fn from(error: TransferError) -> OpError {
        match error {
            TransferError::Refused { source, .. } => OpError::Access(source),
            TransferError::Failed { source, .. } => source,
            TransferError::TooLarge { len, max, .. } => OpError::TooLarge {
                len,
                max: u32::try_from(max).unwrap_or(u32::MAX),
            },
            TransferError::Empty { owner, .. } => OpError::Protocol {
                node: owner,
                reason: "a transfer of 0 bytes".into(),
            },
        }
    }
}

/// A request of the transfer to the owner's NIC thread. Little-endian:
/// `kind u8 | addr u64 | key u64 | len u32` for COPY and EXPOSE, `kind u8 | mr_key u64` for
/// RELEASE, each followed by `fingerprint u32`, the requester's initiator endpoint's
/// ([`super::name_fingerprint`]: where the NIC thread is to answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TransferRequest {
    Copy {
        addr: Addr,
        key: AccessKey,
        len: u32,
    },
    Expose {
        addr: Addr,
        key: AccessKey,
        len: u32,
    },
    Release {
        mr_key: u64,
    },
}

const KIND_COPY: u8 = 1;
const KIND_EXPOSE: u8 = 2;
const KIND_RELEASE: u8 = 3;
const RANGE_REQUEST_BYTES: usize = 1 + 8 + 8 + 4 + 4;
const RELEASE_REQUEST_BYTES: usize = 1 + 8 + 4;

impl TransferRequest {
    fn encode(&self, fingerprint: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(RANGE_REQUEST_BYTES);
        match *self {
            TransferRequest::Copy { addr, key, len }
            | TransferRequest::Expose { addr, key, len } => {
                let kind = if matches!(self, TransferRequest::Copy { .. }) {
                    KIND_COPY
                } else {
                    KIND_EXPOSE
                };
                out.push(kind);
                out.extend_from_slice(&addr.to_u64().to_le_bytes());
                out.extend_from_slice(&key.0.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
            }
            TransferRequest::Release { mr_key } => {
                out.push(KIND_RELEASE);
                out.extend_from_slice(&mr_key.to_le_bytes());
            }
        }
        out.extend_from_slice(&fingerprint.to_le_bytes());
        out
    }

    /// The request in `bytes` and its requester's fingerprint, or `None` if they are not
    /// exactly one.
    fn decode(bytes: &[u8]) -> Option<(TransferRequest, u32)> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let fingerprint = u32::from_le_bytes(bytes.last_chunk::<4>()?.to_owned());
        let request = match (bytes.first()?, bytes.len()) {
            (&KIND_COPY | &KIND_EXPOSE, RANGE_REQUEST_BYTES) => {
                let addr = Addr::from_u64(u64_at(1)?);
                let key = AccessKey(u64_at(9)?);
                let len = u32::from_le_bytes(bytes.get(17..21)?.try_into().ok()?);
                Some(if bytes[0] == KIND_COPY {
                    TransferRequest::Copy { addr, key, len }
                } else {
                    TransferRequest::Expose { addr, key, len }
                })
            }
            (&KIND_RELEASE, RELEASE_REQUEST_BYTES) => {
                Some(TransferRequest::Release { mr_key: u64_at(1)? })
            }
            _ => None,
        }?;
        Some((request, fingerprint))
    }
}

/// One range registered in place for a zero-copy transfer, holding its area mapped.
struct Exposure {
    mr: *mut sys::RawMr,
    _region: Arc<Region>,
    requester: NodeId,
    at: Time,
}

/// The owner's open exposures, by registration key.
#[derive(Default)]
pub(super) struct Exposures {
    by_key: FastMap<u64, Exposure>,
    next_key: u64,
}

impl Exposures {
    /// How many are open.
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Closes the exposures of requesters `keep` refuses (nodes a configuration removed: part
    /// of the fence, [`super::OfiNic::set_membership`]), each before releasing its region.
    ///
    /// # Safety
    /// As for [`Exposures::close_all`].
    pub(super) unsafe fn close_unless(
        &mut self,
        handle: &sys::Handle,
        keep: impl Fn(NodeId) -> bool,
    ) -> Result<(), sys::CallError> {
        let mut failure = Ok(());
        let closing: Vec<u64> = self
            .by_key
            .iter()
            .filter(|(_, exposure)| !keep(exposure.requester))
            .map(|(key, _)| *key)
            .collect();
        for key in closing {
            let exposure = self.by_key.remove(&key).expect("listed just above");
            // SAFETY: registered on `handle`, as the caller promises, and taken out of the map,
            // so closed once; its region is released after, when `exposure` drops.
            if let Err(e) = unsafe { handle.close_mr(exposure.mr) } {
                // The provider may still take the key: the range stays mapped for good.
                std::mem::forget(exposure);
                failure = failure.and(Err(e));
            }
        }
        failure
    }

    /// Closes every exposure, each before releasing its region.
    ///
    /// # Safety
    /// Every exposure was registered on `handle` (by [`answer`] on the node's NIC thread), and
    /// `handle` is still open.
    pub(super) unsafe fn close_all(&mut self, handle: &sys::Handle) {
        for (_, exposure) in self.by_key.drain() {
            // SAFETY: registered on `handle`, as the caller promises, and taken out of the map,
            // so closed once; its region (`exposure._region`) is released after, when
            // `exposure` drops. The endpoints are closed (`Node::drop`): the result changes
            // nothing.
            let _ = unsafe { handle.close_mr(exposure.mr) };
        }
    }
}

/// A transfer request from `sender` in `bytes`, carried out if the sender is a member this node
/// can answer at the endpoint it sent from ([`Node::serving`]): the peer to answer and the
/// answer, or `None` if `bytes` are not a request (nothing to answer), the sender is not served,
/// or it is a RELEASE, which is not answered: its requester does not wait for it.
pub(super) fn serve(
    node: &Node,
    sender: NodeId,
    tag: u64,
    bytes: &[u8],
) -> Option<(Arc<Peer>, Response)> {
    let (request, fingerprint) = TransferRequest::decode(bytes)?;
    let (peer, response) = node.serving(sender, fingerprint, || {
        answer_request(node, sender, tag, request)
    })?;
    Some((peer, response?))
}

/// The answer to the transfer request in `bytes` as [`serve`] gives it, without asking whether
/// the sender is served: what the tests of the owner's side call.
#[cfg(test)]
pub(super) fn answer(node: &Node, sender: NodeId, tag: u64, bytes: &[u8]) -> Option<Response> {
    let (request, _) = TransferRequest::decode(bytes)?;
    answer_request(node, sender, tag, request)
}

/// The NIC thread's answer to `sender`'s transfer request, or `None` for a RELEASE, which is
/// not answered.
fn answer_request(
    node: &Node,
    sender: NodeId,
    tag: u64,
    request: TransferRequest,
) -> Option<Response> {
    let me = node.memory.node_id();
    // A lapsed lease refuses what reads the owner's memory; a release only closes a
    // registration, which is always safe and frees what a lapsed owner should not keep open.
    let result = match request {
        TransferRequest::Release { mr_key } => {
            release(node, sender, mr_key);
            return None;
        }
        _ if !node.memory.lease_is_open() => Err(OpError::LeaseExpired { node: me }),
        TransferRequest::Copy { len, .. } if len as usize > COPY_CHUNK_BYTES => {
            Err(OpError::TooLarge {
                len: len as u64,
                max: COPY_CHUNK_BYTES as u32,
            })
        }
        TransferRequest::Copy { addr, key, len } => {
            exec::execute(&node.memory, &Op::Read { addr, key, len })
        }
        TransferRequest::Expose { addr, key, len } => expose(node, sender, addr, key, len),
    };
    Some(Response {
        request_id: tag,
        result,
    })
}

/// Registers `[addr, addr + len)` of the owner's memory for `sender`'s READ: the answer is the
/// registration key and the remote address, 16 bytes in a READ completion.
fn expose(node: &Node, sender: NodeId, addr: Addr, key: AccessKey, len: u32) -> OpResult {
    let me = node.memory.node_id();
    let region = node
        .memory
        .area(addr.region())
        .ok_or(AccessError::UnknownRegion {
            node: me,
            region: addr.region(),
        })?;
    region.check(key, addr, len as u64)?;
    if len == 0 {
        return Err(OpError::Protocol {
            node: me,
            reason: "an exposure of 0 bytes".into(),
        });
    }
    let now = node.memory.clock().now();
    let mut exposures = node.exposures.lock().expect(crate::POISONED);
    let expired: Vec<u64> = exposures
        .by_key
        .iter()
        .filter(|(_, e)| now - e.at > EXPOSURE_TIMEOUT)
        .map(|(&key, _)| key)
        .collect();
    for mr_key in expired {
        let exposure = exposures.by_key.remove(&mr_key).expect("listed just above");
        // SAFETY: registered below on this handle and closed once, here, taken out of the map;
        // its requester's READ gave up long ago (each step of it after OP_TIMEOUT), and should
        // one still arrive the provider refuses it as it refuses any unknown key.
        if let Err(e) = unsafe { node.handle.close_mr(exposure.mr) } {
            eprintln!(
                "acre: ofi provider {}: closing an expired exposure: {e}",
                node.provider()
            );
            // The provider may still take the key: the range stays mapped for good.
            std::mem::forget(exposure);
        }
    }
    if exposures.len() >= EXPOSURES_MAX {
        return Err(OpError::Unreachable {
            node: me,
            reason: format!(
                "{EXPOSURES_MAX} exposures are open at this owner already: retry once some are \
                 released, or copy"
            ),
        });
    }
    let words = region.words_at(addr.offset(), len as u64);
    let base = words.as_ptr() as *mut u8;
    let mut failure = None;
    for _ in 0..EXPOSE_KEY_ATTEMPTS_MAX {
        let requested = EXPOSE_KEY_FIRST.wrapping_add(exposures.next_key);
        exposures.next_key = exposures.next_key.wrapping_add(1);
        // SAFETY: the exposure's `_region` keeps the mapping alive until the registration is
        // closed (on release, on expiry, or in `Node::drop` before the handle); the memory is
        // only ever accessed through atomic words by this process, so the provider reading it
        // is what a NIC does.
        match unsafe { node.handle.register(base, len as usize, false, requested) } {
            Ok((mr, mr_key)) => {
                let remote = if node.handle.caps().virt_addr != 0 {
                    base as u64
                } else {
                    0
                };
                exposures.by_key.insert(
                    mr_key,
                    Exposure {
                        mr,
                        _region: region,
                        requester: sender,
                        at: now,
                    },
                );
                let mut answer = Vec::with_capacity(16);
                answer.extend_from_slice(&mr_key.to_le_bytes());
                answer.extend_from_slice(&remote.to_le_bytes());
                return Ok(Completion::Read(answer));
            }
            Err(e) => failure = Some(e),
        }
    }
    let failure = failure.expect("at least one attempt");
    Err(OpError::Unreachable {
        node: me,
        reason: format!(
            "ofi provider {}: exposing {len} bytes at {addr}: {failure}",
            node.provider()
        ),
    })
}

/// Closes `sender`'s exposure `mr_key`, if it has one (a release of an expired or foreign key
/// does nothing).
fn release(node: &Node, sender: NodeId, mr_key: u64) {
    let mut exposures = node.exposures.lock().expect(crate::POISONED);
    if exposures
        .by_key
        .get(&mr_key)
        .is_none_or(|e| e.requester != sender)
    {
        return;
    }
    let exposure = exposures.by_key.remove(&mr_key).expect("found just above");
    // SAFETY: registered by `expose` on this handle, taken out of the map and closed once; its
    // requester says its READ is done.
    if let Err(e) = unsafe { node.handle.close_mr(exposure.mr) } {
        eprintln!(
            "acre: ofi provider {}: releasing an exposure: {e}",
            node.provider()
        );
        // The provider may still take the key: the range stays mapped for good.
        std::mem::forget(exposure);
    }
}

impl OfiTransport {
    /// Moves `len` bytes at `addr` of `owner`'s memory (access key `key`) here, by the path
    /// `policy` chooses for that size.
    pub fn transfer(
        &self,
        owner: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u64,
        policy: &TransferPolicy,
    ) -> Result<Vec<u8>, TransferError> {
        match policy.path(len) {
            TransferPath::Copy => self.transfer_by_copy(owner, addr, key, len),
            TransferPath::ZeroCopy => self.transfer_zero_copy(owner, addr, key, len),
        }
    }

    /// Moves the range by copy: messages of at most [`COPY_CHUNK_BYTES`], one after the other,
    /// each answered by the owner's NIC thread from its memory.
    pub fn transfer_by_copy(
        &self,
        owner: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u64,
    ) -> Result<Vec<u8>, TransferError> {
        let path = TransferPath::Copy;
        let peer = self.transfer_peer(path, owner, addr, key, len)?;
        let mut out = Vec::with_capacity(len as usize);
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(COPY_CHUNK_BYTES as u64) as u32;
            let at = Addr::new(addr.region(), addr.offset() + done as u32);
            let request = TransferRequest::Copy {
                addr: at,
                key,
                len: chunk,
            };
            let operation = "copy (a message to the owner's NIC thread)";
            let answer = self.exchange(&peer, request, chunk as usize + REPLY_ROOM_BYTES);
            let bytes = self.expect_bytes(path, owner, operation, answer, chunk as usize)?;
            out.extend_from_slice(&bytes);
            done += chunk as u64;
        }
        Ok(out)
    }

    /// Moves the range zero copy: the owner registers exactly it, this node reads it with one
    /// `fi_read`, and tells the owner to close the registration.
    pub fn transfer_zero_copy(
        &self,
        owner: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u64,
    ) -> Result<Vec<u8>, TransferError> {
        let path = TransferPath::ZeroCopy;
        let peer = self.transfer_peer(path, owner, addr, key, len)?;
        let operation = "expose (fi_mr_reg at the owner)";
        let request = TransferRequest::Expose {
            addr,
            key,
            len: len as u32,
        };
        let answer = self.exchange(&peer, request, REPLY_ROOM_BYTES);
        let exposure = self.expect_bytes(path, owner, operation, answer, 16)?;
        let mr_key = u64::from_le_bytes(exposure[..8].try_into().expect("8 bytes"));
        let remote = u64::from_le_bytes(exposure[8..].try_into().expect("8 bytes"));
        let read = self.read_exposed(&peer, remote, mr_key, len as usize);
        // Released whether or not the READ worked. A release that fails (the owner went away
        // meanwhile) is not the transfer's failure: the owner closes the exposure after
        // EXPOSURE_TIMEOUT on its own, and the READ's result stands.
        let _ = self.send_release(&peer, mr_key);
        read.map_err(|source| self.transfer_failed(path, owner, "fi_read", source))
    }

    /// The owner's peer entry, after the checks both paths make before sending anything.
    fn transfer_peer(
        &self,
        path: TransferPath,
        owner: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u64,
    ) -> Result<Arc<Peer>, TransferError> {
        let provider = self.provider().to_string();
        if len == 0 {
            return Err(TransferError::Empty {
                provider,
                path,
                owner,
            });
        }
        if len > TRANSFER_BYTES_MAX {
            return Err(TransferError::TooLarge {
                provider,
                path,
                owner,
                len,
                max: TRANSFER_BYTES_MAX,
            });
        }
        let Some(peer) = self.node.peer(owner) else {
            let source = OpError::UnknownNode { node: owner };
            return Err(self.transfer_failed(path, owner, "look up the owner", source));
        };
        check(&peer.card, addr, key, len).map_err(|e| match e {
            OpError::Access(source) => TransferError::Refused {
                provider,
                path,
                owner,
                operation: "check against the owner's card",
                source,
            },
            source => self.transfer_failed(path, owner, "check against the owner's card", source),
        })?;
        Ok(peer)
    }

    fn transfer_failed(
        &self,
        path: TransferPath,
        owner: NodeId,
        operation: &'static str,
        source: OpError,
    ) -> TransferError {
        match source {
            OpError::Access(source) => TransferError::Refused {
                provider: self.provider().to_string(),
                path,
                owner,
                operation,
                source,
            },
            source => TransferError::Failed {
                provider: self.provider().to_string(),
                path,
                owner,
                operation,
                source,
            },
        }
    }

    /// The bytes of a READ completion of exactly `len` bytes, or the error that came instead.
    fn expect_bytes(
        &self,
        path: TransferPath,
        owner: NodeId,
        operation: &'static str,
        answer: OpResult,
        len: usize,
    ) -> Result<Vec<u8>, TransferError> {
        let failed = |source| self.transfer_failed(path, owner, operation, source);
        match answer {
            Ok(Completion::Read(bytes)) if bytes.len() == len => Ok(bytes),
            Ok(other) => Err(failed(OpError::Protocol {
                node: owner,
                reason: format!("{other:?} instead of {len} bytes"),
            })),
            Err(source) => Err(failed(source)),
        }
    }

    /// Sends `request` to `peer`'s NIC thread and waits for its answer, in a receive buffer of
    /// `reply_bytes` posted before the request goes.
    fn exchange(&self, peer: &Peer, request: TransferRequest, reply_bytes: usize) -> OpResult {
        let target = peer.card.node;
        let batch = self.batch_seq.fetch_add(1, Ordering::Relaxed);
        let tag = self.message_tag(batch, true);
        let mut slots = Slots(vec![Box::new(OpSlot::new(batch, 0))]);
        slots[0].bytes = request.encode(self.fingerprint);
        slots[0].reply = vec![0; reply_bytes];
        slots[0].call = "fi_tsend/fi_trecv (a transfer message to the NIC thread)";
        // Open before anything is posted: the answer may be read by any waiter.
        self.mailboxes.open(batch);
        let posted = self.post_exchange(peer, &mut slots[0], batch, tag);
        let settled = self.settle(target, batch, &mut slots);
        self.mailboxes.close(batch);
        settled?;
        if let Some(reason) = posted.err().or_else(|| slots[0].failed.clone()) {
            return Err(self.node.unreachable(target, reason));
        }
        decode_response(target, tag, &slots[0].reply)
    }

    /// Sends RELEASE to `peer`'s NIC thread without waiting for an answer (none comes): only
    /// for the send's own completion, after which its buffer may go. Saves the zero-copy path
    /// a round trip.
    fn send_release(&self, peer: &Peer, mr_key: u64) -> Result<(), OpError> {
        let target = peer.card.node;
        let batch = self.batch_seq.fetch_add(1, Ordering::Relaxed);
        let tag = self.message_tag(batch, true);
        let mut slots = Slots(vec![Box::new(OpSlot::new(batch, 0))]);
        slots[0].bytes = TransferRequest::Release { mr_key }.encode(self.fingerprint);
        slots[0].call = "fi_tsend (a release to the NIC thread)";
        let (request, request_len) = (slots[0].bytes.as_ptr(), slots[0].bytes.len());
        let context = slots[0].context();
        let handle = &self.node.handle;
        self.run_single(target, batch, &mut slots, || {
            // SAFETY: the slot is boxed and kept until its completion is read (or leaked by
            // `settle`); its `bytes` are not touched meanwhile.
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
    }

    /// One `fi_read` of `len` bytes at `remote` under registration `mr_key` of `peer`.
    fn read_exposed(
        &self,
        peer: &Peer,
        remote: u64,
        mr_key: u64,
        len: usize,
    ) -> Result<Vec<u8>, OpError> {
        let target = peer.card.node;
        let batch = self.batch_seq.fetch_add(1, Ordering::Relaxed);
        let mut slots = Slots(vec![Box::new(OpSlot::new(batch, 0))]);
        slots[0].bytes = vec![0; len];
        slots[0].call = "fi_read";
        let buf = slots[0].bytes.as_mut_ptr();
        let context = slots[0].context();
        let handle = &self.node.handle;
        self.run_single(target, batch, &mut slots, || {
            // SAFETY: the slot is boxed and kept until its completion is read (or leaked by
            // `settle`); its `bytes` have `len` bytes and are not touched meanwhile.
            unsafe { handle.read(buf, len, peer.target, remote, mr_key, context, false) }
        })?;
        Ok(std::mem::take(&mut slots[0].bytes))
    }

    /// Posts the one operation of `slots` with `post` (again while the provider is busy), waits
    /// for its completion, and says how it ended: the reason it could not be posted or did not
    /// complete, as the target being unreachable.
    fn run_single(
        &self,
        target: NodeId,
        batch: u64,
        slots: &mut Slots,
        post: impl FnMut() -> Result<(), sys::CallError>,
    ) -> Result<(), OpError> {
        self.mailboxes.open(batch);
        let posted = self.retry_busy(target, batch, post);
        if posted.is_ok() {
            slots[0].outstanding = 1;
        }
        let settled = self.settle(target, batch, slots);
        self.mailboxes.close(batch);
        settled?;
        let failed = posted
            .err()
            .map(|e| format!("{e} to {target}"))
            .or_else(|| slots[0].failed.clone());
        match failed {
            Some(reason) => Err(self.node.unreachable(target, reason)),
            None => Ok(()),
        }
    }
}
