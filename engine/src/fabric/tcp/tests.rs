//! Tests of the TCP transport over real loopback sockets: the happy path, pipelining from many
//! threads, and every kind of bad peer, each checked to be disconnected while a good client on
//! the same server keeps being served.

use super::auth::{self, ClusterSecret, PROTOCOL_VERSION};
use super::client::{self, RESPONSE_SILENCE_MAX};
use super::frame::{
    self, Challenge, FRAME_BYTES_MAX, Frame, HANDSHAKE_FRAME_BYTES_MAX, Hello, MAGIC, Refusal,
    Request, Response,
};
use super::{HandshakeError, NicServer, NicStats, TcpTransport};
use crate::addr::{Addr, NodeId, RegionId};
use crate::clock::Clock;
use crate::fabric::{
    Completion, Doorbell, Membership, NodeMemory, OP_BYTES_MAX, Op, OpError, OpResult, exec,
};
use crate::region::{AccessError, AccessKey, Region};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

const SERVER: NodeId = NodeId(1);
const CLIENT: NodeId = NodeId(2);
/// The node raw connections speak for: another than `CLIENT`, so that the fence leaves them and
/// a `CLIENT` transport on the same server alone.
const RAW_CLIENT: NodeId = NodeId(3);
/// The configuration the tests' servers start in; every node above is a member of it.
const CONFIG: u64 = 1;
const REGION_BYTES: u64 = 1 << 20;
/// How long a test waits for something that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

struct Node {
    memory: Arc<NodeMemory>,
    region: Arc<Region>,
    server: NicServer,
}

/// The membership the tests' servers start with.
fn members() -> Membership {
    Membership::new(CONFIG, [SERVER, CLIENT, RAW_CLIENT])
}

impl Node {
    fn start(id: NodeId, secret: &ClusterSecret) -> Node {
        Node::start_with(id, secret, members())
    }

    fn start_with(id: NodeId, secret: &ClusterSecret, membership: Membership) -> Node {
        let memory = Arc::new(NodeMemory::new(
            id,
            Arc::new(Doorbell::anonymous().unwrap()),
        ));
        let region = Arc::new(Region::anonymous(RegionId(0), REGION_BYTES).unwrap());
        memory.register(region.clone()).unwrap();
        let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let server = NicServer::start(listen, memory.clone(), secret.clone(), membership).unwrap();
        Node {
            memory,
            region,
            server,
        }
    }

    fn key(&self) -> AccessKey {
        self.region.key()
    }

    fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    fn word(&self, offset: u32) -> u64 {
        self.region.words()[offset as usize / 8].load(Ordering::Acquire)
    }

    fn transport(&self, secret: &ClusterSecret) -> TcpTransport {
        self.transport_as(CLIENT, secret)
    }

    fn transport_as(&self, me: NodeId, secret: &ClusterSecret) -> TcpTransport {
        let transport = TcpTransport::new(me, CONFIG, secret.clone());
        transport.add_peer(self.memory.node_id(), self.addr());
        transport
    }

    /// Waits until the server's counters satisfy `done`.
    fn await_stats(&self, what: &str, done: impl Fn(&NicStats) -> bool) -> NicStats {
        let start = Instant::now();
        loop {
            let stats = self.server.stats();
            if done(&stats) {
                return stats;
            }
            assert!(start.elapsed() < PATIENCE, "waiting for {what}: {stats:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn at(offset: u32) -> Addr {
    Addr::new(RegionId(0), offset)
}

fn post(transport: &TcpTransport, target: NodeId, ops: Vec<Op>) -> Vec<OpResult> {
    let mut pending = transport.post(target, ops);
    // Exercise the non-blocking path once before blocking.
    if let Some(results) = pending.poll() {
        return results;
    }
    pending.wait()
}

/// A good client's WRITE, READ and CAS work (and a CAS with a stale value fails properly).
fn assert_serves(node: &Node, transport: &TcpTransport, offset: u32, tag: u64) {
    let key = node.key();
    let data: Vec<u8> = [tag.to_le_bytes(), (tag ^ 1).to_le_bytes()].concat();
    let results = post(
        transport,
        SERVER,
        vec![
            Op::Write {
                addr: at(offset),
                key,
                data: data.clone(),
            },
            Op::Read {
                addr: at(offset),
                key,
                len: 16,
            },
            Op::Cas {
                addr: at(offset),
                key,
                expected: tag,
                new: tag + 7,
            },
            Op::Cas {
                addr: at(offset),
                key,
                expected: tag,
                new: 0,
            },
            Op::Read {
                addr: at(offset),
                key,
                len: 8,
            },
        ],
    );
    assert_eq!(
        results,
        vec![
            Ok(Completion::Write),
            Ok(Completion::Read(data)),
            Ok(Completion::Cas { previous: tag }),
            Ok(Completion::Cas { previous: tag + 7 }),
            Ok(Completion::Read((tag + 7).to_le_bytes().to_vec())),
        ]
    );
    assert_eq!(node.word(offset), tag + 7);
}

fn send(stream: &mut TcpStream, frame: &Frame) -> io::Result<()> {
    stream.write_all(&frame::encode_to_vec(frame))
}

/// Reads one frame; `None` when the peer closed or reset the connection.
fn recv(stream: &mut TcpStream, inbox: &mut Vec<u8>) -> Option<Frame> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((frame, consumed)) = frame::decode(inbox).expect("the server sends frames") {
            inbox.drain(..consumed);
            return Some(frame);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(count) => inbox.extend_from_slice(&chunk[..count]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("no frame and no close within {PATIENCE:?}: {e}"),
        }
    }
}

/// Asserts the server closes `stream`, returning the frames it sent before closing.
fn assert_closed_by_server(stream: &mut TcpStream) -> Vec<Frame> {
    let mut inbox = Vec::new();
    let mut frames = Vec::new();
    while let Some(frame) = recv(stream, &mut inbox) {
        frames.push(frame);
    }
    frames
}

/// Sends `bytes` on `bad`, checks the server closes it without answering and counts it as its
/// `rejected_count`-th rejection, then checks a good client is still served.
fn assert_rejected_while_serving_others(
    node: &Node,
    good: &TcpTransport,
    mut bad: TcpStream,
    bytes: &[u8],
    rejected_count: u64,
    tag: u64,
) {
    bad.write_all(bytes).unwrap();
    assert_eq!(
        assert_closed_by_server(&mut bad),
        Vec::new(),
        "rejection {rejected_count}"
    );
    node.await_stats("the rejection", |s| {
        s.connections_rejected == rejected_count
    });
    assert_serves(node, good, 0, tag);
}

/// A raw connection that has completed the handshake as `RAW_CLIENT`.
fn authenticated(node: &Node, secret: &ClusterSecret) -> TcpStream {
    authenticated_as(RAW_CLIENT, node, secret)
}

fn authenticated_as(me: NodeId, node: &Node, secret: &ClusterSecret) -> TcpStream {
    let (stream, leftover) =
        client::connect(&Clock::system(), me, CONFIG, secret, SERVER, node.addr()).unwrap();
    assert!(leftover.is_empty());
    stream
}

/// Sends a HELLO as `node` on a raw connection and returns its nonce and the server's
/// challenge.
fn say_hello(stream: &mut TcpStream, node: NodeId) -> (auth::Nonce, Challenge) {
    let client_nonce = auth::nonce();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node,
        config: CONFIG,
        client_nonce,
    };
    send(stream, &Frame::Hello(hello)).unwrap();
    let mut inbox = Vec::new();
    let Some(Frame::Challenge(challenge)) = recv(stream, &mut inbox) else {
        panic!("expected a challenge");
    };
    (client_nonce, challenge)
}

fn request(request_id: u64, op: Op) -> Frame {
    Frame::Request(Request { request_id, op })
}

#[test]
fn reads_writes_cas_persist_and_notify_over_loopback() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    assert_serves(&node, &transport, 64, 1000);
    let rings = node.memory.doorbell().rings();
    let key = node.key();
    let results = post(
        &transport,
        SERVER,
        vec![
            Op::Persist {
                addr: at(64),
                key,
                len: 16,
            },
            Op::Notify,
        ],
    );
    assert_eq!(
        results,
        vec![Ok(Completion::Persist), Ok(Completion::Notify)]
    );
    assert_eq!(node.memory.doorbell().rings(), rings + 1);
    // Empty batches complete at once; one connection served everything.
    assert_eq!(post(&transport, SERVER, Vec::new()), Vec::new());
    let stats = node.server.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_authenticated, 1);
    assert_eq!(stats.requests_executed, 7);
}

