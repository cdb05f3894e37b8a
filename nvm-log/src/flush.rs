//! Cache-line write-back and drain: the flush + drain half of persistence.
//!
//! On persistent memory mapped with `MAP_SYNC` (DAX), a store is durable once its cache line has
//! been written back to the memory controller and a fence has ordered that write-back before
//! anything that follows. The write-back instruction is chosen once from CPUID: `clwb` (keeps the
//! line cached), else `clflushopt`, else `clflush` (which is ordered by itself). The drain is one
//! `sfence`. These instructions are not exposed as stable intrinsics in Rust 1.95, so they are
//! one line of inline assembly each; this is the only module that contains them.
//!
//! On targets other than x86-64 there is no flush instruction here: [`FlushKind::detect`] returns
//! [`FlushKind::Unsupported`] and callers fall back to `msync`.
#![allow(unsafe_code)]

use std::sync::OnceLock;

/// Bytes in a cache line: the unit of write-back and of durability tearing.
pub const CACHE_LINE_BYTES: usize = 64;

/// The write-back instruction in use on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushKind {
    Clwb,
    Clflushopt,
    Clflush,
    /// No cache-line write-back instruction (not x86-64): persistence must use `msync`.
    Unsupported,
}

impl FlushKind {
    /// The best instruction this CPU offers, read from CPUID once and cached.
    pub fn detect() -> FlushKind {
        static KIND: OnceLock<FlushKind> = OnceLock::new();
        *KIND.get_or_init(detect_uncached)
    }

    pub fn name(self) -> &'static str {
        match self {
            FlushKind::Clwb => "clwb",
            FlushKind::Clflushopt => "clflushopt",
            FlushKind::Clflush => "clflush",
            FlushKind::Unsupported => "none",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn detect_uncached() -> FlushKind {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // CPUID is available on every x86-64 CPU. Leaf 7 is valid when leaf 0 reports it.
    let max_leaf = __cpuid(0).eax;
    if max_leaf >= 7 {
        let ebx = __cpuid_count(7, 0).ebx;
        if ebx & (1 << 24) != 0 {
            return FlushKind::Clwb;
        }
        if ebx & (1 << 23) != 0 {
            return FlushKind::Clflushopt;
        }
    }
    if __cpuid(1).edx & (1 << 19) != 0 {
        return FlushKind::Clflush;
    }
    FlushKind::Unsupported
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_uncached() -> FlushKind {
    FlushKind::Unsupported
}

/// Writes back every cache line overlapping `[addr, addr + len)` with `kind` and then drains with
/// one `sfence`. Returns false, having done nothing, when `kind` is `Unsupported`.
///
/// # Safety
/// `[addr, addr + len)` must lie inside one live mapping of this process. The instructions do not
/// change memory contents, but they fault on unmapped addresses.
pub unsafe fn flush_and_drain(kind: FlushKind, addr: *const u8, len: usize) -> bool {
    if kind == FlushKind::Unsupported {
        return false;
    }
    if len == 0 {
        drain();
        return true;
    }
    let start = addr as usize & !(CACHE_LINE_BYTES - 1);
    let end = addr as usize + len;
    let mut line = start;
    while line < end {
        // SAFETY: `line` is inside a cache line that overlaps the caller's mapped range, and a
        // cache line never crosses a page, so the whole line is mapped too.
        unsafe { write_back(kind, line as *const u8) };
        line += CACHE_LINE_BYTES;
    }
    drain();
    true
}

/// # Safety
/// `line` points into mapped memory.
#[cfg(target_arch = "x86_64")]
unsafe fn write_back(kind: FlushKind, line: *const u8) {
    use std::arch::asm;
    match kind {
        // SAFETY: the caller guarantees `line` is mapped; a write-back only moves the line
        // towards memory and never changes what a load would return.
        FlushKind::Clwb => unsafe {
            asm!("clwb [{0}]", in(reg) line, options(nostack, preserves_flags));
        },
        // SAFETY: as for clwb.
        FlushKind::Clflushopt => unsafe {
            asm!("clflushopt [{0}]", in(reg) line, options(nostack, preserves_flags));
        },
        // SAFETY: as for clwb.
        FlushKind::Clflush => unsafe {
            asm!("clflush [{0}]", in(reg) line, options(nostack, preserves_flags));
        },
        FlushKind::Unsupported => {}
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn write_back(_kind: FlushKind, _line: *const u8) {}

/// Orders every earlier write-back before any later store: the "drain" of flush + drain.
pub fn drain() {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `sfence` needs SSE, which every x86-64 CPU has (it is in the baseline target).
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_an_instruction_on_x86_64() {
        let kind = FlushKind::detect();
        if cfg!(target_arch = "x86_64") {
            assert_ne!(kind, FlushKind::Unsupported);
        }
    }

    #[test]
    fn every_kind_runs_on_ordinary_memory_without_changing_it() {
        let buf: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let kinds = [FlushKind::Clflush, FlushKind::detect()];
        for kind in kinds {
            // SAFETY: `buf` is a live allocation of 1000 bytes and we flush 999 of them.
            let flushed = unsafe { flush_and_drain(kind, buf.as_ptr().wrapping_add(1), 999) };
            assert_eq!(flushed, kind != FlushKind::Unsupported);
        }
        assert!(buf.iter().enumerate().all(|(i, &b)| b == i as u8));
    }
}
