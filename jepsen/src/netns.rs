//! The harness's network for the partition nemesis: each node process in a network namespace
//! of its own, linked by a veth pair to a bridge in the harness's namespace, which also holds
//! the clients (they connect through the bridge's address); and the nftables table that cuts
//! links between nodes.
//!
//! Run `r` (1 to [`RUN_MAX`]) is named `acrejp<r>`: namespace `acrejp<r>-n<id>` with address
//! `10.77.<r>.<id>/24` (what `acre cluster up --netns acrejp<r> --netns-subnet 10.77.<r>.0`
//! expects), the host side of its veth `acrejp<r>-v<id>`, bridge `acrejp<r>-br` with
//! `10.77.<r>.254`, and table `bridge acrejp<r>`. A run claims its name with a marker file
//! `/run/acre-jepsen/acrejp<r>` holding its pid and start time, and removes everything of its
//! name at its end ([`Network::remove`], also on drop). A harness killed before that leaves
//! them behind: the next run finds every object named `acrejp*` whose marker names no live
//! harness and removes it ([`sweep`]), after killing the processes still in its namespaces
//! (node processes that harness started).
//!
//! The rules are in the bridge's forward hook, so they see frames between node ports only:
//! traffic between a client (this namespace, the bridge's own port) and a node is never cut.

use acre_engine::addr::NodeId;
use acre_engine::procfs;
use acre_replication::netns::NetnsPlacement;
use acre_replication::process::process_alive;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Every object the harness names starts with this.
pub const NAME_PREFIX: &str = "acrejp";
/// Runs at once on one host (each takes a /24 of 10.77.0.0/16).
pub const RUN_MAX: u8 = 250;
/// Where the runs' markers are.
const MARKER_DIR: &str = "/run/acre-jepsen";
/// Where `ip netns add` names namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// Why the harness cannot partition on this host, in one line; `None` when it can (root, with
/// `ip` and `nft`).
pub fn unavailable() -> Option<String> {
    if effective_uid() != Some(0) {
        return Some("network namespaces and nftables need root".into());
    }
    for (tool, version) in [("ip", "-V"), ("nft", "--version")] {
        let found = Command::new(tool)
            .arg(version)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "`{tool}` is not installed (Debian: apt-get install {})",
                if tool == "ip" { "iproute2" } else { "nftables" }
            ));
        }
    }
    None
}

/// This process's effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Runs `program args`; an exit other than 0 is an error with its stderr.
fn command(program: &str, args: &[&str]) -> Result<(), String> {
    run_with_input(program, args, None).map(|_| ())
}

/// Runs `program args` with `input` on its stdin; returns its stdout.
fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {program}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("write to {program}: {e}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| format!("run {program}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A run's name: `acrejp<r>`.
fn run_name(run: u8) -> String {
    format!("{NAME_PREFIX}{run}")
}

/// The run an object name belongs to: `acrejp7-n3` and `acrejp7` are run 7's.
fn run_of(name: &str) -> Option<u8> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// The harness's objects on this host, by kind, found by name.
#[derive(Debug, Default)]
struct Objects {
    namespaces: Vec<String>,
    links: Vec<String>,
    tables: Vec<String>,
}

impl Objects {
    fn find() -> Objects {
        let listing =
            |program: &str, args: &[&str]| run_with_input(program, args, None).unwrap_or_default();
        // `ip netns list`: `name` or `name (id: 3)`.
        let namespaces = (listing("ip", &["netns", "list"]).lines())
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| run_of(n).is_some())
            .map(str::to_string)
            .collect();
        // `ip -o link show`: `12: name@peer: <...> ...`.
        let links = (listing("ip", &["-o", "link", "show"]).lines())
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| run_of(n).is_some())
            .map(str::to_string)
            .collect();
        // `nft list tables`: `table bridge acrejp7`.
        let tables = (listing("nft", &["list", "tables"]).lines())
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some("table")).then(|| {
                    let family = words.next()?;
                    let name = words.next()?;
                    run_of(name).map(|_| format!("{family} {name}"))
                })?
            })
            .collect();
        Objects {
            namespaces,
            links,
            tables,
        }
    }

    fn runs(&self) -> BTreeSet<u8> {
        let table_names = self.tables.iter().filter_map(|t| t.split(' ').nth(1));
        (self.namespaces.iter().map(String::as_str))
            .chain(self.links.iter().map(String::as_str))
            .chain(table_names)
            .filter_map(run_of)
            .collect()
    }
}

fn marker_path(run: u8) -> PathBuf {
    Path::new(MARKER_DIR).join(run_name(run))
}

