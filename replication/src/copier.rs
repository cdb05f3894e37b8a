//! Data recovery (docs/failures.md#data-recovery): a new backup fills its copy of a region
//! from the region's primary, in the background, so that the region counts f+1 complete copies
//! again.
//!
//! A node's copier thread looks, every [`COPIER_IDLE`], for the regions its configuration lists
//! it as a *copying* backup of, that are active, and that it has not copied yet. For each:
//!
//! 1. It waits until the primary holds no LOCK of a transaction begun before the configuration
//!    it copies in (a COPY-QUERY, refused until the primary has drained its logs for that
//!    configuration). Such a transaction sends its COMMIT-BACKUP to the backups of its own
//!    configuration only, so its update could reach neither the copy (read before it) nor this
//!    node (not its backup then). Once the primary has drained, no transaction of an older
//!    configuration locks there any more: in message mode the primary refuses its LOCK as
//!    stale, and a one-sided coordinator reads the primary's fence with its LOCK and aborts.
//! 2. It reads the region block by block with one-sided READs of the primary's memory. An
//!    unclaimed block is skipped. A claimed block's header is read and goes into the copy
//!    first (so that the slots can be found, and so that this node applies the block's
//!    truncated updates from then on), and only then are the block's slots read, every slot
//!    whose version is newer than the copy's installed ([`Backup::install_copied`]): a slot
//!    read before the header went in could miss an update that this node skipped meanwhile,
//!    as one of a block its copy had not received. A slot that reads locked or torn is read
//!    again alone until it is unlocked and whole: an object stays locked at the primary until
//!    its update is installed there, so the copy takes every update that is not already on its
//!    way to this node as a COMMIT-BACKUP. Both paths install only newer versions, under the
//!    copy's write lock, so they converge in whatever order they come.
//! 3. It paces itself, sleeping between blocks, so that foreground transactions keep most of
//!    the machines' time and the fabric: at most [`COPY_BYTES_PER_SECOND`] of blocks read (or
//!    what [`COPY_RATE_VARIABLE`] says), and slower while its node's foreground runs below
//!    [`crate::pace::FOREGROUND_KEPT`] of its rate before the copy ([`Pace`]).
//! 4. Done, it records the region as copied ([`crate::ReplicaNode::copied_regions`]); the node
//!    reports it to the CM, which installs a configuration that counts the copy complete.
//!
//! A copy that fails part-way (the primary unreachable, a configuration it may not go on
//! through) is started again from the first block at the next look: what it installed stays,
//! and installs only move versions forward.
//!
//! # Through configurations
//!
//! Every completed copy is a configuration of its own (the CM counts it complete), so a copy
//! that stopped at every configuration made the copies of a whole node's regions start over
//! again and again. A copy begun in configuration `s` goes on through a newer one, `x`, when
//! nothing that it relies on changed ([`continues_through`], checked by [`CopyLedger`] for every
//! configuration the node adopts, so that none between two looks of the copier goes unseen):
//!
//! - *Older transactions.* What it waited for in `s` (step 1: no LOCK at the primary of a
//!   transaction begun before `s`, and none can come) holds for good once true.
//! - *Transactions begun in `s` or later* write the region with this node among its backups
//!   (the region's primary and backups as in `s`, this node still copying): their coordinator
//!   sends it their COMMIT-BACKUP before any COMMIT-PRIMARY, in both commit modes (the plan's
//!   backups are the placement's, copying ones included; one-sided mode differs only in the
//!   primary's part). What the copy does not read, the new backup receives.
//! - *Unless recovery decides them.* Recovery and its replication of records leave out backups
//!   still copying ("data recovery fills them"): a transaction that recovery commits may reach
//!   the primary without reaching this node. A transaction needs recovery in a configuration
//!   that removes its coordinator or blocks a region it writes (`Recovery::needs`); a restart
//!   in place blocks regions or has backups copy again. So `x` may differ from its predecessor
//!   only in what cannot start a recovery: copies counted complete (a `copying` list loses
//!   nodes), regions made active again (blocked to active), new regions, new members, the CM
//!   leader, and the CM's replicas (a replica replaced, docs/failures.md#configuration-manager:
//!   it moves no region and removes no member). Any other change (a member removed, a region blocked, replicas moved, a node set
//!   copying) breaks the copy: it starts again in the newer configuration, whose COPY-QUERY
//!   waits for the transactions recovery settles there (they began before it), as before.
//!
//! A configuration the node skips (adopted `x` without `x - 1`) was never committed, so no
//! transaction committed in it and no recovery ran for it; comparing with the one before it is
//! enough.
//!
//! Completion is reported with the same rule. The copy records the configuration it was
//! complete in (the node's when the last block was done and nothing broke it); the node
//! reports it ([`CopyLedger::complete`], [`crate::ReplicaNode::copied_regions`]) only while no
//! configuration adopted since broke it, and the copier copies such a region again. The member
//! reports it in its current configuration, the only one the CM counts a report in: a copy
//! complete in `x` and unbroken since is complete in every later configuration up to the
//! node's, and the CM's configuration is never older than a node's, so the CM never counts a
//! copy in a configuration where it is not complete. (Before, the copy recorded only where it
//! began, and a configuration that broke it between its last block and the CM's count went
//! unnoticed.)