#[test]
fn access_errors_cross_the_wire_exactly_and_the_connection_stays_usable() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    let key = node.key();
    let wrong_key = AccessKey(key.0 ^ 0x5a5a);
    let ops = vec![
        Op::Write {
            addr: at(0),
            key: wrong_key,
            data: vec![1; 8],
        },
        Op::Read {
            addr: Addr::new(RegionId(9), 0),
            key,
            len: 8,
        },
        Op::Cas {
            addr: at(REGION_BYTES as u32),
            key,
            expected: 0,
            new: 1,
        },
        Op::Read {
            addr: at(4),
            key,
            len: 8,
        },
        Op::Write {
            addr: at(8),
            key,
            data: vec![1; 12],
        },
        Op::Persist {
            addr: at(REGION_BYTES as u32 - 8),
            key,
            len: 16,
        },
        Op::Write {
            addr: at(8),
            key,
            data: 42u64.to_le_bytes().to_vec(),
        },
    ];
    let results = post(&transport, SERVER, ops.clone());
    let expected = vec![
        Err(AccessError::BadKey {
            region: RegionId(0),
        }
        .into()),
        Err(AccessError::UnknownRegion {
            node: SERVER,
            region: RegionId(9),
        }
        .into()),
        Err(AccessError::OutOfBounds {
            addr: at(REGION_BYTES as u32),
            len: 8,
            region_bytes: REGION_BYTES,
        }
        .into()),
        Err(AccessError::Misaligned {
            addr: at(4),
            len: 8,
            align: 8,
        }
        .into()),
        Err(AccessError::Misaligned {
            addr: at(8),
            len: 12,
            align: 8,
        }
        .into()),
        Err(AccessError::OutOfBounds {
            addr: at(REGION_BYTES as u32 - 8),
            len: 16,
            region_bytes: REGION_BYTES,
        }
        .into()),
        Ok(Completion::Write),
    ];
    assert_eq!(results, expected);
    // Exactly what the target computes locally, field for field.
    let local: Vec<OpResult> = ops[..6]
        .iter()
        .map(|op| exec::execute(&node.memory, op))
        .collect();
    assert_eq!(results[..6], local[..]);
    assert_eq!(node.word(0), 0, "the wrong-key write landed");
    assert_eq!(node.word(8), 42);
    assert_serves(&node, &transport, 128, 5);
    assert_eq!(
        node.server.stats().connections_accepted,
        1,
        "errors did not cost the connection"
    );
}

#[test]
fn unknown_nodes_and_oversize_ops_fail_before_any_connection() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    let results = post(&transport, NodeId(9), vec![Op::Notify, Op::Notify]);
    let unknown = Err(OpError::UnknownNode { node: NodeId(9) });
    assert_eq!(results, vec![unknown.clone(), unknown]);
    let huge = Op::Read {
        addr: at(0),
        key: node.key(),
        len: OP_BYTES_MAX + 8,
    };
    let results = post(&transport, SERVER, vec![huge, Op::Notify]);
    let too_large = Err(OpError::TooLarge {
        len: OP_BYTES_MAX as u64 + 8,
        max: OP_BYTES_MAX,
    });
    assert_eq!(results, vec![too_large.clone(), too_large]);
    assert_eq!(node.server.stats().connections_accepted, 0);
}

#[test]
fn maximal_writes_and_reads_cross_the_wire() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let big = Arc::new(Region::anonymous(RegionId(1), u64::from(OP_BYTES_MAX)).unwrap());
    node.memory.register(big.clone()).unwrap();
    let transport = node.transport(&secret);
    let data: Vec<u8> = (0..OP_BYTES_MAX)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let addr = Addr::new(RegionId(1), 0);
    let key = big.key();
    let results = post(
        &transport,
        SERVER,
        vec![
            Op::Write {
                addr,
                key,
                data: data.clone(),
            },
            Op::Read {
                addr,
                key,
                len: OP_BYTES_MAX,
            },
            Op::Read { addr, key, len: 8 },
        ],
    );
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], Ok(Completion::Write));
    assert!(
        results[1] == Ok(Completion::Read(data.clone())),
        "the 8 MiB read differs"
    );
    assert_eq!(results[2], Ok(Completion::Read(data[..8].to_vec())));
    assert_serves(&node, &transport, 0, 91);
}

#[test]
fn a_client_that_does_not_read_is_slowed_down_not_dropped() {
    // 128 reads of 512 KiB: 64 MiB of responses, four times the server's write backlog limit
    // (and more than the kernel buffers on both ends hold).
    const REQUESTS: u64 = 128;
    const READ_BYTES: u32 = 512 << 10;
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    for (index, word) in node.region.words()[..READ_BYTES as usize / 8]
        .iter()
        .enumerate()
    {
        word.store(index as u64 * 3, Ordering::Release);
    }
    let expected: Vec<u8> = (0..u64::from(READ_BYTES) / 8)
        .flat_map(|i| (i * 3).to_le_bytes())
        .collect();
    let good = node.transport(&secret);
    let mut slow = authenticated(&node, &secret);
    for request_id in 0..REQUESTS {
        let read = Op::Read {
            addr: at(0),
            key: node.key(),
            len: READ_BYTES,
        };
        send(&mut slow, &request(request_id, read)).unwrap();
    }
    // While the slow client reads nothing, the NIC thread keeps serving others.
    node.await_stats("the server to start on the reads", |s| {
        s.requests_executed > 0
    });
    assert_serves(&node, &good, 768 << 10, 92);
    std::thread::sleep(Duration::from_millis(100));
    let executed = node.server.stats().requests_executed - 5;
    assert!(
        executed < REQUESTS,
        "backpressure: {executed} reads executed with nobody reading"
    );
    let mut inbox = Vec::new();
    for request_id in 0..REQUESTS {
        let Some(Frame::Response(response)) = recv(&mut slow, &mut inbox) else {
            panic!("response {request_id} missing");
        };
        assert_eq!(response.request_id, request_id);
        assert!(
            response.result == Ok(Completion::Read(expected.clone())),
            "read {request_id}"
        );
    }
    assert_serves(&node, &good, 768 << 10, 93);
}

