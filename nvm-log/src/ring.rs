//! The ring log: one writer (a remote sender writing through the fabric, or a local thread) and
//! one reader (the receiver's polling thread), over a [`Media`] laid out as in `docs/formats.md`.
//!
//! Positions are logical byte counts that only grow; the byte at position `p` lives at media
//! offset `DATA_OFFSET + p % capacity`. The reader owns `head` (everything before it is truncated
//! and may be overwritten); the writer owns `tail` (everything before it is acknowledged). Both
//! are persisted in the ring header, each as one self-checking 8-byte word.
//!
//! The writer is sans-I/O: [`RingWriter`] decides where records go and returns an [`AppendPlan`],
//! a list of word writes and persists that whoever has a path to the memory carries out in order
//! ([`LocalWriter`] for a local media, the fabric's one-sided WRITE and PERSIST for a remote one).
//! An append is acknowledged only once its whole plan has been carried out, and the plan ends by
//! persisting the record and then the tail that covers it.
//!
//! Positions after a failure: a writer never goes back over a position whose record the reader
//! may have read. A writer that attaches, and one whose last append failed part-way, first find
//! where to continue with [`resume_point`]: after the last record whose commit word is in the
//! ring, which is at or past everything the reader has read or can read (`docs/formats.md`,
//! "Positions after a failed or killed append").
//!
//! Damage: a reader that finds a damaged record stops reading the ring and says so in the
//! header's state word, which every append reads back; the writer then asks for a reset, and
//! the reader rewrites everything after what it has read ([`RingReader::reset`]).
//!
//! Space: a commit reserves room for all its records before it starts ([`RingWriter::reserve`]);
//! a reservation that does not fit fails with [`LogError::Full`] and changes nothing, so a commit
//! never stops half-way for lack of log space. One maximum-size pad is always kept in hand, so
//! the wrap-around can never make reserved records not fit.

use crate::crc::crc8_56;
use crate::error::LogError;
use crate::media::{Media, read_bytes, write_bytes};
use crate::record::{
    RECORD_ALIGN, RECORD_HEADER_BYTES, Record, RecordKind, checksum, commit_word, encode,
    encode_pad, record_bytes,
};
use std::io;

/// "ACRERING", little-endian, at offset 0.
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"ACRERING");
/// The format version this build reads and writes.
pub const RING_VERSION: u32 = 1;
/// Offset of the persisted head word (its own cache line: written by the reader only).
pub const HEAD_OFFSET: u64 = 64;
/// Offset of the reader's state word, in the head's line: `generation << 1 | damaged`. The
/// reader sets the damaged bit when it stops reading a damaged ring and bumps the generation
/// when it resets the ring; a writer reads it back after every append.
pub const STATE_OFFSET: u64 = 72;
/// Offset of the reset acknowledgement, in the head's line: the nonce of the last reset request
/// the reader carried out.
pub const RESET_ACK_OFFSET: u64 = 80;
/// Offset of the reader's fence, in the head's line: the id of the configuration for which the
/// reader last drained its rings (transaction recovery, docs/failures.md#drain); after that,
/// records of transactions begun in an older configuration that need recovery are refused. A
/// writer reads it back after an append whose record must not be lost that way (a
/// COMMIT-BACKUP or a LOCK). Zero until the first drain; a reset has the reader write it back.
pub const FENCE_OFFSET: u64 = 88;
/// Offset of the persisted tail word (its own cache line: written by the writer only).
pub const TAIL_OFFSET: u64 = 128;
/// Offset of the sequence number of the record at the tail (a hint, rebuilt by recovery).
pub const TAIL_SEQ_OFFSET: u64 = 136;
/// Offset of the writer's reset request, in the tail's line: a nonce, and its complement in the
/// next word (so that no stray bytes make a request). Zero when none was ever made.
pub const RESET_REQUEST_OFFSET: u64 = 144;
/// The state word's damaged bit.
pub const STATE_DAMAGED: u64 = 1;
/// Offset of the first data byte.
pub const DATA_OFFSET: u64 = 256;
/// Bytes of the fixed header fields covered by the header checksum.
const HEADER_CHECKED_BYTES: usize = 28;
/// Smallest allowed maximum record size.
pub const MAX_RECORD_BYTES_MIN: u64 = 64;

const _: () = assert!(HEAD_OFFSET.is_multiple_of(64) && TAIL_OFFSET.is_multiple_of(64));
const _: () = assert!(
    TAIL_OFFSET - HEAD_OFFSET >= 64,
    "head and tail share a cache line"
);
const _: () = assert!(DATA_OFFSET.is_multiple_of(64) && DATA_OFFSET >= TAIL_SEQ_OFFSET + 8);
// The reader's words share the head's line, the writer's the tail's.
const _: () = assert!(STATE_OFFSET / 64 == HEAD_OFFSET / 64);
const _: () = assert!(RESET_ACK_OFFSET / 64 == HEAD_OFFSET / 64);
const _: () = assert!(RESET_ACK_OFFSET != STATE_OFFSET);
const _: () = assert!(FENCE_OFFSET / 64 == HEAD_OFFSET / 64);
const _: () = assert!(FENCE_OFFSET != STATE_OFFSET && FENCE_OFFSET != RESET_ACK_OFFSET);
const _: () = assert!((RESET_REQUEST_OFFSET + 8) / 64 == TAIL_OFFSET / 64);
const _: () = assert!(RESET_REQUEST_OFFSET >= TAIL_SEQ_OFFSET + 8);

/// The shape of a ring: data capacity and the largest record (header included) it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingGeometry {
    pub capacity: u64,
    pub max_record_bytes: u64,
}

impl RingGeometry {
    /// Checks that a ring of this shape can always make progress: the capacity holds at least
    /// four maximum-size records (one of which is the pad kept in hand).
    pub fn new(capacity: u64, max_record_bytes: u64) -> Result<RingGeometry, LogError> {
        let fail = |why: String| Err(LogError::Geometry(why));
        if !capacity.is_multiple_of(64) || capacity == 0 {
            return fail(format!(
                "capacity {capacity} is not a positive multiple of 64"
            ));
        }
        if !max_record_bytes.is_multiple_of(RECORD_ALIGN) || max_record_bytes < MAX_RECORD_BYTES_MIN
        {
            return fail(format!(
                "max record {max_record_bytes} is not a multiple of {RECORD_ALIGN} of at least \
                 {MAX_RECORD_BYTES_MIN}"
            ));
        }
        if max_record_bytes > u32::MAX as u64 {
            return fail(format!(
                "max record {max_record_bytes} does not fit 32 bits"
            ));
        }
        if capacity / 4 < max_record_bytes {
            return fail(format!(
                "capacity {capacity} holds fewer than 4 records of {max_record_bytes} bytes"
            ));
        }
        if capacity > (1 << 48) {
            return fail(format!("capacity {capacity} is larger than 2^48"));
        }
        Ok(RingGeometry {
            capacity,
            max_record_bytes,
        })
    }

    /// A ring of `capacity` bytes whose records may be up to a quarter of it.
    pub fn with_capacity(capacity: u64) -> Result<RingGeometry, LogError> {
        let max = (capacity / 4).min(u32::MAX as u64) / RECORD_ALIGN * RECORD_ALIGN;
        RingGeometry::new(capacity, max)
    }

    /// Bytes of media the ring needs: header plus data.
    pub fn media_bytes(&self) -> u64 {
        DATA_OFFSET + self.capacity
    }

    pub fn max_payload_bytes(&self) -> u64 {
        self.max_record_bytes - RECORD_HEADER_BYTES
    }

    /// Media offset of logical position `pos`.
    pub fn offset_of(&self, pos: u64) -> u64 {
        DATA_OFFSET + pos % self.capacity
    }

    fn header_fields(&self) -> [u8; HEADER_CHECKED_BYTES] {
        let mut h = [0u8; HEADER_CHECKED_BYTES];
        h[0..8].copy_from_slice(&RING_MAGIC.to_le_bytes());
        h[8..12].copy_from_slice(&RING_VERSION.to_le_bytes());
        // 12..16: flags, zero in version 1.
        h[16..24].copy_from_slice(&self.capacity.to_le_bytes());
        h[24..28].copy_from_slice(&(self.max_record_bytes as u32).to_le_bytes());
        h
    }

