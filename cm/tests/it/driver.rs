//! The CM driver end to end, in one process: four memory nodes of an embedded cluster (f = 1,
//! one region each), three of them hosting a CM replica on loopback CM links, a lease thread
//! and a driver per node. Node 4 dies (its lease thread and driver stop); the CM suspects it,
//! installs configuration c+1 through Raft, distributes and commits it, and the cluster
//! serves on without node 4's region. Then the region's new primary reports it recovered, and
//! the CM commits configuration c+2 in which it is active again; then the new backups report
//! their copies complete, and the CM commits configurations in which none is copying. Every
//! wait is bounded by a deadline.

use acre_cm::driver::{CmDriver, CmSeat, DriverOptions, Fence, INSTALL_TIMEOUT_DEFAULT, Source};
use acre_cm::group::{CmGroup, GroupOptions};
use acre_cm::lease::{DRIFT_PPM_DEFAULT, LeaseTiming};
use acre_cm::lease_thread::{CmRole, LeaseThread, LeaseThreadConfig, NodeRole};
use acre_cm::manager::{Cause, ManagerTiming, Outcome};
use acre_cm::member::Adopter;
use acre_cm::net::Links;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::clock::{Clock, Time};
use acre_engine::fabric::tcp::auth::ClusterSecret;
use acre_replication::EmbeddedCluster;
use acre_txn::{Configuration, RegionState, TxnError};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The lease: short, so the test is quick, and long enough that no live node's lease lapses on
/// a loaded two-core machine (renewals go every 1/5 of it).
const LEASE: Duration = Duration::from_millis(250);
const REGION_BYTES: u64 = 4 << 20;
const BLOCK_BYTES: u64 = 64 << 10;
const RING_BYTES: u64 = 256 << 10;
/// Electing a leader, installing the first configuration, granting the first leases.
const SETUP_MAX: Duration = Duration::from_secs(10);
/// From node 4's death to configuration c+1 committed everywhere: a lease to suspect it, the
/// probe (100 ms at most), a Raft install, the acknowledgements, a lease of the removed node
/// waited out: about 3 leases; 16 leave room for a loaded machine.
const RECONFIGURE_MAX: Duration = Duration::from_secs(4);
const POLL: Duration = Duration::from_millis(10);
const CM_REPLICAS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const DEAD: NodeId = NodeId(4);

/// A node of the embedded cluster, as its driver's member sees it.
struct EmbeddedAdopter {
    node: NodeId,
    cluster: Arc<Mutex<EmbeddedCluster>>,
    /// The regions whose transactions the test says are recovered (transaction recovery does
    /// not run here), shared by every node: each reports those blocked at it as primary, as
    /// `ReplicaNode::recovered_regions` does.
    recovered: Arc<Mutex<Vec<RegionId>>>,
    /// The copies the test says are complete (data recovery does not run here): each node
    /// reports its own among those its configuration lists it as copying, as
    /// `ReplicaNode::copied_regions` does.
    copied: Arc<Mutex<Vec<(RegionId, NodeId)>>>,
}

impl Adopter for EmbeddedAdopter {
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String> {
        let mut cluster = self.cluster.lock().unwrap();
        cluster
            .adopt_at(self.node, config)
            .map_err(|e| e.to_string())
    }

    fn commit(&self, id: u64) -> Result<(), String> {
        let cluster = self.cluster.lock().unwrap();
        cluster.commit_at(self.node, id).map_err(|e| e.to_string())
    }

    fn current_id(&self) -> u64 {
        let cluster = self.cluster.lock().unwrap();
        cluster
            .nodes()
            .iter()
            .find(|n| n.node_id() == self.node)
            .map_or(0, |n| n.txn().config_id())
    }

    fn recovered(&self) -> Vec<RegionId> {
        let cluster = self.cluster.lock().unwrap();
        let Some(node) = cluster.nodes().iter().find(|n| n.node_id() == self.node) else {
            return Vec::new();
        };
        let config = node.txn().config();
        let blocked_here = |region: &RegionId| {
            config
                .placement(*region)
                .is_some_and(|p| p.state == RegionState::Blocked && p.primary == self.node)
        };
        let recovered = self.recovered.lock().unwrap();
        recovered.iter().copied().filter(blocked_here).collect()
    }

