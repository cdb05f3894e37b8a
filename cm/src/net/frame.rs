//! The byte layouts of a CM link: the HELLO that opens a connection and the frames that follow,
//! with an encoder and a decoder that treats every byte as hostile.
//!
//! ```text
//! HELLO (client -> server, the first bytes of a connection; no frame header)   44 bytes
//!  0 magic "ACRE-CM\0" [8] | 8 version u16 | 10 client node u16 | 12 client nonce [32]
//!
//! FRAME (every later message, both directions)
//!  0       4      5            8            12
//!  +-------+------+------------+------------+----------------------------+
//!  | len   | kind | reserved   | crc32c     | payload (len bytes)        |
//!  | u32   | u8   | [3] = 0    | u32        |                            |
//!  +-------+------+------------+------------+----------------------------+
//!  crc32c covers the payload; len <= the reader's limit for the connection's phase
//!
//! kind 1 CHALLENGE (server -> client)   66 bytes
//!  0 server node u16 | 2 server nonce [32] | 34 server proof [32]
//! kind 2 PROOF (client -> server)       32 bytes
//!  0 client proof [32]
//! kind 3 ACCEPTED (server -> client)     0 bytes
//! kind 4 REFUSED (server -> client, then the server closes)   1 or 3 bytes
//!  0 reason u8: 1 unsupported version (1 server version u16), 2 bad proof,
//!               3 unknown node, 4 busy
//! kind 16 MESSAGE (client -> server, only after ACCEPTED)   0 ..= FRAME_PAYLOAD_BYTES_MAX
//!  0 the owner's bytes
//! ```
//!
//! Every integer is little-endian and fields are packed. The magic comes first, before any
//! length, so that neither side can mistake a CM link for a fabric connection: the fabric's
//! connections open with a length `u32` and its HELLO kind (`30 00 00 00 01`), which is not
//! this magic, and this magic read as the fabric's length `u32` is over a gigabyte, far past
//! the fabric's frame limit, so a fabric NIC thread refuses it before reading further.
//!
//! The layout of REFUSED(unsupported version) must never change, so that a node of any version
//! can tell its peer why it was refused.

use acre_engine::NodeId;
use acre_engine::fabric::tcp::auth::{Nonce, Proof};
use acre_nvm_log::crc::crc32c;
use std::io::{self, Read, Write};

/// The first bytes of every CM link connection.
pub const MAGIC: [u8; 8] = *b"ACRE-CM\0";
/// The link protocol version a HELLO announces; a server refuses any other.
pub const PROTOCOL_VERSION: u16 = 1;
/// Bytes of a HELLO.
pub const HELLO_BYTES: usize = 44;
/// Bytes of a frame header.
pub const HEADER_BYTES: usize = 12;
/// The largest MESSAGE payload: 64 MiB. The CM's messages are Raft messages, whose snapshots
/// carry the configuration (a few kilobytes per node), and NEW-CONFIG and admin requests,
/// which are smaller; a frame this large is a bug or an attack, and the reader refuses it
/// from its header, before allocating anything.
pub const FRAME_PAYLOAD_BYTES_MAX: u32 = 64 << 20;
/// The largest payload a reader accepts during the handshake (a CHALLENGE).
pub const HANDSHAKE_PAYLOAD_BYTES_MAX: u32 = CHALLENGE_BYTES as u32;

const NONCE_BYTES: usize = size_of::<Nonce>();
const PROOF_BYTES: usize = size_of::<Proof>();
const CHALLENGE_BYTES: usize = 2 + NONCE_BYTES + PROOF_BYTES;

const _: () = assert!(HELLO_BYTES == MAGIC.len() + 2 + 2 + NONCE_BYTES);
const _: () = assert!(CHALLENGE_BYTES == 66);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX as u64 <= u32::MAX as u64);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Challenge,
    Proof,
    Accepted,
    Refused,
    Message,
}

