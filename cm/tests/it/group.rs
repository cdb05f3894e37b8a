//! The CM group as processes run it: replicas on loopback CM links, each with its own thread,
//! directory and clock, electing a leader and installing configurations by compare-and-set
//! while replicas are dropped and restarted. Every wait is bounded by a deadline; nothing
//! sleeps for a fixed time.

use acre_cm::group::{CmGroup, CmStatus, GroupOptions, InstallError, LinkMessage, TransferError};
use acre_cm::net::Links;
use acre_cm::wire::{Envelope, envelope};
use acre_engine::addr::NodeId;
use acre_engine::clock::{Clock, Rate};
use acre_engine::fabric::tcp::auth::ClusterSecret;
use acre_txn::config::Configuration;
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a group gets to elect a leader or converge: many election timeouts (300-600 ms).
const WAIT_MAX: Duration = Duration::from_secs(10);
/// How long one install may take before the test gives up on it.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a watch waits between looks at the other replicas.
const POLL: Duration = Duration::from_millis(20);

/// Configuration `id` of nodes 1 to 3; `variant` regions per node, so that two proposals for
/// one id differ.
fn config(id: u64, variant: usize) -> Configuration {
    let nodes = (1..=3).map(NodeId).collect();
    Configuration::place(id, nodes, vec![], variant, 1, 1 << 20, 4096).unwrap()
}

/// A cluster directory and the CM links addresses of three CM replicas, nodes 1 to 3.
struct Cluster {
    secret: ClusterSecret,
    root: tempfile::TempDir,
    voters: Vec<(NodeId, SocketAddr)>,
    compact_entry_count: u64,
}

/// One process hosting a replica: its group (which holds its links) and what the group routes
/// to the owner (behind a lock only so that test threads can share a `Process`).
struct Process {
    group: CmGroup,
    routed: Mutex<Receiver<LinkMessage>>,
}

impl Cluster {
    fn new() -> Cluster {
        // Free ports: the listeners close at once, and each replica binds its port (again after
        // a restart).
        let voters = (1..=3)
            .map(|n| {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                (NodeId(n), listener.local_addr().unwrap())
            })
            .collect();
        Cluster {
            secret: ClusterSecret::generate(),
            root: tempfile::tempdir().unwrap(),
            voters,
            compact_entry_count: 1024,
        }
    }

    fn start(&self, node: u16) -> Process {
        let node = NodeId(node);
        let addr = self.voters.iter().find(|(n, _)| *n == node).unwrap().1;
        let (links, inbox) = Links::bind(node, addr, self.secret.clone()).unwrap();
        let mut options = GroupOptions::new(node, self.voters.clone(), self.root.path());
        options.storage.compact_entry_count = self.compact_entry_count;
        let (group, routed) = CmGroup::start(options, Arc::new(links), inbox).unwrap();
        Process {
            group,
            routed: Mutex::new(routed),
        }
    }
}

/// The leader among `processes`, once one of them says it leads.
fn wait_leader(processes: &[&Process]) -> NodeId {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(leader) = processes.iter().find(|p| p.group.is_leader()) {
            return leader.group.node();
        }
        assert!(
            Instant::now() < deadline,
            "no leader within {WAIT_MAX:?}: {:?}",
            processes
                .iter()
                .map(|p| p.group.status())
                .collect::<Vec<_>>()
        );
        let first = &processes[0].group;
        first.wait_status(first.status().epoch, POLL);
    }
}

fn process(processes: &[&Process], node: NodeId) -> usize {
    processes
        .iter()
        .position(|p| p.group.node() == node)
        .unwrap()
}

/// Installs `configuration` over `expected_id` at whichever replica leads, retrying while
/// leadership moves.
fn install(
    processes: &[&Process],
    expected_id: u64,
    configuration: &Configuration,
) -> Result<Configuration, InstallError> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        let leader = processes[process(processes, wait_leader(processes))];
        match leader
            .group
            .propose_install(expected_id, configuration, INSTALL_TIMEOUT)
        {
            Err(InstallError::NotLeader { .. } | InstallError::Lost | InstallError::Busy)
                if Instant::now() < deadline => {}
            result => return result,
        }
    }
}

