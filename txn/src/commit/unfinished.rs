//! Unfinished commits (docs/protocol.md#unfinished-commits): a commit that decided to commit
//! (every LOCK held, every read validated, COMMIT-BACKUP sent) but could not get a record to a
//! participant, because a COMMIT-BACKUP or COMMIT-PRIMARY append failed. The coordinator cannot
//! abort such a transaction (a failed append may have landed), and it stays alive, so it
//! finishes the commit itself once the participant answers again: the COMMIT-BACKUPs not
//! acknowledged, then the COMMIT-PRIMARYs not acknowledged, then the truncation, exactly the
//! records the commit would have sent. Until then the primaries keep the written objects locked
//! and the participants keep the records; nothing else waits.
//!
//! A record sent again may be a second copy of one that landed: a backup takes the same
//! COMMIT-BACKUP twice, and a primary that already installed ignores the second COMMIT-PRIMARY.
//! If the coordinator stops first, the memory nodes settle the transaction as one of a client
//! that is gone (docs/failures.md#a-client-that-dies).
//!
//! One finisher thread per node retries every [`FINISH_RETRY_AFTER`] while there is anything to
//! finish, and exits when there is not: no thread is idle.

use super::Plan;
use crate::record::{Body, ReplyTo, TxnId, TxnRecord};
use crate::txn_node::TxnNode;
use acre_engine::addr::NodeId;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long the finisher waits between two attempts at the unfinished commits.
pub const FINISH_RETRY_AFTER: Duration = Duration::from_millis(200);

/// A commit that decided to commit and has records left to deliver.
pub(crate) struct Unfinished {
    pub(crate) txn: TxnId,
    pub(crate) plan: Plan,
    /// Backups whose COMMIT-BACKUP was not acknowledged.
    pub(crate) backups_left: BTreeSet<NodeId>,
    /// Primaries whose COMMIT-PRIMARY was not acknowledged (all of them while any backup is
    /// left: COMMIT-PRIMARY goes only after every COMMIT-BACKUP is durable).
    pub(crate) primaries_left: BTreeSet<NodeId>,
    pub(crate) since: Instant,
}

/// What one attempt at an unfinished commit did.
enum Attempt {
    Finished,
    /// A participant still does not take its record: why, for the report.
    NotYet {
        node: NodeId,
        reason: String,
    },
}

impl Unfinished {
    /// Sends what is left, in the commit's order; stops at the first backup that fails (no
    /// COMMIT-PRIMARY before every COMMIT-BACKUP is durable), tries every primary left.
    fn attempt(&mut self, node: &TxnNode) -> Attempt {
        let txn = self.txn;
        let record = |body: Body| TxnRecord {
            txn,
            reply: ReplyTo::NONE,
            truncated: Vec::new(),
            body,
        };
        for backup in self.backups_left.clone() {
            let body = self.plan.backups[&backup].clone();
            if let Err(e) = node.links().send_one(backup, record(body)) {
                return Attempt::NotYet {
                    node: backup,
                    reason: e.to_string(),
                };
            }
            self.backups_left.remove(&backup);
        }
        let mut missed = None;
        for primary in self.primaries_left.clone() {
            match node.links().send_one(primary, record(Body::CommitPrimary)) {
                Ok(()) => {
                    self.primaries_left.remove(&primary);
                    if primary == node.node_id() {
                        // This node's own primary installs inline, as in step 4 (its worker
                        // only keeps the record).
                        node.primary()
                            .commit(txn)
                            .expect("this coordinator's own LOCK succeeded");
                    }
                }
                Err(e) => missed = Some((primary, e.to_string())),
            }
        }
        if let Some((node, reason)) = missed {
            return Attempt::NotYet { node, reason };
        }
        assert!(self.backups_left.is_empty() && self.primaries_left.is_empty());
        node.links().queue_truncation(txn, self.plan.participants());
        Attempt::Finished
    }
}

/// A node's unfinished commits, and whether its finisher thread runs.
#[derive(Default)]
pub(crate) struct UnfinishedCommits {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Waiting for the finisher's next attempt (it takes them out while it tries).
    commits: Vec<Unfinished>,
    /// Unfinished commits, including those the finisher is trying.
    pending: usize,
    finisher_running: bool,
}

impl UnfinishedCommits {
    /// How many commits wait to be finished.
    pub(crate) fn count(&self) -> usize {
        self.state.lock().expect(crate::POISONED).pending
    }

    /// Hands `unfinished` to `node`'s finisher, starting it if it does not run.
    pub(crate) fn add(&self, node: &Arc<TxnNode>, unfinished: Unfinished) {
        assert!(
            !unfinished.backups_left.is_empty() || !unfinished.primaries_left.is_empty(),
            "{}: nothing left to finish",
            unfinished.txn
        );
        let mut state = self.state.lock().expect(crate::POISONED);
        state.commits.push(unfinished);
        state.pending += 1;
        if state.finisher_running {
            return;
        }
        state.finisher_running = true;
        let node = Arc::downgrade(node);
        let spawned = std::thread::Builder::new()
            .name("acre-finisher".into())
            .spawn(move || finisher(node));
        if let Err(e) = spawned {
            // Nothing finishes them in this process then; if it stops, the memory nodes do.
            state.finisher_running = false;
            tracing::error!("cannot start the thread that finishes unfinished commits: {e}");
        }
    }
}

/// Retries every unfinished commit of `node` until none is left or the node is gone.
fn finisher(node: Weak<TxnNode>) {
    loop {
        std::thread::sleep(FINISH_RETRY_AFTER);
        let Some(node) = node.upgrade() else {
            return;
        };
        let unfinished = node.unfinished();
        let commits = std::mem::take(&mut unfinished.state.lock().expect(crate::POISONED).commits);
        let mut left = Vec::new();
        let mut finished = 0;
        for mut commit in commits {
            match commit.attempt(&node) {
                Attempt::Finished => {
                    finished += 1;
                    tracing::info!(
                        txn = %commit.txn,
                        "committed after {:.1?}: every participant took its record",
                        commit.since.elapsed()
                    );
                }
                Attempt::NotYet { node, reason } => {
                    tracing::debug!(txn = %commit.txn, %node, "not finished yet: {reason}");
                    left.push(commit);
                }
            }
        }
        let mut state = unfinished.state.lock().expect(crate::POISONED);
        state.commits.append(&mut left);
        state.pending -= finished;
        assert!(state.pending >= state.commits.len());
        if state.commits.is_empty() {
            state.finisher_running = false;
            return;
        }
    }
}