impl Kind {
    /// The byte it is sent as.
    pub fn code(self) -> u8 {
        match self {
            Kind::Challenge => 1,
            Kind::Proof => 2,
            Kind::Accepted => 3,
            Kind::Refused => 4,
            Kind::Message => 16,
        }
    }

    fn from_code(code: u8) -> Option<Kind> {
        Some(match code {
            1 => Kind::Challenge,
            2 => Kind::Proof,
            3 => Kind::Accepted,
            4 => Kind::Refused,
            16 => Kind::Message,
            _ => return None,
        })
    }
}

/// Why a server refused a handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The client speaks another link protocol version.
    UnsupportedVersion { server_version: u16 },
    /// The client's proof was wrong: it does not hold this cluster's secret.
    BadProof,
    /// The client authenticated as a node the server does not link with.
    UnknownNode,
    /// The server has as many connections as it serves.
    Busy,
}

impl Refusal {
    /// The REFUSED payload.
    pub fn encode(self) -> Vec<u8> {
        match self {
            Refusal::UnsupportedVersion { server_version } => {
                let mut bytes = vec![1];
                bytes.extend_from_slice(&server_version.to_le_bytes());
                bytes
            }
            Refusal::BadProof => vec![2],
            Refusal::UnknownNode => vec![3],
            Refusal::Busy => vec![4],
        }
    }

    /// Decodes a REFUSED payload.
    pub fn decode(payload: &[u8]) -> Result<Refusal, FrameError> {
        let malformed = FrameError::BadLength {
            kind: Kind::Refused.code(),
            len: payload.len(),
        };
        match payload {
            [1, low, high] => Ok(Refusal::UnsupportedVersion {
                server_version: u16::from_le_bytes([*low, *high]),
            }),
            [2] => Ok(Refusal::BadProof),
            [3] => Ok(Refusal::UnknownNode),
            [4] => Ok(Refusal::Busy),
            [1..=4, ..] | [] => Err(malformed),
            [reason, ..] => Err(FrameError::UnknownRefusal { reason: *reason }),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnsupportedVersion { server_version } => write!(
                f,
                "it speaks CM link version {server_version} and this node {PROTOCOL_VERSION}: \
                 run the same release on every node"
            ),
            Refusal::BadProof => {
                f.write_str("this node does not hold its cluster secret: copy the secret again")
            }
            Refusal::UnknownNode => f.write_str(
                "it does not link with this node: add this node as its peer (it may have been \
                 removed from the configuration)",
            ),
            Refusal::Busy => f.write_str("it serves as many connections as it can: retry later"),
        }
    }
}

/// Bytes that are not a well-formed frame or HELLO. The connection they came on is closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error(
        "the connection does not start with the CM link magic (found {found:02x?}): the peer \
         is not a CM link endpoint (a fabric connection or another program); check its address"
    )]
    BadMagic { found: [u8; 8] },
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLong { len: u32, max: u32 },
    #[error("unknown frame kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("frame header has reserved bytes {reserved:02x?}, which must be zero")]
    Reserved { reserved: [u8; 3] },
    #[error(
        "frame of kind {kind} and {len} bytes has checksum {found:#010x}, its payload \
         {computed:#010x}: the bytes were damaged"
    )]
    BadChecksum {
        kind: u8,
        len: u32,
        found: u32,
        computed: u32,
    },
    #[error("frame of kind {kind} has {len} payload bytes, which that kind never has")]
    BadLength { kind: u8, len: usize },
    #[error("REFUSED frame names an unknown reason {reason}")]
    UnknownRefusal { reason: u8 },
    #[error("the connection ended inside a frame or HELLO after {read} of {expected} bytes")]
    Truncated { read: usize, expected: usize },
}

