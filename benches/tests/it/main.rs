//! Integration tests of acre-benches: the YCSB driver end to end against an in-memory backend
//! (`memory`, `ycsb`) and against a real Redis server this binary starts (`redis`).

mod memory;
mod redis;
mod ycsb;
