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

/// Writes the cluster file of `config` over `transport` in `dir` (with a secret, which tcp
/// needs), a CM with leases of 200 ms if `cm`; returns its path.
fn cluster_file(
    dir: &std::path::Path,
    transport: TransportKind,
    config: &Configuration,
    cm: bool,
) -> std::path::PathBuf {
    acre_engine::fabric::tcp::ClusterSecret::generate()
        .write_file(&dir.join(acre_engine::directory::SECRET_FILE))
        .unwrap();
    let path = dir.join(CLUSTER_FILE);
    ClusterFile {
        transport,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        config: config.clone(),
        cm: cm.then_some(acre_replication::cluster_file::CmSettings { lease_ms: 200 }),
        ofi: None,
    }
    .write(&path)
    .unwrap();
    path
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
    let path = cluster_file(dir.path(), TransportKind::Shm, &first, false);
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
    let path = cluster_file(dir.path(), TransportKind::Shm, &first, true);
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

/// A client connects while a memory node is dead and not yet removed (tcp: its ring there
/// cannot be read, so no id can be vouched for), and the CM commits the configuration without
/// it a moment later. The client waits for that configuration and connects; it does not count
/// the dead node's silence as every id taken (`acre bank` started beside a kill failed with
/// "all 8 client ids of the cluster are taken ... n3 is unavailable").
#[test]
fn a_client_connecting_while_a_dead_node_is_removed_waits_for_the_configuration_without_it() {
    use acre_engine::directory::NodeManifest;
    use acre_replication::client::ClientNode;
    let dir = tempfile::tempdir().unwrap();
    let clients = vec![NodeId(CLIENT_ID_BASE), NodeId(CLIENT_ID_BASE + 1)];
    let (n1, n2, n3) = (NodeId(1), NodeId(2), NodeId(3));
    let mut first = Configuration::place(
        1,
        vec![n1, n2, n3],
        clients.clone(),
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .unwrap();
    first.cm_replicas = vec![n1];
    let path = cluster_file(dir.path(), TransportKind::Tcp, &first, true);
    status(&first, None).write(dir.path()).unwrap();
    let m1 = ProcessNode::start(&path, n1).unwrap();
    let m2 = ProcessNode::start(&path, n2).unwrap();
    let m3 = ProcessNode::start(&path, n3).unwrap();
    // n3 dies as a kill leaves it: its manifest stays, nothing answers at its address.
    let manifest = std::fs::read(NodeManifest::path(dir.path(), n3)).unwrap();
    m3.stop();
    std::fs::write(NodeManifest::path(dir.path(), n3), manifest).unwrap();

    // The configuration without n3: its regions go to their backups.
    let mut second = first.clone();
    second.id = 2;
    second.nodes.retain(|&n| n != n3);
    for placement in &mut second.regions {
        placement.backups.retain(|&n| n != n3);
        if placement.primary == n3 {
            placement.primary = placement.backups.remove(0);
        }
    }
    let removal = {
        let dir = dir.path().to_path_buf();
        let second = second.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            status(&second, None).write(&dir).unwrap();
        })
    };
    let client = ClientNode::connect(&path)
        .unwrap_or_else(|e| panic!("the client did not wait for n3's removal: {e}"));
    removal.join().unwrap();
    assert!(
        client.txn().config_id() >= 2,
        "the client connected while n3, whose ring it could not read, was a member"
    );
    assert_eq!(client.txn().node_id(), clients[0], "the first id was free");
    drop(client);
    m1.stop();
    m2.stop();
}
