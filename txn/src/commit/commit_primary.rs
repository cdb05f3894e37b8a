//! Step 4 in message mode (docs/protocol.md#commit-primary): a COMMIT-PRIMARY record to every
//! primary, whose worker installs the new values (which advances the versions and unlocks).
//! The transaction is committed once one primary's log holds the record: with every backup
//! holding COMMIT-BACKUP, recovery would commit it whatever else fails. This node's own
//! primary installs inline, once its record is durable.

use super::Commit;
use crate::error::CommitError;
use crate::record::{Body, ReplyTo, TxnRecord};
use acre_engine::addr::NodeId;

impl Commit<'_> {
    /// Sends COMMIT-PRIMARY to every primary, in node order; reports a primary that missed it.
    pub(super) fn send_commit_primaries(&mut self) -> Result<(), CommitError> {
        let txn = self.txn.id;
        assert_eq!(
            self.backups_done,
            self.plan.backups.len(),
            "{txn}: COMMIT-PRIMARY before every COMMIT-BACKUP is durable"
        );
        assert_eq!(self.primaries_done, 0, "{txn}: COMMIT-PRIMARY sent twice");
        let primaries: Vec<NodeId> = self.plan.locks.keys().copied().collect();
        let mut missed = None;
        for primary in primaries {
            let record = TxnRecord {
                txn,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::CommitPrimary,
            };
            match self.send(primary, record) {
                Ok(()) => {
                    self.primaries_done += 1;
                    if primary == self.node.node_id() {
                        self.node
                            .primary()
                            .commit(txn)
                            .expect("this coordinator's own LOCK succeeded");
                    }
                }
                Err(e) => {
                    self.primaries_missed.insert(primary);
                    missed = Some((primary, e));
                }
            }
        }
        let Some((primary, e)) = missed else {
            return Ok(());
        };
        if self.primaries_done == 0 {
            return Err(CommitError::indeterminate(txn, e));
        }
        // Committed: one primary has COMMIT-PRIMARY. The one that missed it keeps the objects
        // locked until it gets the record again (super::unfinished); the records are not
        // truncated until then.
        tracing::warn!(
            %txn,
            %primary,
            "committed, but COMMIT-PRIMARY missed a primary, which gets it again once it \
             answers: {e}"
        );
        Ok(())
    }
}
