//! Unit tests of the verbs transport, run against the fake verbs layer (`fake`): the same
//! transport code as on a device, with the device simulated in process. Bad input gives typed
//! errors naming `verbs`, the device, the verb and the peer, and a node keeps serving the
//! others. Nothing here has run on RDMA hardware.

use super::device::{QpEndpoint, Sge};
use super::fake::{FakeNet, FakeVerbs};
use super::*;
use crate::addr::Addr;
use crate::fabric::Doorbell;
use crate::fabric::membership::Membership;
use std::time::Instant;

const DATA: RegionId = RegionId(1);
const DATA_BYTES: u64 = 64 << 10;
const OP_TIMEOUT: Duration = Duration::from_millis(300);
const BACKOFF: Duration = Duration::from_millis(100);

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes([7; crate::fabric::tcp::auth::SECRET_BYTES])
}

/// One node: its transport, NIC thread and memory, on a fake device with LID = its id.
struct TestNode {
    transport: VerbsTransport<FakeVerbs>,
    nic: VerbsNic<FakeVerbs>,
    memory: Arc<NodeMemory>,
    key: AccessKey,
}

impl TestNode {
    fn id(&self) -> NodeId {
        self.memory.node_id()
    }

    fn word(&self, offset: u32) -> u64 {
        self.memory
            .area(DATA)
            .expect("data region")
            .words_at(offset, 8)[0]
            .load(Ordering::Acquire)
    }

    fn post(&self, target: &TestNode, ops: Vec<Op>) -> Vec<OpResult> {
        self.transport.post(target.id(), &ops).wait()
    }
}

fn config(atomics: bool) -> VerbsConfig {
    let mut config = VerbsConfig::new("fake", "127.0.0.1:0", &secret());
    config.atomics = atomics;
    config.op_timeout = OP_TIMEOUT;
    config.reconnect_backoff = BACKOFF;
    config.bootstrap_timeout = Duration::from_secs(1);
    config
}

fn start(net: &Arc<FakeNet>, id: u16, atomics: bool) -> TestNode {
    let doorbell = Arc::new(Doorbell::anonymous().expect("map a doorbell"));
    let memory = Arc::new(NodeMemory::new(NodeId(id), doorbell));
    let region = Region::anonymous(DATA, DATA_BYTES).expect("map a region");
    let key = region.key();
    memory.register(Arc::new(region)).expect("register");
    let (transport, nic) =
        VerbsTransport::start_on(net.device(id), &config(atomics), memory.clone())
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
    TestNode {
        transport,
        nic,
        memory,
        key,
    }
}

/// `count` nodes (ids and LIDs 1..=count) that know each other.
fn cluster(count: u16, atomics: bool) -> (Arc<FakeNet>, Vec<TestNode>) {
    let net = FakeNet::new();
    let nodes: Vec<_> = (1..=count).map(|id| start(&net, id, atomics)).collect();
    for node in &nodes {
        for other in nodes.iter().filter(|o| o.id() != node.id()) {
            node.transport.add_peer(other.transport.card()).unwrap();
        }
    }
    (net, nodes)
}

fn addr(offset: u32) -> Addr {
    Addr::new(DATA, offset)
}

fn write(at: u32, key: AccessKey, words: &[u64]) -> Op {
    Op::Write {
        addr: addr(at),
        key,
        data: words.iter().flat_map(|w| w.to_le_bytes()).collect(),
    }
}

fn read(at: u32, key: AccessKey, len: u32) -> Op {
    Op::Read {
        addr: addr(at),
        key,
        len,
    }
}

fn cas(at: u32, key: AccessKey, expected: u64, new: u64) -> Op {
    Op::Cas {
        addr: addr(at),
        key,
        expected,
        new,
    }
}

