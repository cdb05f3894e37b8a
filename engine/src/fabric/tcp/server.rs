//! The NIC thread: one thread per node that serves READ, WRITE, CAS, PERSIST and NOTIFY on the
//! node's registered memory for authenticated peers, without involving application threads.
//!
//! It plays the part of an RDMA NIC: a single mio event loop over nonblocking sockets, each
//! connection with its own read and write buffers. A connection first completes the handshake
//! ([`super::auth`]); after that every REQUEST is executed in arrival order with
//! [`exec::execute`], which checks the access key and bounds, and its RESPONSE is queued in the
//! same order. Clients pipeline freely; the server applies backpressure by not reading a
//! connection whose unsent responses exceed [`WRITE_BACKLOG_BYTES_MAX`], so TCP flow control
//! slows down a client that does not read its responses.
//!
//! **The fence.** A node has one connection to each peer; it dials a new one only after giving
//! up on the old, whose requests it then counts as failed. Those requests may still sit in the
//! old socket's buffers (the server was paused, or slow), and executing them after the sender
//! moved on would, for instance, write a ring position twice. So when a connection
//! authenticates as node X, every older connection of X is closed with its unread requests, and
//! an older connection of X that authenticates after a newer one is refused. "Older" is accept
//! order, which is the order the node dialled in. Each request of X thus executes before any
//! request of X's newer connection, or never. [`NodeId::OBSERVER`] is exempt: read-only tools
//! share that id and may run at once.
//!
//! **Membership.** The thread serves only the members of its node's configuration
//! ([`Membership`], docs/failures.md#fencing). A connection is bound at the handshake to the
//! node and the configuration id its HELLO names (the client's proof covers both), and admitted
//! only if [`Membership::admits`] it: a non-member, or a member bound to an older configuration,
//! is refused with REFUSED(not a member) after its proof verifies and before any of its
//! requests runs. When the owner replaces the membership ([`NicServer::set_membership`]), the
//! thread checks every authenticated connection again and closes those it would now refuse,
//! with their unread requests, after sending REFUSED(not a member) behind the responses already
//! queued: the sender learns that every request answered before it executed and none after it
//! did. Binding at the handshake is as strong as a configuration id on every request, since the
//! thread executes requests of one connection only while that binding is admitted, and costs
//! nothing per request. Observers may only READ: any other operation of theirs is answered
//! with `OpError::NotMember` and not executed.
//!
//! **The lease.** A node whose own lease from the CM has lapsed acts for nobody
//! (docs/failures.md#leases): the thread checks the node's lease gate
//! ([`NodeMemory::lease_is_open`], one atomic load and a clock read) before every request of a
//! member, and answers `OpError::LeaseExpired` without executing it while the gate is shut,
//! then closes the connection with its unread requests: what a connection executed stays a
//! prefix of what it sent, even if the lease is renewed while a batch is in flight (a ring
//! append whose record WRITE was refused must not have its tail WRITE executed). The sender's
//! later operations of that batch fail as unreachable, and its next post dials again.
//! That covers every one-sided operation of the protocol at this node: a coordinator's READs of
//! objects (so nothing is read from a primary the CM may be replacing), its CAS of locks in
//! one-sided mode, and the WRITEs of records into this node's rings (LOCK, VALIDATE,
//! COMMIT-PRIMARY, and COMMIT-BACKUP: an ack from a backup whose lease lapsed would count a
//! replica the next configuration excludes and recovery does not read). Observers' READs are
//! served: they serve no transaction. A node that asked no CM for a lease (no CM runs) is never
//! refused.
//!
//! A peer that sends anything the decoder rejects, the wrong frame for its phase, a bad proof,
//! or does not finish the handshake within [`HANDSHAKE_DEADLINE`] is disconnected; the other
//! connections are unaffected. When idle the thread blocks in `epoll_wait` with no timeout
//! (or until the earliest handshake deadline, on the node's clock: docs/failures.md#clock);
//! [`NicServer::stop`] wakes it with a mio `Waker`.

