//! [`CmDriver`]: the thread that connects a process's part in reconfiguration to the CM links
//! (docs/failures.md#reconfiguration). It runs the node's [`Member`] in every process, and the
//! [`Manager`] in a process that hosts a CM replica while that replica leads the Raft group.
//!
//! # Threads
//!
//! One thread per process, named `cm-driver-<node>`. It waits for the next envelope on the CM
//! group's channel ([`CmGroup::start`] hands it every non-Raft envelope), or on the links'
//! [`Inbox`] in a process without a replica, for at most the earliest of
//!
//! - the manager's and the member's deadlines ([`Manager::next_deadline`],
//!   [`Member::next_deadline`]),
//! - while it leads, the end of the earliest lease it granted (as the lease thread publishes
//!   it, [`LeaseThread::node_lease_until`]), and from then every [`SUSPECT_POLL`] until the
//!   lease is renewed or its node suspected: the lease thread publishes its suspects in
//!   atomics ([`crate::lease_thread::Suspects`]) and wakes nobody (its path must not block on
//!   another thread), so the driver looks. In the steady state every lease ends most of a lease
//!   ahead, so the driver sleeps [`LEADERSHIP_POLL`] at a time, and a suspicion is seen within
//!   a millisecond or so of the lease's end; [`SUSPECT_POLL`] also while an install's outcome
//!   is awaited;
//! - [`LEADERSHIP_POLL`] otherwise, which bounds how late the driver notices that its replica
//!   became the leader (against Raft's election timeout of 300 ms or more) and how long
//!   [`CmDriver::stop`] waits.
//!
//! A Raft proposal ([`Action::ProposeInstall`]) blocks until the group decides it, which takes
//! fsyncs and a round trip to a majority, so the driver runs it on a short-lived helper thread
//! (at most one at a time: the manager waits for the outcome and proposes nothing else) and
//! takes its outcome at its next turn, polled like the suspects. Meanwhile the loop goes on
//! answering probes and acknowledgements, including its own member's.
//!
//! # What the driver does for the manager
//!
//! - **Leadership** is read from [`CmGroup::is_leader`] every turn: when the replica leads and
//!   the manager does not, [`Manager::became_leader`] with the configuration Raft applied;
//!   when it no longer leads, [`Manager::lost_leadership`].
//! - **Envelopes** go over the [`Links`]; the ones for this node itself (the CM's own member)
//!   are looped back in the same turn, since a process has no link to itself.
//! - **Leases.** [`Action::UpdateLeaseMembers`] reads [`LeaseThread::node_lease_until`] of
//!   every node the new configuration drops *before* it hands the configuration to the lease
//!   thread (after that the thread forgets them), and reports their maximum. A node the lease
//!   table does not know (this lease thread is not the one that granted it) is counted as
//!   holding a lease of [`DriverOptions::lease`] from now, and so is every removed node in the
//!   first update after the driver became leader: it cannot know when the previous CM last
//!   granted (manager.rs, "A new leader").
//! - **Fencing.** The manager has no step of its own for it: before the first
//!   NEW-CONFIG-COMMIT of a configuration goes out, the driver calls the [`Fence`] hook for
//!   every node removed since the last commit (on shm: `acre_replication::process::fence_by_kill`).
//!   A fence that fails holds the commit back: the members keep repeating their
//!   acknowledgements, the manager answers each with the commit again, and the driver tries
//!   the fence again then.
//! - **Stand-down** hands the Raft leadership to another replica ([`CmGroup::transfer_leadership`])
//!   and does not take the manager's role again for [`STAND_DOWN_HOLD`], so that a transfer
//!   raft abandons does not make it stand up and down in a loop.
//!
//! # What it does for the member
//!
//! NEW-CONFIG and NEW-CONFIG-COMMIT go to [`Member::receive`] and its acknowledgement goes
//! back to the CM; a probe is answered with its nonce. When the member adopted a configuration,
//! the node's lease thread is told, so it asks the configuration's CM for its lease under the
//! new id (the lease table refuses requests of another configuration).
//!
//! **Recovered regions.** Every turn the member may report the regions whose transactions the
//! node recovered ([`Member::recovery_report`]: it looks every [`crate::member::RECOVERY_POLL`]
//! while its committed configuration has a region blocked at the node, a deadline of the wait
//! like the others, and sends at most every [`crate::member::RECOVERY_REPORT_PERIOD`]) to the
//! configuration's CM, looped back when that is this process. The driver that acts as CM turns
//! a report into [`Change::Activate`] for its manager and runs the actions as it runs an
//! operator's change; a report of regions the sender is not primary of is ignored, and so is
//! every report in a process that does not act as CM. Completed copies come in the same report
//! (`copied`, [`crate::member::Adopter::copied`]) and the same change: a report of a copy in a
//! region whose `copying` list does not name the sender is ignored.
//!
//! # Joining the group
//!
//! A process that hosts no replica but may become one ([`Source::Joinable`]: every memory node,
//! since the leader replaces a replica whose node left with a memory node's,
//! [`crate::replacement`]) reads the links' inbox itself until a Raft message arrives: only a
//! leader that added this node to the group sends it one (ids are never reused). The driver
//! then hands the inbox to its [`Join`], which starts the replica ([`CmGroup::join`]: empty, it
//! learns the group from the leader's snapshot) and returns its seat; from then on the driver
//! runs as in a process that hosted a replica from its start, and takes the manager's role if
//! its replica leads one day.
//!
//! # Leadership moving
//!
//! A replica that becomes leader installs a configuration naming itself CM; handing the lease
//! thread that configuration ([`Action::UpdateLeaseMembers`]) makes the thread take up the
//! CM's role ([`LeaseThread::set_configuration`]), so suspects then come from the new
//! leader's process. Tested end to end with node processes in the root package's
//! `tests/it/cm.rs` (the CM leader killed) and measured by `acre bench failover`.

