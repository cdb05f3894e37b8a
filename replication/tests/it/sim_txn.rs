//! The seeded in-process simulation of failures with transactions (issue 14): Elle's
//! list-append workload ([`crate::list_append`]) and bank transfers with audits run from
//! coordinator threads on every node of an embedded cluster while, at seeded moments, a seeded
//! victim crashes and the test, playing the configuration manager's reconfiguration driver over
//! a real Raft group of CM replicas whose leader crashes too, reconfigures around it. After
//! every run the history must be strictly serializable, every acknowledged commit must be in
//! the final reads (and no aborted one), the bank's total must hold, and once quiet every
//! region's replicas must be identical word for word.
//!
//! The cluster: four memory nodes, primaries on n1..n3 only (one region each), so n4 holds
//! backups only, f = 1 or 2 as the seed picks, and a client-only node, n100. A victim is a
//! primary, the backup-only holder, or the client node (a coordinator and nothing else); every
//! memory node coordinates too, so a memory node's crash is also a coordinator's. A crash is
//! [`EmbeddedCluster::fence_member`] (or [`EmbeddedCluster::kill`] for the client): the fault
//! plan isolates the node, so nothing it still posts reaches anyone, and it stops.
//!
//! A dead client is settled by the memory nodes through its liveness
//! (docs/failures.md#a-client-that-dies); the CM does not watch clients (they hold no lease),
//! so neither does the test-CM, and the client's id stays in the configuration. After a memory
//! node's crash the test-CM does what the CM's manager does (docs/failures.md#reconfiguration):
//! it plans the next configuration with [`acre_cm::remap::after_failure`] (promoted backups,
//! blocked regions, new copying backups), commits it through the CM's Raft group
//! ([`crate::sim_cm`]: three in-process `acre_cm` replicas) by compare-and-set on the
//! configuration id, installs it on the nodes, and does the same with what
//! [`acre_cm::remap::after_recovery`] plans from each node's report of recovered regions and
//! completed copies until every region is active and no backup is copying. Then a second
//! crash, if the seed asks for one, and the workload goes on until the cluster has served
//! again.
//!
//! A CM crash, in one reconfiguration in [`CM_CRASH_ONE_IN`], crashes the group's leader at
//! one of the reconfiguration's first proposals: before it, after it but before it is sent,
//! inside the sync that makes it durable, after it is sent but before it commits, or after it
//! commits but before the nodes have it. The replica loses its volatile state and restarts
//! from its Raft storage some ticks later, or stays down until the cluster is whole. The test-CM
//! that ran at the crashed leader is gone with what it knew: the new leader's test-CM starts
//! from the configuration the group committed (installed again naming it as CM, as a new
//! leader does), finishes distributing it, and plans the rest from it. Only configurations
//! the group committed reach the nodes, and a configuration the nodes hold is the one the
//! group committed with that id.
//!
//! A commit that reports `Indeterminate` is decided by the final reads: all of its appends are
//! there (it committed: it joins the history, its end time unknown, so set to the final read's
//! start) or none is (it aborted); some of them only fails the test. The bank explains its
//! final balances by the acknowledged transfers and some subset of those in doubt.
//!
//! What is real and what is simulated:
//! - Real: the CM's Raft group and its state machine (`acre_cm::CmReplica` over
//!   `acre_cm::CmStorage` in files, elections, log replication, compare-and-set installs,
//!   snapshots, restarts from the files), the planning ([`acre_cm::remap`]), and the nodes'
//!   side of a reconfiguration (adopt, drain, recover, copy, report).
//! - Simulated: the network between the CM replicas ([`crate::sim_cm`] carries their messages
//!   with a delay of a few ticks and loses only what a crashed replica sends or should
//!   receive), and their clock (ticks of [`crate::sim_cm::TICK`], run only while the test-CM
//!   works, so the group is idle between reconfigurations). The CM replicas are standalone
//!   (n201..n203): a node's crash is never a CM replica's.
//! - Played by the test, not run: the CM's manager (`acre_cm::manager`) and driver. The
//!   test-CM learns of a crash from the schedule, not from a lease (embedded nodes hold no
//!   leases, no CM grants them, so none lapses; the CM acts after a seeded delay instead), does
//!   not probe, and runs one reconfiguration at a time; the next leader's test-CM learns the
//!   victim again from the schedule, as the manager would from the leases.
//! - NEW-CONFIG and NEW-CONFIG-COMMIT reach every node at once ([`EmbeddedCluster::reconfigure`]),
//!   not one by one as the CM's driver sends them, and never from a CM that is not the
//!   leader: the crashed leader's test-CM does nothing after its crash.
//! - The seed fixes the schedule (which victims, when, how long the CM waits, where its leader
//!   crashes and when it restarts), the commit mode and f, the CM group's election order and
//!   message delays, and each thread's transactions; not how threads interleave, nor when
//!   nodes report their recoveries (the number of proposals of a reconfiguration varies with
//!   it), so a pinned seed replays the schedule and the choices, not the history.
//!
//! `ACRE_TEST_SEED=<seed>` runs that one seed; [`SEED_COUNT_ENV`] raises the number of seeds a
//! run tries (a soak). `ACRE_TEST_COMMIT` pins the commit mode, as for every test here.

use crate::fixture::{self, BLOCK_BYTES, REGION_BYTES, RING_BYTES, create};
use crate::list_append::{
    self, Failure, Followed, KEY_COUNT, Planned, VALUES_PER_THREAD, attempt, check_allocators,
    create_keys, follow, nanos_since, random_plan,
};
use crate::sim_cm::{CmGroupSim, CrashPoint, Install};
use acre_cm::remap::{Copied, after_failure, after_recovery};
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::object::LOCK_BIT;
use acre_jepsen::check::elle::{self, History, MicroOp, TxnRecord};
use acre_nvm_log::random::{SEED_ENV, SplitMix, pinned_seed};
use acre_replication::EmbeddedCluster;
use acre_txn::config::CommitMode;
use acre_txn::record::TxnId;
use acre_txn::{CommitError, Configuration, Error, RegionState, TxnError, TxnNode};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seeds each test tries per run: a few, so the file stays well under a minute and a half in a
/// debug build on two busy cores.
const SEED_COUNT_DEFAULT: u64 = 5;
/// Set to run more seeds (a soak), e.g. `ACRE_SIM_TXN_SEEDS=50`.
const SEED_COUNT_ENV: &str = "ACRE_SIM_TXN_SEEDS";

const MEMORY_NODE_COUNT: u16 = 4;
/// n1..n3 hold a primary each; n4 holds backups only.
const PRIMARY_COUNT: usize = 3;
/// The client-only node: a coordinator and nothing else.
const CLIENT: NodeId = NodeId(100);
/// Coordinator threads; each runs every transaction on a live node it picks at random.
const THREAD_COUNT: u64 = 4;
/// When the first crash comes, after the workload starts (and the second after the cluster
/// recovered from the first): early enough that most of the run is spent around failures.
const CRASH_AFTER_MS_MIN: u64 = 150;
const CRASH_AFTER_MS_MAX: u64 = 700;
/// How long the test-CM takes to act on a crash (to notice it).
const CM_DELAY_MS_MAX: u64 = 150;
/// One reconfiguration in this many has its CM leader crash.
const CM_CRASH_ONE_IN: u64 = 2;
/// A CM crash comes at one of the first this many proposals of a reconfiguration (every
/// reconfiguration here makes at least two: the configuration without the victim, then one
/// that activates its regions or completes a copy).
const CM_CRASH_INSTALL_INDEX_MAX: u64 = 2;
/// A crashed CM leader that comes back soon restarts within this many ticks of the CM group
/// (soon enough, sometimes, to be elected again).
const CM_RESTART_TICKS_MAX: u64 = 40;
/// The CM crash schedule is drawn from its own stream of the seed, so that the rest of a
/// seed's schedule is what it was before the CM became a Raft group (seeds noted in the docs
/// still crash the nodes they crashed).
const CM_CRASH_STREAM: u64 = 0x5EED_0C0F_FEE0_0C3A;
/// Bound on the proposals of one reconfiguration (lost, stale, a new leader's own, and the
/// plans): far more than the few it takes.
const INSTALLS_MAX: usize = 32;
/// The workload goes on this long once the cluster served again after the last crash.
const AFTER_RECOVERY: Duration = Duration::from_millis(300);
/// Bound on the wait for commits after the last crash (a dead client's locks are settled by
/// the memory nodes' look every 500 ms, then their votes).
const SERVE_AGAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one recovery (votes, activation, copies) on two busy cores.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on a whole workload: a client thread starts no transaction after this long.
const WORKLOAD_TIME_MAX: Duration = Duration::from_secs(30);
/// Commits a run must see for its verdict to mean something, and after its last crash.
const COMMITTED_MIN: usize = 40;
const COMMITTED_AFTER_RECOVERY_MIN: u64 = 5;
/// Transactions whose outcome a crash leaves in doubt are few (those in flight at the crash);
/// the bank explains final balances by trying every subset of them.
const UNSURE_TRANSFERS_MAX: usize = 16;

