//! The commands' standard output. A write after its reader has gone (`acre cluster status |
//! head -1`) fails with a [`StdoutClosed`] error inside, which `main` turns into a quiet exit;
//! a broken pipe anywhere else (a Redis connection, say) stays an error.

use std::fmt;
use std::io::{self, Write};

/// Standard output, unbuffered beyond the standard library's line buffering.
pub fn stdout() -> Stdout {
    Stdout(io::stdout())
}

pub struct Stdout(io::Stdout);

/// The error inside the `io::Error` of a write to a standard output whose reader has gone.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output is closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Whether `error` comes from writing to a standard output whose reader has gone.
pub fn is_stdout_closed(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .and_then(|e| e.get_ref())
            .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

fn mark(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        error
    }
}

impl Write for Stdout {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes).map_err(mark)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_broken_pipe_is_a_closed_stdout() {
        let marked = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::BrokenPipe)));
        assert!(is_stdout_closed(&marked.context("print the status")));
        let elsewhere = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_stdout_closed(&elsewhere.context("send to redis")));
        let other = anyhow::Error::new(mark(io::Error::from(io::ErrorKind::WriteZero)));
        assert!(!is_stdout_closed(&other));
    }
}
