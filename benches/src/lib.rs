//! Acre's benchmark drivers: commands that print numbers. The criterion benches live in
//! `benches/benches/`; [`ycsb`] is the YCSB driver, generic over the database (Acre, Redis).
#![forbid(unsafe_code)]

pub mod log;
pub mod testbed;
pub mod ycsb;
