//! The nemesis: faults injected into the cluster's processes on a seeded schedule, each healed
//! after a while.
//!
//! - **kill**: SIGKILL of the targets; healed by `acre cluster up --dir D` on the running
//!   cluster, which rejoins as a new node one the configuration manager removed (or will
//!   remove), or restarts a member in place whose copies are needed ([`Cluster::restore`]).
//! - **pause**: SIGSTOP of the targets, SIGCONT to heal: a process that stops where it is,
//!   holding its locks and leases, and wakes up later believing nothing happened.
//! - **clock**: the targets' clocks (each node process reads its clock through a control file
//!   the harness created, `acre_engine::clock`) jump forward by up to two leases and run
//!   fast or slow; healed by running them at real speed again (the offset stays, as a clock
//!   an operator corrected would).
//! - **bitflip**: the targets stopped (SIGSTOP) for a few milliseconds, well within a lease,
//!   while random bits are flipped in the live part of their log rings, the records between
//!   each ring's head and tail (kept for recovery, or appended and not read yet), then
//!   continued. Every record carries a checksum: a node must refuse the damaged records, and
//!   what they held comes back from the senders and the replicas (records the node had
//!   acknowledged are damaged, so the node fails, its ring is reset, and the CM recovers its
//!   regions as after a kill, docs/failures.md "A damaged ring"). The node is running when its
//!   bits are flipped, so it is its own code that meets the damage (flipping bits in the files
//!   of a killed node would damage files the CM retires once it removes the node). Healed as
//!   a kill: a node that failed meanwhile, or later, is brought back by this heal or the next.
//! - **truncate**: the whole cluster stopped cleanly (`acre cluster down`: every node writes
//!   the block sums of its copies) or, one time in two, killed at once (SIGKILL of every
//!   process: no sums, each copy is vouched for by its objects' own sums), every client let go
//!   first ([`Gate`]); then in the files of
//!   a minority of the nodes (so that every region keeps an intact replica) each region copy
//!   is cut short or has bits flipped, and each ring is cut short or has bits flipped in its
//!   live records; healed by `acre cluster up --dir D`, the whole cluster restarted from its
//!   files: a damaged node must refuse what fails its sums and checksums, and take its regions
//!   from the intact replicas (docs/failures.md "Whole-cluster restart"). The clients connect
//!   again once it is back.
//! - **partition** (tcp, each node in a network namespace: [`crate::netns`]): links between
//!   nodes cut at the bridge, as Jepsen draws them: one node isolated, two halves, a
//!   majorities ring (each node hears a majority, no two the same), or a minority isolated
//!   from the rest; the clients still reach every node. Healed by removing the rules; a node
//!   the configuration manager removed meanwhile is killed and rejoins as a new node
//!   ([`Cluster::restore`]).
//!
//! Targets of the process faults, drawn per fault: one node, a node that is the primary of a
//! region, a minority (fewer than half of the members), or the configuration manager's leader
//! (a standalone CM process, restarted in place by the heal, unless the CM runs in the nodes).
//! A partition's targets are the side cut off (the smaller one), or every node for a ring.

use crate::client::Gate;
use crate::cluster::Cluster;
use crate::history::Fault;
use crate::netns::Grudge;
use acre_engine::addr::{NodeId, RegionId};
use acre_engine::channel::{RING_AREA_BASE, ring_geometry};
use acre_engine::clock::Rate;
use acre_engine::directory::node_area_files;
use acre_nvm_log::random::SplitMix;
use std::fmt;
use std::time::Duration;

/// A nemesis class, as `--nemesis` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Kill,
    Pause,
    Clock,
    Bitflip,
    Truncate,
    Partition,
}