/// Who a crash takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A memory node that is the primary of some region (and coordinates).
    Primary,
    /// A memory node that is a primary of nothing, only a backup (and coordinates).
    BackupOnly,
    /// The client-only node: its coordinators and nothing else.
    Coordinator,
}

/// One crash of the schedule.
#[derive(Clone, Debug)]
struct Crash {
    victim: NodeId,
    role: Role,
    /// After the workload started (the first) or the cluster recovered from the one before.
    after: Duration,
    /// How long the test-CM waits before it acts.
    cm_delay: Duration,
    /// Whether and where the CM group's leader crashes in the reconfiguration around it.
    cm_crash: Option<CmCrash>,
}

/// A crash of the CM group's leader during a reconfiguration (module docs).
#[derive(Clone, Copy, Debug)]
struct CmCrash {
    /// At the reconfiguration's proposal of this index (0: the configuration without the
    /// victim), counting every proposal the CM makes in it.
    install_index: usize,
    point: CrashPoint,
    /// Ticks of the CM group after which the crashed replica restarts from its files; `None`:
    /// it stays down until the cluster is whole again.
    restart_ticks: Option<u64>,
}

/// Everything the seed decides about a run but the threads' transactions.
#[derive(Clone, Debug)]
struct Schedule {
    seed: u64,
    f: usize,
    mode: CommitMode,
    crashes: Vec<Crash>,
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seed={} f={} mode={:?}", self.seed, self.f, self.mode)?;
        for (index, crash) in self.crashes.iter().enumerate() {
            write!(
                f,
                "; crash {index}: {} ({:?}) after {} ms",
                crash.victim,
                crash.role,
                crash.after.as_millis(),
            )?;
            if crash.victim == CLIENT {
                write!(f, ", settled by the memory nodes")?;
            } else {
                write!(f, ", CM acts after {} ms", crash.cm_delay.as_millis())?;
                if let Some(cm_crash) = crash.cm_crash {
                    write!(
                        f,
                        " (CM leader crashes at proposal {} {}, ",
                        cm_crash.install_index, cm_crash.point
                    )?;
                    match cm_crash.restart_ticks {
                        Some(ticks) => write!(f, "restarts after {ticks} ticks)")?,
                        None => write!(f, "down until the cluster is whole)")?,
                    }
                }
            }
        }
        Ok(())
    }
}

impl Schedule {
    /// The schedule of `seed`. Victims are picked from the configuration the cluster will be
    /// in when they crash, which the planning functions compute from the victims before them
    /// (they are pure), so the whole schedule is known, and printed, before the run.
    fn new(seed: u64) -> Schedule {
        let mut rng = SplitMix::new(seed);
        let mut cm_rng = SplitMix::new(seed ^ CM_CRASH_STREAM);
        let f = 1 + rng.below(2) as usize;
        let seeded_mode = if rng.below(2) == 0 {
            CommitMode::Messages
        } else {
            CommitMode::OneSided
        };
        let mode = if std::env::var("ACRE_TEST_COMMIT").is_ok() {
            fixture::commit_mode()
        } else {
            seeded_mode
        };
        let mut config = initial_config(f, mode);
        let crash_count = 1 + rng.below(2);
        let mut crashes = Vec::new();
        let mut crashed = BTreeSet::new();
        for _ in 0..crash_count {
            let wanted =
                [Role::Primary, Role::BackupOnly, Role::Coordinator][rng.below(3) as usize];
            let (role, candidates) = [wanted, Role::Primary]
                .into_iter()
                .map(|role| (role, candidates(&config, &crashed, role)))
                .find(|(_, candidates)| !candidates.is_empty())
                .expect("some memory node is a primary");
            let victim = candidates[rng.below(candidates.len() as u64) as usize];
            let after = Duration::from_millis(rng.range(CRASH_AFTER_MS_MIN, CRASH_AFTER_MS_MAX));
            // `rng` draws what it drew when the test-CM's crash was a pause (one crash in four
            // paused, the others drew their delay), so that a seed still crashes the nodes it
            // crashed then; the CM crashes come from `cm_rng`.
            let paused = rng.below(4) == 0;
            let cm_delay = Duration::from_millis(if paused {
                cm_rng.below(CM_DELAY_MS_MAX)
            } else {
                rng.below(CM_DELAY_MS_MAX)
            });
            let cm_crash = (cm_rng.below(CM_CRASH_ONE_IN) == 0).then(|| CmCrash {
                install_index: cm_rng.below(CM_CRASH_INSTALL_INDEX_MAX) as usize,
                point: CrashPoint::ALL[cm_rng.below(CrashPoint::ALL.len() as u64) as usize],
                restart_ticks: (cm_rng.below(2) == 0)
                    .then(|| cm_rng.below(CM_RESTART_TICKS_MAX + 1)),
            });
            crashes.push(Crash {
                victim,
                role,
                after,
                cm_delay,
                cm_crash,
            });
            crashed.insert(victim);
            if victim != CLIENT {
                config = recovered_without(&config, victim);
            }
        }
        Schedule {
            seed,
            f,
            mode,
            crashes,
        }
    }
}

/// Four memory nodes, primaries on n1..n3, f backups each, and [`CLIENT`].
fn initial_config(f: usize, mode: CommitMode) -> Configuration {
    let ids: Vec<NodeId> = (1..=MEMORY_NODE_COUNT).map(NodeId).collect();
    let mut config = Configuration::place_primaries_on(
        1,
        ids,
        PRIMARY_COUNT,
        vec![CLIENT],
        1,
        f,
        REGION_BYTES,
        BLOCK_BYTES,
    )
    .expect("a valid configuration");
    config.commit = mode;
    config.cm_replicas = CmGroupSim::replica_nodes();
    config
}

/// The nodes of `config` that play `role` and have not crashed.
fn candidates(config: &Configuration, crashed: &BTreeSet<NodeId>, role: Role) -> Vec<NodeId> {
    let is_primary = |node: NodeId| config.regions.iter().any(|p| p.primary == node);
    match role {
        Role::Primary => config
            .nodes
            .iter()
            .copied()
            .filter(|&n| is_primary(n))
            .collect(),
        Role::BackupOnly => config
            .nodes
            .iter()
            .copied()
            .filter(|&n| !is_primary(n) && config.regions.iter().any(|p| p.backups.contains(&n)))
            .collect(),
        Role::Coordinator => config
            .clients
            .iter()
            .copied()
            .filter(|client| !crashed.contains(client))
            .collect(),
    }
}

