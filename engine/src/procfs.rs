//! What `/proc` says about a process: its CPU time, for measuring how much an idle node costs,
//! and its start time, which tells a process from a later one that reused its pid.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` after the command name: the state (field 3) first.
fn stat_fields(pid: u32) -> io::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no ')' in /proc stat"))?;
    Ok(after_name.split_whitespace().map(str::to_string).collect())
}

/// Field `n` (1-based, as proc(5) numbers them) of `/proc/<pid>/stat`, from field 3 on.
fn stat_field(fields: &[String], n: usize) -> io::Result<u64> {
    fields
        .get(n - 3)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short /proc stat"))
}

/// User plus system CPU time used so far by every thread of process `pid`.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let fields = stat_fields(pid)?;
    // utime and stime are fields 14 and 15.
    let total_ticks = stat_field(&fields, 14)? + stat_field(&fields, 15)?;
    Ok(Duration::from_secs_f64(
        total_ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// When process `pid` started, in clock ticks since boot (field 22): with the pid, it names
/// one process for the life of the machine, where a pid alone may be reused.
pub fn start_time(pid: u32) -> io::Result<u64> {
    stat_field(&stat_fields(pid)?, 22)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_start_time_is_stable_and_a_missing_process_has_none() {
        let me = std::process::id();
        let first = start_time(me).unwrap();
        assert!(first > 0);
        assert_eq!(start_time(me).unwrap(), first);
        assert!(start_time(u32::MAX - 1).is_err());
    }

    #[test]
    fn a_busy_process_accumulates_cpu_time() {
        let before = cpu_time(std::process::id()).unwrap();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let after = cpu_time(std::process::id()).unwrap();
        assert!(after > before, "before={before:?} after={after:?}");
    }
}