use crate::addr::NodeId;
use crate::clock::Time;
use crate::fabric::exec;
use crate::fabric::membership::{Admission, Membership};
use crate::fabric::memory::NodeMemory;
use crate::fabric::tcp::auth::{self, ClusterSecret, HANDSHAKE_DEADLINE, Nonce, PROTOCOL_VERSION};
use crate::fabric::tcp::frame::{
    self, Challenge, FRAME_BYTES_MAX, Frame, FrameError, HANDSHAKE_FRAME_BYTES_MAX, MAGIC, Refusal,
    Request, Response,
};
use crate::fabric::{OP_BYTES_MAX, Op, OpError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Connections one NIC thread serves at once; more are refused with REFUSED(busy).
pub const CONNECTIONS_MAX: usize = 1024;
/// Bytes read from a socket at a time (and kept as a connection's idle read buffer).
pub const READ_CHUNK_BYTES: usize = 64 << 10;
/// Unsent response bytes at which the server stops reading a connection until they drain.
pub const WRITE_BACKLOG_BYTES_MAX: usize = 16 << 20;
/// Frames handled for one connection before the others get a turn.
pub const FRAMES_PER_TURN_MAX: usize = 256;
/// Readiness events taken from the kernel per poll.
const EVENTS_CAPACITY: usize = 256;
/// How often [`NicServer::set_membership`] checks that the thread is still alive while it
/// waits for the thread to adopt the membership.
const ADOPTION_CHECK_INTERVAL: Duration = Duration::from_millis(100);

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONNECTION_TOKEN: usize = 2;

/// Counters of what a NIC thread has done, for observability and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub connections_accepted: u64,
    pub connections_authenticated: u64,
    /// Closed because the peer broke the protocol: bad bytes, bad proof, wrong phase, deadline.
    pub connections_rejected: u64,
    /// Closed for any reason (including the rejected ones and peers that hung up).
    pub connections_closed: u64,
    /// Closed by the fence: an older connection of a node that authenticated a newer one.
    pub connections_fenced: u64,
    /// Refused at the handshake, or closed when the membership changed, because the peer is
    /// not a member of this node's configuration or is bound to an older one.
    pub connections_not_member: u64,
    pub requests_executed: u64,
    /// Answered with `NotMember` without executing: an observer's operations that write.
    pub requests_refused: u64,
    /// Answered with `LeaseExpired` without executing: a member's operations that arrived
    /// while this node's own lease had lapsed.
    pub requests_lease_refused: u64,
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_authenticated: AtomicU64,
    connections_rejected: AtomicU64,
    connections_closed: AtomicU64,
    connections_fenced: AtomicU64,
    connections_not_member: AtomicU64,
    requests_executed: AtomicU64,
    requests_refused: AtomicU64,
    requests_lease_refused: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> NicStats {
        NicStats {
            connections_accepted: self.connections_accepted.load(Ordering::Relaxed),
            connections_authenticated: self.connections_authenticated.load(Ordering::Relaxed),
            connections_rejected: self.connections_rejected.load(Ordering::Relaxed),
            connections_closed: self.connections_closed.load(Ordering::Relaxed),
            connections_fenced: self.connections_fenced.load(Ordering::Relaxed),
            connections_not_member: self.connections_not_member.load(Ordering::Relaxed),
            requests_executed: self.requests_executed.load(Ordering::Relaxed),
            requests_refused: self.requests_refused.load(Ordering::Relaxed),
            requests_lease_refused: self.requests_lease_refused.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().expect(crate::POISONED)
}

/// The membership the owner wants the NIC thread to enforce, and how far the thread got.
struct MembershipSlot {
    state: Mutex<MembershipState>,
    /// Signalled when the thread has adopted a membership.
    adopted: Condvar,
    /// `MembershipState::requested`, readable without the lock at every turn of the loop.
    requested: AtomicU64,
}

struct MembershipState {
    membership: Membership,
    /// How many memberships the owner has set (the one given at start is 0).
    requested: u64,
    /// The last of them the thread has adopted, its connections checked against it.
    adopted: u64,
}

/// A running NIC thread. Dropping it stops the thread and closes every connection.
pub struct NicServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    counters: Arc<Counters>,
    membership: Arc<MembershipSlot>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for NicServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicServer")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl NicServer {
    /// Listens on `listen` and serves `memory` to peers that hold `secret` and are members of
    /// `membership` (observers: READs only).
    pub fn start(
        listen: SocketAddr,
        memory: Arc<NodeMemory>,
        secret: ClusterSecret,
        membership: Membership,
    ) -> io::Result<NicServer> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let slot = Arc::new(MembershipSlot {
            state: Mutex::new(MembershipState {
                membership: membership.clone(),
                requested: 0,
                adopted: 0,
            }),
            adopted: Condvar::new(),
            requested: AtomicU64::new(0),
        });
        let nic = Nic {
            poll,
            listener,
            memory,
            secret,
            stop: stop.clone(),
            counters: counters.clone(),
            slot: slot.clone(),
            membership,
            adopted: 0,
            connections: HashMap::new(),
            newest: HashMap::new(),
            next_token: FIRST_CONNECTION_TOKEN,
            again: VecDeque::new(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("acre-nic-{}", nic.memory.node_id()))
            .spawn(move || nic.run())?;
        Ok(NicServer {
            local_addr,
            stop,
            waker,
            counters,
            membership: slot,
            thread: Some(thread),
        })
    }

    /// Replaces the membership the thread enforces, and returns once the thread has adopted
    /// it: every connection it would now refuse is closed (after a REFUSED(not a member)
    /// frame), and none of their requests executes after this returns. Connections still
    /// admitted keep serving undisturbed.
    ///
    /// Panics if `membership`'s configuration id is not higher than the current one
    /// (configuration ids only grow, and one id names one set of members), or if the thread
    /// died.
    pub fn set_membership(&self, membership: Membership) {
        let generation = {
            let mut state = lock(&self.membership.state);
            let current = state.membership.config();
            assert!(
                membership.config() > current,
                "config={} current={current}: configuration ids only grow",
                membership.config()
            );
            state.membership = membership;
            state.requested += 1;
            self.membership
                .requested
                .store(state.requested, Ordering::Release);
            state.requested
        };
        // A failed wake still leaves the thread to see the request at its next event; the
        // loop below notices a thread that has died.
        let _ = self.waker.wake();
        let mut state = lock(&self.membership.state);
        while state.adopted < generation {
            let alive = self.thread.as_ref().is_some_and(|t| !t.is_finished());
            assert!(
                alive,
                "generation={generation}: the NIC thread exited before adopting the membership"
            );
            state = self
                .membership
                .adopted
                .wait_timeout(state, ADOPTION_CHECK_INTERVAL)
                .expect(crate::POISONED)
                .0;
        }
    }

    /// The id of the configuration whose members the thread serves (the last one set).
    pub fn config(&self) -> u64 {
        lock(&self.membership.state).membership.config()
    }

    /// The address peers connect to (the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// What the NIC thread has done so far.
    pub fn stats(&self) -> NicStats {
        self.counters.snapshot()
    }

    /// Stops the thread, closes every connection and waits for the thread to exit. A panic of
    /// the NIC thread (a broken invariant) is propagated here.
    pub fn stop(mut self) {
        if let Err(panic) = self.shut_down() {
            std::panic::resume_unwind(panic);
        }
    }

    fn shut_down(&mut self) -> std::thread::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::SeqCst);
        // If the wake fails the thread still sees the flag at its next event; there is nothing
        // better to do here, and join below waits for it either way.
        let _ = self.waker.wake();
        thread.join()
    }
}

