//! The primary's side of the commit protocol: what a node does with the LOCK, VALIDATE,
//! COMMIT-PRIMARY and ABORT records of transactions that write its primary regions, and the
//! allocator of those regions (docs/protocol.md#lock, #commit-primary, #abort, #validate).
//!
//! - LOCK: lock every written object by CAS at the version the transaction read; on the first
//!   failure unlock the ones locked so far and vote no. A reserved slot (an allocation) is
//!   locked while still free, at the version the reservation saw.
//! - COMMIT-PRIMARY: install the new payloads (a free installs an empty, unallocated object and
//!   puts the slot back on the free list), which also advances versions and unlocks.
//! - ABORT: unlock what LOCK locked and hand back the transaction's reserved slots.
//! - VALIDATE (by message, for more than `t_r` objects): versions unchanged and unlocked.

use crate::POISONED;
use crate::record::{Entry, EntryKind, TxnId};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::hash::FastMap;
use acre_engine::object::{self, Header};
use acre_engine::region::Region;
use acre_engine::slab::{AllocError, BlockRead, Reserved, SlabAllocator};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

struct PrimaryRegion {
    region: Arc<Region>,
    slab: Mutex<SlabAllocator>,
}

impl PrimaryRegion {
    fn new(region: Arc<Region>, slab: SlabAllocator) -> Arc<PrimaryRegion> {
        assert_eq!(region.id(), slab.region(), "allocator of another region");
        Arc::new(PrimaryRegion {
            region,
            slab: Mutex::new(slab),
        })
    }
}

/// Blocks of recovering allocators read by [`Primary::read_unscanned_blocks`], to be finished
/// by [`Primary::finish_block_reads`].
pub struct BlockReads {
    reads: Vec<(Arc<PrimaryRegion>, BlockRead)>,
}

impl BlockReads {
    /// How many blocks were read.
    pub fn len(&self) -> usize {
        self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }
}

/// A transaction that has sent LOCK here and not yet COMMIT-PRIMARY or ABORT.
struct Held {
    entries: Vec<Entry>,
    /// This primary locked every entry (message mode).
    locked: bool,
    /// Its coordinator locks by compare-and-swap (one-sided mode): this primary only noted
    /// the LOCK record, and does not know which locks took.
    one_sided: bool,
    /// Noted from the log of an earlier run by a node restarted from its files: the slots its
    /// entries name are not in the allocator (rebuilt from the allocated bits once recovery
    /// settles the transaction), so neither an abort nor an install gives any back to it.
    replayed: bool,
    /// Its COMMIT-PRIMARY was read again too (one-sided mode): its coordinator may still be
    /// installing ([`Primary::is_installing`]).
    commit_replayed: bool,
}

/// The primary regions of one node and the transactions holding locks in them.
pub struct Primary {
    /// Grows when a configuration creates a region with its primary here.
    regions: RwLock<FastMap<RegionId, Arc<PrimaryRegion>>>,
    held: Mutex<FastMap<TxnId, Held>>,
    /// Slots reserved here by other nodes' ALLOC requests, per transaction, until its LOCK,
    /// ABORT or RELEASE says what becomes of them. A coordinator whose ALLOC timed out does
    /// not know its slot: the transaction's LOCK or ABORT hands back the ones it does not use.
    allocated_for: Mutex<FastMap<TxnId, Vec<Addr>>>,
    /// One-sided transactions whose COMMIT-PRIMARY was read and whose coordinator's install
    /// has not landed everywhere here yet, with their LOCK's entries.
    installing: Mutex<FastMap<TxnId, Vec<Entry>>>,
    /// Set when an allocator with blocks to scan joins; cleared when none has any left.
    allocators_recovering: AtomicBool,
}

/// Why COMMIT-PRIMARY could not be applied: a coordinator bug or a lost LOCK.
#[derive(Debug, thiserror::Error)]
#[error("COMMIT-PRIMARY of {txn} without a successful LOCK here")]
pub struct UnknownCommit {
    pub txn: TxnId,
}

impl Primary {
    pub fn new(regions: Vec<(Arc<Region>, SlabAllocator)>) -> Primary {
        Primary {
            regions: RwLock::new(
                regions
                    .into_iter()
                    .map(|(region, slab)| (region.id(), PrimaryRegion::new(region, slab)))
                    .collect(),
            ),
            held: Mutex::new(FastMap::default()),
            allocated_for: Mutex::new(FastMap::default()),
            installing: Mutex::new(FastMap::default()),
            allocators_recovering: AtomicBool::new(true),
        }
    }

