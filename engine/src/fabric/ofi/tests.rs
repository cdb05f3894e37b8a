//! Unit tests of the ofi transport on loopback: bad input gives typed errors naming the
//! provider and the operation, and a node keeps serving the others.

use super::*;
use crate::addr::Addr;
use crate::fabric::{Doorbell, Fabric, Transport};
use std::time::Instant;

const PROVIDER: &str = "tcp;ofi_rxm";
const DATA: RegionId = RegionId(1);
const DATA_BYTES: u64 = 64 << 10;

/// One node: its fabric, its NIC thread and its data region's key.
struct TestNode {
    fabric: Fabric,
    nic: OfiNic,
    key: AccessKey,
}

impl TestNode {
    fn transport(&self) -> &OfiTransport {
        match self.fabric.transport() {
            Transport::Ofi(transport) => transport,
            _ => unreachable!("an ofi node"),
        }
    }
}

fn start(provider: &str, id: u16) -> TestNode {
    start_with(&OfiConfig::loopback(provider), id)
}

fn start_with(config: &OfiConfig, id: u16) -> TestNode {
    let provider = &config.provider;
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(NodeId(id), doorbell));
    let region = Region::anonymous(DATA, DATA_BYTES).expect("map a region");
    let key = region.key();
    memory.register(Arc::new(region)).expect("register");
    let (transport, nic) = OfiTransport::start(config, memory.clone())
        .unwrap_or_else(|e| panic!("start {provider}: {e}"));
    TestNode {
        fabric: Fabric::new(memory, Transport::Ofi(transport)),
        nic,
        key,
    }
}

/// `count` nodes that know each other.
fn cluster(provider: &str, count: u16) -> Vec<TestNode> {
    let nodes: Vec<_> = (1..=count).map(|id| start(provider, id)).collect();
    exchange_cards(&nodes);
    nodes
}

/// Gives every node the others' cards as they are now.
fn exchange_cards(nodes: &[TestNode]) {
    for node in nodes {
        for other in nodes
            .iter()
            .filter(|o| o.fabric.node_id() != node.fabric.node_id())
        {
            node.transport()
                .add_peer(other.transport().card().unwrap())
                .unwrap();
        }
    }
}