/// A decoded HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node: NodeId,
    pub client_nonce: Nonce,
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut bytes = [0u8; HELLO_BYTES];
        bytes[0..8].copy_from_slice(&MAGIC);
        bytes[8..10].copy_from_slice(&self.version.to_le_bytes());
        bytes[10..12].copy_from_slice(&self.node.0.to_le_bytes());
        bytes[12..].copy_from_slice(&self.client_nonce);
        bytes
    }

    /// Decodes a HELLO of any version: the caller checks the version, so that it can tell a
    /// peer of another version why it is refused.
    pub fn decode(bytes: &[u8; HELLO_BYTES]) -> Result<Hello, FrameError> {
        let magic: [u8; 8] = bytes[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        Ok(Hello {
            version: u16::from_le_bytes([bytes[8], bytes[9]]),
            node: NodeId(u16::from_le_bytes([bytes[10], bytes[11]])),
            client_nonce: bytes[12..].try_into().expect("32 bytes"),
        })
    }
}

/// A decoded CHALLENGE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub node: NodeId,
    pub server_nonce: Nonce,
    pub server_proof: Proof,
}

impl Challenge {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(CHALLENGE_BYTES);
        bytes.extend_from_slice(&self.node.0.to_le_bytes());
        bytes.extend_from_slice(&self.server_nonce);
        bytes.extend_from_slice(&self.server_proof);
        assert_eq!(bytes.len(), CHALLENGE_BYTES, "challenge layout");
        bytes
    }

    pub fn decode(payload: &[u8]) -> Result<Challenge, FrameError> {
        if payload.len() != CHALLENGE_BYTES {
            return Err(FrameError::BadLength {
                kind: Kind::Challenge.code(),
                len: payload.len(),
            });
        }
        Ok(Challenge {
            node: NodeId(u16::from_le_bytes([payload[0], payload[1]])),
            server_nonce: payload[2..2 + NONCE_BYTES].try_into().expect("32 bytes"),
            server_proof: payload[2 + NONCE_BYTES..].try_into().expect("32 bytes"),
        })
    }
}