    /// Becomes the primary of a new, empty region (a configuration created it here).
    pub fn add_region(&self, region: Arc<Region>, slab: SlabAllocator) {
        let id = region.id();
        let recovering = slab.unscanned_block_count() > 0;
        let previous = self
            .regions
            .write()
            .expect(POISONED)
            .insert(id, PrimaryRegion::new(region, slab));
        assert!(
            previous.is_none(),
            "{id} added twice to the primary regions"
        );
        // After the insert: a look at the flag meanwhile must not clear it for good.
        if recovering {
            self.allocators_recovering.store(true, Ordering::Release);
        }
    }

    /// Replaces the allocator of primary region `id` by `slab`, rebuilt from its allocated
    /// bits once its transactions are recovered (a node restarted from its files serves its
    /// regions with allocators rebuilt then, not from the copy as it found it:
    /// docs/failures.md#whole-cluster-restart). Returns false if `id` is not a primary region
    /// here.
    pub fn replace_slab(&self, id: RegionId, slab: SlabAllocator) -> bool {
        let recovering = slab.unscanned_block_count() > 0;
        match self.region_state(id) {
            Some(state) => {
                *state.slab.lock().expect(POISONED) = slab;
                if recovering {
                    self.allocators_recovering.store(true, Ordering::Release);
                }
                true
            }
            None => false,
        }
    }

    fn region_state(&self, id: RegionId) -> Option<Arc<PrimaryRegion>> {
        self.regions.read().expect(POISONED).get(&id).cloned()
    }

    pub fn region_ids(&self) -> Vec<RegionId> {
        let mut ids: Vec<RegionId> = self
            .regions
            .read()
            .expect(POISONED)
            .keys()
            .copied()
            .collect();
        ids.sort();
        ids
    }

    pub fn region(&self, id: RegionId) -> Option<Arc<Region>> {
        self.region_state(id).map(|r| r.region.clone())
    }

    /// The slots the allocator of region `id` counts as taken (allocated or reserved), in
    /// address order; `None` if this node is not its primary. O(slots): for checks, such as a
    /// test's that every freed object went back to the allocator once the cluster is quiet. An
    /// allocator still recovering counts every slot of a block not read yet
    /// ([`Primary::unscanned_blocks`]).
    pub fn allocated_addrs(&self, id: RegionId) -> Option<Vec<Addr>> {
        let primary = self.region_state(id)?;
        Some(primary.slab.lock().expect(POISONED).allocated_addrs())
    }

    /// Whether the allocator of some primary region here still has blocks to scan
    /// (docs/failures.md#allocator-recovery). Cheap when none has.
    pub fn recovering_allocators(&self) -> bool {
        if !self.allocators_recovering.load(Ordering::Acquire) {
            return false;
        }
        let regions = self.regions.read().expect(POISONED);
        let recovering = regions
            .values()
            .any(|primary| primary.slab.lock().expect(POISONED).unscanned_block_count() > 0);
        if !recovering {
            self.allocators_recovering.store(false, Ordering::Release);
        }
        recovering
    }

    /// Blocks the allocator of region `id` has still to scan (0 if not a primary region here).
    pub fn unscanned_blocks(&self, id: RegionId) -> usize {
        self.region_state(id).map_or(0, |primary| {
            primary.slab.lock().expect(POISONED).unscanned_block_count()
        })
    }

    /// Reads the slots of the next unscanned block of each recovering allocator. The caller
    /// handles every record already in its rings and then hands the reads to
    /// [`Primary::finish_block_reads`]: a free whose install a read saw is then known here (its
    /// COMMIT-PRIMARY was in the ring before the install landed) unless its slot came back
    /// already.
    pub fn read_unscanned_blocks(&self) -> BlockReads {
        let regions: Vec<Arc<PrimaryRegion>> = self
            .regions
            .read()
            .expect(POISONED)
            .values()
            .cloned()
            .collect();
        let reads = regions
            .into_iter()
            .filter_map(|primary| {
                let read = primary
                    .slab
                    .lock()
                    .expect(POISONED)
                    .read_next_block(&primary.region)?;
                Some((primary, read))
            })
            .collect();
        BlockReads { reads }
    }

