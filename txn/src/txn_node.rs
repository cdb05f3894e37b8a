//! `TxnNode`: the transactional side of one node: its configuration, fabric, links (the log
//! rings it writes at every other node), one-sided object reads, its reply area, and the
//! primary state of the regions it holds. Coordinators ([`crate::Txn`]) run on application
//! threads against a `TxnNode`; the node's worker (acre-replication) serves the records that
//! arrive in its own rings and answers through [`TxnNode::reply`].

use crate::config::Configuration;
use crate::directory::Directory;
use crate::error::TxnError;
use crate::link::Links;
use crate::primary::Primary;
use crate::read::ObjectReader;
use crate::record::{ReplyTo, TxnRecord};
use crate::reply::{Code, Reply, ReplyArea, reply_ops};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::fabric::{Fabric, Op};
use acre_engine::slab::{AllocError, BLOCK_HEADER_BYTES, Reserved};
use std::sync::Arc;
use std::time::Duration;

/// How long a coordinator waits for a participant's reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// One node's transactional state.
pub struct TxnNode {
    node: NodeId,
    config: Arc<Configuration>,
    fabric: Arc<Fabric>,
    directory: Arc<Directory>,
    links: Links,
    reader: ObjectReader,
    replies: ReplyArea,
    primary: Primary,
}

impl TxnNode {
    pub fn new(
        config: Arc<Configuration>,
        fabric: Arc<Fabric>,
        directory: Directory,
        replies: ReplyArea,
        primary: Primary,
    ) -> TxnNode {
        let directory = Arc::new(directory);
        TxnNode {
            node: fabric.node_id(),
            links: Links::new(config.id, fabric.clone(), directory.clone()),
            reader: ObjectReader::new(config.clone(), fabric.clone(), directory.clone()),
            config,
            fabric,
            directory,
            replies,
            primary,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn config(&self) -> &Arc<Configuration> {
        &self.config
    }

    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The rings this node writes at the others (reservations, appends, truncations).
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// One-sided reads of objects on their primaries.
    pub fn reader(&self) -> &ObjectReader {
        &self.reader
    }

    pub fn replies(&self) -> &ReplyArea {
        &self.replies
    }

    pub fn primary(&self) -> &Primary {
        &self.primary
    }

    /// Answers a coordinator on `to_node` (fire and forget: a lost reply becomes the
    /// coordinator's timeout).
    pub fn reply(&self, to_node: NodeId, to: ReplyTo, seq: u64, code: Code, values: [u64; 3]) {
        let deliver = || {
            self.fabric
                .execute(to_node, reply_ops(to, seq, code, values))
                .into_iter()
                .find_map(Result::err)
        };
        let Some(first) = deliver() else { return };
        // The coordinator's node may have restarted (a client process): look it up afresh.
        self.fabric.forget_peer(to_node);
        self.directory.forget(to_node);
        let _ = self
            .directory
            .lookup(&self.fabric, to_node, crate::reply::REPLY_AREA_ID);
        if let Some(e) = deliver() {
            tracing::warn!(node = %self.node, to = %to_node, "reply lost: {first}; then {e}");
        }
    }

    /// Reserves a slot in one of this node's primary regions (`region`, near `near` if given)
    /// and, when that claimed a new block, copies the block header to the region's backups
    /// before returning, so backups can apply the object later.
    pub fn reserve_here(
        &self,
        region: RegionId,
        len: usize,
        near: Option<Addr>,
    ) -> Result<Reserved, AllocError> {
        let reserved = self.primary.reserve(region, len, near)?;
        if let Some((offset, header)) = &reserved.claimed_block {
            let placement = self
                .config
                .placement(region)
                .expect("a primary region is in the configuration");
            for &backup in &placement.backups {
                let outcome = self
                    .directory
                    .lookup(&self.fabric, backup, region)
                    .map_err(|e| e.to_string())
                    .and_then(|(key, _)| {
                        let addr = Addr::new(region, *offset);
                        let results = self.fabric.execute(
                            backup,
                            vec![
                                Op::Write {
                                    addr,
                                    key,
                                    data: header.clone(),
                                },
                                Op::Persist {
                                    addr,
                                    key,
                                    len: BLOCK_HEADER_BYTES as u32,
                                },
                            ],
                        );
                        results
                            .into_iter()
                            .try_for_each(|r| r.map(|_| ()))
                            .map_err(|e| e.to_string())
                    });
                if let Err(reason) = outcome {
                    // The slot stays usable on the primary; the backup cannot apply objects
                    // in this block until recovery re-replicates the region.
                    tracing::error!(
                        node = %self.node,
                        %backup,
                        "block header of {region}+{offset:#x} did not reach the backup: {reason}"
                    );
                }
            }
        }
        Ok(reserved)
    }

    /// Regions this node is primary of, for allocations without a locality hint.
    pub fn local_primary_regions(&self) -> Vec<RegionId> {
        self.primary.region_ids()
    }

    /// Sends a record that needs no reservation bookkeeping by the caller and waits for the
    /// reply at `index` of the transaction's slot.
    pub fn request(
        &self,
        target: NodeId,
        record: TxnRecord,
        slot: u16,
        index: usize,
    ) -> Result<Reply, TxnError> {
        let seq = record.txn.seq;
        self.links.send_one(target, record)?;
        self.replies
            .wait(slot, seq, &[index], REPLY_TIMEOUT)
            .map(|mut replies| replies.remove(0))
            .map_err(|_| TxnError::Unavailable {
                node: target,
                reason: format!("no reply within {REPLY_TIMEOUT:?}"),
            })
    }
}
