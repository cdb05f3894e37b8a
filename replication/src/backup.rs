//! Backups in the steady state: a backup keeps the COMMIT-BACKUP records of committed
//! transactions (they are durable in its log) and applies their new values to its copies of
//! the regions when the coordinator truncates them (docs/protocol.md#truncate). No backup CPU is on
//! the commit path.
//!
//! Truncations of different coordinators may arrive in any order, so an update is installed
//! only when it is newer than what the copy holds: versions only grow, and a write replaces
//! the whole object, so skipping an older update leaves the copy as the primary has it.

use acre_engine::addr::{Addr, RegionId};
use acre_engine::hash::FastMap;
use acre_engine::object;
use acre_engine::region::Region;
use acre_engine::slab::{self, BLOCK_HEADER_BYTES};
use acre_txn::primary::persist_slot;
use acre_txn::record::{Entry, EntryKind, TxnId};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

/// Why a committed update could not be applied to a backup copy (the configuration the
/// coordinator used and this node's disagree, or the block was never replicated here). The
/// transaction stays held and the caller keeps its records: the update must not be lost.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error(
        "this node holds no backup copy of {region} for {addr}: the coordinator's \
         configuration and this node's disagree"
    )]
    NoCopy { region: RegionId, addr: Addr },
    #[error("the backup copy has no block header for {addr}: the block was never replicated here")]
    NoBlockHeader { addr: Addr },
    #[error("{addr} is not a slot of its block (slots of {slot_bytes} bytes)")]
    NotASlot { addr: Addr, slot_bytes: u64 },
}

/// What applying one entry did.
enum Installed {
    Yes,
    /// The copy already holds this version or a newer one.
    Older,
    /// The copy is being filled and has not received the entry's block yet.
    Uncopied,
}

/// One node's backup copies and the committed transactions waiting to be applied to them.
pub struct Backup {
    copies: RwLock<FastMap<RegionId, BackupCopy>>,
    block_bytes: u64,
    held: Mutex<FastMap<TxnId, Vec<Entry>>>,
}

/// One backup copy of a region.
#[derive(Clone)]
struct BackupCopy {
    region: Arc<Region>,
    /// The copy is still being filled from the primary (data recovery): an update of a block
    /// whose header the copy does not hold yet is skipped, since the copy of that block brings
    /// it. That holds because an object stays locked at the primary until the update is
    /// installed there, and the copy of a block must take each object unlocked (waiting out a
    /// lock), and read it only after the block's header is here, so it is taken after the
    /// install (docs/failures.md#data-recovery: requirements on the copy).
    copying: bool,
    /// Held while a slot of this copy is written: by the worker applying a transaction, and by
    /// data recovery installing what it copied, so that each install's version check and
    /// write happen together.
    writing: Arc<Mutex<()>>,
}

/// What applying one transaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub installed: usize,
    /// Updates older than the copy's version (a later transaction was applied first).
    pub skipped: usize,
    /// Updates of blocks a copy still being filled has not received yet.
    pub uncopied: usize,
}

/// What [`Backup::empty_held_back_block`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldBackBlock {
    /// The block was not held back: nothing to do.
    NotHeldBack,
    /// It was, and is empty now (or claimed by a header that came meanwhile, over empty slots).
    Emptied,
    /// A claim's header reached it first: its slots are still held back, so the copier copies
    /// it as a claimed block.
    Claimed,
}

impl Backup {
    pub fn new(regions: Vec<Arc<Region>>, block_bytes: u64) -> Backup {
        Backup {
            copies: RwLock::new(
                regions
                    .into_iter()
                    .map(|region| {
                        let copy = BackupCopy {
                            region,
                            copying: false,
                            writing: Arc::default(),
                        };
                        (copy.region.id(), copy)
                    })
                    .collect(),
            ),
            block_bytes,
            held: Mutex::new(FastMap::default()),
        }
    }

    /// This node's backup copy of `id`, if it holds one.
    pub fn region(&self, id: RegionId) -> Option<Arc<Region>> {
        self.copies
            .read()
            .expect(crate::POISONED)
            .get(&id)
            .map(|copy| copy.region.clone())
    }

    /// Starts backing up a region this node holds no copy of (a configuration made it a new
    /// backup): `copying` while the copy is being filled from the primary.
    pub fn add(&self, region: Arc<Region>, copying: bool) {
        let mut copies = self.copies.write().expect(crate::POISONED);
        let id = region.id();
        let previous = copies.insert(
            id,
            BackupCopy {
                region,
                copying,
                writing: Arc::default(),
            },
        );
        assert!(previous.is_none(), "{id} added twice to the backup copies");
    }

