//! Integration tests of the `acre` binary and facade: real node processes started, used and
//! stopped, the bank workload from several processes, bad input, and the command-line faults
//! of issue 10.

mod clients;
mod cluster;
mod command_line;
mod ycsb;
