//! Transaction recovery at one node (docs/failures.md#transaction-recovery): what the worker
//! ([`crate::worker`]) keeps to recover the transactions a reconfiguration left half-done.
//!
//! At NEW-CONFIG-COMMIT of configuration `c`, the worker **drains**: it handles every record
//! already in its rings, and from then on refuses the LOCK, COMMIT-BACKUP and COMMIT-PRIMARY
//! records that coordinators send of transactions that *need recovery* in `c`: begun in an
//! older configuration, and writing a region `c` blocks (its primary changed) or coordinated
//! by a member `c` removed. Those it holds records of it settles like the transactions of a
//! client that died ([`crate::orphan`]): every replica of every region the transaction writes
//! votes, once it has drained for `c` too, and the same [`crate::orphan::decide`] commits or
//! aborts it.
//!
//! A region blocked in `c` whose new primary is this node (a promoted backup) serves again only
//! once none of those transactions writing it is undecided: not here (each one this node holds
//! is installed in its copy or aborted), and not at any other replica of the region, which the
//! node asks with a RECOVERY-QUERY (a replica that decides to commit a transaction this node
//! lacks copies its entries here first). Then the copy leaves the backup copies, its allocator
//! is rebuilt from the allocated bits (docs/failures.md#allocator-recovery), it joins the
//! node's primary regions, and the node reports it recovered: the CM installs a configuration
//! in which it is active. This is simpler than FaRM's, which re-takes the locks of the
//! recovering transactions and serves the region before they are decided; here a region waits
//! for one round of votes more.
//!
//! **Truncated transactions.** A vote must say *truncated* for a transaction this node applied
//! and dropped ([`Truncations`]): a primary that held the LOCK role implies it (it would hold
//! the LOCK otherwise), but a promoted primary or a backup cannot. The node remembers the last
//! [`TRUNCATIONS_REMEMBERED`] transactions it truncated, and for each coordinator slot the
//! highest sequence it forgot, so that it knows when it cannot tell ([`vote::UNSURE`]), which
//! leaves the transaction to an operator rather than guess.

use acre_engine::addr::{NodeId, RegionId};
use acre_engine::clock::Time;
use acre_engine::hash::{FastMap, FastSet};
use acre_txn::config::{Configuration, RegionState};
use acre_txn::record::TxnId;
use acre_txn::reply::vote;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// How soon a transaction that needs recovery is asked about again after a round that did not
/// finish it (a participant not drained yet, a copy or an install under way), and how soon a
/// region's replicas are asked again whether they are done.
pub const RECOVERY_RETRY_AFTER: Duration = Duration::from_millis(5);
/// Truncated transactions a node remembers for its recovery votes.
pub const TRUNCATIONS_REMEMBERED: usize = 1 << 17;

/// The transactions this node truncated lately (module docs).
#[derive(Default)]
pub struct Truncations {
    remembered: FastSet<TxnId>,
    order: VecDeque<TxnId>,
    /// Per coordinator slot, the highest sequence forgotten.
    forgotten: FastMap<(NodeId, u16), u64>,
}

impl Truncations {
    /// `txn` was truncated here.
    pub fn record(&mut self, txn: TxnId) {
        if !self.remembered.insert(txn) {
            return;
        }
        self.order.push_back(txn);
        if self.order.len() > TRUNCATIONS_REMEMBERED {
            let oldest = self.order.pop_front().expect("over the bound");
            self.remembered.remove(&oldest);
            let forgotten = self
                .forgotten
                .entry((oldest.node, oldest.thread))
                .or_default();
            *forgotten = (*forgotten).max(oldest.seq);
        }
    }

    /// What this node can say of a transaction it holds nothing of: [`vote::TRUNCATED`],
    /// [`vote::UNSURE`] (it may have forgotten), or nothing (it never truncated it).
    pub fn vote(&self, txn: TxnId) -> u64 {
        if self.remembered.contains(&txn) {
            vote::TRUNCATED
        } else if self
            .forgotten
            .get(&(txn.node, txn.thread))
            .is_some_and(|&seq| seq >= txn.seq)
        {
            vote::UNSURE
        } else {
            0
        }
    }
}