    /// Whether the copy of `id` is still being filled (`None`: no copy).
    pub fn is_copying(&self, id: RegionId) -> Option<bool> {
        self.copies
            .read()
            .expect(crate::POISONED)
            .get(&id)
            .map(|copy| copy.copying)
    }

    /// The copy of `id` is complete (data recovery finished it), or not.
    pub fn set_copying(&self, id: RegionId, copying: bool) {
        if let Some(copy) = self.copies.write().expect(crate::POISONED).get_mut(&id) {
            copy.copying = copying;
        }
    }

    /// Committed transactions not applied yet.
    pub fn held_count(&self) -> usize {
        self.held.lock().expect(crate::POISONED).len()
    }

    /// COMMIT-BACKUP: keeps the transaction's entries for this node's copies until truncation.
    /// A coordinator that finishes its commit (docs/protocol.md#unfinished-commits) may send the
    /// same COMMIT-BACKUP again when the first append failed but landed.
    pub fn hold(&self, txn: TxnId, entries: Vec<Entry>) {
        let mut held = self.held.lock().expect(crate::POISONED);
        if let Some(previous) = held.get(&txn) {
            assert!(
                *previous == entries,
                "{txn} sent two different COMMIT-BACKUPs to one backup"
            );
            return;
        }
        held.insert(txn, entries);
    }

    /// A copy of part of `txn`'s COMMIT-BACKUP, sent by the primary of the regions of `entries`
    /// because the coordinator died before this backup got it (docs/failures.md#a-client-that-dies):
    /// keeps the entries of the regions this backup holds nothing of yet (a part may come
    /// twice). Returns whether it kept any.
    pub fn hold_part(&self, txn: TxnId, entries: Vec<Entry>) -> bool {
        // Only the regions this node backs up (a region whose primary moved here is served,
        // and its transactions installed, before it leaves the backup copies).
        let entries: Vec<Entry> = {
            let copies = self.copies.read().expect(crate::POISONED);
            entries
                .into_iter()
                .filter(|e| copies.contains_key(&e.addr.region()))
                .collect()
        };
        let mut held = self.held.lock().expect(crate::POISONED);
        let have: Vec<RegionId> = held
            .get(&txn)
            .map(|entries| entries.iter().map(|e| e.addr.region()).collect())
            .unwrap_or_default();
        let new: Vec<Entry> = entries
            .into_iter()
            .filter(|e| !have.contains(&e.addr.region()))
            .collect();
        if new.is_empty() {
            return false;
        }
        held.entry(txn).or_default().extend(new);
        true
    }

    /// Stops backing up `id` (its primary moved here: transaction recovery hands the copy to
    /// the node's primary regions) and returns the copy.
    pub fn remove(&self, id: RegionId) -> Option<Arc<Region>> {
        self.copies
            .write()
            .expect(crate::POISONED)
            .remove(&id)
            .map(|copy| copy.region)
    }

    /// The entries of `txn`'s COMMIT-BACKUP held here, if any (what recovery copies to a
    /// replica that lacks them).
    pub fn held_entries(&self, txn: TxnId) -> Option<Vec<Entry>> {
        self.held.lock().expect(crate::POISONED).get(&txn).cloned()
    }

    /// Whether `txn`'s entries held here (not applied yet) include some of `region`.
    pub fn holds_in(&self, txn: TxnId, region: RegionId) -> bool {
        self.held
            .lock()
            .expect(crate::POISONED)
            .get(&txn)
            .is_some_and(|entries| entries.iter().any(|e| e.addr.region() == region))
    }

    /// Drops `txn`'s entries without applying them: recovery aborted it.
    pub fn discard(&self, txn: TxnId) {
        self.held.lock().expect(crate::POISONED).remove(&txn);
    }

    /// Whether this backup holds `txn`'s entries for every region in `regions` it has a copy
    /// of (every region a transaction writes has entries).
    pub fn covers(&self, txn: TxnId, regions: &[RegionId]) -> bool {
        let held = self.held.lock().expect(crate::POISONED);
        let Some(entries) = held.get(&txn) else {
            return false;
        };
        let copies = self.copies.read().expect(crate::POISONED);
        regions
            .iter()
            .filter(|region| copies.contains_key(region))
            .all(|region| entries.iter().any(|e| e.addr.region() == *region))
    }

