//! A node adopting a newer configuration (docs/failures.md#reconfiguration), as the
//! configuration manager's NEW-CONFIG will have it do; here the test hands every node the new
//! configuration itself.

use crate::fixture::{
    BLOCK_BYTES, REGION_BYTES, RING_BYTES, commit_mode, create, overwrite, region_of, replica,
    settle, start_in, three_nodes, txn_node, value_at,
};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::Op;
use acre_engine::fabric::fault::{Action, Rule};
use acre_nvm_log::RecordKind;
use acre_replication::EmbeddedCluster;
use acre_replication::replica::AdoptError;
use acre_txn::config::{CommitMode, NotAdopted, StaleConfiguration};
use acre_txn::record::{COMMIT_BACKUP, LOCK};
use acre_txn::{CommitError, Configuration, Error, RegionState, TxnError};
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// The configuration after `config`, changed by `change`.
pub(crate) fn next(
    config: &Configuration,
    change: impl FnOnce(&mut Configuration),
) -> Arc<Configuration> {
    let mut newer = config.clone();
    newer.id += 1;
    change(&mut newer);
    newer.validate().expect("a valid configuration");
    Arc::new(newer)
}

/// Four nodes, one region each (`rk`'s primary on `nk`, its backup on the next node), f = 1.
pub(crate) fn four_nodes() -> EmbeddedCluster {
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let mut config =
        Configuration::place(1, ids, vec![], 1, 1, REGION_BYTES, BLOCK_BYTES).expect("config");
    config.commit = commit_mode();
    EmbeddedCluster::start_faulty(config, RING_BYTES).expect("start")
}

/// What the configuration manager plans when n4 of [`four_nodes`] fails: r3 (primary n3) gets
/// n1 as a new, copying backup; r4 (primary n4) is promoted to its backup n1, blocked.
pub(crate) fn without_n4(config: &mut Configuration) {
    config.nodes.retain(|&n| n != NodeId(4));
    for placement in &mut config.regions {
        if placement.region == RegionId(3) {
            placement.backups = vec![NodeId(1)];
            placement.copying = vec![NodeId(1)];
        }
        if placement.region == RegionId(4) {
            placement.primary = NodeId(1);
            placement.backups = vec![];
            placement.state = RegionState::Blocked;
        }
    }
}

/// NEW-CONFIG to every node, without NEW-CONFIG-COMMIT.
fn adopt_only(cluster: &EmbeddedCluster, newer: &Arc<Configuration>) {
    for node in cluster.nodes() {
        node.txn().adopt(newer.clone()).expect("newer");
    }
}

/// NEW-CONFIG to every node, then NEW-CONFIG-COMMIT to every node.
fn adopt_everywhere(cluster: &EmbeddedCluster, newer: &Arc<Configuration>) {
    for node in cluster.nodes() {
        node.txn()
            .adopt(newer.clone())
            .expect("a newer configuration");
    }
    for node in cluster.nodes() {
        node.txn()
            .commit_config(newer.id)
            .expect("the adopted configuration");
    }
}

/// A transaction decides to commit only in the configuration it began in: one that began
/// before the node adopted a newer one does not commit, nothing of it is visible, and run again
/// it commits in the new one. In both commit modes, read-write and read-only.
#[test]
fn a_transaction_begun_in_an_older_configuration_does_not_commit() {
    for mode in [CommitMode::Messages, CommitMode::OneSided] {
        let cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![]);
        let n1 = txn_node(&cluster, 0);
        let a = create(&n1, region_of(1), b"a0");
        let b = create(&n1, region_of(2), b"b0");

        let mut writer = n1.begin().expect("begin");
        assert_eq!(writer.read(a).expect("read"), b"a0");
        writer.write(b, b"b1").expect("write");
        let mut reader = n1.begin().expect("begin");
        reader.read(a).expect("read");
        reader.read(b).expect("read");

        let newer = next(cluster.config(), |_| {});
        adopt_everywhere(&cluster, &newer);
        let changed = CommitError::ConfigurationChanged {
            began: 1,
            current: 2,
        };
        assert_eq!(writer.commit(), Err(changed.clone()), "{mode:?}");
        assert_eq!(reader.commit(), Err(changed.clone()), "{mode:?}");
        assert!(Error::from(changed).is_retryable(), "Db::run runs it again");
        assert_eq!(value_at(&n1, b).expect("read"), b"b0", "nothing committed");

        let mut again = n1.begin().expect("begin");
        assert_eq!(
            again.id().config,
            2,
            "transaction ids carry the new configuration"
        );
        again.write(b, b"b2").expect("write");
        assert_eq!(again.commit(), Ok(()));
        assert_eq!(value_at(&n1, b).expect("read"), b"b2");

        settle(&cluster);
        cluster.check_replicas().expect("backups match");
        cluster.stop();
    }
}

