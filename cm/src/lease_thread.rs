//! The lease thread: one per process, the only thing that sends and receives lease packets, so
//! nothing the application or the workers do can delay a renewal.
//!
//! It owns a UDP socket (UDP, so a partition made with `nft` drop rules cuts leases exactly as it
//! cuts other traffic, and no connection state outlives a partition), the [`NodeLease`] of its
//! node and, in the CM's process, the [`CmLeases`] table. On its path it touches only its own
//! preallocated buffers and state, the clock (which reads without locks) and atomics it
//! publishes to, so no lock is shared with another thread and nothing allocates:
//!
//! - the node's lease expiry, a [`LeaseExpiry`] a worker reads before it serves;
//! - whether the lease this node granted the CM has expired ([`LeaseThread::cm_expired`]);
//! - the CM's suspects, an atomic bitmap of node ids ([`Suspects`]) the CM's logic takes from:
//!   a bitmap cannot overflow, and a node suspected twice before it is taken is one suspicion;
//! - for the CM, each member's lease expiry as the CM sees it ([`LeaseThread::node_lease_until`]).
//!
//! It sleeps in `recv_from` with a timeout until the next renewal is due (or [`WAIT_SLICE_MAX`]
//! on a controlled clock, whose rate may change), so an idle cluster's lease threads cost a few
//! wake-ups per renewal period. Dropping the handle stops the thread: it sets a flag, sends a
//! zero-length datagram to the socket to cut the wait short, and joins.
#![forbid(unsafe_code)]

use crate::lease::{CmLeases, Kind, LeaseExpiry, LeaseKey, LeaseTiming, NodeLease, Packet};
use acre_engine::NodeId;
use acre_engine::clock::{Clock, Time, WAIT_SLICE_MAX};
use acre_engine::fabric::tcp::auth::ClusterSecret;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes of the receive buffer: larger than a packet, so an oversized datagram is seen as such
/// rather than truncated into something that might decode.
const RECEIVE_BYTES: usize = 256;
/// The shortest socket timeout: `set_read_timeout` refuses zero, and a deadline that has just
/// passed is handled on the next turn.
const WAIT_MIN: Duration = Duration::from_micros(100);
/// How much later than due a turn may start, to save setting the socket's timeout every turn:
/// a renewal sent this late still leaves the lease most of a period, and a suspicion reported
/// this late is only a slower one.
const WAIT_SLACK: Duration = Duration::from_millis(1);
/// Words of the suspect bitmap: one bit for every possible node id.
const SUSPECT_WORDS: usize = (u16::MAX as usize + 1) / 64;

/// The node's part of a lease thread.
#[derive(Clone, Debug)]
pub struct NodeRole {
    pub node: NodeId,
    pub cm: NodeId,
    /// Where the CM's lease thread listens.
    pub cm_addr: SocketAddr,
    pub config: u64,
}

/// The CM's part of a lease thread.
#[derive(Clone, Debug)]
pub struct CmRole {
    pub cm: NodeId,
    pub config: u64,
    pub members: Vec<NodeId>,
}

/// What a lease thread is started with.
#[derive(Clone, Debug)]
pub struct LeaseThreadConfig {
    /// Where its socket listens (port 0: any free port, see [`LeaseThread::local_addr`]).
    pub bind: SocketAddr,
    pub secret: ClusterSecret,
    /// The clock every lease time of this process is read from.
    pub clock: Clock,
    pub timing: LeaseTiming,
    pub node: Option<NodeRole>,
    pub cm: Option<CmRole>,
}

/// Nodes the CM suspects: an atomic bitmap set by the lease thread and taken by the CM's logic.
#[derive(Debug)]
pub struct Suspects {
    words: Box<[AtomicU64]>,
    /// How many suspicions were published; a cheap "anything new?" check.
    published: AtomicU64,
}

impl Suspects {
    fn new() -> Suspects {
        Suspects {
            words: (0..SUSPECT_WORDS).map(|_| AtomicU64::new(0)).collect(),
            published: AtomicU64::new(0),
        }
    }

    fn insert(&self, node: NodeId) {
        let index = usize::from(node.0);
        self.words[index / 64].fetch_or(1 << (index % 64), Ordering::Release);
        self.published.fetch_add(1, Ordering::Release);
    }

