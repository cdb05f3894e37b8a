//! Integration tests of the commit protocol over an embedded cluster.

mod bank;
mod clients;
mod elle;
mod faults;
mod fixture;
mod index;
mod list_append;
mod protocol;
mod ring_damage;
mod status;
