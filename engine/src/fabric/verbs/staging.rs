//! A registered buffer a connection's work requests move bytes through: READ destinations,
//! WRITE sources, CAS results, messages and their replies. Work requests may only name
//! registered memory, and registering per batch costs a device call each time, so each
//! connection keeps one, grown (re-registered) when a chain needs more.
//!
//! The device writes into it while work requests are outstanding, so it is raw memory behind a
//! pointer, never a Rust reference: the owner copies in before posting and out after the
//! completions are read.

use super::device::{CallError, MrKeys, Verbs};
use std::alloc::Layout;
use std::ptr::NonNull;

/// Alignment of a staging buffer: a page, so a registration covers whole pages.
const ALIGN_BYTES: usize = 4096;

/// One registered buffer. Dropped without [`Staging::release`], it is leaked, registration and
/// all: that is for a buffer the device may still write into (its connection timed out with
/// work requests outstanding).
pub struct Staging<V: Verbs> {
    ptr: NonNull<u8>,
    layout: Layout,
    mr: Option<V::Mr>,
    keys: MrKeys,
}

// SAFETY: the buffer is plain heap memory owned by this value; the device handle is `Send +
// Sync` by the trait's bounds; every access goes through `&mut self` or the device.
unsafe impl<V: Verbs> Send for Staging<V> {}
// SAFETY: as above; `&self` only reads the pointer and keys.
unsafe impl<V: Verbs> Sync for Staging<V> {}

impl<V: Verbs> Staging<V> {
    /// A zeroed buffer of `bytes` (rounded up to a page), registered on `verbs`.
    pub fn new(verbs: &V, bytes: usize) -> Result<Staging<V>, CallError> {
        let size = bytes.max(1).next_multiple_of(ALIGN_BYTES);
        let layout = Layout::from_size_align(size, ALIGN_BYTES).expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        // SAFETY: the allocation is this value's until `release` (which deregisters first) or
        // `leak`; it is only accessed through raw pointers (`write_at`, `read_at`), and only
        // while no work request on it is outstanding.
        let registered = unsafe { verbs.register(ptr.as_ptr(), size) };
        match registered {
            Ok(mr) => Ok(Staging {
                ptr,
                layout,
                keys: verbs.mr_keys(&mr),
                mr: Some(mr),
            }),
            Err(e) => {
                // SAFETY: allocated above with this layout and never registered.
                unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
                Err(e)
            }
        }
    }

    pub fn bytes(&self) -> usize {
        self.layout.size()
    }

    pub fn keys(&self) -> MrKeys {
        self.keys
    }

    /// The device address of byte `offset`.
    pub fn addr(&self, offset: usize) -> u64 {
        assert!(
            offset <= self.bytes(),
            "offset={offset} len={}",
            self.bytes()
        );
        self.ptr.as_ptr() as u64 + offset as u64
    }

    /// Copies `bytes` in at `offset`. Only while nothing is posted on the buffer.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.bytes(), "offset={offset}");
        // SAFETY: in bounds (checked above) of this value's allocation; `&mut self` and the
        // caller's promise (nothing posted) mean nobody else accesses it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    /// Copies `len` bytes out from `offset`. Only once the completions of what was posted on the
    /// buffer are read.
    pub fn read_at(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.bytes(), "offset={offset} len={len}");
        let mut out = vec![0u8; len];
        // SAFETY: in bounds of this value's allocation; the device no longer writes it (the
        // caller's promise: completions read).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), len)
        };
        out
    }

    /// Deregisters and frees the buffer: only once nothing is outstanding on it.
    pub fn release(mut self, verbs: &V) {
        if let Some(mr) = self.mr.take() {
            verbs.deregister(mr);
        }
        // SAFETY: allocated in `new` with this layout; deregistered just above, so the device
        // no longer accesses it; freed once (`self` is consumed, and has no `Drop`).
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
