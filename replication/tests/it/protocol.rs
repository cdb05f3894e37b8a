//! The commit protocol of docs/protocol.md#commit step by step, over an embedded cluster: conflicts found at
//! LOCK and at VALIDATE, aborts that leave nothing behind, truncation that gives log space back,
//! backups that end byte-identical, what a transaction sees of its own changes, and allocation
//! at another node's primary.
//!
//! Layout used throughout: the three nodes of `fixture`, f = 2, one region per node; region
//! `k + 1` has its primary on node index `k` (`NodeId(k + 1)`) and its backups on the two others.

use crate::fixture::{
    BLOCK_BYTES, REGION_BYTES, RING_BYTES, SETTLE_TIMEOUT, create, overwrite, primary_header,
    region_of, replica, rings, settle, start, start_in, three_nodes, txn_node, value_at,
};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::Op;
use acre_engine::fabric::fault::{Action, Rule};
use acre_engine::object::load_header;
use acre_engine::slab::{BLOCK_HEADER_BYTES, block_slot_bytes};
use acre_nvm_log::random::{ConcurrentSeed, SplitMix};
use acre_replication::EmbeddedCluster;
use acre_txn::T_R;
use acre_txn::config::CommitMode;
use acre_txn::{CommitError, Error, TxnError, TxnNode};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Cluster and object helpers.

fn records_handled(cluster: &EmbeddedCluster, index: usize) -> u64 {
    cluster.nodes()[index]
        .worker()
        .expect("the worker runs")
        .stats()
        .records
        .load(Ordering::SeqCst)
}

/// Scans every object slot of every copy of every region: none may be locked.
fn assert_no_lock_bits(cluster: &EmbeddedCluster) {
    let block_bytes = cluster.config().block_bytes;
    let region_bytes = cluster.config().region_bytes;
    for placement in &cluster.config().regions {
        for holder in placement.replicas() {
            let copy = replica(cluster, holder)
                .copy(placement.region)
                .expect("a replica holds its region");
            for block in (0..region_bytes / block_bytes).map(|b| b * block_bytes) {
                let header: Vec<u8> = copy
                    .words_at(block as u32, BLOCK_HEADER_BYTES)
                    .iter()
                    .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
                    .collect();
                let Some(slot_bytes) = block_slot_bytes(&header, block_bytes) else {
                    continue;
                };
                let mut offset = block + BLOCK_HEADER_BYTES;
                while offset + slot_bytes <= block + block_bytes {
                    let header = load_header(copy.words_at(offset as u32, slot_bytes));
                    assert!(
                        !header.is_locked(),
                        "{}+{offset:#x} is locked on {holder} ({}): header={header}",
                        placement.region,
                        if holder == placement.primary {
                            "primary"
                        } else {
                            "backup"
                        }
                    );
                    offset += slot_bytes;
                }
            }
        }
    }
}

/// The object a conflict names, if the result is a conflict.
fn conflict_addr(result: &Result<(), CommitError>) -> Option<Addr> {
    match result {
        Err(CommitError::Conflict { addr, .. }) => Some(*addr),
        _ => None,
    }
}

fn is_conflict(result: &Result<(), CommitError>) -> bool {
    conflict_addr(result).is_some()
}

// ---------------------------------------------------------------------------------------------
// Conflicts: LOCK and VALIDATE.

