//! YCSB's core workloads A to F: their operation mixes, the records and key names they use, and
//! the per-thread [`Chooser`] that draws each operation the way YCSB's `CoreWorkload` does.

use super::backend::Fields;
use super::generator::{AcknowledgedCounter, Rng, ScrambledZipfian, SkewedLatest, fnvhash64};
use serde::Serialize;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Fields of a record (YCSB's `fieldcount`).
pub const FIELD_COUNT: usize = 10;
/// Bytes of each field (YCSB's `fieldlength`, constant).
pub const FIELD_LENGTH_BYTES: usize = 100;
/// Shortest scan of workload E (YCSB's `minscanlength`).
pub const SCAN_LENGTH_MIN: usize = 1;
/// Longest scan of workload E (`maxscanlength`); lengths are uniform in between.
pub const SCAN_LENGTH_MAX: usize = 100;
/// What every key name starts with.
pub const KEY_PREFIX: &str = "user";
/// Draws of a key before giving up on one that exists (YCSB redraws without bound). Only a run
/// whose predicted inserts dwarf the loaded records rejects most draws; see [`Chooser::new`].
pub const KEY_DRAWS_MAX: usize = 10_000;

/// A workload name that is none of YCSB's core workloads: the command line reports it as a
/// usage error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown workload {name:?}: expected one of a, b, c, d, e, f")]
pub struct UnknownWorkload {
    pub name: String,
}

/// One of YCSB's core workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Workload {
    /// Update heavy: 50% reads, 50% updates, zipfian.
    A,
    /// Read mostly: 95% reads, 5% updates, zipfian.
    B,
    /// Read only: 100% reads, zipfian.
    C,
    /// Read latest: 95% reads, 5% inserts, the newest records most popular.
    D,
    /// Short ranges: 95% scans of 1 to 100 records, 5% inserts, zipfian.
    E,
    /// Read-modify-write: 50% reads, 50% read-modify-writes, zipfian.
    F,
}

/// How a workload picks the key of a read, update, scan or read-modify-write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDistribution {
    /// YCSB's scrambled zipfian over the loaded keys (and the predicted inserts).
    Zipfian,
    /// YCSB's skewed latest: the most recently inserted keys are the most popular.
    Latest,
}

impl Workload {
    pub const ALL: [Workload; 6] = [
        Workload::A,
        Workload::B,
        Workload::C,
        Workload::D,
        Workload::E,
        Workload::F,
    ];

    /// `a` to `f`, either case.
    pub fn parse(name: &str) -> Result<Workload, UnknownWorkload> {
        Workload::ALL
            .into_iter()
            .find(|workload| workload.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| UnknownWorkload {
                name: name.to_string(),
            })
    }

    /// The workload's letter, upper case as in YCSB's `workloada`..`workloadf` descriptions.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::D => "D",
            Workload::E => "E",
            Workload::F => "F",
        }
    }

    /// The operation mix: each kind with its proportion (they add up to 1).
    pub fn mix(self) -> &'static [(OpKind, f64)] {
        match self {
            Workload::A => &[(OpKind::Read, 0.5), (OpKind::Update, 0.5)],
            Workload::B => &[(OpKind::Read, 0.95), (OpKind::Update, 0.05)],
            Workload::C => &[(OpKind::Read, 1.0)],
            Workload::D => &[(OpKind::Read, 0.95), (OpKind::Insert, 0.05)],
            Workload::E => &[(OpKind::Scan, 0.95), (OpKind::Insert, 0.05)],
            Workload::F => &[(OpKind::Read, 0.5), (OpKind::ReadModifyWrite, 0.5)],
        }
    }

    pub fn distribution(self) -> KeyDistribution {
        match self {
            Workload::D => KeyDistribution::Latest,
            _ => KeyDistribution::Zipfian,
        }
    }

    /// The share of inserts in the run phase.
    pub fn insert_proportion(self) -> f64 {
        self.mix()
            .iter()
            .filter(|(kind, _)| *kind == OpKind::Insert)
            .map(|(_, proportion)| proportion)
            .sum()
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = UnknownWorkload;

    fn from_str(name: &str) -> Result<Workload, UnknownWorkload> {
        Workload::parse(name)
    }
}

