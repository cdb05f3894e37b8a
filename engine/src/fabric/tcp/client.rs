//! The initiator side of the TCP transport: one authenticated connection per peer node, made on
//! the first post to it and reused, shared by every application thread that posts to that node.
//!
//! A post registers its operations under fresh request ids, then writes all their REQUEST frames
//! in one go while holding the connection's writer lock, so the operations of one batch reach
//! the NIC thread contiguously and in order. A receiver thread per connection (blocking reads)
//! decodes RESPONSE frames, completes the matching operations by request id and wakes the
//! threads that wait for them. When the connection breaks (the peer hangs up, a write or read
//! fails, the peer violates the protocol, or nothing arrives for [`RESPONSE_SILENCE_MAX`] while
//! operations are in flight) every in-flight operation fails with
//! [`OpError::Unreachable`](crate::fabric::OpError::Unreachable) and the next post reconnects.

use crate::addr::NodeId;
use crate::fabric::exec;
use crate::fabric::tcp::auth::{self, ClusterSecret, HANDSHAKE_DEADLINE, PROTOCOL_VERSION};
use crate::fabric::tcp::frame::Frame;
use crate::fabric::tcp::frame::{
    self, FrameError, HANDSHAKE_FRAME_BYTES_MAX, Hello, MAGIC, Refusal, Request, Response,
};
use crate::fabric::{Op, OpError, OpResult, Pending};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Times a post tries to connect and authenticate to a peer before its operations fail.
pub const CONNECT_ATTEMPTS_MAX: u32 = 3;
/// How long one TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before the second connect attempt; it grows linearly with the attempt number.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// A connection with operations in flight on which nothing arrives for this long is broken.
pub const RESPONSE_SILENCE_MAX: Duration = Duration::from_secs(10);
/// A connection whose socket accepts no bytes for this long is broken.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(10);
/// Operations in flight on one connection; a post that would exceed it waits for completions.
pub const INFLIGHT_OPS_MAX: usize = 1 << 14;
/// How many times `wait` re-checks for completion before it sleeps.
pub const WAIT_SPIN_CHECKS_MAX: u32 = 200;
/// Encoded requests gathered before a `write` system call.
const COALESCE_BYTES: usize = 64 << 10;
/// Bytes the receiver reads at a time.
const RECEIVE_CHUNK_BYTES: usize = 64 << 10;
/// How often an idle receiver wakes to check for silence (a fraction of the limit).
const SILENCE_CHECK_INTERVAL: Duration = Duration::from_millis(2500);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect(crate::POISONED)
}

/// Why a connection to a peer could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    #[error("cannot reach {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr} did not finish the handshake within {HANDSHAKE_DEADLINE:?}")]
    Timeout { addr: SocketAddr },
    #[error(
        "{addr} did not prove it holds the cluster secret: it is an impostor, or the two nodes \
         have different secret files; copy the secret again"
    )]
    Impostor { addr: SocketAddr },
    #[error("{addr} is {actual}, not {expected}: fix the peer address")]
    WrongNode {
        addr: SocketAddr,
        expected: NodeId,
        actual: NodeId,
    },
    #[error("{addr} refused the connection: {refusal}")]
    Refused { addr: SocketAddr, refusal: Refusal },
    #[error("{addr} broke the handshake protocol: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
}

impl HandshakeError {
    /// Whether another attempt may succeed (the peer may be restarting or busy); failures of
    /// authentication or identity will not change by retrying.
    fn is_transient(&self) -> bool {
        match self {
            HandshakeError::Io { .. } | HandshakeError::Timeout { .. } => true,
            HandshakeError::Refused { refusal, .. } => *refusal == Refusal::Busy,
            HandshakeError::Impostor { .. }
            | HandshakeError::WrongNode { .. }
            | HandshakeError::Protocol { .. } => false,
        }
    }
}

/// This node's side of the TCP transport: the peers it can reach and a connection to each.
pub struct TcpTransport {
    me: NodeId,
    secret: ClusterSecret,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

struct Peer {
    node: NodeId,
    addr: SocketAddr,
    link: Mutex<Option<Arc<Link>>>,
}

impl TcpTransport {
    /// A transport for node `me` that authenticates with `secret`. It knows no peers yet.
    pub fn new(me: NodeId, secret: ClusterSecret) -> TcpTransport {
        TcpTransport {
            me,
            secret,
            peers: RwLock::new(HashMap::new()),
        }
    }

