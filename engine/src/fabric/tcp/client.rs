//! The initiator side of the TCP transport: one authenticated connection per peer node, made on
//! the first post to it and reused, shared by every application thread that posts to that node.
//!
//! A post assigns its operations consecutive request ids and writes all their REQUEST frames in
//! one go while holding the connection's writer lock, so the operations of one batch reach the
//! NIC thread contiguously and in order, and requests go out in id order. The NIC thread
//! answers in that order, so the in-flight batches form a queue that responses complete from
//! the front (no map, nothing allocated per operation but its result). Each operation keeps its
//! own REQUEST and RESPONSE frame: a batch already costs one `write` and one wake-up on each
//! side, and measured on loopback each operation added to a batch costs ~0.2 µs in all, of
//! which the 13 bytes of frame header and their checks are a small part, so one frame per
//! batch would not pay for a change of the wire format.
//!
//! There is no receiver thread. A thread that waits for its batch reads the socket itself when
//! no other thread does (leader/follower): it takes the reader role, blocks in `read`, and
//! completes whatever responses it finds, its own and other batches', until its batch is done;
//! then it hands the role to the oldest parked waiter. A waiter that finds the role taken parks
//! on its own batch. So a lone waiter is woken by the kernel when its response arrives, with
//! no hand-off between threads, and an idle connection has no thread at all. `poll` reads only
//! what has already arrived; a post whose write stalls does the same, since the server stops
//! reading a connection whose responses pile up.
//!
//! When the connection breaks (the peer hangs up, a write or read fails, the peer violates the
//! protocol, or nothing arrives for [`RESPONSE_SILENCE_MAX`] while a reader waits for
//! operations in flight, or for [`MOVED_SILENCE_MAX`] once this node moved to a newer
//! configuration than the connection's) every in-flight operation fails with
//! [`OpError::Unreachable`](crate::fabric::OpError::Unreachable) and the next post reconnects.
//! Nobody reads an idle connection, so a post first checks, without blocking, that the peer has
//! not hung up meanwhile, and dials again if it has.
//!
//! Every connection is bound at its handshake to this node's configuration id
//! ([`TcpTransport::set_configuration`] replaces it; later posts dial anew). A peer that does
//! not count this node as a member of its configuration refuses the handshake, or closes a live
//! connection after a REFUSED(not a member) frame behind the responses it still sent: the
//! operations it refused fail with [`OpError::NotMember`], which says that none of them
//! executed, and so does every post to it until the configuration changes.
//!
//! Every deadline (the handshake's, the silence and write-stall limits, the pause between
//! connect attempts) is on the node's [`Clock`] (docs/failures.md#clock). The socket timeouts
//! that wake a blocked thread to look at them are real time: [`CONNECT_TIMEOUT`], which bounds
//! one `connect` system call, and the check intervals, which say how often a limit is looked at.

use crate::addr::NodeId;
use crate::clock::{Clock, Time};
use crate::fabric::exec;
use crate::fabric::tcp::auth::{self, ClusterSecret, HANDSHAKE_DEADLINE, PROTOCOL_VERSION};
use crate::fabric::tcp::frame::Frame;
use crate::fabric::tcp::frame::{
    self, FrameError, HANDSHAKE_FRAME_BYTES_MAX, Hello, MAGIC, Refusal, Request, Response,
};
use crate::fabric::tcp::recv_now::recv_now;
use crate::fabric::{Op, OpError, OpResult, Pending};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// Times a post tries to connect and authenticate to a peer before its operations fail.
pub const CONNECT_ATTEMPTS_MAX: u32 = 3;
/// How long one TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before the second connect attempt; it grows linearly with the attempt number.
pub const CONNECT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a pause between connect attempts looks whether this node moved to another
/// configuration (which ends the attempts).
const CONFIGURATION_CHECK_INTERVAL: Duration = Duration::from_millis(2);
/// Steps of a pause between connect attempts: the longest pause in steps of
/// [`CONFIGURATION_CHECK_INTERVAL`], and one more.
const PAUSE_STEPS_MAX: u32 = CONNECT_ATTEMPTS_MAX
    * (CONNECT_BACKOFF.as_millis() as u32 / CONFIGURATION_CHECK_INTERVAL.as_millis() as u32)
    + 1;
