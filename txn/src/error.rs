//! What can go wrong with a transaction, per operation, and what the caller should do about it:
//! [`TxnError`] for the operations of a running transaction, [`CommitError`] for its commit
//! (which says whether anything became durable), [`IndexError`] for the indexes, and [`Error`],
//! any of them, for code that runs whole transactions (`Db::run`).

use crate::config::RegionState;
use crate::record::TxnId;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::ChannelError;
use acre_engine::fabric::OpError;
use acre_nvm_log::LogError;

/// Why an operation of a running transaction (begin, read, write, alloc, free) failed. Nothing
/// of the transaction is visible to anyone: drop it, or run it again if the variant says so.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// Another transaction changed or locked an object this one used.
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
    /// The region asked for ([`Txn::alloc_near`](crate::Txn::alloc_near)) has no room for the
    /// allocation; [`Txn::alloc`](crate::Txn::alloc) tries every region (and, with a
    /// configuration manager, asks it for a new one when all are full).
    #[error("{region} has no room for {len} bytes: allocate in another region (Txn::alloc does)")]
    RegionFull { region: RegionId, len: usize },
    /// The region's primary changed a moment ago and its allocator is still reading its blocks
    /// (docs/failures.md#allocator-recovery); those read so far have no room for the
    /// allocation, and no block is unused. [`Txn::alloc`](crate::Txn::alloc) tries the other
    /// regions first.
    #[error(
        "{region}'s allocator is still reading its blocks after its primary changed: retry \
         shortly (Db::run does)"
    )]
    AllocatorRecovering { region: RegionId },
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
    /// A peer broke the protocol or memory is corrupt: stop and report.
    #[error("protocol violation by {node}: {reason}")]
    Protocol { node: NodeId, reason: String },
    /// The region does not serve in the node's configuration (docs/failures.md#configuration).
    #[error(
        "{region} is {} in configuration {config}: {}",
        state.name(),
        match state {
            RegionState::Blocked => "its primary changed, and it serves again once its \
                transactions are recovered on the new primary; retry shortly (Db::run does)",
            RegionState::Lost => "every replica of it failed; its data is gone until a \
                replica's files come back",
            RegionState::Active => "it serves",
        }
    )]
    RegionUnavailable {
        region: RegionId,
        state: RegionState,
        config: u64,
    },
    /// The node adopted a newer configuration while the transaction ran: it began in `began`.
    #[error(
        "the configuration changed from {began} to {current} while the transaction ran: run \
         it again (Db::run does)"
    )]
    ConfigurationChanged { began: u64, current: u64 },
    /// The node adopted configuration `config`, which is not committed yet (not every member
    /// has adopted it): nothing commits in it until it is.
    #[error("configuration {config} is being installed: retry shortly (Db::run does)")]
    Reconfiguring { config: u64 },
    /// `node`'s own lease from the configuration manager has lapsed, so it acts for nobody
    /// (docs/failures.md#leases): it refused what this transaction asked of it, or it is this
    /// node and will not commit. Nothing of the transaction is durable. The lease is renewed
    /// or the CM installs a configuration without `node`: retry (Db::run does, as through a
    /// reconfiguration).
    #[error(
        "{node}'s lease from the configuration manager has lapsed: retry once it is renewed or \
         a configuration without {node} is installed (Db::run does)"
    )]
    LeaseExpired { node: NodeId },
}

impl TxnError {
    /// Whether running the transaction again may succeed (`Db::run` retries these).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TxnError::Conflict { .. }
                | TxnError::AllocatorRecovering { .. }
                | TxnError::LogFull { .. }
                | TxnError::Busy { .. }
                | TxnError::ConfigurationChanged { .. }
                | TxnError::Reconfiguring { .. }
                | TxnError::LeaseExpired { .. }
                | TxnError::RegionUnavailable {
                    state: RegionState::Blocked,
                    ..
                }
        )
    }
}

