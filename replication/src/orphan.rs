//! Transactions whose client coordinator died, "orphans" (docs/failures.md#a-client-that-dies):
//! how the memory nodes settle what a killed client left half-way, so that its locks and the
//! records pinning its rings do not block the cluster.
//!
//! The worker ([`crate::worker`]) finds them: the transactions it keeps records of whose
//! coordinator is a client that is gone ([`crate::liveness`]), once it has read everything
//! already in that client's ring. The [`Resolver`], a thread of its own so that no wait for a
//! peer is ever on the worker's path, asks every other participant (every replica of every
//! region the transaction writes, as its LOCK and COMMIT-BACKUP records list them) what it holds
//! of the transaction, with a REQUEST-VOTE record. A participant first reads everything in the
//! client's ring at its node (a COMMIT-BACKUP does not wake it, so one may be unread), then
//! answers with the records it holds ([`vote`] bits), and from then on refuses the
//! transaction's LOCK, COMMIT-BACKUP and COMMIT-PRIMARY records: one arriving later is an
//! append of the dead client still on its way (over tcp, bytes in a socket), which the client
//! cannot have seen acknowledged, so nothing it did depends on it. Every vote is therefore final,
//! and every participant that asks gets the same answers and reaches the same [`decide`]:
//!
//! - **Commit-primary anywhere**: the transaction committed (docs/protocol.md#commit-primary,
//!   CP.5). A primary that missed its COMMIT-PRIMARY installs from its LOCK, as the record would
//!   have made it; once every primary holds COMMIT-PRIMARY, each participant truncates the
//!   transaction (a backup applies it), which is what the coordinator's TRUNCATE would have done.
//! - **No COMMIT-BACKUP or COMMIT-PRIMARY anywhere**: the coordinator never decided to commit
//!   (COMMIT-BACKUP is sent only after every vote and validation), or decided and told nobody;
//!   every primary aborts it: unlocks, hands back its reservations, drops its LOCK.
//! - **COMMIT-BACKUP at every backup of every region, no COMMIT-PRIMARY**: the coordinator
//!   decided to commit, and every replica holds the values (the primaries' LOCKs, the
//!   backups' COMMIT-BACKUPs): what recovery would decide (docs/failures.md#decision), with
//!   nothing to copy first. The primaries install, then the participants truncate.
//! - **COMMIT-BACKUP at some backups only, no COMMIT-PRIMARY**: the coordinator decided to
//!   commit, nobody was told, and some backups lack the values. Each replica holding them
//!   copies the entries to the replicas that lack them, as a COPY record (recovery's
//!   "replicate the records", docs/failures.md#replicate-the-records); once every backup
//!   holds them, as above.
//! - A participant that did not answer (down, paused, or not yet seeing the client gone): ask
//!   again after [`ORPHAN_RETRY_AFTER`]; meanwhile the transaction keeps its locks, blocking
//!   only its own objects, and is reported once.
//! - Votes that make no sense together (a bug) are reported and left to recovery.

use crate::backup::Backup;
use acre_engine::addr::{NodeId, RegionId};
use acre_txn::TxnNode;
use acre_txn::config::Configuration;
use acre_txn::record::{Body, ReplyTo, TxnId, TxnRecord};
use acre_txn::reply::{Code, REPLIES_PER_TXN_MAX, vote};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the resolver waits for the participants' votes of one round.
pub const VOTE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a worker looks for transactions of clients that are gone.
pub const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// How long before a transaction whose votes did not all come (or that waits for the other
/// primaries to install it) is asked about again.
pub const ORPHAN_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Transactions whose votes a node remembers (that it refuses records of, and what it decided
/// for them), oldest forgotten first: enough for the transactions of many dead clients, while
/// the late appends a vote guards against arrive within moments.
pub const VOTED_MAX: usize = 1 << 14;

/// What the worker hands the resolver: a transaction of a client that is gone, the regions it
/// writes, and what this node holds of it ([`vote`] bits).
#[derive(Clone, Debug)]
pub struct Orphan {
    pub txn: TxnId,
    pub regions: Vec<RegionId>,
    pub holds: u64,
    /// Whether backups still copying a region it writes must hold its values before anybody
    /// installs ([`decide`]): when it began in the configuration the node drained for and
    /// needs no recovery there (`Worker::copying_must_hold` says why).
    pub copying_must_hold: bool,
}

/// What the votes on an orphan say to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No participant holds COMMIT-BACKUP or COMMIT-PRIMARY: abort.
    Abort,
    /// Some primary holds COMMIT-PRIMARY, not every one, or every backup holds COMMIT-BACKUP:
    /// committed; a primary that holds only the LOCK installs.
    Install,
    /// Every primary holds COMMIT-PRIMARY (or truncated the transaction): truncate.
    Truncate,
    /// Some backups hold COMMIT-BACKUP, the `lacking` ones do not, and no primary holds
    /// COMMIT-PRIMARY: the coordinator decided to commit. Each primary copies its LOCK's
    /// entries to the lacking backups of its regions; once every backup holds them, `Install`.
    Copy { lacking: Vec<NodeId> },
    /// Votes that make no sense together: left to recovery, and why.
    Recovery { reason: String },
    /// `node` did not vote (why: `reason`): ask again later.
    Unanswered { node: NodeId, reason: String },
}

