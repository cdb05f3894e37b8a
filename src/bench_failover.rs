//! `acre bench failover`: how long a cluster of node processes takes to get over the loss of a
//! node (issue 13). Each kill starts a fresh cluster (`launch::up`, f = 1, the CM in the first
//! 2f+1 nodes), connects a client, kills one node with SIGKILL (a backup-only node, a primary
//! that is not the CM leader, or the CM leader), and times three things from the kill, all on
//! the host's `CLOCK_MONOTONIC`, the clock the CM stamps its reconfigurations with:
//!
//! - **suspected**: when the CM started the reconfiguration that removes the victim (its row in
//!   the CM status file, `started_ns`);
//! - **committed**: when that reconfiguration committed the configuration without the victim;
//! - **commits again**: when the first update that started after the kill committed, on a
//!   region the kill did not take the primary of (one whose replicas exclude the victim when
//!   there is one). A thread commits updates to it in a loop throughout; the loop also reports
//!   its longest stall: the longest time without a commit from the kill until an update that
//!   started after the new configuration committed.
//!
//! When the victim was the primary of a region (a primary's kill, and a CM leader's that was
//! one), the first such region in the configuration is blocked in the configuration without
//! the victim until its promoted backup has recovered its transactions
//! (docs/failures.md#transaction-recovery). A second commit loop updates an object in it
//! throughout, and three more times are taken:
//!
//! - **active again**: when the CM committed the configuration that makes the region active
//!   again, the one whose cause names it (`recovery of r2`, `recovery of r2, r5`): its row's
//!   `started_ns` + `committed_ms`;
//! - **region commits again**: when the first update of that region that started after the
//!   kill committed, of those that committed after the configuration without the victim did.
//!   Over shm the commits in between are not recovery: a dead primary's region and rings stay
//!   mapped, and one-sided commits go on reaching them until its rings are full (a few hundred,
//!   in the first tens of ms); they are counted apart in each kill's line;
//! - **region stall**: that loop's longest time without a commit from the kill until an update
//!   that started after the region was active again.
//!
//! And what the recovery the kill caused settled: **transactions recovered**, committed and
//! aborted, and **regions recovered** by their new primary. Each memory node's worker counts
//! them and publishes the counts in its status area (`acre::cluster::SettledCounts`, read from
//! the area's file with `read_settled`, as `acre cluster status` does); the bench reads every
//! node's before the kill and once they stop moving after its last wait, and sums the
//! differences over the nodes (a transaction is counted by each node that settled its part; the
//! bench's updates write one object each, so each once).
//!
//! Each kill's times are printed as it ends, then the median, p99 and max of each per victim
//! kind (the victim's region's in a table of their own), and the median, p99, max and total of
//! the transactions and regions recovered per kill. A kill is counted as failed, and the
//! run goes on, when its reconfiguration does not commit within [`reconfigure_max`], when the
//! region commits nothing after it within [`COMMIT_AGAIN_MAX`], or when the victim's region is
//! not active again within [`ACTIVE_AGAIN_MAX`] after that or commits nothing after it within
//! [`COMMIT_AGAIN_MAX`]; so is a kill whose cluster could not be set up (counted apart: nothing
//! was killed). The exit code is 1 when either happened. A failed kill's node logs and CM
//! status are kept beside `--dir`.
//!
//! Expectation: a node is suspected when the lease the CM granted it runs out, between 4/5 of a
//! lease and a lease after the kill (renewals go every fifth of a lease), plus the CM's margin
//! for clock drift; the reconfiguration then takes a probe, a Raft install and the
//! acknowledgements, a few ms on one host. A dead CM leader is replaced through a Raft election
//! first, and the new leader gives every node a lease of grace before it can suspect one, so
//! that kill takes several leases. A region whose replicas exclude the victim needs no
//! reconfiguration to commit, but a client still coordinates under the configuration it last
//! learned from the CM status file: over tcp, members that adopted a newer one refuse it until
//! it follows (docs/failures.md#clients-and-the-configuration), which the longest stall shows.
//! The victim's region is active again one reconfiguration later: the promoted primary drains
//! its rings, asks the other replicas for their votes on the transactions in flight (none
//! undecided but the update in flight at the kill), reports the region recovered every 20 ms,
//! and the CM installs and commits a configuration without waiting out a lease, a few ms to a
//! few tens of ms after the removal. Its first update after that commits once the client has
//! learned the new configuration from the status file and its retry (`Db::run`) comes round.
//!
//! Measured here (release, leases of 500 ms, 20 kills each, f = 1; median and p99 in ms from
//! the kill): a backup-only node or a primary was suspected at 450-485 (p99 under 495) and the
//! configuration without it committed 5-15 ms later, on 3 and 5 nodes, shm and tcp; a killed
//! CM leader was removed at about 1,740 (p99 3,500): a Raft election of 1-2 s, then a lease of
//! grace from the new leader. The watched region's longest stall was 4-21 ms at the median
//! (p99 up to 210 over tcp) for a backup or primary kill, and about 525 with the leader, whose
//! replacement's first configuration waits for the dead leader's lease of grace.
//!
//! The victim's region, measured here with `acre bench failover --victim primary --kills 20
//! --lease-ms 500 --nodes N --transport T` on 3 and 5 nodes, shm and tcp (release, f = 1;
//! median/p99 in ms from the kill; in those runs the victim was suspected at 471-482, p99 up to
//! 603, the removal committed 7-9 ms later, and the unaffected region's longest stall was
//! 12-14, p99 up to 248): it was active again at 516-518 over shm and 503
//! over tcp (p99 530-631), 20-30 ms after the configuration without the victim (the promoted
//! primary's drain, and its report, sent every 20 ms; then a reconfiguration of about 6 ms).
//! One outlier of the 80: on 3 nodes over shm a CM leader change during the removal put both
//! the removal and the activation past 2,180. The region's first update committed 10-15 ms
//! after its activation over shm (the client's look at the status file every 10 ms, and a
//! retry's backoff), but at 607-609 over tcp (p99 758), in two groups, 605-615 and 755-760: an
//! attempt that was reaching the dead node when the configuration changed first ended its three
//! connects (pauses of 50 and 100 ms between them: 150 ms a round), and a post queued behind
//! another thread's round ran one of its own, so the first commit landed as the fourth or fifth
//! such round from the kill ended. The tcp transport now ends the attempts when the node moves
//! to another configuration; the figures since are in docs/failures.md#the-cm-in-node-processes,
//! with the transactions recovered.

