//! The configuration manager's message links: authenticated, framed, lossy TCP links between
//! CM replicas (Raft messages) and between the CM and the nodes (NEW-CONFIG, admin requests),
//! separate from the data-path fabric.
//!
//! One [`Links`] runs in each process that takes part. [`Links::bind`] listens for peers;
//! [`Links::add_peer`] names a peer and its address; [`Links::send`] queues a message for it
//! and returns at once; what peers send arrives in the [`Inbox`] as `(from, payload)`, in the
//! order each peer's connection carried it.
//!
//! # Threads
//!
//! Each peer has an outgoing queue (at most [`OUTBOX_FRAMES_MAX`] frames and
//! [`OUTBOX_BYTES_MAX`] bytes) and a sender thread. The thread connects when it has something
//! to send, runs the client's side of the handshake and writes the queued frames; when the
//! peer cannot be reached it retries with exponential backoff from [`RECONNECT_BACKOFF_MIN`]
//! to [`RECONNECT_BACKOFF_MAX`]. A peer whose process restarted listens at new ports: after a
//! failed connection the thread asks the links' [`AddressBook`] (a node process's reads the
//! manifests in the cluster directory) where the peer is now, and moves there, keeping what is
//! queued ([`Links::set_address_book`]). A listener thread accepts connections (at most
//! [`CONNECTIONS_MAX`] at once) and starts a reader thread for each, which runs the server's
//! side of the handshake and delivers the frames that follow. So each pair of peers has two
//! connections, one per direction; frames flow one way on each and the reader never writes
//! after the handshake. Every thread blocks in a socket call or on a condition variable, so an
//! idle link costs no CPU; dropping [`Links`] wakes them (by shutting their sockets down and
//! waking the listener's poll) and joins them.
//!
//! # Loss
//!
//! A message is dropped, and counted in [`LinkStats`], when its peer's queue is full, when
//! the peer cannot be reached or refuses the handshake (everything queued is dropped at each
//! failed attempt, so a dead peer holds no memory), when the connection fails while it is
//! written, and when the receiver's [`Inbox`] is full ([`INBOX_FRAMES_MAX`],
//! [`INBOX_BYTES_MAX`]). Nothing is acknowledged: a frame written into a connection the peer
//! has just closed is lost without a count. What arrives from one connection arrives in order
//! and without duplicates, so what a peer receives of one sender's messages is a subsequence of
//! what was sent, except across a reconnection, where an older connection's frames still being
//! read may interleave with the newer's first ones (the reader of the older connection is closed
//! as soon as the newer authenticates).
//!
//! That is what Raft expects of its transport: it retransmits what matters (appends until they
//! are acknowledged, heartbeats every tick, votes every election timeout) and discards stale
//! messages by term and index, so a lossy link with bounded queues is safe and never makes a
//! replica wait for a slow peer. Callers that need a reply (NEW-CONFIG, admin requests) retry
//! until it arrives, as the CM's protocol does with its acknowledgements.
//!
//! # Authentication
//!
//! The handshake (layouts in [`frame`]) uses the HMAC-SHA256 proofs of the fabric
//! ([`acre_engine::fabric::tcp::auth`]) under a secret of the links' own, derived from the
//! cluster secret ([`ClusterSecret::derive`] with [`SECRET_LABEL`]), so no proof of one protocol
//! is worth anything in the other:
//!
//! 1. client -> server HELLO { magic "ACRE-CM\0", version, client node, client nonce };
//! 2. server -> client CHALLENGE { server node, server nonce, server proof }, or REFUSED if it
//!    speaks another version;
//! 3. the client checks that the server is the node it dialled and that its proof verifies, so
//!    it never sends a message to an impostor or a stale address;
//! 4. client -> server PROOF { client proof over both nonces and the client's node id };
//! 5. the server verifies it in constant time and checks it links with that node (it is one of
//!    its peers), then answers ACCEPTED, or REFUSED and closes.
//!
//! The node id a connection proved is the sender of every frame it carries; no frame names its
//! sender. Fresh nonces on both sides keep a recorded handshake from being replayed.
//!
//! What this does not protect: frames are neither encrypted nor signed. Someone on the path
//! between two processes can read them, change them (the CRC32C of each frame catches damage,
//! not tampering), or relay a handshake between two CM link endpoints (never into a fabric
//! connection: the secrets differ). Run the cluster on a trusted network, as FaRM
//! does, or under a VPN or TLS tunnel. Anyone who holds the secret can claim any node id.
//!
//! # Errors
//!
//! A peer that does not finish the handshake within [`HANDSHAKE_DEADLINE`], sends a wrong
//! magic, another version, a wrong proof, a frame over
//! [`FRAME_PAYLOAD_BYTES_MAX`] (refused from its header, before anything is allocated), a bad
//! checksum or any malformed bytes is disconnected with a [`LinkError`], logged with
//! `tracing::warn!` naming its address; nothing it sent after its last good frame is delivered,
//! and the other connections go on.

