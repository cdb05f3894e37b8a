//! What can go wrong with a transaction, and what the caller should do about it.

use acre_engine::addr::{Addr, NodeId, RegionId};

/// Why a transaction operation or commit failed. Each variant says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// Another transaction changed or locked an object this one used. Nothing was committed.
    #[error("conflict at {addr} ({why}): retry the transaction (Db::run does)")]
    Conflict { addr: Addr, why: &'static str },
    /// A node did not answer or could not be reached.
    #[error("{node} is unavailable ({reason}): wait for reconfiguration, then retry")]
    Unavailable { node: NodeId, reason: String },
    /// Nothing is allocated at the address.
    #[error("no object at {addr}: use an address returned by alloc that has not been freed")]
    NotFound { addr: Addr },
    /// The address is not in any region of the configuration.
    #[error("{addr} is in {region}, which is not in the configuration: check the address")]
    NoSuchRegion { addr: Addr, region: RegionId },
    /// The bytes do not fit the object.
    #[error(
        "{len} bytes do not fit the object at {addr} (at most {capacity}): allocate a larger \
         object and move the data"
    )]
    TooLarge {
        addr: Addr,
        len: usize,
        capacity: usize,
    },
    /// No region can hold the allocation.
    #[error("cannot allocate {len} bytes: {reason}")]
    OutOfMemory { len: usize, reason: String },
    /// A participant's log has no room until it truncates.
    #[error("the log at {node} is full: retry shortly (truncation frees it)")]
    LogFull { node: NodeId },
    /// Every transaction slot of this node is in use.
    #[error(
        "all {slots} transaction slots of {node} are in use: finish (commit or drop) a \
         transaction first"
    )]
    Busy { node: NodeId, slots: usize },
    /// A transaction is bigger than one commit can carry.
    #[error("the transaction is too large: {reason}")]
    TxnTooLarge { reason: String },
    /// An index key is empty or longer than an index takes.
    #[error("a {len}-byte key: index keys are 1 to {max} bytes, use a key of that length")]
    KeyLength { len: usize, max: usize },
    /// An index has no room left for the key; nothing was changed.
    #[error("the index at {root} is full ({reason})")]
    IndexFull { root: Addr, reason: String },
    /// An index node does not decode. Inside `Db::run` this is retried when the transaction
    /// read stale data (a node that changed while it was being followed); otherwise the index
    /// is damaged.
    #[error("the index node at {addr} is malformed ({reason}): the index is damaged")]
    Malformed { addr: Addr, reason: String },
    /// A peer broke the protocol or memory is corrupt: stop and report.
    #[error("protocol violation by {node}: {reason}")]
    Protocol { node: NodeId, reason: String },
}

impl TxnError {
    /// Whether running the transaction again may succeed (`Db::run` retries these).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TxnError::Conflict { .. } | TxnError::LogFull { .. } | TxnError::Busy { .. }
        )
    }
}