use crate::launch::{self, DownArgs, UpArgs};
use acre::cluster::{self, CLUSTER_FILE, CM_STATUS_FILE, ClusterFile, CmStatusFile, SettledCounts};
use acre::db::{Addr, Db, NodeId, RECONFIGURATION_WAIT_MAX, RegionId};
use acre::engine::clock::Clock;
use acre::engine::signal::{self, Termination};
use acre::txn::config::Configuration;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where the clusters run unless told otherwise.
const DIR_DEFAULT: &str = "/dev/shm/acre-failover";
/// How often the waits look at the CM status file and the commit loop.
const POLL: Duration = Duration::from_millis(10);
/// The shortest wait for a reconfiguration; longer leases get [`RECONFIGURE_LEASES`] leases.
const RECONFIGURE_MIN: Duration = Duration::from_secs(30);
/// Leases a reconfiguration may take: a lease to suspect, the victim's lease waited out, and
/// room for a loaded machine and a new CM leader's election.
const RECONFIGURE_LEASES: u32 = 10;
/// After the configuration without the victim committed, how long the region may take to
/// commit an update that started after it.
const COMMIT_AGAIN_MAX: Duration = Duration::from_secs(10);
/// After the configuration without the victim committed, how long the CM may take to commit the
/// one that makes the victim's region active again (`recovery of r2`): the promoted primary's
/// drain and a round of votes, milliseconds on one host, then a reconfiguration without a lease
/// to wait out. The region then has [`COMMIT_AGAIN_MAX`] to commit an update started after it.
const ACTIVE_AGAIN_MAX: Duration = Duration::from_secs(10);
/// How long the commit loop may take to stop: an update in flight retries through a
/// reconfiguration for up to [`RECONFIGURATION_WAIT_MAX`].
const LOOP_STOP_MAX: Duration = RECONFIGURATION_WAIT_MAX.saturating_add(Duration::from_secs(5));
/// The commit loop's pause after an update failed, so a region that stays unavailable does not
/// turn the loop into a stream of errors.
const ERROR_PAUSE: Duration = Duration::from_millis(5);
/// Clusters started again because the backup-only node came up as CM leader (killing it would
/// measure a leader kill).
/// (With 3 nodes every node is a CM replica, and the last one started led in about half of the
/// clusters here.)
const LEADER_REROLL_MAX: usize = 6;
/// Kills in a row whose cluster could not be set up before the run gives up.
const SETUP_FAILURES_IN_A_ROW_MAX: usize = 2;
/// Failed kills per victim kind whose logs are kept (`keep_logs`).
const KEPT_LOGS_MAX: usize = 100;
/// After the kill's last wait, how long the nodes' settled counts may keep moving before they
/// are read as they are: the promoted primary settles what writes its region before it serves
/// it, but other participants settle their part of the same transactions on their own turn.
const SETTLED_WAIT_MAX: Duration = Duration::from_secs(2);
/// Readings of the settled counts in a row, [`POLL`] apart, that must agree before they count
/// as settled.
const SETTLED_QUIET_READINGS: usize = 3;
/// Failures tolerated per region in every cluster.
const F: usize = 1;

#[derive(clap::Args, Clone, Debug)]
pub struct FailoverArgs {
    /// Memory nodes of each cluster (at least 3: f = 1 and a CM of 3 replicas that outlives
    /// the kill).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// How the nodes reach each other (ofi: in an acre built with `--features ofi`).
    #[arg(long, default_value = "shm", value_parser = ["shm", "tcp", "ofi"])]
    transport: String,
    /// Which node each kill kills: `backup` (the last node, which holds backups only),
    /// `primary` (a primary that is not the CM leader) or `leader` (the CM leader); a comma
    /// list runs a series of kills for each.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "primary")]
    victim: Vec<Victim>,
    /// Kills per victim kind, each on a fresh cluster.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Length of the leases between the CM and the nodes, in milliseconds.
    #[arg(long, default_value_t = launch::LEASE_MS_DEFAULT)]
    lease_ms: u64,
    /// The cluster directory (created for each kill and removed after it).
    #[arg(long, default_value = DIR_DEFAULT)]
    dir: PathBuf,
    /// Also write every kill's times and what its recovery settled to this file, as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The node a kill kills.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Victim {
    Backup,
    Primary,
    Leader,
}

impl Victim {
    fn name(self) -> &'static str {
        match self {
            Victim::Backup => "backup",
            Victim::Primary => "primary",
            Victim::Leader => "leader",
        }
    }
}

impl fmt::Display for Victim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What one kill measured: milliseconds from the kill.
#[derive(Clone, Debug)]
struct Times {
    suspected_ms: f64,
    committed_ms: f64,
    commit_again_ms: f64,
    stall_ms: f64,
    /// When the longest stall began.
    stall_from_ms: f64,
    /// The reconfiguration's steps, in ms from its start (the suspicion), as the CM recorded
    /// them: probe answered, configuration installed in Raft, NEW-CONFIG acknowledged.
    probed_ms: Option<f64>,
    installed_ms: Option<f64>,
    acked_ms: Option<f64>,
    /// When a new CM leader took over, if one did after the victim was chosen (the CM
    /// leader's kill, or a change of leader on its own; negative before the kill).
    new_leader_ms: Option<f64>,
    /// The reconfiguration's cause in the status file (`failure of n2`).
    cause: String,
    from_id: u64,
    to_id: u64,
    /// Nodes the new configuration lacks besides the victim: false suspicions.
    also_removed: Vec<NodeId>,
    /// The victim's primary region recovered, when the victim was the primary of one.
    recovery: Option<RecoveryTimes>,
    /// The transactions the recovery the kill caused settled.
    recovered: Recovered,
}

/// What the nodes' workers settled because of a kill: their status areas' counts
/// (`SettledCounts`) after the kill's last wait, less those before the kill, summed over the
/// cluster's memory nodes. A transaction is counted by each node that settled its part (a
/// commit by each primary that installed it, an abort by each node that held its records); the
/// bench's updates write one object each, so each is counted once.
#[derive(Clone, Debug, Default)]
struct Recovered {
    /// Transactions needing recovery that were committed (installed by recovery).
    committed: u64,
    /// Transactions needing recovery that were aborted.
    aborted: u64,
    /// Regions recovered by their new primary.
    regions: u64,
    /// What makes the counts partial: nodes whose status area could not be read (the counts
    /// leave them out), counts that still moved when they were read.
    caveats: Vec<String>,
}

impl Recovered {
    /// What the cluster in `dir` settled since `before` (per node, read before the kill).
    fn since(
        dir: &Path,
        file: &ClusterFile,
        before: &BTreeMap<NodeId, SettledCounts>,
    ) -> Recovered {
        let (after, caveats) = settled_by_node(dir, file);
        let mut total = SettledCounts::default();
        for (node, counts) in &after {
            let earlier = before.get(node).copied().unwrap_or_default();
            total = total.plus(&counts.since(&earlier));
        }
        Recovered {
            committed: total.recovered_committed,
            aborted: total.recovered_aborted,
            regions: total.regions_recovered,
            caveats,
        }
    }

    /// `recovered 1 committed, 0 aborted, 1 region`, for a kill's line.
    fn describe(&self) -> String {
        let caveats = if self.caveats.is_empty() {
            String::new()
        } else {
            format!(" (partial: {})", self.caveats.join("; "))
        };
        format!(
            "recovered {} committed, {} aborted, {} {}{caveats}",
            self.committed,
            self.aborted,
            self.regions,
            if self.regions == 1 {
                "region"
            } else {
                "regions"
            }
        )
    }
}

/// Every memory node's settled counts from its status area's file, and the nodes that could
/// not be read, with why.
fn settled_by_node(
    dir: &Path,
    file: &ClusterFile,
) -> (BTreeMap<NodeId, SettledCounts>, Vec<String>) {
    let mut counts = BTreeMap::new();
    let mut unread = Vec::new();
    for &node in &file.config.nodes {
        match cluster::read_settled(dir, file, node) {
            Ok(settled) => {
                counts.insert(node, settled);
            }
            Err(why) => unread.push(format!("{node}: {why}")),
        }
    }
    (counts, unread)
}

/// Reads the nodes' settled counts until [`SETTLED_QUIET_READINGS`] readings in a row agree,
/// at most [`SETTLED_WAIT_MAX`], and returns what they settled since `before`.
fn recovered_once_quiet(
    dir: &Path,
    file: &ClusterFile,
    before: &BTreeMap<NodeId, SettledCounts>,
    termination: &Termination,
) -> Recovered {
    let mut last = None;
    let mut same = 0;
    let quiet = wait(termination, SETTLED_WAIT_MAX, || {
        let now = settled_by_node(dir, file).0;
        if last.as_ref() == Some(&now) {
            same += 1;
        } else {
            same = 1;
            last = Some(now);
        }
        same >= SETTLED_QUIET_READINGS
    });
    let mut recovered = Recovered::since(dir, file, before);
    if let Err(why) = quiet {
        recovered
            .caveats
            .push(format!("the counts still moved when read ({why})"));
    }
    recovered
}

