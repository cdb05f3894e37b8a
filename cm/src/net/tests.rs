//! Loopback tests of the CM links: delivery and order, restarts, refusals of bad peers and bad
//! bytes, loss without blocking, and shutdown.

use super::frame::{self, Challenge, HEADER_BYTES, Hello, Kind};
use super::*;
use std::io::Read;
use std::net::TcpListener;

/// How long a test waits for something that should happen within milliseconds on loopback;
/// generous because the machine may be busy building.
const PATIENCE: Duration = Duration::from_secs(8);
/// How often a waiting test looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("an address")
}

fn endpoint(node: u16, secret: &ClusterSecret) -> (Links, Inbox) {
    Links::bind(NodeId(node), loopback(), secret.clone()).expect("bind on loopback")
}

/// An address where nothing listens: a port the OS handed out and took back.
fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind(loopback()).expect("bind on loopback");
    listener.local_addr().expect("an address")
}

fn link(a: &Links, b: &Links) {
    a.add_peer(b.me(), b.local_addr());
    b.add_peer(a.me(), a.local_addr());
}

/// Waits until `condition` holds, failing the test after [`PATIENCE`] with `what`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn recv(inbox: &Inbox) -> Incoming {
    inbox
        .recv_timeout(PATIENCE)
        .expect("a message within the test's patience")
}

fn message(sender: u16, index: u32) -> Vec<u8> {
    let mut bytes = sender.to_le_bytes().to_vec();
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes
}

/// A raw client that completes the handshake as `me` (with the links' secret derived from the
/// cluster secret `secret`, as `Links` does) and may then write anything.
fn raw_client(server: &Links, me: NodeId, secret: &ClusterSecret) -> Result<TcpStream, LinkError> {
    let mut stream = TcpStream::connect(server.local_addr())?;
    stream.set_read_timeout(Some(PATIENCE))?;
    handshake::connect(&mut stream, me, server.me(), &secret.derive(SECRET_LABEL))?;
    Ok(stream)
}

/// Reads until the server closes the connection; fails if it sends anything or stays open.
fn assert_closed_by_server(stream: &mut TcpStream) {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("the server sent {byte:?} instead of closing"),
        Err(e) => assert!(
            e.kind() == io::ErrorKind::ConnectionReset,
            "the server did not close the connection: {e}"
        ),
    }
}