use crate::group::{CmGroup, InstallError, LinkMessage};
use crate::lease_thread::{LeaseThread, NewConfiguration};
use crate::manager::{Action, Change, Manager, ManagerTiming, Reconfiguration};
use crate::member::{Adopter, Member};
use crate::net::{Inbox, Links, RecvError};
use crate::wire::{ConfigurationMessage, Envelope, RegionsRecovered, envelope::Body};
use acre_engine::NodeId;
use acre_engine::addr::RegionId;
use acre_engine::clock::{Clock, Time};
use acre_txn::config::Configuration;
use std::collections::{BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often a leading driver looks at the lease thread's suspects once a lease may have
/// expired, and at an install's outcome while one is under way (module docs, "Threads").
pub const SUSPECT_POLL: Duration = Duration::from_millis(5);
/// How long a driver waits at most for an envelope: how late it notices that its replica
/// leads (against Raft's election timeout of 300 ms or more), and how long [`CmDriver::stop`]
/// takes at most.
pub const LEADERSHIP_POLL: Duration = Duration::from_millis(250);
/// How long after the earliest lease's end a leading driver first looks for the suspicion:
/// the lease thread publishes it at that end, on its own wake-up.
const WAIT_SLACK: Duration = Duration::from_millis(1);
/// How long after a stand-down the driver does not act as CM even if its replica still leads.
pub const STAND_DOWN_HOLD: Duration = Duration::from_secs(1);
/// How long one install proposal waits for Raft; a timeout is reported as lost, which the
/// manager proposes again a bounded number of times.
pub const INSTALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(2);
/// Envelopes looped back to this node in one turn (the CM's own member): a bound that a
/// correct exchange never reaches (NEW-CONFIG, its ack, the commit).
const LOOPBACK_MAX: usize = 64;

const POISONED: &str = "a thread panicked while holding the driver's history lock";

/// What the driver calls to fence a removed node before NEW-CONFIG-COMMIT (module docs).
pub type Fence = Box<dyn Fn(NodeId) -> Result<(), String> + Send>;

/// The CM's side of a driver: the process hosts a CM replica.
pub struct CmSeat {
    pub group: Arc<CmGroup>,
    /// The channel [`CmGroup::start`] returned.
    pub routed: mpsc::Receiver<LinkMessage>,
    pub timing: ManagerTiming,
    pub fence: Fence,
    /// Every memory node the cluster has had (the cluster file's). A driver that becomes the
    /// CM fences those its configuration does not list before its first commit: a previous CM
    /// may have installed the configuration that removed them and lost its leadership before
    /// it fenced them, and Raft keeps no record of which removals were fenced.
    pub known_nodes: Vec<NodeId>,
}

/// Where the driver reads its envelopes from.
pub enum Source {
    /// The process hosts a CM replica, whose thread reads the inbox.
    Cm(CmSeat),
    /// The process hosts none: the driver reads the links' inbox itself.
    Inbox(Inbox),
    /// The process hosts none yet, but may be made one of the group's replicas: the driver
    /// reads the links' inbox, and when a Raft message arrives (the leader added this node to
    /// the group, module docs "Joining the group") hands the inbox to `join`, which starts the
    /// replica and gives the seat back, or the inbox when it cannot.
    Joinable { inbox: Inbox, join: Join },
}

/// Starts this process's CM replica when the group's leader adds it ([`Source::Joinable`]):
/// given the links' inbox and the node whose Raft message arrived, the seat of the replica it
/// started, or the inbox back (the sender is no node of the node's configuration, or the
/// replica cannot start: the driver goes on without one and tries again at the next message).
pub type Join = Box<dyn FnMut(Inbox, NodeId) -> Result<CmSeat, Inbox> + Send>;

/// What a driver is started with.
pub struct DriverOptions {
    pub node: NodeId,
    pub clock: Clock,
    /// The lease length every lease thread of the cluster uses.
    pub lease: Duration,
    /// Where the lease thread with the CM's role listens, for every node that may be CM:
    /// where a node's lease thread asks for its lease after it adopted a configuration.
    pub cm_lease_addrs: CmLeaseAddrs,
    pub install_timeout: Duration,
}

/// Where each CM replica's lease thread listens, looked up each time a node follows a CM: a
/// replica whose process restarted (`acre cluster up` on a cluster that lost it) listens at a
/// new address, and may lead again in the same configuration. Members that kept the address
/// their process started with renewed at the dead one and were removed once the new CM's
/// grace ran out.
#[derive(Clone)]
pub struct CmLeaseAddrs(Arc<dyn Fn(NodeId) -> Option<SocketAddr> + Send + Sync>);

impl CmLeaseAddrs {
    /// Addresses that never change (tests, in-process clusters).
    pub fn fixed(addrs: Vec<(NodeId, SocketAddr)>) -> CmLeaseAddrs {
        CmLeaseAddrs(Arc::new(move |node| {
            addrs.iter().find(|(n, _)| *n == node).map(|&(_, a)| a)
        }))
    }

    /// Addresses `lookup` finds anew at every call (a node process reads the manifests).
    pub fn lookup(
        lookup: impl Fn(NodeId) -> Option<SocketAddr> + Send + Sync + 'static,
    ) -> CmLeaseAddrs {
        CmLeaseAddrs(Arc::new(lookup))
    }

    pub fn get(&self, node: NodeId) -> Option<SocketAddr> {
        (self.0)(node)
    }
}

/// An operator's request to the CM, and where its answer goes: whether a reconfiguration
/// started, or why it was refused.
/// An asker that stopped waiting (its deadline passed) has answered "no answer" already: the
/// request is dropped, not carried out against that answer.
type AdminRequest = (
    Change,
    std::time::Instant,
    mpsc::SyncSender<Result<bool, String>>,
);

/// A process's reconfiguration thread (module docs). Dropping it stops the thread.
pub struct CmDriver {
    node: NodeId,
    /// Operators' removal requests, for the manager (taken at every turn).
    admin: Mutex<mpsc::Sender<AdminRequest>>,
    /// The configuration this process's manager last committed.
    committed: Arc<Mutex<Option<Arc<Configuration>>>>,
    stopping: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Reconfiguration>>>,
    thread: Option<JoinHandle<()>>,
}

impl CmDriver {
    /// Starts the thread. `lease_thread` is this process's; `links` are the process's links,
    /// whose inbox is in `source` (directly, or behind the CM group). Fails only when the
    /// thread cannot be spawned (out of threads or memory: nothing was started, retry later or
    /// stop the process). Panics if `links` are another node's (the caller's bug).
    pub fn start<A: Adopter + Send + 'static>(
        options: DriverOptions,
        links: Arc<Links>,
        lease_thread: Arc<LeaseThread>,
        adopter: A,
        source: Source,
    ) -> std::io::Result<CmDriver> {
        assert_eq!(
            links.me(),
            options.node,
            "links={} driver={}",
            links.me(),
            options.node
        );
        let stopping = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(Vec::new()));
        let node = options.node;
        let (admin, admin_requests) = mpsc::channel();
        let committed = Arc::new(Mutex::new(None));
        let mut joiner = None;
        let (cm, inbox) = match source {
            Source::Cm(seat) => (Some(CmState::new(node, seat)), None),
            Source::Inbox(inbox) => (None, Some(inbox)),
            Source::Joinable { inbox, join } => {
                joiner = Some(join);
                (None, Some(inbox))
            }
        };
        let turn = Turn {
            admin_requests,
            committed: committed.clone(),
            member: Member::new(node, adopter),
            cm,
            inbox,
            joiner,
            links,
            lease_thread,
            loopback: VecDeque::new(),
            history: history.clone(),
            stopping: stopping.clone(),
            options,
        };
        let thread = std::thread::Builder::new()
            .name(format!("cm-driver-{}", node.0))
            .spawn(move || turn.run())?;
        Ok(CmDriver {
            node,
            admin: Mutex::new(admin),
            committed,
            stopping,
            history,
            thread: Some(thread),
        })
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Asks this process's manager for `change` ([`Manager::change`]) and waits at most
    /// `timeout` for it to accept or refuse, with the reason. Accepted, it says whether a
    /// reconfiguration started (it then runs on; its outcome is in [`CmDriver::history`]) or
    /// there was nothing to do.
    pub fn change(&self, change: Change, timeout: Duration) -> Result<bool, String> {
        let (reply, answer) = mpsc::sync_channel(1);
        // Real time, as the wait below: the asker's patience, not a protocol timeout.
        let deadline = std::time::Instant::now() + timeout;
        self.admin
            .lock()
            .expect(POISONED)
            .send((change, deadline, reply))
            .map_err(|_| "the CM driver has stopped".to_string())?;
        answer
            .recv_timeout(timeout)
            .map_err(|_| format!("the CM driver did not answer within {timeout:?}"))?
    }

    /// The configuration this process's manager last committed (`None` unless it led and
    /// committed one).
    pub fn committed(&self) -> Option<Arc<Configuration>> {
        self.committed.lock().expect(POISONED).clone()
    }

    /// The reconfigurations this process's manager finished, oldest first (empty unless it led).
    pub fn history(&self) -> Vec<Reconfiguration> {
        self.history.lock().expect(POISONED).clone()
    }

    /// Stops the thread and waits for it: at most about [`LEADERSHIP_POLL`] plus the turn under
    /// way. An install's helper thread is not waited for: it ends on its own within
    /// [`DriverOptions::install_timeout`], and its outcome goes nowhere.
    pub fn stop(mut self) {
        self.join();
    }

    fn join(&mut self) {
        self.stopping.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(node = %self.node, "the CM driver thread panicked");
        }
    }
}

