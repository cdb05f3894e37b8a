//! Seeds for randomised tests: fresh each run, printed so a failure can be replayed, and pinned
//! with `ACRE_TEST_SEED=<n>` (acre-nvm-log's `fault` module keeps the one implementation).

/// The generator every randomised test uses (shared with nvm-log's fault injection).
pub use acre_nvm_log::fault::SplitMix;

/// The seed for a randomised test.
pub fn seed(test: &str) -> u64 {
    acre_nvm_log::fault::test_seed(test)
}
