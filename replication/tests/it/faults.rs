//! The steady state under injected faults (no node fails for good): each test puts one fault
//! exactly between two steps of the protocol with the cluster's [`FaultPlan`] and checks what
//! the application is told and what the cluster keeps (docs/failures.md#what-happens-today).
//!
//! [`FaultPlan`]: acre_engine::fabric::fault::FaultPlan

use crate::fixture::{
    BLOCK_BYTES, REGION_BYTES, RING_BYTES, create, overwrite, primary_header, region_of, replica,
    rings, settle, start, start_in, three_nodes, three_nodes_on, txn_node, value_at,
};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::channel::{RING_AREA_BASE, appended_kinds};
use acre_engine::clock::Clock;
use acre_engine::fabric::Op;
use acre_engine::fabric::fault::{Action, Rule};
use acre_engine::slab::BLOCK_HEADER_BYTES;
use acre_nvm_log::RecordKind;
use acre_replication::ReplicaNode;
use acre_txn::config::CommitMode;
use acre_txn::record::{COMMIT_BACKUP, COMMIT_PRIMARY, LOCK, TRUNCATE};
use acre_txn::reply::REPLY_AREA_ID;
use acre_txn::txn_node::REPLY_TIMEOUT;
use acre_txn::{CommitError, TxnError};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a test checks that an object stays locked (2 ms apart).
const STAYS_LOCKED_CHECKS: usize = 100;

/// Transactions `node`'s worker has truncated so far.
fn truncated(node: &ReplicaNode) -> u64 {
    node.worker()
        .expect("a worker")
        .stats()
        .truncated
        .load(Ordering::Acquire)
}

/// Waits (up to 5 s, else fails the test) until `done`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Matches a reply to a coordinator: one WRITE into its reply area, then a NOTIFY.
fn is_reply(ops: &[Op]) -> bool {
    matches!(ops, [Op::Write { addr, .. }, Op::Notify] if addr.region() == REPLY_AREA_ID)
}

/// Matches a block header's copy to a backup: a WRITE of its words 1..4, a WRITE of its magic
/// at the block's start, a PERSIST.
fn is_header_copy(ops: &[Op]) -> bool {
    matches!(ops, [Op::Write { .. }, Op::Write { addr, .. }, Op::Persist { .. }]
        if addr.region().0 < RING_AREA_BASE && (addr.offset() as u64).is_multiple_of(BLOCK_BYTES))
}

/// Matches batches that append a record of `kind`.
fn appends(kind: RecordKind) -> impl Fn(&[Op]) -> bool + Send + Sync {
    move |ops| appended_kinds(ops).contains(&kind)
}

/// docs/protocol.md#commit-outcomes: a transaction is committed once one primary holds its
/// COMMIT-PRIMARY, whatever happens to the others. `commit` must say so: an error would invite
/// the application to run it again and apply it twice. The primary that missed it gets it again
/// once it answers (docs/protocol.md#unfinished-commits), and installs.
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
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1");
    // The coordinator sends n3 its COMMIT-PRIMARY again: b is installed, and the records are
    // truncated everywhere.
    wait_until("n3 installs b", || !primary_header(&cluster, b).is_locked());
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1");
    settle(&cluster);
    assert_eq!(n1.unfinished_commits(), 0);
}

