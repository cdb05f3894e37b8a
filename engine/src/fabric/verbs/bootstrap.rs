//! The TCP bootstrap: how two nodes exchange the queue pair details of one connection (QP
//! number, packet sequence number, LID, GID), which are per connection and so not in the card,
//! after proving to each other that they hold the cluster secret.
//!
//! The initiator connects to the target's bootstrap address (from its card):
//!
//! 1. initiator → target HELLO (who it is, whom it wants, a fresh nonce, its queue pair);
//! 2. target → initiator CHALLENGE (a fresh nonce, and its proof over both nonces and its node
//!    id), or REFUSE;
//! 3. the initiator checks the proof, so it never connects to an impostor, and sends PROOF (its
//!    own, over both nonces and its node id);
//! 4. the target checks it (constant time) before it makes anything for the initiator, then
//!    answers ACCEPT with the queue pair it made for it, or REFUSE with a reason.
//!
//! A target that serves the members of a configuration only (`VerbsNic::set_membership`)
//! answers a non-member's HELLO with NOT_MEMBER (the configuration's id) instead of CHALLENGE,
//! before it makes anything for it; the initiator reports it as [`BootstrapError::NotMember`],
//! which is a definite answer, not a transient failure. It is not authenticated (nothing is
//! proven before it): a forged one only keeps a node from connecting, as dropping the TCP
//! connection would.
//!
//! The proofs are the tcp transport's ([`crate::fabric::tcp::auth`]), under a secret derived
//! from the cluster's for this use alone ([`BOOTSTRAP_SECRET_LABEL`]). As there, this
//! authenticates peers; it does not sign the messages. Every message is
//!
//! ```text
//! magic "ACRV" | version u8 | kind u8 | body_len u16 LE | body
//! HELLO (1):  from u16 | to u16 | nonce [32] | endpoint     CHALLENGE (4): nonce [32] | proof [32]
//! PROOF (5):  proof [32]        ACCEPT (2): endpoint        REFUSE (3): reason UTF-8
//! NOT_MEMBER (6): config u64
//! endpoint:   qpn u32 | psn u32 | lid u16 | gid [16]        (all integers little-endian)
//! ```
//!
//! A message is refused as a whole, with a [`BootstrapError`] naming what was wrong, if its
//! magic, version or kind is unknown, its body longer than [`BODY_BYTES_MAX`] (checked before
//! the body is read), shorter or longer than its kind's, or the stream ends inside it.

use super::device::{FIELD_24_MAX, QpEndpoint};
use crate::addr::NodeId;
use crate::fabric::tcp::ClusterSecret;
use crate::fabric::tcp::auth::{self, Nonce, Proof};
use crate::fabric::tcp::frame::{NONCE_BYTES, PROOF_BYTES};
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
const HELLO_BYTES: usize = 2 + 2 + NONCE_BYTES + ENDPOINT_BYTES;
const CHALLENGE_BYTES: usize = NONCE_BYTES + PROOF_BYTES;
/// The label the bootstrap's secret is derived from the cluster's under, so that its proofs
/// prove nothing to the tcp transport or any other user of the secret.
pub const BOOTSTRAP_SECRET_LABEL: &str = "acre verbs bootstrap";
/// The configuration id the proofs bind: none (membership is checked at HELLO, by node id, not
/// bound into the proofs).
const CONFIG_UNBOUND: u64 = 0;

mod kind {
    pub const HELLO: u8 = 1;
    pub const ACCEPT: u8 = 2;
    pub const REFUSE: u8 = 3;
    pub const CHALLENGE: u8 = 4;
    pub const PROOF: u8 = 5;
    pub const NOT_MEMBER: u8 = 6;
}

