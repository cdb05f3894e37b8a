//! Power loss at every store and persist of a wrapping append / truncate workload, simulated by
//! [`FaultMedia`]: recovery returns every acknowledged record exactly, nothing else but possibly
//! the one append the power cut, and never undoes a persisted truncation.
//!
//! Each seed fixes a workload (record sizes, kinds, payloads, when the reader truncates). The
//! workload is run once to count its operations, then replayed once per operation with the power
//! cut there; the fate of every unpersisted cache line (lost, kept, torn) is drawn from the seed
//! and the operation index, so a failure replays from the seed it prints.

use acre_nvm_log::fault::FaultMedia;
use acre_nvm_log::random::{Replay, SplitMix, for_each_seed, pinned_seed};
use acre_nvm_log::recovery::recover;
use acre_nvm_log::ring::{LocalWriter, RingGeometry, RingReader, execute_plan, format};
use acre_nvm_log::{LogError, MemMedia, Record, RecordKind, Recovery};

/// Data bytes of the ring: small, so that a run wraps it several times.
const CAPACITY_BYTES: u64 = 512;
/// Largest record, header included: a quarter of the ring, the most a ring allows.
const MAX_RECORD_BYTES: u64 = 128;
const APPENDS_PER_RUN: usize = 40;
/// Workloads per test; each one loses power at every one of its operations.
const SEED_COUNT: u64 = 40;
/// Operations a recovery does at most: clear one commit word, persist it, store the tail and its
/// sequence, persist them.
const RECOVERY_OPS_MAX: u64 = 5;

fn geometry() -> RingGeometry {
    RingGeometry::new(CAPACITY_BYTES, MAX_RECORD_BYTES).expect("valid geometry")
}

/// The persisted image of a freshly formatted, empty ring.
fn formatted_image() -> Vec<u64> {
    let media = MemMedia::new(geometry().media_bytes());
    format(&media, geometry()).expect("format a ring in memory");
    media.snapshot()
}

/// A deterministic fate seed for the unpersisted lines of one crash.
fn fate_seed(seed: u64, op: u64, salt: u64) -> u64 {
    SplitMix::new(seed.rotate_left(32) ^ op ^ salt << 56).next_u64()
}

/// What a run did before the power was cut (or before it ended).
#[derive(Debug, Default)]
struct Outcome {
    /// Records whose append returned before the power was cut, in order.
    acked: Vec<Record>,
    /// The append under way, and when the power was cut, the one it cut short.
    in_flight: Option<Record>,
    /// The last truncation that completed.
    head_done: u64,
    /// The truncation the power cut short.
    head_in_flight: Option<u64>,
    crashed: bool,
}

/// The reader's side of a run: it checks what it polls against what was appended.
struct Applier<'a> {
    reader: RingReader<&'a FaultMedia>,
    polled_count: usize,
}

impl Applier<'_> {
    /// Polls up to `count` records and truncates them. Returns false if the power was cut.
    ///
    /// While an append is under way the reader may read its record as soon as the commit word
    /// is stored, before the append is acknowledged, as a polling receiver does.
    fn apply(&mut self, out: &mut Outcome, count: usize, media: &FaultMedia) -> bool {
        let mut end = None;
        for _ in 0..count {
            let Some(record) = self.reader.poll().expect("poll a healthy ring") else {
                break;
            };
            let expected = out.acked.get(self.polled_count).or(out.in_flight.as_ref());
            assert_eq!(Some(&record), expected, "live reader");
            self.polled_count += 1;
            end = Some(record.end());
        }
        let Some(pos) = end else {
            return true;
        };
        self.reader.truncate(pos).expect("truncate");
        if media.crash_image().is_some() {
            out.head_in_flight = Some(pos);
            out.crashed = true;
            return false;
        }
        out.head_done = pos;
        true
    }
}

/// Runs the workload of `seed` on `media` until it ends or the power is cut.
fn run(media: &FaultMedia, seed: u64) -> Outcome {
    let geometry = geometry();
    let mut rng = SplitMix::new(seed);
    let mut writer = LocalWriter::attach(media).expect("attach to a formatted ring");
    let mut applier = Applier {
        reader: RingReader::new(media, geometry, 0, 0),
        polled_count: 0,
    };
    let mut out = Outcome::default();
    for _ in 0..APPENDS_PER_RUN {
        if rng.below(4) == 0 {
            let unread = (out.acked.len() - applier.polled_count) as u64;
            let count = rng.below(unread + 1) as usize;
            if !applier.apply(&mut out, count, media) {
                return out;
            }
        }
        let kind = RecordKind(1 + rng.below(3) as u16);
        let len = if rng.below(4) == 0 {
            0
        } else {
            rng.below(geometry.max_payload_bytes() + 1)
        };
        let payload: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let mut reservation = loop {
            match writer.reserve(&[payload.len()]) {
                Ok(reservation) => break reservation,
                // The ring is full of unread records: the reader makes room.
                Err(LogError::Full { .. }) => {
                    if !applier.apply(&mut out, 1, media) {
                        return out;
                    }
                }
                Err(e) => panic!("reserve: {e}"),
            }
        };
        let plan = writer.writer().append(&mut reservation, kind, &payload);
        writer.writer().release(reservation);
        out.in_flight = Some(Record {
            pos: plan.pos,
            seq: plan.seq,
            kind,
            payload,
        });
        // The plan one operation at a time, so the reader can race it.
        for op in &plan.ops {
            execute_plan(media, std::slice::from_ref(op)).expect("execute");
            if media.crash_image().is_some() {
                out.crashed = true;
                return out;
            }
            if rng.below(8) == 0 && !applier.apply(&mut out, usize::MAX, media) {
                return out;
            }
        }
        out.acked.extend(out.in_flight.take());
    }
    out
}

