//! The one integration-test binary of `acre-nvm-log`: rings under simulated power loss, under
//! SIGKILL of a real writer process, and fed damaged or hostile bytes.
//!
//! Randomised tests draw their seeds from [`seeds`]: set `ACRE_TEST_SEED=<n>` to run one seed
//! only (the seed a failure printed). The proptest properties in `bad_input` are pinned with
//! proptest's own `PROPTEST_RNG_SEED`.

mod bad_input;
mod kill;
mod power_loss;
mod torture;

/// Environment variable that pins every seeded test in this binary to one seed.
pub const SEED_ENV: &str = "ACRE_TEST_SEED";

/// The seeds a randomised test runs: `0..count`, or only the seed pinned by [`SEED_ENV`].
pub fn seeds(count: u64) -> Vec<u64> {
    match std::env::var(SEED_ENV) {
        Ok(pinned) => {
            let seed = pinned
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={pinned:?} is not a u64"));
            vec![seed]
        }
        Err(_) => (0..count).collect(),
    }
}

/// Runs `test` once per seed and, if it panics, says which seed failed and how to replay it.
pub fn for_each_seed(count: u64, mut test: impl FnMut(u64)) {
    for seed in seeds(count) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
        if let Err(panic) = outcome {
            eprintln!("failing seed {seed}: replay with {SEED_ENV}={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
