//! The random numbers behind YCSB's choices: a fast PRNG, YCSB's FNV hash, the zipfian family
//! (plain, scrambled, skewed towards the latest insert) and the acknowledged insert counter.
//!
//! The generators follow YCSB's `site.ycsb.generator` package step by step, so a run here draws
//! keys with the same distribution as YCSB's `CoreWorkload`; where YCSB has a quirk that shapes
//! the distribution, it is kept and named in a comment.

use acre_nvm_log::random::SplitMix;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// YCSB's zipfian constant (`ZipfianGenerator.ZIPFIAN_CONSTANT`).
pub const ZIPFIAN_CONSTANT: f64 = 0.99;

/// Items the scrambled zipfian draws from before hashing them onto the key space
/// (`ScrambledZipfianGenerator.ITEM_COUNT`).
pub const SCRAMBLED_ITEM_COUNT: u64 = 10_000_000_000_000_000;

/// The zeta YCSB precomputed for the scrambled zipfian (`ScrambledZipfianGenerator.ZETAN`).
///
/// YCSB quirk, kept: this is zeta over 10^10 items, not over [`SCRAMBLED_ITEM_COUNT`] (10^16,
/// whose zeta is about 45.1). Items 0 and 1 are drawn with probabilities 1/ZETAN and
/// 0.5^0.99/ZETAN; the rest of the mass goes through Gray's formula over 10^16 items.
pub const SCRAMBLED_ZETA: f64 = 26.469_028_201_783_02;

/// FNV-1a's 64-bit offset basis.
pub const FNV_OFFSET_BASIS_64: u64 = 0xCBF2_9CE4_8422_2325;
/// FNV-1a's 64-bit prime.
pub const FNV_PRIME_64: u64 = 0x0000_0100_0000_01B3;

/// Insert numbers an [`AcknowledgedCounter`] holds while earlier ones are still outstanding.
/// YCSB's window is the same size; a run has at most one outstanding insert per client thread.
pub const ACK_PENDING_MAX: usize = 1 << 20;

/// YCSB's `Utils.fnvhash64`: FNV-1a over the eight bytes of `value`, least significant first,
/// and the absolute value of the result read as a signed 64-bit number.
///
/// The one hash Java cannot negate, `i64::MIN`, stays negative in YCSB; here it becomes 2^63.
pub fn fnvhash64(value: u64) -> u64 {
    let mut hash = FNV_OFFSET_BASIS_64;
    for octet in value.to_le_bytes() {
        hash ^= u64::from(octet);
        hash = hash.wrapping_mul(FNV_PRIME_64);
    }
    i64::from_ne_bytes(hash.to_ne_bytes()).unsigned_abs()
}

/// xoshiro256** (Blackman and Vigna): a small, fast generator whose state is expanded from one
/// 64-bit seed with splitmix64, so nearby seeds give unrelated streams.
#[derive(Clone, Debug)]
pub struct Rng {
    state: [u64; 4],
}

impl Rng {
    /// The generator that `seed` names: the same seed gives the same stream.
    pub fn from_seed(seed: u64) -> Rng {
        let mut mix = SplitMix::new(seed);
        // splitmix64 never yields four zero words in a row, the one state xoshiro must avoid.
        Rng {
            state: [
                mix.next_u64(),
                mix.next_u64(),
                mix.next_u64(),
                mix.next_u64(),
            ],
        }
    }

    /// A generator seeded from the operating system's entropy.
    pub fn from_entropy() -> Result<Rng, getrandom::Error> {
        Ok(Rng::from_seed(getrandom::u64()?))
    }

    pub fn next_u64(&mut self) -> u64 {
        let [s0, s1, s2, s3] = &mut self.state;
        let result = s1.wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = *s1 << 17;
        *s2 ^= *s0;
        *s3 ^= *s1;
        *s1 ^= *s2;
        *s0 ^= *s3;
        *s2 ^= t;
        *s3 = s3.rotate_left(45);
        result
    }

