//! Acre's configuration manager (docs/failures.md#configuration-manager): a Raft group of 2f+1
//! replicas (the `raft` crate) that replicates the cluster configuration, changed only by
//! compare-and-set on its id, and the leases that tell it which nodes are alive.
//!
//! - [`remap`]: the pure functions that compute configuration c+1 from c when nodes fail, join
//!   or leave, and when a region is created.
//! - [`lease`]: the leases that tell the CM which nodes are alive and tell every node whether it
//!   may still act, as state machines driven by explicit time.
//! - [`lease_thread`]: the dedicated thread per process that keeps them over UDP.
//! - [`replica`]: one replica of the Raft group, the driver around `raft::RawNode`, over
//!   durable Raft storage ([`storage`]), the replicated state machine ([`state`]) and its
//!   messages ([`wire`]); raft logs through [`logger`]. The caller carries its messages.
//! - [`sim`]: the deterministic in-process network and driver of a group of replicas for
//!   seeded simulations (delays, loss, partitions, crashes and restarts from the replicas'
//!   directories, with the group's safety checks); the integration tests simulate a group
//!   under message loss, partitions and crashes through it, and acre-replication's
//!   transaction simulation commits its configurations through it.
//! - [`replacement`]: the rule by which the leader replaces a replica whose node left the
//!   cluster with a memory node's, one Raft conf change at a time.
//! - [`group`]: a replica run by a thread of its own over [`net`], ticked on the process's
//!   clock, with the blocking compare-and-set install, the leader and a watch of the applied
//!   configuration for the rest of the process.
//! - [`manager`]: the CM leader's reconfiguration driver (suspect, probe, install through Raft,
//!   NEW-CONFIG, wait out removed leases, NEW-CONFIG-COMMIT), and [`member`] a node's side of
//!   it, both sans-I/O state machines.
//! - [`driver`]: the thread per process that runs the manager (while its replica leads) and
//!   the member over the links, and executes their actions.
//! - [`net`]: authenticated, framed message links over TCP between CM replicas and nodes (Raft
//!   messages, NEW-CONFIG, admin requests); lossy by design, as Raft tolerates.

#![forbid(unsafe_code)]

pub mod driver;
pub mod group;
pub mod lease;
pub mod lease_thread;
pub mod logger;
pub mod manager;
pub mod member;
pub mod net;
pub mod remap;
pub mod replacement;
pub mod replica;
pub mod sim;
pub mod state;
pub mod storage;
pub mod wire;

pub use group::{
    CmGroup, CmStatus, GroupOptions, GroupStats, InstallError, LinkMessage, StartError,
    TransferError,
};
pub use replica::{
    CmReplica, Membership, ProposalId, ProposalOutcome, ProposeError, ReplicaConfig, ReplicaError,
};
pub use state::{CmState, Rejection};
pub use storage::{CmStorage, Durability, StorageError, StorageOptions};

// The raft types a driver of [`CmReplica`] handles itself: the messages it carries between
// replicas ([`CmReplica::handle_ready`], [`CmReplica::step`]), their kind (a snapshot must be
// reported when it is lost) and that report ([`CmReplica::report_snapshot`]). Re-exported so
// that a driver outside this crate (the transaction simulation in acre-replication's tests)
// needs no raft dependency of its own and names the raft this crate was built with.
pub use raft::SnapshotStatus;
pub use raft::eraftpb::{Message as RaftMessage, MessageType as RaftMessageType};