#[test]
fn the_server_answers_an_oversize_request_with_a_typed_error() {
    // The client never sends one, but the NIC thread must not trust that.
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut stream = authenticated(&node, &secret);
    let key = node.key();
    send(
        &mut stream,
        &request(
            1,
            Op::Read {
                addr: at(0),
                key,
                len: OP_BYTES_MAX + 8,
            },
        ),
    )
    .unwrap();
    send(
        &mut stream,
        &request(
            2,
            Op::Read {
                addr: at(0),
                key,
                len: 8,
            },
        ),
    )
    .unwrap();
    let mut inbox = Vec::new();
    let too_large = OpError::TooLarge {
        len: OP_BYTES_MAX as u64 + 8,
        max: OP_BYTES_MAX,
    };
    assert_eq!(
        recv(&mut stream, &mut inbox),
        Some(Frame::Response(Response {
            request_id: 1,
            result: Err(too_large)
        }))
    );
    assert_eq!(
        recv(&mut stream, &mut inbox),
        Some(Frame::Response(Response {
            request_id: 2,
            result: Ok(Completion::Read(vec![0; 8]))
        }))
    );
}

#[test]
fn a_client_with_the_wrong_secret_gets_an_error_and_writes_nothing() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 11);
    let intruder = node.transport(&ClusterSecret::generate());
    let results = post(
        &intruder,
        SERVER,
        vec![Op::Write {
            addr: at(64),
            key: node.key(),
            data: vec![0xff; 8],
        }],
    );
    let [Err(OpError::Unreachable { node: n, reason })] = &results[..] else {
        panic!("expected one Unreachable: {results:?}");
    };
    assert_eq!(*n, SERVER);
    assert!(
        reason.contains("did not prove it holds the cluster secret"),
        "{reason}"
    );
    assert_eq!(node.word(64), 0);
    // Authentication failures are not retried: one connection, never authenticated.
    let stats = node.await_stats("the intruder's connection to close", |s| {
        s.connections_closed == 1
    });
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!(stats.connections_authenticated, 1);
    assert_serves(&node, &good, 0, 12);
}

#[test]
fn the_server_refuses_a_wrong_proof_and_executes_nothing() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 21);
    let before = node.server.stats();

    let mut stream = TcpStream::connect(node.addr()).unwrap();
    let (client_nonce, challenge) = say_hello(&mut stream, CLIENT);
    // The server proved itself: its proof checks out with the real secret.
    secret
        .verify_server_proof(
            &client_nonce,
            &challenge.server_nonce,
            SERVER,
            &challenge.server_proof,
        )
        .unwrap();
    let forged = ClusterSecret::generate().client_proof(
        &challenge.server_nonce,
        &client_nonce,
        CLIENT,
        CONFIG,
    );
    send(&mut stream, &Frame::Proof(forged)).unwrap();
    let frames = assert_closed_by_server(&mut stream);
    assert_eq!(frames, vec![Frame::Refused(Refusal::BadProof)]);
    // A request sent anyway goes nowhere.
    let write = request(
        1,
        Op::Write {
            addr: at(64),
            key: node.key(),
            data: vec![0xff; 8],
        },
    );
    let _ = send(&mut stream, &write);

    let stats = node.await_stats("the rejection", |s| s.connections_rejected == 1);
    assert_eq!(stats.requests_executed, before.requests_executed);
    assert_eq!(stats.connections_authenticated, 1);
    assert_eq!(node.word(64), 0);
    assert_serves(&node, &good, 0, 22);
}

#[test]
fn a_client_refuses_an_impostor_server() {
    let secret = ClusterSecret::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // The impostor answers the hello with a proof it cannot make correctly, then records every
    // frame the client sends afterwards.
    let impostor = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut inbox = Vec::new();
        let Some(Frame::Hello(hello)) = recv(&mut stream, &mut inbox) else {
            panic!("expected a hello");
        };
        assert_eq!(
            (hello.magic, hello.version, hello.node),
            (MAGIC, PROTOCOL_VERSION, CLIENT)
        );
        let server_nonce = auth::nonce();
        let server_proof =
            ClusterSecret::generate().server_proof(&hello.client_nonce, &server_nonce, SERVER);
        let challenge = Challenge {
            node: SERVER,
            server_nonce,
            server_proof,
        };
        send(&mut stream, &Frame::Challenge(challenge)).unwrap();
        let mut after = Vec::new();
        while let Some(frame) = recv(&mut stream, &mut inbox) {
            after.push(frame);
        }
        after
    });
    let transport = TcpTransport::new(CLIENT, CONFIG, secret);
    transport.add_peer(SERVER, addr);
    let key = AccessKey(7);
    let results = post(
        &transport,
        SERVER,
        vec![Op::Write {
            addr: at(0),
            key,
            data: vec![1; 8],
        }],
    );
    let [Err(OpError::Unreachable { reason, .. })] = &results[..] else {
        panic!("expected Unreachable: {results:?}");
    };
    assert!(reason.contains("impostor"), "{reason}");
    let after = impostor.join().unwrap();
    assert_eq!(
        after,
        Vec::new(),
        "the client sent a proof or a request to an impostor"
    );
}

#[test]
fn a_peer_at_the_wrong_address_is_detected() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = TcpTransport::new(CLIENT, CONFIG, secret);
    transport.add_peer(NodeId(3), node.addr());
    let results = post(&transport, NodeId(3), vec![Op::Notify]);
    let [Err(OpError::Unreachable { node: n, reason })] = &results[..] else {
        panic!("expected Unreachable: {results:?}");
    };
    assert_eq!(*n, NodeId(3));
    assert!(reason.contains("is n1, not n3"), "{reason}");
}

#[test]
fn an_oversize_frame_closes_only_its_connection() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 31);
    let bad = authenticated(&node, &secret);
    // A length just over the limit, and a little of the promised body.
    let mut bytes = (FRAME_BYTES_MAX + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[frame::kind::REQUEST; 64]);
    assert_rejected_while_serving_others(&node, &good, bad, &bytes, 1, 32);
}

#[test]
fn malformed_frames_unknown_kinds_and_wrong_directions_close_the_connection() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 41);
    let key = node.key();

    // Each would change the word at 512 if it were executed.
    let write = Op::Write {
        addr: at(512),
        key,
        data: vec![0xff; 8],
    };
    let mut unknown_op = frame::encode_to_vec(&request(1, write));
    unknown_op[frame::LEN_BYTES + 1 + 8] = 0xee;
    let mut unknown_kind = 8u32.to_le_bytes().to_vec();
    unknown_kind.extend_from_slice(&[0x7f; 8]);
    let mut short_cas = frame::encode_to_vec(&request(
        2,
        Op::Cas {
            addr: at(512),
            key,
            expected: 0,
            new: 9,
        },
    ));
    short_cas.truncate(short_cas.len() - 4);
    let short_len = short_cas.len() as u32 - 4;
    short_cas[..4].copy_from_slice(&short_len.to_le_bytes());
    let response = frame::encode_to_vec(&Frame::Response(Response {
        request_id: 1,
        result: Ok(Completion::Write),
    }));
    let hello_again = frame::encode_to_vec(&Frame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: CLIENT,
        config: CONFIG,
        client_nonce: auth::nonce(),
    }));
    let cases = [unknown_op, unknown_kind, short_cas, response, hello_again];
    for (index, bytes) in cases.iter().enumerate() {
        let bad = authenticated(&node, &secret);
        let index = index as u64;
        assert_rejected_while_serving_others(&node, &good, bad, bytes, index + 1, 100 + index);
    }
    assert_eq!(node.word(512), 0);
}

