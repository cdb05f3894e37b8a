//! An in-process fake of the verbs layer, for the transport's unit tests: devices on one
//! simulated network, memory registrations with keys and bounds, RC queue pairs with their
//! state machine, completion queues with an event channel. It executes a work request when it
//! is posted (an infinitely fast NIC), and follows ibverbs where the transport depends on it:
//!
//! - posting a send on a queue pair not in RTS, or a receive on one in RESET, is refused;
//!   modifying a queue pair out of order is refused;
//! - a READ, WRITE or CAS whose rkey names no registration of the target device, or whose range
//!   leaves it, completes with `IBV_WC_REM_ACCESS_ERR`; a SEND with no receive posted at the
//!   target with `IBV_WC_RNR_RETRY_EXC_ERR`; a local element outside its registration with
//!   `IBV_WC_LOC_PROT_ERR`; each moves both queue pairs to the error state;
//! - a request to a device that [`FakeNet::vanish`]ed completes with `IBV_WC_RETRY_EXC_ERR`,
//!   one to a device [`FakeNet::silence`]d gets no completion at all;
//! - a request whose target queue pair is destroyed, or is not in RTR or RTS (the error state,
//!   say: a fenced node's), or is connected to another queue pair, is not executed and
//!   completes with `IBV_WC_RETRY_EXC_ERR`: a responder drops what arrives for a queue pair it
//!   has not got or that cannot receive, so the requester's retries run out (on a device that
//!   takes `retry_cnt` timeouts, not at once);
//! - in the error state every outstanding and later request completes with
//!   `IBV_WC_WR_FLUSH_ERR`, signaled or not; a successful request completes only if signaled.
//!
//! Remote memory is accessed in aligned 8-byte atomic words (what the transport's regions are);
//! a remote range that is not whole aligned words completes with `IBV_WC_REM_INV_REQ_ERR`.

use super::device::{
    CallError, MrKeys, PostError, QpCaps, QpEndpoint, QpTransition, RecvWr, SendKind, SendWr,
    Verbs, WcOpcode, WcStatus, WorkCompletion,
};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What happens to requests sent to a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Alive,
    /// Executes this many more requests addressed to it, then vanishes.
    VanishAfter(u32),
    /// Gone: requests to it fail after the (simulated) retries.
    Vanished,
    /// Requests to it are never acknowledged: no completion comes.
    Silent,
}

struct Device {
    fate: Fate,
    /// By rkey.
    mrs: HashMap<u32, MrState>,
}

#[derive(Clone, Copy)]
struct MrState {
    addr: u64,
    len: u64,
    lkey: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QpState {
    Reset,
    Init,
    Rtr,
    Rts,
    Error,
}

struct QpFake {
    lid: u16,
    cq: u32,
    state: QpState,
    remote: Option<QpEndpoint>,
    recvs: VecDeque<RecvWr>,
    /// Requests to a silent device: flushed when the queue pair goes to error.
    held: Vec<SendWr>,
}

#[derive(Default)]
struct CqFake {
    entries: VecDeque<WorkCompletion>,
    armed: bool,
    event: bool,
}

#[derive(Default)]
struct NetState {
    devices: HashMap<u16, Device>,
    qps: HashMap<u32, QpFake>,
    cqs: HashMap<u32, CqFake>,
    next_id: u32,
    /// Work requests posted, by verb name: lets a test see chains and doorbells.
    posts: Vec<usize>,
}

/// The simulated network the fake devices are on.
#[derive(Default)]
pub struct FakeNet {
    state: Mutex<NetState>,
    events: Condvar,
}

impl FakeNet {
    pub fn new() -> Arc<FakeNet> {
        Arc::new(FakeNet::default())
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.state.lock().expect(crate::POISONED)
    }

    /// A new device on this network, with LID `lid`.
    pub fn device(self: &Arc<FakeNet>, lid: u16) -> FakeVerbs {
        let fresh = self
            .lock()
            .devices
            .insert(
                lid,
                Device {
                    fate: Fate::Alive,
                    mrs: HashMap::new(),
                },
            )
            .is_none();
        assert!(fresh, "lid {lid} is taken");
        FakeVerbs {
            net: self.clone(),
            lid,
            name: format!("fake{lid}"),
            atomics: true,
        }
    }