    /// Makes `node` reachable at `addr` (the address of its [`NicServer`](super::NicServer)).
    /// Replacing a node's address drops its old connection; operations in flight on it fail.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        let peer = Arc::new(Peer {
            node,
            addr,
            link: Mutex::new(None),
        });
        self.peers
            .write()
            .expect(crate::POISONED)
            .insert(node, peer);
    }

    /// Forgets `node`; later posts to it fail with `UnknownNode`.
    pub fn remove_peer(&self, node: NodeId) {
        self.peers.write().expect(crate::POISONED).remove(&node);
    }

    /// Posts `ops` to `target`; they execute there in order and complete in posting order.
    ///
    /// Returns once the requests are handed to the kernel; the first post to a node (or the
    /// first after its connection broke) also connects and authenticates, which blocks for up
    /// to [`CONNECT_ATTEMPTS_MAX`] attempts. Fails every operation with `UnknownNode` for a node
    /// never added, `TooLarge` if one moves more than `OP_BYTES_MAX` bytes, and `Unreachable`
    /// if no connection could be made or the connection breaks before they complete.
    pub fn post(&self, target: NodeId, ops: Vec<Op>) -> Pending {
        Pending::tcp(self.post_batch(target, ops))
    }

    fn post_batch(&self, target: NodeId, ops: Vec<Op>) -> PendingBatch {
        if ops.is_empty() {
            return PendingBatch::done(Vec::new());
        }
        if let Some(error) = exec::oversize(&ops) {
            return PendingBatch::failed(ops.len(), error);
        }
        let peer = self
            .peers
            .read()
            .expect(crate::POISONED)
            .get(&target)
            .cloned();
        let Some(peer) = peer else {
            return PendingBatch::failed(ops.len(), OpError::UnknownNode { node: target });
        };
        match self.link(&peer) {
            Ok(link) => link.post(ops),
            Err(reason) => PendingBatch::failed(
                ops.len(),
                OpError::Unreachable {
                    node: target,
                    reason,
                },
            ),
        }
    }

    /// The peer's live connection, connecting (with bounded attempts) if there is none.
    fn link(&self, peer: &Peer) -> Result<Arc<Link>, String> {
        let mut slot = lock(&peer.link);
        if let Some(link) = slot.as_ref().filter(|link| !link.shared.is_broken()) {
            return Ok(link.clone());
        }
        // Drop a broken connection before dialling again (this joins its receiver).
        *slot = None;
        let mut last_error = String::new();
        for attempt in 0..CONNECT_ATTEMPTS_MAX {
            if attempt > 0 {
                std::thread::sleep(CONNECT_BACKOFF * attempt);
            }
            match connect(self.me, &self.secret, peer.node, peer.addr) {
                Ok((stream, leftover)) => {
                    let link = Arc::new(
                        Link::start(peer.node, stream, leftover).map_err(|e| e.to_string())?,
                    );
                    *slot = Some(link.clone());
                    return Ok(link);
                }
                Err(e) if e.is_transient() => last_error = e.to_string(),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!(
            "{last_error} (gave up after {CONNECT_ATTEMPTS_MAX} attempts)"
        ))
    }
}

/// Connects to `node` at `addr` and runs the client half of the handshake. Returns the stream
/// and any bytes already received after the CHALLENGE.
pub(crate) fn connect(
    me: NodeId,
    secret: &ClusterSecret,
    node: NodeId,
    addr: SocketAddr,
) -> Result<(TcpStream, Vec<u8>), HandshakeError> {
    let io_error = |source| HandshakeError::Io { addr, source };
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    let deadline = Instant::now() + HANDSHAKE_DEADLINE;
    let client_nonce = auth::nonce();
    let hello = Frame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: me,
        client_nonce,
    });
    write_before(&stream, &frame::encode_to_vec(&hello), deadline, addr)?;
    let mut inbox = Vec::new();
    let challenge = match read_frame_before(&stream, &mut inbox, deadline, addr)? {
        Frame::Challenge(challenge) => challenge,
        Frame::Refused(refusal) => return Err(HandshakeError::Refused { addr, refusal }),
        other => {
            let reason = format!("expected CHALLENGE, got frame kind {}", other.kind());
            return Err(HandshakeError::Protocol { addr, reason });
        }
    };
    let verified = secret.verify_server_proof(
        &client_nonce,
        &challenge.server_nonce,
        challenge.node,
        &challenge.server_proof,
    );
    if verified.is_err() {
        return Err(HandshakeError::Impostor { addr });
    }
    if challenge.node != node {
        return Err(HandshakeError::WrongNode {
            addr,
            expected: node,
            actual: challenge.node,
        });
    }
    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, me);
    write_before(
        &stream,
        &frame::encode_to_vec(&Frame::Proof(proof)),
        deadline,
        addr,
    )?;
    Ok((stream, inbox))
}

