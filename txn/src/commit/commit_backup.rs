//! Step 3 (docs/protocol.md#commit-backup): a COMMIT-BACKUP record, with the same objects and
//! values as the LOCK, durable in the log of every backup of every written region. Only the
//! fabric's acknowledgement is awaited: no backup CPU is on this path (the record does not
//! even wake the backup's worker). Once one backup may hold the record, the transaction can no
//! longer be aborted by the coordinator alone: recovery decides it. A failed append counts as
//! "may hold": the words of a batch can land before the connection breaks, and the sender
//! cannot tell.

use super::{Commit, Plan};
use crate::config::RegionState;
use crate::error::CommitError;
use crate::record::{Body, ReplyTo, TxnRecord};
use crate::txn_node::TxnNode;
use acre_engine::addr::NodeId;
use std::time::Duration;

/// How long a commit waits to learn the configuration a backup's fence names (a client
/// follows the CM within milliseconds) before it leaves the rest to the finisher.
pub(super) const FENCE_CONFIG_WAIT: Duration = Duration::from_secs(1);

/// What a COMMIT-BACKUP whose receiver's fence is newer than its transaction's configuration
/// means (docs/failures.md#drain).
pub(super) enum Fenced {
    /// The transaction needs no recovery there: the receiver kept the record, it counts.
    Counted,
    /// A primary of a region it writes changed since it began: the receiver may have refused
    /// the record, and that configuration's recovery decides the transaction.
    LeftToRecovery,
    /// This node does not know the fence's configuration yet: ask again later.
    Unknown,
}

/// Whether a COMMIT-BACKUP of the transaction of `plan` counts at a backup whose fence is
/// `fence`, newer than the transaction's configuration: the receiver refuses the record only
/// if the transaction needs recovery in that configuration (it writes a region blocked there),
/// which implies that a primary it locked at is no longer that region's serving primary in
/// any later configuration. Waits up to `wait` for this node to adopt that configuration.
pub(super) fn fenced(node: &TxnNode, plan: &Plan, fence: u64, wait: Duration) -> Fenced {
    let deadline = node.clock().now() + wait;
    while node.config_id() < fence {
        if node.clock().now() >= deadline {
            return Fenced::Unknown;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let latest = node.config();
    let moved = plan.locks.iter().any(|(&primary, body)| {
        let Body::Lock { entries, .. } = body else {
            unreachable!("a plan's locks are LOCK bodies")
        };
        entries.iter().any(|entry| {
            latest
                .placement(entry.addr.region())
                .is_none_or(|p| p.primary != primary || p.state != RegionState::Active)
        })
    });
    if moved {
        Fenced::LeftToRecovery
    } else {
        Fenced::Counted
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
                    match fenced(&self.node, &self.plan, fence, FENCE_CONFIG_WAIT) {
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
                                    "it drained its log for configuration {fence}, whose \
                                     recovery decides this transaction"
                                ),
                            });
                        }
                        Fenced::Unknown => {
                            // Sent again by the finisher once this node knows.
                            return Err(CommitError::Indeterminate {
                                txn: self.txn.id,
                                node: backup,
                                reason: format!(
                                    "it drained its log for configuration {fence}, which this \
                                     node has not learned yet"
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