    /// Uniform in [0, 1), with 53 random bits like Java's `Random.nextDouble`.
    pub fn next_f64(&mut self) -> f64 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        (self.next_u64() >> 11) as f64 * SCALE
    }

    /// Uniform in `0..bound` (Lemire's multiply-shift; the bias is below 2^-64 per value).
    pub fn below(&mut self, bound: u64) -> u64 {
        assert!(bound > 0, "below(0)");
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Fills `bytes` with random bytes.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        let mut chunks = bytes.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// zeta(n, theta) continued: `initial` (the sum over the first `from` items) plus the terms
/// 1/(i+1)^theta for i in `from..to`. Linear in `to - from`.
pub fn zeta(from: u64, to: u64, theta: f64, initial: f64) -> f64 {
    (from..to).fold(initial, |sum, i| sum + 1.0 / ((i + 1) as f64).powf(theta))
}

/// YCSB's `ZipfianGenerator`: item 0 is the most popular, item 1 the next, and so on, drawn by
/// Gray et al.'s method ("Quickly Generating Billion-Record Synthetic Databases", SIGMOD'94).
///
/// Items 0 and 1 get their exact probabilities 1/zeta(n) and 2^-theta/zeta(n); the others come
/// from a closed-form inverse that approximates the zipfian tail (item 2 is drawn about 17% more
/// often than 3^-theta/zeta(n) at n = 1000, the error shrinking with the rank).
#[derive(Clone, Debug)]
pub struct Zipfian {
    item_count: u64,
    theta: f64,
    alpha: f64,
    zeta_2: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    /// Items `0..item_count` with constant `theta`, computing zeta (linear in `item_count`).
    pub fn new(item_count: u64, theta: f64) -> Zipfian {
        Zipfian::with_zeta(item_count, theta, zeta(0, item_count, theta, 0.0))
    }

    /// Items `0..item_count` with constant `theta` and a precomputed `zeta_n`.
    pub fn with_zeta(item_count: u64, theta: f64, zeta_n: f64) -> Zipfian {
        assert!(theta > 0.0, "theta={theta}");
        assert!(theta < 1.0, "theta={theta}");
        let mut zipfian = Zipfian {
            item_count,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_2: zeta(0, 2, theta, 0.0),
            zeta_n,
            eta: 0.0,
        };
        zipfian.eta = zipfian.eta_for(item_count);
        zipfian
    }

    fn eta_for(&self, item_count: u64) -> f64 {
        (1.0 - (2.0 / item_count as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta_2 / self.zeta_n)
    }

    pub fn item_count(&self) -> u64 {
        self.item_count
    }

    /// Extends the items to `0..item_count`, adding the new terms to zeta (YCSB's incremental
    /// recomputation). The count never shrinks: YCSB's latest distribution only grows.
    ///
    /// YCSB keeps eta's `2/n` term at the count the generator was built with; this uses the new
    /// count, as Gray's formula has it (the two differ by under 10^-6 for n >= 1000).
    pub fn grow(&mut self, item_count: u64) {
        assert!(
            item_count >= self.item_count,
            "item_count={item_count} was={}",
            self.item_count
        );
        if item_count > self.item_count {
            self.zeta_n = zeta(self.item_count, item_count, self.theta, self.zeta_n);
            self.item_count = item_count;
            self.eta = self.eta_for(item_count);
        }
    }

    /// The next item, in `0..item_count` (0 if there are no items, as YCSB does).
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let item =
            (self.item_count as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        // Rounding at 10^16 items can land on the count itself.
        item.min(self.item_count.saturating_sub(1))
    }

    /// The probability that [`Zipfian::next`] returns `item`, read off the generator's own
    /// inverse (so it includes the approximation of Gray's formula).
    pub fn probability(&self, item: u64) -> f64 {
        // Below `exact` a draw is item 0 or 1; above it, item i is drawn for u in
        // [threshold(i), threshold(i + 1)), where floor(n * (1 - eta (1 - u))^alpha) = i.
        let exact = (1.0 + 0.5f64.powf(self.theta)) / self.zeta_n;
        let threshold = |i: u64| {
            1.0 - (1.0 - (i as f64 / self.item_count as f64).powf(1.0 - self.theta)) / self.eta
        };
        let low = threshold(item).max(exact);
        let high = threshold(item + 1).min(1.0);
        let by_formula = (high - low).max(0.0);
        by_formula
            + match item {
                0 => 1.0 / self.zeta_n,
                1 => 0.5f64.powf(self.theta) / self.zeta_n,
                _ => 0.0,
            }
    }
}

/// YCSB's `ScrambledZipfianGenerator`: a zipfian draw over [`SCRAMBLED_ITEM_COUNT`] items,
/// hashed with [`fnvhash64`] onto `0..item_count`, so the popular keys are spread over the key
/// space instead of clustered at its start.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    zipfian: Zipfian,
    item_count: u64,
}

impl ScrambledZipfian {
    pub fn new(item_count: u64) -> ScrambledZipfian {
        assert!(item_count > 0, "item_count=0");
        // YCSB builds its zipfian over 0..=ITEM_COUNT, one item more than the constant's name.
        let zipfian =
            Zipfian::with_zeta(SCRAMBLED_ITEM_COUNT + 1, ZIPFIAN_CONSTANT, SCRAMBLED_ZETA);
        ScrambledZipfian {
            zipfian,
            item_count,
        }
    }

    pub fn item_count(&self) -> u64 {
        self.item_count
    }

    /// The zipfian over the large item space, before hashing.
    pub fn unscrambled(&self) -> &Zipfian {
        &self.zipfian
    }

    /// The next item, in `0..item_count`.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        fnvhash64(self.zipfian.next(rng)) % self.item_count
    }
}

