//! Opening a ring after a crash: the scan that returns exactly the complete records, in order,
//! and says what it discarded and why.
//!
//! The scan starts at the persisted head (which may be past the persisted tail: the reader can
//! truncate a record before its append is acknowledged) and follows records while each one's
//! commit word names its own position, its checksum matches and its sequence number follows the
//! previous one. The first position where that fails ends the log. Two outcomes:
//! - the end is at or past the persisted tail: everything acknowledged is there. A damaged record
//!   at the end was never acknowledged (its append was torn by the crash): it is reported in
//!   [`Recovery::discarded`] and its commit word is cleared so nothing can mistake it for a record.
//! - the end is before the persisted tail: an acknowledged record is damaged. That is media
//!   corruption, returned by [`recover`] as [`LogError::Corrupt`] naming the offset: the replica
//!   must be restored from its peers, not silently shortened. [`recover_cutting_loss`] instead
//!   ends the log there, erases what followed up to the persisted tail, and says what was lost
//!   ([`Recovery::lost`]), for an owner that then restores from its peers what the lost records
//!   held (a node that takes every region copy it holds for damaged).
//!
//! Afterwards the tail words are rewritten to the scan's end, so a writer can attach.

use crate::error::LogError;
use crate::media::Media;
use crate::record::{Record, commit_word};
use crate::ring::{
    ChainStop, HEAD_OFFSET, RingGeometry, TAIL_OFFSET, TAIL_SEQ_OFFSET, check_lap, decode_pos_word,
    encode_pos_word, scan_chain,
};

/// A record position the scan stopped at and did not return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discarded {
    /// Media offset of the record.
    pub offset: u64,
    /// Logical position of the record.
    pub pos: u64,
    pub reason: String,
}

/// What a recovery scan found.
#[derive(Clone, Debug)]
pub struct Recovery {
    pub geometry: RingGeometry,
    /// Persisted head: records before it were truncated.
    pub head: u64,
    /// End of the last complete record: the writer continues here.
    pub tail: u64,
    /// The tail that was persisted before the crash (every record before it was acknowledged).
    pub tail_persisted: u64,
    /// Sequence number for the next record.
    pub next_seq: u64,
    /// Every complete record from head to tail, in order.
    pub records: Vec<Record>,
    pub discarded: Vec<Discarded>,
    /// Acknowledged records the scan could not read and [`recover_cutting_loss`] cut off
    /// (always `None` from [`recover`]).
    pub lost: Option<Lost>,
}

/// Acknowledged records a scan could not read: from `pos`, the first of them, to the persisted
/// tail. [`recover_cutting_loss`] ends the log at `pos` and erases the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// Logical position of the first unreadable acknowledged record: the log now ends there.
    pub pos: u64,
    /// Media offset of that record.
    pub offset: u64,
    /// The tail persisted before: every record from `pos` up to it had been acknowledged.
    pub tail_persisted: u64,
    pub reason: String,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the acknowledged records from position {} (offset {}) to the persisted tail {} \
             ({} bytes) are lost: {}",
            self.pos,
            self.offset,
            self.tail_persisted,
            self.tail_persisted - self.pos,
            self.reason
        )
    }
}

/// Validates the header, scans the records and repairs the tail words of a ring on `media`.
/// A damaged acknowledged record is an error.
pub fn recover<M: Media + ?Sized>(media: &M) -> Result<Recovery, LogError> {
    scan(media, false)
}

/// [`recover`], except that a damaged acknowledged record ends the log where it lies: the bytes
/// from it to the persisted tail are erased (zeroed and persisted, so that no remains of them
/// are taken for records by a reader or a writer's resume), the tail words are set there, and
/// [`Recovery::lost`] says what was lost. A damaged header or position word is still an error:
/// then nothing says where the records are.
pub fn recover_cutting_loss<M: Media + ?Sized>(media: &M) -> Result<Recovery, LogError> {
    scan(media, true)
}