/// Between NEW-CONFIG and NEW-CONFIG-COMMIT nothing commits in the new configuration (some
/// member may not have adopted it yet): a transaction begun in it fails with `Reconfiguring`,
/// which `Db::run` retries, and commits once it is committed.
#[test]
fn nothing_commits_in_a_configuration_until_it_is_committed() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(1), b"a0");
    let newer = next(cluster.config(), |_| {});
    adopt_only(&cluster, &newer);
    let mut txn = n1.begin().expect("begin");
    assert_eq!(txn.id().config, 2);
    txn.write(a, b"a1").expect("write");
    let refused = CommitError::Reconfiguring { config: 2 };
    assert_eq!(txn.commit(), Err(refused.clone()));
    assert!(Error::from(refused).is_retryable());
    assert_eq!(
        n1.commit_config(3),
        Err(NotAdopted {
            offered: 3,
            current: 2
        })
    );
    for node in cluster.nodes() {
        node.txn().commit_config(2).expect("adopted");
    }
    overwrite(&n1, a, b"a2");
    assert_eq!(value_at(&n1, a).expect("read"), b"a2");
    settle(&cluster);
    cluster.stop();
}

/// Ids only grow at a node: the configuration it has, or an older one, is refused.
#[test]
fn a_node_adopts_only_higher_configuration_ids() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let second = next(cluster.config(), |_| {});
    n1.adopt(second.clone()).expect("newer");
    for stale in [second.clone(), cluster.config().clone()] {
        assert_eq!(
            n1.adopt(stale.clone()),
            Err(StaleConfiguration {
                offered: stale.id,
                current: 2,
            })
        );
    }
    assert_eq!(n1.config_id(), 2);
    cluster.stop();
}

/// A region that is blocked (its primary changed) or lost in the node's configuration is
/// refused with the reason, for reads, writes and allocations; the other regions keep
/// committing.
#[test]
fn regions_that_do_not_serve_are_refused_and_the_others_keep_committing() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let serving = create(&n1, region_of(0), b"s0");
    let blocked = create(&n1, region_of(1), b"b0");
    let lost = create(&n1, region_of(2), b"l0");
    let newer = next(cluster.config(), |config| {
        for placement in &mut config.regions {
            if placement.region == region_of(1) {
                placement.state = RegionState::Blocked;
            }
            if placement.region == region_of(2) {
                placement.state = RegionState::Lost;
            }
        }
    });
    adopt_everywhere(&cluster, &newer);

    for (addr, state) in [(blocked, RegionState::Blocked), (lost, RegionState::Lost)] {
        let refused = TxnError::RegionUnavailable {
            region: addr.region(),
            state,
            config: 2,
        };
        let mut txn = n1.begin().expect("begin");
        assert_eq!(txn.read(addr), Err(refused.clone()));
        assert_eq!(txn.write(addr, b"x"), Err(refused.clone()));
        assert_eq!(
            txn.alloc_near(8, Addr::new(addr.region(), 0)),
            Err(refused.clone())
        );
        // A blocked region serves again once recovered: retried; a lost one does not.
        assert_eq!(
            Error::from(refused.clone()).is_retryable(),
            state == RegionState::Blocked
        );
        let message = refused.to_string();
        assert!(message.contains(state.name()), "{message}");
    }

    overwrite(&n1, serving, b"s1");
    assert_eq!(value_at(&n1, serving).expect("read"), b"s1");
    for _ in 0..20 {
        let mut txn = n1.begin().expect("begin");
        let addr = txn.alloc(8).expect("an allocation in a region that serves");
        assert_eq!(addr.region(), region_of(0), "the one region that serves");
        txn.write(addr, b"new").expect("write");
        assert_eq!(txn.commit(), Ok(()));
    }
    settle(&cluster);
    cluster.stop();
}

