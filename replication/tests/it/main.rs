//! Integration tests of the commit protocol over an embedded cluster.

mod bank;
mod elle;
mod list_append;
mod protocol;
