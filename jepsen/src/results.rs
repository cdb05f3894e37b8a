//! What a run concludes, written as `results.json` beside the history: whether the history is
//! valid, the anomalies the checkers found (counted by type and explained in words), the
//! acknowledged writes missing from the final reads, the operations by outcome, and each
//! fault's window with the service seen during it and after it was healed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One problem a checker found, in words a person can check against the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// The anomaly's type: Adya's names for cycles (`G0`, `G1a`, `G1b`, `G1c`, `G-single`,
    /// `G2`), `realtime` (serializable but not strictly), `internal`, `duplicate`, `garbage`,
    /// `lost-write`, `wrong-total`, `negative-balance`, `nonlinearizable`, or a checker's own.
    pub class: String,
    /// Which checker found it (`elle`, `adya`, `bank`, `register`, `lost-writes`).
    pub checker: String,
    /// The anomaly explained: "T12 read k3=[1 2] from T9, T9 appended 5 to k4 after T12's...".
    pub text: String,
}

/// One checker's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub checker: String,
    pub valid: bool,
    /// Anything the checker could not decide or wants said (a history too large to search,
    /// a checker that disagrees with another).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Client operations by how they completed (final reads included; an invocation that never
/// completed, because the run ended, counts as `info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
}

/// A fault's window and the service the clients saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultWindow {
    pub class: String,
    pub targets: Vec<u32>,
    pub detail: String,
    /// Seconds since the run started.
    pub start_s: f64,
    /// When it was healed (`None`: never healed, the run ended first).
    pub stop_s: Option<f64>,
    /// Client operations that completed inside the window, by outcome.
    pub during: Counts,
    /// `ok / (ok + fail + info)` inside the window (`None` when nothing completed).
    pub availability: Option<f64>,
    /// Seconds from the heal to the first `ok` operation invoked after it (`None`: none).
    pub recovered_after_s: Option<f64>,
}

/// The whole conclusion of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// True when every checker accepted the history and no acknowledged write is lost.
    pub valid: bool,
    pub workload: String,
    pub nemesis: Vec<String>,
    pub transport: String,
    pub nodes: u32,
    pub seed: u64,
    pub time_limit_s: f64,
    pub counts: Counts,
    /// Findings counted by class.
    pub anomalies: BTreeMap<String, u64>,
    pub findings: Vec<Finding>,
    /// Acknowledged writes absent from the final reads, in words.
    pub lost_writes: Vec<String>,
    pub verdicts: Vec<Verdict>,
    pub faults: Vec<FaultWindow>,
}