pub mod frame;
mod handshake;
#[cfg(test)]
mod tests;

pub use frame::{FRAME_PAYLOAD_BYTES_MAX, FrameError, PROTOCOL_VERSION, Refusal};

use acre_engine::NodeId;
use acre_engine::fabric::tcp::auth::{ClusterSecret, HANDSHAKE_DEADLINE};
use frame::{Kind, ReadError};
use std::collections::{HashMap, VecDeque};
use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Frames a peer's outgoing queue holds; a message sent to a full queue is dropped.
pub const OUTBOX_FRAMES_MAX: usize = 1024;
/// Payload bytes a peer's outgoing queue holds: two of the largest frames.
pub const OUTBOX_BYTES_MAX: usize = 2 * FRAME_PAYLOAD_BYTES_MAX as usize;
/// Frames the inbox holds until the owner takes them; a frame arriving at a full inbox is
/// dropped.
pub const INBOX_FRAMES_MAX: usize = 4096;
/// Payload bytes the inbox holds.
pub const INBOX_BYTES_MAX: usize = 2 * FRAME_PAYLOAD_BYTES_MAX as usize;
/// Connections the listener serves at once (handshaking or authenticated); more are refused.
pub const CONNECTIONS_MAX: usize = 256;
/// The first wait before reconnecting to a peer that could not be reached.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// The longest wait between attempts: short, since Raft's election timeouts are a few hundred
/// milliseconds and a recovered peer should hear from its leader within one.
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_millis(200);
/// How long a sender waits for a TCP connection to a peer to open. It bounds how long
/// dropping [`Links`] or [`Links::remove_peer`] may wait for a thread that is connecting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a write may make no progress before the peer is considered gone and the
/// connection closed (a stopped or vanished process that still holds its socket).
pub const WRITE_STALL_MAX: Duration = Duration::from_secs(5);
/// Frames a sender takes from its queue per write batch.
const BATCH_FRAMES_MAX: usize = 64;
/// Bytes of a sender's write buffer.
const WRITE_BUFFER_BYTES: usize = 64 << 10;
/// Readiness events the listener takes per poll.
const LISTENER_EVENTS: usize = 16;

const POISONED: &str = "a CM link thread panicked while holding this lock";
const LISTENER_TOKEN: mio::Token = mio::Token(0);
const WAKER_TOKEN: mio::Token = mio::Token(1);

/// Why a link's connection failed or was closed. Logged where it happens; the link reconnects
/// (sender) or waits for the peer to reconnect (reader) on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed bytes: {0}")]
    Frame(#[from] FrameError),
    #[error("the peer closed the connection during the handshake")]
    Closed,
    #[error(
        "the peer speaks CM link version {theirs} and this node {ours}: run the same release on \
         every node"
    )]
    UnsupportedVersion { ours: u16, theirs: u16 },
    #[error(
        "the peer's proof does not match this cluster's secret: it does not hold the same \
         secret file"
    )]
    BadProof,
    #[error(
        "dialled node {expected} but reached node {found}: the address given to add_peer is \
         stale, update it"
    )]
    WrongNode { expected: NodeId, found: NodeId },
    #[error("node {node} proved its identity but was not admitted: {refusal}")]
    NotAdmitted { node: NodeId, refusal: Refusal },
    #[error("the peer refused the handshake: {0}")]
    Refused(Refusal),
    #[error("frame kind {found} where kind {expected} belongs")]
    UnexpectedKind { expected: u8, found: u8 },
}

impl From<ReadError> for LinkError {
    fn from(e: ReadError) -> LinkError {
        match e {
            ReadError::Io(e) => LinkError::Io(e),
            ReadError::Frame(e) => LinkError::Frame(e),
        }
    }
}

/// [`Links::bind`] could not listen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    #[error(
        "cannot listen for CM links on {addr}: {source}; check that the address is this \
         host's and no other process uses the port"
    )]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start the CM link listener on {addr}: {source}")]
    Poll { addr: SocketAddr, source: io::Error },
}

/// Why [`Links::send`] dropped a message at once. Dropping is normal operation (see the module
/// docs on loss); the message is counted in [`LinkStats`] either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("node {node} is not a peer: add_peer it first")]
    UnknownPeer { node: NodeId },
    #[error(
        "the queue to node {node} is full: the peer is slow or unreachable; Raft retransmits, \
         other callers retry later"
    )]
    QueueFull { node: NodeId },
    #[error(
        "a message of {len} bytes exceeds the CM link limit of {max}: this is a bug in the \
         caller (CM messages are small)"
    )]
    TooLarge { len: usize, max: u32 },
}

/// Why [`Inbox::recv_timeout`] returned without a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    #[error("no message arrived in time")]
    Timeout,
    #[error("the links are shut down and every message was taken: stop receiving")]
    Closed,
}

