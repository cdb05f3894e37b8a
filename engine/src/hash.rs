//! A fast hasher for the maps on the commit path, whose keys are small integers of our own
//! (region and node ids, transaction ids, addresses). The standard library's SipHash resists
//! flooding by chosen keys, which these maps do not face: only authenticated members of a
//! cluster name their keys, and a member can do worse than slow a map down. SipHash cost about
//! a sixth of the instructions of a bank transfer (measured with
//! `benches/instructions-per-transfer.sh`); this one costs a multiply per word.
//!
//! Each word is folded in with a rotate, an xor and a multiply by an odd constant, which
//! carries every input bit into the high bits of the state; `finish` folds the high half back
//! into the low half, because the table picks buckets with the low bits (an address's low bits
//! are often zero: slots are aligned) and control bytes with the top ones.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildFastHasher>;
/// A `HashSet` with [`FastHasher`].
pub type FastSet<K> = HashSet<K, BuildFastHasher>;

/// Builds [`FastHasher`]s; every map's hasher is the same (no per-map random key).
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildFastHasher;

impl BuildHasher for BuildFastHasher {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { state: 0 }
    }
}

/// The hasher: see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct FastHasher {
    state: u64,
}

/// An odd constant with bits spread over the whole word (from the digits of pi).
const MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.state = (self.state.rotate_left(23) ^ word).wrapping_mul(MULTIPLIER);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            // The length keeps "ab" and "ab\0" apart.
            self.add(u64::from_le_bytes(last) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(n.into());
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(n.into());
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(n.into());
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state ^ (self.state >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{Addr, RegionId};
    use std::collections::BTreeSet;
    use std::hash::Hash;

    fn hash_of(value: impl Hash) -> u64 {
        BuildFastHasher.hash_one(value)
    }

    #[test]
    fn aligned_addresses_spread_over_the_low_bits() {
        // 4096 slot-aligned addresses of one region: the low 12 bits of their hashes (what a
        // table of 4096 buckets uses) take most of the 4096 values.
        let buckets: BTreeSet<u64> = (0..4096u32)
            .map(|i| hash_of(Addr::new(RegionId(3), i * 64)) & 0xfff)
            .collect();
        assert!(
            buckets.len() > 2400,
            "{} of 4096 buckets used",
            buckets.len()
        );
    }

    #[test]
    fn equal_keys_hash_equal_and_byte_strings_of_other_lengths_differ() {
        assert_eq!(hash_of((RegionId(1), 7u32)), hash_of((RegionId(1), 7u32)));
        assert_ne!(hash_of((RegionId(1), 7u32)), hash_of((RegionId(7), 1u32)));
        let mut a = BuildFastHasher.build_hasher();
        a.write(b"ab");
        let mut b = BuildFastHasher.build_hasher();
        b.write(b"ab\0");
        assert_ne!(a.finish(), b.finish());
    }

    #[test]
    fn a_map_works_as_a_map() {
        let mut map: FastMap<u64, u64> = FastMap::default();
        for i in 0..10_000 {
            map.insert(i << 20, i);
        }
        assert!((0..10_000).all(|i| map[&(i << 20)] == i));
    }
}
