//! An Elle-style serializability checker for list-append histories, on std alone: it knows
//! nothing of Acre, so the same code checks the fault-injection harness's histories and
//! acre-replication's in-process list-append tests (its own tests draw their random histories
//! from the workspace's generator, `acre_nvm_log::random`, a dev-dependency).
//!
//! Why list-append: every read returns the whole list, so a read reveals the order in which the
//! appends before it were installed. From the longest read of each key the checker recovers that
//! key's version order, builds the dependency graph between committed transactions (ww, wr, rw
//! and, for strict serializability, real-time edges; a committed append no read shows comes
//! after every element the longest read shows) and reports its cycles under Adya's names:
//! G0 (ww only), G1c (ww and wr), G-single (exactly one rw), G2 (two or more rw), and a separate
//! real-time class for cycles that exist only because of real-time order. Some anomalies need no
//! cycle and are reported directly: G1a (a read saw an aborted append), G1b (a read saw another
//! transaction's intermediate state), reads that are not prefixes of each other, duplicate
//! elements, values nobody appended, and transactions that do not see their own appends.
//!
//! Reference: Kingsbury and Alvaro, "Elle: Inferring Isolation Anomalies from Experimental
//! Observations", VLDB 2020; Adya, "Weak Consistency", MIT 1999.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;

/// One operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MicroOp {
    /// Appends `value` to the list at `key`. A value is appended at most once per key in a
    /// history: that is what lets a read name the transaction that wrote each element.
    Append { key: u64, value: u64 },
    /// Read the whole list at `key`, which was `list`.
    Read { key: u64, list: Vec<u64> },
}

/// A committed transaction as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The client's name for the transaction; reports refer to it as `T<id>`.
    pub id: u64,
    /// The operations in the order the transaction ran them, with what the reads returned.
    pub ops: Vec<MicroOp>,
    /// When the client began the transaction, in nanoseconds since an origin common to the
    /// whole history.
    pub start_ns: u64,
    /// When the client saw the commit succeed, on the same clock; [`END_UNKNOWN`] for a
    /// transaction whose client never learned the outcome (it may have committed at any time
    /// after its start, so real time orders nothing after it).
    pub end_ns: u64,
}

/// The end of a transaction whose outcome its client never learned (`info` in a history).
pub const END_UNKNOWN: u64 = u64::MAX;

/// What the checker is given: the committed transactions, and the appends of transactions known
/// to have aborted (so a read of one is G1a rather than a value from nowhere).
#[derive(Clone, Debug, Default)]
pub struct History {
    pub txns: Vec<TxnRecord>,
    /// `(key, value)` of every append whose transaction did not commit.
    pub aborted_appends: HashSet<(u64, u64)>,
}

/// The kind of a dependency edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EdgeKind {
    /// Write-write: the later transaction appended the element right after the earlier one's.
    Ww,
    /// Write-read: the later transaction read a list ending with the earlier one's element.
    Wr,
    /// Read-write (anti-dependency): the earlier transaction read a list that the later one's
    /// append extended.
    Rw,
    /// Real-time: the earlier transaction ended before the later one started.
    Realtime,
}

/// Why an edge `from -> to` exists: the evidence, so a report can be checked by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `from` appended `first` to `key` and `to` appended the next element, `second`.
    Ww { key: u64, first: u64, second: u64 },
    /// `to` read `key` as a list ending with `value`, which `from` appended.
    Wr { key: u64, value: u64 },
    /// `from` read `key` as a list ending with `seen` (`None`: the empty list), and `to`
    /// appended the next element, `next`.
    Rw {
        key: u64,
        seen: Option<u64>,
        next: u64,
    },
    /// `from` ended at `end_ns`, before `to` started at `start_ns`.
    Realtime { end_ns: u64, start_ns: u64 },
    /// `from` appended `last`, the last element of `key`'s longest read, and `to` appended
    /// `value`, which no read shows: committed, it comes after every element a read shows.
    WwUnseen { key: u64, last: u64, value: u64 },
    /// `from` read `key` as its longest list (ending with `seen`; `None`: empty), without
    /// `value`, which `to` appended and no read shows.
    RwUnseen {
        key: u64,
        seen: Option<u64>,
        value: u64,
    },
}

impl Why {
    pub fn kind(&self) -> EdgeKind {
        match self {
            Why::Ww { .. } | Why::WwUnseen { .. } => EdgeKind::Ww,
            Why::Wr { .. } => EdgeKind::Wr,
            Why::Rw { .. } | Why::RwUnseen { .. } => EdgeKind::Rw,
            Why::Realtime { .. } => EdgeKind::Realtime,
        }
    }
}

/// One edge of a reported cycle, between transactions named by their ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub from: u64,
    pub to: u64,
    pub why: Why,
}

/// The class of a dependency cycle, named by its edges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CycleClass {
    /// Write cycle: ww edges only.
    G0,
    /// Circular information flow: ww and wr edges, at least one wr.
    G1c,
    /// Exactly one anti-dependency (read skew and its relatives).
    GSingle,
    /// Two or more anti-dependencies (write skew and its relatives).
    G2,
    /// The cycle needs a real-time edge: serializable, but not strictly.
    Realtime,
}

impl CycleClass {
    fn of(cycle: &[Step]) -> CycleClass {
        let count = |kind| cycle.iter().filter(|s| s.why.kind() == kind).count();
        if count(EdgeKind::Realtime) > 0 {
            CycleClass::Realtime
        } else if count(EdgeKind::Rw) >= 2 {
            CycleClass::G2
        } else if count(EdgeKind::Rw) == 1 {
            CycleClass::GSingle
        } else if count(EdgeKind::Wr) > 0 {
            CycleClass::G1c
        } else {
            CycleClass::G0
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CycleClass::G0 => "G0",
            CycleClass::G1c => "G1c",
            CycleClass::GSingle => "G-single",
            CycleClass::G2 => "G2",
            CycleClass::Realtime => "realtime",
        }
    }
}