/// A message from an authenticated peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The node the connection it came on authenticated as.
    pub from: NodeId,
    pub payload: Vec<u8>,
}

/// Counters of what the links did, for observability and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames written to a peer's connection (not acknowledged: see the module docs).
    pub sent_count: u64,
    /// Frames delivered to the inbox.
    pub delivered_count: u64,
    /// Messages dropped because the peer's queue was full.
    pub dropped_queue_full_count: u64,
    /// Messages dropped because the peer could not be reached, refused the handshake, or the
    /// connection failed while they were written.
    pub dropped_unreachable_count: u64,
    /// Messages dropped because they were sent to a node that is not a peer, or were too large.
    pub dropped_unsendable_count: u64,
    /// Frames that arrived and were dropped because the inbox was full.
    pub dropped_inbox_full_count: u64,
    /// Outgoing connections that completed the handshake.
    pub connected_count: u64,
    /// Incoming connections that completed the handshake.
    pub accepted_count: u64,
    /// Incoming connections that failed the handshake, or were closed for bad bytes after it
    /// (not for a socket error after it).
    pub refused_count: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    dropped_queue_full: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_unsendable: AtomicU64,
    dropped_inbox_full: AtomicU64,
    connected: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, count: u64) {
        counter.fetch_add(count, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LinkStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        LinkStats {
            sent_count: load(&self.sent),
            delivered_count: load(&self.delivered),
            dropped_queue_full_count: load(&self.dropped_queue_full),
            dropped_unreachable_count: load(&self.dropped_unreachable),
            dropped_unsendable_count: load(&self.dropped_unsendable),
            dropped_inbox_full_count: load(&self.dropped_inbox_full),
            connected_count: load(&self.connected),
            accepted_count: load(&self.accepted),
            refused_count: load(&self.refused),
        }
    }
}

// The owner shares one `Links` among its threads (the Raft loop, NEW-CONFIG, admin requests)
// and moves the `Inbox` to the thread that drains it.
const _: () = {
    const fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<Links>();
    send_and_sync::<Inbox>();
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect(POISONED)
}

/// Counts the threads of one [`Links`] that are running, so tests can check that shutting
/// down ended every one of them.
#[derive(Default)]
struct LiveThreads(AtomicUsize);

/// Held by a thread for as long as it runs.
struct Alive(Arc<Shared>);

