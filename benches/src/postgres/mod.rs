//! A minimal PostgreSQL client for the benchmarks: one buffered TCP connection (`TCP_NODELAY`,
//! connect and I/O timeouts), trust, cleartext-password or SCRAM-SHA-256 authentication
//! ([`scram`]), simple queries for
//! setup, and the extended protocol for the measured work: statements prepared once
//! ([`Connection::prepare`]), then each batch of Bind/Execute pairs sent with one Sync and read
//! back in one round trip ([`Connection::run`]).
//!
//! The messages themselves are encoded and decoded, without I/O, in [`message`].

pub mod message;
pub mod scram;

use message::{Authentication, Backend, DecodeError, ServerError, TxnStatus};
use scram::{Scram, ScramError};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting to one address may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one read or write may block: a server that stops answering becomes an error after
/// this. Longer than PostgreSQL's `deadlock_timeout` (1 s), so a lock wait ends in the
/// server's answer, not here.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Port of a URL that names none.
pub const DEFAULT_PORT: u16 = 5432;
/// User of a URL that names none.
pub const DEFAULT_USER: &str = "postgres";
/// Most messages read before one ReadyForQuery: far more than a benchmark's batch or a
/// session's start produce, few enough that a server streaming garbage is stopped.
const MESSAGES_PER_REPLY_MAX: usize = 1 << 20;
/// Bytes buffered each way.
const BUFFER_BYTES: usize = 16 << 10;

/// Where a PostgreSQL server is: `postgres://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE]`
/// (`postgresql://` too).
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub user: String,
    pub password: Option<String>,
    pub host: String,
    pub port: u16,
    /// The user's name when the URL names none, as libpq does.
    pub database: String,
}

impl std::fmt::Debug for PgUrl {
    /// Without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "postgres://{}@{}/{}",
            self.user,
            self.address(),
            self.database
        )
    }
}

/// A URL that is not `postgres://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed postgres URL: expected postgres://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE] (user \
     {DEFAULT_USER}, port {DEFAULT_PORT} and database = user by default), e.g. \
     postgres://postgres@127.0.0.1:5432/postgres"
)]
pub struct UrlError;

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl, UrlError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or(UrlError)?;
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (DEFAULT_USER, None),
            Some(userinfo) => match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password.to_string())),
                None => (userinfo, None),
            },
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or(UrlError)?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let name = |text: &str| {
            !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
        if !valid_host || !name(user) || !(database.is_empty() || name(database)) {
            return Err(UrlError);
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(port) => port
                .parse()
                .ok()
                .filter(|&port| port != 0)
                .ok_or(UrlError)?,
        };
        Ok(PgUrl {
            user: user.to_string(),
            password,
            host: host.to_string(),
            port,
            database: if database.is_empty() { user } else { database }.to_string(),
        })
    }

    /// `host:port`, with brackets around an IPv6 host.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a session or a request failed. Every variant but `Server` leaves the connection out of
/// step with the server: drop it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgError {
    #[error("postgres connection failed: {0}")]
    Io(#[from] io::Error),
    #[error("postgres closed the connection")]
    Closed,
    #[error(transparent)]
    Malformed(#[from] DecodeError),
    /// The server refused a statement or the session; the connection is usable if the session
    /// had started.
    #[error(transparent)]
    Server(ServerError),
    #[error(
        "postgres asks for {method} authentication, which this client does not speak: use \
         trust, password (cleartext) or scram-sha-256 authentication for the benchmark's \
         connections"
    )]
    UnsupportedAuthentication { method: String },
    #[error(transparent)]
    Scram(#[from] ScramError),
    #[error("no entropy for a SCRAM nonce: {0}")]
    Entropy(getrandom::Error),
    #[error("postgres asks for a password and the URL has none")]
    NoPassword,
    #[error("postgres sent {what} where it was not expected")]
    Unexpected { what: String },
}

