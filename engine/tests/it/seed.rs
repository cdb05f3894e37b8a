//! Seeds for randomised tests: fresh each run, printed so a failure can be replayed, and pinned
//! with `ACRE_TEST_SEED=<n>`.

use std::hash::{BuildHasher, RandomState};

/// Environment variable that pins the seed of every randomised test.
pub const SEED_ENV: &str = "ACRE_TEST_SEED";

/// The seed for a randomised test: `ACRE_TEST_SEED` if set, otherwise fresh. Printed either way;
/// the harness shows it when the test fails.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64")),
        Err(_) => RandomState::new().hash_one(test),
    };
    eprintln!("{test}: seed={seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// SplitMix64: small, fast, and good enough to pick sizes and fill payloads.
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `[low, high]`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "low={low} high={high}");
        low + self.next_u64() % (high - low + 1)
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}
