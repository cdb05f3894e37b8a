//! Elle's list-append workload: threads run small transactions of reads and appends on a few
//! lists, and the history they record must be strictly serializable; once the cluster is
//! quiet, every acknowledged append is in its list, no aborted one is, and every object the
//! workload freed is back with its allocator. It runs on an embedded cluster (local transport)
//! and on the runtimes of node processes over shm ([`crate::shm_cluster`]).
//!
//! Each key is a root object holding the address of its list object. An append that would
//! pass the list object's capacity moves the list in the transaction that appends: it
//! allocates a larger object, writes the list there, frees the old object and points the root
//! at the new one. So appends allocate and free all the time, readers follow roots to objects
//! other transactions are freeing, and slots one key's list freed are reused by another's.
//! A transaction that follows a root to a freed object, or to another key's list, has read an
//! inconsistent state: it must not commit, and the workload fails the test if it does.

use crate::fixture::{self, three_nodes};
use crate::shm_cluster::ShmCluster;
use acre_engine::addr::Addr;
use acre_engine::slab::SlabAllocator;
use acre_jepsen::check::elle::{self, EdgeKind, History, MicroOp, TxnRecord};
use acre_nvm_log::random::{ConcurrentSeed, SplitMix};
use acre_replication::EmbeddedCluster;
use acre_txn::record::TxnId;
use acre_txn::{CommitError, Error, Txn, TxnError, TxnNode};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Few keys, so transactions meet on them and the graph has edges to find cycles in; enough
/// that a read of every key (a root and a list object each) reads more than `T_R` at each of
/// the three primaries, so such a transaction validates by VALIDATE messages in message mode
/// and by one batch of re-reads per primary in one-sided mode.
pub(crate) const KEY_COUNT: u64 = 16;
/// One transaction in this many reads every key.
pub(crate) const READ_ALL_ONE_IN: u64 = 16;
/// Client threads; more than the two cores of CI, so transactions interleave.
const THREAD_COUNT: u64 = 4;
const TXNS_PER_THREAD: u64 = 300;
pub(crate) const OPS_PER_TXN_MAX: u64 = 4;
/// A client thread starts no transaction after this long: a slow cluster makes the run
/// shorter (and the richness checks below say if it became too short), never a hang.
const WORKLOAD_TIME_MAX: Duration = Duration::from_secs(15);
/// Elements one list holds. A transaction whose append would pass it aborts instead.
const LIST_LEN_MAX: usize = 400;
/// Elements a key's first list object holds.
const CAPACITY_FIRST: usize = 2;
/// Elements a moved list object holds more than the one it replaces: small, so that lists
/// move every few appends, and the objects stay in a few size classes whose freed slots the
/// next moves reuse.
const CAPACITY_STEP: usize = 4;
/// A root is the little-endian address of its key's list object.
const ROOT_BYTES: usize = 8;
/// A list object is its key (u64), its capacity and its element count (u32 each), then that
/// many elements (u64), all little-endian.
const LIST_HEADER_BYTES: usize = 16;
/// Values are `thread_index * VALUES_PER_THREAD + counter`: unique per key, as Elle needs, and
/// they name the thread that appended them.
pub(crate) const VALUES_PER_THREAD: u64 = 1_000_000;

const _: () = assert!(TXNS_PER_THREAD * OPS_PER_TXN_MAX < VALUES_PER_THREAD);
const _: () = assert!(CAPACITY_FIRST <= LIST_LEN_MAX);

/// A key's list as its list object holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ListObject {
    pub(crate) key: u64,
    pub(crate) capacity: usize,
    pub(crate) list: Vec<u64>,
}