/// YCSB's `SkewedLatestGenerator`: the most recently acknowledged insert is the most popular
/// item, the one before it the next, and so on (a zipfian over the distance from the newest).
#[derive(Clone, Debug)]
pub struct SkewedLatest {
    zipfian: Zipfian,
}

impl SkewedLatest {
    /// A generator whose newest item is `newest` (YCSB: the basis counter's last value).
    pub fn new(newest: u64) -> SkewedLatest {
        SkewedLatest {
            zipfian: Zipfian::new(newest, ZIPFIAN_CONSTANT),
        }
    }

    /// The next item when the newest is `newest`: `newest - zipfian(newest)`, in `1..=newest`.
    ///
    /// YCSB quirk, kept: the zipfian is over `newest` items (not `newest + 1`), so item 0 is never
    /// drawn once there is a newer one. `newest` never goes back.
    pub fn next(&mut self, newest: u64, rng: &mut Rng) -> u64 {
        self.zipfian.grow(newest);
        newest - self.zipfian.next(rng)
    }
}

/// YCSB's `AcknowledgedCounterGenerator`, shared by the client threads: hands out insert
/// numbers, and tells which prefix of them has been acknowledged (the insert finished), so that
/// reads never pick a key whose insert is still under way.
#[derive(Debug)]
pub struct AcknowledgedCounter {
    next: AtomicU64,
    /// Every number below this is acknowledged.
    acknowledged: AtomicU64,
    /// Acknowledged numbers above a gap, waiting for the gap to close.
    pending: Mutex<BTreeSet<u64>>,
}

impl AcknowledgedCounter {
    /// A counter whose first number is `start`; every number below it counts as acknowledged.
    pub fn new(start: u64) -> AcknowledgedCounter {
        AcknowledgedCounter {
            next: AtomicU64::new(start),
            acknowledged: AtomicU64::new(start),
            pending: Mutex::new(BTreeSet::new()),
        }
    }

    /// The next number to insert.
    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks `value` (returned by [`AcknowledgedCounter::next`]) as done.
    pub fn acknowledge(&self, value: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut low = self.acknowledged.load(Ordering::Relaxed);
        assert!(value >= low, "value={value} acknowledged={low}");
        let inserted = pending.insert(value);
        assert!(inserted, "value={value} acknowledged twice");
        assert!(
            pending.len() <= ACK_PENDING_MAX,
            "pending={} (too many unacknowledged inserts)",
            pending.len()
        );
        // Bounded by the pending set, itself bounded above.
        while pending.remove(&low) {
            low += 1;
        }
        self.acknowledged.store(low, Ordering::Release);
    }

    /// How many numbers from 0 are acknowledged: every key number below this exists (YCSB's
    /// `lastValue() + 1`).
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_nvm_log::random::test_seed;

    /// Draws per distribution test: the standard error of a share p is sqrt(p(1-p)/DRAWS),
    /// about 3e-4 for the hottest item of 1000.
    const DRAWS: usize = 1_000_000;

    /// |observed - expected| within five standard errors of a share over `draws` draws.
    fn assert_share(what: &str, hits: u64, draws: usize, expected: f64) {
        let observed = hits as f64 / draws as f64;
        let standard_error = (expected * (1.0 - expected) / draws as f64).sqrt();
        let deviation = (observed - expected).abs();
        assert!(
            deviation <= 5.0 * standard_error,
            "{what}: observed={observed:.5} expected={expected:.5} se={standard_error:.6}"
        );
        assert!(
            deviation <= 0.01,
            "{what}: observed={observed:.5} expected={expected:.5}"
        );
    }