fn remaining(deadline: Instant, addr: SocketAddr) -> Result<Duration, HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HandshakeError::Timeout { addr });
    }
    Ok(left)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn write_before(
    mut stream: &TcpStream,
    bytes: &[u8],
    deadline: Instant,
    addr: SocketAddr,
) -> Result<(), HandshakeError> {
    let io_error = |source| HandshakeError::Io { addr, source };
    stream
        .set_write_timeout(Some(remaining(deadline, addr)?))
        .map_err(io_error)?;
    stream.write_all(bytes).map_err(|e| match is_timeout(&e) {
        true => HandshakeError::Timeout { addr },
        false => io_error(e),
    })
}

/// Reads one handshake frame (at most [`HANDSHAKE_FRAME_BYTES_MAX`]); bytes after it stay in
/// `inbox`.
fn read_frame_before(
    mut stream: &TcpStream,
    inbox: &mut Vec<u8>,
    deadline: Instant,
    addr: SocketAddr,
) -> Result<Frame, HandshakeError> {
    let mut chunk = [0u8; 256];
    loop {
        match frame::decode_bounded(inbox, HANDSHAKE_FRAME_BYTES_MAX) {
            Ok(Some((frame, consumed))) => {
                inbox.drain(..consumed);
                return Ok(frame);
            }
            Ok(None) => {}
            Err(e) => {
                return Err(HandshakeError::Protocol {
                    addr,
                    reason: e.to_string(),
                });
            }
        }
        let io_error = |source| HandshakeError::Io { addr, source };
        stream
            .set_read_timeout(Some(remaining(deadline, addr)?))
            .map_err(io_error)?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                let source = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the handshake",
                );
                return Err(io_error(source));
            }
            Ok(count) => inbox.extend_from_slice(&chunk[..count]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(HandshakeError::Timeout { addr }),
            Err(e) => return Err(io_error(e)),
        }
    }
}

/// One authenticated connection to a peer.
struct Link {
    writer: Mutex<TcpStream>,
    shared: Arc<LinkShared>,
    receiver: Option<JoinHandle<()>>,
}

/// What the posters and the receiver thread of a connection share.
struct LinkShared {
    node: NodeId,
    /// A handle on the socket used to shut it down, which ends the receiver's blocking read.
    socket: TcpStream,
    state: Mutex<LinkState>,
    /// Signalled when in-flight operations complete, for posts waiting for room.
    room: Condvar,
}

struct LinkState {
    next_request_id: u64,
    inflight: HashMap<u64, Slot>,
    /// Set once, when the connection breaks; no operation is registered after that.
    broken: Option<String>,
    room_waiters: usize,
}

/// Where the result of one in-flight request goes.
struct Slot {
    batch: Arc<BatchState>,
    index: usize,
}

impl Link {
    fn start(node: NodeId, stream: TcpStream, leftover: Vec<u8>) -> io::Result<Link> {
        stream.set_read_timeout(Some(SILENCE_CHECK_INTERVAL))?;
        stream.set_write_timeout(Some(WRITE_STALL_MAX))?;
        let shared = Arc::new(LinkShared {
            node,
            socket: stream.try_clone()?,
            state: Mutex::new(LinkState {
                next_request_id: 0,
                inflight: HashMap::new(),
                broken: None,
                room_waiters: 0,
            }),
            room: Condvar::new(),
        });
        let reader = stream.try_clone()?;
        let receiver_shared = shared.clone();
        let receiver = std::thread::Builder::new()
            .name(format!("acre-rx-{node}"))
            .spawn(move || receive(&receiver_shared, reader, leftover))?;
        Ok(Link {
            writer: Mutex::new(stream),
            shared,
            receiver: Some(receiver),
        })
    }

