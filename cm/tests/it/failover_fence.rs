//! Review: a node removed by a configuration that a previous CM installed but never committed
//! (it lost its leadership between the install and the fence) must still be fenced before the
//! next CM commits anything without it (docs/failures.md#fencing: "the CM has the process of a
//! node it removes killed first ... and commits the configuration without that node only
//! afterwards").

use acre_cm::driver::{CmDriver, CmSeat, DriverOptions, Fence, INSTALL_TIMEOUT_DEFAULT, Source};
use acre_cm::group::{CmGroup, GroupOptions};
use acre_cm::lease::{DRIFT_PPM_DEFAULT, LeaseTiming};
use acre_cm::lease_thread::{LeaseThread, LeaseThreadConfig, NodeRole};
use acre_cm::manager::{ManagerTiming, Outcome};
use acre_cm::member::Adopter;
use acre_cm::net::Links;
use acre_engine::addr::NodeId;
use acre_engine::clock::Clock;
use acre_engine::fabric::tcp::auth::ClusterSecret;
use acre_txn::Configuration;
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LEASE: Duration = Duration::from_millis(250);
const MAX: Duration = Duration::from_secs(15);
const REPLICAS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];
const REMOVED: NodeId = NodeId(4);

/// A member that keeps only its configuration id and whether it is committed.
struct Ids(Mutex<(u64, bool)>);

/// The driver owns its adopter; the test keeps a handle on it.
struct Shared(Arc<Ids>);

impl Adopter for Shared {
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String> {
        let mut state = self.0.0.lock().unwrap();
        if config.id <= state.0 {
            return Err(format!("stale {} <= {}", config.id, state.0));
        }
        *state = (config.id, false);
        Ok(())
    }

    fn commit(&self, id: u64) -> Result<(), String> {
        let mut state = self.0.0.lock().unwrap();
        if state.0 != id {
            return Err(format!("not adopted {id} (holds {})", state.0));
        }
        state.1 = true;
        Ok(())
    }

    fn current_id(&self) -> u64 {
        self.0.0.lock().unwrap().0
    }
}

