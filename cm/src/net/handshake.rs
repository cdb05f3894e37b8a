//! The two sides of a CM link's handshake, over any byte stream (a socket in [`super::Links`],
//! a byte buffer in tests). The steps and what they prove are in [`super`]'s docs.

use super::LinkError;
use super::frame::{
    self, Challenge, FrameError, HANDSHAKE_PAYLOAD_BYTES_MAX, Hello, Kind, PROTOCOL_VERSION,
    ReadError, Refusal,
};
use acre_engine::NodeId;
use acre_engine::fabric::tcp::auth::{self, ClusterSecret};
use std::io::{Read, Write};

/// The configuration id the proofs of a CM link are bound to. A link is not bound to a
/// configuration (Raft messages carry their own terms, NEW-CONFIG its configuration id), so it
/// is a constant; see the module docs of [`super`] on what the proofs do not separate.
pub const PROOF_CONFIG: u64 = 0;

/// The client's side: announces `me`, checks that the server is `peer` and holds the secret,
/// proves that `me` holds it, and waits for the verdict. After `Ok`, the stream carries
/// MESSAGE frames from `me` to `peer`.
pub fn connect<S: Read + Write>(
    stream: &mut S,
    me: NodeId,
    peer: NodeId,
    secret: &ClusterSecret,
) -> Result<(), LinkError> {
    let client_nonce = auth::nonce();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        node: me,
        client_nonce,
    };
    stream.write_all(&hello.encode())?;
    stream.flush()?;
    let challenge = match read_handshake_frame(stream)? {
        frame::Frame {
            kind: Kind::Challenge,
            payload,
        } => Challenge::decode(&payload)?,
        frame::Frame {
            kind: Kind::Refused,
            payload,
        } => return Err(LinkError::Refused(Refusal::decode(&payload)?)),
        other => return Err(unexpected(Kind::Challenge, other.kind)),
    };
    if challenge.node != peer {
        return Err(LinkError::WrongNode {
            expected: peer,
            found: challenge.node,
        });
    }
    secret
        .verify_server_proof(
            &client_nonce,
            &challenge.server_nonce,
            challenge.node,
            &challenge.server_proof,
        )
        .map_err(|_| LinkError::BadProof)?;
    let proof = secret.client_proof(&challenge.server_nonce, &client_nonce, me, PROOF_CONFIG);
    frame::write_frame(stream, Kind::Proof, &proof)?;
    stream.flush()?;
    match read_handshake_frame(stream)? {
        frame::Frame {
            kind: Kind::Accepted,
            payload,
        } if payload.is_empty() => Ok(()),
        frame::Frame {
            kind: Kind::Accepted,
            payload,
        } => Err(FrameError::BadLength {
            kind: Kind::Accepted.code(),
            len: payload.len(),
        }
        .into()),
        frame::Frame {
            kind: Kind::Refused,
            payload,
        } => Err(LinkError::Refused(Refusal::decode(&payload)?)),
        other => Err(unexpected(Kind::Accepted, other.kind)),
    }
}

/// The server's side: reads the HELLO, proves that `me` holds the secret, checks the client's
/// proof, and asks `admit` whether it links with the node the client proved to be. Returns
/// that node. Every refusal the client can act on is sent as REFUSED before the error returns;
/// a peer that does not speak the protocol at all is just closed.
pub fn accept<S: Read + Write>(
    stream: &mut S,
    me: NodeId,
    secret: &ClusterSecret,
    admit: impl FnOnce(NodeId) -> Result<(), Refusal>,
) -> Result<NodeId, LinkError> {
    let hello = frame::read_hello(stream)?.ok_or(LinkError::Closed)?;
    if hello.version != PROTOCOL_VERSION {
        refuse(
            stream,
            Refusal::UnsupportedVersion {
                server_version: PROTOCOL_VERSION,
            },
        );
        return Err(LinkError::UnsupportedVersion {
            ours: PROTOCOL_VERSION,
            theirs: hello.version,
        });
    }
    let server_nonce = auth::nonce();
    let challenge = Challenge {
        node: me,
        server_nonce,
        server_proof: secret.server_proof(&hello.client_nonce, &server_nonce, me),
    };
    frame::write_frame(stream, Kind::Challenge, &challenge.encode())?;
    stream.flush()?;
    let proof = match read_handshake_frame(stream)? {
        frame::Frame {
            kind: Kind::Proof,
            payload,
        } => frame::decode_proof(&payload)?,
        other => return Err(unexpected(Kind::Proof, other.kind)),
    };
    if secret
        .verify_client_proof(
            &server_nonce,
            &hello.client_nonce,
            hello.node,
            PROOF_CONFIG,
            &proof,
        )
        .is_err()
    {
        refuse(stream, Refusal::BadProof);
        return Err(LinkError::BadProof);
    }
    if let Err(refusal) = admit(hello.node) {
        refuse(stream, refusal);
        return Err(LinkError::NotAdmitted {
            node: hello.node,
            refusal,
        });
    }
    frame::write_frame(stream, Kind::Accepted, &[])?;
    stream.flush()?;
    Ok(hello.node)
}

