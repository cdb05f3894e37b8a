//! Recovery fed damaged or hostile bytes: flipped bits, truncated files, garbage, and headers that
//! are wrong in one named way. It returns an error naming an offset inside the media, or exactly
//! the records that were written; it never panics and never returns a torn or invented record.
//!
//! The properties run a fixed number of proptest cases; pin a failing run with
//! `PROPTEST_RNG_SEED=<n>` (proptest also prints the minimal failing input).

use acre_nvm_log::crc::{Crc32c, crc32c};
use acre_nvm_log::random::SplitMix;
use acre_nvm_log::recovery::recover;
use acre_nvm_log::ring::{
    DATA_OFFSET, HEAD_OFFSET, LocalWriter, RING_MAGIC, RING_VERSION, RingGeometry, RingReader,
    TAIL_OFFSET, encode_pos_word, format,
};
use acre_nvm_log::{LogError, MemMedia, Record, RecordKind, Recovery};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::ops::Range;

const CAPACITY_BYTES: u64 = 1024;
const MAX_RECORD_BYTES: u64 = 256;
const MEDIA_BYTES: u64 = DATA_OFFSET + CAPACITY_BYTES;
const APPENDS_COUNT: usize = 24;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A ring that has wrapped, with the records between its head and tail, and the byte ranges
/// whose damage recovery must detect: the checked header fields and every byte a live record's
/// checksum covers (a pad's header too).
struct Written {
    words: Vec<u64>,
    records: Vec<Record>,
    guarded: Vec<Range<u64>>,
}

fn written_ring(seed: u64) -> Written {
    let geometry = RingGeometry::new(CAPACITY_BYTES, MAX_RECORD_BYTES).expect("valid geometry");
    let media = MemMedia::new(geometry.media_bytes());
    format(&media, geometry).expect("format");
    let mut writer = LocalWriter::attach(&media).expect("attach");
    let mut reader = RingReader::new(&media, geometry, 0, 0);
    let mut rng = SplitMix::new(seed);
    // Record (or pad) positions with the payload bytes their checksum covers.
    let mut frames: Vec<(u64, u64)> = Vec::new();
    let mut records = Vec::new();
    for _ in 0..APPENDS_COUNT {
        let len = rng.below(geometry.max_payload_bytes() + 1);
        let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let kind = RecordKind(1 + rng.below(4) as u16);
        let tail_before = writer.writer().tail();
        let plan = loop {
            match writer.append(kind, &payload) {
                Ok(plan) => break plan,
                Err(LogError::Full { .. }) => {
                    let oldest = reader
                        .poll()
                        .expect("poll")
                        .expect("a full ring has records");
                    reader.truncate(oldest.end()).expect("truncate");
                }
                Err(e) => panic!("append: {e}"),
            }
        };
        if plan.pos != tail_before {
            frames.push((tail_before, 0)); // the pad before a wrap
        }
        frames.push((plan.pos, len));
        records.push(Record {
            pos: plan.pos,
            seq: plan.seq,
            kind,
            payload,
        });
    }
    let head = reader.head();
    records.retain(|r| r.pos >= head);
    assert!(
        writer.writer().tail() > 2 * CAPACITY_BYTES,
        "seed {seed}: the ring did not wrap"
    );
    // Header: magic, version, flags, capacity, max record, checksum.
    let header: Range<u64> = 0..32;
    let mut guarded = vec![header];
    for &(pos, len) in frames.iter().filter(|&&(pos, _)| pos >= head) {
        let offset = geometry.offset_of(pos);
        // Commit word, seq, length and kind, and the low half of the checksum word.
        guarded.push(offset..offset + 28);
        guarded.push(offset + 32..offset + 32 + len);
    }
    Written {
        words: media.snapshot(),
        records,
        guarded,
    }
}

/// Asserts that an error names a place inside media of `len` bytes and is one recovery may give.
fn assert_error_within(error: &LogError, len: u64) {
    match *error {
        LogError::Corrupt { offset, .. }
        | LogError::BadMagic { offset, .. }
        | LogError::BadVersion { offset, .. } => {
            assert!(offset < len, "{error}: offset {offset} outside {len} bytes");
        }
        LogError::Truncated {
            offset,
            len: found,
            needed,
        } => {
            assert_eq!(found, len, "{error}");
            assert!(needed > len, "{error}");
            assert!(offset <= len, "{error}: offset {offset} past the end {len}");
        }
        _ => panic!("recovery failed in a way it should not: {error}"),
    }
}

