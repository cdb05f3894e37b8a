//! The TCP transport's wire frames: fixed little-endian layouts, an encoder and a decoder that
//! treats every byte as hostile.
//!
//! Every frame is a length, a kind and a body:
//!
//! ```text
//!  0       4      5
//!  +-------+------+---------------------------+
//!  | len   | kind | body (len - 1 bytes)      |
//!  | u32   | u8   |                           |
//!  +-------+------+---------------------------+
//!  len counts the bytes after itself (kind + body): 1 <= len <= FRAME_BYTES_MAX
//! ```
//!
//! Offsets below are from the start of the body; every integer is little-endian and fields are
//! packed (no padding, no alignment).
//!
//! ```text
//! HELLO (kind 1, client -> server, first frame)          48 bytes
//!  0 magic "ACRE" [4] | 4 version u16 | 6 client node u16 | 8 client config u64
//!  16 client nonce [32]
//!
//! CHALLENGE (kind 2, server -> client)                    66 bytes
//!  0 server node u16 | 2 server nonce [32] | 34 server proof [32]
//!    server proof = HMAC-SHA256(secret, "acre server" || client nonce || server nonce
//!                                       || server node u16)
//!
//! PROOF (kind 3, client -> server)                        32 bytes
//!  0 client proof [32]
//!    client proof = HMAC-SHA256(secret, "acre client" || server nonce || client nonce
//!                                       || client node u16 || client config u64)
//!
//! REFUSED (kind 4, server -> client, then the server closes)  1 or 9 bytes
//!  0 reason u8: 1 unsupported version, 2 bad proof, 3 too many connections,
//!               4 not a member: 1 server config u64
//!
//! REQUEST (kind 16, client -> server, only after the handshake)
//!  0 request id u64 | 8 op u8 | 9 region u32 | 13 offset u32 | 17 key u64 | 25 op fields:
//!    op 1 READ     25 len u32                                      29 bytes
//!    op 2 WRITE    25 len u32 | 29 data [len]                      29 + len bytes
//!    op 3 CAS      25 expected u64 | 33 new u64                    41 bytes
//!    op 4 PERSIST  25 len u32                                      29 bytes
//!    op 5 NOTIFY   (nothing; region, offset and key are 0)         25 bytes
//!
//! RESPONSE (kind 17, server -> client, in request order per connection)
//!  0 request id u64 | 8 status u8 | 9 status fields:
//!    status  0 READ done        9 len u32 | 13 data [len]
//!    status  1 WRITE done       -
//!    status  2 CAS done         9 previous u64
//!    status  3 PERSIST done     -
//!    status  4 NOTIFY done      -
//!    status 16 UnknownRegion    9 node u16 | 11 region u32
//!    status 17 BadKey           9 region u32
//!    status 18 OutOfBounds      9 addr u64 | 17 len u64 | 25 region bytes u64
//!    status 19 Misaligned       9 addr u64 | 17 len u64 | 25 align u64
//!    status 32 TooLarge         9 len u64 | 17 max u32
//!    status 33 UnknownNode      9 node u16
//!    status 34 Unreachable      9 node u16 | 11 reason
//!    status 35 PersistFailed    9 node u16 | 11 reason
//!    status 36 Protocol         9 node u16 | 11 reason
//!    status 37 NotMember        9 node u16 | 11 config u64
//!    status 38 LeaseExpired     9 node u16
//!    reason = len u16 (<= REASON_BYTES_MAX) | UTF-8 [len]
//!    addr = region u32 << 32 | offset u32, as in `Addr::to_u64`
//! ```
//!
//! Invariants the decoder enforces, so that a decoded frame re-encodes to exactly the bytes it
//! came from (the property tests check this):
//! - `len` is at least 1 and at most the decoder's limit (checked from the first 4 bytes, before
//!   the rest is buffered); the kind is known (checked from the 5th byte);
//! - a body has exactly the length its kind and op/status imply, with no trailing bytes;
//! - a NOTIFY request's region, offset and key are 0; a reason is valid UTF-8 within its limit.

