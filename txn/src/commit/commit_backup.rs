//! Step 3 (docs/protocol.md#commit-backup): a COMMIT-BACKUP record, with the same objects and
//! values as the LOCK, durable in the log of every backup of every written region. Only the
//! fabric's acknowledgement is awaited: no backup CPU is on this path (the record does not
//! even wake the backup's worker). Once one backup may hold the record, the transaction can no
//! longer be aborted by the coordinator alone: recovery decides it. A failed append counts as
//! "may hold": the words of a batch can land before the connection breaks, and the sender
//! cannot tell.

use super::Commit;
use crate::error::CommitError;
use crate::record::{ReplyTo, TxnRecord};
use acre_engine::addr::NodeId;

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
                    // The backup drained its log for a newer configuration, which recovers
                    // this transaction if it needs recovery, and then refuses its records: the
                    // record may not count. Nothing more is sent (no COMMIT-PRIMARY, not even
                    // by the finisher): recovery's votes decide it (docs/failures.md#drain).
                    self.left_to_recovery = true;
                    return Err(CommitError::Indeterminate {
                        txn: self.txn.id,
                        node: backup,
                        reason: format!(
                            "it drained its log for configuration {fence}, whose recovery \
                             decides this transaction"
                        ),
                    });
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