/// In message mode a primary that adopted a newer configuration refuses the LOCK and the
/// VALIDATE of a transaction begun in an older one, from a coordinator that has not adopted it
/// yet: the transaction does not commit, and nothing stays locked.
#[test]
fn a_primary_in_a_newer_configuration_refuses_lock_and_validate_of_an_older_one() {
    let cluster = start_in(CommitMode::Messages, REGION_BYTES, RING_BYTES, vec![]);
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    // Region 2's primary is n2; more than T_R objects there, so a read of all of them
    // validates by one VALIDATE message.
    let objects: Vec<Addr> = (0..=acre_txn::T_R)
        .map(|i| create(&n1, region_of(1), &[i as u8; 8]))
        .collect();
    let newer = next(cluster.config(), |_| {});
    for node in &cluster.nodes()[1..] {
        node.txn().adopt(newer.clone()).expect("newer");
        node.txn().commit_config(2).expect("adopted");
    }
    assert_eq!(n1.config_id(), 1, "the coordinator has not heard of it");

    let changed = Err(CommitError::ConfigurationChanged {
        began: 1,
        current: 2,
    });
    let mut writer = n1.begin().expect("begin");
    writer.write(objects[0], b"changed!").expect("write");
    assert_eq!(writer.commit(), changed, "LOCK refused");
    let mut reader = n1.begin().expect("begin");
    for &addr in &objects {
        reader.read(addr).expect("read");
    }
    assert_eq!(reader.commit(), changed, "VALIDATE refused");

    n1.adopt(newer).expect("newer");
    n1.commit_config(2).expect("adopted");
    assert_eq!(value_at(&n2, objects[0]).expect("read"), [0u8; 8]);
    overwrite(&n1, objects[0], b"changed!");
    settle(&cluster);
    cluster.check_replicas().expect("backups match");
    cluster.stop();
}

/// Four nodes, one backup each region; n4 (primary of r4, backup of r3) leaves. In the new
/// configuration r3 keeps committing with a new backup whose copy is still being filled (it
/// takes the COMMIT-BACKUPs and skips updates of blocks it has not received), r4, whose primary
/// changed, is refused with the reason, and the regions that did not change serve as before.
#[test]
fn after_a_node_leaves_surviving_primaries_commit_with_new_backups_and_its_regions_are_blocked() {
    let mut cluster = four_nodes();
    let n1 = txn_node(&cluster, 0);
    let r = |k: u32| RegionId(k);
    assert_eq!(
        cluster.config().placement(r(3)).unwrap().backups,
        [NodeId(4)]
    );
    let before: Vec<Addr> = (1..=4).map(|k| create(&n1, r(k), b"v0")).collect();
    settle(&cluster);
    // A commit whose truncation at n4 is still queued when n4 leaves: the queue to a removed
    // node is dropped, or the cluster never quiesces.
    overwrite(&n1, before[2], b"v0.5");
    assert!(n1.links().has_pending_truncations());

    let newer = next(cluster.config(), without_n4);
    cluster.reconfigure((*newer).clone()).expect("reconfigure");
    let n1 = txn_node(&cluster, 0);
    assert!(
        replica(&cluster, NodeId(1)).copy(r(3)).is_some(),
        "a new copy"
    );
    assert_eq!(
        replica(&cluster, NodeId(1)).backup().is_copying(r(3)),
        Some(true)
    );

    // r3: an object from before (its block is not in the new copy) and new ones of another
    // size class, so in a block claimed now, whose header reaches the new backup as it is
    // claimed, commit in the new configuration.
    overwrite(&n1, before[2], b"v1");
    let fresh: Vec<Addr> = (0..40).map(|_| create(&n1, r(3), &[1; 500])).collect();
    for &addr in &fresh {
        overwrite(&n1, addr, &[2; 500]);
    }
    assert_eq!(value_at(&n1, before[2]).expect("read"), b"v1");
    for k in [1, 2] {
        overwrite(&n1, before[k - 1], b"v1");
    }
    let refused = value_at(&n1, before[3]).unwrap_err();
    assert_eq!(
        refused,
        Error::Txn(TxnError::RegionUnavailable {
            region: r(4),
            state: RegionState::Blocked,
            config: 2,
        })
    );
    settle(&cluster);
    for node in cluster.nodes() {
        let failures = node
            .worker()
            .expect("running")
            .stats()
            .apply_failures
            .load(Relaxed);
        assert_eq!(failures, 0, "{} failed to apply", node.node_id());
    }
    // The new backup holds what it applied: the objects of blocks claimed after it joined.
    let copy = replica(&cluster, NodeId(1)).copy(r(3)).expect("a copy");
    let held = acre_engine::object::load_header(copy.words_at(
        fresh[0].offset(),
        acre_engine::object::SLOT_OVERHEAD_BYTES as u64,
    ));
    assert!(
        held.version() >= 2,
        "the new backup applied {}: {held:?}",
        fresh[0]
    );
    cluster.check_replicas().expect("complete backups match");
    cluster.stop();
}

