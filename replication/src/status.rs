//! A node's status area, and what `acre cluster status` learns of a node.
//!
//! Every node registers a small status area next to its reply area. Its worker writes three
//! things there: a heartbeat, a counter it advances on every turn of its loop (at least every
//! `IDLE_SLEEP_MAX`, 200 ms, when idle); what it settled since the node started
//! ([`SettledCounts`]: transactions recovered after reconfigurations, committed and aborted,
//! regions recovered as their new primary, a dead client's transactions); and, per ring, how many
//! records it keeps and the oldest of them with its transaction (the worker's `Retention`).
//! Nothing there is durable or needed by the protocol; it is there to be looked at.
//!
//! An observer ([`observe`]) learns of each node of a cluster on this host:
//! - whether it answers: two one-sided READs of the heartbeat over the node's own transport,
//!   [`PROBE_INTERVAL`] apart, within [`PROBE_TIMEOUT`]. Over tcp the READs go through the node's
//!   NIC thread; over shm they read its mapped file, so only the heartbeat moving tells a live
//!   worker from a stopped or stuck one. A pid is never taken as an answer.
//! - each ring's fill, from the ring's header in its file in the cluster directory, and the
//!   retention the worker last published, from the status area's file: both without the node's
//!   help, so a stopped or killed node's pinned rings show too.
//! - what its worker settled, from the same file ([`read_settled`] for one node).
//!
//! Layout (8-byte words, little-endian, written with atomic stores):
//!
//! ```text
//! word 0  magic "ACRESTAT"
//! word 1  heartbeat
//! word 2  table version: odd while the worker rewrites the table (a seqlock)
//! word 3  ring count n
//! word 4 .. 10: settled counts: recovered committed, recovered aborted, regions recovered,
//!               orphans aborted, orphans installed, orphans truncated, orphans left
//! word 11 + 6i .. : ring i: sender node, records kept, position of the oldest kept record,
//!                  and its transaction: configuration, node << 16 | slot, sequence
//! ```

use crate::POISONED;
use crate::cluster_file::ClusterFile;
use crate::process::process_alive;
use acre_engine::addr::{Addr, NodeId, RegionId};
use acre_engine::channel::RING_AREA_BASE;
use acre_engine::directory::{AreaKind, NodeManifest};
use acre_engine::fabric::Fabric;
use acre_engine::fabric::doorbell::Doorbell;
use acre_engine::fabric::memory::NodeMemory;
use acre_engine::fabric::transport_kind::{self, NodeNic};
use acre_engine::region::Region;
use acre_nvm_log::RingGeometry;
use acre_nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
use acre_txn::backoff::Backoff;
use acre_txn::config::REPLY_AREA_ID_MIN;
use acre_txn::record::TxnId;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// The area id of every node's status area (right after the reply area's).
pub const STATUS_AREA_ID: RegionId = RegionId(REPLY_AREA_ID_MIN + 1);
/// "ACRESTAT", little-endian, in word 0.
pub const STATUS_MAGIC: u64 = u64::from_le_bytes(*b"ACRESTAT");
const MAGIC_WORD: usize = 0;
const HEARTBEAT_WORD: usize = 1;
const VERSION_WORD: usize = 2;
const RING_COUNT_WORD: usize = 3;
const SETTLED_WORD: usize = 4;
const SETTLED_WORDS: usize = 7;
const TABLE_WORD: usize = SETTLED_WORD + SETTLED_WORDS;
const ENTRY_WORDS: usize = 6;
/// Byte offset of the heartbeat, what a probe READs.
pub const HEARTBEAT_OFFSET: u32 = (HEARTBEAT_WORD * 8) as u32;
/// Times a reader tries for a table the worker is not rewriting at that moment.
const READ_ATTEMPTS_MAX: u32 = 100;

/// How long an observer waits between its two READs of a heartbeat: three of the worker's idle
/// wake-ups, so a live worker has advanced it.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(600);
/// How long an observer waits for a node to answer both READs.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(2600);
/// The node id an observer's fabric uses: `acre cluster up` never gives it to a member, and the
/// tcp fence leaves it alone, so several `acre cluster status` may run at once.
pub const OBSERVER: NodeId = NodeId::OBSERVER;

