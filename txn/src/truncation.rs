//! Lazy truncation (docs/protocol.md#truncate): once every primary acknowledged a
//! transaction's COMMIT-PRIMARY, its participants may drop its records (and backups apply
//! it). The coordinator does not send anything for that at once: the transaction id waits in
//! the queue of each participant's link and rides on the next record sent there, or goes in a
//! TRUNCATE record of its own once it has waited [`TRUNCATE_FLUSH_AFTER`].

use crate::error::TxnError;
use crate::link::{Link, Links, channel_error, locked};
use crate::record::{Body, ReplyTo, TxnId, TxnRecord};
use acre_engine::addr::NodeId;
use acre_engine::channel::ChannelError;
use acre_nvm_log::LogError;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Truncations one record carries at most.
pub const PIGGYBACK_MAX: usize = 32;
/// Pending truncations are sent on their own once the oldest has waited this long.
pub const TRUNCATE_FLUSH_AFTER: Duration = Duration::from_millis(2);

/// The truncations waiting to be sent on one link, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TruncationQueue {
    pending: Vec<TxnId>,
    /// When the oldest pending truncation was queued.
    since: Option<Instant>,
}

impl TruncationQueue {
    /// Queues `txn`; true if the queue was empty (someone must arm the flush timer).
    fn push(&mut self, txn: TxnId) -> bool {
        let first = self.pending.is_empty();
        if first {
            self.since = Some(Instant::now());
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

    fn is_due(&self, now: Instant, older_than: Duration) -> bool {
        self.since
            .is_some_and(|since| now.duration_since(since) >= older_than)
    }
}

impl Links {
    /// Queues the truncation of `txn` at each of `nodes`; it rides on the next record sent
    /// there, or goes on its own after [`TRUNCATE_FLUSH_AFTER`].
    pub fn queue_truncation(&self, txn: TxnId, nodes: impl IntoIterator<Item = NodeId>) {
        let mut first = false;
        for node in nodes {
            // Every participant's link was attached when the commit reserved room there.
            let link = self
                .link(node)
                .unwrap_or_else(|e| panic!("{txn} committed at {node} without a link: {e}"));
            first |= locked(&link).truncations.push(txn);
        }
        if first {
            // Wake this node's worker so it arms its flush timer.
            self.fabric().memory().doorbell().ring();
        }
    }

    /// Whether any truncation waits to be sent.
    pub fn has_pending_truncations(&self) -> bool {
        self.all()
            .iter()
            .any(|(_, link)| !locked(link).truncations.is_empty())
    }

    /// Sends TRUNCATE records for truncations that have waited at least `older_than`.
    pub fn flush_truncations(&self, older_than: Duration) -> Result<(), TxnError> {
        let now = Instant::now();
        for (node, link) in self.all() {
            let due = locked(&link).truncations.is_due(now, older_than);
            if due {
                self.flush_link(node, &link)?;
            }
        }
        Ok(())
    }

    /// Sends every pending truncation of one link in TRUNCATE records (without the reserve
    /// margin, which exists for exactly this).
    pub(crate) fn flush_link(&self, node: NodeId, link: &Mutex<Link>) -> Result<(), TxnError> {
        let mut link = locked(link);
        while !link.truncations.is_empty() {
            let record = TxnRecord {
                txn: self.system_txn(),
                reply: ReplyTo::NONE,
                truncated: link.truncations.piggyback(),
                body: Body::Truncate,
            };
            let payload = record.encode();
            match link
                .outbox
                .send_batch(self.fabric(), &[(record.kind(), &payload)])
            {
                Ok(()) => link.truncations.sent(record.truncated.len()),
                // Full even for a TRUNCATE: the receiver has yet to catch up; try later.
                Err(ChannelError::Log(LogError::Full { .. })) => return Ok(()),
                Err(e) => return Err(channel_error(node, e)),
            }
        }
        Ok(())
    }
}