/// The outcome for one orphan.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub txn: TxnId,
    pub outcome: Outcome,
}

/// Every replica of every region in `regions` (primaries first), or the first region the
/// configuration does not have.
fn participants(config: &Configuration, regions: &[RegionId]) -> Result<Vec<NodeId>, RegionId> {
    let mut nodes = BTreeSet::new();
    for &region in regions {
        let placement = config.placement(region).ok_or(region)?;
        nodes.extend(placement.replicas());
    }
    Ok(nodes.into_iter().collect())
}

/// The outcome of a transaction writing `regions`, from every participant's vote (`Err`: why it
/// has none), the participants being the replicas of those regions in `config`. The same rule
/// settles the transactions of a client that died (module docs) and recovers those a
/// reconfiguration left half-done (docs/failures.md#decision), FaRM's per-region votes:
///
/// - nobody holds COMMIT-BACKUP, COMMIT-PRIMARY or a truncation: the coordinator never decided
///   to commit, or told nobody: **abort**;
/// - otherwise it decided to commit, and it commits if every region still has its values: a
///   replica holds its COMMIT-BACKUP, COMMIT-PRIMARY or LOCK, or the region truncated it
///   (said, or implied: a primary that held the LOCK role and holds nothing has truncated, since
///   a COMMIT-BACKUP is sent only after every primary voted on its LOCK, which it keeps until
///   truncation, and no transaction is aborted once a COMMIT-BACKUP may exist, ABORT.1). A
///   region without its values is FaRM's *unknown*: **abort**, unless one of its replicas
///   cannot tell whether it truncated the transaction (its memory does not reach back): left to
///   an operator (`Recovery`), never guessed; once a participant aborted it (ABORTED), the
///   others **abort** too, whatever COMMIT-BACKUP they hold (only a COMMIT-PRIMARY or a
///   truncation beside an abort is a contradiction, left to an operator);
/// - a commit proceeds in stages, one per round: the replicas lacking the values get them
///   copied (`Copy`), then the primaries install them (`Install`: from their LOCK, or a
///   promoted primary from its COMMIT-BACKUP), then everybody truncates (`Truncate`).
///
/// `copying_must_hold`: whether backups still copying a region count among the replicas that
/// must hold the values. They must when no configuration restarts their copies: a dead client's
/// transaction settled while a copy runs, whose object the copy may have read before the
/// transaction locked it (docs/failures.md#data-recovery). A transaction that needs recovery
/// was made so by a configuration that blocks a region or removes a member, which starts every
/// copy again, and the new copy's COPY-QUERY waits for the transaction to be settled; there
/// they are left out, as data recovery fills them.
pub fn decide(
    config: &Configuration,
    regions: &[RegionId],
    votes: &BTreeMap<NodeId, Result<u64, String>>,
    copying_must_hold: bool,
) -> Outcome {
    let nodes = match participants(config, regions) {
        Ok(nodes) if !nodes.is_empty() => nodes,
        Ok(_) => {
            return Outcome::Recovery {
                reason: "its records list no region".into(),
            };
        }
        Err(region) => {
            return Outcome::Recovery {
                reason: format!("its records name {region}, which the configuration lacks"),
            };
        }
    };
    let mut all = 0;
    for node in &nodes {
        match votes.get(node) {
            Some(Ok(bits)) => all |= bits,
            Some(Err(reason)) => {
                return Outcome::Unanswered {
                    node: *node,
                    reason: reason.clone(),
                };
            }
            None => {
                return Outcome::Unanswered {
                    node: *node,
                    reason: "not asked".into(),
                };
            }
        }
    }
    let bits = |node: &NodeId| match votes.get(node) {
        Some(Ok(bits)) => *bits,
        _ => 0,
    };
    if all & vote::ABORTED != 0 {
        if all & (vote::COMMIT_PRIMARY | vote::TRUNCATED) != 0 {
            // A commit that may have been reported, and an abort: never acted on.
            return Outcome::Recovery {
                reason: format!("its votes contradict each other: {votes:?}"),
            };
        }
        // A participant aborted it, which it did only if nobody held a COMMIT-BACKUP then or a
        // region had lost the values (a COMMIT-BACKUP elsewhere, as here, does not save it):
        // every participant voted before, so every vote since is final, and the rest abort too
        // rather than keep their records for good.
        return Outcome::Abort;
    }
    let decided_to_commit = all & (vote::COMMIT_PRIMARY | vote::TRUNCATED | vote::COMMIT_BACKUP);
    if decided_to_commit == 0 {
        return Outcome::Abort;
    }
    // A primary that held the LOCK role and holds nothing (no LOCK, not aborted) has truncated
    // the transaction; a promoted one's silence says nothing.
    let primary_done = |primary: &NodeId| {
        let bits = bits(primary);
        bits & (vote::COMMIT_PRIMARY | vote::TRUNCATED) != 0
            || bits & (vote::LOCK | vote::ABORTED | vote::NEW_PRIMARY) == 0
    };
    let mut lacking = BTreeSet::new();
    for (index, &region) in regions.iter().enumerate() {
        let placement = config.placement(region).expect("checked above");
        let replicas: Vec<NodeId> = placement.replicas().collect();
        let any = |bit: u64| replicas.iter().any(|node| bits(node) & bit != 0);
        // Whether the region's primary was promoted after the transaction locked: a LOCK it
        // holds is of another region.
        let promoted = bits(&placement.primary) & vote::new_primary_at(index) != 0;
        let truncated = any(vote::TRUNCATED) || primary_done(&placement.primary);
        let has_values = truncated
            || any(vote::COMMIT_BACKUP | vote::COMMIT_PRIMARY)
            || (!promoted && bits(&placement.primary) & vote::LOCK != 0);
        if !has_values {
            if any(vote::UNSURE) {
                return Outcome::Recovery {
                    reason: format!(
                        "{region} holds nothing of it and a replica cannot tell whether it \
                         truncated it"
                    ),
                };
            }
            // FaRM's "unknown" region: its values are gone with the replicas that held them,
            // and the coordinator cannot have reported a commit.
            return Outcome::Abort;
        }
        if truncated {
            // Every backup got its COMMIT-BACKUP before any truncation was sent; those holding
            // none have applied it.
            continue;
        }
        // Replicas that must hold the values before anybody installs: complete backups, copying
        // ones when `copying_must_hold`, and a promoted primary (it installs from a
        // COMMIT-BACKUP).
        let mut must_hold: Vec<NodeId> = placement
            .backups
            .iter()
            .filter(|backup| copying_must_hold || !placement.copying.contains(backup))
            .copied()
            .collect();
        if promoted {
            must_hold.push(placement.primary);
        }
        lacking.extend(must_hold.into_iter().filter(|node| {
            bits(node) & (vote::COMMIT_BACKUP | vote::COMMIT_PRIMARY | vote::TRUNCATED) == 0
        }));
    }
    let primaries: BTreeSet<NodeId> = regions
        .iter()
        .map(|&region| config.placement(region).expect("checked above").primary)
        .collect();
    if primaries.iter().all(primary_done) {
        Outcome::Truncate
    } else if !lacking.is_empty() {
        Outcome::Copy {
            lacking: lacking.into_iter().collect(),
        }
    } else {
        Outcome::Install
    }
}

