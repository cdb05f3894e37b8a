//! FaRM's decision rules of transaction recovery (SOSP'15 §5.3 step 7,
//! docs/failures.md#decision), each staged in the nodes' logs by a coordinator that faults stop
//! at a chosen step, and decided by a real recovery: the records a node holds become its vote
//! (`worker::my_vote`: what it keeps, what it voted, what it remembers truncating), and the
//! votes of each region decide (`orphan::decide`). `orphan::tests` checks the rules on vote bits
//! alone; these tests check the path from the records to the values a transaction reads after.
//!
//! Staged here: commit-primary as the only sign of a commit, a truncated region, and an unknown
//! one. A coordinator that follows the protocol leaves a COMMIT-PRIMARY alone only once every
//! replica that held a COMMIT-BACKUP is gone, and a region only its memory of truncations calls
//! truncated once the region's primary is gone too (a primary that held the LOCK and holds
//! nothing has truncated, and says so by its silence): so for the first two, two of the four
//! nodes of [`four_nodes`] fail together, n2 and n4, and every region keeps one replica (f = 1).
//! The other rules (commit-backup with lock elsewhere, lock only) are staged in `recovery.rs`.

use crate::fixture::{create, overwrite, primary_header, replica, settle, txn_node, value_at};
use crate::reconfiguration::{four_nodes, next};
use crate::recovery::{
    RECOVERY_TIMEOUT, activate_every_region, recovered, wait_decided, wait_recovered,
    write_both_with_id,
};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::fault::{Action, Rule};
use acre_replication::EmbeddedCluster;
use acre_replication::outcome::{TxnOutcome, outcome};
use acre_txn::record::{COMMIT_BACKUP, COMMIT_PRIMARY};
use acre_txn::{CommitError, Configuration, RegionState, TxnNode};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the configuration manager plans when the members `dead` fail together and no member
/// is left to take a new backup: every region keeps the replicas that survive, and one whose
/// primary died is promoted to its first surviving backup, blocked until it is recovered.
fn without(config: &mut Configuration, dead: &[NodeId]) {
    config.nodes.retain(|n| !dead.contains(n));
    for placement in &mut config.regions {
        placement.backups.retain(|n| !dead.contains(n));
        placement.copying.retain(|n| !dead.contains(n));
        if dead.contains(&placement.primary) {
            assert!(
                !placement.backups.is_empty(),
                "{} loses every replica",
                placement.region
            );
            placement.primary = placement.backups.remove(0);
            placement.copying.retain(|&n| n != placement.primary);
            placement.state = RegionState::Blocked;
        }
    }
}

/// The members `dead` fail ([`without`]); once each promoted primary reports its region
/// recovered, a configuration makes every region active, as the CM does on those reports.
fn fail_and_recover(cluster: &mut EmbeddedCluster, dead: &[NodeId]) {
    let newer = next(cluster.config(), |config| without(config, dead));
    cluster.reconfigure((*newer).clone()).expect("reconfigure");
    for placement in &newer.regions {
        if placement.state == RegionState::Blocked {
            wait_recovered(cluster, placement.primary, placement.region);
        }
    }
    activate_every_region(cluster);
}

/// The running member `id`'s coordinator side.
fn txn_node_of(cluster: &EmbeddedCluster, id: NodeId) -> Arc<TxnNode> {
    replica(cluster, id).txn().clone()
}

