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
        let text = text(record, values);
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

/// The record's message, then its key-value pairs and the logger's as ` key=value`.
fn text(record: &slog::Record<'_>, values: &slog::OwnedKVList) -> String {
    let mut text = record.msg().to_string();
    let mut pairs = Pairs(&mut text);
    // Serializing into a String cannot fail; a failure would only shorten the message.
    let _ = record.kv().serialize(record, &mut pairs);
    let _ = values.serialize(record, &mut pairs);
    text
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Keeps what [`TracingDrain`] would hand to tracing.
    struct Capture(Arc<Mutex<Vec<String>>>);

    impl Drain for Capture {
        type Ok = ();
        type Err = slog::Never;

        fn log(
            &self,
            record: &slog::Record<'_>,
            values: &slog::OwnedKVList,
        ) -> Result<(), slog::Never> {
            self.0.lock().unwrap().push(text(record, values));
            Ok(())
        }
    }

    #[test]
    fn records_keep_their_message_and_pairs() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let logger = slog::Logger::root(Capture(lines.clone()).fuse(), slog::o!("cm_replica" => 2));
        slog::info!(logger, "became leader"; "term" => 3);
        assert_eq!(
            lines.lock().unwrap().as_slice(),
            ["became leader term=3 cm_replica=2"]
        );
        // The real drain takes the same records without a subscriber installed.
        slog::warn!(raft_logger(1), "a warning"; "index" => 7);
    }
}