/// Decodes a PROOF payload.
pub fn decode_proof(payload: &[u8]) -> Result<Proof, FrameError> {
    payload.try_into().map_err(|_| FrameError::BadLength {
        kind: Kind::Proof.code(),
        len: payload.len(),
    })
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// A frame's header for `payload`.
///
/// Panics if the payload is longer than [`FRAME_PAYLOAD_BYTES_MAX`]: senders check sizes first,
/// so that is a programmer error.
pub fn header(kind: Kind, payload: &[u8]) -> [u8; HEADER_BYTES] {
    assert!(
        payload.len() <= FRAME_PAYLOAD_BYTES_MAX as usize,
        "payload_bytes={} max={FRAME_PAYLOAD_BYTES_MAX}",
        payload.len()
    );
    let mut bytes = [0u8; HEADER_BYTES];
    bytes[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    bytes[4] = kind.code();
    bytes[8..12].copy_from_slice(&crc32c(payload).to_le_bytes());
    bytes
}

/// The header's length and kind, checked against `payload_bytes_max` before anything else is
/// read, so a hostile length never allocates.
fn decode_header(
    bytes: &[u8; HEADER_BYTES],
    payload_bytes_max: u32,
) -> Result<(Kind, u32, u32), FrameError> {
    let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    if len > payload_bytes_max {
        return Err(FrameError::TooLong {
            len,
            max: payload_bytes_max,
        });
    }
    let kind = Kind::from_code(bytes[4]).ok_or(FrameError::UnknownKind { kind: bytes[4] })?;
    let reserved: [u8; 3] = bytes[5..8].try_into().expect("3 bytes");
    if reserved != [0; 3] {
        return Err(FrameError::Reserved { reserved });
    }
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    Ok((kind, len, crc))
}

/// An error on a link: the socket failed, or the peer sent bytes that are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Fills `buf` from `reader`. Returns `Ok(false)` if the stream ended before its first byte,
/// and [`FrameError::Truncated`] if it ended after some.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> Result<bool, ReadError> {
    let mut read = 0;
    while read < buf.len() {
        match reader.read(&mut buf[read..]) {
            Ok(0) if read == 0 => return Ok(false),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    read,
                    expected: buf.len(),
                }
                .into());
            }
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Reads a HELLO; `Ok(None)` if the stream ended before it began.
pub fn read_hello(reader: &mut impl Read) -> Result<Option<Hello>, ReadError> {
    let mut bytes = [0u8; HELLO_BYTES];
    // Check the magic as soon as it has arrived, so a peer speaking another protocol is told
    // apart by its first bytes rather than made to wait for a deadline.
    if !read_full(reader, &mut bytes[..MAGIC.len()])? {
        return Ok(None);
    }
    if bytes[..MAGIC.len()] != MAGIC {
        let found = bytes[..MAGIC.len()].try_into().expect("8 bytes");
        return Err(FrameError::BadMagic { found }.into());
    }
    if !read_full(reader, &mut bytes[MAGIC.len()..])? {
        return Err(FrameError::Truncated {
            read: MAGIC.len(),
            expected: HELLO_BYTES,
        }
        .into());
    }
    Ok(Some(Hello::decode(&bytes)?))
}

/// Reads one frame whose payload is at most `payload_bytes_max`, checking its checksum;
/// `Ok(None)` if the stream ended cleanly between frames.
pub fn read_frame(
    reader: &mut impl Read,
    payload_bytes_max: u32,
) -> Result<Option<Frame>, ReadError> {
    let mut header_bytes = [0u8; HEADER_BYTES];
    if !read_full(reader, &mut header_bytes)? {
        return Ok(None);
    }
    let (kind, len, crc) = decode_header(&header_bytes, payload_bytes_max)?;
    let mut payload = vec![0u8; len as usize];
    // Offsets in a truncation error count from the start of the frame, header included.
    let truncated = |read| FrameError::Truncated {
        read: HEADER_BYTES + read,
        expected: HEADER_BYTES + len as usize,
    };
    match read_full(reader, &mut payload) {
        Ok(true) => {}
        Ok(false) => return Err(truncated(0).into()),
        Err(ReadError::Frame(FrameError::Truncated { read, .. })) => {
            return Err(truncated(read).into());
        }
        Err(e) => return Err(e),
    }
    let computed = crc32c(&payload);
    if computed != crc {
        return Err(FrameError::BadChecksum {
            kind: kind.code(),
            len,
            found: crc,
            computed,
        }
        .into());
    }
    Ok(Some(Frame { kind, payload }))
}

/// Writes one frame (not flushed).
pub fn write_frame(writer: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&header(kind, payload))?;
    writer.write_all(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::fabric::tcp::frame as fabric;

    fn encoded(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_frame(&mut bytes, kind, payload).unwrap();
        bytes
    }

    fn read(bytes: &[u8], max: u32) -> Result<Option<Frame>, FrameError> {
        read_frame(&mut &bytes[..], max).map_err(|e| match e {
            ReadError::Frame(e) => e,
            ReadError::Io(e) => panic!("in-memory read failed: {e}"),
        })
    }

    #[test]
    fn frames_round_trip_and_end_cleanly_between_frames() {
        let mut bytes = encoded(Kind::Message, b"raft");
        bytes.extend(encoded(Kind::Accepted, b""));
        let mut reader = &bytes[..];
        let first = read_frame(&mut reader, FRAME_PAYLOAD_BYTES_MAX).unwrap();
        assert_eq!(
            first,
            Some(Frame {
                kind: Kind::Message,
                payload: b"raft".to_vec()
            })
        );
        let second = read_frame(&mut reader, FRAME_PAYLOAD_BYTES_MAX).unwrap();
        assert_eq!(second.map(|f| f.kind), Some(Kind::Accepted));
        assert!(
            read_frame(&mut reader, FRAME_PAYLOAD_BYTES_MAX)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_from_its_header() {
        // Only the header: the reader must refuse before waiting for (or allocating) a payload.
        let mut bytes = encoded(Kind::Message, &[7; 100]);
        bytes.truncate(HEADER_BYTES);
        assert_eq!(
            read(&bytes, 99),
            Err(FrameError::TooLong { len: 100, max: 99 })
        );
        let mut huge = [0u8; HEADER_BYTES];
        huge[0..4].copy_from_slice(&(FRAME_PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        huge[4] = Kind::Message.code();
        assert_eq!(
            read(&huge, FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::TooLong {
                len: FRAME_PAYLOAD_BYTES_MAX + 1,
                max: FRAME_PAYLOAD_BYTES_MAX
            })
        );
    }

    #[test]
    fn damaged_frames_are_refused_with_what_was_wrong() {
        let good = encoded(Kind::Message, b"append entries");
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            read(&flipped, FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::BadChecksum {
                kind: 16,
                len: 14,
                ..
            })
        ));
        let mut kind = good.clone();
        kind[4] = 9;
        assert_eq!(
            read(&kind, FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::UnknownKind { kind: 9 })
        );
        let mut reserved = good.clone();
        reserved[6] = 1;
        assert_eq!(
            read(&reserved, FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::Reserved {
                reserved: [0, 1, 0]
            })
        );
        assert_eq!(
            read(&good[..good.len() - 1], FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::Truncated {
                read: good.len() - 1,
                expected: good.len()
            })
        );
        assert_eq!(
            read(&good[..5], FRAME_PAYLOAD_BYTES_MAX),
            Err(FrameError::Truncated {
                read: 5,
                expected: HEADER_BYTES
            })
        );
    }

    #[test]
    fn handshake_payloads_decode_only_at_their_exact_length() {
        let challenge = Challenge {
            node: NodeId(3),
            server_nonce: [1; 32],
            server_proof: [2; 32],
        };
        assert_eq!(
            Challenge::decode(&challenge.encode()),
            Ok(challenge.clone())
        );
        assert!(matches!(
            Challenge::decode(&challenge.encode()[1..]),
            Err(FrameError::BadLength { kind: 1, len: 65 })
        ));
        assert!(decode_proof(&[0; 31]).is_err());
        for refusal in [
            Refusal::UnsupportedVersion { server_version: 9 },
            Refusal::BadProof,
            Refusal::UnknownNode,
            Refusal::Busy,
        ] {
            assert_eq!(Refusal::decode(&refusal.encode()), Ok(refusal));
        }
        assert!(Refusal::decode(&[1]).is_err());
        assert!(Refusal::decode(&[2, 0]).is_err());
        assert_eq!(
            Refusal::decode(&[77]),
            Err(FrameError::UnknownRefusal { reason: 77 })
        );
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: NodeId(513),
            client_nonce: [5; 32],
        };
        assert_eq!(read_hello(&mut &hello.encode()[..]).unwrap(), Some(hello));
    }

    #[test]
    fn a_cm_link_and_a_fabric_connection_are_never_mistaken_for_each_other() {
        // The fabric's HELLO is not a CM link's.
        let fabric_hello = fabric::encode_to_vec(&fabric::Frame::Hello(fabric::Hello {
            magic: fabric::MAGIC,
            version: acre_engine::fabric::tcp::auth::PROTOCOL_VERSION,
            node: NodeId(1),
            config: 1,
            client_nonce: [0; 32],
        }));
        assert!(matches!(
            read_hello(&mut &fabric_hello[..]),
            Err(ReadError::Frame(FrameError::BadMagic { .. }))
        ));
        // A CM link's HELLO is refused by the fabric's decoder from its first bytes.
        let hello = Hello {
            version: PROTOCOL_VERSION,
            node: NodeId(1),
            client_nonce: [0; 32],
        }
        .encode();
        assert!(matches!(
            fabric::decode(&hello),
            Err(fabric::FrameError::Oversize { .. })
        ));
    }
}