/// Bytes of the status area of a node with `rings` rings (a whole number of pages).
pub fn status_area_bytes(rings: usize) -> u64 {
    let bytes = ((TABLE_WORD + ENTRY_WORDS * rings) * 8) as u64;
    bytes.div_ceil(4096) * 4096
}

/// What a worker keeps of one ring, as published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingRetention {
    pub sender: NodeId,
    /// Records of the ring the worker keeps (for recovery, until their transaction is
    /// truncated or aborted).
    pub kept_count: u64,
    /// The oldest of them: its position in the ring and its transaction. It pins the ring's head.
    pub oldest: Option<(u64, TxnId)>,
}

/// What a node's worker settled since the node started, as its status area shows it
/// (`WorkerStats` in `crate::worker` keeps the counters; docs/failures.md#transaction-recovery and
/// #a-client-that-dies say what is settled). A transaction is counted by every node that
/// settled its part: a recovered commit by each primary that installed it, an abort by each
/// node that held its records; one that writes a single region is counted once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledCounts {
    /// Transactions needing recovery after a reconfiguration that this node installed.
    pub recovered_committed: u64,
    /// Transactions needing recovery after a reconfiguration that this node aborted.
    pub recovered_aborted: u64,
    /// Regions this node recovered as their new primary.
    pub regions_recovered: u64,
    /// Transactions of dead coordinators (a dead client's, or recovered ones) aborted here.
    pub orphans_aborted: u64,
    /// ... installed here from their LOCK or COMMIT-BACKUP.
    pub orphans_installed: u64,
    /// ... truncated here (every primary held COMMIT-PRIMARY).
    pub orphans_truncated: u64,
    /// ... left to an operator (votes that make no sense).
    pub orphans_left: u64,
}

impl SettledCounts {
    fn words(&self) -> [u64; SETTLED_WORDS] {
        [
            self.recovered_committed,
            self.recovered_aborted,
            self.regions_recovered,
            self.orphans_aborted,
            self.orphans_installed,
            self.orphans_truncated,
            self.orphans_left,
        ]
    }

    fn from_words(words: [u64; SETTLED_WORDS]) -> SettledCounts {
        let [
            recovered_committed,
            recovered_aborted,
            regions_recovered,
            orphans_aborted,
            orphans_installed,
            orphans_truncated,
            orphans_left,
        ] = words;
        SettledCounts {
            recovered_committed,
            recovered_aborted,
            regions_recovered,
            orphans_aborted,
            orphans_installed,
            orphans_truncated,
            orphans_left,
        }
    }

    /// What `self` counts beyond `earlier` (the same node's, read before): counters only grow,
    /// and one that went back (another run of the node) counts from zero.
    pub fn since(&self, earlier: &SettledCounts) -> SettledCounts {
        let words = self.words();
        let before = earlier.words();
        SettledCounts::from_words(std::array::from_fn(|i| {
            words[i].checked_sub(before[i]).unwrap_or(words[i])
        }))
    }

    /// The sum of `self` and `other`, counter by counter.
    pub fn plus(&self, other: &SettledCounts) -> SettledCounts {
        let (a, b) = (self.words(), other.words());
        SettledCounts::from_words(std::array::from_fn(|i| a[i].saturating_add(b[i])))
    }
}

/// What a status area says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub heartbeat: u64,
    pub settled: SettledCounts,
    pub rings: Vec<RingRetention>,
}

/// Why a status area could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatusError {
    #[error("the status area has no magic (found {found:#018x}): not a status area")]
    BadMagic { found: u64 },
    #[error("the status area lists {rings} rings but holds {capacity}: it is damaged")]
    RingCount { rings: u64, capacity: usize },
    #[error("the worker rewrote the status table through {attempts} reads in a row")]
    Busy { attempts: u32 },
}

/// The writing side: the worker's.
pub struct StatusArea {
    region: Arc<Region>,
    /// Senders in table order.
    senders: Vec<NodeId>,
}

