//! The messages of PostgreSQL's frontend/backend protocol 3.0 that a benchmark client needs,
//! without I/O: the frontend's encoded into a buffer, the backend's decoded from a message's tag
//! and body with every length and count bounded, so a misbehaving server is an error naming the
//! message and the offset, never a panic or a huge allocation.
//!
//! Every message but the startup one is a tag byte, then a big-endian `i32` length that counts
//! itself and the body (not the tag), then the body. Strings are NUL-terminated. Parameters and
//! results travel in text format here (format code 0), which keeps the encoding the same as
//! psql's and the values readable in a packet capture.

use acre_engine::cursor::{Cursor, Short};

/// Protocol 3.0, as the startup message states it (major 3 in the high 16 bits, minor 0).
pub const PROTOCOL_VERSION: i32 = 3 << 16;
/// The largest backend message body accepted. A benchmark's replies are a few rows of small
/// values; the cap keeps a garbage length from allocating gigabytes.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// The most columns a row may have (PostgreSQL's own limit is 1664 target entries).
pub const COLUMN_COUNT_MAX: usize = 1664;
/// The most SASL mechanisms an authentication request may name.
const MECHANISM_COUNT_MAX: usize = 16;

/// SQLSTATE of a serialization failure: the transaction did not commit, run it again.
pub const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a deadlock the server broke by aborting this transaction: run it again.
pub const DEADLOCK_DETECTED: &str = "40P01";

/// Appends a message with `tag` whose body `body` writes, patching in its length.
fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    out.push(tag);
    framed(out, body);
}

/// Appends a length word and the body `body` writes, the length counting itself.
fn framed(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = i32::try_from(out.len() - at).expect("a frontend message is far below 2 GiB");
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn cstring(out: &mut Vec<u8>, text: &str) {
    assert!(
        !text.contains('\0'),
        "a protocol string holds no NUL: {text:?}"
    );
    out.extend_from_slice(text.as_bytes());
    out.push(0);
}

fn count_i16(count: usize) -> [u8; 2] {
    i16::try_from(count)
        .expect("at most 32767 parameters or formats")
        .to_be_bytes()
}

/// The startup message (no tag): protocol version, then name/value pairs (`user`, `database`,
/// ...), then an empty name.
pub fn startup(out: &mut Vec<u8>, parameters: &[(&str, &str)]) {
    framed(out, |out| {
        out.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        for (name, value) in parameters {
            cstring(out, name);
            cstring(out, value);
        }
        out.push(0);
    });
}

/// A cleartext password, the answer to [`Authentication::Cleartext`].
pub fn password(out: &mut Vec<u8>, password: &str) {
    message(out, b'p', |out| cstring(out, password));
}

/// SASLInitialResponse: the mechanism chosen and the client's first message.
pub fn sasl_initial_response(out: &mut Vec<u8>, mechanism: &str, data: &[u8]) {
    message(out, b'p', |out| {
        cstring(out, mechanism);
        let len = i32::try_from(data.len()).expect("a SASL message below 2 GiB");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(data);
    });
}

/// SASLResponse: the client's next message of the exchange.
pub fn sasl_response(out: &mut Vec<u8>, data: &[u8]) {
    message(out, b'p', |out| out.extend_from_slice(data));
}

/// A simple query: one or more statements in one string, results in text.
pub fn query(out: &mut Vec<u8>, sql: &str) {
    message(out, b'Q', |out| cstring(out, sql));
}

/// Parse: prepares `sql` as the statement `name` (`""` is the unnamed one), parameter types
/// left for the server to infer.
pub fn parse(out: &mut Vec<u8>, name: &str, sql: &str) {
    message(out, b'P', |out| {
        cstring(out, name);
        cstring(out, sql);
        out.extend_from_slice(&count_i16(0));
    });
}

/// Bind: the unnamed portal over `statement` with `parameters` in text format (`None` is SQL
/// NULL), results in text format.
pub fn bind(out: &mut Vec<u8>, statement: &str, parameters: &[Option<&[u8]>]) {
    message(out, b'B', |out| {
        cstring(out, ""); // the unnamed portal
        cstring(out, statement);
        out.extend_from_slice(&count_i16(0)); // no format codes: every parameter is text
        out.extend_from_slice(&count_i16(parameters.len()));
        for parameter in parameters {
            match parameter {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(value) => {
                    let len = i32::try_from(value.len()).expect("a parameter below 2 GiB");
                    out.extend_from_slice(&len.to_be_bytes());
                    out.extend_from_slice(value);
                }
            }
        }
        out.extend_from_slice(&count_i16(0)); // no result format codes: every column is text
    });
}

/// Execute: runs the unnamed portal to completion (no row limit).
pub fn execute(out: &mut Vec<u8>) {
    message(out, b'E', |out| {
        cstring(out, "");
        out.extend_from_slice(&0i32.to_be_bytes());
    });
}

/// Sync: ends a pipeline of extended-protocol messages; the server answers ReadyForQuery,
/// after skipping what followed an error, and commits an implicit transaction.
pub fn sync(out: &mut Vec<u8>) {
    message(out, b'S', |_| {});
}

/// Terminate: the polite end of a session.
pub fn terminate(out: &mut Vec<u8>) {
    message(out, b'X', |_| {});
}

/// A backend message, decoded. Messages a benchmark client has no use for keep only their tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Authentication(Authentication),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    ReadyForQuery(TxnStatus),
    /// The statement failed; in a pipeline the server skips to the next Sync.
    ErrorResponse(ServerError),
    NoticeResponse(ServerError),
    ParseComplete,
    BindComplete,
    CloseComplete,
    NoData,
    EmptyQueryResponse,
    RowDescription {
        column_count: usize,
    },
    /// One row: each column's text, `None` for NULL.
    DataRow(Vec<Option<Vec<u8>>>),
    CommandComplete {
        tag: String,
    },
    /// ParameterDescription, NotificationResponse, PortalSuspended and the like.
    Other {
        tag: u8,
    },
}

