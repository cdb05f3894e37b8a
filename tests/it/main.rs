//! Integration tests of the `acre` binary and facade: real node processes started, used and
//! stopped, the bank workload from several processes, bad input, the command-line faults of
//! issue 10, nodes that come back (issue 11), and the bank benchmark's targets refusing bad
//! input (fake Redis and PostgreSQL servers, no real one).

mod bench_bank;
mod clients;
mod cluster;
mod cm;
mod command_line;
mod faults;
mod restart;
mod tpcc;
mod ycsb;