impl StatusArea {
    /// Lays out `region` (registered as [`STATUS_AREA_ID`], at least
    /// [`status_area_bytes`]`(senders.len())` long) for one ring per sender, none keeping anything.
    pub fn new(region: Arc<Region>, senders: &[NodeId]) -> StatusArea {
        assert_eq!(region.id(), STATUS_AREA_ID, "status area id");
        assert!(
            region.len() >= status_area_bytes(senders.len()),
            "status area of {} bytes for {} rings",
            region.len(),
            senders.len()
        );
        let area = StatusArea {
            region,
            senders: senders.to_vec(),
        };
        let words = area.region.words();
        words[RING_COUNT_WORD].store(senders.len() as u64, Ordering::Release);
        area.write_table(senders.iter().map(|&sender| RingRetention {
            sender,
            kept_count: 0,
            oldest: None,
        }));
        words[MAGIC_WORD].store(STATUS_MAGIC, Ordering::Release);
        area
    }

    /// The senders whose rings the table lists, in order.
    pub fn senders(&self) -> &[NodeId] {
        &self.senders
    }

    /// One more turn of the worker's loop.
    pub fn beat(&self) {
        self.region.words()[HEARTBEAT_WORD].fetch_add(1, Ordering::Release);
    }

    /// Publishes what the worker settled so far. Each counter is a word of its own, stored
    /// atomically; a reader may see one counter's newer value with another's older one.
    pub fn publish_settled(&self, settled: &SettledCounts) {
        let words = self.region.words();
        for (word, value) in words[SETTLED_WORD..TABLE_WORD].iter().zip(settled.words()) {
            word.store(value, Ordering::Release);
        }
    }

    /// Publishes what the worker keeps of each ring, in [`StatusArea::senders`] order.
    pub fn publish(&self, rings: impl Iterator<Item = RingRetention>) {
        self.write_table(rings);
    }