    /// Makes the blocks of `reads` scanned, each with the frees under way here then; returns
    /// the regions whose allocator has no block left to scan now.
    pub fn finish_block_reads(&self, reads: BlockReads) -> Vec<RegionId> {
        let mut recovered = Vec::new();
        for (primary, read) in reads.reads {
            let id = primary.region.id();
            let pending = self.pending_frees(id);
            let mut slab = primary.slab.lock().expect(POISONED);
            // A read of an allocator replaced since (rebuilt again) is dropped.
            if slab.next_unscanned_block() != Some(read.block_index()) {
                continue;
            }
            slab.finish_block(&primary.region, read, &pending);
            if slab.unscanned_block_count() == 0 {
                recovered.push(id);
            }
        }
        recovered
    }

    /// The frees in region `id` of the transactions this primary knows and whose slots have not
    /// come back: `(slot, version its free installs)`. A transaction read again at a restart
    /// gives no slot back (its allocator was rebuilt after it): not counted.
    fn pending_frees(&self, id: RegionId) -> Vec<(Addr, u64)> {
        let frees = |entries: &[Entry]| -> Vec<(Addr, u64)> {
            entries
                .iter()
                .filter(|e| e.kind == EntryKind::Free && e.addr.region() == id)
                .map(|e| (e.addr, e.version + 1))
                .collect()
        };
        let mut pending: Vec<(Addr, u64)> = Vec::new();
        for held in self.held.lock().expect(POISONED).values() {
            if !held.replayed {
                pending.extend(frees(&held.entries));
            }
        }
        for entries in self.installing.lock().expect(POISONED).values() {
            pending.extend(frees(entries));
        }
        pending
    }

    /// Transactions holding locks (or installing them, in one-sided mode), or slots reserved
    /// by their ALLOC requests, here.
    pub fn held_count(&self) -> usize {
        let allocating = self.allocated_for.lock().expect(POISONED).len();
        let installing = self.installing.lock().expect(POISONED).len();
        self.held.lock().expect(POISONED).len() + allocating + installing
    }

    /// Runs `f` on the words of the slot at `addr` (which must be an object slot here). The
    /// allocator is not locked while `f` runs.
    fn with_slot<T>(
        &self,
        addr: Addr,
        f: impl FnOnce(&[AtomicU64], &PrimaryRegion) -> T,
    ) -> Option<T> {
        let primary = self.region_state(addr.region())?;
        let words = primary
            .slab
            .lock()
            .expect(POISONED)
            .slot_words(&primary.region, addr)
            .ok()?;
        Some(f(words, &primary))
    }

    /// A slot reserved here by `txn`'s ALLOC request.
    pub fn track_allocation(&self, txn: TxnId, addr: Addr) {
        self.allocated_for
            .lock()
            .expect(POISONED)
            .entry(txn)
            .or_default()
            .push(addr);
    }

    /// The transactions of coordinator `node` whose ALLOC requests reserved slots here.
    pub fn allocating(&self, node: NodeId) -> Vec<TxnId> {
        self.allocated_for
            .lock()
            .expect(POISONED)
            .keys()
            .filter(|txn| txn.node == node)
            .copied()
            .collect()
    }

    /// Hands back the slots `txn`'s ALLOC requests reserved here that `used` does not name:
    /// the coordinator did not learn of them (a reply lost) or no longer needs them.
    fn release_unused_allocations(&self, txn: TxnId, used: &[Addr]) {
        let tracked = self.allocated_for.lock().expect(POISONED).remove(&txn);
        let unused: Vec<Addr> = tracked
            .unwrap_or_default()
            .into_iter()
            .filter(|addr| !used.contains(addr))
            .collect();
        self.release(&unused);
    }

    /// Hands back the slots `txn`'s ALLOC requests reserved here that its LOCK's `entries` do
    /// not install: execution is over, so it will not.
    fn release_allocations_not_in(&self, txn: TxnId, entries: &[Entry]) {
        let installs: Vec<Addr> = entries
            .iter()
            .filter(|entry| entry.kind == EntryKind::Alloc)
            .map(|entry| entry.addr)
            .collect();
        self.release_unused_allocations(txn, &installs);
    }

