//! Allocator recovery (docs/failures.md#allocator-recovery): a new primary serves a region as
//! soon as its allocator has read the block headers, and reads the blocks' slots afterwards,
//! paced, while transactions allocate, write and free in the region.

use crate::fixture::{create, replica, settle, txn_node};
use crate::reconfiguration::four_nodes;
use crate::recovery::fail_n4_and_recover;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::slab::SlabAllocator;
use acre_txn::config::CommitMode;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// r4's primary n4 fails with objects in five blocks of r4; n1 takes r4 over and is held right
/// after reading the slots of r4's first block. Meanwhile (one-sided commits need no thread of
/// n1) a transaction frees an object of that block (its install lands after the read), one
/// frees an object of a block not read yet (its free is queued), and one of n1's allocates
/// and writes. Once n1 has read every block, its allocator must count exactly what the object
/// headers say, and hand out no live slot.
#[test]
fn a_region_serves_while_its_allocator_reads_its_blocks() {
    let mut cluster = four_nodes();
    if cluster.config().commit != CommitMode::OneSided {
        // In message mode n1's held worker would hold the commits too.
        eprintln!("one-sided only");
        cluster.stop();
        return;
    }
    let r4 = RegionId(4);
    let n3 = txn_node(&cluster, 2);
    // One object per size class, each class claiming a block of its own, the first two in
    // the first block.
    let first = create(&n3, r4, b"first");
    let second = create(&n3, r4, b"second");
    let others: Vec<Addr> = [40, 100, 300, 700]
        .iter()
        .map(|&len| create(&n3, r4, &vec![7; len]))
        .collect();
    settle(&cluster);

    let read = acre_engine::pause::arm("allocator.block_read");
    fail_n4_and_recover(&mut cluster);
    assert!(
        read.wait_reached(Duration::from_secs(20)),
        "n1 never read a block of r4's allocator"
    );
    let n1 = replica(&cluster, NodeId(1)).txn().clone();
    let unscanned = n1.primary().unscanned_blocks(r4);
    assert!(unscanned >= 4, "{unscanned} blocks left to read");

    let free = |addr: Addr| {
        let mut txn = n3.begin().expect("begin");
        txn.free(addr).expect("free");
        txn.commit()
            .expect("commit a free while the allocator recovers");
    };
    free(first);
    free(others[1]);
    // From n1 itself: another node's ALLOC request would wait for n1's held worker.
    let mut txn = n1.begin().expect("begin");
    let fresh = txn.alloc_near(5, Addr::new(r4, 0)).expect("alloc");
    txn.write(fresh, b"fresh").expect("write");
    txn.write(second, b"SECOND").expect("write");
    txn.commit()
        .expect("commit an allocation while the allocator recovers");
    assert_eq!(n1.primary().unscanned_blocks(r4), unscanned, "n1 was held");
    read.release();

    let deadline = Instant::now() + Duration::from_secs(20);
    while n1.primary().unscanned_blocks(r4) > 0 {
        assert!(
            Instant::now() < deadline,
            "n1's allocator of r4 never finished reading"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    settle(&cluster);
    let live: BTreeSet<Addr> = [second, fresh, others[0], others[2], others[3]].into();
    let allocator: BTreeSet<Addr> = n1
        .primary()
        .allocated_addrs(r4)
        .expect("n1 is r4's primary")
        .into_iter()
        .collect();
    assert_eq!(allocator, live, "the allocator after its recovery");
    let copy = n1.primary().region(r4).expect("n1 holds r4");
    let headers: BTreeSet<Addr> = SlabAllocator::rebuild(&copy, n1.config().block_bytes)
        .expect("rebuild")
        .allocated_addrs()
        .into_iter()
        .collect();
    assert_eq!(allocator, headers, "the allocator and the object headers");
    // The freed slots come back, once: allocations of their sizes never meet a live object.
    let mut handed_out = live.clone();
    for len in [5, 5, 5, 100, 100, 100] {
        let addr = create(&n3, r4, &vec![1; len]);
        assert!(handed_out.insert(addr), "{addr} handed out while live");
    }
    cluster.stop();
}