/// docs/protocol.md#commit-backup: an append that failed may still have executed in part (a
/// connection that broke after the record's words landed), so a failed COMMIT-BACKUP may be
/// durable at that backup. The coordinator cannot abort then, and `commit` says so with the
/// transaction id instead of "nothing durable, retry". Then the coordinator finishes the commit
/// itself once the backup answers (docs/protocol.md#unfinished-commits): COMMIT-BACKUP again
/// (the backup may now hold it twice), COMMIT-PRIMARY, truncation. Until then the object is
/// neither aborted nor installed.
#[test]
fn a_commit_backup_that_failed_half_way_is_finished_once_the_backup_answers() {
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, RING_BYTES, vec![client]);
    let coordinator = replica(&cluster, client).txn().clone();
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
    // While n2 takes nothing from the client, a is neither aborted nor installed: the primary
    // keeps the lock (its worker has every record it will get within a few ms).
    let down = cluster
        .faults()
        .add(Rule::to(NodeId(2), Action::Fail).from(client));
    for _ in 0..STAYS_LOCKED_CHECKS {
        assert!(
            primary_header(&cluster, a).is_locked(),
            "a waits for its coordinator"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(coordinator.unfinished_commits(), 1);
    cluster.faults().remove(down);
    wait_until("the coordinator finishes the commit", || {
        !primary_header(&cluster, a).is_locked()
    });
    assert_eq!(value_at(&coordinator, a).expect("read a"), b"a1");
    settle(&cluster);
    assert_eq!(coordinator.unfinished_commits(), 0);
    overwrite(&coordinator, a, b"a2");
    assert_eq!(value_at(&coordinator, a).expect("read a"), b"a2");
}

/// docs/protocol.md#allocation: a backup can only apply an object in a block whose header it
/// holds, so no object in a newly claimed block may commit before the header is durable at
/// every backup. Here the header's copy to n3 is slow; another transaction allocating the same
/// size class meanwhile must not commit into that block (or, if it does, must wait for the
/// header), and n3 must end with every committed object.
#[test]
fn no_object_commits_in_a_block_before_its_header_reaches_every_backup() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let region = region_of(0); // primary n1, backups n2 and n3
    let header_copy = is_header_copy;
    let slow = cluster.faults().add(
        Rule::to(NodeId(3), Action::Delay(Duration::from_millis(500)))
            .from(NodeId(1))
            .when(header_copy)
            .times(1),
    );
    let claimer = {
        let n1 = n1.clone();
        std::thread::spawn(move || create(&n1, region, &[1; 100]))
    };
    // Let the claimer get to its header copy, then allocate in the same size class.
    wait_until("the claimer copies the block header", || {
        cluster.faults().hits(slow) > 0
    });
    let second = create(&n1, region, &[2; 100]);
    let first = claimer.join().expect("the claimer");
    assert_ne!(first, second);
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("every backup holds every committed object");
    cluster.stop();
}

/// docs/protocol.md#record-retention: a backup that cannot apply a committed transaction at
/// truncation (here its copy of the block header was wiped) keeps the transaction and its
/// records: dropping them would lose the update at this replica for good. The ring stays
/// pinned (visible to the operator) until the cause is repaired or recovery takes over.
#[test]
fn a_backup_that_cannot_apply_keeps_the_transaction_and_its_records() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(0), b"a0"); // primary n1, backups n2 and n3
    settle(&cluster);
    let block = a.offset() as u64 / BLOCK_BYTES * BLOCK_BYTES;
    let n3_copy = replica(&cluster, NodeId(3))
        .copy(region_of(0))
        .expect("n3 backs up region 1");
    for word in n3_copy.words_at(block as u32, BLOCK_HEADER_BYTES) {
        word.store(0, Ordering::Release);
    }
    let n3 = replica(&cluster, NodeId(3));
    let truncated_before = truncated(n3);
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write");
    assert_eq!(txn.commit(), Ok(()));
    n1.links()
        .flush_truncations(Duration::ZERO)
        .expect("send the truncation");
    wait_until("n3 reads the truncation", || {
        truncated(n3) > truncated_before
    });
    assert_eq!(
        n3.backup().held_count(),
        1,
        "n3 dropped a committed transaction"
    );
    let ring = rings(&cluster)
        .into_iter()
        .find(|ring| ring.receiver == NodeId(3) && ring.sender == NodeId(1))
        .expect("n1's ring at n3");
    assert!(
        ring.head < ring.tail,
        "n3 truncated the records it could not apply: {ring:?}"
    );
    cluster.stop();
}

