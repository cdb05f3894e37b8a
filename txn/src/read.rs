//! One-sided object reads: what a transaction does to read an object during execution, and
//! what VALIDATE does to re-read headers (docs/protocol.md#execution).
//!
//! A read goes to the object's primary: one READ of the whole slot, decoded with torn-read
//! detection, retried while the object is torn or locked by a committing transaction. The slot
//! size comes from the block header, read once per block and cached (a block keeps its size
//! class for the life of the region, so the cache never goes stale).

use crate::POISONED;
use crate::backoff::Backoff;
use crate::config::Configuration;
use crate::directory::Directory;
use crate::error::TxnError;
use crate::error::op_error;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::{Completion, Fabric, Op, Pending};
use acre_engine::hash::FastMap;
use acre_engine::object::{self, Header};
use acre_engine::region::AccessKey;
use acre_engine::slab::{self, BLOCK_HEADER_BYTES};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// One-sided reads of an object that is locked or torn before the read reports a conflict.
pub const READ_ATTEMPTS_MAX: u32 = 200;
/// A slot of at least this many bytes (a large object) is read with `Fabric::read_large`: over
/// ofi with the hybrid transfer configured, by copy or zero copy as its threshold says
/// (docs/ofi.md, "Hybrid transfer"); by one READ otherwise. Smaller ones are always one READ,
/// which no transfer beats.
pub const LARGE_SLOT_BYTES: u64 = 4096;

/// A consistent read of an object's slot.
#[derive(Clone, Debug)]
pub struct SlotRead {
    pub header: Header,
    /// The whole payload of the slot.
    pub payload: Vec<u8>,
}

/// What a read found at an address.
#[derive(Clone, Debug)]
pub enum Found {
    /// A slot; its object may or may not be allocated.
    Slot(SlotRead),
    /// No slot starts here and none ever will: outside every block, or not on a slot boundary
    /// of a claimed block (a block keeps its size class for the life of the region).
    NeverSlot,
    /// No slot here yet: the block is not claimed. A transaction that relies on that must
    /// check at commit that `block` is still unclaimed.
    UnclaimedBlock { block: Addr },
}

/// Where `addr` stands in its block.
enum SlotAt {
    Slot { slot_bytes: u64 },
    NeverSlot,
    UnclaimedBlock { block: Addr },
}

/// Reads objects on their primaries. Which node is a region's primary comes from the
/// configuration the caller passes: a transaction's own (the one it began in), so that every
/// step of it resolves primaries alike however the node's configuration changes meanwhile.
pub struct ObjectReader {
    fabric: Arc<Fabric>,
    directory: Arc<Directory>,
    /// The sizes every configuration of a cluster shares.
    block_bytes: u64,
    region_bytes: u64,
    /// Slot size of each claimed block seen so far: `(region, block index) -> slot bytes`.
    slot_bytes: RwLock<FastMap<(RegionId, u32), u64>>,
    /// Slots read again because their sum did not match, over a transport that does not read
    /// in address order ([`Self::mixed_rereads`]).
    mixed_rereads: AtomicU64,
}

impl ObjectReader {
    pub(crate) fn new(
        config: &Configuration,
        fabric: Arc<Fabric>,
        directory: Arc<Directory>,
    ) -> ObjectReader {
        ObjectReader {
            block_bytes: config.block_bytes,
            region_bytes: config.region_bytes,
            fabric,
            directory,
            slot_bytes: RwLock::new(FastMap::default()),
            mixed_rereads: AtomicU64::new(0),
        }
    }

    /// How many slot reads were read again because their sum did not match while the fabric
    /// does not read in address order: races an in-order READ would have seen torn.
    pub fn mixed_rereads(&self) -> u64 {
        self.mixed_rereads.load(Ordering::Relaxed)
    }

    /// The primary of the region `addr` is in, in `config`, and the access key of its copy
    /// there. Refused when the region does not serve in `config`.
    pub fn primary_of(
        &self,
        config: &Configuration,
        addr: Addr,
    ) -> Result<(NodeId, AccessKey), TxnError> {
        let primary = config.serving(addr)?.primary;
        Ok((primary, self.key_at(primary, addr)?))
    }