/// One bootstrap message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        from: NodeId,
        to: NodeId,
        nonce: Nonce,
        endpoint: QpEndpoint,
    },
    Challenge {
        nonce: Nonce,
        proof: Proof,
    },
    Proof {
        proof: Proof,
    },
    Accept {
        endpoint: QpEndpoint,
    },
    Refuse {
        reason: String,
    },
    /// The initiator is not a member of the target's configuration `config`.
    NotMember {
        config: u64,
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
    #[error("bootstrap message was {got} where {expected} was due")]
    UnexpectedKind {
        got: &'static str,
        expected: &'static str,
    },
    #[error("refused by the target: {reason}")]
    Refused { reason: String },
    /// The target serves the members of its configuration `config` only, and this node is not
    /// one. Nothing was made for it; asking again cannot succeed until the target adopts a
    /// configuration that has this node.
    #[error(
        "refused by the target: this node is not a member of its configuration {config}; learn \
         the current configuration before connecting again"
    )]
    NotMember { config: u64 },
    /// The other end does not hold this cluster's secret: it is not the node it claims to be
    /// (or is of another cluster). Nothing was connected.
    #[error(
        "bootstrap with {address}: its proof does not match this cluster's secret (an impostor, \
         or a node of another cluster): check the address and the secret"
    )]
    BadProof { address: String },
}

