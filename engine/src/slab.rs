//! The slab allocator of one region: size classes, blocks claimed one class each, and free lists
//! that live only in this volatile allocator and are rebuilt from the region's bytes.
//!
//! A region is cut into blocks of `block_bytes` (a power of two, [`BLOCK_BYTES_DEFAULT`] unless
//! the allocator is made with another). A block is *unused* (no magic) until the allocator first
//! needs a slot of some size class and no claimed block of that class has one; it then *claims*
//! the block for that class by writing a [`BLOCK_HEADER_BYTES`]-byte block header at its start.
//! Object slots (see [`crate::object`]) follow the header back to back; what is left at the end
//! of the block is slack. A block keeps its class for the life of the region.
//!
//! Whether a slot holds an object is the allocated bit of its header, set and cleared by object
//! installs (version bumped, trailer kept equal), so one-sided readers see allocation and free
//! like any other write. The block headers and the allocated bits are region bytes: they are
//! replicated and persisted with the region. The free lists are not: after a failure the new
//! primary reads them back from the block headers and the allocated bits, either at once
//! ([`SlabAllocator::rebuild`]) or block by block while the region serves
//! ([`SlabAllocator::recover`], then [`SlabAllocator::read_next_block`] and
//! [`SlabAllocator::finish_block`]; frees in a block not scanned yet are queued until it is).
//! Layout and assumptions: `docs/formats.md`.
//!
//! One allocator per region, owned by the region's primary and used through `&mut self`; the
//! region's words are shared with readers and transactions on other threads and nodes.

use crate::addr::{Addr, RegionId};
use crate::object::{self, Header, Owner, SlotCheck};
use crate::region::{REGION_BYTES_MAX, Region};
use crate::sync::Ordering::{Acquire, Release};
use std::sync::atomic::AtomicU64;

/// Payload bytes of each size class, smallest first: steps of about 1.5x, so the payload
/// rounding wastes at most a third of a slot.
pub const SIZE_CLASSES_PAYLOAD_BYTES: [usize; 24] = [
    16,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1 << 10,
    3 << 9,
    2 << 10,
    3 << 10,
    4 << 10,
    6 << 10,
    8 << 10,
    12 << 10,
    16 << 10,
    24 << 10,
    32 << 10,
    48 << 10,
    64 << 10,
];
/// The largest object any allocator offers (with the default block size). Smaller blocks offer
/// fewer classes: a class is offered only when a block holds [`SLOTS_PER_BLOCK_MIN`] of its
/// slots ([`SlabAllocator::payload_bytes_max`]).
pub const PAYLOAD_BYTES_MAX: usize =
    SIZE_CLASSES_PAYLOAD_BYTES[SIZE_CLASSES_PAYLOAD_BYTES.len() - 1];
/// A class is offered only if a block holds at least this many of its slots, so the largest
/// objects waste at most about an eighth of a block in slack.
pub const SLOTS_PER_BLOCK_MIN: u64 = 8;

/// Default block size: 1 MiB.
pub const BLOCK_BYTES_DEFAULT: u64 = 1 << 20;
/// Smallest block: one page.
pub const BLOCK_BYTES_MIN: u64 = 4096;

/// Block header words: magic, class index, slot bytes, block bytes.
pub const BLOCK_HEADER_BYTES: u64 = 32;
/// Block header word 0 of a claimed block: the bytes `ACRESLAB`. Written last when a block is
/// claimed, so a header with the magic is complete.
pub const BLOCK_MAGIC: u64 = u64::from_le_bytes(*b"ACRESLAB");
const BLOCK_HEADER_WORDS: usize = (BLOCK_HEADER_BYTES / 8) as usize;
const MAGIC_WORD_INDEX: usize = 0;
const CLASS_INDEX_WORD_INDEX: usize = 1;
const SLOT_BYTES_WORD_INDEX: usize = 2;
const BLOCK_BYTES_WORD_INDEX: usize = 3;

const _: () = assert!(BLOCK_HEADER_BYTES == BLOCK_HEADER_WORDS as u64 * 8);
const _: () = assert!(BLOCK_MAGIC == 0x4241_4c53_4552_4341);
const _: () = assert!(BLOCK_BYTES_DEFAULT.is_power_of_two());
const _: () = assert!(BLOCK_BYTES_MIN.is_power_of_two());
// The default block offers every class.
const _: () = assert!(
    BLOCK_HEADER_BYTES + SLOTS_PER_BLOCK_MIN * object::slot_bytes(PAYLOAD_BYTES_MAX) as u64
        <= BLOCK_BYTES_DEFAULT
);
// The smallest block offers at least the smallest class.
const _: () = assert!(
    BLOCK_HEADER_BYTES
        + SLOTS_PER_BLOCK_MIN * object::slot_bytes(SIZE_CLASSES_PAYLOAD_BYTES[0]) as u64
        <= BLOCK_BYTES_MIN
);
// Slots start and stay word-aligned: class sizes are multiples of 16, so slot sizes (class
// size plus three words) are multiples of a word.
const _: () = {
    let mut i = 0;
    while i < SIZE_CLASSES_PAYLOAD_BYTES.len() {
        assert!(SIZE_CLASSES_PAYLOAD_BYTES[i].is_multiple_of(16));
        if i > 0 {
            assert!(SIZE_CLASSES_PAYLOAD_BYTES[i] > SIZE_CLASSES_PAYLOAD_BYTES[i - 1]);
        }
        i += 1;
    }
};

/// The slot size recorded in the bytes of a block header (as fetched by a one-sided READ of
/// the block's first [`BLOCK_HEADER_BYTES`]), or `None` when the block is unclaimed or the
/// header is not one this allocator writes.
pub fn block_slot_bytes(header: &[u8], block_bytes: u64) -> Option<u64> {
    let word = |index: usize| {
        header
            .get(index * 8..index * 8 + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if word(MAGIC_WORD_INDEX)? != BLOCK_MAGIC || word(BLOCK_BYTES_WORD_INDEX)? != block_bytes {
        return None;
    }
    let class = SizeClass::from_index(usize::try_from(word(CLASS_INDEX_WORD_INDEX)?).ok()?)?;
    let slot_bytes = word(SLOT_BYTES_WORD_INDEX)?;
    (slot_bytes == class.slot_bytes()).then_some(slot_bytes)
}

/// One size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SizeClass {
    /// Index into [`SIZE_CLASSES_PAYLOAD_BYTES`]; stored in block headers.
    pub index: usize,
    /// Payload capacity of the class's slots.
    pub payload_bytes: usize,
}

impl SizeClass {
    /// The class of `index`, if there is one.
    pub fn from_index(index: usize) -> Option<SizeClass> {
        SIZE_CLASSES_PAYLOAD_BYTES
            .get(index)
            .map(|&payload_bytes| SizeClass {
                index,
                payload_bytes,
            })
    }

    /// Bytes of one slot: header, payload, trailer.
    pub fn slot_bytes(self) -> u64 {
        object::slot_bytes(self.payload_bytes) as u64
    }
}

/// Why an allocation, a free or a rebuild failed, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    #[error(
        "{region} has no free slot for {payload_bytes} bytes and no unused block: allocate in \
         another region"
    )]
    RegionFull {
        region: RegionId,
        payload_bytes: usize,
    },
    #[error("{len} bytes is larger than the largest object of {max} bytes: split the object")]
    TooLarge { len: usize, max: usize },
    #[error("{addr} is not allocated (freed twice?): free only live objects")]
    NotAllocated { addr: Addr },
    #[error("{addr} is not the start of an object slot: pass an address returned by alloc")]
    NotAnObject { addr: Addr },
    #[error("{addr} is not in {region}: use the allocator of region {}", addr.region())]
    WrongRegion { addr: Addr, region: RegionId },
    #[error("{addr} is beyond the end of its region ({region_bytes} bytes): check the address")]
    OutOfRegion { addr: Addr, region_bytes: u64 },
    #[error(
        "{addr} is locked or being written by a transaction ({header}): free it once that \
         transaction has finished"
    )]
    ObjectBusy { addr: Addr, header: Header },
    #[error(
        "block size {block_bytes} is not a power of two between {BLOCK_BYTES_MIN} and the region \
         size {region_bytes}: choose another block size"
    )]
    InvalidBlockBytes { block_bytes: u64, region_bytes: u64 },
    #[error(
        "region size {region_bytes} is not between 1 byte and {REGION_BYTES_MAX}: this is not a \
         region"
    )]
    InvalidRegionBytes { region_bytes: u64 },
    /// The region's primary changed and its allocator is still reading its blocks' slots
    /// ([`SlabAllocator::recover`]): none of the blocks read so far has room, and no block is
    /// unused. A few milliseconds.
    #[error(
        "{region}'s allocator is still reading its blocks after its primary changed: retry \
         shortly"
    )]
    Recovering { region: RegionId },
    /// A release of a slot the allocator does not count as taken.
    #[error("{addr} was not handed out by this allocator: release only reserved or freed slots")]
    NotTaken { addr: Addr },
    #[error(
        "block header at {region}+{offset:#x} is corrupt ({reason}): stop and recover the region \
         from another replica"
    )]
    CorruptBlockHeader {
        region: RegionId,
        offset: u64,
        reason: String,
    },
}