/// How the victim's primary region came back: ms from the kill, as [`Times`].
#[derive(Clone, Debug)]
struct RecoveryTimes {
    /// When the configuration that made the region active again committed (its row's
    /// `started_ns` + `committed_ms`).
    active_ms: f64,
    /// When the CM started that reconfiguration: the promoted primary's report that it
    /// recovered the region reached it.
    started_ms: f64,
    /// When the first update of the region that started after the kill committed, of those
    /// that committed after the configuration without the victim did (which blocks the region
    /// until it is active again).
    recovered_commit_ms: f64,
    /// Updates of the region that committed between the kill and the configuration without the
    /// victim: over shm a dead primary's region and rings stay mapped, and one-sided commits go
    /// on reaching them (docs/failures.md#what-happens-today) until its rings fill or the
    /// removal is drained. They say nothing of the recovery, so they are counted apart.
    before_removal_commit_count: u64,
    /// The region's commit loop's longest time without a commit from the kill until an update
    /// that started after the region was active again, and when it began.
    recovered_stall_ms: f64,
    recovered_stall_from_ms: f64,
    /// That reconfiguration's cause (`recovery of r2`, `recovery of r2, r5`) and ids.
    cause: String,
    from_id: u64,
    to_id: u64,
}

/// One kill.
#[derive(Clone, Debug)]
struct Sample {
    victim: NodeId,
    /// What the victim was: `primary of r1`, `CM leader, primary of r2, backup of r1`.
    role: String,
    /// The region the commit loop updated.
    region: RegionId,
    /// Whether the victim was one of that region's replicas (a backup: the region stops
    /// committing until the victim is removed).
    region_had_victim: bool,
    /// The region the victim was the primary of (the first in the configuration), which a
    /// second commit loop updated throughout.
    recovering: Option<RegionId>,
    /// The times, or why the kill failed (no reconfiguration in time, no commit after it).
    outcome: Result<Times, String>,
}

/// The kills of one victim kind.
struct Series {
    victim: Victim,
    samples: Vec<Sample>,
    /// Kills whose cluster could not be set up (nothing was killed), with the reason.
    setup_failures: Vec<String>,
}

impl Series {
    fn failed_count(&self) -> usize {
        self.samples.iter().filter(|s| s.outcome.is_err()).count()
    }

    fn times(&self) -> impl Iterator<Item = &Times> {
        self.samples.iter().filter_map(|s| s.outcome.as_ref().ok())
    }
}

/// The longest a kill may take to be reconfigured away with leases of `lease_ms`.
pub(crate) fn reconfigure_max(lease_ms: u64) -> Duration {
    RECONFIGURE_MIN.max(Duration::from_millis(lease_ms).saturating_mul(RECONFIGURE_LEASES))
}

fn validate(args: &FailoverArgs) -> anyhow::Result<Vec<Victim>> {
    anyhow::ensure!(
        args.nodes >= 3,
        "--nodes {}: at least 3 (f = 1 and a CM of 3 replicas that outlives the kill)",
        args.nodes
    );
    anyhow::ensure!(
        args.nodes < cluster::CLIENT_ID_BASE,
        "--nodes must be below {}",
        cluster::CLIENT_ID_BASE
    );
    anyhow::ensure!(args.kills > 0, "--kills must be at least 1");
    crate::launch::check_lease_ms(args.lease_ms)?;
    let mut victims = Vec::new();
    for &victim in &args.victim {
        anyhow::ensure!(!victims.contains(&victim), "--victim names {victim} twice");
        victims.push(victim);
    }
    Ok(victims)
}

pub fn run(args: &FailoverArgs, termination: &Arc<Termination>) -> anyhow::Result<ExitCode> {
    let victims = validate(args)?;
    let dir = &args.dir;
    let existing = ClusterFile::read(&dir.join(CLUSTER_FILE)).ok();
    if !launch::running_nodes(dir, existing.as_ref()).is_empty() {
        anyhow::bail!(
            "a cluster is running in {}: stop it with `acre cluster down --dir {}`, or use another \
             --dir",
            dir.display(),
            dir.display()
        );
    }
    // The run owns the directory from here on (it makes and removes a cluster there for every
    // kill), so it refuses one that holds anything: a stopped cluster's data is not its to
    // remove.
    let holds_anything = std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
    if holds_anything {
        anyhow::bail!(
            "{} is not empty: the bench makes and removes its clusters there; remove a stopped \
             cluster's data with `acre cluster down --dir {} --purge`, or use another --dir",
            dir.display(),
            dir.display()
        );
    }
    let mut out = crate::output::stdout();
    writeln!(
        out,
        "failover bench: {} nodes over {}, f = {F}, leases of {} ms, {} {} of each of {}; \
         ms from the SIGKILL",
        args.nodes,
        args.transport,
        args.lease_ms,
        args.kills,
        if args.kills == 1 { "kill" } else { "kills" },
        victims
            .iter()
            .map(|v| v.name())
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    // Takes down whatever cluster is left in the directory however this function ends (each
    // kill takes its own down; this is for the ways out between).
    let _cleanup = Cleanup { dir: dir.clone() };
    let mut all = Vec::new();
    'series: for &victim in &victims {
        let mut series = Series {
            victim,
            samples: Vec::new(),
            setup_failures: Vec::new(),
        };
        let mut setup_failures_in_a_row = 0;
        for index in 0..args.kills {
            if termination.is_requested() {
                all.push(series);
                break 'series;
            }
            eprintln!(
                "failover: {victim} kill {} of {}: starting {} nodes over {} in {}",
                index + 1,
                args.kills,
                args.nodes,
                args.transport,
                dir.display()
            );
            match kill_once(args, victim, termination) {
                // An interrupted kill measured nothing: it is neither a sample nor a failure.
                Ok(sample) if sample.outcome.is_err() && termination.is_requested() => {
                    all.push(series);
                    break 'series;
                }
                Ok(sample) => {
                    setup_failures_in_a_row = 0;
                    writeln!(out, "{}", sample_line(args, victim, index, &sample))?;
                    series.samples.push(sample);
                }
                Err(error) => {
                    let reason = format!("{error:#}");
                    writeln!(
                        out,
                        "{victim} kill {}/{}: no cluster to kill a node of: {reason}",
                        index + 1,
                        args.kills
                    )?;
                    series.setup_failures.push(reason);
                    setup_failures_in_a_row += 1;
                    if setup_failures_in_a_row >= SETUP_FAILURES_IN_A_ROW_MAX {
                        return Err(error.context(format!(
                            "{setup_failures_in_a_row} clusters in a row could not be set up"
                        )));
                    }
                }
            }
        }
        all.push(series);
    }
    print_summary(&mut out, args, &all)?;
    if let Some(signal) = termination.requested() {
        writeln!(
            out,
            "interrupted by {}: the summary covers the kills measured before",
            signal::signal_name(signal)
        )?;
    }
    if let Some(json) = &args.json {
        write_json(json, args, &all).with_context(|| format!("write {}", json.display()))?;
        writeln!(out, "kills written to {}", json.display())?;
    }
    let failed = all
        .iter()
        .map(|s| s.failed_count() + s.setup_failures.len())
        .sum::<usize>();
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Takes down and removes the cluster in `dir` when dropped, if there is one: the run's end,
/// an error, or an interruption leave no node process behind.
pub(crate) struct Cleanup {
    pub(crate) dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        take_down(&self.dir);
    }
}

/// `acre cluster down --purge` on `dir` if it holds a cluster; errors are reported, not
/// returned (this runs on every way out).
pub(crate) fn take_down(dir: &Path) {
    if !dir.join(CLUSTER_FILE).exists() {
        return;
    }
    if let Err(error) = launch::down(&DownArgs {
        dir: dir.to_path_buf(),
        purge: true,
    }) {
        eprintln!(
            "failover: could not take down the cluster in {}: {error:#}",
            dir.display()
        );
    }
}

/// A started cluster, what the kill will hit, and the client.
struct Setup {
    before: CmStatusFile,
    victim: NodeId,
    role: String,
    region: RegionId,
    region_had_victim: bool,
    db: Db,
    object: Addr,
    /// The victim's first primary region, an object in it, and a client of its own to update
    /// it: the cluster's second client, so that the updates waiting through the region's
    /// recovery share nothing in this process (connections to the dead node, a coordinator's
    /// slots) with those of the unaffected region, whose figures stay comparable with a kill
    /// that has no second loop.
    recovering: Option<(RegionId, Addr, Db)>,
}

