//! Unfinished commits (docs/protocol.md#unfinished-commits): a commit that decided to commit
//! (every LOCK held, every read validated, COMMIT-BACKUP sent) but could not get a record to a
//! participant, because a COMMIT-BACKUP or COMMIT-PRIMARY append failed. The coordinator cannot
//! abort such a transaction (a failed append may have landed), and it stays alive, so it
//! finishes the commit itself once the participant answers again: the COMMIT-BACKUPs not
//! acknowledged, then the COMMIT-PRIMARYs not acknowledged, then the one-sided installs that
//! failed where the COMMIT-PRIMARY counted, then the truncation, exactly what the commit would
//! have done. A participant that refused a record after draining for a newer configuration
//! leaves the transaction to recovery: the installs at primaries that took their
//! COMMIT-PRIMARY still go (those primaries wait for them, docs/failures.md#decision), the
//! truncation does not. Until then the primaries keep the written objects locked
//! and the participants keep the records; nothing else waits.
//!
//! A record sent again may be a second copy of one that landed: a backup takes the same
//! COMMIT-BACKUP twice, and a primary that already installed ignores the second COMMIT-PRIMARY.
//! If the coordinator stops first, the memory nodes settle the transaction as one of a client
//! that is gone (docs/failures.md#a-client-that-dies).
//!
//! The commit's log-space reservations at the participants still to be sent a record stay with
//! it: the records they were made for (a COMMIT-PRIMARY never sent) go inside them, so a ring
//! filled meanwhile, for instance with the very records these commits pin, cannot stop them.
//!
//! One finisher thread per node retries while there is anything to finish, after
//! [`FINISH_RETRY_FIRST`] and then at doubling intervals up to [`FINISH_RETRY_AFTER`] of the
//! node's clock while nothing finishes, and exits when nothing is left: no thread is idle. A round skips
//! the nodes that already failed in it, so one unreachable participant costs a round one
//! timeout, not one per commit.
//! [`UnfinishedCommits::stop`] ends it before the node stops: a client that stopped sends
//! nothing more, which the memory nodes' settlement of its transactions relies on.

use super::Plan;
use crate::config::CommitMode;
use crate::record::{Body, ReplyTo, TxnId, TxnRecord};
use crate::txn_node::TxnNode;
use acre_engine::addr::NodeId;
use acre_engine::clock::{Clock, Time};
use acre_nvm_log::ring::Reservation;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How soon the finisher first tries the unfinished commits, and again after a round that
/// finished one: the usual cause, a participant that moved to a newer configuration and refused
/// the record (`NotMember`), is over as soon as this node adopts it, within milliseconds, and
/// the written objects stay locked at their primaries until the commit finishes.
pub const FINISH_RETRY_FIRST: Duration = Duration::from_millis(2);
/// The longest wait between two rounds: each round that finishes nothing doubles the wait from
/// [`FINISH_RETRY_FIRST`] up to this (a participant that does not answer).
pub const FINISH_RETRY_AFTER: Duration = Duration::from_millis(200);

/// A commit that decided to commit and has records left to deliver.
pub(crate) struct Unfinished {
    pub(crate) txn: TxnId,
    pub(crate) plan: Plan,
    /// Backups whose COMMIT-BACKUP was not acknowledged.
    pub(crate) backups_left: BTreeSet<NodeId>,
    /// Primaries whose COMMIT-PRIMARY was not acknowledged, or not known to count (all of
    /// them while any backup is left: COMMIT-PRIMARY goes only after every COMMIT-BACKUP is
    /// durable).
    pub(crate) primaries_left: BTreeSet<NodeId>,
    /// Primaries whose COMMIT-PRIMARY counted and whose install (one-sided mode) failed: the
    /// install alone is tried again, of what the transaction still holds locked.
    pub(crate) installs_left: BTreeSet<NodeId>,
    /// What is left of the commit's log-space reservations at the participants.
    pub(crate) reservations: BTreeMap<NodeId, Reservation>,
    /// When the commit decided to commit, on the node's clock.
    pub(crate) since: Time,
    /// A participant refused a record after draining for a newer configuration: recovery
    /// decides the transaction and truncates it. What is left are the installs at primaries
    /// that took their COMMIT-PRIMARY, which wait for this coordinator's (one-sided mode).
    pub(crate) left_to_recovery: bool,
}