    fn copied(&self) -> Vec<RegionId> {
        let cluster = self.cluster.lock().unwrap();
        let Some(node) = cluster.nodes().iter().find(|n| n.node_id() == self.node) else {
            return Vec::new();
        };
        let config = node.txn().config();
        let copied = self.copied.lock().unwrap();
        copied
            .iter()
            .filter(|&&(region, copier)| {
                copier == self.node
                    && config
                        .placement(region)
                        .is_some_and(|p| p.copying.contains(&self.node))
            })
            .map(|&(region, _)| region)
            .collect()
    }
}

fn wait_until(what: &str, max: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + max;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {max:?}");
        std::thread::sleep(POLL);
    }
}

fn since(later: Option<Time>, earlier: Time) -> Duration {
    later.expect("reached").saturating_duration_since(earlier)
}

/// FaRM SOSP'15 §5.2: a node whose lease expires is suspected, probed around, removed by
/// configuration c+1 committed through the CM's Raft group, and the cluster goes on: the region
/// it was primary of is blocked (until recovery), the others commit. The removed node is fenced
/// before any member commits, and a fence that fails holds the commit back until it succeeds.
/// docs/failures.md#transaction-recovery: once the region's new primary reports it recovered,
/// the CM commits a configuration in which it is active again.
#[test]
fn a_dead_nodes_lease_expires_and_the_cm_commits_a_configuration_without_it() {
    let clock = Clock::system();
    let secret = ClusterSecret::generate();
    let root = tempfile::tempdir().unwrap();
    // CM links for every node, and the CM's Raft group on the first three. Port 0: a free port
    // picked by the bind itself (one looked up first could be taken by another test meanwhile).
    let mut links = Vec::new();
    let mut inboxes = Vec::new();
    for node in (1..=4).map(NodeId) {
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let (node_links, inbox) = Links::bind(node, any_port, secret.clone()).unwrap();
        links.push(Arc::new(node_links));
        inboxes.push(Some(inbox));
    }
    let voters: Vec<(NodeId, SocketAddr)> = (CM_REPLICAS.iter())
        .map(|&n| (n, links[usize::from(n.0) - 1].local_addr()))
        .collect();
    let dead_addr = links[3].local_addr();
    for (node, addr) in &voters {
        links[3].add_peer(*node, *addr);
        links[usize::from(node.0) - 1].add_peer(DEAD, dead_addr);
    }
    let mut groups = Vec::new();
    let mut routed = Vec::new();
    for &node in &CM_REPLICAS {
        let index = usize::from(node.0) - 1;
        let options = GroupOptions::new(node, voters.clone(), root.path());
        let (group, receiver) = CmGroup::start(
            options,
            links[index].clone(),
            inboxes[index].take().unwrap(),
        )
        .unwrap();
        groups.push(Arc::new(group));
        routed.push(Some(receiver));
    }

    // The first configuration, naming the leader as CM, installed through Raft.
    let mut leader = None;
    wait_until("a CM leader", SETUP_MAX, || {
        leader = groups.iter().find(|g| g.is_leader()).cloned();
        leader.is_some()
    });
    let leader = leader.unwrap();
    let cm = leader.node();
    let mut first = Configuration::place(
        1,
        (1..=4).map(NodeId).collect(),
        vec![],
        1,
        1,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .unwrap();
    first.cm_leader = Some(cm);
    let installed = leader.propose_install(0, &first, INSTALL_TIMEOUT_DEFAULT);
    assert!(
        matches!(&installed, Ok(c) if *c == first),
        "install the first configuration: {installed:?}"
    );

    let cluster = Arc::new(Mutex::new(
        EmbeddedCluster::start_faulty(first.clone(), RING_BYTES).unwrap(),
    ));

    // Lease threads: the CM's role in the leader's process (a running lease thread cannot
    // gain it later: driver.rs, "Limitations"), a node's role everywhere.
    let timing = LeaseTiming::new(LEASE, DRIFT_PPM_DEFAULT);
    let cm_lease_addr = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut lease_threads: Vec<Option<Arc<LeaseThread>>> = (1..=4)
        .map(NodeId)
        .map(|node| {
            Some(Arc::new(
                LeaseThread::spawn(LeaseThreadConfig {
                    bind: if node == cm {
                        cm_lease_addr
                    } else {
                        (Ipv4Addr::LOCALHOST, 0).into()
                    },
                    secret: secret.clone(),
                    clock: clock.clone(),
                    timing,
                    node: Some(NodeRole {
                        node,
                        cm,
                        cm_addr: Some(cm_lease_addr),
                        config: 1,
                        gate: None,
                    }),
                    cm: (node == cm).then(|| CmRole {
                        cm,
                        config: 1,
                        members: first.members().collect(),
                    }),
                    standalone_cm: None,
                })
                .unwrap(),
            ))
        })
        .collect();
    wait_until("every node's lease granted", SETUP_MAX, || {
        lease_threads.iter().flatten().all(|t| t.is_valid())
    });

    // A driver per node.
    let fence_attempts = Arc::new(AtomicU32::new(0));
    let recovered = Arc::new(Mutex::new(Vec::new()));
    let copied = Arc::new(Mutex::new(Vec::new()));
    let mut drivers: Vec<Option<CmDriver>> = Vec::new();
    for node in (1..=4).map(NodeId) {
        let index = usize::from(node.0) - 1;
        let source = if node == DEAD {
            Source::Inbox(inboxes[index].take().unwrap())
        } else {
            let fenced = cluster.clone();
            let attempts = fence_attempts.clone();
            let fence: Fence = Box::new(move |removed| {
                let mut cluster = fenced.lock().unwrap();
                // Fencing comes before NEW-CONFIG-COMMIT reaches anyone.
                for node in cluster.nodes() {
                    assert_ne!(
                        node.txn().config_state(),
                        (2, true),
                        "{} committed before {removed} was fenced",
                        node.node_id()
                    );
                }
                // The first attempt fails, as a kill might: the commit must wait for a second.
                if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                    return Err(format!("simulated: could not kill {removed}"));
                }
                cluster.fence_member(removed);
                Ok(())
            });
            Source::Cm(CmSeat {
                group: groups[index].clone(),
                routed: routed[index].take().unwrap(),
                timing: ManagerTiming::default(),
                fence,
                known_nodes: (1..=4).map(NodeId).collect(),
            })
        };
        let driver = CmDriver::start(
            DriverOptions {
                node,
                clock: clock.clone(),
                lease: LEASE,
                cm_lease_addrs: acre_cm::driver::CmLeaseAddrs::fixed(vec![(cm, cm_lease_addr)]),
                install_timeout: INSTALL_TIMEOUT_DEFAULT,
            },
            links[index].clone(),
            lease_threads[index].clone().unwrap(),
            EmbeddedAdopter {
                node,
                cluster: cluster.clone(),
                recovered: recovered.clone(),
                copied: copied.clone(),
            },
            source,
        )
        .unwrap();
        drivers.push(Some(driver));
    }
    let cm_index = usize::from(cm.0) - 1;
    // The new CM distributes and commits the configuration it holds before anything else.
    wait_until("the CM's first round committed", SETUP_MAX, || {
        drivers[cm_index]
            .as_ref()
            .unwrap()
            .history()
            .iter()
            .any(|r| r.cause == Cause::NewLeader && r.outcome == Outcome::Committed)
    });
    let settled = leader.configuration().unwrap();
    assert_eq!(settled.id, 1, "the CM kept configuration 1: {settled:?}");

    // An object in every region, written through a node that survives.
    let coordinator = |cluster: &EmbeddedCluster| {
        cluster
            .nodes()
            .iter()
            .find(|n| n.node_id() == NodeId(1))
            .unwrap()
            .txn()
            .clone()
    };
    let regions: Vec<RegionId> = first.regions.iter().map(|p| p.region).collect();
    let objects: Vec<Addr> = {
        let n1 = coordinator(&cluster.lock().unwrap());
        regions
            .iter()
            .map(|&region| {
                let mut txn = n1.begin().unwrap();
                let addr = txn.alloc_near(8, Addr::new(region, 0)).unwrap();
                txn.write(addr, b"before").unwrap();
                txn.commit().unwrap();
                addr
            })
            .collect()
    };

    // Node 4 dies: its driver and lease thread stop.
    let died_at = clock.now();
    drivers[3].take().unwrap().stop();
    lease_threads[3] = None;

    wait_until(
        "configuration 2 committed at every remaining node",
        RECONFIGURE_MAX,
        || {
            let cluster = cluster.lock().unwrap();
            cluster.nodes().len() == 3
                && cluster
                    .nodes()
                    .iter()
                    .all(|n| n.txn().config_state() == (2, true))
        },
    );
    for group in &groups {
        wait_until(
            "every CM replica applied configuration 2",
            SETUP_MAX,
            || group.configuration().is_some_and(|c| c.id == 2),
        );
    }
    let second = leader.configuration().unwrap();
    assert_eq!(second.cm_leader, Some(cm));
    assert!(!second.members().any(|n| n == DEAD), "{second:?}");
    for placement in &second.regions {
        assert_ne!(placement.primary, DEAD, "{placement:?}");
        assert!(!placement.backups.contains(&DEAD), "{placement:?}");
        assert!(!placement.copying.contains(&DEAD), "{placement:?}");
    }

    // The region node 4 was primary of is blocked and refused; the others commit.
    let orphan = first.primary_regions(DEAD).next().unwrap().region;
    assert_eq!(
        second.placement(orphan).unwrap().state,
        RegionState::Blocked
    );
    let n1 = coordinator(&cluster.lock().unwrap());
    for (&region, &addr) in regions.iter().zip(&objects) {
        let mut txn = n1.begin().unwrap();
        if region == orphan {
            assert_eq!(
                txn.read(addr),
                Err(TxnError::RegionUnavailable {
                    region,
                    state: RegionState::Blocked,
                    config: 2,
                })
            );
        } else {
            assert_eq!(txn.read(addr).unwrap(), b"before");
            txn.write(addr, b"after!").unwrap();
            assert_eq!(txn.commit(), Ok(()), "commit in {region:?}");
        }
    }

    assert_eq!(
        fence_attempts.load(Ordering::SeqCst),
        2,
        "the failed fence was tried again, and once it held no more"
    );

    // The manager's record of it (its commit time is the first NEW-CONFIG-COMMIT it asked
    // for, which the failed fence held back from one member until it acknowledged again).
    let history = drivers[cm_index].as_ref().unwrap().history();
    let record = history
        .iter()
        .find(|r| matches!(&r.cause, Cause::Failure { .. }))
        .expect("a failure reconfiguration recorded");
    assert_eq!(record.outcome, Outcome::Committed, "{record}");
    assert_eq!(record.failed, vec![DEAD], "{record}");
    assert_eq!((record.from_id, record.to_id), (1, Some(2)), "{record}");
    println!("{record}");
    println!(
        "lease {LEASE:?}: suspected {:?} after the death, installed {:?} after the suspicion, \
         committed {:?} after the suspicion ({:?} after the death)",
        record.suspected_at.saturating_duration_since(died_at),
        since(record.installed_at, record.suspected_at),
        since(record.committed_at, record.suspected_at),
        since(record.committed_at, died_at),
    );

    // Transaction recovery finished at the orphan's new primary: it reports the region, and
    // the CM installs and commits configuration 3 in which it is active, nothing else changed.
    let recovered_at = clock.now();
    recovered.lock().unwrap().push(orphan);
    wait_until(
        "configuration 3 with the region active committed at every node",
        RECONFIGURE_MAX,
        || {
            let cluster = cluster.lock().unwrap();
            cluster.nodes().iter().all(|n| {
                n.txn().config_state() == (3, true)
                    && n.txn().config().placement(orphan).unwrap().state == RegionState::Active
            })
        },
    );
    for group in &groups {
        wait_until(
            "every CM replica applied configuration 3",
            SETUP_MAX,
            || group.configuration().is_some_and(|c| c.id == 3),
        );
    }
    let third = leader.configuration().unwrap();
    let mut expected = (*second).clone();
    expected.id = 3;
    for placement in &mut expected.regions {
        if placement.region == orphan {
            placement.state = RegionState::Active;
        }
    }
    assert_eq!(*third, expected);
    let n1 = coordinator(&cluster.lock().unwrap());
    let mut txn = n1.begin().unwrap();
    let orphan_addr = objects[regions.iter().position(|&r| r == orphan).unwrap()];
    let read = txn.read(orphan_addr);
    assert!(
        !matches!(read, Err(TxnError::RegionUnavailable { .. })),
        "{orphan:?} serves again: {read:?}"
    );
    drop(txn);
    let history = drivers[cm_index].as_ref().unwrap().history();
    let record = history
        .iter()
        .find(|r| matches!(&r.cause, Cause::Recovery { .. }))
        .expect("an activation recorded");
    assert_eq!(
        record.cause,
        Cause::Recovery {
            regions: vec![orphan],
            node: Some(third.placement(orphan).unwrap().primary),
            copied: Vec::new(),
        }
    );
    assert_eq!(record.outcome, Outcome::Committed, "{record}");
    assert_eq!((record.from_id, record.to_id), (2, Some(3)), "{record}");
    println!("{record}");
    println!(
        "reported {:?} after recovery ended, committed {:?} after the report",
        record.suspected_at.saturating_duration_since(recovered_at),
        since(record.committed_at, record.suspected_at),
    );
    // The report stops once the region is active: no further configuration.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(leader.configuration().unwrap().id, 3);

    // docs/failures.md#data-recovery: the new backups of configuration 2 (the orphan's, and
    // that of the region node 4 backed up) finish their copies and report them; the CM counts
    // each node's copies complete in a configuration of its own, one report at a time.
    let copies: Vec<(RegionId, NodeId)> = third
        .regions
        .iter()
        .flat_map(|p| p.copying.iter().map(|&node| (p.region, node)))
        .collect();
    assert!(!copies.is_empty(), "configuration 2 added copying backups");
    let copiers: std::collections::BTreeSet<NodeId> =
        copies.iter().map(|&(_, node)| node).collect();
    let last_id = 3 + copiers.len() as u64;
    copied.lock().unwrap().extend(copies.iter().copied());
    wait_until(
        "a configuration without copying backups committed at every node",
        RECONFIGURE_MAX * copiers.len() as u32,
        || {
            let cluster = cluster.lock().unwrap();
            cluster.nodes().iter().all(|n| {
                n.txn().config_state() == (last_id, true)
                    && n.txn()
                        .config()
                        .regions
                        .iter()
                        .all(|p| p.copying.is_empty())
            })
        },
    );
    let last = leader.configuration().unwrap();
    let mut expected = (*third).clone();
    expected.id = last_id;
    for placement in &mut expected.regions {
        placement.copying.clear();
    }
    assert_eq!(*last, expected, "only the copies changed");
    let history = drivers[cm_index].as_ref().unwrap().history();
    let mut counted: Vec<(RegionId, NodeId)> = Vec::new();
    for record in &history {
        if let Cause::Recovery {
            regions,
            node,
            copied,
        } = &record.cause
            && !copied.is_empty()
        {
            assert!(regions.is_empty(), "{record}");
            assert_eq!(record.outcome, Outcome::Committed, "{record}");
            let node = node.expect("a copy report names its node");
            counted.extend(copied.iter().map(|&region| (region, node)));
            println!("{record}");
        }
    }
    counted.sort();
    let mut expected_counted = copies.clone();
    expected_counted.sort();
    assert_eq!(counted, expected_counted);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        leader.configuration().unwrap().id,
        last_id,
        "reports stopped"
    );

    for driver in drivers.into_iter().flatten() {
        driver.stop();
    }
    drop(lease_threads);
    let cluster = Arc::try_unwrap(cluster)
        .ok()
        .expect("the drivers are gone")
        .into_inner()
        .unwrap();
    cluster.stop();
    drop(leader);
    drop(groups);
}
