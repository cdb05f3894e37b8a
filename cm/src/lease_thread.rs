//! The lease thread: one per process, the only thing that sends and receives lease packets, so
//! nothing the application or the workers do can delay a renewal.
//!
//! It owns a UDP socket (UDP, so a partition made with `nft` drop rules cuts leases exactly as it
//! cuts other traffic, and no connection state outlives a partition), the [`NodeLease`] of its
//! node and, in the CM's process, the [`CmLeases`] table. On its path it touches only its own
//! preallocated buffers and state, the clock (which reads without locks) and atomics, so no lock
//! is shared with another thread and nothing allocates (but for the log lines of rare events:
//! a suspicion, a change of CM, a refused packet at debug level). It publishes:
//!
//! - the node's lease expiry, a [`LeaseExpiry`] a worker reads before it serves;
//! - whether the lease this node granted the CM has expired ([`LeaseThread::cm_expired`]);
//! - the CM's suspects, an atomic bitmap of node ids ([`Suspects`]) the CM's logic takes from:
//!   a bitmap cannot overflow, and a node suspected twice before it is taken is one suspicion;
//! - for the CM, each member's lease expiry as the CM sees it ([`LeaseThread::node_lease_until`],
//!   a table of 2^16 words indexed by node id, 512 KiB in the CM's process only).
//!
//! Other threads reach it through atomics too: a pause flag (tests, harness), a stop flag, and
//! a mailbox for a new configuration ([`LeaseThread::set_configuration`]) written under a
//! sequence number, with a lock only writers take.
//!
//! It sleeps in `recv_from` with a timeout until the next renewal or expiry is due, at most
//! [`WAIT_SLICE_MAX`] (a controlled clock's rate may change meanwhile), so an idle cluster's
//! lease threads cost a few wake-ups per renewal period. Stopping (dropping the handle) and
//! posting a configuration send a zero-length datagram to the socket to cut the wait short.
#![forbid(unsafe_code)]

use crate::lease::{
    CmLeases, Kind, LeaseExpiry, LeaseKey, LeaseTiming, MEMBERS_MAX, NodeLease, Packet,
};
use acre_engine::NodeId;
use acre_engine::clock::{Clock, Time, WAIT_SLICE_MAX};
use acre_engine::fabric::tcp::auth::ClusterSecret;
use acre_engine::lease::LeaseGate;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock};
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
/// How much later than due a turn must start, at least, to count as a stall of the thread
/// (see `Turn::run`): more than the ordinary lateness of a wake-up.
const STALL_MIN: Duration = Duration::from_millis(2);
/// ... and at least this share of a lease: a smaller lateness cannot make a renewed lease
/// look expired, and excusing every late wake-up would add up to a late suspicion of a node
/// that really died (measured: +12% of a lease).
const STALL_MIN_LEASE_DIVISOR: u32 = 8;
/// What `lock().expect` says of a poisoned lock: a writer panicked half-way through a
/// configuration, which the process must not go on with.
const POISONED: &str = "a thread panicked while holding this lock";
/// Words of a bitmap of node ids: one bit for every possible node id.
const NODE_BITMAP_WORDS: usize = (u16::MAX as usize + 1) / 64;

/// The node's part of a lease thread.
#[derive(Clone, Debug)]
pub struct NodeRole {
    pub node: NodeId,
    pub cm: NodeId,
    /// Where the CM's lease thread listens; `None` while the process does not know it yet (a
    /// node starting before the CM's group installed a configuration): the thread asks for
    /// nothing until [`LeaseThread::set_configuration`] names the CM.
    pub cm_addr: Option<SocketAddr>,
    pub config: u64,
    /// Where the node's lease is published: its memory's gate
    /// ([`acre_engine::fabric::NodeMemory::lease_gate`]), which its NIC thread and worker check
    /// before they serve; `None`: a gate of the thread's own. The thread asks it (shuts it until
    /// a grant) when it first asks a CM ([`acre_engine::lease::LeaseGate`]).
    pub gate: Option<Arc<LeaseGate>>,
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
    /// The id of the CM replica of a process that runs no memory node (a standalone `acre cm`,
    /// `node` is `None`): the thread takes up the CM's role when a configuration names that id
    /// as CM, as it does for its node's id otherwise.
    pub standalone_cm: Option<NodeId>,
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
            words: (0..NODE_BITMAP_WORDS).map(|_| AtomicU64::new(0)).collect(),
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

/// A configuration handed to a running lease thread ([`LeaseThread::set_configuration`]).
#[derive(Clone, Copy, Debug)]
pub struct NewConfiguration<'a> {
    pub config: u64,
    pub cm: NodeId,
    pub cm_addr: SocketAddr,
    /// In any order; at most [`MEMBERS_MAX`].
    pub members: &'a [NodeId],
}

