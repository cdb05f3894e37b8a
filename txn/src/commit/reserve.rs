//! Step 0 (docs/protocol.md#reserve): before anything is sent, log space at every participant
//! for every record the commit may write there: at a primary its LOCK and then COMMIT-PRIMARY
//! or ABORT (the same size), at a backup its COMMIT-BACKUP. A commit that got this far never
//! stops half-way because a log is full.

use super::Commit;
use crate::error::CommitError;
use crate::record::Body;

impl Commit<'_> {
    /// Reserves at every participant, in node order; on an error the reservations made so far
    /// stay in `self.reservations` for the caller to give back.
    pub(super) fn reserve(&mut self) -> Result<(), CommitError> {
        assert!(
            self.reservations.is_empty(),
            "{}: reserved twice",
            self.txn.id
        );
        let participants = self.plan.participants();
        for &node in &participants {
            let mut bodies: Vec<&Body> = Vec::with_capacity(3);
            if let Some(lock) = self.plan.locks.get(&node) {
                bodies.push(lock);
                bodies.push(&Body::CommitPrimary); // or ABORT: the same size
            }
            if let Some(backup) = self.plan.backups.get(&node) {
                bodies.push(backup);
            }
            assert!(
                !bodies.is_empty(),
                "{}: {node} has nothing to log",
                self.txn.id
            );
            let reservation = self.node.links().reserve(node, &bodies)?;
            self.reservations.insert(node, reservation);
        }
        assert_eq!(
            self.reservations.len(),
            participants.len(),
            "one reservation per participant"
        );
        Ok(())
    }
}