/// What one attempt at an unfinished commit did.
enum Attempt {
    Finished,
    /// A participant still does not take its record: why, for the report.
    NotYet {
        node: NodeId,
        reason: String,
    },
    /// A participant that drained its log for configuration `fence` refused its record:
    /// recovery decides the transaction, and nothing more is sent (not even its truncation).
    LeftToRecovery {
        node: NodeId,
        fence: u64,
    },
    /// Every primary that took its COMMIT-PRIMARY installed, and recovery, which another
    /// participant left the transaction to, truncates it.
    InstalledForRecovery,
}

impl Unfinished {
    /// Sends what is left, in the commit's order; stops at the first backup that fails (no
    /// COMMIT-PRIMARY before every COMMIT-BACKUP is durable), tries every primary left. Nodes
    /// in `failed` (this round) are not tried; those that fail now are added.
    fn attempt(&mut self, node: &TxnNode, failed: &mut BTreeSet<NodeId>) -> Attempt {
        // A participant a configuration removed is recovery's now (its records, the locks it
        // held as primary): nothing more goes to it.
        let links = node.links();
        self.backups_left
            .retain(|&backup| !links.is_removed(backup));
        self.primaries_left
            .retain(|&primary| !links.is_removed(primary));
        self.installs_left
            .retain(|&primary| !links.is_removed(primary));
        self.reservations.retain(|&to, _| !links.is_removed(to));
        for backup in self.backups_left.clone() {
            let body = self.plan.backups[&backup].clone();
            match self.send(node, backup, body, failed) {
                Err(reason) => {
                    return Attempt::NotYet {
                        node: backup,
                        reason,
                    };
                }
                Ok(fence) if fence > self.txn.config => {
                    let answer = super::commit_backup::FENCE_ANSWER_WAIT;
                    match super::commit_backup::fenced(node, self.txn, backup, answer) {
                        super::commit_backup::Fenced::Counted => {}
                        super::commit_backup::Fenced::LeftToRecovery => {
                            return Attempt::LeftToRecovery {
                                node: backup,
                                fence,
                            };
                        }
                        super::commit_backup::Fenced::Unknown => {
                            return Attempt::NotYet {
                                node: backup,
                                reason: format!(
                                    "its fence names configuration {fence}, and it did not say \
                                     whether it kept the record"
                                ),
                            };
                        }
                    }
                }
                Ok(_) => {}
            }
            self.backups_left.remove(&backup);
        }
        let mut missed = None;
        for primary in self.primaries_left.clone() {
            let fence = match self.send(node, primary, Body::CommitPrimary, failed) {
                Ok(fence) => fence,
                Err(reason) => {
                    missed = Some((primary, reason));
                    continue;
                }
            };
            if fence > self.txn.config {
                // As in step 4: a transaction the primary refused the record of is installed
                // and truncated by recovery; nothing more of it is sent.
                use super::commit_backup::{FENCE_ANSWER_WAIT, Fenced, fenced};
                match fenced(node, self.txn, primary, FENCE_ANSWER_WAIT) {
                    Fenced::LeftToRecovery => {
                        // The other primaries left still install: one that took its record
                        // waits for this coordinator's install (docs/failures.md#decision).
                        tracing::info!(
                            txn = %self.txn,
                            "left to recovery: {primary} drained its log for configuration \
                             {fence} and refused its COMMIT-PRIMARY"
                        );
                        self.left_to_recovery = true;
                        self.primaries_left.remove(&primary);
                        continue;
                    }
                    Fenced::Counted => {}
                    Fenced::Unknown => {
                        missed = Some((
                            primary,
                            format!(
                                "its fence names configuration {fence}, and it did not say \
                                 whether it kept the record"
                            ),
                        ));
                        continue;
                    }
                }
            }
            if primary == node.node_id() {
                // This node's own primary installs inline, as in step 4 (its worker only keeps
                // the record).
                if let Err(e) = node.primary().commit(self.txn) {
                    // Recovery on this node decided the transaction first.
                    tracing::debug!(txn = %self.txn, "installing here: {e}; recovery settled it");
                }
            } else if node.config().commit == CommitMode::OneSided {
                // The coordinator installs (docs/protocol.md#one-sided-commit-mode), only what
                // it still holds: an earlier install may have landed unseen.
                let installed =
                    super::one_sided::install(node, &self.plan, self.txn, primary, true);
                if let Err(e) = installed {
                    failed.insert(primary);
                    missed = Some((primary, format!("the install failed: {e}")));
                    continue;
                }
            }
            self.primaries_left.remove(&primary);
        }
        for primary in self.installs_left.clone() {
            if failed.contains(&primary) {
                missed = Some((primary, "it failed earlier in this round".to_string()));
                continue;
            }
            if let Err(e) = super::one_sided::install(node, &self.plan, self.txn, primary, true) {
                failed.insert(primary);
                missed = Some((primary, format!("the install failed: {e}")));
                continue;
            }
            self.installs_left.remove(&primary);
        }
        if let Some((node, reason)) = missed {
            return Attempt::NotYet { node, reason };
        }
        assert!(
            self.backups_left.is_empty()
                && self.primaries_left.is_empty()
                && self.installs_left.is_empty()
        );
        if self.left_to_recovery {
            return Attempt::InstalledForRecovery;
        }
        node.links()
            .queue_truncation(self.txn, self.plan.participants());
        Attempt::Finished
    }

