//! A damaged log ring is confined to the writer that owns it (issue 11 item 4): the receiver
//! reports it and keeps serving every other sender's ring, and the owner gets its ring reset
//! and carries on. Each test damages one ring of an embedded cluster the way a stray write or a
//! tool run on the wrong file would.

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, region_of, replica, settle, start, three_nodes, txn_node,
    value_at,
};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::channel::{ring_area_id, ring_geometry};
use acre_engine::region::Region;
use acre_nvm_log::random::{SplitMix, test_seed};
use acre_nvm_log::ring::{TAIL_OFFSET, decode_pos_word};
use acre_replication::EmbeddedCluster;
use acre_txn::TxnNode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Commits the owner of a damaged ring gets to try before the test gives up on it: it fails
/// until the receiver has reset its ring, which takes one idle round of the receiver's worker.
const ATTEMPTS_MAX: u32 = 200;
const ATTEMPT_PAUSE: Duration = Duration::from_millis(10);
/// Time the receiver's worker gets to read the damaged record: it polls its rings within
/// microseconds of a doorbell.
const DAMAGE_READ_PAUSE: Duration = Duration::from_millis(200);

/// The ring that `sender` writes at `receiver`.
fn ring(cluster: &EmbeddedCluster, receiver: NodeId, sender: NodeId) -> Arc<Region> {
    replica(cluster, receiver)
        .txn()
        .fabric()
        .memory()
        .area(ring_area_id(sender))
        .expect("every member has a ring at every node")
}

/// Writes `value` to `addr` from `node` in one transaction.
fn write_once(node: &Arc<TxnNode>, addr: Addr, value: &[u8]) -> Result<(), String> {
    let mut txn = node.begin().map_err(|e| e.to_string())?;
    txn.write(addr, value).map_err(|e| e.to_string())?;
    txn.commit().map_err(|e| e.to_string())
}

/// Writes `value` to `addr` from `node`, retrying a failed commit; returns the failures
/// before the commit, or the last error if none of [`ATTEMPTS_MAX`] attempts commits.
fn write_retrying(node: &Arc<TxnNode>, addr: Addr, value: &[u8]) -> Result<u32, String> {
    let mut last = String::new();
    for failures in 0..ATTEMPTS_MAX {
        match write_once(node, addr, value) {
            Ok(()) => return Ok(failures),
            Err(e) => last = e,
        }
        std::thread::sleep(ATTEMPT_PAUSE);
    }
    Err(format!(
        "{} could not write {addr} in {ATTEMPTS_MAX} attempts; the last error: {last}",
        node.node_id()
    ))
}

/// Writes a damaged record (a commit word, a plausible sequence and length, a wrong checksum)
/// where `receiver` reads `sender`'s ring next, at its tail, and wakes `receiver`'s worker.
/// Every ring must be read up to its tail.
fn damage_the_next_record(cluster: &EmbeddedCluster, receiver: NodeId, sender: NodeId) {
    let area = ring(cluster, receiver, sender);
    let geometry = ring_geometry(RING_BYTES).expect("geometry");
    let word = |offset: u64| area.words_at(offset as u32, 8)[0].load(Ordering::Acquire);
    let tail = decode_pos_word(word(TAIL_OFFSET), TAIL_OFFSET).expect("tail word");
    let offset = geometry.offset_of(tail) as u32;
    let record = area.words_at(offset, 64);
    for (index, value) in [tail | 1, 1 << 40, 16 | 1 << 32, 0xbad, 7, 7, 7, 7]
        .into_iter()
        .enumerate()
    {
        record[index].store(value, Ordering::Release);
    }
    replica(cluster, receiver)
        .txn()
        .fabric()
        .memory()
        .doorbell()
        .ring();
}

