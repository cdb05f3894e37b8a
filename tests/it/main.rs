//! Integration tests of the `acre` binary and facade: real node processes started, used and
//! stopped, the bank workload from several processes, bad input, the command-line faults of
//! issue 10, nodes that come back (issue 11), the bank benchmark's targets refusing bad input
//! (fake Redis and PostgreSQL servers, no real one), the failover benchmark (issue 13), and the
//! re-replication benchmark (issue 14), and `acre jepsen` with the nodes in network namespaces
//! (partitions, and kills healed there).

mod bench_bank;
mod clients;
mod cluster;
mod cm;
mod command_line;
mod failover;
mod faults;
mod jepsen;
mod recopy;
mod restart;
mod tpcc;
mod ycsb;