use crate::backup::{Backup, HeldBackBlock};
use crate::pace::Pace;
use crate::worker::WorkerStats;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::OpError;
use acre_engine::object;
use acre_engine::region::AccessKey;
use acre_engine::slab::{self, BLOCK_HEADER_BYTES};
use acre_txn::TxnNode;
use acre_txn::config::{Configuration, RegionState};
use acre_txn::record::{Body, TxnId, TxnRecord};
use acre_txn::reply::Code;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an idle copier looks for copies to make.
pub const COPIER_IDLE: Duration = Duration::from_millis(100);
/// The pace of a copy: bytes of blocks read per second, at most, unless the node process's
/// environment sets [`COPY_RATE_VARIABLE`] (the foreground may slow it down: [`Pace`]).
pub const COPY_BYTES_PER_SECOND: u64 = 256 << 20;
/// The environment variable that sets another pace (bytes per second, a positive integer):
/// slower to spare a busy cluster's foreground, faster on a quiet one, and very slow in tests
/// that need a copy still running.
pub const COPY_RATE_VARIABLE: &str = "ACRE_COPY_BYTES_PER_SECOND";

/// The pace the environment sets, or [`COPY_BYTES_PER_SECOND`] (a value that is not a positive
/// integer is reported and ignored).
fn copy_rate() -> u64 {
    match std::env::var(COPY_RATE_VARIABLE) {
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(rate) if rate > 0 => rate,
            _ => {
                tracing::warn!(
                    "{COPY_RATE_VARIABLE}={text:?} is not a positive number of bytes per \
                     second: copying at {COPY_BYTES_PER_SECOND}"
                );
                COPY_BYTES_PER_SECOND
            }
        },
        Err(_) => COPY_BYTES_PER_SECOND,
    }
}
/// How long a slot may stay locked or torn at the primary before the copy gives up and starts
/// again later.
const SLOT_SETTLE_MAX: Duration = Duration::from_secs(10);
/// How long the primary's older transactions may keep their locks before the copy starts again
/// later (they finish within milliseconds, unless they wait for recovery).
const OLDER_WAIT_MAX: Duration = Duration::from_secs(30);
/// How many times one READ refused by a primary in a newer configuration is tried again, once
/// this node has that configuration too.
const REFUSED_READS_MAX: u32 = 3;
/// How long the copier first waits for a primary whose card gives it no key (ofi: the primary
/// has not published the configuration that adds this node yet), times the refusals so far.
const REFUSED_CARD_BACKOFF: Duration = Duration::from_millis(50);
/// How long a refused READ waits for this node to learn the primary's configuration.
const REFUSED_WAIT_MAX: Duration = Duration::from_secs(1);
/// The pause between two questions to the primary about its older transactions.
const OLDER_POLL: Duration = Duration::from_millis(5);

/// How often a node process rewrites its copy-progress file while copying.
const PROGRESS_FILE_EVERY: Duration = Duration::from_millis(200);