/// How much of the claimed memory holds objects.
///
/// `claimed_block_bytes == allocated_slot_bytes + free_slot_bytes + block_overhead_bytes`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fragmentation {
    /// Bytes of the blocks claimed by some class.
    pub claimed_block_bytes: u64,
    /// Whole slots (header, class payload, trailer) of allocated objects in claimed blocks.
    pub allocated_slot_bytes: u64,
    /// Whole slots in claimed blocks that are free (never used, or freed).
    pub free_slot_bytes: u64,
    /// Block headers and the slack after the last slot of each claimed block.
    pub block_overhead_bytes: u64,
    /// Blocks no class has claimed yet.
    pub unused_block_count: u64,
    /// `1 - allocated_slot_bytes / claimed_block_bytes`: the fraction of claimed memory that
    /// does not hold an allocated slot (free slots, block headers, slack); 0 when nothing is
    /// claimed. It does not see the rounding of a requested length up to its class (the
    /// allocator does not keep requested lengths), nor the slot header and trailer.
    pub ratio: f64,
}

/// A slot taken off the free list for a transaction that has not committed its allocation yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub addr: Addr,
    /// The free slot's version: the committing transaction locks it at this version.
    pub version: u64,
    /// Payload capacity of the slot.
    pub payload_bytes: usize,
    /// `(block offset, block header bytes)` when the slot's block is not published yet (the
    /// reservation claimed it, or an earlier claimer could not replicate its header): the
    /// caller must make the header durable at the region's backups and then
    /// [`publish`](SlabAllocator::publish) the block before any object in it commits. Until
    /// then no other reservation gets a slot in the block without this same duty.
    pub claimed_block: Option<(u32, Vec<u8>)>,
}

/// Allocator state of one claimed block.
#[derive(Clone, Debug)]
struct ClaimedBlock {
    class: SizeClass,
    slot_count: u32,
    /// Slots from here up were never handed out since the block was claimed (or rebuilt).
    fresh_slot_index: u32,
    /// Free slots below `fresh_slot_index`; the last pushed is reused first.
    free_slot_indexes: Vec<u32>,
    /// Slots that are not free: allocated ones (and ones `rebuild` withheld).
    allocated_count: u32,
    /// Listed in its class's `partial_blocks`. Invariant: a published block with a free slot
    /// is listed; an unpublished one never is.
    listed: bool,
    /// Its header is known durable wherever objects in it are replicated (see
    /// [`SlabAllocator::publish`]). A block found by a recovery is not: its header may have
    /// reached only some backups before the old primary failed, so the first reservation in it
    /// copies the header to every backup again.
    published: bool,
    /// Its slots have been read (always, but after [`SlabAllocator::recover`] until
    /// [`SlabAllocator::finish_block`]). An unscanned block counts every slot as taken, so no
    /// reservation gets one, and the frees of its slots wait in `queued_frees`.
    scanned: bool,
    /// Slots freed while the block was unscanned, settled when it is scanned.
    queued_frees: Vec<u32>,
}

impl ClaimedBlock {
    fn has_free_slot(&self) -> bool {
        !self.free_slot_indexes.is_empty() || self.fresh_slot_index < self.slot_count
    }

    fn free_slot_count(&self) -> u32 {
        self.free_slot_indexes.len() as u32 + (self.slot_count - self.fresh_slot_index)
    }

    fn take_slot(&mut self) -> Option<u32> {
        let slot_index = match self.free_slot_indexes.pop() {
            Some(slot_index) => slot_index,
            None if self.fresh_slot_index < self.slot_count => {
                self.fresh_slot_index += 1;
                self.fresh_slot_index - 1
            }
            None => return None,
        };
        self.allocated_count += 1;
        Some(slot_index)
    }
}

#[derive(Clone, Debug)]
enum Block {
    Unused,
    Claimed(ClaimedBlock),
}

/// The slab allocator of one region. See the module doc.
#[derive(Debug)]
pub struct SlabAllocator {
    region: RegionId,
    region_bytes: u64,
    block_bytes: u64,
    /// Classes `0..class_count` are offered with this block size.
    class_count: usize,
    blocks: Vec<Block>,
    /// Per class: blocks that may have a free slot. Full blocks are dropped lazily when met.
    partial_blocks: Vec<Vec<u32>>,
    /// Per class: claimed blocks not yet published (a recovered allocator's blocks join once
    /// scanned).
    unpublished_blocks: Vec<Vec<u32>>,
    /// Unused blocks, the lowest index last (claimed first).
    unused_blocks: Vec<u32>,
    /// Claimed blocks whose slots are still to be read (after `recover`), the lowest index
    /// last (scanned first).
    unscanned_blocks: Vec<u32>,
}

/// What [`SlabAllocator::check_objects`] found in the slots of a region copy, counted by
/// [`SlotCheck`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectsCheck {
    /// Slots of claimed blocks read.
    pub slots: u64,
    pub pristine: u64,
    pub intact: u64,
    pub installing: u64,
    pub interrupted: u64,
    /// Damaged slots, and unused blocks with a non-zero word past their header.
    pub damaged_count: u64,
    /// The first damaged slots (or non-zero words of unused blocks), at most
    /// [`ObjectsCheck::DAMAGED_LISTED_MAX`].
    pub damaged: Vec<Addr>,
}

impl ObjectsCheck {
    pub const DAMAGED_LISTED_MAX: usize = 8;

    /// Whether every slot that holds an install's bytes proved them intact.
    pub fn is_intact(&self) -> bool {
        self.damaged_count == 0
    }

    /// Counts damage at `addr`, listing it among the first few.
    fn note_damaged(&mut self, addr: Addr) {
        self.damaged_count += 1;
        if self.damaged.len() < ObjectsCheck::DAMAGED_LISTED_MAX {
            self.damaged.push(addr);
        }
    }
}

/// The slots of one block read by [`SlabAllocator::read_next_block`]: which were taken
/// (allocated, or locked by an allocation or free under way). Handed to
/// [`SlabAllocator::finish_block`] to become the block's free list.
#[derive(Debug)]
pub struct BlockRead {
    block_index: u32,
    taken: Vec<bool>,
}

impl BlockRead {
    /// The index of the block read.
    pub fn block_index(&self) -> u32 {
        self.block_index
    }
}

impl SlabAllocator {
    /// An empty allocator for a fresh, zeroed region of `region_bytes` cut into blocks of
    /// `block_bytes`. Writes nothing: blocks are claimed (their headers written) on first use.
    /// A tail shorter than a block at the end of the region is not used.
    pub fn format(
        region: RegionId,
        region_bytes: u64,
        block_bytes: u64,
    ) -> Result<SlabAllocator, AllocError> {
        if region_bytes == 0 || region_bytes > REGION_BYTES_MAX {
            return Err(AllocError::InvalidRegionBytes { region_bytes });
        }
        if !block_bytes.is_power_of_two()
            || block_bytes < BLOCK_BYTES_MIN
            || block_bytes > region_bytes
        {
            return Err(AllocError::InvalidBlockBytes {
                block_bytes,
                region_bytes,
            });
        }
        let class_count = SIZE_CLASSES_PAYLOAD_BYTES
            .iter()
            .take_while(|&&payload_bytes| {
                BLOCK_HEADER_BYTES + SLOTS_PER_BLOCK_MIN * object::slot_bytes(payload_bytes) as u64
                    <= block_bytes
            })
            .count();
        assert!(
            class_count > 0,
            "no class fits a block: block_bytes={block_bytes}"
        );
        let block_count = region_bytes / block_bytes;
        Ok(SlabAllocator {
            region,
            region_bytes,
            block_bytes,
            class_count,
            blocks: vec![Block::Unused; block_count as usize],
            partial_blocks: vec![Vec::new(); class_count],
            unpublished_blocks: vec![Vec::new(); class_count],
            unused_blocks: (0..block_count as u32).rev().collect(),
            unscanned_blocks: Vec::new(),
        })
    }

    /// Reconstructs the allocator of `region` from its block headers and the allocated bits of
    /// its slots, at once: [`recover`](Self::recover) and every block read and finished with
    /// no free pending. Every slot whose header is allocated stays allocated; every other slot
    /// is free, except a slot that is locked but not allocated (an allocation or free cut short
    /// by a crash): it is withheld, counted as allocated, until transaction recovery has dealt
    /// with its lock. For a region no transaction writes meanwhile (at a start, in checks).
    pub fn rebuild(region: &Region, block_bytes: u64) -> Result<SlabAllocator, AllocError> {
        let mut slab = SlabAllocator::recover(region, block_bytes)?;
        while let Some(read) = slab.read_next_block(region) {
            slab.finish_block(region, read, &[]);
        }
        Ok(slab)
    }

    /// The allocator of `region` as a new primary takes it over, from its block headers only:
    /// unclaimed blocks are unused, claimed ones are *unscanned* (no slot of theirs is handed
    /// out, frees in them are queued) until their slots are read, one block at a time while
    /// the region serves ([`read_next_block`](Self::read_next_block),
    /// [`finish_block`](Self::finish_block)). Allocations meanwhile claim unused blocks or use
    /// blocks already scanned. Every claimed block starts unpublished, so the first reservation
    /// in it copies its header to the backups again (one may have missed it when the old
    /// primary failed). Fails on a corrupt block header.
    pub fn recover(region: &Region, block_bytes: u64) -> Result<SlabAllocator, AllocError> {
        let mut slab = SlabAllocator::format(region.id(), region.len(), block_bytes)?;
        slab.unused_blocks.clear();
        for block_index in 0..slab.blocks.len() as u32 {
            let offset = block_index as u64 * block_bytes;
            let header = region.words_at(offset as u32, BLOCK_HEADER_BYTES);
            let header: [u64; BLOCK_HEADER_WORDS] =
                std::array::from_fn(|word_index| header[word_index].load(Acquire));
            // No magic: never claimed, or a claim cut short before any slot was handed out.
            if header[MAGIC_WORD_INDEX] == 0 {
                slab.unused_blocks.push(block_index);
                continue;
            }
            let class = slab.check_block_header(offset, header)?;
            let slot_count = slab.slot_count(class);
            slab.blocks[block_index as usize] = Block::Claimed(ClaimedBlock {
                class,
                slot_count,
                fresh_slot_index: slot_count,
                free_slot_indexes: Vec::new(),
                allocated_count: slot_count,
                listed: false,
                published: false,
                scanned: false,
                queued_frees: Vec::new(),
            });
            slab.unscanned_blocks.push(block_index);
        }
        slab.unused_blocks.reverse();
        slab.unscanned_blocks.reverse();
        Ok(slab)
    }