/// The configuration the test-CM ends with after `victim` fails in `config`: every region
/// active again, every copy complete.
fn recovered_without(config: &Configuration, victim: NodeId) -> Configuration {
    let mut next = after_failure(config, &BTreeSet::from([victim]))
        .expect("a plan")
        .config;
    let blocked: Vec<RegionId> = next
        .regions
        .iter()
        .filter(|p| p.state == RegionState::Blocked)
        .map(|p| p.region)
        .collect();
    if !blocked.is_empty() {
        next = after_recovery(&next, &blocked, None)
            .expect("activate")
            .config;
    }
    let copying: BTreeSet<NodeId> = next
        .regions
        .iter()
        .flat_map(|p| p.copying.iter().copied())
        .collect();
    for node in copying {
        let regions: Vec<RegionId> = next.regions.iter().map(|p| p.region).collect();
        let copied = Copied {
            node,
            regions: &regions,
        };
        next = after_recovery(&next, &[], Some(copied))
            .expect("complete")
            .config;
    }
    next
}

/// Runs `run` for the seeds of one test run, or the one `ACRE_TEST_SEED` pins; a failing
/// seed is printed with its schedule and how to pin it.
fn for_seeds(test: &str, mut run: impl FnMut(&Schedule)) {
    let seeds: Vec<u64> = match pinned_seed() {
        Some(seed) => vec![seed],
        None => {
            let count = match std::env::var(SEED_COUNT_ENV) {
                Ok(text) => text
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{SEED_COUNT_ENV}={text:?} is not a count")),
                Err(_) => SEED_COUNT_DEFAULT,
            };
            let mut rng = SplitMix::new(RandomState::new().hash_one(test));
            (0..count).map(|_| rng.next_u64()).collect()
        }
    };
    for seed in seeds {
        let schedule = Schedule::new(seed);
        eprintln!("{test}: {schedule}");
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&schedule)));
        if let Err(panic) = outcome {
            eprintln!(
                "{test} FAILED: {schedule}\npin it with {SEED_ENV}={seed}, which replays the \
                 schedule and each thread's transactions, not how the threads interleave"
            );
            std::panic::resume_unwind(panic);
        }
        eprintln!(
            "{test}: seed={seed} took {} ms",
            began.elapsed().as_millis()
        );
    }
}

// The test-CM.

/// Crashes `victim` as the schedule says (module docs).
fn crash(cluster: &mut EmbeddedCluster, coordinators: &Coordinators, victim: NodeId) {
    coordinators.crash(victim);
    if victim == CLIENT {
        cluster.kill(victim);
    } else {
        cluster.fence_member(victim);
    }
}

/// The test-CM at the leader of `cm`, from the moment it acts on `victim`'s crash until every
/// region is active and no backup copies (docs/failures.md#reconfiguration), with the leader
/// crashing where `cm_crash` says. Each round starts from what the CM group committed, read at
/// its current leader, as a new leader must (it knows nothing else; the victim it learns again
/// from the leases, the reports from the nodes, which repeat them):
/// 1. a configuration that names another CM leader is installed again naming this one, as the
///    CM's manager does when it is elected (`acre_cm::manager`, "A new leader");
/// 2. a committed configuration the nodes do not hold yet is installed on them;
/// 3. otherwise the next step is planned from the committed configuration
///    ([`after_failure`] while the victim is a member, then [`after_recovery`] from the nodes'
///    reports), proposed by compare-and-set on its id, and installed on the nodes once the
///    group committed it.
///
/// Only configurations the group committed reach the nodes ([`CmGroupSim::assert_committed`]).
fn reconfigure_without(
    cluster: &mut EmbeddedCluster,
    cm: &mut CmGroupSim,
    victim: NodeId,
    cm_crash: Option<CmCrash>,
) {
    let deadline = Instant::now() + RECOVERY_TIMEOUT;
    let mut pending_crash = cm_crash;
    let mut install_index = 0;
    loop {
        let committed = cm.committed();
        let leader = cm.leader_node();
        let installed = cluster.config().clone();
        assert!(
            committed.id >= installed.id,
            "the nodes hold configuration {} and the CM group committed only {}",
            installed.id,
            committed.id
        );
        if committed.id == installed.id {
            assert_eq!(
                committed, *installed,
                "the nodes hold another configuration {} than the CM group committed",
                committed.id
            );
        }
        let next = if committed.cm_leader.is_some_and(|named| named != leader) {
            let mut next = committed.clone();
            next.id += 1;
            next.cm_leader = Some(leader);
            eprintln!(
                "  test-CM: {leader} leads the CM group now and installs configuration {} again \
                 as configuration {} naming it",
                committed.id, next.id
            );
            next
        } else if committed.id > installed.id {
            install_on_nodes(cluster, cm, &committed);
            continue;
        } else if committed.members().any(|member| member == victim) {
            let plan = after_failure(&committed, &BTreeSet::from([victim]))
                .unwrap_or_else(|e| panic!("plan the configuration without {victim}: {e}"));
            for change in &plan.changes {
                eprintln!("  test-CM: {change}");
            }
            named(plan.config, leader)
        } else if committed
            .regions
            .iter()
            .all(|p| p.state == RegionState::Active && p.copying.is_empty())
        {
            if let Some(cm_crash) = pending_crash {
                eprintln!(
                    "  test-CM: the CM crash at proposal {} did not come: the reconfiguration \
                     took {install_index} proposals",
                    cm_crash.install_index
                );
            }
            cm.restart_down();
            return;
        } else {
            let report = cluster.nodes().iter().find_map(|node| {
                let (recovered, copied) = (node.recovered_regions(), node.copied_regions());
                (!recovered.is_empty() || !copied.is_empty())
                    .then(|| (node.node_id(), recovered, copied))
            });
            let Some((node, recovered, copied)) = report else {
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not recover from {victim}'s crash within \
                     {RECOVERY_TIMEOUT:?}: configuration {committed:?}"
                );
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            let copied = (!copied.is_empty()).then_some(Copied {
                node,
                regions: &copied,
            });
            let plan = after_recovery(&committed, &recovered, copied).unwrap_or_else(|e| {
                panic!("plan after {node}'s report (recovered {recovered:?}): {e}")
            });
            named(plan.config, leader)
        };
        assert!(
            install_index < INSTALLS_MAX,
            "{INSTALLS_MAX} proposals in one reconfiguration:\n{}",
            cm.describe()
        );
        let crash_here = pending_crash
            .filter(|c| c.install_index == install_index)
            .map(|c| c.point);
        install_index += 1;
        match cm.install(&next, crash_here) {
            Install::Installed(config) => install_on_nodes(cluster, cm, &config),
            Install::NotInstalled(reason) => {
                eprintln!(
                    "  test-CM: configuration {} not installed: {reason}",
                    next.id
                );
            }
            Install::LeaderCrashed => {
                let cm_crash = pending_crash.take().expect("a crash was asked for");
                cm.restart_after(cm_crash.restart_ticks);
                eprintln!(
                    "  CM leader {leader} crashed {} (configuration {})",
                    cm_crash.point, next.id
                );
            }
        }
    }
}

/// `config` naming `leader` as its CM, as the CM's manager plans it.
fn named(mut config: Configuration, leader: NodeId) -> Configuration {
    config.cm_leader = Some(leader);
    config
}

/// NEW-CONFIG and NEW-CONFIG-COMMIT of `config`, which the CM group must have committed.
fn install_on_nodes(cluster: &mut EmbeddedCluster, cm: &CmGroupSim, config: &Configuration) {
    cm.assert_committed(config);
    cluster
        .reconfigure(config.clone())
        .unwrap_or_else(|e| panic!("install configuration {}: {e}", config.id));
}

/// A CM group whose first configuration is `first`, named after the group's first leader
/// (unless it names no CM replicas: a static configuration the test started a cluster with).
fn start_cm(seed: u64, first: &mut Configuration) -> CmGroupSim {
    let mut cm = CmGroupSim::new(seed);
    if !first.cm_replicas.is_empty() {
        first.cm_leader = Some(cm.leader_node());
    }
    match cm.install(first, None) {
        Install::Installed(config) => assert_eq!(&config, first),
        other => panic!("the CM group did not install the first configuration: {other:?}"),
    }
    cm
}

