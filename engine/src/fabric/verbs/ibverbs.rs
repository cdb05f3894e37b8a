//! The verbs layer over ibverbs (`rdma-sys`): one device context, protection domain and port.
//!
//! **Not run on RDMA hardware.** This translation is compiled and linted; on a host without
//! devices only [`IbVerbs::open`]'s refusal is exercised (the unit tests). What it does follows
//! the ibverbs manual pages and `rc_pingpong`'s connection set-up: RC queue pairs, INIT with
//! remote READ/WRITE/atomic access, RTR with the peer's QP number, PSN, LID and GID (global
//! routing when the GID is set, as RoCE needs), RTS with 7 retries and 7 RNR retries.

use super::VerbsError;
use super::device::{
    CallError, MrKeys, PostError, QpCaps, QpTransition, RecvWr, SendKind, SendWr, Verbs, WcOpcode,
    WcStatus, WorkCompletion,
};
use rdma_sys as sys;
use std::ffi::CStr;
use std::os::raw::{c_int, c_uint};
use std::time::Duration;

/// Outstanding RDMA READs and atomics per queue pair, each way (capped by the device's).
const RD_ATOMIC_MAX: u8 = 16;
/// The RNR timer a receiver asks for (ibverbs' code 12: 0.64 ms).
const MIN_RNR_TIMER: u8 = 12;
/// The local ACK timeout (4.096 µs × 2^14 ≈ 67 ms) and retries before `IBV_WC_RETRY_EXC_ERR`.
const ACK_TIMEOUT: u8 = 14;
const RETRY_COUNT: u8 = 7;
/// 7 means "retry for ever" in ibverbs; 6 bounds the wait for a receive.
const RNR_RETRY_COUNT: u8 = 6;
/// Completions read per `ibv_poll_cq` call at most.
const POLL_BATCH_MAX: usize = 16;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The error of a call that returned `code`: ibverbs calls return the errno itself, or -1 with
/// `errno` set (`ibv_query_gid`, some providers), depending on the call and the version.
fn returned(call: &'static str, code: c_int) -> CallError {
    CallError::errno(call, if code < 0 { last_errno() } else { code })
}

/// One opened device: its context, protection domain and the port used.
pub struct IbVerbs {
    name: String,
    context: *mut sys::ibv_context,
    pd: *mut sys::ibv_pd,
    port: u8,
    gid_index: u8,
    lid: u16,
    gid: [u8; 16],
    mtu: sys::ibv_mtu::Type,
    atomics: bool,
    /// READs and atomics this side may have outstanding as initiator (`max_qp_init_rd_atom`)
    /// and accept as responder (`max_qp_rd_atom`), capped at [`RD_ATOMIC_MAX`].
    rd_atomic_initiator: u8,
    rd_atomic_responder: u8,
}

// SAFETY: libibverbs objects may be used from any thread (its verbs are thread-safe); the raw
// pointers are only passed to ibverbs calls and released once, in `Drop`.
unsafe impl Send for IbVerbs {}
// SAFETY: as above.
unsafe impl Sync for IbVerbs {}

/// A memory registration.
pub struct IbMr(*mut sys::ibv_mr);
/// A completion queue and its completion channel.
pub struct IbCq {
    cq: *mut sys::ibv_cq,
    channel: *mut sys::ibv_comp_channel,
}
/// A queue pair.
pub struct IbQp(*mut sys::ibv_qp);

// SAFETY: handles to thread-safe ibverbs objects, released only through `IbVerbs`.
unsafe impl Send for IbMr {}
// SAFETY: as above.
unsafe impl Sync for IbMr {}
// SAFETY: as above.
unsafe impl Send for IbCq {}
// SAFETY: as above.
unsafe impl Sync for IbCq {}
// SAFETY: as above.
unsafe impl Send for IbQp {}
// SAFETY: as above.
unsafe impl Sync for IbQp {}

