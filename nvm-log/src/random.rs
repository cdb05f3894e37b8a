//! The workspace's one pseudo-random generator ([`SplitMix`]) and the seeds of its randomised
//! tests: fresh each run unless [`SEED_ENV`] pins one, and printed so that a failure says how to
//! replay it, and how much of the run that replays.
//!
//! It lives in the lowest crate because every crate's tests use it, and so do nvm-log's
//! simulated power loss (`fault`) and the workload generators above. It is not for keys or
//! nonces: those come from the OS (`getrandom`).

use std::fmt;
use std::hash::{BuildHasher, RandomState};

/// Environment variable that pins the seed of every randomised test of the workspace: set it to
/// the seed a failure printed to run that seed again.
pub const SEED_ENV: &str = "ACRE_TEST_SEED";

/// How much of a failing run pinning its seed replays, printed with the seed so that it never
/// promises more than it can give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Every random choice is drawn on one thread, in an order the seed alone decides: the
    /// pinned seed replays the same operations in the same order. (Threads the test does not
    /// steer, such as a cluster's workers, may still run at other speeds; the test's outcome
    /// must not depend on that.)
    Exact,
    /// Threads (or processes) run at once, each drawing from a stream derived from the seed:
    /// the pinned seed replays what each of them chooses, but not how they interleave or when
    /// a kill lands, which the OS scheduler decides. A failure may take several runs to recur.
    ChoicesOnly,
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Replay::Exact => "replays the same operations in the same order",
            Replay::ChoicesOnly => {
                "replays every random choice but not the timing of threads and processes \
                 (the OS decides it): a failure may take several runs to recur"
            }
        })
    }
}

/// The seed pinned by [`SEED_ENV`], if it is set. Panics if it is set to anything but a `u64`:
/// a typo must not silently run a fresh seed.
pub fn pinned_seed() -> Option<u64> {
    let text = std::env::var(SEED_ENV).ok()?;
    Some(
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_ENV}={text:?} is not a u64")),
    )
}

/// The seed for the randomised test `test`, whose random choices are all drawn on one thread
/// ([`Replay::Exact`]): the one [`SEED_ENV`] pins, otherwise a fresh one.
///
/// It is printed either way, with how to pin it. The test harness shows a failing test's
/// output, so the failure carries its seed. A test whose threads draw from the seed at once
/// takes a [`ConcurrentSeed`] instead.
pub fn test_seed(test: &str) -> u64 {
    seed_for(test, Replay::Exact)
}

fn seed_for(test: &str, replay: Replay) -> u64 {
    let seed = pinned_seed().unwrap_or_else(|| RandomState::new().hash_one(test));
    eprintln!("{test}: seed={seed} (pin it with {SEED_ENV}={seed}, which {replay})");
    seed
}

/// The seed of a test whose threads (or processes) run at once, each drawing from a stream
/// derived from it ([`Replay::ChoicesOnly`]): chosen and printed as [`test_seed`] does, with
/// what pinning it does not replay.
///
/// Hold it in a named binding for the whole test: if the test panics while it is held, it says
/// again, after the panic message, which seed failed and that pinning it replays every random
/// choice but not how the threads interleaved.
#[must_use = "hold it for the whole test, or a failure will not say what its seed replays"]
#[derive(Debug)]
pub struct ConcurrentSeed {
    test: String,
    seed: u64,
}

impl ConcurrentSeed {
    pub fn new(test: &str) -> ConcurrentSeed {
        ConcurrentSeed {
            test: test.to_string(),
            seed: seed_for(test, Replay::ChoicesOnly),
        }
    }

    pub fn value(&self) -> u64 {
        self.seed
    }
}

impl Drop for ConcurrentSeed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let ConcurrentSeed { test, seed } = self;
            eprintln!(
                "{test} failed with seed={seed}: pin it with {SEED_ENV}={seed}, which {}",
                Replay::ChoicesOnly
            );
        }
    }
}

/// Runs `test` once for every seed in `0..count`, or only for the one [`SEED_ENV`] pins. When a
/// seed fails, prints it, how to pin it and what that replays, then lets the panic go on.
pub fn for_each_seed(count: u64, replay: Replay, mut test: impl FnMut(u64)) {
    let seeds: Vec<u64> = match pinned_seed() {
        Some(seed) => vec![seed],
        None => (0..count).collect(),
    };
    for seed in seeds {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
        if let Err(panic) = outcome {
            eprintln!("failing seed {seed}: pin it with {SEED_ENV}={seed}, which {replay}");
            std::panic::resume_unwind(panic);
        }
    }
}

/// A small, fast, deterministic generator (splitmix64, Steele, Lea and Flood, "Fast Splittable
/// Pseudorandom Number Generators", OOPSLA 2014): a failing crash schedule or workload replays
/// from its seed, and nearby seeds give unrelated streams.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        self.next_u64() % n
    }

    /// A value in `[low, high]`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low <= high, "low={low} high={high}");
        low + self.next_u64() % (high - low + 1)
    }

    /// `len` pseudo-random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published splitmix64 sequence for seed 0 (the reference implementation's first
    /// outputs): every seeded test and crash schedule in the workspace depends on it not
    /// changing.
    #[test]
    fn splitmix_matches_the_reference_sequence() {
        let mut rng = SplitMix::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(rng.next_u64(), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn below_and_range_stay_in_bounds_and_reach_both_ends() {
        let mut rng = SplitMix::new(7);
        let draws: Vec<u64> = (0..1000).map(|_| rng.range(3, 6)).collect();
        assert!(draws.iter().all(|d| (3..=6).contains(d)), "{draws:?}");
        assert!(draws.contains(&3), "low end never drawn");
        assert!(draws.contains(&6), "high end never drawn");
        assert!((0..1000).all(|_| rng.below(5) < 5));
        assert_eq!(rng.range(9, 9), 9);
    }

    #[test]
    fn bytes_are_the_little_endian_words_cut_to_length() {
        let mut words = SplitMix::new(3);
        let expected: Vec<u8> = [words.next_u64(), words.next_u64()]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(11)
            .collect();
        assert_eq!(SplitMix::new(3).bytes(11), expected);
        assert!(SplitMix::new(3).bytes(0).is_empty());
    }
}