/// One kill on a fresh cluster, taken down after. `Err` when the cluster could not be set up
/// (nothing was killed); a kill that fails to be reconfigured is a [`Sample`] with an `Err`
/// outcome.
fn kill_once(
    args: &FailoverArgs,
    victim: Victim,
    termination: &Termination,
) -> anyhow::Result<Sample> {
    let setup = set_up(args, victim);
    let sample = setup.map(|setup| {
        let outcome =
            measure(args, &setup, termination).map_err(|why| match keep_logs(&args.dir, victim) {
                Ok(kept) => format!("{why} (logs kept in {})", kept.display()),
                Err(e) => format!("{why} (the logs could not be kept: {e})"),
            });
        Sample {
            victim: setup.victim,
            role: setup.role,
            region: setup.region,
            region_had_victim: setup.region_had_victim,
            recovering: setup.recovering.as_ref().map(|(region, ..)| *region),
            outcome,
        }
    });
    take_down(&args.dir);
    sample
}

/// Copies the nodes' logs and the CM status file of a failed kill out of `dir` (which is
/// removed next) into a directory beside it, `<dir>.failed-<victim>-<n>`, and returns it.
fn keep_logs(dir: &Path, victim: Victim) -> std::io::Result<PathBuf> {
    let mut attempt = 1;
    let kept = loop {
        let kept = PathBuf::from(format!("{}.failed-{victim}-{attempt}", dir.display()));
        match std::fs::create_dir(&kept) {
            Ok(()) => break kept,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < KEPT_LOGS_MAX => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".log") || name == CM_STATUS_FILE {
            std::fs::copy(&path, kept.join(name))?;
        }
    }
    Ok(kept)
}

/// Starts a cluster for a kill of `victim`, connects, creates an object in every region, and
/// chooses the victim and the region to commit on.
fn set_up(args: &FailoverArgs, victim: Victim) -> anyhow::Result<Setup> {
    let mut attempt = 0;
    let status = loop {
        attempt += 1;
        launch::up(&UpArgs {
            nodes: args.nodes,
            transport: args.transport.clone(),
            ofi_provider: None,
            ofi_transfer_threshold: None,
            dir: args.dir.clone(),
            clients: 2,
            f: Some(F),
            regions_per_node: 1,
            region_bytes: 8 << 20,
            block_bytes: 1 << 20,
            ring_bytes: 256 << 10,
            persist: "auto".into(),
            commit: "one-sided".into(),
            cm: None,
            cm_processes: 0,
            backup_only: u16::from(victim == Victim::Backup),
            lease_ms: args.lease_ms,
            clock_control: false,
            netns: None,
            netns_subnet: None,
        })
        .context("start the cluster")?;
        let status = CmStatusFile::read(&args.dir)?
            .context("the CM wrote no status file though `cluster up` saw one")?;
        let backup_only = NodeId(args.nodes);
        if victim == Victim::Backup && status.leader == backup_only && attempt < LEADER_REROLL_MAX {
            eprintln!(
                "failover: the backup-only node {backup_only} leads the CM; starting again so \
                 that its kill is not a leader kill"
            );
            take_down(&args.dir);
            continue;
        }
        break status;
    };
    let config = &status.committed;
    let node = match victim {
        Victim::Backup => NodeId(args.nodes),
        Victim::Leader => status.leader,
        Victim::Primary => config
            .regions
            .iter()
            .map(|p| p.primary)
            .find(|&p| p != status.leader)
            .context("every region's primary is the CM leader")?,
    };
    let region = unaffected_region(config, node)
        .with_context(|| format!("no active region whose primary is not {node}"))?;
    let region_had_victim = config
        .placement(region)
        .is_some_and(|p| p.replicas().any(|n| n == node));
    let recovering_region = config
        .regions
        .iter()
        .find(|p| p.primary == node && p.state.is_active())
        .map(|p| p.region);
    let db = Db::connect(&args.dir.join(CLUSTER_FILE)).context("connect a client")?;
    let recovering_db = match recovering_region {
        Some(_) => {
            Some(Db::connect(&args.dir.join(CLUSTER_FILE)).context("connect a second client")?)
        }
        None => None,
    };
    let mut object = None;
    let mut recovering = None;
    for placement in &config.regions {
        let addr = db
            .run(|txn| {
                let addr = txn.alloc_near(8, Addr::new(placement.region, 0))?;
                txn.write(addr, &0u64.to_le_bytes())?;
                Ok(addr)
            })
            .with_context(|| format!("create an object in {}", placement.region))?;
        if placement.region == region {
            object = Some(addr);
        }
        if Some(placement.region) == recovering_region {
            recovering = Some((placement.region, addr));
        }
    }
    let role = role_of(config, status.leader, node);
    Ok(Setup {
        role,
        before: status,
        victim: node,
        region,
        region_had_victim,
        db,
        object: object.context("the chosen region is in the configuration")?,
        recovering: recovering
            .zip(recovering_db)
            .map(|((region, addr), db)| (region, addr, db)),
    })
}

/// A region the kill of `victim` leaves its primary: one whose replicas exclude the victim if
/// there is one, else one the victim backs up.
fn unaffected_region(config: &Configuration, victim: NodeId) -> Option<RegionId> {
    let active = || config.regions.iter().filter(|p| p.state.is_active());
    active()
        .find(|p| p.replicas().all(|n| n != victim))
        .or_else(|| active().find(|p| p.primary != victim))
        .map(|p| p.region)
}

/// `CM leader, primary of r1, backup of r3`.
pub(crate) fn role_of(config: &Configuration, leader: NodeId, node: NodeId) -> String {
    let mut roles = Vec::new();
    if node == leader {
        roles.push("CM leader".to_string());
    }
    for placement in config.replicated_on(node) {
        let role = if placement.primary == node {
            "primary"
        } else {
            "backup"
        };
        roles.push(format!("{role} of {}", placement.region));
    }
    roles.join(", ")
}

