//! Message channels: one ring per (sender, receiver) pair that lives in the receiver's memory, is
//! written by the sender with one-sided WRITEs and is polled by the receiver (FaRM's design).
//!
//! The rings use acre-nvm-log's format and protocol: the sender plans an append with a
//! [`RingWriter`] and carries the plan out as fabric operations (WRITE the record body, WRITE its
//! commit word, PERSIST, WRITE and PERSIST the tail), then READs the reader's state word back,
//! followed by a NOTIFY that wakes the receiver. The batch goes to one node, so it executes in
//! order: the commit word lands last. The receiver reads its rings in place with a
//! [`RingReader`] and truncates what it has handled, which the sender learns by reading the
//! ring's head word when it runs out of room.
//!
//! Failures (docs/formats.md, "Positions after a failed or killed append"): a batch that failed
//! may have executed in part, and the receiver may already have read a record of it. The sender
//! never plans over it: before its next reserve or append it reads the ring and continues after
//! the last record whose commit word landed ([`resume_point`]), as a sender that attaches after
//! a restart does. A ring the receiver found damaged is no longer read; the sender learns it
//! from the state word it reads back after every append, asks the receiver to reset the ring,
//! and resumes once it has ([`RingReader::reset`]). Every other ring of the receiver is served
//! as before.

use crate::addr::{Addr, NodeId, RegionId};
use crate::clock::{Clock, Time};
use crate::directory::{AreaEntry, AreaKind};
use crate::fabric::doorbell::Doorbell;
use crate::fabric::memory::NodeMemory;
use crate::fabric::{Completion, Fabric, Op, OpError};
use crate::hash::FastMap;
use crate::region::{AccessKey, Region};
use acre_nvm_log::ring::{
    DATA_OFFSET, FENCE_OFFSET, HEAD_OFFSET, RESET_ACK_OFFSET, RESET_REQUEST_OFFSET, RingReset,
    STATE_DAMAGED, STATE_OFFSET, format, record_kind_written, resume_point,
};
use acre_nvm_log::{
    LogError, LogOp, MapOptions, Media, Record, RecordKind, Reservation, RingGeometry, RingReader,
    RingWriter,
};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
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

/// Bytes of a remote ring a sender reads at once while it looks for where to resume.
const RESUME_READ_BYTES: u64 = 16 << 10;
/// An inbox looks for reset requests when no ring has a message and its doorbell rang since it
/// last looked (a sender rings it right after storing a request), and at least once every this
/// many polls, whatever they found: so a receiver kept busy by other senders still resets a ring
/// whose sender waits for it, and a request whose ring was lost is still seen. An idle worker
/// spins through [`crate::fabric::doorbell::SPIN_CHECKS_MAX`] polls each time it waits, so it too
/// looks within a wait or two.
const RESET_CHECK_POLLS: u32 = 256;
/// A sender whose reset request is not carried out within this long asks again, with a new
/// nonce: the receiver carries out each nonce once, and a reset that failed (a persist error)
/// is not retried until asked again.
const RESET_ASK_AGAIN_AFTER: Duration = Duration::from_secs(1);

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
    /// Sender's side: the receiver stopped reading this sender's ring (it found a damaged
    /// record), so what this append wrote is not read. The next reserve or append asks the
    /// receiver to reset the ring; retry.
    #[error(
        "{node} found this node's ring damaged and stopped reading it: this append is lost; \
         retry once the ring is reset"
    )]
    Stopped { node: NodeId },
    /// Sender's side: the ring cannot be written ({reason}); the receiver was asked to reset
    /// it. Retry: the reset happens when the receiver's worker next finds its rings idle.
    #[error("{node} is resetting this node's ring ({reason}); retry")]
    ResetPending { node: NodeId, reason: String },
    /// Receiver's side ([`Inbox::poll`]): `sender`'s ring holds a damaged record where it is
    /// read next. It is no longer read (the other rings are) until its sender has it reset;
    /// report it, and keep polling.
    #[error("the ring of {sender} is damaged, and no longer read until it is reset: {source}")]
    Damaged {
        sender: NodeId,
        #[source]
        source: LogError,
    },
    /// Receiver's side ([`Inbox::poll`]): `sender`'s ring was reset at its request. Records
    /// from `reset.resumed_at` on, up to the tail the header had (`reset.tail_before`), could
    /// not be read and are lost; report it, and keep polling.
    #[error(
        "the ring of {sender} was reset at its request: it resumes at position {}, and what \
         was appended from there on is lost (the tail was at {:?})",
        reset.resumed_at,
        reset.tail_before
    )]
    Reset { sender: NodeId, reset: RingReset },
    /// Receiver's side ([`Inbox::poll`]): resetting `sender`'s ring failed (persisting it);
    /// its sender keeps waiting until it asks again.
    #[error("resetting the ring of {sender} failed: {source}")]
    ResetFailed {
        sender: NodeId,
        #[source]
        source: LogError,
    },
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

/// Stores `fence` in `ring`'s fence word (sequentially consistent: see [`Inbox::raise_fence`]).
fn store_fence(ring: &InboxRing, fence: u64) {
    ring.region.words_at(FENCE_OFFSET as u32, 8)[0]
        .store(fence, std::sync::atomic::Ordering::SeqCst);
}

/// A ring made for a sender that joined after its receiver's inbox ([`Inbox::new_ring`]),
/// on its way to the inbox ([`Inbox::add`]).
pub struct NewRing(InboxRing);

impl NewRing {
    pub fn sender(&self) -> NodeId {
        self.0.sender
    }