/// docs/failures.md#what-happens-today: a primary's worker answers every coordinator, so it
/// must never wait on one of them. Here n2's reply to n1 stalls for seconds (n1 paused, or a
/// slow link); n3's transaction at n2 meanwhile commits at its usual speed. Message mode: in
/// one-sided mode a write's commit has no reply to stall.
#[test]
fn a_stalled_coordinator_does_not_stall_the_primary_for_others() {
    const STALL: Duration = Duration::from_secs(3);
    let cluster = start_in(CommitMode::Messages, REGION_BYTES, RING_BYTES, vec![]);
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    let a = create(&n1, region_of(1), b"a0"); // primary n2
    let b = create(&n3, region_of(1), b"b0"); // primary n2
    let stalled = cluster.faults().add(
        Rule::to(NodeId(1), Action::Delay(STALL))
            .from(NodeId(2))
            .when(is_reply)
            .times(1),
    );
    let slow = {
        let n1 = n1.clone();
        std::thread::spawn(move || {
            let mut txn = n1.begin().expect("begin");
            txn.write(a, b"a1").expect("write");
            txn.commit()
        })
    };
    wait_until("n2 answers n1", || cluster.faults().hits(stalled) > 0);
    let started = Instant::now();
    let mut txn = n3.begin().expect("begin");
    txn.write(b, b"b1").expect("write");
    assert_eq!(txn.commit(), Ok(()));
    let took = started.elapsed();
    assert!(
        took < STALL / 3,
        "n3's commit at n2 waited {took:?} behind n2's stalled reply to n1"
    );
    assert_eq!(slow.join().expect("n1's commit"), Ok(()));
    settle(&cluster);
    cluster.stop();
}

/// docs/protocol.md#truncate: truncations go to each participant on its own link; one that
/// cannot be reached must not hold back the others' (whose backups then never apply).
#[test]
fn an_unreachable_participant_does_not_hold_back_the_others_truncations() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(0), b"a0"); // primary n1, backups n2 and n3
    settle(&cluster);
    let cut = cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(NodeId(1))
            .when(appends(TRUNCATE)),
    );
    let n3 = replica(&cluster, NodeId(3));
    let truncated_before = truncated(n3);
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write");
    assert_eq!(txn.commit(), Ok(()));
    let flushed = n1.links().flush_truncations(Duration::ZERO);
    assert!(flushed.is_err(), "n2 was unreachable: {flushed:?}");
    assert!(cluster.faults().hits(cut) >= 1);
    // n3 got its truncation all the same and applies the transaction.
    wait_until("n3 gets its truncation though n2 is cut off", || {
        truncated(n3) > truncated_before
    });
    cluster.faults().heal();
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("backups match once n2 is reachable");
    cluster.stop();
}

/// docs/protocol.md#allocation: an ALLOC whose reply is lost leaves a slot reserved at the
/// primary that the coordinator never learns of. When the transaction ends, the primary must
/// get the slot back; otherwise every such timeout leaks a slot for good.
#[test]
fn a_timed_out_alloc_does_not_leak_its_slot() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let near = Addr::new(region_of(1), 0); // primary n2, nothing allocated there yet
    let lost = cluster.faults().add(
        Rule::to(NodeId(1), Action::Fail)
            .from(NodeId(2))
            .when(is_reply),
    );
    let mut txn = n1.begin().expect("begin");
    let outcome = txn.alloc_near(8, near);
    assert!(
        matches!(
            outcome,
            Err(TxnError::Unavailable {
                node: NodeId(2),
                ..
            })
        ),
        "the ALLOC reply was lost: {outcome:?}"
    );
    assert!(cluster.faults().hits(lost) >= 1);
    drop(txn);
    cluster.faults().heal();
    settle(&cluster);
    // The slot the lost ALLOC reserved (the first of the block it claimed) is free again: the
    // next allocation of the same size class gets it.
    let first_slot = Addr::new(region_of(1), BLOCK_HEADER_BYTES as u32);
    assert_eq!(
        create(&n1, region_of(1), &[0; 8]),
        first_slot,
        "the slot leaked"
    );
    settle(&cluster);
    cluster.stop();
}