/// Waits, bounded, until `what` holds; `staged` names it in the failure.
fn wait_for(staged: &str, mut what: impl FnMut() -> bool) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    while !what() {
        assert!(
            Instant::now() < deadline,
            "not within {RECOVERY_TIMEOUT:?}: {staged}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits, bounded, until the object at `addr` is unlocked at its primary: the transaction that
/// locked it is decided there.
fn wait_unlocked(cluster: &EmbeddedCluster, addr: Addr) {
    wait_for(&format!("{addr} unlocked at its primary"), || {
        !primary_header(cluster, addr).is_locked()
    });
}

/// Commit-primary somewhere, and nothing else that says the coordinator decided to commit.
/// n4 coordinates a transaction writing a (r1: n1 [n2]) and b (r3: n3 [n4]): both LOCKs
/// granted, both COMMIT-BACKUPs durable (at n2 and at n4 itself), and its COMMIT-PRIMARY taken
/// by n1 but failed at n3. Then n2 and n4 fail together, the COMMIT-BACKUPs with them. The
/// survivors vote LOCK and COMMIT-PRIMARY (n1, r1) and LOCK (n3, r3): no replica holds a
/// COMMIT-BACKUP or a truncation, so only the COMMIT-PRIMARY says the coordinator decided to
/// commit (it may have reported the commit, and readers at n1 may have seen a1). It commits:
/// n3 installs b from its LOCK. Without the rule, n3 would abort and unlock b0 beside a1.
// FaRM SOSP'15 §5.3 step 7: commit if any region votes commit-primary.
#[test]
fn commit_primary_at_one_region_commits_though_no_replica_left_holds_a_commit_backup() {
    let mut cluster = four_nodes();
    let n4 = txn_node(&cluster, 3);
    let a = create(&n4, RegionId(1), b"a0"); // n1 [n2]
    let b = create(&n4, RegionId(3), b"b0"); // n3 [n4]
    settle(&cluster);
    cluster.faults().add(
        Rule::to(NodeId(3), Action::Fail)
            .from(NodeId(4))
            .when(|ops| appended_kinds(ops).contains(&COMMIT_PRIMARY)),
    );
    let (txn, committed) = write_both_with_id(&n4, a, b);
    // One COMMIT-PRIMARY is durable: committed, n3's left to the finisher.
    assert_eq!(committed, Ok(()), "n1 took the COMMIT-PRIMARY");
    assert!(
        primary_header(&cluster, b).is_locked(),
        "n3 holds b's LOCK and no COMMIT-PRIMARY"
    );
    fail_and_recover(&mut cluster, &[NodeId(2), NodeId(4)]);
    for survivor in [NodeId(1), NodeId(3)] {
        assert_eq!(
            replica(&cluster, survivor).backup().held_count(),
            0,
            "{survivor} holds no COMMIT-BACKUP"
        );
    }
    wait_unlocked(&cluster, b);
    let n1 = txn_node_of(&cluster, NodeId(1));
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1");
    assert_eq!(
        value_at(&n1, b).expect("read b"),
        b"b1",
        "the votes of {txn} committed it: n3 installs b"
    );
    // Counted just after the install that unlocked b.
    wait_for(
        &format!("n3 counts {txn} committed by its recovery"),
        || recovered(&cluster, NodeId(3)) == (1, 0),
    );
    assert_eq!(wait_decided(&n1, txn), TxnOutcome::Committed);
    // Both regions serve, unlocked.
    overwrite(&n1, a, b"a2");
    overwrite(&n1, b, b"b2");
    settle(&cluster);
    cluster.check_replicas().expect("replicas match");
    cluster.stop();
}

/// A truncated region and commit-backup elsewhere. n3 coordinates a transaction writing a (r4:
/// n4 [n1]) and b (r2: n2 [n3]) and commits it; its truncation reaches n2 and n3 but not n1,
/// which keeps r4's COMMIT-BACKUP unapplied. Then n2 and n4 fail together: r4 is promoted to
/// n1, r2 to n3. r4 votes commit-backup (n1 holds the record), and r2 truncated: its only
/// replica, n3, holds nothing of the transaction and remembers truncating it (a promoted
/// primary's silence alone says nothing). No COMMIT-PRIMARY is left anywhere. It commits: n1
/// installs a from its COMMIT-BACKUP. Without the rule (or without n3's memory of its
/// truncations) r2 would be unknown, and n1 would drop a1, which the coordinator reported
/// committed.
// FaRM SOSP'15 §5.3 step 7: commit if some region votes commit-backup and every other votes
// lock, commit-backup or truncated.
#[test]
fn a_truncated_region_and_a_commit_backup_elsewhere_commit() {
    let mut cluster = four_nodes();
    let n3 = txn_node(&cluster, 2);
    let a = create(&n3, RegionId(4), b"a0"); // n4 [n1]
    let b = create(&n3, RegionId(2), b"b0"); // n2 [n3]
    settle(&cluster);
    // n1's only record of the transaction is its COMMIT-BACKUP: its truncation, riding on a
    // later record or going on its own, never arrives.
    let hold =
        cluster.faults().add(
            Rule::to(NodeId(1), Action::Fail)
                .from(NodeId(3))
                .when(|ops| {
                    let kinds = appended_kinds(ops);
                    !kinds.is_empty() && !kinds.contains(&COMMIT_BACKUP)
                }),
        );
    let (txn, committed) = write_both_with_id(&n3, a, b);
    assert_eq!(committed, Ok(()));
    // A COMMIT-BACKUP does not wake its backup: n1 reads it at its next turn.
    wait_for("n1 holds the COMMIT-BACKUP", || {
        replica(&cluster, NodeId(1)).backup().held_count() == 1
    });
    // Truncated at n2 and n3: every record n3 appended there read and dropped.
    wait_for("the truncation reached n2 and n3", || {
        crate::fixture::rings(&cluster)
            .iter()
            .filter(|r| r.sender == NodeId(3) && [NodeId(2), NodeId(3)].contains(&r.receiver))
            .all(|r| r.head == r.tail)
    });
    assert_eq!(replica(&cluster, NodeId(3)).backup().held_count(), 0);
    fail_and_recover(&mut cluster, &[NodeId(2), NodeId(4)]);
    cluster.faults().remove(hold);
    let n1 = txn_node_of(&cluster, NodeId(1));
    assert_eq!(
        value_at(&n1, a).expect("read a"),
        b"a1",
        "the votes of {txn} committed it: n1 installs a from its COMMIT-BACKUP"
    );
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1");
    assert_eq!(
        recovered(&cluster, NodeId(1)),
        (1, 0),
        "n1 committed {txn} in its recovery"
    );
    assert_eq!(outcome(&n1, txn), TxnOutcome::Committed);
    overwrite(&n1, a, b"a2");
    overwrite(&n1, b, b"b2");
    settle(&cluster);
    cluster.check_replicas().expect("replicas match");
    cluster.stop();
}

/// An unknown region, with commit-backup elsewhere. n1 coordinates a transaction writing a (r2:
/// n2 [n3]) and b (r4: n4 [n1]): both LOCKs granted, its COMMIT-BACKUP durable at n1 (r4's
/// backup, the first in node order) and failed at n3 (r2's), so it is left to recovery. Then
/// n2 fails and r2 is promoted to n3, which holds nothing of the transaction and never
/// truncated it: r2 is unknown, its values died with n2. r4 votes lock (n4) and commit-backup
/// (n1), so the coordinator did decide to commit, but it cannot have reported a commit, and
/// the transaction aborts: n4 unlocks b0 and n1 drops its COMMIT-BACKUP. Without the rule, n4
/// would install b1 while a stays a0: half a transaction.
// FaRM SOSP'15 §5.3 step 7: otherwise (a region neither lock, commit-backup nor truncated)
// abort.
#[test]
fn an_unknown_region_aborts_though_a_commit_backup_is_held_elsewhere() {
    let mut cluster = four_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, RegionId(2), b"a0"); // n2 [n3]
    let b = create(&n1, RegionId(4), b"b0"); // n4 [n1]
    settle(&cluster);
    let refuse = cluster.faults().add(
        Rule::to(NodeId(3), Action::Fail)
            .from(NodeId(1))
            .when(|ops| appended_kinds(ops).contains(&COMMIT_BACKUP)),
    );
    let (txn, committed) = write_both_with_id(&n1, a, b);
    assert!(
        matches!(
            committed,
            Err(CommitError::Indeterminate {
                node: NodeId(3),
                ..
            })
        ),
        "{committed:?}"
    );
    wait_for("n1 holds the COMMIT-BACKUP", || {
        replica(&cluster, NodeId(1)).backup().held_count() == 1
    });
    assert_eq!(replica(&cluster, NodeId(3)).backup().held_count(), 0);
    fail_and_recover(&mut cluster, &[NodeId(2)]);
    wait_unlocked(&cluster, b);
    assert_eq!(
        value_at(&n1, b).expect("read b"),
        b"b0",
        "the votes of {txn} aborted it: n4 unlocks b"
    );
    assert_eq!(value_at(&n1, a).expect("read a"), b"a0");
    assert_eq!(
        recovered(&cluster, NodeId(4)),
        (0, 1),
        "n4 aborted {txn} in its recovery"
    );
    wait_for("n1 dropped the COMMIT-BACKUP", || {
        replica(&cluster, NodeId(1)).backup().held_count() == 0
    });
    // n1's finisher sends the COMMIT-BACKUP to n3 again until n3 takes the append; n3 has
    // voted, so it refuses the record, and the finisher leaves the transaction to recovery.
    cluster.faults().remove(refuse);
    wait_for("n1's finisher leaves it to recovery", || {
        n1.unfinished_commits() == 0
    });
    assert_eq!(wait_decided(&n1, txn), TxnOutcome::Aborted);
    overwrite(&n1, a, b"a2");
    overwrite(&n1, b, b"b2");
    settle(&cluster);
    cluster.check_replicas().expect("replicas match");
    cluster.stop();
}