/// Something the history shows that no serial (or, when strict, real-time ordered) execution
/// could produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// A dependency cycle, as the edges followed round it and the transactions on it.
    Cycle {
        class: CycleClass,
        steps: Vec<Step>,
        txns: Vec<TxnRecord>,
    },
    /// G1a: `reader` saw `value` in `key`, appended by a transaction that aborted.
    AbortedRead { reader: u64, key: u64, value: u64 },
    /// G1b: `reader` saw `key` ending with `value`, but `writer` went on to append `later` to
    /// the same key, so the reader saw a state that never committed.
    IntermediateRead {
        reader: u64,
        writer: u64,
        key: u64,
        value: u64,
        later: u64,
    },
    /// Two reads of `key` that no single version order explains: `list` is not a prefix of
    /// the longest read, `longest`.
    IncompatibleOrder {
        key: u64,
        reader: u64,
        list: Vec<u64>,
        longest_reader: u64,
        longest: Vec<u64>,
    },
    /// `reader` saw `value` more than once in `key`.
    DuplicateElements {
        reader: u64,
        key: u64,
        value: u64,
        list: Vec<u64>,
    },
    /// `reader` saw `value` in `key`, which no transaction appended, committed or aborted.
    Garbage { reader: u64, key: u64, value: u64 },
    /// `value` was appended to `key` more than once; the history breaks the checker's
    /// precondition and edges through it are guesses.
    DuplicateAppend {
        key: u64,
        value: u64,
        txns: Vec<u64>,
    },
    /// `txn` read `key` as `observed` though its own earlier operations imply `expected`
    /// (exactly, or as a suffix when it had not read the key before appending).
    Internal {
        txn: u64,
        key: u64,
        expected: Vec<u64>,
        exact: bool,
        observed: Vec<u64>,
    },
}

impl Anomaly {
    /// Elle's name for the anomaly.
    pub fn class(&self) -> &'static str {
        match self {
            Anomaly::Cycle { class, .. } => class.name(),
            Anomaly::AbortedRead { .. } => "G1a",
            Anomaly::IntermediateRead { .. } => "G1b",
            Anomaly::IncompatibleOrder { .. } => "incompatible-order",
            Anomaly::DuplicateElements { .. } => "duplicate-elements",
            Anomaly::Garbage { .. } => "garbage",
            Anomaly::DuplicateAppend { .. } => "duplicate-append",
            Anomaly::Internal { .. } => "internal",
        }
    }
}

fn fmt_seen(seen: Option<u64>) -> String {
    match seen {
        Some(value) => format!("ending with {value}"),
        None => "empty".to_string(),
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (from, to) = (self.from, self.to);
        match self.why {
            Why::Ww { key, first, second } => write!(
                f,
                "T{from} -ww-> T{to}: T{from} appended {first} to key {key}, T{to} appended the \
                 next element {second}"
            ),
            Why::Wr { key, value } => write!(
                f,
                "T{from} -wr-> T{to}: T{to} read key {key} ending with {value}, which T{from} \
                 appended"
            ),
            Why::Rw { key, seen, next } => write!(
                f,
                "T{from} -rw-> T{to}: T{from} read key {key} {}, T{to} appended the next \
                 element {next}",
                fmt_seen(seen)
            ),
            Why::WwUnseen { key, last, value } => write!(
                f,
                "T{from} -ww-> T{to}: T{from} appended {last}, the last element any read of key \
                 {key} shows, and T{to} appended {value}, which no read shows, so after it"
            ),
            Why::RwUnseen { key, seen, value } => write!(
                f,
                "T{from} -rw-> T{to}: T{from} read key {key} {}, its longest read, without \
                 {value}, which T{to} appended and no read shows",
                fmt_seen(seen)
            ),
            Why::Realtime { end_ns, start_ns } => write!(
                f,
                "T{from} -rt-> T{to}: T{from} ended at {end_ns} ns, before T{to} started at \
                 {start_ns} ns"
            ),
        }
    }
}

impl fmt::Display for TxnRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.end_ns == END_UNKNOWN {
            write!(f, "T{} [{} ns.., outcome unknown]:", self.id, self.start_ns)?;
        } else {
            write!(f, "T{} [{}..{} ns]:", self.id, self.start_ns, self.end_ns)?;
        }
        for op in &self.ops {
            match op {
                MicroOp::Append { key, value } => write!(f, " append({key}, {value})")?,
                MicroOp::Read { key, list } => write!(f, " read({key}) = {list:?}")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = self.class();
        match self {
            Anomaly::Cycle { steps, txns, .. } => {
                writeln!(f, "{class}: a cycle of {} transactions", steps.len())?;
                for step in steps {
                    writeln!(f, "    {step}")?;
                }
                write!(f, "  where")?;
                for txn in txns {
                    write!(f, "\n    {txn}")?;
                }
                Ok(())
            }
            Anomaly::AbortedRead { reader, key, value } => write!(
                f,
                "{class}: T{reader} read {value} in key {key}, appended by an aborted transaction"
            ),
            Anomaly::IntermediateRead {
                reader,
                writer,
                key,
                value,
                later,
            } => write!(
                f,
                "{class}: T{reader} read key {key} ending with {value}, an intermediate state of \
                 T{writer}, which then appended {later} to the same key"
            ),
            Anomaly::IncompatibleOrder {
                key,
                reader,
                list,
                longest_reader,
                longest,
            } => write!(
                f,
                "{class}: key {key}: T{reader} read {list:?}, which is not a prefix of \
                 {longest:?} read by T{longest_reader}"
            ),
            Anomaly::DuplicateElements {
                reader,
                key,
                value,
                list,
            } => write!(
                f,
                "{class}: T{reader} read key {key} as {list:?}, with {value} more than once"
            ),
            Anomaly::Garbage { reader, key, value } => write!(
                f,
                "{class}: T{reader} read {value} in key {key}, which no transaction appended"
            ),
            Anomaly::DuplicateAppend { key, value, txns } => {
                let names: Vec<String> = txns.iter().map(|t| format!("T{t}")).collect();
                write!(
                    f,
                    "{class}: {value} was appended to key {key} by {}",
                    names.join(", ")
                )
            }
            Anomaly::Internal {
                txn,
                key,
                expected,
                exact,
                observed,
            } => {
                let shape = if *exact {
                    "exactly"
                } else {
                    "a list ending with"
                };
                write!(
                    f,
                    "{class}: T{txn} read key {key} as {observed:?}, but its own operations \
                     imply {shape} {expected:?}"
                )
            }
        }
    }
}

