//! The durable Raft storage of one CM replica: its log, hard state and snapshot in files under
//! the replica's directory, so that a replica that crashes comes back with every vote and
//! every entry it acknowledged (Raft's safety rests on that: a vote or an acknowledged append
//! that a crash forgets can elect two leaders or lose a committed configuration).
//!
//! Three files:
//! - `log`: append-only frames `[len u32][crc32c u32][entry]`, little-endian, the CRC over the
//!   length's bytes and the protobuf-encoded `eraftpb::Entry`. A conflicting suffix is cut with
//!   `ftruncate` at its first frame's offset; compaction rewrites the file with the entries it
//!   keeps (the CM's log is a handful of small entries, so a rewrite costs little and keeps one
//!   file).
//! - `state`: the hard state, the conf state, the applied index and the state machine's bytes,
//!   replaced atomically (write a temporary file, fsync, rename, fsync the directory).
//! - `snapshot`: the state machine's bytes at an index (with its term and conf state), replaced
//!   the same way; the log holds only entries after it.
//!
//! Every write of one `Ready` is made durable by [`CmStorage::sync`], one batch of fsyncs.
//! A damaged file is an error at open that names the file and the byte offset, never a silent
//! repair. The one exception is a log whose last frame is incomplete (the file ends inside it):
//! only a crash during an append that was never fsynced, hence never acknowledged, leaves one,
//! so it is cut off with a loud warning. A complete frame with a bad CRC is damage.
//!
//! Entries are also kept in memory: the CM's log is short (it is compacted every
//! [`StorageOptions::compact_entry_count`] applied entries) and raft reads it often.

use acre_nvm_log::crc::Crc32c;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Bytes of a log frame's header: length and CRC32C.
pub const FRAME_HEADER_BYTES: u64 = 8;
/// The largest entry a frame may hold: a configuration of thousands of regions is well below
/// it; a length above it is damage, not a big entry.
pub const ENTRY_BYTES_MAX: u32 = 64 << 20;
/// Magic at the start of the `state` file.
const STATE_MAGIC: &[u8; 8] = b"ACRECMS1";
/// Magic at the start of the `snapshot` file.
const SNAPSHOT_MAGIC: &[u8; 8] = b"ACRECMP1";
/// Magic, length and CRC before the body of an atomically replaced file.
const FILE_HEADER_BYTES: usize = 16;

pub const LOG_FILE: &str = "log";
pub const STATE_FILE: &str = "state";
pub const SNAPSHOT_FILE: &str = "snapshot";

/// Why the storage cannot go on. Every variant stops the replica: a replica with a damaged or
/// unwritable directory must not vote or acknowledge; the other replicas carry on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("CM storage: cannot {op} {path}: {source}; fix the disk or directory and restart")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "CM storage: {path} is damaged at byte {offset}: {what}; stop this replica, move its \
         directory away and let it rejoin empty (the other replicas send it a snapshot)"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// Fault injection only ([`CmStorage::crash_at_next_sync`]): the process "died" at a sync
    /// point; drop the replica and reopen its directory.
    #[error("CM storage: simulated crash at a sync point of {path}")]
    Crashed { path: PathBuf },
}

/// Whether [`CmStorage::sync`] calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync at every sync point: what a real replica runs.
    Fsync,
    /// No fsync call: the data still goes to the files at the same points, but a power loss may
    /// lose it. For simulations that model a crash themselves
    /// ([`CmStorage::crash_at_next_sync`]) and would otherwise spend their time in fsync.
    OsCache,
}

#[derive(Clone, Debug)]
pub struct StorageOptions {
    pub durability: Durability,
    /// Compact the log once this many applied entries follow the snapshot.
    pub compact_entry_count: u64,
}

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            durability: Durability::Fsync,
            compact_entry_count: 1024,
        }
    }
}

/// The persisted record of the `state` file.
#[derive(Clone, PartialEq, prost::Message)]
struct StateRecord {
    /// `eraftpb::HardState`, protobuf.
    #[prost(bytes = "vec", tag = "1")]
    hard_state: Vec<u8>,
    /// `eraftpb::ConfState`, protobuf.
    #[prost(bytes = "vec", tag = "2")]
    conf_state: Vec<u8>,
    #[prost(uint64, tag = "3")]
    applied_index: u64,
    /// The state machine after applying `applied_index`.
    #[prost(bytes = "vec", tag = "4")]
    machine: Vec<u8>,
}

/// Where a frame of the log file starts, and the index of the entry it holds.
#[derive(Clone, Copy, Debug)]
struct Frame {
    offset: u64,
}