/// Where other threads leave a new configuration for the lease thread. Writers take `writer`
/// (a lock the lease thread never takes) and publish under a sequence number, odd while they
/// write; the lease thread reads it when the number changed and is even, and checks it did not
/// change meanwhile (else it reads again on its next turn).
#[derive(Debug)]
struct Mailbox {
    writer: Mutex<()>,
    seq: AtomicU64,
    config: AtomicU64,
    cm: AtomicU64,
    /// The CM's address: IPv6 (IPv4 mapped) in two words, the port in the third.
    cm_addr: [AtomicU64; 3],
    /// The members, one bit per node id.
    members: Box<[AtomicU64]>,
}

impl Mailbox {
    fn new() -> Mailbox {
        Mailbox {
            writer: Mutex::new(()),
            seq: AtomicU64::new(0),
            config: AtomicU64::new(0),
            cm: AtomicU64::new(0),
            cm_addr: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            members: (0..NODE_BITMAP_WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn post(&self, new: &NewConfiguration<'_>) {
        assert!(
            new.members.len() <= MEMBERS_MAX,
            "members={}",
            new.members.len()
        );
        let _writer = self.writer.lock().expect(POISONED);
        let seq = self.seq.load(Ordering::Relaxed);
        // The thread applies only a configuration newer than what it holds, so a post of one
        // no newer than the last posted is of no use, and must not hide a newer one the thread
        // has not read yet (two threads of a process post: a standalone CM's driver and its
        // housekeeping). The same configuration from a CM at another address is of use: its
        // process restarted (a new leader named in it already, as when the CM's replicas all
        // went down and came back), and its members must renew there.
        let posted = self.config.load(Ordering::Relaxed);
        if seq > 0
            && (new.config < posted
                || (new.config == posted
                    && u64::from(new.cm.0) == self.cm.load(Ordering::Relaxed)
                    && self.posted_addr() == new.cm_addr))
        {
            return;
        }
        self.seq.store(seq + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        self.config.store(new.config, Ordering::Relaxed);
        self.cm.store(u64::from(new.cm.0), Ordering::Relaxed);
        let ip = match new.cm_addr.ip() {
            IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            IpAddr::V6(ip) => ip,
        };
        let ip = u128::from(ip);
        self.cm_addr[0].store((ip >> 64) as u64, Ordering::Relaxed);
        self.cm_addr[1].store(ip as u64, Ordering::Relaxed);
        self.cm_addr[2].store(u64::from(new.cm_addr.port()), Ordering::Relaxed);
        for word in self.members.iter() {
            word.store(0, Ordering::Relaxed);
        }
        for member in new.members {
            let index = usize::from(member.0);
            self.members[index / 64].fetch_or(1 << (index % 64), Ordering::Relaxed);
        }
        self.seq.store(seq + 2, Ordering::Release);
    }

    /// The CM address last posted; only under `writer` (or from the lease thread, checking the
    /// sequence number around it).
    fn posted_addr(&self) -> SocketAddr {
        let ip = (u128::from(self.cm_addr[0].load(Ordering::Relaxed)) << 64)
            | u128::from(self.cm_addr[1].load(Ordering::Relaxed));
        let port = u16::try_from(self.cm_addr[2].load(Ordering::Relaxed)).unwrap_or(0);
        let ip = Ipv6Addr::from(ip);
        SocketAddr::new(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4), port)
    }
}

/// What the lease thread publishes; the handle and its clones read it.
#[derive(Debug)]
struct Shared {
    stop: AtomicBool,
    paused: AtomicBool,
    /// A stall asked for ([`LeaseThread::stall`]), in nanoseconds; 0: none.
    stall_nanos: AtomicU64,
    /// Regraces asked by [`LeaseThread::regrace`], counted; taken at the thread's next turn.
    regrace_asked: AtomicU64,
    /// The count of `regrace_asked` the thread has applied, stale suspects cleared with it
    /// ([`LeaseThread::regrace_pending`]).
    regrace_done: AtomicU64,
    /// Asked by [`LeaseThread::resign`], taken at the thread's next turn (before a regrace).
    resign: AtomicBool,
    expiry: LeaseExpiry,
    cm_expired: AtomicBool,
    suspects: Suspects,
    /// With the CM's role: every node's lease expiry as the CM sees it, in nanoseconds, indexed
    /// by node id (0: not a member). Made when the thread first has the role.
    member_until: OnceLock<Box<[AtomicU64]>>,
    mailbox: Mailbox,
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
            let lease = NodeLease::new(
                role.node,
                role.cm,
                role.config,
                config.timing,
                first_seq(),
                now,
            );
            match &role.gate {
                Some(gate) => lease.with_gate(gate.clone()),
                None => lease,
            }
        });
        let cm = config
            .cm
            .as_ref()
            .map(|role| CmLeases::new(role.cm, role.config, config.timing, &role.members, now));
        let member_until = OnceLock::new();
        if let Some(cm) = &cm {
            publish_members(cm, member_table(&member_until));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            stall_nanos: AtomicU64::new(0),
            regrace_asked: AtomicU64::new(0),
            regrace_done: AtomicU64::new(0),
            resign: AtomicBool::new(false),
            expiry: node.as_ref().map(NodeLease::expiry).unwrap_or_default(),
            cm_expired: AtomicBool::new(false),
            suspects: Suspects::new(),
            member_until,
            mailbox: Mailbox::new(),
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
            cm_addr: config.node.as_ref().and_then(|role| role.cm_addr),
            node,
            cm,
            shared: Arc::clone(&shared),
            buffer: [0u8; RECEIVE_BYTES],
            timeout: None,
            applied_seq: 0,
            members: {
                let mut members = Vec::with_capacity(MEMBERS_MAX);
                if let Some(role) = &config.cm {
                    members.extend(role.members.iter().copied().take(MEMBERS_MAX));
                    members.sort_unstable();
                }
                members
            },
            // Only a configuration that was handed over (or the CM role it starts with) names a
            // CM: a node's starting role may name a placeholder.
            config_cm: config.cm.as_ref().map(|role| role.cm),
            started_as: config.cm.as_ref().map(|role| role.cm),
            timing: config.timing,
            standalone_cm: config.standalone_cm,
            cm_config: config
                .node
                .as_ref()
                .map(|role| role.config)
                .into_iter()
                .chain(config.cm.as_ref().map(|role| role.config))
                .max()
                .unwrap_or(0),
            wake_due: None,
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

    /// Whether this node may act now, by the thread's clock: it holds a valid lease, or it has
    /// asked no CM yet ([`acre_engine::lease::LeaseGate`]).
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
        let until = self.shared.member_until.get()?.get(usize::from(node.0))?;
        match until.load(Ordering::Acquire) {
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

    /// The CM's role is taken up again by a replica that leads again in a configuration that
    /// already names it (the driver calls this when its manager becomes leader): at its next
    /// turn the thread, if it has the role, gives every member one lease of grace and clears
    /// their suspicions ([`CmLeases::regrace`]), so a member that is still silent is suspected
    /// and reported again one lease later, rather than never.
    ///
    /// A thread without the role (it resigned) takes it up again with a fresh table, every
    /// member given a lease of grace, if the newest configuration it was handed names this
    /// process's node or standalone replica as CM.
    ///
    /// The thread also clears the suspects published before it applied the regrace (stale:
    /// judged without the grace), and until it has, [`LeaseThread::regrace_pending`] says so:
    /// a caller that took suspects in between could take one the thread published in the
    /// same instant, from its table as it was before the grace.
    pub fn regrace(&self) {
        self.shared.regrace_asked.fetch_add(1, Ordering::AcqRel);
        self.wake();
    }

    /// Whether a [`LeaseThread::regrace`] is asked and not applied yet: until it is, the
    /// published suspects are stale and should not be taken (module docs of `driver`).
    pub fn regrace_pending(&self) -> bool {
        self.shared.regrace_done.load(Ordering::Acquire)
            != self.shared.regrace_asked.load(Ordering::Acquire)
    }

    /// The replica of this process no longer leads the CM's Raft group (the driver calls this
    /// the moment it sees the leadership gone): at its next turn the thread gives up the CM's
    /// role and grants nothing more, even to members that have not learned of the new CM yet.
    /// A CM that granted on after losing its leadership would keep leases alive that the new CM
    /// counts as expired, and a node removed by the new CM would act on them. [`regrace`]
    /// takes the role up again if the replica leads again.
    ///
    /// [`regrace`]: LeaseThread::regrace
    pub fn resign(&self) {
        self.shared.resign.store(true, Ordering::Release);
        self.wake();
    }

    /// Makes the thread sleep for `duration` at its next turn without reading its socket, as a
    /// thread the host did not schedule; for tests and the fault-injection harness.
    pub fn stall(&self, duration: Duration) {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.shared.stall_nanos.store(nanos, Ordering::Release);
        self.wake();
    }
}

impl Drop for LeaseThread {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(addr = %self.local_addr, "the lease thread panicked");
        }
    }
}

impl LeaseThread {
    /// Cuts the thread's wait short with a zero-length datagram; if it is lost, the thread
    /// still looks at its flags and mailbox within one wait.
    fn wake(&self) {
        let mut wake = self.local_addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let _ = self.waker.send_to(&[], wake);
    }

