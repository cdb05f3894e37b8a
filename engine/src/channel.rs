//! Message channels: one ring per (sender, receiver) pair that lives in the receiver's memory, is
//! written by the sender with one-sided WRITEs and is polled by the receiver (FaRM's design).
//!
//! The rings use acre-nvm-log's format and protocol: the sender plans an append with a
//! [`RingWriter`] and carries the plan out as fabric operations (WRITE the record body, WRITE its
//! commit word, PERSIST, WRITE and PERSIST the tail), followed by a NOTIFY that wakes the
//! receiver. The batch goes to one node, so it executes in order: the commit word lands last.
//! The receiver reads its rings in place with a [`RingReader`] and truncates what it has handled,
//! which the sender learns by reading the ring's head word when it runs out of room.

use crate::addr::{Addr, NodeId, RegionId};
use crate::directory::{AreaEntry, AreaKind};
use crate::fabric::doorbell::Doorbell;
use crate::fabric::memory::NodeMemory;
use crate::fabric::{Completion, Fabric, Op, OpError};
use crate::region::{AccessKey, Region};
use acre_nvm_log::ring::{
    DATA_OFFSET, HEAD_OFFSET, TAIL_OFFSET, TAIL_SEQ_OFFSET, format, record_kind_written,
};
use acre_nvm_log::{
    LogError, LogOp, MapOptions, Media, Record, RecordKind, Reservation, RingGeometry, RingReader,
    RingWriter,
};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Area ids at or above this are message rings: ring of sender `s` is `RING_AREA_BASE | s`.
pub const RING_AREA_BASE: u32 = 0x8000_0000;
/// Default bytes of one ring area (header included).
pub const RING_BYTES_DEFAULT: u64 = 1 << 20;

/// The shape of a ring area of `ring_bytes` (header included): its data capacity, and records
/// of up to a quarter of it. An error says why no ring fits in `ring_bytes`.
pub fn ring_geometry(ring_bytes: u64) -> Result<RingGeometry, LogError> {
    RingGeometry::with_capacity(ring_bytes.saturating_sub(DATA_OFFSET) / 64 * 64)
}

/// The area id, at the receiver, of the ring that `sender` writes.
pub fn ring_area_id(sender: NodeId) -> RegionId {
    RegionId(RING_AREA_BASE | sender.0 as u32)
}

/// The kinds of the records a batch appends to rings, in order (pads included): what a fault
/// rule looks at to fail one protocol step's message and not another's.
pub fn appended_kinds(ops: &[Op]) -> Vec<RecordKind> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Write { addr, data, .. } if addr.region().0 >= RING_AREA_BASE => {
                record_kind_written(addr.offset() as u64, data)
            }
            _ => None,
        })
        .collect()
}

/// Why a channel operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The ring format refused (full: retry later; corrupt: stop).
    #[error(transparent)]
    Log(#[from] LogError),
    /// The fabric failed to reach the receiver.
    #[error(transparent)]
    Op(#[from] OpError),
    #[error("channel setup failed: {0}")]
    Io(#[from] io::Error),
    #[error("{node} sent on a channel it has no ring for")]
    NoRing { node: NodeId },
}

/// A message read from an inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub sender: NodeId,
    pub record: Record,
}

struct InboxRing {
    sender: NodeId,
    reader: RingReader<Arc<Region>>,
    region: Arc<Region>,
}

/// The receiving end of every channel to one node.
pub struct Inbox {
    rings: Vec<InboxRing>,
    doorbell: Arc<Doorbell>,
    next_index: usize,
}

impl Inbox {
    /// Creates, formats and registers one ring per sender: anonymous memory when `dir` is `None`,
    /// files in the cluster directory otherwise.
    pub fn create(
        memory: &NodeMemory,
        senders: &[NodeId],
        ring_bytes: u64,
        dir: Option<&Path>,
        options: MapOptions,
    ) -> Result<Inbox, ChannelError> {
        let geometry = ring_geometry(ring_bytes)?;
        let mut rings = Vec::with_capacity(senders.len());
        for &sender in senders {
            let id = ring_area_id(sender);
            let region = match dir {
                None => Region::anonymous(id, ring_bytes)?,
                Some(dir) => Region::create_file(dir, memory.node_id(), id, ring_bytes, options)?,
            };
            format(&region, geometry)?;
            let region = Arc::new(region);
            memory
                .register(region.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e))?;
            let reader = RingReader::new(region.clone(), geometry, 0, 0);
            rings.push(InboxRing {
                sender,
                reader,
                region,
            });
        }
        Ok(Inbox {
            rings,
            doorbell: memory.doorbell().clone(),
            next_index: 0,
        })
    }

    /// The rings as manifest entries (so senders can find them).
    pub fn area_entries(&self) -> Vec<AreaEntry> {
        self.rings
            .iter()
            .map(|r| {
                AreaEntry::new(
                    r.region.id(),
                    AreaKind::Ring,
                    r.region.len(),
                    r.region.key(),
                )
            })
            .collect()
    }

    /// The next message from any sender (round robin), without blocking.
    pub fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        let count = self.rings.len();
        for step in 0..count {
            let index = (self.next_index + step) % count;
            let ring = &mut self.rings[index];
            if let Some(record) = ring.reader.poll()? {
                self.next_index = (index + 1) % count;
                return Ok(Some(Message {
                    sender: ring.sender,
                    record,
                }));
            }
        }
        Ok(None)
    }

    /// The next message from `sender` only, without blocking (`None` also when this inbox has
    /// no ring for `sender`): how a receiver reads everything one sender has written so far.
    pub fn poll_from(&mut self, sender: NodeId) -> Result<Option<Message>, ChannelError> {
        let Some(ring) = self.rings.iter_mut().find(|r| r.sender == sender) else {
            return Ok(None);
        };
        Ok(ring.reader.poll()?.map(|record| Message { sender, record }))
    }

    /// The next message, spinning briefly and then sleeping on the doorbell for up to `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Message>, ChannelError> {
        let doorbell = self.doorbell.clone();
        let mut found = Ok(None);
        doorbell.wait_for(timeout, || {
            found = self.poll();
            !matches!(found, Ok(None))
        });
        found
    }

    /// Frees a sender's ring up to `pos` (the end of a handled message).
    pub fn truncate(&mut self, sender: NodeId, pos: u64) -> Result<(), ChannelError> {
        let ring = self
            .rings
            .iter_mut()
            .find(|r| r.sender == sender)
            .ok_or(ChannelError::NoRing { node: sender })?;
        ring.reader.truncate(pos)?;
        Ok(())
    }
}

