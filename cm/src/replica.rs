//! The driver around `raft::RawNode`.