fn scan<M: Media + ?Sized>(media: &M, cut_loss: bool) -> Result<Recovery, LogError> {
    let geometry = RingGeometry::read(media)?;
    let head = decode_pos_word(media.load(HEAD_OFFSET), HEAD_OFFSET)?;
    let tail_persisted = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET)?;
    // The reader polls a record as soon as its commit word is visible, so it may have read and
    // truncated the record whose append the crash cut short, before the writer persisted the tail
    // that acknowledges it: the head is then past the persisted tail, and the scan starts at the
    // head as always. A writer never has more than a lap in flight, so a head further ahead than
    // that means one of the two words is wrong; and the scan's end must fit a position word.
    check_lap(geometry, head, tail_persisted)?;

    let chain = scan_chain(media, geometry, head, None, head + geometry.capacity, true);
    let pos = chain.end;
    let mut lost = None;
    if pos < tail_persisted {
        let offset = geometry.offset_of(pos);
        let why = match &chain.stop {
            ChainStop::Broken { reason, .. } => reason.clone(),
            ChainStop::Empty | ChainStop::Limit => "no record there".to_string(),
        };
        if !cut_loss {
            return Err(LogError::corrupt(
                offset,
                format!(
                    "acknowledged record at position {pos} (persisted tail {tail_persisted}) is \
                     unreadable: {why}"
                ),
            ));
        }
        erase(media, geometry, pos, tail_persisted)?;
        lost = Some(Lost {
            pos,
            offset,
            tail_persisted,
            reason: why,
        });
    }

    let mut discarded = Vec::new();
    if let (None, ChainStop::Broken { offset, reason }) = (&lost, chain.stop) {
        discarded.push(Discarded {
            offset,
            pos,
            reason,
        });
        // Clear the commit word so a live reader never takes the remains for a record. A
        // later append here writes its own commit word last.
        let slot_offset = geometry.offset_of(pos);
        let found = media.load(slot_offset);
        assert_eq!(
            found,
            commit_word(pos),
            "the commit word at {slot_offset} is not the one the scan accepted at {pos}"
        );
        media.store(slot_offset, 0);
        media.persist(slot_offset, 8)?;
    }
    // With no record at all, the sequence continues from the persisted hint. The hint goes
    // first, as an append writes it (`ring::push_tail_writes`).
    let next_seq = chain
        .next_seq
        .unwrap_or_else(|| media.load(TAIL_SEQ_OFFSET));
    media.store(TAIL_SEQ_OFFSET, next_seq);
    media.store(TAIL_OFFSET, encode_pos_word(pos));
    media.persist(TAIL_OFFSET, 16)?;
    Ok(Recovery {
        geometry,
        head,
        tail: pos,
        tail_persisted,
        next_seq,
        records: chain.records,
        discarded,
        lost,
    })
}