// Races between a node adopting a configuration and a commit in flight (found by review):
// each holds one record of the commit back with the fault plan ([`Held`]; the last one still
// delays it) and has the coordinator's node adopt a newer configuration meanwhile, as
// NEW-CONFIG reaching the coordinator first would.

const DELAY: Duration = Duration::from_millis(400);
const ADOPT_AFTER: Duration = Duration::from_millis(100);
/// How long a held record waits for its release before it goes on by itself, and how long a
/// test waits for the commit to reach it: a test that fails in between does not hang the
/// binary (as `acre_engine::pause::PAUSE_MAX`).
const HOLD_MAX: Duration = Duration::from_secs(30);

fn appends(kind: RecordKind) -> impl Fn(&[Op]) -> bool + Send + Sync {
    move |ops| appended_kinds(ops).contains(&kind)
}

/// The first batch from `from` to `to` that appends a `kind` record, held back until the test
/// releases it. The fault plan runs a rule's filter on the posting thread, so the commit waits
/// there with the record unsent, for however long the test takes to act. These tests used to
/// delay the record 400 ms and act 100 ms after starting the commit: a commit thread that ran
/// more than 100 ms late (a loaded two-core machine) sent nothing before the adoption, and one
/// that ran early but left the test waiting 400 ms decided before it.
///
/// The plan's lock is held while the record is: every other batch of the cluster waits too, so
/// the test does only local things meanwhile (a node adopting a configuration).
struct Held {
    reached: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

impl Held {
    /// The rule to add to the cluster's fault plan, and the handle on what it holds.
    fn rule(from: NodeId, to: NodeId, kind: RecordKind) -> (Rule, Held) {
        let (reached_sender, reached) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = Mutex::new(released);
        let holding = AtomicBool::new(false);
        let rule = Rule::to(to, Action::Delay(Duration::ZERO))
            .from(from)
            .when(move |ops| {
                if !appended_kinds(ops).contains(&kind) {
                    return false;
                }
                // The first match only: the rule acts once, later ones pass.
                if !holding.swap(true, SeqCst) {
                    let _ = reached_sender.send(());
                    // A message or the handle dropped (the sender gone) releases it.
                    let _ = released.lock().expect("poisoned").recv_timeout(HOLD_MAX);
                }
                true
            })
            .times(1);
        (rule, Held { reached, release })
    }

    /// Waits until the commit holds at the record.
    fn wait_reached(&self) {
        self.reached
            .recv_timeout(HOLD_MAX)
            .unwrap_or_else(|e| panic!("the commit did not reach the held record: {e}"));
    }

    /// Lets the record go.
    fn release(self) {
        let _ = self.release.send(());
    }
}

/// A commit whose decision check (after VALIDATE) fails aborts; it must not then be handed
/// to the finisher, which would send COMMIT-BACKUP and COMMIT-PRIMARY of an aborted
/// transaction: the backups apply it, the primary (which got ABORT) does not.
#[test]
fn a_commit_aborted_at_the_decision_check_is_not_finished_later() {
    for mode in [CommitMode::OneSided, CommitMode::Messages] {
        let cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![]);
        let n1 = txn_node(&cluster, 0);
        let a = create(&n1, region_of(1), b"a0"); // primary n2, backups n3 and n1
        let (rule, held) = Held::rule(NodeId(1), NodeId(2), LOCK);
        let rule = cluster.faults().add(rule);
        let coordinator = n1.clone();
        let committing = std::thread::spawn(move || {
            let mut txn = coordinator.begin().expect("begin");
            txn.write(a, b"a1").expect("write");
            txn.commit()
        });
        held.wait_reached();
        let newer = next(cluster.config(), |_| {});
        n1.adopt(newer.clone()).expect("newer"); // NEW-CONFIG reaches the coordinator first
        held.release();
        let outcome = committing.join().expect("the commit does not panic");
        assert_eq!(cluster.faults().hits(rule), 1);
        assert_eq!(
            outcome,
            Err(CommitError::ConfigurationChanged {
                began: 1,
                current: 2
            }),
            "{mode:?}"
        );
        let handed = n1.unfinished_commits();
        for node in &cluster.nodes()[1..] {
            node.txn().adopt(newer.clone()).expect("newer");
        }
        for node in cluster.nodes() {
            node.txn().commit_config(2).expect("adopted");
        }
        std::thread::sleep(Duration::from_millis(600)); // the finisher's rounds
        settle(&cluster);
        assert_eq!(value_at(&n1, a).expect("read"), b"a0", "{mode:?}");
        assert_eq!(
            handed, 0,
            "{mode:?}: an aborted commit was handed to the finisher"
        );
        cluster
            .check_replicas()
            .unwrap_or_else(|e| panic!("{mode:?}: the backups applied an aborted commit: {e}"));
        cluster.stop();
    }
}

