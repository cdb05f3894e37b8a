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
use std::sync::{Arc, Mutex};

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

/// One node's backup copies and the committed transactions waiting to be applied to them.
pub struct Backup {
    regions: FastMap<RegionId, Arc<Region>>,
    block_bytes: u64,
    held: Mutex<FastMap<TxnId, Vec<Entry>>>,
}

/// What applying one transaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub installed: usize,
    /// Updates older than the copy's version (a later transaction was applied first).
    pub skipped: usize,
}

impl Backup {
    pub fn new(regions: Vec<Arc<Region>>, block_bytes: u64) -> Backup {
        Backup {
            regions: regions.into_iter().map(|r| (r.id(), r)).collect(),
            block_bytes,
            held: Mutex::new(FastMap::default()),
        }
    }

    pub fn region(&self, id: RegionId) -> Option<&Arc<Region>> {
        self.regions.get(&id)
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

    /// Whether this backup holds `txn`'s entries for every region in `regions` it has a copy
    /// of (every region a transaction writes has entries).
    pub fn covers(&self, txn: TxnId, regions: &[RegionId]) -> bool {
        let held = self.held.lock().expect(crate::POISONED);
        let Some(entries) = held.get(&txn) else {
            return false;
        };
        regions
            .iter()
            .filter(|region| self.regions.contains_key(region))
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
                Ok(true) => applied.installed += 1,
                Ok(false) => applied.skipped += 1,
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

    fn apply_entry(&self, entry: &Entry) -> Result<bool, ApplyError> {
        let addr = entry.addr;
        let region = self.regions.get(&addr.region()).ok_or(ApplyError::NoCopy {
            region: addr.region(),
            addr,
        })?;
        let words = self.slot_words(region, addr)?;
        let version = entry.version + 1;
        if object::load_header(words).version() >= version {
            return Ok(false);
        }
        object::overwrite(
            words,
            &entry.payload,
            entry.kind != EntryKind::Free,
            version,
        );
        persist_slot(region, addr, words.len());
        Ok(true)
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