/// A replica's durable Raft storage (module docs).
pub struct CmStorage {
    dir: PathBuf,
    options: StorageOptions,
    log: File,
    log_bytes: u64,
    /// Bytes of the log file known durable; a simulated crash keeps at most these and a torn
    /// part of the rest.
    log_synced_bytes: u64,
    /// `entries[k]` has index `snapshot_index + 1 + k`, and lives at `frames[k]`.
    entries: Vec<Entry>,
    frames: Vec<Frame>,
    snapshot: Snapshot,
    hard_state: HardState,
    conf_state: ConfState,
    applied_index: u64,
    machine: Vec<u8>,
    /// Whether the state file is behind memory.
    state_dirty: bool,
    crash_at_next_sync: bool,
}

impl CmStorage {
    /// Opens the storage in `dir`, or creates an empty one whose voters are `voters` (every
    /// replica of a new group starts with the same voters and an empty log; a replica that
    /// joins a running group starts with none and learns them from the snapshot the leader
    /// sends it, [`CmStorage::maybe_compact`]).
    pub fn open(
        dir: &Path,
        voters: &[u64],
        options: StorageOptions,
    ) -> Result<CmStorage, StorageError> {
        assert!(
            options.compact_entry_count > 0,
            "compact_entry_count must be positive"
        );
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match read_atomic(&snapshot_path, SNAPSHOT_MAGIC)? {
            Some(body) => Snapshot::parse_from_bytes(&body).map_err(|e| StorageError::Corrupt {
                path: snapshot_path.clone(),
                offset: FILE_HEADER_BYTES as u64,
                what: format!("undecodable snapshot: {e}"),
            })?,
            // No snapshot yet: the group's first voters are what it starts from, as a snapshot
            // at index 0 would say (maybe_compact compares the membership with it).
            None => {
                let mut snapshot = Snapshot::default();
                snapshot
                    .mut_metadata()
                    .mut_conf_state()
                    .set_voters(voters.to_vec());
                snapshot
            }
        };
        let state_path = dir.join(STATE_FILE);
        let (mut hard_state, mut conf_state, mut applied_index, mut machine, fresh) =
            match read_atomic(&state_path, STATE_MAGIC)? {
                Some(body) => {
                    let corrupt = |what: String| StorageError::Corrupt {
                        path: state_path.clone(),
                        offset: FILE_HEADER_BYTES as u64,
                        what,
                    };
                    let record = <StateRecord as prost::Message>::decode(&body[..])
                        .map_err(|e| corrupt(format!("undecodable state: {e}")))?;
                    let hard_state = HardState::parse_from_bytes(&record.hard_state)
                        .map_err(|e| corrupt(format!("undecodable hard state: {e}")))?;
                    let conf_state = ConfState::parse_from_bytes(&record.conf_state)
                        .map_err(|e| corrupt(format!("undecodable conf state: {e}")))?;
                    (
                        hard_state,
                        conf_state,
                        record.applied_index,
                        record.machine,
                        false,
                    )
                }
                None => {
                    let mut conf_state = ConfState::default();
                    conf_state.set_voters(voters.to_vec());
                    (HardState::default(), conf_state, 0, Vec::new(), true)
                }
            };
        let snapshot_index = snapshot.get_metadata().index;
        // A crash between writing a snapshot and the state after it leaves the state behind
        // the snapshot, which holds committed state: take the snapshot's.
        if snapshot_index > applied_index {
            applied_index = snapshot_index;
            machine = snapshot.data.to_vec();
            conf_state = snapshot.get_metadata().get_conf_state().clone();
            hard_state.commit = hard_state.commit.max(snapshot_index);
        }
        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io("open", &log_path))?;
        let (mut entries, mut frames, log_bytes) = read_log(&mut log, &log_path)?;
        // Entries up to the snapshot are left over from a crash during compaction or while
        // installing a received snapshot; entries after it that do not continue it (the term at
        // its index differs) are the rest of a log the snapshot replaced.
        let covered = entries
            .iter()
            .take_while(|e| e.index <= snapshot_index)
            .count();
        if let Some(at) = covered.checked_sub(1).and_then(|k| entries.get(k))
            && at.index == snapshot_index
            && at.term != snapshot.get_metadata().term
        {
            tracing::warn!(
                path = %log_path.display(),
                snapshot_index,
                "CM log does not continue the snapshot (a crash while installing it): dropping \
                 the entries after it"
            );
            entries.clear();
            frames.clear();
        } else if let Some(first) = entries.get(covered)
            && first.index != snapshot_index + 1
        {
            return Err(StorageError::Corrupt {
                path: log_path,
                offset: frames[covered].offset,
                what: format!(
                    "entry {} follows the snapshot at {snapshot_index}: entries are missing",
                    first.index
                ),
            });
        } else {
            entries.drain(..covered);
            frames.drain(..covered);
        }
        // The state is written only after the entries it covers are durable: a state ahead of
        // the log means the log lost durable entries.
        let last_index = snapshot_index + entries.len() as u64;
        let ahead = [("applied", applied_index), ("committed", hard_state.commit)]
            .into_iter()
            .find(|&(_, index)| index > last_index);
        if let Some((what, index)) = ahead {
            return Err(StorageError::Corrupt {
                path: log_path,
                offset: log_bytes,
                what: format!(
                    "the state says entry {index} is {what}, the log ends at entry {last_index}"
                ),
            });
        }
        let mut storage = CmStorage {
            dir: dir.to_path_buf(),
            options,
            log,
            log_bytes,
            log_synced_bytes: log_bytes,
            entries,
            frames,
            snapshot,
            hard_state,
            conf_state,
            applied_index,
            machine,
            state_dirty: fresh,
            crash_at_next_sync: false,
        };
        if storage.frames.is_empty() && storage.log_bytes > 0 {
            // Nothing kept (all entries were covered or dropped): start the file again.
            storage.rewrite_log()?;
        } else if let Some(first) = storage.frames.first()
            && first.offset > 0
        {
            storage.rewrite_log()?;
        }
        storage.sync()?;
        // A crash between applying a conf change and compacting (maybe_compact's reason).
        storage.maybe_compact()?;
        Ok(storage)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The index of the last entry applied to the state machine, as last handed to
    /// [`CmStorage::set_applied`] (or read at open).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The state machine's bytes at [`CmStorage::applied_index`]; empty before anything was
    /// applied.
    pub fn machine(&self) -> &[u8] {
        &self.machine
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        assert!(
            hard_state.term >= self.hard_state.term,
            "term={} stored={}",
            hard_state.term,
            self.hard_state.term
        );
        if hard_state != self.hard_state {
            self.hard_state = hard_state;
            self.state_dirty = true;
        }
    }

    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hard_state.commit {
            self.hard_state.commit = commit;
            self.state_dirty = true;
        }
    }

    /// Records the state machine after applying `index` (made durable by the next sync).
    pub fn set_applied(&mut self, index: u64, machine: Vec<u8>) {
        assert!(
            index >= self.applied_index,
            "applied index goes back: index={index} applied={}",
            self.applied_index
        );
        assert!(
            index <= self.hard_state.commit,
            "applied beyond commit: index={index} commit={}",
            self.hard_state.commit
        );
        self.applied_index = index;
        self.machine = machine;
        self.state_dirty = true;
    }

    /// Records the group's membership after a conf change applied at the applied index that
    /// [`CmStorage::set_applied`] records with it (one state file holds both, so a crash keeps
    /// both or neither). raft-rs asks for it to be stored before the next `Ready` is handled.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        if conf_state != self.conf_state {
            self.conf_state = conf_state;
            self.state_dirty = true;
        }
    }

    /// Appends `entries` (written, durable at the next sync), first cutting any entries from
    /// the first one's index on: raft hands a follower entries that replace a conflicting
    /// suffix.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let snapshot_index = self.snapshot_index();
        assert!(
            first.index > snapshot_index,
            "append at {} into the snapshot at {snapshot_index}",
            first.index
        );
        assert!(
            first.index <= self.last_index() + 1,
            "append at {} leaves a gap after {}",
            first.index,
            self.last_index()
        );
        assert!(
            first.index > self.hard_state.commit.min(self.last_index()),
            "append at {} overwrites committed entries up to {}",
            first.index,
            self.hard_state.commit
        );
        let keep = (first.index - snapshot_index - 1) as usize;
        if keep < self.entries.len() {
            let offset = self.frames[keep].offset;
            self.log
                .set_len(offset)
                .map_err(io("truncate", &self.log_path()))?;
            // The cut is made durable before new frames go where the old ones were: a crash must
            // not leave new frames after a stale suffix whose cut it forgot.
            if self.options.durability == Durability::Fsync {
                self.log
                    .sync_data()
                    .map_err(io("fsync", &self.log_path()))?;
            }
            self.entries.truncate(keep);
            self.frames.truncate(keep);
            self.log_bytes = offset;
            self.log_synced_bytes = self.log_synced_bytes.min(offset);
        }
        let mut batch = Vec::new();
        for (k, entry) in entries.iter().enumerate() {
            assert!(
                entry.index == first.index + k as u64,
                "entries not contiguous: {} at position {k} after {}",
                entry.index,
                first.index
            );
            let offset = self.log_bytes + batch.len() as u64;
            encode_frame(entry, &mut batch);
            self.frames.push(Frame { offset });
            self.entries.push(entry.clone());
        }
        self.log
            .write_all(&batch)
            .map_err(io("append to", &self.log_path()))?;
        self.log_bytes += batch.len() as u64;
        Ok(())
    }

    /// Installs a snapshot received from the leader: it replaces the state machine and the
    /// whole log. Durable at once (snapshot file first, so a crash in between leaves a
    /// snapshot that [`CmStorage::open`] prefers to the older state).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        let metadata = snapshot.get_metadata();
        assert!(
            metadata.index > self.hard_state.commit,
            "snapshot at {} does not pass commit {}",
            metadata.index,
            self.hard_state.commit
        );
        self.write_snapshot(&snapshot)?;
        self.hard_state.commit = metadata.index;
        self.conf_state = metadata.get_conf_state().clone();
        self.applied_index = metadata.index;
        self.machine = snapshot.data.to_vec();
        self.entries.clear();
        self.frames.clear();
        self.snapshot = snapshot;
        self.rewrite_log()?;
        self.state_dirty = true;
        self.sync()
    }

    /// Compacts the log if [`StorageOptions::compact_entry_count`] applied entries follow the
    /// snapshot, or if the applied membership is not the snapshot's: a new snapshot of the
    /// applied state, then a log without the entries it covers. Returns whether it compacted.
    ///
    /// Why the membership: a replica that joins the group starts empty, with no voters, and
    /// must learn the membership from a snapshot, never by replaying the log from its start:
    /// the group's first voters are in no entry (every replica of a new group starts with them,
    /// [`CmStorage::open`]), so a joiner that replayed the log would apply the conf changes to
    /// an empty membership and count itself in a group of its own. Raft sends a snapshot to a
    /// follower whose next entry the leader's log no longer holds; compacting once a conf change
    /// is applied means that every replica that knows of a joiner (it applied the change that
    /// added it) has compacted past that change, so the joiner always gets a snapshot first.
    pub fn maybe_compact(&mut self) -> Result<bool, StorageError> {
        let snapshot_index = self.snapshot_index();
        let members_moved = self.applied_index > snapshot_index
            && self.conf_state != *self.snapshot.get_metadata().get_conf_state();
        if self.applied_index < snapshot_index + self.options.compact_entry_count && !members_moved
        {
            return Ok(false);
        }
        // The state file must not be behind the snapshot we are about to write.
        self.sync()?;
        let snapshot = self.applied_snapshot();
        self.write_snapshot(&snapshot)?;
        let covered = (self.applied_index - snapshot_index) as usize;
        self.entries.drain(..covered);
        self.frames.drain(..covered);
        self.snapshot = snapshot;
        self.rewrite_log()?;
        self.sync()?;
        Ok(true)
    }

    /// Makes every write since the last sync durable: the log (fsync) and, if it changed, the
    /// state file (atomic replace). Called once per `Ready` before the messages that depend on
    /// it go out.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.crash_at_next_sync {
            return Err(self.simulate_crash());
        }
        if self.log_synced_bytes != self.log_bytes {
            if self.options.durability == Durability::Fsync {
                self.log
                    .sync_data()
                    .map_err(io("fsync", &self.log_path()))?;
            }
            self.log_synced_bytes = self.log_bytes;
        }
        if self.state_dirty {
            let record = StateRecord {
                hard_state: self
                    .hard_state
                    .write_to_bytes()
                    .expect("hard state encodes"),
                conf_state: self
                    .conf_state
                    .write_to_bytes()
                    .expect("conf state encodes"),
                applied_index: self.applied_index,
                machine: self.machine.clone(),
            };
            let body = prost::Message::encode_to_vec(&record);
            write_atomic(
                &self.dir,
                STATE_FILE,
                STATE_MAGIC,
                &body,
                self.options.durability,
            )?;
            self.state_dirty = false;
        }
        Ok(())
    }

    /// Fault injection for simulations: the next [`CmStorage::sync`] fails with
    /// [`StorageError::Crashed`] after cutting the log to what was synced plus a torn part of
    /// the rest, as a power loss during that sync could leave it. The replica must then be
    /// dropped and its directory reopened.
    pub fn crash_at_next_sync(&mut self) {
        self.crash_at_next_sync = true;
    }

    fn simulate_crash(&mut self) -> StorageError {
        let unsynced = self.log_bytes - self.log_synced_bytes;
        // Keep a deterministic, torn part of the unsynced bytes: about half, cut mid-frame.
        let kept = self.log_synced_bytes + unsynced / 2;
        let path = self.log_path();
        if let Err(e) = self.log.set_len(kept) {
            tracing::error!(path = %path.display(), "simulated crash: cannot cut the log: {e}");
        }
        StorageError::Crashed { path }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// A snapshot of the applied state machine.
    fn applied_snapshot(&self) -> Snapshot {
        let mut metadata = SnapshotMetadata::default();
        metadata.set_index(self.applied_index);
        metadata.set_term(
            self.term_of(self.applied_index)
                .expect("the applied entry is in the log or the snapshot"),
        );
        metadata.set_conf_state(self.conf_state.clone());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.set_data(self.machine.clone().into());
        snapshot
    }

    fn write_snapshot(&self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let body = snapshot.write_to_bytes().expect("snapshot encodes");
        write_atomic(
            &self.dir,
            SNAPSHOT_FILE,
            SNAPSHOT_MAGIC,
            &body,
            self.options.durability,
        )
    }

    /// Replaces the log file with the frames of `self.entries` (atomically, durable).
    fn rewrite_log(&mut self) -> Result<(), StorageError> {
        let mut bytes = Vec::new();
        self.frames.clear();
        for entry in &self.entries {
            self.frames.push(Frame {
                offset: bytes.len() as u64,
            });
            encode_frame(entry, &mut bytes);
        }
        let path = self.log_path();
        write_file_atomic(&self.dir, LOG_FILE, &bytes, self.options.durability)?;
        self.log = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        self.log_bytes = bytes.len() as u64;
        self.log_synced_bytes = self.log_bytes;
        Ok(())
    }

    fn term_of(&self, index: u64) -> Option<u64> {
        let snapshot_index = self.snapshot_index();
        if index == snapshot_index {
            return Some(self.snapshot.get_metadata().term);
        }
        let k = index.checked_sub(snapshot_index + 1)?;
        self.entries.get(k as usize).map(|e| e.term)
    }
}

