//! A member's side of reconfiguration (docs/failures.md#reconfiguration, FaRM SOSP'15 §5.2): the
//! small sans-I/O state machine a node runs on the NEW-CONFIG and NEW-CONFIG-COMMIT envelopes
//! from the CM, over an [`Adopter`] that does the work (`ReplicaNode::adopt` and
//! `commit_config` on a memory node).
//!
//! - **NEW-CONFIG** of a higher id than the node's is adopted and acknowledged; an id equal to
//!   the one the node holds is acknowledged again without adopting anything (the CM resends
//!   until it hears an acknowledgement, and a new CM leader distributes the current
//!   configuration again); a lower id is refused as [`Refusal::Stale`], and a configuration
//!   that does not list the node as [`Refusal::Removed`] (the node must stop: its lease will
//!   not be renewed).
//! - **NEW-CONFIG-COMMIT** is applied only for the configuration the node adopted; any other id
//!   is ignored (a late commit of an older configuration, or one the node never heard of).
//! - **Lost commits.** Between adopting a configuration and its commit, the node repeats its
//!   acknowledgement every [`ACK_RESEND_PERIOD`] ([`Member::tick`]); the CM answers an
//!   acknowledgement of the configuration it committed with the commit again. No commit is
//!   ever lost for good, and nothing needs a timer on the CM's side once it is done.
//! - **Who may send them.** A configuration installed through Raft names the CM that installed
//!   it (`cm_leader`), so the node checks a NEW-CONFIG against the configuration it carries:
//!   it is taken only from the CM that configuration names, and a NEW-CONFIG-COMMIT only from
//!   the CM of the configuration adopted. Checking against the CM of the node's *current*
//!   configuration would shut out a new CM after the old one failed. A configuration that names
//!   no CM (a static cluster, built from a file) is taken from any sender: the links already
//!   admit only nodes that know the cluster secret. Envelopes from anyone else are ignored,
//!   not answered: a reply would tell a confused sender nothing it can act on.

use crate::wire::{NewConfigAck, envelope::Body};
use acre_engine::addr::NodeId;
use acre_engine::clock::Time;
use acre_txn::config::Configuration;
use std::sync::Arc;
use std::time::Duration;

/// How often a node that adopted a configuration repeats its acknowledgement until the commit
/// comes.
pub const ACK_RESEND_PERIOD: Duration = Duration::from_millis(20);

/// What a node does at NEW-CONFIG and NEW-CONFIG-COMMIT.
pub trait Adopter {
    /// NEW-CONFIG: make ready what `config` asks of the node, then adopt it. Called only with
    /// an id higher than [`Adopter::current_id`] and a configuration that lists the node.
    fn adopt(&self, config: Arc<Configuration>) -> Result<(), String>;
    /// NEW-CONFIG-COMMIT of the configuration adopted, `id`.
    fn commit(&self, id: u64) -> Result<(), String>;
    /// The id of the configuration the node holds.
    fn current_id(&self) -> u64;
}

/// Why a member refused NEW-CONFIG, as the ack's `refused` text starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node holds a higher id already.
    Stale,
    /// The configuration does not list the node.
    Removed,
    /// The node could not make ready what the configuration asks of it.
    Failed,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Stale => "stale",
            Refusal::Removed => "removed",
            Refusal::Failed => "failed",
        }
    }

    /// The refusal an ack's `refused` text names (`name` or `name: detail`); `None` for an
    /// empty text (not refused) or an unknown name.
    pub fn parse(refused: &str) -> Option<Refusal> {
        let name = refused.split(':').next().unwrap_or("").trim();
        [Refusal::Stale, Refusal::Removed, Refusal::Failed]
            .into_iter()
            .find(|r| r.name() == name)
    }
}

/// A member's side of reconfiguration (module docs).
#[derive(Debug)]
pub struct Member<A> {
    me: NodeId,
    adopter: A,
    /// The configuration adopted through NEW-CONFIG and not committed yet, and when the ack
    /// goes out again.
    pending: Option<(Arc<Configuration>, Time)>,
}

/// A message for one node.
pub type Reply = (NodeId, Body);

impl<A: Adopter> Member<A> {
    pub fn new(me: NodeId, adopter: A) -> Member<A> {
        Member {
            me,
            adopter,
            pending: None,
        }
    }

    pub fn adopter(&self) -> &A {
        &self.adopter
    }

    /// The configuration adopted and waiting for its commit, if any.
    pub fn pending_id(&self) -> Option<u64> {
        self.pending.as_ref().map(|(config, _)| config.id)
    }

