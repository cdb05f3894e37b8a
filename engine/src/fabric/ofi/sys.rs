//! The C side of the ofi transport (`shim.c`, compiled by `engine/build.rs`): declarations of
//! its wrappers, and [`Handle`], the one safe owner of a node's libfabric objects.
//!
//! Every wrapper returns libfabric's result: 0 or a count on success, a negative `FI_E*` code on
//! failure. Buffers handed to a posting call must stay valid and unmoved until that operation's
//! completion has been read from the queue (or forever, if it never comes): callers keep them in
//! heap allocations they own for that long.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};

/// `FI_EAGAIN`: nothing to read yet, or the queue is full; try again.
pub const FI_EAGAIN: i32 = 11;
/// `FI_EAVAIL`: an error completion is waiting for `fi_cq_readerr`.
pub const FI_EAVAIL: i32 = 259;
/// `FI_ENODATA`: no provider matched.
pub const FI_ENODATA: i32 = 61;
/// `FI_ETIMEDOUT`: `fi_cq_sread` waited its timeout out.
pub const FI_ETIMEDOUT: i32 = 110;
/// `FI_ECANCELED`: `fi_cq_sread` was woken by `fi_cq_signal` (some providers say so).
pub const FI_ECANCELED: i32 = 125;
/// `FI_EINTR`: a wait was interrupted by a signal (a node's handlers, a profiler's): wait again.
pub const FI_EINTR: i32 = 4;

/// Room for an endpoint name: larger than any provider's (socket addresses, `shm`'s strings).
pub const NAME_BYTES_MAX: usize = 256;

/// The two endpoints of a node: the target side, served by its NIC thread, and the initiator side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Target = 0,
    Initiator = 1,
}

/// `struct fi_cq_tagged_entry`, as `shim.c` checks at start (`acre_ofi_cq_entry_bytes`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CqEntry {
    pub op_context: *mut c_void,
    pub flags: u64,
    pub len: usize,
    pub buf: *mut c_void,
    pub data: u64,
    pub tag: u64,
}

const _: () = assert!(std::mem::size_of::<CqEntry>() == 48);

impl CqEntry {
    pub const EMPTY: CqEntry = CqEntry {
        op_context: std::ptr::null_mut(),
        flags: 0,
        len: 0,
        buf: std::ptr::null_mut(),
        data: 0,
        tag: 0,
    };
}

/// `struct acre_ofi_caps`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Caps {
    pub atomic_cas: c_int,
    pub ordered: c_int,
    pub virt_addr: c_int,
    pub cq_wait: c_int,
    pub manual_progress: c_int,
    pub inject_bytes: u64,
    /// As `ordered`, except that a write posted after a read may be placed before it.
    pub ordered_but_war: c_int,
}

#[repr(C)]
struct RawOfi {
    _private: [u8; 0],
}

/// `struct fid_mr`, only ever behind a pointer.
#[repr(C)]
pub struct RawMr {
    _private: [u8; 0],
}

