//! The target side of a node: the bootstrap listener, which makes a responder queue pair for
//! each peer that asks, and the NIC thread, which answers the messages peers send on them
//! (PERSIST, NOTIFY, and CAS where NIC atomics are not used) by executing them on this node's
//! memory and sending back the response. READ, WRITE and NIC CAS need neither: the NIC does them.
//!
//! A responder has [`RECEIVES_POSTED`] receives posted and [`SENDS_PER_RESPONDER`] buffers for
//! responses in one registered buffer; a receive is reposted as soon as its request is copied
//! out. A responder whose queue pair fails (its initiator vanished, or sent something its
//! receives cannot hold) is retired: destroyed with its buffers, and its peer reconnects through
//! the bootstrap. The NIC thread serves the others meanwhile.
//!
//! Fencing ([`VerbsNic::set_membership`], docs/failures.md#fencing): a target's NIC checks only
//! the queue pair and the memory key of a READ, WRITE or NIC CAS, so a removed node is fenced by
//! moving every queue pair this node has with it to the error state and destroying it, before
//! `set_membership` returns; its requests then reach no queue pair here, and the bootstrap
//! refuses to make it a new one (NOT_MEMBER). The NIC thread also neither executes nor answers
//! a non-member's message, and executes requests under the membership's read lock, so that none
//! of a removed node runs once `set_membership` has returned.

use super::bootstrap::{self, Message};
use super::device::{
    QpCaps, QpEndpoint, QpTransition, RecvWr, SendKind, SendWr, Sge, Verbs, WcStatus,
};
use super::staging::Staging;
use super::work::MESSAGE_BYTES_MAX;
use super::{Node, SLEEP_SLICE, SPIN_POLLS_MAX, random_psn};
use crate::addr::NodeId;
use crate::fabric::exec;
use crate::fabric::membership::Membership;
use crate::fabric::tcp::frame::{self, Frame};
use crate::hash::FastMap;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

/// Receives each responder keeps posted.
pub const RECEIVES_POSTED: usize = 16;
/// Responses each responder may have in flight; a response beyond them is dropped (its
/// requester times out). An initiator has at most one message outstanding per chain, and one
/// chain at a time per connection, so a live one never reaches this.
pub const SENDS_PER_RESPONDER: usize = 4;
/// Entries of the NIC thread's completion queue, shared by all responders.
pub const NIC_CQ_ENTRIES: u32 = 4096;
/// Responders at most: each may have all its receives and sends complete at once, and a
/// completion queue that overflows is a fatal device error, so a peer beyond them is refused.
pub const RESPONDERS_MAX: usize = NIC_CQ_ENTRIES as usize / (RECEIVES_POSTED + SENDS_PER_RESPONDER);
const _: () = assert!(RESPONDERS_MAX >= 64, "room for a cluster of peers");
/// Completions read per poll.
const ENTRIES_PER_POLL: usize = 16;

/// The responder queue pairs, by queue pair number.
pub struct Responders<V: Verbs> {
    by_qpn: FastMap<u32, Responder<V>>,
}

impl<V: Verbs> Default for Responders<V> {
    fn default() -> Self {
        Responders {
            by_qpn: FastMap::default(),
        }
    }
}

impl<V: Verbs> Responders<V> {
    pub fn retire_all(self, verbs: &V) {
        for responder in self.by_qpn.into_values() {
            responder.retire(verbs);
        }
    }

    /// The queue pair number of `peer`'s responder, if it has one.
    pub fn qpn_of(&self, peer: NodeId) -> Option<u32> {
        self.by_qpn
            .iter()
            .find(|(_, r)| r.peer == peer)
            .map(|(&qpn, _)| qpn)
    }
}

/// One peer's queue pair on this node, and its message buffers.
pub struct Responder<V: Verbs> {
    peer: NodeId,
    qp: V::Qp,
    /// [`RECEIVES_POSTED`] receive slots, then [`SENDS_PER_RESPONDER`] send slots, of
    /// [`MESSAGE_BYTES_MAX`] each.
    buffers: Staging<V>,
    sends_free: Vec<usize>,
}