impl Message {
    fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "HELLO",
            Message::Challenge { .. } => "CHALLENGE",
            Message::Proof { .. } => "PROOF",
            Message::Accept { .. } => "ACCEPT",
            Message::Refuse { .. } => "REFUSE",
            Message::NotMember { .. } => "NOT_MEMBER",
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
        Message::Hello {
            from,
            to,
            nonce,
            endpoint,
        } => {
            body.extend_from_slice(&from.0.to_le_bytes());
            body.extend_from_slice(&to.0.to_le_bytes());
            body.extend_from_slice(nonce);
            put_endpoint(&mut body, endpoint);
            kind::HELLO
        }
        Message::Challenge { nonce, proof } => {
            body.extend_from_slice(nonce);
            body.extend_from_slice(proof);
            kind::CHALLENGE
        }
        Message::Proof { proof } => {
            body.extend_from_slice(proof);
            kind::PROOF
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
        Message::NotMember { config } => {
            body.extend_from_slice(&config.to_le_bytes());
            kind::NOT_MEMBER
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
            let nonce_end = 4 + NONCE_BYTES;
            Ok(Message::Hello {
                from: NodeId(u16::from_le_bytes([body[0], body[1]])),
                to: NodeId(u16::from_le_bytes([body[2], body[3]])),
                nonce: body[4..nonce_end].try_into().expect("nonce bytes"),
                endpoint: get_endpoint(&body[nonce_end..])?,
            })
        }
        kind::CHALLENGE => {
            exact("CHALLENGE", CHALLENGE_BYTES)?;
            Ok(Message::Challenge {
                nonce: body[..NONCE_BYTES].try_into().expect("nonce bytes"),
                proof: body[NONCE_BYTES..].try_into().expect("proof bytes"),
            })
        }
        kind::PROOF => {
            exact("PROOF", PROOF_BYTES)?;
            Ok(Message::Proof {
                proof: body.try_into().expect("proof bytes"),
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
        kind::NOT_MEMBER => {
            exact("NOT_MEMBER", 8)?;
            Ok(Message::NotMember {
                config: u64::from_le_bytes(body.try_into().expect("8 bytes")),
            })
        }
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
    stream: &mut (impl Write + ?Sized),
    message: &Message,
    address: &str,
) -> Result<(), BootstrapError> {
    stream
        .write_all(&encode(message))
        .map_err(|e| io_error(address, "write", &e))
}

/// The secret the bootstrap's proofs are made with, from the cluster's.
pub fn bootstrap_secret(cluster: &ClusterSecret) -> ClusterSecret {
    cluster.derive(BOOTSTRAP_SECRET_LABEL)
}

fn unexpected(got: &Message, expected: &'static str) -> BootstrapError {
    BootstrapError::UnexpectedKind {
        got: got.kind_name(),
        expected,
    }
}

/// The initiator's side: the exchange with the target at `address` (each step bounded by
/// `timeout`), proving and checking `secret` (the bootstrap's, from [`bootstrap_secret`]);
/// returns the target's queue pair.
pub fn request(
    address: SocketAddr,
    secret: &ClusterSecret,
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
    let nonce = auth::nonce();
    let hello = Message::Hello {
        from,
        to,
        nonce,
        endpoint,
    };
    write(&mut stream, &hello, &name)?;
    let (server_nonce, proof) = match read(&mut stream, &name)? {
        Message::Challenge { nonce, proof } => (nonce, proof),
        Message::Refuse { reason } => return Err(BootstrapError::Refused { reason }),
        Message::NotMember { config } => return Err(BootstrapError::NotMember { config }),
        other => return Err(unexpected(&other, "CHALLENGE or REFUSE")),
    };
    secret
        .verify_server_proof(&nonce, &server_nonce, to, &proof)
        .map_err(|_| BootstrapError::BadProof {
            address: name.clone(),
        })?;
    let proof = secret.client_proof(&server_nonce, &nonce, from, CONFIG_UNBOUND);
    write(&mut stream, &Message::Proof { proof }, &name)?;
    match read(&mut stream, &name)? {
        Message::Accept { endpoint } => Ok(endpoint),
        Message::Refuse { reason } => Err(BootstrapError::Refused { reason }),
        Message::NotMember { config } => Err(BootstrapError::NotMember { config }),
        other => Err(unexpected(&other, "ACCEPT or REFUSE")),
    }
}

/// The target's side of one exchange on `stream`: reads HELLO, lets `admit` refuse it early
/// (`Some` REFUSE or NOT_MEMBER, sent as is), challenges, checks the initiator's proof, and
/// only then asks `accept` for the answer (ACCEPT with the queue pair it made, REFUSE or
/// NOT_MEMBER). Returns that answer if it was sent; garbage and a bad proof get a REFUSE saying
/// why.
pub fn serve(
    stream: &mut (impl Read + Write),
    address: &str,
    secret: &ClusterSecret,
    me: NodeId,
    admit: impl FnOnce(NodeId, NodeId) -> Option<Message>,
    accept: impl FnOnce(NodeId, QpEndpoint) -> Message,
) -> Result<Message, BootstrapError> {
    let refuse = |stream: &mut dyn Write, reason: String| {
        let refusal = Message::Refuse { reason };
        write(stream, &refusal, address).map(|()| refusal)
    };
    let (from, client_nonce, endpoint) = match read(stream, address) {
        Ok(Message::Hello {
            from,
            to,
            nonce,
            endpoint,
        }) => {
            if let Some(refusal) = admit(from, to) {
                assert!(
                    matches!(refusal, Message::Refuse { .. } | Message::NotMember { .. }),
                    "admit answers a HELLO with a refusal, not {}",
                    refusal.kind_name()
                );
                write(stream, &refusal, address)?;
                return Ok(refusal);
            }
            (from, nonce, endpoint)
        }
        Ok(other) => return refuse(stream, unexpected(&other, "HELLO").to_string()),
        // Garbage gets a refusal saying what was wrong, and the connection closes.
        Err(e @ BootstrapError::Io { .. }) => return Err(e),
        Err(e) => return refuse(stream, e.to_string()),
    };
    let nonce = auth::nonce();
    let proof = secret.server_proof(&client_nonce, &nonce, me);
    write(stream, &Message::Challenge { nonce, proof }, address)?;
    match read(stream, address) {
        Ok(Message::Proof { proof }) => {
            let checked =
                secret.verify_client_proof(&nonce, &client_nonce, from, CONFIG_UNBOUND, &proof);
            if checked.is_err() {
                return refuse(
                    stream,
                    format!("{from}'s proof does not match this cluster's secret"),
                );
            }
        }
        Ok(other) => return refuse(stream, unexpected(&other, "PROOF").to_string()),
        Err(e @ BootstrapError::Io { .. }) => return Err(e),
        Err(e) => return refuse(stream, e.to_string()),
    }
    let answer = accept(from, endpoint);
    write(stream, &answer, address)?;
    Ok(answer)
}