/// docs/failures.md#clock: a coordinator waits for a reply on its process's clock, not on real
/// time. Its ALLOC reply lost, it gives up as soon as the clock jumps past [`REPLY_TIMEOUT`],
/// not [`REPLY_TIMEOUT`] of real time later.
#[test]
fn a_reply_wait_times_out_when_the_clock_passes_its_deadline() {
    let (clock, control) = Clock::controlled();
    let cluster = three_nodes_on(clock);
    let n1 = txn_node(&cluster, 0);
    let near = Addr::new(region_of(1), 0); // primary n2
    let lost = cluster.faults().add(
        Rule::to(NodeId(1), Action::Fail)
            .from(NodeId(2))
            .when(is_reply),
    );
    let allocating = {
        let n1 = n1.clone();
        std::thread::spawn(move || {
            let mut txn = n1.begin().expect("begin");
            let outcome = txn.alloc_near(8, near);
            (outcome, Instant::now())
        })
    };
    wait_until("n2's ALLOC reply is lost", || {
        cluster.faults().hits(lost) > 0
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !allocating.is_finished(),
        "n1 waits for the reply while its clock stands short of the deadline"
    );
    let jumped = Instant::now();
    control.jump_forward(REPLY_TIMEOUT);
    let (outcome, ended) = allocating.join().expect("the allocating thread");
    assert!(
        matches!(
            outcome,
            Err(TxnError::Unavailable {
                node: NodeId(2),
                ..
            })
        ),
        "the ALLOC reply was lost: {outcome:?}"
    );
    let after = ended.saturating_duration_since(jumped);
    assert!(
        after < REPLY_TIMEOUT / 2,
        "the wait ended {after:?} of real time after the clock passed its deadline"
    );
    cluster.faults().heal();
    settle(&cluster);
    cluster.stop();
}

/// docs/failures.md#what-happens-today: serving another node's ALLOC may mean copying a new
/// block's header to every backup, and a backup can be slow; the primary's worker must not wait
/// for that while other coordinators wait for its votes.
#[test]
fn a_slow_backup_under_an_alloc_does_not_stall_the_primary_for_others() {
    const STALL: Duration = Duration::from_secs(3);
    let cluster = three_nodes();
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    let b = create(&n3, region_of(1), b"b0"); // primary n2
    settle(&cluster);
    let header_copy = is_header_copy;
    let slow = cluster.faults().add(
        Rule::to(NodeId(3), Action::Delay(STALL))
            .from(NodeId(2))
            .when(header_copy)
            .times(1),
    );
    let allocating = {
        let n1 = n1.clone();
        // A size class nothing in n2's region uses yet: its ALLOC claims a block.
        std::thread::spawn(move || create(&n1, region_of(1), &[1; 1000]))
    };
    wait_until("n2 copies the new block's header", || {
        cluster.faults().hits(slow) > 0
    });
    let started = Instant::now();
    let mut txn = n3.begin().expect("begin");
    txn.write(b, b"b1").expect("write");
    assert_eq!(txn.commit(), Ok(()));
    let took = started.elapsed();
    assert!(
        took < STALL / 3,
        "n3's commit at n2 waited {took:?} behind n2's header copy for n1's ALLOC"
    );
    allocating.join().expect("n1's allocation");
    settle(&cluster);
    cluster.check_replicas().expect("backups match");
    cluster.stop();
}

/// A request that never left (here a VALIDATE too large for any log record, refused when log
/// space is reserved) cannot be answered late, so it must not quarantine its transaction's
/// reply slot: against a pinned ring, audits that fail this way used up all 64 slots in
/// milliseconds ("all 64 transaction slots ... are in use"). Message mode: one-sided mode
/// validates by re-reads, which no log record limits (the same read-only transaction commits).
#[test]
fn a_request_that_never_left_does_not_quarantine_the_slot() {
    let cluster = start_in(CommitMode::Messages, REGION_BYTES, RING_BYTES, vec![]);
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    // More objects at n2 than one VALIDATE record can list (16 bytes a read, a record at most a
    // quarter of a 256 KiB ring).
    let mut objects = Vec::new();
    while objects.len() < 4200 {
        let mut txn = n2.begin().expect("begin");
        for _ in 0..200 {
            let addr = txn
                .alloc_near(8, Addr::new(region_of(1), 0))
                .expect("alloc");
            txn.write(addr, b"x").expect("write");
            objects.push(addr);
        }
        assert_eq!(txn.commit(), Ok(()));
    }
    let mut reader = n1.begin().expect("begin");
    let slot = reader.id().thread;
    for &addr in &objects {
        reader.read(addr).expect("read");
    }
    let outcome = reader.commit();
    assert!(
        matches!(outcome, Err(CommitError::TxnTooLarge { .. })),
        "a VALIDATE of {} reads: {outcome:?}",
        objects.len()
    );
    let next = n1.begin().expect("begin");
    assert_eq!(
        next.id().thread,
        slot,
        "the slot of a request that never left was quarantined"
    );
    drop(next);
    settle(&cluster);
    cluster.stop();
}

/// docs/protocol.md#abort: a LOCK whose append failed may still have landed (its words arrived,
/// the persist after them did not), and the primary then locks. The abort must reach that
/// primary too, or the objects stay locked until recovery.
#[test]
fn a_lock_whose_append_failed_is_aborted_too() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(1), b"a0"); // primary n2
    let b = create(&n1, region_of(1), b"b0");
    settle(&cluster);
    let cut = cluster.faults().add(
        Rule::to(NodeId(2), Action::Partial(2))
            .from(NodeId(1))
            .when(appends(LOCK))
            .times(1),
    );
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write");
    let outcome = txn.commit();
    assert_eq!(cluster.faults().hits(cut), 1);
    assert!(
        matches!(
            outcome,
            Err(CommitError::Unavailable {
                node: NodeId(2),
                ..
            })
        ),
        "a LOCK that failed to append: {outcome:?}"
    );
    // The next append to n2 makes the ring's tail cover the LOCK that landed, so n2 reads it
    // and locks a; whatever came after it must unlock a again.
    overwrite(&n1, b, b"b1");
    settle(&cluster);
    assert!(
        !primary_header(&cluster, a).is_locked(),
        "a is still locked"
    );
    assert_eq!(value_at(&n1, a).expect("read a"), b"a0");
    cluster.stop();
}