#[test]
fn a_peer_that_disconnects_mid_frame_executes_nothing() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 51);
    let closed_before = node.server.stats().connections_closed;
    let mut bad = authenticated(&node, &secret);
    let write = request(
        1,
        Op::Write {
            addr: at(4096),
            key: node.key(),
            data: vec![0xff; 4096],
        },
    );
    let bytes = frame::encode_to_vec(&write);
    bad.write_all(&bytes[..bytes.len() / 2]).unwrap();
    bad.shutdown(Shutdown::Both).unwrap();
    drop(bad);
    let stats = node.await_stats("the torn connection to close", |s| {
        s.connections_closed == closed_before + 1
    });
    assert_eq!(
        stats.connections_rejected, 0,
        "a hang-up is not a protocol violation"
    );
    assert!(
        (4096..8192).step_by(8).all(|offset| node.word(offset) == 0),
        "torn write landed"
    );
    assert_serves(&node, &good, 0, 52);
}

#[test]
fn garbage_before_the_handshake_is_rejected_and_executes_nothing() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    assert_serves(&node, &good, 0, 61);
    let key = node.key();
    let early_write = frame::encode_to_vec(&request(
        1,
        Op::Write {
            addr: at(64),
            key,
            data: vec![0xff; 8],
        },
    ));
    let mut bad_magic = frame::encode_to_vec(&Frame::Hello(Hello {
        magic: *b"ACRX",
        version: PROTOCOL_VERSION,
        node: CLIENT,
        config: CONFIG,
        client_nonce: auth::nonce(),
    }));
    bad_magic.extend_from_slice(&early_write);
    let mut big_handshake = (HANDSHAKE_FRAME_BYTES_MAX + 1).to_le_bytes().to_vec();
    big_handshake.push(frame::kind::HELLO);
    let cases: [Vec<u8>; 5] = [
        b"GET / HTTP/1.1\r\nHost: acre\r\n\r\n".to_vec(),
        vec![0xff; 64],
        early_write,
        bad_magic,
        big_handshake,
    ];
    for (index, bytes) in cases.iter().enumerate() {
        let bad = TcpStream::connect(node.addr()).unwrap();
        let index = index as u64;
        assert_rejected_while_serving_others(&node, &good, bad, bytes, index + 1, 200 + index);
    }
    assert_eq!(node.word(64), 0);
}

#[test]
fn a_newer_protocol_version_is_refused_with_a_reason() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut stream = TcpStream::connect(node.addr()).unwrap();
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION + 1,
        node: CLIENT,
        config: CONFIG,
        client_nonce: auth::nonce(),
    };
    send(&mut stream, &Frame::Hello(hello)).unwrap();
    assert_eq!(
        assert_closed_by_server(&mut stream),
        vec![Frame::Refused(Refusal::UnsupportedVersion)]
    );
}

#[test]
fn a_silent_peer_is_dropped_at_the_handshake_deadline() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    let start = Instant::now();
    let mut silent = TcpStream::connect(node.addr()).unwrap();
    // Half a hello, then nothing.
    let hello = frame::encode_to_vec(&Frame::Hello(Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        node: CLIENT,
        config: CONFIG,
        client_nonce: auth::nonce(),
    }));
    silent.write_all(&hello[..10]).unwrap();
    assert_serves(&node, &good, 0, 71);
    assert_eq!(assert_closed_by_server(&mut silent), Vec::new());
    let waited = start.elapsed();
    assert!(
        waited >= auth::HANDSHAKE_DEADLINE,
        "closed after {waited:?}"
    );
    assert!(
        waited < auth::HANDSHAKE_DEADLINE + Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(node.server.stats().connections_rejected, 1);
    assert_serves(&node, &good, 0, 72);
}

/// docs/failures.md#clock: the handshake's deadline is on the node's clock. A peer that
/// accepts and then says nothing is given up on as soon as the clock passes the deadline, here
/// at once when it jumps, not after the deadline's length of real time.
#[test]
fn the_client_handshake_deadline_is_on_the_nodes_clock() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
    let (clock, control) = Clock::controlled();
    let secret = ClusterSecret::generate();
    let connecting = {
        let clock = clock.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let outcome = client::connect(&clock, CLIENT, CONFIG, &secret, SERVER, addr);
            (outcome.err(), start.elapsed())
        })
    };
    let _silent = holder.join().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!connecting.is_finished(), "the handshake is still waiting");
    control.jump_forward(auth::HANDSHAKE_DEADLINE * 2);
    let (error, waited) = connecting.join().unwrap();
    assert!(
        matches!(error, Some(HandshakeError::Timeout { .. })),
        "{error:?}"
    );
    assert!(
        waited < auth::HANDSHAKE_DEADLINE / 2,
        "gave up after {waited:?} of real time"
    );
}

