//! The atomic word the object protocol is written against, so that the same protocol code runs on
//! region memory (std's `AtomicU64`) and, under `cfg(loom)`, on loom's atomics in the model.
//!
//! Region memory is handed out by `acre_nvm_log::Mapping` as `&[std::sync::atomic::AtomicU64]`
//! whatever the cfg, so swapping the atomic type module-wide (as nvm-log's `sync` does) would
//! make region words and protocol words different types under loom. A trait with one impl per
//! atomic type keeps both: the engine runs on std atomics, the loom model on loom's.

pub use std::sync::atomic::Ordering;

/// An aligned 8-byte word that is only ever accessed atomically.
///
/// The orderings are the caller's to choose; `Ordering` is std's type in both worlds (loom
/// re-exports it).
pub trait AtomicWord {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    /// Stores `new` if the word holds `current`; returns the value found either way (`Ok` when it
    /// was `current`).
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64>;
}

impl AtomicWord for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, order)
    }

    #[inline]
    fn store(&self, value: u64, order: Ordering) {
        std::sync::atomic::AtomicU64::store(self, value, order)
    }

    #[inline]
    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        std::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}

#[cfg(loom)]
impl AtomicWord for loom::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, order)
    }

    fn store(&self, value: u64, order: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, value, order)
    }

    fn compare_exchange(
        &self,
        current: u64,
        new: u64,
        success: Ordering,
        failure: Ordering,
    ) -> Result<u64, u64> {
        loom::sync::atomic::AtomicU64::compare_exchange(self, current, new, success, failure)
    }
}
