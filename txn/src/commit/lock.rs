//! Step 1 in message mode (docs/protocol.md#lock): a LOCK record to every primary of a
//! written object, listing the objects with the versions read and their new values. The
//! primary's worker locks each object by CAS at the version read and votes by a reply. For
//! this node's own primary regions the coordinator locks right here, once its LOCK record is
//! durable in the log (the worker then only keeps the record).

use super::{Commit, LockSent};
use crate::error::CommitError;
use crate::record::{ReplyTo, TxnRecord};
use crate::reply::Code;
use crate::txn_node::REPLY_TIMEOUT;
use acre_engine::addr::NodeId;

impl Commit<'_> {
    /// Sends LOCK to every primary, in node order, stopping at the first failure (the LOCKs
    /// sent so far are in `self.locks_sent` for the abort).
    pub(super) fn send_locks(&mut self) -> Result<(), CommitError> {
        assert!(
            self.locks_sent.is_empty(),
            "{}: LOCK sent twice",
            self.txn.id
        );
        assert!(!self.locked, "{}: locked before LOCK", self.txn.id);
        let me = self.node.node_id();
        let primaries: Vec<NodeId> = self.plan.locks.keys().copied().collect();
        for primary in primaries {
            let (reply_index, reply) = if primary == me {
                (None, ReplyTo::NONE) // votes inline below
            } else {
                let (index, reply) = self.txn.next_reply()?;
                (Some(index), reply)
            };
            let record = TxnRecord {
                txn: self.txn.id,
                reply,
                truncated: Vec::new(),
                body: self.plan.locks[&primary].clone(),
            };
            let sent = self.send(primary, record);
            // A LOCK whose append failed may still have landed in part, and its primary lock
            // once it reads it: it counts as sent, so the abort reaches it too.
            self.locks_sent.push(LockSent {
                primary,
                reply_index,
            });
            sent?;
            if primary == me {
                let entries = self.plan.lock_entries(me).to_vec();
                self.inline_vote = Some(self.node.primary().lock(self.txn.id, entries));
            }
        }
        assert_eq!(
            self.locks_sent.len(),
            self.plan.locks.len(),
            "a LOCK per primary"
        );
        Ok(())
    }

    /// Waits for the remote primaries' votes and counts them with this node's inline one;
    /// every object is locked if every vote is yes.
    pub(super) fn collect_votes(&mut self) -> Result<(), CommitError> {
        let remote: Vec<(NodeId, usize)> = self
            .locks_sent
            .iter()
            .filter_map(|sent| Some((sent.primary, sent.reply_index?)))
            .collect();
        let indexes: Vec<usize> = remote.iter().map(|(_, index)| *index).collect();
        let (slot, seq) = (self.txn.slot(), self.txn.id.seq);
        let replies = self
            .node
            .replies()
            .wait(slot, seq, &indexes, REPLY_TIMEOUT)
            .map_err(|missing| CommitError::Unavailable {
                node: remote[missing].0,
                reason: format!("no LOCK vote within {REPLY_TIMEOUT:?}"),
            })?;
        self.txn.replies_consumed(replies.len());
        let mut votes: Vec<(NodeId, Code, u64)> = remote
            .iter()
            .zip(replies)
            .map(|((primary, _), reply)| (*primary, reply.code, reply.values[0]))
            .collect();
        if let Some(locked) = self.inline_vote {
            let code = if locked { Code::Locked } else { Code::Conflict };
            votes.push((self.node.node_id(), code, 0));
        }
        assert_eq!(votes.len(), self.locks_sent.len(), "one vote per LOCK sent");
        for (primary, code, value) in votes {
            match code {
                Code::Locked => {}
                Code::Stale => {
                    return Err(CommitError::ConfigurationChanged {
                        began: self.txn.id.config,
                        current: value,
                    });
                }
                Code::LeaseExpired => {
                    return Err(CommitError::LeaseExpired { node: primary });
                }
                Code::Conflict => {
                    return Err(CommitError::Conflict {
                        addr: self.plan.lock_entries(primary)[0].addr,
                        why: "an object to write changed or is locked",
                    });
                }
                other => {
                    return Err(CommitError::Protocol {
                        node: primary,
                        reason: format!("LOCK answered with {other:?}"),
                    });
                }
            }
        }
        self.locked = true;
        Ok(())
    }
}
