//! Step 3 (docs/protocol.md#commit-backup): a COMMIT-BACKUP record, with the same objects and
//! values as the LOCK, durable in the log of every backup of every written region. Only the
//! fabric's acknowledgement is awaited: no backup CPU is on this path (the record does not
//! even wake the backup's worker). Once one backup holds the record, the transaction can no
//! longer be aborted by the coordinator alone: recovery decides it.

use super::{Commit, PrimarySteps};
use crate::error::CommitError;
use crate::record::{ReplyTo, TxnRecord};
use acre_engine::addr::NodeId;

impl Commit<'_> {
    /// Sends COMMIT-BACKUP to every backup, in node order. A failure before any backup has
    /// the record aborts cleanly; after, the outcome is left to recovery.
    pub(super) fn commit_backup(&mut self, mode: &impl PrimarySteps) -> Result<(), CommitError> {
        assert!(
            self.locked,
            "{}: COMMIT-BACKUP before every LOCK held",
            self.txn.id
        );
        assert!(
            self.validated,
            "{}: COMMIT-BACKUP before VALIDATE",
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
            if let Err(e) = self.send(backup, record) {
                if self.backups_done == 0 {
                    // No backup holds the transaction yet: it can still abort cleanly.
                    mode.abort(self);
                    return Err(e.into());
                }
                // Some backups hold COMMIT-BACKUP: only recovery may decide now.
                return Err(CommitError::indeterminate(self.txn.id, e));
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
