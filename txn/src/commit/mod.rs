//! The coordinator's commit (docs/protocol.md#commit), one module per step of the protocol:
//!
//! 0. [`reserve`]: log space at every participant for every record the commit may write, so
//!    the commit never stops half-way on a full log;
//! 1. [`lock`]: LOCK at every primary of a written object, and the primaries' votes;
//! 2. [`validate`]: the objects read but not written are unchanged and unlocked;
//! 3. [`commit_backup`]: COMMIT-BACKUP durable in every backup's log;
//! 4. [`commit_primary`]: COMMIT-PRIMARY to every primary, which installs and unlocks; the
//!    transaction is committed once one primary has it;
//! 5. [`queue_truncation`](Commit::queue_truncation): the participants may drop the records,
//!    lazily;
//!
//! and [`abort`], which undoes step 1 when step 1 or 2 fails. Steps 1, 4 and abort are where
//! commit modes differ (which CPU takes the locks and installs the values), so they are the
//! methods of [`PrimarySteps`]; the driver [`commit`] runs any mode through the same steps.

mod abort;
mod commit_backup;
mod commit_primary;
mod lock;
pub(crate) mod one_sided;
mod reserve;
pub(crate) mod unfinished;
pub(crate) mod validate;

use crate::config::CommitMode;
use crate::error::{CommitError, TxnError};
use crate::record::{Body, Entry, EntryKind, TxnRecord};
use crate::txn::Txn;
use crate::txn_node::TxnNode;
use crate::value;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_nvm_log::Reservation;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use unfinished::Unfinished;

impl Txn {
    /// Commits the transaction: `Ok` means it is durable on every replica's log and will not
    /// be lost. An error says whether anything of it became durable: every [`CommitError`]
    /// but `Indeterminate` means it did not commit and may be run again.
    pub fn commit(mut self) -> Result<(), CommitError> {
        assert!(!self.finished, "{} committed twice", self.id);
        self.finished = true;
        commit(&mut self)
    }

