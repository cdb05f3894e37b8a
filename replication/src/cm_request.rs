//! Requests to the acting CM, and its answers, as files of the cluster directory
//! (docs/failures.md#asking-the-cm): `acre cluster add-node` and `remove-node` ask for a change
//! of membership, and a client whose regions are all full asks for a new region.
//!
//! A request is `cm-requests/<nonce>.toml`, written atomically by the asker; the housekeeping
//! thread of the replica that acts as CM takes every fresh request, hands its [`Change`] to the
//! CM's manager, writes the answer as `cm-replies/<nonce>.toml` and removes the request, so a
//! request is acted on at most once even when the leadership moves (a new CM finds only the
//! requests nobody answered). A request older than [`REQUEST_MAX_AGE`] is removed unanswered:
//! its asker stopped waiting. The asker removes the answer once it read it; an answer nobody
//! read is removed after [`REPLY_MAX_AGE`].
//!
//! A test that needs something to happen before a restart request reaches the CM (the CM
//! removing a member that `acre cluster up` restarts in place) creates [`HOLD_RESTART_FILE`] in
//! the cluster directory: [`ask`] writes no [`Change::Restart`] while that file is there.

use crate::cm_status::{CmStatusError, read_toml, write_toml};
pub use acre_cm::manager::{BUSY, Change};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The directory of pending requests in a cluster directory.
pub const CM_REQUESTS_DIR: &str = "cm-requests";
/// The directory of the CM's answers.
pub const CM_REPLIES_DIR: &str = "cm-replies";
/// How old a request may be and still be acted on.
pub const REQUEST_MAX_AGE: Duration = Duration::from_secs(5);
/// How long an answer nobody read is kept.
pub const REPLY_MAX_AGE: Duration = Duration::from_secs(60);
/// How often an asker looks for its answer.
const POLL: Duration = Duration::from_millis(10);
/// While this file is in the cluster directory, [`ask`] holds back every [`Change::Restart`]
/// (at most its timeout, then [`AskError::Held`]): the hook that lets a test have the CM
/// remove a member before `acre cluster up`'s restart request reaches it, an order a real
/// cluster meets only by chance (tests/it/cm.rs). Nothing else creates it.
pub const HOLD_RESTART_FILE: &str = "hold-restart-request";

/// A request to the CM, told apart from the others by its nonce.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmRequest {
    pub nonce: u64,
    pub change: Change,
}

/// The acting CM's answer to the request with `nonce`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CmReply {
    pub nonce: u64,
    pub accepted: bool,
    /// Whether a reconfiguration started (accepted with nothing to do otherwise).
    #[serde(default)]
    pub started: bool,
    /// Why it was refused, or what was started.
    pub message: String,
    /// The configuration id the change starts from.
    #[serde(default)]
    pub from_id: u64,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AskError {
    #[error("cannot write the request to the CM {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "no acting CM answered within {waited:?}: see `acre cluster status --dir {}` (a \
         majority of the CM replicas must run)",
        dir.display()
    )]
    NoAnswer { dir: PathBuf, waited: Duration },
    #[error(
        "the restart request was held back for {waited:?} by {}: remove that file (a test's \
         hook) to let it through",
        path.display()
    )]
    Held { path: PathBuf, waited: Duration },
}

fn request_path(dir: &Path, nonce: u64) -> PathBuf {
    dir.join(CM_REQUESTS_DIR).join(format!("{nonce}.toml"))
}

fn reply_path(dir: &Path, nonce: u64) -> PathBuf {
    dir.join(CM_REPLIES_DIR).join(format!("{nonce}.toml"))
}

/// A nonce no other asker on this host picks: the time in nanoseconds, the process and a
/// counter.
fn fresh_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let salt = (u64::from(std::process::id()) << 16) ^ COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos ^ salt.rotate_left(40)
}