impl ListObject {
    pub(crate) fn object_bytes(capacity: usize) -> usize {
        LIST_HEADER_BYTES + 8 * capacity
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        assert!(
            self.list.len() <= self.capacity,
            "len={} capacity={}",
            self.list.len(),
            self.capacity
        );
        let word = |n: usize| u32::try_from(n).expect("lists are bounded by LIST_LEN_MAX");
        let mut bytes = Vec::with_capacity(ListObject::object_bytes(self.list.len()));
        bytes.extend_from_slice(&self.key.to_le_bytes());
        bytes.extend_from_slice(&word(self.capacity).to_le_bytes());
        bytes.extend_from_slice(&word(self.list.len()).to_le_bytes());
        for value in &self.list {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// The list object in `bytes`, or what is wrong with them: they come back from the
    /// cluster, and a protocol bug could hand back anything.
    fn decode(bytes: &[u8]) -> Result<ListObject, String> {
        let Some((header, rest)) = bytes.split_first_chunk::<LIST_HEADER_BYTES>() else {
            return Err(format!("{} bytes hold no list header", bytes.len()));
        };
        let key = u64::from_le_bytes(header[0..8].try_into().expect("8 bytes"));
        let capacity = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
        let count = u32::from_le_bytes(header[12..16].try_into().expect("4 bytes")) as usize;
        if count > capacity {
            return Err(format!("count {count} passes capacity {capacity}"));
        }
        if rest.len() != 8 * count {
            return Err(format!(
                "count {count} needs {} bytes of elements, found {}",
                8 * count,
                rest.len()
            ));
        }
        let list = rest
            .chunks_exact(8)
            .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
            .collect();
        Ok(ListObject {
            key,
            capacity,
            list,
        })
    }
}

fn decode_root(bytes: &[u8]) -> Result<Addr, String> {
    let word: [u8; ROOT_BYTES] = bytes
        .try_into()
        .map_err(|_| format!("a root of {} bytes", bytes.len()))?;
    Ok(Addr::from_u64(u64::from_le_bytes(word)))
}

/// What the workload needs of a cluster, so the same workload and checks run on every kind.
pub(crate) trait Cluster {
    /// The nodes client threads coordinate transactions on.
    fn txn_nodes(&self) -> Vec<Arc<TxnNode>>;
    /// The memory nodes' coordinators: their `primary()` holds the regions' allocators.
    fn memory_txn_nodes(&self) -> Vec<Arc<TxnNode>>;
    /// Waits until nothing is in flight, then checks every backup copy equals its primary's.
    fn settle(&self);
}

impl Cluster for EmbeddedCluster {
    fn txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        self.nodes().iter().map(|n| n.txn().clone()).collect()
    }

    fn memory_txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        self.txn_nodes()
    }

    fn settle(&self) {
        fixture::settle(self);
        self.check_replicas()
            .unwrap_or_else(|mismatch| panic!("a backup differs from its primary: {mismatch}"));
    }
}

impl Cluster for ShmCluster {
    fn txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        ShmCluster::txn_nodes(self)
    }

    fn memory_txn_nodes(&self) -> Vec<Arc<TxnNode>> {
        ShmCluster::memory_txn_nodes(self)
    }

    fn settle(&self) {
        ShmCluster::settle(self)
    }
}

/// One planned operation; appends carry the value decided before the transaction starts, so a
/// failed attempt's appends are known for the aborted set.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Planned {
    Read { key: u64 },
    Append { key: u64, value: u64 },
}

/// One transaction's plan, drawn from `rng`: now and then a read of every key, otherwise a few
/// reads and appends of random keys, each append of the next of `next_value`.
pub(crate) fn random_plan(rng: &mut SplitMix, next_value: &mut u64) -> Vec<Planned> {
    if rng.below(READ_ALL_ONE_IN) == 0 {
        return read_all();
    }
    (0..rng.range(1, OPS_PER_TXN_MAX))
        .map(|_| {
            let key = rng.below(KEY_COUNT);
            if rng.below(2) == 0 {
                Planned::Read { key }
            } else {
                *next_value += 1;
                Planned::Append {
                    key,
                    value: *next_value,
                }
            }
        })
        .collect()
}

/// A transaction that reads every key.
pub(crate) fn read_all() -> Vec<Planned> {
    (0..KEY_COUNT).map(|key| Planned::Read { key }).collect()
}

