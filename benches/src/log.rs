//! Append latency and throughput of a ring log in a mapped file: the workload behind the
//! `log_append` criterion bench, and a table the `acre` command can print ([`run_report`]).
//!
//! One append is what a commit pays per log record: reserve room, write the record, persist it,
//! then write and persist the tail that acknowledges it ([`LocalWriter::append`]). A reader
//! truncates whenever the ring fills, outside the timed region, so the ring never blocks the
//! writer and every append takes the same path.

use acre_nvm_log::record::record_bytes;
use acre_nvm_log::ring::{LocalWriter, RingGeometry, RingReader, format};
use acre_nvm_log::{Durability, LogError, MapOptions, Mapping, PersistMode, RecordKind};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Data bytes of each benchmark ring: large enough that truncation is rare.
pub const RING_CAPACITY_BYTES: u64 = 16 << 20;
/// Largest record a benchmark ring accepts, header included.
pub const MAX_RECORD_BYTES: u64 = 8 << 10;
/// The payload sizes measured: a small commit record, a typical one, and a page.
pub const PAYLOAD_SIZES_BYTES: [usize; 3] = [64, 1024, 4096];

/// A ring file with a writer appending records of one size, and a reader that truncates them
/// when the ring fills. The file is removed on drop.
pub struct AppendBench {
    writer: LocalWriter<Arc<Mapping>>,
    reader: RingReader<Arc<Mapping>>,
    payload: Vec<u8>,
    path: PathBuf,
}

impl AppendBench {
    /// Creates and formats a ring file at `path` (replacing any file there) persisted by `mode`.
    pub fn create(
        path: &Path,
        mode: PersistMode,
        payload_bytes: usize,
    ) -> Result<AppendBench, LogError> {
        let geometry = RingGeometry::new(RING_CAPACITY_BYTES, MAX_RECORD_BYTES)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let options = MapOptions { persist: mode };
        let mapping = Mapping::create_file(path, geometry.media_bytes() as usize, options)?;
        let mapping = Arc::new(mapping);
        format(&*mapping, geometry)?;
        let writer = LocalWriter::attach(mapping.clone())?;
        let reader = RingReader::new(mapping, geometry, 0, 0);
        Ok(AppendBench {
            writer,
            reader,
            payload: (0..payload_bytes).map(|i| i as u8).collect(),
            path: path.to_path_buf(),
        })
    }

    /// How the ring's appends are made durable (what `mode` resolved to for this file).
    pub fn durability(&self) -> Durability {
        self.writer.media().durability()
    }

    /// Appends one record and returns how long the append took. When the ring is full the reader
    /// first truncates everything, untimed.
    pub fn append_one(&mut self) -> Result<Duration, LogError> {
        if self.writer.writer().free_bytes() < record_bytes(self.payload.len() as u64) {
            while self.reader.poll()?.is_some() {}
            self.reader.truncate(self.reader.cursor())?;
            self.writer.refresh_head()?;
        }
        let started = Instant::now();
        self.writer.append(RecordKind(1), &self.payload)?;
        Ok(started.elapsed())
    }
}

