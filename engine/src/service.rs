//! The requests a node serves to its peers over the message channels, and their replies.
//!
//! Each message is one ring record: the record kind says what it is, and the payload starts with
//! the request id (u64 LE) so replies can be matched. These are the engine's own requests
//! (liveness, allocation); the transaction protocol's records come with acre-txn.

use crate::addr::Addr;
use acre_nvm_log::RecordKind;

pub const PING: RecordKind = RecordKind(1);
pub const PONG: RecordKind = RecordKind(2);
pub const ALLOC: RecordKind = RecordKind(3);
pub const ALLOC_OK: RecordKind = RecordKind(4);
pub const FREE: RecordKind = RecordKind(5);
pub const FREE_OK: RecordKind = RecordKind(6);
pub const REFUSED: RecordKind = RecordKind(7);

/// A request as a node receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Ping { id: u64 },
    Alloc { id: u64, len: u32 },
    Free { id: u64, addr: Addr },
}

/// A reply as a requester receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Pong { id: u64 },
    Allocated { id: u64, addr: Addr },
    Freed { id: u64 },
    Refused { id: u64, reason: String },
}

/// Why a message could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed message of kind {kind}: {reason}")]
pub struct MessageError {
    pub kind: u16,
    pub reason: &'static str,
}

fn u64_at(payload: &[u8], at: usize, kind: RecordKind) -> Result<u64, MessageError> {
    payload
        .get(at..at + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or(MessageError {
            kind: kind.0,
            reason: "too short",
        })
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Ping { id } | Request::Alloc { id, .. } | Request::Free { id, .. } => *id,
        }
    }

    pub fn encode(&self) -> (RecordKind, Vec<u8>) {
        let mut payload = self.id().to_le_bytes().to_vec();
        let kind = match self {
            Request::Ping { .. } => PING,
            Request::Alloc { len, .. } => {
                payload.extend_from_slice(&len.to_le_bytes());
                ALLOC
            }
            Request::Free { addr, .. } => {
                payload.extend_from_slice(&addr.to_u64().to_le_bytes());
                FREE
            }
        };
        (kind, payload)
    }

    pub fn decode(kind: RecordKind, payload: &[u8]) -> Result<Request, MessageError> {
        let id = u64_at(payload, 0, kind)?;
        match kind {
            PING => Ok(Request::Ping { id }),
            ALLOC => {
                let len = payload
                    .get(8..12)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or(MessageError {
                        kind: kind.0,
                        reason: "too short",
                    })?;
                Ok(Request::Alloc { id, len })
            }
            FREE => Ok(Request::Free {
                id,
                addr: Addr::from_u64(u64_at(payload, 8, kind)?),
            }),
            _ => Err(MessageError {
                kind: kind.0,
                reason: "not a request",
            }),
        }
    }
}

impl Reply {
    pub fn id(&self) -> u64 {
        match self {
            Reply::Pong { id }
            | Reply::Allocated { id, .. }
            | Reply::Freed { id }
            | Reply::Refused { id, .. } => *id,
        }
    }

    pub fn encode(&self) -> (RecordKind, Vec<u8>) {
        let mut payload = self.id().to_le_bytes().to_vec();
        let kind = match self {
            Reply::Pong { .. } => PONG,
            Reply::Allocated { addr, .. } => {
                payload.extend_from_slice(&addr.to_u64().to_le_bytes());
                ALLOC_OK
            }
            Reply::Freed { .. } => FREE_OK,
            Reply::Refused { reason, .. } => {
                payload.extend_from_slice(reason.as_bytes());
                REFUSED
            }
        };
        (kind, payload)
    }

    pub fn decode(kind: RecordKind, payload: &[u8]) -> Result<Reply, MessageError> {
        let id = u64_at(payload, 0, kind)?;
        match kind {
            PONG => Ok(Reply::Pong { id }),
            ALLOC_OK => Ok(Reply::Allocated {
                id,
                addr: Addr::from_u64(u64_at(payload, 8, kind)?),
            }),
            FREE_OK => Ok(Reply::Freed { id }),
            REFUSED => Ok(Reply::Refused {
                id,
                reason: String::from_utf8_lossy(&payload[8..]).into_owned(),
            }),
            _ => Err(MessageError {
                kind: kind.0,
                reason: "not a reply",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::RegionId;

    #[test]
    fn requests_and_replies_round_trip() {
        let addr = Addr::new(RegionId(2), 0x40);
        for request in [
            Request::Ping { id: 1 },
            Request::Alloc { id: 2, len: 100 },
            Request::Free { id: 3, addr },
        ] {
            let (kind, payload) = request.encode();
            assert_eq!(Request::decode(kind, &payload).unwrap(), request);
        }
        for reply in [
            Reply::Pong { id: 1 },
            Reply::Allocated { id: 2, addr },
            Reply::Freed { id: 3 },
            Reply::Refused {
                id: 4,
                reason: "region full".into(),
            },
        ] {
            let (kind, payload) = reply.encode();
            assert_eq!(Reply::decode(kind, &payload).unwrap(), reply);
        }
    }

    #[test]
    fn short_or_unknown_messages_are_errors() {
        assert!(Request::decode(PING, &[1, 2]).is_err());
        assert!(Request::decode(ALLOC, &[0; 9]).is_err());
        assert!(Request::decode(PONG, &[0; 8]).is_err());
        assert!(Reply::decode(RecordKind(99), &[0; 8]).is_err());
    }
}