/// Where the recovery of a region this node is the new primary of stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionStep {
    /// Its other replicas are being asked whether they hold undecided transactions writing it.
    Asking,
    /// Ask them (again) from then on.
    AskAt(Time),
    /// They hold none: once this node holds none either, it serves the region.
    Quiet,
}

/// A node's state of transaction recovery (module docs).
pub struct Recovery {
    /// The configuration the node last drained for; its id is 0 before the first.
    config: Arc<Configuration>,
    drained: bool,
    /// Every member a configuration this node adopted removed.
    removed: BTreeSet<NodeId>,
    /// The configuration id from which this node is the primary of a region it was promoted
    /// to (absent: from the start).
    primary_since: FastMap<RegionId, u64>,
    /// Regions blocked in `config` whose new primary is this node, not yet recovered.
    pub regions: BTreeMap<RegionId, RegionStep>,
    pub truncations: Truncations,
    /// Transactions needing recovery whose votes decided to commit (their entries may be
    /// on their way to the replicas lacking them): no longer undecided here.
    pub decided: FastSet<TxnId>,
    /// Regions this node recovered, with their replicas and the members when it did: still
    /// recovered in a newer configuration that blocks them with the same replicas and members
    /// (one that made another region active), see [`Recovery::drained`].
    recovered: FastMap<RegionId, Recovered>,
}

/// What a region's recovery held for ([`Recovery::recovered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Recovered {
    replicas: Vec<NodeId>,
    members: Vec<NodeId>,
}

impl Recovered {
    fn of(config: &Configuration, region: RegionId) -> Option<Recovered> {
        let placement = config.placement(region)?;
        Some(Recovered {
            replicas: placement.replicas().collect(),
            members: config.members().collect(),
        })
    }
}

impl Recovery {
    /// A node starting in `config`: nothing to recover, and nothing older to drain (it holds
    /// no record of an older configuration).
    pub fn new(config: Arc<Configuration>) -> Recovery {
        Recovery {
            config,
            drained: true,
            removed: BTreeSet::new(),
            primary_since: FastMap::default(),
            regions: BTreeMap::new(),
            truncations: Truncations::default(),
            decided: FastSet::default(),
            recovered: FastMap::default(),
        }
    }

    /// This node, `region`'s primary, finished its recovery in the configuration drained for.
    pub fn note_recovered(&mut self, region: RegionId) {
        if let Some(recovered) = Recovered::of(&self.config, region) {
            self.recovered.insert(region, recovered);
        }
    }

    /// The id of the configuration this node drained for, 0 if none.
    pub fn drained_for(&self) -> u64 {
        if self.drained { self.config.id } else { 0 }
    }

    /// Whether `newer` (committed at the node) asks for a drain.
    pub fn is_due(&self, newer: &Configuration) -> bool {
        newer.id > self.drained_for()
    }