impl Drop for NicServer {
    fn drop(&mut self) {
        let result = self.shut_down();
        if result.is_err() && !std::thread::panicking() {
            panic!("the NIC thread panicked (its message was printed above)");
        }
    }
}

/// The state of the NIC thread.
struct Nic {
    poll: Poll,
    listener: TcpListener,
    memory: Arc<NodeMemory>,
    secret: ClusterSecret,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    slot: Arc<MembershipSlot>,
    /// The membership connections are admitted by: the slot's, as of `adopted`.
    membership: Membership,
    adopted: u64,
    connections: HashMap<Token, Connection>,
    /// Each node's newest authenticated connection (the fence; tokens grow in accept order).
    newest: HashMap<NodeId, Token>,
    next_token: usize,
    /// Connections that used up their turn with work left: served again before sleeping.
    again: VecDeque<Token>,
}

/// Where a connection is in its life.
enum Phase {
    AwaitHello,
    AwaitProof {
        client: NodeId,
        config: u64,
        client_nonce: Nonce,
        server_nonce: Nonce,
    },
    /// Authenticated as `client`, bound to configuration `config`.
    Serving {
        client: NodeId,
        config: u64,
    },
}

/// Why a connection was closed.
enum Close {
    /// The peer broke the protocol (counted as rejected).
    Rejected,
    /// The peer hung up or the socket failed.
    Gone,
    /// The peer is not a member of this node's configuration (counted as not a member).
    NotMember,
    /// This node's lease lapsed and it refused one of the peer's requests: nothing after it
    /// executes on this connection (see "The lease" in the module docs).
    LeaseExpired,
}