/// Zeroes and persists the ring positions `[from, to)`, at most a lap.
fn erase<M: Media + ?Sized>(
    media: &M,
    geometry: RingGeometry,
    from: u64,
    to: u64,
) -> Result<(), LogError> {
    assert!(
        to - from <= geometry.capacity && from.is_multiple_of(8) && to.is_multiple_of(8),
        "erase [{from}, {to}) of a ring of {} bytes",
        geometry.capacity
    );
    let mut pos = from;
    while pos < to {
        // Up to the end of the media, then from its start.
        let lap_end = (pos / geometry.capacity + 1) * geometry.capacity;
        let end = to.min(lap_end);
        let offset = geometry.offset_of(pos);
        for word in (offset..offset + (end - pos)).step_by(8) {
            media.store(word, 0);
        }
        media.persist(offset, end - pos)?;
        pos = end;
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::media::MemMedia;
    use crate::record::RecordKind;
    use crate::ring::{LocalWriter, RingReader, format};

    fn filled(count: u8) -> MemMedia {
        let geometry = RingGeometry::with_capacity(4096).unwrap();
        let media = MemMedia::new(geometry.media_bytes());
        format(&media, geometry).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        for i in 0..count {
            writer.append(RecordKind(2), &[i; 40]).unwrap();
        }
        media
    }

    #[test]
    fn a_clean_ring_recovers_every_record() {
        let media = filled(10);
        let recovery = recover(&media).unwrap();
        assert_eq!(recovery.records.len(), 10);
        assert!(recovery.discarded.is_empty());
        assert_eq!(recovery.next_seq, 10);
        for (i, record) in recovery.records.iter().enumerate() {
            assert_eq!(record.payload, vec![i as u8; 40]);
            assert_eq!(record.seq, i as u64);
        }
        // A writer continues where recovery ended.
        let mut writer = LocalWriter::attach(&media).unwrap();
        writer.append(RecordKind(2), &[10; 40]).unwrap();
        assert_eq!(recover(&media).unwrap().records.len(), 11);
    }

    #[test]
    fn a_damaged_unacknowledged_tail_record_is_discarded_and_cleared() {
        let media = filled(3);
        let geometry = RingGeometry::read(&media).unwrap();
        // Append a fourth record but "crash" before its tail word is written: write the record,
        // then damage its payload.
        let tail = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET).unwrap();
        let bytes = crate::record::encode(tail, 3, RecordKind(2), &[9; 40]);
        crate::media::write_bytes(&media, geometry.offset_of(tail), &bytes);
        media.store(geometry.offset_of(tail) + 40, 0xdead);
        let recovery = recover(&media).unwrap();
        assert_eq!(recovery.records.len(), 3);
        assert_eq!(recovery.discarded.len(), 1);
        assert_eq!(recovery.discarded[0].pos, tail);
        assert!(
            recovery.discarded[0].reason.contains("checksum"),
            "{:?}",
            recovery.discarded
        );
        // The live reader is not fooled by the remains.
        let mut reader = RingReader::new(&media, geometry, 0, tail);
        assert_eq!(reader.poll().unwrap(), None);
    }

    #[test]
    fn cutting_the_loss_ends_the_log_at_a_damaged_acknowledged_record_and_erases_the_rest() {
        let media = filled(5);
        let geometry = RingGeometry::read(&media).unwrap();
        let second_pos = crate::record::record_bytes(40);
        let second = geometry.offset_of(second_pos);
        media.store(second + 32, media.load(second + 32) ^ 4);
        let tail = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET).unwrap();
        let recovery = recover_cutting_loss(&media).unwrap();
        assert_eq!(
            recovery.records.len(),
            1,
            "only the record before the damage"
        );
        assert_eq!(recovery.tail, second_pos);
        assert_eq!(recovery.next_seq, 1);
        let lost = recovery.lost.expect("the loss is reported");
        assert_eq!(
            (lost.pos, lost.offset, lost.tail_persisted),
            (second_pos, second, tail)
        );
        assert!(lost.reason.contains("checksum"), "{lost}");
        // Erased: nothing of the three intact records after the damaged one is left to be
        // taken for a record.
        for offset in (second..geometry.offset_of(tail)).step_by(8) {
            assert_eq!(media.load(offset), 0, "at {offset}");
        }
        assert_eq!(
            decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET).unwrap(),
            second_pos
        );
        // A writer continues at the cut, and the log reads whole again.
        let mut writer = LocalWriter::attach(&media).unwrap();
        writer.append(RecordKind(2), &[7; 40]).unwrap();
        let again = recover(&media).unwrap();
        assert_eq!(again.records.len(), 2);
        assert_eq!(again.records[1].payload, vec![7; 40]);
        assert_eq!(again.records[1].seq, 1);
        assert!(again.lost.is_none());
    }

    #[test]
    fn cutting_the_loss_erases_across_the_end_of_the_media() {
        let geometry = RingGeometry::with_capacity(4096).unwrap();
        let media = MemMedia::new(geometry.media_bytes());
        format(&media, geometry).unwrap();
        let mut writer = LocalWriter::attach(&media).unwrap();
        let size = crate::record::record_bytes(40);
        // Fill most of a lap in two halves, each read and truncated by a reader, then append
        // across the end.
        let mut reader = RingReader::new(&media, geometry, 0, 0);
        for _ in 0..2 {
            for i in 0..geometry.capacity / size / 2 - 1 {
                writer.append(RecordKind(2), &[i as u8; 40]).unwrap();
            }
            while reader.poll().unwrap().is_some() {}
            let cursor = reader.cursor();
            reader.truncate(cursor).unwrap();
        }
        let from = writer.writer().tail();
        for i in 0..6u8 {
            writer.append(RecordKind(2), &[i; 40]).unwrap();
        }
        let tail = writer.writer().tail();
        assert!(
            from % geometry.capacity > tail % geometry.capacity,
            "the appends wrap"
        );
        // The first record past the head is damaged: every later one is lost.
        let at = geometry.offset_of(from);
        media.store(at + 32, media.load(at + 32) ^ 1);
        let recovery = recover_cutting_loss(&media).unwrap();
        assert_eq!(recovery.records.len(), 0);
        assert_eq!(recovery.lost.unwrap().pos, from);
        for pos in (from..tail).step_by(8) {
            assert_eq!(media.load(geometry.offset_of(pos)), 0, "at position {pos}");
        }
    }

    #[test]
    fn a_damaged_acknowledged_record_is_an_error_naming_its_offset() {
        let media = filled(5);
        let geometry = RingGeometry::read(&media).unwrap();
        let second = geometry.offset_of(crate::record::record_bytes(40));
        media.store(second + 32, media.load(second + 32) ^ 4);
        match recover(&media) {
            Err(LogError::Corrupt { offset, reason }) => {
                assert_eq!(offset, second);
                assert!(reason.contains("acknowledged"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }
}