impl raft::Storage for CmStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let first = self.snapshot_index() + 1;
        if low < first {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        assert!(
            high <= self.last_index() + 1,
            "entries up to {high} asked, last is {}",
            self.last_index()
        );
        let mut entries = self.entries[(low - first) as usize..(high - first) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.snapshot_index() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_of(index)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.snapshot_index() + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The applied state is the newest snapshot there is; a follower that needs a newer one
        // waits until this replica applies further.
        if self.applied_index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.applied_snapshot())
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io { op, path, source }
}

fn frame_crc(len: [u8; 4], body: &[u8]) -> u32 {
    let mut crc = Crc32c::new();
    crc.update(&len);
    crc.update(body);
    crc.finish()
}

fn encode_frame(entry: &Entry, out: &mut Vec<u8>) {
    let body = entry.write_to_bytes().expect("an entry encodes");
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&len| len <= ENTRY_BYTES_MAX)
        .unwrap_or_else(|| panic!("entry {} is {} bytes", entry.index, body.len()));
    let len = len.to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&frame_crc(len, &body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Reads every frame of the log; cuts an incomplete last frame (module docs).
fn read_log(log: &mut File, path: &Path) -> Result<(Vec<Entry>, Vec<Frame>, u64), StorageError> {
    let mut bytes = Vec::new();
    log.seek(SeekFrom::Start(0)).map_err(io("seek", path))?;
    log.read_to_end(&mut bytes).map_err(io("read", path))?;
    let mut entries: Vec<Entry> = Vec::new();
    let mut frames = Vec::new();
    let mut offset = 0usize;
    let corrupt = |offset: usize, what: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    while offset < bytes.len() {
        let rest = &bytes[offset..];
        if rest.len() < FRAME_HEADER_BYTES as usize {
            return cut_incomplete(log, path, entries, frames, offset, bytes.len());
        }
        let len_bytes: [u8; 4] = rest[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(len_bytes);
        if len > ENTRY_BYTES_MAX {
            return Err(corrupt(
                offset,
                format!("frame length {len} above {ENTRY_BYTES_MAX}"),
            ));
        }
        let end = FRAME_HEADER_BYTES as usize + len as usize;
        if rest.len() < end {
            return cut_incomplete(log, path, entries, frames, offset, bytes.len());
        }
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let body = &rest[FRAME_HEADER_BYTES as usize..end];
        let computed = frame_crc(len_bytes, body);
        if crc != computed {
            return Err(corrupt(
                offset,
                format!("frame CRC {crc:#010x}, computed {computed:#010x}"),
            ));
        }
        let entry = Entry::parse_from_bytes(body)
            .map_err(|e| corrupt(offset, format!("undecodable entry: {e}")))?;
        if let Some(previous) = entries.last()
            && entry.index != previous.index + 1
        {
            return Err(corrupt(
                offset,
                format!("entry {} follows entry {}", entry.index, previous.index),
            ));
        }
        frames.push(Frame {
            offset: offset as u64,
        });
        entries.push(entry);
        offset += end;
    }
    Ok((entries, frames, bytes.len() as u64))
}

fn cut_incomplete(
    log: &mut File,
    path: &Path,
    entries: Vec<Entry>,
    frames: Vec<Frame>,
    offset: usize,
    file_bytes: usize,
) -> Result<(Vec<Entry>, Vec<Frame>, u64), StorageError> {
    tracing::warn!(
        path = %path.display(),
        offset,
        file_bytes,
        "CM log ends inside its last frame (a crash during an append that was never synced, \
         so never acknowledged): cutting it off at the frame's offset"
    );
    log.set_len(offset as u64).map_err(io("truncate", path))?;
    log.sync_data().map_err(io("fsync", path))?;
    Ok((entries, frames, offset as u64))
}

/// Reads a file written by [`write_atomic`]: `None` if it does not exist.
fn read_atomic(path: &Path, magic: &[u8; 8]) -> Result<Option<Vec<u8>>, StorageError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let corrupt = |offset: usize, what: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        what,
    };
    if bytes.len() < FILE_HEADER_BYTES {
        return Err(corrupt(
            0,
            format!("{} bytes, shorter than its header", bytes.len()),
        ));
    }
    if &bytes[..8] != magic {
        return Err(corrupt(0, "wrong magic".into()));
    }
    let len_bytes: [u8; 4] = bytes[8..12].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if bytes.len() != FILE_HEADER_BYTES + len {
        return Err(corrupt(
            8,
            format!(
                "length {len} does not match the file's {} bytes",
                bytes.len()
            ),
        ));
    }
    let body = &bytes[FILE_HEADER_BYTES..];
    let computed = frame_crc(len_bytes, body);
    if crc != computed {
        return Err(corrupt(
            12,
            format!("CRC {crc:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(Some(body.to_vec()))
}

/// Replaces `dir/name` with `magic`, length, CRC and `body`, atomically.
fn write_atomic(
    dir: &Path,
    name: &str,
    magic: &[u8; 8],
    body: &[u8],
    durability: Durability,
) -> Result<(), StorageError> {
    let len = u32::try_from(body.len()).expect("a CM state file is far below 4 GiB");
    let len_bytes = len.to_le_bytes();
    let mut bytes = Vec::with_capacity(FILE_HEADER_BYTES + body.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&len_bytes);
    bytes.extend_from_slice(&frame_crc(len_bytes, body).to_le_bytes());
    bytes.extend_from_slice(body);
    write_file_atomic(dir, name, &bytes, durability)
}

/// Write a temporary file, fsync it, rename it over `dir/name`, fsync the directory.
fn write_file_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    durability: Durability,
) -> Result<(), StorageError> {
    let path = dir.join(name);
    let temp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&temp).map_err(io("create", &temp))?;
    file.write_all(bytes).map_err(io("write", &temp))?;
    if durability == Durability::Fsync {
        file.sync_all().map_err(io("fsync", &temp))?;
    }
    drop(file);
    std::fs::rename(&temp, &path).map_err(io("rename", &temp))?;
    if durability == Durability::Fsync {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        let mut entry = Entry::default();
        entry.set_index(index);
        entry.set_term(term);
        entry.set_data(format!("entry {index} of term {term}").into_bytes().into());
        entry
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
        range.map(|index| entry(index, term)).collect()
    }

    fn options(compact_entry_count: u64) -> StorageOptions {
        StorageOptions {
            durability: Durability::Fsync,
            compact_entry_count,
        }
    }

    fn open(dir: &Path) -> CmStorage {
        CmStorage::open(dir, &[1, 2, 3], options(100)).unwrap()
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        let mut hs = HardState::default();
        hs.set_term(term);
        hs.set_vote(vote);
        hs.set_commit(commit);
        hs
    }

    fn all(storage: &CmStorage) -> Vec<Entry> {
        let first = storage.first_index().unwrap();
        let last = storage.last_index();
        storage
            .entries(first, last + 1, None, GetEntriesContext::empty(false))
            .unwrap()
    }

    #[test]
    fn entries_and_hard_state_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        let state = storage.initial_state().unwrap();
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert_eq!(storage.first_index().unwrap(), 1);
        assert_eq!(storage.last_index(), 0);
        storage.append(&entries(1..=5, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 2, 3));
        storage.set_applied(2, b"machine".to_vec());
        storage.sync().unwrap();
        drop(storage);

        let storage = open(dir.path());
        assert_eq!(all(&storage), entries(1..=5, 1));
        assert_eq!(storage.hard_state(), &hard_state(1, 2, 3));
        assert_eq!(storage.applied_index(), 2);
        assert_eq!(storage.machine(), b"machine");
        assert_eq!(storage.term(0).unwrap(), 0);
        assert_eq!(storage.term(4).unwrap(), 1);
        assert!(matches!(
            storage.term(6),
            Err(raft::Error::Store(raft::StorageError::Unavailable))
        ));
        let limited = storage
            .entries(1, 6, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(limited.len(), 1, "max_size still returns one entry");
    }

    #[test]
    fn a_conflicting_suffix_is_cut_at_its_frame() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=5, 1)).unwrap();
        storage.sync().unwrap();
        let third_offset = storage.frames[2].offset;
        storage.append(&entries(3..=4, 2)).unwrap();
        storage.sync().unwrap();
        assert_eq!(storage.frames[2].offset, third_offset);
        let mut expected = entries(1..=2, 1);
        expected.extend(entries(3..=4, 2));
        assert_eq!(all(&storage), expected);
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(all(&storage), expected);
        let file_bytes = std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len();
        assert_eq!(file_bytes, storage.log_bytes);
    }

    #[test]
    fn compaction_keeps_a_snapshot_and_the_entries_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = CmStorage::open(dir.path(), &[1, 2, 3], options(4)).unwrap();
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.append(&entries(4..=7, 2)).unwrap();
        storage.set_hard_state(hard_state(2, 1, 6));
        storage.set_applied(3, b"three".to_vec());
        storage.sync().unwrap();
        assert!(!storage.maybe_compact().unwrap(), "only 3 applied entries");
        storage.set_applied(5, b"five".to_vec());
        assert!(storage.maybe_compact().unwrap());
        let check = |storage: &CmStorage| {
            assert_eq!(storage.first_index().unwrap(), 6);
            assert_eq!(storage.last_index(), 7);
            assert_eq!(storage.term(5).unwrap(), 2);
            assert!(matches!(
                storage.term(4),
                Err(raft::Error::Store(raft::StorageError::Compacted))
            ));
            assert!(matches!(
                storage.entries(5, 7, None, GetEntriesContext::empty(false)),
                Err(raft::Error::Store(raft::StorageError::Compacted))
            ));
            assert_eq!(all(storage), entries(6..=7, 2));
            let snapshot = storage.snapshot(5, 2).unwrap();
            assert_eq!(snapshot.get_metadata().index, 5);
            assert_eq!(snapshot.get_metadata().term, 2);
            assert_eq!(&snapshot.data[..], b"five");
            assert_eq!(
                snapshot.get_metadata().get_conf_state().voters,
                vec![1, 2, 3]
            );
        };
        check(&storage);
        drop(storage);
        let storage = CmStorage::open(dir.path(), &[1, 2, 3], options(4)).unwrap();
        check(&storage);
        assert_eq!(storage.applied_index(), 5);
    }

    #[test]
    fn a_received_snapshot_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 0, 1));
        storage.sync().unwrap();
        let mut metadata = SnapshotMetadata::default();
        metadata.set_index(10);
        metadata.set_term(3);
        metadata.set_conf_state(storage.conf_state().clone());
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot.set_data(b"ten".to_vec().into());
        storage.apply_snapshot(snapshot).unwrap();
        storage.append(&entries(11..=11, 3)).unwrap();
        storage.sync().unwrap();
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(storage.first_index().unwrap(), 11);
        assert_eq!(all(&storage), entries(11..=11, 3));
        assert_eq!(storage.applied_index(), 10);
        assert_eq!(storage.machine(), b"ten");
        assert_eq!(storage.hard_state().commit, 10);
    }

    /// A crash while installing a received snapshot: the snapshot file is new, the log and the
    /// state are old.
    #[test]
    fn a_crash_while_installing_a_snapshot_leaves_the_snapshot_in_charge() {
        for (snapshot_term, kept) in [(1, entries(3..=4, 1)), (2, Vec::new())] {
            let dir = tempfile::tempdir().unwrap();
            let mut storage = open(dir.path());
            storage.append(&entries(1..=4, 1)).unwrap();
            storage.set_hard_state(hard_state(2, 0, 1));
            storage.sync().unwrap();
            let mut metadata = SnapshotMetadata::default();
            metadata.set_index(2);
            metadata.set_term(snapshot_term);
            metadata.set_conf_state(storage.conf_state().clone());
            let mut snapshot = Snapshot::default();
            snapshot.set_metadata(metadata);
            snapshot.set_data(b"two".to_vec().into());
            storage.write_snapshot(&snapshot).unwrap();
            drop(storage);

            let storage = open(dir.path());
            assert_eq!(storage.snapshot_index(), 2);
            assert_eq!(storage.applied_index(), 2);
            assert_eq!(storage.machine(), b"two");
            assert_eq!(storage.hard_state().commit, 2);
            // Entries that continue the snapshot (same term at its index) stay; others go.
            assert_eq!(all(&storage), kept, "snapshot term {snapshot_term}");
        }
    }

    #[test]
    fn a_log_shorter_than_the_state_says_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 0, 3));
        storage.sync().unwrap();
        let second = storage.frames[1].offset;
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(second).unwrap();
        drop(file);
        let error = CmStorage::open(dir.path(), &[1, 2, 3], options(100))
            .err()
            .expect("committed entries are missing");
        assert!(
            error
                .to_string()
                .contains("entry 3 is committed, the log ends at entry 1"),
            "{error}"
        );
    }

    #[test]
    fn a_flipped_byte_is_an_error_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.sync().unwrap();
        let second = storage.frames[1].offset;
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[second as usize + FRAME_HEADER_BYTES as usize + 3] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let error = CmStorage::open(dir.path(), &[1, 2, 3], options(100))
            .err()
            .expect("a flipped byte is damage");
        match &error {
            StorageError::Corrupt {
                path: at, offset, ..
            } => {
                assert_eq!(at, &path);
                assert_eq!(*offset, second);
            }
            other => panic!("{other}"),
        }
        assert!(
            error.to_string().contains(&format!("byte {second}")),
            "{error}"
        );
        // The file is left as it was: no repair behind the operator's back.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // The state file too.
        let state = dir.path().join(STATE_FILE);
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&state, &bytes).unwrap();
        let error = CmStorage::open(dir.path(), &[1, 2, 3], options(100))
            .err()
            .expect("a damaged state file is an error");
        assert!(error.to_string().contains("state is damaged"), "{error}");
    }

    #[test]
    fn an_incomplete_last_frame_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=3, 1)).unwrap();
        storage.sync().unwrap();
        let third = storage.frames[2].offset;
        drop(storage);
        let path = dir.path().join(LOG_FILE);
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        for cut in [file_bytes - 1, third + 5, third + 1] {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut).unwrap();
            drop(file);
            let mut storage = open(dir.path());
            assert_eq!(all(&storage), entries(1..=2, 1), "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), third);
            // Appends go on at the cut.
            storage.append(&entries(3..=3, 1)).unwrap();
            storage.sync().unwrap();
            drop(storage);
            assert_eq!(all(&open(dir.path())), entries(1..=3, 1));
        }
    }

    #[test]
    fn a_simulated_crash_keeps_only_what_was_synced_and_a_torn_rest() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = open(dir.path());
        storage.append(&entries(1..=2, 1)).unwrap();
        storage.set_hard_state(hard_state(1, 1, 0));
        storage.sync().unwrap();
        storage.append(&entries(3..=6, 1)).unwrap();
        storage.set_hard_state(hard_state(2, 3, 0));
        storage.crash_at_next_sync();
        assert!(matches!(storage.sync(), Err(StorageError::Crashed { .. })));
        drop(storage);
        let storage = open(dir.path());
        assert_eq!(storage.hard_state(), &hard_state(1, 1, 0));
        let kept = all(&storage);
        assert!(kept.len() >= 2 && kept.len() < 6, "{}", kept.len());
        assert_eq!(kept, entries(1..=kept.len() as u64, 1));
    }
}