/// Why an attempt did not commit.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The cluster refused it in a way that means nothing happened (conflict and the like).
    Retryable(Error),
    /// It followed a root to a freed object or another key's list, and its commit was
    /// refused, as it must be.
    Stale,
    /// An append would pass `LIST_LEN_MAX`; the workload aborted it.
    Full,
    /// The cluster refused it for a reason that is not retried (a participant unreachable,
    /// a region lost) and that means nothing committed. On a cluster where nothing fails
    /// ([`run`]) it is a bug; where nodes crash ([`crate::sim_txn`]) it is expected.
    Refused(Error),
    /// The commit may have happened ([`CommitError::Indeterminate`]): what became of it is
    /// asked later. A bug where nothing fails, as `Refused`.
    Indeterminate(TxnId),
    /// Anything else is a bug.
    Fatal(String),
}

impl From<CommitError> for Failure {
    fn from(e: CommitError) -> Failure {
        match e {
            CommitError::Indeterminate { txn, .. } => Failure::Indeterminate(txn),
            e if e.is_retryable() => Failure::Retryable(Error::Commit(e)),
            e => Failure::Refused(Error::Commit(e)),
        }
    }
}

impl From<TxnError> for Failure {
    fn from(e: TxnError) -> Failure {
        if e.is_retryable() {
            Failure::Retryable(Error::Txn(e))
        } else {
            Failure::Refused(Error::Txn(e))
        }
    }
}

/// What a transaction found by following a key's root.
pub(crate) enum Followed {
    /// The key's list object, at `at`.
    List { at: Addr, object: ListObject },
    /// Not the key's list: the root was read before a move that freed or reused what it
    /// points at.
    Stale(String),
}