    fn write_table(&self, rings: impl Iterator<Item = RingRetention>) {
        let words = self.region.words();
        let version = words[VERSION_WORD].load(Ordering::Relaxed);
        assert!(version.is_multiple_of(2), "status table version {version}");
        words[VERSION_WORD].store(version + 1, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let mut written = 0;
        for (index, ring) in rings.enumerate() {
            assert_eq!(
                ring.sender, self.senders[index],
                "ring {index} of the status table"
            );
            let (pos, txn) = ring.oldest.map_or((0, None), |(pos, txn)| (pos, Some(txn)));
            let entry = [
                ring.sender.0 as u64,
                ring.kept_count,
                pos,
                txn.map_or(0, |t| t.config),
                txn.map_or(0, |t| (t.node.0 as u64) << 16 | t.thread as u64),
                txn.map_or(0, |t| t.seq),
            ];
            let at = TABLE_WORD + ENTRY_WORDS * index;
            for (word, value) in words[at..at + ENTRY_WORDS].iter().zip(entry) {
                word.store(value, Ordering::Relaxed);
            }
            written += 1;
        }
        assert_eq!(written, self.senders.len(), "status table rings");
        words[VERSION_WORD].store(version + 2, Ordering::Release);
    }

    /// What the area says now.
    pub fn read(&self) -> Result<NodeStatus, StatusError> {
        read_status(self.region.words())
    }
}

/// Reads a status area from its words (a mapping of its file, or the area itself), retrying
/// while the worker rewrites the table.
pub fn read_status(words: &[AtomicU64]) -> Result<NodeStatus, StatusError> {
    let magic = words[MAGIC_WORD].load(Ordering::Acquire);
    if magic != STATUS_MAGIC {
        return Err(StatusError::BadMagic { found: magic });
    }
    let count = words[RING_COUNT_WORD].load(Ordering::Acquire);
    let capacity = (words.len() - TABLE_WORD) / ENTRY_WORDS;
    if count > capacity as u64 {
        return Err(StatusError::RingCount {
            rings: count,
            capacity,
        });
    }
    // The worker may be rewriting the table, and on shared cores be descheduled half-way:
    // retries give it the CPU rather than spin through every attempt at once.
    let mut backoff = Backoff::poll();
    for attempt in 0..READ_ATTEMPTS_MAX {
        if attempt > 0 {
            backoff.wait();
        }
        let before = words[VERSION_WORD].load(Ordering::Acquire);
        if !before.is_multiple_of(2) {
            continue;
        }
        let rings = (0..count as usize)
            .map(|index| {
                let at = TABLE_WORD + ENTRY_WORDS * index;
                let entry: [u64; ENTRY_WORDS] =
                    std::array::from_fn(|i| words[at + i].load(Ordering::Relaxed));
                let [sender, kept_count, pos, config, node_slot, seq] = entry;
                RingRetention {
                    sender: NodeId(sender as u16),
                    kept_count,
                    oldest: (kept_count > 0).then_some((
                        pos,
                        TxnId {
                            config,
                            node: NodeId((node_slot >> 16) as u16),
                            thread: node_slot as u16,
                            seq,
                        },
                    )),
                }
            })
            .collect();
        std::sync::atomic::fence(Ordering::Acquire);
        if words[VERSION_WORD].load(Ordering::Relaxed) == before {
            return Ok(NodeStatus {
                heartbeat: words[HEARTBEAT_WORD].load(Ordering::Acquire),
                settled: read_settled_words(words),
                rings,
            });
        }
    }
    Err(StatusError::Busy {
        attempts: READ_ATTEMPTS_MAX,
    })
}

/// The settled counts of a status area's words.
fn read_settled_words(words: &[AtomicU64]) -> SettledCounts {
    SettledCounts::from_words(std::array::from_fn(|i| {
        words[SETTLED_WORD + i].load(Ordering::Acquire)
    }))
}

/// What the worker of `node` of the cluster in `dir` has settled, from its status area's file
/// (through its manifest): the node need not answer, so a killed node shows what it had
/// settled when it died. `Err` says why the area could not be read.
pub fn read_settled(dir: &Path, file: &ClusterFile, node: NodeId) -> Result<SettledCounts, String> {
    let manifest = NodeManifest::read(dir, node)
        .map_err(|e| format!("the manifest of {node}: {e}"))?
        .ok_or_else(|| format!("{node} has no manifest"))?;
    let area = open_area(dir, file, &manifest, STATUS_AREA_ID)?;
    settled_of(area.words())
}

/// The settled counts of a status area's words, once its magic says it is one.
fn settled_of(words: &[AtomicU64]) -> Result<SettledCounts, String> {
    let magic = words[MAGIC_WORD].load(Ordering::Acquire);
    if magic != STATUS_MAGIC {
        return Err(StatusError::BadMagic { found: magic }.to_string());
    }
    Ok(read_settled_words(words))
}

/// Maps the area `id` of the node `manifest` describes from its file in `dir`.
fn open_area(
    dir: &Path,
    file: &ClusterFile,
    manifest: &NodeManifest,
    id: RegionId,
) -> Result<Region, String> {
    let entry = manifest
        .area(id)
        .ok_or_else(|| format!("its manifest lists no area {id}"))?;
    let key = entry.access_key().map_err(|e| e.to_string())?;
    Region::open_file(dir, manifest.node, id, key, file.map_options())
        .map_err(|e| format!("open {id}: {e}"))
}

/// Whether a node answered a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Both READs came back and the heartbeat moved.
    Up,
    /// The process runs (by its pid) but the node did not answer: why, in words.
    Silent(String),
    /// Its manifest names a process that is gone (killed: it did not withdraw the manifest).
    Dead,
    /// It has no manifest: never started, or stopped cleanly.
    Down,
}

/// One ring of a node as an observer sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingFill {
    pub sender: NodeId,
    /// Bytes between the ring's head and its tail: records not read yet, or kept.
    pub fill_bytes: u64,
    pub capacity_bytes: u64,
    /// Whether any sender ever appended to it.
    pub written: bool,
    /// What the node's worker last published it keeps of the ring, if its status area could be
    /// read.
    pub retention: Option<RingRetention>,
}

/// What an observer learned of one node.
#[derive(Clone, Debug)]
pub struct Observation {
    pub node: NodeId,
    pub manifest: Option<NodeManifest>,
    pub answer: Answer,
    /// The node's rings (from its files), or why they could not be read.
    pub rings: Result<Vec<RingFill>, String>,
    /// What its worker settled (from its status area's file), or why it could not be read.
    pub settled: Result<SettledCounts, String>,
}