    /// Takes an envelope's body from `from`; returns the answer, if any. Bodies other than
    /// NEW-CONFIG and NEW-CONFIG-COMMIT are not this machine's and are ignored.
    pub fn receive(&mut self, from: NodeId, body: &Body, now: Time) -> Option<Reply> {
        match body {
            Body::NewConfig(message) => {
                let config = match Configuration::try_from(message) {
                    Ok(config) => config,
                    Err(e) => {
                        tracing::warn!(%from, "malformed NEW-CONFIG ignored: {e}");
                        return None;
                    }
                };
                self.new_config(from, Arc::new(config), now)
                    .map(|ack| (from, Body::NewConfigAck(ack)))
            }
            Body::NewConfigCommit(id) => {
                self.commit(from, *id);
                None
            }
            _ => None,
        }
    }

    /// NEW-CONFIG of `config` from `from`: the acknowledgement to send back, if any.
    pub fn new_config(
        &mut self,
        from: NodeId,
        config: Arc<Configuration>,
        now: Time,
    ) -> Option<NewConfigAck> {
        if !sent_by_its_cm(&config, from) {
            tracing::warn!(%from, id = config.id, cm = ?config.cm_leader, "NEW-CONFIG from a node that is not its CM ignored");
            return None;
        }
        let current = self.adopter.current_id();
        let refuse = |refusal: Refusal, detail: String| {
            Some(NewConfigAck {
                id: config.id,
                refused: format!("{}: {detail}", refusal.name()),
            })
        };
        if config.id < current {
            return refuse(
                Refusal::Stale,
                format!("{} holds configuration {current}", self.me),
            );
        }
        if !config.members().any(|m| m == self.me) {
            return refuse(
                Refusal::Removed,
                format!("configuration {} does not list {}", config.id, self.me),
            );
        }
        if config.id > current {
            if let Err(reason) = self.adopter.adopt(config.clone()) {
                tracing::warn!(id = config.id, %reason, "could not adopt NEW-CONFIG");
                return refuse(Refusal::Failed, reason);
            }
            let adopted = self.adopter.current_id();
            assert_eq!(
                adopted, config.id,
                "adopted={adopted} offered={}",
                config.id
            );
            self.pending = Some((config.clone(), now + ACK_RESEND_PERIOD));
        }
        // Equal ids: adopted already (or the node's first configuration): acknowledge again.
        Some(NewConfigAck {
            id: config.id,
            refused: String::new(),
        })
    }

    /// NEW-CONFIG-COMMIT of configuration `id` from `from`: applied only for the configuration
    /// adopted and from its CM. Returns whether it was applied.
    pub fn commit(&mut self, from: NodeId, id: u64) -> bool {
        let Some((config, _)) = &self.pending else {
            return false;
        };
        if config.id != id {
            tracing::debug!(
                id,
                adopted = config.id,
                "NEW-CONFIG-COMMIT of another configuration ignored"
            );
            return false;
        }
        if !sent_by_its_cm(config, from) {
            tracing::warn!(%from, id, "NEW-CONFIG-COMMIT from a node that is not the CM ignored");
            return false;
        }
        match self.adopter.commit(id) {
            Ok(()) => {
                self.pending = None;
                true
            }
            Err(reason) => {
                // Adopted and not committed: only a newer adoption behind our back does that.
                tracing::warn!(id, %reason, "NEW-CONFIG-COMMIT not applied");
                false
            }
        }
    }

    /// Time passed: the acknowledgement of the configuration adopted goes again to its CM, if
    /// its period is up (module docs, "Lost commits").
    pub fn tick(&mut self, now: Time) -> Option<Reply> {
        let (config, resend_at) = self.pending.as_mut()?;
        if now < *resend_at {
            return None;
        }
        *resend_at = now + ACK_RESEND_PERIOD;
        let cm = config.cm_leader?;
        Some((
            cm,
            Body::NewConfigAck(NewConfigAck {
                id: config.id,
                refused: String::new(),
            }),
        ))
    }

    /// When [`Member::tick`] has something to do next.
    pub fn next_deadline(&self) -> Option<Time> {
        self.pending.as_ref().map(|(_, at)| *at)
    }
}

/// Whether `from` may send NEW-CONFIG (or its commit) of `config` (module docs, "Who may send
/// them").
fn sent_by_its_cm(config: &Configuration, from: NodeId) -> bool {
    config.cm_leader.is_none_or(|cm| cm == from)
}