/// A damaged record is a loss of records the receiver acknowledged, and its loss handler hears
/// of it at once, without waiting for a reset: the sender may never append again to have the
/// ring reset (a client that died), and until the node fails it would serve as if it held
/// what the records promised (a lock a one-sided coordinator took after its LOCK record was
/// durable, which no record explains). Before, the handler heard only of a reset.
#[test]
fn a_damaged_record_is_a_loss_told_at_once_without_a_reset() {
    let cluster = three_nodes();
    let n1 = txn_node(&cluster, 0);
    let (sender, receiver) = (NodeId(1), NodeId(2));
    create(&n1, region_of(1), b"n1 0"); // primary n2, backups n1 and n3
    settle(&cluster);
    let losses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let told = losses.clone();
    replica(&cluster, receiver)
        .on_acknowledged_loss(move |sender| told.lock().expect("not poisoned").push(sender));

    damage_the_next_record(&cluster, receiver, sender);
    // n1 appends nothing more at n2: no reset.
    let deadline = std::time::Instant::now() + LOSS_TOLD_TIMEOUT;
    while losses.lock().expect("not poisoned").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "n2's loss handler was not told of the damaged record within {LOSS_TOLD_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(*losses.lock().expect("not poisoned"), vec![sender]);
}

/// How long a worker may take to read a damaged record and tell its loss handler.
const LOSS_TOLD_TIMEOUT: Duration = Duration::from_secs(5);

/// A record whose commit word landed over a damaged body, at the position n2 reads next in
/// n1's ring: n2 must report it and stop reading that ring only, n3 must keep committing at n2
/// as if nothing happened, and n1 gets its ring reset and commits at n2 again.
#[test]
fn a_damaged_record_in_one_ring_stops_only_its_sender() {
    let cluster = three_nodes();
    let (n1, n2, n3) = (
        txn_node(&cluster, 0),
        txn_node(&cluster, 1),
        txn_node(&cluster, 2),
    );
    let (sender, receiver) = (NodeId(1), NodeId(2));
    let of_n1 = create(&n1, region_of(1), b"n1 0"); // primary n2, backups n1 and n3
    let of_n3 = create(&n3, region_of(1), b"n3 0"); // primary n2
    let of_n2 = create(&n2, region_of(2), b"n2 0"); // primary n3, backups n1 and n2
    settle(&cluster);

    damage_the_next_record(&cluster, receiver, sender);
    std::thread::sleep(DAMAGE_READ_PAUSE);

    // n3's ring at n2 is served as before: its first attempt commits.
    assert_eq!(write_once(&n3, of_n3, b"n3 1"), Ok(()));
    assert_eq!(value_at(&n3, of_n3).expect("read n3's object"), b"n3 1");
    // So is n2's own, and n2 goes on serving as a coordinator and a backup.
    assert_eq!(write_once(&n2, of_n2, b"n2 1"), Ok(()));
    // n1 commits at n2 once its ring is reset. (Every region has a copy at n2, so until then
    // n1 commits nothing that writes: n2 is a primary or a backup of it.)
    write_retrying(&n1, of_n1, b"n1 1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(value_at(&n1, of_n1).expect("read n1's object"), b"n1 1");
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("backups match their primaries");
}

/// Random bytes over the whole ring of a client that has not written to n2 yet (header
/// included, as when a tool writes over the file): the client's first attach to it finds the
/// header damaged. The other nodes keep committing at n2, and the client gets the ring reset
/// and commits at n2 too.
#[test]
fn random_bytes_over_a_ring_are_reset_when_its_writer_attaches() {
    let client = NodeId(100);
    let cluster = start(REGION_BYTES, RING_BYTES, vec![client]);
    let coordinator = replica(&cluster, client).txn().clone();
    let (n1, n3) = (txn_node(&cluster, 0), txn_node(&cluster, 2));
    let of_client = create(&n1, region_of(1), b"client 0"); // primary n2
    let of_n3 = create(&n3, region_of(1), b"n3 0"); // primary n2
    settle(&cluster);

    let area = ring(&cluster, NodeId(2), client);
    let mut rng = SplitMix::new(test_seed("random_bytes_over_a_ring"));
    for word in area.words_at(0, area.len()) {
        word.store(rng.next_u64(), Ordering::Release);
    }

    assert_eq!(write_once(&n3, of_n3, b"n3 1"), Ok(()));
    write_retrying(&coordinator, of_client, b"client 1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        value_at(&coordinator, of_client).expect("read the client's object"),
        b"client 1"
    );
    assert_eq!(write_once(&n3, of_n3, b"n3 2"), Ok(()));
    settle(&cluster);
    cluster
        .check_replicas()
        .expect("backups match their primaries");
}