/// Runs the commit loops, kills the victim, waits for the configuration without it and for the
/// region to commit after it (and, when the victim was a primary, for its region to be active
/// again and commit after that), and reads the times.
fn measure(args: &FailoverArgs, setup: &Setup, termination: &Termination) -> Result<Times, String> {
    let clock = Clock::system();
    let file = ClusterFile::read(&args.dir.join(CLUSTER_FILE))
        .map_err(|e| format!("read the cluster file: {e}"))?;
    // What the workers settled before the kill (nothing, on a fresh cluster), so that the
    // figures are the kill's alone.
    let (settled_before, _) = settled_by_node(&args.dir, &file);
    let commits = CommitLoop::start(setup.db.clone(), setup.object, clock.clone())
        .map_err(|e| format!("start the commit loop: {e}"))?;
    let recovering = match &setup.recovering {
        None => None,
        Some((region, object, db)) => {
            match CommitLoop::start(db.clone(), *object, clock.clone()) {
                Ok(commits) => Some(commits),
                Err(e) => {
                    // The first loop's outcome adds nothing to this reason; it is stopped so
                    // that it does not outlive the kill.
                    let _stopped = commits.stop();
                    return Err(format!("start the commit loop on {region}: {e}"));
                }
            }
        }
    };
    let result = kill_and_wait(
        args,
        setup,
        termination,
        &clock,
        &commits,
        recovering.as_ref(),
    );
    // Both loops are told first: an update of a region that never came back retries for up to
    // RECONFIGURATION_WAIT_MAX, and the other loop's stop need not wait behind it.
    commits.ask_to_stop();
    if let Some(recovering) = &recovering {
        recovering.ask_to_stop();
    }
    let stopped = commits.stop();
    let recovering_stopped = recovering.map(CommitLoop::stop).transpose();
    let Waited {
        status,
        kill_ns,
        committed_ns,
    } = result?;
    let progress = stopped?;
    let recovering_progress = recovering_stopped?;
    let recovered = recovered_once_quiet(&args.dir, &file, &settled_before, termination);
    let victim = setup.victim;
    let rows = status
        .history
        .iter()
        .filter(|row| row.failed.contains(&victim) || cause_names(&row.cause, victim));
    let suspected_ns = rows.map(|row| row.started_ns).min().unwrap_or(committed_ns);
    let row = committing_row(&status, victim).ok_or("the removing reconfiguration vanished")?;
    let Some(again_ns) = progress.again_done_ns else {
        return Err(format!(
            "{} committed nothing that started after the kill ({} commits, {})",
            setup.region,
            progress.commit_count,
            progress.errors()
        ));
    };
    let ms = |ns: u64| (ns as f64 - kill_ns as f64) / 1e6;
    let recovery = match (setup.recovering.as_ref(), recovering_progress) {
        (Some(&(region, ..)), Some(progress)) => {
            let row = recovery_row(&status, region, kill_ns)
                .ok_or_else(|| format!("the reconfiguration that made {region} active vanished"))?;
            let Some(again_ns) = progress.removed_done_ns else {
                return Err(format!(
                    "{region} (the victim's) committed nothing that started after the kill once \
                     the victim was removed ({} commits, {})",
                    progress.commit_count,
                    progress.errors()
                ));
            };
            Some(RecoveryTimes {
                active_ms: ms(committed_ns_of(row)),
                started_ms: ms(row.started_ns),
                recovered_commit_ms: ms(again_ns),
                recovered_stall_ms: progress.stall_ns as f64 / 1e6,
                recovered_stall_from_ms: ms(progress.stall_from_ns),
                before_removal_commit_count: progress.before_removal_commit_count,
                cause: row.cause.clone(),
                from_id: row.from_id,
                to_id: row.to_id.unwrap_or(status.committed.id),
            })
        }
        _ => None,
    };
    // Any leader change the status file did not show when the victim was chosen: the CM
    // leader's kill, or one that happened on its own (negative: before the kill, when the
    // victim may have been the leader after all).
    let known_ns = setup.before.history.iter().map(|row| row.started_ns).max();
    let new_leader_ms = status
        .history
        .iter()
        .filter(|row| row.cause == "new CM leader" && Some(row.started_ns) > known_ns)
        .map(|row| ms(row.started_ns))
        .next();
    Ok(Times {
        suspected_ms: ms(suspected_ns),
        committed_ms: ms(committed_ns),
        commit_again_ms: ms(again_ns),
        stall_ms: progress.stall_ns as f64 / 1e6,
        stall_from_ms: ms(progress.stall_from_ns),
        probed_ms: row.probed_ms,
        installed_ms: row.installed_ms,
        acked_ms: row.acked_ms,
        new_leader_ms,
        cause: row.cause.clone(),
        from_id: row.from_id,
        // A committed row has its `to_id` (set when Raft installed it); the fallback is for a
        // status file of an older CM.
        to_id: row.to_id.unwrap_or(status.committed.id),
        also_removed: setup
            .before
            .committed
            .nodes
            .iter()
            .copied()
            .filter(|&n| n != victim && !status.committed.nodes.contains(&n))
            .collect(),
        recovery,
        recovered,
    })
}

/// What [`kill_and_wait`] saw: the last status it read (it shows the removal, and the recovery
/// when there was one), the kill time and when the configuration without the victim committed
/// (on the CM's clock, in ns).
struct Waited {
    status: CmStatusFile,
    kill_ns: u64,
    committed_ns: u64,
}

/// Kills the victim and waits (bounded) for the configuration without it to commit, then for
/// an update that started after that to commit; when the victim was a primary, then for the
/// configuration that makes its region active again, and for an update of that region that
/// started after it to commit.
fn kill_and_wait(
    args: &FailoverArgs,
    setup: &Setup,
    termination: &Termination,
    clock: &Clock,
    commits: &CommitLoop,
    recovering: Option<&CommitLoop>,
) -> Result<Waited, String> {
    let victim = setup.victim;
    // Let the loops commit before the kill, so that their stalls are measured from a running
    // start.
    let warm = clock.now().as_nanos();
    wait(termination, COMMIT_AGAIN_MAX, || {
        commits.progress().last_start_ns > warm
            && recovering.is_none_or(|r| r.progress().last_start_ns > warm)
    })
    .map_err(|why| {
        let regions = match &setup.recovering {
            Some((region, ..)) => format!("{} and {region}", setup.region),
            None => setup.region.to_string(),
        };
        format!("{regions} did not commit before the kill: {why}")
    })?;
    // The time goes down just before the signal: fence_by_kill reads the manifest and checks
    // the process's start time first (tens of µs), then sends SIGKILL.
    let kill_ns = clock.now().as_nanos();
    commits.shared.kill_ns.store(kill_ns, Ordering::Release);
    if let Some(recovering) = recovering {
        recovering.shared.kill_ns.store(kill_ns, Ordering::Release);
    }
    match cluster::fence_by_kill(&args.dir, victim, launch::STOP_TIMEOUT) {
        Ok(cluster::Fenced::Killed { .. }) => {}
        Ok(cluster::Fenced::NotRunning) => return Err(format!("{victim} was not running")),
        Err(e) => return Err(format!("kill {victim}: {e}")),
    }
    eprintln!(
        "failover: killed {victim} ({}); waiting for the configuration without it",
        setup.role
    );
    let before_id = setup.before.committed.id;
    let mut seen = None;
    let removed = wait(termination, reconfigure_max(args.lease_ms), || {
        let Ok(Some(status)) = CmStatusFile::read(&args.dir) else {
            return false;
        };
        let done = status.committed.id > before_id
            && !status.committed.nodes.contains(&victim)
            && committing_row(&status, victim).is_some();
        seen = Some(status);
        done
    });
    if let Err(why) = removed {
        return Err(format!(
            "{victim} was not removed from the configuration: {why}; {}",
            last_seen(seen.as_ref())
        ));
    }
    let status = seen.expect("the wait succeeded on a status it saw");
    let row = committing_row(&status, victim).expect("the wait checked it");
    let committed_ns = committed_ns_of(row);
    commits
        .shared
        .removed_ns
        .store(committed_ns, Ordering::Release);
    if let Some(recovering) = recovering {
        recovering
            .shared
            .removed_ns
            .store(committed_ns, Ordering::Release);
    }
    wait(termination, COMMIT_AGAIN_MAX, || {
        commits.progress().last_start_ns >= committed_ns
    })
    .map_err(|why| {
        format!(
            "{} committed no update started after configuration {} committed: {why} ({})",
            setup.region,
            status.committed.id,
            commits.progress().errors()
        )
    })?;
    let (Some(&(region, ..)), Some(recovering)) = (setup.recovering.as_ref(), recovering) else {
        return Ok(Waited {
            status,
            kill_ns,
            committed_ns,
        });
    };
    let mut seen = None;
    let active = wait(termination, ACTIVE_AGAIN_MAX, || {
        let Ok(Some(status)) = CmStatusFile::read(&args.dir) else {
            return false;
        };
        let done = recovery_row(&status, region, kill_ns).is_some();
        seen = Some(status);
        done
    });
    if let Err(why) = active {
        let blocked = seen
            .as_ref()
            .and_then(|s| s.committed.placement(region))
            .map_or("absent", |p| p.state.name());
        return Err(format!(
            "{region} (the victim's) was not made active again: {why}; it is {blocked} in {}",
            last_seen(seen.as_ref())
        ));
    }
    let status = seen.expect("the wait succeeded on a status it saw");
    let active_ns = committed_ns_of(recovery_row(&status, region, kill_ns).expect("checked"));
    wait(termination, COMMIT_AGAIN_MAX, || {
        recovering.progress().last_start_ns >= active_ns
    })
    .map_err(|why| {
        format!(
            "{region} (the victim's) committed no update started after it was active again: \
             {why} ({})",
            recovering.progress().errors()
        )
    })?;
    Ok(Waited {
        status,
        kill_ns,
        committed_ns,
    })
}

