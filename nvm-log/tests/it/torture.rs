//! The SIGKILL torture loop, shared by the `kill` tests and the `kill_torture` example (which
//! includes this file by path): a child process appends to a file-backed ring and prints each
//! acknowledged append; the parent kills it at a random moment, recovers the ring, checks that
//! every acknowledged record is there and exact, truncates some records, and starts the next child
//! on the same ring, so the ring wraps many times.
//!
//! A killed process loses no store it made (the page cache and tmpfs outlive it), so this tests
//! the append protocol's ordering, recovery's repair and reattaching, under real processes, real
//! mappings and both persist paths; durability across power loss is `power_loss`'s business.

use acre_nvm_log::random::SplitMix;
use acre_nvm_log::record::record_bytes;
use acre_nvm_log::recovery::recover;
use acre_nvm_log::ring::{LocalWriter, RingGeometry, RingReader, format};
use acre_nvm_log::{LogError, MapOptions, Mapping, PersistMode, RecordKind, Recovery};
use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set in a child's environment: the ring file it appends to. Its presence makes a process a
/// child.
const CHILD_RING_ENV: &str = "ACRE_KILL_CHILD_RING";
/// The run's seed, from which every record's contents derive.
const CHILD_RUN_SEED_ENV: &str = "ACRE_KILL_CHILD_RUN_SEED";
/// This child's seed, from which its record sizes derive.
const CHILD_SEED_ENV: &str = "ACRE_KILL_CHILD_SEED";
/// `flush` or `auto`: how the child persists.
const CHILD_PERSIST_ENV: &str = "ACRE_KILL_CHILD_PERSIST";

/// Data bytes of the ring: small enough that a run wraps it many times.
pub const RING_CAPACITY_BYTES: u64 = 256 * 1024;
/// Largest record, header included.
pub const MAX_RECORD_BYTES: u64 = 1024;
/// How many 1 ms waits a child whose ring is full makes before it concludes that its parent
/// is gone and exits.
const FULL_WAITS_MAX: u64 = 30_000;
/// One kill in this many lands before the child has even attached to the ring.
const EARLY_KILL_ONE_IN: u64 = 10;

fn geometry() -> RingGeometry {
    RingGeometry::new(RING_CAPACITY_BYTES, MAX_RECORD_BYTES).expect("valid geometry")
}

/// The kind and payload of the record with sequence number `seq` and `len` payload bytes in the
/// run seeded `run_seed`. The parent checks every recovered record against it.
fn contents(run_seed: u64, seq: u64, len: usize) -> (RecordKind, Vec<u8>) {
    let mut rng = SplitMix::new(run_seed ^ seq.wrapping_mul(0xA24B_AED4_963E_E407));
    let kind = RecordKind(1 + rng.below(7) as u16);
    let mut payload = Vec::with_capacity(len + 8);
    while payload.len() < len {
        payload.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    payload.truncate(len);
    (kind, payload)
}

/// Creates and formats the ring file at `path`.
pub fn create_ring(path: &Path) -> Result<(), String> {
    let geometry = geometry();
    let mapping =
        Mapping::create_file(path, geometry.media_bytes() as usize, MapOptions::default())
            .map_err(|e| format!("create ring file {}: {e}", path.display()))?;
    format(&mapping, geometry).map_err(|e| format!("format ring {}: {e}", path.display()))
}

/// What a child is told through its environment.
#[derive(Clone, Debug)]
pub struct ChildParams {
    pub ring: PathBuf,
    pub run_seed: u64,
    pub child_seed: u64,
    pub persist: PersistMode,
}

impl ChildParams {
    fn set_env(&self, command: &mut Command) {
        let persist = if self.persist == PersistMode::Flush {
            "flush"
        } else {
            "auto"
        };
        command
            .env(CHILD_RING_ENV, &self.ring)
            .env(CHILD_RUN_SEED_ENV, self.run_seed.to_string())
            .env(CHILD_SEED_ENV, self.child_seed.to_string())
            .env(CHILD_PERSIST_ENV, persist);
    }
}

/// The child's parameters if this process was started as a torture child.
pub fn child_from_env() -> Option<ChildParams> {
    let ring = std::env::var_os(CHILD_RING_ENV)?;
    let number = |name: &str| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("torture child without a numeric {name}"))
    };
    let persist = std::env::var(CHILD_PERSIST_ENV)
        .ok()
        .and_then(|name| PersistMode::parse(&name))
        .unwrap_or_else(|| panic!("torture child without a valid {CHILD_PERSIST_ENV}"));
    Some(ChildParams {
        ring: PathBuf::from(ring),
        run_seed: number(CHILD_RUN_SEED_ENV),
        child_seed: number(CHILD_SEED_ENV),
        persist,
    })
}

