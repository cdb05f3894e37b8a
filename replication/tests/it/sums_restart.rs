//! A restarted node's region copy that failed its block sums stays unserved until a live
//! replica's copy fills it again, whatever stops and starts come in between
//! (docs/failures.md#whole-cluster-restart).

use crate::fixture::{BLOCK_BYTES, REGION_BYTES, RING_BYTES};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::directory::node_area_files;
use acre_engine::fabric::transport_kind::TransportKind;
use acre_replication::cluster_file::{CLUSTER_FILE, ClusterFile, CmSettings};
use acre_replication::process::ProcessNode;
use acre_txn::Configuration;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

fn flip_a_bit(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open the copy");
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).expect("read a byte");
    byte[0] ^= 0x10;
    file.write_all_at(&byte, offset).expect("write it back");
    file.sync_all().expect("sync the copy");
}

/// The file of `node`'s copy of `region` in the cluster directory `dir`.
fn copy_of(dir: &Path, node: NodeId, region: RegionId) -> std::path::PathBuf {
    node_area_files(dir, node)
        .expect("list the node's files")
        .into_iter()
        .find(|(area, _)| *area == region)
        .map(|(_, file)| file)
        .expect("the node's copy of the region")
}

/// The cluster file of two nodes in `dir`, one region each with a backup on the other, and a
/// CM: its path and the configuration.
fn cluster_of_two(dir: &Path) -> (std::path::PathBuf, Configuration) {
    let ids: Vec<NodeId> = (1..=2).map(NodeId).collect();
    let mut config =
        Configuration::place(1, ids, vec![], 1, 1, REGION_BYTES, BLOCK_BYTES).expect("config");
    config.cm_replicas = vec![NodeId(1)];
    let path = dir.join(CLUSTER_FILE);
    ClusterFile {
        transport: TransportKind::Shm,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        cm: Some(CmSettings { lease_ms: 1000 }),
        ofi: None,
        config: config.clone(),
    }
    .write(&path)
    .expect("write the cluster file");
    (path, config)
}