/// Transactions a node has voted on: it refuses their LOCK, COMMIT-BACKUP and COMMIT-PRIMARY
/// records from then on, and remembers what it decided (ABORTED, TRUNCATED) to answer later
/// votes once their records are gone. Bounded by [`VOTED_MAX`], oldest forgotten first.
#[derive(Default)]
pub struct Voted {
    decided: HashMap<TxnId, u64>,
    order: VecDeque<TxnId>,
}

impl Voted {
    /// Records that this node voted on `txn` (it refuses its records from now on).
    pub fn vote(&mut self, txn: TxnId) {
        if self.decided.contains_key(&txn) {
            return;
        }
        if self.order.len() == VOTED_MAX
            && let Some(oldest) = self.order.pop_front()
        {
            self.decided.remove(&oldest);
        }
        self.decided.insert(txn, 0);
        self.order.push_back(txn);
    }

    /// Records what this node did with `txn` ([`vote::ABORTED`] or [`vote::TRUNCATED`]).
    pub fn decided(&mut self, txn: TxnId, bits: u64) {
        self.vote(txn);
        *self.decided.get_mut(&txn).expect("just voted") |= bits;
    }

    /// Whether this node voted on `txn` (and refuses its records).
    pub fn has_voted(&self, txn: TxnId) -> bool {
        self.decided.contains_key(&txn)
    }

    /// What this node decided for `txn`, as vote bits (0 if nothing).
    pub fn outcome(&self, txn: TxnId) -> u64 {
        self.decided.get(&txn).copied().unwrap_or(0)
    }
}

/// What the other replicas of a region a node is recovering said to its RECOVERY-QUERY
/// ([`crate::recovery`]).
#[derive(Clone, Debug)]
pub struct QueryAnswer {
    pub region: RegionId,
    /// The configuration the node asked in.
    pub config: u64,
    /// Every other replica answered, and holds no undecided transaction needing recovery that
    /// writes the region.
    pub quiet: bool,
}