/// Observes every memory node of the cluster in `dir`: asks each whether it answers (in
/// parallel, within [`PROBE_TIMEOUT`]) and reads its rings from the cluster files.
pub fn observe(dir: &Path, file: &ClusterFile) -> Vec<Observation> {
    let manifests: Vec<(NodeId, Option<NodeManifest>)> = file
        .config
        .nodes
        .iter()
        .map(|&node| (node, NodeManifest::read(dir, node).ok().flatten()))
        .collect();
    let answers = probe(dir, file, &manifests);
    manifests
        .into_iter()
        .zip(answers)
        .map(|((node, manifest), answer)| {
            let no_manifest = "no manifest: its files cannot be found";
            let (rings, settled) = match &manifest {
                Some(manifest) => (
                    ring_fills(dir, file, manifest),
                    open_area(dir, file, manifest, STATUS_AREA_ID)
                        .and_then(|area| settled_of(area.words())),
                ),
                None => (Err(no_manifest.to_string()), Err(no_manifest.to_string())),
            };
            Observation {
                node,
                manifest,
                answer,
                rings,
                settled,
            }
        })
        .collect()
}

/// Probes the nodes with a live pid at once, each on its own thread; a thread still waiting at
/// the deadline (a tcp handshake with a stopped node lasts seconds) is left behind.
fn probe(
    dir: &Path,
    file: &ClusterFile,
    manifests: &[(NodeId, Option<NodeManifest>)],
) -> Vec<Answer> {
    // The observer's NIC thread (ofi) lives until the answers are in.
    let (fabric, _nic) = match observer_fabric(dir, file) {
        Ok((fabric, nic)) => (Arc::new(fabric), nic),
        Err(reason) => {
            return manifests
                .iter()
                .map(|(_, m)| match m {
                    None => Answer::Down,
                    Some(m) if !process_alive(m.pid) => Answer::Dead,
                    Some(_) => Answer::Silent(format!("cannot ask it: {reason}")),
                })
                .collect();
        }
    };
    let answers: Arc<Mutex<Vec<Option<Answer>>>> =
        Arc::new(Mutex::new(vec![None; manifests.len()]));
    let (done, finished) = mpsc::channel();
    let mut asked = 0;
    for (index, (node, manifest)) in manifests.iter().enumerate() {
        let immediate = match manifest {
            None => Some(Answer::Down),
            Some(m) if !process_alive(m.pid) => Some(Answer::Dead),
            Some(_) => None,
        };
        if let Some(answer) = immediate {
            answers.lock().expect(POISONED)[index] = Some(answer);
            continue;
        }
        let manifest = manifest.clone().expect("a live node has a manifest");
        let (fabric, found, done, node) = (fabric.clone(), answers.clone(), done.clone(), *node);
        let spawned = std::thread::Builder::new()
            .name(format!("acre-probe-{node}"))
            .spawn(move || {
                let answer = ask(&fabric, node, &manifest);
                found.lock().expect(POISONED)[index] = Some(answer);
                let _ = done.send(());
            });
        match spawned {
            Ok(_) => asked += 1,
            Err(e) => {
                answers.lock().expect(POISONED)[index] =
                    Some(Answer::Silent(format!("cannot start a probe thread: {e}")))
            }
        }
    }
    // The observer's clock: a probe is not a node, and reads the system clock.
    let clock = fabric.clock();
    let deadline = clock.now() + PROBE_TIMEOUT;
    let mut answered = 0;
    while answered < asked {
        let left = clock.real_duration_until(deadline);
        if left.is_zero() {
            break;
        }
        match finished.recv_timeout(left) {
            Ok(()) => answered += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let answers = answers.lock().expect(POISONED).clone();
    answers
        .into_iter()
        .zip(manifests)
        .map(|(answer, (_, manifest))| {
            answer.unwrap_or_else(|| {
                let pid = manifest.as_ref().map_or(0, |m| m.pid);
                Answer::Silent(format!(
                    "it did not answer within {PROBE_TIMEOUT:?}{}",
                    stopped_hint(pid)
                ))
            })
        })
        .collect()
}

/// " (its process is stopped)" when the kernel says the process is stopped (SIGSTOP), which
/// explains the silence; nothing otherwise.
fn stopped_hint(pid: u32) -> &'static str {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    match state {
        Some("T") | Some("t") => " (its process is stopped)",
        _ => "",
    }
}