impl IbVerbs {
    /// Opens device `device` (as `ibv_devices` names it) on port `port`, with the GID at
    /// `gid_index`, and allocates a protection domain.
    pub fn open(device: &str, port: u8, gid_index: u8) -> Result<IbVerbs, VerbsError> {
        let unavailable = |call: &'static str, reason: String| VerbsError::DeviceUnavailable {
            device: device.to_string(),
            call,
            reason,
        };
        let mut count: c_int = 0;
        // SAFETY: `count` is a valid out-pointer; the list is freed below.
        let list = unsafe { sys::ibv_get_device_list(&mut count) };
        if list.is_null() {
            let errno = last_errno();
            return Err(unavailable(
                "ibv_get_device_list",
                CallError::errno("ibv_get_device_list", errno).reason,
            ));
        }
        let mut names = Vec::new();
        let mut found = std::ptr::null_mut();
        for index in 0..count.max(0) as usize {
            // SAFETY: the list has `count` entries, each a device whose name is a NUL-
            // terminated string owned by the list.
            let name = unsafe {
                let entry = *list.add(index);
                let name = CStr::from_ptr(sys::ibv_get_device_name(entry));
                if name.to_bytes() == device.as_bytes() {
                    found = entry;
                }
                name.to_string_lossy().into_owned()
            };
            names.push(name);
        }
        let context = if found.is_null() {
            std::ptr::null_mut()
        } else {
            // SAFETY: `found` is a device of the list, which is still alive.
            unsafe { sys::ibv_open_device(found) }
        };
        let errno = last_errno();
        // SAFETY: the list came from `ibv_get_device_list`; an opened context does not need it.
        unsafe { sys::ibv_free_device_list(list) };
        if found.is_null() {
            return Err(unavailable(
                "ibv_get_device_list",
                format!("no device of that name; this host has {names:?}"),
            ));
        }
        if context.is_null() {
            return Err(unavailable(
                "ibv_open_device",
                CallError::errno("ibv_open_device", errno).reason,
            ));
        }
        let mut verbs = IbVerbs {
            name: device.to_string(),
            context,
            pd: std::ptr::null_mut(),
            port,
            gid_index,
            lid: 0,
            gid: [0; 16],
            mtu: sys::ibv_mtu::IBV_MTU_1024,
            atomics: false,
            rd_atomic_initiator: 1,
            rd_atomic_responder: 1,
        };
        // From here on, `verbs`' `Drop` closes what is open if a step fails.
        verbs.query()?;
        // SAFETY: the context is open.
        verbs.pd = unsafe { sys::ibv_alloc_pd(context) };
        if verbs.pd.is_null() {
            return Err(verbs.setup(CallError::errno("ibv_alloc_pd", last_errno())));
        }
        Ok(verbs)
    }

    fn setup(&self, e: CallError) -> VerbsError {
        VerbsError::Setup {
            device: self.name.clone(),
            call: e.call,
            reason: e.reason,
        }
    }

    /// Reads the device's atomics, the port's state, LID and MTU, and the GID.
    fn query(&mut self) -> Result<(), VerbsError> {
        // SAFETY: plain C structs, for which all zeroes is a valid value.
        let mut device: sys::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `device` a valid out-pointer.
        let code = unsafe { sys::ibv_query_device(self.context, &mut device) };
        if code != 0 {
            return Err(self.setup(returned("ibv_query_device", code)));
        }
        self.atomics = device.atomic_cap != sys::ibv_atomic_cap::IBV_ATOMIC_NONE;
        let cap = |max: c_int| max.clamp(1, RD_ATOMIC_MAX as c_int) as u8;
        self.rd_atomic_initiator = cap(device.max_qp_init_rd_atom);
        self.rd_atomic_responder = cap(device.max_qp_rd_atom);
        // SAFETY: as above.
        let mut port: sys::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `port` a valid out-pointer of the size passed.
        let code = unsafe { sys::___ibv_query_port(self.context, self.port, &mut port) };
        if code != 0 {
            return Err(self.setup(returned("ibv_query_port", code)));
        }
        if port.state != sys::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(VerbsError::MissingCapability {
                device: self.name.clone(),
                capability: "an active port",
                what_to_do: "check the port's link (`ibv_devinfo`) or choose another port",
            });
        }
        self.lid = port.lid;
        self.mtu = port.active_mtu;
        // SAFETY: as above.
        let mut gid: sys::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `gid` a valid out-pointer.
        let code = unsafe {
            sys::ibv_query_gid(self.context, self.port, self.gid_index as c_int, &mut gid)
        };
        if code != 0 {
            return Err(self.setup(returned("ibv_query_gid", code)));
        }
        // SAFETY: every bit pattern is a valid `[u8; 16]`.
        self.gid = unsafe { gid.raw };
        Ok(())
    }
}