/// Asks the acting CM of the cluster in `dir` for `change` and waits at most `timeout` for its
/// answer (accepted or refused, with the reason).
pub fn ask(dir: &Path, change: Change, timeout: Duration) -> Result<CmReply, AskError> {
    if matches!(change, Change::Restart { .. }) {
        wait_while_held(dir, timeout)?;
    }
    let nonce = fresh_nonce();
    let path = request_path(dir, nonce);
    let write = || -> io::Result<()> {
        std::fs::create_dir_all(dir.join(CM_REQUESTS_DIR))?;
        write_toml(&path, &CmRequest { nonce, change })
    };
    write().map_err(|source| AskError::Write {
        path: path.clone(),
        source,
    })?;
    let reply_path = reply_path(dir, nonce);
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(reply)) = read_toml::<CmReply>(&reply_path)
            && reply.nonce == nonce
        {
            let _ = std::fs::remove_file(&reply_path);
            return Ok(reply);
        }
        if Instant::now() >= deadline {
            // Not acted on later: the CM ignores old requests, and this one goes now.
            let _ = std::fs::remove_file(&path);
            return Err(AskError::NoAnswer {
                dir: dir.to_path_buf(),
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Waits at most `timeout` while [`HOLD_RESTART_FILE`] is in `dir`. A hold that outlasts the
/// wait is an error, as an unanswered request is: the asker asks again while its own deadline
/// allows, so the hold lasts until the test removes the file or that deadline passes.
fn wait_while_held(dir: &Path, timeout: Duration) -> Result<(), AskError> {
    let path = dir.join(HOLD_RESTART_FILE);
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            return Err(AskError::Held {
                path,
                waited: timeout,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

/// The CM's side: the fresh requests pending in `dir`, oldest first. Removes the requests too
/// old to act on, unreadable ones (with a warning) and answers nobody read in time.
pub fn pending(dir: &Path) -> Vec<CmRequest> {
    sweep(&dir.join(CM_REPLIES_DIR), REPLY_MAX_AGE);
    let requests = dir.join(CM_REQUESTS_DIR);
    let mut fresh = Vec::new();
    for (path, modified) in sweep(&requests, REQUEST_MAX_AGE) {
        if path.extension().is_none_or(|e| e != "toml") {
            // A temporary file being renamed into place.
            continue;
        }
        match read_toml::<CmRequest>(&path) {
            Ok(Some(request)) => fresh.push((modified, request)),
            Ok(None) => {}
            Err(e @ CmStatusError::Parse { .. }) => {
                tracing::warn!("{e}; removing it");
                let _ = std::fs::remove_file(&path);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    fresh.sort_by_key(|(modified, request)| (*modified, request.nonce));
    fresh.into_iter().map(|(_, request)| request).collect()
}

/// The CM's side: answers a request and removes it, so that no CM acts on it again.
pub fn answer(dir: &Path, reply: &CmReply) -> io::Result<()> {
    std::fs::create_dir_all(dir.join(CM_REPLIES_DIR))?;
    write_toml(&reply_path(dir, reply.nonce), reply)?;
    match std::fs::remove_file(request_path(dir, reply.nonce)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The files of `dir` younger than `max_age`, with their modification times; older ones are
/// removed.
fn sweep(dir: &Path, max_age: Duration) -> Vec<(PathBuf, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut young = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        if modified.elapsed().is_ok_and(|age| age >= max_age) {
            let _ = std::fs::remove_file(&path);
        } else {
            young.push((path, modified));
        }
    }
    young
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::{NodeId, RegionId};

    #[test]
    fn a_request_is_answered_once_and_both_files_go() {
        let dir = tempfile::tempdir().unwrap();
        let cm_dir = dir.path().to_path_buf();
        let cm = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let requests = pending(&cm_dir);
                if let Some(request) = requests.first() {
                    assert_eq!(requests.len(), 1);
                    assert_eq!(request.change, Change::Remove { node: NodeId(3) });
                    answer(
                        &cm_dir,
                        &CmReply {
                            nonce: request.nonce,
                            accepted: false,
                            started: false,
                            message: "no".into(),
                            from_id: 7,
                        },
                    )
                    .unwrap();
                    assert!(pending(&cm_dir).is_empty(), "answered requests are gone");
                    return;
                }
                assert!(Instant::now() < deadline, "no request arrived");
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let reply = ask(
            dir.path(),
            Change::Remove { node: NodeId(3) },
            Duration::from_secs(5),
        )
        .unwrap();
        cm.join().unwrap();
        assert!(!reply.accepted);
        assert_eq!((reply.message.as_str(), reply.from_id), ("no", 7));
        let left = |name| std::fs::read_dir(dir.path().join(name)).unwrap().count();
        assert_eq!((left(CM_REQUESTS_DIR), left(CM_REPLIES_DIR)), (0, 0));
    }

    #[test]
    fn an_unanswered_request_times_out_and_is_withdrawn() {
        let dir = tempfile::tempdir().unwrap();
        let error = ask(
            dir.path(),
            Change::AddRegion { known_regions: 3 },
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(error, AskError::NoAnswer { .. }), "{error}");
        assert!(pending(dir.path()).is_empty());
    }

    #[test]
    fn a_restart_request_waits_while_the_hold_file_is_there_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let hold = dir.path().join(HOLD_RESTART_FILE);
        std::fs::write(&hold, b"").unwrap();
        let restart = Change::Restart {
            nodes: vec![NodeId(2)],
            damaged: Vec::new(),
        };
        let error = ask(dir.path(), restart.clone(), Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, AskError::Held { .. }), "{error}");
        assert!(pending(dir.path()).is_empty(), "nothing was written");
        // Another change goes through the hold (unanswered here: nobody acts as CM).
        let error = ask(
            dir.path(),
            Change::AddRegion { known_regions: 3 },
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(error, AskError::NoAnswer { .. }), "{error}");
        // The hold lifted, the restart request is written (and withdrawn unanswered).
        std::fs::remove_file(&hold).unwrap();
        let error = ask(dir.path(), restart, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(error, AskError::NoAnswer { .. }), "{error}");
    }

    #[test]
    fn every_change_reads_back_as_written() {
        for change in [
            Change::Remove { node: NodeId(2) },
            Change::AddNode {
                node: NodeId(9),
                domain: Some("rack-b".into()),
            },
            Change::AddNode {
                node: NodeId(9),
                domain: None,
            },
            Change::AddRegion { known_regions: 4 },
            Change::Activate {
                config: 7,
                regions: vec![RegionId(3), RegionId(5)],
                node: None,
                copied: Vec::new(),
            },
            Change::Activate {
                config: 7,
                regions: vec![RegionId(3)],
                node: Some(NodeId(2)),
                copied: vec![RegionId(4)],
            },
        ] {
            let request = CmRequest { nonce: 11, change };
            let text = toml::to_string(&request).unwrap();
            assert_eq!(
                toml::from_str::<CmRequest>(&text).unwrap(),
                request,
                "{text}"
            );
        }
    }

    /// A request written before copies were reported (no `node`, no `copied`) still reads.
    #[test]
    fn an_activation_without_copies_reads() {
        let text = "nonce = 3\n[change]\nchange = \"activate\"\nconfig = 7\nregions = [2]\n";
        let request: CmRequest = toml::from_str(text).unwrap();
        assert_eq!(
            request.change,
            Change::Activate {
                config: 7,
                regions: vec![RegionId(2)],
                node: None,
                copied: Vec::new(),
            }
        );
    }
}
