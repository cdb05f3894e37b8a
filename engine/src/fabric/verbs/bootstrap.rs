//! The TCP bootstrap: how two nodes exchange the queue pair details of one connection (QP
//! number, packet sequence number, LID, GID), which are per connection and so not in the card.
//!
//! The initiator connects to the target's bootstrap address (from its card) and sends HELLO
//! (who it is, whom it wants, its queue pair); the target answers ACCEPT with the queue pair it
//! made for it, or REFUSE with a reason; the TCP connection then closes. Every message is
//!
//! ```text
//! magic "ACRV" | version u8 | kind u8 | body_len u16 LE | body
//! HELLO  (1): from u16 | to u16 | endpoint      ACCEPT (2): endpoint     REFUSE (3): reason UTF-8
//! endpoint: qpn u32 | psn u32 | lid u16 | gid [16]       (all integers little-endian)
//! ```
//!
//! A message is refused as a whole, with a [`BootstrapError`] naming what was wrong, if its
//! magic, version or kind is unknown, its body longer than [`BODY_BYTES_MAX`] (checked before
//! the body is read), shorter or longer than its kind's, or the stream ends inside it.

use super::device::{FIELD_24_MAX, QpEndpoint};
use crate::addr::NodeId;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const MAGIC: [u8; 4] = *b"ACRV";
/// The version this build speaks; a peer speaking another is refused.
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 8;
/// The largest body of any message (a REFUSE's reason).
pub const BODY_BYTES_MAX: usize = 256;
const ENDPOINT_BYTES: usize = 4 + 4 + 2 + 16;
const HELLO_BYTES: usize = 2 + 2 + ENDPOINT_BYTES;

mod kind {
    pub const HELLO: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const REFUSE: u8 = 3;
}

/// One bootstrap message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        from: NodeId,
        to: NodeId,
        endpoint: QpEndpoint,
    },
    Accept {
        endpoint: QpEndpoint,
    },
    Refuse {
        reason: String,
    },
}

/// Why a bootstrap exchange failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BootstrapError {
    #[error("bootstrap with {address}: {call} failed: {reason}")]
    Io {
        address: String,
        call: &'static str,
        reason: String,
    },
    #[error("bootstrap message with magic {got:02x?}, not an Acre verbs bootstrap: refused")]
    BadMagic { got: [u8; 4] },
    #[error("bootstrap version {got}, this node speaks {VERSION}: upgrade the older node")]
    BadVersion { got: u8 },
    #[error("bootstrap message of unknown kind {got}: refused")]
    UnknownKind { got: u8 },
    #[error("bootstrap body of {len} bytes exceeds the maximum of {BODY_BYTES_MAX}: refused")]
    Oversized { len: usize },
    #[error("bootstrap message truncated: {have} of {need} bytes")]
    Truncated { need: usize, have: usize },
    #[error("bootstrap {kind} body has {len} bytes, expected {expected}")]
    BadLength {
        kind: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("bootstrap {field} {value:#x} does not fit in 24 bits")]
    FieldTooWide { field: &'static str, value: u32 },
    #[error("bootstrap REFUSE reason is not UTF-8")]
    BadReason,
    #[error("bootstrap answer was {got} instead of ACCEPT or REFUSE")]
    UnexpectedKind { got: &'static str },
    #[error("refused by the target: {reason}")]
    Refused { reason: String },
}

impl Message {
    fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "HELLO",
            Message::Accept { .. } => "ACCEPT",
            Message::Refuse { .. } => "REFUSE",
        }
    }
}

fn put_endpoint(out: &mut Vec<u8>, endpoint: &QpEndpoint) {
    out.extend_from_slice(&endpoint.qpn.to_le_bytes());
    out.extend_from_slice(&endpoint.psn.to_le_bytes());
    out.extend_from_slice(&endpoint.lid.to_le_bytes());
    out.extend_from_slice(&endpoint.gid);
}

fn get_endpoint(bytes: &[u8]) -> Result<QpEndpoint, BootstrapError> {
    assert_eq!(bytes.len(), ENDPOINT_BYTES, "length checked by the caller");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let endpoint = QpEndpoint {
        qpn: u32_at(0),
        psn: u32_at(4),
        lid: u16::from_le_bytes([bytes[8], bytes[9]]),
        gid: bytes[10..26].try_into().expect("16 bytes"),
    };
    for (field, value) in [("qpn", endpoint.qpn), ("psn", endpoint.psn)] {
        if value > FIELD_24_MAX {
            return Err(BootstrapError::FieldTooWide { field, value });
        }
    }
    Ok(endpoint)
}