    /// TRUNCATE: applies the transaction to the copies (if this backup holds it). On an error
    /// the transaction stays held; applying it again later skips the entries already applied
    /// (their versions are no longer newer than the copy's).
    pub fn apply(&self, txn: TxnId) -> Result<Applied, ApplyError> {
        let entries = self.held.lock().expect(crate::POISONED).remove(&txn);
        let Some(entries) = entries else {
            return Ok(Applied::default());
        };
        let mut applied = Applied::default();
        for entry in &entries {
            match self.apply_entry(entry) {
                Ok(Installed::Yes) => applied.installed += 1,
                Ok(Installed::Older) => applied.skipped += 1,
                Ok(Installed::Uncopied) => applied.uncopied += 1,
                Err(e) => {
                    self.held
                        .lock()
                        .expect(crate::POISONED)
                        .insert(txn, entries);
                    return Err(e);
                }
            }
        }
        Ok(applied)
    }

    fn apply_entry(&self, entry: &Entry) -> Result<Installed, ApplyError> {
        let addr = entry.addr;
        let copy = self
            .copies
            .read()
            .expect(crate::POISONED)
            .get(&addr.region())
            .cloned()
            .ok_or(ApplyError::NoCopy {
                region: addr.region(),
                addr,
            })?;
        let region = &copy.region;
        let _writing = copy.writing.lock().expect(crate::POISONED);
        let words = match self.slot_words(region, addr) {
            Ok(words) => words,
            Err(ApplyError::NoBlockHeader { .. }) if copy.copying => {
                return Ok(Installed::Uncopied);
            }
            Err(e) => return Err(e),
        };
        let version = entry.version + 1;
        if object::load_header(words).to_u64() == object::HELD_BACK_WORD {
            // A copy held back since its restart found it damaged, being copied again: older
            // than any install (docs/formats.md#a-held-back-copy).
            object::install_over_held_back(
                words,
                &entry.payload,
                entry.kind != EntryKind::Free,
                version,
            );
            persist_slot(region, addr, words.len());
            return Ok(Installed::Yes);
        }
        if object::load_header(words).version() >= version {
            return Ok(Installed::Older);
        }
        object::overwrite(
            words,
            &entry.payload,
            entry.kind != EntryKind::Free,
            version,
        );
        persist_slot(region, addr, words.len());
        Ok(Installed::Yes)
    }

    /// Data recovery: gives the copy of `region` the block header at `block_offset` (its
    /// [`BLOCK_HEADER_BYTES`] as the primary holds them) if the copy has no valid header there
    /// yet; the magic word goes last, so a header with the magic is whole. Returns whether the
    /// copy has that header now.
    pub fn copy_block_header(&self, region: RegionId, block_offset: u32, header: &[u8]) -> bool {
        let Some(copy) = self.copy(region) else {
            return false;
        };
        if slab::block_slot_bytes(header, self.block_bytes).is_none() {
            return false;
        }
        let _writing = copy.writing.lock().expect(crate::POISONED);
        let words = copy.region.words_at(block_offset, BLOCK_HEADER_BYTES);
        let have: Vec<u8> = words
            .iter()
            .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
            .collect();
        if have == header {
            return true;
        }
        for (index, word) in words.iter().enumerate().skip(1).rev() {
            let bytes = header[index * 8..index * 8 + 8]
                .try_into()
                .expect("8 bytes");
            word.store(u64::from_le_bytes(bytes), Ordering::Release);
        }
        let magic = header[..8].try_into().expect("8 bytes");
        words[0].store(u64::from_le_bytes(magic), Ordering::Release);
        persist_slot(
            &copy.region,
            Addr::new(region, block_offset),
            (BLOCK_HEADER_BYTES / 8) as usize,
        );
        true
    }

    /// Data recovery: installs in the copy of `region` the slot at `addr` as read at the
    /// primary (`slot`: header, payload, trailer, unlocked and consistent) if it is newer than
    /// the copy's, or word for word if the copy's is held back (older than anything). Returns
    /// whether it installed.
    pub fn install_copied(&self, addr: Addr, slot: &[u8]) -> Result<bool, ApplyError> {
        let copy = self.copy(addr.region()).ok_or(ApplyError::NoCopy {
            region: addr.region(),
            addr,
        })?;
        let read = object::decode(slot).map_err(|_| ApplyError::NotASlot {
            addr,
            slot_bytes: slot.len() as u64,
        })?;
        let _writing = copy.writing.lock().expect(crate::POISONED);
        let words = self.slot_words(&copy.region, addr)?;
        if words.len() * 8 != slot.len() {
            return Err(ApplyError::NotASlot {
                addr,
                slot_bytes: slot.len() as u64,
            });
        }
        if object::load_header(words).to_u64() == object::HELD_BACK_WORD {
            // Held back: the primary's slot as it is, never installed included.
            object::copy_over_held_back(words, slot);
            persist_slot(&copy.region, addr, words.len());
            return Ok(true);
        }
        if object::load_header(words).version() >= read.header.version() {
            return Ok(false);
        }
        object::overwrite(
            words,
            read.payload,
            read.header.is_allocated(),
            read.header.version(),
        );
        persist_slot(&copy.region, addr, words.len());
        Ok(true)
    }