/// The kinds of operations, as YCSB names them in its reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum OpKind {
    #[serde(rename = "INSERT")]
    Insert,
    #[serde(rename = "READ")]
    Read,
    #[serde(rename = "UPDATE")]
    Update,
    #[serde(rename = "SCAN")]
    Scan,
    #[serde(rename = "READ-MODIFY-WRITE")]
    ReadModifyWrite,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Insert,
        OpKind::Read,
        OpKind::Update,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Insert => "INSERT",
            OpKind::Read => "READ",
            OpKind::Update => "UPDATE",
            OpKind::Scan => "SCAN",
            OpKind::ReadModifyWrite => "READ-MODIFY-WRITE",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation to do, with its key as a key number (see [`key_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Insert {
        key_number: u64,
    },
    Read {
        key_number: u64,
    },
    /// Overwrites one field (YCSB's `writeallfields=false`).
    Update {
        key_number: u64,
        field_index: usize,
    },
    /// Up to `record_count` records from the key on.
    Scan {
        key_number: u64,
        record_count: usize,
    },
    /// Reads the record and overwrites one field.
    ReadModifyWrite {
        key_number: u64,
        field_index: usize,
    },
}

impl Operation {
    pub fn kind(&self) -> OpKind {
        match self {
            Operation::Insert { .. } => OpKind::Insert,
            Operation::Read { .. } => OpKind::Read,
            Operation::Update { .. } => OpKind::Update,
            Operation::Scan { .. } => OpKind::Scan,
            Operation::ReadModifyWrite { .. } => OpKind::ReadModifyWrite,
        }
    }
}

/// The key of record `key_number`: YCSB's hashed insert order, `user` and the decimal
/// [`fnvhash64`] of the number, so consecutive inserts land all over the key order.
pub fn key_name(key_number: u64) -> String {
    format!("{KEY_PREFIX}{}", fnvhash64(key_number))
}

/// A field value: [`FIELD_LENGTH_BYTES`] random bytes (any byte value, not only text).
pub fn random_value(rng: &mut Rng) -> Vec<u8> {
    let mut value = vec![0; FIELD_LENGTH_BYTES];
    rng.fill(&mut value);
    value
}

/// A record of [`FIELD_COUNT`] random values.
pub fn random_record(rng: &mut Rng) -> Fields {
    (0..FIELD_COUNT).map(|_| random_value(rng)).collect()
}

/// How one client thread picks keys.
#[derive(Clone, Debug)]
enum KeyChooser {
    Zipfian(ScrambledZipfian),
    Latest(SkewedLatest),
}

/// Draws the operations of one client thread of a run phase: the kind by the workload's mix,
/// then its key, field and scan length. Cloned from one built per run, so the setup (zeta over
/// the loaded records for the latest distribution) is paid once.
#[derive(Clone, Debug)]
pub struct Chooser {
    mix: &'static [(OpKind, f64)],
    keys: KeyChooser,
    inserts: Arc<AcknowledgedCounter>,
}

impl Chooser {
    /// The chooser for `workload` over `records` loaded keys, numbering inserts with `inserts`
    /// (which starts at `records`). `expected_operations` sizes the zipfian key space as YCSB
    /// does: the loaded records plus twice the inserts expected, plus one (YCSB's inclusive
    /// bound), so the popular keys stay put while the table grows; drawn keys not inserted yet are
    /// drawn again.
    pub fn new(
        workload: Workload,
        records: u64,
        expected_operations: u64,
        inserts: Arc<AcknowledgedCounter>,
    ) -> Chooser {
        assert!(records > 0, "records=0");
        let keys = match workload.distribution() {
            KeyDistribution::Zipfian => {
                let expected_inserts =
                    (expected_operations as f64 * workload.insert_proportion() * 2.0) as u64;
                KeyChooser::Zipfian(ScrambledZipfian::new(records + expected_inserts + 1))
            }
            KeyDistribution::Latest => KeyChooser::Latest(SkewedLatest::new(records - 1)),
        };
        Chooser {
            mix: workload.mix(),
            keys,
            inserts,
        }
    }

    /// The counter run-phase inserts take their key numbers from; the driver acknowledges each
    /// insert on it once the backend has answered.
    pub fn inserts(&self) -> &Arc<AcknowledgedCounter> {
        &self.inserts
    }

    /// The next operation.
    pub fn next(&mut self, rng: &mut Rng) -> Operation {
        match self.next_kind(rng) {
            OpKind::Insert => Operation::Insert {
                key_number: self.inserts.next(),
            },
            OpKind::Read => Operation::Read {
                key_number: self.key_number(rng),
            },
            OpKind::Update => Operation::Update {
                key_number: self.key_number(rng),
                field_index: rng.below(FIELD_COUNT as u64) as usize,
            },
            OpKind::Scan => Operation::Scan {
                key_number: self.key_number(rng),
                record_count: SCAN_LENGTH_MIN
                    + rng.below((SCAN_LENGTH_MAX - SCAN_LENGTH_MIN + 1) as u64) as usize,
            },
            OpKind::ReadModifyWrite => Operation::ReadModifyWrite {
                key_number: self.key_number(rng),
                field_index: rng.below(FIELD_COUNT as u64) as usize,
            },
        }
    }

    /// YCSB's `DiscreteGenerator`: walk the proportions with one uniform draw.
    fn next_kind(&self, rng: &mut Rng) -> OpKind {
        let mut u = rng.next_f64();
        for &(kind, proportion) in self.mix {
            if u < proportion {
                return kind;
            }
            u -= proportion;
        }
        // Rounding left u just above the sum: the last kind.
        self.mix[self.mix.len() - 1].0
    }

    /// YCSB's `nextKeynum`: a key from the distribution, drawn again while it is not yet
    /// acknowledged (its insert may still be under way, or not even started).
    fn key_number(&mut self, rng: &mut Rng) -> u64 {
        for _ in 0..KEY_DRAWS_MAX {
            let acknowledged = self.inserts.acknowledged();
            let key_number = match &mut self.keys {
                KeyChooser::Zipfian(scrambled) => scrambled.next(rng),
                KeyChooser::Latest(latest) => latest.next(acknowledged - 1, rng),
            };
            if key_number < acknowledged {
                return key_number;
            }
        }
        // Only if nearly all of the key space is predicted inserts: any existing key will do.
        rng.below(self.inserts.acknowledged())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_nvm_log::random::test_seed;

    #[test]
    fn workloads_parse_in_either_case_and_unknown_names_list_the_valid_ones() {
        assert_eq!(Workload::parse("a").ok(), Some(Workload::A));
        assert_eq!(Workload::parse("F").ok(), Some(Workload::F));
        assert_eq!("e".parse::<Workload>().ok(), Some(Workload::E));
        for bad in ["", "g", "aa", "workloada"] {
            let error = Workload::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("a, b, c, d, e, f"), "{bad}: {error}");
            assert!(error.contains(&format!("{bad:?}")), "{bad}: {error}");
        }
        for workload in Workload::ALL {
            let total: f64 = workload.mix().iter().map(|(_, p)| p).sum();
            assert!((total - 1.0).abs() < 1e-12, "{workload}: total={total}");
        }
    }

    #[test]
    fn mixes_and_distributions_are_those_of_ycsbs_workload_files() {
        use KeyDistribution::{Latest, Zipfian};
        use OpKind::{Insert, Read, ReadModifyWrite, Scan, Update};
        type Mix = &'static [(OpKind, f64)];
        let expected: [(Workload, Mix, KeyDistribution); 6] = [
            (Workload::A, &[(Read, 0.5), (Update, 0.5)], Zipfian),
            (Workload::B, &[(Read, 0.95), (Update, 0.05)], Zipfian),
            (Workload::C, &[(Read, 1.0)], Zipfian),
            (Workload::D, &[(Read, 0.95), (Insert, 0.05)], Latest),
            (Workload::E, &[(Scan, 0.95), (Insert, 0.05)], Zipfian),
            (Workload::F, &[(Read, 0.5), (ReadModifyWrite, 0.5)], Zipfian),
        ];
        for (workload, mix, distribution) in expected {
            assert_eq!(workload.mix(), mix, "{workload}");
            assert_eq!(workload.distribution(), distribution, "{workload}");
        }
    }

    #[test]
    fn key_names_are_user_and_the_fnv_hash_of_the_number() {
        // Key 0: FNV-1a of eight zero bytes, i.e. the basis times the prime eight times.
        let mut hash = 0xCBF2_9CE4_8422_2325u64;
        for _ in 0..8 {
            hash = hash.wrapping_mul(0x100_0000_01B3);
        }
        let hash = i64::from_ne_bytes(hash.to_ne_bytes()).unsigned_abs();
        assert_eq!(key_name(0), format!("user{hash}"));
        assert_eq!(key_name(0), "user6284781860667377211");
        // Key 1: the first byte is 1 (little-endian), computed the same way by hand.
        assert_eq!(key_name(1), "user8517097267634966620");
        let record = random_record(&mut Rng::from_seed(1));
        assert_eq!(record.len(), FIELD_COUNT);
        assert!(record.iter().all(|field| field.len() == FIELD_LENGTH_BYTES));
    }

    #[test]
    fn operation_mixes_and_scan_lengths_follow_the_workloads() {
        let seed = test_seed("operation_mixes_and_scan_lengths_follow_the_workloads");
        let draws = 100_000;
        for workload in Workload::ALL {
            let records = 1000;
            let inserts = Arc::new(AcknowledgedCounter::new(records));
            let mut chooser = Chooser::new(workload, records, draws, inserts.clone());
            let mut rng = Rng::from_seed(seed ^ workload.index_for_test());
            let mut counts = [0u64; OpKind::ALL.len()];
            let mut scan_total = 0u64;
            let mut scan_lengths_seen = [false; SCAN_LENGTH_MAX + 1];
            for _ in 0..draws {
                let operation = chooser.next(&mut rng);
                counts[operation.kind().index()] += 1;
                match operation {
                    Operation::Insert { key_number } => inserts.acknowledge(key_number),
                    Operation::Read { key_number } => {
                        assert!(key_number < inserts.acknowledged(), "{operation:?}");
                    }
                    Operation::Update {
                        key_number,
                        field_index,
                    }
                    | Operation::ReadModifyWrite {
                        key_number,
                        field_index,
                    } => {
                        assert!(key_number < inserts.acknowledged(), "{operation:?}");
                        assert!(field_index < FIELD_COUNT, "{operation:?}");
                    }
                    Operation::Scan {
                        key_number,
                        record_count,
                    } => {
                        assert!(key_number < inserts.acknowledged(), "{operation:?}");
                        assert!(
                            (SCAN_LENGTH_MIN..=SCAN_LENGTH_MAX).contains(&record_count),
                            "{operation:?}"
                        );
                        scan_total += record_count as u64;
                        scan_lengths_seen[record_count] = true;
                    }
                }
            }
            for kind in OpKind::ALL {
                let expected = workload
                    .mix()
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map_or(0.0, |(_, p)| *p);
                let observed = counts[kind.index()] as f64 / draws as f64;
                let standard_error = (expected * (1.0 - expected) / draws as f64).sqrt();
                assert!(
                    (observed - expected).abs() <= 5.0 * standard_error,
                    "{workload} {kind}: observed={observed} expected={expected}"
                );
            }
            if workload == Workload::E {
                // Uniform in 1..=100: mean 50.5, standard deviation 28.9.
                let scans = counts[OpKind::Scan.index()] as f64;
                let mean = scan_total as f64 / scans;
                assert!(
                    (mean - 50.5).abs() < 5.0 * 28.9 / scans.sqrt(),
                    "mean={mean}"
                );
                assert!(
                    scan_lengths_seen[SCAN_LENGTH_MIN..]
                        .iter()
                        .all(|&seen| seen)
                );
            }
            if workload.insert_proportion() > 0.0 {
                assert_eq!(
                    inserts.acknowledged(),
                    records + counts[OpKind::Insert.index()]
                );
            }
        }
    }

    impl Workload {
        fn index_for_test(self) -> u64 {
            Workload::ALL.iter().position(|&w| w == self).unwrap() as u64
        }
    }
}