#[test]
fn pipelined_batches_from_many_threads_all_complete_correctly() {
    const THREADS: u32 = 8;
    const BATCHES: u64 = 40;
    const WORDS: u32 = 32;
    let secret = ClusterSecret::generate();
    let node = Arc::new(Node::start(SERVER, &secret));
    // Two transports of two nodes (two connections), four threads on each.
    let transports = [
        Arc::new(node.transport(&secret)),
        Arc::new(node.transport_as(RAW_CLIENT, &secret)),
    ];
    let key = node.key();
    let workers: Vec<_> = (0..THREADS)
        .map(|thread| {
            let transport = transports[thread as usize % 2].clone();
            std::thread::spawn(move || {
                let base = thread * WORDS * 8;
                let mut in_flight = Vec::new();
                for batch in 0..BATCHES {
                    let value =
                        |word: u32| (u64::from(thread) << 48) | (batch << 16) | u64::from(word);
                    // Every word written, then read back, then CAS'd from the written value:
                    // correct only if the batch executes in order.
                    let mut ops = Vec::new();
                    for word in 0..WORDS {
                        let data = value(word).to_le_bytes().to_vec();
                        ops.push(Op::Write {
                            addr: at(base + word * 8),
                            key,
                            data,
                        });
                    }
                    ops.push(Op::Read {
                        addr: at(base),
                        key,
                        len: WORDS * 8,
                    });
                    ops.push(Op::Cas {
                        addr: at(base),
                        key,
                        expected: value(0),
                        new: value(0) + 1,
                    });
                    let expected_read: Vec<u8> = (0..WORDS)
                        .flat_map(|word| value(word).to_le_bytes())
                        .collect();
                    // Keep a few batches in flight at once before waiting for the oldest.
                    in_flight.push((transport.post(SERVER, ops), expected_read, value(0)));
                    if in_flight.len() == 4 || batch == BATCHES - 1 {
                        for (pending, expected_read, first) in in_flight.drain(..) {
                            let results = pending.wait();
                            assert_eq!(results.len(), WORDS as usize + 2);
                            assert!(
                                results[..WORDS as usize]
                                    .iter()
                                    .all(|r| *r == Ok(Completion::Write))
                            );
                            assert_eq!(
                                results[WORDS as usize],
                                Ok(Completion::Read(expected_read))
                            );
                            assert_eq!(
                                results[WORDS as usize + 1],
                                Ok(Completion::Cas { previous: first })
                            );
                        }
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    for thread in 0..THREADS {
        let base = thread * WORDS * 8;
        let last = (u64::from(thread) << 48) | ((BATCHES - 1) << 16);
        assert_eq!(node.word(base), last + 1, "thread {thread}");
        assert_eq!(node.word(base + 8), last | 1, "thread {thread}");
    }
    let stats = node.server.stats();
    assert_eq!(stats.connections_accepted, 2);
    assert_eq!(
        stats.requests_executed,
        u64::from(THREADS) * BATCHES * (u64::from(WORDS) + 2)
    );
}

#[test]
fn waiters_on_one_connection_hand_the_reading_on_and_none_is_stranded() {
    // Many threads on one connection: each wait either reads for everyone or parks until the
    // reader completes it or hands the role on. Some threads poll instead of waiting, and some
    // drop batches unwaited, whose responses the others must read past.
    const THREADS: u32 = 12;
    const ROUNDS: u32 = 300;
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = Arc::new(node.transport(&secret));
    let key = node.key();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let transport = transport.clone();
            scope.spawn(move || {
                let offset = thread * 8;
                for round in 0..ROUNDS {
                    let value = (u64::from(thread) << 32) | u64::from(round);
                    let ops = vec![
                        Op::Write {
                            addr: at(offset),
                            key,
                            data: value.to_le_bytes().to_vec(),
                        },
                        Op::Read {
                            addr: at(offset),
                            key,
                            len: 8,
                        },
                    ];
                    let mut pending = transport.post(SERVER, ops);
                    if round % 7 == 3 {
                        continue; // dropped unwaited
                    }
                    let results = match thread % 3 {
                        0 => loop {
                            if let Some(results) = pending.poll() {
                                break results;
                            }
                            assert!(start.elapsed() < PATIENCE, "thread {thread} stranded");
                            std::thread::yield_now();
                        },
                        _ => pending.wait(),
                    };
                    let expected = vec![
                        Ok(Completion::Write),
                        Ok(Completion::Read(value.to_le_bytes().to_vec())),
                    ];
                    assert_eq!(results, expected, "thread {thread} round {round}");
                }
            });
        }
    });
    assert!(start.elapsed() < PATIENCE, "took {:?}", start.elapsed());
    assert_eq!(node.server.stats().connections_accepted, 1);
}

#[test]
fn a_caller_that_only_polls_gets_its_completions() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    let ops = (0..8).map(|_| Op::Notify).collect();
    let mut pending = transport.post(SERVER, ops);
    let start = Instant::now();
    // Nobody waits, so the polls themselves must read what has arrived.
    let results = loop {
        if let Some(results) = pending.poll() {
            break results;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "polls never completed the batch"
        );
        std::thread::yield_now();
    };
    assert_eq!(results, vec![Ok(Completion::Notify); 8]);
    assert_eq!(pending.poll(), None, "handed out once");
}

#[test]
fn a_post_beyond_the_inflight_limit_reads_completions_to_make_room() {
    // Three batches nobody waits for yet: the third does not fit beside the first two, and
    // the posting thread is the only one that could read their responses.
    const BATCH_OPS: usize = client::INFLIGHT_OPS_MAX / 2;
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    let start = Instant::now();
    let pendings: Vec<_> = (0..3)
        .map(|_| transport.post(SERVER, vec![Op::Notify; BATCH_OPS]))
        .collect();
    for pending in pendings {
        assert_eq!(pending.wait(), vec![Ok(Completion::Notify); BATCH_OPS]);
    }
    assert!(start.elapsed() < PATIENCE, "took {:?}", start.elapsed());
}

#[test]
fn a_post_whose_write_stalls_reads_the_responses_itself() {
    // 64 MiB of READ responses nobody waits for make the server stop reading the connection
    // (its backlog limit is 16 MiB); then an 8 MiB WRITE fills the socket. Only the posting
    // thread can drain the responses that let the server read again.
    const READS: usize = 8;
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let big = Arc::new(Region::anonymous(RegionId(1), u64::from(OP_BYTES_MAX)).unwrap());
    node.memory.register(big.clone()).unwrap();
    let transport = node.transport(&secret);
    let (addr, key) = (Addr::new(RegionId(1), 0), big.key());
    let start = Instant::now();
    let mut pendings: Vec<_> = (0..READS)
        .map(|_| {
            let read = Op::Read {
                addr,
                key,
                len: OP_BYTES_MAX,
            };
            transport.post(SERVER, vec![read])
        })
        .collect();
    let data = vec![7u8; OP_BYTES_MAX as usize];
    pendings.push(transport.post(SERVER, vec![Op::Write { addr, key, data }]));
    let results: Vec<OpResult> = pendings.into_iter().flat_map(|p| p.wait()).collect();
    assert!(
        start.elapsed() < client::WRITE_STALL_MAX,
        "the write stalled until the limit: {:?}",
        start.elapsed()
    );
    assert!(
        results[..READS]
            .iter()
            .all(|r| matches!(r, Ok(Completion::Read(d)) if d.len() == OP_BYTES_MAX as usize))
    );
    assert_eq!(results[READS], Ok(Completion::Write));
    assert_eq!(
        big.words()[0].load(Ordering::Acquire),
        u64::from_le_bytes([7; 8])
    );
}

/// Plays SERVER's side of the handshake on `stream` for CLIENT in CONFIG, checking the
/// client's proof.
fn accept_as_server(stream: &mut TcpStream, inbox: &mut Vec<u8>, secret: &ClusterSecret) {
    let Some(Frame::Hello(hello)) = recv(stream, inbox) else {
        panic!("expected a hello");
    };
    let server_nonce = auth::nonce();
    let server_proof = secret.server_proof(&hello.client_nonce, &server_nonce, SERVER);
    send(
        stream,
        &Frame::Challenge(Challenge {
            node: SERVER,
            server_nonce,
            server_proof,
        }),
    )
    .unwrap();
    let Some(Frame::Proof(proof)) = recv(stream, inbox) else {
        panic!("expected a proof");
    };
    secret
        .verify_client_proof(&server_nonce, &hello.client_nonce, CLIENT, CONFIG, &proof)
        .unwrap();
}

/// A peer that authenticates, reads requests and never answers (a paused process), while this
/// node moves to a newer configuration: its operations fail as unreachable soon after the move,
/// not at the silence limit of seconds.
#[test]
fn a_silent_peer_s_operations_fail_soon_after_this_node_moves_to_a_newer_configuration() {
    let secret = ClusterSecret::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_secret = secret.clone();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut inbox = Vec::new();
        accept_as_server(&mut stream, &mut inbox, &server_secret);
        let Some(Frame::Request(_)) = recv(&mut stream, &mut inbox) else {
            panic!("expected a request");
        };
        // Silent, with the connection open, until the test is over.
        let _ = finished.recv();
    });
    let transport = Arc::new(TcpTransport::new(CLIENT, CONFIG, secret));
    transport.add_peer(SERVER, addr);
    let poster = {
        let transport = transport.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            (post(&transport, SERVER, vec![Op::Notify]), start.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let moved = Instant::now();
    transport.set_configuration(CONFIG + 1);
    let (results, _) = poster.join().unwrap();
    let after_move = moved.elapsed();
    done.send(()).unwrap();
    peer.join().unwrap();
    let Err(OpError::Unreachable { node, reason }) = &results[0] else {
        panic!("expected Unreachable: {results:?}");
    };
    assert_eq!(*node, SERVER);
    assert!(reason.contains("moved from configuration"), "{reason}");
    // The peer was silent for longer than MOVED_SILENCE_MAX before the move: its operations
    // fail at the reader's next look, well before the silence limit.
    assert!(
        after_move < Duration::from_secs(2) && after_move < RESPONSE_SILENCE_MAX,
        "failed {after_move:?} after the move"
    );
}

#[test]
fn a_broken_connection_fails_its_inflight_ops() {
    let secret = ClusterSecret::generate();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A peer with the secret that takes the requests, answers the first, and hangs up.
    let server_secret = secret.clone();
    let peer = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut inbox = Vec::new();
        accept_as_server(&mut stream, &mut inbox, &server_secret);
        let mut request_ids = Vec::new();
        while request_ids.len() < 3 {
            let Some(Frame::Request(request)) = recv(&mut stream, &mut inbox) else {
                panic!("expected three requests");
            };
            request_ids.push(request.request_id);
        }
        let answer = Response {
            request_id: request_ids[0],
            result: Ok(Completion::Notify),
        };
        send(&mut stream, &Frame::Response(answer)).unwrap();
        stream.shutdown(Shutdown::Both).unwrap();
    });
    let transport = TcpTransport::new(CLIENT, CONFIG, secret);
    transport.add_peer(SERVER, addr);
    let start = Instant::now();
    let results = post(&transport, SERVER, vec![Op::Notify, Op::Notify, Op::Notify]);
    peer.join().unwrap();
    assert!(
        start.elapsed() < RESPONSE_SILENCE_MAX,
        "failed by the hang-up, not the timeout"
    );
    assert_eq!(results[0], Ok(Completion::Notify));
    for result in &results[1..] {
        let Err(OpError::Unreachable { node, reason }) = result else {
            panic!("expected Unreachable: {results:?}");
        };
        assert_eq!(*node, SERVER);
        assert!(reason.contains("closed the connection"), "{reason}");
    }
}