fn recover_words(words: &[u64]) -> Result<Recovery, LogError> {
    recover(&MemMedia::from_words(words))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn flipped_bits_give_an_error_or_exactly_the_written_records(
        seed in any::<u64>(),
        bits in prop::collection::btree_set(0..MEDIA_BYTES * 8, 1..=4),
    ) {
        let written = written_ring(seed);
        let mut words = written.words.clone();
        for &bit in &bits {
            words[(bit / 64) as usize] ^= 1 << (bit % 64);
        }
        let hits_guarded = bits
            .iter()
            .any(|&bit| written.guarded.iter().any(|range| range.contains(&(bit / 8))));
        match recover_words(&words) {
            Ok(recovery) => {
                prop_assert!(!hits_guarded, "damage to checked bytes went unnoticed: {bits:?}");
                prop_assert_eq!(&recovery.records, &written.records);
            }
            Err(error) => assert_error_within(&error, MEDIA_BYTES),
        }
    }

    #[test]
    fn a_truncated_ring_is_reported_as_truncated(seed in any::<u64>(), keep in 0..MEDIA_BYTES / 8) {
        let written = written_ring(seed);
        let words = &written.words[..keep as usize];
        match recover_words(words) {
            Err(error @ LogError::Truncated { .. }) => assert_error_within(&error, keep * 8),
            other => prop_assert!(false, "{keep} words: {other:?}"),
        }
    }

    #[test]
    fn garbage_never_makes_recovery_panic(words in prop::collection::vec(any::<u64>(), 0..200)) {
        if let Err(error) = recover_words(&words) {
            assert_error_within(&error, words.len() as u64 * 8);
        }
    }

    /// Garbage behind a valid header and self-consistent head and tail words, so that the scan
    /// itself reads garbage.
    #[test]
    fn garbage_behind_a_valid_header_never_makes_recovery_panic(
        data in prop::collection::vec(any::<u64>(), (CAPACITY_BYTES / 8) as usize),
        head_units in 0u64..1 << 40,
        used_units in 0..=CAPACITY_BYTES / 32,
        seeded_commits in prop::collection::vec(0..CAPACITY_BYTES / 32, 0..8),
    ) {
        let mut words = header_words(RING_VERSION, None);
        let head = head_units * 32;
        let tail = head + used_units * 32;
        words[(HEAD_OFFSET / 8) as usize] = encode_pos_word(head);
        words[(TAIL_OFFSET / 8) as usize] = encode_pos_word(tail);
        words.extend_from_slice(&data);
        // Commit words that name their own position, so the scan goes on to checksums.
        for unit in seeded_commits {
            let pos = head + unit * 32;
            let offset = DATA_OFFSET + pos % CAPACITY_BYTES;
            words[(offset / 8) as usize] = pos | 1;
        }
        if let Err(error) = recover_words(&words) {
            assert_error_within(&error, MEDIA_BYTES);
        }
    }
}