/// The verdict on a history.
#[derive(Clone, Debug)]
pub struct Report {
    pub anomalies: Vec<Anomaly>,
    pub txn_count: usize,
    /// Edges in the dependency graph, by kind (real-time edges after transitive reduction).
    pub edge_counts: BTreeMap<EdgeKind, usize>,
    /// Whether real-time edges were part of the graph.
    pub strict: bool,
}

impl Report {
    /// No anomaly: the history is serializable (strictly, if checked with `strict`).
    pub fn is_valid(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// The classes of the anomalies found, each once, sorted.
    pub fn classes(&self) -> Vec<&'static str> {
        let mut classes: Vec<&'static str> = self.anomalies.iter().map(|a| a.class()).collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    }

    pub fn edge_count(&self, kind: EdgeKind) -> usize {
        self.edge_counts.get(&kind).copied().unwrap_or(0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} transactions, {} checked; edges ww={} wr={} rw={} rt={}; {} anomalies",
            self.txn_count,
            if self.strict {
                "strict serializability"
            } else {
                "serializability"
            },
            self.edge_count(EdgeKind::Ww),
            self.edge_count(EdgeKind::Wr),
            self.edge_count(EdgeKind::Rw),
            self.edge_count(EdgeKind::Realtime),
            self.anomalies.len()
        )?;
        for anomaly in &self.anomalies {
            write!(f, "\n- {anomaly}")?;
        }
        Ok(())
    }
}

/// A dependency edge between transactions named by their index in `History::txns`.
#[derive(Clone, Copy, Debug)]
struct Edge {
    from: usize,
    to: usize,
    why: Why,
}

/// The dependency graph; `edges[t]` are the edges leaving transaction `t`.
struct Graph {
    edges: Vec<Vec<Edge>>,
}

