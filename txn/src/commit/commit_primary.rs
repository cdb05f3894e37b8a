//! Step 4 (docs/protocol.md#commit-primary), shared by both modes; in message mode: a COMMIT-PRIMARY record to every
//! primary, whose worker installs the new values (which advances the versions and unlocks).
//! The transaction is committed once one primary's log holds the record: with every backup
//! holding COMMIT-BACKUP, recovery would commit it whatever else fails. This node's own
//! primary installs inline, once its record is durable.

use super::Commit;
use crate::error::{CommitError, TxnError};
use crate::record::{Body, ReplyTo, TxnRecord};
use acre_engine::addr::NodeId;

impl Commit<'_> {
    /// Sends COMMIT-PRIMARY to every primary, in node order, and once a remote primary's record
    /// is durable has `install_remote` install there (nothing in message mode, where the
    /// primary's worker installs; the coordinator's WRITEs in one-sided mode), told whether
    /// to install only what the transaction still holds locked (the primary drained for a
    /// newer configuration meanwhile). This node's own primary installs inline. A primary whose
    /// record or install failed is kept for the finisher (super::unfinished).
    pub(super) fn send_commit_primaries(
        &mut self,
        mut install_remote: impl FnMut(&Commit<'_>, NodeId, bool) -> Result<(), TxnError>,
    ) -> Result<(), CommitError> {
        let txn = self.txn.id;
        assert_eq!(
            self.backups_done,
            self.plan.backups.len(),
            "{txn}: COMMIT-PRIMARY before every COMMIT-BACKUP is durable"
        );
        assert_eq!(self.primaries_done, 0, "{txn}: COMMIT-PRIMARY sent twice");
        let me = self.node.node_id();
        let primaries: Vec<NodeId> = self.plan.locks.keys().copied().collect();
        let mut missed = None;
        // Primaries whose COMMIT-PRIMARY is durable: one is enough to be committed (CP.5).
        let mut durable = 0;
        for primary in primaries {
            let record = TxnRecord {
                txn,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::CommitPrimary,
            };
            let fence = match self.send(primary, record) {
                Ok(fence) => fence,
                Err(e) => {
                    self.primaries_missed.insert(primary);
                    missed = Some((primary, e));
                    continue;
                }
            };
            durable += 1;
            if fence > txn.config {
                // The primary drained its log for a newer configuration since this commit's
                // COMMIT-BACKUPs were counted. If the transaction needs recovery there, the
                // votes commit it (every backup holds it) and recovery installs it: an install
                // of ours could land after theirs and after a later commit, so none goes.
                // (Where the primary took the record, recovery leaves the install to us: a
                // stall right after this check cannot put ours after a later commit.)
                // Recovery truncates it too, once every primary installed: a truncation of
                // ours could reach a primary before recovery's install there and make it
                // drop the LOCK that install reads, leaving the objects locked for good.
                match super::commit_backup::fenced(
                    &self.node,
                    txn,
                    primary,
                    super::commit_backup::FENCE_ANSWER_WAIT,
                ) {
                    super::commit_backup::Fenced::LeftToRecovery => {
                        self.left_to_recovery = true;
                        continue;
                    }
                    super::commit_backup::Fenced::Counted => {}
                    super::commit_backup::Fenced::Unknown => {
                        self.primaries_missed.insert(primary);
                        missed = Some((
                            primary,
                            TxnError::Unavailable {
                                node: primary,
                                reason: format!(
                                    "it drained its log for configuration {fence} and did not \
                                     say whether it kept the record"
                                ),
                            },
                        ));
                        continue;
                    }
                }
            }
            if primary == me {
                if let Err(e) = self.node.primary().commit(txn) {
                    // Recovery on this node decided the transaction first (its votes count
                    // this node's COMMIT-BACKUPs): nothing left to install here.
                    tracing::debug!(%txn, "installing here: {e}; recovery settled it");
                }
            } else if let Err(e) = install_remote(self, primary, fence > txn.config) {
                // Committed (the record is durable and counted), not installed: the objects
                // stay locked until the finisher installs them (the install alone: the record
                // needs no second copy); no truncation before.
                self.installs_missed.insert(primary);
                missed = Some((primary, e));
                continue;
            }
            self.primaries_done += 1;
        }
        let Some((primary, e)) = missed else {
            return Ok(());
        };
        if durable == 0 {
            return Err(CommitError::indeterminate(txn, e));
        }
        if self.left_to_recovery {
            // Recovery installs it where a primary refused the record; a primary that missed
            // only the answer or the install took it and waits for ours (the finisher's).
            tracing::debug!(%txn, %primary, "committed, left to recovery: {e}");
            return Ok(());
        }
        // Committed: one primary has COMMIT-PRIMARY. The one that missed it (or its install)
        // keeps the objects locked until it gets them again (super::unfinished).
        tracing::warn!(
            %txn,
            %primary,
            "committed, but a primary missed its COMMIT-PRIMARY or install, which it gets \
             again once it answers: {e}"
        );
        Ok(())
    }
}