// Linked by engine/build.rs: the shim, then libfabric.
unsafe extern "C" {
    fn acre_ofi_open(
        provider: *const c_char,
        node: *const c_char,
        out: *mut *mut RawOfi,
        caps: *mut Caps,
        failed_call: *mut *const c_char,
    ) -> c_int;
    fn acre_ofi_close(ofi: *mut RawOfi);
    fn acre_ofi_close_endpoints(ofi: *mut RawOfi);
    fn acre_ofi_ep_name(ofi: *mut RawOfi, which: c_int, buf: *mut c_void, len: *mut usize)
    -> c_int;
    fn acre_ofi_av_insert(ofi: *mut RawOfi, name: *const c_void, fi_addr: *mut u64) -> c_int;
    fn acre_ofi_mr_reg(
        ofi: *mut RawOfi,
        base: *mut c_void,
        len: usize,
        writable: c_int,
        requested_key: u64,
        mr: *mut *mut RawMr,
        key: *mut u64,
    ) -> c_int;
    fn acre_ofi_mr_close(mr: *mut RawMr) -> c_int;
    fn acre_ofi_read(
        ofi: *mut RawOfi,
        buf: *mut c_void,
        len: usize,
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
        more: c_int,
    ) -> isize;
    fn acre_ofi_write(
        ofi: *mut RawOfi,
        buf: *const c_void,
        len: usize,
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
        more: c_int,
    ) -> isize;
    fn acre_ofi_cas(
        ofi: *mut RawOfi,
        words: *mut u64,
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
    ) -> isize;
    fn acre_ofi_tsend(
        ofi: *mut RawOfi,
        which: c_int,
        buf: *const c_void,
        len: usize,
        dest: u64,
        tag: u64,
        context: *mut c_void,
    ) -> isize;
    fn acre_ofi_trecv(
        ofi: *mut RawOfi,
        which: c_int,
        buf: *mut c_void,
        len: usize,
        tag: u64,
        ignore: u64,
        context: *mut c_void,
    ) -> isize;
    fn acre_ofi_cancel(ofi: *mut RawOfi, which: c_int, context: *mut c_void) -> c_int;
    fn acre_ofi_cq_read(
        ofi: *mut RawOfi,
        which: c_int,
        entries: *mut CqEntry,
        count: usize,
    ) -> isize;
    fn acre_ofi_cq_sread(
        ofi: *mut RawOfi,
        which: c_int,
        entries: *mut CqEntry,
        count: usize,
        timeout_ms: c_int,
    ) -> isize;
    fn acre_ofi_cq_readerr(
        ofi: *mut RawOfi,
        which: c_int,
        context: *mut *mut c_void,
        err: *mut c_int,
        message: *mut c_char,
        message_len: usize,
    ) -> isize;
    fn acre_ofi_cq_signal(ofi: *mut RawOfi, which: c_int) -> c_int;
    fn acre_ofi_strerror(code: c_int) -> *const c_char;
    fn acre_ofi_provider_name(ofi: *mut RawOfi) -> *const c_char;
    fn acre_ofi_cq_entry_bytes() -> usize;
}

/// libfabric's words for a (positive) `FI_E*` or errno code.
pub fn strerror(code: i32) -> String {
    // SAFETY: fi_strerror returns a pointer to a static NUL-terminated string for any code
    // (unknown codes get a generic text); it is only read here.
    unsafe { CStr::from_ptr(acre_ofi_strerror(code.abs())) }
        .to_string_lossy()
        .into_owned()
}

/// A failed libfabric call: which one, and its code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    pub call: String,
    pub code: i32,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.call, strerror(self.code))
    }
}

fn check(call: &str, ret: isize) -> Result<usize, CallError> {
    if ret < 0 {
        Err(CallError {
            call: call.to_string(),
            code: (-ret) as i32,
        })
    } else {
        Ok(ret as usize)
    }
}

/// One error completion.
pub struct ErrorEntry {
    pub op_context: *mut c_void,
    pub code: i32,
    pub message: String,
}

/// A node's libfabric objects (fabric, domain, address vector, two endpoints and their
/// completion queues), closed on drop. libfabric is opened thread-safe (`FI_THREAD_SAFE`), so
/// every method may be called from any thread.
pub struct Handle {
    raw: *mut RawOfi,
    caps: Caps,
    provider: String,
}

// SAFETY: the domain is opened with FI_THREAD_SAFE, so libfabric serializes concurrent calls on
// the same objects itself; the pointer is never freed before drop, which takes `&mut self`.
unsafe impl Send for Handle {}
// SAFETY: as for Send: every call through `&Handle` is a thread-safe libfabric call.
unsafe impl Sync for Handle {}

