//! A client node that dies in the middle of a commit (docs/failures.md#a-client-that-dies): the
//! memory nodes settle what it left from the participants' votes, so that its locks and the
//! records pinning its rings do not block the cluster. Each test stops the client's commit
//! between two steps with the cluster's fault plan, then kills the client
//! (`EmbeddedCluster::kill`), and checks what the survivors did with its transaction.

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, overwrite, primary_header, region_of, replica, settle, start,
    txn_node, value_at,
};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::Op;
use acre_engine::fabric::fault::{Action, Rule};
use acre_nvm_log::RecordKind;
use acre_replication::EmbeddedCluster;
use acre_replication::worker::WorkerStats;
use acre_txn::record::{COMMIT_BACKUP, COMMIT_PRIMARY, REQUEST_VOTE, TRUNCATE};
use acre_txn::{CommitError, TxnNode};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The client node of these tests.
const CLIENT: NodeId = NodeId(100);
/// How long the survivors may take to settle a dead client's transaction: a few
/// `ORPHAN_CHECK_INTERVAL`s and vote rounds, generously, for a test binary on two cores.
const SETTLE_ORPHANS_TIMEOUT: Duration = Duration::from_secs(20);

/// Matches batches that append a record of `kind`.
fn appends(kind: RecordKind) -> impl Fn(&[Op]) -> bool + Send + Sync {
    move |ops| appended_kinds(ops).contains(&kind)
}

/// Three memory nodes and the client node [`CLIENT`]; the client's coordinator side.
fn cluster_with_client() -> (EmbeddedCluster, Arc<TxnNode>) {
    let cluster = start(REGION_BYTES, RING_BYTES, vec![CLIENT]);
    let client = replica(&cluster, CLIENT).txn().clone();
    (cluster, client)
}

fn stats(cluster: &EmbeddedCluster, node: NodeId) -> &WorkerStats {
    replica(cluster, node).worker().expect("a worker").stats()
}