    /// LOCK: locks every entry's object at its version, all or nothing. Returns the vote.
    /// Slots `txn` reserved here and does not install are handed back: execution is over.
    pub fn lock(&self, txn: TxnId, entries: Vec<Entry>) -> bool {
        assert!(!entries.is_empty(), "{txn}: a LOCK without entries");
        self.release_allocations_not_in(txn, &entries);
        let mut locked_count = 0;
        for entry in &entries {
            let locked = self
                .with_slot(entry.addr, |words, _| match entry.kind {
                    EntryKind::Write | EntryKind::Free => {
                        object::try_lock(words, entry.version, txn.owner()).is_ok()
                    }
                    EntryKind::Alloc => {
                        object::try_lock_unallocated(words, entry.version, txn.owner()).is_ok()
                    }
                })
                .unwrap_or(false);
            if !locked {
                break;
            }
            locked_count += 1;
        }
        let all = locked_count == entries.len();
        if !all {
            for entry in &entries[..locked_count] {
                self.with_slot(entry.addr, |words, _| object::unlock(words))
                    .expect("a slot locked a moment ago is still a slot");
            }
        }
        let previous = self.held.lock().expect(POISONED).insert(
            txn,
            Held {
                entries,
                locked: all,
                one_sided: false,
                replayed: false,
                commit_replayed: false,
            },
        );
        assert!(previous.is_none(), "{txn} sent LOCK twice to one primary");
        all
    }

    /// A LOCK record of a coordinator in one-sided mode, which locks the objects itself
    /// (docs/protocol.md#one-sided-commit-mode): noted for its COMMIT-PRIMARY (the slots a free
    /// gives back) and for the settlement of a dead coordinator. Slots `txn` reserved here and
    /// does not install are handed back, as in [`Primary::lock`].
    pub fn note_lock(&self, txn: TxnId, entries: Vec<Entry>) {
        assert!(!entries.is_empty(), "{txn}: a LOCK without entries");
        self.release_allocations_not_in(txn, &entries);
        let held = Held {
            entries,
            locked: false,
            one_sided: true,
            replayed: false,
            commit_replayed: false,
        };
        let previous = self.held.lock().expect(POISONED).insert(txn, held);
        assert!(previous.is_none(), "{txn} sent LOCK twice to one primary");
    }

    /// A LOCK record of an earlier run, read again by a node restarted from its files
    /// (docs/failures.md#whole-cluster-restart): noted as a one-sided coordinator's is, settled
    /// by the lock words ([`Primary::install_orphan`], [`Primary::abort_orphan`]), and never
    /// giving a slot back to the allocator, which knows nothing of that run's reservations and
    /// is rebuilt before the region serves.
    pub fn note_replayed_lock(&self, txn: TxnId, entries: Vec<Entry>) {
        assert!(!entries.is_empty(), "{txn}: a LOCK without entries");
        let held = Held {
            entries,
            locked: false,
            one_sided: true,
            replayed: true,
            commit_replayed: false,
        };
        let previous = self.held.lock().expect(POISONED).insert(txn, held);
        assert!(previous.is_none(), "{txn} sent LOCK twice to one primary");
    }

    /// A COMMIT-PRIMARY record of a one-sided coordinator, which installs the objects itself
    /// once the record is durable: the transaction is kept as installing until every object is
    /// installed ([`Primary::observe_installs`]), for the slots its frees give back, and for a
    /// coordinator that dies before its install (the settlement installs then,
    /// [`Primary::install_orphan`]).
    pub fn note_commit(&self, txn: TxnId) {
        let held = self.held.lock().expect(POISONED).remove(&txn);
        let Some(held) = held else {
            tracing::warn!("COMMIT-PRIMARY of {txn} without its LOCK here");
            return;
        };
        assert!(held.one_sided, "{txn}: noted a commit of message mode");
        self.installing
            .lock()
            .expect(POISONED)
            .insert(txn, held.entries);
        self.observe_installs();
    }

    /// Forgets the one-sided transactions whose install has landed everywhere here (no object
    /// still locked by them), putting the slots they freed back on their free lists. Cheap when
    /// there are none; the worker calls it every turn.
    pub fn observe_installs(&self) {
        let mut installing = self.installing.lock().expect(POISONED);
        if installing.is_empty() {
            return;
        }
        let done: Vec<TxnId> = installing
            .iter()
            .filter(|(txn, entries)| entries.iter().all(|e| !self.owned_by(e.addr, **txn)))
            .map(|(txn, _)| *txn)
            .collect();
        for txn in done {
            let entries = installing.remove(&txn).expect("listed just above");
            self.release_freed(txn, &entries);
        }
    }