    /// Checks every slot of every claimed block of `region` against its sum
    /// ([`object::check`]), and that every unused block is zero past its header: how a
    /// restarted node with no block sums from a clean stop vouches for a copy before anything
    /// reads it. The slack at the end of a block holds nothing and is not read. Fails on a
    /// corrupt block header (nothing says where that block's slots are: the copy cannot be
    /// vouched for).
    pub fn check_objects(region: &Region, block_bytes: u64) -> Result<ObjectsCheck, AllocError> {
        let slab = SlabAllocator::recover(region, block_bytes)?;
        let mut report = ObjectsCheck::default();
        // An unused block is zero past its header (a claim cut short writes header words only):
        // any other word there is damage, such as the slots of a block whose magic was lost.
        for &block_index in slab.unused_blocks.iter().rev() {
            let offset = block_index as u64 * block_bytes + BLOCK_HEADER_BYTES;
            let words = region.words_at(offset as u32, block_bytes - BLOCK_HEADER_BYTES);
            if let Some(at) = words.iter().position(|w| w.load(Acquire) != 0) {
                report.note_damaged(Addr::new(slab.region, (offset + at as u64 * 8) as u32));
            }
        }
        let mut payload = Vec::new();
        for &block_index in slab.unscanned_blocks.iter().rev() {
            let Block::Claimed(block) = &slab.blocks[block_index as usize] else {
                panic!("unused block {block_index} listed as unscanned");
            };
            for slot_index in 0..block.slot_count {
                let offset = slab.slot_offset(block_index, block.class, slot_index);
                let words = region.words_at(offset, block.class.slot_bytes());
                report.slots += 1;
                match object::check_with(words, &mut payload) {
                    SlotCheck::Pristine => report.pristine += 1,
                    SlotCheck::Intact => report.intact += 1,
                    SlotCheck::Installing => report.installing += 1,
                    SlotCheck::Interrupted => report.interrupted += 1,
                    SlotCheck::Damaged(_) => report.note_damaged(Addr::new(slab.region, offset)),
                }
            }
        }
        Ok(report)
    }

    /// Claimed blocks whose slots are still to be read (0 once recovered).
    pub fn unscanned_block_count(&self) -> usize {
        self.unscanned_blocks.len()
    }

    /// Whether the slots of the block holding `addr` have been read (false for an address
    /// outside every claimed block).
    pub fn is_scanned(&self, addr: Addr) -> bool {
        let block_index = addr.offset() as u64 / self.block_bytes;
        matches!(
            self.blocks.get(block_index as usize),
            Some(Block::Claimed(block)) if block.scanned
        )
    }

    /// The index of the block [`read_next_block`](Self::read_next_block) reads.
    pub fn next_unscanned_block(&self) -> Option<u32> {
        self.unscanned_blocks.last().copied()
    }

    /// Reads the slot headers of the lowest unscanned block, without changing the allocator;
    /// `None` when every block is scanned. The caller then makes sure every transaction that
    /// freed a slot of the block, and whose free was visible to this read, is known to it, and
    /// hands the read to [`finish_block`](Self::finish_block) with those frees.
    pub fn read_next_block(&self, region: &Region) -> Option<BlockRead> {
        self.check_region(region);
        let &block_index = self.unscanned_blocks.last()?;
        let Block::Claimed(block) = &self.blocks[block_index as usize] else {
            panic!("unused block {block_index} listed as unscanned");
        };
        let taken = (0..block.slot_count)
            .map(|slot_index| {
                let offset = self.slot_offset(block_index, block.class, slot_index);
                let header = object::load_header(region.words_at(offset, block.class.slot_bytes()));
                header.is_allocated() || header.is_locked()
            })
            .collect();
        Some(BlockRead { block_index, taken })
    }

    /// Makes the block of `read` scanned: its free slots are those the read found neither
    /// allocated nor locked, less those a transaction freed whose slot has not come back yet:
    /// `pending_frees` lists `(slot, version its free installs)` of every free known to be under
    /// way (installed or not), and a slot free at exactly that version is withheld, counted as
    /// allocated, until that free's [`release`](Self::release). Then the frees queued while the
    /// block was unscanned are settled: a slot the read counted free is already back, any other
    /// is released now.
    pub fn finish_block(
        &mut self,
        region: &Region,
        read: BlockRead,
        pending_frees: &[(Addr, u64)],
    ) {
        self.check_region(region);
        let BlockRead {
            block_index,
            mut taken,
        } = read;
        assert_eq!(
            self.unscanned_blocks.last(),
            Some(&block_index),
            "finished block {block_index} out of turn"
        );
        self.unscanned_blocks.pop();
        let (class, queued) = {
            let block = self.claimed_mut(block_index);
            assert!(!block.scanned, "block {block_index} scanned twice");
            (block.class, std::mem::take(&mut block.queued_frees))
        };
        for &(addr, version) in pending_frees {
            let Ok((in_block, slot_index, _)) = self.locate(addr) else {
                continue;
            };
            if in_block != block_index {
                continue;
            }
            let header = object::load_header(region.words_at(addr.offset(), class.slot_bytes()));
            if !header.is_allocated() && !header.is_locked() && header.version() == version {
                taken[slot_index as usize] = true;
            }
        }
        let fresh_slot_index = taken
            .iter()
            .rposition(|&is_taken| is_taken)
            .map_or(0, |last| last as u32 + 1);
        let allocated_count = taken.iter().filter(|&&is_taken| is_taken).count() as u32;
        let block = self.claimed_mut(block_index);
        block.scanned = true;
        block.fresh_slot_index = fresh_slot_index;
        block.allocated_count = allocated_count;
        // Free slots below the last taken one, lowest reused first.
        block.free_slot_indexes = (0..fresh_slot_index)
            .rev()
            .filter(|&slot_index| !taken[slot_index as usize])
            .collect();
        for slot_index in queued {
            if taken[slot_index as usize] {
                let addr = Addr::new(
                    self.region,
                    self.slot_offset(block_index, class, slot_index),
                );
                self.release(region, addr)
                    .unwrap_or_else(|e| panic!("a queued free of {addr}, checked free then: {e}"));
            }
        }
        // Unpublished (module docs of `recover`): found by reservations with the header's duty.
        self.unpublished_blocks[class.index].push(block_index);
    }