    /// Reads and validates the header of a ring.
    pub fn read<M: Media + ?Sized>(media: &M) -> Result<RingGeometry, LogError> {
        let len = media.len();
        if len < DATA_OFFSET {
            return Err(LogError::Truncated {
                offset: 0,
                len,
                needed: DATA_OFFSET,
            });
        }
        let mut h = [0u8; 32];
        read_bytes(media, 0, &mut h);
        let magic = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
        if magic != RING_MAGIC {
            return Err(LogError::BadMagic {
                offset: 0,
                found: magic,
            });
        }
        let version = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let stored_crc = u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"));
        if crate::crc::crc32c(&h[..HEADER_CHECKED_BYTES]) != stored_crc {
            return Err(LogError::corrupt(28, "ring header checksum mismatch"));
        }
        if version != RING_VERSION {
            return Err(LogError::BadVersion {
                offset: 8,
                found: version,
                supported: RING_VERSION,
            });
        }
        let capacity = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        let max_record = u32::from_le_bytes(h[24..28].try_into().expect("4 bytes")) as u64;
        let geometry = RingGeometry::new(capacity, max_record)
            .map_err(|e| LogError::corrupt(16, format!("header geometry: {e}")))?;
        if len < geometry.media_bytes() {
            return Err(LogError::Truncated {
                offset: DATA_OFFSET,
                len,
                needed: geometry.media_bytes(),
            });
        }
        Ok(geometry)
    }
}

/// Encodes a position for the head or tail word: the position in 32-byte units in the high 56
/// bits, a CRC-8 of them in the low 8, so one word is both atomic to persist and self-checking.
pub fn encode_pos_word(pos: u64) -> u64 {
    assert!(
        pos.is_multiple_of(RECORD_ALIGN),
        "unaligned ring position {pos}"
    );
    let units = pos / RECORD_ALIGN;
    assert!(units < 1 << 56, "ring position {pos} out of range");
    units << 8 | crc8_56(units) as u64
}

/// Decodes a head or tail word read at media `offset`.
pub fn decode_pos_word(word: u64, offset: u64) -> Result<u64, LogError> {
    let units = word >> 8;
    if crc8_56(units) as u64 != word & 0xff {
        return Err(LogError::corrupt(
            offset,
            format!("position word {word:#018x} fails its check"),
        ));
    }
    Ok(units * RECORD_ALIGN)
}

/// Writes a fresh, empty ring of shape `geometry` onto `media` and persists it.
pub fn format<M: Media + ?Sized>(media: &M, geometry: RingGeometry) -> Result<(), LogError> {
    if media.len() < geometry.media_bytes() {
        return Err(LogError::Truncated {
            offset: 0,
            len: media.len(),
            needed: geometry.media_bytes(),
        });
    }
    // Zero the data so that no old bytes can look like a record of the new ring.
    let mut offset = DATA_OFFSET;
    while offset < geometry.media_bytes() {
        media.store(offset, 0);
        offset += 8;
    }
    media.store(HEAD_OFFSET, encode_pos_word(0));
    media.store(STATE_OFFSET, 0);
    media.store(RESET_ACK_OFFSET, 0);
    media.store(FENCE_OFFSET, 0);
    media.store(TAIL_OFFSET, encode_pos_word(0));
    media.store(TAIL_SEQ_OFFSET, 0);
    media.store(RESET_REQUEST_OFFSET, 0);
    media.store(RESET_REQUEST_OFFSET + 8, 0);
    write_header(media, geometry)
}

/// Writes the checked header fields and persists the whole ring; then writes and persists the
/// magic, last, so that a ring with a valid magic is whole.
fn write_header<M: Media + ?Sized>(media: &M, geometry: RingGeometry) -> Result<(), LogError> {
    let mut header = [0u8; 32];
    let fields = geometry.header_fields();
    header[..HEADER_CHECKED_BYTES].copy_from_slice(&fields);
    header[28..32].copy_from_slice(&crate::crc::crc32c(&fields).to_le_bytes());
    write_bytes(media, 8, &header[8..]);
    media.persist(0, geometry.media_bytes())?;
    media.store(0, RING_MAGIC);
    media.persist(0, 8)?;
    Ok(())
}

/// One step of an append: carried out strictly in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogOp {
    /// Store these bytes (whole words) at this media offset, in increasing address order.
    Write { offset: u64, bytes: Vec<u8> },
    /// Make every earlier write to this range durable.
    Persist { offset: u64, len: u64 },
}

/// The writes and persists that append one record, and what they achieve.
#[derive(Clone, Debug)]
pub struct AppendPlan {
    pub ops: Vec<LogOp>,
    /// Position of the record.
    pub pos: u64,
    pub seq: u64,
    /// The tail once the plan is carried out: the record is acknowledged up to here.
    pub tail: u64,
}

/// Carries out a plan on local media.
pub fn execute_plan<M: Media + ?Sized>(media: &M, ops: &[LogOp]) -> io::Result<()> {
    for op in ops {
        match op {
            LogOp::Write { offset, bytes } => write_bytes(media, *offset, bytes),
            LogOp::Persist { offset, len } => media.persist(*offset, *len)?,
        }
    }
    Ok(())
}

/// Room promised to one commit for the records it will append. Give back what is left with
/// [`RingWriter::release`].
#[derive(Debug)]
#[must_use = "release a reservation that will not be used, or the ring loses that space"]
pub struct Reservation {
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The writer's side of a ring: where the next record goes, and how much room is promised.
#[derive(Clone, Debug)]
pub struct RingWriter {
    geometry: RingGeometry,
    tail: u64,
    next_seq: u64,
    /// The newest head the writer has seen: the reader may have moved it further since.
    head_seen: u64,
    reserved_bytes: u64,
}

impl RingWriter {
    /// A writer continuing at `tail` with `next_seq`, knowing the reader's head is at least `head`.
    pub fn new(geometry: RingGeometry, head: u64, tail: u64, next_seq: u64) -> RingWriter {
        assert!(head <= tail, "head={head} tail={tail}");
        assert!(tail - head <= geometry.capacity, "head={head} tail={tail}");
        RingWriter {
            geometry,
            tail,
            next_seq,
            head_seen: head,
            reserved_bytes: 0,
        }
    }

    /// A writer continuing where [`resume_point`] found the ring's records to end.
    pub fn resumed(geometry: RingGeometry, resume: &Resume) -> RingWriter {
        RingWriter::new(geometry, resume.head, resume.tail, resume.next_seq)
    }