    /// Whether this primary noted `txn`'s COMMIT-PRIMARY from a one-sided coordinator and has not
    /// yet seen its install land: noted now, or read again at a restart with some object here
    /// still locked by it.
    pub fn is_installing(&self, txn: TxnId) -> bool {
        if self.installing.lock().expect(POISONED).contains_key(&txn) {
            return true;
        }
        let held = self.held.lock().expect(POISONED);
        held.get(&txn).is_some_and(|held| {
            held.commit_replayed && held.entries.iter().any(|e| self.owned_by(e.addr, txn))
        })
    }

    /// Whether some object of `region` is still locked by `txn`, whose install here is its
    /// coordinator's ([`Primary::is_installing`]).
    pub fn is_installing_in(&self, txn: TxnId, region: RegionId) -> bool {
        let in_region = |entries: &[Entry]| {
            (entries.iter()).any(|e| e.addr.region() == region && self.owned_by(e.addr, txn))
        };
        if let Some(entries) = self.installing.lock().expect(POISONED).get(&txn) {
            return in_region(entries);
        }
        let held = self.held.lock().expect(POISONED);
        held.get(&txn)
            .is_some_and(|held| held.commit_replayed && in_region(&held.entries))
    }

    /// A COMMIT-PRIMARY of a one-sided coordinator read again at a restart, after its LOCK
    /// ([`Primary::note_replayed_lock`]): the coordinator may be installing still.
    pub fn note_replayed_commit(&self, txn: TxnId) {
        match self.held.lock().expect(POISONED).get_mut(&txn) {
            Some(held) if held.replayed => held.commit_replayed = true,
            _ => tracing::warn!("COMMIT-PRIMARY of {txn} read again without its LOCK"),
        }
    }

    /// Whether `txn` holds the lock of the object at `addr`.
    fn owned_by(&self, addr: Addr, txn: TxnId) -> bool {
        self.with_slot(addr, |words, _| {
            object::load_header(words).owner() == Some(txn.owner())
        })
        .unwrap_or(false)
    }

    /// Puts the slots `txn` freed (installed: unallocated at the version after the one read)
    /// back on their free lists.
    fn release_freed(&self, txn: TxnId, entries: &[Entry]) {
        for entry in entries.iter().filter(|e| e.kind == EntryKind::Free) {
            let header = self.with_slot(entry.addr, |words, _| object::load_header(words));
            match header {
                Some(h) if !h.is_locked() && !h.is_allocated() && h.version() > entry.version => {
                    self.release(&[entry.addr]);
                }
                other => tracing::error!(
                    "{txn} freed {} but its slot is {other:?}: not put back on the free list",
                    entry.addr
                ),
            }
        }
    }

    /// Aborts `txn` for its dead one-sided coordinator, which may have locked some objects by
    /// compare-and-swap before it died: unlocks those whose lock names `txn` (nobody else's),
    /// and hands back its reservations.
    pub fn abort_orphan(&self, txn: TxnId) {
        let entries = match self.held.lock().expect(POISONED).get(&txn) {
            Some(held) if held.one_sided => held.entries.clone(),
            _ => Vec::new(),
        };
        for entry in &entries {
            self.with_slot(entry.addr, |words, _| {
                object::unlock_if_owner(words, txn.owner())
            });
        }
        self.abort(txn);
    }

    /// Whether this primary knows `txn` only from its LOCK record, not from locking for it: a
    /// one-sided coordinator's (or any coordinator's, read again by a node restarted from its
    /// files), whose locks name it or not. [`Primary::install_orphan`] and
    /// [`Primary::abort_orphan`] settle it by what the lock words say.
    pub fn noted(&self, txn: TxnId) -> bool {
        self.held
            .lock()
            .expect(POISONED)
            .get(&txn)
            .is_some_and(|held| held.one_sided)
            || self.installing.lock().expect(POISONED).contains_key(&txn)
    }