    /// The device at `lid` stops answering: requests to it fail with `IBV_WC_RETRY_EXC_ERR`.
    pub fn vanish(&self, lid: u16) {
        self.set_fate(lid, Fate::Vanished);
    }

    /// The device at `lid` vanishes after executing `count` more requests sent to it.
    pub fn vanish_after(&self, lid: u16, count: u32) {
        self.set_fate(lid, Fate::VanishAfter(count));
    }

    /// Requests to the device at `lid` get no completion (until their queue pair is moved to
    /// the error state, which flushes them).
    pub fn silence(&self, lid: u16) {
        self.set_fate(lid, Fate::Silent);
    }

    fn set_fate(&self, lid: u16, fate: Fate) {
        self.lock().devices.get_mut(&lid).expect("a device").fate = fate;
    }

    /// How many send work requests each `ibv_post_send` carried, in order.
    pub fn post_sizes(&self) -> Vec<usize> {
        self.lock().posts.clone()
    }

    /// The state of queue pair `qpn`, as a test sees it.
    pub fn qp_is_in_error(&self, qpn: u32) -> bool {
        self.lock()
            .qps
            .get(&qpn)
            .is_some_and(|qp| qp.state == QpState::Error)
    }
}

impl NetState {
    fn complete(&mut self, cq: u32, completion: WorkCompletion) -> bool {
        let Some(cq) = self.cqs.get_mut(&cq) else {
            return false; // destroyed: the completion has nowhere to go
        };
        cq.entries.push_back(completion);
        if cq.armed {
            cq.armed = false;
            cq.event = true;
            return true;
        }
        false
    }

    /// Moves `qpn` to the error state, flushing what it holds. Returns whether an event fired.
    fn break_qp(&mut self, qpn: u32) -> bool {
        let Some(qp) = self.qps.get_mut(&qpn) else {
            return false;
        };
        qp.state = QpState::Error;
        let cq = qp.cq;
        let flushed: Vec<WorkCompletion> = qp
            .held
            .drain(..)
            .map(|wr| completion(wr.wr_id, WcStatus::WrFlushErr, WcOpcode::Unknown, qpn))
            .chain(
                qp.recvs
                    .drain(..)
                    .map(|wr| completion(wr.wr_id, WcStatus::WrFlushErr, WcOpcode::Unknown, qpn)),
            )
            .collect();
        let mut fired = false;
        for entry in flushed {
            fired |= self.complete(cq, entry);
        }
        fired
    }

    /// Checks that `[addr, addr + len)` lies in a registration of device `lid` with lkey `lkey`.
    fn local_ok(&self, lid: u16, addr: u64, len: u64, lkey: u32) -> bool {
        self.devices[&lid]
            .mrs
            .values()
            .any(|mr| mr.lkey == lkey && addr >= mr.addr && addr + len <= mr.addr + mr.len)
    }

    /// The remote range, if `rkey` names a registration of `lid` that holds it.
    fn remote_ok(&self, lid: u16, addr: u64, len: u64, rkey: u32) -> bool {
        self.devices
            .get(&lid)
            .and_then(|d| d.mrs.get(&rkey))
            .is_some_and(|mr| addr >= mr.addr && addr + len <= mr.addr + mr.len)
    }

