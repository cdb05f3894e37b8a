//! Integration tests of the `acre` binary: node processes started, used and stopped for real.

mod node;