/// Why a commit did not report "committed". Every variant but [`CommitError::Indeterminate`]
/// means the transaction did not commit and nothing of it is durable: running it again is
/// safe. `Indeterminate` means it may have committed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Another transaction changed or locked an object this one used; nothing committed.
    #[error("conflict at {addr} ({why}): not committed, retry the transaction (Db::run does)")]
    Conflict { addr: Addr, why: &'static str },
    /// A participant could not be reached before anything was durable; nothing committed.
    #[error(
        "{node} is unavailable ({reason}): not committed; wait for reconfiguration, then retry"
    )]
    Unavailable { node: NodeId, reason: String },
    /// A participant's log had no room; nothing committed.
    #[error("the log at {node} is full: not committed, retry shortly (truncation frees it)")]
    LogFull { node: NodeId },
    /// The transaction is bigger than one commit can carry; nothing committed.
    #[error("the transaction is too large: {reason}; not committed")]
    TxnTooLarge { reason: String },
    /// A peer broke the protocol while nothing was durable: stop and report.
    #[error("protocol violation by {node}: {reason}; not committed")]
    Protocol { node: NodeId, reason: String },
    /// The node adopted a newer configuration before the transaction decided to commit;
    /// nothing committed.
    #[error(
        "the configuration changed from {began} to {current} before the commit: not committed, \
         run it again (Db::run does)"
    )]
    ConfigurationChanged { began: u64, current: u64 },
    /// A region the transaction used does not serve in its configuration; nothing committed.
    #[error(
        "{region} is {} in configuration {config}: not committed",
        state.name()
    )]
    RegionUnavailable {
        region: RegionId,
        state: RegionState,
        config: u64,
    },
    /// The configuration is being installed; nothing committed.
    #[error(
        "configuration {config} is being installed: not committed, retry shortly (Db::run does)"
    )]
    Reconfiguring { config: u64 },
    /// `node`'s lease from the configuration manager has lapsed (a primary refused LOCK or
    /// VALIDATE, a participant's NIC refused a record, or it is this node); nothing committed.
    #[error(
        "{node}'s lease from the configuration manager has lapsed: not committed, retry once it \
         is renewed or a configuration without {node} is installed (Db::run does)"
    )]
    LeaseExpired { node: NodeId },
    /// Some backup may hold the transaction's COMMIT-BACKUP but the commit could not finish.
    /// The coordinator finishes it once `node` answers (docs/protocol.md#unfinished-commits);
    /// if the coordinator stops first, the memory nodes settle it. Do not run it again blindly
    /// (it may apply twice).
    #[error(
        "the outcome of {txn} is unknown ({node}: {reason}): this node finishes it once {node} \
         answers (if it stops first, the memory nodes settle it); do not retry blindly"
    )]
    Indeterminate {
        txn: TxnId,
        node: NodeId,
        reason: String,
    },
}

impl CommitError {
    /// Whether running the transaction again may succeed and is safe (`Db::run` retries these).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CommitError::Conflict { .. }
                | CommitError::LogFull { .. }
                | CommitError::ConfigurationChanged { .. }
                | CommitError::Reconfiguring { .. }
                | CommitError::LeaseExpired { .. }
                | CommitError::RegionUnavailable {
                    state: RegionState::Blocked,
                    ..
                }
        )
    }

    /// The commit failed with `error` after some COMMIT-BACKUP of `txn` was durable.
    pub(crate) fn indeterminate(txn: TxnId, error: TxnError) -> CommitError {
        let (node, reason) = match error {
            TxnError::Unavailable { node, reason } | TxnError::Protocol { node, reason } => {
                (node, reason)
            }
            TxnError::LogFull { node } => (node, "its log is full".into()),
            other => (txn.node, other.to_string()),
        };
        CommitError::Indeterminate { txn, node, reason }
    }
}

/// A failure of a commit step before anything was durable.
impl From<TxnError> for CommitError {
    fn from(error: TxnError) -> CommitError {
        match error {
            TxnError::Conflict { addr, why } => CommitError::Conflict { addr, why },
            TxnError::Unavailable { node, reason } => CommitError::Unavailable { node, reason },
            TxnError::LogFull { node } => CommitError::LogFull { node },
            TxnError::TxnTooLarge { reason } => CommitError::TxnTooLarge { reason },
            TxnError::Protocol { node, reason } => CommitError::Protocol { node, reason },
            TxnError::ConfigurationChanged { began, current } => {
                CommitError::ConfigurationChanged { began, current }
            }
            TxnError::Reconfiguring { config } => CommitError::Reconfiguring { config },
            TxnError::LeaseExpired { node } => CommitError::LeaseExpired { node },
            TxnError::RegionUnavailable {
                region,
                state,
                config,
            } => CommitError::RegionUnavailable {
                region,
                state,
                config,
            },
            // The commit only touches objects execution already found, in regions of the
            // configuration, with slots it already holds.
            other => unreachable!("a commit step failed with an execution error: {other}"),
        }
    }
}

