//! Review: a client node following the CM status file (`agent::follow_once`).

use crate::fixture::{BLOCK_BYTES, REGION_BYTES, RING_BYTES};
use acre_engine::addr::NodeId;
use acre_engine::fabric::transport_kind::TransportKind;
use acre_replication::agent::follow_once;
use acre_replication::cluster_file::{CLIENT_ID_BASE, CLUSTER_FILE, ClusterFile};
use acre_replication::cm_status::CmStatusFile;
use acre_replication::process::ProcessNode;
use acre_txn::Configuration;
use std::time::SystemTime;

fn status(committed: &Configuration, installing: Option<&Configuration>) -> CmStatusFile {
    CmStatusFile {
        written_unix_ms: 0,
        leader: NodeId(1),
        term: 1,
        replicas: vec![NodeId(1)],
        lease_ms: 200,
        installed_id: installing.unwrap_or(committed).id,
        leases: Vec::new(),
        history: Vec::new(),
        committed: committed.clone(),
        installing: installing.cloned(),
    }
}

/// Publishes `file` as the CM does, with modification time `at`: file systems stamp files
/// from a coarse clock (a jiffy, 1-4 ms), and the CM rewrites the file every 2 ms while it
/// distributes, so two writes in a row can carry the same time.
fn publish(dir: &std::path::Path, file: &CmStatusFile, at: SystemTime) {
    file.write(dir).unwrap();
    std::fs::File::options()
        .write(true)
        .open(CmStatusFile::path(dir))
        .unwrap()
        .set_modified(at)
        .unwrap();
}

/// The CM writes `installing = 2`, then, within the same tick of the file system's clock,
/// `committed = 2`. The client adopted 2 from the first write and must commit it from the
/// second; keyed on the modification time alone it never reads the second one, and its
/// transactions fail with `Reconfiguring` until the CM happens to write again.
#[test]
fn a_commit_written_in_the_same_mtime_tick_as_the_install_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let client = NodeId(CLIENT_ID_BASE);
    let first = Configuration::place(
        1,
        vec![NodeId(1), NodeId(2)],
        vec![client],
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .unwrap();
    let path = dir.path().join(CLUSTER_FILE);
    ClusterFile {
        transport: TransportKind::Shm,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        config: first.clone(),
        cm: None,
        ofi: None,
    }
    .write(&path)
    .unwrap();
    let n1 = ProcessNode::start(&path, NodeId(1)).unwrap();
    let n2 = ProcessNode::start(&path, NodeId(2)).unwrap();
    let c = ProcessNode::start(&path, client).unwrap();
    let mut second = first.clone();
    second.id = 2;

    let tick = SystemTime::now();
    let mut seen = None;
    publish(dir.path(), &status(&first, Some(&second)), tick);
    follow_once(&c, &mut seen);
    assert_eq!(c.txn().config_state(), (2, false), "adopted 2 uncommitted");
    publish(dir.path(), &status(&second, None), tick);
    for _ in 0..10 {
        follow_once(&c, &mut seen);
    }
    assert_eq!(
        c.txn().config_state(),
        (2, true),
        "the client never read the status that commits 2"
    );
    drop(c);
    n1.stop();
    n2.stop();
}

/// A memory node the CM removed (its configuration 2 no longer lists n2) is restarted with
/// `acre node`: it must not start, and the error must say why. The cluster file lists n2, so
/// "use an id the cluster file lists" sends the operator the wrong way.
#[test]
fn a_node_the_cm_removed_is_told_so_when_it_restarts() {
    use acre_replication::cluster_file::CmSettings;
    let dir = tempfile::tempdir().unwrap();
    let client = NodeId(CLIENT_ID_BASE);
    let mut first = Configuration::place(
        1,
        vec![NodeId(1), NodeId(2)],
        vec![client],
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .unwrap();
    first.cm_replicas = vec![NodeId(1)];
    let path = dir.path().join(CLUSTER_FILE);
    ClusterFile {
        transport: TransportKind::Shm,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        config: first.clone(),
        cm: Some(CmSettings { lease_ms: 200 }),
        ofi: None,
    }
    .write(&path)
    .unwrap();
    let mut second = Configuration::place(
        2,
        vec![NodeId(1)],
        vec![client],
        1,
        0,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .unwrap();
    second.cm_replicas = vec![NodeId(1)];
    status(&second, None).write(dir.path()).unwrap();
    let error = ProcessNode::start(&path, NodeId(2))
        .err()
        .expect("n2 was removed");
    let message = error.to_string();
    assert!(
        message.contains("configuration 2") || message.contains("removed"),
        "the error does not say that the CM removed n2: {message}"
    );
}