/// `configuration 3 committed by n1, last reconfiguration: failure of n2 (in progress)`, from
/// the last status file a wait read.
fn last_seen(seen: Option<&CmStatusFile>) -> String {
    seen.map_or("no status file".to_string(), |s| {
        format!(
            "configuration {} committed by {}, last reconfiguration: {}",
            s.committed.id,
            s.leader,
            s.history.last().map_or("none".to_string(), |r| format!(
                "{} ({})",
                r.cause, r.outcome
            ))
        )
    })
}

/// When a committed reconfiguration's row says it committed, on the CM's clock in ns.
pub(crate) fn committed_ns_of(row: &cluster::ReconfigurationRow) -> u64 {
    let committed_ms = row.committed_ms.expect("a committed row");
    row.started_ns + (committed_ms * 1e6).round() as u64
}

/// The committed reconfiguration, started after the kill at `kill_ns`, that made `region`
/// active again (`recovery of r2, r5`), if the status file shows one.
fn recovery_row(
    status: &CmStatusFile,
    region: RegionId,
    kill_ns: u64,
) -> Option<&cluster::ReconfigurationRow> {
    status.history.iter().find(|row| {
        row.started_ns >= kill_ns
            && row.committed_ms.is_some()
            && cause_recovers(&row.cause, region)
    })
}

/// Whether a reconfiguration's cause (`recovery of r2, r5`) names `region`.
fn cause_recovers(cause: &str, region: RegionId) -> bool {
    let region = region.to_string();
    cause
        .strip_prefix("recovery of ")
        .is_some_and(|regions| regions.split(", ").any(|r| r == region))
}

/// The committed reconfiguration that removed `victim`, if the status file shows one.
fn committing_row(status: &CmStatusFile, victim: NodeId) -> Option<&cluster::ReconfigurationRow> {
    status
        .history
        .iter()
        .find(|row| row.failed.contains(&victim) && row.committed_ms.is_some())
}

/// Whether a reconfiguration's cause (`failure of n2, n3`) names `node`.
pub(crate) fn cause_names(cause: &str, node: NodeId) -> bool {
    let node = node.to_string();
    cause
        .strip_prefix("failure of ")
        .is_some_and(|suspects| suspects.split(", ").any(|s| s == node))
}

/// Sleeps in steps of [`POLL`] until `done` holds, at most `timeout`; `Err` says why it
/// stopped waiting.
fn wait(
    termination: &Termination,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("not within {timeout:?}"));
        }
        if termination.sleep(POLL) {
            return Err("interrupted".into());
        }
    }
}

/// What the commit loop saw, on the CM's clock.
#[derive(Clone, Debug, Default)]
struct Progress {
    commit_count: u64,
    error_count: u64,
    first_error: Option<String>,
    /// When the last update that committed started.
    last_start_ns: u64,
    /// When the last update committed.
    last_done_ns: u64,
    /// When the first update that started after the kill committed.
    again_done_ns: Option<u64>,
    /// When the first update that started after the kill committed after the configuration
    /// without the victim did (once [`Shared::removed_ns`] is set).
    removed_done_ns: Option<u64>,
    /// Updates that committed after the kill and before the configuration without the victim
    /// was seen committed: over shm, one-sided commits that reach a dead primary's memory.
    before_removal_commit_count: u64,
    /// The longest time without a commit since the kill, and when it began.
    stall_ns: u64,
    stall_from_ns: u64,
}

impl Progress {
    /// `3 errors, first: ...`, for a failed kill's reason.
    fn errors(&self) -> String {
        format!(
            "{} errors{}",
            self.error_count,
            self.first_error
                .as_ref()
                .map_or(String::new(), |e| format!(", first: {e}"))
        )
    }

    /// Counts an update that started at `start_ns` and committed at `done_ns`, given the kill
    /// and removal times the loop knew then (0: not yet).
    fn committed(&mut self, start_ns: u64, done_ns: u64, kill_ns: u64, removed_ns: u64) {
        if kill_ns != 0 && done_ns > kill_ns {
            if removed_ns == 0 || done_ns < removed_ns {
                self.before_removal_commit_count += 1;
            } else if start_ns >= kill_ns && self.removed_done_ns.is_none() {
                self.removed_done_ns = Some(done_ns);
            }
            let since = self.last_done_ns.max(kill_ns);
            if done_ns - since > self.stall_ns {
                self.stall_ns = done_ns - since;
                self.stall_from_ns = since;
            }
            if start_ns >= kill_ns && self.again_done_ns.is_none() {
                self.again_done_ns = Some(done_ns);
            }
        }
        self.commit_count += 1;
        self.last_start_ns = start_ns;
        self.last_done_ns = done_ns;
    }
}

struct Shared {
    stop: AtomicBool,
    /// The kill time, 0 until the kill.
    kill_ns: AtomicU64,
    /// When the configuration without the victim committed, 0 until the bench saw it (a poll
    /// later: a commit in between counts as before the removal, which only happens where the
    /// removal does not block the region, or while a client has not learned it).
    removed_ns: AtomicU64,
    progress: Mutex<Progress>,
}

/// A thread that commits updates to one object as fast as it can (busy by design: the region's
/// first commit after the kill is what it measures).
struct CommitLoop {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
    /// The region it updates, for its errors.
    region: RegionId,
}

impl CommitLoop {
    fn start(db: Db, object: Addr, clock: Clock) -> std::io::Result<CommitLoop> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            kill_ns: AtomicU64::new(0),
            removed_ns: AtomicU64::new(0),
            progress: Mutex::new(Progress::default()),
        });
        let looped = shared.clone();
        let thread = std::thread::Builder::new()
            .name("failover-commits".into())
            .spawn(move || {
                let mut value = 0u64;
                while !looped.stop.load(Ordering::Acquire) {
                    value += 1;
                    let start_ns = clock.now().as_nanos();
                    let result = db.run(|txn| {
                        txn.write(object, &value.to_le_bytes())?;
                        Ok(())
                    });
                    let done_ns = clock.now().as_nanos();
                    let kill_ns = looped.kill_ns.load(Ordering::Acquire);
                    let removed_ns = looped.removed_ns.load(Ordering::Acquire);
                    let mut progress = looped
                        .progress
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    match result {
                        Ok(()) => progress.committed(start_ns, done_ns, kill_ns, removed_ns),
                        Err(error) => {
                            progress.error_count += 1;
                            progress.first_error.get_or_insert(error.to_string());
                            drop(progress);
                            std::thread::sleep(ERROR_PAUSE);
                        }
                    }
                }
            })?;
        Ok(CommitLoop {
            shared,
            thread,
            region: object.region(),
        })
    }

    /// Tells the loop to stop after its update in flight, without waiting for it ([`stop`]
    /// waits).
    ///
    /// [`stop`]: CommitLoop::stop
    fn ask_to_stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    fn progress(&self) -> Progress {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Stops the loop and returns what it saw; `Err` if it does not stop within
    /// [`LOOP_STOP_MAX`] (it is left to end on its own, with its clone of the `Db`).
    fn stop(self) -> Result<Progress, String> {
        let CommitLoop {
            shared,
            thread,
            region,
        } = self;
        shared.stop.store(true, Ordering::Release);
        let deadline = std::time::Instant::now() + LOOP_STOP_MAX;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "the commit loop's update of {region} did not finish within {LOOP_STOP_MAX:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
        if thread.join().is_err() {
            return Err(format!("the commit loop on {region} panicked"));
        }
        let progress = shared
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Ok(progress)
    }
}

