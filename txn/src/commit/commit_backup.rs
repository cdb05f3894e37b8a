//! Step 3 (docs/protocol.md#commit-backup): a COMMIT-BACKUP record, with the same objects and
//! values as the LOCK, durable in the log of every backup of every written region. Only the
//! fabric's acknowledgement is awaited: no backup CPU is on this path (the record does not
//! even wake the backup's worker). Once one backup may hold the record, the transaction can no
//! longer be aborted by the coordinator alone: recovery decides it. A failed append counts as
//! "may hold": the words of a batch can land before the connection breaks, and the sender
//! cannot tell.

use super::Commit;
use crate::error::CommitError;
use crate::record::{Body, ReplyTo, TxnId, TxnRecord};
use crate::reply::{Code, vote};
use crate::txn_node::TxnNode;
use acre_engine::addr::NodeId;
use std::time::Duration;

/// How long a commit waits for a receiver whose fence is newer than its transaction's
/// configuration to say whether it refused the record (its worker answers within
/// milliseconds) before it leaves the rest to the finisher.
pub(super) const FENCE_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// What a record acknowledged with a fence newer than its transaction's configuration means
/// (docs/failures.md#drain).
pub(super) enum Fenced {
    /// The receiver kept the record: it counts.
    Counted,
    /// The receiver refused a record of the transaction: that configuration's recovery (or the
    /// settlement of a client it found gone) decides the transaction.
    LeftToRecovery,
    /// The receiver did not say within the wait: ask again later.
    Unknown,
}

/// Whether a record of `txn` that `receiver` acknowledged with a fence newer than the
/// transaction's configuration counts there. The receiver drained its log for that
/// configuration, and refuses the record when its worker reads it if the transaction needs
/// recovery by then (or it voted on it), by its own view of the configurations, which may be
/// newer than the fence and than this node's. Only it can tell: an OUTCOME-QUERY appended to
/// the same ring is read after the record, and its answer says whether it refused any record
/// of the transaction ([`vote::REFUSED`]). Judging by this node's configuration instead let a
/// coordinator that had already learned a later one, where the region served again, count a
/// refused COMMIT-BACKUP and install over recovery's commit (found by `acre jepsen --nemesis
/// bitflip`: a bank total off by one). Waits up to `wait` for the answer.
pub(super) fn fenced(node: &TxnNode, txn: TxnId, receiver: NodeId, wait: Duration) -> Fenced {
    let Some(lease) = node.replies().acquire() else {
        return Fenced::Unknown;
    };
    let record = TxnRecord {
        txn: TxnId {
            config: node.config_id(),
            node: node.node_id(),
            thread: lease.slot,
            seq: lease.seq,
        },
        reply: node.replies().reply_to(lease.slot, 0),
        truncated: Vec::new(),
        body: Body::OutcomeQuery { txn },
    };
    if node.links().send_one(receiver, record).is_err() {
        node.replies().release(lease, false);
        return Fenced::Unknown;
    }
    let answer = node.replies().wait(lease.slot, lease.seq, &[0], wait);
    node.replies().release(lease, answer.is_err());
    match answer {
        Ok(replies) if replies[0].code == Code::Vote => {
            if replies[0].values[0] & vote::REFUSED != 0 {
                Fenced::LeftToRecovery
            } else {
                Fenced::Counted
            }
        }
        _ => Fenced::Unknown,
    }
}

impl Commit<'_> {
    /// Sends COMMIT-BACKUP to every backup, in node order. Any failure leaves the outcome to
    /// recovery, the locks held until then.
    pub(super) fn commit_backup(&mut self) -> Result<(), CommitError> {
        assert!(
            self.locked,
            "{}: COMMIT-BACKUP before every LOCK held",
            self.txn.id
        );
        assert!(
            self.validated && self.decided,
            "{}: COMMIT-BACKUP before VALIDATE and the decision",
            self.txn.id
        );
        assert_eq!(
            self.backups_done, 0,
            "{}: COMMIT-BACKUP sent twice",
            self.txn.id
        );
        let backups: Vec<NodeId> = self.plan.backups.keys().copied().collect();
        for backup in backups {
            let record = TxnRecord {
                txn: self.txn.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: self.plan.backups[&backup].clone(),
            };
            match self.send(backup, record) {
                Err(e) => {
                    // This backup may hold COMMIT-BACKUP (the append may have executed in
                    // part), and earlier ones do: an ABORT now could contradict what recovery
                    // decides.
                    return Err(CommitError::indeterminate(self.txn.id, e));
                }
                Ok(fence) if fence > self.txn.id.config => {
                    // The backup drained its log for a newer configuration, after which it
                    // refuses the records of transactions that need recovery there.
                    match fenced(&self.node, self.txn.id, backup, FENCE_ANSWER_WAIT) {
                        Fenced::Counted => {}
                        Fenced::LeftToRecovery => {
                            // The record may not count. Nothing more is sent (no
                            // COMMIT-PRIMARY, not even by the finisher): recovery's votes
                            // decide it (docs/failures.md#drain).
                            self.left_to_recovery = true;
                            return Err(CommitError::Indeterminate {
                                txn: self.txn.id,
                                node: backup,
                                reason: format!(
                                    "it drained its log for configuration {fence} and refused \
                                     the record: recovery decides this transaction"
                                ),
                            });
                        }
                        Fenced::Unknown => {
                            // Sent again by the finisher once this node knows.
                            return Err(CommitError::Indeterminate {
                                txn: self.txn.id,
                                node: backup,
                                reason: format!(
                                    "it drained its log for configuration {fence} and did not \
                                     say within {FENCE_ANSWER_WAIT:?} whether it kept the record"
                                ),
                            });
                        }
                    }
                }
                Ok(_) => {}
            }
            self.backups_done += 1;
        }
        assert_eq!(
            self.backups_done,
            self.plan.backups.len(),
            "every backup has the record"
        );
        Ok(())
    }
}