/// What a turn of [`Nic::drive`] left behind.
enum Turn {
    /// Blocked on the socket: the next readiness event resumes it.
    Idle,
    /// Used its turn with frames or bytes left.
    More,
    /// Just authenticated as this node: the fence applies before anything else of it runs.
    Authenticated(NodeId),
}

struct Connection {
    stream: TcpStream,
    phase: Phase,
    /// When the handshake must be done, on the node's clock; `None` once authenticated.
    deadline: Option<Time>,
    inbox: Vec<u8>,
    inbox_start: usize,
    inbox_end: usize,
    outbox: Vec<u8>,
    outbox_start: usize,
}

impl Nic {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut ready = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            let timeout = if self.again.is_empty() {
                // On a controlled clock, a slice of it: the loop looks at the clock again.
                self.earliest_deadline()
                    .map(|at| self.memory.clock().real_duration_until(at))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => panic!("the NIC thread's epoll failed: {e}"),
            }
            self.adopt_membership();
            ready.clear();
            ready.extend(self.again.drain(..));
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    token => ready.push(token),
                }
            }
            ready.sort_unstable();
            ready.dedup();
            for &token in &ready {
                self.serve(token);
            }
            self.expire_handshakes();
        }
        for (_, connection) in self.connections.drain() {
            drop(connection);
            Counters::bump(&self.counters.connections_closed);
        }
    }

    fn earliest_deadline(&self) -> Option<Time> {
        self.connections.values().filter_map(|c| c.deadline).min()
    }

    fn accept_all(&mut self) {
        loop {
            let (mut stream, _peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors or a connection reset before accept: the listener stays
                // registered, and the next incoming connection brings a new event.
                Err(_) => return,
            };
            Counters::bump(&self.counters.connections_accepted);
            if self.connections.len() >= CONNECTIONS_MAX {
                let refusal = frame::encode_to_vec(&Frame::Refused(Refusal::Busy));
                let _ = stream.write(&refusal);
                Counters::bump(&self.counters.connections_closed);
                continue;
            }
            // Responses are small and latency-bound: never wait to coalesce them.
            let _ = stream.set_nodelay(true);
            let token = Token(self.next_token);
            self.next_token += 1;
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, token, interest)
                .is_err()
            {
                Counters::bump(&self.counters.connections_closed);
                continue;
            }
            let connection = Connection {
                stream,
                phase: Phase::AwaitHello,
                deadline: Some(self.memory.clock().now() + HANDSHAKE_DEADLINE),
                inbox: Vec::new(),
                inbox_start: 0,
                inbox_end: 0,
                outbox: Vec::new(),
                outbox_start: 0,
            };
            self.connections.insert(token, connection);
        }
    }

    fn serve(&mut self, token: Token) {
        let Some(mut connection) = self.connections.remove(&token) else {
            return; // closed earlier in this round
        };
        match self.drive(&mut connection) {
            Ok(Turn::Idle) => {
                self.connections.insert(token, connection);
            }
            Ok(Turn::More) => {
                self.connections.insert(token, connection);
                self.again.push_back(token);
            }
            Ok(Turn::Authenticated(client)) => {
                if self.fence(client, token) {
                    self.connections.insert(token, connection);
                    self.again.push_back(token);
                } else {
                    Counters::bump(&self.counters.connections_fenced);
                    self.close(connection, Close::Gone);
                }
            }
            Err(close) => self.close(connection, close),
        }
    }

    /// Applies the fence for `client`'s connection `token`, which just authenticated: closes
    /// the client's older connections, or returns false if a newer one already authenticated
    /// (then `token` is the stale one).
    fn fence(&mut self, client: NodeId, token: Token) -> bool {
        if client == NodeId::OBSERVER {
            return true;
        }
        if self
            .newest
            .get(&client)
            .is_some_and(|&newest| newest > token)
        {
            return false;
        }
        self.newest.insert(client, token);
        let older: Vec<Token> = self
            .connections
            .iter()
            .filter(|&(&other, c)| other < token && c.client() == Some(client))
            .map(|(&other, _)| other)
            .collect();
        for other in older {
            let connection = self.connections.remove(&other).expect("listed just above");
            Counters::bump(&self.counters.connections_fenced);
            self.close(connection, Close::Gone);
        }
        true
    }

    fn close(&mut self, mut connection: Connection, why: Close) {
        let _ = self.poll.registry().deregister(&mut connection.stream);
        match why {
            Close::Rejected => Counters::bump(&self.counters.connections_rejected),
            Close::NotMember => Counters::bump(&self.counters.connections_not_member),
            Close::Gone | Close::LeaseExpired => {}
        }
        Counters::bump(&self.counters.connections_closed);
    }

    /// Adopts the membership the owner set, if it is new: closes every authenticated
    /// connection it does not admit, with its unread requests, then tells the owner.
    fn adopt_membership(&mut self) {
        if self.slot.requested.load(Ordering::Acquire) == self.adopted {
            return;
        }
        let slot = self.slot.clone();
        let mut state = lock(&slot.state);
        assert!(
            state.membership.config() > self.membership.config(),
            "config={} adopted={}: configuration ids only grow",
            state.membership.config(),
            self.membership.config()
        );
        self.membership = state.membership.clone();
        self.adopted = state.requested;
        let refused: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| match c.phase {
                Phase::Serving { client, config } => {
                    self.membership.admits(client, config) == Admission::Refused
                }
                Phase::AwaitHello | Phase::AwaitProof { .. } => false,
            })
            .map(|(&token, _)| token)
            .collect();
        let config = self.membership.config();
        for token in refused {
            let mut connection = self.connections.remove(&token).expect("listed just above");
            let close = connection.refuse(Refusal::NotMember { config }, Close::NotMember);
            self.close(connection, close);
        }
        state.adopted = self.adopted;
        drop(state);
        slot.adopted.notify_all();
    }

    fn expire_handshakes(&mut self) {
        let now = self.memory.clock().now();
        let expired: Vec<Token> = self
            .connections
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|at| at <= now))
            .map(|(&token, _)| token)
            .collect();
        for token in expired {
            if let Some(connection) = self.connections.remove(&token) {
                self.close(connection, Close::Rejected);
            }
        }
    }

    /// Moves a connection forward until it would block or has used its turn: flushes
    /// responses, handles complete frames, reads more bytes.
    fn drive(&self, connection: &mut Connection) -> Result<Turn, Close> {
        let mut frames_count = 0;
        loop {
            connection.flush()?;
            while connection.backlog_bytes() < WRITE_BACKLOG_BYTES_MAX {
                if frames_count == FRAMES_PER_TURN_MAX {
                    connection.flush()?;
                    return Ok(Turn::More);
                }
                let Some(frame) = connection.next_frame()? else {
                    break;
                };
                frames_count += 1;
                if let Some(client) = self.handle(connection, frame)? {
                    // Just authenticated: nothing more of it runs before the fence.
                    connection.flush()?;
                    return Ok(Turn::Authenticated(client));
                }
            }
            if connection.backlog_bytes() >= WRITE_BACKLOG_BYTES_MAX {
                connection.flush()?;
                if connection.backlog_bytes() >= WRITE_BACKLOG_BYTES_MAX {
                    // The socket is full (flush saw WouldBlock): a writable event resumes us.
                    return Ok(Turn::Idle);
                }
                continue;
            }
            match connection.read_some() {
                Ok(0) => {
                    // The peer hung up, possibly in the middle of a frame: whatever it had
                    // sent of that frame is dropped, so a torn request never executes.
                    connection.flush_once();
                    return Err(Close::Gone);
                }
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    connection.flush()?;
                    return Ok(Turn::Idle);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Close::Gone),
            }
        }
    }

    /// Handles one frame; returns the peer's node id when this frame completed its handshake.
    fn handle(&self, connection: &mut Connection, frame: Frame) -> Result<Option<NodeId>, Close> {
        match (&connection.phase, frame) {
            (Phase::AwaitHello, Frame::Hello(hello)) => {
                if hello.magic != MAGIC {
                    return Err(Close::Rejected);
                }
                if hello.version != PROTOCOL_VERSION {
                    return Err(connection.refuse(Refusal::UnsupportedVersion, Close::Rejected));
                }
                // Refused now, a non-member learns why from its handshake and costs no HMAC; the
                // claim is checked again once the proof has authenticated it.
                if self.membership.admits(hello.node, hello.config) == Admission::Refused {
                    let refusal = Refusal::NotMember {
                        config: self.membership.config(),
                    };
                    return Err(connection.refuse(refusal, Close::NotMember));
                }
                let server_nonce = auth::nonce();
                let node = self.memory.node_id();
                let server_proof =
                    self.secret
                        .server_proof(&hello.client_nonce, &server_nonce, node);
                connection.queue(&Frame::Challenge(Challenge {
                    node,
                    server_nonce,
                    server_proof,
                }));
                connection.phase = Phase::AwaitProof {
                    client: hello.node,
                    config: hello.config,
                    client_nonce: hello.client_nonce,
                    server_nonce,
                };
                Ok(None)
            }
            (
                Phase::AwaitProof {
                    client,
                    config,
                    client_nonce,
                    server_nonce,
                },
                Frame::Proof(proof),
            ) => {
                if self
                    .secret
                    .verify_client_proof(server_nonce, client_nonce, *client, *config, &proof)
                    .is_err()
                {
                    return Err(connection.refuse(Refusal::BadProof, Close::Rejected));
                }
                let (client, config) = (*client, *config);
                if self.membership.admits(client, config) == Admission::Refused {
                    let refusal = Refusal::NotMember {
                        config: self.membership.config(),
                    };
                    return Err(connection.refuse(refusal, Close::NotMember));
                }
                connection.phase = Phase::Serving { client, config };
                connection.deadline = None;
                Counters::bump(&self.counters.connections_authenticated);
                Ok(Some(client))
            }
            (Phase::Serving { client, .. }, Frame::Request(Request { request_id, op })) => {
                let result = if *client == NodeId::OBSERVER && !matches!(op, Op::Read { .. }) {
                    // An observer is no member: it may look, never touch.
                    Counters::bump(&self.counters.requests_refused);
                    Err(OpError::NotMember {
                        node: self.memory.node_id(),
                        config: self.membership.config(),
                    })
                } else if *client != NodeId::OBSERVER && !self.memory.lease_is_open() {
                    // This node's lease lapsed: the CM may be waiting it out to hand its
                    // regions to others, so it touches nothing for a member (observers' reads
                    // stay: they serve no transaction, and show an operator the node). The
                    // connection closes behind the refusal, so that nothing later of it runs
                    // should the lease be renewed meanwhile: a batch whose first WRITE was
                    // refused must not see its next ones (a ring's tail) executed.
                    Counters::bump(&self.counters.requests_lease_refused);
                    let result = Err(OpError::LeaseExpired {
                        node: self.memory.node_id(),
                    });
                    connection.queue(&Frame::Response(Response { request_id, result }));
                    connection.flush_once();
                    return Err(Close::LeaseExpired);
                } else {
                    Counters::bump(&self.counters.requests_executed);
                    if exec::op_bytes(&op) > OP_BYTES_MAX as u64 {
                        Err(OpError::TooLarge {
                            len: exec::op_bytes(&op),
                            max: OP_BYTES_MAX,
                        })
                    } else {
                        exec::execute(&self.memory, &op)
                    }
                };
                connection.queue(&Frame::Response(Response { request_id, result }));
                Ok(None)
            }
            // Any other frame in any phase (a REQUEST before the proof, a second HELLO, a
            // RESPONSE from a client) is a broken or hostile peer.
            _ => Err(Close::Rejected),
        }
    }
}