/// `primary kill 2/5: n2 (primary of r2, backup of r1), suspected +245.6 ms, committed +252.3 ms
/// (failure of n2: 2 -> 3; probed/installed/acked +0.4/5.6/6.1 ms after the suspicion), r3
/// commits again +0.1 ms (longest stall 2.1 ms from +250.2 ms); r2 (the victim's) active again
/// +270.4 ms (recovery of r2: 3 -> 4, started +264.1 ms), region commits again +280.9 ms (region
/// stall 250.0 ms from +30.9 ms; 757 commits between the kill and the removal)`.
fn sample_line(args: &FailoverArgs, victim: Victim, index: usize, sample: &Sample) -> String {
    let head = format!(
        "{victim} kill {}/{}: {} ({})",
        index + 1,
        args.kills,
        sample.victim,
        sample.role
    );
    let region = format!(
        "{}{}",
        sample.region,
        if sample.region_had_victim {
            format!(" (backed up by {})", sample.victim)
        } else {
            String::new()
        }
    );
    match &sample.outcome {
        Ok(t) => {
            let leader = t
                .new_leader_ms
                .map_or(String::new(), |ms| format!(", new CM leader {ms:+.1} ms"));
            let false_suspicions = if t.also_removed.is_empty() {
                String::new()
            } else {
                format!(
                    "; ALSO REMOVED {}",
                    t.also_removed
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let step = |ms: Option<f64>| ms.map_or("?".to_string(), |ms| format!("{ms:.1}"));
            let recovery = match (&t.recovery, sample.recovering) {
                (Some(r), Some(recovering)) => format!(
                    "; {recovering} (the victim's) active again +{:.1} ms ({}: {} -> {}, started \
                     +{:.1} ms), region \
                     commits again +{:.1} ms (region stall {:.1} ms from +{:.1} ms{})",
                    r.active_ms,
                    r.cause,
                    r.from_id,
                    r.to_id,
                    r.started_ms,
                    r.recovered_commit_ms,
                    r.recovered_stall_ms,
                    r.recovered_stall_from_ms,
                    if r.before_removal_commit_count == 0 {
                        String::new()
                    } else {
                        format!(
                            "; {} commits between the kill and the removal",
                            r.before_removal_commit_count
                        )
                    }
                ),
                _ => String::new(),
            };
            format!(
                "{head}{leader}, suspected +{:.1} ms, committed +{:.1} ms ({}: {} -> {}; \
                 probed/installed/acked +{}/{}/{} ms after the suspicion), {region} commits again \
                 +{:.1} ms (longest stall {:.1} ms from +{:.1} ms){recovery}; {}{false_suspicions}",
                t.suspected_ms,
                t.committed_ms,
                t.cause,
                t.from_id,
                t.to_id,
                step(t.probed_ms),
                step(t.installed_ms),
                step(t.acked_ms),
                t.commit_again_ms,
                t.stall_ms,
                t.stall_from_ms,
                t.recovered.describe()
            )
        }
        Err(why) => {
            let recovering = sample
                .recovering
                .map_or(String::new(), |r| format!(" and {r}, the victim's"));
            format!("{head}: FAILED: {why} (committing on {region}{recovering})")
        }
    }
}

/// The `q` quantile of sorted values by the nearest rank (as `acre_benches::log::percentile`).
fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "a quantile of no values");
    let rank = ((sorted.len() as f64 * q).ceil() as usize).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

/// `median/p99/max` of `values`, or `-` when there are none.
fn spread(values: impl Iterator<Item = f64>) -> String {
    let mut values: Vec<f64> = values.collect();
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "{:.1}/{:.1}/{:.1}",
        nearest_rank(&values, 0.5),
        nearest_rank(&values, 0.99),
        nearest_rank(&values, 1.0)
    )
}

/// `median/p99/max (total)` of counts, or `-` when there are none.
fn count_spread(values: impl Iterator<Item = u64>) -> String {
    let mut values: Vec<f64> = values.map(|v| v as f64).collect();
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    format!(
        "{:.0}/{:.0}/{:.0} ({:.0})",
        nearest_rank(&values, 0.5),
        nearest_rank(&values, 0.99),
        nearest_rank(&values, 1.0),
        values.iter().sum::<f64>()
    )
}

/// The header of the summary, which tests look for.
const SUMMARY_HEADER: &str = "failover summary, ms from the kill (median/p99/max):";
/// The header of the summary of the victims' primary regions, which tests look for.
const RECOVERY_HEADER: &str =
    "the victim's primary region, recovered: ms from the kill (median/p99/max):";
/// The header of the summary of what recovery settled, which tests look for.
const RECOVERED_HEADER: &str =
    "transactions recovered per kill, summed over the nodes (median/p99/max (total)):";

fn print_summary(
    out: &mut crate::output::Stdout,
    args: &FailoverArgs,
    all: &[Series],
) -> std::io::Result<()> {
    writeln!(out, "{SUMMARY_HEADER}")?;
    writeln!(
        out,
        "{:<6} {:<9} {:<8} {:>8} {:>5} {:>6}  {:<22} {:<22} {:<22} {:<22}",
        "nodes",
        "transport",
        "victim",
        "lease ms",
        "kills",
        "failed",
        "suspected",
        "committed",
        "commits again",
        "longest stall"
    )?;
    for series in all {
        writeln!(
            out,
            "{:<6} {:<9} {:<8} {:>8} {:>5} {:>6}  {:<22} {:<22} {:<22} {:<22}",
            args.nodes,
            args.transport,
            series.victim.name(),
            args.lease_ms,
            series.samples.len(),
            series.failed_count(),
            spread(series.times().map(|t| t.suspected_ms)),
            spread(series.times().map(|t| t.committed_ms)),
            spread(series.times().map(|t| t.commit_again_ms)),
            spread(series.times().map(|t| t.stall_ms)),
        )?;
    }
    // The victim's primary region, in a table of its own: only kills of a primary have one,
    // and the first table keeps its columns for every victim.
    let recovering = |series: &&Series| series.samples.iter().any(|s| s.recovering.is_some());
    if all.iter().any(|series| recovering(&series)) {
        writeln!(out, "{RECOVERY_HEADER}")?;
        writeln!(
            out,
            "{:<6} {:<9} {:<8} {:>8} {:>9}  {:<22} {:<22} {:<22}",
            "nodes",
            "transport",
            "victim",
            "lease ms",
            "recovered",
            "active again",
            "region commits again",
            "region stall"
        )?;
        for series in all.iter().filter(recovering) {
            let recoveries = || series.times().filter_map(|t| t.recovery.as_ref());
            writeln!(
                out,
                "{:<6} {:<9} {:<8} {:>8} {:>9}  {:<22} {:<22} {:<22}",
                args.nodes,
                args.transport,
                series.victim.name(),
                args.lease_ms,
                recoveries().count(),
                spread(recoveries().map(|r| r.active_ms)),
                spread(recoveries().map(|r| r.recovered_commit_ms)),
                spread(recoveries().map(|r| r.recovered_stall_ms)),
            )?;
        }
    }
    writeln!(out, "{RECOVERED_HEADER}")?;
    writeln!(
        out,
        "{:<6} {:<9} {:<8} {:>8} {:>5}  {:<18} {:<18} {:<18}",
        "nodes", "transport", "victim", "lease ms", "kills", "committed", "aborted", "regions"
    )?;
    for series in all {
        let recovered = || series.times().map(|t| &t.recovered);
        writeln!(
            out,
            "{:<6} {:<9} {:<8} {:>8} {:>5}  {:<18} {:<18} {:<18}",
            args.nodes,
            args.transport,
            series.victim.name(),
            args.lease_ms,
            recovered().count(),
            count_spread(recovered().map(|r| r.committed)),
            count_spread(recovered().map(|r| r.aborted)),
            count_spread(recovered().map(|r| r.regions)),
        )?;
    }
    let partial = all
        .iter()
        .flat_map(Series::times)
        .filter(|t| !t.recovered.caveats.is_empty())
        .count();
    if partial > 0 {
        writeln!(
            out,
            "{partial} kill(s) whose recovered counts are partial: a status area that could not \
             be read, or counts still moving (see the kills above)"
        )?;
    }
    let unset: usize = all.iter().map(|s| s.setup_failures.len()).sum();
    if unset > 0 {
        writeln!(
            out,
            "{unset} cluster(s) could not be set up for a kill (see above): nothing was killed, \
             and they count in no column"
        )?;
    }
    let false_suspicions: usize = all
        .iter()
        .flat_map(Series::times)
        .map(|t| t.also_removed.len())
        .sum();
    if false_suspicions > 0 {
        writeln!(
            out,
            "{false_suspicions} node(s) removed besides the victims: false suspicions (see the \
             kills above)"
        )?;
    }
    Ok(())
}