    /// Hands the thread a newer configuration: the node's side asks the new CM at once, and
    /// the CM's side (if this thread has it and `new.cm` is still this CM) keeps the members'
    /// leases and grants new members one lease of grace. A thread whose CM is replaced by
    /// another stops granting; a thread whose own node becomes the CM takes the role up, every
    /// member given one lease of grace.
    ///
    /// The node's gate is asked here, in the caller's thread, before the configuration is
    /// posted: the member acknowledges NEW-CONFIG after this returns, and the CM's grace for the
    /// node has started by then, so the gate must not wait for this thread's next turn to count
    /// on a grant.
    pub fn set_configuration(&self, new: &NewConfiguration<'_>) {
        self.shared.expiry.ask();
        self.shared.mailbox.post(new);
        self.wake();
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
    /// The mailbox's sequence number last applied.
    applied_seq: u64,
    /// Where a new configuration's members are gathered; capacity [`MEMBERS_MAX`].
    members: Vec<NodeId>,
    /// The lease timing, for a CM's table made when the thread gains the role.
    timing: LeaseTiming,
    /// The newest configuration id the thread has seen: the role is gained only in a newer one.
    cm_config: u64,
    /// The CM that configuration names.
    config_cm: Option<NodeId>,
    /// The CM this thread was started as ([`LeaseThreadConfig::cm`]), if it was.
    started_as: Option<NodeId>,
    /// [`LeaseThreadConfig::standalone_cm`].
    standalone_cm: Option<NodeId>,
    /// When the current wait ends at the latest: a turn that starts well after it was stalled.
    wake_due: Option<Time>,
}

impl Turn {
    fn run(&mut self) {
        while !self.shared.stop.load(Ordering::Acquire) {
            self.shared.turns.fetch_add(1, Ordering::Relaxed);
            let stall = self.shared.stall_nanos.swap(0, Ordering::AcqRel);
            if stall > 0 {
                std::thread::sleep(Duration::from_nanos(stall));
            }
            self.take_configuration();
            let now = self.clock.now();
            if self.shared.resign.swap(false, Ordering::AcqRel)
                && let Some(cm) = self.cm.take()
            {
                tracing::info!(cm = %cm.cm(), config = cm.config(), "no longer leading: no more grants here");
                for slot in member_table(&self.shared.member_until) {
                    slot.store(0, Ordering::Relaxed);
                }
            }
            let regrace_asked = self.shared.regrace_asked.load(Ordering::Acquire);
            if regrace_asked != self.shared.regrace_done.load(Ordering::Relaxed) {
                self.regrace(now);
                // Published before the grace, from the table as it was: stale. Cleared before
                // the regrace is said done, so a caller that waits for it takes none of them.
                self.shared.suspects.take(|_| {});
                self.shared
                    .regrace_done
                    .store(regrace_asked, Ordering::Release);
            }
            let paused = self.shared.paused.load(Ordering::Acquire);
            // Woken later than it asked to be: the thread did not run meanwhile, and the
            // members' renewals wait unread in the socket. The CM's side does not judge their
            // leases on that gap (`CmLeases::excuse_gap`), or one stall of this thread on a
            // busy host would make it suspect every member at once.
            if let (Some(cm), Some(due)) = (&mut self.cm, self.wake_due.take())
                && now > due + STALL_MIN.max(self.timing.lease() / STALL_MIN_LEASE_DIVISOR)
            {
                cm.excuse_gap(due, now);
            }
            if !paused {
                self.tick(now);
            }
            self.wait_and_receive(now, paused);
        }
    }

