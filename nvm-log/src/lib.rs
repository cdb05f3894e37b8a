//! Persistent ring logs for Acre: the flush + drain primitives, mapped files, the ring format, and
//! the recovery scan that turns a crashed ring back into exactly its complete records.
//!
//! The pieces, bottom up:
//! - [`flush`]: write back cache lines (`clwb`, else `clflushopt`, else `clflush`) and drain
//!   (`sfence`). The only module with flush instructions.
//! - [`mapping`]: a memory-mapped file or anonymous memory, persisted by flush + drain on DAX,
//!   by `msync` on ordinary files, or by libpmem (feature `libpmem`). The only module with `mmap`.
//! - [`media`]: the word-level view of persistent memory that the ring is written against, with
//!   a plain in-memory implementation; [`fault`] is one that simulates power loss.
//! - [`record`] and [`ring`]: the on-media format and the one-writer, one-reader ring protocol.
//!   The writer is sans-I/O: it plans the writes and persists, and whoever owns the path to the
//!   memory (a local store, or the fabric's one-sided WRITE) carries them out.
//! - [`recovery`]: the scan run when a ring is opened after a crash.
//! - [`random`]: the workspace's one pseudo-random generator and the seeds of its randomised
//!   tests (here because this is the lowest crate; `fault` draws its power-loss fates from it).
//!
//! The byte layout is drawn in `docs/formats.md`.
#![deny(unsafe_code)]

/// What `lock().expect` says of a poisoned lock. A thread panicked while holding it, so what
/// it guards may be half-changed: the process stops rather than go on with it (and in release
/// builds, where panics abort, no lock is ever poisoned).
pub(crate) const POISONED: &str = "a thread panicked while holding this lock";

pub mod crc;
pub mod error;
pub mod fault;
pub mod flush;
pub mod mapping;
pub mod media;
pub mod random;
pub mod record;
pub mod recovery;
pub mod ring;
mod sync;

pub use error::LogError;
pub use mapping::{Durability, MapOptions, Mapping, PersistMode};
pub use media::{Media, MemMedia};
pub use record::{Record, RecordKind};
pub use recovery::{Discarded, Recovery};
pub use ring::{AppendPlan, LocalWriter, LogOp, Reservation, RingGeometry, RingReader, RingWriter};