/// n1 stops cleanly (sums written), a bit of its copy of r1 flips, it restarts: the copy is
/// found damaged and emptied. Before the CM's restart configuration (which makes it a backup
/// copying again) commits, the restart is given up and n1 stopped cleanly, as `acre cluster
/// up` does when the restart fails (`stop_nodes`: SIGTERM). Its next restart must still find
/// the copy damaged: the configuration in force still counts it as r1's complete primary
/// copy, and it holds nothing but zeros.
///
/// Before the fix the clean stop wrote fresh sums over the emptied copy and the next restart
/// vouched for it (`Verdict::Intact`): a region of zeros served as its primary's data.
#[test]
fn a_damaged_copy_stays_damaged_across_a_clean_stop_before_it_is_copied_again() {
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let (path, _) = cluster_of_two(dir.path());
    // Every stop below is one of the whole cluster (`acre cluster down`): sums are written.
    acre_replication::sums::mark_cluster_stopping(dir.path()).expect("mark the cluster stopping");
    let n1 = NodeId(1);
    let r1 = RegionId(1);
    ProcessNode::start(&path, n1).expect("start n1").stop();
    let copy = copy_of(dir.path(), n1, r1);
    flip_a_bit(&copy, 4096 + 1);

    let restarted = ProcessNode::restart(&path, n1).expect("restart n1");
    assert_eq!(restarted.replica().damaged_copies(), [r1]);
    // The restart is given up before the CM commits anything: a clean stop.
    restarted.stop();

    let again = ProcessNode::restart(&path, n1).expect("restart n1 again");
    assert_eq!(
        again.replica().damaged_copies(),
        [r1],
        "the emptied copy, never copied again, is vouched for at the next restart"
    );
    // A kill leaves no sums: the mark still speaks.
    drop(again);
    let sums = acre_replication::sums::sums_path(&copy);
    let _ = std::fs::remove_file(&sums);
    let again = ProcessNode::restart(&path, n1).expect("restart n1 after a kill");
    assert_eq!(again.replica().damaged_copies(), [r1]);

    // A newer configuration that counts n1's copy complete, with none before it counting the
    // copy `copying`, was made without knowing of the damage (the restart request that said so
    // was refused): the mark stays. Before the fix it went, and the next restart vouched for
    // the emptied copy (found by `acre jepsen --nemesis truncate`: objects read as absent).
    let file_config = ClusterFile::read(&path)
        .expect("read the cluster file")
        .config;
    let mut unaware = file_config.clone();
    unaware.id = 2;
    again
        .adopt(Arc::new(unaware))
        .expect("adopt configuration 2");
    again.stop();
    let again = ProcessNode::restart(&path, n1).expect("restart n1 after configuration 2");
    assert_eq!(
        again.replica().damaged_copies(),
        [r1],
        "an emptied copy is vouched for after a configuration that did not know of the damage"
    );

    // Copied again: a configuration counts n1's copy `copying` (n1 a backup of r1 receiving it
    // from n2, as the CM's restart configuration makes it), a later one complete: the mark
    // goes, and the clean stop's sums vouch for the copy.
    let mut copying = file_config;
    copying.id = 3;
    let r1_placement = copying
        .regions
        .iter_mut()
        .find(|p| p.region == r1)
        .expect("r1's placement");
    r1_placement.primary = NodeId(2);
    r1_placement.backups = vec![n1];
    r1_placement.copying = vec![n1];
    again
        .adopt(Arc::new(copying.clone()))
        .expect("adopt configuration 3");
    // What the copier leaves from n2's empty r1 (n2 does not run here): every held-back word
    // replaced, by zeros.
    let copy = again.replica().copy(r1).expect("n1's copy of r1");
    for word in copy.words() {
        word.store(0, std::sync::atomic::Ordering::Release);
    }
    let mut copied = copying;
    copied.id = 4;
    for placement in &mut copied.regions {
        placement.copying.clear();
    }
    again
        .adopt(Arc::new(copied))
        .expect("adopt configuration 4");
    again.stop();
    let last = ProcessNode::restart(&path, n1).expect("restart n1 once copied");
    assert_eq!(last.replica().damaged_copies(), [] as [RegionId; 0]);
    last.stop();
}

/// n1 is killed (no sums), its copy of r1 is cut to half its length, it restarts: the copy is
/// taken for damaged, not served, and its file is back to the region's length, ready to be
/// copied again. A grown file is damaged the same way.
///
/// Before the fix the restart mapped the short file as it was and served it as r1's primary
/// copy: a region of half the length, with no check of what was cut.
#[test]
fn a_copy_cut_short_or_grown_while_its_node_was_down_is_damaged_at_the_restart() {
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let (path, _) = cluster_of_two(dir.path());
    let n1 = NodeId(1);
    let copy_of = |region: RegionId| {
        node_area_files(dir.path(), n1)
            .expect("list n1's files")
            .into_iter()
            .find(|(area, _)| *area == region)
            .map(|(_, file)| file)
            .expect("n1's copy")
    };
    // A node stopped alone writes no sums: as after a kill.
    ProcessNode::start(&path, n1).expect("start n1").stop();
    let (r1, r2) = (RegionId(1), RegionId(2));
    let resize = |file: &Path, len: u64| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(file)
            .expect("open the copy");
        f.set_len(len).expect("resize the copy");
    };
    resize(&copy_of(r1), REGION_BYTES / 2);
    resize(&copy_of(r2), REGION_BYTES + 4096);

    let restarted = ProcessNode::restart(&path, n1).expect("restart n1");
    assert_eq!(restarted.replica().damaged_copies(), [r1, r2]);
    for region in [r1, r2] {
        let len = std::fs::metadata(copy_of(region)).expect("stat").len();
        assert_eq!(
            len, REGION_BYTES,
            "{region}'s copy back to the region's length"
        );
    }
    restarted.stop();
}