    /// [`LeaseThread::regrace`]: every member a lease of grace in the table, or a fresh table
    /// if the thread resigned and the newest configuration names this process's CM.
    fn regrace(&mut self, now: Time) {
        let table = member_table(&self.shared.member_until);
        if let Some(cm) = &mut self.cm {
            cm.regrace(now);
            publish_members(cm, table);
            return;
        }
        let mine = |id: NodeId| {
            self.node.as_ref().is_some_and(|node| node.node() == id)
                || self.standalone_cm == Some(id)
                || self.started_as == Some(id)
        };
        if let Some(cm_id) = self.config_cm
            && mine(cm_id)
        {
            tracing::info!(cm = %cm_id, config = self.cm_config, "leading again: this process takes the leases up again");
            let cm = CmLeases::new(cm_id, self.cm_config, self.timing, &self.members, now);
            for slot in table {
                slot.store(0, Ordering::Relaxed);
            }
            publish_members(&cm, table);
            self.cm = Some(cm);
        }
    }

    /// Applies a configuration left in the mailbox, if there is a new one.
    fn take_configuration(&mut self) {
        let mailbox = &self.shared.mailbox;
        let seq = mailbox.seq.load(Ordering::Acquire);
        if seq == self.applied_seq || !seq.is_multiple_of(2) {
            return;
        }
        let config = mailbox.config.load(Ordering::Relaxed);
        let cm_id = NodeId(u16::try_from(mailbox.cm.load(Ordering::Relaxed)).unwrap_or(0));
        let cm_addr = mailbox.posted_addr();
        self.members.clear();
        for (word_index, word) in mailbox.members.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 && self.members.len() < MEMBERS_MAX {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let id = u16::try_from(word_index * 64 + bit).expect("the bitmap has 2^16 bits");
                self.members.push(NodeId(id));
            }
        }
        fence(Ordering::Acquire);
        if mailbox.seq.load(Ordering::Relaxed) != seq {
            return; // a writer came in meanwhile: read it all again next turn
        }
        self.applied_seq = seq;
        let now = self.clock.now();
        if let Some(node) = &mut self.node {
            if config > node.config() {
                node.set_configuration(config, cm_id, now);
                self.cm_addr = Some(cm_addr);
            } else if config == node.config() && cm_id == node.cm() && self.cm_addr != Some(cm_addr)
            {
                // The CM's process restarted and leads again in the same configuration
                // (Mailbox::post): renew there at once, within the lease of grace it gives.
                tracing::info!(cm = %cm_id, config, addr = %cm_addr, "the CM moved: renewing there");
                node.cm_moved(now);
                self.cm_addr = Some(cm_addr);
            }
        }
        if let Some(cm) = &mut self.cm
            && config > cm.config()
        {
            if cm.cm() == cm_id {
                cm.set_configuration(config, &self.members, now);
                let table = member_table(&self.shared.member_until);
                for slot in table.iter() {
                    slot.store(0, Ordering::Relaxed);
                }
                publish_members(cm, table);
            } else {
                tracing::info!(cm = %cm_id, config, "another CM took over: no more grants here");
                self.cm = None;
            }
        } else if self.cm.is_none()
            && (self.node.as_ref().is_some_and(|node| node.node() == cm_id)
                || self.standalone_cm == Some(cm_id))
            && config > self.cm_config
        {
            // This process's node (or standalone replica) became the CM (a new Raft leader named itself in the
            // configuration): it takes over the leases, each member given one lease of grace to
            // renew with it, as a CM that cannot know when its predecessor last granted one
            // must. A rare event: the table is made here, off the steady path.
            tracing::info!(cm = %cm_id, config, "this process's node is the CM: it takes over the leases");
            let cm = CmLeases::new(cm_id, config, self.timing, &self.members, now);
            let table = member_table(&self.shared.member_until);
            for slot in table.iter() {
                slot.store(0, Ordering::Relaxed);
            }
            publish_members(&cm, table);
            self.cm = Some(cm);
        }
        if config >= self.cm_config {
            self.config_cm = Some(cm_id);
        }
        self.cm_config = self.cm_config.max(config);
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
        self.wake_due = Some(now.saturating_add(wait));
        match self.socket.recv_from(&mut self.buffer) {
            Ok((len, from)) => {
                // A zero-length datagram is a wake-up (stop, or a new configuration); anyone
                // may send one, and it does no more than cut a wait short.
                if len == 0 || self.shared.stop.load(Ordering::Acquire) || paused {
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
                if let (Some(slot), Some(until)) = (
                    self.shared
                        .member_until
                        .get()
                        .and_then(|table| table.get(usize::from(packet.node.0))),
                    cm.node_lease_until(packet.node),
                ) {
                    slot.store(until.as_nanos(), Ordering::Release);
                }
                if let Some(reply) = reply {
                    send(&self.socket, &reply.encode(&self.key), from);
                }
            }
        }
        Ok(())
    }
}

/// Publishes every member's lease expiry as `cm` sees it.
/// The table of members' lease expiries, made (512 KiB) the first time a thread has the CM's
/// role.
fn member_table(member_until: &OnceLock<Box<[AtomicU64]>>) -> &[AtomicU64] {
    member_until.get_or_init(|| (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect())
}

fn publish_members(cm: &CmLeases, member_until: &[AtomicU64]) {
    for (node, until) in cm.members() {
        member_until[usize::from(node.0)].store(until.as_nanos(), Ordering::Release);
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
    /// How late a thread may notice an expiry on a loaded machine.
    const LATE_MAX: Duration = Duration::from_millis(100);

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes([9; 32])
    }

    /// Long enough that a loaded 2-core machine (a test binary's other tests, other builds)
    /// does not starve the threads past a lease; the bounds below scale with it.
    fn timing() -> LeaseTiming {
        LeaseTiming::new(250 * MS, 10_000)
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
            standalone_cm: None,
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
                cm_addr: Some(cm_addr),
                config: CONFIG,
                gate: None,
            }),
            cm: None,
            standalone_cm: None,
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

    /// The CM's thread stalls (descheduled) for several leases while its members renew: it
    /// does not suspect them when it runs again. Before, it ticked before reading its socket
    /// and suspected every member at once.
    #[test]
    fn a_stalled_cm_thread_does_not_suspect_members_that_kept_renewing() {
        let members = [NodeId(1), NodeId(2)];
        let cm = cm_thread(&members);
        let nodes: Vec<LeaseThread> = members
            .iter()
            .map(|&n| node_thread(n, cm.local_addr(), Clock::system()))
            .collect();
        assert!(eventually(Duration::from_secs(2), || nodes
            .iter()
            .all(LeaseThread::is_valid)));
        cm.stall(4 * timing().lease());
        // The stall, then two leases more of ordinary running.
        std::thread::sleep(6 * timing().lease());
        assert_eq!(taken(cm.suspects()), Vec::<NodeId>::new());
        assert!(nodes.iter().all(LeaseThread::is_valid));
    }

    // FaRM SOSP'15 §5.1: renewals every 1/5 of the lease keep both leases alive.
    #[test]
    fn a_cm_and_a_node_keep_the_lease_alive_over_loopback() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        // Ten leases: valid at every check, never suspected, the CM never expired.
        let start = Instant::now();
        while start.elapsed() < 10 * timing().lease() {
            assert!(node.is_valid(), "lost after {:?}", start.elapsed());
            assert!(!node.cm_expired());
            assert_eq!(cm.suspects().published(), 0);
            std::thread::sleep(2 * MS);
        }
        let (received, refused) = cm.packet_counts();
        // Two packets per renewal period (50 ms) for 2.5 s; timers run late on a loaded
        // machine, so ask for half of them.
        assert!(received >= 50, "{received} packets");
        assert_eq!(refused, 0);
    }