    /// The ring as a manifest lists it (so that its sender can find it).
    pub fn area_entry(&self) -> AreaEntry {
        ring_entry(&self.0)
    }
}

fn ring_entry(ring: &InboxRing) -> AreaEntry {
    AreaEntry::new(
        ring.region.id(),
        AreaKind::Ring,
        ring.region.len(),
        ring.region.key(),
    )
}

/// What [`Inbox::reopen`] found in one ring of an earlier run.
#[derive(Clone, Debug)]
pub struct ReopenedRing {
    pub sender: NodeId,
    /// Complete records from the persisted head on, which the inbox returns first.
    pub records: usize,
    /// Why the scan cut off an append at the end (torn by the stop, never acknowledged).
    pub discarded: Vec<String>,
    /// Acknowledged records the scan could not read (damaged while the node was down): the
    /// ring now ends before them, and what they held is gone from this node.
    pub lost: Option<acre_nvm_log::recovery::Lost>,
    /// The length of a ring file found cut short (and brought back to its length with zeros).
    pub cut_short: Option<u64>,
}

/// A ring file cut short while its node was down (its header whole) is brought back to
/// `ring_bytes` with zeros: the records that were cut off read as absent, and the crash scan
/// then ends the ring before them (a loss, if any was acknowledged). Returns the length it had.
/// A file cut into its header is left as it is, for the scan to refuse.
fn extend_cut_ring(path: &Path, ring_bytes: u64) -> io::Result<Option<u64>> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    let len = file.metadata()?.len();
    if len >= ring_bytes || len < acre_nvm_log::ring::DATA_OFFSET {
        return Ok(None);
    }
    file.set_len(ring_bytes)?;
    file.sync_all()?;
    Ok(Some(len))
}