/// Reads key `key`'s root and the list object it points at, in `txn`.
pub(crate) fn follow(txn: &mut Txn, roots: &[Addr], key: u64) -> Result<Followed, Failure> {
    let root = roots[key as usize];
    let at = decode_root(&txn.read(root)?)
        .map_err(|reason| Failure::Fatal(format!("key {key}'s root at {root}: {reason}")))?;
    let bytes = match txn.read(at) {
        Ok(bytes) => bytes,
        Err(TxnError::NotFound { .. }) => {
            return Ok(Followed::Stale(format!(
                "key {key}'s root points at {at}, where no object is allocated"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    // Roots and list objects are of different size classes, so an allocated object where a
    // list object was is a list object; and a read is never torn: bytes that are no list
    // object are a bug even in a transaction that will abort.
    let object = ListObject::decode(&bytes)
        .map_err(|reason| Failure::Fatal(format!("key {key}'s list at {at}: {reason}")))?;
    if object.key != key {
        return Ok(Followed::Stale(format!(
            "key {key}'s root points at {at}, which holds key {}'s list",
            object.key
        )));
    }
    Ok(Followed::List { at, object })
}

/// What a committed attempt did.
pub(crate) struct Committed {
    pub(crate) ops: Vec<MicroOp>,
    /// Lists it moved to a new object (allocating it and freeing the old one).
    pub(crate) move_count: u64,
}

/// Runs `plan` as one transaction on `node`.
pub(crate) fn attempt(
    node: &Arc<TxnNode>,
    roots: &[Addr],
    plan: &[Planned],
) -> Result<Committed, Failure> {
    let mut txn = node.begin()?;
    let mut ops = Vec::with_capacity(plan.len());
    let mut move_count = 0;
    for &step in plan {
        let key = match step {
            Planned::Read { key } | Planned::Append { key, .. } => key,
        };
        let (at, mut object) = match follow(&mut txn, roots, key)? {
            Followed::List { at, object } => (at, object),
            Followed::Stale(reason) => {
                // What it read cannot be one moment of the cluster: validation must refuse it.
                return match txn.commit() {
                    Ok(()) => Err(Failure::Fatal(format!(
                        "committed a transaction that read an inconsistent state: {reason}"
                    ))),
                    Err(e) if e.is_retryable() => Err(Failure::Stale),
                    // Validation refuses it before any COMMIT-BACKUP is written, so its
                    // outcome is never in doubt.
                    Err(e @ CommitError::Indeterminate { .. }) => Err(Failure::Fatal(format!(
                        "a transaction that read an inconsistent state may have committed: \
                         {e}; {reason}"
                    ))),
                    Err(e) => Err(e.into()),
                };
            }
        };
        match step {
            Planned::Read { key } => ops.push(MicroOp::Read {
                key,
                list: object.list,
            }),
            Planned::Append { key, value } => {
                if object.list.len() >= LIST_LEN_MAX {
                    return Err(Failure::Full);
                }
                object.list.push(value);
                if object.list.len() <= object.capacity {
                    txn.write(at, &object.encode())?;
                } else {
                    object.capacity += CAPACITY_STEP;
                    let moved_to = txn.alloc(ListObject::object_bytes(object.capacity))?;
                    txn.write(moved_to, &object.encode())?;
                    txn.free(at)?;
                    txn.write(roots[key as usize], &moved_to.to_u64().to_le_bytes())?;
                    move_count += 1;
                }
                ops.push(MicroOp::Append { key, value });
            }
        }
    }
    txn.commit()?;
    Ok(Committed { ops, move_count })
}

/// What one client thread saw.
#[derive(Default)]
struct ThreadLog {
    committed: Vec<TxnRecord>,
    aborted_appends: Vec<(u64, u64)>,
    conflict_count: u64,
    /// Attempts that read a stale root's target and were refused at commit.
    stale_count: u64,
    /// Other retryable refusals (a full log, no free transaction slot).
    busy_count: u64,
    full_count: u64,
    /// List moves of committed transactions.
    move_count: u64,
}

pub(crate) fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).expect("a test runs for less than 584 years")
}

fn client(
    thread_index: u64,
    seed: u64,
    nodes: &[Arc<TxnNode>],
    roots: &[Addr],
    origin: Instant,
) -> Result<ThreadLog, String> {
    // Each thread its own stream, all derived from the one printed seed.
    let mut rng = SplitMix::new(seed ^ (thread_index + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut log = ThreadLog::default();
    let mut next_value = thread_index * VALUES_PER_THREAD;
    for txn_index in 0..TXNS_PER_THREAD {
        if origin.elapsed() > WORKLOAD_TIME_MAX {
            break;
        }
        let node = &nodes[rng.below(nodes.len() as u64) as usize];
        let plan = random_plan(&mut rng, &mut next_value);
        let start_ns = nanos_since(origin);
        let outcome = attempt(node, roots, &plan);
        let end_ns = nanos_since(origin);
        let id = thread_index * VALUES_PER_THREAD + txn_index;
        match outcome {
            Ok(committed) => {
                log.move_count += committed.move_count;
                log.committed.push(TxnRecord {
                    id,
                    ops: committed.ops,
                    start_ns,
                    end_ns,
                });
            }
            Err(Failure::Fatal(reason)) => {
                return Err(format!(
                    "thread {thread_index} T{id} on {}: {reason}",
                    node.node_id()
                ));
            }
            Err(Failure::Refused(e)) => {
                return Err(format!(
                    "thread {thread_index} T{id} on {}: {e}",
                    node.node_id()
                ));
            }
            Err(Failure::Indeterminate(txn)) => {
                return Err(format!(
                    "thread {thread_index} T{id} on {}: the outcome of {txn} is unknown",
                    node.node_id()
                ));
            }
            Err(failure) => {
                match failure {
                    Failure::Full => log.full_count += 1,
                    Failure::Stale => log.stale_count += 1,
                    Failure::Retryable(e) if e.is_conflict() => log.conflict_count += 1,
                    _ => log.busy_count += 1,
                }
                log.aborted_appends
                    .extend(plan.iter().filter_map(|step| match *step {
                        Planned::Append { key, value } => Some((key, value)),
                        Planned::Read { .. } => None,
                    }));
            }
        }
    }
    Ok(log)
}

/// Pairs of committed transactions whose client-side intervals overlap: without them every
/// history would be serial and the check would prove little.
pub(crate) fn overlapping_pair_count(txns: &[TxnRecord]) -> usize {
    let mut by_start: Vec<&TxnRecord> = txns.iter().collect();
    by_start.sort_by_key(|t| t.start_ns);
    let mut count = 0;
    for (i, a) in by_start.iter().enumerate() {
        count += by_start[i + 1..]
            .iter()
            .take_while(|b| b.start_ns <= a.end_ns)
            .count();
    }
    count
}

/// Creates every key's root and first list object, the roots spread over the primaries so
/// commits span nodes.
pub(crate) fn create_keys(nodes: &[Arc<TxnNode>]) -> Vec<Addr> {
    let mut roots = Vec::new();
    for key in 0..KEY_COUNT {
        let node = &nodes[key as usize % nodes.len()];
        let mut txn = node.begin().expect("begin");
        let root = txn.alloc(ROOT_BYTES).expect("alloc a root");
        let object = ListObject {
            key,
            capacity: CAPACITY_FIRST,
            list: Vec::new(),
        };
        let at = txn
            .alloc_near(ListObject::object_bytes(CAPACITY_FIRST), root)
            .expect("alloc a list object");
        txn.write(at, &object.encode()).expect("write a list");
        txn.write(root, &at.to_u64().to_le_bytes())
            .expect("write a root");
        txn.commit().expect("commit a new key");
        roots.push(root);
    }
    roots
}

/// Waits until every allocator of `node`'s primary regions has read its blocks after a
/// failover (docs/failures.md#allocator-recovery: a few milliseconds of the worker's time).
pub(crate) fn wait_allocators_scanned(node: &TxnNode, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let primary = node.primary();
    while primary
        .region_ids()
        .into_iter()
        .any(|region| primary.unscanned_blocks(region) > 0)
    {
        assert!(
            Instant::now() < deadline,
            "seed={seed}: {}'s allocators did not read their blocks within 20 s",
            node.node_id()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Once quiet: what every allocator counts as taken is exactly the roots and the lists they
/// point at (so every object a move freed, and every slot an aborted move reserved, went
/// back), and the object headers of each primary's copy say the same.
pub(crate) fn check_allocators(cluster: &impl Cluster, live: &BTreeSet<Addr>, seed: u64) {
    let mut taken = BTreeSet::new();
    for node in cluster.memory_txn_nodes() {
        wait_allocators_scanned(&node, seed);
        let primary = node.primary();
        for region in primary.region_ids() {
            let allocator = primary
                .allocated_addrs(region)
                .expect("the primary of its own region");
            let copy = primary
                .region(region)
                .expect("the primary holds its region");
            let headers = SlabAllocator::rebuild(&copy, node.config().block_bytes)
                .unwrap_or_else(|e| panic!("seed={seed}: rebuild {region}'s allocator: {e}"))
                .allocated_addrs();
            assert_eq!(
                allocator, headers,
                "seed={seed}: {region}'s allocator and its object headers disagree on what is \
                 allocated"
            );
            taken.extend(allocator);
        }
    }
    let leaked: Vec<&Addr> = taken.difference(live).collect();
    let lost: Vec<&Addr> = live.difference(&taken).collect();
    assert!(
        leaked.is_empty() && lost.is_empty(),
        "seed={seed}: taken but unreachable: {leaked:?}; reachable but free: {lost:?}"
    );
}

/// Runs the workload on `cluster` and checks what it recorded: `name` names the run in the
/// seed line and the output.
fn run(cluster: &impl Cluster, name: &str) {
    // The seed fixes each thread's transactions, not how the threads interleave, which decides
    // the conflicts and what the reads see: a history is not replayed by its seed. A pinned
    // seed may need several runs to fail the same way; `seeded` says so when it prints the seed
    // and again if the test fails.
    let seeded = ConcurrentSeed::new(name);
    let seed = seeded.value();
    let began = Instant::now();
    let nodes = Arc::new(cluster.txn_nodes());
    let roots = Arc::new(create_keys(&cluster.memory_txn_nodes()));

    let origin = Instant::now();
    let threads: Vec<_> = (0..THREAD_COUNT)
        .map(|thread_index| {
            let (nodes, roots) = (nodes.clone(), roots.clone());
            std::thread::spawn(move || client(thread_index, seed, &nodes, &roots, origin))
        })
        .collect();
    let mut history = History::default();
    let mut totals = ThreadLog::default();
    for thread in threads {
        let log = thread
            .join()
            .unwrap_or_else(|_| panic!("seed={seed}: a client thread panicked (see above)"));
        let log = log.unwrap_or_else(|reason| panic!("seed={seed}: {reason}"));
        history.txns.extend(log.committed);
        history.aborted_appends.extend(log.aborted_appends);
        totals.conflict_count += log.conflict_count;
        totals.stale_count += log.stale_count;
        totals.busy_count += log.busy_count;
        totals.full_count += log.full_count;
        totals.move_count += log.move_count;
    }
    let workload_ms = origin.elapsed().as_millis();

    let report = elle::check(&history, true);
    let committed_count = history.txns.len();
    let overlapping_count = overlapping_pair_count(&history.txns);
    let nonempty_read_count = history
        .txns
        .iter()
        .flat_map(|t| &t.ops)
        .filter(|op| matches!(op, MicroOp::Read { list, .. } if !list.is_empty()))
        .count();
    eprintln!(
        "{name}: seed={seed}: committed={committed_count} conflicts={} stale={} busy={} \
         full={} moves={} overlapping_pairs={overlapping_count} \
         nonempty_reads={nonempty_read_count} workload_ms={workload_ms}\n{report}",
        totals.conflict_count,
        totals.stale_count,
        totals.busy_count,
        totals.full_count,
        totals.move_count
    );
    assert!(report.is_valid(), "seed={seed}\n{report}");

    // The verdict means something only if the history is rich: many commits, reads that saw
    // appends, dependencies of every kind, transactions that ran at the same time, and lists
    // that moved (allocations and frees) while others read them.
    let committed_min = (THREAD_COUNT * TXNS_PER_THREAD / 3) as usize;
    assert!(
        committed_count >= committed_min,
        "seed={seed} committed_count={committed_count} committed_min={committed_min}"
    );
    assert!(
        nonempty_read_count >= committed_min / 4,
        "seed={seed} nonempty_read_count={nonempty_read_count} committed_min={committed_min}"
    );
    for kind in [EdgeKind::Ww, EdgeKind::Wr, EdgeKind::Rw] {
        let edge_count = report.edge_count(kind);
        assert!(edge_count > 0, "seed={seed} kind={kind:?} edge_count=0");
    }
    // Runs see about one overlapping pair per commit; a tenth of that is still concurrency.
    let overlapping_min = committed_count / 10;
    assert!(
        overlapping_count >= overlapping_min,
        "seed={seed} overlapping_count={overlapping_count} overlapping_min={overlapping_min}"
    );
    // About one append in CAPACITY_STEP moves its list; a few per key is plenty.
    let move_min = 4 * KEY_COUNT;
    assert!(
        totals.move_count >= move_min,
        "seed={seed} move_count={} move_min={move_min}",
        totals.move_count
    );

    cluster.settle();

    // Once quiet, every acknowledged append is in its list, and no aborted one is.
    let mut final_lists = HashMap::new();
    let mut live = BTreeSet::from_iter(roots.iter().copied());
    let mut txn = nodes[0].begin().expect("begin the final read");
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
    check_appends(&history, &final_lists, seed);
    check_allocators(cluster, &live, seed);
    eprintln!("{name}: took {} ms", began.elapsed().as_millis());
}

/// Once quiet: every acknowledged append of `history` is in its key's final list, and no
/// aborted one is.
pub(crate) fn check_appends(history: &History, final_lists: &HashMap<u64, Vec<u64>>, seed: u64) {
    for txn in &history.txns {
        for op in &txn.ops {
            if let MicroOp::Append { key, value } = op {
                assert!(
                    final_lists[key].contains(value),
                    "seed={seed}: T{}'s acknowledged append of {value} to key {key} is lost",
                    txn.id
                );
            }
        }
    }
    for (key, value) in &history.aborted_appends {
        assert!(
            !final_lists[key].contains(value),
            "seed={seed}: the aborted append of {value} to key {key} is in its list"
        );
    }
}

#[test]
fn list_append_history_is_strictly_serializable() {
    let cluster = three_nodes();
    run(&cluster, "list_append");
    cluster.stop();
}

/// The same workload between node runtimes that reach each other over shm, one of them a
/// client node (which holds no region, so its moves allocate by ALLOC requests).
#[test]
fn list_append_history_is_strictly_serializable_over_shm() {
    let cluster = ShmCluster::start();
    run(&cluster, "list_append_shm");
    cluster.stop();
}