    /// Installs what `txn`'s dead one-sided coordinator committed (some COMMIT-BACKUP exists,
    /// so every compare-and-swap of it took) and did not install: the objects still locked by
    /// it, from its LOCK's entries. Returns whether this primary knew the transaction.
    pub fn install_orphan(&self, txn: TxnId) -> bool {
        let noted = self.held.lock().expect(POISONED).remove(&txn);
        let replayed = noted.as_ref().is_some_and(|held| held.replayed);
        let entries = match noted {
            Some(held) if held.one_sided => held.entries,
            Some(held) => {
                // Locked here (message mode): not this function's to install.
                tracing::error!("{txn}: an install by lock words of a transaction locked here");
                self.held.lock().expect(POISONED).insert(txn, held);
                return false;
            }
            None => match self.installing.lock().expect(POISONED).remove(&txn) {
                Some(entries) => entries,
                None => return false,
            },
        };
        for entry in &entries {
            self.with_slot(entry.addr, |words, primary| {
                if object::load_header(words).owner() != Some(txn.owner()) {
                    return; // installed by its coordinator before it died
                }
                // Its coordinator's install may have stopped part-way (the trailer written):
                // install at the version after the one read, not after the trailer's.
                let allocated = entry.kind != EntryKind::Free;
                let installed =
                    object::install_at(words, &entry.payload, allocated, entry.version + 1);
                persist_slot(&primary.region, entry.addr, words.len());
                if let Some(trailer) = installed.damaged_trailer {
                    tracing::error!(
                        addr = %entry.addr,
                        "{txn}: the object's trailer said v{trailer}, which no install of v{} \
                         leaves (damaged while its node was down?); the install rewrote the \
                         whole slot",
                        entry.version + 1
                    );
                }
            });
        }
        if !replayed {
            self.release_freed(txn, &entries);
        }
        true
    }

    /// Whether this primary holds anything of `txn`'s LOCK (locked here, refused here, or
    /// noted).
    pub fn holds(&self, txn: TxnId) -> bool {
        self.held.lock().expect(POISONED).contains_key(&txn)
    }

    /// Whether this primary locked `txn`'s objects itself (message mode, or a coordinator on
    /// this node locking its own regions in either mode).
    pub fn locked_here(&self, txn: TxnId) -> bool {
        self.held
            .lock()
            .expect(POISONED)
            .get(&txn)
            .is_some_and(|held| held.locked)
    }

    /// The entries of `txn`'s LOCK here, if it holds its locks (what its COMMIT-PRIMARY would
    /// install).
    pub fn locked_entries(&self, txn: TxnId) -> Option<Vec<Entry>> {
        let held = self.held.lock().expect(POISONED);
        held.get(&txn)
            .filter(|held| held.locked || held.one_sided)
            .map(|held| held.entries.clone())
    }

    /// COMMIT-PRIMARY: installs the new values and unlocks.
    pub fn commit(&self, txn: TxnId) -> Result<(), UnknownCommit> {
        let held = self.held.lock().expect(POISONED).remove(&txn);
        let Some(held) = held.filter(|h| h.locked) else {
            return Err(UnknownCommit { txn });
        };
        for entry in held.entries {
            self.with_slot(entry.addr, |words, primary| {
                // A free in a block a recovering allocator has not read yet installs and gives
                // its slot back under the allocator's lock, so that the read sees neither or
                // both. (A block read stays read: only a restart's `replace_slab` makes a new
                // allocator, while the region is blocked and nothing frees.)
                let unscanned = (entry.kind == EntryKind::Free)
                    .then(|| primary.slab.lock().expect(POISONED))
                    .filter(|slab| !slab.is_scanned(entry.addr));
                let header =
                    object::install_with(words, &entry.payload, entry.kind != EntryKind::Free);
                assert!(
                    !header.is_locked(),
                    "{txn}: {} still locked after install",
                    entry.addr
                );
                assert_eq!(
                    header.version(),
                    entry.version + 1,
                    "{txn} installed {} at an unexpected version",
                    entry.addr
                );
                persist_slot(&primary.region, entry.addr, words.len());
                if entry.kind == EntryKind::Free {
                    let mut slab =
                        unscanned.unwrap_or_else(|| primary.slab.lock().expect(POISONED));
                    slab.release(&primary.region, entry.addr)
                        .expect("a slot whose free was just installed is free");
                }
            })
            .expect("a locked slot is a slot");
        }
        Ok(())
    }