/// Plays the schedule on `cluster` while the workload runs.
fn play(
    cluster: &mut EmbeddedCluster,
    cm: &mut CmGroupSim,
    coordinators: &Coordinators,
    schedule: &Schedule,
    origin: Instant,
) {
    for crash_step in &schedule.crashes {
        std::thread::sleep(crash_step.after);
        eprintln!(
            "  crash {} ({:?}) at {} ms",
            crash_step.victim,
            crash_step.role,
            origin.elapsed().as_millis()
        );
        crash(cluster, coordinators, crash_step.victim);
        if crash_step.victim == CLIENT {
            // The CM does not watch clients (they hold no lease): the memory nodes settle what
            // a dead client left through its liveness (docs/failures.md#a-client-that-dies),
            // and its id stays in the configuration.
            continue;
        }
        std::thread::sleep(crash_step.cm_delay);
        reconfigure_without(cluster, cm, crash_step.victim, crash_step.cm_crash);
        eprintln!(
            "  whole again at {} ms in configuration {}",
            origin.elapsed().as_millis(),
            cluster.config().id
        );
    }
}

/// The nodes client threads coordinate on, and which of them crashed: a thread starts no
/// transaction on a crashed node (a dead process's threads run no more), while one already
/// running there goes on and meets the isolation.
struct Coordinators {
    nodes: Vec<Arc<TxnNode>>,
    crashed: Mutex<HashSet<NodeId>>,
    /// Commits acknowledged so far, all threads together.
    committed_count: AtomicU64,
}

impl Coordinators {
    fn new(cluster: &EmbeddedCluster) -> Coordinators {
        Coordinators {
            nodes: cluster.nodes().iter().map(|n| n.txn().clone()).collect(),
            crashed: Mutex::new(HashSet::new()),
            committed_count: AtomicU64::new(0),
        }
    }

    fn note_commit(&self) {
        self.committed_count.fetch_add(1, Relaxed);
    }