/// Runs a child until it is killed: the process exits only on an error.
pub fn child_main(params: ChildParams) -> ! {
    let result = child_loop(&params, false, &mut std::io::stdout().lock());
    match result {
        Ok(count) => eprintln!("kill-torture child: stopped after {count} appends"),
        Err(e) => eprintln!("kill-torture child: {e}"),
    }
    std::process::exit(1)
}

/// The child: attaches to the ring, prints `ready`, then appends records of random sizes and
/// prints `ack <seq> <len>` after each acknowledged one. When the ring is full it returns if
/// `stop_when_full`, and otherwise prints `full` and waits to be killed. Returns the number of
/// acknowledged appends.
pub fn child_loop(
    params: &ChildParams,
    stop_when_full: bool,
    out: &mut dyn Write,
) -> Result<u64, String> {
    let options = MapOptions {
        persist: params.persist,
    };
    let mapping = Mapping::open_file(&params.ring, options)
        .map_err(|e| format!("map ring {}: {e}", params.ring.display()))?;
    let mut writer = LocalWriter::attach(mapping).map_err(|e| format!("attach: {e}"))?;
    let geometry = writer.writer().geometry();
    let max_payload = geometry.max_payload_bytes();
    let print_failed = |e: std::io::Error| format!("write to the parent: {e}");
    writeln!(out, "ready").map_err(print_failed)?;
    out.flush().map_err(print_failed)?;
    let mut rng = SplitMix::new(params.child_seed);
    let mut acked_count = 0;
    let mut full_waits = 0;
    loop {
        let len = match rng.below(8) {
            0 => 0,
            1 => max_payload,
            _ => rng.below(max_payload + 1),
        };
        // A record that does not fit before the end of the lap goes after a pad, which takes a
        // sequence number of its own.
        let tail = writer.writer().tail();
        let room_before_wrap = geometry.capacity - tail % geometry.capacity;
        let padded = record_bytes(len) > room_before_wrap;
        let seq = writer.writer().next_seq() + u64::from(padded);
        let (kind, payload) = contents(params.run_seed, seq, len as usize);
        match writer.append(kind, &payload) {
            Ok(plan) => {
                if plan.seq != seq {
                    return Err(format!("append got seq {} where {seq} was due", plan.seq));
                }
                writeln!(out, "ack {seq} {len}").map_err(print_failed)?;
                out.flush().map_err(print_failed)?;
                acked_count += 1;
            }
            Err(LogError::Full { .. }) if stop_when_full => return Ok(acked_count),
            Err(LogError::Full { .. }) => {
                if full_waits == 0 {
                    writeln!(out, "full").map_err(print_failed)?;
                    out.flush().map_err(print_failed)?;
                }
                full_waits += 1;
                if full_waits > FULL_WAITS_MAX {
                    return Err("the ring stayed full and nobody killed this child".to_string());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(format!("append seq {seq}: {e}")),
        }
    }
}

/// Parses a child's output: the `ack <seq> <len>` lines, in order. Other lines (a test harness's
/// chatter) are skipped; a line cut short by the kill can only be the last one and is dropped.
pub fn parse_acks(output: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut acks = Vec::new();
    let complete = match output.rfind('\n') {
        Some(end) => &output[..end],
        None => "",
    };
    for line in complete.lines() {
        let Some(rest) = line.strip_prefix("ack ") else {
            continue;
        };
        let mut fields = rest.split(' ').map(str::parse::<u64>);
        match (fields.next(), fields.next(), fields.next()) {
            (Some(Ok(seq)), Some(Ok(len)), None) => acks.push((seq, len)),
            _ => return Err(format!("malformed ack line {line:?}")),
        }
    }
    Ok(acks)
}

/// Checks a recovery against what was acknowledged (`acked`: sequence number to payload length,
/// for every record acknowledged and not yet truncated): every acknowledged record is there with
/// its length, and every record is exactly what was appended. Returns how many recovered records
/// were not in `acked` (appends killed after they reached the ring but before they were
/// reported).
pub fn check_recovered(
    run_seed: u64,
    recovery: &Recovery,
    acked: &BTreeMap<u64, u64>,
) -> Result<u64, String> {
    let mut recovered = BTreeMap::new();
    for record in &recovery.records {
        let (kind, payload) = contents(run_seed, record.seq, record.payload.len());
        if record.kind != kind || record.payload != payload {
            return Err(format!(
                "record seq {} at position {} is not what was appended",
                record.seq, record.pos
            ));
        }
        recovered.insert(record.seq, record.payload.len() as u64);
    }
    for (&seq, &len) in acked {
        match recovered.get(&seq) {
            Some(&found) if found == len => {}
            Some(&found) => {
                return Err(format!(
                    "acknowledged record seq {seq} of {len} bytes recovered with {found}"
                ));
            }
            None => {
                return Err(format!(
                    "acknowledged record seq {seq} is missing (head {}, tail {})",
                    recovery.head, recovery.tail
                ));
            }
        }
    }
    Ok(recovered
        .keys()
        .filter(|seq| !acked.contains_key(seq))
        .count() as u64)
}

/// A torture run.
#[derive(Clone, Debug)]
pub struct Config {
    pub iterations: u64,
    pub seed: u64,
    /// A child is killed up to this long after it reports that it is ready.
    pub kill_delay_us_max: u64,
    /// Where the ring file lives: tmpfs makes each child's persists cheap.
    pub dir: PathBuf,
}

/// What a torture run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub kills: u64,
    /// Children killed before they had attached to the ring.
    pub kills_before_ready: u64,
    /// Children killed after at least one acknowledged append.
    pub kills_after_acks: u64,
    /// Children killed while they were appending (attached, and the ring not yet full).
    pub kills_while_appending: u64,
    pub acked_count: u64,
    /// Recovered records that no child had reported: appends killed between the ring and stdout.
    pub unreported_recovered_count: u64,
    pub truncation_count: u64,
    /// Times the writer went round the ring.
    pub laps: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} kills ({} before attaching, {} while appending, {} after acks), {} acknowledged \
             appends all recovered, {} more recovered unreported, {} truncations, {} laps, in \
             {:.1} s",
            self.kills,
            self.kills_before_ready,
            self.kills_while_appending,
            self.kills_after_acks,
            self.acked_count,
            self.unreported_recovered_count,
            self.truncation_count,
            self.laps,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs the torture: `config.iterations` children, each started by `child_command` (with the
/// child's environment added) and killed. Stops at the first violation, naming the seed and the
/// iteration. `progress` is called after every iteration.
pub fn run(
    config: &Config,
    child_command: &dyn Fn() -> Command,
    progress: &mut dyn FnMut(u64, &Summary),
) -> Result<Summary, String> {
    let started = Instant::now();
    let ring = config.dir.join("ring");
    create_ring(&ring)?;
    let mut rng = SplitMix::new(config.seed);
    let mut summary = Summary::default();
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    for iteration in 0..config.iterations {
        let fail = |what: String| {
            format!(
                "kill torture seed {} iteration {iteration}: {what} (ring {})",
                config.seed,
                ring.display()
            )
        };
        let params = ChildParams {
            ring: ring.clone(),
            run_seed: config.seed,
            child_seed: rng.next_u64(),
            persist: if rng.below(2) == 0 {
                PersistMode::Flush
            } else {
                PersistMode::Auto
            },
        };
        let output = run_child(config, &params, &mut rng, child_command).map_err(fail)?;
        summary.kills += 1;
        let said = |word: &str| output.lines().any(|line| line == word);
        if !said("ready") {
            summary.kills_before_ready += 1;
        } else if !said("full") {
            summary.kills_while_appending += 1;
        }
        let acks = parse_acks(&output).map_err(fail)?;
        if !acks.is_empty() {
            summary.kills_after_acks += 1;
        }
        summary.acked_count += acks.len() as u64;
        acked.extend(acks);

        let mapping = Mapping::open_file(&ring, MapOptions::default())
            .map_err(|e| fail(format!("map the ring: {e}")))?;
        let recovery = recover(&mapping).map_err(|e| fail(format!("recover: {e}")))?;
        // A killed process loses none of its stores, and a record is committed by one store
        // made last: nothing can be half-written.
        if !recovery.discarded.is_empty() {
            return Err(fail(format!(
                "recovery discarded records after a kill: {:?}",
                recovery.discarded
            )));
        }
        summary.unreported_recovered_count +=
            check_recovered(config.seed, &recovery, &acked).map_err(fail)?;
        // What recovery returned is part of the log from now on, reported or not.
        for record in &recovery.records {
            acked.insert(record.seq, record.payload.len() as u64);
        }
        summary.laps = recovery.tail / RING_CAPACITY_BYTES;

        if !recovery.records.is_empty() && rng.below(8) != 0 {
            let count = if rng.below(4) != 0 {
                recovery.records.len()
            } else {
                1 + rng.below(recovery.records.len() as u64) as usize
            };
            let geometry = recovery.geometry;
            let mut reader = RingReader::new(&mapping, geometry, recovery.head, recovery.head);
            for expected in &recovery.records[..count] {
                let polled = reader.poll().map_err(|e| fail(format!("poll: {e}")))?;
                if polled.as_ref() != Some(expected) {
                    return Err(fail(format!(
                        "the reader polled {polled:?} where recovery found {expected:?}"
                    )));
                }
            }
            reader
                .truncate(reader.cursor())
                .map_err(|e| fail(format!("truncate: {e}")))?;
            let last_seq = recovery.records[count - 1].seq;
            acked.retain(|&seq, _| seq > last_seq);
            summary.truncation_count += 1;
        }
        drop(mapping);
        summary.elapsed = started.elapsed();
        progress(iteration + 1, &summary);
    }
    Ok(summary)
}

/// Starts one child, kills it, and returns its stdout.
fn run_child(
    config: &Config,
    params: &ChildParams,
    rng: &mut SplitMix,
    child_command: &dyn Fn() -> Command,
) -> Result<String, String> {
    let mut command = child_command();
    params.set_env(&mut command);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("start a child: {e}"))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut output = String::new();
    if rng.below(EARLY_KILL_ONE_IN) == 0 {
        std::thread::sleep(Duration::from_micros(rng.below(500)));
    } else {
        // Wait for `ready`, so that the kill lands while the child appends.
        loop {
            let mut line = String::new();
            let read = stdout
                .read_line(&mut line)
                .map_err(|e| format!("read the child's output: {e}"))?;
            output.push_str(&line);
            if read == 0 || line == "ready\n" {
                break;
            }
        }
        let delay_us = kill_delay_us(rng, config.kill_delay_us_max);
        std::thread::sleep(Duration::from_micros(delay_us));
    }
    child.kill().map_err(|e| format!("kill the child: {e}"))?;
    let status = child
        .wait()
        .map_err(|e| format!("wait for the child: {e}"))?;
    stdout
        .read_to_string(&mut output)
        .map_err(|e| format!("read the child's output: {e}"))?;
    if status.signal() != Some(libc::SIGKILL) {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        return Err(format!(
            "the child ended by itself ({status}) instead of being killed: {stderr}"
        ));
    }
    Ok(output)
}

/// A delay of up to `max_us`, spread over its orders of magnitude, so that kills a few
/// microseconds into the appends are as common as kills a millisecond in (a release-build child
/// may fill the ring well before `max_us`).
fn kill_delay_us(rng: &mut SplitMix, max_us: u64) -> u64 {
    let magnitude_count = u64::from(u64::BITS - max_us.leading_zeros());
    let scale_us = 1u64 << rng.below(magnitude_count + 1);
    rng.below(scale_us.min(max_us) + 1)
}