    /// A new CM (a Raft leader that named itself in a configuration) takes over the leases in
    /// its process's running lease thread: it grants, keeps the members' expiries, and
    /// suspects a member that stops renewing.
    #[test]
    fn a_node_that_becomes_the_cm_takes_over_the_leases() {
        let old_cm = cm_thread(&[NodeId(1), NodeId(2)]);
        let one = node_thread(NodeId(1), old_cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || one.is_valid()));
        assert_eq!(one.node_lease_until(NodeId(2)), None, "not a CM yet");
        let members = [NodeId(1), NodeId(2)];
        let new_config = CONFIG + 1;
        one.set_configuration(&NewConfiguration {
            config: new_config,
            cm: NodeId(1),
            cm_addr: one.local_addr(),
            members: &members,
        });
        let two = LeaseThread::spawn(LeaseThreadConfig {
            bind: loopback(),
            secret: secret(),
            clock: Clock::system(),
            timing: timing(),
            node: Some(NodeRole {
                node: NodeId(2),
                cm: NodeId(1),
                cm_addr: Some(one.local_addr()),
                config: new_config,
                gate: None,
            }),
            cm: None,
            standalone_cm: None,
        })
        .unwrap();
        assert!(
            eventually(Duration::from_secs(2), || two.is_valid()),
            "the new CM grants"
        );
        assert!(one.node_lease_until(NodeId(2)).is_some());
        assert!(
            eventually(Duration::from_secs(2), || one.is_valid()),
            "the new CM's own node renews with it"
        );
        two.pause(true);
        assert!(eventually(Duration::from_secs(3), || one
            .suspects()
            .published()
            > 0));
        assert_eq!(taken(one.suspects()), [NodeId(2)]);
    }