    pub fn region(&self) -> RegionId {
        self.region
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    /// The largest object this allocator can hold (it depends on the block size).
    pub fn payload_bytes_max(&self) -> usize {
        SIZE_CLASSES_PAYLOAD_BYTES[self.class_count - 1]
    }

    /// The smallest class that holds `len` bytes.
    pub fn class_for(&self, len: usize) -> Result<SizeClass, AllocError> {
        SIZE_CLASSES_PAYLOAD_BYTES[..self.class_count]
            .iter()
            .position(|&payload_bytes| payload_bytes >= len)
            .and_then(SizeClass::from_index)
            .ok_or(AllocError::TooLarge {
                len,
                max: self.payload_bytes_max(),
            })
    }

    /// Allocates a zeroed object of at least `len` bytes: a slot of the smallest class that
    /// holds them, from a block of that class with a free slot, or from a newly claimed block.
    pub fn alloc(&mut self, region: &Region, len: usize) -> Result<Addr, AllocError> {
        let reserved = self.reserve(region, len)?;
        Ok(self.allocate_reserved(region, reserved))
    }

    /// Like [`alloc`](Self::alloc), but in the block of `near` when that block is of the right
    /// class and has a free slot (locality: objects used together share pages and blocks).
    /// `near` must be in this allocator's region.
    pub fn alloc_near(
        &mut self,
        region: &Region,
        len: usize,
        near: Addr,
    ) -> Result<Addr, AllocError> {
        let reserved = self.reserve_near(region, len, near)?;
        Ok(self.allocate_reserved(region, reserved))
    }

    /// Takes a free slot for an object of at least `len` bytes *without* allocating it: the slot
    /// stays free in the region (a one-sided reader sees a free object) until a transaction's
    /// commit locks it at `Reserved::version` and installs it allocated. A transaction that gives
    /// up hands the slot back with [`release`](Self::release). Claiming a block writes its
    /// header, which the caller must replicate ([`Reserved::claimed_block`]).
    pub fn reserve(&mut self, region: &Region, len: usize) -> Result<Reserved, AllocError> {
        self.check_region(region);
        let class = self.class_for(len)?;
        let (block_index, unpublished) = match self.partial_block(class) {
            Some(block_index) => (block_index, false),
            None => match self.unpublished_block(class) {
                Some(block_index) => (block_index, true),
                None => match self.claim_block(region, class) {
                    Ok(block_index) => (block_index, true),
                    Err(AllocError::RegionFull { .. }) if !self.unscanned_blocks.is_empty() => {
                        return Err(AllocError::Recovering {
                            region: self.region,
                        });
                    }
                    Err(e) => return Err(e),
                },
            },
        };
        Ok(self.reserve_in_block(region, block_index, unpublished))
    }

    /// Like [`reserve`](Self::reserve), in the block of `near` when it has a free slot of the
    /// right class.
    pub fn reserve_near(
        &mut self,
        region: &Region,
        len: usize,
        near: Addr,
    ) -> Result<Reserved, AllocError> {
        self.check_region(region);
        self.check_in_region(near)?;
        let class = self.class_for(len)?;
        let block_index = near.offset() as u64 / self.block_bytes;
        if let Some(Block::Claimed(block)) = self.blocks.get(block_index as usize)
            && block.class == class
            && block.has_free_slot()
        {
            // An unpublished block (claimed, or found by a recovery) comes with its duty.
            let unpublished = !block.published;
            return Ok(self.reserve_in_block(region, block_index as u32, unpublished));
        }
        self.reserve(region, len)
    }

    /// Returns a slot that holds no object to the free list: a reservation whose transaction
    /// gave up, or an object whose free a committed transaction has installed.
    pub fn release(&mut self, region: &Region, addr: Addr) -> Result<(), AllocError> {
        self.check_region(region);
        let (block_index, slot_index, class) = self.locate(addr)?;
        let header = object::load_header(region.words_at(addr.offset(), class.slot_bytes()));
        if header.is_allocated() || header.is_locked() {
            return Err(AllocError::ObjectBusy { addr, header });
        }
        let block = self.claimed_mut(block_index);
        if !block.scanned {
            debug_assert!(
                !block.queued_frees.contains(&slot_index),
                "released {addr} twice while its block was unscanned"
            );
            block.queued_frees.push(slot_index);
            return Ok(());
        }
        if block.allocated_count == 0 || slot_index >= block.fresh_slot_index {
            return Err(AllocError::NotTaken { addr });
        }
        debug_assert!(
            !block.free_slot_indexes.contains(&slot_index),
            "released {addr} twice: block={block:?}"
        );
        block.allocated_count -= 1;
        block.free_slot_indexes.push(slot_index);
        if block.published && !block.listed {
            block.listed = true;
            self.partial_blocks[class.index].push(block_index);
        }
        Ok(())
    }

    /// Frees the object at `addr`: its header becomes free at a new version (payload zeroed),
    /// and the slot returns to the free list.
    pub fn free(&mut self, region: &Region, addr: Addr) -> Result<(), AllocError> {
        self.check_region(region);
        let (_, _, class) = self.locate(addr)?;
        let words = region.words_at(addr.offset(), class.slot_bytes());
        let header = object::load_header(words);
        if !header.is_allocated() {
            return Err(AllocError::NotAllocated { addr });
        }
        if let Err(conflict) = object::try_lock(words, header.version(), Owner::ALLOCATOR) {
            return Err(AllocError::ObjectBusy {
                addr,
                header: conflict.current,
            });
        }
        object::install_with(words, &[], false);
        self.release(region, addr)
    }

    /// The bytes of the header of the block that holds `addr`, and the block's offset: what a
    /// primary copies to its backups when it claims a block.
    pub fn block_header(&self, region: &Region, addr: Addr) -> (u32, Vec<u8>) {
        self.check_region(region);
        let offset = (addr.offset() as u64 / self.block_bytes * self.block_bytes) as u32;
        let bytes = region
            .words_at(offset, BLOCK_HEADER_BYTES)
            .iter()
            .flat_map(|word| word.load(Acquire).to_le_bytes())
            .collect();
        (offset, bytes)
    }

    /// The size class of the slot at `addr` (which must be a slot start in a claimed block).
    pub fn class_of(&self, addr: Addr) -> Result<SizeClass, AllocError> {
        self.locate(addr).map(|(_, _, class)| class)
    }

    /// The payload capacity of the slot at `addr`.
    pub fn payload_bytes(&self, addr: Addr) -> Result<usize, AllocError> {
        self.class_of(addr).map(|class| class.payload_bytes)
    }

    /// The words of the whole slot at `addr`, for the object protocol.
    pub fn slot_words<'r>(
        &self,
        region: &'r Region,
        addr: Addr,
    ) -> Result<&'r [AtomicU64], AllocError> {
        self.check_region(region);
        let class = self.class_of(addr)?;
        Ok(region.words_at(addr.offset(), class.slot_bytes()))
    }

    /// The addresses this allocator considers allocated (not free), in address order; every
    /// slot of a block not scanned yet. O(slots of the claimed blocks): for checks and
    /// diagnostics.
    pub fn allocated_addrs(&self) -> Vec<Addr> {
        let mut addrs = Vec::new();
        for (block_index, block) in self.blocks.iter().enumerate() {
            let Block::Claimed(block) = block else {
                continue;
            };
            let mut free = vec![false; block.fresh_slot_index as usize];
            for &slot_index in &block.free_slot_indexes {
                free[slot_index as usize] = true;
            }
            for slot_index in 0..block.fresh_slot_index {
                if !free[slot_index as usize] {
                    let offset = self.slot_offset(block_index as u32, block.class, slot_index);
                    addrs.push(Addr::new(self.region, offset));
                }
            }
        }
        addrs
    }

    /// How much of the claimed memory holds objects (O(blocks)).
    pub fn fragmentation(&self) -> Fragmentation {
        let mut claimed_block_bytes = 0;
        let mut allocated_slot_bytes = 0;
        let mut free_slot_bytes = 0;
        let mut unused_block_count = 0;
        for block in &self.blocks {
            match block {
                Block::Unused => unused_block_count += 1,
                Block::Claimed(block) => {
                    claimed_block_bytes += self.block_bytes;
                    allocated_slot_bytes += block.allocated_count as u64 * block.class.slot_bytes();
                    free_slot_bytes += block.free_slot_count() as u64 * block.class.slot_bytes();
                }
            }
        }
        let block_overhead_bytes = claimed_block_bytes - allocated_slot_bytes - free_slot_bytes;
        let ratio = if claimed_block_bytes == 0 {
            0.0
        } else {
            1.0 - allocated_slot_bytes as f64 / claimed_block_bytes as f64
        };
        Fragmentation {
            claimed_block_bytes,
            allocated_slot_bytes,
            free_slot_bytes,
            block_overhead_bytes,
            unused_block_count,
            ratio,
        }
    }

    fn check_region(&self, region: &Region) {
        assert_eq!(
            region.id(),
            self.region,
            "allocator used with another region"
        );
        assert_eq!(
            region.len(),
            self.region_bytes,
            "allocator of {} used with a region of another size",
            self.region
        );
    }

    fn check_in_region(&self, addr: Addr) -> Result<(), AllocError> {
        if addr.region() != self.region {
            return Err(AllocError::WrongRegion {
                addr,
                region: self.region,
            });
        }
        if addr.offset() as u64 >= self.region_bytes {
            return Err(AllocError::OutOfRegion {
                addr,
                region_bytes: self.region_bytes,
            });
        }
        Ok(())
    }

    /// The block, slot and class of the slot that starts at `addr`.
    fn locate(&self, addr: Addr) -> Result<(u32, u32, SizeClass), AllocError> {
        self.check_in_region(addr)?;
        let offset = addr.offset() as u64;
        let block_index = offset / self.block_bytes;
        let Some(Block::Claimed(block)) = self.blocks.get(block_index as usize) else {
            return Err(AllocError::NotAnObject { addr });
        };
        let Some(in_slots) = (offset % self.block_bytes).checked_sub(BLOCK_HEADER_BYTES) else {
            return Err(AllocError::NotAnObject { addr });
        };
        let slot_bytes = block.class.slot_bytes();
        let slot_index = in_slots / slot_bytes;
        if in_slots % slot_bytes != 0 || slot_index >= block.slot_count as u64 {
            return Err(AllocError::NotAnObject { addr });
        }
        Ok((block_index as u32, slot_index as u32, block.class))
    }

    fn slot_count(&self, class: SizeClass) -> u32 {
        ((self.block_bytes - BLOCK_HEADER_BYTES) / class.slot_bytes()) as u32
    }

    fn slot_offset(&self, block_index: u32, class: SizeClass, slot_index: u32) -> u32 {
        let offset = block_index as u64 * self.block_bytes
            + BLOCK_HEADER_BYTES
            + slot_index as u64 * class.slot_bytes();
        assert!(
            offset + class.slot_bytes() <= self.region_bytes,
            "slot beyond the region: block={block_index} slot={slot_index} class={class:?}"
        );
        offset as u32
    }

    fn claimed_mut(&mut self, block_index: u32) -> &mut ClaimedBlock {
        match &mut self.blocks[block_index as usize] {
            Block::Claimed(block) => block,
            Block::Unused => panic!("block {block_index} is not claimed"),
        }
    }

    /// Publishes the block at `block_offset`: its header is durable wherever objects in it are
    /// replicated, so any reservation may now get a slot there. Publishing twice is harmless.
    pub fn publish(&mut self, block_offset: u32) {
        assert!(
            (block_offset as u64).is_multiple_of(self.block_bytes),
            "{}+{block_offset:#x} is not a block",
            self.region
        );
        let block_index = (block_offset as u64 / self.block_bytes) as u32;
        let block = self.claimed_mut(block_index);
        if block.published {
            return;
        }
        block.published = true;
        let class = block.class;
        let list_it = block.has_free_slot();
        block.listed = list_it;
        self.unpublished_blocks[class.index].retain(|&b| b != block_index);
        if list_it {
            self.partial_blocks[class.index].push(block_index);
        }
    }

    /// An unpublished block of `class` with a free slot.
    fn unpublished_block(&self, class: SizeClass) -> Option<u32> {
        self.unpublished_blocks[class.index]
            .iter()
            .copied()
            .find(|&block_index| match &self.blocks[block_index as usize] {
                Block::Claimed(block) => block.has_free_slot(),
                Block::Unused => panic!("unused block {block_index} listed as unpublished"),
            })
    }

    /// A listed block of `class` with a free slot, dropping full ones from the list.
    fn partial_block(&mut self, class: SizeClass) -> Option<u32> {
        while let Some(&block_index) = self.partial_blocks[class.index].last() {
            let block = match &mut self.blocks[block_index as usize] {
                Block::Claimed(block) => block,
                Block::Unused => panic!("unused block {block_index} on the list of {class:?}"),
            };
            assert!(block.published, "unpublished block {block_index} listed");
            if block.has_free_slot() {
                return Some(block_index);
            }
            block.listed = false;
            self.partial_blocks[class.index].pop();
        }
        None
    }

    /// Claims the lowest unused block for `class`: writes its header (magic last), persists it,
    /// and keeps the block unpublished until [`publish`](Self::publish).
    fn claim_block(&mut self, region: &Region, class: SizeClass) -> Result<u32, AllocError> {
        let Some(block_index) = self.unused_blocks.pop() else {
            return Err(AllocError::RegionFull {
                region: self.region,
                payload_bytes: class.payload_bytes,
            });
        };
        let offset = block_index as u64 * self.block_bytes;
        let words = region.words_at(offset as u32, BLOCK_HEADER_BYTES);
        // The other header words may hold a claim that a crash cut short (magic not yet
        // written, so no slot was handed out): they are overwritten.
        let magic = words[MAGIC_WORD_INDEX].load(Acquire);
        assert!(
            magic == 0,
            "unused block at {}+{offset:#x} has magic {magic:#x}: the region was not zero when \
             formatted (use rebuild for a used region)",
            self.region
        );
        words[CLASS_INDEX_WORD_INDEX].store(class.index as u64, Release);
        words[SLOT_BYTES_WORD_INDEX].store(class.slot_bytes(), Release);
        words[BLOCK_BYTES_WORD_INDEX].store(self.block_bytes, Release);
        words[MAGIC_WORD_INDEX].store(BLOCK_MAGIC, Release);
        if let Err(e) = region
            .mapping()
            .persist(offset as usize, BLOCK_HEADER_BYTES as usize)
        {
            // The region is mapped memory: a failed persist means the medium is failing.
            panic!(
                "persist of the header of {}+{offset:#x} failed: {e}",
                self.region
            );
        }
        self.blocks[block_index as usize] = Block::Claimed(ClaimedBlock {
            class,
            slot_count: self.slot_count(class),
            fresh_slot_index: 0,
            free_slot_indexes: Vec::new(),
            allocated_count: 0,
            listed: false,
            published: false,
            scanned: true,
            queued_frees: Vec::new(),
        });
        self.unpublished_blocks[class.index].push(block_index);
        Ok(block_index)
    }

    /// Takes a free slot of `block_index` (which has one), leaving it free in the region.
    fn reserve_in_block(&mut self, region: &Region, block_index: u32, claimed: bool) -> Reserved {
        let block = self.claimed_mut(block_index);
        let class = block.class;
        let slot_index = block
            .take_slot()
            .unwrap_or_else(|| panic!("block {block_index} has no free slot: {block:?}"));
        let offset = self.slot_offset(block_index, class, slot_index);
        let addr = Addr::new(self.region, offset);
        let header = object::load_header(region.words_at(offset, class.slot_bytes()));
        assert!(
            !header.is_allocated(),
            "free-list slot {addr} is allocated: header={header}"
        );
        assert!(
            !header.is_locked(),
            "free-list slot {addr} is locked: header={header}"
        );
        Reserved {
            addr,
            version: header.version(),
            payload_bytes: class.payload_bytes,
            claimed_block: claimed.then(|| self.block_header(region, addr)),
        }
    }

    /// Marks a slot this allocator just reserved as allocated (a non-transactional allocation,
    /// with no backups: its block is published at once).
    fn allocate_reserved(&mut self, region: &Region, reserved: Reserved) -> Addr {
        let addr = reserved.addr;
        if let Some((block_offset, _)) = reserved.claimed_block {
            self.publish(block_offset);
        }
        let words = self
            .slot_words(region, addr)
            .expect("a reserved slot is an object slot");
        let header = object::load_header(words);
        if let Err(conflict) =
            object::try_lock_unallocated(words, header.version(), Owner::ALLOCATOR)
        {
            panic!("free slot {addr} changed under its allocator: {conflict}");
        }
        object::install_with(words, &[], true);
        addr
    }

    /// Checks a block header with a magic read at `offset`; returns its class.
    fn check_block_header(
        &self,
        offset: u64,
        header: [u64; BLOCK_HEADER_WORDS],
    ) -> Result<SizeClass, AllocError> {
        let corrupt = |reason: String| AllocError::CorruptBlockHeader {
            region: self.region,
            offset,
            reason,
        };
        let magic = header[MAGIC_WORD_INDEX];
        if magic != BLOCK_MAGIC {
            return Err(corrupt(format!(
                "magic {magic:#018x}, expected {BLOCK_MAGIC:#018x}"
            )));
        }
        let block_bytes = header[BLOCK_BYTES_WORD_INDEX];
        if block_bytes != self.block_bytes {
            return Err(corrupt(format!(
                "block size {block_bytes}, expected {}",
                self.block_bytes
            )));
        }
        let class_index = header[CLASS_INDEX_WORD_INDEX];
        let class = usize::try_from(class_index)
            .ok()
            .filter(|&index| index < self.class_count)
            .and_then(SizeClass::from_index)
            .ok_or_else(|| {
                corrupt(format!(
                    "class index {class_index}, at most {} with this block size",
                    self.class_count - 1
                ))
            })?;
        let slot_bytes = header[SLOT_BYTES_WORD_INDEX];
        if slot_bytes != class.slot_bytes() {
            return Err(corrupt(format!(
                "slot size {slot_bytes}, but class {} has slots of {}",
                class.index,
                class.slot_bytes()
            )));
        }
        Ok(class)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};
    use std::collections::BTreeSet;

    const REGION: RegionId = RegionId(4);
    const REGION_BYTES: u64 = 64 << 10;
    const BLOCK_BYTES: u64 = 4 << 10;

    fn region() -> Region {
        Region::anonymous(REGION, REGION_BYTES).unwrap()
    }

    fn slab() -> SlabAllocator {
        SlabAllocator::format(REGION, REGION_BYTES, BLOCK_BYTES).unwrap()
    }

    fn header_at(region: &Region, slab: &SlabAllocator, addr: Addr) -> Header {
        object::load_header(slab.slot_words(region, addr).unwrap())
    }

    #[test]
    fn classes_and_geometry() {
        let slab = slab();
        // 4 KiB blocks hold 8 slots of at most (4096 - 32) / 8 = 508 bytes: payload 384.
        assert_eq!(slab.payload_bytes_max(), 384);
        assert_eq!(
            slab.class_for(0).unwrap(),
            SizeClass {
                index: 0,
                payload_bytes: 16
            }
        );
        assert_eq!(slab.class_for(17).unwrap().payload_bytes, 32);
        assert_eq!(slab.class_for(384).unwrap().payload_bytes, 384);
        assert_eq!(
            slab.class_for(385),
            Err(AllocError::TooLarge { len: 385, max: 384 })
        );
        let big = SlabAllocator::format(REGION, 64 << 20, BLOCK_BYTES_DEFAULT).unwrap();
        assert_eq!(big.payload_bytes_max(), PAYLOAD_BYTES_MAX);
        assert_eq!(
            big.class_for(PAYLOAD_BYTES_MAX + 1),
            Err(AllocError::TooLarge {
                len: PAYLOAD_BYTES_MAX + 1,
                max: PAYLOAD_BYTES_MAX
            })
        );
        for bad in [0, 1000, 2048, 8192 + 1, REGION_BYTES * 2] {
            assert!(
                matches!(
                    SlabAllocator::format(REGION, REGION_BYTES, bad),
                    Err(AllocError::InvalidBlockBytes { .. })
                ),
                "block_bytes={bad}"
            );
        }
    }

    #[test]
    fn a_claimed_block_is_handed_out_only_with_its_publish_duty_until_published() {
        let region = region();
        let mut slab = slab();
        let first = slab.reserve(&region, 8).unwrap();
        let (block_offset, header) = first.claimed_block.clone().expect("claims a block");
        assert_eq!(
            &header[..8],
            &BLOCK_MAGIC.to_le_bytes(),
            "the header, magic first"
        );
        // Not published: a reservation of the same class gets the block's next slot only
        // with the duty to replicate its header, reserve_near too.
        let second = slab.reserve(&region, 8).unwrap();
        assert_eq!(second.claimed_block, first.claimed_block);
        let near = slab.reserve_near(&region, 8, first.addr).unwrap();
        assert_eq!(near.claimed_block, first.claimed_block);
        slab.publish(block_offset);
        slab.publish(block_offset); // harmless twice
        let third = slab.reserve(&region, 8).unwrap();
        assert_eq!(third.claimed_block, None, "a published block has no duty");
        assert_eq!(
            third.addr.offset() as u64 / BLOCK_BYTES,
            block_offset as u64 / BLOCK_BYTES
        );
        // A released slot of an unpublished block does not list it.
        let other = slab.reserve(&region, 100).unwrap();
        let (other_block, _) = other.claimed_block.expect("a new class claims a block");
        slab.release(&region, other.addr).unwrap();
        let again = slab.reserve(&region, 100).unwrap();
        assert_eq!(
            again.claimed_block.map(|(offset, _)| offset),
            Some(other_block)
        );
    }

    #[test]
    fn alloc_free_round_trip() {
        let region = region();
        let mut slab = slab();
        let addr = slab.alloc(&region, 20).unwrap();
        assert_eq!(addr.region(), REGION);
        assert_eq!(slab.payload_bytes(addr), Ok(32));
        let words = slab.slot_words(&region, addr).unwrap();
        assert_eq!(words.len(), 7);
        assert_eq!(header_at(&region, &slab, addr), Header::new(1, true, false));
        let mut payload = [0xffu8; 32];
        object::read_into(words, &mut payload).unwrap();
        assert_eq!(payload, [0; 32], "a new object is zeroed");

        // Write it like a transaction would, then free it.
        object::try_lock(words, 1, Owner::ALLOCATOR).unwrap();
        object::install(words, b"some bytes");
        slab.free(&region, addr).unwrap();
        let header = header_at(&region, &slab, addr);
        assert_eq!(header, Header::new(3, false, false));
        object::read_into(words, &mut payload).unwrap();
        assert_eq!(payload, [0; 32], "a freed object is zeroed");

        // The slot is reused, at a newer version.
        let again = slab.alloc(&region, 32).unwrap();
        assert_eq!(again, addr);
        assert_eq!(
            header_at(&region, &slab, again),
            Header::new(4, true, false)
        );
    }

    #[test]
    fn addresses_are_distinct_aligned_and_inside_the_region() {
        let region = region();
        let mut slab = slab();
        let mut seen = BTreeSet::new();
        for len in [1, 16, 17, 100, 200, 384, 48, 0, 300] {
            for _ in 0..10 {
                let addr = slab.alloc(&region, len).unwrap();
                let slot_bytes = slab.class_of(addr).unwrap().slot_bytes();
                assert_eq!(addr.offset() % 8, 0, "{addr}");
                assert!(
                    addr.offset() as u64 + slot_bytes <= REGION_BYTES,
                    "{addr} + {slot_bytes}"
                );
                assert!(slab.payload_bytes(addr).unwrap() >= len);
                // No two slots overlap.
                let start = addr.offset() as u64;
                assert!(
                    seen.range(..(start + slot_bytes, 0))
                        .next_back()
                        .is_none_or(|&(_, end)| end <= start),
                    "{addr} overlaps"
                );
                assert!(seen.insert((start, start + slot_bytes)));
            }
        }
    }

    #[test]
    fn a_full_region_returns_region_full() {
        let region = region();
        let mut slab = slab();
        let class = slab.class_for(384).unwrap();
        let per_block = (BLOCK_BYTES - BLOCK_HEADER_BYTES) / class.slot_bytes();
        let block_count = REGION_BYTES / BLOCK_BYTES;
        let mut addrs = Vec::new();
        for _ in 0..per_block * block_count {
            addrs.push(slab.alloc(&region, 384).unwrap());
        }
        assert_eq!(
            slab.alloc(&region, 384),
            Err(AllocError::RegionFull {
                region: REGION,
                payload_bytes: 384
            })
        );
        // Every block is claimed: a small class has nowhere to go either.
        assert!(matches!(
            slab.alloc(&region, 16),
            Err(AllocError::RegionFull { .. })
        ));
        slab.free(&region, addrs[5]).unwrap();
        assert_eq!(slab.alloc(&region, 300), Ok(addrs[5]));
    }

    #[test]
    fn double_free_and_bad_addresses_are_refused() {
        let region = region();
        let mut slab = slab();
        let addr = slab.alloc(&region, 64).unwrap();
        slab.free(&region, addr).unwrap();
        assert_eq!(
            slab.free(&region, addr),
            Err(AllocError::NotAllocated { addr })
        );
        let inside = addr.checked_add(8).unwrap();
        assert_eq!(
            slab.free(&region, inside),
            Err(AllocError::NotAnObject { addr: inside })
        );
        let block_header = Addr::new(REGION, 0);
        assert_eq!(
            slab.free(&region, block_header),
            Err(AllocError::NotAnObject { addr: block_header })
        );
        let unused_block = Addr::new(REGION, (BLOCK_BYTES * 3 + BLOCK_HEADER_BYTES) as u32);
        assert_eq!(
            slab.free(&region, unused_block),
            Err(AllocError::NotAnObject { addr: unused_block })
        );
        let beyond = Addr::new(REGION, REGION_BYTES as u32);
        assert_eq!(
            slab.free(&region, beyond),
            Err(AllocError::OutOfRegion {
                addr: beyond,
                region_bytes: REGION_BYTES
            })
        );
        let elsewhere = Addr::new(RegionId(9), addr.offset());
        assert_eq!(
            slab.free(&region, elsewhere),
            Err(AllocError::WrongRegion {
                addr: elsewhere,
                region: REGION
            })
        );
    }

    #[test]
    fn a_locked_object_is_not_freed() {
        let region = region();
        let mut slab = slab();
        let addr = slab.alloc(&region, 64).unwrap();
        let words = slab.slot_words(&region, addr).unwrap();
        object::try_lock(words, 1, Owner::ALLOCATOR).unwrap();
        assert_eq!(
            slab.free(&region, addr),
            Err(AllocError::ObjectBusy {
                addr,
                header: Header::new(1, true, false).locked_by(Owner::ALLOCATOR)
            })
        );
        object::unlock(words);
        slab.free(&region, addr).unwrap();
    }

    #[test]
    fn alloc_near_stays_in_the_region_and_the_block_when_it_can() {
        let region = region();
        let mut slab = slab();
        let near = slab.alloc(&region, 100).unwrap();
        // Another class claims the next block, so "same block" is not just "next slot".
        let other_class = slab.alloc(&region, 16).unwrap();
        assert_ne!(
            other_class.offset() as u64 / BLOCK_BYTES,
            near.offset() as u64 / BLOCK_BYTES
        );
        let block_of = |addr: Addr| addr.offset() as u64 / BLOCK_BYTES;
        let class = slab.class_for(100).unwrap();
        let per_block = (BLOCK_BYTES - BLOCK_HEADER_BYTES) / class.slot_bytes();
        for _ in 1..per_block {
            let addr = slab.alloc_near(&region, 100, near).unwrap();
            assert_eq!(block_of(addr), block_of(near), "{addr} not near {near}");
        }
        // The block is full: same region, another block.
        let spilled = slab.alloc_near(&region, 100, near).unwrap();
        assert_eq!(spilled.region(), REGION);
        assert_ne!(block_of(spilled), block_of(near));
        // A free slot in near's block is preferred over the partial block just claimed.
        slab.free(&region, near).unwrap();
        let back = slab.alloc_near(&region, 100, spilled).unwrap();
        assert_eq!(block_of(back), block_of(spilled));
        let reused = slab
            .alloc_near(&region, 120, near.checked_add(8).unwrap())
            .unwrap();
        assert_eq!(reused, near);
        // A class mismatch ignores the hint but stays in the region.
        let small = slab.alloc_near(&region, 16, spilled).unwrap();
        assert_eq!(block_of(small), block_of(other_class));

        let elsewhere = Addr::new(RegionId(5), near.offset());
        assert_eq!(
            slab.alloc_near(&region, 100, elsewhere),
            Err(AllocError::WrongRegion {
                addr: elsewhere,
                region: REGION
            })
        );
    }

    fn check_fragmentation(slab: &SlabAllocator, live: &BTreeSet<Addr>) {
        let f = slab.fragmentation();
        assert_eq!(
            f.claimed_block_bytes,
            f.allocated_slot_bytes + f.free_slot_bytes + f.block_overhead_bytes,
            "{f:?}"
        );
        let live_slot_bytes: u64 = live
            .iter()
            .map(|&addr| slab.class_of(addr).unwrap().slot_bytes())
            .sum();
        assert_eq!(f.allocated_slot_bytes, live_slot_bytes, "{f:?}");
        let block_count = REGION_BYTES / BLOCK_BYTES;
        assert_eq!(
            f.claimed_block_bytes,
            (block_count - f.unused_block_count) * BLOCK_BYTES,
            "{f:?}"
        );
        if f.claimed_block_bytes > 0 {
            let expected = 1.0 - live_slot_bytes as f64 / f.claimed_block_bytes as f64;
            assert!((f.ratio - expected).abs() < 1e-12, "{f:?}");
        } else {
            assert_eq!(f.ratio, 0.0);
        }
    }

    #[test]
    fn fragmentation_figures_add_up() {
        let region = region();
        let mut slab = slab();
        let empty = slab.fragmentation();
        assert_eq!(empty.claimed_block_bytes, 0);
        assert_eq!(empty.unused_block_count, REGION_BYTES / BLOCK_BYTES);
        assert_eq!(empty.ratio, 0.0);
        let mut live = BTreeSet::new();
        for len in [16, 16, 16, 200, 384] {
            live.insert(slab.alloc(&region, len).unwrap());
        }
        check_fragmentation(&slab, &live);
        let f = slab.fragmentation();
        // Three claimed blocks (classes 16, 256, 384); 3 slots of 40 bytes, 1 of 280, 1 of 408.
        assert_eq!(f.claimed_block_bytes, 3 * BLOCK_BYTES);
        assert_eq!(f.allocated_slot_bytes, 3 * 40 + 280 + 408);
        assert_eq!(
            f.block_overhead_bytes,
            3 * BLOCK_HEADER_BYTES
                + [40, 280, 408]
                    .iter()
                    .map(|slot_bytes| (BLOCK_BYTES - BLOCK_HEADER_BYTES) % slot_bytes)
                    .sum::<u64>()
        );
        let first = *live.first().unwrap();
        slab.free(&region, first).unwrap();
        live.remove(&first);
        check_fragmentation(&slab, &live);
    }

    #[test]
    fn rebuild_of_a_fresh_region_is_empty() {
        let region = region();
        let rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        assert!(rebuilt.allocated_addrs().is_empty());
        assert_eq!(
            rebuilt.fragmentation().unused_block_count,
            REGION_BYTES / BLOCK_BYTES
        );
    }

    #[test]
    fn rebuild_names_the_offset_of_a_corrupt_block_header() {
        let region = region();
        let mut slab = slab();
        slab.alloc(&region, 16).unwrap();
        slab.alloc(&region, 300).unwrap();
        let second = BLOCK_BYTES as u32;
        let corruptions: [(usize, u64, &str); 4] = [
            (MAGIC_WORD_INDEX, 0x1234, "magic"),
            (CLASS_INDEX_WORD_INDEX, 99, "class index 99"),
            (SLOT_BYTES_WORD_INDEX, 48, "slot size 48"),
            (BLOCK_BYTES_WORD_INDEX, 8192, "block size 8192"),
        ];
        for (word_index, value, reason) in corruptions {
            let word = &region.words_at(second, BLOCK_HEADER_BYTES)[word_index];
            let good = word.swap(value, Release);
            match SlabAllocator::rebuild(&region, BLOCK_BYTES) {
                Err(AllocError::CorruptBlockHeader {
                    region: r,
                    offset,
                    reason: found,
                }) => {
                    assert_eq!(r, REGION);
                    assert_eq!(offset, BLOCK_BYTES, "{found}");
                    assert!(found.contains(reason), "{found:?} lacks {reason:?}");
                }
                other => panic!("word {word_index} = {value}: {other:?}"),
            }
            word.store(good, Release);
        }
        // Rebuilt with another block size, the first header does not match.
        assert!(matches!(
            SlabAllocator::rebuild(&region, 2 * BLOCK_BYTES),
            Err(AllocError::CorruptBlockHeader { offset: 0, .. })
        ));
        assert!(SlabAllocator::rebuild(&region, BLOCK_BYTES).is_ok());
    }

    #[test]
    fn rebuild_treats_a_claim_cut_short_as_an_unused_block() {
        let region = region();
        let mut slab = slab();
        let first = slab.alloc(&region, 16).unwrap();
        // A crash while claiming the second block: every header word but the magic written.
        let header = region.words_at(BLOCK_BYTES as u32, BLOCK_HEADER_BYTES);
        header[CLASS_INDEX_WORD_INDEX].store(3, Release);
        header[SLOT_BYTES_WORD_INDEX].store(88, Release);
        header[BLOCK_BYTES_WORD_INDEX].store(BLOCK_BYTES, Release);
        let mut rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        assert_eq!(rebuilt.allocated_addrs(), vec![first]);
        assert_eq!(
            rebuilt.fragmentation().unused_block_count,
            REGION_BYTES / BLOCK_BYTES - 1
        );
        // Claimed again, for another class, with a complete header.
        let addr = rebuilt.alloc(&region, 300).unwrap();
        assert_eq!(addr.offset() as u64 / BLOCK_BYTES, 1);
        let again = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        assert_eq!(again.allocated_addrs(), vec![first, addr]);
        assert_eq!(again.payload_bytes(addr), Ok(384));
    }

    #[test]
    fn rebuild_withholds_a_slot_left_locked_by_an_interrupted_allocation() {
        let region = region();
        let mut slab = slab();
        let kept = slab.alloc(&region, 16).unwrap();
        let interrupted = slab.alloc(&region, 16).unwrap();
        slab.free(&region, interrupted).unwrap();
        // A crash after the allocator locked the free slot, before it installed.
        let words = slab.slot_words(&region, interrupted).unwrap();
        let version = object::load_header(words).version();
        object::try_lock_unallocated(words, version, Owner::ALLOCATOR).unwrap();
        let mut rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        assert_eq!(rebuilt.allocated_addrs(), vec![kept, interrupted]);
        let next = rebuilt.alloc(&region, 16).unwrap();
        assert_ne!(next, interrupted);
        assert_ne!(next, kept);
    }

    /// A seeded random sequence of allocs (plain and near) and frees against a `BTreeSet`
    /// model; then `rebuild` from the region must agree with the model, and its next
    /// allocations must never hand out a live slot.
    #[test]
    fn rebuild_after_random_allocs_and_frees_matches_the_model() {
        const OP_COUNT: u64 = 1500;
        const ALLOCS_AFTER_REBUILD_MAX: usize = 4000;
        for_each_seed(24, Replay::Exact, |seed| {
            let mut rng = SplitMix::new(seed);
            let region = region();
            let mut slab = slab();
            let mut live: BTreeSet<Addr> = BTreeSet::new();
            // Few length choices, so classes fill; seeds with more allocs than frees run the
            // region full.
            let lens = [1, 16, 40, 64, 100, 250, 384];
            let alloc_percent = 50 + (seed % 4) * 10;
            let mut full_count = 0;
            for _ in 0..OP_COUNT {
                let action = rng.below(100);
                if action < alloc_percent || live.is_empty() {
                    let len = lens[rng.below(lens.len() as u64) as usize];
                    let result = if action < 20 && !live.is_empty() {
                        let near = *live
                            .iter()
                            .nth(rng.below(live.len() as u64) as usize)
                            .unwrap();
                        slab.alloc_near(&region, len, near)
                    } else {
                        slab.alloc(&region, len)
                    };
                    match result {
                        Ok(addr) => {
                            assert!(live.insert(addr), "seed {seed}: {addr} handed out twice");
                            assert!(slab.payload_bytes(addr).unwrap() >= len);
                        }
                        Err(AllocError::RegionFull { .. }) => full_count += 1,
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                } else {
                    let addr = *live
                        .iter()
                        .nth(rng.below(live.len() as u64) as usize)
                        .unwrap();
                    slab.free(&region, addr).unwrap();
                    live.remove(&addr);
                    if rng.below(8) == 0 {
                        assert_eq!(
                            slab.free(&region, addr),
                            Err(AllocError::NotAllocated { addr })
                        );
                    }
                }
            }
            if seed % 4 == 3 {
                assert!(full_count > 0, "seed {seed}: the region never ran full");
            }
            let model: Vec<Addr> = live.iter().copied().collect();
            assert_eq!(
                slab.allocated_addrs(),
                model,
                "seed {seed}: allocator vs model"
            );
            check_fragmentation(&slab, &live);

            let mut rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
            assert_eq!(
                rebuilt.allocated_addrs(),
                model,
                "seed {seed}: rebuilt vs model"
            );
            assert_eq!(rebuilt.fragmentation(), slab.fragmentation(), "seed {seed}");
            for &addr in &live {
                assert!(header_at(&region, &rebuilt, addr).is_allocated());
            }
            // Allocate until some class finds the region full: never a live slot.
            for _ in 0..ALLOCS_AFTER_REBUILD_MAX {
                let len = lens[rng.below(lens.len() as u64) as usize];
                match rebuilt.alloc(&region, len) {
                    Ok(addr) => {
                        assert!(
                            live.insert(addr),
                            "seed {seed}: rebuilt handed out live {addr}"
                        );
                    }
                    Err(AllocError::RegionFull { .. }) => break,
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
            assert_eq!(
                rebuilt.allocated_addrs(),
                live.iter().copied().collect::<Vec<_>>(),
                "seed {seed}"
            );
            check_fragmentation(&rebuilt, &live);
        });
    }

    #[test]
    fn the_object_check_vouches_for_installed_slots_and_finds_a_flipped_bit() {
        let region = region();
        let mut slab = slab();
        let small: Vec<Addr> = (0..5).map(|_| slab.alloc(&region, 16).unwrap()).collect();
        let large = slab.alloc(&region, 300).unwrap();
        install_free(&region, &slab, small[1]);
        let check = SlabAllocator::check_objects(&region, BLOCK_BYTES).unwrap();
        assert!(check.is_intact(), "{check:?}");
        // Two claimed blocks: the 16-byte class's slots and the 384-byte class's.
        let slots = |payload: u64| (BLOCK_BYTES - BLOCK_HEADER_BYTES) / (payload + 24);
        assert_eq!(check.slots, slots(16) + slots(384));
        assert_eq!(
            check.intact, 6,
            "five allocations and one free installed: {check:?}"
        );
        assert_eq!(check.pristine, check.slots - 6);

        // A bit flipped in a payload word, and one in the version of the freed slot's header
        // (v2 becomes v6, ahead of its trailer).
        region.words_at(large.offset() + 8, 8)[0].fetch_xor(1 << 3, Release);
        region.words_at(small[1].offset(), 8)[0].fetch_xor(1 << 2, Release);
        let check = SlabAllocator::check_objects(&region, BLOCK_BYTES).unwrap();
        assert_eq!(check.damaged_count, 2, "{check:?}");
        assert_eq!(check.damaged, vec![small[1], large]);
        assert!(!check.is_intact());

        // A slot zeroed in part (a page of it lost): its header, sum and trailer zero, a
        // payload word not: no slot never installed looks like that.
        let partly = slab.alloc(&region, 16).unwrap();
        for word in [0, 3, 4] {
            region.words_at(partly.offset() + word * 8, 8)[0].store(0, Release);
        }
        // (An allocation installs a zero payload: the object's first write would fill it.)
        region.words_at(partly.offset() + 8, 8)[0].store(0x5a, Release);
        let check = SlabAllocator::check_objects(&region, BLOCK_BYTES).unwrap();
        assert_eq!(check.damaged_count, 3, "{check:?}");

        // A block whose magic was lost reads as unused, but its slots are not zero.
        let magic = region.words_at(0, 8)[0].swap(0, std::sync::atomic::Ordering::AcqRel);
        let check = SlabAllocator::check_objects(&region, BLOCK_BYTES).unwrap();
        assert!(
            check
                .damaged
                .contains(&Addr::new(REGION, BLOCK_HEADER_BYTES as u32)),
            "{check:?}"
        );
        region.words_at(0, 8)[0].store(magic, Release);

        // A flipped bit in a block header: nothing says where that block's slots are.
        region.words_at(0, 8)[0].fetch_xor(1 << 40, Release);
        assert!(matches!(
            SlabAllocator::check_objects(&region, BLOCK_BYTES),
            Err(AllocError::CorruptBlockHeader { offset: 0, .. })
        ));
    }

    /// Installs the free of the object at `addr` without giving its slot back (a commit whose
    /// release comes later); returns the version the free installed.
    fn install_free(region: &Region, slab: &SlabAllocator, addr: Addr) -> u64 {
        let words = slab.slot_words(region, addr).unwrap();
        let header = object::load_header(words);
        assert!(header.is_allocated());
        object::try_lock(words, header.version(), Owner::ALLOCATOR).unwrap();
        object::install_with(words, &[], false);
        object::load_header(words).version()
    }

    #[test]
    fn a_recovered_allocator_hands_out_no_slot_of_an_unscanned_block_and_queues_its_frees() {
        let region = region();
        let mut slab = slab();
        let objects: Vec<Addr> = (0..4).map(|_| slab.alloc(&region, 16).unwrap()).collect();
        let mut recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
        assert_eq!(recovered.unscanned_block_count(), 1);
        // A new allocation claims an unused block rather than wait for the scan.
        let fresh = recovered.alloc(&region, 300).unwrap();
        assert_eq!(fresh.offset() as u64 / BLOCK_BYTES, 1);
        // A free in the unscanned block is queued, and counted once the block is scanned.
        recovered.free(&region, objects[1]).unwrap();
        let read = recovered.read_next_block(&region).unwrap();
        // Freed between the read (which saw it allocated) and the finish: queued too.
        recovered.free(&region, objects[2]).unwrap();
        recovered.finish_block(&region, read, &[]);
        assert_eq!(recovered.unscanned_block_count(), 0);
        assert!(recovered.read_next_block(&region).is_none());
        assert_eq!(
            recovered.allocated_addrs(),
            vec![objects[0], objects[3], fresh]
        );
        // Each freed slot comes back exactly once; the block is published by the first
        // allocation in it (the header copied to the backups again).
        let first = recovered.reserve(&region, 16).unwrap();
        assert!(
            first.claimed_block.is_some(),
            "a recovered block starts unpublished"
        );
        recovered.release(&region, first.addr).unwrap();
        let again: BTreeSet<Addr> = (0..2)
            .map(|_| recovered.alloc(&region, 16).unwrap())
            .collect();
        assert_eq!(again, BTreeSet::from([objects[1], objects[2]]));
        assert_eq!(
            recovered.fragmentation(),
            SlabAllocator::rebuild(&region, BLOCK_BYTES)
                .unwrap()
                .fragmentation()
        );
    }

    #[test]
    fn a_free_installed_before_the_scan_and_released_after_it_comes_back_once() {
        let region = region();
        let mut slab = slab();
        let kept = slab.alloc(&region, 16).unwrap();
        let freed = slab.alloc(&region, 16).unwrap();
        let mut recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
        // A transaction installs the free; its slot goes back only later (a one-sided
        // coordinator's install, which the primary observes on a later turn).
        let version = install_free(&region, &recovered, freed);
        let read = recovered.read_next_block(&region).unwrap();
        recovered.finish_block(&region, read, &[(freed, version)]);
        assert_eq!(
            recovered.allocated_addrs(),
            vec![kept, freed],
            "withheld until released"
        );
        recovered.release(&region, freed).unwrap();
        assert_eq!(recovered.allocated_addrs(), vec![kept]);
        let next: Vec<Addr> = (0..2)
            .map(|_| recovered.alloc(&region, 16).unwrap())
            .collect();
        assert_eq!(next[0], freed);
        assert_ne!(next[1], freed, "handed out twice");
    }

    #[test]
    fn a_pending_free_of_another_version_does_not_withhold_a_free_slot() {
        let region = region();
        let mut slab = slab();
        let object = slab.alloc(&region, 16).unwrap();
        slab.free(&region, object).unwrap();
        let version = object::load_header(slab.slot_words(&region, object).unwrap()).version();
        let mut recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
        let read = recovered.read_next_block(&region).unwrap();
        // A transaction that read the object before that free and will fail to validate.
        recovered.finish_block(&region, read, &[(object, version + 1)]);
        assert!(recovered.allocated_addrs().is_empty());
    }

    /// Random allocations and frees, some frees installed and given back later; then a
    /// recovery whose blocks are scanned between further random operations, each scan with the
    /// frees pending then. The allocator must never hand out a live slot or a slot twice, and
    /// must end where a rebuild from the region ends.
    #[test]
    fn a_paced_recovery_amid_allocs_and_frees_matches_the_model() {
        const OP_COUNT: u64 = 600;
        for_each_seed(24, Replay::Exact, |seed| {
            let mut rng = SplitMix::new(seed);
            let region = region();
            let mut slab = slab();
            let mut live: BTreeSet<Addr> = BTreeSet::new();
            let lens = [16, 40, 100, 250];
            let step = |slab: &mut SlabAllocator,
                        live: &mut BTreeSet<Addr>,
                        pending: &mut Vec<(Addr, u64)>,
                        rng: &mut SplitMix| {
                let action = rng.below(100);
                if action < 50 || live.is_empty() {
                    let len = lens[rng.below(lens.len() as u64) as usize];
                    match slab.alloc(&region, len) {
                        Ok(addr) => assert!(live.insert(addr), "seed {seed}: {addr} twice"),
                        Err(AllocError::RegionFull { .. }) => {}
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                } else if action < 75 {
                    let addr = *live
                        .iter()
                        .nth(rng.below(live.len() as u64) as usize)
                        .unwrap();
                    live.remove(&addr);
                    if rng.below(2) == 0 {
                        slab.free(&region, addr).unwrap();
                    } else {
                        let version = install_free(&region, slab, addr);
                        pending.push((addr, version));
                    }
                } else if !pending.is_empty() {
                    let (addr, _) = pending.swap_remove(rng.below(pending.len() as u64) as usize);
                    slab.release(&region, addr).unwrap();
                }
            };
            let mut pending = Vec::new();
            for _ in 0..OP_COUNT {
                step(&mut slab, &mut live, &mut pending, &mut rng);
            }
            let mut recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
            loop {
                for _ in 0..rng.below(40) {
                    step(&mut recovered, &mut live, &mut pending, &mut rng);
                }
                let Some(read) = recovered.read_next_block(&region) else {
                    break;
                };
                for _ in 0..rng.below(10) {
                    step(&mut recovered, &mut live, &mut pending, &mut rng);
                }
                recovered.finish_block(&region, read, &pending);
            }
            for (addr, _) in pending.drain(..) {
                recovered.release(&region, addr).unwrap();
            }
            let model: Vec<Addr> = live.iter().copied().collect();
            assert_eq!(recovered.allocated_addrs(), model, "seed {seed}");
            let rebuilt = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
            assert_eq!(rebuilt.allocated_addrs(), model, "seed {seed}");
            assert_eq!(
                rebuilt.fragmentation(),
                recovered.fragmentation(),
                "seed {seed}"
            );
            // Allocate until full: never a live slot.
            loop {
                match recovered.alloc(&region, 16) {
                    Ok(addr) => assert!(live.insert(addr), "seed {seed}: {addr} handed out live"),
                    Err(AllocError::RegionFull { .. }) => break,
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
        });
    }

    #[test]
    fn a_region_with_no_unused_block_says_recovering_until_its_blocks_are_read() {
        let region = region();
        let mut slab = slab();
        // Every block claimed, the first with a free slot.
        let mut first_block = Vec::new();
        while slab.fragmentation().unused_block_count > 0 {
            let addr = slab.alloc(&region, 16).unwrap();
            if addr.offset() as u64 / BLOCK_BYTES == 0 {
                first_block.push(addr);
            }
        }
        slab.free(&region, first_block[0]).unwrap();
        let mut recovered = SlabAllocator::recover(&region, BLOCK_BYTES).unwrap();
        assert_eq!(
            recovered.reserve(&region, 16),
            Err(AllocError::Recovering { region: REGION })
        );
        let read = recovered.read_next_block(&region).unwrap();
        recovered.finish_block(&region, read, &[]);
        // The block read has room: no need to wait for the others.
        let reserved = recovered.reserve(&region, 16).unwrap();
        assert_eq!(reserved.addr, first_block[0]);
        recovered.release(&region, reserved.addr).unwrap();
        // Every block read: the region runs full, for real.
        while let Some(read) = recovered.read_next_block(&region) {
            recovered.finish_block(&region, read, &[]);
        }
        let full = loop {
            if let Err(e) = recovered.alloc(&region, 16) {
                break e;
            }
        };
        assert!(matches!(full, AllocError::RegionFull { .. }), "{full}");
    }

    #[test]
    fn alloc_near_uses_a_recovered_block_with_its_publish_duty() {
        let region = region();
        let mut slab = slab();
        let near = slab.alloc(&region, 16).unwrap();
        let mut recovered = SlabAllocator::rebuild(&region, BLOCK_BYTES).unwrap();
        let reserved = recovered.reserve_near(&region, 16, near).unwrap();
        assert_eq!(
            reserved.addr.offset() as u64 / BLOCK_BYTES,
            0,
            "in the block of near"
        );
        assert!(
            reserved.claimed_block.is_some(),
            "with the duty to copy its header"
        );
    }

    #[test]
    fn a_release_of_a_slot_never_handed_out_is_an_error() {
        let region = region();
        let mut slab = slab();
        let addr = slab.alloc(&region, 16).unwrap();
        let class = slab.class_of(addr).unwrap();
        let beyond = Addr::new(REGION, addr.offset() + class.slot_bytes() as u32);
        assert_eq!(
            slab.release(&region, beyond),
            Err(AllocError::NotTaken { addr: beyond })
        );
    }
}