/// n1 stops; two records n2 appended to n1's ring, both acknowledged, are there, and the ring
/// is damaged at the first while n1 is down, by `damage` (given the file and the first
/// record's offset). n1's restart ends that ring before the damaged record (erasing the rest)
/// and, since what the lost records promised is gone from it, serves none of its copies: each
/// is damaged, to be copied again from a live replica.
fn a_ring_damaged_while_its_node_was_down(damage: impl FnOnce(&Path, u64)) {
    use acre_engine::channel::ring_area_id;
    use acre_nvm_log::mapping::{MapOptions, Mapping};
    use acre_nvm_log::record::RecordKind;
    use acre_nvm_log::ring::{LocalWriter, RingGeometry, TAIL_OFFSET, decode_pos_word};
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let (path, config) = cluster_of_two(dir.path());
    let (n1, n2) = (NodeId(1), NodeId(2));
    ProcessNode::start(&path, n1).expect("start n1").stop();
    let ring = node_area_files(dir.path(), n1)
        .expect("list n1's files")
        .into_iter()
        .find(|(area, _)| *area == ring_area_id(n2))
        .map(|(_, file)| file)
        .expect("n1's ring of n2");
    let media = Mapping::open_file(&ring, MapOptions::default()).expect("map the ring");
    let geometry = RingGeometry::read(&media).expect("the ring's geometry");
    let mut writer = LocalWriter::attach(media).expect("attach to the ring");
    let first = writer.writer().tail();
    writer.append(RecordKind(2), &[1; 40]).expect("append");
    writer.append(RecordKind(2), &[2; 40]).expect("append");
    drop(writer);
    damage(&ring, geometry.offset_of(first));

    let restarted = ProcessNode::restart(&path, n1).expect("restart n1");
    let copies: Vec<RegionId> = config.replicated_on(n1).map(|p| p.region).collect();
    assert!(!copies.is_empty());
    assert_eq!(restarted.replica().damaged_copies(), copies);
    restarted.stop();
    let bytes = std::fs::read(&ring).expect("read the ring");
    assert_eq!(bytes.len() as u64, RING_BYTES, "the ring is whole again");
    let tail = u64::from_le_bytes(bytes[TAIL_OFFSET as usize..][..8].try_into().unwrap());
    assert_eq!(decode_pos_word(tail, TAIL_OFFSET).unwrap(), first);
    let at = geometry.offset_of(first) as usize;
    assert!(
        bytes[at..at + 64].iter().all(|&b| b == 0),
        "the lost records are erased"
    );
}

/// A bit of an acknowledged record flips. Before the fix the restart refused to start at all
/// ("the ring of n2 ... is damaged"), and with it the node's intact copies were out of reach.
#[test]
fn a_ring_with_a_bit_flipped_while_its_node_was_down_ends_there_and_no_copy_is_served() {
    a_ring_damaged_while_its_node_was_down(|ring, first| flip_a_bit(ring, first + 40));
}

/// The ring file is cut short inside the first record. Before the fix the restart refused to
/// start (the media shorter than the ring's geometry).
#[test]
fn a_ring_cut_short_while_its_node_was_down_ends_there_and_no_copy_is_served() {
    a_ring_damaged_while_its_node_was_down(|ring, first| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(ring)
            .expect("open the ring");
        file.set_len(first + 16).expect("cut the ring");
    });
}