impl Alive {
    fn enter(shared: &Arc<Shared>) -> Alive {
        shared.live_threads.0.fetch_add(1, Ordering::SeqCst);
        Alive(shared.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.live_threads.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The authenticated, framed message links of one CM replica or node process. See the module
/// docs for the threads, the loss policy and what the authentication protects.
///
/// Dropping it (or [`Links::shutdown`]) stops and joins every thread; the [`Inbox`] then hands
/// out what it holds and reports [`RecvError::Closed`].
///
/// ```
/// use acre_cm::net::Links;
/// use acre_engine::NodeId;
/// use acre_engine::fabric::tcp::ClusterSecret;
/// use std::time::Duration;
///
/// let secret = ClusterSecret::generate();
/// let loopback = "127.0.0.1:0".parse().unwrap();
/// let (one, _one_inbox) = Links::bind(NodeId(1), loopback, secret.clone()).unwrap();
/// let (two, two_inbox) = Links::bind(NodeId(2), loopback, secret).unwrap();
/// // Each side names the other: a connection from a node that is not a peer is refused.
/// one.add_peer(NodeId(2), two.local_addr());
/// two.add_peer(NodeId(1), one.local_addr());
///
/// one.send(NodeId(2), b"vote for me".to_vec()).unwrap();
/// let incoming = two_inbox.recv_timeout(Duration::from_secs(5)).unwrap();
/// assert_eq!(incoming.from, NodeId(1)); // the node the connection proved, not a field
/// assert_eq!(incoming.payload, b"vote for me");
/// ```
pub struct Links {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    waker: mio::Waker,
    listener: Option<JoinHandle<()>>,
}

struct Shared {
    me: NodeId,
    secret: ClusterSecret,
    stopping: AtomicBool,
    counters: Counters,
    live_threads: LiveThreads,
    inbox: Arc<InboxShared>,
    peers: Mutex<HashMap<NodeId, Peer>>,
    connections: Mutex<Connections>,
    address_book: OnceLock<AddressBook>,
}

/// Where each peer listens now, as the cluster says (a process reads the manifests in the
/// cluster directory): `None` when it does not know.
pub type AddressBook = Arc<dyn Fn(NodeId) -> Option<SocketAddr> + Send + Sync>;

/// A peer's outgoing side.
struct Peer {
    outbox: Arc<Outbox>,
    thread: JoinHandle<()>,
}

struct Outbox {
    node: NodeId,
    /// Where the sender connects: the address `add_peer` gave, or a newer one the address book
    /// gave after a connection failed.
    addr: Mutex<SocketAddr>,
    state: Mutex<OutboxState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutboxState {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    closing: bool,
    /// A handle on the sender's socket, so that closing can interrupt a blocked write or
    /// handshake.
    stream: Option<TcpStream>,
}

/// The incoming connections, handshaking or authenticated.
#[derive(Default)]
struct Connections {
    next_id: u64,
    by_id: HashMap<u64, Connection>,
}

struct Connection {
    /// A handle on the reader's socket, so that shutdown or a newer connection of the same
    /// node can close it; `None` once the reader closed it itself.
    stream: Option<TcpStream>,
    node: Option<NodeId>,
    /// Closed by this process (shutdown, removal, or a newer connection of the same node).
    closed: bool,
    thread: Option<JoinHandle<()>>,
}

/// What the links' own secret is derived with from the cluster secret.
pub const SECRET_LABEL: &str = "acre cm links";

impl Links {
    /// Listens on `listen` (port 0 picks a free one: see [`Links::local_addr`]) as node `me` of
    /// the cluster whose secret is `secret`, and returns the links and the inbox where peers'
    /// messages arrive.
    pub fn bind(
        me: NodeId,
        listen: SocketAddr,
        secret: ClusterSecret,
    ) -> Result<(Links, Inbox), BindError> {
        let listener = std::net::TcpListener::bind(listen).map_err(|source| BindError::Listen {
            addr: listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| BindError::Listen {
            addr: listen,
            source,
        })?;
        let poll_error = |source| BindError::Poll {
            addr: local_addr,
            source,
        };
        listener.set_nonblocking(true).map_err(poll_error)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = mio::Poll::new().map_err(poll_error)?;
        poll.registry()
            .register(&mut listener, LISTENER_TOKEN, mio::Interest::READABLE)
            .map_err(poll_error)?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN).map_err(poll_error)?;
        let inbox = Arc::new(InboxShared::default());
        let shared = Arc::new(Shared {
            me,
            secret: secret.derive(SECRET_LABEL),
            stopping: AtomicBool::new(false),
            counters: Counters::default(),
            live_threads: LiveThreads::default(),
            inbox: inbox.clone(),
            peers: Mutex::new(HashMap::new()),
            connections: Mutex::new(Connections::default()),
            address_book: OnceLock::new(),
        });
        let thread = {
            let alive = Alive::enter(&shared);
            std::thread::Builder::new()
                .name(format!("cm-link-listen-{}", me.0))
                .spawn(move || accept_loop(alive, listener, poll))
                .map_err(poll_error)?
        };
        Ok((
            Links {
                shared,
                local_addr,
                waker,
                listener: Some(thread),
            },
            Inbox { shared: inbox },
        ))
    }

    /// This process's node id.
    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Links with `node` at `addr`: messages may be sent to it, and it may connect to us. A
    /// peer added again with a new address is reconnected there (what was queued for the old
    /// one is dropped); with the same address nothing changes.
    ///
    /// Panics if `node` is this process's own id: a process never links with itself.
    pub fn add_peer(&self, node: NodeId, addr: SocketAddr) {
        assert!(node != self.shared.me, "add_peer of itself: node={node}");
        let mut peers = lock(&self.shared.peers);
        // Replace a peer at another address; the lock is not held while its sender stops,
        // since `send` must never wait, so check again after each stop.
        while let Some(peer) = peers.get(&node) {
            if peer.outbox.addr() == addr {
                return;
            }
            let old = peers.remove(&node).expect("found above");
            drop(peers);
            old.stop();
            peers = lock(&self.shared.peers);
        }
        let outbox = Arc::new(Outbox {
            node,
            addr: Mutex::new(addr),
            state: Mutex::new(OutboxState::default()),
            changed: Condvar::new(),
        });
        let alive = Alive::enter(&self.shared);
        let thread = {
            let outbox = outbox.clone();
            std::thread::Builder::new()
                .name(format!("cm-link-to-{}", node.0))
                .spawn(move || send_loop(alive, &outbox))
                .expect("spawn a CM link sender thread")
        };
        let previous = peers.insert(node, Peer { outbox, thread });
        assert!(previous.is_none(), "two senders for node={node}");
    }

    /// Where a peer listens when a connection to the address it was added with fails: a peer
    /// whose process restarted listens at new ports, and until someone calls `add_peer` with
    /// them, what is sent to it would be lost. With a book, the sender asks it after every
    /// failed connection and moves to the address it gives, keeping what is queued. Set at
    /// most once, before or after peers are added; a second book is refused (returns false).
    pub fn set_address_book(&self, book: AddressBook) -> bool {
        self.shared.address_book.set(book).is_ok()
    }

    /// Stops linking with `node`: drops what is queued for it, stops its sender and closes
    /// its incoming connection; it is refused if it connects again. Does nothing if it is not
    /// a peer.
    pub fn remove_peer(&self, node: NodeId) {
        let removed = lock(&self.shared.peers).remove(&node);
        if let Some(peer) = removed {
            peer.stop();
        }
        let mut connections = lock(&self.shared.connections);
        for connection in connections.by_id.values_mut() {
            if connection.node == Some(node) {
                connection.close();
            }
        }
    }

    /// The peers and their addresses.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let mut peers: Vec<_> = lock(&self.shared.peers)
            .iter()
            .map(|(node, peer)| (*node, peer.outbox.addr()))
            .collect();
        peers.sort();
        peers
    }

    /// Queues `payload` for `to` and returns at once. The message is dropped (and counted) if
    /// it cannot be queued, as the error says, or later if the peer cannot be reached: see the
    /// module docs on loss.
    pub fn send(&self, to: NodeId, payload: Vec<u8>) -> Result<(), SendError> {
        let counters = &self.shared.counters;
        if payload.len() > FRAME_PAYLOAD_BYTES_MAX as usize {
            Counters::add(&counters.dropped_unsendable, 1);
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        let unknown = || {
            Counters::add(&counters.dropped_unsendable, 1);
            Err(SendError::UnknownPeer { node: to })
        };
        let Some(outbox) = lock(&self.shared.peers).get(&to).map(|p| p.outbox.clone()) else {
            return unknown();
        };
        let mut state = lock(&outbox.state);
        if state.closing {
            // Removed by a concurrent remove_peer.
            return unknown();
        }
        if state.frames.len() >= OUTBOX_FRAMES_MAX || state.bytes + payload.len() > OUTBOX_BYTES_MAX
        {
            Counters::add(&counters.dropped_queue_full, 1);
            return Err(SendError::QueueFull { node: to });
        }
        state.bytes += payload.len();
        state.frames.push_back(payload);
        outbox.changed.notify_one();
        Ok(())
    }

    /// What the links have done so far.
    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Stops and joins every thread; the same as dropping the links.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            // The listener would then block until a connection arrives: say so, since the
            // join below may hang.
            tracing::error!(
                addr = %self.local_addr,
                error = %e,
                "cannot wake the CM link listener"
            );
        }
        join(listener, "listener");
        // Signal every sender before joining any, so their connect timeouts overlap.
        let peers: Vec<Peer> = lock(&self.shared.peers)
            .drain()
            .map(|(_, peer)| peer)
            .collect();
        for peer in &peers {
            peer.outbox.close();
        }
        for peer in peers {
            join(peer.thread, "sender");
        }
        // The listener is gone, so no connection is added from here on.
        let mut connections: Vec<Connection> = lock(&self.shared.connections)
            .by_id
            .drain()
            .map(|(_, connection)| connection)
            .collect();
        for connection in &mut connections {
            connection.close();
        }
        for connection in connections {
            if let Some(thread) = connection.thread {
                join(thread, "reader");
            }
        }
        self.shared.inbox.close();
        assert_eq!(
            self.shared.live_threads.0.load(Ordering::SeqCst),
            0,
            "a CM link thread outlived the shutdown"
        );
    }

    #[cfg(test)]
    fn live_thread_count(&self) -> usize {
        self.shared.live_threads.0.load(Ordering::SeqCst)
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("me", &self.shared.me)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn join(thread: JoinHandle<()>, what: &str) {
    if thread.join().is_err() {
        // The panic was already printed; a link thread that panicked broke an invariant.
        panic!("a CM link {what} thread panicked");
    }
}

impl Peer {
    fn stop(self) {
        self.outbox.close();
        join(self.thread, "sender");
    }
}

impl Outbox {
    fn addr(&self) -> SocketAddr {
        *lock(&self.addr)
    }

    /// Tells the sender to stop, dropping what is queued, and interrupts its socket.
    fn close(&self) {
        let mut state = lock(&self.state);
        state.closing = true;
        state.frames.clear();
        state.bytes = 0;
        if let Some(stream) = &state.stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
        self.changed.notify_all();
    }
}

impl Connection {
    /// Closes the connection from this side; its reader then ends without complaint.
    fn close(&mut self) {
        self.closed = true;
        if let Some(stream) = &self.stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The listener thread: accepts connections until the links stop.
fn accept_loop(alive: Alive, listener: mio::net::TcpListener, mut poll: mio::Poll) {
    let shared = alive.0.clone();
    let mut events = mio::Events::with_capacity(LISTENER_EVENTS);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "CM link listener cannot poll; no more peers can connect");
            return;
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        // Readiness is edge-triggered: accept until the backlog is empty.
        loop {
            match listener.accept() {
                Ok((stream, addr)) => admit(&shared, stream, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(error = %e, "CM link listener cannot accept a connection");
                    break;
                }
            }
        }
    }
}

/// Starts a reader thread for a new connection, or refuses it when there are too many.
fn admit(shared: &Arc<Shared>, stream: mio::net::TcpStream, addr: SocketAddr) {
    let stream = TcpStream::from(OwnedFd::from(stream));
    let handle = match stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
        .and_then(|()| stream.try_clone())
    {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(peer = %addr, error = %e, "cannot set up a CM link connection");
            return;
        }
    };
    let mut connections = lock(&shared.connections);
    // Join the readers that have finished, so their slots free up.
    let finished: Vec<u64> = connections
        .by_id
        .iter()
        .filter(|(_, c)| c.thread.as_ref().is_some_and(|t| t.is_finished()))
        .map(|(id, _)| *id)
        .collect();
    for id in finished {
        let connection = connections.by_id.remove(&id).expect("listed above");
        join(connection.thread.expect("filtered on it"), "reader");
    }
    if connections.by_id.len() >= CONNECTIONS_MAX {
        drop(connections);
        tracing::warn!(
            peer = %addr,
            connections_max = CONNECTIONS_MAX,
            "refusing a CM link: too many connections"
        );
        Counters::add(&shared.counters.refused, 1);
        let mut stream = stream;
        handshake::refuse(&mut stream, Refusal::Busy);
        let _ = stream.shutdown(Shutdown::Both);
        return;
    }
    let id = connections.next_id;
    connections.next_id += 1;
    let alive = Alive::enter(shared);
    let thread = std::thread::Builder::new()
        .name(format!("cm-link-from-{addr}"))
        .spawn(move || read_loop(alive, id, stream, addr))
        .expect("spawn a CM link reader thread");
    connections.by_id.insert(
        id,
        Connection {
            stream: Some(handle),
            node: None,
            closed: false,
            thread: Some(thread),
        },
    );
}

/// A reader thread: the server's side of the handshake, then delivery until the connection
/// ends.
fn read_loop(alive: Alive, id: u64, stream: TcpStream, addr: SocketAddr) {
    let shared = &alive.0;
    match serve(shared, id, &stream) {
        Ok(node) => tracing::debug!(peer = %addr, %node, "CM link closed"),
        Err(_) if is_closed(shared, id) => {}
        Err(error) => {
            tracing::warn!(peer = %addr, %error, "closing an incoming CM link");
            let authenticated = lock(&shared.connections)
                .by_id
                .get(&id)
                .is_some_and(|c| c.node.is_some());
            if !authenticated || !matches!(error, LinkError::Io(_)) {
                Counters::add(&shared.counters.refused, 1);
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(connection) = lock(&shared.connections).by_id.get_mut(&id) {
        connection.stream = None;
    }
}

fn serve(shared: &Arc<Shared>, id: u64, stream: &TcpStream) -> Result<NodeId, LinkError> {
    stream.set_write_timeout(Some(HANDSHAKE_DEADLINE))?;
    let mut reader = BufReader::new(stream);
    let node = {
        let mut duplex = Duplex::new(&mut reader, stream);
        handshake::accept(&mut duplex, shared.me, &shared.secret, |node| {
            admit_node(shared, id, node)
        })?
    };
    Counters::add(&shared.counters.accepted, 1);
    stream.set_read_timeout(None)?;
    loop {
        let frame = match frame::read_frame(&mut reader, FRAME_PAYLOAD_BYTES_MAX) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(node),
            // Our own shutdown, or a newer connection of the same node, closed this one.
            Err(_) if is_closed(shared, id) => return Ok(node),
            Err(e) => return Err(e.into()),
        };
        if frame.kind != Kind::Message {
            return Err(LinkError::UnexpectedKind {
                expected: Kind::Message.code(),
                found: frame.kind.code(),
            });
        }
        shared.inbox.deliver(
            Incoming {
                from: node,
                payload: frame.payload,
            },
            &shared.counters,
        );
    }
}

/// Whether connection `id` was closed by this process (shutdown, removal, or a newer
/// connection), rather than by its peer.
fn is_closed(shared: &Shared, id: u64) -> bool {
    shared.stopping.load(Ordering::SeqCst)
        || lock(&shared.connections)
            .by_id
            .get(&id)
            .is_none_or(|c| c.closed)
}

/// Admits `node` on connection `id` if it is a peer, and closes that node's older connections:
/// its sender gave up on them, and a half-open one would otherwise hold a thread until its
/// socket times out.
fn admit_node(shared: &Shared, id: u64, node: NodeId) -> Result<(), Refusal> {
    let mut connections = lock(&shared.connections);
    // Only shutdown takes a running reader's connection out of the registry.
    if shared.stopping.load(Ordering::SeqCst) || !connections.by_id.contains_key(&id) {
        return Err(Refusal::Busy);
    }
    // Lock order: connections, then peers (remove_peer takes them one after the other).
    if !lock(&shared.peers).contains_key(&node) {
        return Err(Refusal::UnknownNode);
    }
    for (other, connection) in connections.by_id.iter_mut() {
        if *other != id && connection.node == Some(node) {
            connection.close();
        }
    }
    let connection = connections.by_id.get_mut(&id).expect("checked above");
    assert!(connection.node.is_none(), "connection {id} admitted twice");
    connection.node = Some(node);
    Ok(())
}

/// A socket during the handshake: read through a buffer, written directly, and every read
/// bounded by the handshake's deadline, so a peer that trickles bytes cannot hold a thread for
/// longer than [`HANDSHAKE_DEADLINE`] in all.
struct Duplex<'a, R> {
    reader: &'a mut R,
    writer: &'a TcpStream,
    deadline: Instant,
}

impl<'a, R> Duplex<'a, R> {
    fn new(reader: &'a mut R, writer: &'a TcpStream) -> Duplex<'a, R> {
        Duplex {
            reader,
            writer,
            deadline: Instant::now() + HANDSHAKE_DEADLINE,
        }
    }
}

impl<R: io::Read> io::Read for Duplex<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the handshake did not finish within its deadline",
            ));
        }
        self.writer.set_read_timeout(Some(remaining))?;
        self.reader.read(buf)
    }
}

