//! One node of a transactional cluster, assembled: a copy of every region the configuration
//! places on it (primary or backup), a log ring for every member, the reply area, the status
//! area, the node's [`TxnNode`] and [`Backup`] state, and the worker that serves incoming
//! records.

use crate::backup::Backup;
use crate::copier::{Copier, CopyLedger, CopyProgress};
use crate::liveness::Liveness;
use crate::status::{
    NodeStatus, STATUS_AREA_ID, StatusArea, StatusError, read_status, status_area_bytes,
};
use crate::sums::{self, CopySums, Verdict, sums_path};
use crate::worker::{JoinedRings, LossHandler, RecoveredRegions, Worker, WorkerShared};
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::{ChannelError, Inbox, ring_area_id};
use acre_engine::directory::{AreaEntry, AreaKind};
use acre_engine::fabric::Fabric;
use acre_engine::object::HELD_BACK_WORD;
use acre_engine::region::{AccessKey, Region};
use acre_engine::slab::{AllocError, SlabAllocator};
use acre_nvm_log::MapOptions;
use acre_nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
use acre_txn::TxnNode;
use acre_txn::config::{Configuration, NotAdopted, RegionState, StaleConfiguration};
use acre_txn::directory::Directory;
use acre_txn::primary::Primary;
use acre_txn::reply::{REPLY_AREA_BYTES, REPLY_AREA_ID, ReplyArea};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// Where a node's areas live.
#[derive(Clone, Debug)]
pub enum Storage {
    /// Anonymous memory: an embedded, in-process cluster.
    Anonymous,
    /// Files in the cluster directory, mapped by peers (shm) or served by the NIC thread (tcp).
    Files { dir: PathBuf, options: MapOptions },
}

impl Storage {
    fn region(&self, node: NodeId, id: RegionId, bytes: u64) -> io::Result<Region> {
        match self {
            Storage::Anonymous => Region::anonymous(id, bytes),
            Storage::Files { dir, options } => Region::create_file(dir, node, id, bytes, *options),
        }
    }

    /// The copy of region `id` an earlier run of `node` left, among `areas`. A copy file whose
    /// length is not the configuration's `region_bytes` (cut short, or grown) is damaged: it is
    /// marked so ([`sums::mark_damaged`], durable first) and brought back to its length, and
    /// [`vouch_for`] then refuses it like any damaged copy.
    fn reopen(
        &self,
        node: NodeId,
        id: RegionId,
        region_bytes: u64,
        areas: &[(RegionId, AccessKey)],
    ) -> Result<Region, StartError> {
        let Storage::Files { dir, options } = self else {
            unreachable!("only a node in files restarts");
        };
        let Some(&(_, key)) = areas.iter().find(|(area, _)| *area == id) else {
            return Err(StartError::MissingCopy {
                node,
                region: id,
                dir: dir.clone(),
            });
        };
        let file = dir.join(Region::file_name(node, id, key));
        let len = std::fs::metadata(&file)
            .map_err(io(format!("read the length of {node}'s copy of {id}")))?
            .len();
        if len != region_bytes {
            tracing::error!(
                %node,
                "its copy of {id} ({}) holds {len} bytes, the cluster's regions {region_bytes}: \
                 the file was cut or grown, so the copy is not served, and is copied again from \
                 a live replica",
                file.display()
            );
            sums::mark_damaged(&file).map_err(io(format!(
                "mark {node}'s copy of {id} damaged ({})",
                sums::damaged_path(&file).display()
            )))?;
            let resize = || -> io::Result<()> {
                let copy = std::fs::OpenOptions::new().write(true).open(&file)?;
                copy.set_len(region_bytes)?;
                copy.sync_all()
            };
            resize().map_err(io(format!(
                "bring {node}'s copy of {id} back to {region_bytes} bytes"
            )))?;
        }
        Region::open_file(dir, node, id, key, *options)
            .map_err(io(format!("map {node}'s copy of {id} again")))
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("{node} is not a member of configuration {config}")]
    NotAMember { node: NodeId, config: u64 },
    #[error(
        "{node} holds a copy of {region} in the configuration, but {} has no file of it: it \
         cannot restart from its files (restore the file, or start a new cluster)",
        dir.display()
    )]
    MissingCopy {
        node: NodeId,
        region: RegionId,
        dir: PathBuf,
    },
    #[error(
        "{node} does not restart in place while the cluster runs: it cannot vouch for its \
         primary copies of {regions:?} (damaged, or marked so when it failed; its log says why), \
         and the running processes still read them as the regions' data, so emptying them \
         would show those objects as absent. Each copy is marked damaged. Once the CM removes \
         {node} (its lease expired), `acre cluster up` brings it back as a new node, which \
         copies its regions from live replicas"
    )]
    Unvouched {
        node: NodeId,
        regions: Vec<RegionId>,
    },
}

/// How a node restarts from its files: the area files of its earlier run with their keys
/// ([`acre_engine::directory::node_areas`]), and whether other processes of the cluster run
/// meanwhile ([`ReplicaNode::restart`]).
struct Reopen<'a> {
    areas: &'a [(RegionId, AccessKey)],
    others_run: bool,
}

fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> StartError {
    let what = what.into();
    move |source| StartError::Io { what, source }
}

/// Why a node did not adopt a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdoptError {
    #[error(transparent)]
    Stale(#[from] StaleConfiguration),
    #[error(
        "{node} is not a member of configuration {config}: it was removed, and must stop (it \
         may rejoin as a new node)"
    )]
    Removed { node: NodeId, config: u64 },
    #[error(
        "configuration {config} makes this node primary of {region}, which it holds no copy of \
         (a primary is promoted from a backup, or a region is created): the configuration is \
         wrong"
    )]
    PrimaryWithoutCopy { region: RegionId, config: u64 },
    #[error(
        "configuration {config} makes this node primary of {region}, whose copy here was found \
         damaged at its restart and has not been copied again (the CM did not know: its restart \
         request was refused or had not come yet); refused, so that the CM removes this node \
         rather than have it serve the emptied copy"
    )]
    PromotedDamaged { region: RegionId, config: u64 },
    #[error(
        "cannot make the ring of {sender}, which configuration {config} adds: {source}; check \
         the space left in the cluster directory"
    )]
    Ring {
        sender: NodeId,
        config: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot republish the manifest after adopting configuration {config}: {source}; the \
         others cannot find this node's new areas"
    )]
    Publish {
        config: u64,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot create the copy of {region} that configuration {config} gives this node: {source}"
    )]
    Copy {
        region: RegionId,
        config: u64,
        #[source]
        source: io::Error,
    },
}

/// What adopting a configuration changed at a node: the areas it created, which every other
/// node must learn (their keys) before the configuration is committed.
#[derive(Debug, Default)]
pub struct Adopted {
    pub new_areas: Vec<AreaEntry>,
}

/// A running node.
pub struct ReplicaNode {
    txn: Arc<TxnNode>,
    backup: Arc<Backup>,
    /// Every copy this node holds, primary or backup.
    copies: RwLock<Vec<Arc<Region>>>,
    /// The copies a restart found damaged ([`vouch_for`]): held back, held as backup copies, and
    /// reported in the manifest until the restart configuration copies them again.
    damaged: Vec<RegionId>,
    /// The damaged copies ([`Self::damaged`]) whose mark ([`sums::mark_damaged`]) stays until
    /// they are copied again: a configuration has counted them `copying` (the value says
    /// whether one has) and a later one complete. Their clean stop writes no sums for them.
    not_copied_again: Mutex<BTreeMap<RegionId, bool>>,
    /// The configuration this node restarted in (0 for a fresh start).
    restart_config_id: u64,
    /// Where new copies go.
    storage: Storage,
    region_bytes: u64,
    /// The size of each ring this node keeps for a sender.
    ring_bytes: u64,
    /// The senders this node keeps a ring for: the members of its first configuration, and
    /// the nodes that joined since ([`JoinedRings`]).
    ring_senders: Mutex<BTreeSet<NodeId>>,
    joined: JoinedRings,
    /// Held while a configuration is adopted: one adoption at a time, so that the copies made
    /// for one and the stale check agree.
    adopting: Mutex<()>,
    /// Regions whose transaction recovery this node finished, with the configuration it was
    /// done in (filled by the worker).
    recovered: RecoveredRegions,
    on_loss: LossHandler,
    /// Regions whose copy this node, a new backup, completed (data recovery), and the
    /// configurations a copy may not go on through.
    copies_done: Arc<CopyLedger>,
    /// Where this node's copies stand (data recovery).
    copy_progress: Arc<CopyProgress>,
    copier: Option<Copier>,
    worker: Option<Worker>,
}

impl ReplicaNode {
    /// Creates the node's areas in `fabric`'s memory and starts its worker. `directory` must
    /// know (or be able to find) the other nodes' areas before transactions start.
    /// `incarnation` counts the starts of this node id (0 for a node that never ran before;
    /// see [`acre_txn::reply::ReplyArea::new`]). `clients` tells which client coordinators are
    /// gone, whose transactions the node then settles ([`crate::orphan`]).
    pub fn start(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        storage: &Storage,
        ring_bytes: u64,
        incarnation: u64,
        clients: Arc<dyn Liveness>,
    ) -> Result<ReplicaNode, StartError> {
        ReplicaNode::assemble(
            config,
            fabric,
            directory,
            storage,
            ring_bytes,
            incarnation,
            clients,
            None,
        )
    }

