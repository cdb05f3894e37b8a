//! Acre's benchmark drivers and workloads: commands that print numbers. The criterion benches
//! live in `benches/benches/`; [`ycsb`] is the YCSB driver, generic over the database (Acre,
//! Redis); [`bank`] is the bank workload (transfers and audits) the demo and `acre bench bank`
//! run; [`transfer`] is the bank benchmark's driver, the same transfers against Acre, Redis or
//! PostgreSQL ([`postgres`] is its wire-protocol client). The drivers use Acre through its public API crates (acre-replication's `Db`,
//! acre-txn's indexes), never through the `acre` facade, which depends on them.
#![forbid(unsafe_code)]

pub mod bank;
pub mod log;
pub mod postgres;
pub mod testbed;
pub mod tpcc;
pub mod transfer;
pub mod ycsb;