/// Where the copies of one node stand: per region, blocks done and blocks in all; a node
/// process also writes them to `n<id>.copy` in the cluster directory, where `acre cluster
/// status` reads them ([`read_progress_file`]).
#[derive(Debug, Default)]
pub struct CopyProgress {
    regions: Mutex<BTreeMap<RegionId, (u64, u64)>>,
    file: Option<PathBuf>,
    written: Mutex<Option<Instant>>,
}

impl CopyProgress {
    /// Progress kept in memory, and written to `file` if given.
    pub fn new(file: Option<PathBuf>) -> CopyProgress {
        CopyProgress {
            file,
            ..CopyProgress::default()
        }
    }

    /// Per region being copied or copied: `(blocks done, blocks)`.
    pub fn snapshot(&self) -> BTreeMap<RegionId, (u64, u64)> {
        self.regions.lock().expect(crate::POISONED).clone()
    }

    fn set(&self, region: RegionId, done: u64, blocks: u64) {
        let snapshot = {
            let mut regions = self.regions.lock().expect(crate::POISONED);
            regions.insert(region, (done, blocks));
            regions.clone()
        };
        let Some(file) = &self.file else { return };
        let mut written = self.written.lock().expect(crate::POISONED);
        let due = written.is_none_or(|at| at.elapsed() >= PROGRESS_FILE_EVERY) || done == blocks;
        if !due {
            return;
        }
        *written = Some(Instant::now());
        let text: String = snapshot
            .iter()
            .map(|(region, (done, blocks))| format!("{} {done} {blocks}\n", region.0))
            .collect();
        let temporary = file.with_extension("copy.tmp");
        let replaced =
            std::fs::write(&temporary, text).and_then(|()| std::fs::rename(&temporary, file));
        if let Err(e) = replaced {
            tracing::debug!("cannot write {}: {e}", file.display());
        }
    }
}

/// The copy-progress file of node `node` in the cluster directory `dir`.
pub fn progress_file(dir: &Path, node: NodeId) -> PathBuf {
    dir.join(format!("{node}.copy"))
}

/// What node `node` last wrote of its copies (empty if nothing, or unreadable): per region,
/// `(blocks done, blocks)`.
pub fn read_progress_file(dir: &Path, node: NodeId) -> BTreeMap<RegionId, (u64, u64)> {
    let Ok(text) = std::fs::read_to_string(progress_file(dir, node)) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().map(str::parse::<u64>);
            let (Some(Ok(region)), Some(Ok(done)), Some(Ok(blocks))) =
                (words.next(), words.next(), words.next())
            else {
                return None;
            };
            let region = u32::try_from(region).ok()?;
            Some((RegionId(region), (done, blocks)))
        })
        .collect()
}

/// Whether a copy may go on from configuration `older` into `newer`, its successor at this node
/// (module docs, "Through configurations"): `newer` changes nothing but `copying` lists that
/// lose nodes, regions made active again, new regions and members, the CM leader and replicas.
pub fn continues_through(older: &Configuration, newer: &Configuration) -> bool {
    let members_kept = |old: &[NodeId], new: &[NodeId]| old.iter().all(|m| new.contains(m));
    let same_setup = older.f == newer.f
        && older.region_bytes == newer.region_bytes
        && older.block_bytes == newer.block_bytes
        && older.commit == newer.commit
        && older.domains == newer.domains
        && members_kept(&older.nodes, &newer.nodes)
        && members_kept(&older.clients, &newer.clients);
    if !same_setup || newer.regions.len() < older.regions.len() {
        return false;
    }
    older.regions.iter().zip(&newer.regions).all(|(then, now)| {
        let state_kept = now.state == then.state
            || (then.state == RegionState::Blocked && now.state == RegionState::Active);
        now.region == then.region
            && now.primary == then.primary
            && now.backups == then.backups
            && now.copying.iter().all(|node| then.copying.contains(node))
            && state_kept
    })
}

/// A node's completed copies, and the configurations a copy may not go on through (module docs,
/// "Through configurations"). Shared by the copier, the node's adoption of configurations
/// ([`Self::note_adopted`]) and its reports to the CM ([`Self::complete`]).
#[derive(Debug, Default)]
pub struct CopyLedger {
    /// The id of the newest configuration the node adopted that a copy may not go on through
    /// (0: none since it started).
    break_id: AtomicU64,
    /// Completed copies, each with the configuration it was complete in.
    done: Mutex<Vec<(RegionId, u64)>>,
}

