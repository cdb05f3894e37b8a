//! `acre node`: a real node process serves allocation requests from another process over shm and
//! tcp, stops cleanly on SIGTERM, and refuses a bad configuration with a clear message.

use acre::engine::addr::{NodeId, RegionId};
use acre::engine::channel::RING_BYTES_DEFAULT;
use acre::engine::directory::{self, NodeManifest};
use acre::engine::node::{Endpoint, NodeConfig, TransportKind};
use acre::engine::slab::BLOCK_BYTES_DEFAULT;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn config(dir: &Path, node: u16, transport: TransportKind) -> NodeConfig {
    NodeConfig {
        node: NodeId(node),
        cluster_dir: dir.to_path_buf(),
        transport,
        listen: (transport == TransportKind::Tcp).then(|| "127.0.0.1:0".to_string()),
        peers: vec![NodeId(if node == 1 { 0 } else { 1 })],
        regions: if node == 1 {
            vec![RegionId(1)]
        } else {
            Vec::new()
        },
        region_bytes: 4 << 20,
        ring_bytes: RING_BYTES_DEFAULT,
        block_bytes: BLOCK_BYTES_DEFAULT,
        persist: "auto".into(),
    }
}

fn spawn_node(dir: &Path, config: &NodeConfig) -> Child {
    let path = dir.join(format!("{}.toml", config.node));
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["node", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("start acre node")
}

fn wait_for_manifest(dir: &Path, node: NodeId, child: &mut Child) -> NodeManifest {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("node exited during start-up: {status}");
        }
        if let Some(manifest) = NodeManifest::read(dir, node).unwrap() {
            return manifest;
        }
        assert!(
            Instant::now() < deadline,
            "node did not publish its manifest"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allocate_from_another_process_then_sigterm(transport: TransportKind) {
    let dir = tempfile::tempdir().unwrap();
    if transport == TransportKind::Tcp {
        acre::engine::fabric::tcp::ClusterSecret::generate()
            .write_file(&dir.path().join(directory::SECRET_FILE))
            .unwrap();
    }
    let mut child = spawn_node(dir.path(), &config(dir.path(), 1, transport));
    let manifest = wait_for_manifest(dir.path(), NodeId(1), &mut child);
    assert_eq!(manifest.pid, child.id());

    let client = Endpoint::start(config(dir.path(), 0, transport)).unwrap();
    client.publish(&[]).unwrap();
    let a = client.alloc_on(NodeId(1), 64, CALL_TIMEOUT).unwrap();
    let b = client.alloc_on(NodeId(1), 64, CALL_TIMEOUT).unwrap();
    assert_eq!(a.region(), RegionId(1));
    assert_ne!(a, b, "two allocations returned the same address");
    // The allocated object is readable one-sided and reads as allocated and consistent.
    let key = manifest.area(RegionId(1)).unwrap().access_key().unwrap();
    client.discover(NodeId(1)).unwrap();
    let slot = acre::engine::object::slot_bytes(64) as u32;
    let bytes = client.fabric().read(NodeId(1), a, key, slot).unwrap();
    let object = acre::engine::object::decode(&bytes).unwrap();
    assert!(object.header.is_allocated());
    // Too large an allocation is refused with the allocator's reason, and the node keeps serving.
    let refused = client
        .alloc_on(NodeId(1), 64 << 20, CALL_TIMEOUT)
        .unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused}");
    client.alloc_on(NodeId(1), 64, CALL_TIMEOUT).unwrap();

    acre::engine::signal::terminate(child.id()).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "node exited with {status} after SIGTERM");
    assert!(
        NodeManifest::read(dir.path(), NodeId(1)).unwrap().is_none(),
        "manifest left behind"
    );
}

#[test]
fn a_shm_node_serves_another_process_and_stops_cleanly_on_sigterm() {
    allocate_from_another_process_then_sigterm(TransportKind::Shm);
}

#[test]
fn a_tcp_node_serves_another_process_and_stops_cleanly_on_sigterm() {
    allocate_from_another_process_then_sigterm(TransportKind::Tcp);
}

#[test]
fn a_bad_config_is_refused_with_a_one_line_reason_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "node = 1\ncluster_dir = \"/tmp/x\"\ntransport = \"carrier-pigeon\"\npeers = []\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["node", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("carrier-pigeon"),
        "{stderr}"
    );

    let missing = Command::new(env!("CARGO_BIN_EXE_acre"))
        .args(["node", "--config", "/nonexistent/node.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}