/// Orphans and queries waiting to be asked about, and verdicts and answers waiting for the
/// worker.
#[derive(Default)]
struct Queue {
    orphans: VecDeque<Orphan>,
    verdicts: Vec<Verdict>,
    /// Regions to ask about, with the replicas to ask.
    queries: Vec<(RegionId, Vec<NodeId>)>,
    answers: Vec<QueryAnswer>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when orphans arrive or the resolver must stop.
    work: Condvar,
    /// The configuration the node's worker last drained its logs for: the one votes are asked
    /// and decided in (a node may have adopted a newer one it has not drained for yet).
    config: Mutex<Arc<Configuration>>,
}

impl Shared {
    fn config(&self) -> Arc<Configuration> {
        self.config.lock().expect(crate::POISONED).clone()
    }
}

/// The thread that asks the participants of orphans for their votes (see the module docs). It
/// sleeps on a condition variable while there is nothing to ask.
pub struct Resolver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    pub fn spawn(node: Arc<TxnNode>, backup: Arc<Backup>) -> std::io::Result<Resolver> {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            work: Condvar::new(),
            config: Mutex::new(node.config()),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("acre-orphans-{}", node.node_id()))
                .spawn(move || resolve(&node, &backup, &shared))?
        };
        Ok(Resolver {
            shared,
            thread: Some(thread),
        })
    }

    /// The worker drained its logs for `config`: votes are asked and decided in it from now on.
    pub fn drained(&self, config: Arc<Configuration>) {
        *self.shared.config.lock().expect(crate::POISONED) = config;
    }

    /// Queues orphans to ask about.
    pub fn submit(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        self.shared
            .queue
            .lock()
            .expect(crate::POISONED)
            .orphans
            .extend(orphans);
        self.shared.work.notify_one();
    }

    /// Asks `replicas` whether they hold undecided transactions needing recovery that write
    /// `region` (a RECOVERY-QUERY each); the answer comes with [`Self::answers`].
    pub fn query(&self, region: RegionId, replicas: Vec<NodeId>) {
        self.shared
            .queue
            .lock()
            .expect(crate::POISONED)
            .queries
            .push((region, replicas));
        self.shared.work.notify_one();
    }

    /// The answers to queries since the last call.
    pub fn answers(&self) -> Vec<QueryAnswer> {
        std::mem::take(&mut self.shared.queue.lock().expect(crate::POISONED).answers)
    }

    /// The verdicts reached since the last call.
    pub fn verdicts(&self) -> Vec<Verdict> {
        std::mem::take(&mut self.shared.queue.lock().expect(crate::POISONED).verdicts)
    }

    pub fn stop(&mut self) {
        self.shared.queue.lock().expect(crate::POISONED).stop = true;
        self.shared.work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn resolve(node: &TxnNode, backup: &Backup, shared: &Shared) {
    loop {
        let (mut batch, queries) = {
            let mut queue = shared.queue.lock().expect(crate::POISONED);
            while queue.orphans.is_empty() && queue.queries.is_empty() && !queue.stop {
                queue = shared.work.wait(queue).expect(crate::POISONED);
            }
            if queue.stop {
                return;
            }
            (
                std::mem::take(&mut queue.orphans),
                std::mem::take(&mut queue.queries),
            )
        };
        if !queries.is_empty() {
            let answers = query(node, &shared.config(), queries);
            shared
                .queue
                .lock()
                .expect(crate::POISONED)
                .answers
                .extend(answers);
            node.fabric().memory().doorbell().ring();
        }
        while !batch.is_empty() {
            let verdicts = ask(node, backup, &shared.config(), &mut batch);
            let mut queue = shared.queue.lock().expect(crate::POISONED);
            queue.verdicts.extend(verdicts);
            if queue.stop {
                return;
            }
            drop(queue);
            // The worker applies verdicts when it wakes.
            node.fabric().memory().doorbell().ring();
        }
    }
}

/// The votes on an orphan of a round so far (`Err`: why there is none), and the replies it
/// waits for: `(node, reply index)`.
type Asking = (
    Orphan,
    BTreeMap<NodeId, Result<u64, String>>,
    Vec<(NodeId, usize)>,
);

/// One round: asks the other participants of the first orphans of `batch` (as many as one reply
/// slot holds answers for, taking them off `batch`) and returns their verdicts.
fn ask(
    node: &TxnNode,
    backup: &Backup,
    config: &Arc<Configuration>,
    batch: &mut VecDeque<Orphan>,
) -> Vec<Verdict> {
    let me = node.node_id();
    let config = config.clone();
    let Some(lease) = node.replies().acquire() else {
        // This node's own coordinators hold every reply slot: the next round will find one.
        return batch
            .drain(..)
            .map(|orphan| Verdict {
                txn: orphan.txn,
                outcome: Outcome::Unanswered {
                    node: me,
                    reason: "every reply slot of this node is in use".into(),
                },
            })
            .collect();
    };
    let asker = TxnId {
        config: config.id,
        node: me,
        thread: lease.slot,
        seq: lease.seq,
    };
    let mut round: Vec<Asking> = Vec::new();
    let mut verdicts = Vec::new();
    let mut next_index = 0;
    while let Some(orphan) = batch.front() {
        let others: Vec<NodeId> = match participants(&config, &orphan.regions) {
            Ok(nodes) => nodes.into_iter().filter(|&n| n != me).collect(),
            Err(_) => Vec::new(), // `decide` says why
        };
        if others.len() > REPLIES_PER_TXN_MAX {
            let orphan = batch.pop_front().expect("front");
            verdicts.push(Verdict {
                txn: orphan.txn,
                outcome: Outcome::Recovery {
                    reason: format!("its {} participants are too many to ask", others.len()),
                },
            });
            continue;
        }
        if next_index + others.len() > REPLIES_PER_TXN_MAX {
            break; // the next round asks about it
        }
        let orphan = batch.pop_front().expect("front");
        let mut votes = BTreeMap::new();
        votes.insert(me, Ok(orphan.holds));
        let mut waits = Vec::new();
        for other in others {
            let index = next_index;
            next_index += 1;
            let record = TxnRecord {
                txn: asker,
                reply: node.replies().reply_to(lease.slot, index),
                truncated: Vec::new(),
                body: Body::RequestVote {
                    txn: orphan.txn,
                    regions: orphan.regions.clone(),
                },
            };
            match node.links().send_one(other, record) {
                Ok(()) => waits.push((other, index)),
                Err(e) => {
                    votes.insert(other, Err(format!("cannot ask it: {e}")));
                }
            }
        }
        round.push((orphan, votes, waits));
    }
    let indexes: Vec<usize> = round
        .iter()
        .flat_map(|(_, _, waits)| waits.iter().map(|&(_, index)| index))
        .collect();
    // Whatever is missing after the wait is polled once more below, reply by reply.
    let _ = node
        .replies()
        .wait(lease.slot, lease.seq, &indexes, VOTE_TIMEOUT);
    let mut outstanding = false;
    for (orphan, mut votes, waits) in round {
        for (other, index) in waits {
            let vote = match node.replies().poll(lease.slot, lease.seq, index) {
                Some(reply) if reply.code == Code::Vote && reply.values[0] & !vote::ALL == 0 => {
                    Ok(reply.values[0])
                }
                Some(reply) if reply.code == Code::Refused => Err(format!(
                    "it does not see {} gone, or could not read its ring",
                    orphan.txn.node
                )),
                Some(reply) => Err(format!("it answered {reply:?}")),
                None => {
                    outstanding = true;
                    Err(format!("no vote within {VOTE_TIMEOUT:?}"))
                }
            };
            votes.insert(other, vote);
        }
        let outcome = decide(&config, &orphan.regions, &votes, orphan.copying_must_hold);
        if let Outcome::Copy { lacking } = &outcome {
            copy_entries(node, backup, &config, &orphan, lacking);
        }
        verdicts.push(Verdict {
            txn: orphan.txn,
            outcome,
        });
    }
    node.replies().release(lease, outstanding);
    verdicts
}

/// Sends each replica in `lacking` the entries this node holds of `orphan` (its LOCK here as a
/// primary and its COMMIT-BACKUP as a backup) of the regions that replica holds a copy of, as a
/// COPY record: what the coordinator would have sent it (a LOCK and a COMMIT-BACKUP carry the
/// same entries). Copies that do not arrive are sent again at the next round.
fn copy_entries(
    node: &TxnNode,
    backup: &Backup,
    config: &Configuration,
    orphan: &Orphan,
    lacking: &[NodeId],
) {
    // Both parts: a primary of one region may back up another the transaction writes.
    let mut entries = node
        .primary()
        .locked_entries(orphan.txn)
        .unwrap_or_default();
    entries.extend(backup.held_entries(orphan.txn).unwrap_or_default());
    if entries.is_empty() {
        return;
    }
    for &target in lacking.iter().filter(|&&n| n != node.node_id()) {
        let replicates = |entry: &&acre_txn::record::Entry| {
            config
                .placement(entry.addr.region())
                .is_some_and(|placement| placement.replicas().any(|n| n == target))
        };
        let part: Vec<_> = entries.iter().filter(replicates).cloned().collect();
        if part.is_empty() {
            continue;
        }
        let record = TxnRecord {
            txn: orphan.txn,
            reply: ReplyTo::NONE,
            truncated: Vec::new(),
            body: Body::Copy {
                regions: orphan.regions.clone(),
                entries: part,
            },
        };
        if let Err(e) = node.links().send_one(target, record) {
            tracing::warn!(
                node = %node.node_id(),
                "copying the entries of {} to {target} failed: {e}; the next round tries again",
                orphan.txn
            );
        }
    }
}

/// Asks the replicas of each region in `queries` with a RECOVERY-QUERY, and returns whether
/// each region's replicas all answered that they hold nothing undecided of it.
fn query(
    node: &TxnNode,
    config: &Configuration,
    queries: Vec<(RegionId, Vec<NodeId>)>,
) -> Vec<QueryAnswer> {
    let config = config.id;
    let Some(lease) = node.replies().acquire() else {
        return queries
            .into_iter()
            .map(|(region, _)| QueryAnswer {
                region,
                config,
                quiet: false,
            })
            .collect();
    };
    let asker = TxnId {
        config,
        node: node.node_id(),
        thread: lease.slot,
        seq: lease.seq,
    };
    let mut next_index = 0;
    let mut asked = Vec::new();
    for (region, replicas) in queries {
        let mut waits = Vec::new();
        let mut failed = false;
        for replica in replicas {
            if next_index == REPLIES_PER_TXN_MAX {
                failed = true; // asked again at the next round
                break;
            }
            let index = next_index;
            next_index += 1;
            let record = TxnRecord {
                txn: asker,
                reply: node.replies().reply_to(lease.slot, index),
                truncated: Vec::new(),
                body: Body::RecoveryQuery { region },
            };
            match node.links().send_one(replica, record) {
                Ok(()) => waits.push(index),
                Err(_) => failed = true,
            }
        }
        asked.push((region, waits, failed));
    }
    let indexes: Vec<usize> = asked.iter().flat_map(|(_, w, _)| w.clone()).collect();
    let _ = node
        .replies()
        .wait(lease.slot, lease.seq, &indexes, VOTE_TIMEOUT);
    let mut outstanding = false;
    let answers = asked
        .into_iter()
        .map(|(region, waits, failed)| {
            let mut quiet = !failed;
            for index in waits {
                match node.replies().poll(lease.slot, lease.seq, index) {
                    Some(reply) if reply.code == Code::Vote && reply.values[0] == 0 => {}
                    Some(_) => quiet = false,
                    None => {
                        outstanding = true;
                        quiet = false;
                    }
                }
            }
            QueryAnswer {
                region,
                config,
                quiet,
            }
        })
        .collect();
    node.replies().release(lease, outstanding);
    answers
}

/// Where a REQUEST-VOTE is answered: the reply-to of the asker's record.
pub fn answer(node: &TxnNode, asker: NodeId, to: ReplyTo, seq: u64, holds: Option<u64>) {
    match holds {
        Some(bits) => node.reply(asker, to, seq, Code::Vote, [bits, 0, 0]),
        None => node.reply(asker, to, seq, Code::Refused, [0; 3]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The decision for a transaction that needs recovery, or settled with no copy running
    /// (copying backups left out); [`super::decide`] with `true` where they must hold.
    fn decide(
        config: &Configuration,
        regions: &[RegionId],
        votes: &BTreeMap<NodeId, Result<u64, String>>,
    ) -> Outcome {
        super::decide(config, regions, votes, false)
    }

    /// Three nodes, f = 2: region `k` has its primary on `nk` and backups on the two others.
    fn config() -> Configuration {
        let nodes = (1..=3).map(NodeId).collect();
        Configuration::place(1, nodes, vec![NodeId(100)], 1, 2, 4 << 20, 64 << 10).unwrap()
    }

    fn votes(bits: [u64; 3]) -> BTreeMap<NodeId, Result<u64, String>> {
        (1..=3).map(NodeId).zip(bits.map(Ok)).collect()
    }

    const L: u64 = vote::LOCK;
    const CB: u64 = vote::COMMIT_BACKUP;
    const CP: u64 = vote::COMMIT_PRIMARY;

    #[test]
    fn the_votes_decide_as_the_module_docs_say() {
        let config = config();
        let r1 = config.primary_regions(NodeId(1)).next().unwrap().region;
        let r2 = config.primary_regions(NodeId(2)).next().unwrap().region;
        let both = [r1, r2];
        // Locked at both primaries, nothing further: the coordinator never decided.
        assert_eq!(decide(&config, &both, &votes([L, L, 0])), Outcome::Abort);
        // A COMMIT-BACKUP at some backups only and no COMMIT-PRIMARY: the primaries copy their
        // entries to the others (n3 backs up both regions, n1 region 2's).
        assert_eq!(
            decide(&config, &both, &votes([L, L | CB, 0])),
            Outcome::Copy {
                lacking: vec![NodeId(1), NodeId(3)]
            }
        );
        // At every backup, no COMMIT-PRIMARY: every replica holds the values, the coordinator
        // decided to commit; the primaries install.
        assert_eq!(
            decide(&config, &both, &votes([L | CB, L | CB, CB])),
            Outcome::Install
        );
        // One primary committed, the other only locked: committed, the other installs.
        assert_eq!(
            decide(&config, &both, &votes([CP | CB, L | CB, CB])),
            Outcome::Install
        );
        // Every primary committed (or truncated): truncate.
        assert_eq!(
            decide(&config, &both, &votes([CP | CB, vote::TRUNCATED, CB])),
            Outcome::Truncate
        );
        assert_eq!(
            decide(&config, &[r1], &votes([CP, CB, CB])),
            Outcome::Truncate
        );
        // A primary that holds nothing of a transaction a backup holds COMMIT-BACKUP of has
        // truncated it (its truncation reached that primary, not the backups).
        assert_eq!(
            decide(&config, &[r1], &votes([0, CB, CB])),
            Outcome::Truncate
        );
        assert_eq!(
            decide(&config, &both, &votes([CB, 0, CB])),
            Outcome::Truncate
        );
        // Nothing anywhere but a LOCK: aborted, or never locked everywhere.
        assert_eq!(decide(&config, &both, &votes([0, L, 0])), Outcome::Abort);
        // An earlier abort decision stands; a contradiction is reported, never acted on.
        assert_eq!(
            decide(&config, &both, &votes([vote::ABORTED, L, 0])),
            Outcome::Abort
        );
        assert!(matches!(
            decide(&config, &both, &votes([vote::ABORTED, CP, CB])),
            Outcome::Recovery { .. }
        ));
    }

    /// A backup still copying its region must hold the values too before anybody installs a
    /// transaction that needs no recovery: its copy may have read the objects before the
    /// transaction locked them
    /// (`clients::a_dead_clients_commit_reaches_a_backup_copying_the_region`).
    #[test]
    fn a_copying_backup_that_lacks_the_values_gets_them_copied() {
        let mut config = config();
        let r1 = config.primary_regions(NodeId(1)).next().unwrap().region;
        for placement in &mut config.regions {
            if placement.region == r1 {
                placement.copying = vec![NodeId(3)];
            }
        }
        assert_eq!(
            super::decide(&config, &[r1], &votes([L, CB, 0]), true),
            Outcome::Copy {
                lacking: vec![NodeId(3)]
            }
        );
        assert_eq!(
            super::decide(&config, &[r1], &votes([L, CB, CB]), true),
            Outcome::Install
        );
        // Needing recovery, the copy starts again: it is left out.
        assert_eq!(decide(&config, &[r1], &votes([L, CB, 0])), Outcome::Install);
    }

    /// A participant aborted because a region lost the values (its primary died with the LOCK,
    /// no backup of it got a COMMIT-BACKUP) while a backup of another region holds one: that
    /// backup, deciding later from the same final votes, aborts too and drops its record,
    /// rather than call the votes a contradiction and keep the record (and the transaction
    /// undecided) for good.
    #[test]
    fn a_commit_backup_that_outlived_an_abort_for_a_lost_region_is_aborted_too() {
        let config = after_n4(true);
        let both = [RegionId(4), RegionId(1)];
        // r4 (promoted n1, backup n3) holds nothing: its values are lost with n4. r1's backup
        // n2 holds the COMMIT-BACKUP. Before anybody decided, that is an abort...
        assert_eq!(
            decide(&config, &both, &votes_of(&[(1, L | NP), (2, CB), (3, 0)])),
            Outcome::Abort
        );
        // ...and so it stays once n1 and n3 aborted and n2 decides.
        assert_eq!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, vote::ABORTED), (2, CB), (3, vote::ABORTED)])
            ),
            Outcome::Abort
        );
    }

    /// Four nodes, f = 1, after n4 (primary of r4, whose backup n1 is promoted) died: r1 has
    /// its primary on n1 and its backup on n2, r4 only its promoted primary n1; with `f2`, r4
    /// keeps a second, complete backup on n3 (as with f = 2).
    fn after_n4(f2: bool) -> Configuration {
        let nodes = (1..=4).map(NodeId).collect();
        let mut config =
            Configuration::place(1, nodes, vec![NodeId(100)], 1, 1, 4 << 20, 64 << 10).unwrap();
        config.id = 2;
        config.nodes.retain(|&n| n != NodeId(4));
        for placement in &mut config.regions {
            placement.backups.retain(|&b| b != NodeId(4));
            if placement.region == RegionId(4) {
                placement.primary = NodeId(1);
                placement.backups = if f2 { vec![NodeId(3)] } else { vec![] };
                placement.state = acre_txn::RegionState::Blocked;
            }
        }
        config
    }

    fn votes_of(bits: &[(u16, u64)]) -> BTreeMap<NodeId, Result<u64, String>> {
        bits.iter().map(|&(n, b)| (NodeId(n), Ok(b))).collect()
    }

    /// n1's promotion to r4's primary, as its votes say it: r4 comes first in every region list
    /// of these tests, so its bit is the first (`vote::new_primary_at(0)`).
    const NP: u64 = vote::NEW_PRIMARY | (1 << 32);

    /// FaRM's decision rules (docs/failures.md#decision), each staged by hand for a transaction
    /// writing r4 (whose primary died; n1 was promoted) and r1 (primary n1, backup n2).
    #[test]
    fn recovery_decides_by_the_votes_of_each_region() {
        let config = after_n4(false);
        let both = [RegionId(4), RegionId(1)];
        // Commit-primary somewhere (a second surviving primary took it): committed; n1
        // installs r4's part from its COMMIT-BACKUP and r1's from its LOCK.
        let three = [RegionId(4), RegionId(1), RegionId(2)];
        assert_eq!(
            decide(
                &config,
                &three,
                &votes_of(&[(1, L | CB | NP), (2, CP | CB), (3, CB)])
            ),
            Outcome::Install
        );
        // Commit-backup at r4 and lock at r1: committed; r1's backup lacks the values and gets
        // them copied first.
        assert_eq!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, L | CB | NP), (2, 0), (3, 0)])
            ),
            Outcome::Copy {
                lacking: vec![NodeId(2)]
            }
        );
        assert_eq!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, L | CB | NP), (2, CB), (3, 0)])
            ),
            Outcome::Install
        );
        // Lock only: nobody holds a COMMIT-BACKUP, so the coordinator never decided: abort.
        assert_eq!(
            decide(&config, &both, &votes_of(&[(1, L | NP), (2, 0), (3, 0)])),
            Outcome::Abort
        );
        // A truncated region: r1 truncated it (n2 remembers, n1 holds nothing of r1's part);
        // r4 holds its COMMIT-BACKUP: committed.
        assert_eq!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, CB | NP), (2, vote::TRUNCATED), (3, 0)])
            ),
            Outcome::Install
        );
        // An unknown region: r4's promoted primary holds nothing and never truncated it, while
        // r1's backup holds a COMMIT-BACKUP: r4's values died with n4 (its COMMIT-BACKUP never
        // reached n1, so the coordinator cannot have reported a commit): abort.
        assert_eq!(
            decide(&config, &both, &votes_of(&[(1, L | NP), (2, CB), (3, 0)])),
            Outcome::Abort
        );
        // The same with n1 unable to tell whether it truncated it: not guessed.
        assert!(matches!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, L | NP | vote::UNSURE), (2, CB), (3, 0)])
            ),
            Outcome::Recovery { .. }
        ));
        // Once n1 holds COMMIT-PRIMARY every primary is done: truncate (n1 applies r4's part
        // from its COMMIT-BACKUP as it truncates, if it had not installed it yet).
        assert_eq!(
            decide(
                &config,
                &both,
                &votes_of(&[(1, CP | CB | NP), (2, CB), (3, 0)])
            ),
            Outcome::Truncate
        );
        assert_eq!(
            decide(
                &config,
                &[RegionId(4)],
                &votes_of(&[(1, CP | CB | NP), (3, 0)])
            ),
            Outcome::Truncate
        );
    }

    /// With f = 2 a region's other backup may hold the COMMIT-BACKUP its promoted primary
    /// lacks: the values are copied to the new primary before it installs.
    #[test]
    fn a_promoted_primary_that_lacks_the_values_gets_them_copied() {
        let config = after_n4(true);
        assert_eq!(
            decide(&config, &[RegionId(4)], &votes_of(&[(1, NP), (3, CB)])),
            Outcome::Copy {
                lacking: vec![NodeId(1)]
            }
        );
        assert_eq!(
            decide(&config, &[RegionId(4)], &votes_of(&[(1, CB | NP), (3, CB)])),
            Outcome::Install
        );
    }

    #[test]
    fn a_missing_vote_or_an_unknown_region_decides_nothing() {
        let config = config();
        let r1 = config.primary_regions(NodeId(1)).next().unwrap().region;
        let mut partial = votes([L, 0, 0]);
        partial.insert(NodeId(3), Err("no vote within 1s".into()));
        assert_eq!(
            decide(&config, &[r1], &partial),
            Outcome::Unanswered {
                node: NodeId(3),
                reason: "no vote within 1s".into()
            }
        );
        partial.remove(&NodeId(3));
        assert!(matches!(
            decide(&config, &[r1], &partial),
            Outcome::Unanswered {
                node: NodeId(3),
                ..
            }
        ));
        assert!(matches!(
            decide(&config, &[RegionId(99)], &votes([L, 0, 0])),
            Outcome::Recovery { .. }
        ));
    }

    #[test]
    fn votes_are_remembered_up_to_their_bound() {
        let mut voted = Voted::default();
        let txn = |seq| TxnId {
            config: 1,
            node: NodeId(100),
            thread: 0,
            seq,
        };
        voted.decided(txn(0), vote::ABORTED);
        assert!(voted.has_voted(txn(0)));
        assert_eq!(voted.outcome(txn(0)), vote::ABORTED);
        for seq in 1..=VOTED_MAX as u64 {
            voted.vote(txn(seq));
        }
        assert!(!voted.has_voted(txn(0)), "the oldest is forgotten first");
        assert!(voted.has_voted(txn(VOTED_MAX as u64)));
        assert_eq!(voted.order.len(), VOTED_MAX);
    }
}