    /// Executes one send request of `qpn`; returns its status.
    fn execute(&mut self, qpn: u32, wr: &SendWr, fired: &mut bool) -> Option<WcStatus> {
        let (lid, remote) = {
            let qp = &self.qps[&qpn];
            (qp.lid, qp.remote.expect("an RTS queue pair has a remote"))
        };
        if !self.local_ok(lid, wr.sge.addr, wr.sge.length as u64, wr.sge.lkey) {
            return Some(WcStatus::LocProtErr);
        }
        let fate = self.devices.get(&remote.lid).map(|d| d.fate);
        match fate {
            None | Some(Fate::Vanished) => return Some(WcStatus::RetryExcErr),
            Some(Fate::Silent) => return None,
            Some(Fate::VanishAfter(0)) => {
                self.devices.get_mut(&remote.lid).expect("a device").fate = Fate::Vanished;
                return Some(WcStatus::RetryExcErr);
            }
            Some(Fate::VanishAfter(count)) => {
                self.devices.get_mut(&remote.lid).expect("a device").fate =
                    Fate::VanishAfter(count - 1);
            }
            Some(Fate::Alive) => {}
        }
        // The peer queue pair must exist, be connected back to this one and be able to receive.
        let peer_ok = self.qps.get(&remote.qpn).is_some_and(|peer| {
            peer.lid == remote.lid
                && matches!(peer.state, QpState::Rtr | QpState::Rts)
                && peer.remote.is_some_and(|r| r.qpn == qpn)
        });
        if !peer_ok {
            return Some(WcStatus::RetryExcErr);
        }
        let local = wr.sge.addr as *mut u8;
        let len = wr.sge.length as u64;
        let words = |addr: u64, len: u64| -> Option<&[AtomicU64]> {
            if !addr.is_multiple_of(8) || !len.is_multiple_of(8) {
                return None;
            }
            // SAFETY: the range lies in a registration of the target device (checked by the
            // caller with `remote_ok`), whose owner promised (`Verbs::register`) that it stays
            // mapped and is accessed only through atomic words; it is 8-byte aligned.
            Some(unsafe {
                std::slice::from_raw_parts(addr as *const AtomicU64, (len / 8) as usize)
            })
        };
        match wr.kind {
            SendKind::Read { remote_addr, rkey } | SendKind::Write { remote_addr, rkey } => {
                if !self.remote_ok(remote.lid, remote_addr, len, rkey) {
                    return Some(WcStatus::RemAccessErr);
                }
                let Some(words) = words(remote_addr, len) else {
                    return Some(WcStatus::RemInvReqErr);
                };
                for (index, word) in words.iter().enumerate() {
                    // SAFETY: the local element lies in a registration of this device (checked
                    // above), which its owner does not touch while the request is outstanding
                    // (`Verbs::post_send`); 8 bytes at `index * 8` are inside it.
                    unsafe {
                        let at = local.add(index * 8);
                        if matches!(wr.kind, SendKind::Read { .. }) {
                            let bytes = word.load(Ordering::Acquire).to_le_bytes();
                            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, 8);
                        } else {
                            let mut bytes = [0u8; 8];
                            std::ptr::copy_nonoverlapping(at, bytes.as_mut_ptr(), 8);
                            word.store(u64::from_le_bytes(bytes), Ordering::Release);
                        }
                    }
                }
            }
            SendKind::CompareSwap {
                remote_addr,
                rkey,
                compare,
                swap,
            } => {
                if len != 8 {
                    return Some(WcStatus::LocLenErr);
                }
                if !self.remote_ok(remote.lid, remote_addr, 8, rkey) {
                    return Some(WcStatus::RemAccessErr);
                }
                let Some(words) = words(remote_addr, 8) else {
                    return Some(WcStatus::RemInvReqErr);
                };
                let previous = match words[0].compare_exchange(
                    compare,
                    swap,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(previous) | Err(previous) => previous,
                };
                // SAFETY: as for READ: 8 bytes of the checked local element.
                unsafe { std::ptr::copy_nonoverlapping(previous.to_le_bytes().as_ptr(), local, 8) };
            }
            SendKind::Send => {
                let peer = self.qps.get_mut(&remote.qpn).expect("checked above");
                let Some(recv) = peer.recvs.pop_front() else {
                    return Some(WcStatus::RnrRetryExcErr);
                };
                let peer_cq = peer.cq;
                if recv.sge.length < wr.sge.length
                    || !self.local_ok(remote.lid, recv.sge.addr, len, recv.sge.lkey)
                {
                    let entry =
                        completion(recv.wr_id, WcStatus::LocLenErr, WcOpcode::Recv, remote.qpn);
                    *fired |= self.complete(peer_cq, entry);
                    *fired |= self.break_qp(remote.qpn);
                    return Some(WcStatus::RemInvReqErr);
                }
                // SAFETY: both elements lie in registrations (checked above and when the
                // receive was posted... and again here), which their owners do not touch while
                // the requests are outstanding; the receive holds `len` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(local, recv.sge.addr as *mut u8, len as usize)
                };
                let mut entry =
                    completion(recv.wr_id, WcStatus::Success, WcOpcode::Recv, remote.qpn);
                entry.byte_len = len as u32;
                *fired |= self.complete(peer_cq, entry);
            }
        }
        Some(WcStatus::Success)
    }
}

