//! The state of this node's connection to one peer: Idle → Connecting → Connected → Error, and
//! from Error back to Connecting once [`Link::start_connecting`] allows it.
//!
//! The rules: a connection is made on first use; a failure of any kind (the bootstrap, a
//! queue pair transition, an error completion, a timeout) puts the link in Error and hands the
//! broken connection back to be torn down, since a queue pair in the error state cannot be used
//! again; from Error, batches fail at once with the remembered reason until `backoff` has passed
//! since the failure, so that a dead peer costs each batch nothing rather than a connection
//! attempt; after that the next batch tries a new connection. A refusal because this node is
//! not a member of the peer's configuration ([`Link::refused`]) is kept the same way, and
//! remembered as such ([`Link::refused_in`]), so that the batches failing at once meanwhile
//! say so too rather than calling the peer unreachable.

use crate::clock::Time;
use std::time::Duration;

/// Where a link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Connecting,
    Connected,
    Error,
}

/// One peer's link, holding its connection `C` while connected.
#[derive(Debug)]
pub struct Link<C> {
    state: State<C>,
}

#[derive(Debug)]
enum State<C> {
    Idle,
    Connecting,
    Connected(C),
    Error {
        reason: String,
        at: Time,
        /// The peer refused this node as not a member of its configuration of this id.
        refused_in: Option<u64>,
    },
}

impl<C> Default for Link<C> {
    fn default() -> Link<C> {
        Link { state: State::Idle }
    }
}

impl<C> Link<C> {
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Idle => Phase::Idle,
            State::Connecting => Phase::Connecting,
            State::Connected(_) => Phase::Connected,
            State::Error { .. } => Phase::Error,
        }
    }

    /// The connection, if connected.
    pub fn connection(&mut self) -> Option<&mut C> {
        match &mut self.state {
            State::Connected(connection) => Some(connection),
            _ => None,
        }
    }

    /// Idle, or Error for at least `backoff` since the failure: now Connecting. Error more
    /// recently: the failure's reason, to fail with at once.
    pub fn start_connecting(&mut self, now: Time, backoff: Duration) -> Result<(), String> {
        match &self.state {
            State::Idle => {}
            State::Error { reason, at, .. } => {
                let since = now.saturating_duration_since(*at);
                if since < backoff {
                    return Err(format!(
                        "{reason} ({since:?} ago; the next attempt is {backoff:?} after it)"
                    ));
                }
            }
            State::Connecting | State::Connected(_) => {
                panic!("start_connecting in phase {:?}", self.phase())
            }
        }
        self.state = State::Connecting;
        Ok(())
    }

    /// Connecting → Connected.
    pub fn connected(&mut self, connection: C) {
        assert_eq!(
            self.phase(),
            Phase::Connecting,
            "connected while not connecting"
        );
        self.state = State::Connected(connection);
    }

    /// Connecting or Connected → Error; returns the connection to tear down, if there was one.
    pub fn failed(&mut self, reason: String, now: Time) -> Option<C> {
        let phase = self.phase();
        assert!(
            matches!(phase, Phase::Connecting | Phase::Connected),
            "failed in phase {phase:?}"
        );
        let failed = State::Error {
            reason,
            at: now,
            refused_in: None,
        };
        match std::mem::replace(&mut self.state, failed) {
            State::Connected(connection) => Some(connection),
            _ => None,
        }
    }

    /// Connecting → Error: the peer refused this node as not a member of its configuration
    /// `config` (nothing was connected).
    pub fn refused(&mut self, reason: String, config: u64, now: Time) {
        assert_eq!(
            self.phase(),
            Phase::Connecting,
            "refused while not connecting"
        );
        self.state = State::Error {
            reason,
            at: now,
            refused_in: Some(config),
        };
    }

    /// In Error because the peer refused this node as a non-member: its configuration's id.
    pub fn refused_in(&self) -> Option<u64> {
        match self.state {
            State::Error { refused_in, .. } => refused_in,
            _ => None,
        }
    }

    /// Back to Idle (the peer was replaced); returns the connection to tear down, if any.
    pub fn reset(&mut self) -> Option<C> {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Connected(connection) => Some(connection),
            _ => None,
        }
    }
}