impl Graph {
    /// The strongly connected components with more than one transaction of the subgraph of
    /// `nodes` and the edges `allow` accepts (Tarjan's algorithm, with an explicit stack so a
    /// long history cannot overflow the thread's stack). There are no self-loops, so only those
    /// components hold cycles.
    fn components(&self, nodes: &[usize], allow: &dyn Fn(&Edge) -> bool) -> Vec<Vec<usize>> {
        const UNVISITED: usize = usize::MAX;
        let n = self.edges.len();
        let inside = mask(n, nodes);
        let mut index = vec![UNVISITED; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut frames: Vec<(usize, usize)> = Vec::new();
        let mut next_index = 0;
        let mut components = Vec::new();
        for &root in nodes {
            if index[root] != UNVISITED {
                continue;
            }
            index[root] = next_index;
            low[root] = next_index;
            next_index += 1;
            stack.push(root);
            on_stack[root] = true;
            frames.push((root, 0));
            while let Some(&(v, position)) = frames.last() {
                if let Some(edge) = self.edges[v].get(position) {
                    if let Some(frame) = frames.last_mut() {
                        frame.1 += 1;
                    }
                    let w = edge.to;
                    if !inside[w] || !allow(edge) {
                        continue;
                    }
                    if index[w] == UNVISITED {
                        index[w] = next_index;
                        low[w] = next_index;
                        next_index += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        frames.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                    continue;
                }
                frames.pop();
                if let Some(&(parent, _)) = frames.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut component = Vec::new();
                    loop {
                        let w = stack
                            .pop()
                            .expect("v is on the stack until its component pops");
                        on_stack[w] = false;
                        component.push(w);
                        if w == v {
                            break;
                        }
                    }
                    if component.len() > 1 {
                        component.sort_unstable();
                        components.push(component);
                    }
                }
            }
        }
        components.sort_unstable();
        components
    }

    /// A shortest path `from -> ... -> to` inside `inside` over edges `allow` accepts.
    fn path(
        &self,
        from: usize,
        to: usize,
        inside: &[bool],
        allow: &dyn Fn(&Edge) -> bool,
    ) -> Option<Vec<Edge>> {
        let mut came_by: Vec<Option<Edge>> = vec![None; self.edges.len()];
        let mut seen = vec![false; self.edges.len()];
        seen[from] = true;
        let mut queue = VecDeque::from([from]);
        while let Some(v) = queue.pop_front() {
            if v == to {
                let mut path = Vec::new();
                let mut at = to;
                while at != from {
                    let edge = came_by[at].expect("every reached node but the first has an edge");
                    path.push(edge);
                    at = edge.from;
                }
                path.reverse();
                return Some(path);
            }
            for edge in &self.edges[v] {
                if inside[edge.to] && !seen[edge.to] && allow(edge) {
                    seen[edge.to] = true;
                    came_by[edge.to] = Some(*edge);
                    queue.push_back(edge.to);
                }
            }
        }
        None
    }

    /// Some cycle among `nodes` over edges `allow` accepts, if there is one.
    fn find_cycle(&self, nodes: &[usize], allow: &dyn Fn(&Edge) -> bool) -> Option<Vec<Edge>> {
        let component = self.components(nodes, allow).into_iter().next()?;
        let inside = mask(self.edges.len(), &component);
        let first = component.iter().find_map(|&v| {
            self.edges[v]
                .iter()
                .find(|e| inside[e.to] && allow(e))
                .copied()
        })?;
        let back = self.path(first.to, first.from, &inside, allow);
        // Every edge inside a strongly connected component lies on a cycle.
        let back = back.expect("an edge inside a component has a way back");
        Some(std::iter::once(first).chain(back).collect())
    }
}

fn mask(n: usize, nodes: &[usize]) -> Vec<bool> {
    let mut inside = vec![false; n];
    for &v in nodes {
        inside[v] = true;
    }
    inside
}

/// The most telling cycle in one component of the data-dependency graph: one with ww edges
/// only if there is one, else ww and wr only, else exactly one rw, else any (two or more rw).
/// Looking for the weakest class first is what makes the class name the isolation level the
/// history violates, rather than whichever cycle a search happened to meet first.
fn weakest_cycle(graph: &Graph, component: &[usize]) -> Option<Vec<Edge>> {
    let ww = |e: &Edge| e.why.kind() == EdgeKind::Ww;
    let ww_wr = |e: &Edge| matches!(e.why.kind(), EdgeKind::Ww | EdgeKind::Wr);
    let data = |e: &Edge| e.why.kind() != EdgeKind::Realtime;
    if let Some(cycle) = graph.find_cycle(component, &ww) {
        return Some(cycle);
    }
    if let Some(cycle) = graph.find_cycle(component, &ww_wr) {
        return Some(cycle);
    }
    let inside = mask(graph.edges.len(), component);
    for &v in component {
        for rw in graph.edges[v]
            .iter()
            .filter(|e| e.why.kind() == EdgeKind::Rw && inside[e.to])
        {
            if let Some(back) = graph.path(rw.to, rw.from, &inside, &ww_wr) {
                return Some(std::iter::once(*rw).chain(back).collect());
            }
        }
    }
    graph.find_cycle(component, &data)
}

/// What a transaction knows about a key from its own earlier operations.
enum Known {
    Nothing,
    /// It read the key (and maybe appended since): the list must be exactly this.
    Exact(Vec<u64>),
    /// It appended without reading first: the list must end with these.
    Suffix(Vec<u64>),
}

/// Reads that contradict the transaction's own earlier reads and appends.
fn internal_anomalies(txn: &TxnRecord, anomalies: &mut Vec<Anomaly>) {
    let mut known: BTreeMap<u64, Known> = BTreeMap::new();
    for op in &txn.ops {
        match op {
            MicroOp::Append { key, value } => match known.entry(*key).or_insert(Known::Nothing) {
                state @ Known::Nothing => *state = Known::Suffix(vec![*value]),
                Known::Exact(list) | Known::Suffix(list) => list.push(*value),
            },
            MicroOp::Read { key, list } => {
                let state = known.entry(*key).or_insert(Known::Nothing);
                let contradiction = match state {
                    Known::Nothing => None,
                    Known::Exact(expected) => (expected != list).then(|| (expected.clone(), true)),
                    Known::Suffix(expected) => {
                        (!list.ends_with(expected)).then(|| (expected.clone(), false))
                    }
                };
                if let Some((expected, exact)) = contradiction {
                    anomalies.push(Anomaly::Internal {
                        txn: txn.id,
                        key: *key,
                        expected,
                        exact,
                        observed: list.clone(),
                    });
                }
                *state = Known::Exact(list.clone());
            }
        }
    }
}

/// One read: the index of its transaction, the key, and the list.
struct ReadAt<'h> {
    txn_index: usize,
    key: u64,
    list: &'h [u64],
}