impl<V: Verbs> Responder<V> {
    /// Moves the queue pair to the error state and destroys it, then frees its buffers (the
    /// device no longer touches them once the queue pair is destroyed).
    fn retire(self, verbs: &V) {
        let _ = verbs.modify_qp(&self.qp, QpTransition::Error);
        verbs.destroy_qp(self.qp);
        self.buffers.release(verbs);
    }

    fn receive_wr(&self, slot: usize) -> RecvWr {
        RecvWr {
            wr_id: (slot as u64) << 1 | 1,
            sge: Sge {
                addr: self.buffers.addr(slot * MESSAGE_BYTES_MAX),
                length: MESSAGE_BYTES_MAX as u32,
                lkey: self.buffers.keys().lkey,
            },
        }
    }

    fn post_receive(&self, verbs: &V, slot: usize) -> bool {
        // SAFETY: the slot is in this responder's registered buffer, which is released only by
        // `retire`, after the queue pair is destroyed; it is read only once the receive's
        // completion is.
        unsafe { verbs.post_recv(&self.qp, &[self.receive_wr(slot)]) }.is_ok()
    }
}

/// The target side of a node: its NIC thread and bootstrap listener. Dropping it stops both.
pub struct VerbsNic<V: Verbs> {
    node: Arc<Node<V>>,
    threads: Vec<JoinHandle<()>>,
}

impl<V: Verbs> VerbsNic<V> {
    pub(super) fn spawn(node: Arc<Node<V>>, listener: TcpListener) -> std::io::Result<VerbsNic<V>> {
        let me = node.me();
        let mut nic = VerbsNic {
            node: node.clone(),
            threads: Vec::new(),
        };
        let serving = node.clone();
        nic.threads.push(
            std::thread::Builder::new()
                .name(format!("verbs-nic-{me}"))
                .spawn(move || serve(&serving))?,
        );
        nic.threads.push(
            std::thread::Builder::new()
                .name(format!("verbs-bootstrap-{me}"))
                .spawn(move || listen(&node, listener))?,
        );
        Ok(nic)
    }

    /// Serves and reaches the members of `membership` only from now on. Before it returns:
    ///
    /// - every queue pair this node has with a node that is not a member is moved to the error
    ///   state and destroyed (its responder, so that the device refuses the node's READ, WRITE
    ///   and CAS from then on; and this node's connection to it, whose queue pair would accept
    ///   them too), and its buffers released;
    /// - non-member peers are forgotten: this node's operations to them fail as
    ///   [`crate::fabric::OpError::UnknownNode`], and adding their card is refused;
    /// - the NIC thread neither executes nor answers a non-member's message (it executes under
    ///   this membership's lock), and the bootstrap refuses a non-member with NOT_MEMBER before
    ///   making anything for it.
    ///
    /// Members' queue pairs are untouched. Requests a removed node's NIC had already put on the
    /// wire when its queue pair here went to the error state are the device's to finish or drop
    /// (docs/verbs.md#membership-fencing).
    pub fn set_membership(&self, membership: Membership) {
        let node = &self.node;
        let verbs = &node.verbs;
        let removed: Vec<_> = {
            let mut current = node.membership.write().expect(crate::POISONED);
            let mut peers = node.peers.write().expect(crate::POISONED);
            let outsiders: Vec<NodeId> = peers
                .keys()
                .copied()
                .filter(|&peer| !membership.contains(peer))
                .collect();
            let removed = outsiders
                .iter()
                .filter_map(|peer| peers.remove(peer))
                .collect();
            drop(peers);
            let mut responders = node.responders.lock().expect(crate::POISONED);
            let fenced: Vec<u32> = responders
                .by_qpn
                .iter()
                .filter(|(_, responder)| !membership.contains(responder.peer))
                .map(|(&qpn, _)| qpn)
                .collect();
            for qpn in fenced {
                let responder = responders.by_qpn.remove(&qpn).expect("listed above");
                responder.retire(verbs);
            }
            *current = Some(membership);
            removed
        };
        // Outside the membership's lock: each waits for a batch in flight to its peer to end
        // (bounded by the operation timeout), and a batch that starts meanwhile finds the peer
        // no longer admitted and connects nothing (`VerbsTransport::run`).
        for peer in removed {
            node.retire_peer(&peer);
        }
    }

