//! Integration tests of the `acre` binary and facade: real node processes started, used and
//! stopped, the bank workload from several processes, bad input, the command-line faults of
//! issue 10, and nodes that come back (issue 11).

mod clients;
mod cluster;
mod command_line;
mod faults;
mod restart;
mod ycsb;