    #[test]
    fn fnvhash64_is_fnv1a_over_the_little_endian_bytes() {
        // By hand from the definition: eight rounds of (h ^ 0) * prime for the number 0.
        let mut zero = FNV_OFFSET_BASIS_64;
        for _ in 0..8 {
            zero = zero.wrapping_mul(FNV_PRIME_64);
        }
        let expected = if zero >> 63 == 1 {
            zero.wrapping_neg()
        } else {
            zero
        };
        assert_eq!(fnvhash64(0), expected);
        // The first byte of 1 is 1, the other seven are 0.
        let mut one = (FNV_OFFSET_BASIS_64 ^ 1).wrapping_mul(FNV_PRIME_64);
        for _ in 1..8 {
            one = one.wrapping_mul(FNV_PRIME_64);
        }
        let expected = if one >> 63 == 1 {
            one.wrapping_neg()
        } else {
            one
        };
        assert_eq!(fnvhash64(1), expected);
        // Byte order: 0x0102 hashes 0x02 first.
        let mut bytes = FNV_OFFSET_BASIS_64;
        for octet in [2u64, 1, 0, 0, 0, 0, 0, 0] {
            bytes = (bytes ^ octet).wrapping_mul(FNV_PRIME_64);
        }
        let expected = if bytes >> 63 == 1 {
            bytes.wrapping_neg()
        } else {
            bytes
        };
        assert_eq!(fnvhash64(0x0102), expected);
        for value in [0, 1, 2, 1000, u64::MAX] {
            assert!(fnvhash64(value) <= 1 << 63, "value={value}");
        }
    }