#[test]
fn after_a_server_restart_the_next_post_reconnects() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let transport = node.transport(&secret);
    assert_serves(&node, &transport, 0, 81);
    let Node {
        memory,
        region,
        server,
    } = node;
    let addr = server.local_addr();
    server.stop();
    // Down: posts fail (once the receiver has seen the hang-up, by failing to reconnect).
    let start = Instant::now();
    loop {
        let results = post(&transport, SERVER, vec![Op::Notify]);
        if let [Err(OpError::Unreachable { .. })] = &results[..] {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "still reachable after stop: {results:?}"
        );
    }
    let results = post(&transport, SERVER, vec![Op::Notify]);
    let [Err(OpError::Unreachable { reason, .. })] = &results[..] else {
        panic!("expected Unreachable while down: {results:?}");
    };
    assert!(
        reason.contains(&format!(
            "gave up after {} attempts",
            client::CONNECT_ATTEMPTS_MAX
        )),
        "{reason}"
    );
    // Up again on the same address: the next post reconnects.
    let server = NicServer::start(addr, memory.clone(), secret.clone(), members()).unwrap();
    let node = Node {
        memory,
        region,
        server,
    };
    assert_serves(&node, &transport, 0, 82);
    assert_eq!(node.server.stats().connections_authenticated, 1);
}

/// How many threads of this process have the given name.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|entry| {
            let comm = std::fs::read_to_string(entry.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|comm| comm.trim_end() == name)
        })
        .count()
}

/// CPU ticks (user + system) a thread of this process with the given name has used.
fn thread_cpu_ticks(name: &str) -> u64 {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = entry.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        // Fields 14 and 15 of stat(5), counted from the state (field 3).
        found.push(fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap());
    }
    assert_eq!(found.len(), 1, "threads named {name}");
    found[0]
}

#[test]
fn an_idle_connection_uses_no_cpu() {
    let secret = ClusterSecret::generate();
    let node = Node::start(NodeId(77), &secret);
    let transport = TcpTransport::new(CLIENT, CONFIG, secret);
    transport.add_peer(NodeId(77), node.addr());
    assert_eq!(
        post(&transport, NodeId(77), vec![Op::Notify]),
        vec![Ok(Completion::Notify)]
    );
    let nic_before = thread_cpu_ticks("acre-nic-n77");
    std::thread::sleep(Duration::from_millis(500));
    let nic_ticks = thread_cpu_ticks("acre-nic-n77") - nic_before;
    // A spinning thread would use ~50 ticks (10 ms each) in 500 ms.
    assert!(nic_ticks <= 2, "the idle NIC thread used {nic_ticks} ticks");
    // The client side has no thread of its own: waiters read their completions themselves.
    assert_eq!(threads_named("acre-rx-n77"), 0);
}

/// A WRITE of `tag` at `offset`, as a raw REQUEST frame.
fn raw_write(node: &Node, request_id: u64, offset: u32, tag: u64) -> Frame {
    request(
        request_id,
        Op::Write {
            addr: at(offset),
            key: node.key(),
            data: tag.to_le_bytes().to_vec(),
        },
    )
}

/// The fence (issue 11 item 3): a peer's older connection executes nothing once a newer one of
/// the same node has authenticated, so the frames of a batch its sender gave up on (still in the
/// socket's buffers while the server was paused) cannot land after the sender moved on.
#[test]
fn a_newer_connection_of_a_node_fences_its_older_one() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut older = authenticated_as(CLIENT, &node, &secret);
    send(&mut older, &raw_write(&node, 1, 64, 11)).unwrap();
    let mut inbox = Vec::new();
    assert!(matches!(
        recv(&mut older, &mut inbox),
        Some(Frame::Response(_))
    ));
    assert_eq!(node.word(64), 11);

    let newer = node.transport(&secret);
    assert_serves(&node, &newer, 0, 31);
    node.await_stats("the fence", |s| s.connections_fenced == 1);
    // What the older connection sends now is never executed: it was closed.
    let _ = send(&mut older, &raw_write(&node, 2, 64, 12));
    assert_eq!(assert_closed_by_server(&mut older), Vec::new());
    assert_serves(&node, &newer, 0, 32);
    assert_eq!(node.word(64), 11);
}

/// A connection whose handshake finishes after a newer one of the same node authenticated is
/// the stale one: it is refused, and the newer one keeps serving.
#[test]
fn an_older_connection_that_authenticates_late_is_refused() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut older = TcpStream::connect(node.addr()).unwrap();
    let (client_nonce, challenge) = say_hello(&mut older, CLIENT);
    let newer = node.transport(&secret);
    assert_serves(&node, &newer, 0, 41);

    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, CLIENT, CONFIG);
    send(&mut older, &Frame::Proof(proof)).unwrap();
    let _ = send(&mut older, &raw_write(&node, 1, 64, 13));
    assert_eq!(assert_closed_by_server(&mut older), Vec::new());
    node.await_stats("the refusal", |s| s.connections_fenced == 1);
    assert_eq!(node.word(64), 0);
    assert_serves(&node, &newer, 0, 42);
}

/// A READ of the word at `offset` by `transport` sees `expected`.
fn assert_reads(node: &Node, transport: &TcpTransport, offset: u32, expected: u64) {
    let read = Op::Read {
        addr: at(offset),
        key: node.key(),
        len: 8,
    };
    assert_eq!(
        post(transport, SERVER, vec![read]),
        vec![Ok(Completion::Read(expected.to_le_bytes().to_vec()))]
    );
}

/// Observers (status probes) may run several at once under one id: they fence nobody.
#[test]
fn observers_do_not_fence_each_other() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let member = node.transport(&secret);
    assert_serves(&node, &member, 0, 51);
    let observer = || {
        let transport = TcpTransport::new(NodeId::OBSERVER, CONFIG, secret.clone());
        transport.add_peer(SERVER, node.addr());
        assert_reads(&node, &transport, 0, 51 + 7);
        transport
    };
    let first = observer();
    let second = observer();
    assert_reads(&node, &first, 0, 51 + 7);
    assert_reads(&node, &second, 0, 51 + 7);
    assert_eq!(node.server.stats().connections_fenced, 0);
}

