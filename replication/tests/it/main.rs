//! Integration tests of the commit protocol over embedded clusters (and, for list-append, over
//! node runtimes that reach each other by shm), and of node runtimes over tcp refusing nodes
//! that are not members of their configuration.

mod allocator_recovery;
mod bank;
mod clients;
mod cm_follow;
mod faults;
mod fixture;
mod index;
mod lease;
mod list_append;
#[cfg(feature = "ofi")]
mod ofi_reads;
mod one_sided;
mod protocol;
mod reconfiguration;
mod recovery;
mod ring_damage;
mod shm_cluster;
mod sim_cm;
mod sim_txn;
mod status;
mod sums_restart;
mod tcp_fencing;
mod votes;
