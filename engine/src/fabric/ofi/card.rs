//! A node's [`OfiCard`] as its manifest in the cluster directory publishes it
//! ([`crate::directory::OfiEntry`]), and back: how node processes find each other over the ofi
//! transport (docs/ofi.md#in-a-cluster).

use super::{OfiArea, OfiCard, OfiGrant};
use crate::addr::NodeId;
use crate::directory::{OfiAreaEntry, OfiEntry, OfiGrantEntry};
use crate::region::AccessKey;

impl OfiCard {
    /// The card as a manifest publishes it.
    pub fn to_entry(&self) -> OfiEntry {
        OfiEntry {
            provider: self.provider.clone(),
            target: hex(&self.target_name),
            initiator: hex(&self.initiator_name),
            config: self.config,
            areas: self
                .areas
                .iter()
                .map(|area| OfiAreaEntry {
                    id: area.id,
                    bytes: area.bytes,
                    key: format!("{:016x}", area.key.0),
                    base: format!("{:016x}", area.base),
                    grants: area
                        .grants
                        .iter()
                        .map(|grant| OfiGrantEntry {
                            node: grant.node,
                            mr_key: format!("{:016x}", grant.mr_key),
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// `node`'s card from what its manifest publishes; says what is malformed otherwise.
    pub fn from_entry(node: NodeId, entry: &OfiEntry) -> Result<OfiCard, String> {
        let word = |what: &str, text: &str| {
            if text.len() != 16 {
                return Err(format!("{what} {text:?} is not 16 hex digits"));
            }
            u64::from_str_radix(text, 16).map_err(|_| format!("{what} {text:?} is not hex"))
        };
        let areas = entry
            .areas
            .iter()
            .map(|area| {
                let what = |field: &str| format!("area {}'s {field}", area.id);
                let grants = area
                    .grants
                    .iter()
                    .map(|grant| {
                        Ok(OfiGrant {
                            node: grant.node,
                            mr_key: word(&what("registration key"), &grant.mr_key)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                Ok(OfiArea {
                    id: area.id,
                    key: AccessKey(word(&what("key"), &area.key)?),
                    bytes: area.bytes,
                    base: word(&what("base"), &area.base)?,
                    grants,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(OfiCard {
            node,
            provider: entry.provider.clone(),
            target_name: unhex("the target name", &entry.target)?,
            initiator_name: unhex("the initiator name", &entry.initiator)?,
            config: entry.config,
            areas,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(what: &str, text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("{what} has an odd number of hex digits"));
    }
    (0..text.len())
        .step_by(2)
        .map(|at| {
            text.get(at..at + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{what} is not hex"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::RegionId;

    fn card() -> OfiCard {
        OfiCard {
            node: NodeId(3),
            provider: "tcp;ofi_rxm".into(),
            target_name: vec![0x02, 0x00, 0xff, 0x10],
            initiator_name: vec![0x7f, 0x00, 0x00, 0x01],
            config: Some(7),
            areas: vec![OfiArea {
                id: RegionId(9),
                key: AccessKey(u64::MAX - 1),
                bytes: 1 << 20,
                base: 0x7f00_dead_beef_0000,
                grants: vec![
                    OfiGrant {
                        node: Some(NodeId(3)),
                        mr_key: u64::MAX,
                    },
                    OfiGrant {
                        node: Some(NodeId::OBSERVER),
                        mr_key: 1,
                    },
                ],
            }],
        }
    }

    #[test]
    fn a_card_round_trips_through_a_manifest_with_full_64_bit_words() {
        let card = card();
        let manifest = crate::directory::NodeManifest {
            node: NodeId(3),
            pid: 1,
            transport: "ofi".into(),
            tcp_addr: None,
            areas: Vec::new(),
            started: None,
            cm_link: None,
            lease: None,
            damaged: Vec::new(),
            ofi: Some(card.to_entry()),
        };
        let dir = tempfile::tempdir().unwrap();
        manifest.write(dir.path()).unwrap();
        let read = crate::directory::NodeManifest::read(dir.path(), NodeId(3))
            .unwrap()
            .unwrap();
        let back = OfiCard::from_entry(NodeId(3), read.ofi.as_ref().unwrap()).unwrap();
        assert_eq!(back, card);
    }

    #[test]
    fn a_malformed_entry_is_refused_naming_the_field() {
        let good = card().to_entry();
        let mut odd = good.clone();
        odd.target.push('0');
        let mut not_hex = good.clone();
        not_hex.initiator = "zz".into();
        let mut short_key = good.clone();
        short_key.areas[0].grants[0].mr_key = "ff".into();
        let mut bad_base = good.clone();
        bad_base.areas[0].base = "g".repeat(16);
        for (entry, expected) in [
            (odd, "odd number"),
            (not_hex, "initiator name is not hex"),
            (short_key, "registration key"),
            (bad_base, "base"),
        ] {
            let error = OfiCard::from_entry(NodeId(3), &entry).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