/// What one Execute of a batch returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Its rows, each column's text (`None` for NULL).
    pub rows: Vec<Vec<Option<Vec<u8>>>>,
    /// The command tag, e.g. `UPDATE 1`.
    pub tag: String,
}

/// What a batch returned: the outcomes of the statements that ran, in order, and the error
/// that stopped it (the server skips the rest of a batch after an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub outcomes: Vec<Outcome>,
    pub error: Option<ServerError>,
    /// The session's state after the batch: `Failed` means a transaction block must be rolled
    /// back before anything else runs.
    pub status: TxnStatus,
}

/// One session with a PostgreSQL server.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// The messages of the batch being built.
    out: Vec<u8>,
    /// Executes in the batch being built.
    executes: usize,
    server_version: String,
}

impl Connection {
    /// Connects and starts a session as the URL's user on its database.
    pub fn connect(url: &PgUrl) -> Result<Connection, PgError> {
        let address = url.address();
        let mut last_error = None;
        let mut stream = None;
        for socket_address in address.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT) {
                Ok(connected) => {
                    stream = Some(connected);
                    break;
                }
                Err(error) => last_error = Some(error),
            }
        }
        let stream = match stream {
            Some(stream) => stream,
            None => {
                return Err(PgError::Io(last_error.unwrap_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{address} resolves to no address"),
                    )
                })));
            }
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut connection = Connection {
            writer: BufWriter::with_capacity(BUFFER_BYTES, stream.try_clone()?),
            reader: BufReader::with_capacity(BUFFER_BYTES, stream),
            out: Vec::new(),
            executes: 0,
            server_version: String::new(),
        };
        connection.start(url)?;
        Ok(connection)
    }

    /// The server's version, as it reported it at the start of the session (`15.18 (Debian
    /// 15.18-0+deb12u1)`).
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    fn start(&mut self, url: &PgUrl) -> Result<(), PgError> {
        message::startup(
            &mut self.out,
            &[
                ("user", &url.user),
                ("database", &url.database),
                ("application_name", "acre-bench"),
                ("client_encoding", "UTF8"),
            ],
        );
        self.send()?;
        let mut scram_exchange: Option<Scram> = None;
        for _ in 0..MESSAGES_PER_REPLY_MAX {
            match self.receive()? {
                Backend::Authentication(Authentication::Ok) => {}
                Backend::Authentication(Authentication::Cleartext) => {
                    let password = url.password.as_deref().ok_or(PgError::NoPassword)?;
                    message::password(&mut self.out, password);
                    self.send()?;
                }
                Backend::Authentication(Authentication::Sasl { mechanisms })
                    if mechanisms.iter().any(|m| m == scram::MECHANISM) =>
                {
                    let password = url.password.as_deref().ok_or(PgError::NoPassword)?;
                    let nonce = Scram::random_nonce().map_err(PgError::Entropy)?;
                    let exchange = Scram::new("", password, nonce);
                    message::sasl_initial_response(
                        &mut self.out,
                        scram::MECHANISM,
                        exchange.client_first().as_bytes(),
                    );
                    self.send()?;
                    scram_exchange = Some(exchange);
                }
                Backend::Authentication(Authentication::SaslContinue(server_first)) => {
                    let exchange = scram_exchange.as_mut().ok_or_else(|| PgError::Unexpected {
                        what: "SASLContinue before SASL started".into(),
                    })?;
                    let client_final = exchange.client_final(&server_first)?;
                    message::sasl_response(&mut self.out, client_final.as_bytes());
                    self.send()?;
                }
                Backend::Authentication(Authentication::SaslFinal(server_final)) => {
                    let exchange = scram_exchange.as_ref().ok_or_else(|| PgError::Unexpected {
                        what: "SASLFinal before SASL started".into(),
                    })?;
                    exchange.verify_server_final(&server_final)?;
                }
                Backend::Authentication(other) => {
                    return Err(PgError::UnsupportedAuthentication {
                        method: other.method(),
                    });
                }
                Backend::ParameterStatus { name, value } if name == "server_version" => {
                    self.server_version = value;
                }
                Backend::ParameterStatus { .. }
                | Backend::BackendKeyData { .. }
                | Backend::NoticeResponse(_) => {}
                Backend::ErrorResponse(error) => return Err(PgError::Server(error)),
                Backend::ReadyForQuery(_) => return Ok(()),
                other => {
                    return Err(PgError::Unexpected {
                        what: format!("{other:?} during the session's start"),
                    });
                }
            }
        }
        Err(too_many_messages())
    }

    /// Runs `sql` (one or more statements) with the simple protocol and returns the rows of
    /// the last statement that returned rows; a statement the server refuses is
    /// `PgError::Server`.
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<Vec<u8>>>>, PgError> {
        message::query(&mut self.out, sql);
        self.send()?;
        let mut rows = Vec::new();
        let mut current = Vec::new();
        let mut error = None;
        for _ in 0..MESSAGES_PER_REPLY_MAX {
            match self.receive()? {
                Backend::RowDescription { .. } => current.clear(),
                Backend::DataRow(row) => current.push(row),
                Backend::CommandComplete { .. } if !current.is_empty() => {
                    rows = std::mem::take(&mut current)
                }
                Backend::ErrorResponse(server) => error = Some(server),
                Backend::ReadyForQuery(_) => {
                    return match error {
                        Some(error) => Err(PgError::Server(error)),
                        None => Ok(rows),
                    };
                }
                _ => {}
            }
        }
        Err(too_many_messages())
    }

    /// Prepares every `(name, sql)` of `statements` (a backend's statements, once per session);
    /// an error names the statement that failed.
    pub fn prepare_all(&mut self, statements: &[(&str, &str)]) -> anyhow::Result<()> {
        for (name, sql) in statements {
            anyhow::Context::with_context(self.prepare(name, sql), || format!("prepare {sql:?}"))?;
        }
        Ok(())
    }

    /// Prepares `sql` as the statement `name` for the session (Parse, then Sync).
    pub fn prepare(&mut self, name: &str, sql: &str) -> Result<(), PgError> {
        message::parse(&mut self.out, name, sql);
        message::sync(&mut self.out);
        self.send()?;
        let mut error = None;
        for _ in 0..MESSAGES_PER_REPLY_MAX {
            match self.receive()? {
                Backend::ParseComplete | Backend::NoticeResponse(_) => {}
                Backend::ErrorResponse(server) => error = Some(server),
                Backend::ReadyForQuery(_) => {
                    return match error {
                        Some(error) => Err(PgError::Server(error)),
                        None => Ok(()),
                    };
                }
                other => {
                    return Err(PgError::Unexpected {
                        what: format!("{other:?} after Parse"),
                    });
                }
            }
        }
        Err(too_many_messages())
    }

    /// Adds a Bind of the prepared `statement` with `parameters` (text) and an Execute to the
    /// batch; nothing is sent until [`Connection::run`].
    pub fn push(&mut self, statement: &str, parameters: &[&[u8]]) {
        let parameters: Vec<Option<&[u8]>> = parameters.iter().map(|&p| Some(p)).collect();
        message::bind(&mut self.out, statement, &parameters);
        message::execute(&mut self.out);
        self.executes += 1;
    }

    /// Sends the batch with a Sync and reads its results: one round trip.
    pub fn run(&mut self) -> Result<Batch, PgError> {
        message::sync(&mut self.out);
        let expected = std::mem::take(&mut self.executes);
        self.send()?;
        let mut outcomes = Vec::with_capacity(expected);
        let mut current = Outcome::default();
        let mut error = None;
        for _ in 0..MESSAGES_PER_REPLY_MAX {
            match self.receive()? {
                Backend::BindComplete
                | Backend::RowDescription { .. }
                | Backend::NoData
                | Backend::NoticeResponse(_) => {}
                Backend::DataRow(row) => current.rows.push(row),
                Backend::CommandComplete { tag } => {
                    current.tag = tag;
                    outcomes.push(std::mem::take(&mut current));
                }
                Backend::EmptyQueryResponse => outcomes.push(std::mem::take(&mut current)),
                Backend::ErrorResponse(server) => error = Some(server),
                Backend::ReadyForQuery(status) => {
                    if error.is_none() && outcomes.len() != expected {
                        return Err(PgError::Unexpected {
                            what: format!(
                                "{} results for a batch of {expected} statements",
                                outcomes.len()
                            ),
                        });
                    }
                    return Ok(Batch {
                        outcomes,
                        error,
                        status,
                    });
                }
                other => {
                    return Err(PgError::Unexpected {
                        what: format!("{other:?} in a batch's results"),
                    });
                }
            }
        }
        Err(too_many_messages())
    }

    fn send(&mut self) -> Result<(), PgError> {
        let sent = self
            .writer
            .write_all(&self.out)
            .and_then(|()| self.writer.flush());
        self.out.clear();
        Ok(sent?)
    }

    fn receive(&mut self) -> Result<Backend, PgError> {
        let mut header = [0u8; 5];
        self.reader.read_exact(&mut header).map_err(eof_is_closed)?;
        let tag = header[0];
        let len = message::body_len(tag, header[1..].try_into().expect("4 bytes"))?;
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).map_err(eof_is_closed)?;
        Ok(message::decode(tag, &body)?)
    }
}