    /// The queue pair number of `peer`'s responder on this node, if connected.
    pub fn responder_qpn(&self, peer: NodeId) -> Option<u32> {
        self.node
            .responders
            .lock()
            .expect(crate::POISONED)
            .qpn_of(peer)
    }
}

impl<V: Verbs> VerbsNic<V> {
    /// The NIC thread, for tests that measure what it costs idle.
    #[cfg(test)]
    pub(super) fn nic_thread(&self) -> &JoinHandle<()> {
        &self.threads[0]
    }
}

impl<V: Verbs> Drop for VerbsNic<V> {
    fn drop(&mut self) {
        self.node.stop.store(true, Ordering::Release);
        // Wakes the listener's `accept`; the NIC thread wakes within a sleep slice.
        let mut wake = self.node.bootstrap;
        if wake.ip().is_unspecified() {
            wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let _ = TcpStream::connect_timeout(&wake, SLEEP_SLICE);
        for thread in self.threads.drain(..) {
            let joined = thread.join();
            if joined.is_err() && !std::thread::panicking() {
                panic!("a verbs thread of {} panicked", self.node.me());
            }
        }
    }
}

/// The bootstrap listener: serves one exchange per connection, one connection at a time (each
/// step bounded by the bootstrap timeout).
fn listen<V: Verbs>(node: &Node<V>, listener: TcpListener) {
    for stream in listener.incoming() {
        if node.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = stream else {
            // Out of descriptors, say: wait a little rather than spin on the error.
            std::thread::sleep(SLEEP_SLICE);
            continue;
        };
        let address = stream
            .peer_addr()
            .map_or_else(|_| "an unknown address".to_string(), |a| a.to_string());
        let timeout = Some(node.config.bootstrap_timeout);
        if stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .is_err()
        {
            continue;
        }
        let served = bootstrap::serve(
            &mut stream,
            &address,
            &node.bootstrap_secret,
            node.me(),
            |from, to| admit(node, from, to),
            |from, endpoint| accept(node, from, endpoint),
        );
        match served {
            Ok(_) => {}
            Err(e) => {
                // The initiator may not have learnt of a responder made for it; it reconnects,
                // which replaces the responder, so nothing is retired here.
                eprintln!("acre: verbs bootstrap of {} with {address}: {e}", node.me());
            }
        }
    }
}

/// Why `from` is not served here, if it is not a member of the configuration this node
/// serves: NOT_MEMBER naming the configuration.
fn not_member<V: Verbs>(node: &Node<V>, from: NodeId) -> Option<Message> {
    let membership = node.membership.read().expect(crate::POISONED);
    membership
        .as_ref()
        .filter(|m| !m.contains(from))
        .map(|m| Message::NotMember { config: m.config() })
}

/// Why `from`'s HELLO is refused before any proof is checked, if it is (REFUSE or NOT_MEMBER).
fn admit<V: Verbs>(node: &Node<V>, from: NodeId, to: NodeId) -> Option<Message> {
    let me = node.me();
    let refuse = |reason: String| Some(Message::Refuse { reason });
    if to != me {
        return refuse(format!("this is {me}, not {to}"));
    }
    if let Some(refusal) = not_member(node, from) {
        return Some(refusal);
    }
    if node.peer(from).is_none() {
        return refuse(format!(
            "{from} is not a peer of {me}: add its card there first"
        ));
    }
    let responders = node.responders.lock().expect(crate::POISONED);
    let replacing = responders.qpn_of(from).is_some();
    if !replacing && responders.by_qpn.len() >= RESPONDERS_MAX {
        return refuse(format!(
            "{me} serves {RESPONDERS_MAX} connections already, its most: remove peers it no \
             longer needs"
        ));
    }
    None
}

/// Makes a responder queue pair for `from`'s queue pair `remote` (its proof checked), or says
/// why not.
fn accept<V: Verbs>(node: &Node<V>, from: NodeId, remote: QpEndpoint) -> Message {
    let refuse = |reason: String| Message::Refuse { reason };
    // Checked again since `admit`: the membership may have changed while the proofs went back
    // and forth. Checked a last time below, under the lock, before the responder is kept.
    if let Some(refusal) = not_member(node, from) {
        return refusal;
    }
    let verbs = &node.verbs;
    let cq = node.nic_cq.as_ref().expect("open while the node lives");
    let caps = QpCaps {
        send_wr_max: SENDS_PER_RESPONDER as u32,
        recv_wr_max: RECEIVES_POSTED as u32,
    };
    let qp = match verbs.create_qp(cq, caps) {
        Ok(qp) => qp,
        Err(e) => return refuse(format!("verbs device {}: {e}", node.device())),
    };
    let bytes = (RECEIVES_POSTED + SENDS_PER_RESPONDER) * MESSAGE_BYTES_MAX;
    let buffers = match Staging::new(verbs, bytes) {
        Ok(buffers) => buffers,
        Err(e) => {
            verbs.destroy_qp(qp);
            return refuse(format!("verbs device {}: {e}", node.device()));
        }
    };
    let responder = Responder {
        peer: from,
        qp,
        buffers,
        sends_free: (0..SENDS_PER_RESPONDER).collect(),
    };
    let psn = random_psn();
    let (lid, gid) = verbs.port_address();
    let mine = QpEndpoint {
        qpn: verbs.qp_num(&responder.qp),
        psn,
        lid,
        gid,
    };
    let ready = verbs
        .modify_qp(&responder.qp, QpTransition::Init)
        .and_then(|()| {
            // Receives go up before RTR, so that nothing the initiator sends finds none.
            for slot in 0..RECEIVES_POSTED {
                if !responder.post_receive(verbs, slot) {
                    return Err(super::device::CallError {
                        call: "ibv_post_recv",
                        reason: "a receive of the responder was refused".into(),
                    });
                }
            }
            Ok(())
        })
        .and_then(|()| verbs.modify_qp(&responder.qp, QpTransition::ReadyToReceive { remote }))
        .and_then(|()| verbs.modify_qp(&responder.qp, QpTransition::ReadyToSend { psn }));
    if let Err(e) = ready {
        responder.retire(verbs);
        return refuse(format!("verbs device {}: {e}", node.device()));
    }
    // Under the membership's lock, as `set_membership` retires responders: a responder kept
    // here is of a node that is a member, or is retired by the `set_membership` that follows.
    let membership = node.membership.read().expect(crate::POISONED);
    if let Some(membership) = membership.as_ref()
        && !membership.contains(from)
    {
        responder.retire(verbs);
        return Message::NotMember {
            config: membership.config(),
        };
    }
    let mut responders = node.responders.lock().expect(crate::POISONED);
    // A peer has one responder: a new connection from it (it restarted, or its old queue pair
    // failed) replaces the old one.
    if let Some(old) = responders.qpn_of(from) {
        let old = responders.by_qpn.remove(&old).expect("found above");
        old.retire(verbs);
    }
    responders.by_qpn.insert(mine.qpn, responder);
    Message::Accept { endpoint: mine }
}

/// The NIC thread: reads the responders' completions, answers requests, reposts receives.
/// Spins for [`SPIN_POLLS_MAX`] empty polls, then sleeps on the completion channel.
fn serve<V: Verbs>(node: &Node<V>) {
    let verbs = &node.verbs;
    let cq = node.nic_cq.as_ref().expect("open while the node lives");
    let mut entries = Vec::with_capacity(ENTRIES_PER_POLL);
    let mut idle_polls = 0u32;
    while !node.stop.load(Ordering::Acquire) {
        entries.clear();
        let mut polled = verbs.poll_cq(cq, &mut entries, ENTRIES_PER_POLL);
        if matches!(polled, Ok(0)) && idle_polls >= SPIN_POLLS_MAX {
            polled = verbs
                .arm_cq(cq)
                .and_then(|()| verbs.poll_cq(cq, &mut entries, ENTRIES_PER_POLL));
            if matches!(polled, Ok(0)) {
                polled = verbs.wait_cq(cq, SLEEP_SLICE).map(|_| 0);
            }
        }
        match polled {
            Ok(0) => {
                idle_polls = idle_polls.saturating_add(1);
                continue;
            }
            Ok(_) => idle_polls = 0,
            // The queue itself failed: nothing this node can serve any more, and a node that
            // cannot serve should stop rather than look alive.
            Err(e) => panic!("verbs NIC thread of {}: {e}", node.me()),
        }
        // Requests are executed under the membership's lock (taken before the responders', as
        // `set_membership` takes them), so that once `set_membership` has returned none of a
        // node it removed runs; the completions of the responders it retired meanwhile are
        // skipped below as of a retired responder.
        let membership = node.membership.read().expect(crate::POISONED);
        let mut responders = node.responders.lock().expect(crate::POISONED);
        let mut broken = Vec::new();
        for wc in &entries {
            let Some(responder) = responders.by_qpn.get_mut(&wc.qp_num) else {
                continue; // of a retired responder
            };
            let (slot, receive) = ((wc.wr_id >> 1) as usize, wc.wr_id & 1 == 1);
            if wc.status != WcStatus::Success {
                if wc.status != WcStatus::WrFlushErr {
                    eprintln!(
                        "acre: verbs NIC thread of {}: the connection from {} failed: {} ({})",
                        node.me(),
                        responder.peer,
                        wc.status.name(),
                        wc.status.meaning()
                    );
                }
                broken.push(wc.qp_num);
                continue;
            }
            if !receive {
                responder.sends_free.push(slot);
                continue;
            }
            assert!(slot < RECEIVES_POSTED, "slot={slot}");
            let len = (wc.byte_len as usize).min(MESSAGE_BYTES_MAX);
            let request = responder.buffers.read_at(slot * MESSAGE_BYTES_MAX, len);
            if !responder.post_receive(verbs, slot) {
                broken.push(wc.qp_num);
                continue;
            }
            let Ok(Some((Frame::Request(request), _))) = frame::decode(&request) else {
                continue; // not a request frame: nothing to answer
            };
            // A non-member's request is neither executed nor answered: `set_membership`
            // retires a non-member's responder under the membership's write lock, and `accept`
            // keeps one only for a member, under its read lock, which this thread holds.
            assert!(
                membership
                    .as_ref()
                    .is_none_or(|m| m.contains(responder.peer)),
                "a responder of {}, which is not a member of configuration {:?}, was kept",
                responder.peer,
                membership.as_ref().map(Membership::config)
            );
            let response = exec::answer_request(&node.memory, request, "verbs");
            let Some(send) = responder.sends_free.pop() else {
                eprintln!(
                    "acre: verbs NIC thread of {}: dropped a response to {}: {SENDS_PER_RESPONDER} \
                     responses to it are in flight; its requester times out",
                    node.me(),
                    responder.peer
                );
                continue;
            };
            let bytes = frame::encode_to_vec(&Frame::Response(response));
            assert!(
                bytes.len() <= MESSAGE_BYTES_MAX,
                "response of {} bytes",
                bytes.len()
            );
            let offset = (RECEIVES_POSTED + send) * MESSAGE_BYTES_MAX;
            responder.buffers.write_at(offset, &bytes);
            let wr = SendWr {
                wr_id: (send as u64) << 1,
                sge: Sge {
                    addr: responder.buffers.addr(offset),
                    length: bytes.len() as u32,
                    lkey: responder.buffers.keys().lkey,
                },
                kind: SendKind::Send,
                signaled: true,
                fence: false,
            };
            // SAFETY: the send slot is in the responder's registered buffer, not written again
            // until its completion returns it to `sends_free` (or the responder is retired,
            // after its queue pair is destroyed).
            if unsafe { verbs.post_send(&responder.qp, &[wr]) }.is_err() {
                broken.push(wc.qp_num);
            }
        }
        for qpn in broken {
            if let Some(responder) = responders.by_qpn.remove(&qpn) {
                responder.retire(verbs);
            }
        }
        drop(responders);
        drop(membership);
    }
}