/// Sends REFUSED on a connection about to be closed. Best effort: the peer may be gone, and
/// the error that made us refuse is what the caller reports.
pub fn refuse<S: Write>(stream: &mut S, refusal: Refusal) {
    let _ =
        frame::write_frame(stream, Kind::Refused, &refusal.encode()).and_then(|()| stream.flush());
}

fn read_handshake_frame<S: Read>(stream: &mut S) -> Result<frame::Frame, LinkError> {
    match frame::read_frame(stream, HANDSHAKE_PAYLOAD_BYTES_MAX) {
        Ok(Some(frame)) => Ok(frame),
        Ok(None) => Err(LinkError::Closed),
        Err(ReadError::Io(e)) => Err(e.into()),
        Err(ReadError::Frame(e)) => Err(e.into()),
    }
}

fn unexpected(expected: Kind, found: Kind) -> LinkError {
    LinkError::UnexpectedKind {
        expected: expected.code(),
        found: found.code(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// One direction of an in-memory connection: what one side wrote, read by the other.
    #[derive(Default)]
    struct Script {
        input: io::Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }

    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_hello_of_another_version_is_refused_and_told_ours() {
        let hello = Hello {
            version: PROTOCOL_VERSION + 1,
            node: NodeId(2),
            client_nonce: [0; 32],
        };
        let mut script = Script {
            input: io::Cursor::new(hello.encode().to_vec()),
            ..Script::default()
        };
        let err = accept(&mut script, NodeId(1), &ClusterSecret::generate(), |_| {
            Ok(())
        })
        .unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::UnsupportedVersion { ours: PROTOCOL_VERSION, theirs }
                    if theirs == PROTOCOL_VERSION + 1
            ),
            "{err}"
        );
        let reply = frame::read_frame(&mut &script.output[..], HANDSHAKE_PAYLOAD_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert_eq!(reply.kind, Kind::Refused);
        assert_eq!(
            Refusal::decode(&reply.payload),
            Ok(Refusal::UnsupportedVersion {
                server_version: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn a_client_refuses_a_server_that_is_not_the_node_it_dialled() {
        let secret = ClusterSecret::generate();
        let hello_nonce_unknown = Challenge {
            node: NodeId(7),
            server_nonce: [3; 32],
            server_proof: [4; 32],
        };
        let mut input = Vec::new();
        frame::write_frame(&mut input, Kind::Challenge, &hello_nonce_unknown.encode()).unwrap();
        let mut script = Script {
            input: io::Cursor::new(input),
            ..Script::default()
        };
        let err = connect(&mut script, NodeId(1), NodeId(2), &secret).unwrap_err();
        assert!(
            matches!(
                err,
                LinkError::WrongNode {
                    expected: NodeId(2),
                    found: NodeId(7)
                }
            ),
            "{err}"
        );
        // It sent its HELLO and nothing after it: no proof for an impostor.
        assert_eq!(script.output.len(), frame::HELLO_BYTES);
    }

    #[test]
    fn a_client_refuses_a_server_without_the_secret() {
        let secret = ClusterSecret::generate();
        let challenge = Challenge {
            node: NodeId(2),
            server_nonce: [3; 32],
            server_proof: [4; 32],
        };
        let mut input = Vec::new();
        frame::write_frame(&mut input, Kind::Challenge, &challenge.encode()).unwrap();
        let mut script = Script {
            input: io::Cursor::new(input),
            ..Script::default()
        };
        let err = connect(&mut script, NodeId(1), NodeId(2), &secret).unwrap_err();
        assert!(matches!(err, LinkError::BadProof), "{err}");
        assert_eq!(script.output.len(), frame::HELLO_BYTES);
    }
}