    /// The CM's process restarts and leads again in the same configuration (as when every
    /// CM replica went down and came back): the member renews with it at its new address.
    /// Before, the thread ignored a configuration no newer than its own, went on renewing at
    /// the dead address, and was suspected once the new CM's lease of grace ran out.
    #[test]
    fn a_member_renews_with_its_cm_restarted_at_a_new_address_in_the_same_configuration() {
        let old_cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), old_cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        let new_cm = cm_thread(&[NodeId(1)]);
        drop(old_cm);
        for _ in 0..2 {
            // Posted twice, as the driver may: the second changes nothing.
            node.set_configuration(&NewConfiguration {
                config: CONFIG,
                cm: CM,
                cm_addr: new_cm.local_addr(),
                members: &[NodeId(1)],
            });
        }
        // Three leases: the new CM's grace ran out long ago; the member renewed within it.
        std::thread::sleep(3 * timing().lease());
        assert_eq!(taken(new_cm.suspects()), Vec::<NodeId>::new());
        assert!(node.is_valid());
    }

    /// A standalone CM replica's thread (no node role) takes up the CM's role when a
    /// configuration names its id, gives it up when a newer one names another CM, ignores an
    /// older configuration posted late, and takes the role afresh (a lease of grace for every
    /// member) when a configuration names it again.
    #[test]
    fn a_standalone_cms_thread_takes_up_gives_up_and_retakes_the_role() {
        const STANDALONE: NodeId = NodeId(9);
        let cm = LeaseThread::spawn(LeaseThreadConfig {
            bind: loopback(),
            secret: secret(),
            clock: Clock::system(),
            timing: timing(),
            node: None,
            cm: None,
            standalone_cm: Some(STANDALONE),
        })
        .unwrap();
        let members = [NodeId(1)];
        let post = |config, by| {
            cm.set_configuration(&NewConfiguration {
                config,
                cm: by,
                cm_addr: cm.local_addr(),
                members: &members,
            })
        };
        post(CONFIG, STANDALONE);
        let node = LeaseThread::spawn(LeaseThreadConfig {
            bind: loopback(),
            secret: secret(),
            clock: Clock::system(),
            timing: timing(),
            node: Some(NodeRole {
                node: NodeId(1),
                cm: STANDALONE,
                cm_addr: Some(cm.local_addr()),
                config: CONFIG,
                gate: None,
            }),
            cm: None,
            standalone_cm: None,
        })
        .unwrap();
        assert!(
            eventually(Duration::from_secs(2), || node.is_valid()),
            "the standalone CM grants"
        );
        assert!(cm.node_lease_until(NodeId(1)).is_some());
        // Another replica's configuration: the role is given up, so the member's renewals go
        // unanswered and its lease runs out; a late post of an older configuration naming this
        // replica changes nothing.
        post(CONFIG + 1, NodeId(2));
        post(CONFIG, STANDALONE);
        assert!(eventually(3 * timing().lease(), || !node.is_valid()));
        assert_eq!(cm.suspects().published(), 0, "no CM, no suspicion");
        // Named again: a fresh table, the member given a lease of grace from now rather than
        // suspected at once for the renewals nobody answered.
        let before = Clock::system().now();
        post(CONFIG + 2, STANDALONE);
        assert!(eventually(Duration::from_secs(2), || cm
            .node_lease_until(NodeId(1))
            .is_some_and(|until| until >= before + timing().lease())));
        assert_eq!(cm.suspects().published(), 0);
    }

    /// A CM whose replica lost its leadership grants nothing more, so a member that has not
    /// learned of the new CM lets its lease run out; leading again, it takes the leases up with
    /// a fresh table and the member's lease holds again.
    #[test]
    fn a_cm_that_resigns_grants_nothing_until_it_leads_again() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        cm.resign();
        assert!(
            eventually(3 * timing().lease(), || !node.is_valid()),
            "a resigned CM still grants"
        );
        assert_eq!(cm.suspects().published(), 0, "no table, no suspicion");
        cm.regrace();
        assert!(
            eventually(Duration::from_secs(2), || node.is_valid()),
            "leading again, it grants again"
        );
    }

    /// A new CM leader's regrace (docs/failures.md#reconfiguration, "A CM that leads again"):
    /// a member silent since the table was made (a process restarted from its files, still
    /// starting) is suspected by a table older than the leadership; once the regrace is
    /// applied that suspicion is gone, and the member is suspected again only one lease after
    /// the regrace, not at once.
    #[test]
    fn a_regrace_clears_stale_suspects_and_gives_a_lease_from_then() {
        let cm = cm_thread(&[NodeId(1)]);
        assert!(
            eventually(Duration::from_secs(2), || cm.suspects().published() > 0),
            "n1 never asked: suspected one lease after the table was made"
        );
        let published = cm.suspects().published();
        let asked_at = Clock::system().now();
        cm.regrace();
        assert!(eventually(Duration::from_secs(2), || !cm.regrace_pending()));
        assert_eq!(taken(cm.suspects()), [], "the stale suspicion is cleared");
        assert!(
            eventually(Duration::from_secs(2), || cm.suspects().published()
                > published),
            "still silent: suspected again"
        );
        let again_after = Clock::system().now() - asked_at;
        assert!(again_after >= timing().lease(), "{again_after:?}");
        assert_eq!(taken(cm.suspects()), [NodeId(1)]);
    }

    #[test]
    fn a_paused_node_is_suspected_after_about_one_lease() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        // Let a renewal or two pass so the lease is a fresh one.
        std::thread::sleep(50 * MS);
        let last_grant = cm.node_lease_until(NodeId(1)).unwrap() - timing().lease();
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
        assert!(since_grant >= timing().lease(), "{since_grant:?}");
        assert!(
            suspected_after <= timing().lease() + LATE_MAX,
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
            assert!(!node_outlives_cm(rate), "rate {rate:?}");
        }
        // Outside the bound the rule cannot hold, and the check sees it: it can fail.
        assert!(node_outlives_cm(Rate::from_ppm(800_000)), "rate 0.8");
    }

    /// Runs a CM on the system clock and a node on a clock at `rate`, renewing for three
    /// leases and then paused for two; returns whether the node ever believed in its lease
    /// after the CM's view of it had expired.
    fn node_outlives_cm(rate: Rate) -> bool {
        let cm = cm_thread(&[NodeId(1)]);
        let (node_clock, control) = Clock::controlled();
        control.set_rate(rate);
        let node = node_thread(NodeId(1), cm.local_addr(), node_clock.clone());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        let lease = node.lease();
        // The CM's view is read first: a node that believes at a later instant than the CM
        // has stopped believing is a real violation, not an artefact of the order.
        let outlives = || {
            let cm_expired = cm
                .node_lease_until(NodeId(1))
                .is_none_or(|until| Clock::system().now() >= until);
            cm_expired && lease.is_valid(node_clock.now())
        };
        let mut outlived = false;
        let start = Instant::now();
        while start.elapsed() < 3 * timing().lease() {
            outlived |= outlives();
            std::thread::sleep(Duration::from_micros(200));
        }
        node.pause(true);
        let start = Instant::now();
        while start.elapsed() < 2 * timing().lease() {
            outlived |= outlives();
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(!node.is_valid(), "rate {rate:?}: the lease ran out");
        outlived
    }

    #[test]
    fn a_new_configuration_keeps_the_lease_and_brings_new_members_in() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        assert_eq!(cm.node_lease_until(NodeId(2)), None, "not a member yet");
        let new = NewConfiguration {
            config: CONFIG + 1,
            cm: CM,
            cm_addr: cm.local_addr(),
            members: &[NodeId(2), NodeId(1)],
        };
        cm.set_configuration(&new);
        node.set_configuration(&new);
        assert!(eventually(Duration::from_secs(1), || cm
            .node_lease_until(NodeId(2))
            .is_some()));
        let start = Instant::now();
        while start.elapsed() < 3 * timing().lease() {
            assert!(node.is_valid(), "lost after {:?}", start.elapsed());
            std::thread::sleep(2 * MS);
        }
        // Node 2 never spoke: suspected one lease after it joined; node 1 renewed under the
        // new id.
        assert_eq!(taken(cm.suspects()), [NodeId(2)]);
        assert!(cm.node_lease_until(NodeId(1)).unwrap() > Clock::system().now());
    }

    #[test]
    fn a_node_suspects_a_cm_that_went_silent_after_one_lease() {
        let cm = cm_thread(&[NodeId(1)]);
        let node = node_thread(NodeId(1), cm.local_addr(), Clock::system());
        assert!(eventually(Duration::from_secs(2), || node.is_valid()));
        assert!(!node.cm_expired());
        let stopped_at = Instant::now();
        drop(cm);
        assert!(eventually(Duration::from_secs(2), || node.cm_expired()));
        let after = stopped_at.elapsed();
        assert!(after <= timing().lease() + LATE_MAX, "{after:?}");
        assert!(!node.is_valid(), "its own lease ran out first");
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
