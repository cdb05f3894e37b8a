//! SIGKILL a real writer process at random points mid-append, hundreds of times, on one ring
//! file: every acknowledged record survives exactly, and the next writer carries on where
//! recovery left off. The loop is `torture` (shared with the `kill_torture` example, which runs
//! it as long as one likes); the child is this test binary, re-executed to run only
//! [`child_appends_and_acknowledges_until_the_ring_is_full`], which becomes the child when the
//! torture's environment is set.

use crate::torture;
use acre_nvm_log::random::{Replay, for_each_seed};
use acre_nvm_log::recovery::recover;
use acre_nvm_log::{MapOptions, Mapping, PersistMode};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Kills per seed; with three seeds the suite kills 450 children (about 2 s).
const KILLS_PER_SEED: u64 = 150;
const SEED_COUNT: u64 = 3;
/// Kills land from microseconds to a few milliseconds after the child attached: a debug-build child
/// fills the ring in a few milliseconds.
const KILL_DELAY_US_MAX: u64 = 3_000;

/// A directory for ring files: tmpfs when there is one, so persists are cheap.
fn ring_dir() -> tempfile::TempDir {
    let builder = tempfile::Builder::new().prefix("acre-kill-").clone();
    if Path::new("/dev/shm").is_dir()
        && let Ok(dir) = builder.tempdir_in("/dev/shm")
    {
        return dir;
    }
    builder.tempdir().expect("create a temporary directory")
}

/// This test binary, told to run only the child test.
fn child_command() -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
    command.args([
        "kill::child_appends_and_acknowledges_until_the_ring_is_full",
        "--exact",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ]);
    command
}

/// A seed fixes every record's size and contents, every truncation and every kill delay, but
/// not where in the child's work a kill lands: that depends on how the OS schedules the child.
/// A pinned seed may therefore need several runs to hit the same failure again, and the failure
/// message says so.
#[test]
fn sigkill_mid_append_never_loses_or_tears_an_acknowledged_record() {
    for_each_seed(SEED_COUNT, Replay::ChoicesOnly, |seed| {
        let dir = ring_dir();
        let config = torture::Config {
            iterations: KILLS_PER_SEED,
            seed,
            kill_delay_us_max: KILL_DELAY_US_MAX,
            dir: dir.path().to_path_buf(),
        };
        let summary = torture::run(&config, &child_command, &mut |_, _| {})
            .unwrap_or_else(|failure| panic!("{failure}"));
        eprintln!("seed {seed}: {summary}");
        assert_eq!(summary.kills, KILLS_PER_SEED);
        // The kills landed where they matter, and the ring wrapped.
        assert!(summary.kills_after_acks > KILLS_PER_SEED / 2, "{summary}");
        assert!(
            summary.kills_while_appending > KILLS_PER_SEED / 4,
            "{summary}"
        );
        assert!(summary.truncation_count > 0, "{summary}");
        assert!(summary.laps >= 2, "{summary}");
    });
}

/// The child's side of the torture, run in this process: it appends until the ring is full,
/// and recovery returns every append it acknowledged, exactly. Started by the torture (its
/// environment set), this test is the child process instead and never returns.
#[test]
fn child_appends_and_acknowledges_until_the_ring_is_full() {
    if let Some(params) = torture::child_from_env() {
        torture::child_main(params);
    }
    let dir = ring_dir();
    let ring = dir.path().join("ring");
    torture::create_ring(&ring).unwrap_or_else(|e| panic!("{e}"));
    let params = torture::ChildParams {
        ring: ring.clone(),
        run_seed: 7,
        child_seed: 11,
        persist: PersistMode::Flush,
    };
    let mut output = Vec::new();
    let acked_count =
        torture::child_loop(&params, true, &mut output).unwrap_or_else(|e| panic!("{e}"));
    let output = String::from_utf8(output).expect("the child prints text");
    assert!(output.starts_with("ready\n"), "{output}");
    let acks = torture::parse_acks(&output).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(acks.len() as u64, acked_count);
    let acked: BTreeMap<u64, u64> = acks.into_iter().collect();
    let mapping = Mapping::open_file(&ring, MapOptions::default()).expect("map the ring");
    let recovery = recover(&mapping).expect("recover a cleanly written ring");
    let unreported = torture::check_recovered(params.run_seed, &recovery, &acked)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unreported, 0);
    assert_eq!(recovery.records.len() as u64, acked_count);
    // The child stopped because the ring was full, not for any other reason.
    let used_bytes = recovery.tail - recovery.head;
    assert!(
        used_bytes > torture::RING_CAPACITY_BYTES - 2 * torture::MAX_RECORD_BYTES,
        "{acked_count} appends, {used_bytes} bytes used"
    );
}