/// A JSON string literal.
pub(crate) fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if u32::from(c) < 0x20 => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

pub(crate) fn json_number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.3}")
    } else {
        "null".into()
    }
}

/// Every kill's times as JSON (written by hand: the command line has no JSON encoder of its
/// own, and these are a few numbers and strings).
fn json_of(args: &FailoverArgs, all: &[Series]) -> String {
    let mut series_json = Vec::new();
    for series in all {
        let mut samples = Vec::new();
        for sample in &series.samples {
            let head = format!(
                "\"victim\": {}, \"role\": {}, \"region\": {}, \"region_had_victim\": {}, \
                 \"recovering_region\": {}",
                json_string(&sample.victim.to_string()),
                json_string(&sample.role),
                json_string(&sample.region.to_string()),
                sample.region_had_victim,
                sample
                    .recovering
                    .map_or("null".into(), |r| json_string(&r.to_string()))
            );
            samples.push(match &sample.outcome {
                Ok(t) => format!(
                    "{{{head}, \"suspected_ms\": {}, \"committed_ms\": {}, \"commit_again_ms\": \
                     {}, \"stall_ms\": {}, \"stall_from_ms\": {}, \"probed_ms\": {}, \
                     \"installed_ms\": {}, \"acked_ms\": {}, \"new_leader_ms\": {}, \"cause\": {}, \
                     \"from_id\": {}, \"to_id\": {}, \"also_removed\": [{}], \"recovery\": {}, \
                     \"recovered\": {}}}",
                    json_number(t.suspected_ms),
                    json_number(t.committed_ms),
                    json_number(t.commit_again_ms),
                    json_number(t.stall_ms),
                    json_number(t.stall_from_ms),
                    t.probed_ms.map_or("null".into(), json_number),
                    t.installed_ms.map_or("null".into(), json_number),
                    t.acked_ms.map_or("null".into(), json_number),
                    t.new_leader_ms.map_or("null".into(), json_number),
                    json_string(&t.cause),
                    t.from_id,
                    t.to_id,
                    t.also_removed
                        .iter()
                        .map(|n| json_string(&n.to_string()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    t.recovery.as_ref().map_or("null".into(), |r| format!(
                        "{{\"active_ms\": {}, \"started_ms\": {}, \"recovered_commit_ms\": {}, \
                         \"recovered_stall_ms\": {}, \"recovered_stall_from_ms\": {}, \
                         \"before_removal_commit_count\": {}, \"cause\": {}, \"from_id\": {}, \
                         \"to_id\": {}}}",
                        json_number(r.active_ms),
                        json_number(r.started_ms),
                        json_number(r.recovered_commit_ms),
                        json_number(r.recovered_stall_ms),
                        json_number(r.recovered_stall_from_ms),
                        r.before_removal_commit_count,
                        json_string(&r.cause),
                        r.from_id,
                        r.to_id
                    )),
                    recovered_json(&t.recovered)
                ),
                Err(why) => format!("{{{head}, \"failure\": {}}}", json_string(why)),
            });
        }
        let setup_failures: Vec<String> = series
            .setup_failures
            .iter()
            .map(|why| json_string(why))
            .collect();
        let total = series
            .times()
            .map(|t| &t.recovered)
            .fold(Recovered::default(), |total, r| Recovered {
                committed: total.committed + r.committed,
                aborted: total.aborted + r.aborted,
                regions: total.regions + r.regions,
                caveats: Vec::new(),
            });
        series_json.push(format!(
            "    {{\"victim\": {}, \"kills\": [\n      {}\n    ], \"setup_failures\": [{}], \
             \"recovered_total\": {}}}",
            json_string(series.victim.name()),
            samples.join(",\n      "),
            setup_failures.join(", "),
            recovered_json(&total)
        ));
    }
    format!(
        "{{\n  \"nodes\": {}, \"transport\": {}, \"f\": {F}, \"lease_ms\": {},\n  \"series\": [\n{}\n  ]\n}}\n",
        args.nodes,
        json_string(&args.transport),
        args.lease_ms,
        series_json.join(",\n")
    )
}

/// `{"committed": 1, "aborted": 0, "regions": 1, "caveats": []}`.
fn recovered_json(recovered: &Recovered) -> String {
    format!(
        "{{\"committed\": {}, \"aborted\": {}, \"regions\": {}, \"caveats\": [{}]}}",
        recovered.committed,
        recovered.aborted,
        recovered.regions,
        recovered
            .caveats
            .iter()
            .map(|why| json_string(why))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn write_json(path: &Path, args: &FailoverArgs, all: &[Series]) -> std::io::Result<()> {
    std::fs::write(path, json_of(args, all))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stall_and_the_first_commit_again_count_from_the_kill() {
        let mut progress = Progress::default();
        progress.committed(10, 20, 0, 0);
        progress.committed(20, 30, 0, 0);
        assert_eq!((progress.stall_ns, progress.again_done_ns), (0, None));
        // Started before the kill at 35, done after: part of the stall, not a commit again.
        progress.committed(30, 40, 35, 0);
        assert_eq!((progress.stall_ns, progress.again_done_ns), (5, None));
        progress.committed(40, 140, 35, 0);
        assert_eq!(
            (progress.stall_ns, progress.again_done_ns),
            (100, Some(140))
        );
        assert_eq!(progress.stall_from_ns, 40);
        progress.committed(140, 150, 35, 0);
        assert_eq!(
            (progress.stall_ns, progress.again_done_ns),
            (100, Some(140))
        );
        assert_eq!(progress.commit_count, 5);
        assert_eq!(progress.removed_done_ns, None);
    }

    #[test]
    fn a_region_commits_again_only_after_the_removal() {
        let mut progress = Progress::default();
        progress.committed(10, 20, 0, 0);
        // Over shm, commits reaching the dead primary after the kill at 25, before the removal.
        progress.committed(30, 40, 25, 0);
        progress.committed(40, 50, 25, 0);
        // The removal committed at 60 and blocks the region until it is active at 400: an
        // update waits through it.
        progress.committed(50, 410, 25, 60);
        progress.committed(410, 420, 25, 60);
        assert_eq!(progress.before_removal_commit_count, 2);
        assert_eq!(progress.again_done_ns, Some(40));
        assert_eq!(progress.removed_done_ns, Some(410));
        assert_eq!((progress.stall_ns, progress.stall_from_ns), (360, 50));
    }

    #[test]
    fn causes_name_their_suspects_exactly() {
        assert!(cause_names("failure of n2", NodeId(2)));
        assert!(cause_names("failure of n1, n3", NodeId(3)));
        assert!(!cause_names("failure of n30", NodeId(3)));
        assert!(!cause_names("new CM leader", NodeId(1)));
        assert!(!cause_names("recovery of r1", NodeId(1)));
    }

    #[test]
    fn recovery_causes_name_their_regions_exactly() {
        assert!(cause_recovers("recovery of r2", RegionId(2)));
        assert!(cause_recovers("recovery of r2, r5", RegionId(5)));
        assert!(!cause_recovers("recovery of r25", RegionId(2)));
        assert!(!cause_recovers("failure of n2", RegionId(2)));
    }

    #[test]
    fn spreads_are_nearest_ranks() {
        assert_eq!(spread([3.0, 1.0, 2.0].into_iter()), "2.0/3.0/3.0");
        assert_eq!(spread(std::iter::empty()), "-");
    }

    #[test]
    fn count_spreads_are_nearest_ranks_with_their_total() {
        assert_eq!(count_spread([1, 0, 1, 3].into_iter()), "1/3/3 (5)");
        assert_eq!(count_spread(std::iter::empty()), "-");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