    /// Sends `body` to `to`, inside what is left of the commit's reservation there if it holds
    /// it; a node that failed this round is not tried again.
    fn send(
        &mut self,
        node: &TxnNode,
        to: NodeId,
        body: Body,
        failed: &mut BTreeSet<NodeId>,
    ) -> Result<u64, String> {
        if failed.contains(&to) {
            return Err("it failed earlier in this round".into());
        }
        let record = TxnRecord {
            txn: self.txn,
            reply: ReplyTo::NONE,
            truncated: Vec::new(),
            body,
        };
        node.links()
            .send_within(to, self.reservations.get_mut(&to), record)
            .map_err(|e| {
                failed.insert(to);
                e.to_string()
            })
    }

    /// Gives back what is left of the reservations.
    fn release(self, node: &TxnNode) {
        for (to, reservation) in self.reservations {
            node.links().release(to, reservation);
        }
    }
}

/// A node's unfinished commits, and its finisher thread while there are any.
#[derive(Default)]
pub(crate) struct UnfinishedCommits {
    shared: Arc<Shared>,
}

/// What the finisher shares with the node: it holds the node only while it tries, so a node
/// nobody else holds any more is dropped and the finisher ends.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes a sleeping finisher to stop.
    wake: Condvar,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect(crate::POISONED)
    }
}

#[derive(Default)]
struct State {
    /// Waiting for the finisher's next attempt (it takes them out while it tries).
    commits: Vec<Unfinished>,
    /// Unfinished commits, including those the finisher is trying.
    pending: usize,
    finisher: Option<JoinHandle<()>>,
    /// The node stops: no attempt starts any more.
    stopping: bool,
}

impl UnfinishedCommits {
    /// How many commits wait to be finished.
    pub(crate) fn count(&self) -> usize {
        self.shared.state().pending
    }

    /// Whether `txn` waits to be finished (not counting one the finisher is trying now).
    pub(crate) fn holds(&self, txn: TxnId) -> bool {
        self.shared.state().commits.iter().any(|c| c.txn == txn)
    }