impl Handle {
    /// Opens `provider` with endpoints on the local address `node`.
    pub fn open(provider: &str, node: &str) -> Result<Handle, CallError> {
        let bad_string = |what: &str| CallError {
            call: format!("{what} contains a NUL byte"),
            code: 22, // EINVAL
        };
        let provider_c = CString::new(provider).map_err(|_| bad_string("the provider name"))?;
        let node_c = CString::new(node).map_err(|_| bad_string("the node address"))?;
        // SAFETY: a pure function of no arguments.
        let entry_bytes = unsafe { acre_ofi_cq_entry_bytes() };
        assert_eq!(
            entry_bytes,
            std::mem::size_of::<CqEntry>(),
            "CqEntry layout"
        );
        let mut raw = std::ptr::null_mut();
        let mut caps = Caps::default();
        let mut failed: *const c_char = std::ptr::null();
        // SAFETY: the strings are NUL-terminated and live across the call; `raw`, `caps` and
        // `failed` are valid for writes. On failure nothing is left open and `raw` is not set.
        let ret = unsafe {
            acre_ofi_open(
                provider_c.as_ptr(),
                node_c.as_ptr(),
                &mut raw,
                &mut caps,
                &mut failed,
            )
        };
        if ret != 0 {
            let call = if failed.is_null() {
                "acre_ofi_open".to_string()
            } else {
                // SAFETY: `failed` points to one of the shim's static string literals.
                unsafe { CStr::from_ptr(failed) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(CallError { call, code: -ret });
        }
        // SAFETY: `raw` is open; the name lives in its fi_info until close, and is copied here.
        let name = unsafe { CStr::from_ptr(acre_ofi_provider_name(raw)) };
        let provider = name.to_string_lossy().into_owned();
        Ok(Handle {
            raw,
            caps,
            provider,
        })
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// The provider as libfabric names it (`tcp;ofi_rxm`, `sockets`, ...).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The address of endpoint `side`, as bytes another node inserts into its address vector.
    pub fn name(&self, side: Side) -> Result<Vec<u8>, CallError> {
        let mut buf = vec![0u8; NAME_BYTES_MAX];
        let mut len = buf.len();
        // SAFETY: `buf` has `len` writable bytes; fi_getname writes at most `len` and sets it.
        let ret =
            unsafe { acre_ofi_ep_name(self.raw, side as c_int, buf.as_mut_ptr().cast(), &mut len) };
        check("fi_getname", ret as isize)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Inserts a peer endpoint's name (shorter than [`NAME_BYTES_MAX`]); returns its
    /// `fi_addr_t`.
    pub fn insert(&self, name: &[u8]) -> Result<u64, CallError> {
        assert!(name.len() < NAME_BYTES_MAX, "name of {} bytes", name.len());
        // The provider reads as many bytes as its names take, or up to a NUL: a zeroed buffer
        // larger than any name bounds what it can read.
        let mut padded = [0u8; NAME_BYTES_MAX];
        padded[..name.len()].copy_from_slice(name);
        let mut addr = u64::MAX;
        // SAFETY: `padded` has NAME_BYTES_MAX readable bytes, more than any provider's names
        // take, and ends in a NUL; `addr` is writable.
        let ret = unsafe { acre_ofi_av_insert(self.raw, padded.as_ptr().cast(), &mut addr) };
        check("fi_av_insert", ret as isize)?;
        Ok(addr)
    }

    /// Registers `[base, base + len)` for remote READ, and for remote WRITE and atomics too
    /// when `writable`.
    ///
    /// # Safety
    /// The memory must stay mapped until the returned registration is closed
    /// ([`Handle::close_mr`]), and may be written by the provider at any time until then
    /// (so it must only be accessed through atomics or `UnsafeCell`s).
    pub unsafe fn register(
        &self,
        base: *mut u8,
        len: usize,
        writable: bool,
        requested_key: u64,
    ) -> Result<(*mut RawMr, u64), CallError> {
        let mut mr = std::ptr::null_mut();
        let mut key = 0;
        // SAFETY: the caller keeps the memory mapped for the registration's life; the out
        // pointers are valid.
        let ret = unsafe {
            acre_ofi_mr_reg(
                self.raw,
                base.cast(),
                len,
                c_int::from(writable),
                requested_key,
                &mut mr,
                &mut key,
            )
        };
        check("fi_mr_reg", ret as isize)?;
        Ok((mr, key))
    }

    /// Closes a registration: the provider refuses its key from then on. An error means it
    /// may still accept it (the fence relies on this result, docs/failures.md#fencing).
    ///
    /// # Safety
    /// `mr` came from [`Handle::register`] on this handle and is closed once (after an error,
    /// it is not closed again: it is leaked).
    pub unsafe fn close_mr(&self, mr: *mut RawMr) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret = unsafe { acre_ofi_mr_close(mr) };
        check("fi_close (a memory registration)", ret as isize).map(|_| ())
    }

    /// Posts an RDMA READ of `len` bytes at the peer's `addr` into `buf`.
    ///
    /// # Safety
    /// `buf` has `len` writable bytes and `context` 64 writable bytes, both valid and unmoved
    /// until this operation's completion is read (or forever).
    #[allow(clippy::too_many_arguments)] // one libfabric call's arguments, passed through
    pub unsafe fn read(
        &self,
        buf: *mut u8,
        len: usize,
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
        more: bool,
    ) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret = unsafe {
            acre_ofi_read(
                self.raw,
                buf.cast(),
                len,
                dest,
                addr,
                key,
                context,
                more as c_int,
            )
        };
        check("fi_read", ret).map(drop)
    }

    /// Posts an RDMA WRITE of `len` bytes from `buf` to the peer's `addr`.
    ///
    /// # Safety
    /// As [`Handle::read`], with `buf` readable.
    #[allow(clippy::too_many_arguments)] // one libfabric call's arguments, passed through
    pub unsafe fn write(
        &self,
        buf: *const u8,
        len: usize,
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
        more: bool,
    ) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret = unsafe {
            acre_ofi_write(
                self.raw,
                buf.cast(),
                len,
                dest,
                addr,
                key,
                context,
                more as c_int,
            )
        };
        check("fi_write", ret).map(drop)
    }

    /// Posts a 64-bit compare-and-swap: `words` = [new, expected, previous (written)].
    ///
    /// # Safety
    /// As [`Handle::read`], for the three words.
    pub unsafe fn compare_swap(
        &self,
        words: *mut [u64; 3],
        dest: u64,
        addr: u64,
        key: u64,
        context: *mut c_void,
    ) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret = unsafe { acre_ofi_cas(self.raw, words.cast(), dest, addr, key, context) };
        check("fi_compare_atomic", ret).map(drop)
    }