impl<R> Write for Duplex<'_, R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

/// A sender thread: connects when there is something to send, writes it, and retries with
/// backoff while the peer is unreachable.
fn send_loop(alive: Alive, outbox: &Outbox) {
    let shared = &alive.0;
    let mut link: Option<BufWriter<TcpStream>> = None;
    let mut backoff = RECONNECT_BACKOFF_MIN;
    let mut retry_at: Option<Instant> = None;
    let mut failures_in_a_row = 0u64;
    loop {
        // Wait for frames, and for the backoff to pass.
        {
            let mut state = lock(&outbox.state);
            loop {
                if state.closing {
                    close_link(&mut link, &mut state);
                    return;
                }
                let wait = retry_at.and_then(|t| t.checked_duration_since(Instant::now()));
                match (state.frames.is_empty(), wait) {
                    (false, None) => break,
                    (true, _) => state = outbox.changed.wait(state).expect(POISONED),
                    (false, Some(wait)) => {
                        state = outbox.changed.wait_timeout(state, wait).expect(POISONED).0;
                    }
                }
            }
        }
        retry_at = None;
        if link.as_ref().is_some_and(|l| !is_open(l.get_ref())) {
            tracing::debug!(
                node = %outbox.node,
                addr = %outbox.addr(),
                "CM link closed by its peer; reconnecting"
            );
            close_link(&mut link, &mut lock(&outbox.state));
        }
        if link.is_none() {
            match connect(shared, outbox) {
                Ok(Some(stream)) => {
                    if failures_in_a_row > 0 {
                        tracing::info!(
                            node = %outbox.node,
                            addr = %outbox.addr(),
                            failures_in_a_row,
                            "CM link reconnected"
                        );
                    }
                    failures_in_a_row = 0;
                    backoff = RECONNECT_BACKOFF_MIN;
                    Counters::add(&shared.counters.connected, 1);
                    link = Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, stream));
                }
                Ok(None) => continue, // closing: the loop above returns
                Err(error) if moved(shared, outbox) => {
                    // Not a failure of the peer's: what is queued goes to where it is now.
                    tracing::debug!(node = %outbox.node, %error, "a CM peer moved");
                    failures_in_a_row = 0;
                    backoff = RECONNECT_BACKOFF_MIN;
                    continue;
                }
                Err(error) => {
                    failures_in_a_row += 1;
                    // The first failure is news; the retries of a peer that stays down are not.
                    if failures_in_a_row == 1 {
                        tracing::warn!(
                            node = %outbox.node,
                            addr = %outbox.addr(),
                            %error,
                            "cannot link to a CM peer; its messages are dropped until it answers"
                        );
                    } else {
                        tracing::debug!(
                            node = %outbox.node,
                            addr = %outbox.addr(),
                            %error,
                            failures_in_a_row,
                            "cannot link to a CM peer"
                        );
                    }
                    let mut state = lock(&outbox.state);
                    let dropped = state.frames.len() as u64;
                    state.frames.clear();
                    state.bytes = 0;
                    Counters::add(&shared.counters.dropped_unreachable, dropped);
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    continue;
                }
            }
        }
        let batch: Vec<Vec<u8>> = {
            let mut state = lock(&outbox.state);
            let count = state.frames.len().min(BATCH_FRAMES_MAX);
            let batch: Vec<_> = state.frames.drain(..count).collect();
            state.bytes -= batch.iter().map(Vec::len).sum::<usize>();
            batch
        };
        let writer = link.as_mut().expect("connected above");
        let mut written = 0u64;
        let result = batch
            .iter()
            .try_for_each(|payload| {
                frame::write_frame(writer, Kind::Message, payload)?;
                written += 1;
                Ok::<(), io::Error>(())
            })
            .and_then(|()| writer.flush());
        match result {
            Ok(()) => Counters::add(&shared.counters.sent, written),
            Err(error) => {
                // Frames still in the write buffer were not sent either.
                if !lock(&outbox.state).closing {
                    tracing::warn!(
                        node = %outbox.node,
                        addr = %outbox.addr(),
                        %error,
                        "CM link failed while writing; reconnecting"
                    );
                }
                Counters::add(&shared.counters.dropped_unreachable, batch.len() as u64);
                let mut state = lock(&outbox.state);
                close_link(&mut link, &mut state);
            }
        }
    }
}

