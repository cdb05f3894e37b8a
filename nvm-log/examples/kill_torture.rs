//! `kill_torture`: SIGKILL a ring writer process mid-append as many times as asked, recovering
//! and checking the ring after each kill. The same loop as the `kill` integration test, for long
//! runs:
//!
//! ```text
//! cargo run --release -p acre-nvm-log --example kill_torture -- --iterations 5000 [--seed S]
//!     [--kill-delay-us D] [--dir PATH]
//! ```
//!
//! The example re-executes itself as the child. A failure prints the seed to replay (the kill
//! timing is not replayable, the record sizes, contents and truncations are), keeps the ring file
//! for inspection, and exits with status 1.

#[path = "../tests/it/torture.rs"]
mod torture;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str =
    "usage: kill_torture [--iterations N] [--seed S] [--kill-delay-us D] [--dir PATH]";
const ITERATIONS_DEFAULT: u64 = 1000;
/// A release-build child appends a record in a few microseconds: 2 ms is hundreds of appends.
const KILL_DELAY_US_DEFAULT: u64 = 2_000;
/// Progress is printed every this many kills.
const PROGRESS_EVERY: u64 = 100;

struct Args {
    iterations: u64,
    seed: Option<u64>,
    kill_delay_us: u64,
    dir: Option<PathBuf>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        iterations: ITERATIONS_DEFAULT,
        seed: None,
        kill_delay_us: KILL_DELAY_US_DEFAULT,
        dir: None,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |text: String| -> Result<u64, String> {
            text.parse()
                .map_err(|_| format!("{flag} takes a number, not {text:?}"))
        };
        match flag.as_str() {
            "--iterations" => parsed.iterations = number(value()?)?,
            "--seed" => parsed.seed = Some(number(value()?)?),
            "--kill-delay-us" => parsed.kill_delay_us = number(value()?)?,
            "--dir" => parsed.dir = Some(PathBuf::from(value()?)),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(parsed)
}

/// A fresh directory for the ring: under `--dir`, else tmpfs when there is one.
fn ring_dir(dir: Option<&Path>) -> std::io::Result<tempfile::TempDir> {
    let builder = tempfile::Builder::new()
        .prefix("acre-kill-torture-")
        .clone();
    match dir {
        Some(dir) => builder.tempdir_in(dir),
        None if Path::new("/dev/shm").is_dir() => builder.tempdir_in("/dev/shm"),
        None => builder.tempdir(),
    }
}

fn main() -> ExitCode {
    if let Some(params) = torture::child_from_env() {
        torture::child_main(params);
    }
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
    });
    let dir = match ring_dir(args.dir.as_deref()) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("create a directory for the ring: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("find this program to re-execute it: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "kill torture: {} iterations, seed {seed}, ring in {}",
        args.iterations,
        dir.path().display()
    );
    let config = torture::Config {
        iterations: args.iterations,
        seed,
        kill_delay_us_max: args.kill_delay_us,
        dir: dir.path().to_path_buf(),
    };
    let child = || Command::new(&exe);
    let mut progress = |done: u64, summary: &torture::Summary| {
        if done.is_multiple_of(PROGRESS_EVERY) && done < args.iterations {
            println!("  {done}/{}: {summary}", args.iterations);
        }
    };
    match torture::run(&config, &child, &mut progress) {
        Ok(summary) => {
            println!("kill torture passed, seed {seed}: {summary}");
            ExitCode::SUCCESS
        }
        Err(failure) => {
            let kept = dir.keep();
            eprintln!("kill torture FAILED: {failure}");
            eprintln!("ring kept in {}; replay with --seed {seed}", kept.display());
            ExitCode::FAILURE
        }
    }
}
