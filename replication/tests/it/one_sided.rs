//! Review of the one-sided commit mode: failing tests (hostile review, not for merging as is).

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, overwrite, primary_header, region_of, replica, settle,
    start_in, txn_node, value_at,
};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::channel::appended_kinds;
use acre_engine::fabric::Op;
use acre_engine::fabric::fault::{Action, Rule};
use acre_nvm_log::RecordKind;
use acre_txn::CommitError;
use acre_txn::config::CommitMode;
use acre_txn::record::ABORT;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const CLIENT: NodeId = NodeId(100);

fn appends(kind: RecordKind) -> impl Fn(&[Op]) -> bool + Send + Sync {
    move |ops| appended_kinds(ops).contains(&kind)
}

/// The one-sided install batch of the single object `at`: trailer, payload, header, PERSIST.
fn installs(at: Addr) -> impl Fn(&[Op]) -> bool + Send + Sync {
    move |ops| matches!(ops, [Op::Write { .. }, Op::Write { .. }, Op::Write { addr, .. }, Op::Persist { .. }] if *addr == at)
}

/// An install whose WRITEs all landed but whose completion was lost (here: the PERSIST fails,
/// as when a tcp connection breaks after the NIC executed the batch) is retried by the finisher
/// only where the header still names the transaction: it once installed again, unconditionally,
/// over what committed on the object meanwhile.
#[test]
fn a_finishers_second_install_does_not_undo_a_later_commit() {
    let cluster = start_in(CommitMode::OneSided, REGION_BYTES, RING_BYTES, vec![]);
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    let a = create(&n1, region_of(1), b"a0"); // primary n2
    settle(&cluster);
    // n1's first install at n2: every WRITE lands, the PERSIST "fails".
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Partial(3))
            .from(NodeId(1))
            .when(installs(a))
            .times(1),
    );
    // The finisher's install comes late (a slow link).
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Delay(Duration::from_millis(1500)))
            .from(NodeId(1))
            .when(installs(a)),
    );
    overwrite(&n1, a, b"a1"); // committed, "not installed" as far as n1 knows
    assert!(!primary_header(&cluster, a).is_locked(), "a1 landed");
    // n3 commits over it meanwhile.
    overwrite(&n3, a, b"a2");
    assert_eq!(value_at(&n3, a).expect("read a"), b"a2");
    std::thread::sleep(Duration::from_millis(2500)); // the finisher's install lands
    settle(&cluster);
    assert_eq!(
        value_at(&n3, a).expect("read a"),
        b"a2",
        "the finisher's second install of a1 undid n3's later commit"
    );
    cluster.check_replicas().expect("replicas match");
}

/// A client that dies after its COMMIT-PRIMARY is durable at a primary but before its install
/// there, or part-way through it (a killed process stops between two stores: here the trailer
/// landed, the header did not). The settlement installs at the version after the one read. It
/// once truncated without installing (the object locked for good), and then installed from the
/// trailer, a version too far (a worker panic).
#[test]
fn a_dead_clients_committed_but_uninstalled_object_is_installed() {
    for landed in [Action::Fail, Action::Partial(1), Action::Partial(2)] {
        dead_client_committed_but_uninstalled(landed);
    }
}