impl CopyLedger {
    /// The node adopts `newer` after `older`: called before the node's configuration becomes
    /// `newer`, so that a copier that sees `newer` sees the break too.
    pub fn note_adopted(&self, older: &Configuration, newer: &Configuration) {
        assert!(newer.id > older.id, "older={} newer={}", older.id, newer.id);
        if !continues_through(older, newer) {
            self.break_id.fetch_max(newer.id, Ordering::SeqCst);
        }
    }

    /// Whether nothing adopted since configuration `id` breaks a copy begun or complete in it.
    fn unbroken_since(&self, id: u64) -> bool {
        self.break_id.load(Ordering::SeqCst) <= id
    }

    fn record(&self, region: RegionId, complete_in: u64) {
        self.done
            .lock()
            .expect(crate::POISONED)
            .push((region, complete_in));
    }

    /// Whether the copy of `region` is complete and unbroken; a broken one is forgotten, to be
    /// copied again.
    fn holds(&self, region: RegionId) -> bool {
        let mut done = self.done.lock().expect(crate::POISONED);
        done.retain(|&(_, complete_in)| self.unbroken_since(complete_in));
        done.iter().any(|&(copied, _)| copied == region)
    }

    /// The regions whose copy is complete and that no configuration adopted since broke, sorted.
    pub fn complete(&self) -> Vec<RegionId> {
        let done = self.done.lock().expect(crate::POISONED);
        let mut regions: Vec<RegionId> = done
            .iter()
            .filter(|&&(_, complete_in)| self.unbroken_since(complete_in))
            .map(|&(region, _)| region)
            .collect();
        regions.sort();
        regions.dedup();
        regions
    }
}

