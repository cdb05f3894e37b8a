//! Node processes over tcp serve only the members of their cluster file's configuration
//! (docs/failures.md#fencing): a node of another configuration that holds the same cluster
//! secret is refused with a typed error and executes nothing, members are served, and
//! observers may read.

use crate::fixture::{BLOCK_BYTES, REGION_BYTES, RING_BYTES};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::directory::{AreaKind, NodeManifest, SECRET_FILE};
use acre_engine::fabric::tcp::{ClusterSecret, TcpTransport};
use acre_engine::fabric::transport_kind::TransportKind;
use acre_engine::fabric::{Completion, Op, OpError, OpResult};
use acre_replication::cluster_file::{CLIENT_ID_BASE, CLUSTER_FILE, ClusterFile};
use acre_replication::process::ProcessNode;
use acre_txn::Configuration;
use std::net::SocketAddr;

/// The cluster's configuration id: not 1, so that a sender of the default id is stale.
const CONFIG: u64 = 7;

#[test]
fn tcp_node_processes_refuse_nodes_that_are_not_members_of_their_configuration() {
    let dir = tempfile::tempdir().expect("create the cluster directory");
    let secret = ClusterSecret::generate();
    secret
        .write_file(&dir.path().join(SECRET_FILE))
        .expect("write the secret");
    let ids: Vec<NodeId> = (1..=2).map(NodeId).collect();
    let client = NodeId(CLIENT_ID_BASE);
    let config = Configuration::place(
        CONFIG,
        ids.clone(),
        vec![client],
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .expect("config");
    let file = ClusterFile {
        transport: TransportKind::Tcp,
        persist: "flush".to_string(),
        ring_bytes: RING_BYTES,
        cm: None,
        ofi: None,
        config,
    };
    let path = dir.path().join(CLUSTER_FILE);
    file.write(&path).expect("write the cluster file");
    let nodes: Vec<ProcessNode> = ids
        .iter()
        .map(|&id| ProcessNode::start(&path, id).unwrap_or_else(|e| panic!("start {id}: {e}")))
        .collect();

    let target = NodeId(1);
    let manifest = NodeManifest::read(dir.path(), target)
        .expect("read the manifest")
        .expect("published");
    let addr: SocketAddr = manifest
        .tcp_addr
        .as_deref()
        .expect("a tcp node publishes its address")
        .parse()
        .expect("an address");
    let region = manifest
        .areas
        .iter()
        .find(|a| a.kind == AreaKind::Region)
        .expect("node 1 holds a region");
    let key = region.access_key().expect("a key");
    let read = Op::Read {
        addr: Addr::new(region.id, 0),
        key,
        len: 8,
    };
    let write = Op::Write {
        addr: Addr::new(region.id, 0),
        key,
        data: vec![0; 8],
    };
    let post = |me: NodeId, config: u64, op: &Op| -> OpResult {
        let transport = TcpTransport::new(me, config, secret.clone());
        transport.add_peer(target, addr);
        let mut results = transport.post(target, vec![op.clone()]).wait();
        assert_eq!(results.len(), 1);
        results.remove(0)
    };
    let not_member = Err(OpError::NotMember {
        node: target,
        config: CONFIG,
    });

    // A member (the client id: no client runs, so no real connection is fenced) is served.
    let Ok(Completion::Read(before)) = post(client, CONFIG, &read) else {
        panic!("a member's READ is served");
    };
    // A node that is not in the configuration, and a member bound to an older one, are not.
    assert_eq!(post(NodeId(9), CONFIG, &write), not_member);
    assert_eq!(post(client, CONFIG - 1, &write), not_member);
    // An observer may read, whatever configuration it names, and may not write.
    assert_eq!(
        post(NodeId::OBSERVER, 0, &read),
        Ok(Completion::Read(before.clone()))
    );
    assert_eq!(post(NodeId::OBSERVER, CONFIG, &write), not_member);
    assert_eq!(
        post(client, CONFIG, &read),
        Ok(Completion::Read(before)),
        "nothing refused was written"
    );

    for node in nodes {
        node.stop();
    }
}