/// An observer is no member: it may READ, and anything else it asks is answered with
/// `NotMember` and not executed, while its connection keeps serving its reads.
#[test]
fn an_observer_may_only_read() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let member = node.transport(&secret);
    assert_serves(&node, &member, 0, 55);
    let observer = node.transport_as(NodeId::OBSERVER, &secret);
    let key = node.key();
    let results = post(
        &observer,
        SERVER,
        vec![
            Op::Write {
                addr: at(0),
                key,
                data: 1u64.to_le_bytes().to_vec(),
            },
            Op::Cas {
                addr: at(0),
                key,
                expected: 55 + 7,
                new: 2,
            },
            Op::Persist {
                addr: at(0),
                key,
                len: 8,
            },
            Op::Notify,
            Op::Read {
                addr: at(0),
                key,
                len: 8,
            },
        ],
    );
    let refused = Err(OpError::NotMember {
        node: SERVER,
        config: CONFIG,
    });
    let read = Ok(Completion::Read((55u64 + 7).to_le_bytes().to_vec()));
    assert_eq!(
        results,
        vec![
            refused.clone(),
            refused.clone(),
            refused.clone(),
            refused,
            read
        ]
    );
    assert_eq!(node.word(0), 55 + 7);
    let stats = node.server.stats();
    assert_eq!(stats.requests_refused, 4, "{stats:?}");
    assert_eq!(stats.connections_closed, 0, "{stats:?}");
    assert_reads(&node, &observer, 0, 55 + 7);
    assert_serves(&node, &member, 0, 56);
}

/// FaRM SOSP'15 §5.1: a node whose lease from the CM has lapsed serves nobody. Its NIC thread
/// answers a member's operation with `LeaseExpired` without executing it, and closes the
/// connection behind it, so nothing later of the batch executes (the other operations fail
/// unexecuted); an observer may still read, and once the lease is granted again the member is
/// served on a new connection. A node that never asked for a lease is served throughout (the
/// other tests).
#[test]
fn a_node_whose_lease_lapsed_refuses_members_operations() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let member = node.transport(&secret);
    let observer = node.transport_as(NodeId::OBSERVER, &secret);
    assert_serves(&node, &member, 0, 70);
    let before = node.word(0);

    // Asked a CM, granted nothing yet: shut.
    node.memory.lease_gate().ask();
    let key = node.key();
    let results = post(
        &member,
        SERVER,
        vec![
            Op::Read {
                addr: at(0),
                key,
                len: 8,
            },
            Op::Write {
                addr: at(0),
                key,
                data: 1u64.to_le_bytes().to_vec(),
            },
            Op::Cas {
                addr: at(0),
                key,
                expected: before,
                new: 2,
            },
        ],
    );
    assert_eq!(results[0], Err(OpError::LeaseExpired { node: SERVER }));
    for result in &results[1..] {
        assert!(result.is_err(), "{results:?}");
    }
    assert_eq!(
        node.word(0),
        before,
        "nothing of the refused batch executed"
    );
    assert_reads(&node, &observer, 0, before);

    // Granted, and lapsed again: shut, on the connection dialled anew.
    let now = node.memory.clock().now();
    node.memory.lease_gate().extend_to(now);
    let write = |value: u64| Op::Write {
        addr: at(0),
        key,
        data: value.to_le_bytes().to_vec(),
    };
    let results = post(&member, SERVER, vec![write(3), write(4)]);
    assert_eq!(results[0], Err(OpError::LeaseExpired { node: SERVER }));
    assert!(results[1].is_err(), "{results:?}");
    assert_eq!(node.word(0), before);

    // Renewed: served again.
    let now = node.memory.clock().now();
    node.memory
        .lease_gate()
        .extend_to(now + Duration::from_secs(3600));
    assert_serves(&node, &member, 0, 71);
    let stats = node.server.stats();
    assert_eq!(stats.requests_lease_refused, 2, "{stats:?}");
}

/// As above, with the older connection silent until the newer one has authenticated: the fence
/// cannot close it then (it has not said whose it is), so its late handshake is what is refused.
#[test]
fn an_older_connection_that_says_hello_late_is_refused() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut older = TcpStream::connect(node.addr()).unwrap();
    node.await_stats("the older connection", |s| s.connections_accepted == 1);
    let newer = node.transport(&secret);
    assert_serves(&node, &newer, 0, 61);
    assert_eq!(node.server.stats().connections_fenced, 0);

    let (client_nonce, challenge) = say_hello(&mut older, CLIENT);
    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, CLIENT, CONFIG);
    send(&mut older, &Frame::Proof(proof)).unwrap();
    let _ = send(&mut older, &raw_write(&node, 1, 64, 14));
    assert_eq!(assert_closed_by_server(&mut older), Vec::new());
    node.await_stats("the refusal", |s| s.connections_fenced == 1);
    assert_eq!(node.word(64), 0);
    assert_serves(&node, &newer, 0, 62);
}

/// A node that is not a member of the server's configuration (docs/failures.md#fencing).
const OUTSIDER: NodeId = NodeId(9);

/// A non-member's handshake is refused with a typed error that retrying cannot change; its
/// posts fail with `NotMember` and execute nothing, while members are served.
#[test]
fn a_non_member_is_refused_at_the_handshake_and_executes_nothing() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let member = node.transport(&secret);
    assert_serves(&node, &member, 0, 91);

    let error = client::connect(
        &Clock::system(),
        OUTSIDER,
        CONFIG,
        &secret,
        SERVER,
        node.addr(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            HandshakeError::Refused {
                refusal: Refusal::NotMember { config: CONFIG },
                ..
            }
        ),
        "{error}"
    );
    assert!(!error.is_transient(), "{error}");
    assert!(
        error
            .to_string()
            .contains("not a member of its configuration 1"),
        "{error}"
    );

    let outsider = node.transport_as(OUTSIDER, &secret);
    let executed_before = node.server.stats().requests_executed;
    let results = post(&outsider, SERVER, vec![raw_write_op(&node, 64, 92)]);
    assert_eq!(
        results,
        vec![Err(OpError::NotMember {
            node: SERVER,
            config: CONFIG
        })]
    );
    // The refusal reaches the sender just before the server counts it.
    let stats = node.await_stats("the refusals", |s| s.connections_not_member == 2);
    assert_eq!(stats.requests_executed, executed_before, "{stats:?}");
    assert_eq!(node.word(64), 0);
    // One attempt each: a refusal is not retried.
    assert_eq!(stats.connections_accepted, 3, "{stats:?}");
    assert_serves(&node, &member, 0, 93);
}

/// A WRITE of `tag` at `offset`.
fn raw_write_op(node: &Node, offset: u32, tag: u64) -> Op {
    Op::Write {
        addr: at(offset),
        key: node.key(),
        data: tag.to_le_bytes().to_vec(),
    }
}