fn dead_client_committed_but_uninstalled(landed: Action) {
    let mut cluster = start_in(CommitMode::OneSided, REGION_BYTES, RING_BYTES, vec![CLIENT]);
    let client = replica(&cluster, CLIENT).txn().clone();
    let n1 = txn_node(&cluster, 0);
    let b = create(&client, region_of(1), b"b0"); // primary n2
    settle(&cluster);
    cluster
        .faults()
        .add(Rule::to(NodeId(2), landed).from(CLIENT).when(installs(b)));
    let mut txn = client.begin().expect("begin");
    txn.write(b, b"b1").expect("write b");
    assert_eq!(txn.commit(), Ok(()), "COMMIT-PRIMARY durable at n2");
    assert!(primary_header(&cluster, b).is_locked());
    drop(client);
    cluster.kill(CLIENT);
    cluster.faults().heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary_header(&cluster, b).is_locked() {
        assert!(
            Instant::now() < deadline,
            "{b} (committed by the dead client) is still locked 20 s after it died"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1");
    settle(&cluster);
    cluster.check_replicas().expect("replicas match");
}

/// A dead client's transaction that listed an object another transaction holds (committed, its
/// install not landed) must not release that lock when it is aborted: only locks that name the
/// dead transaction are. Before locks named their owner, the settlement released any lock at
/// the version read that no noted transaction listed.
#[test]
fn a_dead_clients_abort_does_not_unlock_a_committed_transactions_lock() {
    let mut cluster = start_in(CommitMode::OneSided, REGION_BYTES, RING_BYTES, vec![CLIENT]);
    let client = replica(&cluster, CLIENT).txn().clone();
    let n3 = txn_node(&cluster, 2);
    let x = create(&n3, region_of(1), b"x0"); // primary n2
    settle(&cluster);
    // The client reads x at v.
    let mut doomed = client.begin().expect("begin");
    doomed.read(x).expect("read x");
    doomed.write(x, b"xc").expect("write x");
    // n3 commits x8 over v; its install at n2 does not land (yet).
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(NodeId(3))
            .when(installs(x)),
    );
    overwrite(&n3, x, b"x8");
    assert!(
        primary_header(&cluster, x).is_locked(),
        "n3's committed lock"
    );
    // The client's LOCK is noted at n2, its CAS fails, its ABORT never lands; it dies.
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(CLIENT)
            .when(appends(ABORT)),
    );
    assert!(matches!(doomed.commit(), Err(CommitError::Conflict { .. })));
    drop(client);
    cluster.kill(CLIENT);
    let n2 = replica(&cluster, NodeId(2))
        .worker()
        .expect("worker")
        .stats();
    let deadline = Instant::now() + Duration::from_secs(20);
    while n2.orphans_aborted.load(Ordering::Acquire) < 1 {
        assert!(Instant::now() < deadline, "n2 did not abort the orphan");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        primary_header(&cluster, x).is_locked(),
        "the dead client's abort unlocked n3's committed, uninstalled x"
    );
}

/// Two transactions of a dead client both list x at n2: the first holds x locked (it stopped
/// before COMMIT-BACKUP), the second's CAS failed and its ABORT never landed. Before locks named
/// their owner, each one's settlement refused while the other listed x, and x stayed locked for
/// good; message mode is the control.
#[test]
fn two_orphans_listing_one_object_do_not_block_each_other() {
    for mode in [CommitMode::OneSided, CommitMode::Messages] {
        two_orphans_listing_one_object(mode);
    }
}

fn two_orphans_listing_one_object(mode: CommitMode) {
    use acre_txn::record::COMMIT_BACKUP;
    let mut cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![CLIENT]);
    let client = replica(&cluster, CLIENT).txn().clone();
    let n1 = txn_node(&cluster, 0);
    let x = create(&n1, region_of(1), b"x0"); // primary n2
    settle(&cluster);
    let mut first = client.begin().expect("begin");
    first.write(x, b"x1").expect("write x");
    let mut second = client.begin().expect("begin");
    second.write(x, b"x2").expect("write x");
    for backup in [NodeId(1), NodeId(3)] {
        cluster.faults().add(
            Rule::to(backup, Action::Fail)
                .from(CLIENT)
                .when(appends(COMMIT_BACKUP)),
        );
    }
    assert!(matches!(
        first.commit(),
        Err(CommitError::Indeterminate { .. })
    ));
    assert!(primary_header(&cluster, x).is_locked());
    cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(CLIENT)
            .when(appends(ABORT)),
    );
    assert!(matches!(second.commit(), Err(CommitError::Conflict { .. })));
    drop(client);
    cluster.kill(CLIENT);
    cluster.faults().heal();
    let deadline = Instant::now() + Duration::from_secs(20);
    while primary_header(&cluster, x).is_locked() {
        assert!(
            Instant::now() < deadline,
            "x is still locked 20 s after the client died"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(value_at(&n1, x).expect("read x"), b"x0");
    settle(&cluster);
}
