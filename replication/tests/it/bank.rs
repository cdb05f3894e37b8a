//! Bank transfers: the total never changes, no balance goes negative, backups match primaries.

use acre_engine::addr::{Addr, NodeId};
use acre_replication::EmbeddedCluster;
use acre_txn::{Configuration, Error, TxnNode};
use std::sync::Arc;
use std::time::Duration;

fn cluster(nodes: u16) -> EmbeddedCluster {
    let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
    let f = Configuration::default_f(ids.len());
    let config = Configuration::place(1, ids, vec![], 1, f, 4 << 20, 64 << 10).unwrap();
    EmbeddedCluster::start(config, 256 << 10).unwrap()
}

fn balance(bytes: &[u8]) -> i64 {
    i64::from_le_bytes(bytes.try_into().unwrap())
}

fn transfer(node: &Arc<TxnNode>, from: Addr, to: Addr, amount: i64) -> Result<bool, Error> {
    let mut txn = node.begin()?;
    let a = balance(&txn.read(from)?);
    let b = balance(&txn.read(to)?);
    if a < amount {
        return Ok(false);
    }
    txn.write(from, &(a - amount).to_le_bytes())?;
    txn.write(to, &(b + amount).to_le_bytes())?;
    txn.commit()?;
    Ok(true)
}

#[test]
fn transfers_keep_the_total_and_backups_match() {
    let cluster = cluster(3);
    let node = cluster.nodes()[0].txn().clone();
    let mut accounts = Vec::new();
    let mut txn = node.begin().unwrap();
    for _ in 0..20 {
        let addr = txn.alloc(8).unwrap();
        txn.write(addr, &100i64.to_le_bytes()).unwrap();
        accounts.push(addr);
    }
    txn.commit().unwrap();
    let accounts = Arc::new(accounts);
    let threads: Vec<_> = (0..3)
        .map(|t| {
            let node = cluster.nodes()[t].txn().clone();
            let accounts = accounts.clone();
            std::thread::spawn(move || {
                let (mut committed, mut conflicts) = (0, 0);
                for i in 0..300usize {
                    let from = accounts[(i * 7 + t) % accounts.len()];
                    let to = accounts[(i * 13 + t * 5 + 1) % accounts.len()];
                    if from == to {
                        continue;
                    }
                    match transfer(&node, from, to, 7) {
                        Ok(_) => committed += 1,
                        Err(e) if e.is_retryable() => conflicts += 1,
                        Err(e) => panic!("transfer failed: {e}"),
                    }
                }
                (committed, conflicts)
            })
        })
        .collect();
    for thread in threads {
        let (committed, conflicts) = thread.join().unwrap();
        eprintln!("committed {committed} conflicts {conflicts}");
        assert!(committed > 0);
    }
    let mut txn = node.begin().unwrap();
    let total: i64 = accounts
        .iter()
        .map(|&a| balance(&txn.read(a).unwrap()))
        .sum();
    txn.commit().unwrap();
    assert_eq!(total, 2000);
    assert!(cluster.quiesce(Duration::from_secs(10)), "quiesce");
    cluster.check_replicas().unwrap();
    cluster.stop();
}