    /// How many suspicions have been published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Acquire)
    }

    /// Removes the suspects published so far and calls `each` with every one, in id order.
    pub fn take(&self, mut each: impl FnMut(NodeId)) {
        for (word_index, word) in self.words.iter().enumerate() {
            if word.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut bits = word.swap(0, Ordering::Acquire);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let id = u16::try_from(word_index * 64 + bit).expect("the bitmap has 2^16 bits");
                each(NodeId(id));
            }
        }
    }
}

/// What the lease thread publishes; the handle and its clones read it.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    paused: AtomicBool,
    expiry: LeaseExpiry,
    cm_expired: AtomicBool,
    suspects: Suspects,
    /// The CM's members, sorted, and each one's lease expiry as the CM sees it (nanoseconds).
    members: Vec<NodeId>,
    member_until: Box<[AtomicU64]>,
    packets_received: AtomicU64,
    packets_refused: AtomicU64,
    /// Turns of the thread's loop: its wake-ups.
    turns: AtomicU64,
}

/// A running lease thread; dropping it stops and joins the thread.
#[derive(Debug)]
pub struct LeaseThread {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    /// A clone of the thread's socket, to wake it when stopping.
    waker: UdpSocket,
    clock: Clock,
    thread: Option<JoinHandle<()>>,
}

impl LeaseThread {
    /// Binds the socket and starts the thread.
    pub fn spawn(config: LeaseThreadConfig) -> io::Result<LeaseThread> {
        let socket = UdpSocket::bind(config.bind)?;
        let local_addr = socket.local_addr()?;
        let waker = socket.try_clone()?;
        let now = config.clock.now();
        let node = config.node.as_ref().map(|role| {
            NodeLease::new(
                role.node,
                role.cm,
                role.config,
                config.timing,
                first_seq(),
                now,
            )
        });
        let cm = config
            .cm
            .as_ref()
            .map(|role| CmLeases::new(role.cm, role.config, config.timing, &role.members, now));
        let mut members = config
            .cm
            .as_ref()
            .map_or_else(Vec::new, |role| role.members.clone());
        members.sort();
        let member_until = members
            .iter()
            .map(|&member| {
                let until = cm.as_ref().and_then(|cm| cm.node_lease_until(member));
                AtomicU64::new(until.map_or(0, Time::as_nanos))
            })
            .collect();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            expiry: node.as_ref().map(NodeLease::expiry).unwrap_or_default(),
            cm_expired: AtomicBool::new(false),
            suspects: Suspects::new(),
            members,
            member_until,
            packets_received: AtomicU64::new(0),
            packets_refused: AtomicU64::new(0),
            turns: AtomicU64::new(0),
        });
        let name = match (&config.node, &config.cm) {
            (Some(role), _) => format!("lease-{}", role.node),
            (None, Some(role)) => format!("lease-cm-{}", role.cm),
            (None, None) => "lease".to_string(),
        };
        let mut turn = Turn {
            socket,
            key: LeaseKey::new(&config.secret),
            clock: config.clock.clone(),
            cm_addr: config.node.as_ref().map(|role| role.cm_addr),
            node,
            cm,
            shared: Arc::clone(&shared),
            buffer: [0u8; RECEIVE_BYTES],
            timeout: None,
        };
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || turn.run())?;
        Ok(LeaseThread {
            shared,
            local_addr,
            waker,
            clock: config.clock,
            thread: Some(thread),
        })
    }

    /// Where the thread's socket listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's lease expiry, for the threads that must check it before they act.
    pub fn lease(&self) -> LeaseExpiry {
        self.shared.expiry.clone()
    }

    /// Whether this node holds a valid lease now, by the thread's clock.
    pub fn is_valid(&self) -> bool {
        self.shared.expiry.is_valid(self.clock.now())
    }

    /// Whether the lease this node granted the CM has run out: suspect the CM.
    pub fn cm_expired(&self) -> bool {
        self.shared.cm_expired.load(Ordering::Acquire)
    }

    /// The nodes the CM suspects (empty unless this thread has the CM role).
    pub fn suspects(&self) -> &Suspects {
        &self.shared.suspects
    }

    /// Until when the CM considers `node`'s lease valid, by this thread's clock.
    pub fn node_lease_until(&self, node: NodeId) -> Option<Time> {
        let index = self.shared.members.binary_search(&node).ok()?;
        match self.shared.member_until[index].load(Ordering::Acquire) {
            0 => None,
            nanos => Some(Time::from_nanos(nanos)),
        }
    }

    /// Datagrams received, and those refused (malformed, wrong secret, stale, replayed...).
    pub fn packet_counts(&self) -> (u64, u64) {
        (
            self.shared.packets_received.load(Ordering::Acquire),
            self.shared.packets_refused.load(Ordering::Acquire),
        )
    }

    /// How many times the thread has woken up (what an idle cluster's lease CPU is made of).
    pub fn turns(&self) -> u64 {
        self.shared.turns.load(Ordering::Relaxed)
    }

    /// Stops (`true`) or resumes sending and answering, as if the process were frozen; for tests
    /// and the fault-injection harness.
    pub fn pause(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::Release);
    }
}