    /// ABORT: unlocks what LOCK locked and gives back the transaction's reservations here
    /// (those its LOCK listed, and those its ALLOC requests made that it never learned of).
    pub fn abort(&self, txn: TxnId) {
        self.release_unused_allocations(txn, &[]);
        let held = self.held.lock().expect(POISONED).remove(&txn);
        let Some(held) = held else { return };
        for entry in &held.entries {
            if held.locked {
                self.with_slot(entry.addr, |words, _| object::unlock(words))
                    .expect("a locked slot is a slot");
            }
        }
        if held.replayed {
            return; // the allocator is rebuilt before the region serves
        }
        let reserved: Vec<Addr> = held
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Alloc)
            .map(|e| e.addr)
            .collect();
        self.release(&reserved);
    }

    /// VALIDATE: every object is unlocked at the version read.
    pub fn validate(&self, reads: &[(Addr, u64)]) -> bool {
        reads.iter().all(|&(addr, version)| {
            self.with_slot(addr, |words, _| {
                let header: Header = object::load_header(words);
                !header.is_locked() && header.version() == version
            })
            .unwrap_or(false)
        })
    }

    /// Reserves a slot for an allocation in `region` (near `near` if given).
    pub fn reserve(
        &self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Reserved, AllocError> {
        let primary = self.region_state(region).ok_or(AllocError::NotAnObject {
            addr: Addr::new(region, 0),
        })?;
        let mut slab = primary.slab.lock().expect(POISONED);
        match near {
            Some(near) => slab.reserve_near(&primary.region, len, near),
            None => slab.reserve(&primary.region, len),
        }
    }

    /// Publishes a block of `region` whose header is durable at every backup (see
    /// [`crate::alloc`]).
    pub fn publish(&self, region: RegionId, block_offset: u32) {
        let primary = self
            .region_state(region)
            .unwrap_or_else(|| panic!("published a block of {region}, not a primary region here"));
        primary.slab.lock().expect(POISONED).publish(block_offset);
    }

    /// RELEASE from `txn`: hands back slots it reserved and will not install.
    pub fn release_for(&self, txn: TxnId, addrs: &[Addr]) {
        let mut tracked = self.allocated_for.lock().expect(POISONED);
        if let Some(slots) = tracked.get_mut(&txn) {
            slots.retain(|addr| !addrs.contains(addr));
            if slots.is_empty() {
                tracked.remove(&txn);
            }
        }
        drop(tracked);
        self.release(addrs);
    }

    /// Hands back reserved slots that no transaction will install.
    pub fn release(&self, addrs: &[Addr]) {
        for &addr in addrs {
            let Some(primary) = self.region_state(addr.region()) else {
                continue;
            };
            if let Err(e) = primary
                .slab
                .lock()
                .expect(POISONED)
                .release(&primary.region, addr)
            {
                tracing::warn!("ignoring the release of {addr}: {e}");
            }
        }
    }
}