/// After a failed connection: whether the address book places the outbox's peer elsewhere now,
/// and if so, the outbox points there.
fn moved(shared: &Shared, outbox: &Outbox) -> bool {
    let Some(now) = shared.address_book.get().and_then(|book| book(outbox.node)) else {
        return false;
    };
    let mut addr = lock(&outbox.addr);
    if *addr == now {
        return false;
    }
    tracing::info!(node = %outbox.node, from = %*addr, to = %now, "a CM peer listens at a new address; linking there");
    *addr = now;
    true
}

/// Connects to the outbox's peer and runs the client's side of the handshake. `Ok(None)` if
/// the outbox was closed meanwhile.
fn connect(shared: &Shared, outbox: &Outbox) -> Result<Option<TcpStream>, LinkError> {
    let stream = TcpStream::connect_timeout(&outbox.addr(), CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(HANDSHAKE_DEADLINE))?;
    {
        let mut state = lock(&outbox.state);
        if state.closing {
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(None);
        }
        state.stream = Some(stream.try_clone()?);
    }
    let result = {
        let mut reader = BufReader::new(&stream);
        let mut duplex = Duplex::new(&mut reader, &stream);
        handshake::connect(&mut duplex, shared.me, outbox.node, &shared.secret)
    };
    if let Err(e) = result {
        let _ = stream.shutdown(Shutdown::Both);
        lock(&outbox.state).stream = None;
        return Err(e);
    }
    stream.set_write_timeout(Some(WRITE_STALL_MAX))?;
    Ok(Some(stream))
}