    /// Starts a node again from the region copies and rings its earlier run left in `dir`
    /// (docs/failures.md#whole-cluster-restart): `areas` are its area files with their keys
    /// ([`acre_engine::directory::node_areas`]). Every copy `config` places on the node must be
    /// among them. The worker reads what the rings kept before this returns, and the node
    /// locks nothing until it adopts a configuration newer than `config` (the CM's restart
    /// configuration, which blocks its regions until their transactions are recovered).
    ///
    /// A copy it cannot vouch for (found damaged, marked so, or with every copy when a ring lost
    /// acknowledged records) is emptied and copied again, unless `others_run`: in a restart in
    /// place beside running processes, which still read this node's primary copies where they
    /// are mapped, such a primary copy fails the start instead ([`StartError::Unvouched`]).
    #[allow(clippy::too_many_arguments)]
    pub fn restart(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        dir: &std::path::Path,
        options: MapOptions,
        ring_bytes: u64,
        incarnation: u64,
        clients: Arc<dyn Liveness>,
        areas: &[(RegionId, AccessKey)],
        others_run: bool,
    ) -> Result<ReplicaNode, StartError> {
        let storage = Storage::Files {
            dir: dir.to_path_buf(),
            options,
        };
        ReplicaNode::assemble(
            config,
            fabric,
            directory,
            &storage,
            ring_bytes,
            incarnation,
            clients,
            Some(Reopen { areas, others_run }),
        )
    }