/// Rings small enough that a few hundred kept records fill one.
const SMALL_RING_BYTES: u64 = 32 << 10;
/// How long unfinished commits may take to finish once their participant answers again.
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

/// docs/protocol.md#unfinished-commits: what an unfinished commit still has to send goes inside
/// the log space its commit reserved, so a ring that filled meanwhile (here with the LOCKs those
/// very commits pin at their primary) cannot keep it out. Found by review: the finisher reserved
/// anew and waited on the full ring for good, the objects locked for everyone.
#[test]
fn unfinished_commits_finish_though_the_primary_ring_filled_meanwhile() {
    const OBJECTS: usize = 400;
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, SMALL_RING_BYTES, vec![client]);
    let coordinator = replica(&cluster, client).txn().clone();
    // Region 1: primary n1, backups n2 and n3; region 3: primary n3, backups n1 and n2.
    let at_n1: Vec<Addr> = (0..OBJECTS)
        .map(|_| create(&coordinator, region_of(0), b"a0"))
        .collect();
    let at_n3: Vec<Addr> = (0..OBJECTS)
        .map(|_| create(&coordinator, region_of(2), b"b0"))
        .collect();
    settle(&cluster);
    // n2 backs up both regions and takes no COMMIT-BACKUP from the client: every commit is
    // unfinished and keeps its LOCK at its primary, until n1's ring is full.
    let down = cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(client)
            .when(appends(COMMIT_BACKUP)),
    );
    let commit = |addr: Addr| {
        let mut txn = coordinator.begin().expect("begin");
        txn.write(addr, b"new").expect("write");
        txn.commit()
    };
    let mut written = Vec::new();
    for objects in [&at_n1, &at_n3] {
        for &addr in objects {
            match commit(addr) {
                Err(CommitError::Indeterminate { .. }) => written.push(addr),
                Err(CommitError::LogFull { .. }) => break,
                other => panic!("a commit n2 cannot back up ended as {other:?}"),
            }
        }
    }
    assert!(
        written.len() < 2 * OBJECTS,
        "the rings never filled: {} commits",
        written.len()
    );
    assert_eq!(coordinator.unfinished_commits(), written.len());
    cluster.faults().remove(down);
    let deadline = Instant::now() + FINISH_TIMEOUT;
    while coordinator.unfinished_commits() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} of {} commits still unfinished {FINISH_TIMEOUT:?} after n2 answers again",
            coordinator.unfinished_commits(),
            written.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    settle(&cluster);
    for &addr in &written {
        assert_eq!(value_at(&coordinator, addr).expect("read"), b"new");
    }
    cluster.check_replicas().expect("replicas match");
}