    fn post(&self, ops: Vec<Op>) -> PendingBatch {
        let count = ops.len();
        let batch = Arc::new(BatchState::new(count));
        let first_id = {
            let mut state = lock(&self.shared.state);
            loop {
                if let Some(reason) = &state.broken {
                    let error = OpError::Unreachable {
                        node: self.shared.node,
                        reason: reason.clone(),
                    };
                    return PendingBatch::failed(count, error);
                }
                // A batch larger than the limit still goes out, alone.
                if state.inflight.len() + count <= INFLIGHT_OPS_MAX || state.inflight.is_empty() {
                    break;
                }
                state.room_waiters += 1;
                state = self.shared.room.wait(state).expect(crate::POISONED);
                state.room_waiters -= 1;
            }
            let first_id = state.next_request_id;
            state.next_request_id += count as u64;
            for index in 0..count {
                let slot = Slot {
                    batch: batch.clone(),
                    index,
                };
                state.inflight.insert(first_id + index as u64, slot);
            }
            first_id
        };
        if let Err(e) = self.write_requests(first_id, ops) {
            self.shared
                .break_link(format!("sending requests failed: {e}"));
        }
        PendingBatch {
            inner: BatchInner::Waiting(batch),
        }
    }

    fn write_requests(&self, first_id: u64, ops: Vec<Op>) -> io::Result<()> {
        let mut writer = lock(&self.writer);
        let mut buf = Vec::with_capacity(COALESCE_BYTES);
        for (request_id, op) in (first_id..).zip(ops) {
            frame::encode(&Frame::Request(Request { request_id, op }), &mut buf);
            if buf.len() >= COALESCE_BYTES {
                writer.write_all(&buf)?;
                buf.clear();
            }
        }
        writer.write_all(&buf)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared
            .break_link("this node closed the connection".to_string());
        if let Some(receiver) = self.receiver.take() {
            // The receiver only decodes and completes; a panic there is a bug already
            // reported on stderr, and the operations it held were failed above.
            let _ = receiver.join();
        }
    }
}

impl LinkShared {
    fn is_broken(&self) -> bool {
        lock(&self.state).broken.is_some()
    }

    /// Marks the connection broken, fails every in-flight operation with `Unreachable` and
    /// shuts the socket down. The first reason sticks.
    fn break_link(&self, reason: String) {
        let orphans: Vec<Slot> = {
            let mut state = lock(&self.state);
            if state.broken.is_none() {
                state.broken = Some(reason);
            }
            if state.room_waiters > 0 {
                self.room.notify_all();
            }
            state.inflight.drain().map(|(_, slot)| slot).collect()
        };
        let _ = self.socket.shutdown(Shutdown::Both);
        let reason = lock(&self.state).broken.clone().unwrap_or_default();
        for slot in orphans {
            let error = OpError::Unreachable {
                node: self.node,
                reason: reason.clone(),
            };
            slot.batch.complete(slot.index, Err(error));
        }
    }

    /// Completes the operation a response answers; an unknown request id is a protocol error.
    fn complete(&self, response: Response) -> Result<(), String> {
        let slot = {
            let mut state = lock(&self.state);
            let slot = state.inflight.remove(&response.request_id);
            if state.room_waiters > 0 {
                self.room.notify_all();
            }
            slot
        };
        match slot {
            Some(slot) => {
                slot.batch.complete(slot.index, response.result);
                Ok(())
            }
            None => Err(format!(
                "response to unknown request id {}",
                response.request_id
            )),
        }
    }

    fn has_inflight(&self) -> bool {
        !lock(&self.state).inflight.is_empty()
    }
}

/// The receiver thread of one connection: decodes responses until the connection breaks.
fn receive(shared: &LinkShared, mut stream: TcpStream, leftover: Vec<u8>) {
    let reason = receive_until_broken(shared, &mut stream, leftover);
    shared.break_link(reason);
}