/// Two READs of `node`'s heartbeat, [`PROBE_INTERVAL`] apart.
fn ask(fabric: &Fabric, node: NodeId, manifest: &NodeManifest) -> Answer {
    let Some(area) = manifest.area(STATUS_AREA_ID) else {
        return Answer::Silent("its manifest lists no status area".into());
    };
    let key = match area.access_key() {
        Ok(key) => key,
        Err(e) => return Answer::Silent(format!("its manifest: {e}")),
    };
    if let Err(e) = transport_kind::reach(fabric.transport(), manifest) {
        return Answer::Silent(e);
    }
    let heartbeat = || -> Result<u64, String> {
        let bytes = fabric
            .read(node, Addr::new(STATUS_AREA_ID, HEARTBEAT_OFFSET), key, 8)
            .map_err(|e| e.to_string())?;
        let word: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| format!("a READ of 8 bytes returned {}", bytes.len()))?;
        Ok(u64::from_le_bytes(word))
    };
    let first = match heartbeat() {
        Ok(first) => first,
        Err(e) => return Answer::Silent(e),
    };
    fabric.clock().sleep(PROBE_INTERVAL);
    match heartbeat() {
        Ok(second) if second != first => Answer::Up,
        Ok(_) => Answer::Silent(format!(
            "its worker did not move in {PROBE_INTERVAL:?}{}",
            stopped_hint(manifest.pid)
        )),
        Err(e) => Answer::Silent(e),
    }
}

/// A fabric endpoint for an observer: it registers no memory and reaches the nodes the way
/// they reach each other; with its NIC thread, where its transport has one.
fn observer_fabric(dir: &Path, file: &ClusterFile) -> Result<(Fabric, Option<NodeNic>), String> {
    let doorbell = Doorbell::anonymous().map_err(|e| format!("create a doorbell: {e}"))?;
    let memory = Arc::new(NodeMemory::new(OBSERVER, Arc::new(doorbell)));
    // In network namespaces, on the host's address there (ofi endpoints bound to loopback
    // reach no namespace).
    let listen =
        crate::netns::bind_addr(dir, OBSERVER).map_err(|e| format!("its placement: {e}"))?;
    let (transport, nic) = transport_kind::open_observer(
        dir,
        &file.transport_spec(listen),
        file.map_options(),
        file.config.id,
        &memory,
    )
    .map_err(|e| e.to_string())?;
    Ok((Fabric::new(memory, transport), nic))
}

/// Every ring of the node `manifest` describes, from the files, with what its status area says
/// the worker keeps of each.
fn ring_fills(
    dir: &Path,
    file: &ClusterFile,
    manifest: &NodeManifest,
) -> Result<Vec<RingFill>, String> {
    let open = |id: RegionId| open_area(dir, file, manifest, id);
    let retention = open(STATUS_AREA_ID)
        .ok()
        .and_then(|area| read_status(area.words()).ok());
    let mut fills = Vec::new();
    for entry in manifest.areas.iter().filter(|a| a.kind == AreaKind::Ring) {
        let sender = NodeId((entry.id.0 - RING_AREA_BASE) as u16);
        let ring = open(entry.id)?;
        let (head, tail, geometry) =
            ring_position(&ring).map_err(|e| format!("the ring of {sender}: {e}"))?;
        fills.push(RingFill {
            sender,
            fill_bytes: tail - head,
            capacity_bytes: geometry.capacity,
            written: tail > 0,
            retention: retention
                .as_ref()
                .and_then(|status| status.rings.iter().find(|r| r.sender == sender))
                .copied(),
        });
    }
    Ok(fills)
}

