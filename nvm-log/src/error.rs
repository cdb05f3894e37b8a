//! The one error type of the crate: each variant says what went wrong, where, and what to do.

/// An error from reading, writing or recovering a ring log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The file is shorter than its header or its declared size: stop, it is not a usable log.
    #[error("ring media is {len} bytes, too short: {needed} bytes needed at offset {offset}")]
    Truncated { offset: u64, len: u64, needed: u64 },
    /// Not an Acre ring log at all.
    #[error("bad magic {found:#018x} at offset {offset}: not an Acre ring log")]
    BadMagic { offset: u64, found: u64 },
    /// A ring written by a different format version.
    #[error(
        "unsupported ring format version {found} at offset {offset} (this build reads {supported})"
    )]
    BadVersion {
        offset: u64,
        found: u32,
        supported: u32,
    },
    /// Damaged bytes where a valid header or an acknowledged record must be: stop and restore
    /// this replica from its peers.
    #[error("corrupt ring at offset {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    /// A reservation did not fit: nothing was written. Truncate applied records (or wait for the
    /// receiver to), then retry.
    #[error("log full: {needed} bytes needed, {free} free; retry after the receiver truncates")]
    Full { needed: u64, free: u64 },
    /// A record larger than the ring allows: split it or configure a larger ring.
    #[error("record of {len} payload bytes exceeds this ring's maximum of {max}")]
    TooLarge { len: u64, max: u64 },
    /// The ring's capacity or maximum record size is unusable.
    #[error("invalid ring geometry: {0}")]
    Geometry(String),
    /// Persisting (msync, libpmem) failed: the bytes may not be durable, so the append is not
    /// acknowledged.
    #[error("persist failed: {0}")]
    Io(#[from] std::io::Error),
}

impl LogError {
    pub(crate) fn corrupt(offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            offset,
            reason: reason.into(),
        }
    }
}
