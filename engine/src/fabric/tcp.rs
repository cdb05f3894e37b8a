//! The TCP transport: one-sided operations on another node's registered memory over any
//! network, served at the target by a NIC thread so that no application thread is involved.
//!
//! - [`NicServer`] ([`server`]): the target side. One mio event-loop thread per node accepts
//!   connections, authenticates peers, and executes READ/WRITE/CAS/PERSIST/NOTIFY requests on
//!   the node's [`NodeMemory`](crate::fabric::NodeMemory), answering each connection's requests
//!   in order.
//! - [`TcpTransport`] ([`client`]): the initiator side. One connection per peer, made on the
//!   first post and reused by every thread; a batch's requests are written in one go, and the
//!   thread that waits for a batch reads its completions from the socket itself unless another
//!   waiter already does (no receiver thread). See [`PendingBatch`].
//! - [`frame`]: the wire format (drawn in its module doc and in `docs/formats.md`).
//! - [`auth`]: the [`ClusterSecret`] and the HMAC-SHA256 challenge/response both sides complete
//!   before any operation.
//!
//! Failures: an access error (bad key, unknown region, out of bounds, misaligned) travels back
//! as exactly the [`AccessError`](crate::region::AccessError) the target computed and leaves the
//! connection usable. A broken connection fails every operation in flight on it with
//! [`OpError::Unreachable`](crate::fabric::OpError::Unreachable); the next post reconnects.
//! A node that is not a member of the target's configuration, or is bound to an older one, is
//! refused at the handshake or, when the target's membership changes, on its live connection:
//! its operations fail with [`OpError::NotMember`](crate::fabric::OpError::NotMember) and none
//! of them executed (docs/failures.md#fencing).
//!
//! Peers are authenticated, frames are not encrypted: see [`auth`] for what that protects.

pub mod auth;
pub mod client;
pub mod frame;
mod recv_now;
pub mod server;

pub use auth::{ClusterSecret, SecretFileError};
pub use client::{HandshakeError, PendingBatch, TcpTransport};
pub use server::{NicServer, NicStats};

#[cfg(test)]
mod tests;