/// n1's copy of r1 is found damaged at its restart (emptied, marked). A configuration made
/// without knowing of the damage moves r1's primary to n2 and keeps n1 a complete backup (as if
/// the restart request that reported the damage was refused); when n2 then fails, the CM's next
/// configuration promotes n1. n1 must refuse it: adopting it would serve the emptied copy as
/// r1's data. (Found by review: with the CM reaching a restarted process at once, it can act on
/// such a configuration before the restart request comes.) A configuration that keeps n1 a
/// backup is adopted.
#[test]
fn a_damaged_copy_not_copied_again_refuses_to_be_promoted() {
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let (path, config) = cluster_of_two(dir.path());
    acre_replication::sums::mark_cluster_stopping(dir.path()).expect("mark the cluster stopping");
    let (n1, n2, r1) = (NodeId(1), NodeId(2), RegionId(1));
    ProcessNode::start(&path, n1).expect("start n1").stop();
    let copy = copy_of(dir.path(), n1, r1);
    flip_a_bit(&copy, 4096 + 1);
    let restarted = ProcessNode::restart(&path, n1).expect("restart n1");
    assert_eq!(restarted.replica().damaged_copies(), [r1]);

    let with_primary = |id: u64, primary: NodeId, backup: NodeId| {
        let mut next = config.clone();
        next.id = id;
        let placement = (next.regions.iter_mut())
            .find(|p| p.region == r1)
            .expect("r1's placement");
        placement.primary = primary;
        placement.backups = vec![backup];
        placement.copying.clear();
        Arc::new(next)
    };
    restarted
        .adopt(with_primary(2, n2, n1))
        .expect("n1 a backup of r1: adopted");
    let refused = restarted.adopt(with_primary(3, n1, n2));
    assert!(
        matches!(
            refused,
            Err(acre_replication::replica::AdoptError::PromotedDamaged { region, config: 3 })
                if region == r1
        ),
        "{refused:?}"
    );
    restarted.stop();
}

/// n1's copy of r1, its primary copy, is found damaged at its restart. Until a configuration
/// hands r1 to another node, the configuration in force still names n1 r1's primary: a read
/// of r1 there must fail as unavailable, never find "no object" in the emptied copy (before,
/// the copy was zeros: every block read as unclaimed and every address as absent). A
/// configuration that makes n1 copy r1 again leaves it held back: a node still in the older
/// configuration reads there; the copier replaces it slot by slot.
#[test]
fn a_held_back_copy_reads_as_unavailable_never_as_absent_objects() {
    use acre_engine::addr::Addr;
    use acre_engine::object::HELD_BACK_WORD;
    use acre_txn::error::TxnError;
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let (path, config) = cluster_of_two(dir.path());
    acre_replication::sums::mark_cluster_stopping(dir.path()).expect("mark the cluster stopping");
    let (n1, n2, r1) = (NodeId(1), NodeId(2), RegionId(1));
    ProcessNode::start(&path, n1).expect("start n1").stop();
    let copy = copy_of(dir.path(), n1, r1);
    flip_a_bit(&copy, 4096 + 1);
    let restarted = ProcessNode::restart(&path, n1).expect("restart n1");
    assert_eq!(restarted.replica().damaged_copies(), [r1]);
    assert_eq!(restarted.damaged_complete(), [r1]);

    let current = restarted.txn().config();
    assert_eq!(current.placement(r1).map(|p| p.primary), Some(n1));
    for addr in [Addr::new(r1, 4096 + 64), Addr::new(r1, 0)] {
        let read = restarted.txn().reader().read(&current, addr);
        assert!(
            matches!(&read, Err(TxnError::Unavailable { node, reason })
                if *node == n1 && reason.contains("held back")),
            "{addr}: {read:?}"
        );
    }

    // The CM's answer: r1 to n2, n1 copying it again. The copy is emptied.
    let mut next = config.clone();
    next.id = 2;
    let placement = (next.regions.iter_mut())
        .find(|p| p.region == r1)
        .expect("r1's placement");
    placement.primary = n2;
    placement.backups = vec![n1];
    placement.copying = vec![n1];
    placement.state = acre_txn::config::RegionState::Blocked;
    let moved = Arc::new(next);
    restarted.adopt(moved.clone()).expect("adopt r1's move");
    assert_eq!(restarted.damaged_complete(), []);
    // Still held back, not emptied: a node still in configuration 1 reads r1 here. The
    // copier replaces it slot by slot from n2 (not running here).
    let bytes = std::fs::read(&copy).expect("read the copy");
    assert!(
        bytes
            .chunks(8)
            .all(|w| u64::from_le_bytes(w.try_into().unwrap()) == HELD_BACK_WORD),
        "the copy stays held back until the copier replaces it"
    );
    let read = restarted
        .txn()
        .reader()
        .read(&current, Addr::new(r1, 4096 + 64));
    assert!(
        matches!(&read, Err(TxnError::Unavailable { .. })),
        "a reader still in configuration 1: {read:?}"
    );
    restarted.stop();
}