impl Drop for LeaseThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        // If the wake-up is lost, the thread still sees the flag within one wait.
        let _ = self.waker.send_to(&[], wake);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(addr = %self.local_addr, "the lease thread panicked");
        }
    }
}

/// The first sequence number of this process's requests: the wall clock in nanoseconds, so a
/// restarted process continues above its previous incarnation unless the wall clock stepped
/// back (then the CM ignores it as a replay until it suspects it: the safe outcome).
fn first_seq() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_nanos())
        .unwrap_or(u64::MAX / 2)
        .max(1)
}

/// The thread's state: everything its loop touches, owned by it.
struct Turn {
    socket: UdpSocket,
    key: LeaseKey,
    clock: Clock,
    cm_addr: Option<SocketAddr>,
    node: Option<NodeLease>,
    cm: Option<CmLeases>,
    shared: Arc<Shared>,
    buffer: [u8; RECEIVE_BYTES],
    /// The socket's current read timeout, so it is only set when it changes.
    timeout: Option<Duration>,
}

impl Turn {
    fn run(&mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            self.shared.turns.fetch_add(1, Ordering::Relaxed);
            let now = self.clock.now();
            let paused = self.shared.paused.load(Ordering::Acquire);
            if !paused {
                self.tick(now);
            }
            self.wait_and_receive(now, paused);
        }
    }

    /// Sends a due request and publishes what time alone changes.
    fn tick(&mut self, now: Time) {
        if let (Some(node), Some(cm_addr)) = (&mut self.node, self.cm_addr) {
            if let Some(request) = node.poll(now) {
                send(&self.socket, &request.encode(&self.key), cm_addr);
            }
            self.shared
                .cm_expired
                .store(node.cm_expired(now), Ordering::Release);
        }
        if let Some(cm) = &mut self.cm {
            while let Some(suspect) = cm.next_suspect(now) {
                tracing::warn!(node = %suspect, config = cm.config(), "lease expired: suspect");
                self.shared.suspects.insert(suspect);
            }
        }
    }

    fn next_deadline(&self, now: Time) -> Time {
        let node = self.node.as_ref().map(|node| node.next_deadline(now));
        let cm = self.cm.as_ref().and_then(CmLeases::next_deadline);
        [node, cm]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + WAIT_SLICE_MAX)
    }

    fn wait_and_receive(&mut self, now: Time, paused: bool) {
        // Paused, nothing is due: deadlines that passed meanwhile must not make it spin.
        let wait = if paused {
            WAIT_SLICE_MAX
        } else {
            self.clock
                .real_duration_until(self.next_deadline(now))
                .clamp(WAIT_MIN, WAIT_SLICE_MAX)
        };
        // The socket's timeout stays if it ends no earlier than `wait` and at most WAIT_SLACK
        // later: in the steady state (a reply shortly after each request) no turn sets it.
        if self
            .timeout
            .is_none_or(|current| current < wait || current > wait + WAIT_SLACK)
        {
            if let Err(error) = self.socket.set_read_timeout(Some(wait)) {
                tracing::error!(%error, "cannot set the lease socket's timeout");
            }
            self.timeout = Some(wait);
        }
        match self.socket.recv_from(&mut self.buffer) {
            Ok((len, from)) => {
                if self.shared.stop.load(Ordering::Acquire) || paused {
                    return;
                }
                self.shared.packets_received.fetch_add(1, Ordering::Relaxed);
                if let Err(error) = self.handle(len, from) {
                    self.shared.packets_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, %error, "lease packet refused");
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => {
                // An ICMP error reported on the socket, for instance: nothing to undo.
                tracing::debug!(%error, "lease socket receive failed");
            }
        }
    }

    fn handle(&mut self, len: usize, from: SocketAddr) -> Result<(), crate::lease::LeaseError> {
        let packet = Packet::decode(&self.buffer[..len], &self.key)?;
        let now = self.clock.now();
        match packet.kind {
            Kind::GrantAndRequest => {
                let Some(node) = &mut self.node else {
                    return Err(crate::lease::LeaseError::WrongSide { kind: packet.kind });
                };
                let grant = node.receive(now, &packet)?;
                send(&self.socket, &grant.encode(&self.key), from);
                self.shared
                    .cm_expired
                    .store(node.cm_expired(now), Ordering::Release);
            }
            Kind::Request | Kind::Grant => {
                let Some(cm) = &mut self.cm else {
                    return Err(crate::lease::LeaseError::WrongSide { kind: packet.kind });
                };
                let reply = cm.receive(now, &packet)?;
                // Published before the reply goes out, so whoever sees the node's lease
                // renewed also sees the CM's view of it.
                if let (Ok(index), Some(until)) = (
                    self.shared.members.binary_search(&packet.node),
                    cm.node_lease_until(packet.node),
                ) {
                    self.shared.member_until[index].store(until.as_nanos(), Ordering::Release);
                }
                if let Some(reply) = reply {
                    send(&self.socket, &reply.encode(&self.key), from);
                }
            }
        }
        Ok(())
    }
}