/// docs/protocol.md#unfinished-commits: a client that stops stops its finisher first, so that
/// once its id is released (and it counts as gone) it sends nothing: the memory nodes settle
/// what it left, and a late COMMIT-BACKUP or COMMIT-PRIMARY of its finisher could contradict
/// their votes. Here the participant answers again only after the stop: the commit stays
/// unfinished, untouched.
#[test]
fn a_stopped_finisher_sends_nothing_more() {
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, RING_BYTES, vec![client]);
    let coordinator = replica(&cluster, client).txn().clone();
    let a = create(&coordinator, region_of(0), b"a0"); // primary n1, backups n2 and n3
    let down = cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(client)
            .when(appends(COMMIT_BACKUP)),
    );
    let mut txn = coordinator.begin().expect("begin");
    txn.write(a, b"a1").expect("write");
    assert!(matches!(
        txn.commit(),
        Err(CommitError::Indeterminate { .. })
    ));
    coordinator.stop_finisher();
    cluster.faults().remove(down);
    for _ in 0..STAYS_LOCKED_CHECKS {
        assert!(
            primary_header(&cluster, a).is_locked(),
            "a stopped finisher finished a commit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(coordinator.unfinished_commits(), 1);
}

/// docs/protocol.md#one-sided-commit-mode: the coordinator locks and installs with one-sided
/// operations, so a commit at another node's primary waits for no reply of that node (in
/// message mode it would wait for the LOCK vote, here held back for seconds), and its worker
/// only notes the records.
#[test]
fn a_one_sided_commit_waits_for_no_reply_from_the_primary() {
    const STALL: Duration = Duration::from_secs(3);
    let cluster = start_in(CommitMode::OneSided, REGION_BYTES, RING_BYTES, vec![]);
    let n1 = txn_node(&cluster, 0);
    let a = create(&n1, region_of(1), b"a0"); // primary n2
    let b = create(&n1, region_of(2), b"b0"); // primary n3
    let held_back = cluster.faults().add(
        Rule::to(NodeId(1), Action::Delay(STALL))
            .from(NodeId(2))
            .when(is_reply),
    );
    let started = Instant::now();
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write a");
    txn.write(b, b"b1").expect("write b");
    assert_eq!(txn.commit(), Ok(()));
    let took = started.elapsed();
    assert!(took < STALL / 3, "the commit waited {took:?} for n2");
    assert_eq!(cluster.faults().hits(held_back), 0, "n2 answered nothing");
    assert!(!primary_header(&cluster, a).is_locked());
    assert_eq!(value_at(&n1, a).expect("read a"), b"a1");
    assert_eq!(value_at(&n1, b).expect("read b"), b"b1");
    settle(&cluster);
    cluster.check_replicas().expect("replicas match");
}

/// An ABORT whose append fails (here twice, as while a configuration is being installed and
/// the primary refuses the sender's older one) is tried again: nothing else would release the
/// locks its LOCK took while that primary stays a member (found by `acre demo --failure`, where
/// the final audit met a lock left that way).
#[test]
fn an_abort_whose_append_failed_is_sent_again() {
    let cluster = three_nodes();
    let n3 = txn_node(&cluster, 2);
    let read = create(&n3, region_of(0), b"r0"); // primary n1
    let written = create(&n3, region_of(1), b"w0"); // primary n2
    settle(&cluster);
    let lost = cluster.faults().add(
        Rule::to(NodeId(2), Action::Fail)
            .from(NodeId(3))
            .when(|ops| appended_kinds(ops).contains(&acre_txn::record::ABORT))
            .times(2),
    );
    // The read is overwritten after the transaction read it: VALIDATE fails after LOCK at n2.
    let mut txn = n3.begin().expect("begin");
    txn.read(read).expect("read");
    txn.write(written, b"w1").expect("write");
    overwrite(&txn_node(&cluster, 0), read, b"r1");
    let outcome = txn.commit();
    assert!(
        matches!(outcome, Err(CommitError::Conflict { .. })),
        "{outcome:?}"
    );
    assert_eq!(cluster.faults().hits(lost), 2, "two ABORT appends failed");
    // The lock is released: the object can be written.
    overwrite(&n3, written, b"w2");
    assert_eq!(value_at(&n3, written).expect("read"), b"w2");
    settle(&cluster);
    cluster.stop();
}