/// Waits until `counter` of `node`'s worker reaches `at_least`.
fn wait_for_count(
    cluster: &EmbeddedCluster,
    node: NodeId,
    at_least: u64,
    counter: impl Fn(&WorkerStats) -> &AtomicU64,
    what: &str,
) {
    let deadline = Instant::now() + SETTLE_ORPHANS_TIMEOUT;
    while counter(stats(cluster, node)).load(Ordering::Acquire) < at_least {
        assert!(
            Instant::now() < deadline,
            "{node} did not {what} within {SETTLE_ORPHANS_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until the object at `addr` is unlocked at its primary.
fn wait_unlocked(cluster: &EmbeddedCluster, addr: Addr) {
    let deadline = Instant::now() + SETTLE_ORPHANS_TIMEOUT;
    while primary_header(cluster, addr).is_locked() {
        assert!(
            Instant::now() < deadline,
            "{addr} is still locked {SETTLE_ORPHANS_TIMEOUT:?} after its client died"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// docs/failures.md#a-client-that-dies: a client that dies after LOCK and before any
/// COMMIT-BACKUP never decided to commit, or told nobody. The primaries abort its transaction
/// (unlock, drop the LOCK records), so other nodes' transactions on those objects commit, the
/// values stay the old ones, and nothing of the client stays in any ring. Before, the objects
/// stayed locked, and the client's rings pinned, for good.
#[test]
fn a_dead_clients_transaction_before_commit_backup_is_aborted_and_its_objects_released() {
    let (mut cluster, client) = cluster_with_client();
    let n1 = txn_node(&cluster, 0);
    let a = create(&client, region_of(0), b"a0"); // primary n1, backups n2 and n3
    let b = create(&client, region_of(1), b"b0"); // primary n2, backups n1 and n3
    settle(&cluster);
    // Every COMMIT-BACKUP append of the client fails whole: the commit stops after the votes.
    for backup in [NodeId(1), NodeId(2), NodeId(3)] {
        cluster.faults().add(
            Rule::to(backup, Action::Fail)
                .from(CLIENT)
                .when(appends(COMMIT_BACKUP)),
        );
    }
    let mut txn = client.begin().expect("begin");
    let id = txn.id();
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    assert!(
        matches!(txn.commit(), Err(CommitError::Indeterminate { txn, .. }) if txn == id),
        "the commit stops at COMMIT-BACKUP"
    );
    assert!(primary_header(&cluster, a).is_locked() && primary_header(&cluster, b).is_locked());
    drop(client);
    cluster.kill(CLIENT);
    cluster.faults().heal();

    wait_unlocked(&cluster, a);
    wait_unlocked(&cluster, b);
    assert_eq!(
        value_at(&n1, a).expect("read a"),
        b"a0",
        "aborted: a unchanged"
    );
    assert_eq!(
        value_at(&n1, b).expect("read b"),
        b"b0",
        "aborted: b unchanged"
    );
    overwrite(&n1, a, b"a2");
    overwrite(&n1, b, b"b2");
    for primary in [NodeId(1), NodeId(2)] {
        assert_eq!(
            stats(&cluster, primary)
                .orphans_aborted
                .load(Ordering::Acquire),
            1,
            "{primary} aborted {id}"
        );
    }
    // Every ring empty, nothing held anywhere: the dead client's LOCK records are gone too.
    settle(&cluster);
    cluster.check_replicas().expect("backups equal primaries");
}

/// A client that dies once some backups hold its COMMIT-BACKUP, but not all, and no primary
/// holds COMMIT-PRIMARY, decided to commit and told nobody; the backups that lack the record
/// lack the values. The primary copies its LOCK's entries to them (what the coordinator would
/// have sent), then commits as when every backup held it: installs, and the participants
/// truncate. Before, the object stayed locked and the records pinned the client's rings.
#[test]
fn a_dead_clients_transaction_some_backups_hold_is_copied_to_the_others_and_committed() {
    let (mut cluster, client) = cluster_with_client();
    let a = create(&client, region_of(0), b"a0"); // primary n1, backups n2 and n3
    settle(&cluster);
    // COMMIT-BACKUP goes to n2, then fails at n3.
    cluster.faults().add(
        Rule::to(NodeId(3), Action::Fail)
            .from(CLIENT)
            .when(appends(COMMIT_BACKUP)),
    );
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    assert!(matches!(
        txn.commit(),
        Err(CommitError::Indeterminate {
            node: NodeId(3),
            ..
        })
    ));
    cluster.faults().heal();
    drop(client);
    cluster.kill(CLIENT);

    wait_unlocked(&cluster, a);
    let n1 = txn_node(&cluster, 0);
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1", "committed");
    assert_eq!(
        stats(&cluster, NodeId(1))
            .orphans_installed
            .load(Ordering::Acquire),
        1
    );
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        let stats = stats(&cluster, node);
        assert_eq!(stats.orphans_aborted.load(Ordering::Acquire), 0, "{node}");
        assert_eq!(stats.orphans_left.load(Ordering::Acquire), 0, "{node}");
    }
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("n3 got the entries it lacked and applied them");
}

/// While a participant cannot vote on a dead client's transaction (here its REQUEST-VOTE
/// records fail), nothing is decided: the transaction keeps its locks and is reported, and it
/// blocks only the objects it locked: other objects, in the same region, keep committing. Once
/// the participant votes again, the transaction is settled.
#[test]
fn a_dead_clients_transaction_a_participant_cannot_vote_on_blocks_only_its_objects() {
    let (mut cluster, client) = cluster_with_client();
    let n1 = txn_node(&cluster, 0);
    let a = create(&client, region_of(0), b"a0"); // primary n1, backups n2 and n3
    let c = create(&client, region_of(0), b"c0");
    settle(&cluster);
    for backup in [NodeId(2), NodeId(3)] {
        cluster.faults().add(
            Rule::to(backup, Action::Fail)
                .from(CLIENT)
                .when(appends(COMMIT_BACKUP)),
        );
    }
    let unreachable = cluster
        .faults()
        .add(Rule::to(NodeId(3), Action::Fail).when(appends(REQUEST_VOTE)));
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    assert!(matches!(
        txn.commit(),
        Err(CommitError::Indeterminate { .. })
    ));
    drop(client);
    cluster.kill(CLIENT);

    wait_for_count(
        &cluster,
        NodeId(1),
        2,
        |stats| &stats.orphans_unanswered,
        "ask n3 twice in vain",
    );
    assert!(primary_header(&cluster, a).is_locked(), "a waits for n3");
    overwrite(&n1, c, b"c1");
    assert_eq!(value_at(&n1, c).expect("read c"), b"c1");

    cluster.faults().remove(unreachable);
    wait_unlocked(&cluster, a);
    assert_eq!(
        value_at(&n1, a).expect("read a"),
        b"a0",
        "aborted: a unchanged"
    );
    settle(&cluster);
}

/// A client that dies after every primary took COMMIT-PRIMARY but before its truncation went
/// out leaves a committed transaction whose records pin its rings and whose values the backups
/// never applied. Every primary holds COMMIT-PRIMARY, so the participants truncate it
/// themselves: the backups apply it and every ring empties. Before, its records stayed for good.
#[test]
fn a_dead_clients_committed_transaction_is_truncated_by_its_participants() {
    let (mut cluster, client) = cluster_with_client();
    let a = create(&client, region_of(0), b"a0");
    let b = create(&client, region_of(1), b"b0");
    settle(&cluster);
    // Its truncations never leave: the TRUNCATE records its worker sends fail.
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        cluster.faults().add(
            Rule::to(node, Action::Fail)
                .from(CLIENT)
                .when(appends(TRUNCATE)),
        );
    }
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    assert_eq!(txn.commit(), Ok(()));
    drop(client);
    cluster.kill(CLIENT);
    cluster.faults().heal();

    settle(&cluster);
    cluster
        .check_replicas()
        .expect("every backup applied the committed transaction");
    let n1 = txn_node(&cluster, 0);
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1");
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1");
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        assert!(
            stats(&cluster, node)
                .orphans_truncated
                .load(Ordering::Acquire)
                >= 1,
            "{node} truncated the dead client's transaction"
        );
    }
}

/// docs/protocol.md CP.5: once one primary holds COMMIT-PRIMARY the transaction is committed. A
/// client that dies before its COMMIT-PRIMARY reached the other primary leaves that primary
/// with only the LOCK: it installs from it, as the record would have made it, and then the
/// participants truncate the transaction. Before, that object stayed locked for good.
#[test]
fn a_dead_clients_transaction_one_primary_committed_is_installed_at_the_other() {
    let (mut cluster, client) = cluster_with_client();
    let a = create(&client, region_of(0), b"a0"); // primary n1
    let b = create(&client, region_of(1), b"b0"); // primary n2
    settle(&cluster);
    // COMMIT-PRIMARY reaches n1 (node order), not n2.
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(CLIENT)
            .when(appends(COMMIT_PRIMARY)),
    );
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    assert_eq!(txn.commit(), Ok(()), "n1 acknowledged COMMIT-PRIMARY");
    assert!(primary_header(&cluster, b).is_locked());
    drop(client);
    cluster.kill(CLIENT);
    cluster.faults().heal();

    wait_unlocked(&cluster, b);
    let n1 = txn_node(&cluster, 0);
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1", "installed at n2");
    assert_eq!(
        stats(&cluster, NodeId(2))
            .orphans_installed
            .load(Ordering::Acquire),
        1
    );
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("every backup applied the committed transaction");
}

/// How long the fault holds the dead client's last append back: longer than the survivors take
/// to vote and abort.
const LATE_BY: Duration = Duration::from_secs(5);

/// An append the dead client made before it died may still be on its way when the participants
/// vote (over tcp: bytes in a socket). It must not undo what they decided: a participant that
/// voted refuses the transaction's records from then on. Here the client's COMMIT-BACKUP to n2
/// is held back past the survivors' abort; when it lands, n2 refuses it (and the commit's later
/// records too), so the abort stands and nothing of the transaction is kept. Without the
/// refusal, n2 would hold a COMMIT-BACKUP of an aborted transaction for recovery to find.
#[test]
fn a_dead_clients_late_commit_backup_is_refused_once_the_participants_voted() {
    let (mut cluster, client) = cluster_with_client();
    let a = create(&client, region_of(0), b"a0"); // primary n1, backups n2 and n3
    settle(&cluster);
    let late = cluster.faults().add(
        Rule::to(NodeId(2), Action::Delay(LATE_BY))
            .from(CLIENT)
            .when(appends(COMMIT_BACKUP))
            .times(1),
    );
    let coordinator = {
        let client = client.clone();
        std::thread::spawn(move || {
            let mut txn = client.begin().expect("begin");
            txn.write(a, b"a1").expect("write a");
            // Whatever it returns, nobody hears it: the client is dead by then.
            let _ = txn.commit();
        })
    };
    let deadline = Instant::now() + SETTLE_ORPHANS_TIMEOUT;
    while cluster.faults().hits(late) == 0 {
        assert!(
            Instant::now() < deadline,
            "the COMMIT-BACKUP was never sent"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(client);
    // The survivors see the client gone at once; `kill` itself returns only once the held-back
    // append has landed (the client's worker waits for the link it holds).
    cluster.kill(CLIENT);
    coordinator.join().expect("the coordinator thread");
    // Had n2 voted after the COMMIT-BACKUP landed, it would hold it: left to recovery, no abort.
    wait_for_count(
        &cluster,
        NodeId(1),
        1,
        |stats| &stats.orphans_aborted,
        "abort the transaction",
    );
    wait_for_count(
        &cluster,
        NodeId(2),
        1,
        |stats| &stats.late_refused,
        "refuse the late COMMIT-BACKUP",
    );
    assert_eq!(replica(&cluster, NodeId(2)).backup().held_count(), 0);
    let n1 = txn_node(&cluster, 0);
    assert_eq!(
        value_at(&n1, a).expect("read a"),
        b"a0",
        "aborted: a unchanged"
    );
    settle(&cluster);
    cluster.check_replicas().expect("backups equal primaries");
}

/// A client that dies while it executes a transaction, after its ALLOC reserved a slot at a
/// remote primary and before any LOCK, leaves that slot reserved: nothing would ever install or
/// hand it back. Once the client is gone (and its ring read to the end, so no LOCK of it can
/// come) the primary hands the slot back. Before, the primary held it for good.
#[test]
fn a_dead_clients_reserved_slots_are_handed_back() {
    let (mut cluster, client) = cluster_with_client();
    let mut txn = client.begin().expect("begin");
    let slot = txn
        .alloc_near(8, Addr::new(region_of(0), 0))
        .expect("reserve a slot at n1");
    assert_eq!(slot.region(), region_of(0));
    assert_eq!(replica(&cluster, NodeId(1)).txn().primary().held_count(), 1);
    // The process dies here: no commit, no drop (which would send RELEASE).
    std::mem::forget(txn);
    drop(client);
    cluster.kill(CLIENT);
    settle(&cluster);
    // The slot is free to reserve again: the next allocation of its size class gets it.
    let n1 = txn_node(&cluster, 0);
    let again = create(&n1, region_of(0), &[7; 8]);
    assert_eq!(again, slot, "the dead client's slot was handed back");
}

/// A client that dies once every backup holds its COMMIT-BACKUP and before any primary holds
/// COMMIT-PRIMARY decided to commit and left every replica holding the values (the primaries'
/// LOCKs, the backups' COMMIT-BACKUPs): what recovery would decide, with nothing to copy first.
/// The primaries install, the participants truncate. Before, both objects stayed locked.
#[test]
fn a_dead_clients_transaction_every_backup_holds_is_committed() {
    let (mut cluster, client) = cluster_with_client();
    let a = create(&client, region_of(0), b"a0"); // primary n1
    let b = create(&client, region_of(1), b"b0"); // primary n2
    settle(&cluster);
    for primary in [NodeId(1), NodeId(2)] {
        cluster.faults().add(
            Rule::to(primary, Action::Fail)
                .from(CLIENT)
                .when(appends(COMMIT_PRIMARY)),
        );
    }
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    assert!(
        matches!(txn.commit(), Err(CommitError::Indeterminate { .. })),
        "no primary took COMMIT-PRIMARY"
    );
    cluster.faults().heal();
    drop(client);
    cluster.kill(CLIENT);

    wait_unlocked(&cluster, a);
    wait_unlocked(&cluster, b);
    let n3 = txn_node(&cluster, 2);
    assert_eq!(value_at(&n3, a).expect("read a"), b"a1", "committed");
    assert_eq!(value_at(&n3, b).expect("read b"), b"b1", "committed");
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("every backup applied the committed transaction");
}

/// docs/failures.md#data-recovery: a client dies while a new backup copies a region, after its
/// COMMIT-BACKUP reached the region's complete backup and before it reached the copying one,
/// whose copy had already read the object. The memory nodes settle the transaction as
/// committed, so the copying backup must get the values too: its copy will not read the object
/// again, and no configuration restarts it. Before, the settlement left copying backups out and
/// the new backup's copy, once counted complete, kept the object's older value.
#[test]
fn a_dead_clients_commit_reaches_a_backup_copying_the_region() {
    use crate::reconfiguration::next;
    use crate::recovery::copier_pause_to_myself;
    use acre_engine::addr::RegionId;
    use acre_txn::Configuration;
    let _paused = copier_pause_to_myself();
    let (n1, n2, n4) = (NodeId(1), NodeId(2), NodeId(4));
    let r1 = RegionId(1);
    // Four memory nodes, f = 2; r1 (primary n1) has one backup, n2, until n4 joins it.
    let mut config = Configuration::place(
        1,
        (1..=4).map(NodeId).collect(),
        vec![CLIENT],
        1,
        2,
        REGION_BYTES,
        crate::fixture::BLOCK_BYTES,
    )
    .expect("config");
    config.commit = crate::fixture::commit_mode();
    for placement in &mut config.regions {
        if placement.region == r1 {
            assert_eq!(placement.primary, n1);
            placement.backups = vec![n2];
        }
    }
    let mut cluster = EmbeddedCluster::start_faulty(config, RING_BYTES).expect("start");
    let client = replica(&cluster, CLIENT).txn().clone();
    let a = create(&client, r1, b"a0");
    settle(&cluster);

    // n4 becomes a copying backup of r1, and its copier stops once it has read a's slot.
    let read = acre_engine::pause::arm("copier.slots_read");
    let copying = next(cluster.config(), |config| {
        for placement in &mut config.regions {
            if placement.region == r1 {
                placement.backups = vec![n2, n4];
                placement.copying = vec![n4];
            }
        }
    });
    cluster
        .reconfigure((*copying).clone())
        .expect("n4 copies r1");
    assert!(
        read.wait_reached(SETTLE_ORPHANS_TIMEOUT),
        "n4 read the slots of r1's block"
    );

    // The client's COMMIT-BACKUP reaches n2 and fails at n4; then the client dies.
    cluster.faults().add(
        Rule::to(n4, Action::Fail)
            .from(CLIENT)
            .when(appends(COMMIT_BACKUP)),
    );
    let mut txn = client.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    assert!(
        matches!(txn.commit(), Err(CommitError::Indeterminate { node, .. }) if node == n4),
        "the commit stops at n4's COMMIT-BACKUP"
    );
    cluster.faults().heal();
    drop(client);
    cluster.kill(CLIENT);
    wait_unlocked(&cluster, a);
    let n1_txn = txn_node(&cluster, 0);
    assert_eq!(value_at(&n1_txn, a).expect("read a"), b"a1", "committed");
    settle(&cluster);

    // The copy goes on from what it read, and is counted complete.
    read.release();
    let deadline = Instant::now() + SETTLE_ORPHANS_TIMEOUT;
    while !replica(&cluster, n4).copied_regions().contains(&r1) {
        assert!(Instant::now() < deadline, "n4 did not copy r1");
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::recovery::count_every_copy_complete(&mut cluster);
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("the new backup holds the dead client's commit");
}
