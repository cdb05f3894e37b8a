//! Acre: the facade over the engine crates.
pub use acre_nvm_log as nvm_log;