impl Drop for CmDriver {
    fn drop(&mut self) {
        self.join();
    }
}

impl std::fmt::Debug for CmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmDriver")
            .field("node", &self.node)
            .finish()
    }
}

/// The manager's part of the thread's state.
struct CmState {
    manager: Manager,
    seat: CmSeat,
    /// Where the outcome of the install under way comes. Dropped when the leadership is
    /// lost, so a late outcome goes nowhere.
    install: Option<mpsc::Receiver<Result<Configuration, InstallError>>>,
    /// The members last handed to the lease thread.
    lease_members: Vec<NodeId>,
    /// Whether the next lease update is the first since this driver became leader.
    first_update: bool,
    /// Nodes removed since the last fence, to fence before the next commit.
    removed: BTreeSet<NodeId>,
    /// The configuration whose commit the removed nodes were fenced for.
    fenced_for: Option<u64>,
    /// No acting as CM before then (after a stand-down).
    hold_until: Option<Time>,
}

impl CmState {
    fn new(node: NodeId, seat: CmSeat) -> CmState {
        CmState {
            manager: Manager::new(node, seat.timing),
            seat,
            install: None,
            lease_members: Vec::new(),
            first_update: false,
            removed: BTreeSet::new(),
            fenced_for: None,
            hold_until: None,
        }
    }
}

