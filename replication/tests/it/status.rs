//! The status area (docs/failures.md#pinned-rings): a node's worker shows that
//! it serves (a heartbeat) and, per ring, how many records it keeps and the oldest of them with
//! its transaction, so that a transaction that pins a ring can be named from outside.

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, overwrite, region_of, replica, rings, start,
};
use acre_engine::addr::NodeId;
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::fault::{Action, Rule};
use acre_replication::ReplicaNode;
use acre_replication::status::RingRetention;
use acre_txn::CommitError;
use acre_txn::record::COMMIT_BACKUP;
use std::time::{Duration, Instant};

/// How long a worker may take to show what it read.
const SHOW_TIMEOUT: Duration = Duration::from_secs(10);
/// Transactions committed behind the pinned one.
const LATER_TXN_COUNT: usize = 50;

/// What `node` publishes of the ring `sender` writes, once `done` holds for it.
fn wait_for_ring(
    node: &ReplicaNode,
    sender: NodeId,
    what: &str,
    done: impl Fn(&RingRetention) -> bool,
) -> RingRetention {
    let deadline = Instant::now() + SHOW_TIMEOUT;
    loop {
        let status = node.status().expect("read the status area");
        let ring = *status
            .rings
            .iter()
            .find(|r| r.sender == sender)
            .expect("the status area lists every member's ring");
        if done(&ring) {
            return ring;
        }
        assert!(Instant::now() < deadline, "{what}: {ring:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A transaction left to recovery keeps its LOCK at its primary; the primary's status area
/// names it as the oldest record of the coordinator's ring while later transactions come and
/// go behind it, and the ring's head stays at its record.
#[test]
fn the_status_area_names_the_transaction_that_pins_a_ring() {
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, RING_BYTES, vec![client]);
    let coordinator = replica(&cluster, client).txn().clone();
    let n1 = &cluster.nodes()[0];
    let before = n1.status().expect("read the status area").heartbeat;
    let a = create(&coordinator, region_of(0), b"a0"); // primary n1
    let b = create(&coordinator, region_of(0), b"b0");
    let rule = cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(client)
            .when(move |ops| appended_kinds(ops).contains(&COMMIT_BACKUP)),
    );
    let mut txn = coordinator.begin().expect("begin");
    let pinned = txn.id();
    txn.write(a, b"a1").expect("write");
    match txn.commit() {
        Err(CommitError::Indeterminate { txn, .. }) => assert_eq!(txn, pinned),
        other => panic!("a failed COMMIT-BACKUP ended as {other:?}"),
    }
    // Left to recovery: its coordinator's finisher is stopped while n2 still refuses the
    // record (the finisher tries again within milliseconds), then n2 takes records again.
    coordinator.stop_finisher();
    assert!(cluster.faults().hits(rule) >= 1);
    cluster.faults().remove(rule);
    for round in 0..LATER_TXN_COUNT {
        overwrite(&coordinator, b, format!("b{round}").as_bytes());
    }

    let ring = wait_for_ring(n1, client, "n1 keeps only the pinned LOCK", |ring| {
        ring.kept_count == 1
    });
    let (pos, txn) = ring.oldest.expect("a kept record");
    assert_eq!(txn, pinned);
    let state = rings(&cluster)
        .into_iter()
        .find(|r| r.receiver == NodeId(1) && r.sender == client)
        .expect("n1's ring of the client");
    assert_eq!(
        state.head, pos,
        "the ring's head waits at the pinned record"
    );
    assert!(state.tail > state.head, "{state:?}");
    let after = n1.status().expect("read the status area").heartbeat;
    assert!(
        after > before,
        "the worker's heartbeat moved: {before} -> {after}"
    );
}