impl Drop for AppendBench {
    fn drop(&mut self) {
        // A leftover file only wastes space in a temporary directory.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Where a ring file lives and how it is persisted.
#[derive(Clone, Debug)]
pub struct Setup {
    pub name: &'static str,
    pub dir: PathBuf,
    pub mode: PersistMode,
}

impl Setup {
    /// A ring file name in this setup's directory, unique to this process, setup and size.
    pub fn ring_path(&self, payload_bytes: usize) -> PathBuf {
        self.dir.join(format!(
            "acre-bench-log-{}-{}-{payload_bytes}.ring",
            std::process::id(),
            self.name
        ))
    }
}

/// The three setups measured: tmpfs with the flush + drain path forced, tmpfs with the default
/// path (`msync` on a file without DAX), and a file on disk persisted with `msync`.
pub fn setups() -> Vec<Setup> {
    let tmpfs = existing_dir("/dev/shm");
    let disk = existing_dir("/var/tmp");
    vec![
        Setup {
            name: "tmpfs-flush",
            dir: tmpfs.clone(),
            mode: PersistMode::Flush,
        },
        Setup {
            name: "tmpfs-auto",
            dir: tmpfs,
            mode: PersistMode::Auto,
        },
        Setup {
            name: "disk-msync",
            dir: disk,
            mode: PersistMode::Msync,
        },
    ]
}

/// `path` if it is a directory, else the system's temporary directory.
fn existing_dir(path: &str) -> PathBuf {
    if Path::new(path).is_dir() {
        PathBuf::from(path)
    } else {
        std::env::temp_dir()
    }
}

/// Latency and throughput of one run of appends.
#[derive(Clone, Debug)]
pub struct AppendStats {
    pub setup: &'static str,
    pub durability: Durability,
    pub payload_bytes: usize,
    pub append_count: u64,
    pub p50: Duration,
    pub p99: Duration,
    pub appends_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

/// The `q` quantile (0..=1) of sorted durations, by the nearest rank.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    assert!(!sorted.is_empty(), "percentile of no samples");
    assert!((0.0..=1.0).contains(&q), "quantile {q}");
    let rank = ((sorted.len() as f64 * q).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// Runs up to `append_count_max` appends of `payload_bytes` each on a fresh ring for `setup`,
/// stopping early once `duration_max` has passed, and measures them. Throughput counts the whole
/// loop, truncations included.
pub fn measure(
    setup: &Setup,
    payload_bytes: usize,
    append_count_max: u64,
    duration_max: Duration,
) -> Result<AppendStats, LogError> {
    assert!(append_count_max > 0, "no appends to measure");
    let mut bench =
        AppendBench::create(&setup.ring_path(payload_bytes), setup.mode, payload_bytes)?;
    let mut latencies = Vec::with_capacity(append_count_max.min(1 << 20) as usize);
    let started = Instant::now();
    while (latencies.len() as u64) < append_count_max {
        latencies.push(bench.append_one()?);
        if started.elapsed() >= duration_max {
            break;
        }
    }
    let elapsed_secs = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let append_count = latencies.len() as u64;
    Ok(AppendStats {
        setup: setup.name,
        durability: bench.durability(),
        payload_bytes,
        append_count,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        appends_per_sec: append_count as f64 / elapsed_secs,
        mb_per_sec: (append_count * payload_bytes as u64) as f64 / elapsed_secs / 1e6,
    })
}

/// Every setup and payload size, measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<AppendStats>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<12} {:<13} {:>7} {:>9} {:>10} {:>10} {:>12} {:>9}",
            "setup", "persist", "payload", "appends", "p50", "p99", "appends/s", "MB/s"
        )?;
        for row in &self.rows {
            writeln!(
                f,
                "{:<12} {:<13} {:>7} {:>9} {:>10} {:>10} {:>12.0} {:>9.2}",
                row.setup,
                row.durability.name(),
                row.payload_bytes,
                row.append_count,
                format!("{:.2?}", row.p50),
                format!("{:.2?}", row.p99),
                row.appends_per_sec,
                row.mb_per_sec
            )?;
        }
        Ok(())
    }
}

/// Measures every setup at every payload size, each with up to `append_count_max` appends or for
/// `duration_max_per_row`, whichever ends first, and returns the table.
pub fn run_report(
    append_count_max: u64,
    duration_max_per_row: Duration,
) -> Result<Report, LogError> {
    let mut rows = Vec::new();
    for setup in setups() {
        for payload_bytes in PAYLOAD_SIZES_BYTES {
            rows.push(measure(
                &setup,
                payload_bytes,
                append_count_max,
                duration_max_per_row,
            )?);
        }
    }
    Ok(Report { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&samples, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&samples, 1.0), Duration::from_micros(100));
        assert_eq!(percentile(&samples, 0.0), Duration::from_micros(1));
        assert_eq!(percentile(&samples[..1], 0.99), Duration::from_micros(1));
    }

    #[test]
    fn appends_survive_truncation_and_the_ring_file_is_removed() {
        let setup = &setups()[1];
        // Not `ring_path`: the report test uses that file at the same time.
        let path = setup
            .dir
            .join(format!("acre-bench-log-{}-wrap.ring", std::process::id()));
        let mut bench = AppendBench::create(&path, setup.mode, 4096).unwrap();
        // Two rings' worth, so the reader truncates and the writer wraps.
        let appends_count = 2 * RING_CAPACITY_BYTES / record_bytes(4096) + 1;
        for _ in 0..appends_count {
            bench.append_one().unwrap();
        }
        assert!(bench.writer.writer().tail() >= appends_count * record_bytes(4096));
        assert!(bench.reader.head() > RING_CAPACITY_BYTES);
        assert!(path.exists());
        drop(bench);
        assert!(!path.exists());
    }

    #[test]
    fn the_report_has_a_row_per_setup_and_size() {
        let report = run_report(50, Duration::from_secs(1)).unwrap();
        assert_eq!(report.rows.len(), 9);
        for row in &report.rows {
            assert!(row.append_count > 0 && row.append_count <= 50, "{row:?}");
            assert!(row.p50 <= row.p99, "{row:?}");
            assert!(row.appends_per_sec > 0.0, "{row:?}");
        }
        let table = report.to_string();
        assert_eq!(table.lines().count(), 10, "{table}");
        assert!(table.contains("disk-msync"), "{table}");
    }
}