use crate::addr::{Addr, NodeId, RegionId};
use crate::cursor::Cursor;
use crate::fabric::{Completion, OP_BYTES_MAX, Op, OpError, OpResult};
use crate::region::{AccessError, AccessKey};

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Room for a frame's kind and fixed fields on top of the largest READ or WRITE payload.
pub const FRAME_HEADER_ROOM_BYTES: u32 = 64;
/// Largest `len` of any frame: one maximal READ response or WRITE request plus its fields.
pub const FRAME_BYTES_MAX: u32 = OP_BYTES_MAX + FRAME_HEADER_ROOM_BYTES;
/// Largest `len` accepted before the peer has authenticated: handshake frames are tiny, so an
/// unauthenticated peer cannot make a node buffer megabytes.
pub const HANDSHAKE_FRAME_BYTES_MAX: u32 = 128;
/// Longest reason string in an error response; longer ones are cut at a character boundary.
pub const REASON_BYTES_MAX: usize = 1024;
/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;
/// Bytes of an HMAC-SHA256 proof.
pub const PROOF_BYTES: usize = 32;
/// The first bytes of every HELLO.
pub const MAGIC: [u8; 4] = *b"ACRE";

// Layout facts (see the module doc): a maximal READ response and WRITE request fit.
const REQUEST_FIXED_BYTES: u32 = 25;
const RESPONSE_FIXED_BYTES: u32 = 9;
const _: () = assert!(1 + REQUEST_FIXED_BYTES + 4 <= FRAME_HEADER_ROOM_BYTES);
const _: () = assert!(1 + RESPONSE_FIXED_BYTES + 4 <= FRAME_HEADER_ROOM_BYTES);
/// `len` of a CHALLENGE, the largest handshake frame: kind + node + nonce + proof.
const CHALLENGE_LEN: u32 = 1 + 2 + NONCE_BYTES as u32 + PROOF_BYTES as u32;
const _: () = assert!(CHALLENGE_LEN <= HANDSHAKE_FRAME_BYTES_MAX);
/// `len` of a HELLO: kind + magic + version + node + config + nonce.
const HELLO_LEN: u32 = 1 + 4 + 2 + 2 + 8 + NONCE_BYTES as u32;
const _: () = assert!(HELLO_LEN <= CHALLENGE_LEN);

/// Frame kinds.
pub mod kind {
    pub const HELLO: u8 = 1;
    pub const CHALLENGE: u8 = 2;
    pub const PROOF: u8 = 3;
    pub const REFUSED: u8 = 4;
    pub const REQUEST: u8 = 16;
    pub const RESPONSE: u8 = 17;
}

mod op_code {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const CAS: u8 = 3;
    pub const PERSIST: u8 = 4;
    pub const NOTIFY: u8 = 5;
}

mod status {
    pub const READ_DONE: u8 = 0;
    pub const WRITE_DONE: u8 = 1;
    pub const CAS_DONE: u8 = 2;
    pub const PERSIST_DONE: u8 = 3;
    pub const NOTIFY_DONE: u8 = 4;
    pub const UNKNOWN_REGION: u8 = 16;
    pub const BAD_KEY: u8 = 17;
    pub const OUT_OF_BOUNDS: u8 = 18;
    pub const MISALIGNED: u8 = 19;
    pub const TOO_LARGE: u8 = 32;
    pub const UNKNOWN_NODE: u8 = 33;
    pub const UNREACHABLE: u8 = 34;
    pub const PERSIST_FAILED: u8 = 35;
    pub const PROTOCOL: u8 = 36;
    pub const NOT_MEMBER: u8 = 37;
    pub const LEASE_EXPIRED: u8 = 38;
}

/// The client's first frame: who it is, the configuration it is a member of, and its
/// challenge to the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: [u8; 4],
    pub version: u16,
    pub node: NodeId,
    /// The configuration the client is in; the connection is bound to it (the client's proof
    /// covers it), and the server admits it only as a member of its own configuration.
    pub config: u64,
    pub client_nonce: [u8; NONCE_BYTES],
}

/// The server's answer: its proof that it holds the secret, and its challenge to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub node: NodeId,
    pub server_nonce: [u8; NONCE_BYTES],
    pub server_proof: [u8; PROOF_BYTES],
}

/// Why a server refused a handshake (or, for `NotMember`, closed a live connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client speaks another protocol version: upgrade the older node.
    UnsupportedVersion,
    /// The client's proof was wrong: it does not hold this cluster's secret.
    BadProof,
    /// The server has as many connections as it serves: retry later.
    Busy,
    /// The client is not a member of the server's configuration `config`, or is bound to an
    /// older one: learn the current configuration (or stop: it was removed).
    NotMember { config: u64 },
}

