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
//!   corruption, returned as [`LogError::Corrupt`] naming the offset: the replica must be restored
//!   from its peers, not silently shortened.
//!
//! Afterwards the tail words are rewritten to the scan's end, so a writer can attach.

use crate::error::LogError;
use crate::media::Media;
use crate::record::{RECORD_ALIGN, Record, commit_word};
use crate::ring::{
    HEAD_OFFSET, RingGeometry, Slot, TAIL_OFFSET, TAIL_SEQ_OFFSET, decode_pos_word,
    encode_pos_word, read_slot,
};

/// Positions in a head or tail word are below this many 32-byte units (2^61 bytes): the 56 bits
/// [`encode_pos_word`] keeps above its check byte.
const POS_UNITS_END: u64 = 1 << 56;

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
}

/// Validates the header, scans the records and repairs the tail words of a ring on `media`.
pub fn recover<M: Media + ?Sized>(media: &M) -> Result<Recovery, LogError> {
    let geometry = RingGeometry::read(media)?;
    let head = decode_pos_word(media.load(HEAD_OFFSET), HEAD_OFFSET)?;
    let tail_persisted = decode_pos_word(media.load(TAIL_OFFSET), TAIL_OFFSET)?;
    // The reader polls a record as soon as its commit word is visible, so it may have read and
    // truncated the record whose append the crash cut short, before the writer persisted the tail
    // that acknowledges it: the head is then past the persisted tail, and the scan starts at the
    // head as always. A writer never has more than a lap in flight, so a head further ahead than
    // that means one of the two words is wrong.
    if head > tail_persisted && head - tail_persisted > geometry.capacity {
        return Err(LogError::corrupt(
            HEAD_OFFSET,
            format!("head {head} is more than a lap past the persisted tail {tail_persisted}"),
        ));
    }
    // The scan ends at most a lap past the head, and its end must fit a position word: only a
    // damaged or forged head comes this close to the end of the position space.
    if (head + geometry.capacity) / RECORD_ALIGN >= POS_UNITS_END {
        return Err(LogError::corrupt(
            HEAD_OFFSET,
            format!("head {head} leaves no room for a lap before the end of the position space"),
        ));
    }
    if tail_persisted > head && tail_persisted - head > geometry.capacity {
        return Err(LogError::corrupt(
            TAIL_OFFSET,
            format!("tail {tail_persisted} is more than a lap past head {head}"),
        ));
    }

    let mut pos = head;
    let mut next_seq: Option<u64> = None;
    let mut records = Vec::new();
    // Why the scan stopped, when it stopped at a record that claims to be there.
    let mut stop: Option<(u64, String)> = None;
    while pos - head < geometry.capacity {
        let slot = read_slot(media, geometry, pos);
        let seq = match &slot {
            Slot::Empty => break,
            Slot::Damaged { offset, reason } => {
                stop = Some((*offset, reason.clone()));
                break;
            }
            Slot::Pad { seq, .. } => *seq,
            Slot::Record(record) => record.seq,
        };
        if let Some(expected) = next_seq
            && seq != expected
        {
            stop = Some((
                geometry.offset_of(pos),
                format!("sequence {seq} where {expected} was expected"),
            ));
            break;
        }
        let extent = match &slot {
            Slot::Pad { extent, .. } => *extent,
            Slot::Record(record) => record.end() - record.pos,
            Slot::Empty | Slot::Damaged { .. } => unreachable!("handled above"),
        };
        if pos + extent - head > geometry.capacity {
            stop = Some((
                geometry.offset_of(pos),
                "record overlaps the head".to_string(),
            ));
            break;
        }
        next_seq = Some(seq + 1);
        pos += extent;
        if let Slot::Record(record) = slot {
            records.push(record);
        }
    }

    if pos < tail_persisted {
        let offset = geometry.offset_of(pos);
        let why = stop.map_or_else(|| "no record there".to_string(), |(_, reason)| reason);
        return Err(LogError::corrupt(
            offset,
            format!(
                "acknowledged record at position {pos} (persisted tail {tail_persisted}) is \
                 unreadable: {why}"
            ),
        ));
    }

    let mut discarded = Vec::new();
    if let Some((offset, reason)) = stop {
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
    // With no record at all, the sequence continues from the persisted hint.
    let next_seq = next_seq.unwrap_or_else(|| media.load(TAIL_SEQ_OFFSET));
    media.store(TAIL_OFFSET, encode_pos_word(pos));
    media.store(TAIL_SEQ_OFFSET, next_seq);
    media.persist(TAIL_OFFSET, 16)?;
    Ok(Recovery {
        geometry,
        head,
        tail: pos,
        tail_persisted,
        next_seq,
        records,
        discarded,
    })
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
