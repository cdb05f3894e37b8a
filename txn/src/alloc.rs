//! Reserving a slot at a primary for a transaction's allocation (docs/protocol.md#allocation),
//! and publishing a newly claimed block once its header is durable at every backup.
//!
//! A backup applies an object only in a block whose header it holds (the header says how the
//! block is cut into slots). So the first reservation in a block, and any reservation while
//! the block is unpublished, carries the duty to copy the header to every backup of the region
//! and then publish the block; until it is published, no reservation gets a slot there without
//! that duty (`SlabAllocator::publish`). A reservation whose copy fails is handed back, and the
//! block stays unpublished for the next reservation to try again.

use crate::error::op_error;
use crate::txn_node::TxnNode;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::Op;
use acre_engine::region::AccessKey;
use acre_engine::slab::{AllocError, BLOCK_HEADER_BYTES, Reserved};

/// Why a slot could not be reserved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReserveError {
    /// The allocator refused (region full, too large, not a primary region here).
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The slot's block is new and its header could not be made durable at a backup.
    #[error("the header of block {region}+{offset:#x} did not reach backup {backup}: {reason}")]
    Unreplicated {
        region: RegionId,
        offset: u32,
        backup: NodeId,
        reason: String,
    },
    /// As `Unreplicated`, while the node's configuration `config` is not committed: the new
    /// backup may not have adopted it yet (its copy is not there); retried once it is.
    #[error(
        "the header of a new block did not reach backup {backup}, which may not have adopted \
         configuration {config} yet: retry shortly"
    )]
    Reconfiguring { config: u64, backup: NodeId },
}

impl TxnNode {
    /// Reserves a slot in one of this node's primary regions (`region`, near `near` if given).
    /// When the slot's block is not published yet, first copies its header to the region's
    /// backups (durable there) and publishes it.
    pub fn reserve_here(
        &self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Reserved, ReserveError> {
        let reserved = self.primary().reserve(region, len, near)?;
        let Some((offset, header)) = &reserved.claimed_block else {
            return Ok(reserved);
        };
        let config = self.config();
        let placement = config
            .placement(region)
            .expect("a primary region is in the configuration");
        for &backup in &placement.backups {
            if let Err(reason) = self.copy_block_header(backup, region, *offset, header) {
                self.primary().release(&[reserved.addr]);
                let (current, committed) = self.config_state();
                if !committed {
                    return Err(ReserveError::Reconfiguring {
                        config: current,
                        backup,
                    });
                }
                return Err(ReserveError::Unreplicated {
                    region,
                    offset: *offset,
                    backup,
                    reason,
                });
            }
        }
        self.primary().publish(region, *offset);
        Ok(reserved)
    }

    /// Writes a block header into `backup`'s copy of `region` and makes it durable there.
    fn copy_block_header(
        &self,
        backup: NodeId,
        region: RegionId,
        offset: u32,
        header: &[u8],
    ) -> Result<(), String> {
        assert_eq!(
            header.len() as u64,
            BLOCK_HEADER_BYTES,
            "a whole block header"
        );
        let (key, _) = self
            .directory()
            .lookup(self.fabric(), backup, region)
            .map_err(|e| e.to_string())?;
        let ops = block_header_ops(Addr::new(region, offset), key, header);
        for result in self.fabric().execute(backup, ops) {
            result.map_err(|e| op_error(backup, e).to_string())?;
        }
        Ok(())
    }
}

/// The operations that copy a block header to a backup: words 1..4, then the magic (word 0),
/// then a PERSIST. The magic goes last, as a claim stores it: a WRITE stores its words in
/// increasing address order, so one WRITE of the whole header, cut short, would leave a magic
/// before the words it vouches for, which a restarted backup takes for a corrupt header
/// (docs/formats.md#block).
fn block_header_ops(addr: Addr, key: AccessKey, header: &[u8]) -> Vec<Op> {
    const MAGIC_BYTES: usize = 8;
    vec![
        Op::Write {
            addr: Addr::new(addr.region(), addr.offset() + MAGIC_BYTES as u32),
            key,
            data: header[MAGIC_BYTES..].to_vec(),
        },
        Op::Write {
            addr,
            key,
            data: header[..MAGIC_BYTES].to_vec(),
        },
        Op::Persist {
            addr,
            key,
            len: BLOCK_HEADER_BYTES as u32,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: one WRITE of the whole header stored the magic first.
    #[test]
    fn a_block_header_reaches_a_backup_magic_last() {
        let header: Vec<u8> = (0..BLOCK_HEADER_BYTES as u8).collect();
        let addr = Addr::new(RegionId(3), 1 << 20);
        let ops = block_header_ops(addr, AccessKey(9), &header);
        let writes: Vec<(u32, &[u8])> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Write { addr, data, .. } => Some((addr.offset(), &data[..])),
                _ => None,
            })
            .collect();
        let (magic_at, magic) = *writes.last().expect("writes");
        assert_eq!((magic_at, magic), (1 << 20, &header[..8]), "the magic last");
        let mut written = vec![0u8; header.len()];
        for (at, data) in &writes {
            let from = (at - (1 << 20)) as usize;
            written[from..from + data.len()].copy_from_slice(data);
        }
        assert_eq!(written, header, "every word written once");
        assert!(matches!(ops.last(), Some(Op::Persist { len: 32, .. })));
    }
}