    /// The access key of `node`'s copy of the region `addr` is in.
    pub fn key_at(&self, node: NodeId, addr: Addr) -> Result<AccessKey, TxnError> {
        let (key, _) = self.directory.lookup(&self.fabric, node, addr.region())?;
        Ok(key)
    }

    /// A consistent, unlocked read of the slot at `addr` on its primary (see [`Self::read`]);
    /// `NotFound` where there is no slot.
    pub fn read_slot(&self, config: &Configuration, addr: Addr) -> Result<SlotRead, TxnError> {
        match self.read(config, addr)? {
            Found::Slot(slot) => Ok(slot),
            Found::NeverSlot | Found::UnclaimedBlock { .. } => Err(TxnError::NotFound { addr }),
        }
    }

    /// What is at `addr` on its primary: for a slot, a consistent, unlocked read of it (one
    /// one-sided READ, retried with backoff while the object is torn or locked by a committing
    /// transaction).
    pub fn read(&self, config: &Configuration, addr: Addr) -> Result<Found, TxnError> {
        let (primary, key) = self.primary_of(config, addr)?;
        let slot_bytes = match self.slot_at(primary, key, addr)? {
            SlotAt::Slot { slot_bytes } => slot_bytes,
            SlotAt::NeverSlot => return Ok(Found::NeverSlot),
            SlotAt::UnclaimedBlock { block } => return Ok(Found::UnclaimedBlock { block }),
        };
        let mut backoff = Backoff::poll().with_clock(self.fabric.clock());
        let in_order = self.fabric.reads_in_address_order();
        let mut damaged = None;
        for _ in 0..READ_ATTEMPTS_MAX {
            let len = slot_bytes as u32;
            let bytes = if slot_bytes >= LARGE_SLOT_BYTES {
                self.fabric.read_large(primary, addr, key, len)
            } else {
                self.fabric.read(primary, addr, key, len)
            }
            .map_err(|e| op_error(primary, e))?;
            if object::is_held_back(&bytes) {
                return Err(held_back(primary, addr.region()));
            }
            match object::decode(&bytes) {
                Ok(read) if !read.header.is_locked() => {
                    return Ok(Found::Slot(SlotRead {
                        header: read.header,
                        payload: read.payload.to_vec(),
                    }));
                }
                Ok(_) | Err(object::DecodeError::Torn(_)) => {
                    // What the slot says now: locked or torn, not damaged.
                    damaged = None;
                    backoff.wait();
                }
                // Over a transport that does not read in address order, a READ racing an
                // install may mix two installs under an agreeing header and trailer, which
                // only the sum tells: read again. Damage reads the same every time.
                Err(object::DecodeError::Damaged(e)) if !in_order => {
                    self.mixed_rereads.fetch_add(1, Ordering::Relaxed);
                    damaged = Some(e);
                    backoff.wait();
                }
                Err(e) => {
                    return Err(TxnError::Protocol {
                        node: primary,
                        reason: format!("read of {addr}: {e}"),
                    });
                }
            }
        }
        if let Some(e) = damaged {
            return Err(TxnError::Protocol {
                node: primary,
                reason: format!("read of {addr}: {e} ({READ_ATTEMPTS_MAX} reads)"),
            });
        }
        Err(TxnError::Conflict {
            addr,
            why: "the object stayed locked",
        })
    }