/// What the server asks of a client before the session starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    /// SASL with one of these mechanisms (`SCRAM-SHA-256`).
    Sasl {
        mechanisms: Vec<String>,
    },
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    /// Kerberos, GSSAPI, SSPI: methods this client does not speak.
    Other {
        code: i32,
    },
}

impl Authentication {
    /// The method's name as `pg_hba.conf` spells it, for an error message.
    pub fn method(&self) -> String {
        match self {
            Authentication::Ok => "trust".into(),
            Authentication::Cleartext => "password".into(),
            Authentication::Md5 { .. } => "md5".into(),
            Authentication::Sasl { mechanisms } => format!("SASL ({})", mechanisms.join(", ")),
            Authentication::SaslContinue(_) | Authentication::SaslFinal(_) => "SASL".into(),
            Authentication::Other { code } => format!("method {code}"),
        }
    }
}

/// The session's transaction state, as ReadyForQuery reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block: every statement is refused until ROLLBACK.
    Failed,
}

/// An ErrorResponse or NoticeResponse: the fields a caller acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
#[error("postgres {severity} {code}: {message}")]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC`, or a notice's `NOTICE`, `WARNING`, ...
    pub severity: String,
    /// The SQLSTATE, e.g. [`SERIALIZATION_FAILURE`].
    pub code: String,
    pub message: String,
}

impl ServerError {
    /// Whether running the transaction again may succeed: a serialization failure or a
    /// deadlock, the two errors PostgreSQL's documentation tells a client to retry on.
    pub fn is_retryable(&self) -> bool {
        self.code == SERIALIZATION_FAILURE || self.code == DEADLOCK_DETECTED
    }
}

/// A backend message that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {tag:?} message from postgres at byte {offset} of its body: {what}")]
pub struct DecodeError {
    pub tag: char,
    pub offset: usize,
    pub what: String,
}

/// The length of the body that follows a message header (tag and length word), or why the
/// length cannot be right.
pub fn body_len(tag: u8, length_word: [u8; 4]) -> Result<usize, DecodeError> {
    let length = i32::from_be_bytes(length_word);
    let error = |what: String| DecodeError {
        tag: char::from(tag),
        offset: 0,
        what,
    };
    let Some(body) = usize::try_from(length).ok().and_then(|n| n.checked_sub(4)) else {
        return Err(error(format!("a length of {length}, below 4")));
    };
    if body > MESSAGE_BYTES_MAX {
        return Err(error(format!(
            "a body of {body} bytes, above the limit {MESSAGE_BYTES_MAX}"
        )));
    }
    Ok(body)
}