/// A commit that read an object of a region which becomes blocked in the configuration its
/// node adopts while the commit's LOCK travels: every step resolves primaries in the
/// transaction's own configuration (VALIDATE used to look the region up in the node's
/// configuration now and panic on `RegionUnavailable`), and the decision check aborts it.
#[test]
fn a_region_blocked_during_a_commit_does_not_panic_validate() {
    for mode in [CommitMode::Messages, CommitMode::OneSided] {
        let cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![]);
        let n1 = txn_node(&cluster, 0);
        let b = create(&n1, region_of(1), b"b0"); // primary n2
        let a = create(&n1, region_of(2), b"a0"); // primary n3
        let other = create(&n1, region_of(2), b"o0");
        let (rule, held) = Held::rule(NodeId(1), NodeId(3), LOCK);
        let _rule = cluster.faults().add(rule);
        let coordinator = n1.clone();
        let committing = std::thread::spawn(move || {
            let mut txn = coordinator.begin().expect("begin");
            txn.read(b).expect("read b");
            txn.read(other).expect("read other");
            txn.write(a, b"a1").expect("write");
            txn.commit()
        });
        held.wait_reached();
        let newer = next(cluster.config(), |config| {
            for placement in &mut config.regions {
                if placement.region == region_of(1) {
                    placement.state = RegionState::Blocked;
                }
            }
        });
        n1.adopt(newer).expect("newer");
        held.release();
        let outcome = committing.join();
        assert!(
            matches!(outcome, Ok(Err(CommitError::ConfigurationChanged { .. }))),
            "{mode:?}: the commit panicked or did not say the configuration changed"
        );
        // (no settle: the others are still in configuration 1)
    }
}

/// A backup removed by the configuration the coordinator adopts while its COMMIT-BACKUP
/// travels: the commit decided before the change and commits; nothing re-attaches a link to
/// the removed node (giving back the reservation there used to panic, and poison the link).
#[test]
fn a_backup_removed_during_a_commit_does_not_panic_it() {
    let cluster = four_nodes();
    let n1 = txn_node(&cluster, 0);
    let r = |k: u32| RegionId(k);
    assert_eq!(
        cluster.config().placement(r(3)).unwrap().backups,
        [NodeId(4)]
    );
    let x: Addr = create(&n1, r(3), b"v0");
    let _rule = cluster.faults().add(
        Rule::to(NodeId(4), Action::Delay(DELAY))
            .from(NodeId(1))
            .when(appends(COMMIT_BACKUP))
            .times(1),
    );
    let coordinator = n1.clone();
    let committing = std::thread::spawn(move || {
        let mut txn = coordinator.begin().expect("begin");
        txn.write(x, b"v1").expect("write");
        txn.commit()
    });
    std::thread::sleep(ADOPT_AFTER);
    let newer = next(cluster.config(), without_n4);
    replica(&cluster, NodeId(1)).adopt(newer).expect("adopt");
    let outcome = committing.join();
    assert!(
        matches!(outcome, Ok(Ok(()))),
        "the commit decided before the change panicked or failed"
    );
}