impl Class {
    pub const ALL: [Class; 6] = [
        Class::Kill,
        Class::Pause,
        Class::Clock,
        Class::Bitflip,
        Class::Truncate,
        Class::Partition,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Class::Kill => "kill",
            Class::Pause => "pause",
            Class::Clock => "clock",
            Class::Bitflip => "bitflip",
            Class::Truncate => "truncate",
            Class::Partition => "partition",
        }
    }

    pub fn parse(name: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which processes a fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aim {
    One,
    Primary,
    Minority,
    Leader,
}

/// A fault in force, to be healed.
pub struct Active {
    pub class: Class,
    pub targets: Vec<NodeId>,
    pub fault: Fault,
}

/// Bits flipped per bitflip fault, spread over the live records of the targets' rings.
const BITS_FLIPPED: u64 = 16;
/// How long a bitflip fault keeps its targets stopped before it flips, so that senders append
/// records the targets have not read yet.
const BITFLIP_STOP: Duration = Duration::from_millis(20);

/// Chooses the targets of a fault aimed at `aim`, among the running members.
fn targets(cluster: &Cluster, aim: Aim, rng: &mut SplitMix) -> Vec<NodeId> {
    let running: Vec<NodeId> = cluster.processes().iter().map(|p| p.node).collect();
    let config = cluster.configuration();
    let members: Vec<NodeId> = match &config {
        Some(config) => running
            .iter()
            .copied()
            .filter(|n| config.nodes.contains(n))
            .collect(),
        None => running.clone(),
    };
    let pick = |candidates: &[NodeId], rng: &mut SplitMix| -> Option<NodeId> {
        (!candidates.is_empty()).then(|| candidates[rng.below(candidates.len() as u64) as usize])
    };
    let chosen = match aim {
        Aim::One => pick(&members, rng).into_iter().collect(),
        Aim::Primary => {
            let primaries: Vec<NodeId> = config
                .iter()
                .flat_map(|c| c.regions.iter().map(|p| p.primary))
                .filter(|n| members.contains(n))
                .collect();
            pick(&primaries, rng).into_iter().collect()
        }
        Aim::Minority => {
            let mut left = members.clone();
            let count = (config
                .as_ref()
                .map_or(members.len(), |c| c.nodes.len())
                .saturating_sub(1)
                / 2)
            .max(1);
            let mut chosen = Vec::new();
            while chosen.len() < count && !left.is_empty() {
                chosen.push(left.remove(rng.below(left.len() as u64) as usize));
            }
            chosen
        }
        Aim::Leader => {
            let cms: Vec<NodeId> = cluster.cm_processes().iter().map(|p| p.node).collect();
            match cluster.status() {
                Some(status)
                    if cms.contains(&status.leader) || members.contains(&status.leader) =>
                {
                    vec![status.leader]
                }
                _ => pick(&cms, rng).into_iter().collect(),
            }
        }
    };
    let mut chosen: Vec<NodeId> = chosen;
    chosen.sort();
    chosen
}

fn aim_name(aim: Aim, targets: &[NodeId]) -> String {
    let names: Vec<String> = targets.iter().map(|n| n.to_string()).collect();
    let what = match aim {
        Aim::One => "a node",
        Aim::Primary => "a primary",
        Aim::Minority => "a minority",
        Aim::Leader => "the CM leader",
    };
    format!("{} ({what})", names.join(" "))
}

/// Starts a fault of `class`; `None` when no process could be targeted.
pub fn start(
    cluster: &Cluster,
    class: Class,
    lease: Duration,
    gate: &Gate,
    rng: &mut SplitMix,
) -> Result<Option<Active>, String> {
    if class == Class::Partition {
        return partition(cluster, rng);
    }
    if class == Class::Truncate {
        return truncate(cluster, gate, rng);
    }
    let aim = [Aim::One, Aim::Primary, Aim::Minority, Aim::Leader][rng.below(4) as usize];
    let targets = targets(cluster, aim, rng);
    if targets.is_empty() {
        return Ok(None);
    }
    let who = aim_name(aim, &targets);
    let detail = match class {
        Class::Kill => {
            for &node in &targets {
                cluster.signal(node, acre_engine::signal::kill)?;
            }
            format!("SIGKILL of {who}")
        }
        Class::Pause => {
            for &node in &targets {
                cluster.signal(node, acre_engine::signal::pause)?;
            }
            format!("SIGSTOP of {who}")
        }
        Class::Clock => {
            let jump = Duration::from_millis(rng.below(2 * lease.as_millis() as u64 + 1));
            let ppm = [250_000, 500_000, 2_000_000, 4_000_000][rng.below(4) as usize];
            let mut skewed = Vec::new();
            for &node in &targets {
                // A node that joined after the start has no control file: it keeps real time.
                if let Some(clock) = cluster.clock(node) {
                    clock.jump_forward(jump);
                    clock.set_rate(Rate::from_ppm(ppm));
                    skewed.push(node.to_string());
                }
            }
            if skewed.is_empty() {
                return Ok(None);
            }
            format!(
                "clocks of {who} {} ms ahead, running at {:.2}x (skewed: {})",
                jump.as_millis(),
                ppm as f64 / 1e6,
                skewed.join(" ")
            )
        }
        Class::Bitflip => {
            for &node in &targets {
                cluster.signal(node, acre_engine::signal::pause)?;
            }
            std::thread::sleep(BITFLIP_STOP.min(lease / 4));
            let flipped = flip_ring_bits(cluster, &targets, rng);
            for &node in &targets {
                // Continued whatever the flips did: a target left stopped would be a pause.
                let _ = cluster.signal(node, acre_engine::signal::resume);
            }
            format!("{who} stopped while {}", flipped?)
        }
        Class::Partition | Class::Truncate => unreachable!("drawn by their own functions"),
    };
    let fault = Fault {
        class: class.name().into(),
        targets: targets.iter().map(|n| u32::from(n.0)).collect(),
        detail,
    };
    Ok(Some(Active {
        class,
        targets,
        fault,
    }))
}

/// Cuts the running members apart by a grudge drawn from `rng`.
fn partition(cluster: &Cluster, rng: &mut SplitMix) -> Result<Option<Active>, String> {
    let network = cluster
        .network()
        .ok_or("the partition nemesis needs the nodes in network namespaces")?;
    let mut members: Vec<NodeId> = targets_all(cluster);
    if members.len() < 2 {
        return Ok(None);
    }
    // Shuffled, so that sides and ring order are drawn too.
    for i in (1..members.len()).rev() {
        members.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let names = |nodes: &[NodeId]| {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        let names: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
        names.join(" ")
    };
    let (grudge, mut targets, detail) = match rng.below(4) {
        0 => {
            let (one, rest) = members.split_first().expect("two members or more");
            (
                Grudge::One(*one, rest.to_vec()),
                vec![*one],
                format!("partition: {one} isolated from {}", names(rest)),
            )
        }
        1 => {
            let (small, large) = members.split_at(members.len() / 2);
            (
                Grudge::Halves(small.to_vec(), large.to_vec()),
                small.to_vec(),
                format!("partition: halves {} | {}", names(small), names(large)),
            )
        }
        2 => {
            let ring = members.clone();
            let heard: Vec<String> = ring
                .iter()
                .enumerate()
                .map(|(position, node)| {
                    let heard = Grudge::ring_heard(ring.len(), position)
                        .into_iter()
                        .map(|p| ring[p])
                        .collect::<Vec<_>>();
                    format!("{node} hears {}", names(&heard))
                })
                .collect();
            (
                Grudge::MajoritiesRing(ring.clone()),
                ring,
                format!("partition: majorities ring ({})", heard.join("; ")),
            )
        }
        _ => {
            let count = ((members.len() - 1) / 2).max(1);
            let (minority, rest) = members.split_at(count);
            (
                Grudge::Minority(minority.to_vec(), rest.to_vec()),
                minority.to_vec(),
                format!(
                    "partition: minority {} isolated from {}",
                    names(minority),
                    names(rest)
                ),
            )
        }
    };
    network.partition(&grudge.drops())?;
    targets.sort();
    Ok(Some(Active {
        class: Class::Partition,
        fault: Fault {
            class: Class::Partition.name().into(),
            targets: targets.iter().map(|n| u32::from(n.0)).collect(),
            detail,
        },
        targets,
    }))
}

/// The running members (every running node before the CM's first configuration).
fn targets_all(cluster: &Cluster) -> Vec<NodeId> {
    let running: Vec<NodeId> = cluster.processes().iter().map(|p| p.node).collect();
    match cluster.configuration() {
        Some(config) => running
            .into_iter()
            .filter(|n| config.nodes.contains(n))
            .collect(),
        None => running,
    }
}

/// Flips [`BITS_FLIPPED`] random bits in the live records of `targets`' ring files, those
/// between each ring's head and tail (their processes are stopped: nothing moves either).
/// Says what it flipped.
fn flip_ring_bits(
    cluster: &Cluster,
    targets: &[NodeId],
    rng: &mut SplitMix,
) -> Result<String, String> {
    let mut rings = Vec::new();
    for &node in targets {
        let files = node_area_files(cluster.dir(), node)
            .map_err(|e| format!("list {node}'s files: {e}"))?;
        for (area, path) in files {
            if area.0 < RING_AREA_BASE {
                continue;
            }
            let live = LiveRecords::of(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if live.bytes > 0 {
                rings.push(live);
            }
        }
    }
    if rings.is_empty() {
        return Ok("no ring held a live record: nothing flipped".into());
    }
    let mut flipped = 0;
    for _ in 0..BITS_FLIPPED {
        let ring = &rings[rng.below(rings.len() as u64) as usize];
        let pos = ring.head + rng.below(ring.bytes);
        ring.flip(pos, rng.below(8) as u8)
            .map_err(|e| format!("flip a bit in {}: {e}", ring.path.display()))?;
        flipped += 1;
    }
    let bytes: u64 = rings.iter().map(|r| r.bytes).sum();
    Ok(format!(
        "{flipped} bits flipped in the {bytes} live record bytes of {} rings",
        rings.len()
    ))
}

/// The live part of a ring file: the records from its head (the oldest kept) to its tail.
struct LiveRecords {
    path: std::path::PathBuf,
    geometry: acre_nvm_log::ring::RingGeometry,
    head: u64,
    bytes: u64,
}

impl LiveRecords {
    fn of(path: &std::path::Path) -> Result<LiveRecords, String> {
        use acre_nvm_log::ring::{HEAD_OFFSET, TAIL_OFFSET, decode_pos_word};
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let geometry = ring_geometry(bytes.len() as u64).map_err(|e| e.to_string())?;
        let position = |offset: u64| -> Result<u64, String> {
            let at = offset as usize;
            let word = bytes
                .get(at..at + 8)
                .ok_or("the file is shorter than a ring header")?;
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            decode_pos_word(word, offset).map_err(|e| e.to_string())
        };
        let head = position(HEAD_OFFSET)?;
        let tail = position(TAIL_OFFSET)?;
        Ok(LiveRecords {
            path: path.to_path_buf(),
            geometry,
            head,
            // A tail behind the head (a damaged word) leaves nothing to flip.
            bytes: tail.saturating_sub(head).min(geometry.capacity),
        })
    }

    /// Flips bit `bit` of the byte at ring position `pos`.
    fn flip(&self, pos: u64, bit: u8) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        flip_bit_at(&file, self.geometry.offset_of(pos), bit)
    }
}

/// How long the truncate nemesis waits for every client to let go before it gives up.
const CLIENTS_LET_GO_MAX: Duration = Duration::from_secs(30);

/// Stops the whole cluster cleanly or kills it, once every client let go of it, and damages the
/// files of a minority of its nodes.
fn truncate(cluster: &Cluster, gate: &Gate, rng: &mut SplitMix) -> Result<Option<Active>, String> {
    let aim = [Aim::One, Aim::Primary, Aim::Minority][rng.below(3) as usize];
    let targets = targets(cluster, aim, rng);
    if targets.is_empty() || !cluster.whole() {
        return Ok(None);
    }
    if !gate.close(CLIENTS_LET_GO_MAX) {
        return Err(format!(
            "the clients did not let go of the cluster within {CLIENTS_LET_GO_MAX:?}: not stopped"
        ));
    }
    let who = aim_name(aim, &targets);
    let config = cluster.configuration();
    // Stopped cleanly (every copy's block sums written) or killed at once (none: each copy is
    // vouched for by its objects' own sums).
    let killed = rng.below(2) == 0;
    let stopped = if killed {
        cluster.kill_all()
    } else {
        cluster.down()
    };
    if let Err(e) = stopped {
        gate.open();
        return Err(e);
    }
    // From here on the fault is in force whatever happens: its heal starts the cluster again
    // and opens the gate.
    let mut damage = Vec::new();
    for &node in &targets {
        let copies: Vec<RegionId> = config
            .iter()
            .flat_map(|c| c.replicated_on(node).map(|p| p.region))
            .collect();
        let files = match node_area_files(cluster.dir(), node) {
            Ok(files) => files,
            Err(e) => {
                damage.push(format!("{node}: its files could not be listed: {e}"));
                continue;
            }
        };
        // (cut, flipped, left alone, failed) for the copies, then for the rings.
        let mut counts = [[0usize; 4]; 2];
        let mut failures = Vec::new();
        for (area, path) in files {
            let (kind, done) = if area.0 >= RING_AREA_BASE {
                (1, damage_ring(&path, rng))
            } else if copies.contains(&area) {
                (0, damage_copy(&path, rng).map_err(|e| e.to_string()))
            } else {
                continue;
            };
            let slot = match done {
                Ok(Damage::Cut) => 0,
                Ok(Damage::Flipped) => 1,
                Ok(Damage::LeftAlone) => 2,
                Err(e) => {
                    failures.push(format!("{}: {e}", path.display()));
                    3
                }
            };
            counts[kind][slot] += 1;
        }
        let [copy, ring] = counts;
        damage.push(format!(
            "{node}: region copies {} cut, {} with {BITS_FLIPPED} bits flipped; rings {} cut, \
             {} with {BITS_FLIPPED} bits flipped in their live records, {} without any{}",
            copy[0],
            copy[1],
            ring[0],
            ring[1],
            ring[2],
            if failures.is_empty() {
                String::new()
            } else {
                format!("; not damaged: {}", failures.join(", "))
            }
        ));
    }
    let detail = format!(
        "the cluster {}, then the files of {who} damaged ({})",
        if killed {
            "killed (SIGKILL of every process)"
        } else {
            "stopped"
        },
        damage.join("; ")
    );
    let fault = Fault {
        class: Class::Truncate.name().into(),
        targets: targets.iter().map(|n| u32::from(n.0)).collect(),
        detail,
    };
    Ok(Some(Active {
        class: Class::Truncate,
        targets,
        fault,
    }))
}

/// What was done to a file.
enum Damage {
    Cut,
    Flipped,
    LeftAlone,
}

/// Cuts a region copy file short at a random length, or flips [`BITS_FLIPPED`] random bits in
/// it.
fn damage_copy(path: &std::path::Path, rng: &mut SplitMix) -> std::io::Result<Damage> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(Damage::LeftAlone);
    }
    if rng.below(2) == 0 {
        file.set_len(rng.below(len))?;
        return Ok(Damage::Cut);
    }
    for _ in 0..BITS_FLIPPED {
        flip_bit_at(&file, rng.below(len), rng.below(8) as u8)?;
    }
    Ok(Damage::Flipped)
}