impl Drop for IbVerbs {
    fn drop(&mut self) {
        // SAFETY: opened in `open` and released once, here; every queue pair, completion queue
        // and registration was released before (the transport's `Drop` order).
        unsafe {
            if !self.pd.is_null() {
                sys::ibv_dealloc_pd(self.pd);
            }
            sys::ibv_close_device(self.context);
        }
    }
}

fn access_flags() -> c_uint {
    (sys::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
        | sys::ibv_access_flags::IBV_ACCESS_REMOTE_READ
        | sys::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
        | sys::ibv_access_flags::IBV_ACCESS_REMOTE_ATOMIC)
        .0
}

fn opcode_of(code: sys::ibv_wc_opcode::Type) -> WcOpcode {
    use sys::ibv_wc_opcode::*;
    match code {
        IBV_WC_SEND => WcOpcode::Send,
        IBV_WC_RDMA_WRITE => WcOpcode::RdmaWrite,
        IBV_WC_RDMA_READ => WcOpcode::RdmaRead,
        IBV_WC_COMP_SWAP => WcOpcode::CompareSwap,
        IBV_WC_RECV => WcOpcode::Recv,
        _ => WcOpcode::Unknown,
    }
}

impl Verbs for IbVerbs {
    type Mr = IbMr;
    type Cq = IbCq;
    type Qp = IbQp;

    fn device_name(&self) -> &str {
        &self.name
    }

    fn port_address(&self) -> (u16, [u8; 16]) {
        (self.lid, self.gid)
    }