/// As the first, with the coordinator's own node one of the primaries: the finisher would
/// install an aborted transaction inline (and panic: its own LOCK was undone).
#[test]
fn an_aborted_commit_with_a_local_primary_is_not_finished_later() {
    for mode in [CommitMode::Messages, CommitMode::OneSided] {
        let cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![]);
        let n1 = txn_node(&cluster, 0);
        let here = create(&n1, region_of(0), b"h0"); // primary n1
        let a = create(&n1, region_of(1), b"a0"); // primary n2
        let (rule, held) = Held::rule(NodeId(1), NodeId(2), LOCK);
        let _rule = cluster.faults().add(rule);
        let coordinator = n1.clone();
        let committing = std::thread::spawn(move || {
            let mut txn = coordinator.begin().expect("begin");
            txn.write(here, b"h1").expect("write");
            txn.write(a, b"a1").expect("write");
            txn.commit()
        });
        held.wait_reached();
        let newer = next(cluster.config(), |_| {});
        n1.adopt(newer.clone()).expect("newer");
        held.release();
        let outcome = committing.join().expect("the commit does not panic");
        assert!(matches!(
            outcome,
            Err(CommitError::ConfigurationChanged { .. })
        ));
        for node in &cluster.nodes()[1..] {
            node.txn().adopt(newer.clone()).expect("newer");
        }
        for node in cluster.nodes() {
            node.txn().commit_config(2).expect("adopted");
        }
        std::thread::sleep(Duration::from_millis(600)); // the finisher's rounds
        assert_eq!(n1.unfinished_commits(), 0, "{mode:?}");
        assert_eq!(value_at(&n1, here).expect("read"), b"h0");
        assert_eq!(value_at(&n1, a).expect("read"), b"a0");
        settle(&cluster);
        cluster.check_replicas().expect("replicas");
        cluster.stop();
    }
}

/// An unfinished commit whose backup is removed by a reconfiguration: the removed backup is
/// recovery's now, so the finisher drops it (and its reservation there, whose link went with
/// the node) and finishes the commit at the primary; a stop afterwards is clean.
#[test]
fn an_unfinished_commit_at_a_removed_backup_stops_cleanly() {
    let mut cluster = four_nodes();
    let n1 = txn_node(&cluster, 0);
    let r = |k: u32| RegionId(k);
    let x: Addr = create(&n1, r(3), b"v0"); // primary n3, backup n4
    cluster.faults().add(
        Rule::to(NodeId(4), Action::Fail)
            .from(NodeId(1))
            .when(appends(COMMIT_BACKUP)),
    );
    let mut txn = n1.begin().expect("begin");
    txn.write(x, b"v1").expect("write");
    assert!(matches!(
        txn.commit(),
        Err(CommitError::Indeterminate { .. })
    ));
    assert_eq!(n1.unfinished_commits(), 1);
    let newer = next(cluster.config(), without_n4);
    cluster.reconfigure((*newer).clone()).expect("reconfigure");
    cluster.faults().heal();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while n1.unfinished_commits() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the commit was not finished"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(value_at(&n1, x).expect("read"), b"v1");
    settle(&cluster);
    cluster.check_replicas().expect("complete backups match");
    // A clean stop of the coordinator stops its finisher first (what a client's stop does).
    n1.stop_finisher();
    cluster.stop();
}

/// A configuration that creates a region (as the CM does when data grows): its primary
/// formats it, its backups take it complete (there is nothing to copy), and it serves at once;
/// a configuration that makes a node primary of an existing region it holds no copy of is
/// refused.
#[test]
fn a_region_created_by_a_configuration_serves_at_once() {
    let mut cluster = three_nodes();
    let created = RegionId(4);
    let newer = next(cluster.config(), |config| {
        config.regions.push(acre_txn::config::Placement {
            region: created,
            primary: NodeId(1),
            backups: vec![NodeId(2), NodeId(3)],
            copying: vec![],
            state: RegionState::Active,
        });
    });
    cluster.reconfigure((*newer).clone()).expect("reconfigure");
    let n2 = txn_node(&cluster, 1);
    let objects: Vec<Addr> = (0..10).map(|i| create(&n2, created, &[i; 16])).collect();
    for &addr in &objects {
        overwrite(&n2, addr, b"again");
    }
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("the new region's backups match");
    assert_eq!(
        replica(&cluster, NodeId(2)).backup().is_copying(created),
        Some(false)
    );
    cluster.stop();
}

/// A configuration that makes a node primary of an existing region it holds no copy of (a
/// primary is only ever a promoted backup) is refused, and the node stays where it was.
#[test]
fn a_node_refuses_to_be_primary_of_a_region_it_holds_no_copy_of() {
    let cluster = four_nodes();
    let r3 = RegionId(3);
    assert!(replica(&cluster, NodeId(1)).copy(r3).is_none());
    let wrong = next(cluster.config(), |config| {
        for placement in &mut config.regions {
            if placement.region == r3 {
                placement.primary = NodeId(1);
            }
        }
    });
    let refused = replica(&cluster, NodeId(1)).adopt(wrong).unwrap_err();
    assert!(
        matches!(refused, AdoptError::PrimaryWithoutCopy { region, config: 2 } if region == r3),
        "{refused}"
    );
    assert_eq!(txn_node(&cluster, 0).config_id(), 1);
    cluster.stop();
}