/// A configuration change forced by the test removes RAW_CLIENT and node 4: RAW_CLIENT's live
/// connection gets REFUSED(not a member) behind the response to what it executed and is
/// closed, and what it sends after executes nothing; node 4's transport's next post fails with
/// `NotMember`; the member that moved to the new configuration keeps being served on the
/// connection it had.
#[test]
fn a_configuration_change_closes_a_removed_nodes_connection() {
    let secret = ClusterSecret::generate();
    const REMOVED: NodeId = NodeId(4);
    let node = Node::start_with(
        SERVER,
        &secret,
        Membership::new(CONFIG, [SERVER, CLIENT, RAW_CLIENT, REMOVED]),
    );
    let member = node.transport(&secret);
    member.set_configuration(CONFIG + 1);
    assert_serves(&node, &member, 0, 101);
    let removed = node.transport_as(REMOVED, &secret);
    assert_serves(&node, &removed, 8, 102);
    let mut raw = authenticated(&node, &secret);
    send(&mut raw, &raw_write(&node, 1, 64, 103)).unwrap();
    let mut inbox = Vec::new();
    assert!(matches!(
        recv(&mut raw, &mut inbox),
        Some(Frame::Response(_))
    ));
    let before = node.server.stats();

    node.server
        .set_membership(Membership::new(CONFIG + 1, [SERVER, CLIENT]));
    assert_eq!(node.server.config(), CONFIG + 1);
    // Both removed nodes' connections were closed before set_membership returned.
    let after = node.server.stats();
    assert_eq!(
        after.connections_not_member,
        before.connections_not_member + 2,
        "{after:?}"
    );
    assert_eq!(
        assert_closed_by_server(&mut raw),
        vec![Frame::Refused(Refusal::NotMember { config: CONFIG + 1 })]
    );
    let _ = send(&mut raw, &raw_write(&node, 2, 64, 104));
    let results = post(&removed, SERVER, vec![raw_write_op(&node, 64, 105)]);
    let not_member = Err(OpError::NotMember {
        node: SERVER,
        config: CONFIG + 1,
    });
    assert_eq!(results, vec![not_member.clone()]);
    // And so is every later post: the refusal is not transient.
    assert_eq!(
        post(&removed, SERVER, vec![raw_write_op(&node, 64, 106)]),
        vec![not_member]
    );
    assert_eq!(node.word(64), 103);
    assert_eq!(node.word(8), 102 + 7);
    assert_serves(&node, &member, 0, 107);
    let stats = node.server.stats();
    assert_eq!(
        stats.connections_authenticated, after.connections_authenticated,
        "the member kept its connection: {stats:?}"
    );
}

/// A member still bound to the older configuration is refused once the server adopts the new
/// one (it has not learned of it), and served again once it moves to it.
#[test]
fn a_sender_bound_to_an_older_configuration_is_refused_after_the_change() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let stale = node.transport(&secret);
    assert_serves(&node, &stale, 0, 111);

    node.server
        .set_membership(Membership::new(CONFIG + 1, [SERVER, CLIENT, RAW_CLIENT]));
    let not_member = Err(OpError::NotMember {
        node: SERVER,
        config: CONFIG + 1,
    });
    assert_eq!(
        post(&stale, SERVER, vec![raw_write_op(&node, 64, 112)]),
        vec![not_member]
    );
    let error = client::connect(
        &Clock::system(),
        CLIENT,
        CONFIG,
        &secret,
        SERVER,
        node.addr(),
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            HandshakeError::Refused {
                refusal: Refusal::NotMember { config: 2 },
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(node.word(64), 0);

    stale.set_configuration(CONFIG + 1);
    assert_serves(&node, &stale, 0, 113);
}

/// A connection whose HELLO was admitted but whose node is removed before its PROOF arrives is
/// refused after the proof, and executes nothing.
#[test]
fn a_node_removed_during_its_handshake_is_refused_after_its_proof() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let mut late = TcpStream::connect(node.addr()).unwrap();
    let (client_nonce, challenge) = say_hello(&mut late, RAW_CLIENT);
    node.server
        .set_membership(Membership::new(CONFIG + 1, [SERVER, CLIENT]));

    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, RAW_CLIENT, CONFIG);
    send(&mut late, &Frame::Proof(proof)).unwrap();
    let _ = send(&mut late, &raw_write(&node, 1, 64, 121));
    assert_eq!(
        assert_closed_by_server(&mut late),
        vec![Frame::Refused(Refusal::NotMember { config: CONFIG + 1 })]
    );
    assert_eq!(node.word(64), 0);
    assert_eq!(node.server.stats().requests_executed, 0);
}

#[test]
#[should_panic(expected = "configuration ids only grow")]
fn a_membership_with_an_older_configuration_id_is_a_programmer_error() {
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    node.server
        .set_membership(Membership::new(CONFIG, [SERVER]));
}

/// A hang-up that arrives with the last bytes, while the NIC thread is busy with another
/// connection, is seen: the thread reads a connection until it would block or sees the end.
/// (Stopping at a short read, as if it meant "empty", missed the end that came with it, and
/// with edge-triggered readiness no later event reported it: the connection was never closed.)
#[test]
fn a_hang_up_that_arrives_with_the_last_bytes_is_seen() {
    const ROUNDS: usize = 20;
    let secret = ClusterSecret::generate();
    let node = Node::start(SERVER, &secret);
    let good = node.transport(&secret);
    let big_reads: Vec<Op> = (0..32)
        .map(|_| Op::Read {
            addr: at(0),
            key: node.key(),
            len: 512 << 10,
        })
        .collect();
    for round in 0..ROUNDS {
        let closed_before = node.server.stats().connections_closed;
        let mut bad = authenticated(&node, &secret);
        // Keep the NIC thread busy, so that the bad peer's bytes and its hang-up arrive
        // before it looks at that connection again.
        let busy = good.post(SERVER, big_reads.clone());
        let write = raw_write(&node, 1, 4096, 0xff);
        let bytes = frame::encode_to_vec(&write);
        bad.write_all(&bytes[..bytes.len() / 2]).unwrap();
        bad.shutdown(Shutdown::Both).unwrap();
        drop(bad);
        assert!(busy.wait().iter().all(Result::is_ok));
        node.await_stats(&format!("round {round}: the hang-up"), |s| {
            s.connections_closed == closed_before + 1
        });
    }
    assert_eq!(node.word(4096), 0, "a torn write landed");
}

/// A post that is connecting to a peer that refuses connections (a dead node) gives up as soon
/// as this node moves to another configuration, and so does a post waiting behind it for the
/// same peer: both belong to the old configuration, and their callers run again in the new one,
/// which may send them elsewhere. Before, they went through every attempt and pause (150 ms
/// each, one after the other), which delayed a dead primary's region over tcp by 100-250 ms
/// after it was active again (docs/failures.md#clients-and-the-configuration).
#[test]
fn connect_attempts_stop_when_the_configuration_moves() {
    // A port nobody listens on: connects are refused at once.
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let (clock, manual) = Clock::manual(crate::clock::Time::from_nanos(1));
    let mut transport = TcpTransport::new(CLIENT, CONFIG, ClusterSecret::generate());
    transport.set_clock(clock);
    transport.add_peer(SERVER, refused);
    let transport = Arc::new(transport);
    let (done, finished) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (transport, done) = (transport.clone(), done.clone());
        std::thread::spawn(move || {
            let _ = done.send(transport.post(SERVER, vec![Op::Notify]).wait());
        });
    }
    // The manual clock stands still: one post waits in its pause after the first refusal, the
    // other behind it for the peer.
    std::thread::sleep(Duration::from_millis(100));
    transport.set_configuration(CONFIG + 1);
    // Less than the first pause (CONNECT_BACKOFF, 50 ms): without the move both would still
    // be waiting.
    for _ in 0..5 {
        manual.advance(Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(10));
    }
    for _ in 0..2 {
        let results = finished
            .recv_timeout(PATIENCE)
            .expect("a post went on connecting after the configuration moved");
        let [Err(OpError::Unreachable { reason, .. })] = &results[..] else {
            panic!("expected Unreachable: {results:?}");
        };
        assert!(
            reason.contains(&format!(
                "moved from configuration {CONFIG} to {}",
                CONFIG + 1
            )),
            "{reason}"
        );
    }
}
