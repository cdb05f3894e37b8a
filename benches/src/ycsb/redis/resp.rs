//! A minimal RESP2 client: one buffered TCP connection (`TCP_NODELAY`, connect and I/O
//! timeouts), commands written as arrays of bulk strings, and replies decoded with every length
//! bounded, so a dead or misbehaving server is an error, never a hang or a huge allocation.
//!
//! Commands can be pipelined: [`Connection::send`] several, [`Connection::flush`] once, then
//! [`Connection::receive`] one reply per command, in order.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting to one address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one read or write on the connection may block: a server that stops answering
/// becomes an error after this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default).
pub const BULK_BYTES_MAX: usize = 512 << 20;
/// Most elements of one array reply.
pub const ARRAY_COUNT_MAX: usize = 1 << 24;
/// Deepest nesting of arrays (EXEC's replies hold HGETALL's arrays: depth 2).
pub const REPLY_DEPTH_MAX: usize = 8;
/// Longest status, error or length line.
pub const LINE_BYTES_MAX: usize = 64 << 10;
/// Bytes buffered each way.
const BUFFER_BYTES: usize = 64 << 10;

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`, `+QUEUED`.
    Status(String),
    /// `-ERR ...`: the server refused the command (the connection stays usable).
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A nil bulk string or nil array: a missing value, or EXEC after a WATCHed key changed.
    Nil,
    Array(Vec<Reply>),
}

/// Why a reply could not be had. After any of these the connection is out of step with the
/// server and must be dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    #[error("redis connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("redis closed the connection")]
    Closed,
    #[error("malformed reply from redis: {what}")]
    Malformed { what: String },
}

fn malformed(what: impl Into<String>) -> RespError {
    RespError::Malformed { what: what.into() }
}

/// One connection to a Redis server.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl Connection {
    /// Connects to `address` ("host:port"), trying each address it resolves to for at most
    /// [`CONNECT_TIMEOUT`].
    pub fn connect(address: &str) -> io::Result<Connection> {
        let mut last_error = None;
        for socket_address in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
                Ok(stream) => return Connection::over(stream),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{address} resolves to no address"),
            )
        }))
    }

    fn over(stream: TcpStream) -> io::Result<Connection> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let writer = BufWriter::with_capacity(BUFFER_BYTES, stream.try_clone()?);
        Ok(Connection {
            reader: BufReader::with_capacity(BUFFER_BYTES, stream),
            writer,
        })
    }

    /// Buffers one command (its arguments are binary-safe).
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        write!(self.writer, "*{}\r\n", args.len())?;
        for arg in args {
            write!(self.writer, "${}\r\n", arg.len())?;
            self.writer.write_all(arg)?;
            self.writer.write_all(b"\r\n")?;
        }
        Ok(())
    }

    /// Sends the buffered commands.
    pub fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }

    /// The next reply.
    pub fn receive(&mut self) -> Result<Reply, RespError> {
        self.reply(0)
    }

    /// Sends one command and waits for its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> Result<Reply, RespError> {
        self.send(args)?;
        self.flush()?;
        self.receive()
    }

    fn reply(&mut self, depth: usize) -> Result<Reply, RespError> {
        let line = self.line()?;
        let (&kind, rest) = line
            .split_first()
            .ok_or_else(|| malformed("an empty line"))?;
        match kind {
            b'+' => Ok(Reply::Status(String::from_utf8_lossy(rest).into_owned())),
            b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Reply::Integer(integer(rest)?)),
            b'$' => {
                let Some(len) = length(rest, BULK_BYTES_MAX)? else {
                    return Ok(Reply::Nil);
                };
                let mut bytes = vec![0; len + 2];
                self.reader.read_exact(&mut bytes).map_err(eof_is_closed)?;
                if !bytes.ends_with(b"\r\n") {
                    return Err(malformed(format!(
                        "a bulk string of {len} bytes without CRLF"
                    )));
                }
                bytes.truncate(len);
                Ok(Reply::Bulk(bytes))
            }
            b'*' => {
                let Some(count) = length(rest, ARRAY_COUNT_MAX)? else {
                    return Ok(Reply::Nil);
                };
                if depth >= REPLY_DEPTH_MAX {
                    return Err(malformed(format!(
                        "arrays nested deeper than {REPLY_DEPTH_MAX}"
                    )));
                }
                // Grown as elements arrive, so a lying count cannot allocate much ahead.
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    items.push(self.reply(depth + 1)?);
                }
                Ok(Reply::Array(items))
            }
            other => Err(malformed(format!(
                "a reply starting with byte {other:#04x}"
            ))),
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    fn line(&mut self) -> Result<Vec<u8>, RespError> {
        let mut line = Vec::new();
        let read = (&mut self.reader)
            .take(LINE_BYTES_MAX as u64)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            return Err(RespError::Closed);
        }
        if !line.ends_with(b"\r\n") {
            return Err(if line.len() >= LINE_BYTES_MAX {
                malformed(format!("a line longer than {LINE_BYTES_MAX} bytes"))
            } else {
                RespError::Closed
            });
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }
}

fn eof_is_closed(error: io::Error) -> RespError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        RespError::Closed
    } else {
        RespError::Io(error)
    }
}

fn integer(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| {
            malformed(format!(
                "{:?} is not an integer",
                String::from_utf8_lossy(text)
            ))
        })
}

/// A bulk or array length: `None` for -1 (nil), an error above `max` or below -1.
fn length(text: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    match integer(text)? {
        -1 => Ok(None),
        n if n < 0 => Err(malformed(format!("a negative length {n}"))),
        n => match usize::try_from(n) {
            Ok(n) if n <= max => Ok(Some(n)),
            _ => Err(malformed(format!("a length {n} above the limit {max}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A connection to a fake server that answers any command with `reply` bytes.
    fn against(reply: &'static [u8]) -> (Connection, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = vec![0; 4096];
            let n = stream.read(&mut request).expect("read");
            request.truncate(n);
            stream.write_all(reply).expect("write");
            request
        });
        (Connection::connect(&address).expect("connect"), server)
    }

    #[test]
    fn commands_are_bulk_arrays_and_nested_replies_decode() {
        let (mut connection, server) =
            against(b"*3\r\n:7\r\n$3\r\na\0b\r\n*2\r\n+OK\r\n$-1\r\n-ERR no\r\n*-1\r\n");
        connection.send(&[b"HSET", b"k", b"f\r\n"]).expect("send");
        connection.flush().expect("flush");
        let reply = connection.receive().expect("reply");
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Integer(7),
                Reply::Bulk(b"a\0b".to_vec()),
                Reply::Array(vec![Reply::Status("OK".into()), Reply::Nil]),
            ])
        );
        assert_eq!(
            connection.receive().expect("error reply"),
            Reply::Error("ERR no".into())
        );
        assert_eq!(connection.receive().expect("nil array"), Reply::Nil);
        assert!(matches!(connection.receive(), Err(RespError::Closed)));
        let request = server.join().expect("server");
        assert_eq!(request, b"*3\r\n$4\r\nHSET\r\n$1\r\nk\r\n$3\r\nf\r\n\r\n");
    }

    #[test]
    fn malformed_replies_are_errors_that_say_what() {
        for (reply, what) in [
            (&b"?x\r\n"[..], "byte 0x3f"),
            (b":12a\r\n", "not an integer"),
            (b"$-5\r\n", "negative length"),
            (b"$999999999999\r\n", "above the limit"),
            (b"$3\r\nabcd\r\n", "without CRLF"),
            (
                b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                "nested",
            ),
        ] {
            let (mut connection, _server) = against(reply);
            let error = connection.command(&[b"PING"]).expect_err("malformed");
            assert!(error.to_string().contains(what), "{reply:?}: {error}");
        }
        let (mut connection, _server) = against(b"+OK");
        assert!(matches!(
            connection.command(&[b"PING"]),
            Err(RespError::Closed)
        ));
    }
}