fn send(socket: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    // A lost packet is a lost renewal: the next period sends another.
    if let Err(error) = socket.send_to(bytes, to) {
        tracing::debug!(%to, %error, "lease packet not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::PACKET_BYTES;
    use acre_engine::clock::Rate;
    use std::time::Instant;

    const CONFIG: u64 = 3;
    const CM: NodeId = NodeId(0);
    const MS: Duration = Duration::from_millis(1);

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes([9; 32])
    }

    fn timing() -> LeaseTiming {
        LeaseTiming::new(100 * MS, 10_000)
    }

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn cm_thread(members: &[NodeId]) -> LeaseThread {
        cm_thread_with(members, timing())
    }

    fn cm_thread_with(members: &[NodeId], timing: LeaseTiming) -> LeaseThread {
        LeaseThread::spawn(LeaseThreadConfig {
            bind: loopback(),
            secret: secret(),
            clock: Clock::system(),
            timing,
            node: None,
            cm: Some(CmRole {
                cm: CM,
                config: CONFIG,
                members: members.to_vec(),
            }),
        })
        .unwrap()
    }

    fn node_thread(node: NodeId, cm_addr: SocketAddr, clock: Clock) -> LeaseThread {
        LeaseThread::spawn(LeaseThreadConfig {
            bind: loopback(),
            secret: secret(),
            clock,
            timing: timing(),
            node: Some(NodeRole {
                node,
                cm: CM,
                cm_addr,
                config: CONFIG,
            }),
            cm: None,
        })
        .unwrap()
    }

    /// Waits up to `limit` for `condition`, checking every millisecond.
    fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if condition() {
                return true;
            }
            std::thread::sleep(MS);
        }
        condition()
    }

    fn taken(suspects: &Suspects) -> Vec<NodeId> {
        let mut nodes = Vec::new();
        suspects.take(|node| nodes.push(node));
        nodes
    }

    // FaRM SOSP'15 §5.1: renewals every 1/5 of the lease keep both leases alive.
    #[test]
    fn a_cm_and_a_node_keep_the_lease_alive_over_loopback() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        // Ten leases: valid at every check, never suspected, the CM never expired.
        let start = Instant::now();
        while start.elapsed() < 10 * timing().lease {
            assert!(node.is_valid(), "lost after {:?}", start.elapsed());
            assert!(!node.cm_expired());
            assert_eq!(cm.suspects().published(), 0);
            std::thread::sleep(2 * MS);
        }
        let (received, refused) = cm.packet_counts();
        // Two packets per renewal period (20 ms) for over a second; timers run late on a
        // loaded machine, so ask for half of them.
        assert!(received >= 50, "{received} packets");
        assert_eq!(refused, 0);
    }

    #[test]
    fn a_paused_node_is_suspected_after_about_one_lease() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        // Let a renewal or two pass so the lease is a fresh one.
        std::thread::sleep(50 * MS);
        let last_grant = cm.node_lease_until(NodeId(1)).unwrap() - timing().lease;
        node.pause(true);
        let paused_at = Clock::system().now();
        assert!(eventually(Duration::from_secs(2), || cm
            .suspects()
            .published()
            > 0));
        let suspected_after = Clock::system().now() - paused_at;
        // The node's own view expired first: it stopped acting before the CM suspected it.
        assert!(!node.is_valid());
        assert_eq!(taken(cm.suspects()), [NodeId(1)]);
        let since_grant = Clock::system().now() - last_grant;
        assert!(since_grant >= timing().lease, "{since_grant:?}");
        assert!(
            suspected_after <= timing().lease + 50 * MS,
            "suspected {suspected_after:?} after the pause"
        );
        // Resuming does not bring the lease back in this configuration.
        node.pause(false);
        std::thread::sleep(2 * timing().renewal_period());
        assert!(!node.is_valid());
    }

    #[test]
    fn forged_and_malformed_packets_are_refused_and_answered_by_nothing() {
        // A long lease, so the node's grace outlasts the test.
        let long = LeaseTiming::new(Duration::from_secs(60), 10_000);
        let cm = cm_thread_with(&[NodeId(1)], long);
        let grace_until = cm.node_lease_until(NodeId(1));
        let attacker = UdpSocket::bind(loopback()).unwrap();
        attacker.set_read_timeout(Some(100 * MS)).unwrap();
        let request = |config| Packet {
            kind: Kind::Request,
            node: NodeId(1),
            cm: CM,
            config,
            seq: 10,
            lease_nanos: 60_000_000_000,
        };
        let right = LeaseKey::new(&secret());
        let wrong = LeaseKey::new(&ClusterSecret::from_bytes([8; 32]));
        let forged = [
            request(CONFIG).encode(&wrong).to_vec(),
            request(CONFIG - 1).encode(&right).to_vec(),
            vec![0xab; PACKET_BYTES],
            vec![1, 2, 3],
            {
                let mut long = request(CONFIG).encode(&right).to_vec();
                long.push(0);
                long
            },
        ];
        let mut reply = [0u8; RECEIVE_BYTES];
        for bytes in &forged {
            attacker.send_to(bytes, cm.local_addr()).unwrap();
            let answer = attacker.recv_from(&mut reply);
            assert!(answer.is_err(), "{bytes:02x?} was answered");
        }
        assert_eq!(cm.packet_counts(), (5, 5));
        assert_eq!(
            cm.node_lease_until(NodeId(1)),
            grace_until,
            "nothing extended"
        );
        // The same request signed with the right secret is answered: the test can fail.
        attacker
            .send_to(&request(CONFIG).encode(&right), cm.local_addr())
            .unwrap();
        let (len, _) = attacker.recv_from(&mut reply).unwrap();
        let answer = Packet::decode(&reply[..len], &right).unwrap();
        assert_eq!((answer.kind, answer.seq), (Kind::GrantAndRequest, 10));
        assert!(cm.node_lease_until(NodeId(1)) > grace_until, "granted");
    }

    #[test]
    fn a_node_clock_running_fast_or_slow_within_the_bound_never_outlives_the_cms_view() {
        // 1.5: fast (gives up early); 0.9901: slow by the whole 1% bound.
        for rate in [Rate::from_ratio(3, 2), Rate::from_ppm(990_100)] {
            let cm = cm_thread(&[NodeId(1)]);
            let (node_clock, control) = Clock::controlled();
            control.set_rate(rate);
            let node = node_thread(NodeId(1), cm.local_addr(), node_clock.clone());
            assert!(eventually(Duration::from_secs(2), || node.is_valid()));
            let lease = node.lease();
            let check = || {
                let node_believes = lease.is_valid(node_clock.now());
                let cm_expired = cm
                    .node_lease_until(NodeId(1))
                    .is_none_or(|until| Clock::system().now() >= until);
                assert!(!(node_believes && cm_expired), "rate {rate:?}");
            };
            let start = Instant::now();
            while start.elapsed() < 3 * timing().lease {
                check();
                std::thread::sleep(Duration::from_micros(200));
            }
            node.pause(true);
            let start = Instant::now();
            while start.elapsed() < 2 * timing().lease {
                check();
                std::thread::sleep(Duration::from_micros(200));
            }
            assert!(!node.is_valid(), "rate {rate:?}");
        }
    }

    #[test]
    fn dropping_the_handle_stops_the_thread_at_once() {
        let cm = cm_thread(&[NodeId(1)]);
        let start = Instant::now();
        drop(cm);
        assert!(start.elapsed() < 40 * MS, "{:?}", start.elapsed());
    }

    #[test]
    fn suspects_are_taken_once_in_id_order() {
        let suspects = Suspects::new();
        for id in [700, 3, 65_535, 3, 64] {
            suspects.insert(NodeId(id));
        }
        assert_eq!(suspects.published(), 5);
        assert_eq!(
            taken(&suspects),
            [NodeId(3), NodeId(64), NodeId(700), NodeId(65_535)]
        );
        assert_eq!(taken(&suspects), []);
    }
}