/// Whether run `run`'s marker names a live process (the harness that made it).
fn owner_alive(run: u8) -> bool {
    let Ok(text) = std::fs::read_to_string(marker_path(run)) else {
        return false;
    };
    let mut words = text.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(started))) = (
        words.next().map(str::parse::<u32>),
        words.next().map(str::parse::<u64>),
    ) else {
        return false;
    };
    process_alive(pid) && procfs::start_time(pid).is_ok_and(|now| now == started)
}

/// Removes what a killed harness left: every object named `acrejp<r>*` whose marker names no
/// live process, and its marker. Returns what it removed, for the run's log.
pub fn sweep() -> Vec<String> {
    let objects = Objects::find();
    let mut removed = Vec::new();
    let mut stale: BTreeSet<u8> = objects.runs();
    // Markers without objects (a harness killed between the marker and its bridge).
    if let Ok(entries) = std::fs::read_dir(MARKER_DIR) {
        stale.extend(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(run_of)),
        );
    }
    stale.retain(|&run| !owner_alive(run));
    for run in stale {
        remove_run(run, &objects);
        removed.push(run_name(run));
    }
    removed
}

/// Removes run `run`'s objects among `objects`: first the processes in its namespaces (a
/// namespace lives on while a process is in it), then its table, namespaces, links and marker.
/// Best effort: what cannot be removed is left for the next sweep.
fn remove_run(run: u8, objects: &Objects) {
    let mine = |name: &&String| run_of(name) == Some(run);
    for namespace in objects.namespaces.iter().filter(mine) {
        kill_processes_in(namespace);
    }
    for table in objects
        .tables
        .iter()
        .filter(|t| t.split(' ').nth(1) == Some(run_name(run).as_str()))
    {
        let mut args = vec!["delete", "table"];
        args.extend(table.split(' '));
        let _ = run_with_input("nft", &args, None);
    }
    for namespace in objects.namespaces.iter().filter(mine) {
        let _ = command("ip", &["netns", "delete", namespace]);
    }
    // The veths went with their namespaces; the bridge, and any veth whose namespace was
    // already gone, are deleted here.
    let links_now = Objects::find().links;
    for link in links_now.iter().filter(mine) {
        let _ = command("ip", &["link", "delete", link]);
    }
    let _ = std::fs::remove_file(marker_path(run));
}