    fn has_atomics(&self) -> bool {
        self.atomics
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<IbMr, CallError> {
        // SAFETY: the protection domain is open; the caller keeps the range valid until
        // `deregister` (this function's contract).
        let mr = unsafe { sys::ibv_reg_mr(self.pd, addr.cast(), len, access_flags() as c_int) };
        if mr.is_null() {
            return Err(CallError::errno("ibv_reg_mr", last_errno()));
        }
        Ok(IbMr(mr))
    }

    fn mr_keys(&self, mr: &IbMr) -> MrKeys {
        // SAFETY: a live registration of this device; its keys are set once by ibverbs.
        unsafe {
            MrKeys {
                lkey: (*mr.0).lkey,
                rkey: (*mr.0).rkey,
            }
        }
    }

    fn deregister(&self, mr: IbMr) {
        // SAFETY: a live registration, released once (consumed here).
        unsafe { sys::ibv_dereg_mr(mr.0) };
    }

    fn create_cq(&self, entries: u32) -> Result<IbCq, CallError> {
        // SAFETY: the context is open.
        let channel = unsafe { sys::ibv_create_comp_channel(self.context) };
        if channel.is_null() {
            return Err(CallError::errno("ibv_create_comp_channel", last_errno()));
        }
        // Non-blocking, so that `wait_cq` reads an event only after `poll` says there is one.
        // SAFETY: the channel is live; its `fd` is an open descriptor it owns.
        let fd = unsafe { (*channel).fd };
        // SAFETY: fcntl on an open descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            let e = CallError::errno("fcntl O_NONBLOCK on the completion channel", last_errno());
            // SAFETY: created above, no queue uses it.
            unsafe { sys::ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        // SAFETY: the context and channel are open.
        let cq = unsafe {
            sys::ibv_create_cq(
                self.context,
                entries as c_int,
                std::ptr::null_mut(),
                channel,
                0,
            )
        };
        if cq.is_null() {
            let e = CallError::errno("ibv_create_cq", last_errno());
            // SAFETY: created above, no queue uses it.
            unsafe { sys::ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        Ok(IbCq { cq, channel })
    }

    fn destroy_cq(&self, cq: IbCq) {
        // SAFETY: live objects, released once; no queue pair uses the queue (the caller's
        // promise) and every event read was acknowledged (`wait_cq`).
        unsafe {
            sys::ibv_destroy_cq(cq.cq);
            sys::ibv_destroy_comp_channel(cq.channel);
        }
    }

    fn create_qp(&self, cq: &IbCq, caps: QpCaps) -> Result<IbQp, CallError> {
        // SAFETY: a plain C struct, for which all zeroes is valid (null pointers included).
        let mut init: sys::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.cq;
        init.recv_cq = cq.cq;
        init.cap.max_send_wr = caps.send_wr_max;
        init.cap.max_recv_wr = caps.recv_wr_max;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        init.qp_type = sys::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: the protection domain and queue are live; `init` is valid.
        let qp = unsafe { sys::ibv_create_qp(self.pd, &mut init) };
        if qp.is_null() {
            return Err(CallError::errno("ibv_create_qp", last_errno()));
        }
        Ok(IbQp(qp))
    }

    fn qp_num(&self, qp: &IbQp) -> u32 {
        // SAFETY: a live queue pair; its number is set once by ibverbs.
        unsafe { (*qp.0).qp_num }
    }

    fn modify_qp(&self, qp: &IbQp, transition: QpTransition) -> Result<(), CallError> {
        use sys::ibv_qp_attr_mask as mask;
        // SAFETY: a plain C struct, for which all zeroes is valid.
        let mut attr: sys::ibv_qp_attr = unsafe { std::mem::zeroed() };
        let flags = match transition {
            QpTransition::Init => {
                attr.qp_state = sys::ibv_qp_state::IBV_QPS_INIT;
                attr.pkey_index = 0;
                attr.port_num = self.port;
                attr.qp_access_flags = access_flags();
                mask::IBV_QP_STATE
                    | mask::IBV_QP_PKEY_INDEX
                    | mask::IBV_QP_PORT
                    | mask::IBV_QP_ACCESS_FLAGS
            }
            QpTransition::ReadyToReceive { remote } => {
                attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTR;
                attr.path_mtu = self.mtu;
                attr.dest_qp_num = remote.qpn;
                attr.rq_psn = remote.psn;
                attr.max_dest_rd_atomic = self.rd_atomic_responder;
                attr.min_rnr_timer = MIN_RNR_TIMER;
                attr.ah_attr.dlid = remote.lid;
                attr.ah_attr.port_num = self.port;
                if remote.gid != [0; 16] {
                    attr.ah_attr.is_global = 1;
                    attr.ah_attr.grh.dgid.raw = remote.gid;
                    attr.ah_attr.grh.sgid_index = self.gid_index;
                    attr.ah_attr.grh.hop_limit = 1;
                }
                mask::IBV_QP_STATE
                    | mask::IBV_QP_AV
                    | mask::IBV_QP_PATH_MTU
                    | mask::IBV_QP_DEST_QPN
                    | mask::IBV_QP_RQ_PSN
                    | mask::IBV_QP_MAX_DEST_RD_ATOMIC
                    | mask::IBV_QP_MIN_RNR_TIMER
            }
            QpTransition::ReadyToSend { psn } => {
                attr.qp_state = sys::ibv_qp_state::IBV_QPS_RTS;
                attr.timeout = ACK_TIMEOUT;
                attr.retry_cnt = RETRY_COUNT;
                attr.rnr_retry = RNR_RETRY_COUNT;
                attr.sq_psn = psn;
                attr.max_rd_atomic = self.rd_atomic_initiator;
                mask::IBV_QP_STATE
                    | mask::IBV_QP_TIMEOUT
                    | mask::IBV_QP_RETRY_CNT
                    | mask::IBV_QP_RNR_RETRY
                    | mask::IBV_QP_SQ_PSN
                    | mask::IBV_QP_MAX_QP_RD_ATOMIC
            }
            QpTransition::Error => {
                attr.qp_state = sys::ibv_qp_state::IBV_QPS_ERR;
                mask::IBV_QP_STATE
            }
        };
        // SAFETY: a live queue pair; `attr` is valid for the fields `flags` names.
        let code = unsafe { sys::ibv_modify_qp(qp.0, &mut attr, flags.0 as c_int) };
        if code != 0 {
            return Err(returned("ibv_modify_qp", code));
        }
        Ok(())
    }

    fn destroy_qp(&self, qp: IbQp) {
        // SAFETY: a live queue pair, released once (consumed here).
        unsafe { sys::ibv_destroy_qp(qp.0) };
    }

    unsafe fn post_send(&self, qp: &IbQp, wrs: &[SendWr]) -> Result<(), PostError> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<sys::ibv_sge> = wrs
            .iter()
            .map(|wr| sys::ibv_sge {
                addr: wr.sge.addr,
                length: wr.sge.length,
                lkey: wr.sge.lkey,
            })
            .collect();
        // SAFETY: plain C structs, for which all zeroes is valid (null `next` included).
        let mut chain: Vec<sys::ibv_send_wr> =
            wrs.iter().map(|_| unsafe { std::mem::zeroed() }).collect();
        for (index, wr) in wrs.iter().enumerate() {
            let raw = &mut chain[index];
            raw.wr_id = wr.wr_id;
            raw.sg_list = &mut sges[index];
            raw.num_sge = 1;
            let mut flags = 0;
            if wr.signaled {
                flags |= sys::ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if wr.fence {
                flags |= sys::ibv_send_flags::IBV_SEND_FENCE.0;
            }
            raw.send_flags = flags;
            match wr.kind {
                SendKind::Read { remote_addr, rkey } => {
                    raw.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_READ;
                    raw.wr.rdma = sys::rdma_t { remote_addr, rkey };
                }
                SendKind::Write { remote_addr, rkey } => {
                    raw.opcode = sys::ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                    raw.wr.rdma = sys::rdma_t { remote_addr, rkey };
                }
                SendKind::CompareSwap {
                    remote_addr,
                    rkey,
                    compare,
                    swap,
                } => {
                    raw.opcode = sys::ibv_wr_opcode::IBV_WR_ATOMIC_CMP_AND_SWP;
                    raw.wr.atomic = sys::atomic_t {
                        remote_addr,
                        compare_add: compare,
                        swap,
                        rkey,
                    };
                }
                SendKind::Send => raw.opcode = sys::ibv_wr_opcode::IBV_WR_SEND,
            }
        }
        // Linked after filling, so that no pointer into `chain` is taken while it is borrowed
        // mutably element by element.
        let base = chain.as_mut_ptr();
        for index in 1..chain.len() {
            // SAFETY: `index` is in bounds; the vector is not resized after this.
            chain[index - 1].next = unsafe { base.add(index) };
        }
        let mut bad: *mut sys::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: a live queue pair; the chain and its elements live until the call returns
        // (ibverbs copies them into the send queue); the memory they name is registered and
        // kept valid by the caller (this function's contract).
        let code = unsafe { sys::ibv_post_send(qp.0, base, &mut bad) };
        if code != 0 {
            let bad_index = if bad.is_null() {
                0
            } else {
                // SAFETY: ibverbs sets `bad` to an element of the chain.
                unsafe { bad.offset_from(base) }.max(0) as usize
            };
            return Err(PostError {
                call: "ibv_post_send",
                bad_index,
                reason: returned("ibv_post_send", code).reason,
            });
        }
        Ok(())
    }

    unsafe fn post_recv(&self, qp: &IbQp, wrs: &[RecvWr]) -> Result<(), PostError> {
        if wrs.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<sys::ibv_sge> = wrs
            .iter()
            .map(|wr| sys::ibv_sge {
                addr: wr.sge.addr,
                length: wr.sge.length,
                lkey: wr.sge.lkey,
            })
            .collect();
        let mut chain: Vec<sys::ibv_recv_wr> = wrs
            .iter()
            .zip(sges.iter_mut())
            .map(|(wr, sge)| sys::ibv_recv_wr {
                wr_id: wr.wr_id,
                next: std::ptr::null_mut(),
                sg_list: sge,
                num_sge: 1,
            })
            .collect();
        let base = chain.as_mut_ptr();
        for index in 1..chain.len() {
            // SAFETY: `index` is in bounds; the vector is not resized after this.
            chain[index - 1].next = unsafe { base.add(index) };
        }
        let mut bad: *mut sys::ibv_recv_wr = std::ptr::null_mut();
        // SAFETY: as for `post_send`.
        let code = unsafe { sys::ibv_post_recv(qp.0, base, &mut bad) };
        if code != 0 {
            let bad_index = if bad.is_null() {
                0
            } else {
                // SAFETY: ibverbs sets `bad` to an element of the chain.
                unsafe { bad.offset_from(base) }.max(0) as usize
            };
            return Err(PostError {
                call: "ibv_post_recv",
                bad_index,
                reason: returned("ibv_post_recv", code).reason,
            });
        }
        Ok(())
    }

    fn poll_cq(
        &self,
        cq: &IbCq,
        out: &mut Vec<WorkCompletion>,
        max: usize,
    ) -> Result<usize, CallError> {
        // SAFETY: plain C structs, for which all zeroes is valid.
        let mut raw: [sys::ibv_wc; POLL_BATCH_MAX] = unsafe { std::mem::zeroed() };
        let max = max.min(POLL_BATCH_MAX);
        // SAFETY: a live queue; `raw` holds `max` entries.
        let count = unsafe { sys::ibv_poll_cq(cq.cq, max as c_int, raw.as_mut_ptr()) };
        if count < 0 {
            return Err(CallError::errno("ibv_poll_cq", -count));
        }
        out.extend(raw[..count as usize].iter().map(|wc| WorkCompletion {
            wr_id: wc.wr_id,
            status: WcStatus::from_code(wc.status),
            opcode: opcode_of(wc.opcode),
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
            vendor_err: wc.vendor_err,
        }));
        Ok(count as usize)
    }

    fn arm_cq(&self, cq: &IbCq) -> Result<(), CallError> {
        // SAFETY: a live queue.
        let code = unsafe { sys::ibv_req_notify_cq(cq.cq, 0) };
        if code != 0 {
            return Err(returned("ibv_req_notify_cq", code));
        }
        Ok(())
    }

    fn wait_cq(&self, cq: &IbCq, timeout: Duration) -> Result<bool, CallError> {
        let mut poll = libc::pollfd {
            // SAFETY: the channel is live; `fd` is its open descriptor.
            fd: unsafe { (*cq.channel).fd },
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = timeout.as_millis().min(i32::MAX as u128) as c_int;
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let errno = last_errno();
            if errno == libc::EINTR {
                return Ok(false);
            }
            return Err(CallError::errno("poll on the completion channel", errno));
        }
        if ready == 0 {
            return Ok(false);
        }
        let mut event_cq: *mut sys::ibv_cq = std::ptr::null_mut();
        let mut context: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: the channel is live and non-blocking; the out-pointers are valid.
        let code = unsafe { sys::ibv_get_cq_event(cq.channel, &mut event_cq, &mut context) };
        if code != 0 {
            let errno = last_errno();
            if errno == libc::EAGAIN {
                return Ok(false); // another reader took it
            }
            return Err(CallError::errno("ibv_get_cq_event", errno));
        }
        // SAFETY: the event's queue is this live queue (one queue per channel); one event read.
        unsafe { sys::ibv_ack_cq_events(event_cq, 1) };
        Ok(true)
    }
}