/// A connection with operations in flight on which nothing arrives for this long is broken.
pub const RESPONSE_SILENCE_MAX: Duration = Duration::from_secs(10);
/// A connection whose socket accepts no bytes for this long is broken.
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(10);
/// Operations in flight on one connection; a post that would exceed it waits for completions.
pub const INFLIGHT_OPS_MAX: usize = 1 << 14;
/// Encoded requests gathered before a `write` system call.
const COALESCE_BYTES: usize = 64 << 10;
/// Bytes a reader reads at a time (at most).
const RECEIVE_CHUNK_BYTES: usize = 64 << 10;
/// A connection bound to an older configuration than this node's, with operations in flight
/// on which nothing arrives for this long, is broken: the CM reconfigured meanwhile, most
/// likely because this peer stopped answering (a paused or cut-off node the new configuration
/// removed), and its operations fail as unreachable now rather than at
/// [`RESPONSE_SILENCE_MAX`]. A peer that answers within it keeps its connection.
pub const MOVED_SILENCE_MAX: Duration = Duration::from_millis(100);
/// How often a blocked reader wakes to check for silence and for a newer configuration.
const SILENCE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How often a blocked write wakes to receive what has arrived and check for a stall.
const WRITE_CHECK_INTERVAL: Duration = Duration::from_millis(10);

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
    /// authentication, identity or membership will not change by retrying.
    pub fn is_transient(&self) -> bool {
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
    /// The configuration this node is in; new connections are bound to it, and each looks at it
    /// while its peer is silent ([`MOVED_SILENCE_MAX`]).
    config: Arc<AtomicU64>,
    secret: ClusterSecret,
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    /// The node's clock; [`crate::fabric::Fabric::new`] sets it to its memory's.
    clock: Clock,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("me", &self.me)
            .field("config", &self.configuration())
            .finish_non_exhaustive()
    }
}

struct Peer {
    node: NodeId,
    addr: SocketAddr,
    link: Mutex<Option<Arc<Link>>>,
}

impl Drop for Peer {
    /// A peer replaced or forgotten (or the transport dropped) takes its connection down;
    /// operations in flight on it fail.
    fn drop(&mut self) {
        if let Some(link) = lock(&self.link).take() {
            link.break_link("this node closed the connection".to_string());
        }
    }
}

impl TcpTransport {
    /// A transport for node `me`, a member of configuration `config` (any id for an observer),
    /// that authenticates with `secret`. It knows no peers yet.
    pub fn new(me: NodeId, config: u64, secret: ClusterSecret) -> TcpTransport {
        TcpTransport {
            me,
            config: Arc::new(AtomicU64::new(config)),
            secret,
            peers: RwLock::new(HashMap::new()),
            clock: Clock::system(),
        }
    }

    /// Reads time through `clock` (the system clock until then).
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The configuration this node's connections are bound to.
    pub fn configuration(&self) -> u64 {
        self.config.load(Ordering::Acquire)
    }

