//! Node processes over ofi whose cluster file asks for the hybrid transfer (docs/ofi.md,
//! "Hybrid transfer"): a transaction's read of a large object goes by it, a small one by one
//! READ, and both read what was committed. The large one (5 KiB) is under the threshold
//! (16 KiB): it goes by copy.

use crate::fixture::{BLOCK_BYTES, REGION_BYTES, create, process_nodes, value_at};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::fabric::Transport;
use acre_engine::fabric::transport_kind::TransportKind;
use acre_txn::Configuration;
use acre_txn::read::LARGE_SLOT_BYTES;

#[test]
fn ofi_a_large_object_is_read_by_the_hybrid_transfer_and_a_small_one_by_a_read() {
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let ids: Vec<NodeId> = (1..=2).map(NodeId).collect();
    let config =
        Configuration::place(1, ids, vec![], 1, 1, REGION_BYTES, BLOCK_BYTES).expect("config");
    let nodes = process_nodes(dir.path(), TransportKind::Ofi, Some(16 << 10), &config);
    let n2 = nodes[1].txn();
    let hybrid_reads = || match n2.fabric().transport() {
        Transport::Ofi(ofi) => ofi.hybrid_reads(),
        _ => unreachable!("an ofi node"),
    };
    // Both in r1, whose primary is n1: n2 reads them from there.
    let r1 = RegionId(1);
    let large: Vec<u8> = (0..LARGE_SLOT_BYTES as usize + 1000)
        .map(|i| (i % 251) as u8)
        .collect();
    let small = b"small".to_vec();
    let large_at = create(n2, r1, &large);
    let small_at = create(n2, r1, &small);
    let before = hybrid_reads();
    assert_eq!(
        value_at(n2, large_at).expect("read the large object"),
        large
    );
    let after_large = hybrid_reads();
    assert!(after_large > before, "by the hybrid transfer");
    assert_eq!(
        value_at(n2, small_at).expect("read the small object"),
        small
    );
    assert_eq!(hybrid_reads(), after_large, "the small one by one READ");
    for node in nodes {
        node.stop();
    }
}