#[test]
fn two_endpoints_exchange_messages_in_both_directions_in_order() {
    const COUNT: u32 = 300;
    let secret = ClusterSecret::generate();
    let (a, a_inbox) = endpoint(1, &secret);
    let (b, b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    for index in 0..COUNT {
        a.send(NodeId(2), message(1, index)).unwrap();
        b.send(NodeId(1), message(2, index)).unwrap();
    }
    for index in 0..COUNT {
        assert_eq!(
            recv(&b_inbox),
            Incoming {
                from: NodeId(1),
                payload: message(1, index)
            }
        );
        assert_eq!(
            recv(&a_inbox),
            Incoming {
                from: NodeId(2),
                payload: message(2, index)
            }
        );
    }
    // The sender counts a batch after writing it, which may be after it arrived.
    wait_until("a counted what it sent", || {
        a.stats().sent_count == u64::from(COUNT)
    });
    assert_eq!(b.stats().delivered_count, u64::from(COUNT));
    assert_eq!(a.stats().connected_count, 1);
    assert_eq!(b.stats().accepted_count, 1);
}

#[test]
fn three_endpoints_keep_each_senders_order() {
    const COUNT: u32 = 100;
    let secret = ClusterSecret::generate();
    let endpoints: Vec<(Links, Inbox)> = (1..=3).map(|node| endpoint(node, &secret)).collect();
    for (i, (a, _)) in endpoints.iter().enumerate() {
        for (b, _) in &endpoints[i + 1..] {
            link(a, b);
        }
    }
    for index in 0..COUNT {
        for (links, _) in &endpoints {
            for (peer, _) in &endpoints {
                if peer.me() != links.me() {
                    links.send(peer.me(), message(links.me().0, index)).unwrap();
                }
            }
        }
    }
    for (links, inbox) in &endpoints {
        let mut next: HashMap<NodeId, u32> = HashMap::new();
        for _ in 0..2 * COUNT {
            let incoming = recv(inbox);
            assert_ne!(incoming.from, links.me());
            let index = next.entry(incoming.from).or_default();
            assert_eq!(
                incoming.payload,
                message(incoming.from.0, *index),
                "node {} received out of order from {}",
                links.me(),
                incoming.from
            );
            *index += 1;
        }
        assert_eq!(next.values().copied().collect::<Vec<_>>(), vec![COUNT; 2]);
        assert_eq!(inbox.try_recv(), Err(RecvError::Timeout), "nothing extra");
    }
}

#[test]
fn a_peer_restarted_on_the_same_port_is_reconnected() {
    let secret = ClusterSecret::generate();
    let (a, a_inbox) = endpoint(1, &secret);
    let (b, b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    a.send(NodeId(2), b"before".to_vec()).unwrap();
    assert_eq!(recv(&b_inbox).payload, b"before");
    let b_addr = b.local_addr();
    drop(b);
    drop(b_inbox);

    let (b, b_inbox) = Links::bind(NodeId(2), b_addr, secret.clone()).expect("rebind the port");
    b.add_peer(NodeId(1), a.local_addr());
    // The first message after the restart may be lost (nothing is acknowledged), so send until
    // one arrives, as Raft would.
    let deadline = Instant::now() + PATIENCE;
    let incoming = loop {
        a.send(NodeId(2), b"after".to_vec()).unwrap();
        match b_inbox.recv_timeout(Duration::from_millis(50)) {
            Ok(incoming) => break incoming,
            Err(RecvError::Timeout) => assert!(Instant::now() < deadline, "never reconnected"),
            Err(RecvError::Closed) => unreachable!("b is alive"),
        }
    };
    assert_eq!(
        incoming,
        Incoming {
            from: NodeId(1),
            payload: b"after".to_vec()
        }
    );
    assert_eq!(
        a.stats().connected_count,
        2,
        "one connection per incarnation"
    );
    b.send(NodeId(1), b"back".to_vec()).unwrap();
    assert_eq!(recv(&a_inbox).payload, b"back");
}

#[test]
fn a_peer_with_another_secret_is_refused_in_both_directions_and_nothing_delivered() {
    let (a, a_inbox) = endpoint(1, &ClusterSecret::generate());
    let (b, b_inbox) = endpoint(2, &ClusterSecret::generate());
    link(&a, &b);
    for _ in 0..5 {
        a.send(NodeId(2), b"from a".to_vec()).unwrap();
        b.send(NodeId(1), b"from b".to_vec()).unwrap();
    }
    wait_until("both senders dropped everything", || {
        a.stats().dropped_unreachable_count == 5 && b.stats().dropped_unreachable_count == 5
    });
    wait_until("both listeners counted a refusal", || {
        a.stats().refused_count >= 1 && b.stats().refused_count >= 1
    });
    assert_eq!(a_inbox.try_recv(), Err(RecvError::Timeout));
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
    assert_eq!(a.stats().connected_count + b.stats().connected_count, 0);
    assert_eq!(a.stats().accepted_count + b.stats().accepted_count, 0);
}

/// A proof made with the cluster secret itself (what a fabric handshake carries) is not a CM
/// link's: the links prove under a secret derived for them, so a fabric handshake relayed here
/// (or the reverse) fails both ways.
#[test]
fn a_handshake_under_the_cluster_secret_itself_is_refused() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let refused = handshake::connect(&mut stream, NodeId(1), NodeId(2), &secret);
    assert!(
        refused.is_err(),
        "the server's proof verified under the cluster secret"
    );
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn a_client_without_the_secret_is_refused_by_the_server() {
    // The client skips checking the server's proof and answers with a forged one: the server
    // must refuse it before it can send a message.
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node: NodeId(1),
        client_nonce: [9; 32],
    };
    stream.write_all(&hello.encode()).unwrap();
    let challenge = frame::read_frame(&mut stream, frame::HANDSHAKE_PAYLOAD_BYTES_MAX)
        .unwrap()
        .unwrap();
    assert_eq!(challenge.kind, Kind::Challenge);
    assert_eq!(
        Challenge::decode(&challenge.payload).unwrap().node,
        NodeId(2)
    );
    frame::write_frame(&mut stream, Kind::Proof, &[0; 32]).unwrap();
    frame::write_frame(&mut stream, Kind::Message, b"forged").unwrap();
    let refused = frame::read_frame(&mut stream, frame::HANDSHAKE_PAYLOAD_BYTES_MAX)
        .unwrap()
        .unwrap();
    assert_eq!(refused.kind, Kind::Refused);
    assert_eq!(Refusal::decode(&refused.payload), Ok(Refusal::BadProof));
    assert_closed_by_server(&mut stream);
    wait_until("the refusal is counted", || b.stats().refused_count == 1);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn a_node_that_is_not_a_peer_is_refused_after_it_proves_its_identity() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    let err = raw_client(&b, NodeId(3), &secret).unwrap_err();
    assert!(
        matches!(err, LinkError::Refused(Refusal::UnknownNode)),
        "{err}"
    );
    // Claiming the server's own id is no better.
    let err = raw_client(&b, NodeId(2), &secret).unwrap_err();
    assert!(
        matches!(err, LinkError::Refused(Refusal::UnknownNode)),
        "{err}"
    );
    wait_until("the refusals are counted", || b.stats().refused_count == 2);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn an_oversized_frame_closes_the_connection_and_is_not_delivered() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut stream = raw_client(&b, NodeId(1), &secret).unwrap();
    frame::write_frame(&mut stream, Kind::Message, b"fine").unwrap();
    // Only a header: the server must refuse it from the length alone.
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
    header[4] = Kind::Message.code();
    stream.write_all(&header).unwrap();
    assert_closed_by_server(&mut stream);
    assert_eq!(recv(&b_inbox).payload, b"fine");
    wait_until("the refusal is counted", || b.stats().refused_count == 1);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
    assert_eq!(b.stats().delivered_count, 1);
}

#[test]
fn a_corrupt_frame_closes_the_connection_and_nothing_after_it_is_delivered() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut stream = raw_client(&b, NodeId(1), &secret).unwrap();
    let mut bytes = Vec::new();
    frame::write_frame(&mut bytes, Kind::Message, b"one").unwrap();
    let damaged_at = bytes.len() + HEADER_BYTES;
    frame::write_frame(&mut bytes, Kind::Message, b"two").unwrap();
    bytes[damaged_at] ^= 0x20;
    frame::write_frame(&mut bytes, Kind::Message, b"three").unwrap();
    stream.write_all(&bytes).unwrap();
    assert_closed_by_server(&mut stream);
    assert_eq!(recv(&b_inbox).payload, b"one");
    wait_until("the refusal is counted", || b.stats().refused_count == 1);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn a_connection_that_is_not_a_cm_link_is_closed_at_its_first_bytes() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let fabric_hello = acre_engine::fabric::tcp::frame::encode_to_vec(
        &acre_engine::fabric::tcp::frame::Frame::Hello(acre_engine::fabric::tcp::frame::Hello {
            magic: acre_engine::fabric::tcp::frame::MAGIC,
            version: acre_engine::fabric::tcp::auth::PROTOCOL_VERSION,
            node: NodeId(1),
            config: 1,
            client_nonce: [0; 32],
        }),
    );
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    stream.write_all(&fabric_hello).unwrap();
    assert_closed_by_server(&mut stream);
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert_closed_by_server(&mut stream);
    wait_until("the refusals are counted", || b.stats().refused_count == 2);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn sending_to_an_unknown_or_unreachable_peer_never_blocks_and_counts_drops() {
    const COUNT: u64 = 10_000;
    let secret = ClusterSecret::generate();
    let (a, _a_inbox) = endpoint(1, &secret);
    a.add_peer(NodeId(2), dead_addr());
    let started = Instant::now();
    for index in 0..COUNT {
        match a.send(NodeId(2), message(1, index as u32)) {
            Ok(()) | Err(SendError::QueueFull { node: NodeId(2) }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    // Ten thousand queue pushes take microseconds each at most; a send that waited for the
    // connection would take far longer than this bound.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "sending took {:?}",
        started.elapsed()
    );
    wait_until("every message is dropped and counted", || {
        let stats = a.stats();
        stats.dropped_queue_full_count + stats.dropped_unreachable_count == COUNT
    });
    assert_eq!(a.stats().sent_count, 0);

    assert_eq!(
        a.send(NodeId(3), b"nobody".to_vec()),
        Err(SendError::UnknownPeer { node: NodeId(3) })
    );
    let too_large = vec![0u8; FRAME_PAYLOAD_BYTES_MAX as usize + 1];
    assert!(matches!(
        a.send(NodeId(2), too_large),
        Err(SendError::TooLarge { .. })
    ));
    assert_eq!(a.stats().dropped_unsendable_count, 2);
}

#[test]
fn a_removed_peer_is_disconnected_and_refused() {
    let secret = ClusterSecret::generate();
    let (a, a_inbox) = endpoint(1, &secret);
    let (b, _b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    b.send(NodeId(1), b"hello".to_vec()).unwrap();
    assert_eq!(recv(&a_inbox).payload, b"hello");
    a.remove_peer(NodeId(2));
    assert!(a.peers().is_empty());
    assert_eq!(
        a.send(NodeId(2), b"gone".to_vec()),
        Err(SendError::UnknownPeer { node: NodeId(2) })
    );
    wait_until("b's messages are refused", || {
        // Raft keeps sending; b reconnects and a refuses it.
        let _ = b.send(NodeId(1), b"still there?".to_vec());
        b.stats().dropped_unreachable_count >= 1 && a.stats().refused_count >= 1
    });
    let delivered = a.stats().delivered_count;
    assert_eq!(delivered, 1, "nothing after the removal");
    assert_eq!(a_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn dropping_the_links_joins_every_thread_promptly() {
    let secret = ClusterSecret::generate();
    let (a, a_inbox) = endpoint(1, &secret);
    let (b, b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    a.add_peer(NodeId(3), dead_addr());
    a.send(NodeId(2), b"x".to_vec()).unwrap();
    b.send(NodeId(1), b"y".to_vec()).unwrap();
    assert_eq!(recv(&a_inbox).payload, b"y");
    assert_eq!(recv(&b_inbox).payload, b"x");
    for _ in 0..100 {
        let _ = a.send(NodeId(3), b"z".to_vec());
    }
    // A connection that never finishes its handshake holds a reader thread in a read whose
    // deadline is seconds away: shutting down must not wait for it.
    let _silent = TcpStream::connect(a.local_addr()).unwrap();
    // The listener, senders to 2 and 3, and readers of b's and the silent connection.
    wait_until("the silent connection has a reader", || {
        a.live_thread_count() == 1 + 2 + 2
    });
    let shared = a.shared.clone();
    let started = Instant::now();
    drop(a);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(shared.live_threads.0.load(Ordering::SeqCst), 0);
    assert_eq!(a_inbox.try_recv(), Err(RecvError::Closed));
    b.shutdown();
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Closed));
}

#[test]
fn a_frame_of_a_handshake_kind_after_the_handshake_closes_the_connection() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut stream = raw_client(&b, NodeId(1), &secret).unwrap();
    frame::write_frame(&mut stream, Kind::Proof, &[0; 32]).unwrap();
    frame::write_frame(&mut stream, Kind::Message, b"late").unwrap();
    assert_closed_by_server(&mut stream);
    wait_until("the refusal is counted", || b.stats().refused_count == 1);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

#[test]
fn a_newer_connection_of_a_node_closes_its_older_one() {
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let mut older = raw_client(&b, NodeId(1), &secret).unwrap();
    frame::write_frame(&mut older, Kind::Message, b"older").unwrap();
    assert_eq!(recv(&b_inbox).payload, b"older");
    let mut newer = raw_client(&b, NodeId(1), &secret).unwrap();
    assert_closed_by_server(&mut older);
    frame::write_frame(&mut newer, Kind::Message, b"newer").unwrap();
    assert_eq!(
        recv(&b_inbox),
        Incoming {
            from: NodeId(1),
            payload: b"newer".to_vec()
        }
    );
    // Closing the older one was this side's doing, not the peer's fault.
    assert_eq!(b.stats().refused_count, 0);
    assert_eq!(b.stats().accepted_count, 2);
}

#[test]
fn a_full_inbox_drops_and_counts_what_arrives() {
    const EXTRA: usize = 10;
    let secret = ClusterSecret::generate();
    let (a, _a_inbox) = endpoint(1, &secret);
    let (b, b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    let total = INBOX_FRAMES_MAX + EXTRA;
    let mut queued = 0;
    while queued < total {
        // Stay within the outgoing queue's bound, so every drop is the inbox's.
        let chunk = (total - queued).min(OUTBOX_FRAMES_MAX / 2);
        for _ in 0..chunk {
            a.send(NodeId(2), b"m".to_vec()).unwrap();
        }
        queued += chunk;
        wait_until("the chunk is written", || {
            a.stats().sent_count == queued as u64
        });
    }
    wait_until("every frame arrived", || {
        let stats = b.stats();
        stats.delivered_count + stats.dropped_inbox_full_count == total as u64
    });
    assert_eq!(b.stats().dropped_inbox_full_count, EXTRA as u64);
    assert_eq!(b_inbox.len(), INBOX_FRAMES_MAX);
    // Taking messages makes room again.
    assert_eq!(recv(&b_inbox).from, NodeId(1));
    a.send(NodeId(2), b"room".to_vec()).unwrap();
    wait_until("the next frame is delivered", || {
        b.stats().delivered_count == INBOX_FRAMES_MAX as u64 + 1
    });
}

#[test]
fn a_peer_that_trickles_its_handshake_is_closed_at_the_deadline() {
    // One byte every 400 ms keeps each read short of any per-read timeout; only a deadline on
    // the whole handshake stops it.
    const TRICKLE_INTERVAL: Duration = Duration::from_millis(400);
    let secret = ClusterSecret::generate();
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), dead_addr());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node: NodeId(1),
        client_nonce: [1; 32],
    }
    .encode();
    let mut stream = TcpStream::connect(b.local_addr()).unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in hello {
        if stream.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(TRICKLE_INTERVAL);
        if b.stats().refused_count == 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the trickling peer was never closed");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= HANDSHAKE_DEADLINE && elapsed < HANDSHAKE_DEADLINE + Duration::from_secs(2),
        "closed after {elapsed:?}"
    );
    assert_closed_by_server(&mut stream);
    assert_eq!(b_inbox.try_recv(), Err(RecvError::Timeout));
}

/// A peer whose process restarted listens at a new address: with an address book, the sender
/// finds it there after the connection to the old one fails, and what was queued meanwhile
/// arrives; without one, nothing reaches the new process until `add_peer` names the address.
#[test]
fn a_peer_restarted_at_a_new_address_is_found_through_the_address_book() {
    let secret = ClusterSecret::generate();
    let (a, _a_inbox) = endpoint(1, &secret);
    let (b, b_inbox) = endpoint(2, &secret);
    link(&a, &b);
    a.send(NodeId(2), message(1, 0)).unwrap();
    assert_eq!(recv(&b_inbox).payload, message(1, 0));

    // b restarts: its old listener is gone, the new one is elsewhere.
    let old = b.local_addr();
    drop(b);
    drop(b_inbox);
    let (b, b_inbox) = endpoint(2, &secret);
    b.add_peer(NodeId(1), a.local_addr());
    assert_ne!(b.local_addr(), old);
    let now = Arc::new(Mutex::new(b.local_addr()));
    let book = {
        let now = now.clone();
        Arc::new(move |node: NodeId| (node == NodeId(2)).then(|| *lock(&now)))
    };
    assert!(a.set_address_book(book.clone()));
    assert!(!a.set_address_book(book), "a second book is refused");
    // A message written into the old connection before its close is seen may be lost (nothing
    // is acknowledged), so send until one arrives, as Raft would.
    let deadline = Instant::now() + PATIENCE;
    let incoming = loop {
        a.send(NodeId(2), message(1, 1)).unwrap();
        match b_inbox.recv_timeout(Duration::from_millis(50)) {
            Ok(incoming) => break incoming,
            Err(RecvError::Timeout) => assert!(Instant::now() < deadline, "never found"),
            Err(RecvError::Closed) => unreachable!("b is alive"),
        }
    };
    assert_eq!(
        (incoming.from, incoming.payload),
        (NodeId(1), message(1, 1))
    );
    while b_inbox.try_recv().is_ok() {}
    assert_eq!(a.peers(), vec![(NodeId(2), b.local_addr())]);
    // add_peer with the address the book gave changes nothing.
    a.add_peer(NodeId(2), b.local_addr());
    a.send(NodeId(2), message(1, 2)).unwrap();
    assert_eq!(recv(&b_inbox).payload, message(1, 2));
}

/// An address book that does not know the peer (or gives the address that failed) leaves the
/// sender where it was: its messages are dropped as for any unreachable peer.
#[test]
fn an_address_book_without_news_leaves_an_unreachable_peer_unreachable() {
    let secret = ClusterSecret::generate();
    let (a, _a_inbox) = endpoint(1, &secret);
    let dead = dead_addr();
    a.add_peer(NodeId(2), dead);
    assert!(a.set_address_book(Arc::new(|_| None)));
    a.send(NodeId(2), message(1, 0)).unwrap();
    wait_until("the message is dropped as unreachable", || {
        a.stats().dropped_unreachable_count >= 1
    });
    assert_eq!(a.peers(), vec![(NodeId(2), dead)]);
}