/// Everything the thread's loop touches, owned by it.
struct Turn<A> {
    options: DriverOptions,
    admin_requests: mpsc::Receiver<AdminRequest>,
    committed: Arc<Mutex<Option<Arc<Configuration>>>>,
    member: Member<A>,
    cm: Option<CmState>,
    inbox: Option<Inbox>,
    /// Starts a replica in this process when the group adds it ([`Source::Joinable`]).
    joiner: Option<Join>,
    links: Arc<Links>,
    lease_thread: Arc<LeaseThread>,
    /// Envelopes for this node itself, handled in the same turn.
    loopback: VecDeque<(NodeId, Body)>,
    history: Arc<Mutex<Vec<Reconfiguration>>>,
    stopping: Arc<AtomicBool>,
}

impl<A: Adopter> Turn<A> {
    fn run(mut self) {
        while !self.stopping.load(Ordering::Acquire) {
            let now = self.options.clock.now();
            self.follow_leadership(now);
            self.poll_cm(now);
            self.take_admin_requests(now);
            let wait = self.wait();
            if let Some((from, body)) = self.receive(wait) {
                self.handle(from, body);
            }
            let now = self.options.clock.now();
            if let Some(reply) = self.member.tick(now) {
                self.send(reply.0, reply.1);
            }
            if let Some(report) = self.member.recovery_report(now) {
                self.send(report.0, report.1);
            }
            if let Some(cm) = self.cm.as_mut() {
                let actions = cm.manager.tick(now);
                self.execute(actions);
            }
            self.drain_loopback();
            self.publish_history();
        }
    }