/// The header of a remote ring as fetched by one READ, viewed as media of the ring's full size so
/// the ring's own header validation applies.
struct FetchedHeader {
    words: Vec<u64>,
    area_bytes: u64,
}

impl Media for FetchedHeader {
    fn len(&self) -> u64 {
        self.area_bytes
    }
    fn load(&self, offset: u64) -> u64 {
        let index = (offset / 8) as usize;
        assert!(
            index < self.words.len(),
            "ring header view read beyond the header: {offset}"
        );
        self.words[index]
    }
    fn store(&self, offset: u64, _value: u64) {
        panic!("the fetched ring header is read-only (store at {offset})")
    }
    fn persist(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The sending end of the channel from this node to one receiver.
pub struct Outbox {
    target: NodeId,
    area: RegionId,
    key: AccessKey,
    writer: RingWriter,
}

impl Outbox {
    /// Attaches to the ring that `target` keeps for this node (an area of `area_bytes` under `key`).
    pub fn attach(
        fabric: &Fabric,
        target: NodeId,
        key: AccessKey,
        area_bytes: u64,
    ) -> Result<Outbox, ChannelError> {
        let area = ring_area_id(fabric.node_id());
        let bytes = fabric.read(target, Addr::new(area, 0), key, DATA_OFFSET as u32)?;
        if bytes.len() != DATA_OFFSET as usize {
            return Err(OpError::Protocol {
                node: target,
                reason: format!(
                    "ring header read returned {} bytes, not {DATA_OFFSET}",
                    bytes.len()
                ),
            }
            .into());
        }
        let words: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let header = FetchedHeader { words, area_bytes };
        let geometry = RingGeometry::read(&header)?;
        let writer = RingWriter::attach(
            geometry,
            header.load(HEAD_OFFSET),
            header.load(TAIL_OFFSET),
            header.load(TAIL_SEQ_OFFSET),
        )?;
        Ok(Outbox {
            target,
            area,
            key,
            writer,
        })
    }

    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Re-reads the receiver's head to learn how much it has truncated.
    fn refresh_head(&mut self, fabric: &Fabric) -> Result<(), ChannelError> {
        let bytes = fabric.read(
            self.target,
            Addr::new(self.area, HEAD_OFFSET as u32),
            self.key,
            8,
        )?;
        let word =
            u64::from_le_bytes(bytes.as_slice().try_into().map_err(|_| OpError::Protocol {
                node: self.target,
                reason: "the head read did not return 8 bytes".into(),
            })?);
        self.writer.observe_head_word(word)?;
        Ok(())
    }

    /// Rings the receiver's doorbell (for instance when its ring is full and it should catch up).
    pub fn wake(&self, fabric: &Fabric) -> Result<(), ChannelError> {
        match fabric.execute(self.target, vec![Op::Notify]).pop() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Bytes a new reservation could take now, as far as this sender knows the receiver's head.
    pub fn free_bytes(&self) -> u64 {
        self.writer.free_bytes()
    }

    /// Reserves room for records with these payload lengths, re-reading the receiver's head once
    /// when the ring looks full. Fails with [`LogError::Full`] (retry after the receiver has
    /// truncated) changing nothing.
    pub fn reserve(
        &mut self,
        fabric: &Fabric,
        payload_lens: &[usize],
    ) -> Result<Reservation, ChannelError> {
        match self.writer.reserve(payload_lens) {
            Err(LogError::Full { .. }) => {
                self.refresh_head(fabric)?;
                Ok(self.writer.reserve(payload_lens)?)
            }
            other => Ok(other?),
        }
    }

    /// Gives back what is left of a reservation.
    pub fn release(&mut self, reservation: Reservation) {
        self.writer.release(reservation);
    }

    /// Appends messages inside `reservation` in one batch; returns once all are durable in the
    /// receiver's ring. `wake` rings the receiver's doorbell; records that need no prompt
    /// attention (a backup's COMMIT-BACKUP) leave its CPU alone.
    pub fn append_reserved(
        &mut self,
        fabric: &Fabric,
        reservation: &mut Reservation,
        messages: &[(RecordKind, &[u8])],
        wake: bool,
    ) -> Result<(), ChannelError> {
        // If the batch fails, the writer goes back to where it was, so the next send rewrites
        // the same positions instead of leaving a hole the receiver would wait at forever. This
        // is exact when nothing of the batch executed (the target was unknown or unreachable);
        // a batch cut off half-way (a TCP connection breaking mid-batch) may have delivered some
        // messages that the retry then overwrites: recovering from that is the failure-handling
        // layer's job (it rebuilds channels after reconfiguration).
        let before = self.writer.clone();
        let mut ops = Vec::new();
        for (kind, payload) in messages {
            let plan = self.writer.append(reservation, *kind, payload);
            for op in plan.ops {
                ops.push(match op {
                    LogOp::Write { offset, bytes } => Op::Write {
                        addr: self.addr(offset),
                        key: self.key,
                        data: bytes,
                    },
                    LogOp::Persist { offset, len } => Op::Persist {
                        addr: self.addr(offset),
                        key: self.key,
                        len: len as u32,
                    },
                });
            }
        }
        if wake {
            ops.push(Op::Notify);
        }
        let outcome = fabric
            .execute(self.target, ops)
            .into_iter()
            .try_for_each(|result| match result? {
                Completion::Write | Completion::Persist | Completion::Notify => Ok(()),
                other => Err(OpError::Protocol {
                    node: self.target,
                    reason: format!("ring write completed as {other:?}"),
                }),
            });
        if let Err(error) = outcome {
            self.writer.rewind(before, reservation);
            return Err(error.into());
        }
        Ok(())
    }

    /// Sends messages in one batch; returns once all are durable in the receiver's ring. Fails
    /// with [`LogError::Full`], sending nothing, when the ring has no room for all of them.
    pub fn send_batch(
        &mut self,
        fabric: &Fabric,
        messages: &[(RecordKind, &[u8])],
    ) -> Result<(), ChannelError> {
        let lens: Vec<usize> = messages.iter().map(|(_, payload)| payload.len()).collect();
        let mut reservation = self.reserve(fabric, &lens)?;
        let outcome = self.append_reserved(fabric, &mut reservation, messages, true);
        self.release(reservation);
        outcome
    }

    /// Sends one message.
    pub fn send(
        &mut self,
        fabric: &Fabric,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.send_batch(fabric, &[(kind, payload)])
    }

    fn addr(&self, offset: u64) -> Addr {
        Addr::new(
            self.area,
            u32::try_from(offset).expect("ring areas are smaller than 4 GiB"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fabric::local::{LocalCluster, LocalTransport};
    use crate::fabric::{Doorbell, Transport};

    fn memory(node: u16) -> Arc<NodeMemory> {
        Arc::new(NodeMemory::new(
            NodeId(node),
            Arc::new(Doorbell::anonymous().unwrap()),
        ))
    }

    #[test]
    fn a_send_that_fails_leaves_no_hole_in_the_ring() {
        let cluster = LocalCluster::new();
        let (sender, receiver) = (memory(1), memory(2));
        let mut inbox = Inbox::create(
            &receiver,
            &[NodeId(1)],
            64 << 10,
            None,
            MapOptions::default(),
        )
        .unwrap();
        let key = receiver.area(ring_area_id(NodeId(1))).unwrap().key();
        cluster.add(sender.clone());
        cluster.add(receiver.clone());
        let fabric = Fabric::new(
            sender,
            Transport::Local(LocalTransport::new(cluster.clone())),
        );
        let mut outbox = Outbox::attach(&fabric, NodeId(2), key, 64 << 10).unwrap();

        outbox.send(&fabric, RecordKind(1), b"one").unwrap();
        cluster.remove(NodeId(2));
        assert!(outbox.send(&fabric, RecordKind(1), b"lost").is_err());
        cluster.add(receiver);
        outbox.send(&fabric, RecordKind(1), b"three").unwrap();

        let payloads: Vec<Vec<u8>> = std::iter::from_fn(|| inbox.poll().unwrap())
            .map(|m| m.record.payload)
            .collect();
        assert_eq!(payloads, vec![b"one".to_vec(), b"three".to_vec()]);
    }
}
