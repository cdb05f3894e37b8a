//! Integration tests of the `acre` binary and facade: real node processes started, used and
//! stopped, the bank workload from several processes, and bad input.

mod cluster;
mod ycsb;