#[test]
fn a_node_removed_by_an_uncommitted_configuration_of_the_previous_cm_is_fenced() {
    let clock = Clock::system();
    let secret = ClusterSecret::generate();
    let root = tempfile::tempdir().unwrap();
    let mut voters: Vec<(NodeId, SocketAddr)> = Vec::new();
    let mut links = Vec::new();
    let mut inboxes = Vec::new();
    for &node in REPLICAS.iter() {
        // Port 0: a free port picked by the bind itself (a port looked up first could be taken
        // by another test before the bind, as CI once saw).
        let any_port = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let (l, inbox) = Links::bind(node, any_port, secret.clone()).unwrap();
        voters.push((node, l.local_addr()));
        links.push(Arc::new(l));
        inboxes.push(Some(inbox));
    }
    for (i, l) in links.iter().enumerate() {
        for &(node, addr) in &voters {
            if node != REPLICAS[i] {
                l.add_peer(node, addr);
            }
        }
    }
    let mut groups = Vec::new();
    let mut routed = Vec::new();
    for (i, &node) in REPLICAS.iter().enumerate() {
        let (group, r) = CmGroup::start(
            GroupOptions::new(node, voters.clone(), root.path()),
            links[i].clone(),
            inboxes[i].take().unwrap(),
        )
        .unwrap();
        groups.push(Arc::new(group));
        routed.push(Some(r));
    }
    let deadline = Instant::now() + MAX;
    let leader = loop {
        if let Some(g) = groups.iter().find(|g| g.is_leader()) {
            break g.clone();
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(10));
    };
    // The previous CM (another replica) committed 1 and installed 2 without n4, then lost its
    // leadership before it fenced n4 and sent NEW-CONFIG-COMMIT.
    let previous = *REPLICAS.iter().find(|&&n| n != leader.node()).unwrap();
    let mut first = Configuration::place(
        1,
        (1..=4).map(NodeId).collect(),
        vec![],
        1,
        1,
        4 << 20,
        64 << 10,
    )
    .unwrap();
    first.cm_replicas = REPLICAS.to_vec();
    first.cm_leader = Some(previous);
    leader
        .propose_install(0, &first, INSTALL_TIMEOUT_DEFAULT)
        .unwrap();
    let mut second = acre_cm::remap::after_failure(&first, &BTreeSet::from([REMOVED]))
        .unwrap()
        .config;
    second.cm_leader = Some(previous);
    leader
        .propose_install(1, &second, INSTALL_TIMEOUT_DEFAULT)
        .unwrap();

    // Every replica's process as the agent starts it.
    let timing = LeaseTiming::new(LEASE, DRIFT_PPM_DEFAULT);
    let lease_threads: Vec<Arc<LeaseThread>> = REPLICAS
        .iter()
        .map(|&node| {
            Arc::new(
                LeaseThread::spawn(LeaseThreadConfig {
                    bind: (Ipv4Addr::LOCALHOST, 0).into(),
                    secret: secret.clone(),
                    clock: clock.clone(),
                    timing,
                    node: Some(NodeRole {
                        node,
                        cm: previous,
                        cm_addr: None,
                        config: 0,
                        gate: None,
                    }),
                    cm: None,
                    standalone_cm: None,
                })
                .unwrap(),
            )
        })
        .collect();
    let cm_lease_addrs: Vec<(NodeId, SocketAddr)> = REPLICAS
        .iter()
        .zip(&lease_threads)
        .map(|(&n, t)| (n, t.local_addr()))
        .collect();
    let fenced = Arc::new(Mutex::new(Vec::<NodeId>::new()));
    let members: Vec<Arc<Ids>> = REPLICAS
        .iter()
        .map(|_| Arc::new(Ids(Mutex::new((1, true)))))
        .collect();
    let mut drivers = Vec::new();
    for (i, &node) in REPLICAS.iter().enumerate() {
        let record = fenced.clone();
        let fence: Fence = Box::new(move |removed| {
            record.lock().unwrap().push(removed);
            Ok(())
        });
        drivers.push(
            CmDriver::start(
                DriverOptions {
                    node,
                    clock: clock.clone(),
                    lease: LEASE,
                    cm_lease_addrs: acre_cm::driver::CmLeaseAddrs::fixed(cm_lease_addrs.clone()),
                    install_timeout: INSTALL_TIMEOUT_DEFAULT,
                },
                links[i].clone(),
                lease_threads[i].clone(),
                Shared(members[i].clone()),
                Source::Cm(CmSeat {
                    group: groups[i].clone(),
                    routed: routed[i].take().unwrap(),
                    timing: ManagerTiming::default(),
                    fence,
                    known_nodes: (1..=4).map(NodeId).collect(),
                }),
            )
            .unwrap(),
        );
    }
    let index = REPLICAS.iter().position(|&n| n == leader.node()).unwrap();
    let deadline = Instant::now() + MAX;
    while !drivers[index]
        .history()
        .iter()
        .any(|r| r.outcome == Outcome::Committed)
    {
        assert!(Instant::now() < deadline, "the new CM committed nothing");
        std::thread::sleep(Duration::from_millis(10));
    }
    let committed = leader.configuration().unwrap();
    assert!(!committed.members().any(|n| n == REMOVED), "{committed:?}");
    assert!(
        members
            .iter()
            .any(|m| *m.0.lock().unwrap() == (committed.id, true)),
        "configuration {} committed at a member",
        committed.id
    );
    assert!(
        fenced.lock().unwrap().contains(&REMOVED),
        "configuration {} without {REMOVED} was committed, but {REMOVED} was never fenced \
         (fenced: {:?})",
        committed.id,
        fenced.lock().unwrap()
    );
    for d in drivers {
        d.stop();
    }
}
