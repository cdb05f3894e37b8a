//! What became of a transaction whose commit reported `Indeterminate`
//! (docs/failures.md#decision): the coordinator asks every memory node what it holds or knows
//! of it (an OUTCOME-QUERY, answered with a node's vote bits and binding it to nothing), and
//! reads the answers. Committed once any node holds its COMMIT-PRIMARY (or installed it) or
//! truncated it; aborted once any node aborted it, or when no node holds or remembers anything
//! of it; pending while a node holds its LOCK or COMMIT-BACKUP undecided, or this node's
//! finisher still has records of it to deliver.

use crate::orphan::VOTE_TIMEOUT;
use acre_engine::addr::NodeId;
use acre_txn::TxnNode;
use acre_txn::record::{Body, TxnId, TxnRecord};
use acre_txn::reply::{Code, vote};
use std::fmt;

/// What became of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    Committed,
    Aborted,
    /// Not decided yet (its coordinator is finishing it, or recovery is deciding it): ask
    /// again later.
    Pending {
        reason: String,
    },
    /// The nodes' answers cannot tell (a node did not answer, or no longer remembers).
    Unknown {
        reason: String,
    },
}

impl fmt::Display for TxnOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnOutcome::Committed => write!(f, "committed"),
            TxnOutcome::Aborted => write!(f, "aborted"),
            TxnOutcome::Pending { reason } => write!(f, "pending: {reason}"),
            TxnOutcome::Unknown { reason } => write!(f, "unknown: {reason}"),
        }
    }
}

/// Asks every memory node of `node`'s configuration what became of `txn` (module docs).
pub fn outcome(node: &TxnNode, txn: TxnId) -> TxnOutcome {
    if node.is_unfinished(txn) {
        return TxnOutcome::Pending {
            reason: format!("{} is still delivering its records", node.node_id()),
        };
    }
    let config = node.config();
    let Some(lease) = node.replies().acquire() else {
        return TxnOutcome::Unknown {
            reason: "every reply slot of this node is in use: ask again".into(),
        };
    };
    let asker = TxnId {
        config: config.id,
        node: node.node_id(),
        thread: lease.slot,
        seq: lease.seq,
    };
    let members: Vec<NodeId> = config.members().collect();
    let mut answers: Vec<(NodeId, Option<u64>)> = Vec::new();
    let mut waits = Vec::new();
    for (index, &member) in members.iter().enumerate() {
        let record = TxnRecord {
            txn: asker,
            reply: node.replies().reply_to(lease.slot, index),
            truncated: Vec::new(),
            body: Body::OutcomeQuery { txn },
        };
        match node.links().send_one(member, record) {
            Ok(()) => waits.push((member, index)),
            Err(_) => answers.push((member, None)),
        }
    }
    let indexes: Vec<usize> = waits.iter().map(|&(_, index)| index).collect();
    let _ = node
        .replies()
        .wait(lease.slot, lease.seq, &indexes, VOTE_TIMEOUT);
    let mut outstanding = false;
    for (member, index) in waits {
        let bits = match node.replies().poll(lease.slot, lease.seq, index) {
            Some(reply) if reply.code == Code::Vote => Some(reply.values[0]),
            Some(_) => None,
            None => {
                outstanding = true;
                None
            }
        };
        answers.push((member, bits));
    }
    node.replies().release(lease, outstanding);
    read(&answers)
}

/// The outcome the nodes' answers (`None`: no answer) say.
fn read(answers: &[(NodeId, Option<u64>)]) -> TxnOutcome {
    let with = |bit: u64| {
        answers
            .iter()
            .find(|(_, bits)| bits.is_some_and(|b| b & bit != 0))
            .map(|(node, _)| *node)
    };
    if with(vote::COMMIT_PRIMARY | vote::TRUNCATED).is_some() {
        return TxnOutcome::Committed;
    }
    if with(vote::ABORTED).is_some() {
        return TxnOutcome::Aborted;
    }
    if let Some(node) = with(vote::LOCK | vote::COMMIT_BACKUP) {
        return TxnOutcome::Pending {
            reason: format!("{node} holds its records, undecided"),
        };
    }
    if let Some((node, _)) = answers.iter().find(|(_, bits)| bits.is_none()) {
        return TxnOutcome::Unknown {
            reason: format!("{node} did not answer"),
        };
    }
    if let Some(node) = with(vote::UNSURE) {
        return TxnOutcome::Unknown {
            reason: format!("{node} no longer remembers the transactions it truncated then"),
        };
    }
    // Nobody holds or remembers it: it never got a COMMIT-BACKUP anywhere that stayed.
    TxnOutcome::Aborted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_module_docs_say() {
        let n = |k| NodeId(k);
        let read2 = |a: Option<u64>, b: Option<u64>| read(&[(n(1), a), (n(2), b)]);
        assert_eq!(read2(Some(vote::TRUNCATED), None), TxnOutcome::Committed);
        assert_eq!(
            read2(Some(vote::COMMIT_PRIMARY), Some(0)),
            TxnOutcome::Committed
        );
        assert_eq!(read2(Some(vote::ABORTED), Some(0)), TxnOutcome::Aborted);
        assert!(matches!(
            read2(Some(vote::COMMIT_BACKUP), Some(0)),
            TxnOutcome::Pending { .. }
        ));
        assert!(matches!(read2(Some(0), None), TxnOutcome::Unknown { .. }));
        assert!(matches!(
            read2(Some(vote::UNSURE), Some(0)),
            TxnOutcome::Unknown { .. }
        ));
        assert_eq!(read2(Some(0), Some(0)), TxnOutcome::Aborted);
    }
}
