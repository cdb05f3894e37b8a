//! Checking replicas against each other: after quiescence a backup's copy of a region must be
//! byte-identical to the primary's, except for object lock bits.

use acre_engine::object::LOCK_BIT;
use acre_engine::region::Region;
use acre_engine::slab::{self, BLOCK_HEADER_BYTES};
use std::sync::atomic::Ordering;

/// The first difference between two copies of a region.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{region} differs at offset {offset:#x}: primary {primary_word:#018x}, backup \
     {backup_word:#018x}"
)]
pub struct Mismatch {
    pub region: String,
    pub offset: u64,
    pub primary_word: u64,
    pub backup_word: u64,
}

/// Compares `backup` with `primary` word by word; a difference in the lock bit of an object
/// header is not one.
pub fn compare(primary: &Region, backup: &Region, block_bytes: u64) -> Result<(), Mismatch> {
    assert_eq!(
        primary.len(),
        backup.len(),
        "copies of one region differ in size"
    );
    let (p, b) = (primary.words(), backup.words());
    for (index, (pw, bw)) in p.iter().zip(b).enumerate() {
        let (pv, bv) = (pw.load(Ordering::Acquire), bw.load(Ordering::Acquire));
        if pv == bv {
            continue;
        }
        let offset = index as u64 * 8;
        if pv ^ bv == LOCK_BIT && is_slot_header(primary, offset, block_bytes) {
            continue;
        }
        return Err(Mismatch {
            region: primary.id().to_string(),
            offset,
            primary_word: pv,
            backup_word: bv,
        });
    }
    Ok(())
}

fn is_slot_header(region: &Region, offset: u64, block_bytes: u64) -> bool {
    let block_offset = offset / block_bytes * block_bytes;
    let header: Vec<u8> = region
        .words_at(block_offset as u32, BLOCK_HEADER_BYTES)
        .iter()
        .flat_map(|w| w.load(Ordering::Acquire).to_le_bytes())
        .collect();
    let Some(slot_bytes) = slab::block_slot_bytes(&header, block_bytes) else {
        return false;
    };
    let in_block = offset - block_offset;
    in_block >= BLOCK_HEADER_BYTES && (in_block - BLOCK_HEADER_BYTES).is_multiple_of(slot_bytes)
}
