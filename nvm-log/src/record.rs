//! The record frame: a 32-byte header (commit word, sequence, length and kind, CRC32C) followed by
//! the payload, padded to a multiple of 32 bytes. The layout is drawn in `docs/formats.md`.
//!
//! The first word is the *commit word*, `pos | 1`, where `pos` is the record's logical position in
//! the ring (a byte count that only grows). A writer stores it last, with release ordering, so a
//! reader that loads the commit word it expects sees the whole record. The low bit makes zeroed
//! memory never look like a record, and the position makes a record left over from an earlier lap
//! of the ring never look like the current one.

use crate::crc::Crc32c;

/// Size of the record header.
pub const RECORD_HEADER_BYTES: u64 = 32;
/// Every record starts on, and is padded to, this boundary.
pub const RECORD_ALIGN: u64 = 32;

const _: () = assert!(RECORD_HEADER_BYTES == 4 * 8);
const _: () = assert!(RECORD_ALIGN.is_power_of_two() && RECORD_ALIGN >= RECORD_HEADER_BYTES);

/// What a record is, as the layer above defines it. Kind 0 is reserved for padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKind(pub u16);

impl RecordKind {
    /// Fills the end of the ring when the next record does not fit before it wraps.
    pub const PAD: RecordKind = RecordKind(0);
}

/// A complete, checksum-verified record read from a ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Logical position of the record's first byte.
    pub pos: u64,
    pub seq: u64,
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

impl Record {
    /// The logical position just after this record: where the ring may be truncated to once it
    /// has been applied.
    pub fn end(&self) -> u64 {
        self.pos + record_bytes(self.payload.len() as u64)
    }
}

/// The ring bytes a record with `payload_len` payload bytes occupies.
pub const fn record_bytes(payload_len: u64) -> u64 {
    (RECORD_HEADER_BYTES + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// The commit word of a record at `pos`.
pub(crate) const fn commit_word(pos: u64) -> u64 {
    pos | 1
}

/// Word 2 of the header: payload length (or a pad's extent) and kind.
pub(crate) fn length_kind_word(len: u32, kind: RecordKind) -> u64 {
    len as u64 | (kind.0 as u64) << 32
}

/// CRC32C over position, sequence, length and kind, and the payload.
pub(crate) fn checksum(pos: u64, seq: u64, length_kind: u64, payload: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&pos.to_le_bytes());
    crc.update(&seq.to_le_bytes());
    crc.update(&length_kind.to_le_bytes());
    crc.update(payload);
    crc.finish()
}

/// The whole record as it is laid out in the ring, commit word included.
pub(crate) fn encode(pos: u64, seq: u64, kind: RecordKind, payload: &[u8]) -> Vec<u8> {
    assert!(
        pos.is_multiple_of(RECORD_ALIGN),
        "unaligned record pos={pos}"
    );
    let len = u32::try_from(payload.len()).expect("record length checked against the maximum");
    let length_kind = length_kind_word(len, kind);
    let crc = checksum(pos, seq, length_kind, payload);
    let mut bytes = Vec::with_capacity(record_bytes(payload.len() as u64) as usize);
    bytes.extend_from_slice(&commit_word(pos).to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&length_kind.to_le_bytes());
    bytes.extend_from_slice(&(crc as u64).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(record_bytes(payload.len() as u64) as usize, 0);
    bytes
}

/// The 32-byte header of a pad record covering `extent` bytes.
pub(crate) fn encode_pad(pos: u64, seq: u64, extent: u64) -> Vec<u8> {
    assert!(extent >= RECORD_HEADER_BYTES, "pad extent={extent}");
    assert!(extent.is_multiple_of(RECORD_ALIGN), "pad extent={extent}");
    let length_kind = length_kind_word(
        u32::try_from(extent).expect("pad < max record"),
        RecordKind::PAD,
    );
    let crc = checksum(pos, seq, length_kind, &[]);
    let mut bytes = Vec::with_capacity(RECORD_HEADER_BYTES as usize);
    bytes.extend_from_slice(&commit_word(pos).to_le_bytes());
    bytes.extend_from_slice(&seq.to_le_bytes());
    bytes.extend_from_slice(&length_kind.to_le_bytes());
    bytes.extend_from_slice(&(crc as u64).to_le_bytes());
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_the_alignment() {
        assert_eq!(record_bytes(0), 32);
        assert_eq!(record_bytes(1), 64);
        assert_eq!(record_bytes(32), 64);
        assert_eq!(record_bytes(33), 96);
    }

    #[test]
    fn encoded_record_has_the_documented_layout() {
        let bytes = encode(64, 9, RecordKind(3), b"abc");
        assert_eq!(bytes.len(), 64);
        assert_eq!(u64::from_le_bytes(bytes[0..8].try_into().unwrap()), 65);
        assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 9);
        assert_eq!(u32::from_le_bytes(bytes[16..20].try_into().unwrap()), 3);
        assert_eq!(u16::from_le_bytes(bytes[20..22].try_into().unwrap()), 3);
        let crc = u32::from_le_bytes(bytes[24..28].try_into().unwrap());
        assert_eq!(
            crc,
            checksum(64, 9, length_kind_word(3, RecordKind(3)), b"abc")
        );
        assert_eq!(&bytes[32..35], b"abc");
        assert!(bytes[35..].iter().all(|&b| b == 0));
    }
}