/// Checks `history` for serializability, or strict serializability when `strict` (real-time
/// order between transactions that do not overlap must agree with the serialization order).
pub fn check(history: &History, strict: bool) -> Report {
    let txns = &history.txns;
    let n = txns.len();
    let mut anomalies = Vec::new();

    // Who appended each element, and what the same transaction appended next to the same key
    // (a read ending at an element its writer then extended saw an intermediate state).
    let mut appender: HashMap<(u64, u64), usize> = HashMap::new();
    let mut appended_later: HashMap<(u64, u64), u64> = HashMap::new();
    let mut duplicate_appends: BTreeMap<(u64, u64), Vec<u64>> = BTreeMap::new();
    for (txn_index, txn) in txns.iter().enumerate() {
        let mut last_by_key: HashMap<u64, u64> = HashMap::new();
        for op in &txn.ops {
            let MicroOp::Append { key, value } = *op else {
                continue;
            };
            if let Some(&first) = appender.get(&(key, value)) {
                duplicate_appends
                    .entry((key, value))
                    .or_insert_with(|| vec![txns[first].id])
                    .push(txn.id);
            } else {
                appender.insert((key, value), txn_index);
            }
            if let Some(previous) = last_by_key.insert(key, value) {
                appended_later.entry((key, previous)).or_insert(value);
            }
        }
        internal_anomalies(txn, &mut anomalies);
    }
    for ((key, value), txns) in duplicate_appends {
        anomalies.push(Anomaly::DuplicateAppend { key, value, txns });
    }

    let mut reads_by_key: BTreeMap<u64, Vec<ReadAt<'_>>> = BTreeMap::new();
    for (txn_index, txn) in txns.iter().enumerate() {
        for op in &txn.ops {
            if let MicroOp::Read { key, list } = op {
                reads_by_key.entry(*key).or_default().push(ReadAt {
                    txn_index,
                    key: *key,
                    list,
                });
            }
        }
    }

    // Each key's version order is its longest read; every other read must be a prefix of it.
    let mut orders: HashMap<u64, &[u64]> = HashMap::new();
    let mut reported_values: HashSet<(u64, u64)> = HashSet::new();
    for (&key, reads) in &reads_by_key {
        let mut longest = &reads[0];
        for read in reads {
            if read.list.len() > longest.list.len() {
                longest = read;
            }
        }
        orders.insert(key, longest.list);
        for read in reads {
            let reader = txns[read.txn_index].id;
            if !longest.list.starts_with(read.list) {
                anomalies.push(Anomaly::IncompatibleOrder {
                    key,
                    reader,
                    list: read.list.to_vec(),
                    longest_reader: txns[longest.txn_index].id,
                    longest: longest.list.to_vec(),
                });
            }
            let mut distinct = HashSet::new();
            if let Some(&value) = read.list.iter().find(|&&v| !distinct.insert(v)) {
                anomalies.push(Anomaly::DuplicateElements {
                    reader,
                    key,
                    value,
                    list: read.list.to_vec(),
                });
            }
            // Every element must come from a committed append; each bad one is reported at its
            // first reader only, as every later read of the key repeats it.
            for &value in read.list {
                if appender.contains_key(&(key, value)) || !reported_values.insert((key, value)) {
                    continue;
                }
                if history.aborted_appends.contains(&(key, value)) {
                    anomalies.push(Anomaly::AbortedRead { reader, key, value });
                } else {
                    anomalies.push(Anomaly::Garbage { reader, key, value });
                }
            }
            if let Some(&value) = read.list.last()
                && let Some(&writer) = appender.get(&(key, value))
                && writer != read.txn_index
                && let Some(&later) = appended_later.get(&(key, value))
            {
                anomalies.push(Anomaly::IntermediateRead {
                    reader,
                    writer: txns[writer].id,
                    key,
                    value,
                    later,
                });
            }
        }
    }

    let mut graph = Graph {
        edges: vec![Vec::new(); n],
    };
    let mut edge_counts: BTreeMap<EdgeKind, usize> = BTreeMap::new();
    let mut add = |from: usize, to: usize, why: Why| {
        // A transaction's dependencies on itself say nothing about its order among others.
        if from != to {
            graph.edges[from].push(Edge { from, to, why });
            *edge_counts.entry(why.kind()).or_default() += 1;
        }
    };
    for (&key, order) in &orders {
        for pair in order.windows(2) {
            if let (Some(&from), Some(&to)) =
                (appender.get(&(key, pair[0])), appender.get(&(key, pair[1])))
            {
                let why = Why::Ww {
                    key,
                    first: pair[0],
                    second: pair[1],
                };
                add(from, to, why);
            }
        }
    }
    for read in reads_by_key.values().flatten() {
        let key = read.key;
        if let Some(&value) = read.list.last()
            && let Some(&writer) = appender.get(&(key, value))
        {
            add(writer, read.txn_index, Why::Wr { key, value });
        }
        // Appends that no read observed get their edges below.
        let order = orders[&key];
        if order.starts_with(read.list)
            && let Some(&next) = order.get(read.list.len())
            && let Some(&writer) = appender.get(&(key, next))
        {
            let seen = read.list.last().copied();
            add(read.txn_index, writer, Why::Rw { key, seen, next });
        }
    }
    // A committed append that no read shows still comes after every element of its key's
    // longest read: the transaction that read it committed without seeing the append. Its
    // place among the other unseen appends is unknown, so it is ordered after the last element
    // seen (ww) and after the reads of the whole longest list (rw), and nothing else.
    let seen: HashSet<(u64, u64)> = reads_by_key
        .values()
        .flatten()
        .flat_map(|read| read.list.iter().map(|&value| (read.key, value)))
        .collect();
    let mut unseen: Vec<(u64, u64, usize)> = appender
        .iter()
        .filter(|&(&(key, value), _)| orders.contains_key(&key) && !seen.contains(&(key, value)))
        .map(|(&(key, value), &writer)| (key, value, writer))
        .collect();
    unseen.sort_unstable();
    for (key, value, writer) in unseen {
        let order = orders[&key];
        if let Some(&last) = order.last()
            && let Some(&last_writer) = appender.get(&(key, last))
        {
            add(last_writer, writer, Why::WwUnseen { key, last, value });
        }
        for read in &reads_by_key[&key] {
            if read.list == order {
                let seen = order.last().copied();
                add(read.txn_index, writer, Why::RwUnseen { key, seen, value });
            }
        }
    }
    if strict {
        for (from, to, why) in realtime_edges(txns) {
            add(from, to, why);
        }
    }

    // Data cycles first, each component classed by its weakest cycle; then, when strict, the
    // cycles that need a real-time edge, which are new exactly when such an edge joins two
    // different data components.
    let all: Vec<usize> = (0..n).collect();
    let data = |e: &Edge| e.why.kind() != EdgeKind::Realtime;
    let data_components = graph.components(&all, &data);
    let mut data_component_of: Vec<Option<usize>> = vec![None; n];
    for (component_index, component) in data_components.iter().enumerate() {
        for &v in component {
            data_component_of[v] = Some(component_index);
        }
        if let Some(cycle) = weakest_cycle(&graph, component) {
            anomalies.push(cycle_anomaly(txns, &cycle));
        }
    }
    if strict {
        let any = |_: &Edge| true;
        for component in graph.components(&all, &any) {
            let inside = mask(n, &component);
            let joining = component.iter().find_map(|&v| {
                graph.edges[v]
                    .iter()
                    .find(|e| {
                        e.why.kind() == EdgeKind::Realtime
                            && inside[e.to]
                            && (data_component_of[e.from].is_none()
                                || data_component_of[e.from] != data_component_of[e.to])
                    })
                    .copied()
            });
            if let Some(first) = joining {
                let back = graph.path(first.to, first.from, &inside, &any);
                let back = back.expect("an edge inside a component has a way back");
                let cycle: Vec<Edge> = std::iter::once(first).chain(back).collect();
                anomalies.push(cycle_anomaly(txns, &cycle));
            }
        }
    }

    Report {
        anomalies,
        txn_count: n,
        edge_counts,
        strict,
    }
}