/// A ring's head, tail and shape from its header.
fn ring_position(ring: &Region) -> Result<(u64, u64, RingGeometry), String> {
    let geometry = RingGeometry::read(ring).map_err(|e| e.to_string())?;
    let word = |offset: u64| ring.words_at(offset as u32, 8)[0].load(Ordering::Acquire);
    let head = decode_pos_word(word(HEAD_OFFSET), HEAD_OFFSET).map_err(|e| e.to_string())?;
    let tail = decode_pos_word(word(TAIL_OFFSET), TAIL_OFFSET).map_err(|e| e.to_string())?;
    if tail < head {
        return Err(format!("its tail {tail} is behind its head {head}"));
    }
    Ok((head, tail, geometry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(seq: u64) -> TxnId {
        TxnId {
            config: 3,
            node: NodeId(100),
            thread: 7,
            seq,
        }
    }

    #[test]
    fn what_the_worker_publishes_reads_back() {
        let senders = [NodeId(1), NodeId(2), NodeId(100)];
        let region = Region::anonymous(STATUS_AREA_ID, status_area_bytes(senders.len())).unwrap();
        let area = StatusArea::new(Arc::new(region), &senders);
        let fresh = area.read().unwrap();
        assert_eq!(fresh.heartbeat, 0);
        assert!(
            fresh
                .rings
                .iter()
                .all(|r| r.kept_count == 0 && r.oldest.is_none())
        );
        assert_eq!(fresh.rings.len(), 3);

        area.beat();
        area.beat();
        let rings = [
            RingRetention {
                sender: NodeId(1),
                kept_count: 0,
                oldest: None,
            },
            RingRetention {
                sender: NodeId(2),
                kept_count: 2,
                oldest: Some((4096, txn(1 << 40))),
            },
            RingRetention {
                sender: NodeId(100),
                kept_count: 1,
                oldest: Some((96, txn(9))),
            },
        ];
        area.publish(rings.into_iter());
        let settled = SettledCounts {
            recovered_committed: 3,
            recovered_aborted: 1,
            regions_recovered: 2,
            orphans_aborted: 5,
            orphans_installed: 4,
            orphans_truncated: 6,
            orphans_left: 7,
        };
        area.publish_settled(&settled);
        let read = area.read().unwrap();
        assert_eq!(read.heartbeat, 2);
        assert_eq!(read.rings, rings);
        assert_eq!(read.settled, settled);
        // The counts sit apart from the ring table: rewriting one leaves the other.
        area.publish(rings.into_iter());
        assert_eq!(area.read().unwrap().settled, settled);
        assert_eq!(settled_of(region_words(&area)), Ok(settled));
    }

    fn region_words(area: &StatusArea) -> &[AtomicU64] {
        area.region.words()
    }

    #[test]
    fn settled_counts_since_an_earlier_reading_and_summed() {
        let before = SettledCounts {
            recovered_committed: 2,
            regions_recovered: 1,
            ..SettledCounts::default()
        };
        let after = SettledCounts {
            recovered_committed: 5,
            recovered_aborted: 1,
            regions_recovered: 1,
            ..SettledCounts::default()
        };
        let since = after.since(&before);
        assert_eq!(
            (
                since.recovered_committed,
                since.recovered_aborted,
                since.regions_recovered
            ),
            (3, 1, 0)
        );
        // A node started again counts from zero: what it shows is all new.
        assert_eq!(before.since(&after).recovered_committed, 2);
        assert_eq!(since.plus(&before).recovered_committed, 5);
    }

    #[test]
    fn a_table_being_rewritten_is_not_read_and_a_damaged_area_is_refused() {
        let senders = [NodeId(1)];
        let region = Arc::new(Region::anonymous(STATUS_AREA_ID, 4096).unwrap());
        let area = StatusArea::new(region.clone(), &senders);
        let words = region.words();
        words[VERSION_WORD].fetch_add(1, Ordering::Relaxed);
        assert!(matches!(read_status(words), Err(StatusError::Busy { .. })));
        words[VERSION_WORD].fetch_add(1, Ordering::Relaxed);
        assert!(area.read().is_ok());
        words[RING_COUNT_WORD].store(10_000, Ordering::Relaxed);
        assert!(matches!(
            read_status(words),
            Err(StatusError::RingCount { rings: 10_000, .. })
        ));
        words[MAGIC_WORD].store(0, Ordering::Relaxed);
        assert!(matches!(
            read_status(words),
            Err(StatusError::BadMagic { found: 0 })
        ));
    }
}