/// What the recoveries of one test saw, so the test can show it exercised every case.
#[derive(Debug, Default)]
struct Tally {
    in_flight_returned: u64,
    in_flight_dropped: u64,
    discarded: u64,
    head_in_flight_kept: u64,
    head_in_flight_undone: u64,
    /// The reader had truncated past the tail the writer had persisted.
    head_past_persisted_tail: u64,
}

/// Asserts that `recovery` returned exactly what `out` acknowledged, plus at most the record in
/// flight, from a head that a completed or in-flight truncation set.
fn check(out: &Outcome, recovery: &Recovery, tally: &mut Tally, context: &str) {
    let in_flight_head = out.head_in_flight == Some(recovery.head);
    assert!(
        recovery.head == out.head_done || in_flight_head,
        "{context}: head {} is neither the completed truncation {} nor the one in flight {:?}",
        recovery.head,
        out.head_done,
        out.head_in_flight
    );
    if out.head_in_flight.is_some() {
        if in_flight_head {
            tally.head_in_flight_kept += 1;
        } else {
            tally.head_in_flight_undone += 1;
        }
    }
    let expected: Vec<&Record> = out
        .acked
        .iter()
        .filter(|r| r.pos >= recovery.head)
        .collect();
    let got = &recovery.records;
    assert!(
        got.len() >= expected.len(),
        "{context}: {} acknowledged records after head {}, {} recovered",
        expected.len(),
        recovery.head,
        got.len()
    );
    for (index, want) in expected.iter().enumerate() {
        assert_eq!(&got[index], *want, "{context}: record {index}");
    }
    match &got[expected.len()..] {
        [] => {
            if out.in_flight.is_some() {
                tally.in_flight_dropped += 1;
            }
        }
        [extra] => {
            assert_eq!(
                Some(extra),
                out.in_flight.as_ref(),
                "{context}: a record that was never appended"
            );
            tally.in_flight_returned += 1;
        }
        more => panic!(
            "{context}: {} records beyond the acknowledged ones: {more:?}",
            more.len()
        ),
    }
    if let Some(last) = got.last() {
        assert!(
            recovery.tail >= last.end(),
            "{context}: tail before a record"
        );
        assert!(recovery.next_seq > last.seq, "{context}: seq goes back");
    }
    if let Some(last_acked) = out.acked.last() {
        assert!(
            recovery.next_seq > last_acked.seq,
            "{context}: the sequence number of an acknowledged record would be reused"
        );
    }
    if recovery.head > recovery.tail_persisted {
        tally.head_past_persisted_tail += 1;
    }
    tally.discarded += recovery.discarded.len() as u64;
}

/// After recovery a writer attaches and appends; a clean recovery then returns the recovered
/// records and the new one, and nothing the crash left behind.
fn append_after_recovery(media: &FaultMedia, recovery: &Recovery, context: &str) {
    let mut writer = LocalWriter::attach(media)
        .unwrap_or_else(|e| panic!("{context}: attach after recovery: {e}"));
    assert_eq!(writer.writer().tail(), recovery.tail, "{context}");
    assert_eq!(writer.writer().next_seq(), recovery.next_seq, "{context}");
    let kind = RecordKind(9);
    let payload = b"written after the power came back".to_vec();
    let mut expected = recovery.records.clone();
    let plan = match writer.append(kind, &payload) {
        Ok(plan) => plan,
        Err(LogError::Full { .. }) => {
            let mut reader =
                RingReader::new(media, recovery.geometry, recovery.head, recovery.tail);
            reader.truncate(recovery.tail).expect("truncate");
            expected.clear();
            writer
                .append(kind, &payload)
                .unwrap_or_else(|e| panic!("{context}: append to an empty ring: {e}"))
        }
        Err(e) => panic!("{context}: append after recovery: {e}"),
    };
    expected.push(Record {
        pos: plan.pos,
        seq: plan.seq,
        kind,
        payload,
    });
    let again = recover(media).unwrap_or_else(|e| panic!("{context}: second recovery: {e}"));
    assert_eq!(again.records, expected, "{context}: after a clean append");
    assert!(
        again.discarded.is_empty(),
        "{context}: {:?}",
        again.discarded
    );
}

