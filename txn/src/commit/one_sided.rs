//! Steps 1, 4 and abort in one-sided mode (docs/protocol.md#one-sided-commit-mode): the
//! coordinator does the primary's part itself, so no thread of another node is on the commit
//! path.
//!
//! - **Lock.** The LOCK record is durable in the primary's log first (every lock in a region is
//!   then explained by a durable LOCK record, which recovery and the settlement of a dead
//!   client's transactions read), then one batch of compare-and-swaps locks every object at the
//!   version read. The vote is the outcome of those compare-and-swaps.
//! - **Commit-primary.** The COMMIT-PRIMARY record is durable first, then one batch installs
//!   every object (trailer, payload and sum, header with the lock clear: the order the torn-read
//!   detection relies on, `acre_engine::object`) and persists the slots.
//! - **Abort.** The coordinator unlocks by compare-and-swap what it locked, then appends ABORT,
//!   on which the primary's worker hands back the reserved slots.
//!
//! The primary's worker only notes what it reads ([`crate::primary::Primary::note_lock`]): the
//! slots a committed free gives back, and what a dead coordinator's settlement needs. This
//! node's own primary regions are locked and installed inline, as in message mode.

use super::{Commit, LockSent, Plan, PrimarySteps};
use crate::error::{CommitError, TxnError, op_error};
use crate::record::{Entry, EntryKind, ReplyTo, TxnId, TxnRecord};
use crate::txn_node::TxnNode;
use acre_engine::addr::{Addr, NodeId};
use acre_engine::fabric::{Completion, Op};
use acre_engine::object::{self, Header, WORD_BYTES};
use acre_engine::region::AccessKey;

/// FORD's and DrTM+H's mode: the coordinator locks, installs and unlocks.
pub(crate) struct OneSided;

impl PrimarySteps for OneSided {
    fn lock(&self, commit: &mut Commit<'_>) -> Result<(), CommitError> {
        assert!(
            commit.locks_sent.is_empty(),
            "{}: LOCK sent twice",
            commit.txn.id
        );
        let me = commit.node.node_id();
        let primaries: Vec<NodeId> = commit.plan.locks.keys().copied().collect();
        for primary in primaries {
            let record = TxnRecord {
                txn: commit.txn.id,
                reply: ReplyTo::NONE,
                truncated: Vec::new(),
                body: commit.plan.locks[&primary].clone(),
            };
            let sent = commit.send(primary, record);
            // A LOCK whose append failed may have landed: it counts as sent, so ABORT goes too.
            commit.locks_sent.push(LockSent {
                primary,
                reply_index: None,
            });
            let fence = sent?;
            if fence > commit.txn.id.config {
                if primary == me {
                    // Not locked here: the slots it reserved here (untracked, local) are its
                    // own to hand back, and nothing else would (this primary holds nothing of
                    // it, so the ABORT it gets releases nothing). Not later, in the abort: by
                    // then recovery may have settled the transaction's LOCK record here.
                    let own: Vec<_> = commit
                        .plan
                        .lock_entries(me)
                        .iter()
                        .filter(|entry| entry.kind == crate::record::EntryKind::Alloc)
                        .map(|entry| entry.addr)
                        .collect();
                    commit.txn.release_reservations(&own);
                }
                // The primary drained its log for a newer configuration: no transaction of an
                // older one locks there any more (a new backup's copy waits for the older ones
                // it holds, docs/failures.md#data-recovery). Run it again in the new one.
                return Err(CommitError::ConfigurationChanged {
                    began: commit.txn.id.config,
                    current: fence,
                });
            }
            if primary == me {
                let entries = commit.plan.lock_entries(me).to_vec();
                if !commit.node.primary().lock(commit.txn.id, entries) {
                    return Err(conflict(commit.plan.lock_entries(me)[0].addr));
                }
                continue;
            }
            commit.cas_lock(primary)?;
        }
        commit.locked = true;
        Ok(())
    }

    fn commit_primary(&self, commit: &mut Commit<'_>) -> Result<(), CommitError> {
        let txn = commit.txn.id;
        commit.send_commit_primaries(|commit, primary, again| {
            install(&commit.node, &commit.plan, txn, primary, again)
        })
    }

    fn abort(&self, commit: &mut Commit<'_>) {
        let txn = commit.txn.id;
        for (primary, cas) in std::mem::take(&mut commit.cas_locked) {
            let ops: Vec<Op> = cas.iter().map(CasLock::unlock_op).collect();
            for result in commit.node.fabric().execute(primary, ops) {
                if let Err(e) = result {
                    // The ABORT after this unlocks what still names this transaction.
                    tracing::debug!(%txn, %primary, "an unlocking CAS failed: {e}");
                }
            }
        }
        commit.send_aborts();
    }
}

/// One object this coordinator locks by compare-and-swap: where, and its header both ways (the
/// locked one names this transaction's owner).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CasLock {
    addr: Addr,
    key: AccessKey,
    unlocked: Header,
    locked: Header,
}

impl CasLock {
    fn lock_op(&self) -> Op {
        self.cas(self.unlocked, self.locked)
    }

    fn unlock_op(&self) -> Op {
        self.cas(self.locked, self.unlocked)
    }

    fn cas(&self, expected: Header, new: Header) -> Op {
        Op::Cas {
            addr: self.addr,
            key: self.key,
            expected: expected.to_u64(),
            new: new.to_u64(),
        }
    }
}