fn cycle_anomaly(txns: &[TxnRecord], cycle: &[Edge]) -> Anomaly {
    let steps: Vec<Step> = cycle
        .iter()
        .map(|e| Step {
            from: txns[e.from].id,
            to: txns[e.to].id,
            why: e.why,
        })
        .collect();
    Anomaly::Cycle {
        class: CycleClass::of(&steps),
        txns: cycle.iter().map(|e| txns[e.from].clone()).collect(),
        steps,
    }
}

/// Real-time edges `a -> b` for `a.end_ns < b.start_ns`, transitively reduced so a long
/// history does not get a quadratic number of them: `a -> b` is left out when some `c` has
/// `a.end_ns < c.start_ns` and `c.end_ns < b.start_ns`, as `a -> c -> b` already orders them.
/// With `s` the latest start among the transactions that ended before `b` started, `b` keeps
/// exactly the predecessors that ended at or after `s`; they all overlap `s`, so there are at
/// most as many as the history's concurrency.
fn realtime_edges(txns: &[TxnRecord]) -> Vec<(usize, usize, Why)> {
    let mut by_end: Vec<usize> = (0..txns.len()).collect();
    by_end.sort_by_key(|&t| txns[t].end_ns);
    // latest_start[i]: the latest start among by_end[..=i].
    let mut latest_start = Vec::with_capacity(by_end.len());
    let mut latest = 0;
    for &t in &by_end {
        latest = latest.max(txns[t].start_ns);
        latest_start.push(latest);
    }
    let mut edges = Vec::new();
    for (b, txn) in txns.iter().enumerate() {
        let before = by_end.partition_point(|&t| txns[t].end_ns < txn.start_ns);
        if before == 0 {
            continue;
        }
        let s = latest_start[before - 1];
        for &a in by_end[..before].iter().rev() {
            if txns[a].end_ns < s {
                break;
            }
            let why = Why::Realtime {
                end_ns: txns[a].end_ns,
                start_ns: txn.start_ns,
            };
            edges.push((a, b, why));
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_nvm_log::random::{Replay, SplitMix, for_each_seed};

    fn append(key: u64, value: u64) -> MicroOp {
        MicroOp::Append { key, value }
    }

    fn read(key: u64, list: &[u64]) -> MicroOp {
        MicroOp::Read {
            key,
            list: list.to_vec(),
        }
    }

    /// A transaction over `[start_ns, end_ns]`.
    fn txn(id: u64, start_ns: u64, end_ns: u64, ops: Vec<MicroOp>) -> TxnRecord {
        TxnRecord {
            id,
            ops,
            start_ns,
            end_ns,
        }
    }

    /// Transactions that all overlap, so real-time order adds nothing.
    fn concurrent(ops: Vec<Vec<MicroOp>>) -> History {
        let txns = ops
            .into_iter()
            .enumerate()
            .map(|(i, ops)| txn(i as u64 + 1, i as u64, 1_000, ops))
            .collect();
        History {
            txns,
            aborted_appends: HashSet::new(),
        }
    }

    /// Checks both ways and asserts the anomaly classes are exactly `expected` under each.
    fn assert_classes(history: &History, strict: &[&str], serializable: &[&str]) {
        let report = check(history, true);
        assert_eq!(report.classes(), strict, "strict:\n{report}");
        let report = check(history, false);
        assert_eq!(report.classes(), serializable, "serializable:\n{report}");
    }

    fn cycle_ids(report: &Report) -> Vec<Vec<u64>> {
        let mut cycles = Vec::new();
        for anomaly in &report.anomalies {
            if let Anomaly::Cycle { steps, .. } = anomaly {
                let mut ids: Vec<u64> = steps.iter().map(|s| s.from).collect();
                ids.sort_unstable();
                cycles.push(ids);
            }
        }
        cycles
    }

    #[test]
    fn g0_write_cycle() {
        // T1 and T2 append to x in one order and to y in the other.
        let history = concurrent(vec![
            vec![append(1, 1), append(2, 2)],
            vec![append(1, 2), append(2, 1)],
            vec![read(1, &[1, 2]), read(2, &[1, 2])],
        ]);
        assert_classes(&history, &["G0"], &["G0"]);
        let report = check(&history, false);
        assert_eq!(cycle_ids(&report), vec![vec![1, 2]], "{report}");
    }

    #[test]
    fn g1c_circular_information_flow() {
        // Each of T1 and T2 reads what the other appended.
        let history = concurrent(vec![
            vec![append(1, 1), read(2, &[1])],
            vec![append(2, 1), read(1, &[1])],
        ]);
        assert_classes(&history, &["G1c"], &["G1c"]);
    }

    #[test]
    fn g_single_read_skew() {
        // T1 sees T2's append to y but not its append to x.
        let history = concurrent(vec![
            vec![read(1, &[]), read(2, &[1])],
            vec![append(1, 1), append(2, 1)],
            vec![read(1, &[1])],
        ]);
        assert_classes(&history, &["G-single"], &["G-single"]);
        let report = check(&history, false);
        assert_eq!(cycle_ids(&report), vec![vec![1, 2]], "{report}");
    }

    #[test]
    fn g2_write_skew() {
        // Each reads the key the other appends to, and neither sees the other's append.
        let history = concurrent(vec![
            vec![read(1, &[]), append(2, 1)],
            vec![read(2, &[]), append(1, 1)],
            vec![read(1, &[1]), read(2, &[1])],
        ]);
        assert_classes(&history, &["G2"], &["G2"]);
    }

    #[test]
    fn appends_no_read_shows_come_after_the_longest_read() {
        // Write skew where neither append is ever read: each transaction read, as the whole
        // list, the key the other appended to, so each committed before the other's append.
        let history = concurrent(vec![
            vec![read(1, &[]), append(2, 1)],
            vec![read(2, &[]), append(1, 1)],
        ]);
        assert_classes(&history, &["G2"], &["G2"]);
        let report = check(&history, false);
        assert!(
            report.to_string().contains(
                "T1 -rw-> T2: T1 read key 1 empty, its longest read, without 1, which T2 \
                 appended and no read shows"
            ),
            "{report}"
        );
        // Lost update: T2 and T3 both read [1] and appended, and T4's read shows only T2's
        // append: T3's must come after it, yet T3 read the list without it.
        let history = concurrent(vec![
            vec![append(1, 1)],
            vec![read(1, &[1]), append(1, 2)],
            vec![read(1, &[1]), append(1, 3), append(2, 1)],
            vec![read(1, &[1, 2]), read(2, &[])],
        ]);
        let report = check(&history, false);
        assert_eq!(report.classes(), ["G-single"], "{report}");
        assert!(
            report
                .to_string()
                .contains("T2 -ww-> T3: T2 appended 2, the last element any read of key 1 shows"),
            "{report}"
        );
    }

    #[test]
    fn weakest_cycle_is_reported_when_one_component_holds_several() {
        // T1 and T2 form a G0 cycle on keys 1 and 2, and a write skew on keys 3 and 4 joins the
        // same pair: the component is classed by its weakest cycle.
        let history = concurrent(vec![
            vec![append(1, 1), append(2, 2), read(3, &[]), append(4, 1)],
            vec![append(1, 2), append(2, 1), read(4, &[]), append(3, 1)],
            vec![
                read(1, &[1, 2]),
                read(2, &[1, 2]),
                read(3, &[1]),
                read(4, &[1]),
            ],
        ]);
        assert_classes(&history, &["G0"], &["G0"]);
    }

    #[test]
    fn g1a_aborted_read() {
        let mut history = concurrent(vec![vec![append(1, 1)], vec![read(1, &[1, 9])]]);
        history.aborted_appends.insert((1, 9));
        assert_classes(&history, &["G1a"], &["G1a"]);
        // Without the abort on record, the value comes from nowhere.
        history.aborted_appends.clear();
        assert_classes(&history, &["garbage"], &["garbage"]);
    }

    #[test]
    fn g1b_intermediate_read() {
        // T2 saw T1's list after T1's first append to the key but before its second. That read
        // also makes a G-single cycle (T2 read [1], which T1 extended), as in Elle.
        let history = concurrent(vec![
            vec![append(1, 1), append(1, 2)],
            vec![read(1, &[1])],
            vec![read(1, &[1, 2])],
        ]);
        let report = check(&history, false);
        assert!(report.classes().contains(&"G1b"), "{report}");
        // A transaction may read its own intermediate state.
        let history = concurrent(vec![
            vec![append(1, 1), read(1, &[1]), append(1, 2)],
            vec![read(1, &[1, 2])],
        ]);
        assert_classes(&history, &[], &[]);
    }

    #[test]
    fn non_prefix_read_is_an_incompatible_order() {
        let history = concurrent(vec![
            vec![append(1, 1)],
            vec![append(1, 2)],
            vec![read(1, &[1, 2])],
            vec![read(1, &[2])],
        ]);
        let report = check(&history, false);
        assert!(report.classes().contains(&"incompatible-order"), "{report}");
    }

    #[test]
    fn duplicate_elements_are_reported() {
        let history = concurrent(vec![vec![append(1, 1)], vec![read(1, &[1, 1])]]);
        let report = check(&history, false);
        assert!(report.classes().contains(&"duplicate-elements"), "{report}");
    }

    #[test]
    fn duplicate_appends_are_reported() {
        let history = concurrent(vec![vec![append(1, 1)], vec![append(1, 1)]]);
        assert_classes(&history, &["duplicate-append"], &["duplicate-append"]);
    }

    #[test]
    fn a_txn_must_see_its_own_appends() {
        let history = concurrent(vec![vec![append(1, 5), read(1, &[])]]);
        assert_classes(&history, &["internal"], &["internal"]);
        // After a read, the list is known exactly.
        let history = concurrent(vec![
            vec![append(1, 7)],
            vec![read(1, &[]), append(1, 5), read(1, &[7, 5])],
        ]);
        let report = check(&history, false);
        assert!(report.classes().contains(&"internal"), "{report}");
        // Without a read, only the order of its own appends at the end of the list is known.
        let history = concurrent(vec![vec![append(1, 5), append(1, 6), read(1, &[6, 5])]]);
        assert_classes(&history, &["internal"], &["internal"]);
        let history = concurrent(vec![
            vec![append(1, 7)],
            vec![append(1, 5), append(1, 6), read(1, &[7, 5, 6])],
        ]);
        assert_classes(&history, &[], &[]);
    }

    #[test]
    fn stale_read_is_a_realtime_violation_only_when_strict() {
        // T2 starts after T1 committed its append, yet reads the list without it.
        let history = History {
            txns: vec![
                txn(1, 0, 10, vec![append(1, 1)]),
                txn(2, 20, 30, vec![read(1, &[])]),
                txn(3, 40, 50, vec![read(1, &[1])]),
            ],
            aborted_appends: HashSet::new(),
        };
        assert_classes(&history, &["realtime"], &[]);
    }

    #[test]
    fn realtime_reduction_keeps_long_chains() {
        // The only real-time path from the writer T1 to the stale reader T9 runs through the
        // chain of serial transactions between them, whose direct edge the reduction drops.
        let mut txns = vec![txn(1, 0, 1, vec![append(1, 1)])];
        for i in 2..=8 {
            txns.push(txn(i, 10 * i, 10 * i + 1, vec![append(2, i)]));
        }
        txns.push(txn(9, 100, 101, vec![read(1, &[])]));
        txns.push(txn(
            10,
            110,
            111,
            vec![read(1, &[1]), read(2, &[2, 3, 4, 5, 6, 7, 8])],
        ));
        let history = History {
            txns,
            aborted_appends: HashSet::new(),
        };
        let report = check(&history, true);
        assert_eq!(report.classes(), ["realtime"], "{report}");
        // The reduction keeps one edge per link of the chain rather than all pairs.
        let realtime_count = report.edge_count(EdgeKind::Realtime);
        assert!(
            realtime_count <= 9,
            "realtime_count={realtime_count}\n{report}"
        );
    }

    #[test]
    fn concurrent_transactions_on_disjoint_keys_are_valid() {
        let history = concurrent(
            (1..=6)
                .map(|k| vec![read(k, &[]), append(k, 1), read(k, &[1])])
                .collect(),
        );
        assert_classes(&history, &[], &[]);
    }

    #[test]
    fn concurrent_reader_may_miss_an_overlapping_append() {
        // T1 reads before T2's append in the serial order, which real time allows as they
        // overlap.
        let history = History {
            txns: vec![
                txn(1, 0, 50, vec![read(1, &[])]),
                txn(2, 10, 20, vec![append(1, 1)]),
                txn(3, 60, 70, vec![read(1, &[1])]),
            ],
            aborted_appends: HashSet::new(),
        };
        assert_classes(&history, &[], &[]);
    }

    /// A history produced by running random transactions one after another against a model,
    /// each in its own time slot: strictly serializable by construction.
    fn serial_history(seed: u64, txn_count: u64) -> History {
        let mut rng = SplitMix::new(seed);
        let mut lists: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut next_value = 1;
        let mut txns = Vec::new();
        for id in 0..txn_count {
            let mut ops = Vec::new();
            for _ in 0..=rng.below(4) {
                let key = rng.below(4);
                let list = lists.entry(key).or_default();
                if rng.below(2) == 0 {
                    ops.push(read(key, list));
                } else {
                    list.push(next_value);
                    ops.push(append(key, next_value));
                    next_value += 1;
                }
            }
            txns.push(txn(id, 10 * id, 10 * id + 5, ops));
        }
        History {
            txns,
            aborted_appends: HashSet::new(),
        }
    }

    #[test]
    fn serial_histories_are_valid_in_any_record_order() {
        for_each_seed(50, Replay::Exact, |seed| {
            let mut history = serial_history(seed, 60);
            let report = check(&history, true);
            assert!(report.is_valid(), "seed={seed}\n{report}");
            // The checker must not lean on the order the records come in.
            let mut rng = SplitMix::new(seed);
            for i in (1..history.txns.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                history.txns.swap(i, j);
            }
            let report = check(&history, true);
            assert!(report.is_valid(), "seed={seed} (shuffled)\n{report}");
        });
    }

    #[test]
    fn every_stale_read_in_a_serial_history_is_caught_when_strict() {
        let mut tested_count = 0;
        for_each_seed(50, Replay::Exact, |seed| {
            let mut history = serial_history(seed, 60);
            // Drop the last element of one non-empty read that is not of the reader's own
            // append and that a longer read of another transaction confirms (an element no
            // read shows has no known place in the order, for Elle too): the read is now
            // stale, which only real-time order can prove.
            let mut longest_by_key: HashMap<u64, (usize, usize)> = HashMap::new();
            for (t, txn) in history.txns.iter().enumerate() {
                for op in &txn.ops {
                    if let MicroOp::Read { key, list } = op {
                        let entry = longest_by_key.entry(*key).or_insert((t, 0));
                        if list.len() > entry.1 {
                            *entry = (t, list.len());
                        }
                    }
                }
            }
            let mut candidates = Vec::new();
            for (t, txn) in history.txns.iter().enumerate() {
                let own: HashSet<(u64, u64)> = txn
                    .ops
                    .iter()
                    .filter_map(|op| match *op {
                        MicroOp::Append { key, value } => Some((key, value)),
                        MicroOp::Read { .. } => None,
                    })
                    .collect();
                for (o, op) in txn.ops.iter().enumerate() {
                    if let MicroOp::Read { key, list } = op
                        && let Some(&last) = list.last()
                        && !own.contains(&(*key, last))
                        && let Some(&(longest_txn, longest_len)) = longest_by_key.get(key)
                        && (longest_txn != t || longest_len > list.len())
                    {
                        candidates.push((t, o));
                    }
                }
            }
            if candidates.is_empty() {
                return;
            }
            let (t, o) = candidates[SplitMix::new(seed).below(candidates.len() as u64) as usize];
            let stale = match &mut history.txns[t].ops[o] {
                MicroOp::Read { list, .. } => list.pop(),
                MicroOp::Append { .. } => None,
            };
            let stale_txn = history.txns[t].id;
            let report = check(&history, true);
            assert!(
                !report.is_valid(),
                "seed={seed} stale_txn={stale_txn} dropped={stale:?}\n{report}"
            );
            tested_count += 1;
        });
        assert!(tested_count > 0, "no seed had a read to make stale");
    }
}