impl Refusal {
    /// The reason byte it is sent with.
    fn code(&self) -> u8 {
        match self {
            Refusal::UnsupportedVersion => 1,
            Refusal::BadProof => 2,
            Refusal::Busy => 3,
            Refusal::NotMember { .. } => 4,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::UnsupportedVersion => {
                "it speaks another protocol version: run the same release on every node"
            }
            Refusal::BadProof => {
                "this node does not hold its cluster secret: copy the secret again"
            }
            Refusal::Busy => "it serves as many connections as it can: retry later",
            Refusal::NotMember { config } => {
                return write!(
                    f,
                    "this node is not a member of its configuration {config} (or is bound to \
                     an older one): learn the current configuration before retrying"
                );
            }
        })
    }
}

/// One request for the NIC thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub request_id: u64,
    pub op: Op,
}

/// The outcome of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub request_id: u64,
    pub result: OpResult,
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Challenge(Challenge),
    Proof([u8; PROOF_BYTES]),
    Refused(Refusal),
    Request(Request),
    Response(Response),
}

impl Frame {
    /// The kind byte this frame is sent with.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Challenge(_) => kind::CHALLENGE,
            Frame::Proof(_) => kind::PROOF,
            Frame::Refused(_) => kind::REFUSED,
            Frame::Request(_) => kind::REQUEST,
            Frame::Response(_) => kind::RESPONSE,
        }
    }
}

/// Why bytes are not a frame. Every variant means the same thing to the receiver: the peer is
/// broken or hostile, so close the connection (other connections are unaffected).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}: close the connection")]
    Oversize { len: u32, max: u32 },
    #[error("unknown frame kind {kind}: close the connection")]
    UnknownKind { kind: u8 },
    #[error("malformed frame at byte {offset}: {reason}; close the connection")]
    Malformed { reason: &'static str, offset: usize },
}

/// Appends the encoding of `frame` to `out`.
///
/// Panics if the frame cannot be encoded within [`FRAME_BYTES_MAX`] (a WRITE or READ response
/// larger than [`OP_BYTES_MAX`]): callers check sizes first, so that is a programmer error.
pub fn encode(frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_BYTES]);
    out.push(frame.kind());
    match frame {
        Frame::Hello(hello) => {
            out.extend_from_slice(&hello.magic);
            out.extend_from_slice(&hello.version.to_le_bytes());
            out.extend_from_slice(&hello.node.0.to_le_bytes());
            out.extend_from_slice(&hello.config.to_le_bytes());
            out.extend_from_slice(&hello.client_nonce);
        }
        Frame::Challenge(challenge) => {
            out.extend_from_slice(&challenge.node.0.to_le_bytes());
            out.extend_from_slice(&challenge.server_nonce);
            out.extend_from_slice(&challenge.server_proof);
        }
        Frame::Proof(proof) => out.extend_from_slice(proof),
        Frame::Refused(refusal) => {
            out.push(refusal.code());
            if let Refusal::NotMember { config } = refusal {
                out.extend_from_slice(&config.to_le_bytes());
            }
        }
        Frame::Request(request) => encode_request(request, out),
        Frame::Response(response) => encode_response(response, out),
    }
    let len = out.len() - start - LEN_BYTES;
    assert!(
        len <= FRAME_BYTES_MAX as usize,
        "frame too large to encode: len={len} max={FRAME_BYTES_MAX}"
    );
    out[start..start + LEN_BYTES].copy_from_slice(&(len as u32).to_le_bytes());
}

