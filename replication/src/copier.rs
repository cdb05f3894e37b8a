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
//! 3. It paces itself to [`COPY_BYTES_PER_SECOND`] of blocks read (or what
//!    [`COPY_RATE_VARIABLE`] says), sleeping between blocks, so that foreground transactions
//!    keep most of the primary's time and the fabric.
//! 4. Done, it records the region as copied ([`crate::ReplicaNode::copied_regions`]); the node
//!    reports it to the CM, which installs a configuration that counts the copy complete.
//!
//! A copy that fails part-way (the primary unreachable, the configuration changed under it) is
//! started again from the first block at the next look: what it installed stays, and installs
//! only move versions forward.

use crate::backup::Backup;
use crate::worker::RecoveredRegions;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::object;
use acre_engine::region::AccessKey;
use acre_engine::slab::{self, BLOCK_HEADER_BYTES};
use acre_txn::TxnNode;
use acre_txn::config::{Configuration, RegionState};
use acre_txn::record::{Body, TxnId, TxnRecord};
use acre_txn::reply::Code;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often an idle copier looks for copies to make.
pub const COPIER_IDLE: Duration = Duration::from_millis(100);
/// The pace of a copy: bytes of blocks read per second, at most, unless the node process's
/// environment sets [`COPY_RATE_VARIABLE`].
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
    pub fn spawn(
        node: Arc<TxnNode>,
        backup: Arc<Backup>,
        copied: RecoveredRegions,
        progress: Arc<CopyProgress>,
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
                        rate: copy_rate(),
                        node,
                        backup,
                        copied,
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
    /// Bytes per second, at most.
    rate: u64,
    node: Arc<TxnNode>,
    backup: Arc<Backup>,
    copied: RecoveredRegions,
    progress: Arc<CopyProgress>,
    shared: Arc<Shared>,
}

impl Copying {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
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
                let copied = self.copied.lock().expect(crate::POISONED).clone();
                config
                    .regions
                    .iter()
                    .filter(|p| p.copying.contains(&me) && p.state == RegionState::Active)
                    .filter(|p| !copied.iter().any(|(region, _)| *region == p.region))
                    .map(|p| p.region)
                    .collect()
            } else {
                Vec::new()
            };
            for region in todo {
                let started = Instant::now();
                match self.copy_region(&config, region) {
                    Ok(bytes) => {
                        self.copied
                            .lock()
                            .expect(crate::POISONED)
                            .push((region, config.id));
                        let seconds = started.elapsed().as_secs_f64();
                        tracing::info!(
                            node = %me,
                            "copied {region} from its primary: {} MiB in {seconds:.2} s \
                             ({:.0} MiB/s); the CM counts the copy complete next",
                            bytes >> 20,
                            (bytes >> 20) as f64 / seconds.max(1e-9)
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
        }
    }

    /// Copies `region` from its primary in `config` (module docs); returns the bytes read.
    fn copy_region(&self, config: &Configuration, region: RegionId) -> Result<u64, String> {
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
        for block in 0..blocks {
            if self.stopped() {
                return Err("the node stops".into());
            }
            if self.node.config_id() != config.id {
                return Err(format!(
                    "the configuration changed from {} to {}",
                    config.id,
                    self.node.config_id()
                ));
            }
            let offset = u32::try_from(block * block_bytes).expect("regions are under 4 GiB");
            self.copy_block(primary, key, region, offset, block_bytes)?;
            read_bytes += block_bytes;
            self.progress.set(region, block + 1, blocks);
            // Pace: no faster than the rate on average.
            let due = Duration::from_secs_f64(read_bytes as f64 / self.rate as f64);
            if let Some(early) = due.checked_sub(started.elapsed())
                && self.sleep(early)
            {
                return Err("the node stops".into());
            }
        }
        Ok(read_bytes)
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
        let Some(slot_bytes) = slab::block_slot_bytes(&header, block_bytes) else {
            return Ok(()); // unclaimed
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
        Ok(())
    }

    /// The slot at `addr`, read again until it is unlocked and whole.
    fn read_settled(
        &self,
        primary: NodeId,
        addr: Addr,
        key: AccessKey,
        slot_bytes: usize,
    ) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + SLOT_SETTLE_MAX;
        loop {
            let slot = self.read(primary, addr, key, slot_bytes as u64)?;
            if object::decode(&slot).is_ok() {
                return Ok(slot);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{addr} stayed locked or torn at {primary} for {SLOT_SETTLE_MAX:?}"
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
        self.node
            .fabric()
            .read(primary, addr, key, len)
            .map_err(|e| format!("reading {addr} at {primary}: {e}"))
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
