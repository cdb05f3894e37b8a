//! Acre's benchmark drivers: commands that print numbers. The criterion benches live in
//! `benches/benches/`.
#![forbid(unsafe_code)]

pub mod log;
pub mod testbed;