/// Waits until `process` has applied configuration `id`; checks on the way that the ids it
/// shows never go back.
fn wait_configuration(process: &Process, id: u64) -> CmStatus {
    let deadline = Instant::now() + WAIT_MAX;
    let mut status = process.group.status();
    loop {
        if status.configuration_id() == id {
            return status;
        }
        assert!(status.configuration_id() < id, "{status:?} wanted {id}");
        assert!(
            Instant::now() < deadline,
            "node {} did not apply configuration {id}: {status:?}",
            process.group.node()
        );
        let seen = status.configuration_id();
        status = process.group.wait_status(status.epoch, POLL);
        assert!(status.configuration_id() >= seen, "{status:?} after {seen}");
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[test]
fn three_replicas_elect_a_leader_and_install_by_compare_and_set() {
    let cluster = Cluster::new();
    let processes: Vec<Process> = (1..=3).map(|n| cluster.start(n)).collect();
    let all: Vec<&Process> = processes.iter().collect();
    let started = Instant::now();
    let leader = wait_leader(&all);
    eprintln!("first election: {:?}", started.elapsed());
    assert_eq!(install(&all, 0, &config(1, 1)).unwrap(), config(1, 1));

    // A follower sends the proposer to the leader.
    let follower = all.iter().find(|p| p.group.node() != leader).unwrap();
    match follower
        .group
        .propose_install(1, &config(2, 1), INSTALL_TIMEOUT)
    {
        Err(InstallError::NotLeader { leader: hint }) => assert_eq!(hint, Some(leader)),
        other => panic!("{other:?}"),
    }

    // Sequential installs: their latency.
    let mut latencies = Vec::new();
    for id in 2..=21 {
        let started = Instant::now();
        assert_eq!(
            install(&all, id - 1, &config(id, 1)).unwrap(),
            config(id, 1)
        );
        latencies.push(started.elapsed());
    }
    eprintln!(
        "install latency: median {:?}, max {:?}",
        median(latencies.clone()),
        latencies.iter().max().unwrap()
    );

    // Two proposers race on one expected id: exactly one wins, the other learns the winner.
    let mut current = 21;
    for _round in 0..5 {
        let (a, b) = std::thread::scope(|scope| {
            let all = &all;
            let a = scope.spawn(move || install(all, current, &config(current + 1, 1)));
            let b = scope.spawn(move || install(all, current, &config(current + 1, 2)));
            (a.join().unwrap(), b.join().unwrap())
        });
        // A proposer whose first try was lost but applied sees its own as current on retry.
        let won = |result: &Result<Configuration, InstallError>, own: &Configuration| match result {
            Ok(installed) => installed == own,
            Err(InstallError::Stale { current }) => current.as_deref() == Some(own),
            Err(e) => panic!("{e}"),
        };
        let a_won = won(&a, &config(current + 1, 1));
        let b_won = won(&b, &config(current + 1, 2));
        assert!(a_won != b_won, "a={a:?} b={b:?}");
        let (winner, loser) = if a_won {
            (config(current + 1, 1), b)
        } else {
            (config(current + 1, 2), a)
        };
        match loser {
            Err(InstallError::Stale { current }) => assert_eq!(current.as_deref(), Some(&winner)),
            other => panic!("the loser got {other:?}"),
        }
        current += 1;
        for process in &processes {
            let status = wait_configuration(process, current);
            assert_eq!(status.configuration.as_deref(), Some(&winner));
        }
    }
}

#[test]
fn a_new_leader_follows_a_dropped_one_and_installs_go_on() {
    let cluster = Cluster::new();
    let mut processes: Vec<Process> = (1..=3).map(|n| cluster.start(n)).collect();
    let all: Vec<&Process> = processes.iter().collect();
    install(&all, 0, &config(1, 1)).unwrap();
    let leader = wait_leader(&all);
    let term = all[process(&all, leader)].group.term();
    for process in &processes {
        wait_configuration(process, 1);
    }
    let index = processes
        .iter()
        .position(|p| p.group.node() == leader)
        .unwrap();
    let dropped_at = Instant::now();
    drop(processes.remove(index));
    let drop_took = dropped_at.elapsed();

    let survivors: Vec<&Process> = processes.iter().collect();
    let new_leader = wait_leader(&survivors);
    let elected_after = dropped_at.elapsed();
    eprintln!("new leader {new_leader} after {elected_after:?} (the drop took {drop_took:?})");
    assert_ne!(new_leader, leader);
    assert!(survivors[process(&survivors, new_leader)].group.term() > term);
    // raft draws the election timeout in [300, 600) ms; a pre-vote and a vote round follow.
    assert!(elected_after < Duration::from_secs(5), "{elected_after:?}");
    assert_eq!(install(&survivors, 1, &config(2, 1)).unwrap(), config(2, 1));
    for process in &processes {
        wait_configuration(process, 2);
    }
}

#[test]
fn a_restarted_replica_catches_up_and_ids_keep_growing() {
    let mut cluster = Cluster::new();
    // Compact often, so the restarted replica is sent a snapshot.
    cluster.compact_entry_count = 2;
    let mut processes: Vec<Option<Process>> = (1..=3).map(|n| Some(cluster.start(n))).collect();
    let all: Vec<&Process> = processes.iter().flatten().collect();
    for id in 1..=3 {
        install(&all, id - 1, &config(id, 1)).unwrap();
    }
    for process in processes.iter().flatten() {
        wait_configuration(process, 3);
    }
    let leader = wait_leader(&all);
    let follower = processes
        .iter()
        .flatten()
        .position(|p| p.group.node() != leader)
        .unwrap();
    let node = processes[follower].as_ref().unwrap().group.node();
    drop(all);
    processes[follower] = None;

    let majority: Vec<&Process> = processes.iter().flatten().collect();
    for id in 4..=8 {
        install(&majority, id - 1, &config(id, 1)).unwrap();
    }
    drop(majority);

    let restarted = cluster.start(node.0);
    // What it applied before is back from its files at once.
    assert_eq!(restarted.group.configuration().unwrap().id, 3);
    wait_configuration(&restarted, 8);
    let snapshots: u64 = processes
        .iter()
        .flatten()
        .map(|p| p.group.stats().snapshot_sent_count)
        .sum();
    assert!(
        snapshots > 0,
        "the log it missed was compacted: a snapshot brought it"
    );
    processes[follower] = Some(restarted);
    let all: Vec<&Process> = processes.iter().flatten().collect();
    install(&all, 8, &config(9, 1)).unwrap();
    for process in &all {
        wait_configuration(process, 9);
    }
}

#[test]
fn a_majority_installs_while_one_replica_is_down() {
    let cluster = Cluster::new();
    // Node 3 never starts: its address refuses connections.
    let processes: Vec<Process> = (1..=2).map(|n| cluster.start(n)).collect();
    let all: Vec<&Process> = processes.iter().collect();
    for id in 1..=3 {
        assert_eq!(
            install(&all, id - 1, &config(id, 1)).unwrap(),
            config(id, 1)
        );
    }
    for process in &processes {
        wait_configuration(process, 3);
    }
    let refused: u64 = processes
        .iter()
        .map(|p| p.group.links().stats().dropped_unreachable_count)
        .sum();
    assert!(refused > 0, "messages to node 3 are dropped");
}

#[test]
fn a_minority_alone_installs_nothing() {
    let cluster = Cluster::new();
    let mut processes: Vec<Process> = (1..=3).map(|n| cluster.start(n)).collect();
    let all: Vec<&Process> = processes.iter().collect();
    install(&all, 0, &config(1, 1)).unwrap();
    let leader = wait_leader(&all);
    // The leader is left alone: it must stand down (check_quorum), and commit nothing.
    processes.retain(|p| p.group.node() == leader);
    let alone = &processes[0];
    let deadline = Instant::now() + WAIT_MAX;
    let mut status = alone.group.status();
    let mut proposals = 0;
    while status.is_leader {
        assert!(Instant::now() < deadline, "still leader alone: {status:?}");
        match alone
            .group
            .propose_install(1, &config(2, 1), Duration::from_millis(100))
        {
            Err(InstallError::Timeout | InstallError::NotLeader { .. } | InstallError::Lost) => {}
            other => panic!("a lone replica answered {other:?}"),
        }
        proposals += 1;
        status = alone.group.status();
    }
    eprintln!("the lone leader stood down after {proposals} proposals");
    match alone
        .group
        .propose_install(1, &config(2, 1), INSTALL_TIMEOUT)
    {
        Err(InstallError::NotLeader { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(alone.group.configuration().unwrap().id, 1);

    // One replica of three started alone never leads.
    let cluster = Cluster::new();
    let alone = cluster.start(1);
    let status = alone.group.wait_status(u64::MAX, Duration::from_secs(2));
    assert!(!status.is_leader, "{status:?}");
    match alone
        .group
        .propose_install(0, &config(1, 1), INSTALL_TIMEOUT)
    {
        Err(InstallError::NotLeader { leader: None }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_envelopes_reach_the_owner_and_bad_ones_are_dropped() {
    let secret = ClusterSecret::generate();
    let root = tempfile::tempdir().unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (links, inbox) = Links::bind(NodeId(1), loopback, secret.clone()).unwrap();
    let addr = links.local_addr();
    // A group of one replica, and node 4, a member that is no CM replica.
    let options = GroupOptions::new(NodeId(1), vec![(NodeId(1), addr)], root.path());
    let (group, routed) = CmGroup::start(options, Arc::new(links), inbox).unwrap();
    let process = Process {
        group,
        routed: Mutex::new(routed),
    };
    let (member, _member_inbox) = Links::bind(NodeId(4), loopback, secret).unwrap();
    process
        .group
        .links()
        .add_peer(NodeId(4), member.local_addr());
    member.add_peer(NodeId(1), addr);

    let probe = Envelope::new(envelope::Body::Probe(7)).encode();
    member.send(NodeId(1), probe).unwrap();
    let message = process
        .routed
        .lock()
        .unwrap()
        .recv_timeout(WAIT_MAX)
        .unwrap();
    assert_eq!(
        message,
        LinkMessage {
            from: NodeId(4),
            body: envelope::Body::Probe(7)
        }
    );
    // Garbage, and a raft message from a node that is no replica, are dropped and counted.
    member.send(NodeId(1), vec![0xff; 9]).unwrap();
    let raft = Envelope::new(envelope::Body::Raft(vec![])).encode();
    member.send(NodeId(1), raft).unwrap();
    // The next probe comes after both on the same connection.
    member
        .send(NodeId(1), Envelope::new(envelope::Body::Probe(8)).encode())
        .unwrap();
    assert_eq!(
        process
            .routed
            .lock()
            .unwrap()
            .recv_timeout(WAIT_MAX)
            .unwrap()
            .body,
        envelope::Body::Probe(8)
    );
    assert_eq!(process.group.stats().refused_count, 2);

    // The group of one still leads and installs.
    let all = [&process];
    assert_eq!(install(&all, 0, &config(1, 1)).unwrap(), config(1, 1));
    let inbox = process.group.shutdown();
    assert!(inbox.is_empty());
}

#[test]
fn ticks_follow_the_clock() {
    let root = tempfile::tempdir().unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (links, inbox) = Links::bind(NodeId(1), loopback, ClusterSecret::generate()).unwrap();
    let (clock, control) = Clock::controlled();
    control.set_rate(Rate::STOPPED);
    let mut options = GroupOptions::new(
        NodeId(1),
        vec![(NodeId(1), links.local_addr())],
        root.path(),
    );
    options.clock = clock;
    let (group, _routed) = CmGroup::start(options, Arc::new(links), inbox).unwrap();
    // At real rate a group of one elects itself within 600 ms; on a stopped clock it never
    // ticks. (A plain sleep: the group's own waits read the stopped clock.) The term only
    // grows, so reading it once at the end covers the whole wait.
    std::thread::sleep(Duration::from_millis(800));
    let status = group.status();
    assert_eq!(status.term, 0, "{status:?}");
    assert!(!status.is_leader, "{status:?}");

    // Ten times real time: elected within a tenth of the election timeout.
    control.set_rate(Rate::from_ratio(10, 1));
    let started = Instant::now();
    let deadline = started + WAIT_MAX;
    let mut status = group.status();
    while !status.is_leader {
        assert!(Instant::now() < deadline, "{status:?}");
        status = group.wait_status(status.epoch, POLL);
    }
    eprintln!(
        "elected after {:?} at ten times real time",
        started.elapsed()
    );
}

#[test]
fn a_replica_whose_storage_fails_stops_and_still_routes() {
    let secret = ClusterSecret::generate();
    let root = tempfile::tempdir().unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (links, inbox) = Links::bind(NodeId(1), loopback, secret.clone()).unwrap();
    let addr = links.local_addr();
    let options = GroupOptions::new(NodeId(1), vec![(NodeId(1), addr)], root.path());
    let dir = options.dir.clone();
    let (group, routed) = CmGroup::start(options, Arc::new(links), inbox).unwrap();
    let process = Process {
        group,
        routed: Mutex::new(routed),
    };
    let all = [&process];
    install(&all, 0, &config(1, 1)).unwrap();

    // The state file is replaced through a temporary file in the directory: without the
    // directory the next sync fails.
    std::fs::remove_dir_all(&dir).unwrap();
    match process
        .group
        .propose_install(1, &config(2, 1), INSTALL_TIMEOUT)
    {
        Err(InstallError::Stopped) => {}
        other => panic!("{other:?}"),
    }
    let status = process.group.status();
    assert!(status.stopped && !status.is_leader, "{status:?}");
    assert_eq!(status.configuration_id(), 1, "what it applied stays shown");
    match process
        .group
        .propose_install(1, &config(2, 1), INSTALL_TIMEOUT)
    {
        Err(InstallError::Stopped) => {}
        other => panic!("{other:?}"),
    }

    // The member side of the process still gets its messages.
    let (member, _member_inbox) = Links::bind(NodeId(4), loopback, secret).unwrap();
    process
        .group
        .links()
        .add_peer(NodeId(4), member.local_addr());
    member.add_peer(NodeId(1), addr);
    member
        .send(NodeId(1), Envelope::new(envelope::Body::Probe(3)).encode())
        .unwrap();
    let message = process
        .routed
        .lock()
        .unwrap()
        .recv_timeout(WAIT_MAX)
        .unwrap();
    assert_eq!(message.body, envelope::Body::Probe(3));
}

#[test]
fn a_damaged_directory_is_refused_at_start_naming_the_file_and_offset() {
    let secret = ClusterSecret::generate();
    let root = tempfile::tempdir().unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let start = || {
        let (links, inbox) = Links::bind(NodeId(1), loopback, secret.clone()).unwrap();
        let voters = vec![(NodeId(1), links.local_addr())];
        CmGroup::start(
            GroupOptions::new(NodeId(1), voters, root.path()),
            Arc::new(links),
            inbox,
        )
    };
    let (group, routed) = start().unwrap();
    let process = Process {
        group,
        routed: Mutex::new(routed),
    };
    install(&[&process], 0, &config(1, 1)).unwrap();
    drop(process);

    let log = acre_cm::group::replica_dir(root.path(), NodeId(1)).join(acre_cm::storage::LOG_FILE);
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&log, bytes).unwrap();
    let error = start().map(|_| ()).unwrap_err().to_string();
    assert!(error.contains(&log.display().to_string()), "{error}");
    assert!(error.contains("at byte"), "{error}");
}

#[test]
fn a_leader_hands_its_role_to_a_follower() {
    let cluster = Cluster::new();
    let processes: Vec<Process> = (1..=3).map(|n| cluster.start(n)).collect();
    let all: Vec<&Process> = processes.iter().collect();
    install(&all, 0, &config(1, 1)).unwrap();
    let leader = all[process(&all, wait_leader(&all))];
    let follower = all
        .iter()
        .find(|p| p.group.node() != leader.group.node())
        .unwrap();
    match follower.group.transfer_leadership(leader.group.node()) {
        Err(TransferError::NotLeader { leader: hint }) => {
            assert_eq!(hint, Some(leader.group.node()));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        leader.group.transfer_leadership(leader.group.node()),
        Err(TransferError::NotAPeer { .. })
    ));

    let term = leader.group.term();
    let started = Instant::now();
    leader
        .group
        .transfer_leadership(follower.group.node())
        .unwrap();
    let deadline = started + WAIT_MAX;
    let mut status = follower.group.status();
    while !status.is_leader {
        assert!(Instant::now() < deadline, "{status:?}");
        status = follower.group.wait_status(status.epoch, POLL);
    }
    eprintln!("leadership handed over in {:?}", started.elapsed());
    assert!(status.term > term, "a new term: {status:?} after {term}");
    assert_eq!(install(&all, 1, &config(2, 1)).unwrap(), config(2, 1));
    for process in &processes {
        wait_configuration(process, 2);
    }
}

/// Waits until `done` holds of `process`'s status.
fn wait_status(process: &Process, what: &str, done: impl Fn(&CmStatus) -> bool) -> CmStatus {
    let deadline = Instant::now() + WAIT_MAX;
    let mut status = process.group.status();
    while !done(&status) {
        assert!(
            Instant::now() < deadline,
            "node {}: {what}: not within {WAIT_MAX:?}: {status:?}",
            process.group.node()
        );
        status = process.group.wait_status(status.epoch, POLL);
    }
    status
}

/// Over loopback links, as processes run it (docs/failures.md#membership-of-the-group): n2 is
/// gone; n4's replica joins knowing no voters, is added as a learner and caught up, n2 is
/// removed and n4 promoted. Then n2 comes back from its files, still believing in {n1, n2, n3}:
/// the others refuse its messages and it disturbs nobody. Then the leader is dropped: the
/// survivors of {n1, n3, n4} elect one and install.
#[test]
fn a_replica_joins_over_the_links_replaces_a_lost_one_and_the_group_survives_a_second_loss() {
    let cluster = Cluster::new();
    let mut processes: Vec<Process> = (1..=3).map(|n| cluster.start(n)).collect();
    install(&processes.iter().collect::<Vec<_>>(), 0, &config(1, 1)).unwrap();
    let n2 = processes.remove(1);
    assert_eq!(n2.group.node(), NodeId(2));
    drop(n2);

    // n4 binds its links and starts its replica with no voters; the others make it a peer, as
    // the agents' peer discovery does for every member.
    let n4_addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (links, inbox) = Links::bind(NodeId(4), n4_addr, cluster.secret.clone()).unwrap();
    for &(node, addr) in &cluster.voters {
        links.add_peer(node, addr);
    }
    let options = GroupOptions::new(NodeId(4), Vec::new(), cluster.root.path());
    let (group, routed) = match CmGroup::join(options, Arc::new(links), inbox) {
        Ok(started) => started,
        Err((e, _)) => panic!("{e}"),
    };
    processes.push(Process {
        group,
        routed: Mutex::new(routed),
    });
    for process in &processes[..2] {
        process.group.links().add_peer(NodeId(4), n4_addr);
    }
    let n4 = &processes[2];
    assert!(n4.group.status().voters.is_empty());

    let all: Vec<&Process> = processes.iter().collect();
    let leader = all[process(&all, wait_leader(&all))];
    let change = |kind, node| {
        leader
            .group
            .propose_conf_change(kind, node)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    use acre_cm::group::ConfChangeType;
    change(ConfChangeType::AddLearnerNode, NodeId(4));
    wait_status(n4, "n4 learns the group from a snapshot", |s| {
        s.learners == [NodeId(4)] && s.configuration_id() == 1
    });
    let deadline = Instant::now() + WAIT_MAX;
    while leader.group.membership().unwrap().caught_up != [4] {
        assert!(Instant::now() < deadline, "n4 never caught up");
        std::thread::sleep(POLL);
    }
    change(ConfChangeType::RemoveNode, NodeId(2));
    wait_status(leader, "n2 removed", |s| s.voters == [NodeId(1), NodeId(3)]);
    change(ConfChangeType::AddNode, NodeId(4));
    for process in &processes {
        wait_status(process, "n4 promoted", |s| {
            s.voters == [NodeId(1), NodeId(3), NodeId(4)] && s.learners.is_empty()
        });
    }
    assert_eq!(install(&all, 1, &config(2, 1)).unwrap(), config(2, 1));

    // n2 back from its files: it applied nothing of the change and stands for election in
    // {n1, n2, n3}; the group's replicas refuse what it sends.
    let n2 = cluster.start(2);
    let refused_before: u64 = all.iter().map(|p| p.group.stats().refused_count).sum();
    let deadline = Instant::now() + WAIT_MAX;
    while all
        .iter()
        .map(|p| p.group.stats().refused_count)
        .sum::<u64>()
        == refused_before
    {
        assert!(Instant::now() < deadline, "n2 sent nothing in {WAIT_MAX:?}");
        std::thread::sleep(POLL);
    }
    assert!(!n2.group.is_leader(), "{:?}", n2.group.status());
    assert_eq!(install(&all, 2, &config(3, 1)).unwrap(), config(3, 1));
    assert!(
        n2.group.status().configuration_id() < 3,
        "{:?}",
        n2.group.status()
    );
    drop(n2);

    // The second loss: the leader.
    let leader = wait_leader(&all);
    drop(all);
    let index = process(&processes.iter().collect::<Vec<_>>(), leader);
    drop(processes.remove(index));
    let survivors: Vec<&Process> = processes.iter().collect();
    assert_ne!(wait_leader(&survivors), leader);
    assert_eq!(install(&survivors, 3, &config(4, 1)).unwrap(), config(4, 1));
}