    /// The node drained its rings for `newer`, which followed the configuration it last
    /// drained for (or started in): notes who was removed and which regions `me` is the new
    /// primary of, and returns the blocked regions whose recovery `me` runs, and those of them
    /// it recovered already.
    ///
    /// A region `me` recovered in an older configuration is still recovered in `newer` if
    /// `newer` blocks it with the same replicas and members, and the node drained for every
    /// configuration between, each blocking it too: nothing could write it meanwhile (it was
    /// blocked), and no participant of its transactions left. The configurations
    /// between only made other regions active (the CM takes one node's report at a time, and
    /// a report of an older configuration is stale), so without this a restart of many nodes
    /// would recover each node's regions once per node before it.
    pub fn drained(
        &mut self,
        me: NodeId,
        newer: Arc<Configuration>,
    ) -> (Vec<RegionId>, Vec<RegionId>) {
        let older = std::mem::replace(&mut self.config, newer.clone());
        self.drained = true;
        if newer.id != older.id + 1 {
            // A configuration this node never drained for came between: its region may have
            // been active there.
            self.recovered.clear();
        }
        self.removed.extend(
            older
                .members()
                .filter(|n| !newer.members().any(|m| m == *n)),
        );
        for placement in newer.primary_regions(me) {
            let was_primary = older
                .placement(placement.region)
                .is_some_and(|p| p.primary == me);
            if !was_primary && older.placement(placement.region).is_some() {
                self.primary_since.insert(placement.region, newer.id);
            }
        }
        self.regions.clear();
        let (already, mine): (Vec<RegionId>, Vec<RegionId>) = newer
            .primary_regions(me)
            .filter(|p| p.state == RegionState::Blocked)
            .map(|p| p.region)
            .partition(|&region| {
                self.recovered.get(&region).is_some_and(|recovered| {
                    Recovered::of(&newer, region).as_ref() == Some(recovered)
                })
            });
        self.recovered.retain(|region, _| already.contains(region));
        for &region in &mine {
            self.regions.insert(region, RegionStep::Asking);
        }
        (mine, already)
    }

    /// Every member a configuration this node drained for removed.
    pub fn removed(&self) -> &BTreeSet<NodeId> {
        &self.removed
    }

    /// Whether a transaction writing `regions` needs recovery in the configuration drained
    /// for: begun before it, and writing a region it blocks or coordinated by a removed member.
    pub fn needs(&self, txn: TxnId, regions: &[RegionId]) -> bool {
        self.drained
            && txn.config < self.config.id
            && (self.removed.contains(&txn.node)
                || regions.iter().any(|&region| {
                    self.config
                        .placement(region)
                        .is_some_and(|p| p.state == RegionState::Blocked)
                }))
    }

    /// Whether this node may vote on `txn` for an asker in configuration `asker_config`: it
    /// has drained for a configuration at least as new as the asker's, after `txn` began.
    pub fn may_vote(&self, txn: TxnId, asker_config: u64) -> bool {
        let drained_for = self.drained_for();
        txn.config < drained_for && asker_config <= drained_for
    }

    /// [`vote::NEW_PRIMARY`] and the [`vote::new_primary_at`] bits of the regions among
    /// `regions` (those `txn` writes, in the order its records list them) this node was
    /// promoted to the primary of after `txn` began (its holding no LOCK of those says
    /// nothing), else 0.
    pub fn new_primary_bit(&self, txn: TxnId, regions: &[RegionId]) -> u64 {
        regions
            .iter()
            .enumerate()
            .filter(|(_, region)| self.is_new_primary_of(**region, txn))
            .fold(0, |bits, (index, _)| {
                bits | vote::NEW_PRIMARY | vote::new_primary_at(index)
            })
    }

    /// Whether this node became the primary of `region` after `txn` began.
    pub fn is_new_primary_of(&self, region: RegionId, txn: TxnId) -> bool {
        self.primary_since
            .get(&region)
            .is_some_and(|&since| since > txn.config)
    }

    /// A node restarted from its files in `config`: its rings hold records of the earlier run,
    /// so it has not drained for `config` yet. It does at once (the worker drains for a
    /// committed configuration newer than what it drained for), which recovers the regions
    /// `config` blocks already: a cluster killed during its restart starts in its restart
    /// configuration, and no newer one may come (docs/failures.md#whole-cluster-restart).
    pub fn restarted(config: Arc<Configuration>) -> Recovery {
        Recovery {
            drained: false,
            ..Recovery::new(config)
        }
    }

