//! Abort in message mode (docs/protocol.md#abort): undoes step 1 when LOCK or VALIDATE
//! failed, before any COMMIT-BACKUP is durable. Every primary that got LOCK gets ABORT in the
//! same ring (so after the LOCK), which unlocks what it locked and hands back the
//! transaction's reserved slots there; slots reserved at primaries that got no LOCK are
//! released directly.

use super::Commit;
use crate::backoff::Backoff;
use crate::record::{Body, EntryKind, ReplyTo, TxnRecord};
use acre_engine::addr::{Addr, NodeId};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long an ABORT whose append failed is tried again (a reconfiguration being installed,
/// a full ring, a peer that does not answer for a moment). A primary that stays unreachable
/// longer is being removed: its locks go with it.
const ABORT_RETRY_MAX: Duration = Duration::from_secs(1);

impl Commit<'_> {
    /// Sends ABORT to every primary that got LOCK and releases the reservations at the others.
    pub(super) fn send_aborts(&mut self) {
        let txn = self.txn.id;
        assert_eq!(
            self.backups_done, 0,
            "{txn}: abort after COMMIT-BACKUP was sent"
        );
        assert_eq!(self.primaries_done, 0, "{txn}: abort after COMMIT-PRIMARY");
        // A LOCK sent but not voted on yet (a later send failed) still gets its ABORT. Its
        // vote may arrive late; the slot is then quarantined when the transaction ends.
        let sent: BTreeSet<NodeId> = self.locks_sent.iter().map(|sent| sent.primary).collect();
        for &primary in &sent {
            let record = TxnRecord {
                txn,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: Body::Abort,
            };
            if let Err(first) = self.send(primary, record.clone()) {
                // Nothing else would release its locks while the primary stays a member (no
                // recovery looks at a transaction that needs none): try again, bounded.
                let deadline = self.node.clock().now() + ABORT_RETRY_MAX;
                let mut backoff =
                    Backoff::retry(Duration::from_millis(2), Duration::from_millis(50))
                        .with_clock(self.node.clock());
                let mut last = first;
                loop {
                    if self.node.links().is_removed(primary) {
                        break; // its locks went with it
                    }
                    if self.node.clock().now() >= deadline {
                        tracing::warn!(
                            %txn,
                            %primary,
                            "ABORT lost: {last}; its locks stay until {primary} answers or a \
                             configuration removes it"
                        );
                        break;
                    }
                    backoff.wait();
                    match self.node.links().send_one(primary, record.clone()) {
                        Ok(()) => break,
                        Err(e) => last = e,
                    }
                }
            }
            if primary == self.node.node_id() {
                self.node.primary().abort(txn);
            }
        }
        let unsent: Vec<Addr> = self
            .plan
            .locks
            .keys()
            .filter(|primary| !sent.contains(primary))
            .flat_map(|&primary| self.plan.lock_entries(primary))
            .filter(|entry| entry.kind == EntryKind::Alloc)
            .map(|entry| entry.addr)
            .collect();
        self.txn.release_reservations(&unsent);
    }
}