impl Drop for Connection {
    /// Ends the session politely (Terminate), so the server logs no "unexpected EOF".
    fn drop(&mut self) {
        self.out.clear();
        message::terminate(&mut self.out);
        // The session ends either way: a server that is gone needs no goodbye.
        let _ = self.send();
    }
}

fn eof_is_closed(error: io::Error) -> PgError {
    if error.kind() == io::ErrorKind::UnexpectedEof {
        PgError::Closed
    } else {
        PgError::Io(error)
    }
}

fn too_many_messages() -> PgError {
    PgError::Unexpected {
        what: format!("more than {MESSAGES_PER_REPLY_MAX} messages before ReadyForQuery"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    #[test]
    fn urls_parse_with_defaults_and_bad_ones_are_errors() {
        let url = PgUrl::parse("postgres://127.0.0.1:5433/bench").expect("valid");
        assert_eq!(
            (
                url.user.as_str(),
                url.host.as_str(),
                url.port,
                url.database.as_str()
            ),
            ("postgres", "127.0.0.1", 5433, "bench")
        );
        assert_eq!(url.password, None);
        let url = PgUrl::parse("postgresql://me:secret@[::1]").expect("valid");
        assert_eq!(
            (url.user.as_str(), url.password.as_deref(), url.port),
            ("me", Some("secret"), DEFAULT_PORT)
        );
        assert_eq!(
            (url.address().as_str(), url.database.as_str()),
            ("[::1]:5432", "me")
        );
        assert!(!format!("{url:?}").contains("secret"));
        for bad in [
            "",
            "postgres://",
            "postgres://host:0",
            "postgres://host:x",
            "postgres://@host",
            "postgres://host/a;b",
            "redis://host",
            "postgres://[::1",
        ] {
            assert_eq!(PgUrl::parse(bad), Err(UrlError), "{bad}");
        }
    }

    /// A fake server that, for each of `replies`, reads what the client sends and answers
    /// with it; it returns everything it read.
    fn scripted(replies: Vec<Vec<u8>>) -> (PgUrl, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut requests = Vec::new();
            for reply in replies {
                let mut request = vec![0; 4096];
                let n = stream.read(&mut request).expect("read");
                requests.extend_from_slice(&request[..n]);
                stream.write_all(&reply).expect("write");
            }
            requests
        });
        let url = PgUrl::parse(&format!("postgres://bench@127.0.0.1:{port}/db")).expect("url");
        (url, server)
    }

    fn against(reply: Vec<u8>) -> (PgUrl, thread::JoinHandle<Vec<u8>>) {
        scripted(vec![reply])
    }

    fn ready(status: &[u8]) -> Vec<u8> {
        let mut reply = frame(b'R', &0i32.to_be_bytes());
        reply.extend(frame(b'Z', status));
        reply
    }

    /// A batch that fails part-way reports the statements that ran, the error, and the failed
    /// transaction block; the client sends Bind/Execute pairs and one Sync.
    #[test]
    fn a_batch_reports_its_rows_and_the_error_that_stopped_it() {
        let mut results = frame(b'2', b"");
        results.extend(frame(b'C', b"BEGIN\0"));
        results.extend(frame(b'2', b""));
        results.extend(frame(b'T', b"\0\x01"));
        results.extend(frame(b'D', b"\0\x01\0\0\0\x03998"));
        results.extend(frame(b'C', b"SELECT 1\0"));
        results.extend(frame(b'E', b"VERROR\0C40001\0Mcould not serialize\0\0"));
        results.extend(frame(b'Z', b"E"));
        let (url, server) = scripted(vec![ready(b"I"), results]);
        let mut connection = Connection::connect(&url).expect("connect");
        connection.push("begin", &[]);
        connection.push("read", &[b"7"]);
        connection.push("update", &[b"7", b"990"]);
        let batch = connection.run().expect("batch");
        assert_eq!(batch.outcomes.len(), 2);
        assert_eq!(batch.outcomes[1].rows, vec![vec![Some(b"998".to_vec())]]);
        assert_eq!(batch.outcomes[1].tag, "SELECT 1");
        let error = batch.error.expect("an error");
        assert!(error.is_retryable(), "{error}");
        assert_eq!(batch.status, TxnStatus::Failed);
        drop(connection);
        let sent = server.join().expect("server");
        let tags: Vec<u8> = {
            // The batch starts after the startup message (its first word is its length).
            let startup = i32::from_be_bytes(sent[..4].try_into().unwrap()) as usize;
            let mut at = startup;
            let mut tags = Vec::new();
            while at < sent.len() {
                tags.push(sent[at]);
                at += 1 + i32::from_be_bytes(sent[at + 1..at + 5].try_into().unwrap()) as usize;
            }
            tags
        };
        assert_eq!(tags, b"BEBEBES");
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_session_starts_with_trust_and_reports_the_server_version() {
        let mut reply = frame(b'R', &0i32.to_be_bytes());
        reply.extend(frame(b'S', b"server_version\x0015.18\0"));
        reply.extend(frame(b'K', &[0; 8]));
        reply.extend(frame(b'Z', b"I"));
        let (url, server) = against(reply);
        let connection = Connection::connect(&url).expect("connect");
        assert_eq!(connection.server_version(), "15.18");
        drop(connection);
        let request = server.join().expect("server");
        assert!(
            request.windows(16).any(|w| w == b"user\0bench\0datab"),
            "{request:?}"
        );
    }

    #[test]
    fn a_refused_session_and_unsupported_authentication_are_errors() {
        let (url, _server) = against(frame(
            b'E',
            b"SFATAL\0C3D000\0Mdatabase \"db\" does not exist\0\0",
        ));
        let error = Connection::connect(&url).expect_err("refused");
        assert!(
            error
                .to_string()
                .contains("3D000: database \"db\" does not exist"),
            "{error}"
        );
        let (url, _server) = against(frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]));
        let error = Connection::connect(&url).expect_err("md5");
        assert!(error.to_string().contains("md5 authentication"), "{error}");
        let (url, _server) = against(frame(b'R', &3i32.to_be_bytes()));
        assert!(matches!(
            Connection::connect(&url),
            Err(PgError::NoPassword)
        ));
        let (url, _server) = against(frame(b'Z', b"I")[..3].to_vec());
        assert!(matches!(Connection::connect(&url), Err(PgError::Closed)));
    }

    #[test]
    fn a_port_nothing_listens_on_is_an_io_error() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let url = PgUrl::parse(&format!("postgres://127.0.0.1:{port}")).expect("url");
        assert!(matches!(Connection::connect(&url), Err(PgError::Io(_))));
    }
}