    /// Whether everything this transaction read is still current (unlocked, same version).
    /// `Db::run` uses it to tell a conflict from a real error when the closure fails.
    pub fn still_valid(&mut self) -> Result<bool, TxnError> {
        let reads: Vec<(Addr, u64)> = self.reads.iter().map(|(a, r)| (*a, r.version)).collect();
        match validate::validate(self, &reads) {
            Ok(()) => Ok(true),
            Err(TxnError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Commits `txn` (docs/protocol.md#commit). A transaction that only read validates its reads;
/// one that read a single object serializes at that read and has nothing left to do.
fn commit(txn: &mut Txn) -> Result<(), CommitError> {
    if txn.changes.is_empty() {
        txn.release_uncertain_allocations(&BTreeSet::new());
        if txn.reads.len() + txn.unclaimed_blocks.len() <= 1 {
            // One observation serializes at the moment it was made.
            return Ok(());
        }
        same_configuration(txn)?;
        let reads: Vec<(Addr, u64)> = txn.reads.iter().map(|(a, r)| (*a, r.version)).collect();
        return Ok(validate::validate(txn, &reads)?);
    }
    let plan = Plan::new(txn);
    let mut commit = Commit::new(txn, plan);
    let outcome = match commit.txn.config.commit {
        CommitMode::Messages => commit.run(&Messages),
        CommitMode::OneSided => commit.run(&one_sided::OneSided),
    };
    if let Some(mut unfinished) = commit.unfinished() {
        // What is left of its reservations goes with it (docs/protocol.md#unfinished-commits).
        unfinished.reservations = std::mem::take(&mut commit.reservations);
        let node = commit.node.clone();
        node.unfinished().add(&node, unfinished);
    }
    commit.give_back_log_space();
    let locked: BTreeSet<NodeId> = commit.locks_sent.iter().map(|sent| sent.primary).collect();
    commit.txn.release_uncertain_allocations(&locked);
    outcome
}

/// The node is still in the configuration `txn` began in, and that configuration is committed
/// (docs/failures.md#reconfiguration), and the node's own lease from the CM has not lapsed
/// (docs/failures.md#leases).
/// Checked before anything is sent and again at the decision, after VALIDATE: a transaction
/// decides to commit only in the configuration it ran in. (A change between the check and the
/// COMMIT-BACKUPs is the case transaction recovery handles.) The lease check keeps a node whose
/// lease lapsed from locking its own objects as their primary (the coordinator does that part
/// of its LOCK itself) and from starting a commit the CM may be waiting out.
fn same_configuration(txn: &Txn) -> Result<(), TxnError> {
    if !txn.node.fabric().memory().lease_is_open() {
        return Err(TxnError::LeaseExpired {
            node: txn.node.node_id(),
        });
    }
    let (current, committed) = txn.node.config_state();
    if current != txn.config.id {
        return Err(TxnError::ConfigurationChanged {
            began: txn.config.id,
            current,
        });
    }
    if !committed {
        return Err(TxnError::Reconfiguring { config: current });
    }
    Ok(())
}

/// The steps that differ between commit modes: who locks the written objects, who installs
/// their new values, and how an abort undoes the locks. Message mode ([`Messages`], FaRM's) has
/// the primaries' workers act on LOCK, COMMIT-PRIMARY and ABORT records; a one-sided mode
/// would have the coordinator CAS and WRITE the objects itself once the same records are
/// durable in the primaries' logs. Every other step is shared.
pub(crate) trait PrimarySteps {
    /// Step 1: every written object is locked at its primary at the version read, or an
    /// error says why not (the caller then aborts).
    fn lock(&self, commit: &mut Commit<'_>) -> Result<(), CommitError>;
    /// Step 4: COMMIT-PRIMARY is durable at the primaries; the new values are installed (or
    /// will be, by a primary that has the record) and the objects unlocked. `Ok` once one
    /// primary has it (committed), counting in `primaries_done` the primaries that do.
    fn commit_primary(&self, commit: &mut Commit<'_>) -> Result<(), CommitError>;
    /// Undoes step 1 before any COMMIT-BACKUP is durable: unlock, hand back reservations.
    fn abort(&self, commit: &mut Commit<'_>);
}

/// FaRM's message mode: the primaries' workers lock, install and unlock.
pub(crate) struct Messages;

impl PrimarySteps for Messages {
    fn lock(&self, commit: &mut Commit<'_>) -> Result<(), CommitError> {
        commit.send_locks()?;
        commit.collect_votes()
    }

    fn commit_primary(&self, commit: &mut Commit<'_>) -> Result<(), CommitError> {
        // The primary's worker installs when it reads the record.
        commit.send_commit_primaries(|_, _, _| Ok(()))
    }

    fn abort(&self, commit: &mut Commit<'_>) {
        commit.send_aborts();
    }
}

/// What a commit writes where, fixed before anything is sent.
#[derive(Clone)]
pub(crate) struct Plan {
    /// The LOCK body for each primary of a written object.
    pub(crate) locks: BTreeMap<NodeId, Body>,
    /// The COMMIT-BACKUP body for each backup of a written region.
    pub(crate) backups: BTreeMap<NodeId, Body>,
    /// The payload bytes of each written slot (what a one-sided install writes).
    pub(crate) capacities: BTreeMap<Addr, usize>,
}

impl Plan {
    /// The records of `txn`'s changes: one entry per object in the LOCK of its primary and in
    /// the COMMIT-BACKUP of each of its backups, every record listing all regions written.
    fn new(txn: &Txn) -> Plan {
        let config = &txn.config;
        let mut lock_entries: BTreeMap<NodeId, Vec<Entry>> = BTreeMap::new();
        let mut backup_entries: BTreeMap<NodeId, Vec<Entry>> = BTreeMap::new();
        let mut regions = BTreeSet::new();
        let mut capacities = BTreeMap::new();
        for (addr, change) in &txn.changes {
            capacities.insert(*addr, change.payload_bytes);
            let region = addr.region();
            // Execution found every changed object in a region of the configuration.
            let placement = config
                .placement(region)
                .unwrap_or_else(|| panic!("{}: {addr} changed outside any region", txn.id));
            let payload = match change.kind {
                EntryKind::Free => Vec::new(),
                EntryKind::Write | EntryKind::Alloc => value::encode(&change.value),
            };
            let entry = Entry {
                addr: *addr,
                version: change.version,
                kind: change.kind,
                payload,
            };
            regions.insert(region);
            for &backup in &placement.backups {
                assert_ne!(backup, placement.primary, "{region} backs itself up");
                backup_entries
                    .entry(backup)
                    .or_default()
                    .push(entry.clone());
            }
            lock_entries
                .entry(placement.primary)
                .or_default()
                .push(entry);
        }
        let regions: Vec<RegionId> = regions.into_iter().collect();
        let body = |make: fn(Vec<RegionId>, Vec<Entry>) -> Body| {
            let regions = regions.clone();
            move |(node, entries)| (node, make(regions.clone(), entries))
        };
        let plan = Plan {
            locks: lock_entries
                .into_iter()
                .map(body(|regions, entries| Body::Lock { regions, entries }))
                .collect(),
            backups: backup_entries
                .into_iter()
                .map(body(|regions, entries| Body::CommitBackup {
                    regions,
                    entries,
                }))
                .collect(),
            capacities,
        };
        assert!(
            !plan.locks.is_empty(),
            "{}: a write without a primary",
            txn.id
        );
        plan
    }

    /// Every node the commit writes a record at.
    pub(crate) fn participants(&self) -> BTreeSet<NodeId> {
        self.locks
            .keys()
            .chain(self.backups.keys())
            .copied()
            .collect()
    }

    /// The entries of the LOCK sent to `primary`.
    pub(crate) fn lock_entries(&self, primary: NodeId) -> &[Entry] {
        match &self.locks[&primary] {
            Body::Lock { entries, .. } => entries,
            other => unreachable!("the LOCK body for {primary} is {other:?}"),
        }
    }
}

/// A LOCK that was sent: to whom, and where its vote arrives (`None`: this node's own primary,
/// which voted inline).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockSent {
    pub(crate) primary: NodeId,
    pub(crate) reply_index: Option<usize>,
}

/// One commit in progress: its plan and how far it got.
pub(crate) struct Commit<'t> {
    pub(crate) txn: &'t mut Txn,
    pub(crate) node: Arc<TxnNode>,
    pub(crate) plan: Plan,
    /// Log space reserved at each participant (step 0).
    pub(crate) reservations: BTreeMap<NodeId, Reservation>,
    /// The LOCKs sent so far (step 1).
    pub(crate) locks_sent: Vec<LockSent>,
    /// This node's own primary's vote, when it is a participant.
    pub(crate) inline_vote: Option<bool>,
    /// Every primary voted yes: every written object is locked.
    pub(crate) locked: bool,
    /// Every read-only object was validated (step 2).
    pub(crate) validated: bool,
    /// The commit decided to commit: locked, validated, and still in the configuration it
    /// began in. From here on it cannot abort; before, it has nothing left to finish.
    pub(crate) decided: bool,
    /// Backups whose COMMIT-BACKUP is durable (step 3).
    pub(crate) backups_done: usize,
    /// A backup's or a primary's fence said a newer configuration's recovery decides this
    /// transaction: nothing more of it is sent, now or later, not even its truncation.
    pub(crate) left_to_recovery: bool,
    /// Primaries whose COMMIT-PRIMARY is durable and counted (step 4).
    pub(crate) primaries_done: usize,
    /// Primaries whose COMMIT-PRIMARY append failed, or whether it counted is unknown (step 4).
    pub(crate) primaries_missed: BTreeSet<NodeId>,
    /// Primaries whose COMMIT-PRIMARY counted and whose install failed (one-sided mode).
    pub(crate) installs_missed: BTreeSet<NodeId>,
    /// Objects this coordinator locked by compare-and-swap, per primary (one-sided mode).
    pub(crate) cas_locked: Vec<(NodeId, Vec<one_sided::CasLock>)>,
}

impl<'t> Commit<'t> {
    fn new(txn: &'t mut Txn, plan: Plan) -> Commit<'t> {
        Commit {
            node: txn.node.clone(),
            txn,
            plan,
            reservations: BTreeMap::new(),
            locks_sent: Vec::new(),
            inline_vote: None,
            locked: false,
            validated: false,
            decided: false,
            backups_done: 0,
            left_to_recovery: false,
            primaries_done: 0,
            primaries_missed: BTreeSet::new(),
            installs_missed: BTreeSet::new(),
            cas_locked: Vec::new(),
        }
    }

    /// The protocol, step by step (docs/protocol.md#commit).
    fn run(&mut self, mode: &impl PrimarySteps) -> Result<(), CommitError> {
        // 0. Reserve log space at every participant; nothing is sent yet.
        let reserved = same_configuration(self.txn)
            .map_err(CommitError::from)
            .and_then(|()| self.reserve());
        if let Err(e) = reserved {
            self.give_back_log_space();
            self.txn.release_all_reservations();
            return Err(e);
        }
        // 1. LOCK, then 2. VALIDATE, in the configuration the transaction began in; any of
        // them failing aborts.
        let decided = mode
            .lock(self)
            .and_then(|()| self.validate_reads())
            .and_then(|()| Ok(same_configuration(self.txn)?));
        if let Err(e) = decided {
            mode.abort(self);
            return Err(e);
        }
        self.decided = true;
        // 3. COMMIT-BACKUP: durable at every backup.
        self.commit_backup()?;
        // 4. COMMIT-PRIMARY: committed once one primary has it.
        mode.commit_primary(self)?;
        // 5. TRUNCATE, lazily; not while a primary lacks COMMIT-PRIMARY, whose records
        // recovery will need (one left to recovery lacks it: it refused the record).
        if self.primaries_done == self.plan.locks.len() {
            self.queue_truncation();
        }
        Ok(())
    }

    /// What is left to send of a commit that decided to commit (COMMIT-BACKUP was sent) but
    /// did not get every record acknowledged; `None` when nothing is (it finished, or aborted).
    fn unfinished(&self) -> Option<Unfinished> {
        if !self.decided {
            return None; // aborted, or never got to decide
        }
        if self.left_to_recovery {
            // Recovery decides it, and installs where a primary refused its COMMIT-PRIMARY. A
            // primary that took it and saw no install (the append's answer or the install was
            // lost) waits for this coordinator's install, which the finisher sends; nothing else
            // goes (no truncation: recovery's).
            if self.primaries_missed.is_empty() && self.installs_missed.is_empty() {
                return None;
            }
            return Some(Unfinished {
                txn: self.txn.id,
                plan: self.plan.clone(),
                backups_left: BTreeSet::new(),
                primaries_left: self.primaries_missed.clone(),
                installs_left: self.installs_missed.clone(),
                reservations: BTreeMap::new(),
                since: self.node.clock().now(),
                left_to_recovery: true,
            });
        }
        let backups_left: BTreeSet<NodeId> = self
            .plan
            .backups
            .keys()
            .skip(self.backups_done)
            .copied()
            .collect();
        let primaries_left: BTreeSet<NodeId> = if backups_left.is_empty() {
            self.primaries_missed.clone()
        } else {
            assert_eq!(
                self.primaries_done, 0,
                "{}: COMMIT-PRIMARY before every COMMIT-BACKUP",
                self.txn.id
            );
            self.plan.locks.keys().copied().collect()
        };
        if backups_left.is_empty() && primaries_left.is_empty() && self.installs_missed.is_empty() {
            return None;
        }
        Some(Unfinished {
            txn: self.txn.id,
            plan: self.plan.clone(),
            backups_left,
            primaries_left,
            installs_left: self.installs_missed.clone(),
            reservations: BTreeMap::new(),
            since: self.node.clock().now(),
            left_to_recovery: false,
        })
    }

    /// Step 2: the objects read but not written are still at the versions read, unlocked.
    fn validate_reads(&mut self) -> Result<(), CommitError> {
        assert!(
            self.locked,
            "{}: VALIDATE before every LOCK held",
            self.txn.id
        );
        assert!(!self.validated, "{}: validated twice", self.txn.id);
        let reads: Vec<(Addr, u64)> = self
            .txn
            .reads
            .iter()
            .filter(|(addr, _)| !self.txn.changes.contains_key(addr))
            .map(|(addr, read)| (*addr, read.version))
            .collect();
        validate::validate(self.txn, &reads)?;
        self.validated = true;
        Ok(())
    }

    /// Step 5: every primary has COMMIT-PRIMARY, so the participants may drop the records
    /// (and backups apply them); the truncation rides on later records.
    fn queue_truncation(&mut self) {
        assert_eq!(
            self.primaries_done,
            self.plan.locks.len(),
            "{}: truncated before every COMMIT-PRIMARY",
            self.txn.id
        );
        self.node
            .links()
            .queue_truncation(self.txn.id, self.plan.participants());
    }

    /// Appends `record` at `node` inside the log space step 0 reserved there; returns once
    /// the record is durable in `node`'s log, with `node`'s fence for a COMMIT-BACKUP
    /// ([`crate::link::Links::send`]).
    pub(crate) fn send(&mut self, node: NodeId, record: TxnRecord) -> Result<u64, TxnError> {
        let txn = self.txn.id;
        assert_eq!(record.txn, txn, "a record of another transaction");
        let reservation = self
            .reservations
            .get_mut(&node)
            .unwrap_or_else(|| panic!("{txn}: no log space reserved at {node}"));
        self.node.links().send(node, reservation, record)
    }

    /// Gives back what is left of every reservation (the margin the aborts or truncations
    /// did not use).
    fn give_back_log_space(&mut self) {
        for (node, reservation) in std::mem::take(&mut self.reservations) {
            self.node.links().release(node, reservation);
        }
    }
}
