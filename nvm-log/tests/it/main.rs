//! The one integration-test binary of `acre-nvm-log`: rings under simulated power loss, under
//! SIGKILL of a real writer process, and fed damaged or hostile bytes.
//!
//! Randomised tests run their seeds through `acre_nvm_log::random::for_each_seed`: set
//! `ACRE_TEST_SEED=<n>` to run one seed only (the seed a failure printed). The proptest
//! properties in `bad_input` are pinned with proptest's own `PROPTEST_RNG_SEED`.

mod bad_input;
mod kill;
mod power_loss;
mod torture;
