//! Seeds for randomised tests: fresh each run, printed so a failure can be replayed, and pinned
//! with `ACRE_TEST_SEED=<n>`.

use std::hash::{BuildHasher, RandomState};

/// The generator every randomised test uses (shared with nvm-log's fault injection).
pub use acre_nvm_log::fault::SplitMix;

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