    /// Moves this node to configuration `config`: every later post goes out on a connection
    /// bound to it, dialled anew (the peer's fence then closes the old connection with any
    /// requests it has not read). Operations in flight on an old connection still complete or
    /// fail as they would have, except that a peer silent for [`MOVED_SILENCE_MAX`] from now
    /// on fails them as unreachable. Panics if `config` is lower than the current id: configuration
    /// ids only grow.
    pub fn set_configuration(&self, config: u64) {
        let previous = self.config.fetch_max(config, Ordering::AcqRel);
        assert!(
            previous <= config,
            "config={config} previous={previous}: configuration ids only grow"
        );
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
    /// never added, `TooLarge` if one moves more than `OP_BYTES_MAX` bytes, `NotMember` if the
    /// target does not serve this node in its configuration, and `Unreachable` if no connection
    /// could be made or the connection breaks before they complete.
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
            Err(error) => PendingBatch::failed(ops.len(), error),
        }
    }

    /// The peer's live connection, connecting (with bounded attempts) if there is none or if
    /// it is bound to an older configuration.
    ///
    /// The attempts belong to the configuration this node is in when the post arrives: if it
    /// moves meanwhile (while the post waits for another thread's attempts to the same peer, or
    /// between attempts), the post fails at once with `Unreachable`. Its caller runs again in
    /// the new configuration, which may not send it to this peer at all: a dead primary's
    /// replacement is reached at once, where finishing the attempts to the dead node cost up
    /// to 150 ms after the new configuration was known, and as much again for every post
    /// queued behind them (docs/failures.md#clients-and-the-configuration).
    fn link(&self, peer: &Peer) -> Result<Arc<Link>, OpError> {
        let config = self.configuration();
        let unreachable = |reason| OpError::Unreachable {
            node: peer.node,
            reason,
        };
        let moved = |now: u64| {
            unreachable(format!(
                "this node moved from configuration {config} to {now} while connecting; \
                 run again in the new one"
            ))
        };
        let mut slot = lock(&peer.link);
        // Read again: the post may have waited for the slot while another thread connected.
        let now = self.configuration();
        if let Some(link) = slot.as_ref() {
            if link.config < now {
                link.break_link(format!("this node moved to configuration {now}"));
            } else if link.is_usable() {
                return Ok(link.clone());
            }
        }
        *slot = None;
        if now != config {
            return Err(moved(now));
        }
        let mut last_error = String::new();
        for attempt in 0..CONNECT_ATTEMPTS_MAX {
            if attempt > 0
                && let Some(now) = self.pause_unless_moved(CONNECT_BACKOFF * attempt, config)
            {
                return Err(moved(now));
            }
            match connect(
                &self.clock,
                self.me,
                config,
                &self.secret,
                peer.node,
                peer.addr,
            ) {
                Ok((stream, leftover)) => {
                    let link = Link::start(
                        &self.clock,
                        peer.node,
                        config,
                        self.config.clone(),
                        stream,
                        leftover,
                    )
                    .map_err(|e| unreachable(e.to_string()))?;
                    let link = Arc::new(link);
                    *slot = Some(link.clone());
                    return Ok(link);
                }
                Err(HandshakeError::Refused {
                    refusal: Refusal::NotMember { config },
                    ..
                }) => {
                    return Err(OpError::NotMember {
                        node: peer.node,
                        config,
                    });
                }
                Err(e) if e.is_transient() => last_error = e.to_string(),
                Err(e) => return Err(unreachable(e.to_string())),
            }
        }
        Err(unreachable(format!(
            "{last_error} (gave up after {CONNECT_ATTEMPTS_MAX} attempts)"
        )))
    }
}

impl TcpTransport {
    /// Sleeps `pause` on the node's clock, in steps of at most [`CONFIGURATION_CHECK_INTERVAL`],
    /// unless this node moves from configuration `config` first: then returns the new one.
    fn pause_unless_moved(&self, pause: Duration, config: u64) -> Option<u64> {
        let deadline = self.clock.now().saturating_add(pause);
        for _ in 0..PAUSE_STEPS_MAX {
            let now = self.configuration();
            if now != config {
                return Some(now);
            }
            let left = deadline - self.clock.now();
            if left.is_zero() {
                return None;
            }
            self.clock.sleep(left.min(CONFIGURATION_CHECK_INTERVAL));
        }
        None
    }
}

/// Connects to `node` at `addr` and runs the client half of the handshake as `me`, a member of
/// configuration `config`, within [`HANDSHAKE_DEADLINE`] of `clock`. Returns the stream and any bytes already received after the
/// CHALLENGE. A server that does not admit `me` in `config` refuses the HELLO; if its
/// membership changes before the PROOF arrives, it refuses after the PROOF instead, which the
/// first read of the connection sees.
pub(crate) fn connect(
    clock: &Clock,
    me: NodeId,
    config: u64,
    secret: &ClusterSecret,
    node: NodeId,
    addr: SocketAddr,
) -> Result<(TcpStream, Vec<u8>), HandshakeError> {
    let io_error = |source| HandshakeError::Io { addr, source };
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(io_error)?;
    stream.set_nodelay(true).map_err(io_error)?;
    let deadline = clock.now() + HANDSHAKE_DEADLINE;
    let before = Before {
        clock,
        deadline,
        addr,
    };
    let client_nonce = auth::nonce();
    let hello = Frame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: me,
        config,
        client_nonce,
    });
    before.write(&stream, &frame::encode_to_vec(&hello))?;
    let mut inbox = Vec::new();
    let challenge = match before.read_frame(&stream, &mut inbox)? {
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
    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, me, config);
    before.write(&stream, &frame::encode_to_vec(&Frame::Proof(proof)))?;
    Ok((stream, inbox))
}

