//! Integration tests of the commit protocol over an embedded cluster.

mod bank;