/// The receiving end of every channel to one node.
pub struct Inbox {
    rings: Vec<InboxRing>,
    doorbell: Arc<Doorbell>,
    /// The node's clock, which [`Inbox::wait`]'s timeout is measured on.
    clock: Clock,
    next_index: usize,
    /// Polls since reset requests were last looked for.
    polls_since_reset_check: u32,
    /// The doorbell's count when reset requests were last looked for. Looking costs two loads
    /// per ring; at every empty poll it made the spin before a worker sleeps (200 empty polls,
    /// CPU taken from the other processes of a small host) about twice as long.
    reset_checked_rings: u64,
    /// The fence last raised ([`Inbox::raise_fence`]): what a reset writes back, since a damaged
    /// header may hold anything there.
    fence: u64,
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
        // Checked before any file is made.
        ring_geometry(ring_bytes)?;
        let mut rings = Vec::with_capacity(senders.len());
        for &sender in senders {
            let id = ring_area_id(sender);
            let region = match dir {
                None => Region::anonymous(id, ring_bytes)?,
                Some(dir) => Region::create_file(dir, memory.node_id(), id, ring_bytes, options)?,
            };
            let NewRing(ring) = Inbox::new_ring(memory, sender, region)?;
            rings.push(ring);
        }
        Ok(Inbox::of(memory, rings, 0))
    }

    /// Formats `region` as the ring of `sender`, a node that joined the cluster after this
    /// inbox was made (docs/failures.md#adding-a-node), and registers it in `memory` so that
    /// the sender can write it; the inbox's owner adds it with [`Inbox::add`]. What the sender
    /// appends meanwhile waits in the ring.
    pub fn new_ring(
        memory: &NodeMemory,
        sender: NodeId,
        region: Region,
    ) -> Result<NewRing, ChannelError> {
        let geometry = ring_geometry(region.len())?;
        assert_eq!(
            region.id(),
            ring_area_id(sender),
            "the ring area of {sender}"
        );
        format(&region, geometry)?;
        let region = Arc::new(region);
        memory
            .register(region.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e))?;
        let reader = RingReader::new(region.clone(), geometry, 0, 0);
        Ok(NewRing(InboxRing {
            sender,
            reader,
            region,
        }))
    }

    /// Starts reading a ring [`Inbox::new_ring`] made, behind the same fence as the others.
    pub fn add(&mut self, ring: NewRing) {
        let NewRing(ring) = ring;
        assert!(
            !self.has_sender(ring.sender),
            "a second ring for {}",
            ring.sender
        );
        store_fence(&ring, self.fence);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.rings.push(ring);
    }

    /// Whether this inbox reads a ring of `sender`.
    pub fn has_sender(&self, sender: NodeId) -> bool {
        self.rings.iter().any(|r| r.sender == sender)
    }

    /// The inbox of `memory`'s node over `rings`, whose fence stands at `fence`.
    fn of(memory: &NodeMemory, rings: Vec<InboxRing>, fence: u64) -> Inbox {
        Inbox {
            rings,
            doorbell: memory.doorbell().clone(),
            clock: memory.clock().clone(),
            next_index: 0,
            polls_since_reset_check: 0,
            reset_checked_rings: 0,
            fence,
        }
    }

    /// Maps again the rings of a node restarted from its files (docs/failures.md#whole-cluster-restart):
    /// `existing` are the ring areas found in `dir` with their keys. Each is checked with the
    /// crash scan ([`acre_nvm_log::recovery::recover_cutting_loss`], which cuts off an append
    /// the crash tore, and ends a ring whose acknowledged records are damaged at the first of
    /// them: [`ReopenedRing::lost`] says so, and the caller must not vouch for anything those
    /// records promised; a damaged header still refuses the ring), and its reader starts at the
    /// persisted head, so that the first polls return every record the earlier run kept. A
    /// sender without a ring gets a new one. Returns the inbox and what each reopened ring held.
    pub fn reopen(
        memory: &NodeMemory,
        senders: &[NodeId],
        ring_bytes: u64,
        dir: &Path,
        options: MapOptions,
        existing: &[(RegionId, AccessKey)],
    ) -> Result<(Inbox, Vec<ReopenedRing>), ChannelError> {
        let geometry = ring_geometry(ring_bytes)?;
        let mut rings = Vec::with_capacity(senders.len());
        let mut kept = Vec::new();
        let mut fence = 0;
        for &sender in senders {
            let id = ring_area_id(sender);
            let found = existing.iter().find(|(area, _)| *area == id);
            let (region, head) = match found {
                Some(&(_, key)) => {
                    let path = dir.join(Region::file_name(memory.node_id(), id, key));
                    let cut_short = extend_cut_ring(&path, ring_bytes)?;
                    let region = Region::open_file(dir, memory.node_id(), id, key, options)?;
                    let scan =
                        acre_nvm_log::recovery::recover_cutting_loss(&region).map_err(|e| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the ring of {sender} ({}) is damaged: {e}; nothing says \
                                     where its records are, so the node cannot vouch for what \
                                     it promised: restore the file, or start a new cluster",
                                    path.display()
                                ),
                            )
                        })?;
                    if scan.geometry != geometry {
                        return Err(ChannelError::Io(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "the ring of {sender} ({}) holds {} bytes of records, the \
                                 cluster file asks for rings of {ring_bytes} bytes",
                                path.display(),
                                scan.geometry.capacity
                            ),
                        )));
                    }
                    fence = fence.max(
                        region.words_at(FENCE_OFFSET as u32, 8)[0]
                            .load(std::sync::atomic::Ordering::SeqCst),
                    );
                    kept.push(ReopenedRing {
                        sender,
                        records: scan.records.len(),
                        discarded: scan.discarded.into_iter().map(|d| d.reason).collect(),
                        lost: scan.lost,
                        cut_short,
                    });
                    (region, scan.head)
                }
                None => {
                    let region =
                        Region::create_file(dir, memory.node_id(), id, ring_bytes, options)?;
                    format(&region, geometry)?;
                    (region, 0)
                }
            };
            let region = Arc::new(region);
            memory
                .register(region.clone())
                .map_err(|e| io::Error::new(io::ErrorKind::AlreadyExists, e))?;
            let reader = RingReader::new(region.clone(), geometry, head, head);
            rings.push(InboxRing {
                sender,
                reader,
                region,
            });
        }
        Ok((Inbox::of(memory, rings, fence), kept))
    }

    /// The rings as manifest entries (so senders can find them).
    /// Raises every ring's fence to configuration `id` (docs/failures.md#drain): a writer whose
    /// append lands after this reads it back. Call it before the drain that reads the rings to
    /// their end: a record appended before the fence is raised is read by the drain, one
    /// appended after sees the fence (both sides' accesses are sequentially consistent: the
    /// writer's read of the fence is a compare-and-swap).
    pub fn raise_fence(&mut self, id: u64) {
        self.fence = self.fence.max(id);
        for ring in &self.rings {
            store_fence(ring, self.fence);
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    pub fn area_entries(&self) -> Vec<AreaEntry> {
        self.rings.iter().map(ring_entry).collect()
    }

    /// The next message from any sender (round robin), without blocking.
    ///
    /// An error concerns one ring only and is returned once ([`ChannelError::Damaged`],
    /// [`ChannelError::Reset`], [`ChannelError::ResetFailed`]): report it and poll on. A
    /// damaged ring is skipped until its sender asks for a reset, which is carried out here
    /// when no ring has a message (the sender writes nothing while it waits for it), or after
    /// [`RESET_CHECK_POLLS`] polls.
    pub fn poll(&mut self) -> Result<Option<Message>, ChannelError> {
        self.polls_since_reset_check += 1;
        if self.polls_since_reset_check >= RESET_CHECK_POLLS {
            self.check_reset_requests()?;
        }
        let count = self.rings.len();
        for step in 0..count {
            let index = (self.next_index + step) % count;
            let ring = &mut self.rings[index];
            let polled = ring.reader.poll();
            if !matches!(polled, Ok(None)) {
                self.next_index = (index + 1) % count;
            }
            match polled {
                Ok(Some(record)) => {
                    return Ok(Some(Message {
                        sender: ring.sender,
                        record,
                    }));
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ChannelError::Damaged {
                        sender: ring.sender,
                        source,
                    });
                }
            }
        }
        if self.doorbell.rings() != self.reset_checked_rings {
            self.check_reset_requests()?;
        }
        Ok(None)
    }

    /// Looks for reset requests, noting the doorbell's count first: a request stored before a
    /// ring that comes later is seen at the next empty poll.
    fn check_reset_requests(&mut self) -> Result<(), ChannelError> {
        self.polls_since_reset_check = 0;
        self.reset_checked_rings = self.doorbell.rings();
        self.reset_requested_rings()
    }

    /// Resets the first ring whose sender asks for it, reporting the reset as the error.
    fn reset_requested_rings(&mut self) -> Result<(), ChannelError> {
        for ring in &mut self.rings {
            if let Some(nonce) = ring.reader.reset_requested() {
                let sender = ring.sender;
                let reset = ring.reader.reset(nonce);
                // The header was damaged: its fence may be anything.
                store_fence(ring, self.fence);
                return Err(match reset {
                    Ok(reset) => ChannelError::Reset { sender, reset },
                    Err(source) => ChannelError::ResetFailed { sender, source },
                });
            }
        }
        Ok(())
    }

    /// Whether `sender`'s ring is damaged: its reader stopped at a damaged record, so `None`
    /// from [`Inbox::poll_from`] does not mean everything written was read.
    pub fn is_damaged(&self, sender: NodeId) -> bool {
        self.rings
            .iter()
            .any(|r| r.sender == sender && r.reader.is_damaged())
    }

    /// The next message from `sender` only, without blocking (`None` also when this inbox has
    /// no ring for `sender`, or its ring is damaged: see [`Inbox::is_damaged`]): how a receiver
    /// reads everything one sender has written so far.
    pub fn poll_from(&mut self, sender: NodeId) -> Result<Option<Message>, ChannelError> {
        let Some(ring) = self.rings.iter_mut().find(|r| r.sender == sender) else {
            return Ok(None);
        };
        Ok(ring.reader.poll()?.map(|record| Message { sender, record }))
    }

    /// The next message, spinning briefly and then sleeping on the doorbell for up to `timeout`
    /// of the node's clock.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<Message>, ChannelError> {
        let doorbell = self.doorbell.clone();
        let clock = self.clock.clone();
        let deadline = clock.now().saturating_add(timeout);
        let mut found = Ok(None);
        doorbell.wait_until(&clock, deadline, || {
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

/// A remote ring seen through one-sided READs, as media for [`resume_point`]: the header as
/// fetched at once, the data read in [`RESUME_READ_BYTES`] pieces as the scan reaches them. A
/// failed READ is kept and reads as zeros; the caller checks [`RemoteRing::failure`] and throws
/// away whatever the scan concluded.
struct RemoteRing<'a> {
    fabric: &'a Fabric,
    target: NodeId,
    area: RegionId,
    key: AccessKey,
    area_bytes: u64,
    header: Vec<u64>,
    pieces: Mutex<FastMap<u64, Vec<u64>>>,
    failure: Mutex<Option<OpError>>,
}

impl RemoteRing<'_> {
    fn failure(&self) -> Option<OpError> {
        self.failure.lock().expect(crate::POISONED).clone()
    }

    fn read_piece(&self, start: u64) -> Result<Vec<u64>, OpError> {
        let len = RESUME_READ_BYTES.min(self.area_bytes - start);
        let offset = u32::try_from(start).expect("ring areas are smaller than 4 GiB");
        let bytes = self.fabric.read(
            self.target,
            Addr::new(self.area, offset),
            self.key,
            len as u32,
        )?;
        words_of(self.target, &bytes, len)
    }
}

impl Media for RemoteRing<'_> {
    fn len(&self) -> u64 {
        self.area_bytes
    }

    fn load(&self, offset: u64) -> u64 {
        if offset < DATA_OFFSET {
            return self.header[(offset / 8) as usize];
        }
        let start = DATA_OFFSET + (offset - DATA_OFFSET) / RESUME_READ_BYTES * RESUME_READ_BYTES;
        let index = ((offset - start) / 8) as usize;
        let mut pieces = self.pieces.lock().expect(crate::POISONED);
        if let Some(words) = pieces.get(&start) {
            return words[index];
        }
        let mut failure = self.failure.lock().expect(crate::POISONED);
        if failure.is_some() {
            return 0;
        }
        match self.read_piece(start) {
            Ok(words) => pieces.entry(start).or_insert(words)[index],
            Err(e) => {
                *failure = Some(e);
                0
            }
        }
    }

    fn store(&self, offset: u64, _value: u64) {
        panic!("a remote ring is read-only to the resume scan (store at {offset})")
    }

    fn persist(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The little-endian words of `len` bytes read from `node`.
fn words_of(node: NodeId, bytes: &[u8], len: u64) -> Result<Vec<u64>, OpError> {
    if bytes.len() as u64 != len || !len.is_multiple_of(8) {
        return Err(OpError::Protocol {
            node,
            reason: format!("a read of {len} ring bytes returned {}", bytes.len()),
        });
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// Where a sender stands with its ring at the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Not attached yet: resume from the ring.
    Unattached,
    /// Every append so far completed: the writer's tail is the ring's.
    Synced,
    /// An append batch failed and may have executed in part; the receiver may even have read
    /// some of its records. Resume from the ring before anything else is planned.
    InDoubt,
    /// The ring cannot be written (damaged, or no longer read): ask the receiver to reset it
    /// (`requested`: the nonce and when, once asked), then resume from it.
    Damaged { requested: Option<(u64, Time)> },
}

/// The sending end of the channel from this node to one receiver.
pub struct Outbox {
    target: NodeId,
    area: RegionId,
    key: AccessKey,
    area_bytes: u64,
    geometry: RingGeometry,
    writer: RingWriter,
    standing: Standing,
    /// The reader's state word when this sender resumed. An append that reads back anything
    /// else learns that the ring was found damaged (or reset) since.
    state: u64,
}

impl Outbox {
    /// Attaches to the ring that `target` keeps for this node (an area of `area_bytes` under
    /// `key`), after the last record whose commit word is in it: a sender that restarts never
    /// writes where the receiver has read. If the ring cannot be written (a damaged header,
    /// records that do not reach the reader, or the receiver stopped reading it), asks the
    /// receiver to reset it and fails with [`ChannelError::ResetPending`]: attach again later.
    pub fn attach(
        fabric: &Fabric,
        target: NodeId,
        key: AccessKey,
        area_bytes: u64,
    ) -> Result<Outbox, ChannelError> {
        // The receiver made the ring of this size (`Inbox::create`), so the geometry is known
        // even when the header is damaged; `resume_point` checks the header against it.
        let geometry = ring_geometry(area_bytes)?;
        let mut outbox = Outbox {
            target,
            area: ring_area_id(fabric.node_id()),
            key,
            area_bytes,
            geometry,
            writer: RingWriter::new(geometry, 0, 0, 0),
            standing: Standing::Unattached,
            state: 0,
        };
        // Look only: the writes that resuming takes wait for the first reserve or append. Two
        // threads may attach one sender's ring at once (a link attached on first use) and keep
        // one of the two outboxes; the other must leave the ring as it found it, or it could
        // zero records the kept one has appended since.
        outbox.resume_with(fabric, false)?;
        Ok(outbox)
    }

    pub fn target(&self) -> NodeId {
        self.target
    }

    /// One READ of the ring's header.
    fn fetch_header(&self, fabric: &Fabric) -> Result<Vec<u64>, ChannelError> {
        let bytes = fabric.read(self.target, self.addr(0), self.key, DATA_OFFSET as u32)?;
        Ok(words_of(self.target, &bytes, DATA_OFFSET)?)
    }

    /// Brings the writer in line with the ring, unless every append so far completed: finds
    /// where the ring's records end (after an attach, a failed batch or a reset), persists the
    /// records no tail covers yet and the tail after them, and continues there. A ring that
    /// cannot be written gets a reset request.
    fn resume(&mut self, fabric: &Fabric) -> Result<(), ChannelError> {
        self.resume_with(fabric, true)
    }

    /// [`Self::resume`]; with `carry_out` false, only checks that the ring can be resumed
    /// (writing nothing to it but a reset request when it cannot) and stays unattached.
    fn resume_with(&mut self, fabric: &Fabric, carry_out: bool) -> Result<(), ChannelError> {
        if self.standing == Standing::Synced {
            return Ok(());
        }
        let mut header = self.fetch_header(fabric)?;
        if let Standing::Damaged {
            requested: Some((nonce, asked)),
        } = self.standing
        {
            let state = header[(STATE_OFFSET / 8) as usize];
            let done =
                header[(RESET_ACK_OFFSET / 8) as usize] == nonce && state & STATE_DAMAGED == 0;
            if !done {
                if fabric.clock().now() - asked < RESET_ASK_AGAIN_AFTER {
                    return Err(ChannelError::ResetPending {
                        node: self.target,
                        reason: "waiting for the receiver".into(),
                    });
                }
                // The receiver may have tried and failed (it does not retry a nonce): ask anew.
                return self.request_reset(
                    fabric,
                    format!("asked again: no reset within {RESET_ASK_AGAIN_AFTER:?}"),
                );
            }
            // The acknowledgement is stored last: a header read after it shows the reset ring.
            header = self.fetch_header(fabric)?;
        }
        let state = header[(STATE_OFFSET / 8) as usize];
        let view = RemoteRing {
            fabric,
            target: self.target,
            area: self.area,
            key: self.key,
            area_bytes: self.area_bytes,
            header,
            pieces: Mutex::new(FastMap::default()),
            failure: Mutex::new(None),
        };
        let found = resume_point(&view, self.geometry);
        if let Some(failure) = view.failure() {
            return Err(failure.into());
        }
        let resumed = found.and_then(|resume| {
            let writer = if self.standing == Standing::Unattached {
                RingWriter::resumed(self.geometry, &resume)
            } else {
                // After a failed batch, or a reset, the ring's records end at or before where
                // this writer had planned to: it only moves back over positions that hold no
                // record, and the reservations taken before stay valid.
                let mut writer = self.writer.clone();
                writer.resynchronize(&resume)?;
                writer
            };
            Ok((resume, writer))
        });
        match resumed {
            Ok(_) if !carry_out => Ok(()),
            Ok((resume, writer)) => {
                // Clear whatever a batch that failed, or a writer that died, may have left
                // committed past a hole: everything this writer had planned, or, for a writer
                // that does not know what its predecessor planned, the rest of the lap.
                let clear_until = match self.standing {
                    Standing::Unattached => resume.head + self.geometry.capacity,
                    _ => self.writer.tail(),
                };
                let mut plan = resume.clear_plan(self.geometry, clear_until);
                plan.extend(resume.plan(self.geometry));
                let ops = self.fabric_ops(plan);
                self.execute(fabric, ops)?;
                self.writer = writer;
                self.state = state;
                self.standing = Standing::Synced;
                Ok(())
            }
            Err(damage) => self.request_reset(fabric, damage.to_string()),
        }
    }

    /// Asks the receiver to reset the ring, which cannot be written (`reason`): a
    /// fresh nonce and its complement in the request words, and a NOTIFY. The receiver does it
    /// when its rings are next idle; until it has, this sender writes nothing to the ring.
    fn request_reset(&mut self, fabric: &Fabric, reason: String) -> Result<(), ChannelError> {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        // Never 0, which means "no request".
        let nonce = u64::from_le_bytes(bytes) | 1;
        let mut request = nonce.to_le_bytes().to_vec();
        request.extend_from_slice(&(!nonce).to_le_bytes());
        self.standing = Standing::Damaged { requested: None };
        let ops = vec![
            Op::Write {
                addr: self.addr(RESET_REQUEST_OFFSET),
                key: self.key,
                data: request,
            },
            Op::Notify,
        ];
        self.execute(fabric, ops)?;
        self.standing = Standing::Damaged {
            requested: Some((nonce, fabric.clock().now())),
        };
        Err(ChannelError::ResetPending {
            node: self.target,
            reason,
        })
    }

    /// Re-reads the receiver's head to learn how much it has truncated.
    fn refresh_head(&mut self, fabric: &Fabric) -> Result<(), ChannelError> {
        let bytes = fabric.read(self.target, self.addr(HEAD_OFFSET), self.key, 8)?;
        let word = words_of(self.target, &bytes, 8)?[0];
        if let Err(e) = self.writer.observe_head_word(word) {
            // Only the reader writes the head: a word that fails its check is damage.
            self.standing = Standing::Damaged { requested: None };
            return Err(e.into());
        }
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
        self.resume(fabric)?;
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
    ///
    /// If the batch fails, any part of it may have executed (on local and shm the rest of a
    /// batch executes after a failed operation; over tcp a prefix may have), and the receiver
    /// may already have read its records. The positions it planned stay used: the next reserve
    /// or append first reads the ring and continues after the last record whose commit word
    /// landed, so it never writes over a record the receiver may have read, and never leaves a
    /// hole before where the receiver waits. The failed messages are delivered if and only if
    /// their commit words landed.
    ///
    /// With `read_fence`, the reader's fence is read back after the records landed (a
    /// compare-and-swap that changes nothing) and returned: the configuration the receiver
    /// last drained its rings for (docs/failures.md#drain); otherwise 0.
    pub fn append_reserved(
        &mut self,
        fabric: &Fabric,
        reservation: &mut Reservation,
        messages: &[(RecordKind, &[u8])],
        wake: bool,
        read_fence: bool,
    ) -> Result<u64, ChannelError> {
        self.resume(fabric)?;
        let mut plans = Vec::new();
        for (kind, payload) in messages {
            plans.extend(self.writer.append(reservation, *kind, payload).ops);
        }
        let mut ops = self.fabric_ops(plans);
        // The reader's state word, read after the records landed: whether they will be read.
        ops.push(Op::Read {
            addr: self.addr(STATE_OFFSET),
            key: self.key,
            len: 8,
        });
        if read_fence {
            ops.push(Op::Cas {
                addr: self.addr(FENCE_OFFSET),
                key: self.key,
                expected: 0,
                new: 0,
            });
        }
        if wake {
            ops.push(Op::Notify);
        }
        let (state, fence) = match self.execute(fabric, ops) {
            Ok(words) => words,
            Err(error) => {
                self.standing = Standing::InDoubt;
                return Err(error);
            }
        };
        if state != Some(self.state) {
            // The reader stopped at a damaged record before these: they will never be read.
            self.standing = Standing::Damaged { requested: None };
            return Err(ChannelError::Stopped { node: self.target });
        }
        Ok(fence.unwrap_or(0))
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
        let outcome = self.append_reserved(fabric, &mut reservation, messages, true, false);
        self.release(reservation);
        outcome.map(|_| ())
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

    /// A plan's word writes and persists as fabric operations on the ring.
    fn fabric_ops(&self, plan: Vec<LogOp>) -> Vec<Op> {
        plan.into_iter()
            .map(|op| match op {
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
            })
            .collect()
    }

    /// Executes `ops` at the receiver; fails if any of them failed. Returns the word the last
    /// READ among them returned and the word the last CAS found, if there were any.
    fn execute(
        &self,
        fabric: &Fabric,
        ops: Vec<Op>,
    ) -> Result<(Option<u64>, Option<u64>), ChannelError> {
        if ops.is_empty() {
            return Ok((None, None));
        }
        let (mut word, mut cas) = (None, None);
        for result in fabric.execute(self.target, ops) {
            match result? {
                Completion::Write | Completion::Persist | Completion::Notify => {}
                Completion::Read(bytes) => word = Some(words_of(self.target, &bytes, 8)?[0]),
                Completion::Cas { previous } => cas = Some(previous),
            }
        }
        Ok((word, cas))
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
    use crate::fabric::fault::{Action, FaultPlan, Rule};
    use crate::fabric::local::{LocalCluster, LocalTransport};
    use crate::fabric::{Doorbell, Transport};
    use acre_nvm_log::record::record_bytes;

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

    /// Operations cut off at every point of a batch: more than an append of one record has.
    const CUT_POINTS_MAX: usize = 12;
    const RING_BYTES_TEST: u64 = 64 << 10;

    /// A sender (node 1) and a receiver (node 2) on the local transport, with `faults` on the
    /// sender's batches.
    fn pair(faults: Arc<FaultPlan>) -> (Fabric, Inbox, Outbox, Arc<Region>) {
        let cluster = LocalCluster::new();
        let (sender, receiver) = (memory(1), memory(2));
        let inbox = Inbox::create(
            &receiver,
            &[NodeId(1)],
            RING_BYTES_TEST,
            None,
            MapOptions::default(),
        )
        .unwrap();
        let ring = receiver.area(ring_area_id(NodeId(1))).unwrap();
        cluster.add(sender.clone());
        cluster.add(receiver);
        let fabric =
            Fabric::new(sender, Transport::Local(LocalTransport::new(cluster))).with_faults(faults);
        let outbox = Outbox::attach(&fabric, NodeId(2), ring.key(), RING_BYTES_TEST).unwrap();
        (fabric, inbox, outbox, ring)
    }

    fn drain(inbox: &mut Inbox, into: &mut Vec<Record>) {
        while let Some(message) = inbox.poll().unwrap() {
            into.push(message.record);
        }
    }

    /// issue 11 item 8: an append batch cut off part-way may have landed whole records (on
    /// local and shm the rest of a failed batch even executes), and a fast receiver reads them
    /// at once. The next append must go after every record whose commit word landed, never over
    /// it: each acknowledged message arrives exactly once, in order, and the reader never
    /// stalls or sees a broken ring. Checked for a cut at every operation of the batch, with the
    /// receiver reading before the next append and after it.
    #[test]
    fn an_append_cut_off_part_way_is_never_overwritten_by_the_next() {
        for reads_between in [true, false] {
            for cut in 0..CUT_POINTS_MAX {
                let what = format!("cut after {cut} operations, reads_between={reads_between}");
                let faults = Arc::new(FaultPlan::new());
                let (fabric, mut inbox, mut outbox, ring) = pair(faults.clone());
                outbox.send(&fabric, RecordKind(1), b"one").unwrap();
                let two_pos = record_bytes(3);
                let rule = faults.add(Rule::to(NodeId(2), Action::Partial(cut)).times(1));
                let two_acked = outbox.send(&fabric, RecordKind(2), b"two").is_ok();
                assert_eq!(faults.hits(rule), 1, "{what}");
                let geometry = ring_geometry(RING_BYTES_TEST).unwrap();
                let two_offset = geometry.offset_of(two_pos) as u32;
                let two_landed = ring.words_at(two_offset, 8)[0]
                    .load(std::sync::atomic::Ordering::Acquire)
                    == two_pos | 1;
                let mut read = Vec::new();
                if reads_between {
                    drain(&mut inbox, &mut read);
                }
                // Same length as "two": a writer that went back to two's position would put
                // "three" exactly where "two" was, and "four" where the reader waits next.
                outbox.send(&fabric, RecordKind(3), b"333").unwrap();
                outbox.send(&fabric, RecordKind(4), b"four").unwrap();
                drain(&mut inbox, &mut read);

                let kinds: Vec<u16> = read.iter().map(|record| record.kind.0).collect();
                let mut expected = vec![1];
                if two_landed || two_acked {
                    expected.push(2);
                }
                expected.extend([3, 4]);
                assert_eq!(kinds, expected, "{what}: records read {read:?}");
                for pair in read.windows(2) {
                    assert!(
                        pair[0].end() <= pair[1].pos,
                        "{what}: {:?} overlaps {:?}",
                        pair[0],
                        pair[1]
                    );
                }
                // And the ring goes on: nothing is left behind for the reader to stall at.
                outbox.send(&fabric, RecordKind(5), b"five").unwrap();
                drain(&mut inbox, &mut read);
                assert_eq!(read.last().map(|r| r.kind), Some(RecordKind(5)), "{what}");
            }
        }
    }

    /// A failed batch whose operations failed one by one (possible over the fabric: an
    /// operation fails alone and the later ones execute) can leave a record committed past a
    /// planned record whose commit word never landed. The writer resumes at that hole and lays
    /// its records out anew; it must clear what lies past the hole first, or the reader, once
    /// the hole is filled, could take the stale record for the next one.
    #[test]
    fn a_record_left_past_a_hole_by_a_failed_batch_is_never_read() {
        let faults = Arc::new(FaultPlan::new());
        let (fabric, mut inbox, mut outbox, ring) = pair(faults.clone());
        let geometry = ring_geometry(RING_BYTES_TEST).unwrap();
        outbox.send(&fabric, RecordKind(1), b"one").unwrap();
        let (hole, past) = (record_bytes(3), 2 * record_bytes(3));
        // The batch of "two" (at `hole`) and "three" (at `past`) fails whole...
        let rule = faults.add(Rule::to(NodeId(2), Action::Fail).times(1));
        assert!(
            outbox
                .send_batch(&fabric, &[(RecordKind(2), b"two"), (RecordKind(3), b"333")])
                .is_err()
        );
        assert_eq!(faults.hits(rule), 1);
        // ...but for the words of "three", as if only the operations of "two" had failed.
        let mut planner = RingWriter::new(geometry, 0, past, 2);
        let mut reservation = planner.reserve(&[3]).unwrap();
        let three = planner.append(&mut reservation, RecordKind(3), b"333");
        planner.release(reservation);
        for op in three.ops {
            if let LogOp::Write { offset, bytes } = op
                && offset >= DATA_OFFSET
            {
                acre_nvm_log::media::write_bytes(&*ring, offset, &bytes);
            }
        }
        let mut read = Vec::new();
        drain(&mut inbox, &mut read);
        // The writer resumes at the hole: "four" takes it, and the reader reads on at once,
        // right where "three" lies; "five" goes there.
        outbox.send(&fabric, RecordKind(4), b"444").unwrap();
        drain(&mut inbox, &mut read);
        outbox.send(&fabric, RecordKind(5), b"five").unwrap();
        drain(&mut inbox, &mut read);
        let found: Vec<(u64, u16)> = read.iter().map(|r| (r.pos, r.kind.0)).collect();
        assert_eq!(found, vec![(0, 1), (hole, 4), (past, 5)]);
    }

    /// issue 11 item 4, at the channel: a damaged record in one sender's ring is reported once
    /// by the receiver, which goes on serving the others; the sender learns from its next
    /// append that the ring is no longer read, asks for a reset, and once the receiver has
    /// carried it out (when idle), sends again.
    #[test]
    fn a_damaged_ring_is_reported_once_reset_at_its_senders_request_and_served_again() {
        let cluster = LocalCluster::new();
        let (one, two, receiver) = (memory(1), memory(3), memory(2));
        let mut inbox = Inbox::create(
            &receiver,
            &[NodeId(1), NodeId(3)],
            RING_BYTES_TEST,
            None,
            MapOptions::default(),
        )
        .unwrap();
        let key = |sender| receiver.area(ring_area_id(sender)).unwrap().key();
        let (key_one, key_two) = (key(NodeId(1)), key(NodeId(3)));
        let damaged = receiver.area(ring_area_id(NodeId(1))).unwrap();
        for memory in [&one, &two, &receiver] {
            cluster.add(memory.clone());
        }
        let fabric = |memory: &Arc<NodeMemory>| {
            Fabric::new(
                memory.clone(),
                Transport::Local(LocalTransport::new(cluster.clone())),
            )
        };
        let (fabric_one, fabric_two) = (fabric(&one), fabric(&two));
        let mut outbox_one =
            Outbox::attach(&fabric_one, NodeId(2), key_one, RING_BYTES_TEST).unwrap();
        let mut outbox_two =
            Outbox::attach(&fabric_two, NodeId(2), key_two, RING_BYTES_TEST).unwrap();
        outbox_one.send(&fabric_one, RecordKind(1), b"one").unwrap();
        let first = inbox.poll().unwrap().expect("the first message");
        assert_eq!(first.sender, NodeId(1));
        // A commit word over a record that fails its checksum, where node 1's ring is read next.
        let geometry = ring_geometry(RING_BYTES_TEST).unwrap();
        let at = first.record.end();
        let words = damaged.words_at(geometry.offset_of(at) as u32, 32);
        for (word, value) in words.iter().zip([at | 1, 1, 8 | 1 << 32, 0xbad]) {
            word.store(value, std::sync::atomic::Ordering::Release);
        }

        match inbox.poll() {
            Err(ChannelError::Damaged { sender, source }) => {
                assert_eq!(sender, NodeId(1));
                assert!(
                    matches!(source, LogError::Corrupt { offset, .. } if offset == geometry.offset_of(at)),
                    "{source}"
                );
            }
            other => panic!("the damage read as {other:?}"),
        }
        // The other sender is served; the damaged ring is not read again, nor reported.
        outbox_two.send(&fabric_two, RecordKind(2), b"two").unwrap();
        let message = inbox.poll().unwrap().expect("node 3's message");
        assert_eq!(
            (message.sender, message.record.kind),
            (NodeId(3), RecordKind(2))
        );
        assert!(inbox.poll().unwrap().is_none());

        let lost = outbox_one.send(&fabric_one, RecordKind(3), b"lost");
        assert!(
            matches!(lost, Err(ChannelError::Stopped { node: NodeId(2) })),
            "{lost:?}"
        );
        let asked = outbox_one.send(&fabric_one, RecordKind(3), b"asked");
        assert!(
            matches!(asked, Err(ChannelError::ResetPending { .. })),
            "{asked:?}"
        );
        match inbox.poll() {
            Err(ChannelError::Reset { sender, reset }) => {
                assert_eq!(sender, NodeId(1));
                assert_eq!(reset.resumed_at, at);
            }
            other => panic!("the reset read as {other:?}"),
        }
        outbox_one
            .send(&fabric_one, RecordKind(4), b"again")
            .unwrap();
        let message = inbox
            .poll()
            .unwrap()
            .expect("node 1's ring is served again");
        assert_eq!(message.sender, NodeId(1));
        assert_eq!(
            (message.record.pos, message.record.payload.as_slice()),
            (at, &b"again"[..])
        );
        assert!(inbox.poll().unwrap().is_none());
    }

    /// Two threads can attach one sender's ring at once (a link attached on first use) and
    /// keep one of the two outboxes. The other may have looked at the ring before the kept one
    /// appended and finish after: if attaching wrote anything (the tail over records it found,
    /// zeros past them), it would wipe what the kept one appended meanwhile. So attaching
    /// writes nothing; the writes resuming takes wait for the first reserve or append.
    #[test]
    fn attaching_writes_nothing_to_the_ring() {
        let faults = Arc::new(FaultPlan::new());
        let (fabric, mut inbox, mut outbox, ring) = pair(faults.clone());
        outbox.send(&fabric, RecordKind(1), b"one").unwrap();
        // "two" lands without its tail: a writer attaching now has the tail to write.
        faults.add(Rule::to(NodeId(2), Action::Partial(2)).times(1));
        assert!(outbox.send(&fabric, RecordKind(2), b"two").is_err());
        let snapshot = |ring: &Region| -> Vec<u64> {
            ring.words()
                .iter()
                .map(|word| word.load(std::sync::atomic::Ordering::Acquire))
                .collect()
        };
        let before = snapshot(&ring);
        let key = ring.key();
        // Attached and never used: an outbox has nothing to do when it goes away.
        let _late = Outbox::attach(&fabric, NodeId(2), key, RING_BYTES_TEST).unwrap();
        assert!(
            before == snapshot(&ring),
            "attaching changed the ring it attached to"
        );
        outbox.send(&fabric, RecordKind(3), b"three").unwrap();
        let mut read = Vec::new();
        drain(&mut inbox, &mut read);
        let kinds: Vec<u16> = read.iter().map(|r| r.kind.0).collect();
        assert_eq!(kinds, vec![1, 2, 3]);
    }
}