    /// Continues where [`resume_point`] found the ring's records to end, after appends whose
    /// plans may have been carried out in part (a failed batch): the records of those plans
    /// whose commit word landed stay, and the writer goes on after the last of them. Every
    /// reservation made so far stays valid: the writer only ever moves back over positions that
    /// it planned and that hold no record, so the room in use can only shrink.
    pub fn resynchronize(&mut self, resume: &Resume) -> Result<(), LogError> {
        if resume.tail > self.tail {
            return Err(LogError::corrupt(
                TAIL_OFFSET,
                format!(
                    "records run to {} past this writer's tail {}: another writer wrote here",
                    resume.tail, self.tail
                ),
            ));
        }
        let head = self.head_seen.max(resume.head);
        if head > resume.tail {
            return Err(LogError::corrupt(
                HEAD_OFFSET,
                format!("head {head} beyond the end of the records {}", resume.tail),
            ));
        }
        self.tail = resume.tail;
        self.next_seq = resume.next_seq;
        self.head_seen = head;
        Ok(())
    }

    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    pub fn tail(&self) -> u64 {
        self.tail
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn head_seen(&self) -> u64 {
        self.head_seen
    }

    /// Bytes a new reservation could take now (as far as the writer knows the head).
    pub fn free_bytes(&self) -> u64 {
        let pad_in_hand = self.geometry.max_record_bytes - RECORD_HEADER_BYTES;
        let used = self.tail - self.head_seen + self.reserved_bytes + pad_in_hand;
        self.geometry.capacity.saturating_sub(used)
    }

    /// Learns the reader's head from a head word (read from the ring header).
    pub fn observe_head_word(&mut self, head_word: u64) -> Result<(), LogError> {
        let head = decode_pos_word(head_word, HEAD_OFFSET)?;
        if head > self.tail {
            return Err(LogError::corrupt(
                HEAD_OFFSET,
                format!("head {head} beyond the writer's tail {}", self.tail),
            ));
        }
        // The head only moves forward; an older value read late changes nothing.
        self.head_seen = self.head_seen.max(head);
        Ok(())
    }

    /// Reserves room for records with these payload lengths, or fails changing nothing.
    pub fn reserve(&mut self, payload_lens: &[usize]) -> Result<Reservation, LogError> {
        let mut needed = 0;
        for &len in payload_lens {
            let len = len as u64;
            if len > self.geometry.max_payload_bytes() {
                return Err(LogError::TooLarge {
                    len,
                    max: self.geometry.max_payload_bytes(),
                });
            }
            needed += record_bytes(len);
        }
        let free = self.free_bytes();
        if needed > free {
            return Err(LogError::Full { needed, free });
        }
        self.reserved_bytes += needed;
        Ok(Reservation { bytes: needed })
    }

    /// Gives back what is left of a reservation.
    pub fn release(&mut self, reservation: Reservation) {
        assert!(
            reservation.bytes <= self.reserved_bytes,
            "release of {} > reserved {}",
            reservation.bytes,
            self.reserved_bytes
        );
        self.reserved_bytes -= reservation.bytes;
    }

    /// Plans the append of one record inside `reservation`. The record is acknowledged once the
    /// whole plan has been carried out.
    pub fn append(
        &mut self,
        reservation: &mut Reservation,
        kind: RecordKind,
        payload: &[u8],
    ) -> AppendPlan {
        assert!(kind != RecordKind::PAD, "kind 0 is reserved for padding");
        let extent = record_bytes(payload.len() as u64);
        assert!(
            extent <= reservation.bytes,
            "append of {extent} bytes outside its reservation of {}",
            reservation.bytes
        );
        let geometry = self.geometry;
        let mut ops = Vec::with_capacity(8);
        let room_before_wrap = geometry.capacity - self.tail % geometry.capacity;
        if extent > room_before_wrap {
            // Pad to the end of the data area; the pad is paid from the one kept in hand.
            let pad_pos = self.tail;
            let pad = encode_pad(pad_pos, self.next_seq, room_before_wrap);
            push_record_writes(&mut ops, geometry.offset_of(pad_pos), pad);
            ops.push(LogOp::Persist {
                offset: geometry.offset_of(pad_pos),
                len: RECORD_HEADER_BYTES,
            });
            self.tail += room_before_wrap;
            self.next_seq += 1;
        }
        let pos = self.tail;
        assert!(
            pos + extent - self.head_seen <= geometry.capacity,
            "ring overrun: pos={pos} extent={extent} head={} capacity={}",
            self.head_seen,
            geometry.capacity
        );
        let seq = self.next_seq;
        let offset = geometry.offset_of(pos);
        push_record_writes(&mut ops, offset, encode(pos, seq, kind, payload));
        ops.push(LogOp::Persist {
            offset,
            len: extent,
        });
        self.tail += extent;
        self.next_seq += 1;
        reservation.bytes -= extent;
        self.reserved_bytes -= extent;
        // Then the tail that covers it, in its own cache line.
        push_tail_writes(&mut ops, self.tail, self.next_seq);
        AppendPlan {
            ops,
            pos,
            seq,
            tail: self.tail,
        }
    }
}

/// Emits the writes and the persist of the tail words: the sequence hint first, then the tail.
/// A writer killed between the two leaves the new hint with the old tail, and at the old tail
/// there is then the record the hint follows, so [`resume_point`] takes the sequence from the
/// records and never from a hint that is one short.
fn push_tail_writes(ops: &mut Vec<LogOp>, tail: u64, next_seq: u64) {
    ops.push(LogOp::Write {
        offset: TAIL_SEQ_OFFSET,
        bytes: next_seq.to_le_bytes().to_vec(),
    });
    ops.push(LogOp::Write {
        offset: TAIL_OFFSET,
        bytes: encode_pos_word(tail).to_le_bytes().to_vec(),
    });
    ops.push(LogOp::Persist {
        offset: TAIL_OFFSET,
        len: 16,
    });
}

/// Where a writer continues in a ring whose reader may be reading it right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The reader's head as the header says.
    pub head: u64,
    /// The end of the last record whose commit word is in the ring: the writer continues here.
    pub tail: u64,
    pub next_seq: u64,
    /// The tail the header says: records between it and `tail` landed but no tail covers them.
    pub tail_persisted: u64,
}

impl Resume {
    /// What makes the ring's header agree with this resume point: persist the records no tail
    /// covers yet (their writer may have been killed, or its batch cut off, before it persisted
    /// them), then the tail after them. Empty when the tail is already there.
    pub fn plan(&self, geometry: RingGeometry) -> Vec<LogOp> {
        let mut ops = Vec::new();
        if self.tail == self.tail_persisted {
            return ops;
        }
        assert!(
            self.tail > self.tail_persisted,
            "resume tail={} persisted={}",
            self.tail,
            self.tail_persisted
        );
        let mut pos = self.tail_persisted;
        // At most a lap: two ranges, one each side of the wrap.
        while pos < self.tail {
            let room_before_wrap = geometry.capacity - pos % geometry.capacity;
            let len = room_before_wrap.min(self.tail - pos);
            ops.push(LogOp::Persist {
                offset: geometry.offset_of(pos),
                len,
            });
            pos += len;
        }
        push_tail_writes(&mut ops, self.tail, self.next_seq);
        ops
    }

    /// Zeroes the ring from `tail` up to `until` (at most a lap past the head, and at most a
    /// lap past the persisted tail), persisted.
    ///
    /// For a writer whose batch may have executed with holes: over the fabric an operation can
    /// fail on its own while later ones of its batch execute, so a record can be committed past
    /// a planned record whose commit word never landed. The reader cannot have read it (it
    /// stops at the hole), but the writer continues at the hole and would lay its records out
    /// differently: one of them could end exactly where the stale record starts, which the
    /// reader would then take for the next record. Nothing past `tail` is readable and none of
    /// it is kept, so zeroing it first is safe.
    ///
    /// Not past a lap from the persisted tail: the records between the persisted tail and
    /// `tail` (the reader may have read them, and truncated past them) are what the next
    /// writer's [`resume_point`] follows from that tail until the new tail lands, and the
    /// positions a lap on share their bytes. A writer killed after this zeroing and before its
    /// tail write would otherwise leave a chain from the persisted tail that ends short of the
    /// reader's head: a ring that looks damaged (found by the writer-kill test, one run in tens).
    pub fn clear_plan(&self, geometry: RingGeometry, until: u64) -> Vec<LogOp> {
        let until = until
            .min(self.head + geometry.capacity)
            .min(self.tail_persisted + geometry.capacity);
        let mut ops = Vec::new();
        let mut pos = self.tail;
        // Pieces of at most CLEAR_WRITE_BYTES_MAX, none across the end of the data area.
        while pos < until {
            let room_before_wrap = geometry.capacity - pos % geometry.capacity;
            let len = room_before_wrap.min(until - pos).min(CLEAR_WRITE_BYTES_MAX);
            ops.push(LogOp::Write {
                offset: geometry.offset_of(pos),
                bytes: vec![0; len as usize],
            });
            ops.push(LogOp::Persist {
                offset: geometry.offset_of(pos),
                len,
            });
            pos += len;
        }
        ops
    }
}

/// The largest zeroing write of [`Resume::clear_plan`]: well under the fabric's largest
/// operation.
const CLEAR_WRITE_BYTES_MAX: u64 = 256 << 10;

/// Finds where a writer may continue in a ring whose reader is live: after the last record whose
/// commit word is present, following records from the persisted tail.
///
/// Why there: the reader reads a record as soon as its commit word is visible, so it may have
/// read past the persisted tail (records whose commit word landed before their writer was
/// killed, or before its batch was cut off, and whose tail never did). It reads only records
/// that follow one another from its cursor, so it never reads past the end of that chain, and
/// it cannot read a position whose commit word is absent. A writer that continues at the end of
/// the chain therefore never writes where the reader has read or can still read, and leaves no
/// hole before where the reader waits. (The writer that wrote the chain must be done: dead, or
/// its batch over. See `docs/formats.md` for what that asks of a transport.)
///
/// Fails with [`LogError::Corrupt`] when the header is damaged, the reader has marked the ring
/// damaged, or the records do not reach the reader's head: the ring must be reset
/// ([`RingReader::reset`]) before anyone writes to it again.
pub fn resume_point<M: Media + ?Sized>(
    media: &M,
    geometry: RingGeometry,
) -> Result<Resume, LogError> {
    let found = RingGeometry::read(media)?;
    if found != geometry {
        return Err(LogError::corrupt(
            16,
            format!("the header's geometry {found:?} is not the expected {geometry:?}"),
        ));
    }
    let state = media.load(STATE_OFFSET);
    if state & STATE_DAMAGED != 0 {
        return Err(LogError::corrupt(
            STATE_OFFSET,
            "the reader found this ring damaged and stopped reading it",
        ));
    }
    let head = decode_pos_word(media.load(HEAD_OFFSET), HEAD_OFFSET)?;
    let tail_persisted = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET)?;
    check_lap(geometry, head, tail_persisted)?;
    let limit = head.min(tail_persisted) + geometry.capacity;
    let chain = scan_chain(media, geometry, tail_persisted, None, limit, false);
    if let ChainStop::Broken { offset, reason } = chain.stop {
        return Err(LogError::corrupt(
            offset,
            format!("after the records that follow the tail: {reason}"),
        ));
    }
    if chain.end < head {
        return Err(LogError::corrupt(
            geometry.offset_of(chain.end),
            format!(
                "the records from the tail {tail_persisted} end at {}, before the reader's head \
                 {head}",
                chain.end
            ),
        ));
    }
    Ok(Resume {
        head,
        tail: chain.end,
        next_seq: chain
            .next_seq
            .unwrap_or_else(|| media.load(TAIL_SEQ_OFFSET)),
        tail_persisted,
    })
}