/// Reads the fields of one message body, turning a short read into a [`DecodeError`].
struct Fields<'a> {
    tag: u8,
    cursor: Cursor<'a>,
}

impl<'a> Fields<'a> {
    fn error(&self, what: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: char::from(self.tag),
            offset: self.cursor.at(),
            what: what.into(),
        }
    }

    fn short(&self, field: &str, short: Short) -> DecodeError {
        self.error(format!("{field}: {short}"))
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        self.cursor.u8().map_err(|s| self.short(field, s))
    }

    fn i16(&mut self, field: &str) -> Result<i16, DecodeError> {
        match self.cursor.array() {
            Ok(bytes) => Ok(i16::from_be_bytes(bytes)),
            Err(short) => Err(self.short(field, short)),
        }
    }

    fn i32(&mut self, field: &str) -> Result<i32, DecodeError> {
        match self.cursor.array() {
            Ok(bytes) => Ok(i32::from_be_bytes(bytes)),
            Err(short) => Err(self.short(field, short)),
        }
    }

    fn take(&mut self, field: &str, len: usize) -> Result<&'a [u8], DecodeError> {
        self.cursor.take(len).map_err(|s| self.short(field, s))
    }

    fn rest(&mut self) -> &'a [u8] {
        self.cursor
            .take(self.cursor.remaining())
            .expect("the remaining bytes are there")
    }

    /// A NUL-terminated string, as UTF-8 (lossy: server messages are for people).
    fn cstring(&mut self, field: &str) -> Result<String, DecodeError> {
        let start = self.cursor.clone();
        let rest = start.clone().take(start.remaining()).expect("remaining");
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return Err(self.error(format!("{field} is not NUL-terminated")));
        };
        let text = self.take(field, len + 1)?;
        Ok(String::from_utf8_lossy(&text[..len]).into_owned())
    }

    fn end(&self) -> Result<(), DecodeError> {
        match self.cursor.remaining() {
            0 => Ok(()),
            left => Err(self.error(format!("{left} bytes after the last field"))),
        }
    }
}

/// Decodes the backend message `tag` with `body` (without the header).
pub fn decode(tag: u8, body: &[u8]) -> Result<Backend, DecodeError> {
    let mut fields = Fields {
        tag,
        cursor: Cursor::new(body),
    };
    let decoded = match tag {
        b'R' => Backend::Authentication(authentication(&mut fields)?),
        b'S' => Backend::ParameterStatus {
            name: fields.cstring("parameter name")?,
            value: fields.cstring("parameter value")?,
        },
        b'K' => Backend::BackendKeyData {
            process_id: fields.i32("process id")?,
            secret_key: fields.i32("secret key")?,
        },
        b'Z' => Backend::ReadyForQuery(match fields.u8("transaction status")? {
            b'I' => TxnStatus::Idle,
            b'T' => TxnStatus::InTransaction,
            b'E' => TxnStatus::Failed,
            other => {
                return Err(fields.error(format!("transaction status byte {other:#04x}")));
            }
        }),
        b'E' => Backend::ErrorResponse(server_error(&mut fields)?),
        b'N' => Backend::NoticeResponse(server_error(&mut fields)?),
        b'1' => Backend::ParseComplete,
        b'2' => Backend::BindComplete,
        b'3' => Backend::CloseComplete,
        b'n' => Backend::NoData,
        b'I' => Backend::EmptyQueryResponse,
        b'T' => {
            let count = fields.i16("column count")?;
            let column_count = usize::try_from(count)
                .map_err(|_| fields.error(format!("a negative column count {count}")))?;
            // The column descriptions are not needed: every result is text.
            fields.rest();
            return Ok(Backend::RowDescription { column_count });
        }
        b'D' => Backend::DataRow(data_row(&mut fields)?),
        b'C' => Backend::CommandComplete {
            tag: fields.cstring("command tag")?,
        },
        other => {
            fields.rest();
            Backend::Other { tag: other }
        }
    };
    fields.end()?;
    Ok(decoded)
}

