//! Integration tests of the commit protocol over embedded clusters (and, for list-append, over
//! node runtimes that reach each other by shm).

mod bank;
mod clients;
mod elle;
mod faults;
mod fixture;
mod index;
mod list_append;
mod one_sided;
mod protocol;
mod ring_damage;
mod shm_cluster;
mod status;