    #[test]
    fn rng_is_deterministic_per_seed_and_uniform_enough() {
        let mut a = Rng::from_seed(7);
        let mut b = Rng::from_seed(7);
        let mut c = Rng::from_seed(8);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..4).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..4).map(|_| c.next_u64()).collect::<Vec<_>>());

        let seed = test_seed("rng_is_deterministic_per_seed_and_uniform_enough");
        let mut rng = Rng::from_seed(seed);
        let mut buckets = [0u64; 10];
        let mut sum = 0.0;
        for _ in 0..100_000 {
            buckets[rng.below(10) as usize] += 1;
            let f = rng.next_f64();
            assert!((0.0..1.0).contains(&f), "f={f}");
            sum += f;
        }
        for (index, &hits) in buckets.iter().enumerate() {
            assert_share(&format!("bucket {index}"), hits, 100_000, 0.1);
        }
        let mean = sum / 100_000.0;
        assert!((mean - 0.5).abs() < 0.005, "mean={mean}");

        let mut bytes = [0u8; 13];
        rng.fill(&mut bytes);
        assert!(bytes.iter().any(|&b| b != 0), "bytes={bytes:?}");
    }

    #[test]
    fn zipfian_hottest_items_match_zeta() {
        let seed = test_seed("zipfian_hottest_items_match_zeta");
        let mut rng = Rng::from_seed(seed);
        let item_count = 1000;
        let zipfian = Zipfian::new(item_count, ZIPFIAN_CONSTANT);
        let mut hits = vec![0u64; item_count as usize];
        for _ in 0..DRAWS {
            let item = zipfian.next(&mut rng);
            assert!(item < item_count, "item={item}");
            hits[item as usize] += 1;
        }
        // The analytic zipfian: P(i) = (i+1)^-0.99 / zeta(1000, 0.99).
        let zeta_n = zeta(0, item_count, ZIPFIAN_CONSTANT, 0.0);
        let analytic = |i: u64| 1.0 / ((i + 1) as f64).powf(ZIPFIAN_CONSTANT) / zeta_n;
        // Items 0 and 1 are drawn with their exact probabilities.
        assert_share("item 0", hits[0], DRAWS, analytic(0));
        assert_share("item 1", hits[1], DRAWS, analytic(1));
        for i in 0..10 {
            // Each of the top ten against the generator's own probability...
            assert_share(
                &format!("item {i}"),
                hits[i as usize],
                DRAWS,
                zipfian.probability(i),
            );
            // ... which is Gray's approximation of the analytic one: 17% high at item 2, less
            // after (see `Zipfian`).
            let ratio = zipfian.probability(i) / analytic(i);
            assert!((0.99..1.18).contains(&ratio), "item {i}: ratio={ratio}");
        }
        let top10: u64 = hits[..10].iter().sum();
        let expected: f64 = (0..10).map(|i| zipfian.probability(i)).sum();
        assert_share("top 10", top10, DRAWS, expected);
        let total: f64 = (0..item_count).map(|i| zipfian.probability(i)).sum();
        assert!((total - 1.0).abs() < 1e-9, "total={total}");
    }

    #[test]
    fn zipfian_grown_incrementally_equals_one_built_whole() {
        let mut grown = Zipfian::new(500, ZIPFIAN_CONSTANT);
        grown.grow(1000);
        let whole = Zipfian::new(1000, ZIPFIAN_CONSTANT);
        assert!((grown.zeta_n - whole.zeta_n).abs() < 1e-9);
        assert!((grown.eta - whole.eta).abs() < 1e-12);
        assert_eq!(grown.item_count(), 1000);
    }

    #[test]
    fn scrambled_zipfian_hottest_key_matches_its_expectation() {
        let seed = test_seed("scrambled_zipfian_hottest_key_matches_its_expectation");
        let mut rng = Rng::from_seed(seed);
        let key_count = 1000;
        let scrambled = ScrambledZipfian::new(key_count);
        let mut hits = vec![0u64; key_count as usize];
        for _ in 0..DRAWS {
            let key = scrambled.next(&mut rng);
            assert!(key < key_count, "key={key}");
            hits[key as usize] += 1;
        }
        // The same distribution, hashed: key k collects every item i with fnv(i) % n == k. The
        // items below EXACT_ITEMS are summed one by one; the rest of the mass (items with tiny
        // probabilities each, about 64% in all) is spread evenly by the hash.
        const EXACT_ITEMS: u64 = 1_000_000;
        let zipfian = scrambled.unscrambled();
        let hottest = fnvhash64(0) % key_count;
        let mut head = 0.0;
        let mut on_hottest = 0.0;
        for item in 0..EXACT_ITEMS {
            let p = zipfian.probability(item);
            head += p;
            if fnvhash64(item) % key_count == hottest {
                on_hottest += p;
            }
        }
        let expected = on_hottest + (1.0 - head) / key_count as f64;
        // Item 0 alone gives 1/ZETAN = 0.0378, far above any other key's share.
        assert!(expected > 1.0 / SCRAMBLED_ZETA, "expected={expected}");
        assert_share("hottest key", hits[hottest as usize], DRAWS, expected);
        let most_drawn = (0..key_count).max_by_key(|&k| hits[k as usize]);
        assert_eq!(most_drawn, Some(hottest));
    }

    #[test]
    fn skewed_latest_favours_the_newest_items() {
        let seed = test_seed("skewed_latest_favours_the_newest_items");
        let mut rng = Rng::from_seed(seed);
        let newest = 999;
        let mut latest = SkewedLatest::new(newest);
        let draws = 200_000;
        let mut on_newest = 0;
        let mut in_newest_tenth = 0;
        for _ in 0..draws {
            let item = latest.next(newest, &mut rng);
            assert!((1..=newest).contains(&item), "item={item}");
            on_newest += u64::from(item == newest);
            in_newest_tenth += u64::from(item > newest - 100);
        }
        assert_share(
            "newest",
            on_newest,
            draws,
            1.0 / zeta(0, newest, ZIPFIAN_CONSTANT, 0.0),
        );
        let tenth = in_newest_tenth as f64 / draws as f64;
        assert!(tenth > 0.6, "share of the newest tenth={tenth}");

        // New inserts take over: the newest is again the hottest.
        let newest = 1099;
        let mut on_newest = 0;
        let mut on_old_newest = 0;
        for _ in 0..draws {
            let item = latest.next(newest, &mut rng);
            assert!(item <= newest, "item={item}");
            on_newest += u64::from(item == newest);
            on_old_newest += u64::from(item == 999);
        }
        assert_share(
            "new newest",
            on_newest,
            draws,
            1.0 / zeta(0, newest, ZIPFIAN_CONSTANT, 0.0),
        );
        assert!(
            on_newest > 10 * on_old_newest.max(1),
            "{on_newest} {on_old_newest}"
        );
    }

    #[test]
    fn acknowledged_counter_moves_over_closed_gaps_only() {
        let counter = AcknowledgedCounter::new(10);
        assert_eq!(counter.acknowledged(), 10);
        let (a, b, c) = (counter.next(), counter.next(), counter.next());
        assert_eq!((a, b, c), (10, 11, 12));
        counter.acknowledge(b);
        assert_eq!(counter.acknowledged(), 10);
        counter.acknowledge(c);
        assert_eq!(counter.acknowledged(), 10);
        counter.acknowledge(a);
        assert_eq!(counter.acknowledged(), 13);
    }
}