/// Why an index operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
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
    /// The transaction the index operation ran in failed.
    #[error(transparent)]
    Txn(#[from] TxnError),
}

/// Any failure of running a transaction to completion: an operation, an index operation or
/// the commit. What `Db::run` returns; a closure passed to it returns this too, and `?` turns
/// each of the other errors into it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl Error {
    /// Whether running the transaction again may succeed and is safe (`Db::run` retries these).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Txn(e) | Error::Index(IndexError::Txn(e)) => e.is_retryable(),
            Error::Commit(e) => e.is_retryable(),
            Error::Index(_) => false,
        }
    }

    /// Whether the transaction failed because the node's configuration is changing, or may be
    /// about to (a participant's lease lapsed: the CM renews it or removes the participant), or
    /// a region it touched is blocked until its transactions are recovered (a configuration
    /// makes it active again): run it again once the new one is committed.
    pub fn is_reconfiguring(&self) -> bool {
        matches!(
            self,
            Error::Txn(
                TxnError::Reconfiguring { .. }
                    | TxnError::ConfigurationChanged { .. }
                    | TxnError::LeaseExpired { .. }
                    | TxnError::RegionUnavailable {
                        state: RegionState::Blocked,
                        ..
                    }
            ) | Error::Index(IndexError::Txn(
                TxnError::Reconfiguring { .. }
                    | TxnError::ConfigurationChanged { .. }
                    | TxnError::LeaseExpired { .. }
                    | TxnError::RegionUnavailable {
                        state: RegionState::Blocked,
                        ..
                    }
            )) | Error::Commit(
                CommitError::Reconfiguring { .. }
                    | CommitError::ConfigurationChanged { .. }
                    | CommitError::LeaseExpired { .. }
                    | CommitError::RegionUnavailable {
                        state: RegionState::Blocked,
                        ..
                    }
            )
        )
    }

    /// Whether a participant could not be reached (nothing of the transaction is durable):
    /// with a configuration manager, it comes back or a configuration removes it.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Txn(TxnError::Unavailable { .. })
                | Error::Index(IndexError::Txn(TxnError::Unavailable { .. }))
                | Error::Commit(CommitError::Unavailable { .. })
        )
    }

    /// The conflict, if this is one (in an operation, an index operation or the commit).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Txn(TxnError::Conflict { .. })
                | Error::Index(IndexError::Txn(TxnError::Conflict { .. }))
                | Error::Commit(CommitError::Conflict { .. })
        )
    }
}

/// A failed one-sided operation, as the transaction sees it.
pub(crate) fn op_error(node: NodeId, error: OpError) -> TxnError {
    match error {
        OpError::Access(access) => TxnError::Protocol {
            node,
            reason: access.to_string(),
        },
        // `node` adopted configuration `config` and this node's connection is bound to an
        // older one (or this node is not a member): nothing executed, and this node learns the
        // configuration within moments (a member by NEW-CONFIG, a client from the CM), so the
        // transaction runs again in it (Db::run waits, as for any reconfiguration). A node
        // that was removed learns that too, and stops.
        OpError::NotMember { config, .. } => TxnError::Reconfiguring { config },
        // Nothing executed, and the CM renews the lease or replaces the node: retried.
        OpError::LeaseExpired { node } => TxnError::LeaseExpired { node },
        other => TxnError::Unavailable {
            node,
            reason: other.to_string(),
        },
    }
}

/// A failed append to a ring, as the transaction sees it.
pub(crate) fn channel_error(node: NodeId, error: ChannelError) -> TxnError {
    match error {
        ChannelError::Log(LogError::Full { .. }) => TxnError::LogFull { node },
        ChannelError::Log(LogError::TooLarge { len, max }) => TxnError::TxnTooLarge {
            reason: format!(
                "its record for {node} would be {len} bytes, and a log record holds at most \
                 {max}: split the transaction or use larger rings"
            ),
        },
        ChannelError::Op(op) => op_error(node, op),
        other => TxnError::Unavailable {
            node,
            reason: other.to_string(),
        },
    }
}
