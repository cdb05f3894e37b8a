//! The replicated state machine of the CM: the cluster configuration, changed only by a
//! compare-and-set on its id ([`Install`]). Every replica applies the same committed commands in
//! the same order and gets the same result, so exactly one configuration `c + 1` follows `c`
//! and ids only grow. Applying looks at nothing but the state and the command (no clock, no
//! local file), which is what makes replaying the log after a restart land where it was.

use crate::wire::{Command, ConfigurationMessage, Install, MachineMessage, WireError};
use acre_txn::config::Configuration;

/// The applied state: the configuration, if one was installed, and the index of the last
/// applied entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CmState {
    pub applied_index: u64,
    pub configuration: Option<Configuration>,
}

/// Why an install was not applied; carries the configuration that is current instead, so the
/// proposer can retry from it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error(
        "configuration {expected_id} is not current (current: {}); retry from the current one",
        current_id(current)
    )]
    Stale {
        expected_id: u64,
        current: Option<Box<Configuration>>,
    },
    #[error("configuration {new_id} does not follow {expected_id}; give it id {}", expected_id + 1)]
    NotSuccessor { expected_id: u64, new_id: u64 },
    #[error("the new configuration is invalid: {reason}; fix it and propose again")]
    Invalid { reason: String },
    #[error("the command is malformed: {reason}; the proposer is broken")]
    Malformed { reason: String },
}

fn current_id(current: &Option<Box<Configuration>>) -> u64 {
    current.as_ref().map_or(0, |c| c.id)
}

impl CmState {
    /// The id of the current configuration: 0 before the first install.
    pub fn configuration_id(&self) -> u64 {
        self.configuration.as_ref().map_or(0, |c| c.id)
    }

    /// Applies the committed entry `index` holding `data` (empty: raft's no-op of a new leader).
    /// Returns the outcome of the command, if the entry held one.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Option<Result<Configuration, Rejection>> {
        assert!(
            index == self.applied_index + 1,
            "applying entry {index} after {}",
            self.applied_index
        );
        self.applied_index = index;
        if data.is_empty() {
            return None;
        }
        let command = match Command::decode_from(data) {
            Ok(command) => command,
            Err(e) => {
                // Every replica sees the same bytes, so every replica skips it alike.
                tracing::error!(index, "CM log entry is not a command, skipped: {e}");
                return None;
            }
        };
        Some(match command.install {
            Some(install) => self.install(index, &install),
            None => Err(Rejection::Malformed {
                reason: "no install".into(),
            }),
        })
    }

    fn install(&mut self, index: u64, install: &Install) -> Result<Configuration, Rejection> {
        let current = self.configuration_id();
        if install.expected_id != current {
            return Err(Rejection::Stale {
                expected_id: install.expected_id,
                current: self.configuration.clone().map(Box::new),
            });
        }
        let message = install
            .configuration
            .as_ref()
            .ok_or_else(|| Rejection::Malformed {
                reason: "no configuration".into(),
            })?;
        let config =
            Configuration::try_from(message).map_err(|e: WireError| Rejection::Malformed {
                reason: e.to_string(),
            })?;
        if config.id != install.expected_id + 1 {
            return Err(Rejection::NotSuccessor {
                expected_id: install.expected_id,
                new_id: config.id,
            });
        }
        config.validate().map_err(|e| Rejection::Invalid {
            reason: e.to_string(),
        })?;
        assert!(config.id > current, "id={} current={current}", config.id);
        tracing::info!(index, id = config.id, "CM applied configuration");
        self.configuration = Some(config.clone());
        Ok(config)
    }

    /// The bytes a snapshot and the state file hold (without the applied index, which they
    /// keep beside it).
    pub fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&MachineMessage {
            configuration: self.configuration.as_ref().map(ConfigurationMessage::from),
        })
    }

    /// The state at `applied_index` from [`CmState::encode`]'s bytes (empty: nothing applied).
    pub fn decode(applied_index: u64, bytes: &[u8]) -> Result<CmState, WireError> {
        let message = <MachineMessage as prost::Message>::decode(bytes)?;
        let configuration = message
            .configuration
            .as_ref()
            .map(Configuration::try_from)
            .transpose()?;
        Ok(CmState {
            applied_index,
            configuration,
        })
    }
}

/// The command that installs `configuration` if `expected_id` is current.
pub fn install_command(expected_id: u64, configuration: &Configuration) -> Command {
    Command {
        install: Some(Install {
            expected_id,
            configuration: Some(ConfigurationMessage::from(configuration)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::NodeId;

    fn config(id: u64) -> Configuration {
        let nodes = (1..=3).map(NodeId).collect();
        Configuration::place(id, nodes, vec![], 1, 1, 1 << 20, 4096).unwrap()
    }

    fn install(state: &mut CmState, index: u64, expected: u64, new: &Configuration) -> bool {
        let data = install_command(expected, new).encode();
        state.apply(index, &data).unwrap().is_ok()
    }

    #[test]
    fn install_is_a_compare_and_set_on_the_id() {
        let mut state = CmState::default();
        assert!(install(&mut state, 1, 0, &config(1)));
        // The same id again, a skipped id, a stale expectation: all rejected.
        assert!(!install(&mut state, 2, 0, &config(1)));
        assert!(!install(&mut state, 3, 1, &config(3)));
        assert!(state.apply(4, &[]).is_none());
        let data = install_command(0, &config(1)).encode();
        match state.apply(5, &data).unwrap() {
            Err(Rejection::Stale {
                expected_id: 0,
                current: Some(current),
            }) => assert_eq!(current.id, 1),
            other => panic!("{other:?}"),
        }
        let mut invalid = config(2);
        invalid.regions.clear();
        assert!(!install(&mut state, 6, 1, &invalid));
        assert!(install(&mut state, 7, 1, &config(2)));
        assert_eq!(state.configuration_id(), 2);
        assert_eq!(state.applied_index, 7);
        let restored = CmState::decode(7, &state.encode()).unwrap();
        assert_eq!(restored, state);
        assert_eq!(CmState::decode(0, &[]).unwrap(), CmState::default());
    }

    #[test]
    fn a_garbage_entry_is_skipped_alike_everywhere() {
        let mut state = CmState::default();
        assert!(state.apply(1, &[0xff, 0x01]).is_none());
        assert_eq!(state.applied_index, 1);
        assert_eq!(state.configuration, None);
    }
}
