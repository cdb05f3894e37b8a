//! The TPC-C driver: [`load`] populates the database in parallel, [`run`] drives the mix on
//! client threads for a warm-up and a measured time, and [`Report`] is what it measured.
//!
//! The mix is the spec's minimum percentages with New-Order taking the rest, 45/43/4/4/4,
//! dealt from a shuffled deck of 100 cards per thread (clause 5.2.4.2 allows a deck), so every
//! 100 transactions of a thread hold exactly that mix. There are no keying or think times:
//! each thread is a terminal that sends its next transaction as soon as the last one
//! finishes, which is how in-memory engines (FaRM among them) report TPC-C; tpmC is therefore
//! not comparable with audited results, which cap it at 12.86 per warehouse.
//!
//! A transaction that aborts (a conflict, a serialization failure) is tried again with the
//! same inputs after a jittered backoff, up to [`ATTEMPTS_MAX`] attempts; its latency runs from
//! the first attempt to the commit, and each aborted attempt is counted.

use super::backend::{Attempt, Backend, Client, NewOrderOutcome};
use super::input::{Constants, DISTRICTS_PER_WAREHOUSE, ITEM_COUNT, NewOrderInput, Terminal};
use super::rows;
use crate::ycsb::generator::Rng;
use crate::ycsb::progress::{self, Plan, Tally};
use acre_engine::signal::Termination;
use acre_txn::backoff::Backoff;
use anyhow::Context;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// Attempts of one transaction before the run gives up: far more than contention explains.
pub const ATTEMPTS_MAX: u32 = 10_000;
/// Client threads a run may start.
pub const THREADS_MAX: usize = 1024;
/// Warehouses a run may have (ids are u32 everywhere, but a load beyond this is a typo).
pub const WAREHOUSES_MAX: u32 = 10_000;
/// Rows of ITEM or STOCK one load call carries.
pub const LOAD_CHUNK_ROWS: u32 = 10_000;
const BACKOFF_FIRST: Duration = Duration::from_micros(20);
const BACKOFF_MAX: Duration = Duration::from_millis(5);
/// Cards of the deck a thread deals its transactions from.
const DECK: [(Kind, usize); 5] = [
    (Kind::NewOrder, 45),
    (Kind::Payment, 43),
    (Kind::OrderStatus, 4),
    (Kind::Delivery, 4),
    (Kind::StockLevel, 4),
];

/// The five transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    NewOrder,
    Payment,
    OrderStatus,
    Delivery,
    StockLevel,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::NewOrder,
        Kind::Payment,
        Kind::OrderStatus,
        Kind::Delivery,
        Kind::StockLevel,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::NewOrder => "new-order",
            Kind::Payment => "payment",
            Kind::OrderStatus => "order-status",
            Kind::Delivery => "delivery",
            Kind::StockLevel => "stock-level",
        }
    }
}

/// How a TPC-C benchmark runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub warehouses: u32,
    pub threads: usize,
    /// Measured time, after the warm-up.
    pub duration: Duration,
    /// Time the mix runs before measuring starts.
    pub warmup: Duration,
    /// Seed of every random choice (the data, the constants, the inputs); `None`: entropy.
    pub seed: Option<u64>,
    /// Redraw a progress line on stdout (for a terminal).
    pub progress: bool,
    /// Ends the run early when requested (Ctrl-C).
    pub termination: Option<Arc<Termination>>,
}

/// Options that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    #[error("the number of warehouses must be at least 1")]
    ZeroWarehouses,
    #[error("{0} warehouses are too many: at most {WAREHOUSES_MAX}")]
    TooManyWarehouses(u32),
    #[error("the number of threads must be at least 1")]
    ZeroThreads,
    #[error("{0} threads are too many: at most {THREADS_MAX}")]
    TooManyThreads(usize),
    #[error("the duration must be longer than zero")]
    ZeroDuration,
}