/// Between NEW-CONFIG and NEW-CONFIG-COMMIT a primary may claim a block whose header it cannot
/// copy to a new backup that has not adopted the configuration yet (it holds no copy): the
/// allocation fails with `Reconfiguring`, which `Db::run` retries, locally and for another
/// node's ALLOC alike (it used to be a non-retryable `Unavailable`).
#[test]
fn an_allocation_that_meets_a_new_backup_not_ready_yet_is_retried() {
    let cluster = four_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    let r1 = RegionId(1);
    assert_eq!(cluster.config().placement(r1).unwrap().backups, [NodeId(2)]);
    let newer = next(cluster.config(), |config| {
        for placement in &mut config.regions {
            if placement.region == r1 {
                placement.backups = vec![NodeId(3)];
                placement.copying = vec![NodeId(3)];
            }
        }
    });
    // NEW-CONFIG has reached n1 only.
    replica(&cluster, NodeId(1)).adopt(newer).expect("adopt");
    for (coordinator, len) in [(&n1, 300), (&n2, 600)] {
        let mut txn = coordinator.begin().expect("begin");
        let refused = txn.alloc_near(len, Addr::new(r1, 0)).unwrap_err();
        assert_eq!(
            refused,
            TxnError::Reconfiguring { config: 2 },
            "{}",
            coordinator.node_id()
        );
        assert!(Error::from(refused).is_retryable());
    }
    cluster.stop();
}

/// Node processes over tcp (four `ProcessNode`s in this test process) adopt a configuration
/// without n4: n1 publishes its new copy of r3 in its manifest, r3 commits with it, r4 (whose
/// primary was n4) is refused, and n4, which did not adopt it, is refused by the others' NIC
/// threads: it can no longer reach their memory.
#[test]
fn tcp_node_processes_adopt_a_configuration_and_fence_the_node_it_removed() {
    node_processes_adopt_and_fence(acre_engine::fabric::transport_kind::TransportKind::Tcp);
}

/// As over tcp, through libfabric's `tcp;ofi_rxm` (docs/failures.md#fencing): the others
/// closed n4's registrations when they adopted the configuration, so n4's one-sided READ and
/// WRITE under the keys it knows fail at them and change nothing, and their new cards give it
/// no key.
#[cfg(feature = "ofi")]
#[test]
fn ofi_node_processes_adopt_a_configuration_and_fence_the_node_it_removed() {
    node_processes_adopt_and_fence(acre_engine::fabric::transport_kind::TransportKind::Ofi);
}