    /// Posts a tagged send of `len` bytes.
    ///
    /// # Safety
    /// As [`Handle::read`], with `buf` readable.
    #[allow(clippy::too_many_arguments)] // one libfabric call's arguments, passed through
    pub unsafe fn send(
        &self,
        side: Side,
        buf: *const u8,
        len: usize,
        dest: u64,
        tag: u64,
        context: *mut c_void,
    ) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret =
            unsafe { acre_ofi_tsend(self.raw, side as c_int, buf.cast(), len, dest, tag, context) };
        check("fi_tsend", ret).map(drop)
    }

    /// Posts a tagged receive into `buf` for a message whose tag matches `tag` outside `ignore`.
    ///
    /// # Safety
    /// As [`Handle::read`].
    pub unsafe fn receive(
        &self,
        side: Side,
        buf: *mut u8,
        len: usize,
        tag: u64,
        ignore: u64,
        context: *mut c_void,
    ) -> Result<(), CallError> {
        // SAFETY: as the caller promises.
        let ret = unsafe {
            acre_ofi_trecv(
                self.raw,
                side as c_int,
                buf.cast(),
                len,
                tag,
                ignore,
                context,
            )
        };
        check("fi_trecv", ret).map(drop)
    }

    /// Withdraws what is still posted on `side` with `context` and can be withdrawn (a posted
    /// receive): it completes with an `FI_ECANCELED` error completion, which must be read
    /// before its buffers are freed. Anything else (an operation already under way or done,
    /// an RMA operation on most providers) completes as it would have.
    /// `context` is the operation's context as an address: it is only compared.
    pub fn cancel(&self, side: Side, context: usize) -> Result<(), CallError> {
        // SAFETY: fi_cancel only compares `context` with the contexts of the operations posted
        // on the endpoint, never dereferences it, so any value is sound; the endpoint is open.
        let ret = unsafe { acre_ofi_cancel(self.raw, side as c_int, context as *mut c_void) };
        check("fi_cancel", ret as isize).map(drop)
    }

    /// Reads completions of `side` without blocking: `Ok(n)` entries, `Ok(0)` if none yet,
    /// `Err` with code [`FI_EAVAIL`] if an error completion waits.
    pub fn poll(&self, side: Side, entries: &mut [CqEntry]) -> Result<usize, CallError> {
        // SAFETY: `entries` has room for `entries.len()` entries of the declared layout.
        let ret = unsafe {
            acre_ofi_cq_read(self.raw, side as c_int, entries.as_mut_ptr(), entries.len())
        };
        match check("fi_cq_read", ret) {
            Err(e) if e.code == FI_EAGAIN => Ok(0),
            other => other,
        }
    }

    /// As [`Handle::poll`], but sleeps on the queue's wait object for up to `timeout_ms` when
    /// nothing is there (only if [`Caps::cq_wait`]).
    pub fn wait(
        &self,
        side: Side,
        entries: &mut [CqEntry],
        timeout_ms: i32,
    ) -> Result<usize, CallError> {
        // SAFETY: as in `poll`.
        let ret = unsafe {
            acre_ofi_cq_sread(
                self.raw,
                side as c_int,
                entries.as_mut_ptr(),
                entries.len(),
                timeout_ms,
            )
        };
        match check("fi_cq_sread", ret) {
            Err(e) if [FI_EAGAIN, FI_ETIMEDOUT, FI_ECANCELED, FI_EINTR].contains(&e.code) => Ok(0),
            other => other,
        }
    }

    /// The next error completion of `side`, if any.
    pub fn read_error(&self, side: Side) -> Option<ErrorEntry> {
        let mut context = std::ptr::null_mut();
        let mut code = 0;
        let mut message = [0 as c_char; 256];
        // SAFETY: the out pointers are valid and `message` has the length passed; the shim
        // NUL-terminates what it copies.
        let ret = unsafe {
            acre_ofi_cq_readerr(
                self.raw,
                side as c_int,
                &mut context,
                &mut code,
                message.as_mut_ptr(),
                message.len(),
            )
        };
        if ret <= 0 {
            return None;
        }
        // SAFETY: NUL-terminated by the shim within the buffer.
        let text = unsafe { CStr::from_ptr(message.as_ptr()) };
        Some(ErrorEntry {
            op_context: context,
            code,
            message: text.to_string_lossy().into_owned(),
        })
    }

    /// Closes both endpoints and then their completion queues, so that the provider moves no
    /// more data into or out of registered memory: libfabric's order, before the
    /// registrations are closed and the memory released.
    ///
    /// # Safety
    /// Nothing but [`Handle::close_mr`] and drop is called on the handle afterwards (the other
    /// calls would reach closed endpoints or queues), and no other thread is inside a call on
    /// it (`&mut self`).
    pub unsafe fn close_endpoints(&mut self) {
        // SAFETY: `raw` is open; closing twice is a no-op (the shim clears what it closed);
        // the caller makes no endpoint or queue call afterwards.
        unsafe { acre_ofi_close_endpoints(self.raw) };
    }

    /// Wakes a thread sleeping in [`Handle::wait`] on `side`.
    pub fn signal(&self, side: Side) {
        // SAFETY: the queue is open; signalling has no other effect than a wake-up.
        unsafe { acre_ofi_cq_signal(self.raw, side as c_int) };
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: `raw` was opened by `open` and is closed once, here; no other reference to
        // the handle exists (`&mut self`), so no call is in progress.
        unsafe { acre_ofi_close(self.raw) };
    }
}