impl Options {
    pub fn validate(&self) -> Result<(), OptionsError> {
        match () {
            () if self.warehouses == 0 => Err(OptionsError::ZeroWarehouses),
            () if self.warehouses > WAREHOUSES_MAX => {
                Err(OptionsError::TooManyWarehouses(self.warehouses))
            }
            () if self.threads == 0 => Err(OptionsError::ZeroThreads),
            () if self.threads > THREADS_MAX => Err(OptionsError::TooManyThreads(self.threads)),
            () if self.duration.is_zero() => Err(OptionsError::ZeroDuration),
            () => Ok(()),
        }
    }

    fn stopped(&self) -> bool {
        self.termination
            .as_deref()
            .is_some_and(Termination::is_requested)
    }
}

/// What the load did: the constants of NURand the run must use, and how long it took.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub constants: Constants,
    pub elapsed: Duration,
}

/// One piece of the population, loaded by one call.
#[derive(Clone, Copy, Debug)]
enum Part {
    Items { first: u32 },
    Warehouse { w_id: u32 },
    Stock { w_id: u32, first: u32 },
    District { w_id: u32, d_id: u32 },
}

/// The random stream of `purpose` (a part's number, a thread's index) under `seed`.
fn stream(seed: u64, domain: u64, purpose: u64) -> Rng {
    let mixed = Rng::from_seed(seed ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
    Rng::from_seed(mixed ^ purpose.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}

fn seed_of(options: &Options) -> anyhow::Result<u64> {
    match options.seed {
        Some(seed) => Ok(seed),
        None => getrandom::u64().context("seed the random numbers"),
    }
}

/// Populates the empty database (clause 4.3.3.1) from `options.threads` threads: the items in
/// chunks, then per warehouse its row, its stock in chunks and its ten districts. Each part
/// draws from its own stream, so a seed gives the same data whatever the thread count.
pub fn load(backend: &dyn Backend, options: &Options) -> anyhow::Result<Loaded> {
    options.validate()?;
    let seed = seed_of(options)?;
    let constants = Constants::draw(&mut stream(seed, 1, 0));
    let mut parts: Vec<Part> = (1..=ITEM_COUNT)
        .step_by(LOAD_CHUNK_ROWS as usize)
        .map(|first| Part::Items { first })
        .collect();
    for w_id in 1..=options.warehouses {
        parts.push(Part::Warehouse { w_id });
        parts.extend(
            (1..=ITEM_COUNT)
                .step_by(LOAD_CHUNK_ROWS as usize)
                .map(|first| Part::Stock { w_id, first }),
        );
        parts.extend((1..=DISTRICTS_PER_WAREHOUSE).map(|d_id| Part::District { w_id, d_id }));
    }
    let now = rows::now();
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let tallies: Vec<Tally> = (0..options.threads).map(|_| Tally::default()).collect();
    let plan = Plan {
        label: "load",
        start,
        warmup: Duration::ZERO,
        duration: None,
        total_count: Some(parts.len() as u64),
        unit: "parts",
    };
    let thread_main = |index: usize| -> anyhow::Result<()> {
        let result = (|| {
            let mut client = backend
                .client()
                .with_context(|| format!("open the session of load thread {index}"))?;
            loop {
                if stop.load(Ordering::Relaxed) || options.stopped() {
                    return Ok(());
                }
                let number = next.fetch_add(1, Ordering::Relaxed);
                let Some(&part) = parts.get(number) else {
                    return Ok(());
                };
                let mut rng = stream(seed, 2, number as u64);
                load_part(client.as_mut(), &mut rng, &constants, part, now)
                    .with_context(|| format!("load {part:?}"))?;
                tallies[index].add(true);
            }
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    };
    on_threads(options, &plan, &tallies, "tpcc-load", thread_main)?
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    anyhow::ensure!(!options.stopped(), "the load was interrupted");
    Ok(Loaded {
        constants,
        elapsed: start.elapsed(),
    })
}

fn load_part(
    client: &mut dyn Client,
    rng: &mut Rng,
    constants: &Constants,
    part: Part,
    now: i64,
) -> anyhow::Result<()> {
    let last_of = |first: u32| (first + LOAD_CHUNK_ROWS - 1).min(ITEM_COUNT);
    match part {
        Part::Items { first } => client.load_items(&rows::items(rng, first, last_of(first))),
        Part::Warehouse { w_id } => client.load_warehouse(&rows::warehouse(rng, w_id)),
        Part::Stock { w_id, first } => {
            client.load_stock(&rows::stock(rng, w_id, first, last_of(first)))
        }
        Part::District { w_id, d_id } => {
            client.load_district(&rows::district(rng, constants, w_id, d_id, now))
        }
    }
}

/// Runs `thread_main(index)` on `options.threads` named threads (and the progress line if
/// asked) and returns their results in order.
fn on_threads<T: Send>(
    options: &Options,
    plan: &Plan,
    tallies: &[Tally],
    name: &str,
    thread_main: impl Fn(usize) -> T + Sync,
) -> anyhow::Result<Vec<T>> {
    thread::scope(|scope| {
        let (done, done_receiver) = mpsc::channel::<()>();
        let display = options.progress.then(|| {
            scope.spawn(move || {
                progress::display(plan, tallies, done_receiver, &mut std::io::stdout());
            })
        });
        let thread_main = &thread_main;
        let handles = (0..options.threads)
            .map(|index| {
                thread::Builder::new()
                    .name(format!("{name}-{index}"))
                    .spawn_scoped(scope, move || thread_main(index))
                    .context("start a client thread")
            })
            .collect::<anyhow::Result<Vec<_>>>();
        let results = handles.map(|handles| {
            handles
                .into_iter()
                .map(|handle| match handle.join() {
                    Ok(result) => result,
                    Err(panic) => std::panic::resume_unwind(panic),
                })
                .collect()
        });
        drop(done);
        if let Some(display) = display
            && let Err(panic) = display.join()
        {
            std::panic::resume_unwind(panic);
        }
        results
    })
}

/// One kind's measurements.
#[derive(Clone, Debug)]
pub struct KindStats {
    /// From the first attempt to the commit, nanoseconds, of the committed ones.
    pub latency_ns: Histogram<u64>,
    /// Attempts that aborted and were tried again.
    pub aborted_count: u64,
    /// New-Orders rolled back on purpose (included in the committed count).
    pub rolled_back_count: u64,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            latency_ns: Histogram::new(3).expect("3 significant digits is a valid precision"),
            aborted_count: 0,
            rolled_back_count: 0,
        }
    }

    pub fn committed_count(&self) -> u64 {
        self.latency_ns.len()
    }

    fn merge(&mut self, other: &KindStats) {
        self.latency_ns
            .add(&other.latency_ns)
            .expect("auto-resizing histograms of equal precision always add");
        self.aborted_count += other.aborted_count;
        self.rolled_back_count += other.rolled_back_count;
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub target: String,
    pub description: String,
    pub warehouses: u32,
    pub threads: usize,
    pub warmup: Duration,
    /// The measured time (shorter than asked if the run was interrupted).
    pub measured: Duration,
    /// By [`Kind::ALL`].
    pub kinds: Vec<KindStats>,
}

impl Report {
    pub fn kind(&self, kind: Kind) -> &KindStats {
        &self.kinds[kind as usize]
    }

    /// Completed New-Orders (rolled back ones included, as the spec counts them) per second.
    pub fn new_order_per_second(&self) -> f64 {
        let seconds = self.measured.as_secs_f64();
        if seconds == 0.0 {
            return 0.0;
        }
        self.kind(Kind::NewOrder).committed_count() as f64 / seconds
    }

    /// New-Orders per minute (without the spec's keying and think times: see the module doc).
    pub fn tpmc(&self) -> f64 {
        self.new_order_per_second() * 60.0
    }

    pub fn print_text(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        writeln!(
            out,
            "tpcc on {}: {} warehouses, {} threads, {:.1} s measured after {:.1} s of warm-up",
            self.description,
            self.warehouses,
            self.threads,
            self.measured.as_secs_f64(),
            self.warmup.as_secs_f64()
        )?;
        writeln!(
            out,
            "new-order/s {:.0}   tpmC {:.0}",
            self.new_order_per_second(),
            self.tpmc()
        )?;
        writeln!(
            out,
            "{:<13} {:>10} {:>9} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "transaction",
            "committed",
            "aborted",
            "abort%",
            "p50 us",
            "p99 us",
            "p99.9 us",
            "max us"
        )?;
        for kind in Kind::ALL {
            let stats = self.kind(kind);
            let h = &stats.latency_ns;
            let micros = |ns: u64| ns as f64 / 1000.0;
            let committed = stats.committed_count();
            let attempts = committed + stats.aborted_count;
            writeln!(
                out,
                "{:<13} {:>10} {:>9} {:>8.2} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                kind.name(),
                committed,
                stats.aborted_count,
                if attempts == 0 {
                    0.0
                } else {
                    100.0 * stats.aborted_count as f64 / attempts as f64
                },
                micros(h.value_at_quantile(0.5)),
                micros(h.value_at_quantile(0.99)),
                micros(h.value_at_quantile(0.999)),
                micros(h.max()),
            )?;
        }
        writeln!(
            out,
            "new-orders rolled back on purpose (the spec's 1%): {}",
            self.kind(Kind::NewOrder).rolled_back_count
        )
    }

    /// The report as JSON, with the load's time if known.
    pub fn to_json(&self, load: Option<&Loaded>) -> serde_json::Value {
        let kinds: serde_json::Map<String, serde_json::Value> = Kind::ALL
            .iter()
            .map(|&kind| {
                let stats = self.kind(kind);
                let h = &stats.latency_ns;
                (
                    kind.name().to_string(),
                    serde_json::json!({
                        "committed": stats.committed_count(),
                        "aborted": stats.aborted_count,
                        "rolled_back": stats.rolled_back_count,
                        "p50_us": h.value_at_quantile(0.5) as f64 / 1000.0,
                        "p99_us": h.value_at_quantile(0.99) as f64 / 1000.0,
                        "p999_us": h.value_at_quantile(0.999) as f64 / 1000.0,
                        "max_us": h.max() as f64 / 1000.0,
                    }),
                )
            })
            .collect();
        serde_json::json!({
            "target": self.target,
            "description": self.description,
            "warehouses": self.warehouses,
            "threads": self.threads,
            "warmup_seconds": self.warmup.as_secs_f64(),
            "measured_seconds": self.measured.as_secs_f64(),
            "new_order_per_second": self.new_order_per_second(),
            "tpmc": self.tpmc(),
            "load_seconds": load.map(|loaded| loaded.elapsed.as_secs_f64()),
            "transactions": kinds,
        })
    }
}

impl Report {
    /// Writes [`Report::to_json`] as pretty JSON to `path`, with whether every consistency
    /// condition held after the run and the seed.
    pub fn write_json(
        &self,
        path: &std::path::Path,
        load: Option<&Loaded>,
        consistent: bool,
        seed: Option<u64>,
    ) -> anyhow::Result<()> {
        let mut json = self.to_json(load);
        json["consistent"] = serde_json::json!(consistent);
        json["seed"] = serde_json::json!(seed);
        let text = serde_json::to_string_pretty(&json).context("encode the results")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("write the results to {}", path.display()))
    }
}

/// Runs the mix against a database [`load`]ed with `constants`: a warm-up, then
/// `options.duration` measured.
pub fn run(
    backend: &dyn Backend,
    options: &Options,
    constants: &Constants,
) -> anyhow::Result<Report> {
    options.validate()?;
    let seed = seed_of(options)?;
    let start = Instant::now();
    let measure_start = start + options.warmup;
    let deadline = measure_start + options.duration;
    let stop = AtomicBool::new(false);
    let tallies: Vec<Tally> = (0..options.threads).map(|_| Tally::default()).collect();
    let plan = Plan {
        label: "run",
        start,
        warmup: options.warmup,
        duration: Some(options.duration),
        total_count: None,
        unit: "txns",
    };
    let thread_main = |index: usize| -> anyhow::Result<Vec<KindStats>> {
        let result = (|| {
            let mut client = backend
                .client()
                .with_context(|| format!("open the session of client thread {index}"))?;
            let terminal = Terminal::new(index, options.warehouses, *constants);
            let mut rng = stream(seed, 3, index as u64);
            let mut stats: Vec<KindStats> = Kind::ALL.iter().map(|_| KindStats::new()).collect();
            let mut deck = Vec::with_capacity(100);
            loop {
                if stop.load(Ordering::Relaxed) || options.stopped() {
                    return Ok(stats);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(stats);
                }
                if deck.is_empty() {
                    deal(&mut deck, &mut rng);
                }
                let kind = deck.pop().expect("dealt");
                let measured = now >= measure_start;
                let done = transact(client.as_mut(), &terminal, &mut rng, kind, &stop)
                    .with_context(|| format!("client thread {index}: {}", kind.name()))?;
                tallies[index].add(measured);
                if measured && let Some(done) = done {
                    let kind_stats = &mut stats[kind as usize];
                    let ns = u64::try_from(done.latency.as_nanos()).unwrap_or(u64::MAX);
                    // `record` grows the histogram to fit; clamping is the fallback only if
                    // the counts could not be indexed.
                    if kind_stats.latency_ns.record(ns.max(1)).is_err() {
                        kind_stats.latency_ns.saturating_record(ns);
                    }
                    kind_stats.aborted_count += u64::from(done.attempts - 1);
                    kind_stats.rolled_back_count += u64::from(done.rolled_back);
                }
            }
        })();
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        result
    };
    let results = on_threads(options, &plan, &tallies, "tpcc-client", thread_main)?;
    let finished = Instant::now().min(deadline);
    let mut kinds: Vec<KindStats> = Kind::ALL.iter().map(|_| KindStats::new()).collect();
    for result in results {
        for (mine, theirs) in kinds.iter_mut().zip(result?) {
            mine.merge(&theirs);
        }
    }
    Ok(Report {
        target: backend.name().to_string(),
        description: backend.describe(),
        warehouses: options.warehouses,
        threads: options.threads,
        warmup: options.warmup,
        measured: finished.saturating_duration_since(measure_start),
        kinds,
    })
}

/// Shuffles a new deck of the mix into `deck`.
fn deal(deck: &mut Vec<Kind>, rng: &mut Rng) {
    for (kind, count) in DECK {
        deck.extend(std::iter::repeat_n(kind, count));
    }
    for index in (1..deck.len()).rev() {
        deck.swap(index, rng.below(index as u64 + 1) as usize);
    }
}

/// A transaction that committed.
struct Done {
    latency: Duration,
    attempts: u32,
    rolled_back: bool,
}

/// Draws the inputs of one `kind` and runs it to its commit; None if the run stopped while
/// it was being retried.
fn transact(
    client: &mut dyn Client,
    terminal: &Terminal,
    rng: &mut Rng,
    kind: Kind,
    stop: &AtomicBool,
) -> anyhow::Result<Option<Done>> {
    let now = rows::now();
    match kind {
        Kind::NewOrder => {
            let input = terminal.new_order(rng, now);
            attempt(stop, || {
                Ok(match client.new_order(&input)? {
                    Attempt::Committed(outcome) => {
                        check_new_order(&input, &outcome)?;
                        Attempt::Committed(outcome == NewOrderOutcome::RolledBack)
                    }
                    Attempt::Aborted => Attempt::Aborted,
                })
            })
        }
        Kind::Payment => {
            let input = terminal.payment(rng, now);
            attempt(stop, || Ok(no_rollback(client.payment(&input)?)))
        }
        Kind::OrderStatus => {
            let input = terminal.order_status(rng);
            attempt(stop, || Ok(no_rollback(client.order_status(&input)?)))
        }
        Kind::Delivery => {
            let input = terminal.delivery(rng, now);
            attempt(stop, || Ok(no_rollback(client.delivery(&input)?)))
        }
        Kind::StockLevel => {
            let input = terminal.stock_level(rng);
            attempt(stop, || Ok(no_rollback(client.stock_level(&input)?)))
        }
    }
}

fn no_rollback<T>(attempt: Attempt<T>) -> Attempt<bool> {
    match attempt {
        Attempt::Committed(_) => Attempt::Committed(false),
        Attempt::Aborted => Attempt::Aborted,
    }
}

/// A backend's New-Order answer agrees with its inputs: rolled back exactly when an item is
/// unused, one line per input line otherwise.
fn check_new_order(input: &NewOrderInput, outcome: &NewOrderOutcome) -> anyhow::Result<()> {
    match outcome {
        NewOrderOutcome::RolledBack => anyhow::ensure!(
            input.rolls_back(),
            "rolled back a New-Order whose items all exist: {input:?}"
        ),
        NewOrderOutcome::Placed(output) => {
            anyhow::ensure!(
                !input.rolls_back(),
                "placed a New-Order with the unused item id: {input:?}"
            );
            anyhow::ensure!(
                output.lines.len() == input.lines.len(),
                "placed {} lines of {}",
                output.lines.len(),
                input.lines.len()
            );
        }
    }
    Ok(())
}

/// Attempts `once` until it commits, backing off between attempts.
fn attempt(
    stop: &AtomicBool,
    mut once: impl FnMut() -> anyhow::Result<Attempt<bool>>,
) -> anyhow::Result<Option<Done>> {
    let start = Instant::now();
    let mut backoff: Option<Backoff> = None;
    for attempts in 1..=ATTEMPTS_MAX {
        match once()? {
            Attempt::Committed(rolled_back) => {
                return Ok(Some(Done {
                    latency: start.elapsed(),
                    attempts,
                    rolled_back,
                }));
            }
            Attempt::Aborted if stop.load(Ordering::Relaxed) => return Ok(None),
            Attempt::Aborted => backoff
                .get_or_insert_with(|| Backoff::retry(BACKOFF_FIRST, BACKOFF_MAX))
                .wait(),
        }
    }
    anyhow::bail!("{ATTEMPTS_MAX} attempts of one transaction aborted: the database refuses it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deck_holds_the_mix_exactly() {
        let mut rng = Rng::from_seed(1);
        let mut deck = Vec::new();
        deal(&mut deck, &mut rng);
        assert_eq!(deck.len(), 100);
        for (kind, count) in DECK {
            assert_eq!(deck.iter().filter(|&&k| k == kind).count(), count);
        }
        let mut other = Vec::new();
        deal(&mut other, &mut rng);
        assert_ne!(deck, other, "shuffled");
    }

    #[test]
    fn bad_options_are_refused() {
        let options = Options {
            warehouses: 1,
            threads: 1,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            seed: None,
            progress: false,
            termination: None,
        };
        assert_eq!(options.validate(), Ok(()));
        let mut bad = options.clone();
        bad.warehouses = 0;
        assert_eq!(bad.validate(), Err(OptionsError::ZeroWarehouses));
        let mut bad = options.clone();
        bad.threads = 0;
        assert_eq!(bad.validate(), Err(OptionsError::ZeroThreads));
        let mut bad = options;
        bad.duration = Duration::ZERO;
        assert_eq!(bad.validate(), Err(OptionsError::ZeroDuration));
    }
}