/// Encodes one frame into a fresh buffer.
pub fn encode_to_vec(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

fn put_addr_key(out: &mut Vec<u8>, addr: Addr, key: AccessKey) {
    out.extend_from_slice(&addr.region().0.to_le_bytes());
    out.extend_from_slice(&addr.offset().to_le_bytes());
    out.extend_from_slice(&key.0.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("payload length checked against OP_BYTES_MAX");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(data);
}

fn encode_request(request: &Request, out: &mut Vec<u8>) {
    out.extend_from_slice(&request.request_id.to_le_bytes());
    match &request.op {
        Op::Read { addr, key, len } => {
            out.push(op_code::READ);
            put_addr_key(out, *addr, *key);
            out.extend_from_slice(&len.to_le_bytes());
        }
        Op::Write { addr, key, data } => {
            out.push(op_code::WRITE);
            put_addr_key(out, *addr, *key);
            put_bytes(out, data);
        }
        Op::Cas {
            addr,
            key,
            expected,
            new,
        } => {
            out.push(op_code::CAS);
            put_addr_key(out, *addr, *key);
            out.extend_from_slice(&expected.to_le_bytes());
            out.extend_from_slice(&new.to_le_bytes());
        }
        Op::Persist { addr, key, len } => {
            out.push(op_code::PERSIST);
            put_addr_key(out, *addr, *key);
            out.extend_from_slice(&len.to_le_bytes());
        }
        Op::Notify => {
            out.push(op_code::NOTIFY);
            put_addr_key(out, Addr::new(RegionId(0), 0), AccessKey(0));
        }
    }
}

/// The longest prefix of `reason` that fits [`REASON_BYTES_MAX`] and ends on a char boundary.
fn clip_reason(reason: &str) -> &str {
    let mut end = reason.len().min(REASON_BYTES_MAX);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

fn put_node_reason(out: &mut Vec<u8>, node: NodeId, reason: &str) {
    out.extend_from_slice(&node.0.to_le_bytes());
    let reason = clip_reason(reason);
    out.extend_from_slice(&(reason.len() as u16).to_le_bytes());
    out.extend_from_slice(reason.as_bytes());
}

fn encode_response(response: &Response, out: &mut Vec<u8>) {
    out.extend_from_slice(&response.request_id.to_le_bytes());
    match &response.result {
        Ok(Completion::Read(data)) => {
            out.push(status::READ_DONE);
            put_bytes(out, data);
        }
        Ok(Completion::Write) => out.push(status::WRITE_DONE),
        Ok(Completion::Cas { previous }) => {
            out.push(status::CAS_DONE);
            out.extend_from_slice(&previous.to_le_bytes());
        }
        Ok(Completion::Persist) => out.push(status::PERSIST_DONE),
        Ok(Completion::Notify) => out.push(status::NOTIFY_DONE),
        Err(OpError::Access(access)) => match access {
            AccessError::UnknownRegion { node, region } => {
                out.push(status::UNKNOWN_REGION);
                out.extend_from_slice(&node.0.to_le_bytes());
                out.extend_from_slice(&region.0.to_le_bytes());
            }
            AccessError::BadKey { region } => {
                out.push(status::BAD_KEY);
                out.extend_from_slice(&region.0.to_le_bytes());
            }
            AccessError::OutOfBounds {
                addr,
                len,
                region_bytes,
            } => {
                out.push(status::OUT_OF_BOUNDS);
                out.extend_from_slice(&addr.to_u64().to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&region_bytes.to_le_bytes());
            }
            AccessError::Misaligned { addr, len, align } => {
                out.push(status::MISALIGNED);
                out.extend_from_slice(&addr.to_u64().to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&align.to_le_bytes());
            }
        },
        Err(OpError::TooLarge { len, max }) => {
            out.push(status::TOO_LARGE);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&max.to_le_bytes());
        }
        Err(OpError::UnknownNode { node }) => {
            out.push(status::UNKNOWN_NODE);
            out.extend_from_slice(&node.0.to_le_bytes());
        }
        Err(OpError::Unreachable { node, reason }) => {
            out.push(status::UNREACHABLE);
            put_node_reason(out, *node, reason);
        }
        Err(OpError::PersistFailed { node, reason }) => {
            out.push(status::PERSIST_FAILED);
            put_node_reason(out, *node, reason);
        }
        Err(OpError::Protocol { node, reason }) => {
            out.push(status::PROTOCOL);
            put_node_reason(out, *node, reason);
        }
        Err(OpError::NotMember { node, config }) => {
            out.push(status::NOT_MEMBER);
            out.extend_from_slice(&node.0.to_le_bytes());
            out.extend_from_slice(&config.to_le_bytes());
        }
        Err(OpError::LeaseExpired { node }) => {
            out.push(status::LEASE_EXPIRED);
            out.extend_from_slice(&node.0.to_le_bytes());
        }
    }
}

/// Decodes the first frame of `buf` with the limit for authenticated peers,
/// [`FRAME_BYTES_MAX`]. See [`decode_bounded`].
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    decode_bounded(buf, FRAME_BYTES_MAX)
}

/// Decodes the first frame of `buf`, refusing frames whose `len` exceeds `len_max`.
///
/// `Ok(None)`: `buf` holds only a valid prefix of a frame, read more. `Ok(Some((frame,
/// consumed)))`: the frame and how many bytes of `buf` it took. `Err`: close the connection. An
/// oversize length or unknown kind is reported as soon as its bytes arrive, without waiting
/// for the rest of the frame.
pub fn decode_bounded(buf: &[u8], len_max: u32) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some(len_bytes) = buf.first_chunk::<LEN_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*len_bytes);
    if len > len_max {
        return Err(FrameError::Oversize { len, max: len_max });
    }
    if len == 0 {
        return Err(FrameError::Malformed {
            reason: "empty frame (no kind byte)",
            offset: 0,
        });
    }
    let Some(&kind_byte) = buf.get(LEN_BYTES) else {
        return Ok(None);
    };
    if !matches!(
        kind_byte,
        kind::HELLO
            | kind::CHALLENGE
            | kind::PROOF
            | kind::REFUSED
            | kind::REQUEST
            | kind::RESPONSE
    ) {
        return Err(FrameError::UnknownKind { kind: kind_byte });
    }
    let total = LEN_BYTES + len as usize;
    let Some(frame_bytes) = buf.get(..total) else {
        return Ok(None);
    };
    let mut reader = Reader::after_kind(frame_bytes);
    let frame = match kind_byte {
        kind::HELLO => Frame::Hello(Hello {
            magic: reader.array("HELLO magic")?,
            version: reader.u16("HELLO version")?,
            node: NodeId(reader.u16("HELLO node")?),
            config: reader.u64("HELLO config")?,
            client_nonce: reader.array("HELLO nonce")?,
        }),
        kind::CHALLENGE => Frame::Challenge(Challenge {
            node: NodeId(reader.u16("CHALLENGE node")?),
            server_nonce: reader.array("CHALLENGE nonce")?,
            server_proof: reader.array("CHALLENGE proof")?,
        }),
        kind::PROOF => Frame::Proof(reader.array("PROOF")?),
        kind::REFUSED => {
            let at = reader.at();
            Frame::Refused(match reader.u8("REFUSED reason")? {
                1 => Refusal::UnsupportedVersion,
                2 => Refusal::BadProof,
                3 => Refusal::Busy,
                4 => Refusal::NotMember {
                    config: reader.u64("REFUSED config")?,
                },
                _ => return Err(malformed("unknown refusal reason", at)),
            })
        }
        kind::REQUEST => Frame::Request(decode_request(&mut reader)?),
        kind::RESPONSE => Frame::Response(decode_response(&mut reader)?),
        _ => unreachable!("kind {kind_byte} was checked above"),
    };
    if reader.at() != total {
        return Err(malformed(
            "trailing bytes after the frame's fields",
            reader.at(),
        ));
    }
    Ok(Some((frame, total)))
}