    /// Hands `unfinished` to `node`'s finisher, starting it if it does not run.
    pub(crate) fn add(&self, node: &Arc<TxnNode>, unfinished: Unfinished) {
        assert!(
            !unfinished.backups_left.is_empty()
                || !unfinished.primaries_left.is_empty()
                || !unfinished.installs_left.is_empty(),
            "{}: nothing left to finish",
            unfinished.txn
        );
        let mut state = self.shared.state();
        state.commits.push(unfinished);
        state.pending += 1;
        if state.finisher.is_some() || state.stopping {
            return;
        }
        let (weak, shared) = (Arc::downgrade(node), self.shared.clone());
        let clock = node.clock().clone();
        let spawned = std::thread::Builder::new()
            .name("acre-finisher".into())
            .spawn(move || finisher(&shared, weak, &clock));
        match spawned {
            Ok(handle) => state.finisher = Some(handle),
            // Nothing finishes them in this process then; once it stops, the memory nodes do.
            Err(e) => tracing::error!("cannot start the thread that finishes commits: {e}"),
        }
    }

    /// Stops the finisher (after the send it may be in) and gives back the reservations of
    /// what is left, which stays unfinished: nothing of this node is sent any more.
    pub(crate) fn stop(&self, node: &TxnNode) {
        let finisher = {
            let mut state = self.shared.state();
            state.stopping = true;
            state.finisher.take()
        };
        self.shared.wake.notify_all();
        if let Some(finisher) = finisher {
            finisher.join().expect("the finisher does not panic");
        }
        // The finisher put back what it held when it stopped.
        let left = std::mem::take(&mut self.shared.state().commits);
        if !left.is_empty() {
            tracing::warn!(
                node = %node.node_id(),
                "stopping with {} commits unfinished (e.g. {}): the memory nodes settle them",
                left.len(),
                left[0].txn
            );
        }
        for commit in left {
            commit.release(node);
        }
    }
}

/// Retries every unfinished commit of `node` until none is left, the node stops, or it is gone.
fn finisher(shared: &Shared, node: Weak<TxnNode>, clock: &Clock) {
    let mut wait = FINISH_RETRY_FIRST;
    loop {
        let commits = {
            let mut state = shared.state();
            let deadline = clock.now() + wait;
            loop {
                let left = clock.real_duration_until(deadline);
                if state.stopping || left.is_zero() {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, left)
                    .expect(crate::POISONED)
                    .0;
            }
            if state.stopping {
                return;
            }
            std::mem::take(&mut state.commits)
        };
        let Some(node) = node.upgrade() else {
            return;
        };
        let mut left = Vec::new();
        let mut finished = 0;
        let mut failed = BTreeSet::new();
        for mut commit in commits {
            if shared.state().stopping {
                left.push(commit);
                continue;
            }
            match commit.attempt(&node, &mut failed) {
                Attempt::Finished => {
                    finished += 1;
                    tracing::info!(
                        txn = %commit.txn,
                        "committed after {:.1?}: every participant took its record",
                        clock.now() - commit.since
                    );
                    commit.release(&node);
                }
                Attempt::NotYet { node, reason } => {
                    tracing::debug!(txn = %commit.txn, %node, "not finished yet: {reason}");
                    left.push(commit);
                }
                Attempt::LeftToRecovery {
                    node: participant,
                    fence,
                } => {
                    finished += 1;
                    tracing::info!(
                        txn = %commit.txn,
                        "left to recovery: {participant} drained its log for configuration \
                         {fence} and refused its record"
                    );
                    commit.release(&node);
                }
                Attempt::InstalledForRecovery => {
                    finished += 1;
                    tracing::info!(
                        txn = %commit.txn,
                        "installed after {:.1?} where its COMMIT-PRIMARY was taken; recovery \
                         decides the rest",
                        clock.now() - commit.since
                    );
                    commit.release(&node);
                }
            }
        }
        drop(node);
        wait = if finished > 0 {
            FINISH_RETRY_FIRST
        } else {
            (wait * 2).min(FINISH_RETRY_AFTER)
        };
        let mut state = shared.state();
        state.commits.append(&mut left);
        state.pending -= finished;
        assert!(state.pending >= state.commits.len());
        if state.stopping {
            return; // `stop` joins this thread, then takes what is left.
        }
        if state.commits.is_empty() {
            state.finisher = None; // detached: it ends now
            return;
        }
    }
}