/// Cuts a ring file short somewhere in its records (its header stays whole), or flips
/// [`BITS_FLIPPED`] random bits in its live records (none when it has none).
fn damage_ring(path: &std::path::Path, rng: &mut SplitMix) -> Result<Damage, String> {
    let live = LiveRecords::of(path)?;
    if rng.below(2) == 0 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        let len = file.metadata().map_err(|e| e.to_string())?.len();
        let header = acre_nvm_log::ring::DATA_OFFSET;
        if len <= header {
            return Ok(Damage::LeftAlone);
        }
        file.set_len(header + rng.below(len - header))
            .map_err(|e| e.to_string())?;
        return Ok(Damage::Cut);
    }
    if live.bytes == 0 {
        return Ok(Damage::LeftAlone);
    }
    for _ in 0..BITS_FLIPPED {
        live.flip(live.head + rng.below(live.bytes), rng.below(8) as u8)
            .map_err(|e| e.to_string())?;
    }
    Ok(Damage::Flipped)
}

/// Flips bit `bit` of the byte at `offset` of `file`.
fn flip_bit_at(file: &std::fs::File, offset: u64, bit: u8) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset)?;
    byte[0] ^= 1 << bit;
    file.write_all_at(&byte, offset)
}

/// Heals `active`, then brings back any member whose process is gone (a killed one, or a
/// paused one the configuration manager fenced by killing it meanwhile, or every one after a
/// truncate fault, whose clients may then connect again).
pub fn heal(cluster: &Cluster, active: &Active, gate: &Gate) -> Result<(), String> {
    if active.class == Class::Truncate {
        let restored = cluster.restore();
        gate.open();
        return restored;
    }
    match active.class {
        Class::Kill | Class::Bitflip | Class::Truncate => {}
        Class::Pause => {
            for &node in &active.targets {
                // A paused process fenced meanwhile is gone: nothing to wake.
                let _ = cluster.signal(node, acre_engine::signal::resume);
            }
        }
        Class::Clock => {
            for &node in &active.targets {
                if let Some(clock) = cluster.clock(node) {
                    clock.set_rate(Rate::REAL);
                }
            }
        }
        Class::Partition => {
            if let Some(network) = cluster.network() {
                network.heal()?;
            }
        }
    }
    cluster.restore()
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_nvm_log::ring::{DATA_OFFSET, HEAD_OFFSET, TAIL_OFFSET, encode_pos_word};
    use std::os::unix::fs::FileExt;

    /// A ring file of `capacity` data bytes, all zero, whose head and tail words say `head`
    /// and `tail`.
    fn ring_file(dir: &std::path::Path, capacity: u64, head: u64, tail: u64) -> std::path::PathBuf {
        let path = dir.join("ring");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(DATA_OFFSET + capacity).unwrap();
        file.write_all_at(&encode_pos_word(head).to_le_bytes(), HEAD_OFFSET)
            .unwrap();
        file.write_all_at(&encode_pos_word(tail).to_le_bytes(), TAIL_OFFSET)
            .unwrap();
        path
    }

    #[test]
    fn the_bits_flipped_are_in_the_records_between_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 64 * 1024;
        // A ring that wrapped: its live records run past the end of the media.
        let (head, tail) = (capacity - 256, capacity + 512);
        let path = ring_file(dir.path(), capacity, head, tail);
        let live = LiveRecords::of(&path).unwrap();
        assert_eq!((live.head, live.bytes), (head, 768));
        let mut rng = SplitMix::new(7);
        for _ in 0..200 {
            live.flip(live.head + rng.below(live.bytes), rng.below(8) as u8)
                .unwrap();
        }
        let bytes = std::fs::read(&path).unwrap();
        let data = &bytes[DATA_OFFSET as usize..];
        let changed: Vec<usize> = (0..data.len()).filter(|&i| data[i] != 0).collect();
        assert!(!changed.is_empty());
        let live_offset = |i: usize| {
            let i = i as u64;
            i >= head % capacity || i < tail % capacity
        };
        assert!(changed.iter().all(|&i| live_offset(i)), "{changed:?}");
    }

    #[test]
    fn a_ring_with_nothing_live_or_a_damaged_position_gives_nothing_to_flip() {
        let dir = tempfile::tempdir().unwrap();
        let empty = ring_file(dir.path(), 4096, 1024, 1024);
        assert_eq!(LiveRecords::of(&empty).unwrap().bytes, 0);
        let behind = ring_file(dir.path(), 4096, 2048, 1024);
        assert_eq!(LiveRecords::of(&behind).unwrap().bytes, 0);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&behind)
            .unwrap();
        file.write_all_at(&[0xff; 8], TAIL_OFFSET).unwrap();
        assert!(LiveRecords::of(&behind).is_err());
    }
}