fn malformed(reason: &'static str, offset: usize) -> FrameError {
    FrameError::Malformed { reason, offset }
}

/// The fields of one complete frame, read through the bounds-checked [`Cursor`]: a field that
/// does not fit is `Malformed`, named by `what` at the offset where it starts.
struct Reader<'a> {
    cursor: Cursor<'a>,
}

impl<'a> Reader<'a> {
    /// A reader of `frame` (length prefix included, so offsets count from the frame's first
    /// byte), placed at the first field after the kind.
    fn after_kind(frame: &'a [u8]) -> Reader<'a> {
        let mut cursor = Cursor::new(frame);
        cursor
            .take(LEN_BYTES + 1)
            .expect("a complete frame holds its length and kind");
        Reader { cursor }
    }

    /// The offset of the next field from the start of the frame.
    fn at(&self) -> usize {
        self.cursor.at()
    }

    /// `what` did not fit in what is left of the frame (a short read consumes nothing, so the
    /// cursor is still at the start of `what`).
    fn short(&self, what: &'static str) -> FrameError {
        malformed(what, self.cursor.at())
    }

    fn take(&mut self, count: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        self.cursor.take(count).map_err(|_| self.short(what))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        self.cursor.array().map_err(|_| self.short(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `len u32 | bytes [len]` field.
    fn bytes(&mut self, what: &'static str) -> Result<Vec<u8>, FrameError> {
        let len = self.u32(what)?;
        Ok(self.take(len as usize, what)?.to_vec())
    }

    /// A `node u16 | len u16 | UTF-8 [len]` field.
    fn node_reason(&mut self) -> Result<(NodeId, String), FrameError> {
        let node = NodeId(self.u16("error node")?);
        let at = self.at();
        let len = self.u16("reason length")? as usize;
        if len > REASON_BYTES_MAX {
            return Err(malformed("reason longer than REASON_BYTES_MAX", at));
        }
        let bytes = self.take(len, "reason")?;
        let reason =
            std::str::from_utf8(bytes).map_err(|_| malformed("reason is not UTF-8", at))?;
        Ok((node, reason.to_string()))
    }
}

fn decode_request(reader: &mut Reader<'_>) -> Result<Request, FrameError> {
    let request_id = reader.u64("request id")?;
    let op_at = reader.at();
    let code = reader.u8("op code")?;
    let region = RegionId(reader.u32("region")?);
    let offset = reader.u32("offset")?;
    let key = AccessKey(reader.u64("key")?);
    let addr = Addr::new(region, offset);
    let op = match code {
        op_code::READ => Op::Read {
            addr,
            key,
            len: reader.u32("READ length")?,
        },
        op_code::WRITE => Op::Write {
            addr,
            key,
            data: reader.bytes("WRITE data")?,
        },
        op_code::CAS => Op::Cas {
            addr,
            key,
            expected: reader.u64("CAS expected")?,
            new: reader.u64("CAS new")?,
        },
        op_code::PERSIST => Op::Persist {
            addr,
            key,
            len: reader.u32("PERSIST length")?,
        },
        op_code::NOTIFY => {
            if addr.to_u64() != 0 || key.0 != 0 {
                return Err(malformed(
                    "NOTIFY with a nonzero region, offset or key",
                    op_at + 1,
                ));
            }
            Op::Notify
        }
        _ => return Err(malformed("unknown op code", op_at)),
    };
    Ok(Request { request_id, op })
}

fn decode_response(reader: &mut Reader<'_>) -> Result<Response, FrameError> {
    let request_id = reader.u64("request id")?;
    let status_at = reader.at();
    let code = reader.u8("status")?;
    let result = match code {
        status::READ_DONE => Ok(Completion::Read(reader.bytes("READ data")?)),
        status::WRITE_DONE => Ok(Completion::Write),
        status::CAS_DONE => Ok(Completion::Cas {
            previous: reader.u64("CAS previous")?,
        }),
        status::PERSIST_DONE => Ok(Completion::Persist),
        status::NOTIFY_DONE => Ok(Completion::Notify),
        status::UNKNOWN_REGION => Err(OpError::Access(AccessError::UnknownRegion {
            node: NodeId(reader.u16("error node")?),
            region: RegionId(reader.u32("error region")?),
        })),
        status::BAD_KEY => Err(OpError::Access(AccessError::BadKey {
            region: RegionId(reader.u32("error region")?),
        })),
        status::OUT_OF_BOUNDS => Err(OpError::Access(AccessError::OutOfBounds {
            addr: Addr::from_u64(reader.u64("error addr")?),
            len: reader.u64("error length")?,
            region_bytes: reader.u64("error region bytes")?,
        })),
        status::MISALIGNED => Err(OpError::Access(AccessError::Misaligned {
            addr: Addr::from_u64(reader.u64("error addr")?),
            len: reader.u64("error length")?,
            align: reader.u64("error alignment")?,
        })),
        status::TOO_LARGE => Err(OpError::TooLarge {
            len: reader.u64("error length")?,
            max: reader.u32("error maximum")?,
        }),
        status::UNKNOWN_NODE => Err(OpError::UnknownNode {
            node: NodeId(reader.u16("error node")?),
        }),
        status::UNREACHABLE => {
            let (node, reason) = reader.node_reason()?;
            Err(OpError::Unreachable { node, reason })
        }
        status::PERSIST_FAILED => {
            let (node, reason) = reader.node_reason()?;
            Err(OpError::PersistFailed { node, reason })
        }
        status::PROTOCOL => {
            let (node, reason) = reader.node_reason()?;
            Err(OpError::Protocol { node, reason })
        }
        status::NOT_MEMBER => Err(OpError::NotMember {
            node: NodeId(reader.u16("error node")?),
            config: reader.u64("error config")?,
        }),
        status::LEASE_EXPIRED => Err(OpError::LeaseExpired {
            node: NodeId(reader.u16("error node")?),
        }),
        _ => return Err(malformed("unknown response status", status_at)),
    };
    Ok(Response { request_id, result })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr_strategy() -> impl Strategy<Value = Addr> {
        any::<u64>().prop_map(Addr::from_u64)
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        let key = any::<u64>().prop_map(AccessKey);
        prop_oneof![
            (addr_strategy(), key.clone(), any::<u32>()).prop_map(|(addr, key, len)| Op::Read {
                addr,
                key,
                len
            }),
            (
                addr_strategy(),
                key.clone(),
                proptest::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(addr, key, data)| Op::Write { addr, key, data }),
            (addr_strategy(), key.clone(), any::<u64>(), any::<u64>()).prop_map(
                |(addr, key, expected, new)| Op::Cas {
                    addr,
                    key,
                    expected,
                    new
                }
            ),
            (addr_strategy(), key, any::<u32>()).prop_map(|(addr, key, len)| Op::Persist {
                addr,
                key,
                len
            }),
            Just(Op::Notify),
        ]
    }

    fn reason_strategy() -> impl Strategy<Value = String> {
        // Short strings with multi-byte characters, so clipping and UTF-8 checks are exercised.
        "[a-zé€ ]{0,40}"
    }

    fn result_strategy() -> impl Strategy<Value = OpResult> {
        let node = any::<u16>().prop_map(NodeId);
        let region = any::<u32>().prop_map(RegionId);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|d| Ok(Completion::Read(d))),
            Just(Ok(Completion::Write)),
            any::<u64>().prop_map(|previous| Ok(Completion::Cas { previous })),
            Just(Ok(Completion::Persist)),
            Just(Ok(Completion::Notify)),
            (node.clone(), region.clone())
                .prop_map(|(node, region)| Err(AccessError::UnknownRegion { node, region }.into())),
            region.prop_map(|region| Err(AccessError::BadKey { region }.into())),
            (addr_strategy(), any::<u64>(), any::<u64>()).prop_map(|(addr, len, region_bytes)| {
                Err(AccessError::OutOfBounds {
                    addr,
                    len,
                    region_bytes,
                }
                .into())
            }),
            (addr_strategy(), any::<u64>(), any::<u64>()).prop_map(|(addr, len, align)| {
                Err(AccessError::Misaligned { addr, len, align }.into())
            }),
            (any::<u64>(), any::<u32>()).prop_map(|(len, max)| Err(OpError::TooLarge { len, max })),
            node.clone()
                .prop_map(|node| Err(OpError::UnknownNode { node })),
            (node.clone(), reason_strategy())
                .prop_map(|(node, reason)| Err(OpError::Unreachable { node, reason })),
            (node.clone(), reason_strategy())
                .prop_map(|(node, reason)| Err(OpError::PersistFailed { node, reason })),
            (node.clone(), reason_strategy())
                .prop_map(|(node, reason)| Err(OpError::Protocol { node, reason })),
            (node.clone(), any::<u64>())
                .prop_map(|(node, config)| Err(OpError::NotMember { node, config })),
            node.prop_map(|node| Err(OpError::LeaseExpired { node })),
        ]
    }

    fn frame_strategy() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<[u8; 4]>(),
                any::<u16>(),
                any::<u16>(),
                any::<u64>(),
                any::<[u8; NONCE_BYTES]>()
            )
                .prop_map(|(magic, version, node, config, client_nonce)| Frame::Hello(
                    Hello {
                        magic,
                        version,
                        node: NodeId(node),
                        config,
                        client_nonce,
                    }
                )),
            (
                any::<u16>(),
                any::<[u8; NONCE_BYTES]>(),
                any::<[u8; PROOF_BYTES]>()
            )
                .prop_map(|(node, server_nonce, server_proof)| Frame::Challenge(
                    Challenge {
                        node: NodeId(node),
                        server_nonce,
                        server_proof,
                    }
                )),
            any::<[u8; PROOF_BYTES]>().prop_map(Frame::Proof),
            prop_oneof![
                Just(Refusal::UnsupportedVersion),
                Just(Refusal::BadProof),
                Just(Refusal::Busy),
                any::<u64>().prop_map(|config| Refusal::NotMember { config })
            ]
            .prop_map(Frame::Refused),
            (any::<u64>(), op_strategy())
                .prop_map(|(request_id, op)| Frame::Request(Request { request_id, op })),
            (any::<u64>(), result_strategy())
                .prop_map(|(request_id, result)| Frame::Response(Response { request_id, result })),
        ]
    }

    /// Bytes that look like frames often enough to get past the length and kind checks.
    fn wire_strategy() -> impl Strategy<Value = Vec<u8>> {
        let plausible = (
            0u32..80,
            prop_oneof![
                Just(1u8),
                Just(2),
                Just(3),
                Just(4),
                Just(16),
                Just(17),
                any::<u8>()
            ],
            proptest::collection::vec(any::<u8>(), 0..96),
        )
            .prop_map(|(len, kind, body)| {
                let mut bytes = len.to_le_bytes().to_vec();
                bytes.push(kind);
                bytes.extend(body);
                bytes
            });
        let mutated = (
            frame_strategy(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            0usize..4,
        )
            .prop_map(|(frame, index, byte, mode)| {
                let mut bytes = encode_to_vec(&frame);
                let at = index.index(bytes.len());
                match mode {
                    0 => bytes[at] = byte,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, byte),
                    _ => bytes.push(byte),
                }
                bytes
            });
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            plausible,
            mutated
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decode_of_any_bytes_is_safe_and_canonical(bytes in wire_strategy()) {
            for len_max in [FRAME_BYTES_MAX, HANDSHAKE_FRAME_BYTES_MAX] {
                if let Ok(Some((frame, consumed))) = decode_bounded(&bytes, len_max) {
                    prop_assert!(consumed <= bytes.len());
                    prop_assert_eq!(encode_to_vec(&frame), bytes[..consumed].to_vec());
                }
            }
        }

        #[test]
        fn encode_then_decode_is_identity(frame in frame_strategy(), tail in any::<Vec<u8>>()) {
            let bytes = encode_to_vec(&frame);
            let mut stream = bytes.clone();
            stream.extend_from_slice(&tail);
            prop_assert_eq!(decode(&stream), Ok(Some((frame, bytes.len()))));
            // Every strict prefix is a valid beginning: the decoder asks for more bytes.
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode(&bytes[..cut]), Ok(None), "prefix of {} bytes", cut);
            }
        }
    }

    #[test]
    fn the_length_and_kind_are_checked_before_the_body_arrives() {
        let oversize = (FRAME_BYTES_MAX + 1).to_le_bytes();
        assert_eq!(
            decode(&oversize),
            Err(FrameError::Oversize {
                len: FRAME_BYTES_MAX + 1,
                max: FRAME_BYTES_MAX
            })
        );
        let mut unknown = 10u32.to_le_bytes().to_vec();
        unknown.push(0x7f);
        assert_eq!(
            decode(&unknown),
            Err(FrameError::UnknownKind { kind: 0x7f })
        );
        // "GET " read as a length: far beyond what an unauthenticated peer may send.
        assert!(matches!(
            decode_bounded(b"GET / HTTP/1.1\r\n", HANDSHAKE_FRAME_BYTES_MAX),
            Err(FrameError::Oversize { .. })
        ));
        assert!(matches!(
            decode(&0u32.to_le_bytes()),
            Err(FrameError::Malformed { offset: 0, .. })
        ));
    }

    #[test]
    fn malformed_bodies_name_the_offset() {
        let frame = Frame::Request(Request {
            request_id: 7,
            op: Op::Cas {
                addr: Addr::new(RegionId(1), 8),
                key: AccessKey(9),
                expected: 1,
                new: 2,
            },
        });
        let mut bytes = encode_to_vec(&frame);
        bytes[LEN_BYTES + 1 + 8] = 99; // the op code
        assert_eq!(
            decode(&bytes),
            Err(FrameError::Malformed {
                reason: "unknown op code",
                offset: LEN_BYTES + 1 + 8
            })
        );
        // A WRITE whose inner length claims more than the frame holds.
        let frame = Frame::Request(Request {
            request_id: 7,
            op: Op::Write {
                addr: Addr::new(RegionId(1), 8),
                key: AccessKey(9),
                data: vec![1; 8],
            },
        });
        let mut bytes = encode_to_vec(&frame);
        bytes[LEN_BYTES + 1 + 25..LEN_BYTES + 1 + 29].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            decode(&bytes),
            Err(FrameError::Malformed {
                reason: "WRITE data",
                ..
            })
        ));
    }

    #[test]
    fn a_maximal_read_response_fits_a_frame() {
        let frame = Frame::Response(Response {
            request_id: u64::MAX,
            result: Ok(Completion::Read(vec![0xab; OP_BYTES_MAX as usize])),
        });
        let bytes = encode_to_vec(&frame);
        assert_eq!(decode(&bytes), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn long_reasons_are_clipped_at_a_character_boundary() {
        let reason = "€".repeat(REASON_BYTES_MAX); // 3 bytes each
        let frame = Frame::Response(Response {
            request_id: 1,
            result: Err(OpError::PersistFailed {
                node: NodeId(3),
                reason,
            }),
        });
        let bytes = encode_to_vec(&frame);
        let Ok(Some((Frame::Response(response), _))) = decode(&bytes) else {
            panic!("a clipped reason decodes");
        };
        let Err(OpError::PersistFailed { reason, .. }) = response.result else {
            panic!("status survives: {:?}", response.result);
        };
        assert_eq!(reason.len(), REASON_BYTES_MAX / 3 * 3);
        assert!(reason.chars().all(|c| c == '€'));
    }
}
