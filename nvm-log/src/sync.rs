//! The atomics the ring and the in-memory media use, replaced by loom's under `cfg(loom)` so the
//! head / tail / reservation protocol can be model-checked.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};