fn receive_until_broken(shared: &LinkShared, stream: &mut TcpStream, leftover: Vec<u8>) -> String {
    let mut inbox = leftover;
    let mut start = 0;
    let mut chunk = vec![0u8; RECEIVE_CHUNK_BYTES];
    let mut quiet_since: Option<Instant> = None;
    loop {
        loop {
            match frame::decode(&inbox[start..]) {
                Ok(Some((Frame::Response(response), consumed))) => {
                    start += consumed;
                    if let Err(reason) = shared.complete(response) {
                        return format!("protocol violation: {reason}");
                    }
                }
                Ok(Some((Frame::Refused(refusal), _))) => {
                    return format!("the peer refused this node: {refusal}");
                }
                Ok(Some((other, _))) => {
                    return format!("protocol violation: unexpected frame kind {}", other.kind());
                }
                Ok(None) => break,
                Err(
                    e @ (FrameError::Oversize { .. }
                    | FrameError::UnknownKind { .. }
                    | FrameError::Malformed { .. }),
                ) => return format!("protocol violation: {e}"),
            }
        }
        inbox.drain(..start);
        start = 0;
        match stream.read(&mut chunk) {
            Ok(0) => return "the peer closed the connection".to_string(),
            Ok(count) => {
                inbox.extend_from_slice(&chunk[..count]);
                quiet_since = None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if !shared.has_inflight() {
                    quiet_since = None;
                    continue;
                }
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= RESPONSE_SILENCE_MAX {
                    return format!("no response for {RESPONSE_SILENCE_MAX:?}");
                }
            }
            Err(e) => return format!("receiving failed: {e}"),
        }
    }
}

/// The completion state of one posted batch, shared with the receiver thread.
struct BatchState {
    remaining: AtomicUsize,
    results: Mutex<Vec<Option<OpResult>>>,
    done: Condvar,
}

impl BatchState {
    fn new(count: usize) -> BatchState {
        BatchState {
            remaining: AtomicUsize::new(count),
            results: Mutex::new(vec![None; count]),
            done: Condvar::new(),
        }
    }

    fn complete(&self, index: usize, result: OpResult) {
        let mut results = lock(&self.results);
        assert!(
            results[index].is_none(),
            "operation {index} of a batch completed twice"
        );
        results[index] = Some(result);
        // Decremented under the lock, so a waiter that checked it under the lock cannot miss
        // the notification.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_all();
        }
    }

    fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    fn take(&self) -> Vec<OpResult> {
        let mut results = lock(&self.results);
        std::mem::take(&mut *results)
            .into_iter()
            .enumerate()
            .map(|(index, result)| {
                result.unwrap_or_else(|| panic!("operation {index} of a done batch has no result"))
            })
            .collect()
    }
}

/// The completions of one batch posted over TCP.
pub struct PendingBatch {
    inner: BatchInner,
}

enum BatchInner {
    /// Completed; the results until `poll` hands them out.
    Done(Option<Vec<OpResult>>),
    Waiting(Arc<BatchState>),
}

impl PendingBatch {
    fn done(results: Vec<OpResult>) -> PendingBatch {
        PendingBatch {
            inner: BatchInner::Done(Some(results)),
        }
    }

    fn failed(count: usize, error: OpError) -> PendingBatch {
        PendingBatch::done(vec![Err(error); count])
    }

    /// The completions, in posting order, if every operation has completed; never blocks.
    /// After it has returned them once, it returns an empty vector.
    pub fn poll(&mut self) -> Option<Vec<OpResult>> {
        match &mut self.inner {
            BatchInner::Done(results) => results.take(),
            BatchInner::Waiting(batch) => {
                if !batch.is_done() {
                    return None;
                }
                let results = batch.take();
                self.inner = BatchInner::Done(None);
                Some(results)
            }
        }
    }

    /// Blocks until every operation has completed: re-checks briefly, then sleeps until the
    /// receiver thread completes the last one. Returns the completions in posting order.
    pub fn wait(self) -> Vec<OpResult> {
        let batch = match self.inner {
            BatchInner::Done(results) => return results.unwrap_or_default(),
            BatchInner::Waiting(batch) => batch,
        };
        for _ in 0..WAIT_SPIN_CHECKS_MAX {
            if batch.is_done() {
                return batch.take();
            }
            std::hint::spin_loop();
        }
        let mut results = lock(&batch.results);
        while !batch.is_done() {
            results = batch.done.wait(results).expect(crate::POISONED);
        }
        drop(results);
        batch.take()
    }
}