    /// [`ReplicaNode::start`], or with `reopen` (the areas found in the directory)
    /// [`ReplicaNode::restart`].
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        storage: &Storage,
        ring_bytes: u64,
        incarnation: u64,
        clients: Arc<dyn Liveness>,
        reopen: Option<Reopen<'_>>,
    ) -> Result<ReplicaNode, StartError> {
        let node = fabric.node_id();
        let others_run = reopen.as_ref().is_some_and(|r| r.others_run);
        let reopen = reopen.map(|r| r.areas);
        let region_bytes = config.region_bytes;
        let start_config_id = config.id;
        if !config.members().any(|m| m == node) {
            return Err(StartError::NotAMember {
                node,
                config: config.id,
            });
        }
        let memory = fabric.memory().clone();
        let register = |region: Arc<Region>| -> Result<Arc<Region>, StartError> {
            memory.register(region.clone()).map_err(|e| {
                io("register an area")(io::Error::new(io::ErrorKind::AlreadyExists, e))
            })?;
            Ok(region)
        };
        let senders: Vec<NodeId> = config.members().collect();
        let (dir, options) = match storage {
            Storage::Anonymous => (None, MapOptions::default()),
            Storage::Files { dir, options } => (Some(dir.as_path()), *options),
        };
        // The rings first: a ring whose acknowledged records were damaged while the node was
        // down makes every copy of the node one it cannot vouch for (below).
        let mut lost_records = false;
        let inbox = match (reopen, dir) {
            (Some(areas), Some(dir)) => {
                let (inbox, rings) =
                    Inbox::reopen(&memory, &senders, ring_bytes, dir, options, areas)?;
                for ring in &rings {
                    if let Some(len) = ring.cut_short {
                        tracing::error!(
                            %node,
                            "the ring of {} was cut short to {len} bytes while the node was \
                             down (rings hold {ring_bytes}): what was cut off is gone",
                            ring.sender
                        );
                    }
                    if let Some(lost) = &ring.lost {
                        tracing::error!(
                            %node,
                            "the ring of {} is damaged: {lost}; the ring now ends there, and \
                             since what those records promised (locks, commits of its backups' \
                             and primaries' objects) is gone from this node, none of its region \
                             copies is served: each is copied again from a live replica",
                            ring.sender
                        );
                        lost_records = true;
                    }
                }
                for ring in rings
                    .iter()
                    .filter(|r| r.records > 0 || !r.discarded.is_empty())
                {
                    tracing::info!(
                        %node,
                        "the ring of {} kept {} records{}",
                        ring.sender,
                        ring.records,
                        match ring.discarded.first() {
                            Some(why) => format!(
                                "; an append the stop cut short (never acknowledged) is dropped: \
                                 {why}"
                            ),
                            None => String::new(),
                        }
                    );
                }
                inbox
            }
            _ => Inbox::create(&memory, &senders, ring_bytes, dir, options)?,
        };
        let mut primaries = Vec::new();
        let mut backups = Vec::new();
        let mut copies = Vec::new();
        let mut damaged = Vec::new();
        let mut unvouched = Vec::new();
        for placement in config.replicated_on(node) {
            let region = match reopen {
                None => storage
                    .region(node, placement.region, config.region_bytes)
                    .map_err(io(format!("create {}", placement.region)))?,
                Some(areas) => storage.reopen(node, placement.region, region_bytes, areas)?,
            };
            // Before anything reads the copy (the worker's replay, the allocator's rebuild,
            // the fabric once registered).
            let intact = reopen.is_none() || vouch_for(node, &region, config.block_bytes)?;
            let read_in_place = placement.primary == node && placement.state != RegionState::Lost;
            if (!intact || lost_records) && others_run && read_in_place {
                // Read in place by the running processes: neither emptied nor served.
                let file = region.path().expect("only a node in files restarts");
                sums::mark_damaged(&file).map_err(io(format!(
                    "mark {node}'s copy of {} damaged ({})",
                    placement.region,
                    sums::damaged_path(&file).display()
                )))?;
                unvouched.push(placement.region);
                continue;
            }
            if !intact || lost_records {
                discard(node, &region)?;
                damaged.push(region.id());
                // Not served: held as a backup copy, empty, that the restart configuration
                // has copied again from the region's primary (a promoted backup if this node
                // was the primary), from block 0 since every version in it is 0.
                let region = register(Arc::new(region))?;
                copies.push(region.clone());
                backups.push(region);
                continue;
            }
            let region = register(Arc::new(region))?;
            copies.push(region.clone());
            if placement.primary == node {
                let slab = match reopen {
                    None => {
                        SlabAllocator::format(region.id(), config.region_bytes, config.block_bytes)?
                    }
                    // Provisional: rebuilt again once the earlier run's transactions are
                    // recovered, before the region serves.
                    Some(_) => SlabAllocator::rebuild(&region, config.block_bytes)?,
                };
                primaries.push((region, slab));
            } else {
                backups.push(region);
            }
        }
        if !unvouched.is_empty() {
            return Err(StartError::Unvouched {
                node,
                regions: unvouched,
            });
        }
        let reply = storage
            .region(node, REPLY_AREA_ID, REPLY_AREA_BYTES)
            .map_err(io("create the reply area"))?;
        let reply = register(Arc::new(reply))?;
        let replies = ReplyArea::new(reply, memory.doorbell().clone(), incarnation);
        let status = storage
            .region(node, STATUS_AREA_ID, status_area_bytes(senders.len()))
            .map_err(io("create the status area"))?;
        let status = StatusArea::new(register(Arc::new(status))?, &senders);
        let backup = Arc::new(Backup::new(backups, config.block_bytes));
        let txn = Arc::new(TxnNode::new(
            config,
            fabric,
            directory,
            replies,
            Primary::new(primaries),
        ));
        let recovered = RecoveredRegions::default();
        let on_loss = LossHandler::default();
        let joined = JoinedRings::default();
        let worker = Worker::spawn(
            txn.clone(),
            backup.clone(),
            inbox,
            status,
            clients,
            WorkerShared {
                recovered: recovered.clone(),
                on_loss: on_loss.clone(),
                restarted: reopen.is_some(),
                joined: joined.clone(),
                cluster_dir: match storage {
                    Storage::Files { dir, .. } => Some(dir.clone()),
                    Storage::Anonymous => None,
                },
            },
        )
        .map_err(io("spawn the worker"))?;
        let copies_done = Arc::new(CopyLedger::default());
        let progress_file = match &storage {
            Storage::Files { dir, .. } => Some(crate::copier::progress_file(dir, txn.node_id())),
            Storage::Anonymous => None,
        };
        let copy_progress = Arc::new(CopyProgress::new(progress_file));
        let copier = Copier::spawn(
            txn.clone(),
            backup.clone(),
            copies_done.clone(),
            copy_progress.clone(),
            worker.stats_handle(),
        )
        .map_err(io("spawn the copier"))?;
        Ok(ReplicaNode {
            txn,
            backup,
            copies: RwLock::new(copies),
            not_copied_again: Mutex::new(damaged.iter().map(|&r| (r, false)).collect()),
            restart_config_id: if reopen.is_some() { start_config_id } else { 0 },
            damaged,
            storage: storage.clone(),
            region_bytes,
            ring_bytes,
            ring_senders: Mutex::new(senders.into_iter().collect()),
            joined,
            adopting: Mutex::new(()),
            recovered,
            on_loss,
            copies_done,
            copy_progress,
            copier: Some(copier),
            worker: Some(worker),
        })
    }

    /// NEW-CONFIG (docs/failures.md#reconfiguration): adopts `newer` if its id is higher than
    /// the node's. First the node makes what `newer` asks of it ready: a copy, empty and marked
    /// copying, of every region it becomes a new backup of (data recovery fills it), registered
    /// so that others can write it; then it adopts `newer` ([`TxnNode::adopt`]). The caller
    /// tells the other nodes of [`Adopted::new_areas`] before the configuration is committed
    /// ([`Self::commit_config`]). A node `newer` does not list is refused: it was removed.
    pub fn adopt(&self, newer: Arc<Configuration>) -> Result<Adopted, AdoptError> {
        let _one_at_a_time = self.adopting.lock().expect(crate::POISONED);
        let node = self.node_id();
        let current = self.txn.config_id();
        if newer.id <= current {
            return Err(AdoptError::Stale(StaleConfiguration {
                offered: newer.id,
                current,
            }));
        }
        if !newer.members().any(|member| member == node) {
            return Err(AdoptError::Removed {
                node,
                config: newer.id,
            });
        }
        let older = self.txn.config();
        // A copy found damaged at the restart is emptied and held until a configuration counts
        // it `copying` and a later one complete. One made without knowing of the damage (the
        // CM learns it from the restart request) may promote it when the primary fails: the
        // node refuses, which makes the CM suspect it, rather than take the region with a
        // copy it cannot serve. A configuration that keeps it primary where it was is not
        // refused (a new CM leader distributes one before the restart request comes): the copy
        // is held back, every read of it fails, and the node reports it to the CM
        // ([`Self::damaged_complete`]), which hands the region on.
        {
            // A copy some configuration counted `copying` is being copied again: one that
            // counts it complete (and may promote it) follows that copy's completion.
            let marked = self.not_copied_again.lock().expect(crate::POISONED);
            let promoted = (newer.regions.iter())
                .filter(|p| p.primary == node && marked.get(&p.region) == Some(&false))
                .find(|p| older.placement(p.region).is_some_and(|o| o.primary != node));
            if let Some(placement) = promoted {
                return Err(AdoptError::PromotedDamaged {
                    region: placement.region,
                    config: newer.id,
                });
            }
        }
        let mut adopted = Adopted::default();
        for placement in newer.replicated_on(node) {
            let copying = placement.copying.contains(&node);
            if self.copy(placement.region).is_some() {
                // A copy it held already: a backup's copy may have completed meanwhile.
                self.backup.set_copying(placement.region, copying);
                continue;
            }
            // A region this node holds no copy of: a new region (`add_region`: empty, active,
            // its primary here or a backup), or a new backup's copy of an existing one.
            let created = older.placement(placement.region).is_none();
            if placement.primary == node && !created {
                return Err(AdoptError::PrimaryWithoutCopy {
                    region: placement.region,
                    config: newer.id,
                });
            }
            let region = self
                .storage
                .region(node, placement.region, self.region_bytes)
                .map_err(|source| AdoptError::Copy {
                    region: placement.region,
                    config: newer.id,
                    source,
                })?;
            let region = Arc::new(region);
            self.txn
                .fabric()
                .memory()
                .register(region.clone())
                .map_err(|e| AdoptError::Copy {
                    region: placement.region,
                    config: newer.id,
                    source: io::Error::new(io::ErrorKind::AlreadyExists, e),
                })?;
            adopted.new_areas.push(AreaEntry::new(
                region.id(),
                AreaKind::Region,
                region.len(),
                region.key(),
            ));
            if placement.primary == node {
                let slab =
                    SlabAllocator::format(region.id(), newer.region_bytes, newer.block_bytes)
                        .map_err(|e| AdoptError::Copy {
                            region: placement.region,
                            config: newer.id,
                            source: io::Error::other(e),
                        })?;
                self.txn.primary().add_region(region.clone(), slab);
            } else {
                // A new region's backups hold nothing to copy: complete at once.
                self.backup.add(region.clone(), copying && !created);
            }
            self.copies.write().expect(crate::POISONED).push(region);
        }
        // A node that joined gets a ring here before the configuration naming it commits:
        // it sends COPY-QUERY and recovery's messages like any member.
        let older_members: BTreeSet<NodeId> = older.members().collect();
        for joined in newer.members().filter(|m| !older_members.contains(m)) {
            let mut senders = self.ring_senders.lock().expect(crate::POISONED);
            if senders.contains(&joined) {
                continue;
            }
            let ring_error = |source: io::Error| AdoptError::Ring {
                sender: joined,
                config: newer.id,
                source,
            };
            let region = self
                .storage
                .region(node, ring_area_id(joined), self.ring_bytes)
                .map_err(ring_error)?;
            let ring = Inbox::new_ring(self.txn.fabric().memory(), joined, region)
                .map_err(|e| ring_error(io::Error::other(e)))?;
            adopted.new_areas.push(ring.area_entry());
            self.joined.push(ring);
            senders.insert(joined);
        }
        // Before the node's configuration changes: a copier that sees `newer` sees whether it
        // may go on through it.
        self.copies_done.note_adopted(&older, &newer);
        self.txn.adopt(newer)?;
        self.forget_copied_damage();
        // The worker reads the new rings at its next turn.
        self.txn.fabric().memory().doorbell().ring();
        Ok(adopted)
    }

    /// NEW-CONFIG-COMMIT of configuration `id`: every member adopted it, so transactions
    /// commit in it.
    pub fn commit_config(&self, id: u64) -> Result<(), NotAdopted> {
        self.txn.commit_config(id)?;
        // The worker drains its rings for it and recovers what needs recovery.
        self.txn.fabric().memory().doorbell().ring();
        Ok(())
    }

    pub fn txn(&self) -> &Arc<TxnNode> {
        &self.txn
    }

    /// Regions this node backs up whose copy it completed (data recovery,
    /// docs/failures.md#data-recovery), that no configuration adopted since broke, while the
    /// configuration still lists it as copying: the CM may install a configuration that counts
    /// the copy complete.
    pub fn copied_regions(&self) -> Vec<RegionId> {
        let config = self.txn.config();
        let me = self.node_id();
        self.copies_done
            .complete()
            .into_iter()
            .filter(|region| {
                config
                    .placement(*region)
                    .is_some_and(|p| p.copying.contains(&me))
            })
            .collect()
    }

    /// Regions whose copy at this node the configuration counts complete (its primary's, or a
    /// backup's not copying; the region not lost) although the node found it damaged at its
    /// restart and has not copied it again: the configuration was made without knowing of the
    /// damage (a new CM leader's, or one made on a suspicion, before the restart request that
    /// names the damage came, or with that request refused). The node holds such a copy back
    /// (every read of it fails) and reports it to the CM, which moves a primary's region to an
    /// intact backup, or loses it, and has a backup copy again
    /// (docs/failures.md#whole-cluster-restart).
    pub fn damaged_complete(&self) -> Vec<RegionId> {
        let config = self.txn.config();
        let node = self.node_id();
        let marked = self.not_copied_again.lock().expect(crate::POISONED);
        let mut regions: Vec<RegionId> = (marked.iter())
            .filter(|(_, seen_copying)| !**seen_copying)
            .map(|(region, _)| *region)
            .filter(|region| {
                config.placement(*region).is_some_and(|p| {
                    p.state != RegionState::Lost && p.complete_replicas().any(|r| r == node)
                })
            })
            .collect();
        regions.sort();
        regions
    }

    /// Regions blocked in the node's configuration whose transaction recovery this node (their
    /// new primary) has finished: the CM may install a configuration that makes them active
    /// again (docs/failures.md#transaction-recovery). Empty once the configuration shows them
    /// active.
    pub fn recovered_regions(&self) -> Vec<RegionId> {
        let config = self.txn.config();
        // Never one whose copy here is damaged: the CM hands it to another node instead.
        let damaged = self.damaged_complete();
        let mut regions: Vec<RegionId> = self
            .recovered
            .lock()
            .expect(crate::POISONED)
            .iter()
            .filter(|(_, id)| *id == config.id)
            .map(|(region, _)| *region)
            .filter(|region| !damaged.contains(region))
            .filter(|region| {
                config
                    .placement(*region)
                    .is_some_and(|p| p.state == RegionState::Blocked)
            })
            .collect();
        regions.sort();
        regions
    }

    /// Sets what the node does when it finds records it had acknowledged lost (a damaged
    /// record in a sender's ring, or a reset that dropped records before the tail:
    /// docs/failures.md#a-damaged-ring): called with the ring's sender, from the worker. The
    /// first handler set stays.
    pub fn on_acknowledged_loss(&self, handler: impl Fn(NodeId) + Send + Sync + 'static) {
        let _ = self.on_loss.set(Box::new(handler));
    }

    pub fn backup(&self) -> &Arc<Backup> {
        &self.backup
    }

    pub fn node_id(&self) -> NodeId {
        self.txn.node_id()
    }

    /// This node's copy of `region`, if it holds one.
    pub fn copy(&self, region: RegionId) -> Option<Arc<Region>> {
        self.copies
            .read()
            .expect(crate::POISONED)
            .iter()
            .find(|r| r.id() == region)
            .cloned()
    }

    pub fn worker(&self) -> Option<&Worker> {
        self.worker.as_ref()
    }

    /// What this node's status area says: its worker's heartbeat and, per ring, the records it
    /// keeps and the oldest of them ([`crate::status`]).
    pub fn status(&self) -> Result<NodeStatus, StatusError> {
        let area = self
            .txn
            .fabric()
            .memory()
            .area(STATUS_AREA_ID)
            .expect("the status area is registered at start");
        read_status(area.words())
    }

    /// Every registered area, as a manifest lists them.
    pub fn area_entries(&self) -> Vec<AreaEntry> {
        self.txn
            .fabric()
            .memory()
            .areas()
            .iter()
            .map(|area| {
                let kind = if area.id().0 >= acre_engine::channel::RING_AREA_BASE {
                    AreaKind::Ring
                } else {
                    AreaKind::Region
                };
                AreaEntry::new(area.id(), kind, area.len(), area.key())
            })
            .collect()
    }

    /// Nothing in flight: no pending truncation, no transaction held by the primary or backup,
    /// and every log ring read and truncated up to its tail (a COMMIT-BACKUP not read yet is
    /// held by nobody, so the held counts alone would not show it).
    pub fn is_quiet(&self) -> bool {
        !self.txn.links().has_pending_truncations()
            && self.txn.unfinished_commits() == 0
            && self.txn.primary().held_count() == 0
            && self.backup.held_count() == 0
            && self.rings_drained()
    }

    /// Whether every ring's head (what the worker truncated) has reached its tail (what the
    /// senders appended), as their header words say.
    fn rings_drained(&self) -> bool {
        self.txn
            .fabric()
            .memory()
            .areas()
            .iter()
            .filter(|area| area.id().0 >= acre_engine::channel::RING_AREA_BASE)
            .all(|ring| {
                let word = |offset: u64| ring.words_at(offset as u32, 8)[0].load(Ordering::Acquire);
                let head = decode_pos_word(word(HEAD_OFFSET), HEAD_OFFSET);
                let tail = decode_pos_word(word(TAIL_OFFSET), TAIL_OFFSET);
                matches!((head, tail), (Ok(head), Ok(tail)) if head == tail)
            })
    }

    /// Where this node's copies of regions it became a new backup of stand: per region,
    /// `(blocks copied, blocks)` (data recovery).
    pub fn copy_progress(&self) -> BTreeMap<RegionId, (u64, u64)> {
        self.copy_progress.snapshot()
    }

    /// The region copies this node's restart found damaged and does not serve
    /// (docs/failures.md#whole-cluster-restart).
    pub fn damaged_copies(&self) -> &[RegionId] {
        &self.damaged
    }

    /// Stops the copier and the worker, then, for a node in files stopped with the whole
    /// cluster ([`sums::CLUSTER_STOPPING_FILE`]), writes the block sums of every copy
    /// ([`crate::sums`]), by which its restart proves them intact: nothing changes them any
    /// more.
    pub fn stop(mut self) {
        if let Some(mut copier) = self.copier.take() {
            copier.stop();
        }
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        if let Storage::Files { dir, .. } = &self.storage {
            self.forget_copied_damage();
            let holds_copies = !self.copies.read().expect(crate::POISONED).is_empty();
            if sums::cluster_stopping(dir) {
                self.write_sums();
            } else if holds_copies {
                tracing::info!(
                    node = %self.node_id(),
                    "stopped alone (not by `acre cluster down`): no block sums written, since \
                     the running nodes may still write its copies; its restart trusts them as \
                     after a kill"
                );
            }
        }
    }

    /// Clears the damage mark of every damaged copy that was copied again: the CM's restart
    /// configuration made it a backup copying again, and only data recovery's report takes it
    /// out of `copying`. A configuration that counts such a copy complete without one that
    /// counted it copying before was made without knowing of the damage (the restart request
    /// that said so was refused, say because the CM removed another node meanwhile): the mark
    /// stays, so that the next restart reports the damage again rather than vouch for an
    /// emptied copy.
    fn forget_copied_damage(&self) {
        let mut marked = self.not_copied_again.lock().expect(crate::POISONED);
        if marked.is_empty() {
            return;
        }
        let config = self.txn.config();
        if config.id <= self.restart_config_id {
            return;
        }
        let node = self.node_id();
        let copies = self.copies.read().expect(crate::POISONED).clone();
        marked.retain(|&region, seen_copying| {
            let placement = config.placement(region);
            if placement.is_some_and(|p| p.copying.contains(&node)) {
                *seen_copying = true;
                return true;
            }
            let complete = placement.is_some_and(|p| p.complete_replicas().any(|r| r == node));
            if !complete {
                return true;
            }
            if !*seen_copying {
                tracing::error!(
                    %node,
                    "configuration {} counts its copy of {region} complete, but the copy was \
                     found damaged at the restart and has not been copied again: the CM was not \
                     told (a restart request refused?); the copy stays marked damaged, and \
                     `acre cluster up` reports it again",
                    config.id
                );
                return true;
            }
            let Some(file) = copies
                .iter()
                .find(|c| c.id() == region)
                .and_then(|c| c.path())
            else {
                return false;
            };
            match sums::clear_damaged(&file) {
                Ok(()) => false,
                Err(e) => {
                    tracing::error!(
                        %node,
                        "cannot clear the damage mark of its copy of {region}, copied again \
                         ({}): {e}; its next restart copies it again",
                        sums::damaged_path(&file).display()
                    );
                    true
                }
            }
        });
    }

    /// Writes the sums of every copy next to its file. A copy whose sums cannot be written is
    /// reported and has none: its restart then trusts it as after a kill.
    fn write_sums(&self) {
        let node = self.node_id();
        let config_id = self.txn.config_id();
        let copies = self.copies.read().expect(crate::POISONED).clone();
        let mut written_count = 0;
        let marked = self.not_copied_again.lock().expect(crate::POISONED).clone();
        for region in copies {
            let Some(file) = region.path() else { continue };
            if marked.contains_key(&region.id()) {
                // Emptied at the restart and not counted complete since: its mark, not sums,
                // speaks for it at the next restart.
                continue;
            }
            let sums = CopySums::of(&region, config_id);
            match sums.write(&sums_path(&file)) {
                Ok(()) => written_count += 1,
                Err(e) => tracing::error!(
                    %node,
                    "cannot write the block sums of its copy of {} ({}): {e}; its restart \
                     cannot prove the copy intact",
                    region.id(),
                    file.display()
                ),
            }
        }
        // A client holds no copy: nothing to say.
        if written_count > 0 {
            tracing::info!(
                %node,
                "wrote the block sums of {written_count} region copies (configuration {config_id})"
            );
        }
    }
}