/// Whether a connection whose peer never writes after the handshake is still open: anything
/// readable (an end of stream, a reset, or bytes the peer had no business sending) means it is
/// not.
fn is_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open =
        matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

fn close_link(link: &mut Option<BufWriter<TcpStream>>, state: &mut OutboxState) {
    if let Some(writer) = link.take() {
        // Shut the socket down without flushing: the buffer may hold half a frame.
        let _ = writer.get_ref().shutdown(Shutdown::Both);
        let (stream, _unsent) = writer.into_parts();
        drop(stream);
    }
    state.stream = None;
}

/// Where peers' messages arrive; the owner takes them with [`Inbox::recv_timeout`] or
/// [`Inbox::try_recv`]. It holds at most [`INBOX_FRAMES_MAX`] frames and [`INBOX_BYTES_MAX`]
/// bytes; more are dropped and counted.
pub struct Inbox {
    shared: Arc<InboxShared>,
}

#[derive(Default)]
struct InboxShared {
    state: Mutex<InboxState>,
    arrived: Condvar,
}

#[derive(Default)]
struct InboxState {
    frames: VecDeque<Incoming>,
    bytes: usize,
    closed: bool,
}

impl InboxShared {
    fn deliver(&self, incoming: Incoming, counters: &Counters) {
        let mut state = lock(&self.state);
        if state.frames.len() >= INBOX_FRAMES_MAX
            || state.bytes + incoming.payload.len() > INBOX_BYTES_MAX
        {
            Counters::add(&counters.dropped_inbox_full, 1);
            return;
        }
        state.bytes += incoming.payload.len();
        state.frames.push_back(incoming);
        Counters::add(&counters.delivered, 1);
        self.arrived.notify_one();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.arrived.notify_all();
    }
}

impl Inbox {
    /// The next message, waiting up to `timeout` for one.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Incoming, RecvError> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(incoming) = state.frames.pop_front() {
                state.bytes -= incoming.payload.len();
                return Ok(incoming);
            }
            if state.closed {
                return Err(RecvError::Closed);
            }
            let Some(wait) = deadline.checked_duration_since(Instant::now()) else {
                return Err(RecvError::Timeout);
            };
            if wait.is_zero() {
                return Err(RecvError::Timeout);
            }
            state = self
                .shared
                .arrived
                .wait_timeout(state, wait)
                .expect(POISONED)
                .0;
        }
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Result<Incoming, RecvError> {
        self.recv_timeout(Duration::ZERO)
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        lock(&self.shared.state).frames.len()
    }

    /// Whether no message is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("len", &self.len()).finish()
    }
}