/// The bytes of `message`.
pub fn encode(message: &Message) -> Vec<u8> {
    let mut body = Vec::new();
    let kind = match message {
        Message::Hello { from, to, endpoint } => {
            body.extend_from_slice(&from.0.to_le_bytes());
            body.extend_from_slice(&to.0.to_le_bytes());
            put_endpoint(&mut body, endpoint);
            kind::HELLO
        }
        Message::Accept { endpoint } => {
            put_endpoint(&mut body, endpoint);
            kind::ACCEPT
        }
        Message::Refuse { reason } => {
            // Cut at a character boundary to fit.
            let mut end = reason.len().min(BODY_BYTES_MAX);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&reason.as_bytes()[..end]);
            kind::REFUSE
        }
    };
    assert!(body.len() <= BODY_BYTES_MAX, "body_len={}", body.len());
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The kind and body length a header announces, once its magic and version are checked.
fn decode_header(header: &[u8; HEADER_BYTES]) -> Result<(u8, usize), BootstrapError> {
    let magic: [u8; 4] = header[..4].try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(BootstrapError::BadMagic { got: magic });
    }
    if header[4] != VERSION {
        return Err(BootstrapError::BadVersion { got: header[4] });
    }
    let len = u16::from_le_bytes([header[6], header[7]]) as usize;
    if len > BODY_BYTES_MAX {
        return Err(BootstrapError::Oversized { len });
    }
    Ok((header[5], len))
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Message, BootstrapError> {
    let exact = |name: &'static str, expected: usize| {
        if body.len() == expected {
            Ok(())
        } else {
            Err(BootstrapError::BadLength {
                kind: name,
                len: body.len(),
                expected,
            })
        }
    };
    match kind {
        kind::HELLO => {
            exact("HELLO", HELLO_BYTES)?;
            Ok(Message::Hello {
                from: NodeId(u16::from_le_bytes([body[0], body[1]])),
                to: NodeId(u16::from_le_bytes([body[2], body[3]])),
                endpoint: get_endpoint(&body[4..])?,
            })
        }
        kind::ACCEPT => {
            exact("ACCEPT", ENDPOINT_BYTES)?;
            Ok(Message::Accept {
                endpoint: get_endpoint(body)?,
            })
        }
        kind::REFUSE => Ok(Message::Refuse {
            reason: String::from_utf8(body.to_vec()).map_err(|_| BootstrapError::BadReason)?,
        }),
        got => Err(BootstrapError::UnknownKind { got }),
    }
}

/// Decodes exactly one message from `bytes`.
pub fn decode(bytes: &[u8]) -> Result<Message, BootstrapError> {
    let Some(header) = bytes.get(..HEADER_BYTES) else {
        return Err(BootstrapError::Truncated {
            need: HEADER_BYTES,
            have: bytes.len(),
        });
    };
    let (kind, len) = decode_header(header.try_into().expect("header bytes"))?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() < len {
        return Err(BootstrapError::Truncated {
            need: HEADER_BYTES + len,
            have: bytes.len(),
        });
    }
    if body.len() > len {
        return Err(BootstrapError::BadLength {
            kind: "message",
            len: body.len(),
            expected: len,
        });
    }
    decode_body(kind, body)
}

/// Reads one message from `stream`: the header, then (once its length is checked) the body.
pub fn read(stream: &mut impl Read, address: &str) -> Result<Message, BootstrapError> {
    let mut header = [0u8; HEADER_BYTES];
    read_exact(stream, &mut header, address)?;
    let (kind, len) = decode_header(&header)?;
    let mut body = vec![0u8; len];
    read_exact(stream, &mut body, address).map_err(|e| match e {
        BootstrapError::Truncated { have, .. } => BootstrapError::Truncated {
            need: HEADER_BYTES + len,
            have: HEADER_BYTES + have,
        },
        other => other,
    })?;
    decode_body(kind, &body)
}

/// Fills `buf`, or says how much arrived before the stream ended.
fn read_exact(stream: &mut impl Read, buf: &mut [u8], address: &str) -> Result<(), BootstrapError> {
    let mut have = 0;
    while have < buf.len() {
        match stream.read(&mut buf[have..]) {
            Ok(0) => {
                return Err(BootstrapError::Truncated {
                    need: buf.len(),
                    have,
                });
            }
            Ok(count) => have += count,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(address, "read", &e)),
        }
    }
    Ok(())
}

fn io_error(address: &str, call: &'static str, error: &std::io::Error) -> BootstrapError {
    BootstrapError::Io {
        address: address.to_string(),
        call,
        reason: error.to_string(),
    }
}

pub fn write(
    stream: &mut impl Write,
    message: &Message,
    address: &str,
) -> Result<(), BootstrapError> {
    stream
        .write_all(&encode(message))
        .map_err(|e| io_error(address, "write", &e))
}

/// The initiator's side: sends HELLO to `address` and returns the target's queue pair, each
/// step bounded by `timeout`.
pub fn request(
    address: SocketAddr,
    from: NodeId,
    to: NodeId,
    endpoint: QpEndpoint,
    timeout: Duration,
) -> Result<QpEndpoint, BootstrapError> {
    let name = address.to_string();
    let mut stream = TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| io_error(&name, "connect", &e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| io_error(&name, "set socket options", &e))?;
    write(&mut stream, &Message::Hello { from, to, endpoint }, &name)?;
    match read(&mut stream, &name)? {
        Message::Accept { endpoint } => Ok(endpoint),
        Message::Refuse { reason } => Err(BootstrapError::Refused { reason }),
        other @ Message::Hello { .. } => Err(BootstrapError::UnexpectedKind {
            got: other.kind_name(),
        }),
    }
}