/// SIGKILL to every process in `namespace`: node processes a harness started there.
fn kill_processes_in(namespace: &str) {
    let pids = run_with_input("ip", &["netns", "pids", namespace], None).unwrap_or_default();
    for pid in pids.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let _ = acre_engine::signal::kill(pid);
    }
    // A killed process leaves its namespace once it is reaped; wait a little for that.
    for _ in 0..KILL_WAIT_CHECKS {
        let left = run_with_input("ip", &["netns", "pids", namespace], None).unwrap_or_default();
        if left.trim().is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// How many times (50 ms apart) a removal waits for killed processes to leave a namespace.
const KILL_WAIT_CHECKS: u32 = 40;

/// A run's network: its bridge, the namespaces made so far, and the partition in force.
pub struct Network {
    run: u8,
    placement: NetnsPlacement,
    /// The nodes whose namespaces this run made.
    nodes: Mutex<BTreeSet<NodeId>>,
    removed: Mutex<bool>,
}

impl Network {
    /// Sweeps what killed harnesses left, claims a free run name, and makes its bridge.
    /// `log` hears of what the sweep removed.
    pub fn create(log: &dyn Fn(&str)) -> Result<Network, String> {
        if let Some(why) = unavailable() {
            return Err(why);
        }
        let swept = sweep();
        if !swept.is_empty() {
            log(&format!(
                "removed the network of killed harness runs: {}",
                swept.join(" ")
            ));
        }
        std::fs::create_dir_all(MARKER_DIR).map_err(|e| format!("create {MARKER_DIR}: {e}"))?;
        let mut in_use = Objects::find().runs();
        // A /24 this host already has an address in (not ours) is not taken either.
        let addrs = run_with_input("ip", &["-4", "-o", "addr", "show"], None)?;
        in_use.extend(addrs.split_whitespace().filter_map(|word| {
            let rest = word.strip_prefix("10.77.")?;
            rest.split('.').next()?.parse::<u8>().ok()
        }));
        let me = std::process::id();
        let started =
            procfs::start_time(me).map_err(|e| format!("read this process's start: {e}"))?;
        // The marker is written whole under a private name, then linked to its own: the link
        // claims the run name (two harnesses never take the same one), and no sweep ever
        // reads a marker half written.
        let draft = Path::new(MARKER_DIR).join(format!(".draft-{me}"));
        std::fs::write(&draft, format!("{me} {started}\n"))
            .map_err(|e| format!("write {}: {e}", draft.display()))?;
        let run = (1..=RUN_MAX)
            .filter(|r| !in_use.contains(r))
            .find(|&r| std::fs::hard_link(&draft, marker_path(r)).is_ok());
        let _ = std::fs::remove_file(&draft);
        let run =
            run.ok_or_else(|| format!("all {RUN_MAX} run names are taken (see {MARKER_DIR})"))?;
        let name = run_name(run);
        let network = Network {
            run,
            placement: NetnsPlacement {
                prefix: name.clone(),
                subnet: Ipv4Addr::new(10, 77, run, 0),
            },
            nodes: Mutex::default(),
            removed: Mutex::new(false),
        };
        let bridge = network.bridge();
        let host = format!("{}/24", network.host_addr());
        command("ip", &["link", "add", &bridge, "type", "bridge"])?;
        command("ip", &["addr", "add", &host, "dev", &bridge])?;
        command("ip", &["link", "set", &bridge, "up"])?;
        Ok(network)
    }

    /// What `acre cluster up --netns` is told.
    pub fn placement(&self) -> &NetnsPlacement {
        &self.placement
    }

    fn bridge(&self) -> String {
        format!("{}-br", self.placement.prefix)
    }

    fn table(&self) -> String {
        self.placement.prefix.clone()
    }

    /// The clients' address, on the bridge.
    pub fn host_addr(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.placement.subnet.octets();
        Ipv4Addr::new(a, b, c, acre_replication::netns::HOST_BYTE)
    }

    /// Makes the namespace of each of `nodes` that has none yet: a veth pair from the bridge
    /// into it, its address on the namespace's end (`eth0`), loopback up.
    pub fn add_nodes(&self, nodes: impl IntoIterator<Item = NodeId>) -> Result<(), String> {
        let mut made = self.nodes.lock().expect("the network's lock");
        for node in nodes {
            let namespace = self.placement.namespace(node);
            if made.contains(&node) || Path::new(NETNS_RUN_DIR).join(&namespace).exists() {
                continue;
            }
            let addr = self.placement.addr(node).map_err(|e| e.to_string())?;
            let cidr = format!("{addr}/24");
            let host_end = format!("{}-v{}", self.placement.prefix, node.0);
            let bridge = self.bridge();
            command("ip", &["netns", "add", &namespace])?;
            made.insert(node);
            command(
                "ip",
                &[
                    "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                    &namespace,
                ],
            )?;
            command("ip", &["link", "set", &host_end, "master", &bridge, "up"])?;
            command(
                "ip",
                &["-n", &namespace, "addr", "add", &cidr, "dev", "eth0"],
            )?;
            command("ip", &["-n", &namespace, "link", "set", "eth0", "up"])?;
            command("ip", &["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cuts the links in `drops`: each `(to, from)` pair drops every frame from `from` to `to`
    /// at the bridge. Replaces the partition in force, if any.
    pub fn partition(&self, drops: &[(NodeId, NodeId)]) -> Result<(), String> {
        self.heal()?;
        let mut rules = String::new();
        for &(to, from) in drops {
            let to = self.placement.addr(to).map_err(|e| e.to_string())?;
            let from = self.placement.addr(from).map_err(|e| e.to_string())?;
            rules.push_str(&format!("    ip saddr {from} ip daddr {to} drop\n"));
        }
        let table = format!(
            "table bridge {} {{\n  chain forward {{\n    type filter hook forward priority 0; \
             policy accept;\n{rules}  }}\n}}\n",
            self.table()
        );
        run_with_input("nft", &["-f", "-"], Some(&table)).map(|_| ())
    }

    /// Removes the partition in force; nothing in force is not an error.
    pub fn heal(&self) -> Result<(), String> {
        let tables = Objects::find().tables;
        if !tables.contains(&format!("bridge {}", self.table())) {
            return Ok(());
        }
        command("nft", &["delete", "table", "bridge", &self.table()])
    }

    /// Removes everything of this run: the table, the processes still in its namespaces (the
    /// cluster was stopped before; a node that outlived `acre cluster down` is this run's),
    /// the namespaces, links and bridge, and the marker. Once; best effort, what is left is
    /// found by the next run's sweep. Returns what could not be removed.
    pub fn remove(&self) -> Vec<String> {
        let mut removed = self.removed.lock().expect("the network's lock");
        if *removed {
            return Vec::new();
        }
        *removed = true;
        remove_run(self.run, &Objects::find());
        let left = Objects::find();
        let mine = |name: &String| run_of(name) == Some(self.run);
        (left.namespaces.iter().chain(&left.links))
            .filter(|n| mine(n))
            .cloned()
            .chain(
                (left.tables.iter())
                    .filter(|t| t.split(' ').nth(1) == Some(self.table().as_str()))
                    .cloned(),
            )
            .collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let left = self.remove();
        if !left.is_empty() {
            eprintln!(
                "jepsen: could not remove {} (the next run removes them)",
                left.join(" ")
            );
        }
    }
}

/// A partition as Jepsen draws them: who cannot hear whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grudge {
    /// One node cut off from every other (the rest).
    One(NodeId, Vec<NodeId>),
    /// Two halves (the first the smaller), each cut off from the other.
    Halves(Vec<NodeId>, Vec<NodeId>),
    /// Each node hears a majority (itself and its neighbours on a ring), and no two hear the
    /// same one: the nodes, in ring order.
    MajoritiesRing(Vec<NodeId>),
    /// A minority (fewer than half) cut off from the rest.
    Minority(Vec<NodeId>, Vec<NodeId>),
}

impl Grudge {
    /// The grudge's `(to, from)` drops: `to` hears nothing from `from`.
    pub fn drops(&self) -> Vec<(NodeId, NodeId)> {
        let between = |a: &[NodeId], b: &[NodeId]| {
            let mut drops = Vec::new();
            for &x in a {
                for &y in b {
                    drops.push((x, y));
                    drops.push((y, x));
                }
            }
            drops
        };
        match self {
            Grudge::One(node, rest) => between(&[*node], rest),
            Grudge::Halves(a, b) | Grudge::Minority(a, b) => between(a, b),
            Grudge::MajoritiesRing(ring) => {
                let n = ring.len();
                let mut drops = Vec::new();
                for (position, &to) in ring.iter().enumerate() {
                    let heard = Grudge::ring_heard(n, position);
                    for (other, &from) in ring.iter().enumerate() {
                        if !heard.contains(&other) {
                            drops.push((to, from));
                        }
                    }
                }
                drops
            }
        }
    }

    /// The ring positions the node at `position` hears among `n`: a window of a majority
    /// around it (itself, then alternately after and before).
    pub fn ring_heard(n: usize, position: usize) -> Vec<usize> {
        let majority = n / 2 + 1;
        let before = (majority - 1) / 2;
        (0..majority)
            .map(|i| (position + n - before + i) % n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[u16]) -> Vec<NodeId> {
        ids.iter().map(|&id| NodeId(id)).collect()
    }

    /// Who `node` hears under `drops`, itself included, among `all`.
    fn heard(drops: &[(NodeId, NodeId)], all: &[NodeId], node: NodeId) -> BTreeSet<NodeId> {
        (all.iter().copied())
            .filter(|&from| !drops.contains(&(node, from)))
            .collect()
    }

    #[test]
    fn in_a_majorities_ring_each_node_hears_a_different_majority() {
        for n in 3..=7u16 {
            let all: Vec<NodeId> = (1..=n).map(NodeId).collect();
            let drops = Grudge::MajoritiesRing(all.clone()).drops();
            let mut seen = BTreeSet::new();
            for &node in &all {
                let heard = heard(&drops, &all, node);
                assert!(heard.contains(&node), "n={n} {node} does not hear itself");
                assert_eq!(
                    heard.len(),
                    usize::from(n) / 2 + 1,
                    "n={n} {node}: {heard:?}"
                );
                assert!(
                    seen.insert(heard.clone()),
                    "n={n}: two nodes hear {heard:?}"
                );
            }
        }
    }

    #[test]
    fn halves_and_one_node_are_cut_both_ways() {
        let drops = Grudge::One(NodeId(2), nodes(&[1, 3])).drops();
        let all = nodes(&[1, 2, 3]);
        assert_eq!(heard(&drops, &all, NodeId(2)), BTreeSet::from([NodeId(2)]));
        assert_eq!(
            heard(&drops, &all, NodeId(1)),
            BTreeSet::from([NodeId(1), NodeId(3)])
        );
        let drops = Grudge::Halves(nodes(&[1, 2]), nodes(&[3, 4, 5])).drops();
        let all = nodes(&[1, 2, 3, 4, 5]);
        assert_eq!(drops.len(), 2 * 2 * 3);
        assert_eq!(
            heard(&drops, &all, NodeId(4)),
            BTreeSet::from([NodeId(3), NodeId(4), NodeId(5)])
        );
    }

    #[test]
    fn object_names_map_to_their_run() {
        assert_eq!(run_of("acrejp7-n3"), Some(7));
        assert_eq!(run_of("acrejp12-br"), Some(12));
        assert_eq!(run_of("acrejp250"), Some(250));
        assert_eq!(run_of("acrejpx-n1"), None);
        assert_eq!(run_of("eth0"), None);
    }
}