    /// What is at each of `addrs`, as [`Self::read`] says, with one batch of READs per primary,
    /// all batches in flight together (docs/protocol.md#reads): what a transaction that reads
    /// many objects (an audit, a scan) waits for is one round trip, not one per object. An
    /// object found locked or torn is read again alone, as [`Self::read`] does.
    pub fn read_many(
        &self,
        config: &Configuration,
        addrs: &[Addr],
    ) -> Vec<Result<Found, TxnError>> {
        let mut found: Vec<Option<Result<Found, TxnError>>> = vec![None; addrs.len()];
        // The slots to read, per primary: (index in addrs, READ).
        let mut batches: BTreeMap<NodeId, Vec<(usize, Op)>> = BTreeMap::new();
        for (index, &addr) in addrs.iter().enumerate() {
            let located = self
                .primary_of(config, addr)
                .and_then(|(primary, key)| Ok((primary, key, self.slot_at(primary, key, addr)?)));
            match located {
                Ok((primary, key, SlotAt::Slot { slot_bytes })) => {
                    let len = slot_bytes as u32;
                    batches
                        .entry(primary)
                        .or_default()
                        .push((index, Op::Read { addr, key, len }));
                }
                Ok((_, _, SlotAt::NeverSlot)) => found[index] = Some(Ok(Found::NeverSlot)),
                Ok((_, _, SlotAt::UnclaimedBlock { block })) => {
                    found[index] = Some(Ok(Found::UnclaimedBlock { block }));
                }
                Err(e) => found[index] = Some(Err(e)),
            }
        }
        let posted: Vec<(NodeId, Vec<usize>, Pending)> = batches
            .into_iter()
            .map(|(primary, batch)| {
                let (indexes, ops): (Vec<usize>, Vec<Op>) = batch.into_iter().unzip();
                (primary, indexes, self.fabric.post(primary, ops))
            })
            .collect();
        for (primary, indexes, pending) in posted {
            let results = pending.wait();
            assert_eq!(results.len(), indexes.len(), "one completion per READ");
            for (index, result) in indexes.into_iter().zip(results) {
                let addr = addrs[index];
                found[index] = Some(match result.map_err(|e| op_error(primary, e)) {
                    Ok(Completion::Read(bytes)) => match object::decode(&bytes) {
                        Ok(read) if !read.header.is_locked() => Ok(Found::Slot(SlotRead {
                            header: read.header,
                            payload: read.payload.to_vec(),
                        })),
                        // Locked by a committing transaction, or torn: wait for it alone.
                        Ok(_) | Err(object::DecodeError::Torn(_)) => self.read(config, addr),
                        // Maybe torn, over a transport that does not read in address order.
                        Err(object::DecodeError::Damaged(_))
                            if !self.fabric.reads_in_address_order() =>
                        {
                            self.read(config, addr)
                        }
                        Err(e) => Err(TxnError::Protocol {
                            node: primary,
                            reason: format!("read of {addr}: {e}"),
                        }),
                    },
                    Ok(other) => Err(TxnError::Protocol {
                        node: primary,
                        reason: format!("read of {addr} completed as {other:?}"),
                    }),
                    Err(e) => Err(e),
                });
            }
        }
        found
            .into_iter()
            .map(|found| found.expect("every address was read or resolved"))
            .collect()
    }

