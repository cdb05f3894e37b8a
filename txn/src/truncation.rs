//! Lazy truncation (docs/protocol.md#truncate): once every primary acknowledged a
//! transaction's COMMIT-PRIMARY, its participants may drop its records (and backups apply
//! it). The coordinator does not send anything for that at once: the transaction id waits in
//! the [`TruncationQueue`] of each participant's link ([`crate::link`]) and rides on the next
//! record sent there, or goes in a TRUNCATE record of its own once it has waited
//! [`TRUNCATE_FLUSH_AFTER`].

use crate::record::{Body, ReplyTo, TxnId, TxnRecord};
use acre_engine::channel::{ChannelError, Outbox};
use acre_engine::clock::Time;
use acre_engine::fabric::Fabric;
use acre_nvm_log::LogError;
use std::time::Duration;

/// Truncations one record carries at most.
pub const PIGGYBACK_MAX: usize = 32;
/// Pending truncations are sent on their own once the oldest has waited this long (on the
/// node's clock).
pub const TRUNCATE_FLUSH_AFTER: Duration = Duration::from_millis(2);

/// The truncations waiting to be sent on one link, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TruncationQueue {
    pending: Vec<TxnId>,
    /// When the oldest pending truncation was queued.
    since: Option<Time>,
}

impl TruncationQueue {
    /// Queues `txn` at `now`; true if the queue was empty (someone must arm the flush timer).
    pub(crate) fn push(&mut self, txn: TxnId, now: Time) -> bool {
        let first = self.pending.is_empty();
        if first {
            self.since = Some(now);
        }
        self.pending.push(txn);
        first
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The oldest truncations, at most [`PIGGYBACK_MAX`], to ride on the next record.
    pub(crate) fn piggyback(&self) -> Vec<TxnId> {
        self.pending[..self.pending.len().min(PIGGYBACK_MAX)].to_vec()
    }

    /// The first `count` truncations are durable at the receiver: forget them.
    pub(crate) fn sent(&mut self, count: usize) {
        assert!(
            count <= self.pending.len(),
            "count={count} pending={}",
            self.pending.len()
        );
        self.pending.drain(..count);
        if self.pending.is_empty() {
            self.since = None;
        }
    }

    /// Whether the oldest pending truncation has waited at least `older_than`.
    pub(crate) fn is_due(&self, now: Time, older_than: Duration) -> bool {
        self.since.is_some_and(|since| now - since >= older_than)
    }

    /// Sends every pending truncation through `outbox` in TRUNCATE records carrying `system`
    /// (no reservation: the reserve margin exists for exactly these). A full log is not an
    /// error: the receiver has yet to catch up, and the rest goes later.
    pub(crate) fn flush(
        &mut self,
        outbox: &mut Outbox,
        fabric: &Fabric,
        system: TxnId,
    ) -> Result<(), ChannelError> {
        while !self.is_empty() {
            let record = TxnRecord {
                txn: system,
                reply: ReplyTo::NONE,
                truncated: self.piggyback(),
                body: Body::Truncate,
            };
            let payload = record.encode();
            match outbox.send_batch(fabric, &[(record.kind(), &payload)]) {
                Ok(()) => self.sent(record.truncated.len()),
                Err(ChannelError::Log(LogError::Full { .. })) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