    /// Waits until [`COMMITTED_AFTER_RECOVERY_MIN`] more commits are acknowledged: the cluster
    /// serves again after the last crash.
    fn wait_served_again(&self, seed: u64) {
        let before = self.committed_count.load(Relaxed);
        let deadline = Instant::now() + SERVE_AGAIN_TIMEOUT;
        while self.committed_count.load(Relaxed) < before + COMMITTED_AFTER_RECOVERY_MIN {
            assert!(
                Instant::now() < deadline,
                "seed={seed}: {} commits in the {SERVE_AGAIN_TIMEOUT:?} after the last crash: \
                 the cluster did not serve again",
                self.committed_count.load(Relaxed) - before
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn crash(&self, node: NodeId) {
        self.crashed.lock().expect("poisoned").insert(node);
    }

    /// A live node, picked by `rng`.
    fn pick(&self, rng: &mut SplitMix) -> Arc<TxnNode> {
        let crashed = self.crashed.lock().expect("poisoned");
        let live: Vec<&Arc<TxnNode>> = self
            .nodes
            .iter()
            .filter(|n| !crashed.contains(&n.node_id()))
            .collect();
        live[rng.below(live.len() as u64) as usize].clone()
    }
}

/// Whether `error`, met by a transaction while nodes crash, means only that a participant is
/// gone (so nothing committed and the workload moves on); anything else is a bug.
fn is_crash_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::Txn(TxnError::Unavailable { .. }) | Error::Commit(CommitError::Unavailable { .. })
    )
}

/// A transaction whose commit was `Indeterminate`: what it appended is looked for in the
/// final reads, which decide it.
#[derive(Clone, Debug)]
struct Unsure {
    id: u64,
    txn: TxnId,
    appends: Vec<(u64, u64)>,
    start_ns: u64,
}

#[derive(Default)]
struct ListLog {
    committed: Vec<TxnRecord>,
    aborted_appends: Vec<(u64, u64)>,
    unsure: Vec<Unsure>,
    conflict_count: u64,
    refused_count: u64,
    other_count: u64,
}

fn appends_of(plan: &[Planned]) -> Vec<(u64, u64)> {
    plan.iter()
        .filter_map(|step| match *step {
            Planned::Append { key, value } => Some((key, value)),
            Planned::Read { .. } => None,
        })
        .collect()
}

fn list_client(
    thread_index: u64,
    seed: u64,
    coordinators: &Coordinators,
    roots: &[Addr],
    origin: Instant,
    stop: &AtomicBool,
) -> Result<ListLog, String> {
    let mut rng = SplitMix::new(seed ^ (thread_index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut log = ListLog::default();
    let mut next_value = thread_index * VALUES_PER_THREAD;
    let mut txn_index = 0;
    while !stop.load(Relaxed) && origin.elapsed() < WORKLOAD_TIME_MAX {
        txn_index += 1;
        let node = coordinators.pick(&mut rng);
        let plan = random_plan(&mut rng, &mut next_value);
        assert!(
            next_value < (thread_index + 1) * VALUES_PER_THREAD,
            "values stay unique per thread"
        );
        let start_ns = nanos_since(origin);
        let outcome = attempt(&node, roots, &plan);
        let end_ns = nanos_since(origin);
        let id = thread_index * VALUES_PER_THREAD + txn_index;
        let here = || format!("thread {thread_index} T{id} on {}", node.node_id());
        match outcome {
            Ok(committed) => {
                coordinators.note_commit();
                log.committed.push(TxnRecord {
                    id,
                    ops: committed.ops,
                    start_ns,
                    end_ns,
                });
            }
            Err(Failure::Fatal(reason)) => return Err(format!("{}: {reason}", here())),
            Err(Failure::Refused(e)) if !is_crash_refusal(&e) => {
                return Err(format!("{}: {e}", here()));
            }
            Err(Failure::Indeterminate(txn)) => log.unsure.push(Unsure {
                id,
                txn,
                appends: appends_of(&plan),
                start_ns,
            }),
            Err(failure) => {
                match failure {
                    Failure::Refused(_) => log.refused_count += 1,
                    Failure::Retryable(e) if e.is_conflict() => log.conflict_count += 1,
                    _ => log.other_count += 1,
                }
                log.aborted_appends.extend(appends_of(&plan));
            }
        }
    }
    Ok(log)
}

/// Waits until nothing is in flight ([`fixture::settle`]); if the cluster does not quiesce,
/// says first what each node still holds, which `settle` does not.
fn settle(cluster: &EmbeddedCluster, seed: u64) {
    if !cluster.quiesce(fixture::SETTLE_TIMEOUT) {
        for node in cluster.nodes() {
            let txn = node.txn();
            eprintln!(
                "seed={seed}: {} quiet={} pending_truncations={} unfinished_commits={} \
                 held_as_primary={} held_as_backup={}",
                node.node_id(),
                node.is_quiet(),
                txn.links().has_pending_truncations(),
                txn.unfinished_commits(),
                txn.primary().held_count(),
                node.backup().held_count()
            );
        }
        for node in cluster.nodes() {
            let primary = node.txn().primary();
            for coordinator in [1, 2, 3, 4, 100].map(NodeId) {
                let allocating = primary.allocating(coordinator);
                if !allocating.is_empty() {
                    eprintln!(
                        "seed={seed}: {} holds ALLOC reservations of {allocating:?}",
                        node.node_id()
                    );
                }
            }
            let stats = node.worker().expect("running").stats();
            eprintln!(
                "seed={seed}: {} orphans aborted={} installed={} truncated={} left={} \
                 unanswered={} recovered committed={} aborted={} late_refused={}",
                node.node_id(),
                stats.orphans_aborted.load(Relaxed),
                stats.orphans_installed.load(Relaxed),
                stats.orphans_truncated.load(Relaxed),
                stats.orphans_left.load(Relaxed),
                stats.orphans_unanswered.load(Relaxed),
                stats.recovered_committed.load(Relaxed),
                stats.recovered_aborted.load(Relaxed),
                stats.late_refused.load(Relaxed),
            );
        }
        let busy: Vec<fixture::RingState> = fixture::rings(cluster)
            .into_iter()
            .filter(|r| r.head != r.tail)
            .collect();
        panic!("seed={seed}: the cluster did not quiesce; rings not drained: {busy:?}");
    }
    fixture::settle(cluster);
}

/// Every region active, no backup copying, and every complete replica of every region equal
/// to its primary's copy word for word, lock bits included (once quiet nothing is locked;
/// `check_replicas` forgives lock bits, this does not, and says if a lock bit is all that
/// differs).
fn check_identical_replicas(cluster: &EmbeddedCluster, seed: u64) {
    let config = cluster.config();
    for placement in &config.regions {
        assert_eq!(
            (placement.state, placement.copying.as_slice()),
            (RegionState::Active, &[][..]),
            "seed={seed}: {} is not whole once quiet: {placement:?}",
            placement.region
        );
        let copy_at = |node: NodeId| {
            fixture::replica(cluster, node)
                .copy(placement.region)
                .unwrap_or_else(|| {
                    panic!("seed={seed}: {node} holds no copy of {}", placement.region)
                })
        };
        let primary = copy_at(placement.primary);
        for &backup in &placement.backups {
            let copy = copy_at(backup);
            for (index, (p, b)) in primary.words().iter().zip(copy.words()).enumerate() {
                let (p, b) = (p.load(Relaxed), b.load(Relaxed));
                assert!(
                    p == b,
                    "seed={seed}: {}'s copies differ at offset {:#x}: primary {} {p:#018x}, \
                     backup {backup} {b:#018x}{}",
                    placement.region,
                    index * 8,
                    placement.primary,
                    if p ^ b == LOCK_BIT {
                        " (the lock bit only)"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    cluster
        .check_replicas()
        .unwrap_or_else(|mismatch| panic!("seed={seed}: {mismatch}"));
}

/// Before `check_allocators` fails on them: the slots each primary's allocator counts taken
/// whose headers say free, with those headers, so the failure says what the slot went through.
fn describe_leaks(cluster: &EmbeddedCluster, seed: u64) {
    for node in cluster.nodes() {
        list_append::wait_allocators_scanned(node.txn(), seed);
        let primary = node.txn().primary();
        for region in primary.region_ids() {
            let taken = primary.allocated_addrs(region).expect("a primary region");
            let copy = primary.region(region).expect("a primary region");
            let headers: BTreeSet<Addr> =
                acre_engine::slab::SlabAllocator::rebuild(&copy, BLOCK_BYTES)
                    .expect("rebuild")
                    .allocated_addrs()
                    .into_iter()
                    .collect();
            for addr in taken.into_iter().filter(|a| !headers.contains(a)) {
                // Free and unlocked but taken, in one-sided mode at a primary whose own
                // coordinators allocate there: the leak that
                // `a_one_sided_lock_stopped_by_its_own_nodes_fence_hands_back_its_local_allocation`
                // reduces (a known cause, not the only possible one).
                eprintln!(
                    "seed={seed}: {} counts {addr} taken; its header: {:?} (mode {:?})",
                    node.node_id(),
                    fixture::primary_header(cluster, addr),
                    cluster.config().commit
                );
            }
        }
    }
}

/// One list-append run of `schedule`.
fn list_append_run(schedule: &Schedule) {
    let seed = schedule.seed;
    let mut first = initial_config(schedule.f, schedule.mode);
    let mut cm = start_cm(seed, &mut first);
    let mut cluster = EmbeddedCluster::start_faulty(first, RING_BYTES).expect("start the cluster");
    let memory_nodes: Vec<Arc<TxnNode>> = cluster
        .nodes()
        .iter()
        .filter(|n| n.node_id() != CLIENT)
        .map(|n| n.txn().clone())
        .collect();
    let roots = Arc::new(create_keys(&memory_nodes));
    let coordinators = Arc::new(Coordinators::new(&cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let threads: Vec<_> = (0..THREAD_COUNT)
        .map(|thread_index| {
            let (coordinators, roots, stop) = (coordinators.clone(), roots.clone(), stop.clone());
            std::thread::spawn(move || {
                list_client(thread_index, seed, &coordinators, &roots, origin, &stop)
            })
        })
        .collect();
    play(&mut cluster, &mut cm, &coordinators, schedule, origin);
    coordinators.wait_served_again(seed);
    std::thread::sleep(AFTER_RECOVERY);
    stop.store(true, Relaxed);
    let mut history = History::default();
    let mut unsure = Vec::new();
    let mut counts = (0, 0, 0);
    for thread in threads {
        let log = thread
            .join()
            .unwrap_or_else(|_| panic!("seed={seed}: a client thread panicked (see above)"))
            .unwrap_or_else(|reason| panic!("seed={seed}: {reason}"));
        history.txns.extend(log.committed);
        history.aborted_appends.extend(log.aborted_appends);
        unsure.extend(log.unsure);
        counts.0 += log.conflict_count;
        counts.1 += log.refused_count;
        counts.2 += log.other_count;
    }

    settle(&cluster, seed);
    // The final read, from a live memory node.
    let reader = cluster.nodes()[0].txn().clone();
    let mut final_lists = HashMap::new();
    let mut live = BTreeSet::from_iter(roots.iter().copied());
    let final_start_ns = nanos_since(origin);
    let mut txn = reader.begin().expect("begin the final read");
    for key in 0..KEY_COUNT {
        match follow(&mut txn, &roots, key) {
            Ok(Followed::List { at, object }) => {
                live.insert(at);
                final_lists.insert(key, object.list);
            }
            Ok(Followed::Stale(reason)) => panic!("seed={seed}: once quiet, {reason}"),
            Err(failure) => panic!("seed={seed}: the final read failed: {failure:?}"),
        }
    }
    txn.commit()
        .unwrap_or_else(|e| panic!("seed={seed}: the final read did not commit: {e}"));
    let final_end_ns = nanos_since(origin);

    // The final reads decide the transactions whose commit was in doubt: all of their appends
    // are there (committed) or none is (aborted).
    let mut unsure_committed = 0;
    for doubt in &unsure {
        let found: Vec<bool> = doubt
            .appends
            .iter()
            .map(|(key, value)| final_lists[key].contains(value))
            .collect();
        if found.iter().all(|&f| f) && !found.is_empty() {
            unsure_committed += 1;
            history.txns.push(TxnRecord {
                id: doubt.id,
                ops: doubt
                    .appends
                    .iter()
                    .map(|&(key, value)| MicroOp::Append { key, value })
                    .collect(),
                start_ns: doubt.start_ns,
                // Its acknowledgement never came: it ended at the latest before the final read.
                end_ns: final_start_ns,
            });
        } else {
            assert!(
                !found.iter().any(|&f| f),
                "seed={seed}: only some appends of T{} ({}) are in the final reads: {:?} of {:?}",
                doubt.id,
                doubt.txn,
                found,
                doubt.appends
            );
            history
                .aborted_appends
                .extend(doubt.appends.iter().copied());
        }
    }
    let acknowledged_count = history.txns.len() - unsure_committed;
    // Every acknowledged append is in its list, no aborted one is.
    list_append::check_appends(&history, &final_lists, seed);
    // The final read joins the history: its lists must follow every commit before it.
    history.txns.push(TxnRecord {
        id: u64::MAX,
        ops: (0..KEY_COUNT)
            .map(|key| MicroOp::Read {
                key,
                list: final_lists[&key].clone(),
            })
            .collect(),
        start_ns: final_start_ns,
        end_ns: final_end_ns,
    });
    let report = elle::check(&history, true);
    eprintln!(
        "  seed={seed}: acknowledged={acknowledged_count} in_doubt={} (committed {unsure_committed}) \
         conflicts={} refused={} other={} \
         overlapping_pairs={}\n{report}",
        unsure.len(),
        counts.0,
        counts.1,
        counts.2,
        list_append::overlapping_pair_count(&history.txns),
    );
    assert!(report.is_valid(), "seed={seed}\n{report}");
    assert!(
        acknowledged_count >= COMMITTED_MIN,
        "seed={seed}: acknowledged_count={acknowledged_count} COMMITTED_MIN={COMMITTED_MIN}"
    );
    check_identical_replicas(&cluster, seed);
    describe_leaks(&cluster, seed);
    check_allocators(&cluster, &live, seed);
    cluster.stop();
}

/// Elle's list-append workload under seeded crashes (module docs): strictly serializable,
/// nothing acknowledged lost, nothing aborted visible, replicas identical once quiet.
///
/// It found a new backup's copy one free behind its primary's (seeds 9121888033927254111 and
/// 9653117908617154388): the copier read a block's slots before the block's header was in
/// the copy, and the free, truncated in between, was skipped as an update of a block not
/// copied yet (`recovery::a_free_truncated_while_the_copy_holds_a_block_read_reaches_the_new_backup`).
#[test]
fn list_append_under_seeded_crashes_is_strictly_serializable() {
    for_seeds("sim_txn_list_append", list_append_run);
}

// The bank.

const ACCOUNT_COUNT: usize = 12;
const BALANCE_FIRST: i64 = 100;
const TOTAL: i64 = ACCOUNT_COUNT as i64 * BALANCE_FIRST;
/// One transaction in this many is an audit (reads every account).
const AUDIT_ONE_IN: u64 = 8;
const AMOUNT_MAX: u64 = 10;

/// An account: its balance, and the tag of the transfer that wrote it last (0: none yet).
/// Every transfer writes a tag of its own, so a read names the write it saw, and with the tags
/// each transfer read, the history gives each account's order of writes: what lets the
/// Elle-style checker judge the bank's history as a list-append one ([`bank_history`]).
fn account(bytes: &[u8]) -> Result<(i64, u64), String> {
    let words: [u8; 16] = bytes
        .try_into()
        .map_err(|_| format!("an account of {} bytes", bytes.len()))?;
    let (balance, tag) = words.split_at(8);
    Ok((
        i64::from_le_bytes(balance.try_into().expect("8 bytes")),
        u64::from_le_bytes(tag.try_into().expect("8 bytes")),
    ))
}

fn account_bytes(balance: i64, tag: u64) -> [u8; 16] {
    let mut bytes = [0; 16];
    bytes[..8].copy_from_slice(&balance.to_le_bytes());
    bytes[8..].copy_from_slice(&tag.to_le_bytes());
    bytes
}

#[derive(Clone, Copy, Debug)]
struct Transfer {
    from: usize,
    to: usize,
    amount: i64,
}

/// One bank transaction as its client saw it, for the history: the account tags it read, the
/// tag it wrote to `from` and `to` of its transfer (none for an audit), and when.
#[derive(Clone, Debug)]
struct BankTxn {
    reads: Vec<(usize, u64)>,
    wrote: Option<(u64, Transfer)>,
    start_ns: u64,
    end_ns: u64,
}

#[derive(Default)]
struct BankLog {
    acknowledged: Vec<Transfer>,
    unsure: Vec<(TxnId, Transfer)>,
    audit_count: u64,
    refused_count: u64,
    other_count: u64,
    /// Committed transactions (transfers and audits).
    committed: Vec<BankTxn>,
    /// Transfers whose commit was in doubt (`end_ns` unknown).
    in_doubt: Vec<BankTxn>,
}

/// What one bank transaction did.
enum BankOutcome {
    Transferred,
    /// Too little in the source account: nothing written.
    Skipped,
    Audited,
}

fn as_failure(e: impl Into<Failure>) -> Failure {
    e.into()
}

/// Runs one bank transaction: a transfer writing `tag`, or an audit. `reads` gets the tags it
/// read, account by account, as it reads them.
fn bank_txn(
    node: &Arc<TxnNode>,
    accounts: &[Addr],
    transfer: Option<Transfer>,
    tag: u64,
    reads: &mut Vec<(usize, u64)>,
) -> Result<BankOutcome, Failure> {
    let mut txn = node.begin().map_err(as_failure)?;
    let Some(Transfer { from, to, amount }) = transfer else {
        let mut sum = 0;
        for (index, &addr) in accounts.iter().enumerate() {
            let (value, read_tag) =
                account(&txn.read(addr).map_err(as_failure)?).map_err(Failure::Fatal)?;
            reads.push((index, read_tag));
            if value < 0 {
                // Only a commit makes what it read a fact.
                txn.commit().map_err(as_failure)?;
                return Err(Failure::Fatal(format!("an audit saw {addr} at {value}")));
            }
            sum += value;
        }
        txn.commit().map_err(as_failure)?;
        if sum != TOTAL {
            return Err(Failure::Fatal(format!(
                "an audit summed {sum}, not {TOTAL}"
            )));
        }
        return Ok(BankOutcome::Audited);
    };
    let (a, a_tag) =
        account(&txn.read(accounts[from]).map_err(as_failure)?).map_err(Failure::Fatal)?;
    reads.push((from, a_tag));
    let (b, b_tag) =
        account(&txn.read(accounts[to]).map_err(as_failure)?).map_err(Failure::Fatal)?;
    reads.push((to, b_tag));
    if a < amount {
        return Ok(BankOutcome::Skipped);
    }
    txn.write(accounts[from], &account_bytes(a - amount, tag))
        .map_err(as_failure)?;
    txn.write(accounts[to], &account_bytes(b + amount, tag))
        .map_err(as_failure)?;
    txn.commit().map_err(as_failure)?;
    Ok(BankOutcome::Transferred)
}

fn bank_client(
    thread_index: u64,
    seed: u64,
    coordinators: &Coordinators,
    accounts: &[Addr],
    origin: Instant,
    stop: &AtomicBool,
) -> Result<BankLog, String> {
    let mut rng = SplitMix::new(seed ^ (thread_index + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut log = BankLog::default();
    let mut attempt = 0u64;
    while !stop.load(Relaxed) && origin.elapsed() < WORKLOAD_TIME_MAX {
        let node = coordinators.pick(&mut rng);
        let transfer = (rng.below(AUDIT_ONE_IN) != 0).then(|| {
            let from = rng.below(ACCOUNT_COUNT as u64) as usize;
            let to = (from + 1 + rng.below(ACCOUNT_COUNT as u64 - 1) as usize) % ACCOUNT_COUNT;
            Transfer {
                from,
                to,
                amount: rng.range(1, AMOUNT_MAX) as i64,
            }
        });
        let here = || format!("thread {thread_index} on {}", node.node_id());
        // Unique per attempt: the thread in the high bits, never 0 (the first balances').
        attempt += 1;
        let tag = ((thread_index + 1) << 40) | attempt;
        let mut reads = Vec::new();
        let start_ns = nanos_since(origin);
        let outcome = bank_txn(&node, accounts, transfer, tag, &mut reads);
        let record = |end_ns| BankTxn {
            reads: reads.clone(),
            wrote: transfer.map(|t| (tag, t)),
            start_ns,
            end_ns,
        };
        match outcome {
            Ok(BankOutcome::Transferred) => {
                coordinators.note_commit();
                log.acknowledged.push(transfer.expect("a transfer"));
                log.committed.push(record(nanos_since(origin)));
            }
            Ok(BankOutcome::Audited) => {
                coordinators.note_commit();
                log.audit_count += 1;
                log.committed.push(record(nanos_since(origin)));
            }
            Ok(BankOutcome::Skipped) => {}
            Err(Failure::Fatal(reason)) => return Err(format!("{}: {reason}", here())),
            Err(Failure::Refused(e)) if !is_crash_refusal(&e) => {
                return Err(format!("{}: {e}", here()));
            }
            Err(Failure::Refused(_)) => log.refused_count += 1,
            // An audit writes nothing: whether it committed changes no balance.
            Err(Failure::Indeterminate(txn)) => {
                if let Some(transfer) = transfer {
                    log.unsure.push((txn, transfer));
                    log.in_doubt.push(record(elle::END_UNKNOWN));
                }
            }
            Err(_) => log.other_count += 1,
        }
    }
    Ok(log)
}

/// The bank's history as a list-append one, for the Elle-style checker: each account is a list
/// of the tags written to it, in the order of its writes. A transfer read each account's last
/// tag and wrote its own after it, so the tags a transfer read give each written tag's
/// predecessor, and a read of tag `t` is the list of `t`'s predecessors then `t`. A transfer
/// appends its tag to both accounts; the final audit decides the transfers in doubt (its lists
/// hold a tag, or it aborted). A read of a tag no transaction wrote fails the run.
fn bank_history(committed: &[BankTxn], in_doubt: &[BankTxn], seed: u64) -> History {
    // Per account, each written tag's predecessor.
    let mut before: HashMap<(usize, u64), u64> = HashMap::new();
    for txn in committed.iter().chain(in_doubt) {
        if let Some((tag, transfer)) = txn.wrote {
            for (index, read_tag) in &txn.reads {
                if *index == transfer.from || *index == transfer.to {
                    before.insert((*index, tag), *read_tag);
                }
            }
        }
    }
    let list = |index: usize, last: u64| -> Vec<u64> {
        let mut tags = Vec::new();
        let mut at = last;
        while at != 0 {
            assert!(
                tags.len() <= before.len(),
                "seed={seed}: the writes of account {index} before {last} form a cycle"
            );
            tags.push(at);
            at = *before.get(&(index, at)).unwrap_or_else(|| {
                panic!("seed={seed}: account {index} was read at tag {at}, which no transfer wrote")
            });
        }
        tags.reverse();
        tags
    };
    let final_audit = committed.last().expect("the final audit");
    let final_lists: HashMap<usize, Vec<u64>> = final_audit
        .reads
        .iter()
        .map(|&(index, tag)| (index, list(index, tag)))
        .collect();
    // Where each tag is in its account's final list: a read of it is that list's prefix (a
    // tag the final list lacks, which the checker reports, is followed back one by one).
    let position: HashMap<(usize, u64), usize> = final_lists
        .iter()
        .flat_map(|(&index, tags)| {
            tags.iter()
                .enumerate()
                .map(move |(at, &tag)| ((index, tag), at))
        })
        .collect();
    let read_list = |index: usize, tag: u64| match position.get(&(index, tag)) {
        Some(&at) => final_lists[&index][..=at].to_vec(),
        None if tag == 0 => Vec::new(),
        None => list(index, tag),
    };
    let record = |id: usize, txn: &BankTxn, end_ns: u64| {
        let mut ops: Vec<MicroOp> = txn
            .reads
            .iter()
            .map(|&(index, tag)| MicroOp::Read {
                key: index as u64,
                list: read_list(index, tag),
            })
            .collect();
        if let Some((tag, transfer)) = txn.wrote {
            for index in [transfer.from, transfer.to] {
                ops.push(MicroOp::Append {
                    key: index as u64,
                    value: tag,
                });
            }
        }
        TxnRecord {
            id: id as u64,
            ops,
            start_ns: txn.start_ns,
            end_ns,
        }
    };
    let mut history = History::default();
    for (id, txn) in committed.iter().enumerate() {
        history.txns.push(record(id, txn, txn.end_ns));
    }
    for (offset, txn) in in_doubt.iter().enumerate() {
        let (tag, transfer) = txn.wrote.expect("only transfers are in doubt");
        let found = [transfer.from, transfer.to].map(|index| final_lists[&index].contains(&tag));
        match found {
            [true, true] => {
                history
                    .txns
                    .push(record(committed.len() + offset, txn, final_audit.start_ns))
            }
            [false, false] => {
                history.aborted_appends.insert((transfer.from as u64, tag));
                history.aborted_appends.insert((transfer.to as u64, tag));
            }
            _ => panic!(
                "seed={seed}: the transfer in doubt with tag {tag} is in one account's writes \
                 only: {transfer:?}"
            ),
        }
    }
    history
}

/// Final balances are the first ones moved by every acknowledged transfer and by some subset
/// of the transfers in doubt (each committed or not, as a whole).
fn check_balances(finals: &[i64], acknowledged: &[Transfer], unsure: &[Transfer], seed: u64) {
    let mut expected = vec![BALANCE_FIRST; ACCOUNT_COUNT];
    for t in acknowledged {
        expected[t.from] -= t.amount;
        expected[t.to] += t.amount;
    }
    assert!(
        unsure.len() <= UNSURE_TRANSFERS_MAX,
        "seed={seed}: {} transfers in doubt, more than the {UNSURE_TRANSFERS_MAX} a crash \
         leaves",
        unsure.len()
    );
    let explained = (0u32..1 << unsure.len()).any(|subset| {
        let mut balances = expected.clone();
        for (index, t) in unsure.iter().enumerate() {
            if subset & (1 << index) != 0 {
                balances[t.from] -= t.amount;
                balances[t.to] += t.amount;
            }
        }
        balances == finals
    });
    assert!(
        explained,
        "seed={seed}: final balances {finals:?} are not the first ones moved by the {} \
         acknowledged transfers ({expected:?}) and some of the {} in doubt {unsure:?}: an \
         acknowledged transfer is lost or an aborted one applied",
        acknowledged.len(),
        unsure.len()
    );
}

fn bank_run(schedule: &Schedule) {
    let seed = schedule.seed;
    let mut first = initial_config(schedule.f, schedule.mode);
    let mut cm = start_cm(seed, &mut first);
    let mut cluster = EmbeddedCluster::start_faulty(first, RING_BYTES).expect("start the cluster");
    let creator = cluster.nodes()[0].txn().clone();
    let accounts: Arc<Vec<Addr>> = Arc::new(
        (0..ACCOUNT_COUNT)
            .map(|index| {
                let region = RegionId(1 + (index % PRIMARY_COUNT) as u32);
                create(&creator, region, &account_bytes(BALANCE_FIRST, 0))
            })
            .collect(),
    );
    let coordinators = Arc::new(Coordinators::new(&cluster));
    let stop = Arc::new(AtomicBool::new(false));
    let origin = Instant::now();
    let threads: Vec<_> = (0..THREAD_COUNT)
        .map(|thread_index| {
            let (coordinators, accounts, stop) =
                (coordinators.clone(), accounts.clone(), stop.clone());
            std::thread::spawn(move || {
                bank_client(thread_index, seed, &coordinators, &accounts, origin, &stop)
            })
        })
        .collect();
    play(&mut cluster, &mut cm, &coordinators, schedule, origin);
    coordinators.wait_served_again(seed);
    std::thread::sleep(AFTER_RECOVERY);
    stop.store(true, Relaxed);
    let mut acknowledged = Vec::new();
    let mut unsure = Vec::new();
    let (mut committed, mut in_doubt) = (Vec::new(), Vec::new());
    let (mut audit_count, mut refused_count, mut other_count) = (0, 0, 0);
    for thread in threads {
        let log = thread
            .join()
            .unwrap_or_else(|_| panic!("seed={seed}: a client thread panicked (see above)"))
            .unwrap_or_else(|reason| panic!("seed={seed}: {reason}"));
        acknowledged.extend(log.acknowledged);
        unsure.extend(log.unsure);
        committed.extend(log.committed);
        in_doubt.extend(log.in_doubt);
        audit_count += log.audit_count;
        refused_count += log.refused_count;
        other_count += log.other_count;
    }
    settle(&cluster, seed);
    let reader = cluster.nodes()[0].txn().clone();
    let final_start_ns = nanos_since(origin);
    let mut txn = reader.begin().expect("begin the final audit");
    let final_accounts: Vec<(i64, u64)> = accounts
        .iter()
        .map(|&addr| {
            let bytes = txn
                .read(addr)
                .unwrap_or_else(|e| panic!("seed={seed}: the final audit read {addr}: {e}"));
            account(&bytes).unwrap_or_else(|reason| panic!("seed={seed}: {reason}"))
        })
        .collect();
    txn.commit()
        .unwrap_or_else(|e| panic!("seed={seed}: the final audit did not commit: {e}"));
    committed.push(BankTxn {
        reads: final_accounts
            .iter()
            .enumerate()
            .map(|(index, &(_, tag))| (index, tag))
            .collect(),
        wrote: None,
        start_ns: final_start_ns,
        end_ns: nanos_since(origin),
    });
    let finals: Vec<i64> = final_accounts.iter().map(|&(balance, _)| balance).collect();
    let checking = Instant::now();
    let history = bank_history(&committed, &in_doubt, seed);
    let report = elle::check(&history, true);
    eprintln!(
        "  seed={seed}: the bank's history, checked in {} ms: {report}",
        checking.elapsed().as_millis()
    );
    assert!(
        report.is_valid(),
        "seed={seed}: the bank's history\n{report}"
    );
    eprintln!(
        "  seed={seed}: transfers acknowledged={} in_doubt={} audits={audit_count} \
         refused={refused_count} other={other_count}",
        acknowledged.len(),
        unsure.len()
    );
    assert_eq!(finals.iter().sum::<i64>(), TOTAL, "seed={seed}: {finals:?}");
    assert!(
        finals.iter().all(|&b| b >= 0),
        "seed={seed}: a negative balance: {finals:?}"
    );
    let in_doubt: Vec<Transfer> = unsure.iter().map(|(_, t)| *t).collect();
    check_balances(&finals, &acknowledged, &in_doubt, seed);
    assert!(
        acknowledged.len() >= COMMITTED_MIN,
        "seed={seed}: {} transfers acknowledged, fewer than {COMMITTED_MIN}",
        acknowledged.len()
    );
    assert!(audit_count > 0, "seed={seed}: no audit committed");
    check_identical_replicas(&cluster, seed);
    cluster.stop();
}

/// Bank transfers with audits under seeded crashes (module docs): every committed audit sums
/// to the total, final balances are explained by the acknowledged transfers and some of those
/// in doubt, replicas identical once quiet.
#[test]
fn bank_under_seeded_crashes_keeps_its_total_and_loses_no_transfer() {
    for_seeds("sim_txn_bank", bank_run);
}

// What the simulation found, each reduced to a scenario that fails without the simulation.

/// Found by the simulation, fixed since (list-append, one-sided mode: a slot counted taken by the allocator
/// of a primary that never changed, its header free; reproduced without any crash by
/// reconfigurations alone). A one-sided coordinator on n2 allocates in r2, whose primary is
/// its own node (reserved locally, not tracked per transaction), and writes an object of n1.
/// Its compare-and-swaps locking at n1 are held back while n2 (only) adopts and commits
/// configuration 2, so n2's worker drains and raises the fence of the rings it reads. The LOCK
/// to n1 counted (n1 is still in configuration 1); the LOCK to n2 itself, appended next, reads
/// the newer fence, and the commit stops with `ConfigurationChanged` before `Primary::lock`
/// ran for it. The abort sends
/// ABORT to n2 as a primary the LOCK was sent to, so the local reservation is not among the
/// unsent ones it releases directly, and `Primary::abort` finds nothing held for the
/// transaction and released nothing: the slot stayed reserved for good. Now the coordinator
/// hands its local reservations back as the fence stops it.
#[test]
fn a_one_sided_lock_stopped_by_its_own_nodes_fence_hands_back_its_local_allocation() {
    use acre_engine::fabric::Op;
    use acre_engine::fabric::fault::{Action, Rule};
    let mut cluster = fixture::start_in(CommitMode::OneSided, REGION_BYTES, RING_BYTES, vec![]);
    let n2 = fixture::txn_node(&cluster, 1);
    let here = fixture::region_of(1); // primary n2
    let remote = create(&n2, fixture::region_of(0), b"r0"); // primary n1
    fixture::settle(&cluster);
    let before = n2
        .primary()
        .allocated_addrs(here)
        .expect("n2 is r2's primary");
    let rule = cluster.faults().add(
        Rule::to(NodeId(1), Action::Delay(Duration::from_millis(1000)))
            .from(NodeId(2))
            // Only compare-and-swaps: the locks (an append reads its fence with one too).
            .when(|ops| ops.iter().all(|op| matches!(op, Op::Cas { .. })))
            .times(1),
    );
    let coordinator = n2.clone();
    let committing = std::thread::spawn(move || {
        let mut txn = coordinator.begin().expect("begin");
        let fresh = txn
            .alloc_near(8, Addr::new(here, 0))
            .expect("a slot of n2's own region");
        txn.write(fresh, b"fresh").expect("write");
        txn.write(remote, b"r1").expect("write");
        txn.commit()
    });
    std::thread::sleep(Duration::from_millis(100));
    let newer = crate::reconfiguration::next(cluster.config(), |_| {});
    cluster.adopt_at(NodeId(2), newer.clone()).expect("adopt");
    cluster.commit_at(NodeId(2), newer.id).expect("commit");
    // Until n2's worker has drained, its own LOCK could still lock (and the abort would then
    // find it held): wait for the fence of the ring n2 writes at itself.
    let ring = fixture::replica(&cluster, NodeId(2))
        .txn()
        .fabric()
        .memory()
        .area(acre_engine::channel::ring_area_id(NodeId(2)))
        .expect("n2's ring at itself");
    let deadline = Instant::now() + Duration::from_millis(800);
    while ring.words_at(acre_nvm_log::ring::FENCE_OFFSET as u32, 8)[0].load(Relaxed) < newer.id {
        assert!(Instant::now() < deadline, "n2 did not drain in time");
        std::thread::sleep(Duration::from_millis(1));
    }
    let outcome = committing.join().expect("the commit does not panic");
    assert_eq!(
        cluster.faults().hits(rule),
        1,
        "the locks at n1 were held back"
    );
    assert!(
        matches!(outcome, Err(CommitError::ConfigurationChanged { .. })),
        "{outcome:?}"
    );
    for node in [NodeId(1), NodeId(3)] {
        cluster.adopt_at(node, newer.clone()).expect("adopt");
    }
    for node in [NodeId(1), NodeId(3)] {
        cluster.commit_at(node, newer.id).expect("commit");
    }
    fixture::settle(&cluster);
    assert_eq!(
        n2.primary()
            .allocated_addrs(here)
            .expect("n2 is r2's primary"),
        before,
        "the slot the aborted transaction reserved in n2's own region was not handed back"
    );
    cluster.stop();
}

/// Found by the simulation, fixed since (list-append, message mode: the backup-only n4 crashed while its
/// coordinator threads ran; once quiet, n1 and n2 still held ALLOC reservations of one of its
/// transactions, and the cluster never quiesced). A coordinator on memory node n4 reserves a
/// slot at n1 with an ALLOC request and has sent no LOCK there when n4 crashes. The
/// configuration without n4 is installed and every region recovered, but nothing hands the
/// slot back: transaction recovery looks only at transactions a node keeps records of, and the
/// settlement of slots reserved by a coordinator that is gone looks only at clients
/// (`Serving::find_orphans`, over `config.clients`). n1 kept the reservation for good: its
/// `held_count` never returned to 0 and the slot was never reused. Now a node drained for a
/// configuration hands back the reservations of removed members' transactions it keeps no
/// record of.
#[test]
fn a_removed_memory_node_coordinators_reservations_are_handed_back() {
    let mut cluster = crate::reconfiguration::four_nodes();
    let n4 = fixture::txn_node(&cluster, 3);
    let r1 = RegionId(1); // primary n1
    let mut txn = n4.begin().expect("begin");
    let reserved = txn
        .alloc_near(8, Addr::new(r1, 0))
        .expect("a slot reserved at n1 by an ALLOC request");
    assert_eq!(reserved.region(), r1);
    let n1 = fixture::replica(&cluster, NodeId(1)).txn().clone();
    assert_eq!(n1.primary().allocating(NodeId(4)).len(), 1, "n1 tracks it");
    cluster.fence_member(NodeId(4)); // n4 crashes with the transaction open
    drop(txn); // what its RELEASE would say reaches nobody now
    let mut cm = start_cm(0, &mut cluster.config().as_ref().clone());
    reconfigure_without(&mut cluster, &mut cm, NodeId(4), None);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !n1.primary().allocating(NodeId(4)).is_empty() {
        assert!(
            Instant::now() < deadline,
            "n1 still holds the slot {reserved} that n4's transaction reserved, 5 s after the \
             configuration without n4 recovered: {:?}",
            n1.primary().allocating(NodeId(4))
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fixture::settle(&cluster);
    cluster.stop();
}