impl Connection {
    /// Frames larger than the handshake's are refused until the peer has authenticated.
    fn frame_bytes_max(&self) -> u32 {
        match self.phase {
            Phase::Serving { .. } => FRAME_BYTES_MAX,
            Phase::AwaitHello | Phase::AwaitProof { .. } => HANDSHAKE_FRAME_BYTES_MAX,
        }
    }

    /// The node this connection speaks for, once it said (in its hello).
    fn client(&self) -> Option<NodeId> {
        match self.phase {
            Phase::AwaitHello => None,
            Phase::AwaitProof { client, .. } | Phase::Serving { client, .. } => Some(client),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, Close> {
        let unread = &self.inbox[self.inbox_start..self.inbox_end];
        match frame::decode_bounded(unread, self.frame_bytes_max()) {
            Ok(Some((frame, consumed))) => {
                self.inbox_start += consumed;
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(FrameError::Oversize { .. })
            | Err(FrameError::UnknownKind { .. })
            | Err(FrameError::Malformed { .. }) => Err(Close::Rejected),
        }
    }

    /// Reads once from the socket into the inbox. Called only when the inbox holds no complete
    /// frame, so it holds at most one partial frame plus one chunk.
    fn read_some(&mut self) -> io::Result<usize> {
        if self.inbox_start == self.inbox_end {
            self.inbox_start = 0;
            self.inbox_end = 0;
            if self.inbox.len() > 2 * READ_CHUNK_BYTES {
                // A large frame passed through; give its buffer back.
                self.inbox = Vec::new();
            }
        }
        if self.inbox.len() - self.inbox_end < READ_CHUNK_BYTES {
            self.inbox.copy_within(self.inbox_start..self.inbox_end, 0);
            self.inbox_end -= self.inbox_start;
            self.inbox_start = 0;
            if self.inbox.len() - self.inbox_end < READ_CHUNK_BYTES {
                self.inbox.resize(self.inbox_end + READ_CHUNK_BYTES, 0);
            }
        }
        let count = self.stream.read(&mut self.inbox[self.inbox_end..])?;
        self.inbox_end += count;
        Ok(count)
    }

    fn backlog_bytes(&self) -> usize {
        self.outbox.len() - self.outbox_start
    }

    fn queue(&mut self, frame: &Frame) {
        if self.outbox_start > 0 && self.outbox_start >= self.outbox.len() / 2 {
            self.outbox.drain(..self.outbox_start);
            self.outbox_start = 0;
        }
        frame::encode(frame, &mut self.outbox);
    }

    /// Writes queued responses until done or the socket would block.
    fn flush(&mut self) -> Result<(), Close> {
        while self.outbox_start < self.outbox.len() {
            match self.stream.write(&self.outbox[self.outbox_start..]) {
                Ok(0) => return Err(Close::Gone),
                Ok(count) => self.outbox_start += count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(Close::Gone),
            }
        }
        self.outbox.clear();
        self.outbox_start = 0;
        if self.outbox.capacity() > 2 * READ_CHUNK_BYTES {
            self.outbox = Vec::new();
        }
        Ok(())
    }

    /// One best-effort attempt to send what is queued before the connection is closed.
    fn flush_once(&mut self) {
        let _ = self.stream.write(&self.outbox[self.outbox_start..]);
    }

    /// Tells the peer why it is refused (best effort, behind any responses already queued),
    /// then closes as `close`.
    fn refuse(&mut self, refusal: Refusal, close: Close) -> Close {
        self.queue(&Frame::Refused(refusal));
        self.flush_once();
        close
    }
}