fn conflict(addr: Addr) -> CommitError {
    CommitError::Conflict {
        addr,
        why: "an object to write changed or is locked",
    }
}

impl Commit<'_> {
    /// Locks every object of the LOCK at `primary` with one batch of compare-and-swaps at the
    /// versions read; the ones that took are recorded for the abort.
    fn cas_lock(&mut self, primary: NodeId) -> Result<(), CommitError> {
        let mut locks = Vec::new();
        for entry in self.plan.lock_entries(primary) {
            let key = self.node.reader().key_at(primary, entry.addr)?;
            // An allocation locks the reserved slot while it is still free.
            let unlocked = Header::new(entry.version, entry.kind != EntryKind::Alloc, false);
            locks.push(CasLock {
                addr: entry.addr,
                key,
                unlocked,
                locked: unlocked.locked_by(self.txn.id.owner()),
            });
        }
        let ops: Vec<Op> = locks.iter().map(CasLock::lock_op).collect();
        let results = self.node.fabric().execute(primary, ops);
        assert_eq!(results.len(), locks.len(), "one completion per CAS");
        // Every compare-and-swap may have taken, even one whose completion says otherwise
        // (lost with a broken connection): the abort tries to undo all of them, and only
        // those that name this transaction's owner are undone.
        self.cas_locked.push((primary, locks.clone()));
        let mut outcome = Ok(());
        for (lock, result) in locks.into_iter().zip(results) {
            match result.map_err(|e| op_error(primary, e)) {
                Ok(Completion::Cas { previous }) if previous == lock.unlocked.to_u64() => {}
                Ok(Completion::Cas { .. }) => {
                    outcome = outcome.and(Err(conflict(lock.addr)));
                }
                Ok(other) => {
                    outcome = outcome.and(Err(CommitError::Protocol {
                        node: primary,
                        reason: format!("CAS of {} completed as {other:?}", lock.addr),
                    }));
                }
                Err(e) => outcome = outcome.and(Err(CommitError::from(e))),
            }
        }
        outcome
    }
}

/// Installs every object of `plan`'s LOCK at `primary`, which the coordinator holds locked
/// and whose COMMIT-PRIMARY is durable there: one batch of WRITEs in the install order, with a
/// PERSIST of each slot. With `again` (an earlier install's outcome is unknown: it may have
/// landed, and others committed on top since), the headers are read first and only the objects
/// still locked by `txn` are installed; nobody else can change a header this transaction locks.
pub(crate) fn install(
    node: &TxnNode,
    plan: &Plan,
    txn: TxnId,
    primary: NodeId,
    again: bool,
) -> Result<(), TxnError> {
    let mut entries: Vec<&Entry> = plan.lock_entries(primary).iter().collect();
    if again {
        let addrs: Vec<Addr> = entries.iter().map(|entry| entry.addr).collect();
        let headers = node.reader().read_headers(primary, &addrs)?;
        let mut still_locked = headers.iter().map(|h| h.owner() == Some(txn.owner()));
        entries.retain(|_| still_locked.next().expect("one header per entry"));
    }
    let mut ops = Vec::with_capacity(entries.len() * 4);
    for entry in entries {
        let key = node.reader().key_at(primary, entry.addr)?;
        ops.extend(install_ops(entry, key, plan.capacities[&entry.addr]));
    }
    for result in node.fabric().execute(primary, ops) {
        result.map_err(|e| op_error(primary, e))?;
    }
    Ok(())
}

/// The operations that install `entry` in a slot of `capacity` payload bytes locked at
/// `entry.version`: trailer `v + 1`, payload (zero-padded) and sum, header `v + 1` with the lock clear
/// (allocated unless a free), then a PERSIST of the slot. The fabric executes them in order,
/// each WRITE in increasing address order: the order `object::install_with` stores in.
pub(crate) fn install_ops(entry: &Entry, key: AccessKey, capacity: usize) -> Vec<Op> {
    assert!(
        entry.payload.len() <= capacity,
        "{}: payload of {} bytes in a slot of {capacity}",
        entry.addr,
        entry.payload.len()
    );
    let version = entry.version + 1;
    let slot = entry.addr;
    let at = |offset: usize| Addr::new(slot.region(), slot.offset() + offset as u32);
    let header = Header::new(version, entry.kind != EntryKind::Free, false);
    // The payload WRITE carries the sum word after the zero-padded payload.
    let sum = object::sum_word(header, &entry.payload, capacity);
    let mut payload = entry.payload.clone();
    payload.resize(capacity.div_ceil(WORD_BYTES) * WORD_BYTES, 0);
    payload.extend_from_slice(&sum.to_le_bytes());
    let trailer_offset = WORD_BYTES + payload.len();
    vec![
        Op::Write {
            addr: at(trailer_offset),
            key,
            data: version.to_le_bytes().to_vec(),
        },
        Op::Write {
            addr: at(WORD_BYTES),
            key,
            data: payload,
        },
        Op::Write {
            addr: slot,
            key,
            data: header.to_u64().to_le_bytes().to_vec(),
        },
        Op::Persist {
            addr: slot,
            key,
            len: (trailer_offset + WORD_BYTES) as u32,
        },
    ]
}

const _: () = assert!(object::HEADER_BYTES == WORD_BYTES);