fn node_processes_adopt_and_fence(transport: acre_engine::fabric::transport_kind::TransportKind) {
    use acre_engine::directory::{AreaKind, NodeManifest};
    use acre_engine::fabric::transport_kind::TransportKind;

    let dir = tempfile::tempdir().expect("create the cluster directory");
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let mut config = Configuration::place(1, ids.clone(), vec![], 1, 1, REGION_BYTES, BLOCK_BYTES)
        .expect("config");
    config.commit = commit_mode();
    let nodes = crate::fixture::process_nodes(dir.path(), transport, None, &config);
    let r = |k: u32| RegionId(k);
    let (n1, n2, n4) = (nodes[0].txn(), nodes[1].txn(), nodes[3].txn());
    let x = create(n2, r(3), b"v0"); // primary n3, backup n4
    let y = create(n2, r(1), b"y0"); // primary n1, backup n2

    let newer = next(&config, without_n4);
    for node in &nodes[..3] {
        node.adopt(newer.clone()).expect("adopt");
    }
    for node in &nodes[..3] {
        node.commit_config(2).expect("commit");
    }
    let manifest = NodeManifest::read(dir.path(), NodeId(1))
        .expect("read")
        .expect("published");
    assert!(
        manifest.areas.iter().any(|area| area.id == r(3)),
        "n1's manifest lists its new copy of r3"
    );

    overwrite(n2, x, b"v1");
    overwrite(n1, y, b"y1");
    assert_eq!(value_at(n2, x).expect("read"), b"v1");
    let blocked = value_at(n2, Addr::new(r(4), 64)).unwrap_err();
    assert!(
        matches!(blocked, Error::Txn(TxnError::RegionUnavailable { .. })),
        "{blocked}"
    );
    if transport == TransportKind::Tcp {
        // n4 still runs in configuration 1: the others no longer serve it, and say which
        // configuration they are in (a node behind learns it and runs the transaction again;
        // a removed one, as n4, never will).
        let fenced = value_at(n4, y).unwrap_err();
        assert!(
            matches!(fenced, Error::Txn(TxnError::Reconfiguring { config: 2 })),
            "{fenced}"
        );
    } else {
        // n4 still holds n1's card of configuration 1, with its registration keys: the
        // provider at n1 refuses them now. Its transaction fails, and its WRITE straight into
        // r1 at n1 changes nothing.
        let fenced = value_at(n4, y);
        assert!(fenced.is_err(), "{fenced:?}");
        let r1 = manifest
            .areas
            .iter()
            .find(|area| area.id == r(1) && area.kind == AreaKind::Region)
            .expect("n1 holds r1");
        let key = r1.access_key().expect("a key");
        let before = value_at(n1, y).expect("read at n1");
        let write = n4
            .fabric()
            .write(NodeId(1), Addr::new(r(1), 0), key, vec![0xff; 4096]);
        assert!(write.is_err(), "n4's WRITE at n1 is refused: {write:?}");
        assert_eq!(
            value_at(n1, y).expect("read at n1"),
            before,
            "nothing changed"
        );
        // n1's card, as published after it adopted configuration 2, gives n4 no key.
        let card = manifest.ofi.as_ref().expect("n1's card");
        assert_eq!(card.config, Some(2));
        for area in &card.areas {
            assert!(
                area.grants
                    .iter()
                    .all(|g| g.node.is_some_and(|n| n != NodeId(4))),
                "{:?}",
                area.grants
            );
        }
    }
    for node in nodes {
        node.stop();
    }
}

/// A transaction run to completion (`Transact`, what `Db::run` does) waits through a
/// reconfiguration longer than its conflict retries last (about 5 s of attempts): the
/// configuration manager waits out removed nodes' leases before it commits, and the run must
/// not give up meanwhile.
#[test]
fn a_run_waits_through_a_long_reconfiguration() {
    use acre_txn::Transact;
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(1), b"a0");
    let newer = next(cluster.config(), |_| {});
    adopt_only(&cluster, &newer);
    let committing = {
        let nodes: Vec<_> = cluster.nodes().iter().map(|n| n.txn().clone()).collect();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(7));
            for node in nodes {
                node.commit_config(2).expect("adopted");
            }
        })
    };
    let started = std::time::Instant::now();
    n1.transact(|txn| Ok(txn.write(a, b"a1")?))
        .expect("the run waited for the configuration to be committed");
    assert!(started.elapsed() >= Duration::from_secs(6));
    committing.join().expect("committed");
    assert_eq!(value_at(&n1, a).expect("read"), b"a1");
    settle(&cluster);
    cluster.stop();
}

/// A coordinator that adopted a configuration creating a region (a client adopts one while the
/// CM distributes it) asks the region's primary for a slot before the primary has adopted it:
/// the primary holds no such region yet. The ALLOC is answered "not primary here", which the
/// coordinator must take for a configuration on its way (retried by `Db::run`), not for memory
/// that is gone. Before, it failed the transaction with `OutOfMemory` ("n1 refused the
/// allocation"): the TPC-C load and the two-clients growth test failed so under load.
#[test]
fn an_alloc_that_reaches_a_primary_before_it_adopted_the_region_is_retried() {
    let cluster = crate::fixture::three_nodes();
    let r4 = RegionId(4);
    let newer = next(cluster.config(), |config| {
        config.regions.push(acre_txn::config::Placement {
            region: r4,
            primary: NodeId(1),
            backups: vec![NodeId(2)],
            copying: Vec::new(),
            state: RegionState::Active,
        });
    });
    let mut cluster = cluster;
    for node in [NodeId(2), NodeId(3)] {
        cluster.adopt_at(node, newer.clone()).expect("adopt");
    }
    let coordinator = crate::fixture::txn_node(&cluster, 1);
    let mut txn = coordinator.begin().expect("begin");

    let result = txn.alloc_near(8, Addr::new(r4, 0));

    assert!(
        matches!(result, Err(TxnError::Reconfiguring { .. })),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_retryable());
    drop(txn);
    cluster.adopt_at(NodeId(1), newer.clone()).expect("adopt");
    cluster.stop();
}
