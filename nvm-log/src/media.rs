//! The word-level view of persistent memory that rings are written against.
//!
//! A ring is read and written only in aligned 8-byte words: loads are acquire, stores are
//! release, and `persist` makes earlier stores to a range durable (flush + drain or msync). Three
//! implementations: [`Mapping`] (real memory), [`MemMedia`] (a vector of atomics: loom models and
//! unit tests) and [`crate::fault::FaultMedia`] (simulated power loss).

use crate::mapping::Mapping;
use crate::sync::{AtomicU64, Ordering};
use std::io;
use std::sync::Arc;

/// Persistent memory addressed by byte offset in aligned 8-byte words.
///
/// Offsets must be 8-aligned and in bounds: callers validate offsets that come from stored data
/// before using them, so a violation here is a programmer error and panics.
pub trait Media: Send + Sync {
    /// Length in bytes (a multiple of 8).
    fn len(&self) -> u64;
    /// Acquire load of the word at `offset`.
    fn load(&self, offset: u64) -> u64;
    /// Release store of the word at `offset`.
    fn store(&self, offset: u64, value: u64);
    /// Makes every earlier store to `[offset, offset + len)` durable.
    fn persist(&self, offset: u64, len: u64) -> io::Result<()>;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub(crate) fn check_word(len: u64, offset: u64) -> usize {
    assert!(offset.is_multiple_of(8), "unaligned word offset={offset}");
    assert!(
        offset + 8 <= len,
        "word out of bounds: offset={offset} len={len}"
    );
    (offset / 8) as usize
}

/// Reads `out.len()` bytes (a multiple of 8) starting at `offset`, word by word.
pub fn read_bytes<M: Media + ?Sized>(media: &M, offset: u64, out: &mut [u8]) {
    assert!(
        out.len().is_multiple_of(8),
        "read of {} bytes is not whole words",
        out.len()
    );
    for (i, chunk) in out.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&media.load(offset + 8 * i as u64).to_le_bytes());
    }
}

/// Writes `bytes` (a multiple of 8) starting at `offset`, word by word in increasing order.
pub fn write_bytes<M: Media + ?Sized>(media: &M, offset: u64, bytes: &[u8]) {
    assert!(
        bytes.len().is_multiple_of(8),
        "write of {} bytes is not whole words",
        bytes.len()
    );
    for (i, chunk) in bytes.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact(8)"));
        media.store(offset + 8 * i as u64, word);
    }
}

impl Media for Mapping {
    fn len(&self) -> u64 {
        Mapping::len(self) as u64
    }

    fn load(&self, offset: u64) -> u64 {
        let i = check_word(Media::len(self), offset);
        self.words()[i].load(std::sync::atomic::Ordering::Acquire)
    }

    fn store(&self, offset: u64, value: u64) {
        let i = check_word(Media::len(self), offset);
        self.words()[i].store(value, std::sync::atomic::Ordering::Release)
    }

    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        Mapping::persist(self, offset as usize, len as usize)
    }
}

impl<T: Media + ?Sized> Media for Arc<T> {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn load(&self, offset: u64) -> u64 {
        (**self).load(offset)
    }
    fn store(&self, offset: u64, value: u64) {
        (**self).store(offset, value)
    }
    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).persist(offset, len)
    }
}

impl<T: Media + ?Sized> Media for &T {
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn load(&self, offset: u64) -> u64 {
        (**self).load(offset)
    }
    fn store(&self, offset: u64, value: u64) {
        (**self).store(offset, value)
    }
    fn persist(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).persist(offset, len)
    }
}

/// Volatile memory as a vector of atomic words: for loom models and tests. `persist` does nothing
/// beyond ordering (every store is already visible to every thread).
pub struct MemMedia {
    words: Vec<AtomicU64>,
}

impl MemMedia {
    pub fn new(len: u64) -> MemMedia {
        assert!(len.is_multiple_of(8), "length {len} is not whole words");
        MemMedia {
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> Vec<u64> {
        self.words
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .collect()
    }

    pub fn from_words(words: &[u64]) -> MemMedia {
        MemMedia {
            words: words.iter().map(|&w| AtomicU64::new(w)).collect(),
        }
    }
}

impl Media for MemMedia {
    fn len(&self) -> u64 {
        self.words.len() as u64 * 8
    }
    fn load(&self, offset: u64) -> u64 {
        let i = check_word(self.len(), offset);
        self.words[i].load(Ordering::Acquire)
    }
    fn store(&self, offset: u64, value: u64) {
        let i = check_word(self.len(), offset);
        self.words[i].store(value, Ordering::Release)
    }
    fn persist(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}