/// The handshake's deadline on the node's clock, for the socket reads and writes under it.
struct Before<'a> {
    clock: &'a Clock,
    deadline: Time,
    addr: SocketAddr,
}

impl Before<'_> {
    /// How long the next blocking socket call may wait in real time (at most a slice of it on
    /// a controlled clock: the caller looks at the clock again when it returns).
    fn remaining(&self) -> Result<Duration, HandshakeError> {
        let left = self.clock.real_duration_until(self.deadline);
        if left.is_zero() {
            return Err(HandshakeError::Timeout { addr: self.addr });
        }
        Ok(left)
    }

    /// Writes all of `bytes`, retrying writes that time out until the deadline.
    fn write(&self, mut stream: &TcpStream, mut bytes: &[u8]) -> Result<(), HandshakeError> {
        let addr = self.addr;
        let io_error = |source| HandshakeError::Io { addr, source };
        while !bytes.is_empty() {
            stream
                .set_write_timeout(Some(self.remaining()?))
                .map_err(io_error)?;
            match stream.write(bytes) {
                Ok(0) => return Err(io_error(io::ErrorKind::WriteZero.into())),
                Ok(count) => bytes = &bytes[count..],
                // A timed-out write wrote nothing: the deadline decides whether to go on.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    /// Reads one handshake frame (at most [`HANDSHAKE_FRAME_BYTES_MAX`]); bytes after it stay
    /// in `inbox`.
    fn read_frame(
        &self,
        mut stream: &TcpStream,
        inbox: &mut Vec<u8>,
    ) -> Result<Frame, HandshakeError> {
        let addr = self.addr;
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
                .set_read_timeout(Some(self.remaining()?))
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
                // The deadline decides whether to go on.
                Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One authenticated connection to a peer, shared by the threads that post to it and by the
/// [`PendingBatch`]es of its operations.
struct Link {
    node: NodeId,
    /// The node's clock, which the silence and write-stall limits are measured on.
    clock: Clock,
    /// The configuration the handshake bound this connection to.
    config: u64,
    /// The configuration this node is in now (the transport's).
    node_config: Arc<AtomicU64>,
    /// A handle on the socket used to shut it down, which ends a reader's blocking read.
    socket: TcpStream,
    /// The sending side. Request ids are assigned under its lock, so requests go out in id
    /// order, which is the order their responses come back in.
    writer: Mutex<Writer>,
    /// The receiving side, used only by the thread that holds the reader role
    /// ([`LinkState::reading`]).
    receiver: Mutex<Receiver>,
    state: Mutex<LinkState>,
    /// Signalled when in-flight operations complete or the reader role is given up, for posts
    /// waiting for room.
    room: Condvar,
}

struct Writer {
    stream: TcpStream,
    /// A post's encoded requests; kept between posts so that posting allocates no buffer.
    buf: Vec<u8>,
}

struct Receiver {
    stream: TcpStream,
    /// Received bytes; `inbox[start..end]` is not decoded yet.
    inbox: Vec<u8>,
    start: usize,
    end: usize,
    /// Since when a reader has found nothing new while operations were in flight.
    quiet_since: Option<Time>,
}

struct LinkState {
    next_request_id: u64,
    /// The id the next response must answer: the server answers in request order.
    next_response_id: u64,
    /// Batches with operations in flight, oldest first (the order responses complete them).
    inflight: VecDeque<Arc<BatchState>>,
    inflight_ops: usize,
    /// Set once, when the connection breaks, to what its operations fail with; no operation is
    /// registered after that.
    broken: Option<OpError>,
    /// Whether a thread holds the reader role: it alone reads the socket and completes what it
    /// finds, for every batch. Threads that wait meanwhile park on their own batch.
    reading: bool,
    /// Waiters parked on their batch while another thread reads.
    parked_count: usize,
    room_waiters: usize,
}

impl Link {
    fn start(
        clock: &Clock,
        node: NodeId,
        config: u64,
        node_config: Arc<AtomicU64>,
        stream: TcpStream,
        leftover: Vec<u8>,
    ) -> io::Result<Link> {
        stream.set_read_timeout(Some(SILENCE_CHECK_INTERVAL))?;
        stream.set_write_timeout(Some(WRITE_CHECK_INTERVAL))?;
        let end = leftover.len();
        Ok(Link {
            node,
            clock: clock.clone(),
            config,
            node_config,
            socket: stream.try_clone()?,
            writer: Mutex::new(Writer {
                stream: stream.try_clone()?,
                buf: Vec::new(),
            }),
            receiver: Mutex::new(Receiver {
                stream,
                inbox: leftover,
                start: 0,
                end,
                quiet_since: None,
            }),
            state: Mutex::new(LinkState {
                next_request_id: 0,
                next_response_id: 0,
                inflight: VecDeque::new(),
                inflight_ops: 0,
                broken: None,
                reading: false,
                parked_count: 0,
                room_waiters: 0,
            }),
            room: Condvar::new(),
        })
    }

    fn post(self: &Arc<Link>, ops: Vec<Op>) -> PendingBatch {
        let count = ops.len();
        let batch = Arc::new(BatchState::new(count));
        let mut writer = lock(&self.writer);
        let first_id = match self.register(&batch) {
            Ok(first_id) => first_id,
            Err(error) => return PendingBatch::failed(count, error),
        };
        if let Err(e) = self.send(&mut writer, first_id, ops) {
            drop(writer);
            self.break_link(format!("sending requests failed: {e}"));
        }
        PendingBatch {
            inner: BatchInner::Waiting {
                link: self.clone(),
                batch,
            },
        }
    }

    /// Registers `batch` as in flight under fresh request ids once there is room for it
    /// (reading responses itself while nobody else does). The caller holds the writer lock.
    fn register(&self, batch: &Arc<BatchState>) -> Result<u64, OpError> {
        let count = batch.count;
        let has_room = |state: &LinkState| {
            // A batch larger than the limit still goes out, alone.
            state.inflight_ops + count <= INFLIGHT_OPS_MAX || state.inflight.is_empty()
        };
        let mut state = lock(&self.state);
        loop {
            if let Some(error) = &state.broken {
                return Err(error.clone());
            }
            if has_room(&state) {
                break;
            }
            if !state.reading {
                state.reading = true;
                drop(state);
                self.lead(&|| {
                    let state = lock(&self.state);
                    state.broken.is_some() || has_room(&state)
                });
                state = lock(&self.state);
                continue;
            }
            state.room_waiters += 1;
            state = self.room.wait(state).expect(crate::POISONED);
            state.room_waiters -= 1;
        }
        let first_id = state.next_request_id;
        state.next_request_id += count as u64;
        state.inflight_ops += count;
        state.inflight.push_back(batch.clone());
        Ok(first_id)
    }

    /// Encodes and writes the requests, in as few `write`s as [`COALESCE_BYTES`] allows.
    fn send(&self, writer: &mut Writer, first_id: u64, ops: Vec<Op>) -> io::Result<()> {
        writer.buf.clear();
        for (request_id, op) in (first_id..).zip(ops) {
            frame::encode(&Frame::Request(Request { request_id, op }), &mut writer.buf);
            if writer.buf.len() >= COALESCE_BYTES {
                self.write_all(&writer.stream, &writer.buf)?;
                writer.buf.clear();
            }
        }
        self.write_all(&writer.stream, &writer.buf)?;
        writer.buf.clear();
        // A large WRITE passed through: do not keep its megabytes.
        writer.buf.shrink_to(2 * COALESCE_BYTES);
        Ok(())
    }

    /// Writes all of `bytes`. While the socket accepts nothing, receives the responses that
    /// have arrived: the server stops reading a connection whose responses pile up, and this
    /// thread may be the only one that would read them.
    fn write_all(&self, mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
        let mut stalled_since: Option<Time> = None;
        while !bytes.is_empty() {
            match stream.write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => {
                    bytes = &bytes[count..];
                    stalled_since = None;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    let now = self.clock.now();
                    let since = *stalled_since.get_or_insert(now);
                    if now - since >= WRITE_STALL_MAX {
                        return Err(e);
                    }
                    self.receive_available();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Whether the connection can take a post. When nothing is in flight nobody reads it, so
    /// a peer that hung up in the meantime (restarted, or fenced this connection) is only seen
    /// here, by a look at the socket that does not block; then the connection is broken and
    /// the post dials a new one instead of failing.
    fn is_usable(&self) -> bool {
        let state = lock(&self.state);
        if state.broken.is_some() {
            return false;
        }
        if state.reading || !state.inflight.is_empty() {
            return true;
        }
        let reason = match recv_now(&self.socket, &mut [0u8; 1], true) {
            // Bytes nobody asked for: the next reader reports them.
            Ok(count) if count > 0 => return true,
            Ok(_) => "the peer closed the connection".to_string(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return true;
            }
            Err(e) => format!("receiving failed: {e}"),
        };
        drop(state);
        self.break_link(reason);
        false
    }

    /// Blocks until `batch` is done. The waiting thread reads the socket itself when no other
    /// thread does (the leader/follower pattern), so a lone waiter gets its completions from
    /// the kernel with no hand-off between threads; otherwise it parks on its batch until the
    /// reader completes it or gives the role up.
    fn wait_for(&self, batch: &BatchState) {
        while !batch.is_done() {
            let mut state = lock(&self.state);
            if batch.is_done() {
                return;
            }
            // On a broken connection the breaking thread fails every batch: wait for it.
            if !state.reading && state.broken.is_none() {
                state.reading = true;
                drop(state);
                self.lead(&|| batch.is_done());
                continue;
            }
            state.parked_count += 1;
            let mut slots = lock(&batch.slots);
            slots.parked = true;
            drop(state);
            // `remaining` only drops under this lock, so the completion cannot slip between
            // the check and the sleep.
            if !batch.is_done() {
                slots = batch.wake.wait(slots).expect(crate::POISONED);
            }
            slots.parked = false;
            drop(slots);
            lock(&self.state).parked_count -= 1;
        }
    }

    /// Why a peer silent for `silence` while operations are in flight counts as unreachable:
    /// silent for [`RESPONSE_SILENCE_MAX`], or for [`MOVED_SILENCE_MAX`] once this node moved
    /// to a newer configuration than the connection's. `None`: wait on.
    fn silent_too_long(&self, silence: Duration) -> Option<String> {
        if silence >= RESPONSE_SILENCE_MAX {
            return Some(format!("no response for {RESPONSE_SILENCE_MAX:?}"));
        }
        let moved_to = self.node_config.load(Ordering::Acquire);
        (moved_to > self.config && silence >= MOVED_SILENCE_MAX).then(|| {
            format!(
                "no response for {MOVED_SILENCE_MAX:?} after this node moved from configuration \
                 {} to {moved_to}",
                self.config
            )
        })
    }

    /// Reads and completes responses as the reader (the caller took the role) until `goal`
    /// holds or the connection breaks, then gives the role up.
    fn lead(&self, goal: &dyn Fn() -> bool) {
        let mut receiver = lock(&self.receiver);
        let outcome = loop {
            if let Err(error) = self.complete_received(&mut receiver) {
                break Err(error);
            }
            if goal() {
                break Ok(());
            }
            // The goal is not met, so operations are in flight.
            match receiver.read_more(false) {
                Ok(0) => break Err(self.unreachable("the peer closed the connection")),
                Ok(_) => receiver.quiet_since = None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    let now = self.clock.now();
                    let since = *receiver.quiet_since.get_or_insert(now);
                    if let Some(reason) = self.silent_too_long(now - since) {
                        break Err(self.unreachable(reason));
                    }
                }
                Err(e) => break Err(self.unreachable(format!("receiving failed: {e}"))),
            }
        };
        drop(receiver);
        if let Err(error) = outcome {
            self.break_with(error);
        }
        self.resign();
    }

    /// Completes the responses that have already arrived, without blocking, if no other
    /// thread is reading (`poll`, and a post whose write stalls).
    fn receive_available(&self) {
        {
            let mut state = lock(&self.state);
            if state.reading || state.broken.is_some() {
                return;
            }
            state.reading = true;
        }
        let mut receiver = lock(&self.receiver);
        let outcome = loop {
            if let Err(error) = self.complete_received(&mut receiver) {
                break Err(error);
            }
            match receiver.read_more(true) {
                Ok(0) => break Err(self.unreachable("the peer closed the connection")),
                Ok(_) => receiver.quiet_since = None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if lock(&self.state).inflight.is_empty() {
                        break Ok(());
                    }
                    let now = self.clock.now();
                    let since = *receiver.quiet_since.get_or_insert(now);
                    if let Some(reason) = self.silent_too_long(now - since) {
                        break Err(self.unreachable(reason));
                    }
                    break Ok(());
                }
                Err(e) => break Err(self.unreachable(format!("receiving failed: {e}"))),
            }
        };
        drop(receiver);
        if let Err(error) = outcome {
            self.break_with(error);
        }
        self.resign();
    }

    /// Gives the reader role up and wakes a thread that will take it: the oldest parked waiter
    /// whose batch is still in flight, and any post waiting for room.
    fn resign(&self) {
        let mut state = lock(&self.state);
        assert!(state.reading, "node={} resigns without reading", self.node);
        state.reading = false;
        if state.room_waiters > 0 {
            self.room.notify_all();
        }
        if state.parked_count > 0 {
            for batch in &state.inflight {
                if lock(&batch.slots).parked {
                    batch.wake.notify_one();
                    break;
                }
            }
        }
    }

    /// Decodes the complete frames in the receiver's inbox and completes the operations they
    /// answer. Any frame but a RESPONSE to the oldest operation in flight, or a REFUSED that
    /// ends the connection, breaks the protocol.
    fn complete_received(&self, receiver: &mut Receiver) -> Result<(), OpError> {
        if receiver.start == receiver.end {
            return Ok(());
        }
        let mut state = lock(&self.state);
        if let Some(error) = &state.broken {
            return Err(error.clone());
        }
        let mut completed_any = false;
        loop {
            match frame::decode(&receiver.inbox[receiver.start..receiver.end]) {
                Ok(Some((Frame::Response(response), consumed))) => {
                    receiver.start += consumed;
                    state.complete(response).map_err(|r| self.unreachable(r))?;
                    completed_any = true;
                }
                // The server refused this node after the handshake (its proof, or a change of
                // its membership) and executed none of the requests it has not answered.
                Ok(Some((Frame::Refused(Refusal::NotMember { config }), _))) => {
                    return Err(OpError::NotMember {
                        node: self.node,
                        config,
                    });
                }
                Ok(Some((Frame::Refused(refusal), _))) => {
                    return Err(self.unreachable(format!("the peer refused this node: {refusal}")));
                }
                Ok(Some((other, _))) => {
                    return Err(self.unreachable(format!(
                        "protocol violation: unexpected frame kind {}",
                        other.kind()
                    )));
                }
                Ok(None) => break,
                Err(
                    e @ (FrameError::Oversize { .. }
                    | FrameError::UnknownKind { .. }
                    | FrameError::Malformed { .. }),
                ) => return Err(self.unreachable(format!("protocol violation: {e}"))),
            }
        }
        if completed_any && state.room_waiters > 0 {
            self.room.notify_all();
        }
        Ok(())
    }

    fn unreachable(&self, reason: impl Into<String>) -> OpError {
        OpError::Unreachable {
            node: self.node,
            reason: reason.into(),
        }
    }

    /// Breaks the connection with `Unreachable` for `reason`; see [`Link::break_with`].
    fn break_link(&self, reason: String) {
        self.break_with(self.unreachable(reason));
    }

    /// Marks the connection broken, fails every in-flight operation with `error` and shuts the
    /// socket down (which ends a reader's blocking read). The first error sticks.
    fn break_with(&self, error: OpError) {
        let (orphans, error) = {
            let mut state = lock(&self.state);
            let error = state.broken.get_or_insert(error).clone();
            if state.room_waiters > 0 {
                self.room.notify_all();
            }
            state.inflight_ops = 0;
            (std::mem::take(&mut state.inflight), error)
        };
        let _ = self.socket.shutdown(Shutdown::Both);
        for batch in orphans {
            batch.fail_rest(&error);
        }
    }
}

impl LinkState {
    fn complete(&mut self, response: Response) -> Result<(), String> {
        let Some(batch) = self.inflight.front() else {
            return Err(format!(
                "protocol violation: response to request id {} with nothing in flight",
                response.request_id
            ));
        };
        if response.request_id != self.next_response_id {
            return Err(format!(
                "protocol violation: response to request id {}, expected {}",
                response.request_id, self.next_response_id
            ));
        }
        self.next_response_id += 1;
        self.inflight_ops -= 1;
        if batch.complete(response.result) {
            self.inflight.pop_front();
        }
        Ok(())
    }
}

impl Receiver {
    /// Reads once from the socket into the inbox (blocking up to the read timeout unless
    /// `now`). Called only when the inbox holds no complete frame.
    fn read_more(&mut self, now: bool) -> io::Result<usize> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.inbox.len() > 2 * RECEIVE_CHUNK_BYTES {
                // A large response passed through; give its buffer back.
                self.inbox = Vec::new();
            }
        }
        if self.inbox.len() - self.end < RECEIVE_CHUNK_BYTES {
            self.inbox.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.inbox.len() - self.end < RECEIVE_CHUNK_BYTES {
                self.inbox.resize(self.end + RECEIVE_CHUNK_BYTES, 0);
            }
        }
        let space = &mut self.inbox[self.end..];
        let count = match now {
            true => recv_now(&self.stream, space, false)?,
            false => (&self.stream).read(space)?,
        };
        self.end += count;
        Ok(count)
    }
}

/// The completion state of one posted batch, shared with whichever thread reads its
/// responses.
struct BatchState {
    count: usize,
    /// Operations not completed yet; it drops only under `slots`'s lock.
    remaining: AtomicUsize,
    slots: Mutex<BatchSlots>,
    /// Signalled when the batch completes or its parked waiter should take the reader role.
    wake: Condvar,
}

struct BatchSlots {
    /// The results so far: responses complete a batch's operations in order.
    results: Vec<OpResult>,
    /// Whether the batch's waiter sleeps on `wake`.
    parked: bool,
}

impl BatchState {
    fn new(count: usize) -> BatchState {
        BatchState {
            count,
            remaining: AtomicUsize::new(count),
            slots: Mutex::new(BatchSlots {
                results: Vec::with_capacity(count),
                parked: false,
            }),
            wake: Condvar::new(),
        }
    }

    /// Completes the next operation; returns whether that was the last.
    fn complete(&self, result: OpResult) -> bool {
        let mut slots = lock(&self.slots);
        assert!(
            slots.results.len() < self.count,
            "count={} a batch completed more operations than it has",
            self.count
        );
        slots.results.push(result);
        self.settle(&slots)
    }

    /// Fails every operation not completed yet with `error`.
    fn fail_rest(&self, error: &OpError) {
        let mut slots = lock(&self.slots);
        let missing = self.count - slots.results.len();
        slots
            .results
            .extend(std::iter::repeat_n(Err(error.clone()), missing));
        self.settle(&slots);
    }

    /// Publishes how many operations remain and wakes a parked waiter once none do.
    fn settle(&self, slots: &BatchSlots) -> bool {
        let remaining = self.count - slots.results.len();
        self.remaining.store(remaining, Ordering::Release);
        if remaining == 0 && slots.parked {
            self.wake.notify_one();
        }
        remaining == 0
    }

    fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }

    fn take(&self) -> Vec<OpResult> {
        let results = std::mem::take(&mut lock(&self.slots).results);
        assert!(
            results.len() == self.count,
            "results={} count={}: a done batch lacks results",
            results.len(),
            self.count
        );
        results
    }
}

/// The completions of one batch posted over TCP.
pub struct PendingBatch {
    inner: BatchInner,
}

enum BatchInner {
    /// Completed; the results until `poll` hands them out.
    Done(Option<Vec<OpResult>>),
    Waiting {
        link: Arc<Link>,
        batch: Arc<BatchState>,
    },
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

    /// The completions, in posting order, if every operation has completed; never blocks (it
    /// completes what has already arrived if no other thread is reading the connection).
    /// After it has returned them once, it returns `None`.
    pub fn poll(&mut self) -> Option<Vec<OpResult>> {
        match &mut self.inner {
            BatchInner::Done(results) => results.take(),
            BatchInner::Waiting { link, batch } => {
                if !batch.is_done() {
                    link.receive_available();
                }
                if !batch.is_done() {
                    return None;
                }
                let results = batch.take();
                self.inner = BatchInner::Done(None);
                Some(results)
            }
        }
    }

    /// Blocks until every operation has completed and returns the completions in posting
    /// order. The waiting thread reads the connection itself unless another thread already
    /// does; see [`TcpTransport`]'s module doc.
    pub fn wait(self) -> Vec<OpResult> {
        match self.inner {
            BatchInner::Done(results) => results.unwrap_or_default(),
            BatchInner::Waiting { link, batch } => {
                link.wait_for(&batch);
                batch.take()
            }
        }
    }
}