/// Positions in a head or tail word are below this many 32-byte units (2^61 bytes): the 56 bits
/// [`encode_pos_word`] keeps above its check byte.
const POS_UNITS_END: u64 = 1 << 56;

/// Checks that a head and a tail read from a header can belong to one ring: neither more than a
/// lap past the other (a writer never has more than a lap in flight, and the reader reads only
/// what was written), and room for a lap before the end of the position space.
pub(crate) fn check_lap(geometry: RingGeometry, head: u64, tail: u64) -> Result<(), LogError> {
    if head > tail && head - tail > geometry.capacity {
        return Err(LogError::corrupt(
            HEAD_OFFSET,
            format!("head {head} is more than a lap past the tail {tail}"),
        ));
    }
    if (head + geometry.capacity) / RECORD_ALIGN >= POS_UNITS_END {
        return Err(LogError::corrupt(
            HEAD_OFFSET,
            format!("head {head} leaves no room for a lap before the end of the position space"),
        ));
    }
    if tail > head && tail - head > geometry.capacity {
        return Err(LogError::corrupt(
            TAIL_OFFSET,
            format!("tail {tail} is more than a lap past head {head}"),
        ));
    }
    Ok(())
}

/// Why a scan of consecutive records stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ChainStop {
    /// No record is committed at the end.
    Empty,
    /// The records fill the lap the scan was given.
    Limit,
    /// Something at the end claims to be a record but is not the next one.
    Broken { offset: u64, reason: String },
}

/// The records that follow one another from a position.
pub(crate) struct Chain {
    pub end: u64,
    /// One past the last record's or pad's sequence number; `None` if there was none.
    pub next_seq: Option<u64>,
    /// The records (pads left out), if asked for.
    pub records: Vec<Record>,
    pub stop: ChainStop,
}

/// Follows records (and pads) from `from` while each one's commit word names its own position,
/// its checksum matches, its sequence number follows the previous one (the first must be
/// `first_seq`, if given) and it ends by `limit`. At most `limit - from` bytes, a lap at most.
pub(crate) fn scan_chain<M: Media + ?Sized>(
    media: &M,
    geometry: RingGeometry,
    from: u64,
    first_seq: Option<u64>,
    limit: u64,
    keep_records: bool,
) -> Chain {
    assert!(limit >= from, "scan from {from} to {limit}");
    assert!(
        limit - from <= geometry.capacity,
        "scan from {from} to {limit}: more than a lap of {}",
        geometry.capacity
    );
    let mut chain = Chain {
        end: from,
        next_seq: None,
        records: Vec::new(),
        stop: ChainStop::Limit,
    };
    let mut expected = first_seq;
    // Every record or pad takes at least 32 bytes: the loop ends within the lap.
    while chain.end < limit {
        let pos = chain.end;
        let slot = read_slot(media, geometry, pos);
        let (seq, extent) = match &slot {
            Slot::Empty => {
                chain.stop = ChainStop::Empty;
                return chain;
            }
            Slot::Damaged { offset, reason } => {
                chain.stop = ChainStop::Broken {
                    offset: *offset,
                    reason: reason.clone(),
                };
                return chain;
            }
            Slot::Pad { seq, extent } => (*seq, *extent),
            Slot::Record(record) => (record.seq, record.end() - record.pos),
        };
        let broken = |reason: String| ChainStop::Broken {
            offset: geometry.offset_of(pos),
            reason,
        };
        if let Some(expected) = expected
            && seq != expected
        {
            chain.stop = broken(format!("sequence {seq} where {expected} was expected"));
            return chain;
        }
        if pos + extent > limit {
            chain.stop = broken("record overlaps the head".to_string());
            return chain;
        }
        expected = Some(seq + 1);
        chain.next_seq = expected;
        chain.end = pos + extent;
        if keep_records && let Slot::Record(record) = slot {
            chain.records.push(record);
        }
    }
    chain
}

/// The kind of the record whose body a planned WRITE at ring `offset` carries, if it is one:
/// an append writes a record's header words after the commit word, with its payload, in one
/// WRITE that starts 8 bytes into the record ([`push_record_writes`]). For tools that look at
/// appends in flight (fault rules, tracing); the reader never needs it.
pub fn record_kind_written(offset: u64, bytes: &[u8]) -> Option<RecordKind> {
    let record_offset = offset.checked_sub(8)?;
    if record_offset < DATA_OFFSET || !(record_offset - DATA_OFFSET).is_multiple_of(RECORD_ALIGN) {
        return None;
    }
    let length_kind = u64::from_le_bytes(bytes.get(8..16)?.try_into().expect("8 bytes"));
    Some(RecordKind((length_kind >> 32) as u16))
}

/// Emits a record's bytes as two writes: everything but the commit word, then the commit word, so
/// a reader that sees the commit word sees the record.
fn push_record_writes(ops: &mut Vec<LogOp>, offset: u64, mut bytes: Vec<u8>) {
    let commit_word = bytes[..8].to_vec();
    // The body keeps the record's allocation: shifting it down is cheaper than a copy into a
    // new one.
    bytes.drain(..8);
    ops.push(LogOp::Write {
        offset: offset + 8,
        bytes,
    });
    ops.push(LogOp::Write {
        offset,
        bytes: commit_word,
    });
}

/// A writer that appends to a ring in local memory.
pub struct LocalWriter<M: Media> {
    media: M,
    writer: RingWriter,
    /// An append failed part-way: resume from the ring before the next one.
    in_doubt: bool,
}

impl<M: Media> LocalWriter<M> {
    /// Attaches to a formatted (or recovered) ring, after the last record whose commit word is
    /// in it ([`resume_point`]).
    pub fn attach(media: M) -> Result<LocalWriter<M>, LogError> {
        let geometry = RingGeometry::read(&media)?;
        let resume = resume_point(&media, geometry)?;
        execute_plan(&media, &resume.plan(geometry))?;
        Ok(LocalWriter {
            writer: RingWriter::resumed(geometry, &resume),
            media,
            in_doubt: false,
        })
    }

    /// After a failed append: go on after the records of it that landed.
    fn resynchronize(&mut self) -> Result<(), LogError> {
        if self.in_doubt {
            let geometry = self.writer.geometry();
            let resume = resume_point(&self.media, geometry)?;
            execute_plan(&self.media, &resume.plan(geometry))?;
            self.writer.resynchronize(&resume)?;
            self.in_doubt = false;
        }
        Ok(())
    }

    pub fn writer(&mut self) -> &mut RingWriter {
        &mut self.writer
    }

    pub fn media(&self) -> &M {
        &self.media
    }

    /// Reads the reader's current head.
    pub fn refresh_head(&mut self) -> Result<(), LogError> {
        self.writer.observe_head_word(self.media.load(HEAD_OFFSET))
    }

    /// Reserves room, refreshing the head once if the ring looks full.
    pub fn reserve(&mut self, payload_lens: &[usize]) -> Result<Reservation, LogError> {
        self.resynchronize()?;
        match self.writer.reserve(payload_lens) {
            Err(LogError::Full { .. }) => {
                self.refresh_head()?;
                self.writer.reserve(payload_lens)
            }
            other => other,
        }
    }