fn expect_unreachable(result: Result<Vec<u8>, OpError>, node: NodeId, call: &str) -> String {
    match result {
        Err(OpError::Unreachable { node: at, reason }) => {
            assert_eq!(at, node);
            assert!(reason.contains(PROVIDER), "names the provider: {reason}");
            assert!(reason.contains(call), "names the call {call}: {reason}");
            reason
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[test]
fn an_unknown_provider_is_a_typed_error_naming_it() {
    let memory = Arc::new(NodeMemory::new(
        NodeId(1),
        Arc::new(Doorbell::anonymous().unwrap()),
    ));
    let error = OfiTransport::start(&OfiConfig::loopback("no-such-provider"), memory)
        .err()
        .expect("no such provider");
    assert!(
        matches!(&error, OfiError::ProviderUnavailable { provider, call, .. }
            if provider == "no-such-provider" && call == "fi_getinfo"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("\"no-such-provider\""),
        "{error}"
    );
}

#[test]
fn a_card_of_another_provider_is_refused_and_nothing_is_added() {
    let nodes = cluster(PROVIDER, 1);
    let mut card = nodes[0].transport().card().unwrap();
    card.node = NodeId(9);
    card.provider = "sockets".into();
    let error = nodes[0].transport().add_peer(card).unwrap_err();
    assert!(
        matches!(
            &error,
            OfiError::BadCard {
                node: NodeId(9),
                ..
            }
        ),
        "{error:?}"
    );
    let results = nodes[0].fabric.execute(NodeId(9), vec![Op::Notify]);
    assert_eq!(results, vec![Err(OpError::UnknownNode { node: NodeId(9) })]);
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_posted() {
    let nodes = cluster(PROVIDER, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    // The access key is checked against the card before anything is posted (the
    // registration key the provider checks is another, one per node the area is granted to).
    let wrong = AccessKey(b.key.0 ^ 0x10);
    let result = a
        .fabric
        .read(b.fabric.node_id(), Addr::new(DATA, 0), wrong, 8);
    assert_eq!(
        result,
        Err(OpError::Access(AccessError::BadKey { region: DATA }))
    );
}

/// A card whose registration key is not the one registered (a stale card, or a forged one that
/// passes the initiator's check): the provider refuses it, naming itself and the call.
#[test]
fn a_registration_key_that_does_not_match_is_refused_by_the_provider() {
    let nodes = cluster(PROVIDER, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_id = b.fabric.node_id();
    let mut card = b.transport().card().unwrap();
    card.areas[0].grants[0].mr_key ^= 0x10;
    a.transport().add_peer(card).unwrap();
    let result = a.fabric.read(b_id, Addr::new(DATA, 0), b.key, 8);
    expect_unreachable(result, b_id, "fi_read");
}

/// A card that claims more than was registered (a stale or forged card): the initiator's check
/// passes, the provider refuses the access outside the registration with an error naming the
/// provider and the call, and the target goes on serving the others. On `tcp;ofi_rxm` (libfabric
/// 1.17) the failed pair's connection stays broken afterwards, as a queue pair in its error state
/// does on RDMA hardware; re-creating it is not built yet (docs/ofi.md), so only the other pairs
/// are checked afterwards.
#[test]
fn an_access_outside_a_registration_fails_at_the_provider_and_the_node_serves_others() {
    let nodes = cluster(PROVIDER, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (a_id, b_id) = (a.fabric.node_id(), b.fabric.node_id());
    let mut card = b.transport().card().unwrap();
    card.areas[0].bytes = DATA_BYTES * 4;
    a.transport().add_peer(card).unwrap();
    let beyond = Addr::new(DATA, (DATA_BYTES * 2) as u32);
    let result = a.fabric.read(b_id, beyond, b.key, 64);
    let reason = expect_unreachable(result, b_id, "fi_read");
    eprintln!("refused by the provider: {reason}");
    let word = b.fabric.memory().area(DATA).unwrap();
    word.words_at(0, 8)[0].store(77, Ordering::Release);
    // The target serves another initiator, and reaches the one that failed.
    let read = c.fabric.read(b_id, Addr::new(DATA, 0), b.key, 8).unwrap();
    assert_eq!(read, 77u64.to_le_bytes(), "b still serves c");
    assert_eq!(
        b.fabric.execute(a_id, vec![Op::Notify]),
        vec![Ok(Completion::Notify)],
        "b still reaches a"
    );
    let c_id = c.fabric.node_id();
    assert_eq!(
        a.fabric.read(c_id, Addr::new(DATA, 0), c.key, 8).unwrap(),
        vec![0; 8],
        "a still reaches c"
    );
}

#[test]
fn a_peer_that_went_away_is_unreachable_and_the_others_are_still_served() {
    let mut nodes = cluster(PROVIDER, 3);
    let (a_id, b_id, c_id) = (NodeId(1), NodeId(2), NodeId(3));
    // Every pair has talked once: connections exist when the peer goes.
    for node in &nodes {
        for other in &nodes {
            let (to, key) = (other.fabric.node_id(), other.key);
            node.fabric.read(to, Addr::new(DATA, 0), key, 8).unwrap();
        }
    }
    let gone = nodes.pop().expect("three nodes");
    let c_key = gone.key;
    drop(gone);
    let started = Instant::now();
    let result = nodes[0].fabric.read(c_id, Addr::new(DATA, 0), c_key, 8);
    let waited = started.elapsed();
    expect_unreachable(result, c_id, "");
    assert!(waited < OP_TIMEOUT + Duration::from_secs(2), "{waited:?}");
    let persist = nodes[0].fabric.execute(
        c_id,
        vec![Op::Persist {
            addr: Addr::new(DATA, 0),
            key: c_key,
            len: 8,
        }],
    );
    assert!(
        matches!(&persist[..], [Err(OpError::Unreachable { node, .. })] if *node == c_id),
        "{persist:?}"
    );
    // The others still serve and reach each other, both ways.
    let (a, b) = (&nodes[0], &nodes[1]);
    a.fabric
        .write(b_id, Addr::new(DATA, 8), b.key, 5u64.to_le_bytes().to_vec())
        .unwrap();
    assert_eq!(
        a.fabric.cas(b_id, Addr::new(DATA, 8), b.key, 5, 6).unwrap(),
        5
    );
    assert_eq!(
        b.fabric.read(a_id, Addr::new(DATA, 0), a.key, 8).unwrap(),
        vec![0; 8]
    );
    assert_eq!(
        b.fabric.execute(a_id, vec![Op::Notify]),
        vec![Ok(Completion::Notify)]
    );
    drop(nodes.pop().map(|n| n.nic));
}

/// The first operation to a peer that went away before this node ever reached it finds
/// `tcp;ofi_rxm` busy (`FI_EAGAIN`, connecting) until [`OP_TIMEOUT`]; once this node serves a
/// configuration without that peer, the wait ends: a client or node that adopted the removal is
/// not held up by the dead node for seconds more (seen as no commit for 5 s after a kill in
/// `acre bench recopy --transport ofi`).
#[test]
fn an_operation_to_a_removed_peer_ends_once_the_configuration_without_it_is_served() {
    let mut nodes = cluster(PROVIDER, 3);
    serve(&nodes, 5, &[1, 2, 3]);
    let gone = nodes.pop().expect("three nodes");
    let c_key = gone.key;
    drop(gone);
    let a = &nodes[0];
    let started = Instant::now();
    let waited = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let result = a.fabric.read(NodeId(3), Addr::new(DATA, 0), c_key, 8);
            (result, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        a.nic
            .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
            .unwrap();
        reader.join().expect("the reader")
    });
    let (result, elapsed) = waited;
    assert!(
        matches!(
            result,
            Err(OpError::Unreachable { .. }) | Err(OpError::UnknownNode { .. })
        ),
        "{result:?}"
    );
    assert!(
        elapsed < OP_TIMEOUT / 2,
        "the READ waited {elapsed:?} after its target left the configuration"
    );
}

/// A message to a peer whose NIC thread stopped answering (its endpoint still open: it is
/// paused) waits for [`OP_TIMEOUT`]; once this node serves a configuration without that peer,
/// the wait ends and what is outstanding is withdrawn.
#[test]
fn a_message_to_a_silent_peer_ends_once_the_configuration_without_it_is_served() {
    let mut nodes = cluster(PROVIDER, 3);
    serve(&nodes, 5, &[1, 2, 3]);
    let persist = |key| Op::Persist {
        addr: Addr::new(DATA, 0),
        key,
        len: 8,
    };
    // Connected both ways first: the later message is sent, and only its answer never comes.
    let c_key = nodes[2].key;
    assert_eq!(
        nodes[0].fabric.execute(NodeId(3), vec![persist(c_key)]),
        vec![Ok(Completion::Persist)]
    );
    let TestNode {
        fabric: silent,
        nic,
        key,
    } = nodes.pop().expect("three nodes");
    drop(nic);
    let a = &nodes[0];
    let started = Instant::now();
    let (result, elapsed) = std::thread::scope(|scope| {
        let persist = scope.spawn(|| {
            let result = a.fabric.execute(NodeId(3), vec![persist(key)]);
            (result, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(300));
        a.nic
            .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
            .unwrap();
        persist.join().expect("the sender")
    });
    assert!(
        matches!(&result[..], [Err(OpError::Unreachable { reason, .. })] if reason.contains("left the configuration")),
        "{result:?}"
    );
    assert!(elapsed < OP_TIMEOUT / 2, "the PERSIST waited {elapsed:?}");
    drop(silent);
}

/// CPU time the thread behind `thread` has used so far.
fn thread_cpu_time(thread: &JoinHandle<()>) -> Duration {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the thread is joinable (not joined or detached: the handle is borrowed), so its
    // pthread_t is valid; `clock` is writable.
    let ret = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
    assert_eq!(ret, 0, "pthread_getcpuclockid");
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock` is the thread's CPU clock and `now` is writable.
    let ret = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(ret, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The idle CPU target (docs/ARCHITECTURE.md, "Idle CPU"): a NIC thread with nothing to do
/// sleeps on its completion queue instead of spinning.
#[test]
fn an_idle_nic_thread_uses_under_2_percent_of_a_core() {
    const IDLE: Duration = Duration::from_secs(2);
    let nodes = cluster(PROVIDER, 2);
    for (from, to) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        let to_id = to.fabric.node_id();
        from.fabric
            .read(to_id, Addr::new(DATA, 0), to.key, 8)
            .unwrap();
        assert_eq!(
            from.fabric.execute(to_id, vec![Op::Notify]),
            vec![Ok(Completion::Notify)]
        );
    }
    // Past the spin before sleeping.
    std::thread::sleep(Duration::from_millis(100));
    for node in &nodes {
        let thread = node.nic.thread.as_ref().expect("the NIC thread runs");
        let before = thread_cpu_time(thread);
        std::thread::sleep(IDLE);
        let used = thread_cpu_time(thread) - before;
        eprintln!(
            "{}'s NIC thread used {used:?} in {IDLE:?} idle",
            node.fabric.node_id()
        );
        assert!(used < IDLE / 50, "{used:?} of CPU in {IDLE:?} idle");
    }
}

#[test]
fn an_area_placed_after_start_is_registered_and_reachable_with_the_new_card() {
    let nodes = cluster(PROVIDER, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    let late_id = RegionId(7);
    let late = Arc::new(Region::anonymous(late_id, DATA_BYTES).expect("map a region"));
    let late_key = late.key();
    b.fabric.memory().register(late.clone()).expect("register");
    let addr = Addr::new(late_id, 64);
    let unknown = Err(OpError::Access(AccessError::UnknownRegion {
        node: NodeId(2),
        region: late_id,
    }));
    assert_eq!(a.fabric.read(NodeId(2), addr, late_key, 8), unknown);
    assert_eq!(b.transport().register_new_areas().unwrap(), vec![late_id]);
    assert_eq!(
        b.transport().register_new_areas().unwrap(),
        Vec::<RegionId>::new(),
        "an area is registered once"
    );
    // A still holds B's old card, which does not list the area.
    assert_eq!(a.fabric.read(NodeId(2), addr, late_key, 8), unknown);
    let card = b.transport().card().unwrap();
    assert!(card.areas.iter().any(|area| area.id == late_id), "{card:?}");
    a.transport().add_peer(card).unwrap();
    let bytes = 0x1122_3344_5566_7788u64.to_le_bytes().to_vec();
    a.fabric
        .write(NodeId(2), addr, late_key, bytes.clone())
        .expect("WRITE to the late area");
    assert_eq!(
        late.words()[8].load(Ordering::Acquire),
        0x1122_3344_5566_7788,
        "the WRITE is in B's memory"
    );
    assert_eq!(a.fabric.read(NodeId(2), addr, late_key, 8), Ok(bytes));
    // The areas registered at start are still reachable through the new card.
    let data = Addr::new(DATA, 0);
    assert_eq!(a.fabric.read(NodeId(2), data, b.key, 8), Ok(vec![0; 8]));
}

/// A card source that hands out what `published` holds, as manifests in a cluster directory
/// do, counting the lookups.
fn publish_to(
    transport: &OfiTransport,
    published: &Arc<Mutex<FastMap<NodeId, OfiCard>>>,
    lookups: &Arc<AtomicU64>,
) {
    let (published, lookups) = (published.clone(), lookups.clone());
    transport.find_cards_with(move |node| {
        lookups.fetch_add(1, Ordering::Relaxed);
        published.lock().unwrap().get(&node).cloned()
    });
}

#[test]
fn a_peer_never_given_is_found_through_the_card_source_and_so_is_an_area_placed_later() {
    let (a, b) = (start(PROVIDER, 1), start(PROVIDER, 2));
    let published = Arc::new(Mutex::new(FastMap::default()));
    let lookups = Arc::new(AtomicU64::new(0));
    publish_to(a.transport(), &published, &lookups);
    publish_to(b.transport(), &published, &lookups);
    let data = Addr::new(DATA, 0);
    // Nothing published yet: B is unknown to A.
    assert_eq!(
        a.fabric.read(NodeId(2), data, b.key, 8),
        Err(OpError::UnknownNode { node: NodeId(2) })
    );
    for node in [&a, &b] {
        let card = node.transport().card().unwrap();
        published.lock().unwrap().insert(card.node, card);
    }
    a.fabric
        .write(NodeId(2), data, b.key, 7u64.to_le_bytes().to_vec())
        .expect("WRITE to a peer found through the source");
    // A message needs B's NIC thread to answer A, which B was never given either.
    let persist = Op::Persist {
        addr: data,
        key: b.key,
        len: 8,
    };
    assert_eq!(
        a.fabric.execute(NodeId(2), vec![persist]),
        vec![Ok(Completion::Persist)],
        "PERSIST answered by a NIC thread that found its requester"
    );
    let found = lookups.load(Ordering::Relaxed);
    a.fabric.read(NodeId(2), data, b.key, 8).unwrap();
    assert_eq!(
        lookups.load(Ordering::Relaxed),
        found,
        "a peer found is kept, not looked up again"
    );
    // B places an area and publishes its new card: A finds it on its first access.
    let late_id = RegionId(7);
    let late = Arc::new(Region::anonymous(late_id, DATA_BYTES).expect("map a region"));
    b.fabric.memory().register(late.clone()).expect("register");
    b.transport().register_new_areas().unwrap();
    let card = b.transport().card().unwrap();
    published.lock().unwrap().insert(NodeId(2), card);
    let addr = Addr::new(late_id, 8);
    a.fabric
        .write(NodeId(2), addr, late.key(), 9u64.to_le_bytes().to_vec())
        .expect("WRITE to the area placed later");
    assert_eq!(late.words()[1].load(Ordering::Acquire), 9);
}

/// A node id whose process restarted (a client started again) has new endpoints: a NIC thread
/// that knew the earlier process's card sees, from the fingerprint in the message's tag, that
/// it would answer the old endpoint, and takes the new card from the source.
#[test]
fn a_node_restarted_under_the_same_id_is_answered_at_its_new_endpoint() {
    let (a, b) = (start(PROVIDER, 1), start(PROVIDER, 2));
    let published = Arc::new(Mutex::new(FastMap::default()));
    let lookups = Arc::new(AtomicU64::new(0));
    for node in [&a, &b] {
        publish_to(node.transport(), &published, &lookups);
        let card = node.transport().card().unwrap();
        published.lock().unwrap().insert(card.node, card);
    }
    let notify = |from: &TestNode| from.fabric.execute(NodeId(1), vec![Op::Notify]);
    assert_eq!(notify(&b), vec![Ok(Completion::Notify)]);
    drop(b);
    let b = start(PROVIDER, 2);
    publish_to(b.transport(), &published, &lookups);
    let card = b.transport().card().unwrap();
    published.lock().unwrap().insert(NodeId(2), card);
    let started = Instant::now();
    assert_eq!(
        notify(&b),
        vec![Ok(Completion::Notify)],
        "answered at the new endpoint"
    );
    assert!(
        started.elapsed() < OP_TIMEOUT,
        "without waiting out a timeout: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_nic_thread_serves_only_the_members_of_its_configuration() {
    let nodes = cluster(PROVIDER, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let data = Addr::new(DATA, 0);
    let rings = |node: &TestNode| node.fabric.memory().doorbell().rings();
    // B serves configuration 5 of A and B: C is not a member any more.
    b.nic
        .set_membership(Membership::new(5, [NodeId(1), NodeId(2)]))
        .unwrap();
    let before = rings(b);
    assert_eq!(
        a.fabric.execute(NodeId(2), vec![Op::Notify]),
        vec![Ok(Completion::Notify)]
    );
    assert_eq!(rings(b), before + 1, "a member's NOTIFY rings B's doorbell");
    let started = Instant::now();
    let refused = c.fabric.execute(NodeId(2), vec![Op::Notify]);
    assert!(
        matches!(refused[0], Err(OpError::Unreachable { .. })),
        "a non-member's NOTIFY is not answered: {refused:?}"
    );
    assert!(
        started.elapsed() < 3 * OP_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    assert_eq!(rings(b), before + 1, "nor executed");
    // B forgot C, and does not take it back.
    assert_eq!(
        b.fabric.read(NodeId(3), data, c.key, 8),
        Err(OpError::UnknownNode { node: NodeId(3) })
    );
    let error = b
        .transport()
        .add_peer(c.transport().card().unwrap())
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("not a member of configuration 5"),
        "{error}"
    );
    // A member is still served.
    let persist = Op::Persist {
        addr: data,
        key: b.key,
        len: 8,
    };
    assert_eq!(
        a.fabric.execute(NodeId(2), vec![persist]),
        vec![Ok(Completion::Persist)]
    );
}

/// Every node serves configuration `config` of `members`, and knows the others' cards as they
/// publish them afterwards (with a registration for each member).
fn serve(nodes: &[TestNode], config: u64, members: &[u16]) {
    for node in nodes {
        node.nic
            .set_membership(Membership::new(config, members.iter().map(|&m| NodeId(m))))
            .unwrap();
    }
    exchange_cards(nodes);
}

/// The fence (docs/failures.md#fencing): once B serves a configuration without C, D and E,
/// their one-sided READ, WRITE and CAS under the registration keys they know fail at B and
/// change nothing there (each on a node of its own: on `tcp;ofi_rxm` a refused operation also
/// breaks its node's connection to B, which would fail anything after it), a card B publishes
/// afterwards gives them no key (refused before anything is posted), and A, still a member,
/// goes on with the keys it had: its registrations were not touched.
#[test]
fn a_removed_node_s_one_sided_operations_fail_at_the_target_and_members_go_on() {
    let nodes = cluster(PROVIDER, 5);
    serve(&nodes, 5, &[1, 2, 3, 4, 5]);
    let (a, b) = (&nodes[0], &nodes[1]);
    let (c, d, e) = (&nodes[2], &nodes[3], &nodes[4]);
    let word = Addr::new(DATA, 64);
    let b_word = || b.fabric.memory().area(DATA).unwrap().words()[8].load(Ordering::Acquire);
    for removed in [c, d, e] {
        assert_eq!(
            removed.fabric.read(NodeId(2), word, b.key, 8),
            Ok(vec![0; 8]),
            "a member of configuration 5"
        );
    }
    b.fabric.memory().area(DATA).unwrap().words()[8].store(1, Ordering::Release);

    b.nic
        .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
        .unwrap();
    let refused = |result: Result<(), OpError>, call: &str| match result {
        Err(OpError::Unreachable { node, reason }) => {
            assert_eq!(node, NodeId(2));
            assert!(reason.contains(call), "{reason}");
        }
        other => panic!("{call} of a removed node: {other:?}"),
    };
    refused(
        c.fabric.read(NodeId(2), word, b.key, 8).map(|_| ()),
        "fi_read",
    );
    refused(
        d.fabric
            .write(NodeId(2), word, b.key, 2u64.to_le_bytes().to_vec()),
        "fi_write",
    );
    refused(
        e.fabric.cas(NodeId(2), word, b.key, 1, 3).map(|_| ()),
        "fi_compare_atomic",
    );
    assert_eq!(b_word(), 1, "nothing of theirs executed at B");

    // A's card of B is the one from before: its registration is still open.
    a.fabric
        .write(NodeId(2), word, b.key, 4u64.to_le_bytes().to_vec())
        .expect("A, a member, is undisturbed");
    assert_eq!(a.fabric.cas(NodeId(2), word, b.key, 4, 5), Ok(4));
    assert_eq!(b_word(), 5);

    // B's next card grants C nothing: refused before anything is posted.
    let card = b.transport().card().unwrap();
    assert_eq!(card.config, Some(6));
    assert!(
        card.areas
            .iter()
            .all(|area| area.mr_key_for(NodeId(3)).is_none())
    );
    c.transport().add_peer(card).unwrap();
    assert_eq!(
        c.fabric.read(NodeId(2), word, b.key, 8),
        Err(OpError::NotMember {
            node: NodeId(2),
            config: 6
        })
    );
    assert_eq!(b_word(), 5);
}

/// A node given its configuration at start registers its areas for the members only: no key
/// to every node is ever handed out (one closed later would cut its holder off for good).
#[test]
fn a_node_started_with_a_membership_grants_its_members_only() {
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(NodeId(2), doorbell));
    let region = Region::anonymous(DATA, DATA_BYTES).expect("map a region");
    memory.register(Arc::new(region)).expect("register");
    let config = OfiConfig {
        membership: Some(Membership::new(3, [NodeId(1), NodeId(2)])),
        ..OfiConfig::loopback(PROVIDER)
    };
    let (transport, _nic) = OfiTransport::start(&config, memory).unwrap();
    let card = transport.card().unwrap();
    assert_eq!(card.config, Some(3));
    let grantees: Vec<_> = card.areas[0].grants.iter().map(|g| g.node).collect();
    assert_eq!(
        grantees,
        vec![Some(NodeId(1)), Some(NodeId(2)), Some(NodeId::OBSERVER)]
    );
}

/// A node that joins is not served until the target serves a configuration with it; then it
/// finds its registration in the target's next card, looked up again on its next access.
#[test]
fn a_node_that_joins_finds_its_registration_in_the_card_published_after_the_target_serves_it() {
    let nodes = cluster(PROVIDER, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    a.nic
        .set_membership(Membership::new(5, [NodeId(1)]))
        .unwrap();
    b.nic
        .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
        .unwrap();
    let published = Arc::new(Mutex::new(FastMap::default()));
    let lookups = Arc::new(AtomicU64::new(0));
    publish_to(b.transport(), &published, &lookups);
    let card = |node: &TestNode| node.transport().card().unwrap();
    published.lock().unwrap().insert(NodeId(1), card(a));
    b.transport().add_peer(card(a)).unwrap();
    let word = Addr::new(DATA, 0);
    assert_eq!(
        b.fabric.read(NodeId(1), word, a.key, 8),
        Err(OpError::NotMember {
            node: NodeId(1),
            config: 5
        })
    );
    a.nic
        .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
        .unwrap();
    published.lock().unwrap().insert(NodeId(1), card(a));
    let before = lookups.load(Ordering::Relaxed);
    assert_eq!(b.fabric.read(NodeId(1), word, a.key, 8), Ok(vec![0; 8]));
    assert_eq!(
        lookups.load(Ordering::Relaxed),
        before + 1,
        "looked up once"
    );
}

/// An initiator whose operation finds its target unreachable reads the target's card again:
/// a node restarted under the same id (new endpoints, new keys) is reached by the next batch.
#[test]
fn an_initiator_reads_the_card_again_once_its_target_is_unreachable() {
    use acre_nvm_log::MapOptions;
    let files = tempfile::tempdir().unwrap();
    // Node 2's region lives in a file, reopened under its key by the restarted process.
    let with_file = |region: Region| {
        let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
        let memory = Arc::new(NodeMemory::new(NodeId(2), doorbell));
        memory.register(Arc::new(region)).expect("register");
        let (transport, nic) =
            OfiTransport::start(&OfiConfig::loopback(PROVIDER), memory.clone()).unwrap();
        (Fabric::new(memory, Transport::Ofi(transport)), nic)
    };
    let region = Region::create_file(
        files.path(),
        NodeId(2),
        DATA,
        DATA_BYTES,
        MapOptions::default(),
    )
    .unwrap();
    let key = region.key();
    let b = with_file(region);
    let card_of = |fabric: &Fabric| match fabric.transport() {
        Transport::Ofi(transport) => transport.card().unwrap(),
        _ => unreachable!("an ofi node"),
    };
    let a = start(PROVIDER, 1);
    let published = Arc::new(Mutex::new(FastMap::default()));
    let lookups = Arc::new(AtomicU64::new(0));
    publish_to(a.transport(), &published, &lookups);
    published.lock().unwrap().insert(NodeId(2), card_of(&b.0));
    let word = Addr::new(DATA, 0);
    assert_eq!(a.fabric.read(NodeId(2), word, key, 8), Ok(vec![0; 8]));
    drop(b);
    let reopened =
        Region::open_file(files.path(), NodeId(2), DATA, key, MapOptions::default()).unwrap();
    let again = with_file(reopened);
    published
        .lock()
        .unwrap()
        .insert(NodeId(2), card_of(&again.0));
    let first = a.fabric.read(NodeId(2), word, key, 8);
    assert!(
        matches!(first, Err(OpError::Unreachable { .. })),
        "{first:?}"
    );
    assert_eq!(
        a.fabric.read(NodeId(2), word, key, 8),
        Ok(vec![0; 8]),
        "the failed batch read the card again"
    );
}

/// Two readers of a manifest may race its republication: a card of the same endpoints from an
/// earlier configuration does not replace the one known.
#[test]
fn a_card_of_an_earlier_configuration_does_not_replace_a_later_one() {
    let nodes = cluster(PROVIDER, 2);
    let (a, b) = (&nodes[0], &nodes[1]);
    b.nic
        .set_membership(Membership::new(5, [NodeId(1), NodeId(2)]))
        .unwrap();
    let older = b.transport().card().unwrap();
    b.nic
        .set_membership(Membership::new(6, [NodeId(1), NodeId(2)]))
        .unwrap();
    let newer = b.transport().card().unwrap();
    a.transport().add_peer(newer.clone()).unwrap();
    a.transport().add_peer(older).unwrap();
    assert_eq!(a.transport().node.peer(NodeId(2)).unwrap().card, newer);
}

/// Observers (`acre cluster status`) are never members: they get a registration that allows
/// READ only, so a WRITE of theirs fails at the target.
#[test]
fn an_observer_may_read_and_its_write_fails_at_the_target() {
    let nodes = cluster(PROVIDER, 1);
    serve(&nodes, 5, &[1]);
    let b = &nodes[0];
    let observer = start(PROVIDER, NodeId::OBSERVER.0);
    observer
        .transport()
        .add_peer(b.transport().card().unwrap())
        .unwrap();
    let word = Addr::new(DATA, 0);
    assert_eq!(
        observer.fabric.read(NodeId(1), word, b.key, 8),
        Ok(vec![0; 8])
    );
    let write = observer
        .fabric
        .write(NodeId(1), word, b.key, 9u64.to_le_bytes().to_vec());
    assert!(
        matches!(write, Err(OpError::Unreachable { .. })),
        "{write:?}"
    );
    let first = b.fabric.memory().area(DATA).unwrap().words()[0].load(Ordering::Acquire);
    assert_eq!(first, 0, "nothing written");
}

/// A batch to a peer whose NIC thread stopped answering (on `tcp;ofi_rxm`, whose target side
/// only progresses in that thread, its READs hang until [`OP_TIMEOUT`]) does not hold up
/// another thread's operations to a live peer: they complete while it waits.
#[test]
fn a_batch_to_a_silent_peer_does_not_hold_up_operations_to_live_peers() {
    /// Far under [`OP_TIMEOUT`], far over a loopback READ (tens of microseconds).
    const PROMPT: Duration = Duration::from_secs(1);
    let mut nodes = cluster(PROVIDER, 3);
    let (b_id, c_id) = (NodeId(2), NodeId(3));
    for node in &nodes[1..] {
        let (to, key) = (node.fabric.node_id(), node.key);
        nodes[0]
            .fabric
            .read(to, Addr::new(DATA, 0), key, 8)
            .unwrap();
    }
    // C's transport stays open, its NIC thread stops: C no longer answers anyone.
    let silent = nodes.pop().expect("three nodes");
    let c_key = silent.key;
    let TestNode {
        fabric: c_fabric,
        nic: c_nic,
        ..
    } = silent;
    drop(c_nic);
    let (a, b) = (&nodes[0], &nodes[1]);
    std::thread::scope(|scope| {
        let stuck = scope.spawn(|| {
            let started = Instant::now();
            let result = a.fabric.read(c_id, Addr::new(DATA, 0), c_key, 8);
            (result, started.elapsed())
        });
        // Let the batch to C get posted and start waiting.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !stuck.is_finished(),
            "C answered although its NIC thread stopped"
        );
        let started = Instant::now();
        for _ in 0..20 {
            let read = a.fabric.read(b_id, Addr::new(DATA, 0), b.key, 8);
            assert_eq!(read, Ok(vec![0; 8]));
        }
        let waited = started.elapsed();
        assert!(
            waited < PROMPT,
            "20 READs to B took {waited:?} while C was silent"
        );
        assert!(
            !stuck.is_finished(),
            "the batch to C ended before the READs to B were measured against it"
        );
        let (result, stuck_for) = stuck.join().expect("the READ to C returns");
        expect_unreachable(result, c_id, "");
        assert!(stuck_for < OP_TIMEOUT * 2, "{stuck_for:?}");
    });
    drop(c_fabric);
}

/// A message whose send cannot be posted (here: to a node that went away before this one ever
/// reached it, so the provider's connection is never made) fails with the send's reason once
/// posting gives up, without then waiting a second [`OP_TIMEOUT`] for a reply that cannot
/// come, and its reply receive is withdrawn and reaped rather than leaked.
#[test]
fn a_message_whose_send_fails_fails_with_the_send_reason_and_withdraws_its_receive() {
    let mut nodes = cluster(PROVIDER, 2);
    let b_id = NodeId(2);
    drop(nodes.pop().expect("two nodes"));
    let a = &nodes[0];
    let started = Instant::now();
    let results = a.fabric.execute(b_id, vec![Op::Notify]);
    let waited = started.elapsed();
    match &results[..] {
        [Err(OpError::Unreachable { node, reason })] => {
            assert_eq!(*node, b_id);
            assert!(reason.contains("fi_tsend"), "the send's reason: {reason}");
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(waited < OP_TIMEOUT + Duration::from_secs(2), "{waited:?}");
    assert_eq!(a.transport().slots_leaked(), 0, "the receive is reaped");
}

/// A message to a peer that stopped answering (its NIC thread stopped, its transport open: the
/// request is sent, no reply comes) times out, and its reply receive is withdrawn and reaped
/// rather than leaked, so receives do not pile up in the provider's queue.
#[test]
fn a_message_that_times_out_withdraws_its_receive() {
    let mut nodes = cluster(PROVIDER, 2);
    let b_id = NodeId(2);
    assert_eq!(
        nodes[0].fabric.execute(b_id, vec![Op::Notify]),
        vec![Ok(Completion::Notify)]
    );
    let TestNode {
        fabric: b_fabric,
        nic: b_nic,
        ..
    } = nodes.pop().expect("two nodes");
    drop(b_nic);
    let a = &nodes[0];
    let started = Instant::now();
    let results = a.fabric.execute(b_id, vec![Op::Notify]);
    let waited = started.elapsed();
    match &results[..] {
        [Err(OpError::Unreachable { node, reason })] => {
            assert_eq!(*node, b_id);
            assert!(reason.contains("no completion"), "{reason}");
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(waited < OP_TIMEOUT + Duration::from_secs(2), "{waited:?}");
    assert_eq!(a.transport().slots_leaked(), 0, "the receive is reaped");
    drop(b_fabric);
}

/// The NIC thread gives up on a response it cannot send (the requester's initiator endpoint
/// unreachable: here B holds a card of A whose initiator name is that of a node gone before
/// anyone reached it, so the provider's connection is never made) after a short bound, and
/// answers the other requesters meanwhile instead of retrying that one for [`OP_TIMEOUT`].
#[test]
fn a_response_to_an_unreachable_initiator_does_not_hold_up_the_nic_thread() {
    /// Far under [`OP_TIMEOUT`], over [`RESPONSE_RETRY_TIMEOUT`] and a few round trips.
    const PROMPT: Duration = Duration::from_secs(1);
    let nodes = cluster(PROVIDER, 3);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let b_id = b.fabric.node_id();
    let gone = start(PROVIDER, 4);
    let gone_name = gone.transport().card().unwrap().initiator_name;
    drop(gone);
    let mut a_card = a.transport().card().unwrap();
    a_card.initiator_name = gone_name;
    b.transport().add_peer(a_card).unwrap();
    assert_eq!(
        c.fabric.execute(b_id, vec![Op::Notify]),
        vec![Ok(Completion::Notify)]
    );
    std::thread::scope(|scope| {
        let unanswered = scope.spawn(|| a.fabric.execute(b_id, vec![Op::Notify]));
        // Let B's NIC thread get A's request and start trying to answer it.
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        for _ in 0..5 {
            assert_eq!(
                c.fabric.execute(b_id, vec![Op::Notify]),
                vec![Ok(Completion::Notify)]
            );
        }
        let waited = started.elapsed();
        assert!(waited < PROMPT, "5 NOTIFYs from C took {waited:?}");
        let results = unanswered.join().expect("A's NOTIFY returns");
        assert!(
            matches!(&results[..], [Err(OpError::Unreachable { node, .. })] if *node == b_id),
            "A's response was dropped: {results:?}"
        );
    });
}

/// CAS uses provider atomics only on the providers known to be atomic against the target CPU's
/// own compare-and-swap; on an RDMA NIC's (`verbs`, `efa`) it goes through the NIC thread.
#[test]
fn provider_atomics_are_used_only_where_known_to_be_atomic_against_the_cpu() {
    for provider in ["tcp;ofi_rxm", "sockets", "shm"] {
        assert!(atomics_are_cpu_coherent(provider), "{provider}");
    }
    for provider in ["verbs;ofi_rxm", "verbs", "efa", "udp;ofi_rxd", "psm3", ""] {
        assert!(!atomics_are_cpu_coherent(provider), "{provider}");
    }
    let nodes = cluster(PROVIDER, 1);
    assert!(
        nodes[0].transport().has_atomics(),
        "tcp;ofi_rxm has atomics"
    );
    let memory = Arc::new(NodeMemory::new(
        NodeId(2),
        Arc::new(Doorbell::anonymous().unwrap()),
    ));
    let config = OfiConfig {
        atomics: false,
        ..OfiConfig::loopback(PROVIDER)
    };
    let (transport, _nic) = OfiTransport::start(&config, memory).unwrap();
    assert!(!transport.has_atomics(), "the switch still turns them off");
}

mod transfer {
    //! The hybrid transfer (`ofi::transfer`): both paths move exactly the owner's bytes, the
    //! policy chooses by size, and bad input is a typed error naming the provider and the
    //! operation.

    use super::*;
    use crate::fabric::ofi::transfer::{
        COPY_CHUNK_BYTES, THRESHOLD_BYTES_DEFAULT, TransferError, TransferPath, TransferPolicy,
    };

    const CHUNK: u64 = COPY_CHUNK_BYTES as u64;
    const PAGE: u64 = 4096;
    /// Room for three chunks and a page past the furthest start the tests use.
    const OBJECT_REGION_BYTES: u64 = 3 * CHUNK + 2 * PAGE;

    /// The byte at `index` of the owner's region: no two neighbouring words alike, so a shifted
    /// or misplaced piece shows.
    fn pattern(index: u64) -> u8 {
        (index.wrapping_mul(131) ^ (index >> 8)) as u8
    }

    /// Two nodes; the second owns a region of [`OBJECT_REGION_BYTES`] filled with [`pattern`].
    fn pair() -> (TestNode, TestNode) {
        let nodes = cluster(PROVIDER, 2);
        let mut nodes = nodes.into_iter();
        let (a, b) = (nodes.next().unwrap(), nodes.next().unwrap());
        let region = Region::anonymous(RegionId(2), OBJECT_REGION_BYTES).expect("map a region");
        for (index, word) in region.words().iter().enumerate() {
            let bytes: Vec<u8> = (0..8).map(|i| pattern(index as u64 * 8 + i)).collect();
            word.store(
                u64::from_le_bytes(bytes.try_into().unwrap()),
                Ordering::Release,
            );
        }
        b.fabric
            .memory()
            .register(Arc::new(region))
            .expect("register");
        b.transport().register_new_areas().unwrap();
        a.transport()
            .add_peer(b.transport().card().unwrap())
            .unwrap();
        (a, b)
    }

    fn object_key(owner: &TestNode) -> AccessKey {
        owner.fabric.memory().area(RegionId(2)).unwrap().key()
    }

    fn expected(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(pattern).collect()
    }

    fn exposures_open(owner: &TestNode) -> usize {
        owner.transport().node.exposures.lock().unwrap().len()
    }

    #[test]
    fn both_paths_move_the_exact_bytes_around_page_and_chunk_boundaries() {
        let (a, b) = pair();
        let key = object_key(&b);
        let lens = [
            8,
            PAGE - 8,
            PAGE,
            PAGE + 8,
            CHUNK - 8,
            CHUNK,
            CHUNK + 8,
            2 * CHUNK + PAGE,
        ];
        for offset in [0, PAGE - 8, PAGE] {
            for len in lens {
                let addr = Addr::new(RegionId(2), offset as u32);
                let want = expected(offset, len);
                let copied = a
                    .transport()
                    .transfer_by_copy(NodeId(2), addr, key, len)
                    .unwrap_or_else(|e| panic!("copy {len} at {offset}: {e}"));
                assert!(copied == want, "copy of {len} bytes at {offset} differs");
                let read = a
                    .transport()
                    .transfer_zero_copy(NodeId(2), addr, key, len)
                    .unwrap_or_else(|e| panic!("zero copy {len} at {offset}: {e}"));
                assert!(read == want, "zero copy of {len} bytes at {offset} differs");
            }
        }
        assert_eq!(a.transport().slots_leaked(), 0);
        // Every exposure was released by its requester. A RELEASE is not answered, so the
        // owner's NIC thread may still be on the last one: it has a second.
        let started = Instant::now();
        while exposures_open(&b) > 0 && started.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(exposures_open(&b), 0);
    }

    #[test]
    fn the_policy_chooses_the_path_by_threshold() {
        let policy = TransferPolicy {
            threshold_bytes: PAGE,
        };
        assert_eq!(policy.path(PAGE - 8), TransferPath::Copy);
        assert_eq!(policy.path(PAGE), TransferPath::ZeroCopy);
        assert_eq!(policy.path(PAGE + 8), TransferPath::ZeroCopy);
        let default = TransferPolicy::default();
        assert_eq!(default.threshold_bytes, THRESHOLD_BYTES_DEFAULT);
        assert_eq!(
            default.path(THRESHOLD_BYTES_DEFAULT - 8),
            TransferPath::Copy
        );
        assert_eq!(
            default.path(THRESHOLD_BYTES_DEFAULT),
            TransferPath::ZeroCopy
        );
        // Through `transfer`, each side of the threshold gives the bytes.
        let (a, b) = pair();
        let key = object_key(&b);
        for len in [PAGE - 8, PAGE] {
            let addr = Addr::new(RegionId(2), 8);
            let got = a
                .transport()
                .transfer(NodeId(2), addr, key, len, &policy)
                .unwrap();
            assert!(got == expected(8, len), "{len} bytes differ");
        }
    }

    fn refused(result: Result<Vec<u8>, TransferError>) -> AccessError {
        match result {
            Err(TransferError::Refused {
                provider, source, ..
            }) => {
                assert_eq!(provider, PROVIDER);
                source
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_bad_range_an_empty_transfer_and_an_unknown_owner_are_typed_errors() {
        let (a, b) = pair();
        let key = object_key(&b);
        let t = a.transport();
        for path in [TransferPath::Copy, TransferPath::ZeroCopy] {
            let policy = TransferPolicy {
                threshold_bytes: if path == TransferPath::Copy {
                    u64::MAX
                } else {
                    0
                },
            };
            let go = |addr: Addr, key, len| t.transfer(NodeId(2), addr, key, len, &policy);
            let past = Addr::new(RegionId(2), (OBJECT_REGION_BYTES - 8) as u32);
            assert!(
                matches!(refused(go(past, key, 16)), AccessError::OutOfBounds { .. }),
                "{path}"
            );
            let odd = Addr::new(RegionId(2), 4);
            assert!(
                matches!(refused(go(odd, key, 8)), AccessError::Misaligned { .. }),
                "{path}"
            );
            let wrong = AccessKey(key.0 ^ 1);
            let start = Addr::new(RegionId(2), 0);
            assert!(
                matches!(refused(go(start, wrong, 8)), AccessError::BadKey { .. }),
                "{path}"
            );
            let empty = go(start, key, 0).unwrap_err();
            assert!(
                matches!(&empty, TransferError::Empty { path: p, .. } if *p == path),
                "{empty:?}"
            );
            assert!(empty.to_string().contains(PROVIDER), "{empty}");
            let stranger = t.transfer(NodeId(9), start, key, 8, &policy).unwrap_err();
            assert!(
                matches!(
                    &stranger,
                    TransferError::Failed {
                        source: OpError::UnknownNode { .. },
                        ..
                    }
                ),
                "{stranger:?}"
            );
        }
    }

    /// A card that claims more than the owner has (stale or forged) passes the requester's
    /// check; the owner's NIC thread refuses the range on both paths, before it copies or
    /// registers anything.
    #[test]
    fn the_owner_refuses_a_range_outside_its_memory() {
        let (a, b) = pair();
        let key = object_key(&b);
        let mut card = b.transport().card().unwrap();
        for area in card.areas.iter_mut().filter(|area| area.id == RegionId(2)) {
            area.bytes *= 2;
        }
        a.transport().add_peer(card).unwrap();
        let beyond = Addr::new(RegionId(2), OBJECT_REGION_BYTES as u32);
        let copy = a.transport().transfer_by_copy(NodeId(2), beyond, key, 64);
        assert!(
            matches!(refused(copy), AccessError::OutOfBounds { .. }),
            "copy"
        );
        let zero = a.transport().transfer_zero_copy(NodeId(2), beyond, key, 64);
        let error = refused(zero);
        assert!(matches!(error, AccessError::OutOfBounds { .. }), "{error}");
        assert_eq!(exposures_open(&b), 0);
    }

    #[test]
    fn a_transfer_from_an_owner_that_went_away_fails_naming_the_provider() {
        let (a, b) = pair();
        let key = object_key(&b);
        let addr = Addr::new(RegionId(2), 0);
        a.transport()
            .transfer_by_copy(NodeId(2), addr, key, 64)
            .unwrap();
        drop(b);
        for path in [TransferPath::Copy, TransferPath::ZeroCopy] {
            let started = Instant::now();
            let result = match path {
                TransferPath::Copy => a.transport().transfer_by_copy(NodeId(2), addr, key, 64),
                TransferPath::ZeroCopy => {
                    a.transport().transfer_zero_copy(NodeId(2), addr, key, 64)
                }
            };
            let waited = started.elapsed();
            match result {
                Err(
                    ref e @ TransferError::Failed {
                        source: OpError::Unreachable { .. },
                        ..
                    },
                ) => {
                    let text = e.to_string();
                    assert!(text.contains(PROVIDER), "{text}");
                    assert!(text.contains(&path.to_string()), "{text}");
                }
                other => panic!("{path}: expected unreachable, got {other:?}"),
            }
            assert!(waited < OP_TIMEOUT + Duration::from_secs(2), "{waited:?}");
        }
    }

    /// The EXPOSE request's bytes (`ofi::transfer`'s format): kind 2, address, key, length,
    /// the requester's fingerprint (0 here).
    fn expose_request(addr: Addr, key: AccessKey, len: u32) -> Vec<u8> {
        let mut bytes = vec![2];
        bytes.extend_from_slice(&addr.to_u64().to_le_bytes());
        bytes.extend_from_slice(&key.0.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    fn release_request(mr_key: u64) -> Vec<u8> {
        let mut bytes = vec![3];
        bytes.extend_from_slice(&mr_key.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes
    }

    /// An owner keeps at most `EXPOSURES_MAX` exposures open, closes one nobody released after
    /// `EXPOSURE_TIMEOUT` on its clock, and closes one only for the requester that made it.
    #[test]
    fn exposures_are_bounded_expire_and_are_released_only_by_their_requester() {
        use crate::clock::Clock;
        use crate::fabric::ofi::transfer::{self as xfer, EXPOSURE_TIMEOUT};
        let (clock, control) = Clock::controlled();
        let doorbell = Arc::new(Doorbell::anonymous().unwrap());
        let memory = Arc::new(NodeMemory::new(NodeId(2), doorbell).with_clock(clock));
        let region = Region::anonymous(DATA, DATA_BYTES).unwrap();
        let key = region.key();
        memory.register(Arc::new(region)).unwrap();
        let (transport, _nic) = OfiTransport::start(&OfiConfig::loopback(PROVIDER), memory)
            .unwrap_or_else(|e| panic!("start {PROVIDER}: {e}"));
        let node = &transport.node;
        let open = || node.exposures.lock().unwrap().len();
        let expose = |offset: u32| {
            let request = expose_request(Addr::new(DATA, offset), key, 64);
            let response = xfer::answer(node, NodeId(1), 7, &request).expect("an answer");
            assert_eq!(response.request_id, 7);
            response.result
        };
        let mut mr_keys = Vec::new();
        for index in 0..64u32 {
            match expose(index * 64) {
                Ok(Completion::Read(bytes)) => {
                    assert_eq!(bytes.len(), 16);
                    mr_keys.push(u64::from_le_bytes(bytes[..8].try_into().unwrap()));
                }
                other => panic!("exposure {index}: {other:?}"),
            }
        }
        assert_eq!(open(), 64);
        let refused = expose(0);
        assert!(
            matches!(&refused, Err(OpError::Unreachable { reason, .. }) if reason.contains("64 exposures")),
            "{refused:?}"
        );
        // Not released: closed once EXPOSURE_TIMEOUT has passed, when the owner next exposes.
        control.jump_forward(EXPOSURE_TIMEOUT + Duration::from_secs(1));
        let fresh = match expose(0) {
            Ok(Completion::Read(bytes)) => u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            other => panic!("after expiry: {other:?}"),
        };
        assert_eq!(open(), 1, "the 64 expired ones are closed");
        // Another node's release does nothing; its requester's closes it.
        assert!(xfer::answer(node, NodeId(3), 8, &release_request(fresh)).is_none());
        assert_eq!(open(), 1);
        // Not answered: its requester does not wait for it.
        assert!(xfer::answer(node, NodeId(1), 9, &release_request(fresh)).is_none());
        assert_eq!(open(), 0);
        // Bytes that are no request get no answer.
        assert!(xfer::answer(node, NodeId(1), 10, &[2, 0, 0]).is_none());
        assert!(xfer::answer(node, NodeId(1), 10, &[]).is_none());
    }

    /// `read_large` (data recovery's reads) goes by the hybrid transfer when the transport is
    /// configured for it, returning what a READ returns, errors included; by a READ otherwise.
    #[test]
    fn read_large_goes_by_the_hybrid_transfer_when_configured_and_reads_what_a_read_does() {
        let (plain, b) = pair();
        let hybrid = start_with(
            &OfiConfig {
                transfer: Some(TransferPolicy {
                    threshold_bytes: PAGE,
                }),
                ..OfiConfig::loopback(PROVIDER)
            },
            3,
        );
        hybrid
            .transport()
            .add_peer(b.transport().card().unwrap())
            .unwrap();
        // B's NIC thread answers the transfer's requests at the requester's endpoint.
        b.transport()
            .add_peer(hybrid.transport().card().unwrap())
            .unwrap();
        let key = object_key(&b);
        for len in [8, PAGE - 8, PAGE, CHUNK + 8] {
            let addr = Addr::new(RegionId(2), 8);
            let read = plain.fabric.read(NodeId(2), addr, key, len as u32).unwrap();
            assert_eq!(read, expected(8, len), "{len}");
            let large = hybrid.fabric.read_large(NodeId(2), addr, key, len as u32);
            assert_eq!(large, Ok(read), "{len} bytes by the hybrid transfer");
            let plain_large = plain.fabric.read_large(NodeId(2), addr, key, len as u32);
            assert_eq!(plain_large, Ok(expected(8, len)), "{len} bytes by READ");
        }
        assert_eq!(hybrid.transport().hybrid_reads(), 4);
        assert_eq!(
            plain.transport().hybrid_reads(),
            0,
            "READs without the policy"
        );
        let wrong = AccessKey(key.0 ^ 1);
        let addr = Addr::new(RegionId(2), 0);
        assert_eq!(
            hybrid.fabric.read_large(NodeId(2), addr, wrong, 64),
            plain.fabric.read(NodeId(2), addr, wrong, 64),
            "the same error as a READ"
        );
        assert!(hybrid.fabric.read_large_path().contains("hybrid"));
        assert_eq!(plain.fabric.read_large_path(), "READ");
    }

    /// Part of the fence: a configuration that removes a requester closes the ranges exposed
    /// to it (it could otherwise READ them until they expire), and only those.
    #[test]
    fn a_configuration_that_removes_a_requester_closes_its_exposures() {
        use crate::fabric::ofi::transfer as xfer;
        let (a, b) = pair();
        let key = object_key(&b);
        let node = &b.transport().node;
        for requester in [NodeId(1), NodeId(3)] {
            let request = expose_request(Addr::new(RegionId(2), 0), key, 64);
            let response = xfer::answer(node, requester, 7, &request).expect("an answer");
            assert!(response.result.is_ok(), "{:?}", response.result);
        }
        assert_eq!(exposures_open(&b), 2);
        b.nic
            .set_membership(Membership::new(5, [NodeId(1), NodeId(2)]))
            .unwrap();
        assert_eq!(exposures_open(&b), 1, "n3's exposure is closed, n1's kept");
        drop(a);
    }
}
