//! Client processes (`acre jepsen --client-processes`): each client worker hands its operations
//! to a process of its own (`acre jepsen-client`), a client of the cluster that the kill
//! nemesis may kill in the middle of a commit, as a crashed application would be.
//!
//! The worker thread in the harness still generates every operation and records it: it records
//! the invocation before it writes the operation to the process's stdin (one JSON line, a
//! [`Value`]) and the completion after it reads the answer (one JSON line, a [`Completion`]),
//! so each recorded interval holds the real one and no real-time order is claimed that did
//! not happen. A process that dies, or answers nonsense, leaves its operation `info`; the
//! worker starts another process.

use crate::history::{Kind, Value};
use crate::workload::{Completion, Objects};
use acre_replication::db::Db;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The first line a client process writes once it is connected: `ready <client id>`.
const READY: &str = "ready";

/// A client process, from the harness's side.
pub struct ClientProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The client id it claimed in the cluster.
    pub client: u32,
}

impl ClientProcess {
    /// Starts `acre jepsen-client` on the cluster file, with the workload's objects in
    /// `objects` (JSON); its stderr goes to `log`. Returns once it is connected.
    pub fn spawn(
        acre: &Path,
        cluster_file: &Path,
        objects: &Path,
        log: &Path,
    ) -> Result<ClientProcess, String> {
        let errors = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("open {}: {e}", log.display()))?;
        let mut child = Command::new(acre)
            .arg("jepsen-client")
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--objects")
            .arg(objects)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(errors)
            .spawn()
            .map_err(|e| format!("start a client process ({}): {e}", acre.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        let ready = stdout.read_line(&mut line).map_err(|e| e.to_string());
        let client = match ready {
            Ok(n) if n > 0 => line
                .trim()
                .strip_prefix(READY)
                .and_then(|id| id.trim().parse::<u32>().ok()),
            _ => None,
        };
        let Some(client) = client else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "a client process did not connect (it said {:?}; its log: {})",
                line.trim(),
                log.display()
            ));
        };
        Ok(ClientProcess {
            child,
            stdin,
            stdout,
            client,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Has the process run `value`; `Err` when it died or answered what is not a completion
    /// (the operation's outcome is then unknown).
    pub fn invoke(&mut self, value: &Value) -> Result<Completion, String> {
        let mut line = serde_json::to_string(value).map_err(|e| e.to_string())?;
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("client process {} (pid {}): {e}", self.client, self.pid()))?;
        let mut answer = String::new();
        match self.stdout.read_line(&mut answer) {
            Ok(0) => Err(format!(
                "client process {} (pid {}) ended",
                self.client,
                self.pid()
            )),
            Ok(_) => serde_json::from_str(&answer)
                .map_err(|e| format!("client process {} answered {answer:?}: {e}", self.client)),
            Err(e) => Err(format!(
                "client process {} (pid {}): {e}",
                self.client,
                self.pid()
            )),
        }
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        // Its stdin closes with it: a live process ends at once, as after Ctrl-C, dropping its
        // `Db` (which sends its truncations). One that does not within a few seconds is killed.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client process's side (`acre jepsen-client`): connects to the cluster, says `ready
/// <client id>`, then runs each operation read from stdin and writes its completion, until
/// stdin ends.
pub fn serve(cluster_file: &Path, objects: &Path) -> Result<(), String> {
    let text =
        std::fs::read_to_string(objects).map_err(|e| format!("read {}: {e}", objects.display()))?;
    let objects: Objects =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", objects.display()))?;
    let workload = objects.workload();
    let db = Db::connect(cluster_file).map_err(|e| format!("connect: {e}"))?;
    let client = db.client_id().map_or(0, |id| u32::from(id.0));
    let mut out = std::io::stdout().lock();
    writeln!(out, "{READY} {client}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let completion = match serde_json::from_str::<Value>(&line) {
            Ok(value) => workload.invoke(&db, &value),
            Err(error) => {
                return Err(format!(
                    "an operation that does not parse: {line:?}: {error}"
                ));
            }
        };
        let mut answer = serde_json::to_string(&completion).map_err(|e| e.to_string())?;
        answer.push('\n');
        out.write_all(answer.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The completion of an operation whose client process failed: unknown.
pub fn lost(value: &Value, error: String) -> Completion {
    Completion {
        kind: Kind::Info,
        value: value.clone(),
        error: Some(error),
    }
}

/// The clients' way onto the cluster, which the `truncate` nemesis closes while it stops the
/// cluster as a whole and damages files: every worker lets go of its client (its `Db`, or its
/// client process, each a clean stop) before the cluster stops, and connects anew once it is
/// back. A client of the earlier run must not go on writing into rings that the restart
/// recovered, and cut back where they were damaged.
#[derive(Default)]
pub struct Gate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Workers holding a client of the cluster (or connecting one).
    holding: usize,
}

impl Gate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().expect("the gate's lock")
    }

    /// A worker about to connect a client: false while the gate is closed (connect nothing).
    /// On true the worker counts as holding a client until [`Gate::leave`].
    pub fn enter(&self) -> bool {
        let mut state = self.state();
        if state.closed {
            return false;
        }
        state.holding += 1;
        true
    }

    /// The worker let go of its client (or did not manage to connect one).
    pub fn leave(&self) {
        let mut state = self.state();
        state.holding = state.holding.checked_sub(1).expect("a worker left twice");
        self.changed.notify_all();
    }

    /// Whether the worker holding a client must let go of it.
    pub fn is_closed(&self) -> bool {
        self.state().closed
    }

    /// Closes the gate and waits up to `bound` for every worker to let go of its client.
    /// False, with the gate open again, if some worker still held one at the bound.
    pub fn close(&self, bound: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + bound;
        let mut state = self.state();
        state.closed = true;
        while state.holding > 0 {
            let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) else {
                state.closed = false;
                self.changed.notify_all();
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .expect("the gate's lock")
                .0;
        }
        true
    }

    pub fn open(&self) {
        self.state().closed = false;
        self.changed.notify_all();
    }

    /// Waits (up to `most`) while the gate is closed.
    pub fn wait_open(&self, most: std::time::Duration) {
        let state = self.state();
        let _ = self
            .changed
            .wait_timeout_while(state, most, |s| s.closed)
            .expect("the gate's lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn the_gate_closes_only_once_every_client_is_let_go_and_keeps_new_ones_out() {
        let gate = Arc::new(Gate::default());
        assert!(gate.enter());
        // Held: a close gives up at its bound and leaves the gate open.
        assert!(!gate.close(Duration::from_millis(20)));
        assert!(!gate.is_closed());
        let worker = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                while !gate.is_closed() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                gate.leave();
                gate.wait_open(Duration::from_secs(10));
                assert!(gate.enter());
            })
        };
        assert!(gate.close(Duration::from_secs(10)));
        assert!(!gate.enter(), "no client connects while the gate is closed");
        gate.open();
        worker.join().unwrap();
        assert!(
            !gate.close(Duration::from_millis(1)),
            "the worker holds a client again"
        );
    }
}