/// Checks a copy a restarted node kept against the sums it wrote when it stopped
/// ([`crate::sums`]), and says whether the node may serve it. A copy that does not match, or
/// whose sums file is damaged, is reported, and the caller [`discard`]s it. A copy without
/// sums (its node was killed) is vouched for by its objects' own sums ([`vouch_by_objects`]).
fn vouch_for(node: NodeId, region: &Region, block_bytes: u64) -> Result<bool, StartError> {
    let id = region.id();
    let Some(file) = region.path() else {
        return Ok(true);
    };
    let verdict = sums::check_and_remove(region, &file).map_err(io(format!(
        "check and remove the block sums of {node}'s copy of {id} ({})",
        sums_path(&file).display()
    )))?;
    match &verdict {
        Verdict::Intact { config_id } => {
            // The sums say the bytes are those of the stop; the block headers must still be
            // ones this version reads (a copy written by a version whose slots had no sum word
            // has block headers of other slot sizes).
            if let Err(e) = SlabAllocator::recover(region, block_bytes) {
                tracing::error!(
                    %node,
                    "its copy of {id} matches its block sums but cannot be read: {e}; the copy \
                     is not served, and is copied again from a live replica"
                );
                return Ok(false);
            }
            tracing::info!(
                %node,
                "its copy of {id} matches the block sums written when it stopped (configuration \
                 {config_id})"
            );
        }
        Verdict::NoSums => return Ok(vouch_by_objects(node, region, block_bytes)),
        Verdict::Damaged { blocks, count } => {
            let offsets: Vec<String> = blocks
                .iter()
                .map(|block| format!("{:#x}", block * sums::SUMS_BLOCK_BYTES))
                .collect();
            tracing::error!(
                %node,
                "its copy of {id} is damaged: {count} blocks of {} bytes do not match the sums \
                 written when it stopped (at offsets {}); the copy is not served, and is copied \
                 again from a live replica",
                sums::SUMS_BLOCK_BYTES,
                offsets.join(" ")
            );
        }
        Verdict::Unreadable(e) => {
            tracing::error!(
                %node,
                "its copy of {id} cannot be vouched for: its block sums file {} {e}; the copy \
                 is not served, and is copied again from a live replica",
                sums_path(&file).display()
            );
        }
        Verdict::NotCopiedAgain => {
            tracing::error!(
                %node,
                "its copy of {id} was marked damaged by an earlier run (found damaged at a \
                 restart, or the node failed when records it had acknowledged were damaged \
                 or lost) and has not been copied again since ({}): the copy is not \
                 served, and is copied again from a live replica",
                sums::damaged_path(&file).display()
            );
        }
    }
    Ok(!verdict.is_damaged())
}

