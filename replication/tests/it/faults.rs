//! The steady state under injected faults (no node fails for good): each test puts one fault
//! exactly between two steps of the protocol with the cluster's [`FaultPlan`] and checks what
//! the application is told and what the cluster keeps (docs/failures.md#what-happens-today).
//!
//! [`FaultPlan`]: acre_engine::fabric::fault::FaultPlan

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, primary_header, region_of, start, three_nodes, txn_node,
    value_at,
};
use acre_engine::addr::NodeId;
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::fault::{Action, Rule};
use acre_nvm_log::RecordKind;
use acre_txn::CommitError;
use acre_txn::record::{COMMIT_BACKUP, COMMIT_PRIMARY};

/// Matches batches that append a record of `kind`.
fn appends(kind: RecordKind) -> impl Fn(&[acre_engine::fabric::Op]) -> bool + Send + Sync {
    move |ops| appended_kinds(ops).contains(&kind)
}

/// docs/protocol.md#commit-outcomes: a transaction is committed once one primary holds its
/// COMMIT-PRIMARY, whatever happens to the others. `commit` must say so: an error would invite
/// the application to run it again and apply it twice.
#[test]
fn a_commit_one_primary_acknowledged_is_committed_though_another_missed_commit_primary() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(1), b"a0"); // primary n2
    let b = create(&n1, region_of(2), b"b0"); // primary n3
    let rule = cluster.faults().add(
        Rule::to(NodeId(3), Action::Fail)
            .from(NodeId(1))
            .when(appends(COMMIT_PRIMARY))
            .times(1),
    );
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    let outcome = txn.commit();
    assert_eq!(
        cluster.faults().hits(rule),
        1,
        "COMMIT-PRIMARY to n3 was lost"
    );
    assert_eq!(outcome, Ok(()), "n2 acknowledged COMMIT-PRIMARY: committed");
    cluster.faults().heal();
    // n2 installed its part; n3 keeps b locked until recovery decides (there is none yet).
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1");
    assert!(
        primary_header(&cluster, b).is_locked(),
        "b waits for recovery"
    );
}

/// docs/protocol.md#commit-backup: an append that failed may still have executed in part (a
/// connection that broke after the record's words landed), so a failed COMMIT-BACKUP may be
/// durable at that backup. The coordinator cannot abort then: the outcome is recovery's, and
/// `commit` says so with the transaction id instead of "nothing durable, retry".
#[test]
fn a_commit_backup_that_failed_half_way_leaves_the_outcome_to_recovery() {
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, RING_BYTES, vec![client]);
    let coordinator = cluster
        .nodes()
        .iter()
        .find(|node| node.node_id() == client)
        .expect("the client node")
        .txn()
        .clone();
    let a = create(&coordinator, region_of(0), b"a0"); // primary n1, backups n2 and n3
    // The record's words land at n2 (its body, then its commit word); the persists and the
    // tail after them fail.
    let rule = cluster.faults().add(
        Rule::to(NodeId(2), Action::Partial(2))
            .from(client)
            .when(appends(COMMIT_BACKUP))
            .times(1),
    );
    let mut txn = coordinator.begin().expect("begin");
    let id = txn.id();
    txn.write(a, b"a1").expect("write");
    let outcome = txn.commit();
    assert_eq!(
        cluster.faults().hits(rule),
        1,
        "COMMIT-BACKUP to n2 half-executed"
    );
    match outcome {
        Err(CommitError::Indeterminate { txn, node, .. }) => {
            assert_eq!(txn, id);
            assert_eq!(node, NodeId(2));
        }
        other => panic!("a COMMIT-BACKUP that may be durable ended as {other:?}"),
    }
    // Not aborted: the primary keeps the lock for recovery to decide.
    assert!(
        primary_header(&cluster, a).is_locked(),
        "a waits for recovery"
    );
}