    /// Data recovery, for a block the primary had not claimed when the copier read its
    /// header: a held-back copy's block (docs/formats.md#a-held-back-copy) is emptied, so that
    /// a reader sees it held back or unclaimed, as it is at the primary.
    ///
    /// A claim at the primary may reach this copy meanwhile: its block header comes as plain
    /// WRITEs (words 1..3, then the magic), which take no lock here. So the slots are emptied
    /// only while the magic is still held back, under the lock that installs take (no install
    /// touches a block without its magic), and each header word goes from held back to zero by
    /// compare-and-swap, words 1..3 first and the magic last: a claim's word is never
    /// overwritten. A block whose magic came first is reported claimed, for the copier to copy
    /// it as a claimed block.
    pub fn empty_held_back_block(&self, region: RegionId, block_offset: u32) -> HeldBackBlock {
        let Some(copy) = self.copy(region) else {
            return HeldBackBlock::NotHeldBack;
        };
        let _writing = copy.writing.lock().expect(crate::POISONED);
        let words = copy.region.words_at(block_offset, self.block_bytes);
        match words[0].load(Ordering::Acquire) {
            object::HELD_BACK_WORD => {}
            slab::BLOCK_MAGIC => return HeldBackBlock::Claimed,
            _ => return HeldBackBlock::NotHeldBack,
        }
        let header_words = (BLOCK_HEADER_BYTES / 8) as usize;
        for word in &words[header_words..] {
            word.store(0, Ordering::Release);
        }
        for word in words[..header_words].iter().rev() {
            let _ = word.compare_exchange(
                object::HELD_BACK_WORD,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        persist_slot(
            &copy.region,
            Addr::new(region, block_offset),
            (self.block_bytes / 8) as usize,
        );
        HeldBackBlock::Emptied
    }

    /// Data recovery: zeroes the words of `region` in `from..to` that hold the held-back word,
    /// where no slot lies (a block's slack after its last slot, the region's tail after its
    /// last block): the rest of a held-back copy is replaced slot by slot.
    pub fn clear_held_back_slack(&self, region: RegionId, from: u32, to: u64) {
        let Some(copy) = self.copy(region) else {
            return;
        };
        let to = to.min(copy.region.len());
        if u64::from(from) >= to {
            return;
        }
        let _writing = copy.writing.lock().expect(crate::POISONED);
        let words = copy.region.words_at(from, to - u64::from(from));
        let mut cleared = false;
        for word in words {
            if word.load(Ordering::Acquire) == object::HELD_BACK_WORD {
                word.store(0, Ordering::Release);
                cleared = true;
            }
        }
        if cleared {
            persist_slot(&copy.region, Addr::new(region, from), words.len());
        }
    }

    fn copy(&self, id: RegionId) -> Option<BackupCopy> {
        self.copies.read().expect(crate::POISONED).get(&id).cloned()
    }

    /// The words of the slot at `addr`, sized by the block header the primary replicated
    /// when it claimed the block.
    fn slot_words<'r>(
        &self,
        region: &'r Region,
        addr: Addr,
    ) -> Result<&'r [std::sync::atomic::AtomicU64], ApplyError> {
        let block_offset = addr.offset() as u64 / self.block_bytes * self.block_bytes;
        let header: Vec<u8> = region
            .words_at(block_offset as u32, BLOCK_HEADER_BYTES)
            .iter()
            .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
            .collect();
        let slot_bytes = slab::block_slot_bytes(&header, self.block_bytes)
            .ok_or(ApplyError::NoBlockHeader { addr })?;
        let in_block = addr.offset() as u64 - block_offset;
        if in_block < BLOCK_HEADER_BYTES
            || !(in_block - BLOCK_HEADER_BYTES).is_multiple_of(slot_bytes)
            || in_block + slot_bytes > self.block_bytes
        {
            return Err(ApplyError::NotASlot { addr, slot_bytes });
        }
        Ok(region.words_at(addr.offset(), slot_bytes))
    }
}