/// Makes an installed slot durable before its log records can be truncated.
pub fn persist_slot(region: &Region, addr: Addr, word_count: usize) {
    if let Err(e) = region
        .mapping()
        .persist(addr.offset() as usize, word_count * 8)
    {
        // The region is mapped memory: a failed msync means the medium is failing.
        panic!("persist of {addr} failed: {e}; stopping rather than acknowledging");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION_BYTES: u64 = 1 << 20;
    const BLOCK_BYTES: u64 = 64 << 10;

    /// A node restarted from its files reads again the LOCK of a transaction whose allocation
    /// the earlier run reserved and never installed; the allocator it starts with is rebuilt
    /// from the allocated bits, which know nothing of the reservation. Recovery aborts the
    /// transaction: the abort must give nothing back to that allocator (it used to, and the
    /// allocator's check that a released slot was handed out panicked the worker).
    #[test]
    fn a_replayed_lock_gives_no_slot_back_to_a_rebuilt_allocator() {
        let region = Arc::new(Region::anonymous(RegionId(1), REGION_BYTES).unwrap());
        let mut earlier = SlabAllocator::format(RegionId(1), REGION_BYTES, BLOCK_BYTES).unwrap();
        let _live = earlier.alloc(&region, 16).unwrap();
        let reserved = earlier.reserve(&region, 16).unwrap();
        let rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        let primary = Primary::new(vec![(region.clone(), rebuilt)]);
        let txn = TxnId {
            config: 1,
            node: NodeId(100),
            thread: 0,
            seq: 1,
        };
        let entry = Entry {
            addr: reserved.addr,
            version: reserved.version,
            kind: EntryKind::Alloc,
            payload: vec![0; 8],
        };
        primary.note_replayed_lock(txn, vec![entry]);
        primary.abort_orphan(txn);
        assert!(!primary.holds(txn));
        // The allocator serves on.
        assert!(primary.region(RegionId(1)).is_some());
    }

    /// A primary whose allocator of r1 is recovering (nothing read yet), over a region holding
    /// two objects, `kept` and `freed`, and a transaction of a client freeing `freed`, noted
    /// by `note` and installed by its coordinator: returns the primary, `kept`, `freed` and
    /// the transaction.
    fn a_free_installed_in_a_recovering_region(
        note: impl FnOnce(&Primary, TxnId, Vec<Entry>),
    ) -> (Primary, Addr, Addr, TxnId) {
        let region = Arc::new(Region::anonymous(RegionId(1), REGION_BYTES).unwrap());
        let mut earlier = SlabAllocator::format(RegionId(1), REGION_BYTES, BLOCK_BYTES).unwrap();
        // `freed` below `kept`: counted free by the read, it would be on the free list.
        let freed = earlier.alloc(&region, 16).unwrap();
        let kept = earlier.alloc(&region, 16).unwrap();
        let recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
        let primary = Primary::new(vec![(region.clone(), recovered)]);
        let txn = TxnId {
            config: 2,
            node: NodeId(100),
            thread: 0,
            seq: 1,
        };
        let words = earlier.slot_words(&region, freed).unwrap();
        let version = object::load_header(words).version();
        let entry = Entry {
            addr: freed,
            version,
            kind: EntryKind::Free,
            payload: Vec::new(),
        };
        note(&primary, txn, vec![entry]);
        // The coordinator locks by compare-and-swap and installs the free.
        object::try_lock(words, version, txn.owner()).unwrap();
        object::install_with(words, &[], false);
        (primary, kept, freed, txn)
    }

    /// A one-sided coordinator frees an object of a region whose allocator is recovering: its
    /// install lands before the allocator reads the object's block, and the primary puts the
    /// slot back only on a later turn, once it has seen the install. The read must not count
    /// the slot free as well, or the slot is handed out twice.
    #[test]
    fn a_free_installed_before_its_block_is_read_comes_back_once() {
        let (primary, kept, freed, txn) =
            a_free_installed_in_a_recovering_region(|primary, txn, entries| {
                primary.note_lock(txn, entries)
            });
        assert!(primary.recovering_allocators());
        let reads = primary.read_unscanned_blocks();
        assert_eq!(reads.len(), 1);
        assert_eq!(primary.finish_block_reads(reads), vec![RegionId(1)]);
        assert!(!primary.recovering_allocators());
        // The COMMIT-PRIMARY comes next; the install has landed, so the slot comes back.
        primary.note_commit(txn);
        assert_eq!(primary.allocated_addrs(RegionId(1)), Some(vec![kept]));
        let mut handed_out = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let reserved = primary.reserve(RegionId(1), 16, None).unwrap();
            if let Some((offset, _)) = reserved.claimed_block {
                primary.publish(RegionId(1), offset);
            }
            assert!(
                handed_out.insert(reserved.addr),
                "{} handed out twice",
                reserved.addr
            );
            assert_ne!(reserved.addr, kept);
        }
        assert!(handed_out.contains(&freed));
    }

    /// A transaction read again at a restart, whose coordinator installed its free: the slot
    /// never comes back from it (its allocator is rebuilt after it), so the read of its block
    /// must count it free rather than wait for it.
    #[test]
    fn a_replayed_free_does_not_withhold_its_slot() {
        let (primary, kept, _, _) =
            a_free_installed_in_a_recovering_region(|primary, txn, entries| {
                primary.note_replayed_lock(txn, entries)
            });
        let reads = primary.read_unscanned_blocks();
        primary.finish_block_reads(reads);
        assert_eq!(primary.allocated_addrs(RegionId(1)), Some(vec![kept]));
    }
}