    /// Appends inside a reservation; returns once the record is durable (acknowledged).
    pub fn append_reserved(
        &mut self,
        reservation: &mut Reservation,
        kind: RecordKind,
        payload: &[u8],
    ) -> Result<AppendPlan, LogError> {
        self.resynchronize()?;
        let plan = self.writer.append(reservation, kind, payload);
        if let Err(e) = execute_plan(&self.media, &plan.ops) {
            // The record's words may be in the ring (a persist failed after them): never plan
            // over them without looking.
            self.in_doubt = true;
            return Err(e.into());
        }
        Ok(plan)
    }

    /// Reserves, appends and acknowledges one record. Fails with [`LogError::Full`], changing
    /// nothing, when the ring has no room even after re-reading the head.
    pub fn append(&mut self, kind: RecordKind, payload: &[u8]) -> Result<AppendPlan, LogError> {
        let mut reservation = self.reserve(&[payload.len()])?;
        let plan = self.append_reserved(&mut reservation, kind, payload);
        self.writer.release(reservation);
        plan
    }
}

/// What lies at a position, as a reader or the recovery scan sees it.
pub(crate) enum Slot {
    /// No record has been committed there (zeroed memory, or a record of an earlier lap).
    Empty,
    Pad {
        seq: u64,
        extent: u64,
    },
    Record(Record),
    /// The commit word says a record is there, but it is damaged.
    Damaged {
        offset: u64,
        reason: String,
    },
}

/// Whether the commit word of a record at `pos` is there: the first thing [`read_slot`] checks,
/// on its own for a reader that polls an empty ring over and over.
fn is_committed<M: Media + ?Sized>(media: &M, geometry: RingGeometry, pos: u64) -> bool {
    media.load(geometry.offset_of(pos)) == commit_word(pos)
}

/// Reads the record at `pos` (which must be 32-aligned).
pub(crate) fn read_slot<M: Media + ?Sized>(media: &M, geometry: RingGeometry, pos: u64) -> Slot {
    let offset = geometry.offset_of(pos);
    if !is_committed(media, geometry, pos) {
        return Slot::Empty;
    }
    let seq = media.load(offset + 8);
    let length_kind = media.load(offset + 16);
    let stored_crc = media.load(offset + 24) as u32;
    let len = length_kind as u32 as u64;
    let kind = RecordKind((length_kind >> 32) as u16);
    let room_before_wrap = geometry.capacity - pos % geometry.capacity;
    let damaged = |reason: String| Slot::Damaged { offset, reason };
    if length_kind >> 48 != 0 {
        return damaged(format!(
            "reserved bits set in length word {length_kind:#018x}"
        ));
    }
    if kind == RecordKind::PAD {
        if len != room_before_wrap {
            return damaged(format!(
                "pad of {len} bytes does not end the lap ({room_before_wrap})"
            ));
        }
        if checksum(pos, seq, length_kind, &[]) != stored_crc {
            return damaged("pad checksum mismatch".to_string());
        }
        return Slot::Pad { seq, extent: len };
    }
    if len > geometry.max_payload_bytes() {
        return damaged(format!(
            "length {len} over the maximum {}",
            geometry.max_payload_bytes()
        ));
    }
    let extent = record_bytes(len);
    if extent > room_before_wrap {
        return damaged(format!(
            "record of {extent} bytes crosses the end of the ring"
        ));
    }
    let mut padded = vec![0u8; (extent - RECORD_HEADER_BYTES) as usize];
    read_bytes(media, offset + RECORD_HEADER_BYTES, &mut padded);
    padded.truncate(len as usize);
    if checksum(pos, seq, length_kind, &padded) != stored_crc {
        return damaged(format!("record checksum mismatch (seq {seq}, {len} bytes)"));
    }
    Slot::Record(Record {
        pos,
        seq,
        kind,
        payload: padded,
    })
}

/// The reader's side of a ring: polls records in order and truncates what has been applied.
pub struct RingReader<M: Media> {
    media: M,
    geometry: RingGeometry,
    head: u64,
    cursor: u64,
    next_seq: Option<u64>,
    /// The state word's generation: how many times the ring was reset.
    generation: u64,
    /// Found a damaged record at the cursor: reads nothing more until reset.
    damaged: bool,
    /// The nonce of the last reset request carried out.
    reset_served: u64,
    /// The last tail word [`Self::check_hole`] decoded, and the position it holds: an idle
    /// reader meets the same word at every poll of the spin before its worker sleeps, and
    /// need not check its CRC-8 again each time.
    tail_decoded: Option<(u64, u64)>,
}

/// What a reset did ([`RingReader::reset`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingReset {
    /// Where the writer continues: the end of the records the reader had read, or could still
    /// read whole.
    pub resumed_at: u64,
    /// The tail the header said before the reset, if it could be read: the records from
    /// `resumed_at` up to it were appended (acknowledged, some of them) and are lost.
    pub tail_before: Option<u64>,
    /// The ring's generation after the reset.
    pub generation: u64,
}

impl<M: Media> RingReader<M> {
    /// A reader whose truncation point is `head` and which reads next at `cursor`.
    pub fn new(media: M, geometry: RingGeometry, head: u64, cursor: u64) -> RingReader<M> {
        assert!(head <= cursor, "head={head} cursor={cursor}");
        let generation = media.load(STATE_OFFSET) >> 1;
        let reset_served = media.load(RESET_ACK_OFFSET);
        RingReader {
            media,
            geometry,
            head,
            cursor,
            next_seq: None,
            generation,
            damaged: false,
            reset_served,
            tail_decoded: None,
        }
    }

