//! The CM's own messages, `prost`-derived (no protoc): the commands in the Raft log and a
//! mirror of [`Configuration`] with conversions both ways. They are bytes from a log or a
//! peer, so decoding returns an error that says what was wrong, never a panic.
//!
//! Tags are the format: never reuse or renumber one.

use acre_engine::addr::{NodeId, RegionId};
use acre_txn::config::{CommitMode, Configuration, FailureDomain, Placement, RegionState};

/// An entry of the CM's Raft log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The only command so far; a later one takes another tag.
    #[prost(message, optional, tag = "1")]
    pub install: Option<Install>,
}

/// Compare-and-set of the configuration: applied only if the current id is `expected_id` and
/// the new configuration has id `expected_id + 1` and validates.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Install {
    #[prost(uint64, tag = "1")]
    pub expected_id: u64,
    #[prost(message, optional, tag = "2")]
    pub configuration: Option<ConfigurationMessage>,
}

/// The state machine's bytes (snapshots and the state file): the applied configuration, if any.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MachineMessage {
    #[prost(message, optional, tag = "1")]
    pub configuration: Option<ConfigurationMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigurationMessage {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub f: u64,
    #[prost(uint32, repeated, tag = "3")]
    pub nodes: Vec<u32>,
    #[prost(uint32, repeated, tag = "4")]
    pub clients: Vec<u32>,
    #[prost(uint64, tag = "5")]
    pub region_bytes: u64,
    #[prost(uint64, tag = "6")]
    pub block_bytes: u64,
    #[prost(message, repeated, tag = "7")]
    pub regions: Vec<PlacementMessage>,
    /// 0 messages, 1 one-sided.
    #[prost(uint32, tag = "8")]
    pub commit: u32,
    #[prost(message, repeated, tag = "9")]
    pub domains: Vec<FailureDomainMessage>,
    #[prost(uint32, repeated, tag = "10")]
    pub cm_replicas: Vec<u32>,
    #[prost(uint32, optional, tag = "11")]
    pub cm_leader: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PlacementMessage {
    #[prost(uint32, tag = "1")]
    pub region: u32,
    #[prost(uint32, tag = "2")]
    pub primary: u32,
    #[prost(uint32, repeated, tag = "3")]
    pub backups: Vec<u32>,
    /// 0 active, 1 blocked, 2 lost.
    #[prost(uint32, tag = "4")]
    pub state: u32,
    #[prost(uint32, repeated, tag = "5")]
    pub copying: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FailureDomainMessage {
    #[prost(uint32, tag = "1")]
    pub node: u32,
    #[prost(string, tag = "2")]
    pub domain: String,
}

/// Why bytes are not a CM message. The sender (or the log) is broken: a peer that sends one is
/// disconnected; a log entry that holds one is rejected by every replica alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("undecodable CM message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("CM message lacks its {field}")]
    Missing { field: &'static str },
    #[error(
        "CM message: {field} = {value} is not a node id (at most {})",
        u16::MAX
    )]
    NodeId { field: &'static str, value: u32 },
    #[error("CM message: {field} = {value} is not a known value")]
    Unknown { field: &'static str, value: u32 },
    #[error("CM message: f = {f} does not fit this machine")]
    F { f: u64 },
}

fn node(field: &'static str, value: u32) -> Result<NodeId, WireError> {
    u16::try_from(value)
        .map(NodeId)
        .map_err(|_| WireError::NodeId { field, value })
}

fn nodes(field: &'static str, values: &[u32]) -> Result<Vec<NodeId>, WireError> {
    values.iter().map(|&v| node(field, v)).collect()
}

fn ids(nodes: &[NodeId]) -> Vec<u32> {
    nodes.iter().map(|n| u32::from(n.0)).collect()
}

impl From<&Configuration> for ConfigurationMessage {
    fn from(config: &Configuration) -> Self {
        ConfigurationMessage {
            id: config.id,
            f: config.f as u64,
            nodes: ids(&config.nodes),
            clients: ids(&config.clients),
            region_bytes: config.region_bytes,
            block_bytes: config.block_bytes,
            regions: config
                .regions
                .iter()
                .map(|p| PlacementMessage {
                    region: p.region.0,
                    primary: u32::from(p.primary.0),
                    backups: ids(&p.backups),
                    copying: ids(&p.copying),
                    state: match p.state {
                        RegionState::Active => 0,
                        RegionState::Blocked => 1,
                        RegionState::Lost => 2,
                    },
                })
                .collect(),
            commit: match config.commit {
                CommitMode::Messages => 0,
                CommitMode::OneSided => 1,
            },
            domains: config
                .domains
                .iter()
                .map(|d| FailureDomainMessage {
                    node: u32::from(d.node.0),
                    domain: d.domain.clone(),
                })
                .collect(),
            cm_replicas: ids(&config.cm_replicas),
            cm_leader: config.cm_leader.map(|n| u32::from(n.0)),
        }
    }
}

impl TryFrom<&ConfigurationMessage> for Configuration {
    type Error = WireError;

    /// Checks the encoding only; whether the configuration is usable is
    /// [`Configuration::validate`]'s question.
    fn try_from(message: &ConfigurationMessage) -> Result<Configuration, WireError> {
        let regions = message
            .regions
            .iter()
            .map(|p| {
                Ok(Placement {
                    region: RegionId(p.region),
                    primary: node("primary", p.primary)?,
                    backups: nodes("backups", &p.backups)?,
                    copying: nodes("copying", &p.copying)?,
                    state: match p.state {
                        0 => RegionState::Active,
                        1 => RegionState::Blocked,
                        2 => RegionState::Lost,
                        value => {
                            return Err(WireError::Unknown {
                                field: "region state",
                                value,
                            });
                        }
                    },
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        let domains = message
            .domains
            .iter()
            .map(|d| {
                Ok(FailureDomain {
                    node: node("domain node", d.node)?,
                    domain: d.domain.clone(),
                })
            })
            .collect::<Result<Vec<_>, WireError>>()?;
        Ok(Configuration {
            id: message.id,
            f: usize::try_from(message.f).map_err(|_| WireError::F { f: message.f })?,
            nodes: nodes("nodes", &message.nodes)?,
            clients: nodes("clients", &message.clients)?,
            region_bytes: message.region_bytes,
            block_bytes: message.block_bytes,
            regions,
            commit: match message.commit {
                0 => CommitMode::Messages,
                1 => CommitMode::OneSided,
                value => {
                    return Err(WireError::Unknown {
                        field: "commit mode",
                        value,
                    });
                }
            },
            domains,
            cm_replicas: nodes("cm_replicas", &message.cm_replicas)?,
            cm_leader: message
                .cm_leader
                .map(|n| node("cm_leader", n))
                .transpose()?,
        })
    }
}

impl Command {
    pub fn decode_from(bytes: &[u8]) -> Result<Command, WireError> {
        Ok(<Command as prost::Message>::decode(bytes)?)
    }

    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

/// Every message on the CM links ([`crate::net`]), one per frame: raft's between CM replicas,
/// and the reconfiguration protocol's between the CM and the members
/// (docs/failures.md#reconfiguration).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(oneof = "envelope::Body", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub body: Option<envelope::Body>,
}

pub mod envelope {
    /// What an [`super::Envelope`] carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// A raft message between CM replicas, in raft's own protobuf encoding.
        #[prost(bytes, tag = "1")]
        Raft(Vec<u8>),
        /// NEW-CONFIG: the CM asks a member to adopt the configuration.
        #[prost(message, tag = "2")]
        NewConfig(super::ConfigurationMessage),
        /// A member's answer to NEW-CONFIG.
        #[prost(message, tag = "3")]
        NewConfigAck(super::NewConfigAck),
        /// NEW-CONFIG-COMMIT of the configuration with this id: every member adopted it.
        #[prost(uint64, tag = "4")]
        NewConfigCommit(u64),
        /// The CM asks a member whether it is alive before it reconfigures (the number is the
        /// probe's, echoed in the reply).
        #[prost(uint64, tag = "5")]
        Probe(u64),
        /// A member's answer to a probe.
        #[prost(uint64, tag = "6")]
        ProbeReply(u64),
        /// A member to the CM: it recovered the transactions of these regions, blocked in its
        /// configuration, and they can be active again; or it completed copies.
        #[prost(message, tag = "7")]
        RegionsRecovered(super::RegionsRecovered),
    }
}

/// A new primary's report to the CM (docs/failures.md#transaction-recovery): in configuration
/// `config`, committed at the node, it recovered the transactions of `regions` (blocked there),
/// so the CM can install a configuration in which they are active; and a new backup's
/// (docs/failures.md#data-recovery): it completed its copies of `copied`, so the CM can install
/// a configuration in which it is no longer copying. Sent again every
/// [`crate::member::RECOVERY_REPORT_PERIOD`] until the node's configuration shows them done.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegionsRecovered {
    #[prost(uint64, tag = "1")]
    pub config: u64,
    /// Region ids.
    #[prost(uint32, repeated, tag = "2")]
    pub regions: Vec<u32>,
    /// Ids of the regions whose copy the sender completed (data recovery) while `config` lists
    /// it as copying: the CM counts them complete. Absent (empty) in reports of nodes that
    /// predate copy reports.
    #[prost(uint32, repeated, tag = "3")]
    pub copied: Vec<u32>,
    /// Ids of the regions whose copy at the sender `config` counts complete although the
    /// sender found it damaged at its restart and holds it back
    /// (docs/failures.md#whole-cluster-restart): `config` was made without knowing, and the CM
    /// moves a primary's region to an intact backup and has a backup copy again. Absent
    /// (empty) in reports of nodes that predate it.
    #[prost(uint32, repeated, tag = "4")]
    pub damaged: Vec<u32>,
}

/// A member's answer to NEW-CONFIG of configuration `id`: adopted (`refused` empty), or why
/// not (a stale id, or the member was removed).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NewConfigAck {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub refused: String,
}

impl Envelope {
    pub fn new(body: envelope::Body) -> Envelope {
        Envelope { body: Some(body) }
    }

    /// The envelope in `bytes`, or what is wrong with them (an envelope without a body is
    /// malformed too).
    pub fn decode_from(bytes: &[u8]) -> Result<envelope::Body, WireError> {
        let envelope = <Envelope as prost::Message>::decode(bytes)?;
        envelope.body.ok_or(WireError::Missing {
            field: "envelope body",
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_garbage_is_refused() {
        for body in [
            envelope::Body::Raft(vec![1, 2, 3]),
            envelope::Body::NewConfigAck(NewConfigAck {
                id: 7,
                refused: "removed".into(),
            }),
            envelope::Body::NewConfigCommit(7),
            envelope::Body::Probe(9),
            envelope::Body::ProbeReply(9),
            envelope::Body::RegionsRecovered(RegionsRecovered {
                config: 7,
                regions: vec![3, 5],
                copied: Vec::new(),
                damaged: Vec::new(),
            }),
            envelope::Body::RegionsRecovered(RegionsRecovered {
                config: 8,
                regions: Vec::new(),
                copied: vec![4, 6],
                damaged: Vec::new(),
            }),
            envelope::Body::RegionsRecovered(RegionsRecovered {
                config: 9,
                regions: vec![2],
                copied: vec![3],
                damaged: Vec::new(),
            }),
            envelope::Body::RegionsRecovered(RegionsRecovered {
                config: 10,
                regions: Vec::new(),
                copied: Vec::new(),
                damaged: vec![1, 4],
            }),
        ] {
            let bytes = Envelope::new(body.clone()).encode();
            assert_eq!(Envelope::decode_from(&bytes).unwrap(), body);
        }
        // Tags are the format: a recovery report is field 7, length-delimited.
        let bytes = Envelope::new(envelope::Body::RegionsRecovered(RegionsRecovered {
            config: 1,
            regions: vec![2],
            copied: Vec::new(),
            damaged: Vec::new(),
        }))
        .encode();
        assert_eq!(bytes[0], 7 << 3 | 2, "{bytes:?}");
        assert!(Envelope::decode_from(&[]).is_err(), "no body");
        assert!(Envelope::decode_from(&[0xff; 9]).is_err());
    }

    /// A recovery report as nodes sent it before copies were reported: fields 1 and 2 only.
    #[derive(Clone, PartialEq, prost::Message)]
    struct RegionsRecoveredBeforeCopies {
        #[prost(uint64, tag = "1")]
        config: u64,
        #[prost(uint32, repeated, tag = "2")]
        regions: Vec<u32>,
    }

    #[test]
    fn a_report_without_copies_decodes_with_none_and_old_readers_skip_them() {
        use prost::Message;
        let old = RegionsRecoveredBeforeCopies {
            config: 5,
            regions: vec![2, 4],
        };
        let decoded = RegionsRecovered::decode(old.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            decoded,
            RegionsRecovered {
                config: 5,
                regions: vec![2, 4],
                copied: Vec::new(),
                damaged: Vec::new(),
            }
        );
        let new = RegionsRecovered {
            config: 5,
            regions: vec![2],
            copied: vec![3],
            damaged: Vec::new(),
        };
        let bytes = new.encode_to_vec();
        // Field 3, repeated uint32 (packed: length-delimited).
        assert!(
            bytes.windows(3).any(|w| w == [3 << 3 | 2, 1, 3]),
            "{bytes:?}"
        );
        let read_by_old = RegionsRecoveredBeforeCopies::decode(bytes.as_slice()).unwrap();
        assert_eq!((read_by_old.config, read_by_old.regions), (5, vec![2]));
    }

    pub(crate) fn sample() -> Configuration {
        let nodes = (1..=4).map(NodeId).collect();
        let mut config =
            Configuration::place(7, nodes, vec![NodeId(9)], 2, 2, 1 << 20, 4096).unwrap();
        config.regions[1].state = RegionState::Blocked;
        config.regions[2].state = RegionState::Lost;
        config.regions[3].copying = vec![config.regions[3].backups[1]];
        config.commit = CommitMode::Messages;
        config.domains = vec![FailureDomain {
            node: NodeId(2),
            domain: "rack-b".into(),
        }];
        config.cm_replicas = vec![NodeId(1), NodeId(2), NodeId(3)];
        config.cm_leader = Some(NodeId(3));
        config
    }

    #[test]
    fn configurations_round_trip_through_bytes() {
        let config = sample();
        let bytes = prost::Message::encode_to_vec(&ConfigurationMessage::from(&config));
        let message = <ConfigurationMessage as prost::Message>::decode(&bytes[..]).unwrap();
        assert_eq!(Configuration::try_from(&message).unwrap(), config);
        let mut plain = config.clone();
        plain.cm_leader = None;
        plain.commit = CommitMode::OneSided;
        let message = ConfigurationMessage::from(&plain);
        assert_eq!(Configuration::try_from(&message).unwrap(), plain);
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let mut message = ConfigurationMessage::from(&sample());
        message.nodes[0] = 70_000;
        let error = Configuration::try_from(&message).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::NodeId {
                    field: "nodes",
                    value: 70_000
                }
            ),
            "{error}"
        );
        let mut message = ConfigurationMessage::from(&sample());
        message.regions[0].state = 9;
        let error = Configuration::try_from(&message).unwrap_err();
        assert!(error.to_string().contains("region state = 9"), "{error}");
        let error = Command::decode_from(&[0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(error, WireError::Decode(_)), "{error}");
    }
}