/// The 256 header bytes of an empty ring of the test geometry, with this version and, if
/// given, this header checksum instead of the right one.
fn header_words(version: u32, crc: Option<u32>) -> Vec<u64> {
    let mut header = [0u8; 32];
    header[0..8].copy_from_slice(&RING_MAGIC.to_le_bytes());
    header[8..12].copy_from_slice(&version.to_le_bytes());
    header[16..24].copy_from_slice(&CAPACITY_BYTES.to_le_bytes());
    header[24..28].copy_from_slice(&(MAX_RECORD_BYTES as u32).to_le_bytes());
    let crc = crc.unwrap_or_else(|| crc32c(&header[..28]));
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut words = vec![0u64; (DATA_OFFSET / 8) as usize];
    for (word, bytes) in words.iter_mut().zip(header.chunks_exact(8)) {
        *word = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    words[(HEAD_OFFSET / 8) as usize] = encode_pos_word(0);
    words[(TAIL_OFFSET / 8) as usize] = encode_pos_word(0);
    words
}

/// An empty ring of the test geometry, with the header changed by `header_words`' arguments.
fn empty_ring(version: u32, crc: Option<u32>) -> Vec<u64> {
    let mut words = header_words(version, crc);
    words.resize((MEDIA_BYTES / 8) as usize, 0);
    words
}

#[test]
fn the_hand_built_header_is_the_one_format_writes() {
    let geometry = RingGeometry::new(CAPACITY_BYTES, MAX_RECORD_BYTES).expect("valid geometry");
    let media = MemMedia::new(geometry.media_bytes());
    format(&media, geometry).expect("format");
    assert_eq!(media.snapshot(), empty_ring(RING_VERSION, None));
    let recovery = recover_words(&empty_ring(RING_VERSION, None)).expect("an empty ring");
    assert!(recovery.records.is_empty());
}

#[test]
fn wrong_magic_is_reported_at_offset_0() {
    let mut words = empty_ring(RING_VERSION, None);
    words[0] = u64::from_le_bytes(*b"NOTARING");
    match recover_words(&words) {
        Err(LogError::BadMagic { offset, found }) => {
            assert_eq!(offset, 0);
            assert_eq!(found, words[0]);
        }
        other => panic!("expected bad magic, got {other:?}"),
    }
}

#[test]
fn another_format_version_is_reported_at_offset_8() {
    let words = empty_ring(RING_VERSION + 1, None);
    match recover_words(&words) {
        Err(LogError::BadVersion {
            offset,
            found,
            supported,
        }) => {
            assert_eq!(offset, 8);
            assert_eq!(found, RING_VERSION + 1);
            assert_eq!(supported, RING_VERSION);
        }
        other => panic!("expected a bad version, got {other:?}"),
    }
}

#[test]
fn a_wrong_header_checksum_is_corruption_at_offset_28() {
    let right = crc32c(&{
        let mut fields = [0u8; 28];
        fields[0..8].copy_from_slice(&RING_MAGIC.to_le_bytes());
        fields[8..12].copy_from_slice(&RING_VERSION.to_le_bytes());
        fields[16..24].copy_from_slice(&CAPACITY_BYTES.to_le_bytes());
        fields[24..28].copy_from_slice(&(MAX_RECORD_BYTES as u32).to_le_bytes());
        fields
    });
    let words = empty_ring(RING_VERSION, Some(right ^ 0x100));
    match recover_words(&words) {
        Err(LogError::Corrupt { offset, reason }) => {
            assert_eq!(offset, 28);
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn damaged_head_and_tail_words_are_corruption_at_their_offsets() {
    for (offset, name) in [(HEAD_OFFSET, "head"), (TAIL_OFFSET, "tail")] {
        let mut words = empty_ring(RING_VERSION, None);
        words[(offset / 8) as usize] ^= 1 << 20;
        match recover_words(&words) {
            Err(LogError::Corrupt { offset: found, .. }) => assert_eq!(found, offset, "{name}"),
            other => panic!("{name}: expected corruption, got {other:?}"),
        }
    }
}

#[test]
fn a_header_cut_short_is_truncated_at_offset_0_and_a_data_area_at_its_start() {
    let words = empty_ring(RING_VERSION, None);
    match recover_words(&words[..10]) {
        Err(LogError::Truncated {
            offset,
            len,
            needed,
        }) => {
            assert_eq!((offset, len, needed), (0, 80, DATA_OFFSET));
        }
        other => panic!("expected truncation, got {other:?}"),
    }
    match recover_words(&words[..words.len() - 1]) {
        Err(LogError::Truncated {
            offset,
            len,
            needed,
        }) => {
            assert_eq!(
                (offset, len, needed),
                (DATA_OFFSET, MEDIA_BYTES - 8, MEDIA_BYTES)
            );
        }
        other => panic!("expected truncation, got {other:?}"),
    }
}

#[test]
fn written_rings_wrap_and_guard_bytes_inside_the_media() {
    // The guarded ranges drive the strongest assertion above; make sure they are not empty and
    // stay inside the media, for a few seeds.
    for seed in 0..8 {
        let written = written_ring(seed);
        assert!(!written.records.is_empty(), "seed {seed}");
        let guarded: BTreeSet<u64> = written.guarded.iter().flat_map(|r| r.clone()).collect();
        assert!(guarded.len() > 32, "seed {seed}");
        assert!(
            guarded.iter().all(|&byte| byte < MEDIA_BYTES),
            "seed {seed}"
        );
        assert_eq!(
            recover_words(&written.words).expect("clean ring").records,
            written.records
        );
    }
}

#[test]
fn a_head_at_the_end_of_the_position_space_is_corruption_not_a_panic() {
    // A valid head word and a valid empty record there, one unit before the largest position a
    // word holds: the scan's end would not fit a tail word.
    let head = ((1u64 << 56) - 1) * 32;
    let mut words = empty_ring(RING_VERSION, None);
    words[(HEAD_OFFSET / 8) as usize] = encode_pos_word(head);
    words[(TAIL_OFFSET / 8) as usize] = encode_pos_word(head);
    let (seq, length_kind) = (5u64, 1u64 << 32);
    let mut crc = Crc32c::new();
    for field in [head, seq, length_kind] {
        crc.update(&field.to_le_bytes());
    }
    let slot = ((DATA_OFFSET + head % CAPACITY_BYTES) / 8) as usize;
    words[slot..slot + 4].copy_from_slice(&[head | 1, seq, length_kind, crc.finish() as u64]);
    match recover_words(&words) {
        Err(LogError::Corrupt { offset, .. }) => assert_eq!(offset, HEAD_OFFSET),
        other => panic!("expected corruption, got {other:?}"),
    }
}