fn authentication(fields: &mut Fields<'_>) -> Result<Authentication, DecodeError> {
    Ok(match fields.i32("authentication code")? {
        0 => Authentication::Ok,
        3 => Authentication::Cleartext,
        5 => {
            let salt = fields.take("md5 salt", 4)?;
            Authentication::Md5 {
                salt: salt.try_into().expect("4 bytes"),
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let mechanism = fields.cstring("SASL mechanism")?;
                if mechanism.is_empty() {
                    break;
                }
                if mechanisms.len() == MECHANISM_COUNT_MAX {
                    return Err(
                        fields.error(format!("more than {MECHANISM_COUNT_MAX} SASL mechanisms"))
                    );
                }
                mechanisms.push(mechanism);
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(fields.rest().to_vec()),
        12 => Authentication::SaslFinal(fields.rest().to_vec()),
        code => {
            fields.rest();
            Authentication::Other { code }
        }
    })
}

/// The fields of an ErrorResponse or NoticeResponse: a type byte and a string each, ended by a
/// zero byte. Only severity (`V`, or the localized `S`), code (`C`) and message (`M`) are kept.
fn server_error(fields: &mut Fields<'_>) -> Result<ServerError, DecodeError> {
    let mut error = ServerError::default();
    loop {
        let kind = fields.u8("field type")?;
        if kind == 0 {
            return Ok(error);
        }
        let value = fields.cstring("field value")?;
        match kind {
            b'V' => error.severity = value,
            b'S' if error.severity.is_empty() => error.severity = value,
            b'C' => error.code = value,
            b'M' => error.message = value,
            _ => {}
        }
    }
}

fn data_row(fields: &mut Fields<'_>) -> Result<Vec<Option<Vec<u8>>>, DecodeError> {
    let count = fields.i16("column count")?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&count| count <= COLUMN_COUNT_MAX)
        .ok_or_else(|| fields.error(format!("a column count of {count}")))?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        let len = fields.i32("column length")?;
        columns.push(match len {
            -1 => None,
            len => {
                let len = usize::try_from(len)
                    .map_err(|_| fields.error(format!("a column length of {len}")))?;
                Some(fields.take("column value", len)?.to_vec())
            }
        });
    }
    Ok(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend message as a server sends it: tag, length, body.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn decode_frame(bytes: &[u8]) -> Result<Backend, DecodeError> {
        let len = body_len(bytes[0], bytes[1..5].try_into().unwrap())?;
        assert_eq!(len, bytes.len() - 5);
        decode(bytes[0], &bytes[5..])
    }

    #[test]
    fn frontend_messages_have_the_documented_bytes() {
        let mut out = Vec::new();
        startup(&mut out, &[("user", "pg"), ("database", "db")]);
        let mut expected = 29i32.to_be_bytes().to_vec();
        expected.extend_from_slice(&[0, 3, 0, 0]);
        expected.extend_from_slice(b"user\0pg\0database\0db\0\0");
        assert_eq!(out, expected);

        out.clear();
        query(&mut out, "SELECT 1");
        assert_eq!(out, b"Q\0\0\0\x0dSELECT 1\0");

        out.clear();
        parse(&mut out, "t", "SELECT $1");
        assert_eq!(out, b"P\0\0\0\x12t\0SELECT $1\0\0\0");

        out.clear();
        bind(&mut out, "t", &[Some(b"42"), None]);
        let mut expected = b"B\0\0\0\x17\0t\0\0\0\0\x02".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 2]);
        expected.extend_from_slice(b"42");
        expected.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
        assert_eq!(out, expected);

        out.clear();
        sasl_initial_response(&mut out, "SCRAM-SHA-256", b"n,,n=,r=x");
        sasl_response(&mut out, b"c=biws");
        assert_eq!(
            out,
            b"p\0\0\0\x1fSCRAM-SHA-256\0\0\0\0\x09n,,n=,r=xp\0\0\0\x0ac=biws"
        );

        out.clear();
        execute(&mut out);
        sync(&mut out);
        terminate(&mut out);
        password(&mut out, "pw");
        assert_eq!(
            out,
            b"E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04X\0\0\0\x04p\0\0\0\x07pw\0"
        );
    }

    #[test]
    fn backend_messages_decode() {
        let cases: Vec<(Vec<u8>, Backend)> = vec![
            (
                frame(b'R', &0i32.to_be_bytes()),
                Backend::Authentication(Authentication::Ok),
            ),
            (
                frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]),
                Backend::Authentication(Authentication::Md5 { salt: [1, 2, 3, 4] }),
            ),
            (
                frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"),
                Backend::Authentication(Authentication::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256".into()],
                }),
            ),
            (
                frame(b'S', b"server_version\x0015.18\0"),
                Backend::ParameterStatus {
                    name: "server_version".into(),
                    value: "15.18".into(),
                },
            ),
            (
                frame(b'K', &[0, 0, 0, 7, 0, 0, 1, 0]),
                Backend::BackendKeyData {
                    process_id: 7,
                    secret_key: 256,
                },
            ),
            (frame(b'Z', b"E"), Backend::ReadyForQuery(TxnStatus::Failed)),
            (
                frame(
                    b'E',
                    b"SERROR\0VERROR\0C40001\0Mcould not serialize access\0\0",
                ),
                Backend::ErrorResponse(ServerError {
                    severity: "ERROR".into(),
                    code: SERIALIZATION_FAILURE.into(),
                    message: "could not serialize access".into(),
                }),
            ),
            (
                frame(b'D', b"\0\x02\0\0\0\x041000\xff\xff\xff\xff"),
                Backend::DataRow(vec![Some(b"1000".to_vec()), None]),
            ),
            (
                frame(b'C', b"UPDATE 1\0"),
                Backend::CommandComplete {
                    tag: "UPDATE 1".into(),
                },
            ),
            (
                frame(
                    b'T',
                    b"\0\x01balance\0\0\0\0\0\0\0\0\0\0\x14\0\x08\xff\xff\xff\xff\0\0",
                ),
                Backend::RowDescription { column_count: 1 },
            ),
            (frame(b'2', b""), Backend::BindComplete),
            (frame(b't', b"\0\0"), Backend::Other { tag: b't' }),
        ];
        for (bytes, expected) in cases {
            assert_eq!(decode_frame(&bytes), Ok(expected), "{bytes:?}");
        }
    }

    #[test]
    fn only_serialization_failures_and_deadlocks_are_retryable() {
        let error = |code: &str| ServerError {
            code: code.into(),
            ..ServerError::default()
        };
        assert!(error("40001").is_retryable());
        assert!(error("40P01").is_retryable());
        assert!(!error("23505").is_retryable());
        assert!(!error("").is_retryable());
    }

    #[test]
    fn malformed_backend_messages_are_errors_that_say_what() {
        for (bytes, what) in [
            (frame(b'Z', b"X"), "transaction status byte 0x58"),
            (frame(b'Z', b""), "transaction status: needs 1 bytes"),
            (frame(b'Z', b"II"), "1 bytes after the last field"),
            (frame(b'C', b"UPDATE 1"), "not NUL-terminated"),
            (
                frame(b'D', b"\0\x01\0\0\0\x09abc"),
                "column value: needs 9 bytes",
            ),
            (
                frame(b'D', b"\0\x01\xff\xff\xff\xfe"),
                "a column length of -2",
            ),
            (frame(b'D', b"\xff\xff"), "a column count of -1"),
            (frame(b'E', b"Cabc"), "not NUL-terminated"),
            (frame(b'R', b"\0\0"), "authentication code"),
        ] {
            let error = decode_frame(&bytes).expect_err("malformed");
            assert!(error.to_string().contains(what), "{bytes:?}: {error}");
        }
        for (length, what) in [
            (3, "below 4"),
            (-1, "below 4"),
            (1 << 30, "above the limit"),
        ] {
            let error = body_len(b'D', i32::to_be_bytes(length)).expect_err("bad length");
            assert!(error.to_string().contains(what), "{length}: {error}");
        }
    }
}