    /// Posts one-sided re-reads of the header words of objects on one node (VALIDATE by
    /// one-sided reads); [`Self::headers_read`] waits for them. Posting every node's batch
    /// before waiting for any keeps a validation to one round trip.
    pub fn post_header_reads(&self, node: NodeId, addrs: &[Addr]) -> Result<Pending, TxnError> {
        let mut ops = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            ops.push(Op::Read {
                addr,
                key: self.key_at(node, addr)?,
                len: 8,
            });
        }
        Ok(self.fabric.post(node, ops))
    }

    /// The headers a [`Self::post_header_reads`] of `count` objects on `node` read.
    pub fn headers_read(
        &self,
        node: NodeId,
        pending: Pending,
        count: usize,
    ) -> Result<Vec<Header>, TxnError> {
        let headers: Vec<Header> = pending
            .wait()
            .into_iter()
            .map(|result| match result.map_err(|e| op_error(node, e))? {
                Completion::Read(bytes) if bytes.len() == 8 => Ok(Header::from_u64(
                    u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                )),
                other => Err(TxnError::Protocol {
                    node,
                    reason: format!("header read completed as {other:?}"),
                }),
            })
            .collect::<Result<_, _>>()?;
        assert_eq!(headers.len(), count, "one completion per READ");
        Ok(headers)
    }

    /// Re-reads the header words of objects on one node.
    pub fn read_headers(&self, node: NodeId, addrs: &[Addr]) -> Result<Vec<Header>, TxnError> {
        let pending = self.post_header_reads(node, addrs)?;
        self.headers_read(node, pending, addrs.len())
    }

    /// Whether the block at `block` is still unclaimed on its primary (one READ of its header,
    /// never cached): how a transaction validates that an address it read held no slot.
    pub fn block_unclaimed(&self, config: &Configuration, block: Addr) -> Result<bool, TxnError> {
        let (primary, key) = self.primary_of(config, block)?;
        let header = self.read_block_header(primary, key, block)?;
        Ok(slab::block_slot_bytes(&header, self.block_bytes).is_none())
    }

    /// The header of the block at `block` on `primary`, as one READ found it: an error if the
    /// copy there is held back (any of its words the held-back word: a READ out of address
    /// order may see a claim's magic before the words under it). Over a transport that does
    /// not read in address order, a header with the slab's magic whose other words do not
    /// check is a claim caught half-way: it is read again.
    fn read_block_header(
        &self,
        primary: NodeId,
        key: AccessKey,
        block: Addr,
    ) -> Result<Vec<u8>, TxnError> {
        let in_order = self.fabric.reads_in_address_order();
        let mut backoff = Backoff::poll().with_clock(self.fabric.clock());
        let mut attempts = 0;
        loop {
            let header = self
                .fabric
                .read(primary, block, key, BLOCK_HEADER_BYTES as u32)
                .map_err(|e| op_error(primary, e))?;
            if header.chunks(8).any(object::is_held_back) {
                return Err(held_back(primary, block.region()));
            }
            let half_claimed = !in_order
                && header[..8] == slab::BLOCK_MAGIC.to_le_bytes()
                && slab::block_slot_bytes(&header, self.block_bytes).is_none();
            attempts += 1;
            if !half_claimed || attempts >= READ_ATTEMPTS_MAX {
                return Ok(header);
            }
            backoff.wait();
        }
    }

    /// Where `addr` stands in its block: the slot size when a slot starts there (from the
    /// block header, read once per block and cached).
    fn slot_at(&self, primary: NodeId, key: AccessKey, addr: Addr) -> Result<SlotAt, TxnError> {
        let block_bytes = self.block_bytes;
        let block_index = (addr.offset() as u64 / block_bytes) as u32;
        let block = Addr::new(addr.region(), (block_index as u64 * block_bytes) as u32);
        if block.offset() as u64 + block_bytes > self.region_bytes {
            return Ok(SlotAt::NeverSlot);
        }
        let cached = self
            .slot_bytes
            .read()
            .expect(POISONED)
            .get(&(addr.region(), block_index))
            .copied();
        let slot_bytes = match cached {
            Some(slot_bytes) => slot_bytes,
            None => {
                let header = self.read_block_header(primary, key, block)?;
                let Some(slot_bytes) = slab::block_slot_bytes(&header, block_bytes) else {
                    return Ok(SlotAt::UnclaimedBlock { block });
                };
                self.slot_bytes
                    .write()
                    .expect(POISONED)
                    .insert((addr.region(), block_index), slot_bytes);
                slot_bytes
            }
        };
        let in_block = addr.offset() as u64 % block_bytes;
        let fits = in_block >= BLOCK_HEADER_BYTES
            && (in_block - BLOCK_HEADER_BYTES).is_multiple_of(slot_bytes)
            && in_block + slot_bytes <= block_bytes;
        Ok(if fits {
            SlotAt::Slot { slot_bytes }
        } else {
            SlotAt::NeverSlot
        })
    }
}

/// The error of a read that met a copy its node holds back ([`object::HELD_BACK_WORD`]).
fn held_back(primary: NodeId, region: RegionId) -> TxnError {
    TxnError::Unavailable {
        node: primary,
        reason: format!(
            "its copy of {region} was found damaged at its restart and is held back until the \
             CM gives the region another primary"
        ),
    }
}