/// FaRM SOSP'15 §4, LOCK: the primary locks each written object at the version the coordinator
/// read; an object overwritten since fails its CAS and the transaction aborts.
#[test]
fn an_overwritten_object_in_the_write_set_fails_at_lock() {
    let cluster = three_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    // (region of the stale object, region of the other written object): local and remote
    // primaries, one primary or two.
    for (stale_region, other_region) in [(0, 0), (1, 2), (2, 0)] {
        let a = create(&n1, region_of(stale_region), b"a0");
        let b = create(&n1, region_of(other_region), b"b0");
        let mut t1 = n1.begin().unwrap();
        assert_eq!(t1.read(a).unwrap(), b"a0");
        t1.write(a, b"a1").unwrap();
        t1.write(b, b"b1").unwrap();
        overwrite(&n2, a, b"a2");
        let outcome = t1.commit();
        assert!(
            is_conflict(&outcome),
            "stale write of {a} (with {b}): {outcome:?}"
        );
        if stale_region != other_region {
            // The stale object is alone at its primary: the conflict names it.
            assert_eq!(conflict_addr(&outcome), Some(a), "{outcome:?}");
        }
        assert_eq!(value_at(&n1, a).unwrap(), b"a2", "the later write stays");
        assert_eq!(value_at(&n1, b).unwrap(), b"b0", "nothing of T1 is visible");
    }
    settle(&cluster);
    assert_no_lock_bits(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// FaRM SOSP'15 §4, VALIDATE: after LOCK succeeded, the coordinator re-reads the versions of
/// the objects it read but does not write; a changed one aborts the transaction.
#[test]
fn an_overwritten_object_in_the_read_set_fails_at_validate() {
    let cluster = three_nodes();
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    for (read_region, written_region) in [(0, 0), (1, 2), (2, 1)] {
        let a = create(&n1, region_of(read_region), b"a0");
        let b = create(&n1, region_of(written_region), b"b0");
        let mut t1 = n1.begin().unwrap();
        assert_eq!(t1.read(a).unwrap(), b"a0");
        let b_value = t1.read(b).unwrap();
        t1.write(b, &[&b_value[..], b"+a0"].concat()).unwrap();
        overwrite(&n3, a, b"a2");
        let outcome = t1.commit();
        // b is unchanged, so LOCK succeeds: only VALIDATE can catch this, and it names a.
        assert!(
            is_conflict(&outcome),
            "stale read of {a} committed: {outcome:?}"
        );
        assert_eq!(conflict_addr(&outcome), Some(a), "{outcome:?}");
        assert_eq!(
            value_at(&n1, b).unwrap(),
            b"b0",
            "the aborted write is not visible"
        );
        assert_eq!(value_at(&n1, a).unwrap(), b"a2");
    }
    settle(&cluster);
    assert_no_lock_bits(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// docs/protocol.md#read-only-transactions: a read-only transaction validates its reads and serializes at its last read;
/// one that read two objects, one overwritten in between, cannot commit.
#[test]
fn a_read_only_transaction_with_an_overwritten_read_conflicts() {
    let cluster = three_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    let a = create(&n2, region_of(1), b"a0");
    let b = create(&n2, region_of(2), b"b0");

    // Control: nothing changes in between.
    let mut txn = n1.begin().unwrap();
    assert_eq!(txn.read(a).unwrap(), b"a0");
    assert_eq!(txn.read(b).unwrap(), b"b0");
    assert_eq!(txn.commit(), Ok(()));

    for stale in [a, b] {
        let mut txn = n1.begin().unwrap();
        txn.read(a).unwrap();
        txn.read(b).unwrap();
        overwrite(&n2, stale, b"changed");
        let outcome = txn.commit();
        assert!(
            is_conflict(&outcome),
            "read of overwritten {stale}: {outcome:?}"
        );
        assert_eq!(conflict_addr(&outcome), Some(stale), "{outcome:?}");
    }
    settle(&cluster);
    cluster.stop();
}

/// FaRM SOSP'15 §4, VALIDATE: in message mode a primary holding more than t_r of the objects
/// to validate is sent one VALIDATE message instead of that many one-sided reads; one-sided
/// mode re-reads them in one batch and sends no message. The primary's worker counts the
/// records it handles, which shows which path was taken.
#[test]
fn more_than_t_r_reads_at_one_primary_validate_by_one_message_or_one_batch() {
    for mode in [CommitMode::Messages, CommitMode::OneSided] {
        validate_more_than_t_r_reads_at_one_primary(mode);
    }
}

fn validate_more_than_t_r_reads_at_one_primary(mode: CommitMode) {
    let cluster = start_in(mode, REGION_BYTES, RING_BYTES, vec![]);
    let messages = u64::from(mode == CommitMode::Messages);
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    // Coordinator n1; the reads are in region 2, whose primary is node index 1.
    let objects: Vec<Addr> = (0..=T_R)
        .map(|i| create(&n3, region_of(1), &[i as u8; 8]))
        .collect();
    let written = create(&n3, region_of(2), b"w0");

    let read_only = |reads: &[Addr], stale: Option<Addr>| {
        let mut txn = n1.begin().unwrap();
        for &addr in reads {
            txn.read(addr).unwrap();
        }
        if let Some(stale) = stale {
            overwrite(&n3, stale, b"moved on");
        }
        settle(&cluster);
        let before = records_handled(&cluster, 1);
        let outcome = txn.commit();
        (outcome, records_handled(&cluster, 1) - before)
    };

    // t_r objects: one-sided header reads, no record at the primary.
    let (outcome, records) = read_only(&objects[..T_R], None);
    assert_eq!(outcome, Ok(()));
    assert_eq!(records, 0, "{T_R} reads validated by message");
    let (outcome, records) = read_only(&objects[..T_R], Some(objects[0]));
    assert!(is_conflict(&outcome), "{outcome:?}");
    assert_eq!(records, 0, "{T_R} reads validated by message");

    // t_r + 1 objects: exactly one VALIDATE record in message mode, none in one-sided mode.
    let (outcome, records) = read_only(&objects, None);
    assert_eq!(outcome, Ok(()), "nothing changed");
    assert_eq!(records, messages, "{} reads in {mode:?} mode", T_R + 1);
    for stale in [objects[0], objects[T_R]] {
        let (outcome, records) = read_only(&objects, Some(stale));
        assert!(
            is_conflict(&outcome),
            "stale {stale} validated: {outcome:?}"
        );
        assert_eq!(records, messages, "{} reads in {mode:?} mode", T_R + 1);
    }

    // Read-write: the reads at the primary of region 2, the write at region 3's.
    for stale in [None, Some(objects[2])] {
        let mut txn = n1.begin().unwrap();
        for &addr in &objects {
            txn.read(addr).unwrap();
        }
        txn.write(written, b"w1").unwrap();
        if let Some(stale) = stale {
            overwrite(&n3, stale, b"again!!!");
        }
        let outcome = txn.commit();
        let now = value_at(&n3, written).unwrap();
        match stale {
            None => {
                assert_eq!(outcome, Ok(()));
                assert_eq!(now, b"w1");
            }
            Some(stale) => {
                assert!(
                    is_conflict(&outcome),
                    "stale {stale} validated: {outcome:?}"
                );
                assert_eq!(now, b"w1", "the aborted write is not visible");
            }
        }
    }
    settle(&cluster);
    assert_no_lock_bits(&cluster);
    cluster.stop();
}

/// docs/protocol.md#single-object-reads: a transaction that read one object serializes at its
/// one read, so a later overwrite does not make it conflict.
#[test]
fn a_read_only_transaction_of_one_object_commits_without_validation() {
    let cluster = three_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    for region in [region_of(0), region_of(1)] {
        let a = create(&n2, region, b"v0");
        let mut txn = n1.begin().unwrap();
        assert_eq!(txn.read(a).unwrap(), b"v0");
        assert_eq!(txn.read(a).unwrap(), b"v0", "a second read of one object");
        overwrite(&n2, a, b"v1");
        // The object did change: validation would fail.
        assert_eq!(txn.still_valid(), Ok(false));
        assert_eq!(txn.commit(), Ok(()));
        assert_eq!(value_at(&n1, a).unwrap(), b"v1");
    }
    settle(&cluster);
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Aborts leave nothing behind.

/// FaRM SOSP'15 §4: on any failure before COMMIT-BACKUP the coordinator sends ABORT to the
/// primaries that got LOCK, which unlock. Whatever the way a transaction ends without
/// committing, every lock is released, no primary holds it, and its objects can be written.
#[test]
fn aborts_leave_no_locks_and_no_held_transactions() {
    let cluster = three_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    let a1 = create(&n1, region_of(0), b"a1");
    let a2 = create(&n1, region_of(0), b"a2");
    let b = create(&n1, region_of(1), b"b");
    let c = create(&n1, region_of(2), b"c");
    let all = [a1, a2, b, c];
    let mut expected: BTreeMap<Addr, Vec<u8>> = all
        .iter()
        .map(|&addr| (addr, value_at(&n1, addr).unwrap()))
        .collect();
    let mut overwrite_and_expect = |addr: Addr, value: &[u8]| {
        overwrite(&n2, addr, value);
        expected.insert(addr, value.to_vec());
    };

    // LOCK fails at one primary of three: the two others locked and must unlock.
    let mut txn = n1.begin().unwrap();
    for addr in [a1, b, c] {
        txn.write(addr, b"lost").unwrap();
    }
    txn.alloc_near(8, a1).unwrap();
    txn.alloc_near(8, b).unwrap();
    overwrite_and_expect(c, b"c'");
    assert!(is_conflict(&txn.commit()), "stale c");

    // LOCK fails half-way at one primary: a1 locks, a2 does not (or the other way round);
    // once with the primary's part done by the coordinator on that node, once by its worker.
    let mut txn = n1.begin().unwrap();
    txn.write(a1, b"lost").unwrap();
    txn.write(a2, b"lost").unwrap();
    overwrite_and_expect(a2, b"a2'");
    assert!(is_conflict(&txn.commit()), "stale a2");
    let mut txn = txn_node(&cluster, 2).begin().unwrap();
    txn.write(a1, b"lost").unwrap();
    txn.write(a2, b"lost").unwrap();
    overwrite_and_expect(a1, b"a1'");
    assert!(is_conflict(&txn.commit()), "stale a1");

    // Every LOCK succeeds, VALIDATE fails: all primaries locked and must unlock.
    let mut txn = n1.begin().unwrap();
    txn.read(c).unwrap();
    for addr in [a1, a2, b] {
        txn.write(addr, b"lost").unwrap();
    }
    overwrite_and_expect(c, b"c''");
    assert!(is_conflict(&txn.commit()), "stale read of c");

    // Explicit abort, and a transaction dropped uncommitted, with writes and allocations.
    let mut txn = n1.begin().unwrap();
    for addr in all {
        txn.write(addr, b"lost").unwrap();
    }
    txn.alloc_near(8, b).unwrap();
    txn.alloc_near(8, c).unwrap();
    txn.abort();
    {
        let mut txn = n2.begin().unwrap();
        for addr in all {
            txn.write(addr, b"lost").unwrap();
        }
        txn.alloc(8).unwrap();
        txn.alloc_near(8, c).unwrap();
    }

    settle(&cluster);
    for addr in all {
        let header = primary_header(&cluster, addr);
        assert!(!header.is_locked(), "{addr} stayed locked: {header}");
    }
    assert_no_lock_bits(&cluster);
    for (&addr, value) in &expected {
        assert_eq!(&value_at(&n1, addr).unwrap(), value, "{addr}");
    }
    cluster.check_replicas().unwrap();

    // The same objects can be written by one transaction now.
    let mut txn = n2.begin().unwrap();
    for addr in all {
        txn.write(addr, b"after").unwrap();
    }
    assert_eq!(txn.commit(), Ok(()));
    for addr in all {
        assert_eq!(value_at(&n1, addr).unwrap(), b"after");
    }
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Truncation gives log space back.

/// FaRM SOSP'15 §4, TRUNCATE: records stay in a participant's log until the coordinator
/// truncates them (lazily, piggybacked on later records), and log space is reserved before a
/// commit starts. With rings far smaller than the traffic, every commit still succeeds because
/// truncation frees the space; afterwards every ring is empty and backups match primaries.
#[test]
fn truncation_returns_log_space_to_small_rings() {
    const SMALL_RING_BYTES: u64 = 64 << 10;
    const TXN_COUNT: u64 = 3000;
    let cluster = start(REGION_BYTES, SMALL_RING_BYTES, vec![]);
    let n1 = txn_node(&cluster, 0);
    let objects: Vec<Addr> = (0..3).map(|k| create(&n1, region_of(k), &[0; 8])).collect();
    for i in 0..TXN_COUNT {
        // Write one object (its primary locks, its two backups get COMMIT-BACKUP) and read
        // another (validated before COMMIT-BACKUP).
        let written = objects[(i % 3) as usize];
        let read = objects[((i + 1) % 3) as usize];
        let mut txn = n1.begin().unwrap();
        let count = u64::from_le_bytes(txn.read(written).unwrap().try_into().unwrap());
        txn.read(read).unwrap();
        txn.write(written, &(count + 1).to_le_bytes()).unwrap();
        txn.commit()
            .unwrap_or_else(|e| panic!("transaction {i} of {TXN_COUNT} did not commit: {e}"));
    }
    settle(&cluster);
    for (k, &addr) in objects.iter().enumerate() {
        let expected = TXN_COUNT / 3 + u64::from((k as u64) < TXN_COUNT % 3);
        assert_eq!(
            value_at(&n1, addr).unwrap(),
            expected.to_le_bytes(),
            "{addr}"
        );
    }
    // Each ring from the coordinator carried many times its size.
    for ring in rings(&cluster) {
        if ring.sender == NodeId(1) {
            assert!(
                ring.tail > 4 * SMALL_RING_BYTES,
                "ring {} -> {} carried only {} bytes",
                ring.sender,
                ring.receiver,
                ring.tail
            );
        }
    }
    cluster.check_replicas().unwrap();
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Backups end byte-identical.

/// An object a worker thread owns, and what it must hold.
#[derive(Clone, Debug)]
struct Owned {
    addr: Addr,
    /// The length it was allocated for: any value up to it fits.
    len: usize,
    value: Vec<u8>,
}

/// What a committed mixed transaction changed.
struct MixOutcome {
    owned: Vec<Owned>,
    freed: Vec<Addr>,
    incremented: u64,
}

/// Shared counters that every mixed transaction may increment: the only source of conflicts.
const COUNTER_COUNT: usize = 3;
const MIX_TXN_COUNT: u64 = 120;
const MIX_OPS_MAX: u64 = 4;
const MIX_VALUE_BYTES_MAX: u64 = 300;
const MIX_ATTEMPTS_MAX: usize = 500;

/// One transaction of random allocations (local, near an object, near another primary's
/// region), writes, frees, reads and maybe a counter increment, checked against the model as it
/// runs. The plan comes from `txn_seed` alone, so a retry replays it.
fn mixed_txn(
    node: &Arc<TxnNode>,
    owned: &[Owned],
    counters: &[Addr],
    txn_seed: u64,
) -> Result<MixOutcome, Error> {
    let mut rng = SplitMix::new(txn_seed);
    let mut owned = owned.to_vec();
    let mut freed = Vec::new();
    let mut txn = node.begin()?;
    for _ in 0..rng.range(1, MIX_OPS_MAX) {
        let pick = |rng: &mut SplitMix, owned: &[Owned]| {
            (!owned.is_empty()).then(|| rng.below(owned.len() as u64) as usize)
        };
        match rng.below(6) {
            kind @ 0..=2 => {
                let len = rng.range(1, MIX_VALUE_BYTES_MAX) as usize;
                let addr = match (kind, pick(&mut rng, &owned)) {
                    (1, Some(index)) => {
                        let near = owned[index].addr;
                        let addr = txn.alloc_near(len, near)?;
                        assert_eq!(addr.region(), near.region(), "alloc_near left the region");
                        addr
                    }
                    (2, _) => {
                        let region = RegionId(rng.range(1, 3) as u32);
                        let addr = txn.alloc_near(len, Addr::new(region, 0))?;
                        assert_eq!(addr.region(), region, "alloc_near left the region");
                        addr
                    }
                    _ => txn.alloc(len)?,
                };
                assert_eq!(txn.read(addr)?, vec![0; len], "a new object holds zeros");
                let value_len = rng.range(0, len as u64) as usize;
                let value = rng.bytes(value_len);
                txn.write(addr, &value)?;
                owned.push(Owned { addr, len, value });
            }
            3 => {
                if let Some(index) = pick(&mut rng, &owned) {
                    let object = &mut owned[index];
                    let value_len = rng.range(0, object.len as u64) as usize;
                    object.value = rng.bytes(value_len);
                    txn.write(object.addr, &object.value)?;
                }
            }
            4 => {
                if let Some(index) = pick(&mut rng, &owned) {
                    let object = owned.swap_remove(index);
                    txn.free(object.addr)?;
                    assert_eq!(
                        txn.read(object.addr),
                        Err(TxnError::NotFound { addr: object.addr })
                    );
                    freed.push(object.addr);
                }
            }
            _ => {
                if let Some(index) = pick(&mut rng, &owned) {
                    let object = &owned[index];
                    assert_eq!(txn.read(object.addr)?, object.value, "{}", object.addr);
                }
            }
        }
    }
    let mut incremented = 0;
    if rng.below(2) == 0 {
        let counter = counters[rng.below(COUNTER_COUNT as u64) as usize];
        let count = u64::from_le_bytes(txn.read(counter)?.try_into().expect("8 bytes"));
        txn.write(counter, &(count + 1).to_le_bytes())?;
        incremented = 1;
    }
    txn.commit()?;
    Ok(MixOutcome {
        owned,
        freed,
        incremented,
    })
}

/// A transaction that allocates an object, frees it again and reads the slot (not found) gets
/// that slot back from its next allocation and commits: it saw the slot free, which is no
/// conflict. (A concurrent mix found it, seed 5011561815432897030: the transaction was refused
/// as a conflict on every attempt.)
#[test]
fn a_slot_freed_and_read_by_its_own_transaction_can_be_allocated_again() {
    let cluster = three_nodes();
    let node = txn_node(&cluster, 0);
    let mut txn = node.begin().expect("begin");
    let first = txn
        .alloc_near(16, Addr::new(region_of(0), 0))
        .expect("alloc");
    assert_eq!(txn.read(first).expect("read"), vec![0; 16]);
    txn.free(first).expect("free");
    assert_eq!(txn.read(first), Err(TxnError::NotFound { addr: first }));
    let second = txn
        .alloc_near(16, Addr::new(region_of(0), 0))
        .expect("alloc again");
    txn.write(second, b"again").expect("write");
    txn.commit().expect("commit");
    let mut check = node.begin().expect("begin");
    assert_eq!(check.read(second).expect("read"), b"again");
}

/// docs/protocol.md#commit-backup and #truncate: backups receive COMMIT-BACKUP and apply it at truncation, in
/// whatever order truncations of different coordinators arrive; once the cluster is quiet, every
/// backup is byte-identical to its primary. Three coordinators allocate, write, free and
/// allocate near objects in all three regions at once.
#[test]
fn backups_are_byte_identical_after_a_concurrent_mix() {
    // The seed fixes every transaction's plan, not how the three threads interleave, which
    // decides the conflicts, the retries and where allocations land. A pinned seed may need
    // several runs to fail the same way; `seeded` says so when it prints the seed and again if
    // the test fails.
    let seeded = ConcurrentSeed::new("backups_are_byte_identical_after_a_concurrent_mix");
    let seed = seeded.value();
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let counters: Arc<Vec<Addr>> = Arc::new(
        (0..COUNTER_COUNT)
            .map(|k| create(&n1, region_of(k % 3), &0u64.to_le_bytes()))
            .collect(),
    );
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let node = txn_node(&cluster, t);
            let counters = counters.clone();
            std::thread::spawn(move || {
                let mut owned: Vec<Owned> = Vec::new();
                let mut freed = Vec::new();
                let mut incremented = 0;
                let mut retries = 0;
                for i in 0..MIX_TXN_COUNT {
                    let txn_seed = seed ^ ((t as u64) << 56) ^ i.wrapping_mul(0x9e37_79b9);
                    let mut attempt = 0;
                    let outcome = loop {
                        match mixed_txn(&node, &owned, &counters, txn_seed) {
                            Ok(outcome) => break outcome,
                            Err(e) if e.is_retryable() && attempt < MIX_ATTEMPTS_MAX => {
                                attempt += 1;
                                retries += 1;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!(
                                "seed {seed}: thread {t} transaction {i} attempt {attempt}: {e}"
                            ),
                        }
                    };
                    owned = outcome.owned;
                    freed.extend(outcome.freed);
                    incremented += outcome.incremented;
                }
                eprintln!("thread {t}: {} objects, {retries} retries", owned.len());
                (owned, freed, incremented)
            })
        })
        .collect();
    let mut owned = Vec::new();
    let mut freed = Vec::new();
    let mut incremented = 0;
    for thread in threads {
        let (o, f, i) = thread.join().expect("a mix thread panicked");
        owned.extend(o);
        freed.extend(f);
        incremented += i;
    }

    // The allocator never handed one slot to two live objects.
    let live: HashSet<Addr> = owned.iter().map(|o| o.addr).collect();
    assert_eq!(
        live.len(),
        owned.len(),
        "seed {seed}: a slot is owned twice"
    );
    for region in 1..=3 {
        assert!(
            owned.iter().any(|o| o.addr.region() == RegionId(region)),
            "seed {seed}: no object ended in region {region}"
        );
    }
    let n2 = txn_node(&cluster, 1);
    for object in &owned {
        assert_eq!(
            value_at(&n2, object.addr).unwrap(),
            object.value,
            "seed {seed}: {}",
            object.addr
        );
    }
    for &addr in freed.iter().filter(|a| !live.contains(a)) {
        assert_eq!(
            value_at(&n2, addr),
            Err(Error::Txn(TxnError::NotFound { addr })),
            "seed {seed}: freed {addr}"
        );
    }
    let total: u64 = counters
        .iter()
        .map(|&c| u64::from_le_bytes(value_at(&n2, c).unwrap().try_into().unwrap()))
        .sum();
    assert_eq!(
        total, incremented,
        "seed {seed}: counter increments lost or doubled"
    );

    settle(&cluster);
    assert_no_lock_bits(&cluster);
    if let Err(mismatch) = cluster.check_replicas() {
        panic!("seed {seed}: {mismatch}");
    }
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// What a transaction sees of its own changes, and addresses that are not objects.

/// docs/protocol.md#execution: writes, allocations and frees are buffered by the coordinator, so
/// the transaction sees them and nobody else does until it commits.
#[test]
fn a_transaction_sees_its_own_writes_allocations_and_frees() {
    let cluster = three_nodes();
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    // Region 1 is local to the coordinator n1, region 2 is not.
    for region in [region_of(0), region_of(1)] {
        let existing = create(&n3, region, b"old");
        let doomed = create(&n3, region, b"doomed");
        let mut txn = n1.begin().unwrap();

        txn.write(existing, b"new").unwrap();
        assert_eq!(txn.read(existing).unwrap(), b"new");
        assert_eq!(
            value_at(&n3, existing).unwrap(),
            b"old",
            "uncommitted write seen"
        );

        let fresh = txn.alloc_near(16, Addr::new(region, 0)).unwrap();
        assert_eq!(fresh.region(), region);
        assert_eq!(
            txn.read(fresh).unwrap(),
            vec![0; 16],
            "a new object holds zeros"
        );
        txn.write(fresh, b"fresh").unwrap();
        assert_eq!(txn.read(fresh).unwrap(), b"fresh");
        assert_eq!(
            value_at(&n3, fresh),
            Err(Error::Txn(TxnError::NotFound { addr: fresh })),
            "uncommitted allocation seen"
        );

        // Capacity: whatever the size class, one byte more than it holds is refused.
        for (addr, len) in [(existing, 3), (fresh, 16)] {
            let capacity = match txn.write(addr, &[1; 4096]) {
                Err(TxnError::TooLarge {
                    addr: at,
                    len: 4096,
                    capacity,
                }) if at == addr => capacity,
                other => panic!("4096 bytes into a small object at {addr}: {other:?}"),
            };
            assert!(capacity >= len, "{addr}: capacity {capacity} < {len}");
            txn.write(addr, &vec![2; capacity]).unwrap();
            assert_eq!(txn.read(addr).unwrap(), vec![2; capacity]);
            assert_eq!(
                txn.write(addr, &vec![3; capacity + 1]),
                Err(TxnError::TooLarge {
                    addr,
                    len: capacity + 1,
                    capacity
                })
            );
            assert_eq!(
                txn.read(addr).unwrap(),
                vec![2; capacity],
                "a refused write changed"
            );
        }
        txn.write(existing, b"new").unwrap();
        txn.write(fresh, b"fresh").unwrap();

        txn.free(doomed).unwrap();
        let gone = TxnError::NotFound { addr: doomed };
        assert_eq!(txn.read(doomed), Err(gone.clone()));
        assert_eq!(txn.write(doomed, b"x"), Err(gone.clone()));
        assert_eq!(txn.free(doomed), Err(gone));
        assert_eq!(
            value_at(&n3, doomed).unwrap(),
            b"doomed",
            "uncommitted free seen"
        );

        assert_eq!(txn.commit(), Ok(()));
        assert_eq!(value_at(&n3, existing).unwrap(), b"new");
        assert_eq!(value_at(&n3, fresh).unwrap(), b"fresh");
        assert_eq!(
            value_at(&n3, doomed),
            Err(Error::Txn(TxnError::NotFound { addr: doomed }))
        );
        let header = n3.reader().read_slot(&n3.config(), doomed).unwrap().header;
        assert!(!header.is_allocated(), "freed {doomed}: {header}");
        assert!(
            n3.reader()
                .read_slot(&n3.config(), fresh)
                .unwrap()
                .header
                .is_allocated()
        );
    }
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// An object allocated and freed by one transaction is never seen by anyone, and its slot goes
/// straight back to the allocator: the next allocation of that size in the region gets it
/// (free slots are reused last-freed first, engine/src/slab.rs).
#[test]
fn alloc_then_free_in_one_transaction_leaves_nothing() {
    let cluster = three_nodes();
    let (n1, n2) = (txn_node(&cluster, 0), txn_node(&cluster, 1));
    for region in [region_of(0), region_of(1)] {
        let near = Addr::new(region, 0);
        let mut txn = n1.begin().unwrap();
        let kept = txn.alloc_near(100, near).unwrap();
        let dropped = txn.alloc_near(100, near).unwrap();
        assert_ne!(kept, dropped);
        txn.write(dropped, b"never").unwrap();
        txn.free(dropped).unwrap();
        assert_eq!(txn.read(dropped), Err(TxnError::NotFound { addr: dropped }));
        assert_eq!(
            txn.write(dropped, b"x"),
            Err(TxnError::NotFound { addr: dropped })
        );
        txn.write(kept, b"kept").unwrap();
        assert_eq!(txn.commit(), Ok(()));

        assert_eq!(
            value_at(&n2, dropped),
            Err(Error::Txn(TxnError::NotFound { addr: dropped }))
        );
        let header = primary_header(&cluster, dropped);
        assert!(
            !header.is_allocated() && !header.is_locked(),
            "{dropped}: {header}"
        );
        assert_eq!(value_at(&n2, kept).unwrap(), b"kept");

        let mut txn = n1.begin().unwrap();
        assert_eq!(
            txn.alloc_near(100, near).unwrap(),
            dropped,
            "the released slot was not reused"
        );
        txn.abort();
    }
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// A transaction writes an object; another frees it and commits, so its slot is free again;
/// the first transaction's next allocation in that block is handed the same slot. The first
/// transaction cannot commit (its write's version is gone), but until then it is an ordinary
/// transaction that lost a race: its allocation must fail as a conflict, or give another
/// slot, and its commit must be refused. Found by the list-append workload, whose moves
/// allocate in transactions that wrote list objects other transactions move and free.
#[test]
fn an_allocation_handed_the_slot_of_an_object_this_transaction_wrote_conflicts() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    // Local reservation (n1 is the primary of region 1) and ALLOC at another primary.
    for region in [region_of(0), region_of(1)] {
        let object = create(&n1, region, &[1; 100]);
        let mut writer = n1.begin().unwrap();
        writer.write(object, &[2; 100]).unwrap();
        let mut freer = n1.begin().unwrap();
        freer.free(object).unwrap();
        assert_eq!(freer.commit(), Ok(()));
        match writer.alloc_near(100, object) {
            Ok(addr) => assert_ne!(addr, object, "handed a slot it holds a write to"),
            Err(e) => assert!(e.is_retryable(), "{e}"),
        }
        assert!(
            is_conflict(&writer.commit()),
            "a write to a freed object committed"
        );
    }
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// Addresses that are not objects are `NotFound`; addresses outside every region of the
/// configuration are `NoSuchRegion`. Either is an answer, not the end of the transaction.
#[test]
fn addresses_that_are_not_objects_are_refused() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let object = create(&n1, region_of(1), b"x");
    create(&n1, region_of(0), b"x");
    let not_objects = [
        Addr::new(region_of(0), 8),                   // inside a block header
        Addr::new(region_of(1), 8),                   // the same, remote
        Addr::new(region_of(1), object.offset() + 8), // inside an object
        Addr::new(region_of(2), (REGION_BYTES - BLOCK_BYTES) as u32), // an unclaimed block
        Addr::new(region_of(0), REGION_BYTES as u32 + 4096), // past the region
    ];
    let mut txn = n1.begin().unwrap();
    for addr in not_objects {
        let not_found = TxnError::NotFound { addr };
        assert_eq!(txn.read(addr), Err(not_found.clone()), "read {addr}");
        assert_eq!(
            txn.write(addr, b"y"),
            Err(not_found.clone()),
            "write {addr}"
        );
        assert_eq!(txn.free(addr), Err(not_found), "free {addr}");
    }
    let stranger = Addr::new(RegionId(99), 64);
    let no_region = TxnError::NoSuchRegion {
        addr: stranger,
        region: RegionId(99),
    };
    assert_eq!(txn.read(stranger), Err(no_region.clone()));
    assert_eq!(txn.write(stranger, b"y"), Err(no_region.clone()));
    assert_eq!(txn.free(stranger), Err(no_region.clone()));
    assert_eq!(txn.alloc_near(8, stranger), Err(no_region));
    // Nothing of the above poisoned the transaction.
    txn.write(object, b"z").unwrap();
    assert_eq!(txn.commit(), Ok(()));
    assert_eq!(value_at(&n1, object).unwrap(), b"z");
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// docs/protocol.md#reads: an address in a block nobody has claimed reads as "no object", and a
/// transaction may act on that, so the read is validated like any other. Otherwise: T1 sees x
/// absent and writes y; T2 creates x; T1 commits. If T2 also read y, that is write skew.
#[test]
fn a_read_of_an_unclaimed_block_is_validated() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let n2 = txn_node(&cluster, 1);
    let y = create(&n1, region_of(0), b"y0");
    // Nothing was allocated in n3's region yet: its first allocation claims block 0 and takes
    // the first slot.
    let x = Addr::new(region_of(2), BLOCK_HEADER_BYTES as u32);
    let mut t1 = n1.begin().unwrap();
    assert_eq!(t1.read(x), Err(TxnError::NotFound { addr: x }));
    t1.write(y, b"y1").unwrap();
    assert_eq!(
        create(&n2, region_of(2), b"x"),
        x,
        "the first slot of block 0"
    );
    let outcome = t1.commit();
    assert!(
        is_conflict(&outcome),
        "a transaction that saw {x} absent committed after it was created: {outcome:?}"
    );
    // A block still unclaimed validates: reading one does not make transactions conflict.
    let far = Addr::new(region_of(2), (REGION_BYTES - BLOCK_BYTES) as u32);
    let mut t3 = n1.begin().unwrap();
    assert_eq!(t3.read(far), Err(TxnError::NotFound { addr: far }));
    t3.write(y, b"y2").unwrap();
    assert_eq!(t3.commit(), Ok(()));
    settle(&cluster);
    cluster.stop();
}

/// docs/protocol.md#reads: `read_many` reads like `read` on each address (own changes, values,
/// "not found", every read recorded and validated) but posts one batch of READs per primary, all
/// in flight together.
#[test]
fn read_many_reads_like_read_with_one_batch_per_primary() {
    let cluster = three_nodes();
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    // Four objects at each primary.
    let objects: Vec<Addr> = (0..12)
        .map(|i| create(&n1, region_of(i % 3), format!("v{i}").as_bytes()))
        .collect();
    let batches: Vec<_> = (1..=3)
        .map(|node| {
            cluster.faults().add(
                Rule::to(NodeId(node), Action::Delay(Duration::ZERO))
                    .from(NodeId(1))
                    .when(|ops| {
                        ops.len() == 4 && ops.iter().all(|op| matches!(op, Op::Read { .. }))
                    }),
            )
        })
        .collect();
    let mut t1 = n1.begin().unwrap();
    t1.write(objects[0], b"mine").unwrap();
    let values = t1.read_many(&objects).unwrap();
    let expected: Vec<Vec<u8>> = (0..12)
        .map(|i| match i {
            0 => b"mine".to_vec(),
            i => format!("v{i}").into_bytes(),
        })
        .collect();
    assert_eq!(values, expected);
    // objects[0] is this transaction's own write: three READs went to its primary, four to
    // the others, one batch each.
    assert_eq!(cluster.faults().hits(batches[0]), 0);
    assert_eq!(cluster.faults().hits(batches[1]), 1);
    assert_eq!(cluster.faults().hits(batches[2]), 1);
    // Every read is in the read set: a concurrent overwrite of one fails validation.
    overwrite(&n3, objects[5], b"changed");
    let outcome = t1.commit();
    assert_eq!(conflict_addr(&outcome), Some(objects[5]), "{outcome:?}");

    // "Not found" as read says it, and the rest still read and recorded.
    let never = Addr::new(region_of(1), 8);
    let mut t2 = n1.begin().unwrap();
    assert_eq!(
        t2.read_many(&[objects[1], never]),
        Err(TxnError::NotFound { addr: never })
    );
    assert_eq!(t2.read(objects[1]).unwrap(), b"v1");
    assert_eq!(t2.read_many(&[]), Ok(Vec::new()));
    drop(t2);
    settle(&cluster);
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Allocation at another node's primary.

/// Values that need the largest size class a 64 KiB block offers (6 KiB payloads, ten slots a
/// block), so a 256 KiB region holds only a few dozen such objects.
const LARGE_VALUE_BYTES: usize = 6000;
const SMALL_REGION_BYTES: u64 = 256 << 10;
/// More large objects than a small region can hold.
const LARGE_OBJECT_COUNT_MAX: usize = 64;

/// How many large objects `region` can take now: reserves them in one transaction until the
/// region is full, then gives them all back.
fn large_capacity(node: &Arc<TxnNode>, region: RegionId) -> usize {
    let mut txn = node.begin().unwrap();
    for count in 0..LARGE_OBJECT_COUNT_MAX {
        match txn.alloc_near(LARGE_VALUE_BYTES, Addr::new(region, 0)) {
            Ok(addr) => assert_eq!(addr.region(), region),
            Err(TxnError::RegionFull { .. }) => {
                txn.abort();
                return count;
            }
            Err(e) => panic!("reserving large object {count} in {region}: {e}"),
        }
    }
    panic!("{region} holds more than {LARGE_OBJECT_COUNT_MAX} large objects");
}

/// docs/protocol.md#allocation: `alloc` reserves a slot at the region's primary (by an ALLOC request
/// when that is another node); the allocation exists once the transaction commits, and a
/// transaction that does not commit hands every reservation back, however it ends.
#[test]
fn allocations_at_another_primary_work_and_aborted_ones_are_released() {
    const ROUNDS: usize = 25;
    let cluster = start(SMALL_REGION_BYTES, RING_BYTES, vec![]);
    let (n1, n2, n3) = (
        txn_node(&cluster, 0),
        txn_node(&cluster, 1),
        txn_node(&cluster, 2),
    );

    // A remote allocation that commits: n1 allocates in region 2 (primary n2).
    let mut txn = n1.begin().unwrap();
    let remote = txn.alloc_near(16, Addr::new(region_of(1), 0)).unwrap();
    assert_eq!(remote.region(), region_of(1));
    txn.write(remote, b"remote").unwrap();
    assert_eq!(txn.commit(), Ok(()));
    assert_eq!(value_at(&n3, remote).unwrap(), b"remote");
    assert_eq!(value_at(&n2, remote).unwrap(), b"remote");
    assert!(primary_header(&cluster, remote).is_allocated());
    let watched = create(&n1, region_of(1), b"w0");
    let regions = [region_of(0), region_of(1), region_of(2)];
    settle(&cluster);
    let capacity: Vec<usize> = regions.iter().map(|&r| large_capacity(&n1, r)).collect();
    // At most four blocks of ten slots; the small objects above took one or two blocks.
    assert!(
        capacity.iter().all(|&c| c > 0 && c <= 40),
        "large objects per region: {capacity:?}"
    );

    // Every round reserves one large object in each region (one local to n1, two remote) and
    // ends without installing them, in five ways. Leaked, they would fill the regions within
    // the rounds, or at least leave less capacity afterwards.
    let reserve_all = |txn: &mut acre_txn::Txn, round: usize| {
        for region in regions {
            txn.alloc_near(LARGE_VALUE_BYTES, Addr::new(region, 0))
                .unwrap_or_else(|e| panic!("round {round}: {region}: {e} (reservations leaked?)"));
        }
    };
    for round in 0..ROUNDS {
        // Explicit abort.
        let mut txn = n1.begin().unwrap();
        reserve_all(&mut txn, round);
        txn.abort();
        // Dropped.
        let mut txn = n1.begin().unwrap();
        reserve_all(&mut txn, round);
        drop(txn);
        // Conflict at LOCK: the primaries that locked get ABORT and release.
        let mut txn = n1.begin().unwrap();
        txn.write(watched, b"lost").unwrap();
        reserve_all(&mut txn, round);
        overwrite(&n3, watched, &(2 * round as u64).to_le_bytes());
        assert!(is_conflict(&txn.commit()), "round {round}: stale write");
        // Conflict at VALIDATE, after every LOCK succeeded.
        let mut txn = n1.begin().unwrap();
        txn.read(watched).unwrap();
        reserve_all(&mut txn, round);
        overwrite(&n3, watched, &(2 * round as u64 + 1).to_le_bytes());
        assert!(is_conflict(&txn.commit()), "round {round}: stale read");
        // Allocated and freed in one transaction that commits.
        let mut txn = n1.begin().unwrap();
        let addrs: Vec<Addr> = regions
            .iter()
            .map(|&region| {
                txn.alloc_near(LARGE_VALUE_BYTES, Addr::new(region, 0))
                    .unwrap_or_else(|e| panic!("round {round}: {region}: {e}"))
            })
            .collect();
        for addr in addrs {
            txn.free(addr).unwrap();
        }
        assert_eq!(txn.commit(), Ok(()));
    }
    settle(&cluster);
    assert_no_lock_bits(&cluster);
    // A remote reservation is handed back by a RELEASE record, handled when its primary gets
    // to it: settle before each count so the previous count's are back.
    for (index, &region) in regions.iter().enumerate() {
        for node in [&n1, &n2] {
            settle(&cluster);
            assert_eq!(
                large_capacity(node, region),
                capacity[index],
                "{region} seen from {}",
                node.node_id()
            );
        }
    }
    settle(&cluster);
    cluster.check_replicas().unwrap();
    cluster.stop();
}

/// A client node has no regions: every allocation it makes is an ALLOC request, and every
/// record of its commits goes to other nodes.
#[test]
fn a_client_node_allocates_and_commits_through_other_primaries() {
    let cluster = start(REGION_BYTES, RING_BYTES, vec![NodeId(9)]);
    let client = replica(&cluster, NodeId(9)).txn().clone();
    let mut txn = client.begin().unwrap();
    let addrs: Vec<Addr> = (0..6)
        .map(|i| {
            let addr = txn.alloc(8).unwrap();
            txn.write(addr, &[i; 8]).unwrap();
            addr
        })
        .collect();
    assert_eq!(txn.commit(), Ok(()));
    let regions: HashSet<RegionId> = addrs.iter().map(|a| a.region()).collect();
    assert_eq!(
        regions.len(),
        3,
        "allocations without a hint spread over the regions"
    );
    let n1 = txn_node(&cluster, 0);
    for (i, &addr) in addrs.iter().enumerate() {
        assert_eq!(value_at(&n1, addr).unwrap(), [i as u8; 8]);
    }
    // And it frees them.
    let mut txn = client.begin().unwrap();
    for &addr in &addrs {
        txn.free(addr).unwrap();
    }
    assert_eq!(txn.commit(), Ok(()));
    for &addr in &addrs {
        assert_eq!(
            value_at(&n1, addr),
            Err(Error::Txn(TxnError::NotFound { addr }))
        );
    }
    settle(&cluster);
    assert!(replica(&cluster, NodeId(9)).copy(region_of(0)).is_none());
    cluster.check_replicas().unwrap();
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Commits too large for the log.

/// A commit whose LOCK record cannot fit a log ring (the ring takes records of a quarter of its
/// size at most) fails before any LOCK is sent; the slots it reserved at the primaries must go
/// back like those of any transaction that does not commit.
#[test]
fn a_commit_that_fails_before_lock_releases_its_allocations() {
    let cluster = start(SMALL_REGION_BYTES, 64 << 10, vec![]);
    let n1 = txn_node(&cluster, 0);
    let region = region_of(1);
    let capacity = large_capacity(&n1, region);
    assert!(capacity > 0);
    // Three large objects at one primary: a LOCK record of about 18 KiB, over the 16 KiB a
    // 64 KiB ring takes. Rounds enough to fill the region if the reservations leaked.
    let rounds = capacity / 3 + 2;
    for round in 0..rounds {
        let mut txn = n1.begin().unwrap();
        for _ in 0..3 {
            let addr = txn
                .alloc_near(LARGE_VALUE_BYTES, Addr::new(region, 0))
                .unwrap_or_else(|e| {
                    panic!("round {round}: {e}: the reservations of failed commits leaked")
                });
            txn.write(addr, &[7; LARGE_VALUE_BYTES]).unwrap();
        }
        let outcome = txn.commit();
        assert!(
            outcome.is_err(),
            "round {round}: an oversize commit succeeded"
        );
    }
    settle(&cluster);
    assert_eq!(large_capacity(&n1, region), capacity, "reservations leaked");
    cluster.stop();
}

/// The error of a commit that no retry can make fit says so (`TxnTooLarge`), rather than
/// blaming the participant and asking to wait for reconfiguration.
#[test]
fn a_commit_larger_than_a_log_record_is_txn_too_large() {
    let cluster = start(SMALL_REGION_BYTES, 64 << 10, vec![]);
    let n1 = txn_node(&cluster, 0);
    let mut txn = n1.begin().unwrap();
    for _ in 0..3 {
        let addr = txn
            .alloc_near(LARGE_VALUE_BYTES, Addr::new(region_of(1), 0))
            .unwrap();
        txn.write(addr, &[7; LARGE_VALUE_BYTES]).unwrap();
    }
    match txn.commit() {
        Err(CommitError::TxnTooLarge { .. }) => {}
        other => panic!("an oversize commit ended as {other:?}, not TxnTooLarge"),
    }
    cluster.stop();
}

// ---------------------------------------------------------------------------------------------
// Quiescence.

/// docs/protocol.md#truncate, and `EmbeddedCluster::quiesce`'s promise ("waits until every node
/// has applied and dropped all it holds"): once it returns true every backup has applied every
/// committed transaction, so the copies compare equal right away. The coordinator writes its
/// own region, so its backups get nothing but COMMIT-BACKUP (which does not wake them) until
/// quiesce flushes the truncation.
#[test]
fn backups_match_as_soon_as_quiesce_returns() {
    const ROUNDS: u64 = 50;
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let object = create(&n1, region_of(0), &[0; 8]);
    settle(&cluster);
    for round in 0..ROUNDS {
        overwrite(&n1, object, &round.to_le_bytes());
        assert!(
            cluster.quiesce(SETTLE_TIMEOUT),
            "round {round}: no quiescence"
        );
        if let Err(mismatch) = cluster.check_replicas() {
            panic!("round {round}: quiesce returned true, yet {mismatch}");
        }
    }
    cluster.stop();
}

/// A READ that does not load a slot's words in increasing address order (a NIC's DMA, a
/// provider's copy: the `ofi` transport) can see a slot's header and trailer agree over the
/// words of two installs, which only the object's sum tells. Readers must read such a slot
/// again, neither return it nor call it damaged (docs/formats.md#the-fabric). Here every READ
/// loads its words in decreasing address order while n1 rewrites a 4 KiB object whose words
/// are all equal, and n2 and n3 read it: every value read is one install's, and no read fails
/// but on a conflict. Before, a race read as damage (`protocol violation ... damaged`).
#[test]
fn reads_out_of_address_order_never_return_a_mixed_object_nor_call_a_race_damage() {
    use std::sync::atomic::{AtomicBool, AtomicU64};
    const WORDS: usize = 500;
    let cluster = crate::fixture::start(REGION_BYTES, RING_BYTES, vec![]);
    cluster.read_out_of_order();
    let nodes: Vec<Arc<TxnNode>> = cluster.nodes().iter().map(|n| n.txn().clone()).collect();
    let value_of = |v: u64| -> Vec<u8> { (0..WORDS).flat_map(|_| v.to_le_bytes()).collect() };
    let addr = create(&nodes[0], RegionId(1), &value_of(0));
    let stop = AtomicBool::new(false);
    let (installs, reads) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut v = 1;
            while !stop.load(Ordering::Relaxed) {
                let mut txn = nodes[0].begin().expect("begin");
                txn.write(addr, &value_of(v)).expect("write");
                if txn.commit().is_ok() {
                    installs.fetch_add(1, Ordering::Relaxed);
                }
                v += 1;
            }
        });
        for reader in &nodes[1..] {
            let (stop, reads) = (&stop, &reads);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut txn = reader.begin().expect("begin");
                    match txn.read(addr) {
                        Ok(bytes) => {
                            let first = &bytes[..8];
                            assert!(
                                bytes.chunks(8).all(|w| w == first),
                                "a value of two installs was returned"
                            );
                            reads.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(TxnError::Conflict { .. }) => {}
                        Err(e) => panic!("a read failed: {e}"),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let (installs, reads) = (installs.into_inner(), reads.into_inner());
    let rereads: u64 = nodes[1..].iter().map(|n| n.reader().mixed_rereads()).sum();
    eprintln!("{installs} installs, {reads} reads, {rereads} read again for their sum");
    assert!(
        installs > 10 && reads > 10,
        "{installs} installs, {reads} reads"
    );
    assert!(
        rereads > 0,
        "no read mixed two installs in {reads} reads: the race was not reached"
    );
}