    pub fn media(&self) -> &M {
        &self.media
    }

    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }

    pub fn head(&self) -> u64 {
        self.head
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Whether the reader found a damaged record and stopped reading (until [`Self::reset`]).
    pub fn is_damaged(&self) -> bool {
        self.damaged
    }

    /// The next complete record, or `None` if the writer has not committed one yet.
    ///
    /// A damaged record here is corruption, not a race: the writer stores the commit word last,
    /// so a record whose commit word is visible is whole. The reader then stops reading this
    /// ring: it returns the error once, marks the ring damaged in its state word (which the
    /// writer reads back after every append), and returns `None` from then on, until the ring
    /// is reset.
    pub fn poll(&mut self) -> Result<Option<Record>, LogError> {
        if self.damaged {
            return Ok(None);
        }
        match self.poll_whole() {
            Err(error) => {
                self.damaged = true;
                self.media
                    .store(STATE_OFFSET, self.generation << 1 | STATE_DAMAGED);
                // Best effort: the word tells a live writer to stop; after a crash the ring
                // is checked again by recovery, so it need not be durable.
                let _ = self.media.persist(STATE_OFFSET, 8);
                Err(error)
            }
            found => found,
        }
    }

    fn poll_whole(&mut self) -> Result<Option<Record>, LogError> {
        // A pad is followed by a record at the start of the next lap: at most one pad per poll.
        for _ in 0..2 {
            if self.cursor - self.head >= self.geometry.capacity {
                return Ok(None); // everything readable is read and not yet truncated
            }
            // The common case of an idle reader, without building a `Slot`.
            if !is_committed(&self.media, self.geometry, self.cursor) {
                return self.check_hole();
            }
            let slot = read_slot(&self.media, self.geometry, self.cursor);
            let seq = match &slot {
                Slot::Empty => return self.check_hole(),
                Slot::Damaged { offset, reason } => {
                    return Err(LogError::corrupt(*offset, reason.clone()));
                }
                Slot::Pad { seq, .. } => *seq,
                Slot::Record(record) => record.seq,
            };
            if let Some(expected) = self.next_seq
                && seq != expected
            {
                return Err(LogError::corrupt(
                    self.geometry.offset_of(self.cursor),
                    format!("sequence {seq} where {expected} was expected"),
                ));
            }
            self.next_seq = Some(seq + 1);
            match slot {
                Slot::Pad { extent, .. } => self.cursor += extent,
                Slot::Record(record) => {
                    self.cursor = record.end();
                    return Ok(Some(record));
                }
                Slot::Empty | Slot::Damaged { .. } => unreachable!("returned above"),
            }
        }
        Ok(None)
    }

    /// No record at the cursor: wait for it, unless the tail says it was acknowledged.
    ///
    /// A writer stores a record's commit word before the tail that covers it, in the same
    /// ordered batch, and never goes on past a position whose commit word is absent (it resumes
    /// there, `resume_point`): so a commit word still absent after the reader has seen a tail
    /// past it will never come. That is a hole only damage makes (a batch whose operations
    /// failed one by one, stray writes): the ring is treated as damaged, and its writer has it
    /// reset, rather than wait forever. Otherwise the record is in flight, or not written yet.
    fn check_hole(&mut self) -> Result<Option<Record>, LogError> {
        let word = self.media.load(TAIL_OFFSET);
        let tail = match self.tail_decoded {
            // The same word decodes to the same position: no need to check it again.
            Some((seen, tail)) if seen == word => tail,
            _ => {
                let Ok(tail) = decode_pos_word(word, TAIL_OFFSET) else {
                    // A damaged tail word says nothing; the writer's resume finds it.
                    return Ok(None);
                };
                self.tail_decoded = Some((word, tail));
                tail
            }
        };
        if tail <= self.cursor || tail - self.cursor > self.geometry.capacity {
            return Ok(None);
        }
        // Loaded after the tail (acquire): a commit word stored before that tail is visible.
        if matches!(
            read_slot(&self.media, self.geometry, self.cursor),
            Slot::Empty
        ) {
            return Err(LogError::corrupt(
                self.geometry.offset_of(self.cursor),
                format!(
                    "no record at position {}, which the tail {tail} says was acknowledged",
                    self.cursor
                ),
            ));
        }
        Ok(None) // it landed meanwhile: the next poll reads it
    }

    /// The nonce of a reset its writer asks for and this reader has not carried out yet.
    pub fn reset_requested(&self) -> Option<u64> {
        let nonce = self.media.load(RESET_REQUEST_OFFSET);
        let check = self.media.load(RESET_REQUEST_OFFSET + 8);
        (nonce != 0 && check == !nonce && nonce != self.reset_served).then_some(nonce)
    }

    /// Resets the ring at its writer's request `nonce` (from [`Self::reset_requested`]), which
    /// it makes only while it writes nothing: everything the reader has read stays where it is
    /// (records it keeps stay readable for recovery, and the head does not move), and so do the
    /// whole records after it that it can still read; everything past them is erased, the
    /// header rewritten, and the writer's tail set to where they end. Then the state word (a new
    /// generation, not damaged) and the acknowledgement of `nonce` are stored, last, so that a
    /// writer that sees the acknowledgement sees the reset ring.
    ///
    /// Lost: every record from [`RingReset::resumed_at`] on, which the reader could not read.
    pub fn reset(&mut self, nonce: u64) -> Result<RingReset, LogError> {
        // Carried out once, whatever happens: a reset that fails (a persist error) is reported
        // by the caller, and done again only when the writer asks anew.
        self.reset_served = nonce;
        let geometry = self.geometry;
        let limit = self.head + geometry.capacity;
        let (resumed_at, next_seq) = if self.damaged {
            (self.cursor, self.next_seq)
        } else {
            let chain = scan_chain(
                &self.media,
                geometry,
                self.cursor,
                self.next_seq,
                limit,
                false,
            );
            (chain.end, chain.next_seq.or(self.next_seq))
        };
        let tail_before = decode_pos_word(self.media.load(TAIL_OFFSET), TAIL_OFFSET).ok();
        // Erase the rest of the lap, so that nothing left of the old records, nor any stray
        // bytes, can look like a record to the reader or to a writer resuming.
        let mut pos = resumed_at;
        while pos < limit {
            self.media.store(geometry.offset_of(pos), 0);
            pos += 8;
        }
        self.media.store(HEAD_OFFSET, encode_pos_word(self.head));
        self.media.store(TAIL_SEQ_OFFSET, next_seq.unwrap_or(0));
        self.media.store(TAIL_OFFSET, encode_pos_word(resumed_at));
        write_header(&self.media, geometry)?;
        self.generation += 1;
        self.media.store(STATE_OFFSET, self.generation << 1);
        self.media.store(RESET_ACK_OFFSET, nonce);
        self.media.persist(HEAD_OFFSET, 64)?;
        // The cursor stays: the records between it and the reset point are read as before.
        self.damaged = false;
        Ok(RingReset {
            resumed_at,
            tail_before,
            generation: self.generation,
        })
    }

    /// Frees everything before `pos` for the writer and persists the new head.
    pub fn truncate(&mut self, pos: u64) -> Result<(), LogError> {
        assert!(
            pos.is_multiple_of(RECORD_ALIGN),
            "unaligned truncation pos={pos}"
        );
        assert!(
            pos <= self.cursor,
            "truncating unread records: pos={pos} cursor={}",
            self.cursor
        );
        if pos <= self.head {
            return Ok(());
        }
        self.head = pos;
        self.media.store(HEAD_OFFSET, encode_pos_word(pos));
        self.media.persist(HEAD_OFFSET, 8)?;
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::media::MemMedia;

    fn ring(capacity: u64) -> MemMedia {
        let geometry = RingGeometry::with_capacity(capacity).unwrap();
        let media = MemMedia::new(geometry.media_bytes());
        format(&media, geometry).unwrap();
        media
    }

    #[test]
    fn appended_records_are_read_back_in_order_across_many_wraps() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        let mut next_expected = 0u32;
        for i in 0..500u32 {
            let payload = vec![i as u8; (i as usize * 13) % 200];
            loop {
                match writer.append(RecordKind(1 + (i % 5) as u16), &payload) {
                    Ok(_) => break,
                    Err(LogError::Full { .. }) => {
                        let record = reader.poll().unwrap().expect("full ring has records");
                        assert_eq!(
                            record.payload,
                            vec![next_expected as u8; (next_expected as usize * 13) % 200]
                        );
                        next_expected += 1;
                        reader.truncate(record.end()).unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        while let Some(record) = reader.poll().unwrap() {
            assert_eq!(record.kind, RecordKind(1 + (next_expected % 5) as u16));
            next_expected += 1;
            reader.truncate(record.end()).unwrap();
        }
        assert_eq!(next_expected, 500);
    }

    #[test]
    fn the_kinds_an_append_writes_are_found_in_its_plan_and_nowhere_else() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        let kinds = |plan: &AppendPlan| -> Vec<RecordKind> {
            plan.ops
                .iter()
                .filter_map(|op| match op {
                    LogOp::Write { offset, bytes } => record_kind_written(*offset, bytes),
                    LogOp::Persist { .. } => None,
                })
                .collect()
        };
        // 160-byte records: the seventh no longer fits before the end of the 1 KiB data area,
        // so its plan writes a pad first.
        let mut seen = Vec::new();
        for i in 0..8u16 {
            let mut reservation = writer.reserve(&[100]).unwrap();
            let plan = writer
                .writer()
                .append(&mut reservation, RecordKind(10 + i), &[7; 100]);
            writer.writer().release(reservation);
            execute_plan(&media, &plan.ops).unwrap();
            let record = reader.poll().unwrap().expect("the record just appended");
            reader.truncate(record.end()).unwrap();
            let found = kinds(&plan);
            assert_eq!(found.last(), Some(&RecordKind(10 + i)), "{found:?}");
            seen.push(found);
        }
        assert!(
            seen.iter()
                .any(|kinds| kinds.len() == 2 && kinds[0] == RecordKind::PAD),
            "no append wrapped: {seen:?}"
        );
        assert!(seen.iter().all(|kinds| kinds.len() <= 2), "{seen:?}");
        // Tail words and commit words are not record bodies.
        assert_eq!(record_kind_written(TAIL_OFFSET, &[0; 16]), None);
        assert_eq!(record_kind_written(DATA_OFFSET, &[0; 32]), None);
    }

    #[test]
    fn a_full_reservation_fails_cleanly_and_changes_nothing() {
        let media = ring(1024);
        let mut writer = LocalWriter::attach(&media).unwrap();
        let free = writer.writer().free_bytes();
        let res = writer.reserve(&[100, 100]).unwrap();
        assert_eq!(writer.writer().free_bytes(), free - 2 * record_bytes(100));
        let err = writer.reserve(&[200, 200, 200]).unwrap_err();
        assert!(matches!(err, LogError::Full { .. }), "{err}");
        assert_eq!(writer.writer().free_bytes(), free - 2 * record_bytes(100));
        assert_eq!(writer.writer().tail(), 0);
        writer.writer().release(res);
        assert_eq!(writer.writer().free_bytes(), free);
    }

    #[test]
    fn oversize_records_are_refused() {
        let media = ring(1024);
        let mut writer = LocalWriter::attach(&media).unwrap();
        let err = writer.append(RecordKind(1), &[0; 300]).unwrap_err();
        assert!(
            matches!(err, LogError::TooLarge { len: 300, max: 224 }),
            "{err}"
        );
    }

    #[test]
    fn truncation_returns_space_to_the_writer() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        while writer.append(RecordKind(1), &[7; 64]).is_ok() {}
        let before = writer.writer().free_bytes();
        let record = reader.poll().unwrap().unwrap();
        reader.truncate(record.end()).unwrap();
        writer.refresh_head().unwrap();
        assert_eq!(writer.writer().free_bytes(), before + record_bytes(64));
        assert!(writer.append(RecordKind(1), &[8; 64]).is_ok());
    }

    #[test]
    fn position_words_reject_bit_flips() {
        let word = encode_pos_word(4096);
        assert_eq!(decode_pos_word(word, 64).unwrap(), 4096);
        for bit in 0..64 {
            assert!(decode_pos_word(word ^ 1 << bit, 64).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn geometry_is_validated() {
        assert!(RingGeometry::new(1000, 64).is_err());
        assert!(RingGeometry::new(1024, 48).is_err());
        assert!(RingGeometry::new(1024, 512).is_err());
        assert!(RingGeometry::new(1024, 256).is_ok());
    }

    /// Carries out `plan` but for its tail words and, if `without_commit`, the record's commit
    /// word: what a batch that failed part-way, one operation at a time, can leave.
    fn execute_part(media: &MemMedia, plan: &AppendPlan, without_commit: bool) {
        let geometry = RingGeometry::read(media).unwrap();
        let commit_offset = geometry.offset_of(plan.pos);
        for op in &plan.ops {
            match op {
                LogOp::Write { offset, .. } if *offset < DATA_OFFSET => {}
                LogOp::Write { offset, .. } if without_commit && *offset == commit_offset => {}
                op => execute_plan(media, std::slice::from_ref(op)).unwrap(),
            }
        }
    }

    /// Asks for a reset as a writer does: a nonce and its complement.
    fn request_reset(media: &MemMedia, nonce: u64) {
        media.store(RESET_REQUEST_OFFSET, nonce);
        media.store(RESET_REQUEST_OFFSET + 8, !nonce);
    }

    /// issue 11 item 8: a commit word absent at the reader's position with a record after it.
    /// While no tail covers the hole the reader waits (the writer fills it: it resumes at the
    /// first absent commit word); once a tail covers it, no writer ever will, and the reader
    /// reports damage, once, instead of waiting forever. The reset then resumes at the hole
    /// and the ring is served again.
    #[test]
    fn a_hole_is_waited_for_until_a_tail_covers_it_then_it_is_damage_and_reset() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        writer.append(RecordKind(1), &[1; 40]).unwrap();
        let mut planner = writer.writer().clone();
        let mut reservation = planner.reserve(&[40, 40]).unwrap();
        let hole = planner.append(&mut reservation, RecordKind(2), &[2; 40]);
        let after = planner.append(&mut reservation, RecordKind(3), &[3; 40]);
        planner.release(reservation);
        execute_part(&media, &hole, true);
        execute_part(&media, &after, false);

        assert_eq!(reader.poll().unwrap().map(|r| r.kind), Some(RecordKind(1)));
        assert_eq!(reader.poll().unwrap(), None, "no tail covers the hole yet");
        // The batch's tail landed although the hole's commit word did not.
        let tail_ops: Vec<LogOp> = after
            .ops
            .iter()
            .filter(|op| matches!(op, LogOp::Write { offset, .. } if *offset < DATA_OFFSET))
            .cloned()
            .collect();
        execute_plan(&media, &tail_ops).unwrap();
        match reader.poll() {
            Err(LogError::Corrupt { offset, .. }) => {
                assert_eq!(offset, geometry.offset_of(hole.pos));
            }
            other => panic!("a hole the tail covers read as {other:?}"),
        }
        assert!(reader.is_damaged());
        assert_eq!(media.load(STATE_OFFSET), STATE_DAMAGED);
        assert_eq!(reader.poll().unwrap(), None, "reported once, then not read");
        assert!(
            LocalWriter::attach(&media).is_err(),
            "a writer does not resume in a damaged ring"
        );

        request_reset(&media, 7);
        assert_eq!(reader.reset_requested(), Some(7));
        let reset = reader.reset(7).unwrap();
        assert_eq!(reset.resumed_at, hole.pos);
        assert_eq!(reset.tail_before, Some(after.tail));
        assert_eq!(reader.reset_requested(), None, "carried out once");
        assert_eq!(
            media.load(STATE_OFFSET),
            1 << 1,
            "generation 1, not damaged"
        );
        assert_eq!(media.load(RESET_ACK_OFFSET), 7);
        let mut writer = LocalWriter::attach(&media).unwrap();
        assert_eq!(writer.writer().tail(), hole.pos);
        writer.append(RecordKind(4), &[4; 40]).unwrap();
        let record = reader.poll().unwrap().expect("the ring is served again");
        assert_eq!((record.pos, record.kind), (hole.pos, RecordKind(4)));
    }

    /// A reset asked for by a writer that finds the header damaged (the reader sees nothing
    /// wrong) keeps what the reader has read, where it is, and the whole records it has yet to
    /// read: nothing readable is lost, and the writer resumes after them.
    #[test]
    fn a_reset_keeps_what_the_reader_has_read_and_what_it_can_still_read() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        writer.append(RecordKind(1), &[1; 40]).unwrap();
        let unread = writer.append(RecordKind(2), &[2; 40]).unwrap();
        assert_eq!(reader.poll().unwrap().map(|r| r.kind), Some(RecordKind(1)));
        // Stray bytes over the header; the head stays at 0 (record 1 is kept).
        media.store(16, 0xdead_beef);
        assert!(LocalWriter::attach(&media).is_err());

        request_reset(&media, 9);
        let reset = reader.reset(9).unwrap();
        assert_eq!(reset.resumed_at, unread.tail);
        assert_eq!(reader.head(), 0);
        assert_eq!(RingGeometry::read(&media).unwrap(), geometry);
        let record = reader.poll().unwrap().expect("the unread record survives");
        assert_eq!((record.pos, record.kind), (unread.pos, RecordKind(2)));
        let mut writer = LocalWriter::attach(&media).unwrap();
        assert_eq!(writer.writer().tail(), unread.tail);
        writer.append(RecordKind(3), &[3; 40]).unwrap();
        assert_eq!(reader.poll().unwrap().map(|r| r.kind), Some(RecordKind(3)));
        // Recovery agrees: record 1 (kept), 2 and 3, in sequence.
        let recovery = crate::recovery::recover(&media).unwrap();
        let kinds: Vec<u16> = recovery.records.iter().map(|r| r.kind.0).collect();
        assert_eq!(kinds, vec![1, 2, 3]);
    }

    /// issue 11 item 8: a writer restarted after its predecessor was killed between a record's
    /// commit word and its tail: the reader may have read that record, so the writer resumes
    /// after it, persists it and writes the tail that covers it.
    #[test]
    fn a_writer_resumes_after_records_the_dead_writer_left_without_a_tail() {
        let media = ring(1024);
        let geometry = RingGeometry::read(&media).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        writer.append(RecordKind(1), &[1; 40]).unwrap();
        let mut planner = writer.writer().clone();
        let mut reservation = planner.reserve(&[40]).unwrap();
        let orphan = planner.append(&mut reservation, RecordKind(2), &[2; 40]);
        planner.release(reservation);
        execute_part(&media, &orphan, false);
        let read = reader.poll().unwrap().expect("record 1");
        reader.truncate(read.end()).unwrap();
        let read = reader
            .poll()
            .unwrap()
            .expect("the orphan, read before its tail");
        reader.truncate(read.end()).unwrap();
        assert_eq!(read.pos, orphan.pos);

        let mut writer = LocalWriter::attach(&media).unwrap();
        assert_eq!(writer.writer().tail(), orphan.tail);
        assert_eq!(
            decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET).unwrap(),
            orphan.tail,
            "the tail now covers the orphan"
        );
        writer.append(RecordKind(3), &[3; 40]).unwrap();
        let next = reader
            .poll()
            .unwrap()
            .expect("the restarted writer's record");
        assert_eq!((next.pos, next.kind), (orphan.tail, RecordKind(3)));
    }
}

#[cfg(loom)]
mod loom_tests {
    //! Loom model of the head / tail / reservation protocol: one writer thread reserves, appends
    //! and re-reads the head when the ring is full; one reader thread polls, checks and truncates.
    //! The ring is so small that the writer must wait for the reader to free space, and the last
    //! record goes in after a pad, on the second lap, over the first record's bytes.
    //!
    //! A passing run shows, for every interleaving with at most `PREEMPTION_BOUND` preemptions
    //! and every store each load may return under the C11 model:
    //! - publication: a record whose commit word the reader sees is whole (the writer stores the
    //!   commit word last, with release; the reader loads it first, with acquire);
    //! - reclamation: the writer never overwrites bytes the reader has not finished reading (the
    //!   reader publishes its head only after copying the payload; the writer counts
    //!   `tail - head_seen` as used);
    //! - progress: every record arrives, in order, at its position, exactly once, and the
    //!   persisted head and tail agree with both threads at the end.
    //!
    //! It says nothing about crashes (`MemMedia::persist` only orders; power loss is the `fault`
    //! media's job) nor about more than one writer.
    //!
    //! Each of these protocol mutations makes it fail (checked by hand, with a bound of 1 or
    //! more): the commit word stored before the body (`push_record_writes`), or any `MemMedia`
    //! load or store made relaxed: "reader saw a damaged ring"; the head stored before the
    //! payload is read: "reader saw a damaged ring" (checksum mismatch); `free_bytes` ignoring
    //! `tail - head_seen`: "ring overrun" in `append`, and without that assertion "reader saw a
    //! damaged ring"; `truncate` not storing the head, or `reserve` not re-reading it: "writer
    //! starved".
    //!
    //! Why it is sensitive; each point is a way a loom 0.7 model can go blind:
    //! - The reader is a spawned thread, not the thread that ran `format`. Once a newer store
    //!   exists, loom lets a load return an older one only if the loading thread had not seen it
    //!   before its last `yield_now` (`is_seen_before_yield` in loom's `rt/atomic.rs`: that is how
    //!   spin loops make progress), and a store counts as seen by the thread that made it. A
    //!   reader on the formatting thread has therefore, after its first empty poll, no access to
    //!   the zeros under a half-published record unless a preemption falls exactly between the
    //!   writer's two stores. A spawned reader has never loaded the body words, so the stale
    //!   zeros stay readable without any preemption.
    //! - Neither loop may end by giving up. A writer that stops after a few `Full` results and a
    //!   final `read == written` check accept a head that is never published or never re-read;
    //!   here running out of attempts fails an assertion.
    //! - Payload bytes are non-zero and differ per record, and each record has its own kind and
    //!   position, so neither zeroed memory nor the previous lap can pass for the expected record.
    //! - Loom remembers the last 7 stores of each atomic (`MAX_ATOMIC_HISTORY`). The head and
    //!   tail words are stored by `MemMedia::new`, by `format` and once per record: with five
    //!   records loom still has every one of them; more would silently narrow what a load may
    //!   return.
    //!
    //! Run with `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p
    //! acre-nvm-log --release --lib loom -- --nocapture`.
    use super::*;
    use crate::media::MemMedia;
    use std::sync::Arc;

    /// Records of 64, 32, 64, 64 and 64 bytes in a 256-byte ring that keeps a 32-byte pad in
    /// hand: the first four fill it (224 bytes), the fifth needs the first truncated, and goes
    /// after a 32-byte pad at position 224, on the first record's bytes.
    const PAYLOAD_LENS: [usize; 5] = [32, 0, 32, 32, 32];
    const RECORD_COUNT: usize = PAYLOAD_LENS.len();
    const CAPACITY: u64 = 256;
    const MAX_RECORD_BYTES: u64 = 64;
    /// Where those records land: the fifth after the pad, on the second lap.
    const RECORD_POSITIONS: [u64; RECORD_COUNT] = [0, 64, 96, 160, 256];
    /// Preemptions loom explores per execution. Every mutation listed above fails with a bound of
    /// 1 (all but the early head store already with 0); 3 gives margin and runs in seconds.
    const PREEMPTION_BOUND: usize = 3;
    /// `Full` results the writer accepts for one record, and empty polls the reader accepts in
    /// the whole run, before each declares itself starved. With the correct protocol loom's
    /// worst cases are 3 and 6 at every preemption bound from 0 to 4: a thread's first load of
    /// a word may return a stale value, but after `yield_now` it cannot again return a value it
    /// has already seen once a newer one exists, so every retry moves something forward. The
    /// limits are well above that, so only a side that can never make progress reaches them.
    const FULL_COUNT_MAX: usize = 8;
    const EMPTY_POLL_COUNT_MAX: usize = 16;

    fn record_kind(index: usize) -> RecordKind {
        RecordKind(1 + index as u16)
    }

    /// Distinct, non-zero bytes per record: zeroed memory and the previous lap never match.
    fn record_payload(index: usize) -> Vec<u8> {
        vec![0xa0 + index as u8; PAYLOAD_LENS[index]]
    }

    /// The writer: appends every record, retrying on `Full` (which re-reads the head).
    /// Returns its final tail.
    fn write_all(media: Arc<MemMedia>) -> u64 {
        let mut writer = LocalWriter::attach(media).expect("attach to a formatted ring");
        for index in 0..RECORD_COUNT {
            let mut full_count = 0;
            loop {
                match writer.append(record_kind(index), &record_payload(index)) {
                    Ok(_) => break,
                    Err(LogError::Full { needed, free }) => {
                        full_count += 1;
                        assert!(
                            full_count <= FULL_COUNT_MAX,
                            "writer starved: record {index} found the ring full \
                             {full_count} times (needed={needed} free={free} head_seen={} \
                             tail={})",
                            writer.writer().head_seen(),
                            writer.writer().tail()
                        );
                        loom::thread::yield_now();
                    }
                    Err(e) => panic!("append of record {index} failed: {e}"),
                }
            }
        }
        writer.writer().tail()
    }

    /// The reader: polls until it has every record, checks each against what was written and
    /// truncates it. Returns its final head.
    fn read_all(media: Arc<MemMedia>, geometry: RingGeometry) -> u64 {
        let mut reader = RingReader::new(media, geometry, 0, 0);
        let mut index = 0;
        let mut empty_count = 0;
        while index < RECORD_COUNT {
            match reader.poll() {
                Ok(Some(record)) => {
                    assert_eq!(
                        record.pos, RECORD_POSITIONS[index],
                        "record {index}: position"
                    );
                    assert_eq!(record.kind, record_kind(index), "record {index}: kind");
                    assert_eq!(
                        record.payload,
                        record_payload(index),
                        "record {index}: payload"
                    );
                    reader.truncate(record.end()).expect("truncate MemMedia");
                    index += 1;
                }
                Ok(None) => {
                    empty_count += 1;
                    assert!(
                        empty_count <= EMPTY_POLL_COUNT_MAX,
                        "reader starved: record {index} not visible after {empty_count} empty \
                         polls (cursor={} head={})",
                        reader.cursor(),
                        reader.head()
                    );
                    loom::thread::yield_now();
                }
                Err(e) => panic!("reader saw a damaged ring at record {index}: {e}"),
            }
        }
        reader.head()
    }

    #[test]
    fn loom_writer_and_reader_never_lose_or_tear_a_record() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(PREEMPTION_BOUND);
        model.check(|| {
            let geometry = RingGeometry::new(CAPACITY, MAX_RECORD_BYTES).expect("geometry");
            let media = Arc::new(MemMedia::new(geometry.media_bytes()));
            format(&*media, geometry).expect("format MemMedia");
            let writer = {
                let media = media.clone();
                loom::thread::spawn(move || write_all(media))
            };
            let reader = {
                let media = media.clone();
                loom::thread::spawn(move || read_all(media, geometry))
            };
            let tail = writer.join().expect("writer thread");
            let head = reader.join().expect("reader thread");
            // Everything written was read and truncated, and the persisted words say so.
            assert_eq!(
                head, tail,
                "head and tail disagree once both sides are done"
            );
            let head_word = decode_pos_word(media.load(HEAD_OFFSET), HEAD_OFFSET);
            assert_eq!(head_word.expect("head word"), head, "persisted head");
            let tail_word = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET);
            assert_eq!(tail_word.expect("tail word"), tail, "persisted tail");
        });
    }
}