fn completion(wr_id: u64, status: WcStatus, opcode: WcOpcode, qp_num: u32) -> WorkCompletion {
    WorkCompletion {
        wr_id,
        status,
        opcode,
        byte_len: 0,
        qp_num,
        vendor_err: 0,
    }
}

fn opcode_of(kind: SendKind) -> WcOpcode {
    match kind {
        SendKind::Read { .. } => WcOpcode::RdmaRead,
        SendKind::Write { .. } => WcOpcode::RdmaWrite,
        SendKind::CompareSwap { .. } => WcOpcode::CompareSwap,
        SendKind::Send => WcOpcode::Send,
    }
}

/// One fake device with its protection domain.
pub struct FakeVerbs {
    net: Arc<FakeNet>,
    lid: u16,
    name: String,
    atomics: bool,
}

impl FakeVerbs {
    /// This device without atomics (`atomic_cap` ATOMIC_NONE).
    pub fn without_atomics(mut self) -> FakeVerbs {
        self.atomics = false;
        self
    }

    pub fn lid(&self) -> u16 {
        self.lid
    }

    fn einval(call: &'static str) -> CallError {
        CallError::errno(call, libc::EINVAL)
    }
}

pub struct FakeMr {
    rkey: u32,
    lkey: u32,
}
pub struct FakeCq(u32);
pub struct FakeQp(u32);

impl Verbs for FakeVerbs {
    type Mr = FakeMr;
    type Cq = FakeCq;
    type Qp = FakeQp;

    fn device_name(&self) -> &str {
        &self.name
    }

    fn port_address(&self) -> (u16, [u8; 16]) {
        let mut gid = [0u8; 16];
        gid[14..].copy_from_slice(&self.lid.to_be_bytes());
        (self.lid, gid)
    }