struct Shared {
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A node's copier thread (module docs); stops when dropped.
pub struct Copier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Copier {
    /// `foreground`: the node's worker's counters, whose records handled are the foreground
    /// the pace watches.
    pub fn spawn(
        node: Arc<TxnNode>,
        backup: Arc<Backup>,
        ledger: Arc<CopyLedger>,
        progress: Arc<CopyProgress>,
        foreground: Arc<WorkerStats>,
    ) -> std::io::Result<Copier> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("acre-copier-{}", node.node_id()))
                .spawn(move || {
                    let copier = Copying {
                        pace: RefCell::new(Pace::new(copy_rate())),
                        foreground,
                        node,
                        backup,
                        ledger,
                        progress,
                        shared,
                    };
                    copier.run();
                })?
        };
        Ok(Copier {
            shared,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _guard = self.shared.lock.lock().expect(crate::POISONED);
            self.shared.wake.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Copying {
    pace: RefCell<Pace>,
    foreground: Arc<WorkerStats>,
    node: Arc<TxnNode>,
    backup: Arc<Backup>,
    ledger: Arc<CopyLedger>,
    progress: Arc<CopyProgress>,
    shared: Arc<Shared>,
}

impl Copying {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// The records the node's worker has handled: its foreground, for the pace.
    fn foreground_records(&self) -> u64 {
        self.foreground.records.load(Ordering::Relaxed)
    }

    /// Samples the foreground for the pace.
    fn observe(&self, copying: bool) {
        let records = self.foreground_records();
        self.pace
            .borrow_mut()
            .observe(Instant::now(), records, copying);
    }

    /// Sleeps `pause` or until stopped; returns whether it was stopped.
    fn sleep(&self, pause: Duration) -> bool {
        let guard = self.shared.lock.lock().expect(crate::POISONED);
        if self.stopped() {
            return true;
        }
        let _ = self
            .shared
            .wake
            .wait_timeout(guard, pause)
            .expect(crate::POISONED);
        self.stopped()
    }

    fn run(&self) {
        let me = self.node.node_id();
        loop {
            let (id, committed) = self.node.config_state();
            let config = self.node.config();
            let todo: Vec<RegionId> = if committed && config.id == id {
                config
                    .regions
                    .iter()
                    .filter(|p| p.copying.contains(&me) && p.state == RegionState::Active)
                    .filter(|p| !self.ledger.holds(p.region))
                    .map(|p| p.region)
                    .collect()
            } else {
                Vec::new()
            };
            for region in todo {
                let started = Instant::now();
                match self.copy_region(&config, region) {
                    Ok((bytes, complete_in)) => {
                        self.ledger.record(region, complete_in);
                        let seconds = started.elapsed().as_secs_f64();
                        tracing::info!(
                            node = %me,
                            // `acre bench recopy` reads the words up to the rate.
                            "copied {region} from its primary: {} MiB in {seconds:.2} s \
                             ({:.0} MiB/s); begun in configuration {}, complete in \
                             {complete_in}; the CM counts the copy complete next (pace at the \
                             end {} MiB/s; foreground without the copy {} records/s; read by {})",
                            bytes >> 20,
                            (bytes >> 20) as f64 / seconds.max(1e-9),
                            config.id,
                            self.pace.borrow().rate() >> 20,
                            self.pace
                                .borrow()
                                .baseline()
                                .map_or("not sampled".to_string(), |b| format!("{b:.0}")),
                            self.node.fabric().read_large_path(),
                        );
                    }
                    Err(reason) => {
                        if self.stopped() {
                            return;
                        }
                        tracing::warn!(
                            node = %me,
                            "copying {region} from its primary stopped: {reason}; it starts \
                             again at the next look"
                        );
                    }
                }
            }
            if self.sleep(COPIER_IDLE) {
                return;
            }
            self.observe(false);
        }
    }

    /// Copies `region` from its primary, begun in `config` (module docs); returns the bytes
    /// read and the configuration the copy was complete in (`config` or a later one it went on
    /// through).
    fn copy_region(&self, config: &Configuration, region: RegionId) -> Result<(u64, u64), String> {
        let placement = config
            .placement(region)
            .ok_or_else(|| format!("{region} is not in configuration {}", config.id))?;
        let primary = placement.primary;
        self.wait_for_older(primary, region, config.id)?;
        let key = self
            .node
            .reader()
            .key_at(primary, Addr::new(region, 0))
            .map_err(|e| format!("the key of {region} at {primary}: {e}"))?;
        let block_bytes = config.block_bytes;
        let blocks = config.region_bytes / block_bytes;
        let started = Instant::now();
        let mut read_bytes = 0u64;
        // When the blocks read so far are due at the pace, from `started`.
        let mut due = Duration::ZERO;
        self.observe(true);
        for block in 0..blocks {
            if self.stopped() {
                return Err("the node stops".into());
            }
            self.goes_on(config, region)?;
            if self.pace.borrow().probe_due(Instant::now()) {
                // The foreground without the copy, for a while (crate::pace).
                let (began, before) = (Instant::now(), self.foreground_records());
                if self.sleep(crate::pace::PROBE_LENGTH) {
                    return Err("the node stops".into());
                }
                let (now, after) = (Instant::now(), self.foreground_records());
                let seconds = now.duration_since(began).as_secs_f64().max(1e-6);
                let rate = after.saturating_sub(before) as f64 / seconds;
                self.pace.borrow_mut().probed(now, rate, after);
                // The pause is not the copy's: no catching up after it.
                due += now.duration_since(began);
            }
            let offset = u32::try_from(block * block_bytes).expect("regions are under 4 GiB");
            self.copy_block(primary, key, region, offset, block_bytes)?;
            if block + 1 == blocks {
                // The region's tail after its last block, never used.
                let tail = u32::try_from(blocks * block_bytes).expect("regions are under 4 GiB");
                self.backup
                    .clear_held_back_slack(region, tail, config.region_bytes);
            }
            read_bytes += block_bytes;
            self.progress.set(region, block + 1, blocks);
            // Pace: no faster than the pace of the moment, block by block.
            self.observe(true);
            due += self.pace.borrow().due(block_bytes);
            if let Some(early) = due.checked_sub(started.elapsed())
                && self.sleep(early)
            {
                return Err("the node stops".into());
            }
        }
        let complete_in = self.goes_on(config, region)?;
        Ok((read_bytes, complete_in))
    }

    /// Whether the copy of `region` begun in `config` may go on in the node's configuration now
    /// (module docs, "Through configurations"); returns that configuration's id. The node's
    /// configuration is read before the ledger: the ledger notes a break before the node adopts
    /// the configuration that brings it.
    fn goes_on(&self, config: &Configuration, region: RegionId) -> Result<u64, String> {
        let me = self.node.node_id();
        let now = self.node.config();
        if now.id == config.id {
            return Ok(now.id);
        }
        let region_kept = match (config.placement(region), now.placement(region)) {
            (Some(then), Some(placement)) => {
                placement.primary == then.primary
                    && placement.backups == then.backups
                    && placement.state == RegionState::Active
                    && placement.copying.contains(&me)
            }
            _ => false,
        };
        // The ledger sees every configuration the node adopts; the direct comparison also
        // covers one adopted around it (a test's `TxnNode::adopt`).
        if region_kept && self.ledger.unbroken_since(config.id) && continues_through(config, &now) {
            return Ok(now.id);
        }
        Err(format!(
            "the configuration changed from {} to {}, and a copy may not go on through it",
            config.id, now.id
        ))
    }

    /// One block: if claimed, its header, then every slot newer than the copy's.
    ///
    /// The slots are read only once the header is in the copy. From that moment this node
    /// applies every truncated update of the block itself; before it, it skips them as updates
    /// of a block its copy has not received ([`Backup::apply`]), counting on this read to bring
    /// them. A slot read before the header went in could miss an update installed at the
    /// primary and truncated here in between, and the copy would then install the older slot
    /// for good (the simulation found a free lost so).
    fn copy_block(
        &self,
        primary: NodeId,
        key: AccessKey,
        region: RegionId,
        offset: u32,
        block_bytes: u64,
    ) -> Result<(), String> {
        let at = Addr::new(region, offset);
        let header = self.read(primary, at, key, BLOCK_HEADER_BYTES)?;
        if object::is_held_back(&header) {
            // Never copied as unclaimed: the primary's copy is itself damaged, and a
            // configuration made without knowing names it (the CM hands the region on).
            return Err(format!(
                "{region} at {primary}: the primary holds its copy back (found damaged at its \
                 restart)"
            ));
        }
        let mut header = header;
        if slab::block_slot_bytes(&header, block_bytes).is_none() {
            // Unclaimed: so is the copy's, unless held back since its restart. A claim that
            // reached the held-back copy meanwhile makes it a claimed block to copy.
            if self.backup.empty_held_back_block(region, offset) != HeldBackBlock::Claimed {
                return Ok(());
            }
            header = self.read(primary, at, key, BLOCK_HEADER_BYTES)?;
        }
        let Some(slot_bytes) = slab::block_slot_bytes(&header, block_bytes) else {
            return Err(format!(
                "{region}: the block at {offset:#x} is claimed here but not at {primary}"
            ));
        };
        if !self.backup.copy_block_header(region, offset, &header) {
            return Err(format!(
                "{region}: the block header at {offset:#x} did not take"
            ));
        }
        let data = self.read(primary, at, key, block_bytes)?;
        // A test stops the copy here to truncate an update of this block meanwhile.
        acre_engine::pause::point("copier.slots_read");
        let slot_bytes = slot_bytes as usize;
        let mut pos = BLOCK_HEADER_BYTES as usize;
        while pos + slot_bytes <= data.len() {
            let addr = Addr::new(region, offset + pos as u32);
            let slot = &data[pos..pos + slot_bytes];
            let settled;
            let slot = if object::decode(slot).is_ok() {
                slot
            } else {
                settled = self.read_settled(primary, addr, key, slot_bytes)?;
                &settled[..]
            };
            self.backup
                .install_copied(addr, slot)
                .map_err(|e| format!("installing {addr}: {e}"))?;
            pos += slot_bytes;
        }
        // The slack after the last slot: zero at the primary, held back here after a restart.
        self.backup.clear_held_back_slack(
            region,
            offset + pos as u32,
            u64::from(offset) + block_bytes,
        );
        Ok(())
    }

    /// The slot at `addr`, read again until it is unlocked and whole; an error at once when its
    /// sum says it is damaged.
    fn read_settled(
        &self,
        primary: NodeId,
        addr: Addr,
        key: AccessKey,
        slot_bytes: usize,
    ) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + SLOT_SETTLE_MAX;
        let in_order = self.node.fabric().reads_in_address_order();
        loop {
            let slot = self.read(primary, addr, key, slot_bytes as u64)?;
            match object::decode(&slot) {
                Ok(_) => return Ok(slot),
                // Reading it again reads the same: the primary's copy cannot give it. (Over a
                // transport that does not read in address order it may be a race: read again
                // until the deadline.)
                Err(object::DecodeError::Damaged(damaged))
                    if in_order || Instant::now() >= deadline =>
                {
                    return Err(format!("{addr} at {primary}: {damaged}"));
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                let header = object::Header::from_u64(u64::from_le_bytes(
                    slot[..8]
                        .try_into()
                        .expect("a slot starts with its header word"),
                ));
                return Err(format!(
                    "{addr} stayed locked or torn at {primary} for {SLOT_SETTLE_MAX:?} \
                     (its header: {header})"
                ));
            }
            if self.sleep(Duration::from_millis(1)) {
                return Err("the node stops".into());
            }
        }
    }

    fn read(
        &self,
        primary: NodeId,
        addr: Addr,
        key: AccessKey,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let len = u32::try_from(len).expect("blocks are under 4 GiB");
        let mut refused_count = 0;
        loop {
            match self.node.fabric().read_large(primary, addr, key, len) {
                Ok(bytes) => return Ok(bytes),
                // The primary adopted a newer configuration before this node, and refuses a
                // connection bound to the older one: once this node has it too, the READ
                // goes through (over tcp this stopped copies that could go on). Whether the
                // copy may go on there is the caller's check, before its next block.
                Err(OpError::NotMember { config, .. })
                    if refused_count < REFUSED_READS_MAX && self.learns(config) =>
                {
                    refused_count += 1;
                    // On ofi the configuration is that of the primary's card, which gave this
                    // node no key yet: the primary has not adopted (or published) this node's
                    // configuration. Give it a moment before reading its card again.
                    if self.node.config_id() > config
                        && self.sleep(REFUSED_CARD_BACKOFF.saturating_mul(refused_count))
                    {
                        return Err("the node stops".into());
                    }
                }
                Err(e) => return Err(format!("reading {addr} at {primary}: {e}")),
            }
        }
    }

    /// Waits until this node's configuration is at least `config` (bounded by
    /// [`REFUSED_WAIT_MAX`]); returns whether it is.
    fn learns(&self, config: u64) -> bool {
        let deadline = Instant::now() + REFUSED_WAIT_MAX;
        while self.node.config_id() < config {
            if Instant::now() >= deadline || self.sleep(Duration::from_millis(1)) {
                return false;
            }
        }
        true
    }

    /// Waits until `primary` holds no LOCK in `region` of a transaction begun before
    /// configuration `config` (module docs, step 1).
    fn wait_for_older(&self, primary: NodeId, region: RegionId, config: u64) -> Result<(), String> {
        let deadline = Instant::now() + OLDER_WAIT_MAX;
        loop {
            match self.ask_older(primary, region, config) {
                Some(0) => return Ok(()),
                answer => {
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "{primary} still holds locks in {region} of transactions begun \
                             before configuration {config} ({answer:?}) after \
                             {OLDER_WAIT_MAX:?}"
                        ));
                    }
                }
            }
            if self.sleep(OLDER_POLL) {
                return Err("the node stops".into());
            }
        }
    }

    /// One COPY-QUERY: the count, or `None` (refused, or no answer).
    fn ask_older(&self, primary: NodeId, region: RegionId, config: u64) -> Option<u64> {
        let node = &self.node;
        let lease = node.replies().acquire()?;
        let record = TxnRecord {
            txn: TxnId {
                config,
                node: node.node_id(),
                thread: lease.slot,
                seq: lease.seq,
            },
            reply: node.replies().reply_to(lease.slot, 0),
            truncated: Vec::new(),
            body: Body::CopyQuery {
                region,
                older_than: config,
            },
        };
        let sent = node.links().send_one(primary, record).is_ok();
        let answer = if sent {
            let _ = node
                .replies()
                .wait(lease.slot, lease.seq, &[0], crate::orphan::VOTE_TIMEOUT);
            node.replies().poll(lease.slot, lease.seq, 0)
        } else {
            None
        };
        node.replies().release(lease, sent && answer.is_none());
        match answer {
            Some(reply) if reply.code == Code::Vote => Some(reply.values[0]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_txn::config::Configuration;

    /// Three nodes, one region each, f = 1, and a fourth node copying r1 (as after an addition).
    fn copying() -> Configuration {
        let nodes: Vec<NodeId> = (1..=4).map(NodeId).collect();
        let mut config = Configuration::place(1, nodes, vec![NodeId(9)], 1, 1, 1 << 20, 1 << 16)
            .expect("config");
        let r1 = &mut config.regions[0];
        r1.backups.push(NodeId(4));
        r1.copying = vec![NodeId(4)];
        config.regions[2].state = RegionState::Blocked;
        config
    }

    fn next(config: &Configuration, change: impl FnOnce(&mut Configuration)) -> Configuration {
        let mut newer = config.clone();
        newer.id += 1;
        change(&mut newer);
        newer
    }

    #[test]
    fn a_copy_goes_on_through_what_cannot_start_a_recovery() {
        let older = copying();
        let kept: [(&str, Configuration); 7] = [
            ("nothing but the id", next(&older, |_| {})),
            (
                "another copy counted complete",
                next(&older, |c| c.regions[0].copying.clear()),
            ),
            (
                "a region made active again",
                next(&older, |c| c.regions[2].state = RegionState::Active),
            ),
            (
                "a new region",
                next(&older, |c| {
                    let mut new = c.regions[1].clone();
                    new.region = RegionId(99);
                    c.regions.push(new);
                }),
            ),
            ("a new client", next(&older, |c| c.clients.push(NodeId(10)))),
            (
                "another CM leader",
                next(&older, |c| c.cm_leader = Some(NodeId(2))),
            ),
            (
                "the CM's replicas",
                next(&older, |c| {
                    c.cm_replicas = vec![NodeId(1), NodeId(3), NodeId(4)]
                }),
            ),
        ];
        for (what, newer) in kept {
            assert!(continues_through(&older, &newer), "{what}");
        }
    }

    #[test]
    fn a_copy_stops_at_what_may_start_a_recovery_or_moves_replicas() {
        let older = copying();
        let broken: [(&str, Configuration); 7] = [
            (
                "a node removed",
                next(&older, |c| c.nodes.retain(|&n| n != NodeId(3))),
            ),
            ("a client removed", next(&older, |c| c.clients.clear())),
            (
                "a region blocked (its primary changed, or a restart in place)",
                next(&older, |c| c.regions[1].state = RegionState::Blocked),
            ),
            (
                "a primary changed",
                next(&older, |c| {
                    let r = &mut c.regions[1];
                    std::mem::swap(&mut r.primary, &mut r.backups[0]);
                }),
            ),
            (
                "backups moved",
                next(&older, |c| c.regions[1].backups = vec![NodeId(4)]),
            ),
            (
                "a node set copying again",
                next(&older, |c| {
                    c.regions[1].copying = c.regions[1].backups.clone()
                }),
            ),
            (
                "a region gone",
                next(&older, |c| {
                    c.regions.pop();
                }),
            ),
        ];
        for (what, newer) in broken {
            assert!(!continues_through(&older, &newer), "{what}");
        }
    }

    #[test]
    fn a_break_forgets_the_copies_complete_before_it() {
        let ledger = CopyLedger::default();
        let older = copying();
        let counted = next(&older, |c| c.regions[0].copying.clear());
        ledger.note_adopted(&older, &counted);
        ledger.record(RegionId(1), counted.id);
        assert_eq!(ledger.complete(), vec![RegionId(1)]);
        let activated = next(&counted, |c| c.regions[2].state = RegionState::Active);
        ledger.note_adopted(&counted, &activated);
        assert!(ledger.holds(RegionId(1)), "nothing broke it");
        let removal = next(&activated, |c| c.clients.clear());
        ledger.note_adopted(&activated, &removal);
        assert!(ledger.complete().is_empty(), "a member removed since");
        assert!(!ledger.holds(RegionId(1)), "copied again");
        assert!(ledger.unbroken_since(removal.id));
        assert!(!ledger.unbroken_since(activated.id));
    }
}
