//! Acre's configuration manager (CM): a Raft group of 2f+1 replicas (the `raft` crate) that
//! replicates the cluster configuration, changed only by compare-and-set on its id.
//!
//! This crate holds the group's core without networking: durable Raft storage ([`storage`]),
//! the replicated state machine ([`state`]) and its messages ([`wire`]), the driver around
//! `raft::RawNode` ([`replica`]). The integration tests run a deterministic simulation of a
//! group under message loss, partitions and crashes. A later step puts the messages on sockets.

#![forbid(unsafe_code)]

pub mod logger;
pub mod replica;
pub mod state;
pub mod storage;
pub mod wire;

pub use replica::{
    CmReplica, ProposalId, ProposalOutcome, ProposeError, ReplicaConfig, ReplicaError,
};
pub use state::{CmState, Rejection};
pub use storage::{CmStorage, Durability, StorageError, StorageOptions};