    fn has_atomics(&self) -> bool {
        self.atomics
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<FakeMr, CallError> {
        let mut state = self.net.lock();
        state.next_id += 1;
        let id = state.next_id;
        // Keys that differ from each other and from ids, as a device's do.
        let (lkey, rkey) = (
            id.wrapping_mul(0x9e37) | 1,
            id.wrapping_mul(0x7f4a_7c15) | 2,
        );
        state
            .devices
            .get_mut(&self.lid)
            .expect("this device")
            .mrs
            .insert(
                rkey,
                MrState {
                    addr: addr as u64,
                    len: len as u64,
                    lkey,
                },
            );
        Ok(FakeMr { rkey, lkey })
    }

    fn mr_keys(&self, mr: &FakeMr) -> MrKeys {
        MrKeys {
            lkey: mr.lkey,
            rkey: mr.rkey,
        }
    }

    fn deregister(&self, mr: FakeMr) {
        let removed = self
            .net
            .lock()
            .devices
            .get_mut(&self.lid)
            .expect("this device")
            .mrs
            .remove(&mr.rkey);
        assert!(removed.is_some(), "rkey {:#x} deregistered twice", mr.rkey);
    }

    fn create_cq(&self, _entries: u32) -> Result<FakeCq, CallError> {
        let mut state = self.net.lock();
        state.next_id += 1;
        let id = state.next_id;
        state.cqs.insert(id, CqFake::default());
        Ok(FakeCq(id))
    }

    fn destroy_cq(&self, cq: FakeCq) {
        let mut state = self.net.lock();
        let users = state.qps.values().filter(|qp| qp.cq == cq.0).count();
        assert_eq!(
            users, 0,
            "a completion queue destroyed while queue pairs use it"
        );
        state.cqs.remove(&cq.0);
    }

    fn create_qp(&self, cq: &FakeCq, _caps: QpCaps) -> Result<FakeQp, CallError> {
        let mut state = self.net.lock();
        state.next_id += 1;
        let qpn = state.next_id;
        state.qps.insert(
            qpn,
            QpFake {
                lid: self.lid,
                cq: cq.0,
                state: QpState::Reset,
                remote: None,
                recvs: VecDeque::new(),
                held: Vec::new(),
            },
        );
        Ok(FakeQp(qpn))
    }

    fn qp_num(&self, qp: &FakeQp) -> u32 {
        qp.0
    }

    fn modify_qp(&self, qp: &FakeQp, transition: QpTransition) -> Result<(), CallError> {
        let mut state = self.net.lock();
        let fake = state.qps.get_mut(&qp.0).expect("a live queue pair");
        match (fake.state, transition) {
            (QpState::Reset, QpTransition::Init) => fake.state = QpState::Init,
            (QpState::Init, QpTransition::ReadyToReceive { remote }) => {
                fake.remote = Some(remote);
                fake.state = QpState::Rtr;
            }
            (QpState::Rtr, QpTransition::ReadyToSend { .. }) => fake.state = QpState::Rts,
            (_, QpTransition::Error) => {
                if state.break_qp(qp.0) {
                    self.net.events.notify_all();
                }
            }
            _ => return Err(Self::einval("ibv_modify_qp")),
        }
        Ok(())
    }

    fn destroy_qp(&self, qp: FakeQp) {
        self.net.lock().qps.remove(&qp.0);
    }

    unsafe fn post_send(&self, qp: &FakeQp, wrs: &[SendWr]) -> Result<(), PostError> {
        let mut state = self.net.lock();
        state.posts.push(wrs.len());
        let qp_state = state.qps.get(&qp.0).expect("a live queue pair").state;
        if !matches!(qp_state, QpState::Rts | QpState::Error) {
            return Err(PostError {
                call: "ibv_post_send",
                bad_index: 0,
                reason: format!("queue pair {} is in {qp_state:?}, not RTS", qp.0),
            });
        }
        let cq = state.qps[&qp.0].cq;
        let mut fired = false;
        for wr in wrs {
            let status = if state.qps[&qp.0].state == QpState::Error {
                Some(WcStatus::WrFlushErr)
            } else {
                let status = state.execute(qp.0, wr, &mut fired);
                if status.is_none() {
                    state.qps.get_mut(&qp.0).expect("live").held.push(*wr);
                }
                status
            };
            let Some(status) = status else { continue };
            if status != WcStatus::Success {
                let remote = state.qps[&qp.0].remote;
                fired |= state.complete(cq, completion(wr.wr_id, status, WcOpcode::Unknown, qp.0));
                fired |= state.break_qp(qp.0);
                // A responder that saw a bad request goes to the error state too.
                if matches!(status, WcStatus::RemAccessErr | WcStatus::RemInvReqErr)
                    && let Some(remote) = remote
                {
                    fired |= state.break_qp(remote.qpn);
                }
            } else if wr.signaled {
                fired |= state.complete(cq, completion(wr.wr_id, status, opcode_of(wr.kind), qp.0));
            }
        }
        if fired {
            self.net.events.notify_all();
        }
        Ok(())
    }

    unsafe fn post_recv(&self, qp: &FakeQp, wrs: &[RecvWr]) -> Result<(), PostError> {
        let mut state = self.net.lock();
        let fake = state.qps.get_mut(&qp.0).expect("a live queue pair");
        if fake.state == QpState::Reset {
            return Err(PostError {
                call: "ibv_post_recv",
                bad_index: 0,
                reason: format!("queue pair {} is in RESET", qp.0),
            });
        }
        fake.recvs.extend(wrs.iter().copied());
        if fake.state == QpState::Error && state.break_qp(qp.0) {
            self.net.events.notify_all();
        }
        Ok(())
    }

    fn poll_cq(
        &self,
        cq: &FakeCq,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> Result<usize, CallError> {
        let mut state = self.net.lock();
        let fake = state.cqs.get_mut(&cq.0).expect("a live completion queue");
        let count = fake.entries.len().min(max);
        out.extend(fake.entries.drain(..count));
        Ok(count)
    }

    fn arm_cq(&self, cq: &FakeCq) -> Result<(), CallError> {
        self.net
            .lock()
            .cqs
            .get_mut(&cq.0)
            .expect("a live completion queue")
            .armed = true;
        Ok(())
    }

    fn wait_cq(&self, cq: &FakeCq, timeout: Duration) -> Result<bool, CallError> {
        let state = self.net.lock();
        let (mut state, _) = self
            .net
            .events
            .wait_timeout_while(state, timeout, |s| {
                !s.cqs.get(&cq.0).is_some_and(|c| c.event)
            })
            .expect(crate::POISONED);
        let fake = state.cqs.get_mut(&cq.0).expect("a live completion queue");
        Ok(std::mem::take(&mut fake.event))
    }
}