#[test]
fn power_loss_at_any_operation_keeps_every_acknowledged_record_exactly() {
    let image = formatted_image();
    let mut tally = Tally::default();
    let mut crash_count = 0;
    for_each_seed(SEED_COUNT, Replay::Exact, |seed| {
        let clean = FaultMedia::from_image(&image, seed);
        let full_run = run(&clean, seed);
        assert!(!full_run.crashed);
        let end = full_run.acked.last().expect("appends").end();
        assert!(end > 3 * CAPACITY_BYTES, "seed {seed}: ring not wrapped");
        let total_ops = clean.ops_count();
        for op in 1..=total_ops {
            let context = format!("seed {seed}, power lost at op {op} of {total_ops}");
            let media = FaultMedia::from_image(&image, fate_seed(seed, op, 0));
            media.crash_at_op(op);
            let out = run(&media, seed);
            assert!(out.crashed, "{context}: the run did not crash");
            let crashed = media.crash_image().expect("crashed");

            let after = FaultMedia::from_image(&crashed, 0);
            let recovery = recover(&after).unwrap_or_else(|e| panic!("{context}: recover: {e}"));
            check(&out, &recovery, &mut tally, &context);

            // The power fails again during recovery; the next recovery still finds everything.
            let first_try = FaultMedia::from_image(&crashed, fate_seed(seed, op, 1));
            let recovery_op = 1 + op % RECOVERY_OPS_MAX;
            first_try.crash_at_op(recovery_op);
            let _ = recover(&first_try)
                .unwrap_or_else(|e| panic!("{context}: interrupted recover: {e}"));
            let second_try = FaultMedia::from_image(&first_try.power_loss(), 0);
            let context2 = format!("{context}, and again at recovery op {recovery_op}");
            let recovery2 =
                recover(&second_try).unwrap_or_else(|e| panic!("{context2}: recover: {e}"));
            check(&out, &recovery2, &mut Tally::default(), &context2);

            append_after_recovery(&after, &recovery, &context);
            crash_count += 1;
        }
    });
    // Every case the assertions tell apart happened, so none of them was checked vacuously.
    let pinned = pinned_seed().is_some();
    if !pinned {
        assert!(tally.in_flight_returned > 0, "{tally:?}");
        assert!(tally.in_flight_dropped > 0, "{tally:?}");
        assert!(tally.discarded > 0, "{tally:?}");
        assert!(tally.head_in_flight_kept > 0, "{tally:?}");
        assert!(tally.head_in_flight_undone > 0, "{tally:?}");
        assert!(tally.head_past_persisted_tail > 0, "{tally:?}");
    }
    eprintln!("{crash_count} power losses: {tally:?}");
}

#[test]
fn a_persisted_truncation_is_never_undone_by_power_loss() {
    let image = formatted_image();
    let geometry = geometry();
    for_each_seed(SEED_COUNT, Replay::Exact, |seed| {
        // Appends four records, truncates the first two, then appends and truncates more with
        // the power cut at `crash_op` operations after the first truncation completed.
        let script = |media: &FaultMedia, crash_op: Option<u64>| -> (u64, u64) {
            let mut rng = SplitMix::new(seed);
            let mut writer = LocalWriter::attach(media).expect("attach");
            let mut reader = RingReader::new(media, geometry, 0, 0);
            // At most 96 bytes a record, so four fit in the ring beside the pad kept in hand.
            let mut payload = || -> Vec<u8> {
                let len = rng.below(65);
                (0..len).map(|i| i as u8 ^ seed as u8).collect()
            };
            for _ in 0..4 {
                writer.append(RecordKind(1), &payload()).expect("append");
            }
            reader.poll().expect("poll").expect("record");
            let second = reader.poll().expect("poll").expect("record");
            reader.truncate(second.end()).expect("truncate");
            let ops_count_at_truncation = media.ops_count();
            if let Some(op) = crash_op {
                media.crash_at_op(op);
            }
            // Once the power is cut nothing more reaches the media: stop there.
            for _ in 0..2 {
                if media.crash_image().is_some() {
                    break;
                }
                while reader.poll().expect("poll").is_some() {}
                reader.truncate(reader.cursor()).expect("truncate");
                if media.crash_image().is_some() {
                    break;
                }
                writer.append(RecordKind(1), &payload()).expect("append");
            }
            (second.end(), ops_count_at_truncation)
        };
        let clean = FaultMedia::from_image(&image, seed);
        let (first_head, ops_before) = script(&clean, None);
        let ops_after = clean.ops_count() - ops_before;
        assert!(ops_after > 0, "seed {seed}");
        for op in 1..=ops_after + 1 {
            let media = FaultMedia::from_image(&image, fate_seed(seed, op, 2));
            let (truncated_to, _) = script(&media, Some(op));
            assert_eq!(truncated_to, first_head);
            let after = FaultMedia::from_image(&media.power_loss(), 0);
            let recovery = recover(&after)
                .unwrap_or_else(|e| panic!("seed {seed}, power lost at op {op}: recover: {e}"));
            assert!(
                recovery.head >= first_head,
                "seed {seed}, power lost at op {op}: head {} went back before {first_head}",
                recovery.head
            );
            assert!(
                recovery.records.iter().all(|r| r.pos >= first_head),
                "seed {seed}, power lost at op {op}: a truncated record came back"
            );
        }
    });
}