/// Vouches for a copy that has no block sums (its node was killed, or stopped alone) by the
/// sums its slots carry: every slot an install wrote must match its sum
/// ([`SlabAllocator::check_objects`]). Slots locked by an install a stop cut short, and
/// backup overwrites cut short, hold no install's bytes yet: readers never take them, and
/// transaction recovery or the copy again writes them whole.
fn vouch_by_objects(node: NodeId, region: &Region, block_bytes: u64) -> bool {
    let id = region.id();
    let started = std::time::Instant::now();
    match SlabAllocator::check_objects(region, block_bytes) {
        Ok(check) if check.is_intact() => {
            tracing::info!(
                %node,
                "its copy of {id} has no block sums (the node was killed, or stopped alone): \
                 every object's sum matches ({} slots read in {:.1} ms: {} objects, {} never \
                 written, {} installs and {} backup overwrites cut short, which recovery and \
                 the copy again settle)",
                check.slots,
                started.elapsed().as_secs_f64() * 1e3,
                check.intact,
                check.pristine,
                check.installing,
                check.interrupted
            );
            true
        }
        Ok(check) => {
            let addrs: Vec<String> = check.damaged.iter().map(|a| a.to_string()).collect();
            tracing::error!(
                %node,
                "its copy of {id} is damaged: {} slots do not match their sums or unused \
                 blocks hold non-zero words (the first at: {}); the copy is not served, and is \
                 copied again from a live replica",
                check.damaged_count,
                addrs.join(" ")
            );
            false
        }
        Err(e) => {
            tracing::error!(
                %node,
                "its copy of {id} cannot be vouched for: {e}; the copy is not served, and is \
                 copied again from a live replica"
            );
            false
        }
    }
}

/// Holds back a copy a restarted node may not serve (every word [`HELD_BACK_WORD`], persisted)
/// before anything reads it, after marking it damaged: every read of it fails as unavailable,
/// also one by a node whose configuration still names this node the region's primary, and a
/// copy of the region from a live replica replaces it slot by slot (a held-back slot is older
/// than any install: docs/formats.md#a-held-back-copy).
fn discard(node: NodeId, region: &Region) -> Result<(), StartError> {
    let id = region.id();
    let Some(file) = region.path() else {
        unreachable!("only a node in files restarts");
    };
    // Durable before the copy changes: every later restart finds it damaged until a
    // configuration counts its copy complete again.
    sums::mark_damaged(&file).map_err(io(format!(
        "mark {node}'s copy of {id} damaged ({})",
        sums::damaged_path(&file).display()
    )))?;
    for word in region.words() {
        word.store(HELD_BACK_WORD, Ordering::Relaxed);
    }
    region
        .mapping()
        .persist(0, region.len() as usize)
        .map_err(io(format!("hold back {node}'s damaged copy of {id}")))
}