fn bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// The reason of an unreachable error, checked to name `verbs`, the device and `names`.
fn unreachable_reason(result: &OpResult, node: NodeId, device: &str, names: &[&str]) -> String {
    match result {
        Err(OpError::Unreachable { node: at, reason }) => {
            assert_eq!(*at, node, "{reason}");
            let device = format!("verbs device {device}");
            assert!(reason.contains(&device), "names {device}: {reason}");
            for name in names {
                assert!(reason.contains(name), "names {name}: {reason}");
            }
            reason.clone()
        }
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[test]
fn read_write_and_cas_round_trip_between_nodes_with_nic_atomics_and_by_message() {
    for atomics in [true, false] {
        let (net, nodes) = cluster(3, atomics);
        for from in &nodes {
            for to in nodes.iter().filter(|n| n.id() != from.id()) {
                let pair = format!("{} -> {} (atomics {atomics})", from.id(), to.id());
                let slot = (from.id().0 as u32 * 8 + to.id().0 as u32) * 64;
                let tag = (from.id().0 as u64) << 8 | to.id().0 as u64;
                let results = from.post(to, vec![write(slot, to.key, &[tag, !tag, tag << 32])]);
                assert_eq!(results, vec![Ok(Completion::Write)], "{pair}");
                // Landed in the target's memory, not in some copy of it.
                assert_eq!(to.word(slot), tag, "{pair}");
                assert_eq!(to.word(slot + 8), !tag, "{pair}");
                let results = from.post(to, vec![read(slot, to.key, 24)]);
                assert_eq!(
                    results,
                    vec![Ok(Completion::Read(bytes(&[tag, !tag, tag << 32])))],
                    "{pair}"
                );
                let results = from.post(to, vec![cas(slot, to.key, tag, tag + 1)]);
                assert_eq!(
                    results,
                    vec![Ok(Completion::Cas { previous: tag })],
                    "{pair}"
                );
                let results = from.post(to, vec![cas(slot, to.key, tag, 7)]);
                assert_eq!(
                    results,
                    vec![Ok(Completion::Cas { previous: tag + 1 })],
                    "{pair}: a failed CAS reports what it found"
                );
                assert_eq!(
                    to.word(slot),
                    tag + 1,
                    "{pair}: a failed CAS changes nothing"
                );
            }
        }
        // Each pair's connection stayed up.
        for from in &nodes {
            for to in nodes.iter().filter(|n| n.id() != from.id()) {
                assert_eq!(from.transport.link_phase(to.id()), Some(Phase::Connected));
            }
        }
        drop(nodes);
        drop(net);
    }
}

#[test]
fn cas_goes_to_the_nic_only_where_the_target_allows_nic_atomics() {
    let net = FakeNet::new();
    let a = start(&net, 1, false);
    let b = start(&net, 2, true);
    a.transport.add_peer(b.transport.card()).unwrap();
    b.transport.add_peer(a.transport.card()).unwrap();
    assert!(b.transport.card().nic_atomics);
    assert!(!a.transport.card().nic_atomics);
    // To b: one chain of one ATOMIC_CMP_AND_SWP, and no responder used on b (no message).
    let posts = net.post_sizes().len();
    assert_eq!(
        a.post(&b, vec![cas(0, b.key, 0, 5)]),
        vec![Ok(Completion::Cas { previous: 0 })]
    );
    assert_eq!(b.word(0), 5);
    let sizes = net.post_sizes();
    assert_eq!(
        sizes.len(),
        posts + 1,
        "one post on a's side only: {sizes:?}"
    );
    // To a: a message to a's NIC thread, which answers with a post of its own.
    let posts = net.post_sizes().len();
    assert_eq!(
        b.post(&a, vec![cas(0, a.key, 0, 6)]),
        vec![Ok(Completion::Cas { previous: 0 })]
    );
    assert_eq!(a.word(0), 6);
    let sizes = net.post_sizes();
    assert_eq!(
        sizes.len(),
        posts + 2,
        "the request and the NIC thread's response: {sizes:?}"
    );
}

#[test]
fn persist_and_notify_are_messages_the_target_nic_thread_executes() {
    let (_net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let rings = b.memory.doorbell().rings();
    let results = a.post(
        b,
        vec![
            write(64, b.key, &[42]),
            Op::Persist {
                addr: addr(64),
                key: b.key,
                len: 8,
            },
            Op::Notify,
        ],
    );
    assert_eq!(
        results,
        vec![
            Ok(Completion::Write),
            Ok(Completion::Persist),
            Ok(Completion::Notify)
        ]
    );
    assert_eq!(
        b.memory.doorbell().rings(),
        rings + 1,
        "the NIC thread rang b's doorbell"
    );
    assert!(
        b.nic.responder_qpn(a.id()).is_some(),
        "a's messages reached b's responder"
    );
    // A PERSIST the target refuses comes back as the target's own error, from its NIC thread.
    let mut card = b.transport.card();
    card.areas[0].bytes += 4096; // the card lets it through; b's memory does not
    a.transport.add_peer(card).unwrap();
    let results = a.post(
        b,
        vec![Op::Persist {
            addr: addr(DATA_BYTES as u32),
            key: b.key,
            len: 8,
        }],
    );
    assert!(
        matches!(
            &results[0],
            Err(OpError::Access(AccessError::OutOfBounds { .. }))
        ),
        "{results:?}"
    );
    // A lapsed lease is the target's answer too.
    b.memory.lease_gate().ask();
    assert_eq!(
        a.post(b, vec![Op::Notify]),
        vec![Err(OpError::LeaseExpired { node: b.id() })]
    );
}

#[test]
fn a_batch_executes_in_posting_order_in_one_doorbell_per_chain() {
    let (net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let key = b.key;
    // Connect first, so that the posts counted below are the batch's alone.
    a.post(b, vec![Op::Notify]);
    let before = net.post_sizes().len();
    let results = a.post(
        b,
        vec![
            write(128, key, &[1, 2]),
            read(128, key, 16),
            cas(128, key, 1, 3),
            read(128, key, 8),
            write(136, key, &[4]),
            read(128, key, 16),
        ],
    );
    assert_eq!(
        results,
        vec![
            Ok(Completion::Write),
            Ok(Completion::Read(bytes(&[1, 2]))),
            Ok(Completion::Cas { previous: 1 }),
            Ok(Completion::Read(bytes(&[3]))),
            Ok(Completion::Write),
            Ok(Completion::Read(bytes(&[3, 4]))),
        ]
    );
    assert_eq!(net.post_sizes()[before..], [6], "one chain, one doorbell");
    // A message ends its chain: what follows waits for its reply.
    let before = net.post_sizes().len();
    let rings = b.memory.doorbell().rings();
    let results = a.post(
        b,
        vec![write(128, key, &[9]), Op::Notify, read(128, key, 8)],
    );
    assert_eq!(
        results,
        vec![
            Ok(Completion::Write),
            Ok(Completion::Notify),
            Ok(Completion::Read(bytes(&[9])))
        ]
    );
    assert_eq!(b.memory.doorbell().rings(), rings + 1);
    let sizes = net.post_sizes();
    // a's [WRITE, SEND], b's response, a's [READ].
    assert_eq!(sizes[before..], [2, 1, 1], "{sizes:?}");
}

#[test]
fn work_requests_signal_only_the_last_and_fence_after_reads_and_atomics() {
    let steps = vec![
        Remote::Write {
            remote_addr: 0x1000,
            rkey: 7,
            data: vec![0; 8],
        },
        Remote::Read {
            remote_addr: 0x1000,
            rkey: 7,
            len: 8,
        },
        Remote::Write {
            remote_addr: 0x1008,
            rkey: 7,
            data: vec![0; 16],
        },
        Remote::Message {
            request: vec![1; 30],
        },
        Remote::Read {
            remote_addr: 0x1000,
            rkey: 7,
            len: 8,
        },
    ];
    assert_eq!(work::chains(&steps), vec![0..4, 4..5]);
    let chain = &steps[0..4];
    let layout = work::layout(chain);
    assert_eq!(layout.spans, vec![(0, 8), (8, 8), (16, 16), (32, 30)]);
    assert_eq!(layout.reply, Some((64, work::MESSAGE_BYTES_MAX)));
    let wrs = work::send_wrs(chain, &layout, 0x10_0000, 99, 5);
    let flags: Vec<_> = wrs.iter().map(|w| (w.signaled, w.fence)).collect();
    assert_eq!(
        flags,
        vec![(false, false), (false, false), (false, true), (true, true)]
    );
    assert_eq!(
        wrs[2].sge,
        Sge {
            addr: 0x10_0010,
            length: 16,
            lkey: 99
        }
    );
    let ids: Vec<_> = wrs.iter().map(|w| work::parse_wr_id(w.wr_id)).collect();
    assert_eq!(
        ids,
        vec![(5, 0, false), (5, 1, false), (5, 2, false), (5, 3, false)]
    );
    let reply = work::reply_wr(chain, &layout, 0x10_0000, 99, 5).expect("a reply");
    assert_eq!(work::parse_wr_id(reply.wr_id), (5, 3, true));
    // Long runs split at the queue depth.
    let many = vec![
        Remote::Read {
            remote_addr: 0,
            rkey: 1,
            len: 8
        };
        work::CHAIN_WRS_MAX + 1
    ];
    assert_eq!(
        work::chains(&many),
        vec![
            0..work::CHAIN_WRS_MAX,
            work::CHAIN_WRS_MAX..work::CHAIN_WRS_MAX + 1
        ]
    );
}

#[test]
fn a_large_write_and_read_grow_the_staging_buffer_and_move_the_exact_bytes() {
    let (_net, nodes) = cluster(2, false);
    let (a, b) = (&nodes[0], &nodes[1]);
    let words: Vec<u64> = (0..(48 << 10) / 8).map(|i| i * 0x0101_0101).collect();
    let len = (words.len() * 8) as u32;
    let results = a.post(b, vec![write(0, b.key, &words), read(0, b.key, len)]);
    assert_eq!(
        results,
        vec![Ok(Completion::Write), Ok(Completion::Read(bytes(&words)))]
    );
}

#[test]
fn the_fake_refuses_posts_on_a_queue_pair_not_in_rts_and_transitions_out_of_order() {
    let net = FakeNet::new();
    let verbs = net.device(1);
    let cq = verbs.create_cq(16).unwrap();
    let caps = QpCaps {
        send_wr_max: 4,
        recv_wr_max: 4,
    };
    let qp = verbs.create_qp(&cq, caps).unwrap();
    let staging = Staging::new(&verbs, 4096).unwrap();
    let sge = Sge {
        addr: staging.addr(0),
        length: 8,
        lkey: staging.keys().lkey,
    };
    let wr = device::SendWr {
        wr_id: 1,
        sge,
        kind: device::SendKind::Send,
        signaled: true,
        fence: false,
    };
    let recv = device::RecvWr { wr_id: 2, sge };
    // SAFETY: the staging buffer is registered and outlives the queue pair.
    let refused = unsafe { verbs.post_recv(&qp, &[recv]) }.unwrap_err();
    assert!(refused.reason.contains("RESET"), "{refused}");
    let remote = QpEndpoint {
        qpn: 99,
        psn: 0,
        lid: 1,
        gid: [0; 16],
    };
    assert!(
        verbs
            .modify_qp(&qp, QpTransition::ReadyToReceive { remote })
            .is_err(),
        "RESET → RTR skips INIT"
    );
    verbs.modify_qp(&qp, QpTransition::Init).unwrap();
    // SAFETY: as above.
    let refused = unsafe { verbs.post_send(&qp, &[wr]) }.unwrap_err();
    assert_eq!(refused.bad_index, 0);
    assert!(refused.reason.contains("not RTS"), "{refused}");
    assert!(
        verbs
            .modify_qp(&qp, QpTransition::ReadyToSend { psn: 0 })
            .is_err()
    );
    verbs
        .modify_qp(&qp, QpTransition::ReadyToReceive { remote })
        .unwrap();
    // SAFETY: as above.
    let refused = unsafe { verbs.post_send(&qp, &[wr]) };
    assert!(refused.is_err(), "RTR cannot send");
    verbs
        .modify_qp(&qp, QpTransition::ReadyToSend { psn: 0 })
        .unwrap();
    // Queue pair 99 does not exist: the send is never acknowledged.
    // SAFETY: as above.
    unsafe { verbs.post_send(&qp, &[wr]) }.unwrap();
    let mut entries = Vec::new();
    verbs.poll_cq(&cq, &mut entries, 4).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].status, WcStatus::RetryExcErr);
    assert!(net.qp_is_in_error(verbs.qp_num(&qp)));
    verbs.destroy_qp(qp);
    verbs.destroy_cq(cq);
    staging.release(&verbs);
}

#[test]
fn the_link_state_machine_connects_fails_and_reconnects_only_after_the_backoff() {
    let (clock, manual) =
        crate::clock::Clock::manual(crate::clock::Time::from_nanos(1_000_000_000));
    let mut link: Link<u32> = Link::default();
    assert_eq!(link.phase(), Phase::Idle);
    assert!(link.connection().is_none());
    link.start_connecting(clock.now(), BACKOFF).unwrap();
    assert_eq!(link.phase(), Phase::Connecting);
    // A failed attempt holds no connection.
    assert_eq!(link.failed("refused".into(), clock.now()), None);
    assert_eq!(link.phase(), Phase::Error);
    let early = link.start_connecting(clock.now(), BACKOFF).unwrap_err();
    assert!(early.contains("refused"), "{early}");
    assert_eq!(link.phase(), Phase::Error, "still in error");
    manual.advance(BACKOFF);
    link.start_connecting(clock.now(), BACKOFF).unwrap();
    link.connected(7);
    assert_eq!(link.phase(), Phase::Connected);
    assert_eq!(link.connection(), Some(&mut 7));
    // A broken connection is handed back to be torn down.
    assert_eq!(link.failed("flushed".into(), clock.now()), Some(7));
    assert_eq!(link.reset(), None);
    assert_eq!(link.phase(), Phase::Idle);
}

#[test]
fn the_link_keeps_a_refusal_as_a_non_member_until_the_backoff_and_forgets_it_on_connecting() {
    let (clock, manual) =
        crate::clock::Clock::manual(crate::clock::Time::from_nanos(1_000_000_000));
    let mut link: Link<u32> = Link::default();
    link.start_connecting(clock.now(), BACKOFF).unwrap();
    link.refused("not a member".into(), 4, clock.now());
    assert_eq!(link.phase(), Phase::Error);
    assert_eq!(link.refused_in(), Some(4));
    let early = link.start_connecting(clock.now(), BACKOFF).unwrap_err();
    assert!(early.contains("not a member"), "{early}");
    assert_eq!(link.refused_in(), Some(4), "still refused");
    manual.advance(BACKOFF);
    link.start_connecting(clock.now(), BACKOFF).unwrap();
    assert_eq!(link.refused_in(), None, "asking again");
    // A failure of another kind is not a refusal.
    assert_eq!(link.failed("timed out".into(), clock.now()), None);
    assert_eq!(link.refused_in(), None);
}

#[test]
#[should_panic(expected = "connected while not connecting")]
fn the_link_state_machine_refuses_a_connection_it_did_not_start() {
    let mut link: Link<u32> = Link::default();
    link.connected(1);
}

#[test]
fn a_wrong_key_is_refused_before_anything_is_posted() {
    let (net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let posts = net.post_sizes().len();
    let wrong = AccessKey(b.key.0 ^ 0x10);
    let results = a.post(
        b,
        vec![read(0, wrong, 8), read(DATA_BYTES as u32, b.key, 8)],
    );
    assert_eq!(
        results[0],
        Err(OpError::Access(AccessError::BadKey { region: DATA }))
    );
    assert!(
        matches!(
            results[1],
            Err(OpError::Access(AccessError::OutOfBounds { .. }))
        ),
        "{results:?}"
    );
    assert_eq!(net.post_sizes().len(), posts, "nothing was posted");
    assert_eq!(
        a.transport.link_phase(b.id()),
        Some(Phase::Idle),
        "not even connected"
    );
}

/// A card whose rkey is not the registration's (stale, or forged past the initiator's check):
/// the NIC refuses it, the error names the verb, device and peer, and a's other peers, and b
/// itself once its card is right, are still reached.
#[test]
fn an_rkey_that_does_not_match_fails_at_the_nic_and_the_node_keeps_reaching_others() {
    let (_net, nodes) = cluster(3, true);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let good = b.transport.card();
    let mut card = good.clone();
    card.areas[0].rkey ^= 0x10;
    a.transport.add_peer(card).unwrap();
    let results = a.post(b, vec![read(0, b.key, 8), write(8, b.key, &[1])]);
    let reason = unreachable_reason(
        &results[0],
        b.id(),
        "fake1",
        &[
            "RDMA_READ",
            &b.id().to_string(),
            "IBV_WC_REM_ACCESS_ERR",
            "stale",
        ],
    );
    assert_eq!(
        results[1], results[0],
        "the rest of the batch fails with it: {reason}"
    );
    assert_eq!(a.transport.link_phase(b.id()), Some(Phase::Error));
    assert_eq!(b.word(8), 0, "nothing after the failed READ executed");
    // a still reaches c.
    assert_eq!(
        a.post(c, vec![write(0, c.key, &[5])]),
        vec![Ok(Completion::Write)]
    );
    assert_eq!(c.word(0), 5);
    // b's NIC thread serves c meanwhile (its responder for a was retired).
    assert_eq!(c.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    // With b's right card, a reaches b again on a new connection.
    a.transport.add_peer(good).unwrap();
    assert_eq!(
        a.post(b, vec![read(0, b.key, 8)]),
        vec![Ok(Completion::Read(bytes(&[0])))]
    );
    assert_eq!(a.transport.buffers_leaked(), 0);
}

#[test]
fn an_access_outside_the_registration_fails_at_the_nic_naming_the_verb() {
    let (_net, nodes) = cluster(3, true);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let mut card = b.transport.card();
    card.areas[0].bytes += 4096; // passes a's check, not b's NIC
    a.transport.add_peer(card).unwrap();
    let results = a.post(b, vec![write(DATA_BYTES as u32, b.key, &[1])]);
    unreachable_reason(
        &results[0],
        b.id(),
        "fake1",
        &["RDMA_WRITE", "IBV_WC_REM_ACCESS_ERR"],
    );
    let results = a.post(c, vec![cas(8, c.key, 0, 1)]);
    assert_eq!(results, vec![Ok(Completion::Cas { previous: 0 })]);
}

#[test]
fn after_a_failure_batches_fail_at_once_until_the_backoff_then_a_new_connection_is_made() {
    let (net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let good = b.transport.card();
    let mut card = good.clone();
    card.areas[0].rkey ^= 0x10;
    a.transport.add_peer(card).unwrap();
    assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    let first = b.nic.responder_qpn(a.id()).expect("a responder for a");
    let failed = a.post(b, vec![read(0, b.key, 8)]);
    unreachable_reason(&failed[0], b.id(), "fake1", &["IBV_WC_REM_ACCESS_ERR"]);
    // Within the backoff: fails at once with the same reason, nothing posted.
    let posts = net.post_sizes().len();
    let again = a.post(b, vec![Op::Notify]);
    let reason = unreachable_reason(
        &again[0],
        b.id(),
        "fake1",
        &["IBV_WC_REM_ACCESS_ERR", "ago"],
    );
    assert_eq!(net.post_sizes().len(), posts, "nothing posted: {reason}");
    std::thread::sleep(BACKOFF);
    assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    assert_eq!(a.transport.link_phase(b.id()), Some(Phase::Connected));
    let second = b.nic.responder_qpn(a.id()).expect("a responder for a");
    assert_ne!(first, second, "a new queue pair");
}

#[test]
fn a_peer_that_vanishes_mid_batch_fails_the_rest_of_the_batch_and_others_are_unaffected() {
    let (net, nodes) = cluster(3, true);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(a.post(b, vec![read(0, b.key, 8)]).len(), 1); // connected
    net.vanish_after(2, 2);
    let started = Instant::now();
    let results = a.post(
        b,
        vec![
            write(0, b.key, &[1]),
            write(8, b.key, &[2]),
            write(16, b.key, &[3]),
            read(0, b.key, 24),
        ],
    );
    assert!(
        started.elapsed() < OP_TIMEOUT,
        "failed at once: {:?}",
        started.elapsed()
    );
    assert_eq!(results[..2], [Ok(Completion::Write), Ok(Completion::Write)]);
    unreachable_reason(
        &results[2],
        b.id(),
        "fake1",
        &["RDMA_WRITE", "IBV_WC_RETRY_EXC_ERR", "did not acknowledge"],
    );
    assert_eq!(results[3], results[2]);
    assert_eq!((b.word(0), b.word(8), b.word(16)), (1, 2, 0));
    assert_eq!(
        a.post(c, vec![read(0, c.key, 8)]),
        vec![Ok(Completion::Read(bytes(&[0])))]
    );
    assert_eq!(c.post(a, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
}

#[test]
fn a_silent_peer_fails_within_the_timeout_without_holding_up_batches_to_others() {
    let (net, nodes) = cluster(3, false);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    assert_eq!(a.post(c, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    net.silence(2);
    let (silent_done, others_done, to_others) = std::thread::scope(|scope| {
        let silent = scope.spawn(|| {
            let started = Instant::now();
            let cpu_before = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
            let results = a.post(b, vec![write(0, b.key, &[1]), Op::Notify]);
            let cpu = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID) - cpu_before;
            // The waiter slept on the completion channel rather than spinning.
            assert!(
                cpu < OP_TIMEOUT / 10,
                "{cpu:?} of CPU waiting {:?}",
                started.elapsed()
            );
            (started.elapsed(), Instant::now(), results)
        });
        std::thread::sleep(Duration::from_millis(50));
        let results = a.post(c, vec![write(0, c.key, &[2]), cas(0, c.key, 2, 3)]);
        let others_done = Instant::now();
        let (elapsed, silent_done, silent_results) = silent.join().unwrap();
        assert!(elapsed >= OP_TIMEOUT, "{elapsed:?}");
        assert!(
            elapsed < OP_TIMEOUT + REAP_TIMEOUT + Duration::from_secs(1),
            "{elapsed:?}"
        );
        for result in &silent_results {
            unreachable_reason(
                result,
                b.id(),
                "fake1",
                &["no completion", &b.id().to_string()],
            );
        }
        (silent_done, others_done, results)
    });
    assert_eq!(
        to_others,
        vec![Ok(Completion::Write), Ok(Completion::Cas { previous: 2 })]
    );
    // Posted 50 ms into the silent batch's 300 ms wait, it was done before that wait ended.
    assert!(
        others_done < silent_done,
        "the batch to c waited for the silent peer"
    );
    // The silent peer's requests were flushed by the error state: nothing leaked.
    assert_eq!(a.transport.buffers_leaked(), 0);
}

/// CPU time used so far on `clock` (a thread's CPU clock).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock` is a CPU clock of a live thread and `now` is writable.
    let ret = unsafe { libc::clock_gettime(clock, &mut now) };
    assert_eq!(ret, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The idle CPU target (docs/ARCHITECTURE.md, "Idle CPU"): a NIC thread with nothing to do
/// sleeps on its completion channel instead of spinning.
#[test]
fn an_idle_nic_thread_uses_under_2_percent_of_a_core() {
    use std::os::unix::thread::JoinHandleExt;
    const IDLE: Duration = Duration::from_secs(1);
    let (_net, nodes) = cluster(2, false);
    for (from, to) in [(&nodes[0], &nodes[1]), (&nodes[1], &nodes[0])] {
        assert_eq!(
            from.post(to, vec![Op::Notify]),
            vec![Ok(Completion::Notify)]
        );
    }
    std::thread::sleep(Duration::from_millis(100)); // past the spin before sleeping
    for node in &nodes {
        let mut clock: libc::clockid_t = 0;
        let thread = node.nic.nic_thread();
        // SAFETY: the thread is joinable (the handle is borrowed, not joined or detached), so
        // its pthread_t is valid; `clock` is writable.
        let ret = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        assert_eq!(ret, 0, "pthread_getcpuclockid");
        let before = cpu_time(clock);
        std::thread::sleep(IDLE);
        let used = cpu_time(clock) - before;
        assert!(
            used < IDLE / 50,
            "{}: {used:?} of CPU in {IDLE:?} idle",
            node.id()
        );
    }
}

#[test]
fn concurrent_cas_increments_from_nics_messages_and_the_target_cpu_are_never_lost() {
    const INCREMENTS: u64 = 200;
    const ATTEMPTS_MAX: u32 = 10_000;
    for atomics in [true, false] {
        let (_net, nodes) = cluster(3, atomics);
        let target = &nodes[2];
        let at = 512;
        let increment = |post: &dyn Fn(u64) -> u64| {
            for _ in 0..INCREMENTS {
                let mut seen = 0;
                let mut attempts = 0;
                loop {
                    let previous = post(seen);
                    if previous == seen {
                        break;
                    }
                    seen = previous;
                    attempts += 1;
                    assert!(attempts < ATTEMPTS_MAX, "attempts={attempts}");
                }
            }
        };
        std::thread::scope(|scope| {
            for from in &nodes[..2] {
                scope.spawn(move || {
                    increment(&|seen| match &from
                        .post(target, vec![cas(at, target.key, seen, seen + 1)])[0]
                    {
                        Ok(Completion::Cas { previous }) => *previous,
                        other => panic!("{other:?}"),
                    })
                });
            }
            scope.spawn(|| {
                increment(&|seen| match crate::fabric::exec::execute(
                    &target.memory,
                    &cas(at, target.key, seen, seen + 1),
                ) {
                    Ok(Completion::Cas { previous }) => previous,
                    other => panic!("{other:?}"),
                })
            });
        });
        assert_eq!(target.word(at), 3 * INCREMENTS, "atomics {atomics}");
    }
}

#[test]
fn an_area_placed_after_start_is_reachable_with_the_new_card_and_a_removed_peer_is_unknown() {
    const LATE: RegionId = RegionId(2);
    let (_net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let region = Region::anonymous(LATE, 4096).expect("map a region");
    let key = region.key();
    b.memory.register(Arc::new(region)).expect("register");
    let late = Op::Write {
        addr: Addr::new(LATE, 8),
        key,
        data: bytes(&[77]),
    };
    // a's card of b predates the area: refused before posting, as an unknown region.
    assert_eq!(
        a.post(b, vec![late.clone()]),
        vec![Err(OpError::Access(AccessError::UnknownRegion {
            node: b.id(),
            region: LATE
        }))]
    );
    assert_eq!(b.transport.register_new_areas().unwrap(), vec![LATE]);
    assert_eq!(
        b.transport.register_new_areas().unwrap(),
        vec![],
        "registered once"
    );
    a.transport.add_peer(b.transport.card()).unwrap();
    assert_eq!(a.post(b, vec![late]), vec![Ok(Completion::Write)]);
    let word = b.memory.area(LATE).unwrap().words_at(8, 8)[0].load(Ordering::Acquire);
    assert_eq!(word, 77);
    a.transport.remove_peer(b.id());
    assert_eq!(a.transport.link_phase(b.id()), None);
    assert_eq!(
        a.post(b, vec![Op::Notify]),
        vec![Err(OpError::UnknownNode { node: b.id() })]
    );
    // Nor does a admit b any more: b's first connection to a is refused, saying why.
    let results = b.post(a, vec![Op::Notify]);
    unreachable_reason(
        &results[0],
        a.id(),
        "fake2",
        &["not a peer of n1", "add its card"],
    );
}

#[test]
fn unusable_cards_are_refused_and_nothing_is_added() {
    let (_net, nodes) = cluster(2, true);
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut own = a.transport.card();
    let error = a.transport.add_peer(own.clone()).unwrap_err();
    assert!(error.to_string().contains("this node's own"), "{error}");
    own.node = NodeId(9);
    own.bootstrap.set_ip(std::net::Ipv4Addr::UNSPECIFIED.into());
    let error = a.transport.add_peer(own.clone()).unwrap_err();
    assert!(
        matches!(&error, VerbsError::BadCard { node: NodeId(9), reason, .. } if reason.contains("bootstrap")),
        "{error:?}"
    );
    let mut twice = b.transport.card();
    twice.node = NodeId(9);
    twice.areas.push(twice.areas[0].clone());
    let error = a.transport.add_peer(twice).unwrap_err();
    assert!(error.to_string().contains("listed twice"), "{error}");
    assert_eq!(
        a.transport.post(NodeId(9), &[Op::Notify]).wait(),
        vec![Err(OpError::UnknownNode { node: NodeId(9) })]
    );
}

#[test]
fn atomics_asked_of_a_device_without_them_are_refused_naming_the_device() {
    let net = FakeNet::new();
    let memory = Arc::new(NodeMemory::new(
        NodeId(1),
        Arc::new(Doorbell::anonymous().unwrap()),
    ));
    let error = VerbsTransport::start_on(net.device(1).without_atomics(), &config(true), memory)
        .err()
        .expect("refused");
    assert!(
        matches!(&error, VerbsError::MissingCapability { device, .. } if device == "fake1"),
        "{error:?}"
    );
}

#[test]
fn an_unknown_device_is_a_typed_error_naming_it() {
    // The real layer: on a host without RDMA devices (or without this one) it cannot open.
    let memory = Arc::new(NodeMemory::new(
        NodeId(1),
        Arc::new(Doorbell::anonymous().unwrap()),
    ));
    let config = VerbsConfig::new("no-such-device", "127.0.0.1:0", &secret());
    let error = VerbsTransport::start(&config, memory)
        .err()
        .expect("no such device");
    assert!(
        matches!(&error, VerbsError::DeviceUnavailable { device, .. } if device == "no-such-device"),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"no-such-device\""), "{error}");
}

#[test]
fn completion_statuses_keep_ibverbs_codes_and_say_what_to_do() {
    assert_eq!(WcStatus::from_code(0), WcStatus::Success);
    assert_eq!(WcStatus::from_code(5), WcStatus::WrFlushErr);
    assert_eq!(WcStatus::from_code(10), WcStatus::RemAccessErr);
    assert_eq!(WcStatus::from_code(12), WcStatus::RetryExcErr);
    assert_eq!(WcStatus::from_code(13), WcStatus::RnrRetryExcErr);
    assert_eq!(WcStatus::from_code(21), WcStatus::GeneralErr);
    assert_eq!(WcStatus::from_code(99), WcStatus::Other(99));
    assert_eq!(WcStatus::RemAccessErr.name(), "IBV_WC_REM_ACCESS_ERR");
    assert_eq!(WcStatus::Other(99).name(), "ibv_wc_status 99");
    assert!(WcStatus::RetryExcErr.meaning().contains("retry"));
    assert!(
        WcStatus::RemAccessErr
            .meaning()
            .contains("fetch its card again")
    );
}

/// The fencing tests' removal: `a` adopts configuration `config` of `members`.
fn fence(a: &TestNode, config: u64, members: &[&TestNode]) {
    a.nic
        .set_membership(Membership::new(config, members.iter().map(|n| n.id())));
}

#[test]
fn a_removed_nodes_write_and_cas_fail_on_its_fenced_queue_pair_and_members_go_on() {
    let (net, nodes) = cluster(4, true);
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    // b, c and d have queue pairs to a, and a to c.
    for (from, at) in [(b, 0), (c, 8), (d, 16)] {
        assert_eq!(
            from.post(a, vec![write(at, a.key, &[from.id().0 as u64])]),
            vec![Ok(Completion::Write)]
        );
    }
    assert_eq!(a.post(c, vec![read(0, c.key, 8)]).len(), 1);
    assert_eq!(a.transport.link_phase(c.id()), Some(Phase::Connected));
    let b_qpn = a.nic.responder_qpn(b.id()).expect("b's responder at a");
    assert!(a.nic.responder_qpn(c.id()).is_some(), "c's responder at a");

    fence(a, 2, &[a, b]);
    // c's WRITE and d's NIC CAS go out on their existing queue pairs, reach none at a, and
    // complete in error at the initiator, changing nothing.
    let results = c.post(a, vec![write(8, a.key, &[99])]);
    unreachable_reason(
        &results[0],
        a.id(),
        "fake3",
        &["RDMA_WRITE", "IBV_WC_RETRY_EXC_ERR"],
    );
    let results = d.post(a, vec![cas(16, a.key, 4, 99)]);
    unreachable_reason(
        &results[0],
        a.id(),
        "fake4",
        &["ATOMIC_CMP_AND_SWP", "IBV_WC_RETRY_EXC_ERR"],
    );
    assert_eq!(a.word(8), 3, "c's WRITE changed nothing");
    assert_eq!(a.word(16), 4, "d's CAS changed nothing");
    // Because their queue pairs at a are gone, and a forgot them; b's is untouched.
    assert_eq!(a.nic.responder_qpn(c.id()), None, "c's queue pair is gone");
    assert_eq!(a.nic.responder_qpn(d.id()), None, "d's queue pair is gone");
    assert_eq!(
        a.transport.link_phase(c.id()),
        None,
        "c is no longer a's peer"
    );
    assert_eq!(
        a.post(c, vec![Op::Notify]),
        vec![Err(OpError::UnknownNode { node: c.id() })]
    );
    assert_eq!(a.nic.responder_qpn(b.id()), Some(b_qpn), "b's is untouched");
    assert!(!net.qp_is_in_error(b_qpn));

    // b goes on, on the queue pair it had.
    let results = b.post(
        a,
        vec![
            write(24, a.key, &[5]),
            cas(0, a.key, 2, 7),
            read(24, a.key, 8),
        ],
    );
    assert_eq!(
        results,
        vec![
            Ok(Completion::Write),
            Ok(Completion::Cas { previous: 2 }),
            Ok(Completion::Read(bytes(&[5])))
        ]
    );
    assert_eq!(
        a.nic.responder_qpn(b.id()),
        Some(b_qpn),
        "the same queue pair"
    );
    assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
}

#[test]
fn a_removed_nodes_messages_are_neither_executed_nor_answered() {
    // Without NIC atomics, CAS is a message to the NIC thread too.
    let (_net, nodes) = cluster(4, false);
    let (a, b, c, d) = (&nodes[0], &nodes[1], &nodes[2], &nodes[3]);
    for from in [b, c, d] {
        assert_eq!(from.post(a, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    }
    let rings = a.memory.doorbell().rings();
    fence(a, 2, &[a, b]);
    let results = c.post(a, vec![cas(0, a.key, 0, 5)]);
    unreachable_reason(
        &results[0],
        a.id(),
        "fake3",
        &["SEND", "IBV_WC_RETRY_EXC_ERR"],
    );
    let results = d.post(
        a,
        vec![
            Op::Persist {
                addr: addr(0),
                key: a.key,
                len: 8,
            },
            Op::Notify,
        ],
    );
    unreachable_reason(
        &results[0],
        a.id(),
        "fake4",
        &["SEND", "IBV_WC_RETRY_EXC_ERR"],
    );
    assert!(
        matches!(results[1], Err(OpError::Unreachable { .. })),
        "{results:?}"
    );
    assert_eq!(a.word(0), 0, "c's CAS was not executed");
    assert_eq!(
        a.memory.doorbell().rings(),
        rings,
        "d's NOTIFY was not executed"
    );
    // b's messages are served as before.
    assert_eq!(
        b.post(a, vec![cas(0, a.key, 0, 6), Op::Notify]),
        vec![Ok(Completion::Cas { previous: 0 }), Ok(Completion::Notify)]
    );
    assert_eq!(a.word(0), 6);
    assert_eq!(a.memory.doorbell().rings(), rings + 1);
}

#[test]
fn a_member_added_by_a_later_membership_connects_and_is_served() {
    let (_net, nodes) = cluster(3, true);
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    fence(a, 1, &[a, b]);
    assert_eq!(
        c.post(a, vec![write(0, a.key, &[3])]),
        vec![Err(OpError::NotMember {
            node: a.id(),
            config: 1
        })]
    );
    let error = a.transport.add_peer(c.transport.card()).unwrap_err();
    assert!(
        matches!(&error, VerbsError::BadCard { node, reason, .. } if *node == c.id() && reason.contains("configuration 1")),
        "{error:?}"
    );
    fence(a, 2, &[a, b, c]);
    a.transport.add_peer(c.transport.card()).unwrap();
    // c was refused within its backoff; once it has passed, it connects.
    std::thread::sleep(BACKOFF);
    assert_eq!(
        c.post(
            a,
            vec![write(0, a.key, &[3]), cas(8, a.key, 0, 4), Op::Notify]
        ),
        vec![
            Ok(Completion::Write),
            Ok(Completion::Cas { previous: 0 }),
            Ok(Completion::Notify)
        ]
    );
    assert_eq!((a.word(0), a.word(8)), (3, 4));
    assert!(a.nic.responder_qpn(c.id()).is_some());
    assert_eq!(
        a.post(c, vec![read(0, c.key, 8)]),
        vec![Ok(Completion::Read(bytes(&[0])))]
    );
}

mod bootstrap_wire {
    use super::super::bootstrap::{self, BODY_BYTES_MAX, BootstrapError, Message};
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;

    fn endpoint() -> QpEndpoint {
        QpEndpoint {
            qpn: 0x12_3456,
            psn: 0xab_cdef,
            lid: 7,
            gid: [3; 16],
        }
    }

    fn hello() -> Message {
        Message::Hello {
            from: NodeId(1),
            to: NodeId(2),
            nonce: [5; 32],
            endpoint: endpoint(),
        }
    }

    #[test]
    fn messages_round_trip() {
        for message in [
            hello(),
            Message::Challenge {
                nonce: [1; 32],
                proof: [2; 32],
            },
            Message::Proof { proof: [3; 32] },
            Message::Accept {
                endpoint: endpoint(),
            },
            Message::Refuse {
                reason: "not a peer".into(),
            },
            Message::NotMember { config: 1 << 40 },
        ] {
            assert_eq!(bootstrap::decode(&bootstrap::encode(&message)), Ok(message));
        }
    }

    #[test]
    fn garbage_is_refused_with_what_was_wrong() {
        let good = bootstrap::encode(&hello());
        let mut version = good.clone();
        version[4] = 2;
        assert_eq!(
            bootstrap::decode(&version),
            Err(BootstrapError::BadVersion { got: 2 })
        );
        let mut magic = good.clone();
        magic[0] = b'X';
        assert!(matches!(
            bootstrap::decode(&magic),
            Err(BootstrapError::BadMagic { .. })
        ));
        let mut kind = good.clone();
        kind[5] = 9;
        assert_eq!(
            bootstrap::decode(&kind),
            Err(BootstrapError::UnknownKind { got: 9 })
        );
        assert_eq!(
            bootstrap::decode(&good[..good.len() - 1]),
            Err(BootstrapError::Truncated {
                need: good.len(),
                have: good.len() - 1
            })
        );
        assert_eq!(
            bootstrap::decode(&good[..3]),
            Err(BootstrapError::Truncated { need: 8, have: 3 })
        );
        let mut oversized = good[..8].to_vec();
        oversized[6..8].copy_from_slice(&(BODY_BYTES_MAX as u16 + 1).to_le_bytes());
        assert_eq!(
            bootstrap::decode(&oversized),
            Err(BootstrapError::Oversized {
                len: BODY_BYTES_MAX + 1
            })
        );
        // A HELLO whose body is a byte short, the header agreeing.
        let mut short = good[..good.len() - 1].to_vec();
        short[6] -= 1;
        assert!(matches!(
            bootstrap::decode(&short),
            Err(BootstrapError::BadLength { kind: "HELLO", .. })
        ));
        let mut wide = hello();
        if let Message::Hello { endpoint, .. } = &mut wide {
            endpoint.qpn = 1 << 24;
        }
        assert!(matches!(
            bootstrap::decode(&bootstrap::encode(&wide)),
            Err(BootstrapError::FieldTooWide { field: "qpn", .. })
        ));
    }

    #[test]
    fn an_oversized_header_is_refused_before_its_body_is_read() {
        let mut header = bootstrap::encode(&hello())[..8].to_vec();
        header[6..8].copy_from_slice(&u16::MAX.to_le_bytes());
        // Nothing follows the header: reading the body would report truncation instead.
        let error = bootstrap::read(&mut &header[..], "test").unwrap_err();
        assert_eq!(
            error,
            BootstrapError::Oversized {
                len: u16::MAX as usize
            }
        );
    }

    /// Sends `bytes` to `node`'s bootstrap listener and reads its answer.
    fn exchange(node: &TestNode, bytes: &[u8]) -> Result<Message, BootstrapError> {
        let address = node.transport.card().bootstrap;
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(bytes).unwrap();
        bootstrap::read(&mut stream, "test")
    }

    #[test]
    fn the_listener_refuses_garbage_and_strangers_and_keeps_serving() {
        let (_net, nodes) = cluster(2, true);
        let (a, b) = (&nodes[0], &nodes[1]);
        let mut version = bootstrap::encode(&hello());
        version[4] = 9;
        let Ok(Message::Refuse { reason }) = exchange(b, &version) else {
            panic!("refused")
        };
        assert!(reason.contains("version 9"), "{reason}");
        let Ok(Message::Refuse { reason }) = exchange(b, b"GET / HTTP/1.1\r\n\r\n") else {
            panic!("refused")
        };
        assert!(reason.contains("magic"), "{reason}");
        let stranger = Message::Hello {
            from: NodeId(9),
            to: b.id(),
            nonce: [5; 32],
            endpoint: endpoint(),
        };
        let Ok(Message::Refuse { reason }) = exchange(b, &bootstrap::encode(&stranger)) else {
            panic!("refused")
        };
        assert!(reason.contains("not a peer"), "{reason}");
        let misdirected = Message::Hello {
            from: a.id(),
            to: NodeId(3),
            nonce: [5; 32],
            endpoint: endpoint(),
        };
        let Ok(Message::Refuse { reason }) = exchange(b, &bootstrap::encode(&misdirected)) else {
            panic!("refused")
        };
        assert!(
            reason.contains("not n3") || reason.contains("not 3"),
            "{reason}"
        );
        // A peer that sends half a HELLO and stops: the listener times out on it and goes on.
        let address = b.transport.card().bootstrap;
        let mut stalled = TcpStream::connect(address).unwrap();
        stalled
            .write_all(&bootstrap::encode(&hello())[..10])
            .unwrap();
        drop(stalled);
        assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    }

    /// An initiator that does not hold the cluster's secret gets a CHALLENGE, fails to prove,
    /// and is refused before anything is made for it.
    #[test]
    fn the_listener_refuses_a_wrong_proof_before_making_a_queue_pair() {
        let (_net, nodes) = cluster(2, true);
        let (a, b) = (&nodes[0], &nodes[1]);
        let address = b.transport.card().bootstrap;
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let hello = Message::Hello {
            from: a.id(),
            to: b.id(),
            nonce: [5; 32],
            endpoint: endpoint(),
        };
        bootstrap::write(&mut stream, &hello, "test").unwrap();
        let Ok(Message::Challenge { .. }) = bootstrap::read(&mut stream, "test") else {
            panic!("challenged")
        };
        bootstrap::write(&mut stream, &Message::Proof { proof: [0; 32] }, "test").unwrap();
        let Ok(Message::Refuse { reason }) = bootstrap::read(&mut stream, "test") else {
            panic!("refused")
        };
        assert!(reason.contains("proof does not match"), "{reason}");
        assert_eq!(b.nic.responder_qpn(a.id()), None, "nothing was made for it");
        assert_eq!(a.post(b, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
    }

    /// Nodes of different secrets do not connect: the initiator finds the target's proof wrong
    /// and says so, naming the target's address.
    #[test]
    fn a_target_of_another_cluster_secret_is_an_impostor_to_the_initiator() {
        let net = FakeNet::new();
        let a = start(&net, 1, true);
        let doorbell = Arc::new(Doorbell::anonymous().unwrap());
        let memory = Arc::new(NodeMemory::new(NodeId(2), doorbell));
        let other = ClusterSecret::from_bytes([8; crate::fabric::tcp::auth::SECRET_BYTES]);
        let config = VerbsConfig {
            secret: other,
            ..config(true)
        };
        let (b_transport, _b_nic) =
            VerbsTransport::start_on(net.device(2), &config, memory).unwrap();
        a.transport.add_peer(b_transport.card()).unwrap();
        b_transport.add_peer(a.transport.card()).unwrap();
        let results = a.transport.post(NodeId(2), &[Op::Notify]).wait();
        unreachable_reason(
            &results[0],
            NodeId(2),
            "fake1",
            &["impostor", &b_transport.card().bootstrap.to_string()],
        );
        let results = b_transport.post(a.id(), &[Op::Notify]).wait();
        unreachable_reason(&results[0], a.id(), "fake2", &["impostor"]);
    }

    /// A node removed from the target's configuration is told so at its HELLO, before any
    /// queue pair is made for it, and reports it as not being a member rather than the target
    /// being unreachable; a member still connects.
    #[test]
    fn a_removed_nodes_reconnection_through_the_bootstrap_is_refused_as_not_a_member() {
        let (_net, nodes) = cluster(3, true);
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        assert_eq!(c.post(a, vec![Op::Notify]), vec![Ok(Completion::Notify)]);
        fence(a, 7, &[a, b]);
        let hello = Message::Hello {
            from: c.id(),
            to: a.id(),
            nonce: [5; 32],
            endpoint: endpoint(),
        };
        assert_eq!(
            exchange(a, &bootstrap::encode(&hello)),
            Ok(Message::NotMember { config: 7 })
        );
        // c's queue pair was fenced: its next batch fails on it, and after the backoff it asks
        // the bootstrap for a new one and is refused.
        let results = c.post(a, vec![write(0, a.key, &[1])]);
        unreachable_reason(&results[0], a.id(), "fake3", &["IBV_WC_RETRY_EXC_ERR"]);
        std::thread::sleep(BACKOFF);
        let not_member = vec![Err(OpError::NotMember {
            node: a.id(),
            config: 7,
        })];
        assert_eq!(c.post(a, vec![write(0, a.key, &[1])]), not_member);
        assert_eq!(
            c.post(a, vec![Op::Notify]),
            not_member,
            "within the backoff, the refusal is kept as such"
        );
        assert_eq!(a.nic.responder_qpn(c.id()), None, "nothing was made for c");
        assert_eq!(a.word(0), 0);
        // b, which had no queue pair to a yet, connects.
        assert_eq!(
            b.post(a, vec![write(0, a.key, &[2])]),
            vec![Ok(Completion::Write)]
        );
        assert_eq!(a.word(0), 2);
    }
}
