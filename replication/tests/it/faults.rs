//! The steady state under injected faults (no node fails for good): each test puts one fault
//! exactly between two steps of the protocol with the cluster's [`FaultPlan`] and checks what
//! the application is told and what the cluster keeps (docs/failures.md#what-happens-today).
//!
//! [`FaultPlan`]: acre_engine::fabric::fault::FaultPlan

use crate::fixture::{create, primary_header, region_of, three_nodes, txn_node, value_at};
use acre_engine::addr::NodeId;
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::fault::{Action, Rule};
use acre_nvm_log::RecordKind;
use acre_txn::record::COMMIT_PRIMARY;

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