    /// The configuration drained for.
    pub fn config(&self) -> &Arc<Configuration> {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(thread: u16, seq: u64) -> TxnId {
        TxnId {
            config: 1,
            node: NodeId(100),
            thread,
            seq,
        }
    }

    #[test]
    fn truncations_are_remembered_and_forgetting_one_makes_older_ones_unsure() {
        let mut truncations = Truncations::default();
        truncations.record(txn(0, 1));
        assert_eq!(truncations.vote(txn(0, 1)), vote::TRUNCATED);
        assert_eq!(truncations.vote(txn(0, 2)), 0, "never truncated here");
        for seq in 2..=TRUNCATIONS_REMEMBERED as u64 + 1 {
            truncations.record(txn(0, seq));
        }
        assert_eq!(truncations.vote(txn(0, 1)), vote::UNSURE, "forgotten");
        assert_eq!(
            truncations.vote(txn(1, 1)),
            0,
            "another slot forgot nothing"
        );
        assert_eq!(
            truncations.vote(txn(0, TRUNCATIONS_REMEMBERED as u64 + 5)),
            0,
            "newer than anything forgotten"
        );
    }

    #[test]
    fn a_transaction_needs_recovery_when_it_writes_a_blocked_region_or_its_coordinator_left() {
        let nodes = (1..=3).map(NodeId).collect();
        let c1 = Arc::new(
            Configuration::place(1, nodes, vec![NodeId(100)], 1, 1, 4 << 20, 64 << 10).unwrap(),
        );
        let r1 = c1.primary_regions(NodeId(1)).next().unwrap().clone();
        let mut c2 = (*c1).clone();
        c2.id = 2;
        c2.nodes.retain(|&n| n != NodeId(1));
        let promoted = r1.backups[0];
        for placement in &mut c2.regions {
            if placement.region == r1.region {
                placement.primary = promoted;
                placement.backups.clear();
                placement.state = RegionState::Blocked;
            } else {
                placement.backups.retain(|&b| b != NodeId(1));
            }
        }
        let mut recovery = Recovery::new(c1.clone());
        let old = txn(0, 1);
        assert!(
            !recovery.needs(old, &[r1.region]),
            "nothing to recover at the start"
        );
        assert_eq!(
            recovery.drained_for(),
            1,
            "the start configuration needs no drain"
        );
        let c2 = Arc::new(c2);
        let (mine, already) = recovery.drained(promoted, c2.clone());
        assert_eq!(mine, vec![r1.region]);
        assert!(already.is_empty());
        assert!(recovery.needs(old, &[r1.region]));
        let other = c1
            .regions
            .iter()
            .find(|p| p.region != r1.region)
            .unwrap()
            .region;
        assert!(!recovery.needs(old, &[other]), "an unaffected region");
        let by_removed = TxnId {
            node: NodeId(1),
            ..old
        };
        assert!(recovery.needs(by_removed, &[other]), "its coordinator left");
        let newer = TxnId { config: 2, ..old };
        assert!(!recovery.needs(newer, &[r1.region]), "begun in the new one");
        assert!(recovery.is_new_primary_of(r1.region, old));
        assert_eq!(
            recovery.new_primary_bit(old, &[other, r1.region]),
            vote::NEW_PRIMARY | vote::new_primary_at(1),
            "r1 named by its place in the transaction's regions"
        );
        assert_eq!(
            recovery.new_primary_bit(old, &[other]),
            0,
            "not a region it writes"
        );
        assert_eq!(recovery.new_primary_bit(newer, &[r1.region]), 0);
        assert!(recovery.may_vote(old, 2) && !recovery.may_vote(old, 3));

        // Recovered in c2; c3 makes another region active and keeps r1 blocked with the same
        // replicas: still recovered. c4 changes its replicas: recovered again.
        recovery.note_recovered(r1.region);
        let mut c3 = (*c2).clone();
        c3.id = 3;
        let (mine, already) = recovery.drained(promoted, Arc::new(c3.clone()));
        assert!(mine.is_empty());
        assert_eq!(already, vec![r1.region]);
        let mut c4 = c3;
        c4.id = 4;
        for placement in &mut c4.regions {
            if placement.region == r1.region {
                placement.backups.push(NodeId(3));
            }
        }
        let (mine, already) = recovery.drained(promoted, Arc::new(c4));
        assert_eq!(mine, vec![r1.region]);
        assert!(already.is_empty());
    }
}
