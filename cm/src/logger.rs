//! A `slog` drain that hands raft's log records to `tracing`, so that they land in the node log
//! with everything else (raft logs through `slog` only; the workspace logs through `tracing`).

use slog::{Drain, KV};
use std::fmt::Write as _;

/// Forwards every record to the `tracing` event of the same level, with its key-value pairs
/// appended to the message.
pub struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let mut text = record.msg().to_string();
        let mut pairs = Pairs(&mut text);
        // Serializing into a String cannot fail; a failure would only shorten the message.
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{text}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{text}"),
            slog::Level::Info => tracing::info!(target: "raft", "{text}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{text}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{text}"),
        }
        Ok(())
    }
}

struct Pairs<'a>(&'a mut String);

impl slog::Serializer for Pairs<'_> {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

/// A logger for raft that writes through [`TracingDrain`], tagged with the replica's id.
pub fn raft_logger(replica_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain.fuse(), slog::o!("cm_replica" => replica_id))
}