    /// How long to wait for an envelope (module docs, "Threads").
    fn wait(&self) -> Duration {
        let mut wait = LEADERSHIP_POLL;
        if let Some(cm) = self.cm.as_ref().filter(|cm| cm.manager.is_leader()) {
            // Until the earliest lease can have expired (a suspicion cannot come sooner), then
            // every SUSPECT_POLL until it is renewed or suspected; an install's outcome is
            // polled too.
            let earliest = cm
                .lease_members
                .iter()
                .filter(|&&n| n != self.options.node)
                .filter_map(|&n| self.lease_thread.node_lease_until(n))
                .min();
            wait = match earliest {
                _ if cm.install.is_some() => SUSPECT_POLL,
                Some(until) => self
                    .options
                    .clock
                    .real_duration_until(until)
                    .saturating_add(WAIT_SLACK)
                    .clamp(SUSPECT_POLL, LEADERSHIP_POLL),
                None => LEADERSHIP_POLL,
            };
        }
        let deadlines = [
            self.member.next_deadline(),
            self.cm.as_ref().and_then(|cm| cm.manager.next_deadline()),
        ];
        for deadline in deadlines.into_iter().flatten() {
            wait = wait.min(self.options.clock.real_duration_until(deadline));
        }
        wait
    }

    fn receive(&mut self, wait: Duration) -> Option<(NodeId, Body)> {
        if let Some(cm) = &self.cm {
            return match cm.seat.routed.recv_timeout(wait) {
                Ok(message) => Some((message.from, message.body)),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // The group stopped routing (it was shut down): wait as if idle.
                    std::thread::sleep(wait);
                    None
                }
            };
        }
        let inbox = self.inbox.as_ref()?;
        match inbox.recv_timeout(wait) {
            Ok(incoming) => match Envelope::decode_from(&incoming.payload) {
                Ok(body) => Some((incoming.from, body)),
                Err(e) => {
                    tracing::warn!(node = %self.options.node, from = %incoming.from, "dropped a CM link message: {e}");
                    None
                }
            },
            Err(RecvError::Timeout) => None,
            Err(RecvError::Closed) => {
                std::thread::sleep(wait);
                None
            }
        }
    }

    /// Takes or gives up the manager's role as the replica's leadership changed.
    fn follow_leadership(&mut self, now: Time) {
        let Some(cm) = self.cm.as_mut() else {
            return;
        };
        let leading = cm.seat.group.is_leader();
        if cm.manager.is_leader() && !leading {
            tracing::info!(node = %self.options.node, "no longer the CM leader");
            // No grant from here on: the new CM counts leases from its own grants.
            self.lease_thread.resign();
            cm.manager.lost_leadership();
            cm.install = None;
            return;
        }
        if !leading || cm.manager.is_leader() {
            return;
        }
        if cm.hold_until.is_some_and(|until| now < until) {
            return;
        }
        let Some(config) = cm.seat.group.configuration() else {
            return; // Nothing installed yet: the first configuration comes from the operator.
        };
        tracing::info!(node = %self.options.node, id = config.id, "acting as CM");
        cm.lease_members = config.leased().collect();
        cm.first_update = true;
        // Removals a previous CM may not have fenced (CmSeat::known_nodes).
        let unlisted: Vec<NodeId> = cm
            .seat
            .known_nodes
            .iter()
            .copied()
            .filter(|&n| !config.leased().any(|m| m == n))
            .collect();
        cm.removed.extend(unlisted);
        // Suspicions published before this process led are stale; and a suspicion this
        // replica stood down from earlier is not reported again by its lease table, which only
        // a new configuration resets: a lease of grace for every member from now, after which
        // a silent one is suspected (again). After a whole-cluster restart this is what lets
        // members still starting from their files ask for a lease. The lease thread clears
        // the stale suspects when it applies the regrace, and `poll_cm` takes none until then:
        // clearing them here could miss one the thread publishes in the same instant.
        self.lease_thread.regrace();
        self.lease_thread.suspects().take(|_| {});
        let actions = cm.manager.became_leader((*config).clone(), now);
        self.execute(actions);
    }

    /// Operators' requests: answered at once, refused unless this process acts as CM.
    fn take_admin_requests(&mut self, now: Time) {
        while let Ok((change, deadline, reply)) = self.admin_requests.try_recv() {
            if std::time::Instant::now() >= deadline {
                tracing::warn!(?change, "a request whose asker stopped waiting: dropped");
                continue;
            }
            let result = match self.cm.as_mut() {
                Some(cm) => cm.manager.change(change.clone(), now),
                None => Err("this process hosts no CM replica".into()),
            };
            match result {
                Ok(actions) => {
                    tracing::info!(?change, "changing the configuration on request");
                    let _ = reply.send(Ok(!actions.is_empty()));
                    self.execute(actions);
                }
                Err(reason) => {
                    let _ = reply.send(Err(reason));
                }
            }
        }
    }

    /// The lease thread's suspects and the install's outcome.
    fn poll_cm(&mut self, now: Time) {
        let Some(cm) = self.cm.as_mut() else {
            return;
        };
        if !cm.manager.is_leader() {
            return;
        }
        let mut actions = Vec::new();
        let manager = &mut cm.manager;
        // Until the lease thread applied the regrace of `follow_leadership`, what it published
        // was judged without the grace (and it clears it when it applies the regrace).
        if !self.lease_thread.regrace_pending() {
            self.lease_thread.suspects().take(|node| {
                tracing::info!(%node, "lease expired; suspecting it");
                actions.extend(manager.suspect(node, now));
            });
        }
        if let Some(outcome) = &cm.install {
            match outcome.try_recv() {
                Ok(result) => {
                    cm.install = None;
                    if let Err(e) = &result {
                        tracing::warn!("install through Raft failed: {e}");
                    }
                    actions.extend(
                        cm.manager
                            .install_outcome(InstallError::outcome(result), now),
                    );
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    cm.install = None;
                    actions.extend(
                        cm.manager
                            .install_outcome(InstallError::outcome(Err(InstallError::Lost)), now),
                    );
                }
            }
        }
        self.execute(actions);
    }

    fn handle(&mut self, from: NodeId, body: Body) {
        let now = self.options.clock.now();
        match body {
            Body::Probe(nonce) => self.send(from, Body::ProbeReply(nonce)),
            Body::ProbeReply(nonce) => {
                if let Some(cm) = self.cm.as_mut() {
                    let actions = cm.manager.probe_reply(from, nonce, now);
                    self.execute(actions);
                }
            }
            Body::NewConfigAck(ack) => {
                if let Some(cm) = self.cm.as_mut() {
                    let actions = cm.manager.ack(from, &ack, now);
                    self.execute(actions);
                }
            }
            body @ (Body::NewConfig(_) | Body::NewConfigCommit(_)) => {
                let before = self.member.adopter().current_id();
                let reply = self.member.receive(from, &body, now);
                let after = self.member.adopter().current_id();
                // Also the configuration the node has already, from a CM that distributes it
                // again: a node restarted in it learns its CM so (a new leader that led before
                // keeps the id it committed last, and its first configuration is no newer).
                if let Body::NewConfig(message) = &body
                    && let Ok(config) = Configuration::try_from(message)
                    && (after > before || config.id == after)
                {
                    self.lease_follows(&config);
                }
                if let Some((to, reply)) = reply {
                    self.send(to, reply);
                }
            }
            Body::RegionsRecovered(report) => self.regions_recovered(from, &report, now),
            Body::Raft(_) => {
                if !self.join_group(from) {
                    tracing::debug!(%from, "a Raft message reached a process without a replica; dropped");
                }
            }
        }
    }

    /// The group's leader added this node (its Raft message arrived): starts the replica
    /// through the joiner and takes the seat. The message is dropped; Raft sends again.
    fn join_group(&mut self, from: NodeId) -> bool {
        let (Some(join), None) = (self.joiner.as_mut(), self.cm.as_ref()) else {
            return false;
        };
        let Some(inbox) = self.inbox.take() else {
            return false;
        };
        match join(inbox, from) {
            Ok(seat) => {
                tracing::info!(node = %self.options.node, %from, "added to the CM group: its replica runs");
                self.cm = Some(CmState::new(self.options.node, seat));
                self.joiner = None;
                true
            }
            Err(inbox) => {
                self.inbox = Some(inbox);
                false
            }
        }
    }

    /// A member's report of regions it recovered and of copies it completed: for the manager
    /// to make the regions active and count the copies complete ([`Change::Activate`]), as an
    /// operator's change is run. Ignored unless this process acts as CM; the member reports
    /// again until its configuration shows them done.
    fn regions_recovered(&mut self, from: NodeId, report: &RegionsRecovered, now: Time) {
        let Some(cm) = self.cm.as_mut().filter(|cm| cm.manager.is_leader()) else {
            tracing::debug!(%from, "a recovery report reached a process that does not act as CM; ignored");
            return;
        };
        if !report.damaged.is_empty() {
            // First: a damaged copy must not stay primary, nor be promoted. What else the
            // report says, the node says again in the configuration that follows.
            let change = Change::DamagedCopies {
                config: report.config,
                node: from,
                regions: report.damaged.iter().copied().map(RegionId).collect(),
            };
            match cm.manager.change(change.clone(), now) {
                Ok(actions) => {
                    if !actions.is_empty() {
                        tracing::warn!(%from, ?change, "a node holds damaged copies the configuration counts complete: moving its primaries to intact backups, copying its backups again");
                    }
                    self.execute(actions);
                }
                Err(reason) => {
                    tracing::warn!(%from, ?change, %reason, "a report of damaged copies was refused");
                }
            }
            return;
        }
        let regions: Vec<RegionId> = report.regions.iter().copied().map(RegionId).collect();
        let copied: Vec<RegionId> = report.copied.iter().copied().map(RegionId).collect();
        if let Some(config) = cm.manager.configuration().filter(|c| c.id == report.config)
            && let Some((what, foreign)) = misdirected(config, from, &regions, &copied)
        {
            tracing::warn!(%from, ?foreign, id = report.config, "a report of {what}; ignored");
            return;
        }
        let change = Change::Activate {
            config: report.config,
            regions,
            node: Some(from),
            copied,
        };
        match cm.manager.change(change.clone(), now) {
            Ok(actions) => {
                if !actions.is_empty() {
                    tracing::info!(%from, ?change, "activating recovered regions, counting completed copies");
                }
                self.execute(actions);
            }
            Err(reason) => {
                tracing::warn!(%from, ?change, %reason, "a recovery report was refused");
            }
        }
    }

    /// The node's lease thread asks the CM of `config` (the member adopted it).
    fn lease_follows(&self, config: &Configuration) {
        let Some(cm) = config.cm_leader else {
            return;
        };
        let Some(cm_addr) = self.options.cm_lease_addrs.get(cm) else {
            tracing::warn!(%cm, "no lease address known for the CM; the node's lease will lapse");
            return;
        };
        let members: Vec<NodeId> = config.leased().collect();
        self.lease_thread.set_configuration(&NewConfiguration {
            config: config.id,
            cm,
            cm_addr,
            members: &members,
        });
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            let more = self.execute_one(action);
            // An action's follow-ups (a lease update's commit) go the same way, bounded by the
            // manager: each is a step of a protocol that ends.
            if !more.is_empty() {
                self.execute(more);
            }
        }
    }

    fn execute_one(&mut self, action: Action) -> Vec<Action> {
        let now = self.options.clock.now();
        let node = self.options.node;
        let Some(cm) = self.cm.as_mut() else {
            unreachable!("a driver without a CM seat has no manager to act for");
        };
        match action {
            Action::SendProbe { to, nonce } => self.send(to, Body::Probe(nonce)),
            Action::SendNewConfig { to, configuration } => self.send(
                to,
                Body::NewConfig(ConfigurationMessage::from(&*configuration)),
            ),
            Action::SendNewConfigCommit { to, id } => {
                if cm.fenced_for != Some(id) {
                    let fence = &cm.seat.fence;
                    let mut failed = Vec::new();
                    for &removed in &cm.removed {
                        if let Err(reason) = fence(removed) {
                            tracing::error!(%removed, %reason, id, "could not fence a removed node; NEW-CONFIG-COMMIT waits");
                            failed.push(removed);
                        }
                    }
                    if !failed.is_empty() {
                        cm.removed = failed.into_iter().collect();
                        return Vec::new();
                    }
                    cm.removed.clear();
                    cm.fenced_for = Some(id);
                }
                self.send(to, Body::NewConfigCommit(id));
            }
            Action::ProposeInstall {
                expected_id,
                configuration,
            } => {
                assert!(cm.install.is_none(), "an install is already under way");
                let (sender, receiver) = mpsc::sync_channel(1);
                let group = cm.seat.group.clone();
                let timeout = self.options.install_timeout;
                let spawned = std::thread::Builder::new()
                    .name(format!("cm-install-{}", node.0))
                    .spawn(move || {
                        let result = group.propose_install(expected_id, &configuration, timeout);
                        // The driver may have moved on (lost leadership): nobody listens then.
                        let _ = sender.send(result);
                    });
                match spawned {
                    Ok(_) => cm.install = Some(receiver),
                    Err(e) => {
                        tracing::warn!("could not start an install thread: {e}");
                        return cm
                            .manager
                            .install_outcome(InstallError::outcome(Err(InstallError::Lost)), now);
                    }
                }
            }
            Action::UpdateLeaseMembers { configuration } => {
                let members: Vec<NodeId> = configuration.leased().collect();
                let removed: Vec<NodeId> = cm
                    .lease_members
                    .iter()
                    .copied()
                    .filter(|n| !members.contains(n))
                    .collect();
                // Read before the update: the lease thread forgets the removed nodes after it.
                let unknown = now + self.options.lease;
                let mut removed_until = now;
                for &gone in &removed {
                    let until = match self.lease_thread.node_lease_until(gone) {
                        Some(until) if !cm.first_update => until,
                        Some(until) => until.max(unknown),
                        None => unknown,
                    };
                    removed_until = removed_until.max(until);
                }
                let own_addr = self.lease_thread.local_addr();
                let cm_addr = self.options.cm_lease_addrs.get(node).unwrap_or(own_addr);
                self.lease_thread.set_configuration(&NewConfiguration {
                    config: configuration.id,
                    cm: node,
                    cm_addr,
                    members: &members,
                });
                cm.lease_members = members;
                cm.first_update = false;
                cm.removed.extend(removed);
                return cm
                    .manager
                    .leases_updated(configuration.id, removed_until, now);
            }
            Action::StandDown { reason } => {
                tracing::warn!(%node, %reason, "the CM stands down");
                cm.hold_until = Some(now + STAND_DOWN_HOLD);
                cm.install = None;
                // The group's voters as Raft applied them (they change, docs/failures.md).
                let voters = cm.seat.group.status().voters;
                let transferred = voters
                    .iter()
                    .filter(|&&v| v != node)
                    .find(|&&to| cm.seat.group.transfer_leadership(to).is_ok());
                if transferred.is_none() {
                    tracing::warn!(%node, "no replica took the leadership; this one leads on without acting as CM for a while");
                }
            }
        }
        Vec::new()
    }

    /// Sends `body` to `to`, looping it back when `to` is this node.
    fn send(&mut self, to: NodeId, body: Body) {
        if to == self.options.node {
            if self.loopback.len() < LOOPBACK_MAX {
                self.loopback.push_back((to, body));
            } else {
                tracing::warn!(%to, "loopback queue full; envelope dropped (it is sent again)");
            }
            return;
        }
        if let Err(e) = self.links.send(to, Envelope::new(body).encode()) {
            // Lossy by design: every sender here resends (manager.rs, member.rs).
            tracing::debug!(%to, "CM link send refused: {e}");
        }
    }

    fn drain_loopback(&mut self) {
        for _ in 0..LOOPBACK_MAX {
            let Some((from, body)) = self.loopback.pop_front() else {
                return;
            };
            self.handle(from, body);
        }
    }

    fn publish_history(&self) {
        let Some(cm) = &self.cm else {
            return;
        };
        let committed = cm.manager.last_committed();
        let mut published = self.committed.lock().expect(POISONED);
        if published.as_ref().map(|c| c.id) != committed.map(|c| c.id) {
            *published = committed.cloned();
        }
        drop(published);
        let count = cm.manager.history().count();
        let mut history = self.history.lock().expect(POISONED);
        if history.len() != count
            || history.last().map(|r| (r.from_id, r.outcome.clone()))
                != cm
                    .manager
                    .history()
                    .last()
                    .map(|r| (r.from_id, r.outcome.clone()))
        {
            *history = cm.manager.history().cloned().collect();
        }
    }
}
/// What in a report from `from` in `config` names regions not its own, if anything: recovered
/// regions it is not primary of, or copies of regions whose `copying` list does not name it.
/// Only a region's primary recovers it (activating on another node's word could serve a region
/// whose locks nobody took again), and only a copying backup completes its copy (counting
/// another node's word would make a backup promotable whose copy may lack committed writes).
fn misdirected(
    config: &Configuration,
    from: NodeId,
    regions: &[RegionId],
    copied: &[RegionId],
) -> Option<(&'static str, Vec<RegionId>)> {
    let foreign = |regions: &[RegionId], own: &dyn Fn(&acre_txn::config::Placement) -> bool| {
        let foreign: Vec<RegionId> = regions
            .iter()
            .copied()
            .filter(|&r| config.placement(r).is_some_and(|p| !own(p)))
            .collect();
        (!foreign.is_empty()).then_some(foreign)
    };
    if let Some(regions) = foreign(regions, &|p| p.primary == from) {
        return Some(("recovered regions the sender is not primary of", regions));
    }
    foreign(copied, &|p| p.copying.contains(&from)).map(|regions| {
        (
            "completed copies of regions the sender does not copy",
            regions,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regions r1..r3 on n1..n3 (region k's primary is node k, its backup node k+1), n3
    /// copying r2.
    fn config() -> Configuration {
        let nodes = (1..=3).map(NodeId).collect();
        let mut config = Configuration::place(4, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap();
        let r2 = config
            .regions
            .iter_mut()
            .find(|p| p.region == RegionId(2))
            .unwrap();
        assert_eq!(r2.backups, [NodeId(3)], "{r2:?}");
        r2.copying = vec![NodeId(3)];
        config
    }

    #[test]
    fn a_report_counts_only_its_senders_own_regions_and_copies() {
        let config = config();
        let r = |ids: &[u32]| -> Vec<RegionId> { ids.iter().copied().map(RegionId).collect() };
        assert_eq!(misdirected(&config, NodeId(3), &r(&[3]), &r(&[2])), None);
        assert_eq!(
            misdirected(&config, NodeId(2), &r(&[]), &r(&[2])),
            Some((
                "completed copies of regions the sender does not copy",
                r(&[2])
            )),
            "the primary of r2 is no copying backup"
        );
        assert_eq!(
            misdirected(&config, NodeId(3), &r(&[2, 3]), &r(&[])),
            Some(("recovered regions the sender is not primary of", r(&[2])))
        );
        // Regions the configuration does not hold are the manager's to refuse.
        assert_eq!(misdirected(&config, NodeId(3), &r(&[9]), &r(&[9])), None);
    }
}
