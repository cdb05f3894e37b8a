//! The reply area: where participants answer a coordinator. Each node registers one area of
//! [`SLOTS_MAX`] slots, one per transaction in flight on the node; a slot has
//! [`REPLIES_PER_TXN_MAX`] replies of four words `[value, value, value, tag]`. A participant
//! answers with one one-sided WRITE of the four words (the tag last, since a WRITE stores in
//! increasing address order) and a NOTIFY that wakes the coordinator. The tag is
//! `seq << 8 | code`: a reply meant for an earlier transaction of the same slot never matches.
//!
//! Replies need not be durable: a coordinator that crashes loses its transaction's outcome to
//! recovery, not to a lost reply.

use crate::POISONED;
use crate::config::REPLY_AREA_ID_MIN;
use crate::record::ReplyTo;
use acre_engine::addr::{Addr, RegionId};
use acre_engine::clock::{Clock, Time};
use acre_engine::fabric::{Doorbell, Op};
use acre_engine::region::Region;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Transactions in flight per node.
pub const SLOTS_MAX: usize = 64;
/// Requests one transaction may have answered (locks, validations, remote allocations).
pub const REPLIES_PER_TXN_MAX: usize = 128;
/// How long the slot of a transaction that may still get replies stays out of use: longer
/// than a coordinator waits for any reply (both on the node's clock).
pub const QUARANTINE: Duration = Duration::from_secs(10);
/// Bytes of one reply.
pub const REPLY_BYTES: usize = 32;
/// Bytes of one slot.
pub const SLOT_BYTES: usize = REPLIES_PER_TXN_MAX * REPLY_BYTES;
/// Bytes of a node's reply area.
pub const REPLY_AREA_BYTES: u64 = (SLOTS_MAX * SLOT_BYTES) as u64;
/// The area id of every node's reply area.
pub const REPLY_AREA_ID: RegionId = RegionId(REPLY_AREA_ID_MIN);
const SEQ_MASK: u64 = (1 << 56) - 1;
/// A node's transaction sequence numbers start at its incarnation shifted by this many bits:
/// 2^40 transactions per slot per start (a year at a million a second) before they would run
/// into the next start's numbers.
pub const INCARNATION_SHIFT: u32 = 40;
/// Incarnations are counted modulo this, so sequence numbers stay within the 56 bits a reply
/// tag carries; a collision needs records 65,536 starts old still in a log.
pub const INCARNATIONS: u64 = 1 << (56 - INCARNATION_SHIFT);

/// What a participant answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// LOCK: every object is locked at the version read.
    Locked = 1,
    /// LOCK: some object had moved on or was locked; nothing stays locked.
    Conflict = 2,
    /// VALIDATE: every version is unchanged and unlocked.
    Valid = 3,
    /// VALIDATE: some object changed or is locked.
    Invalid = 4,
    /// ALLOC: values are `[addr, version, payload bytes]`.
    Allocated = 5,
    /// ALLOC: values are `[reason code, max bytes, 0]` (see [`alloc_failure`]).
    AllocFailed = 6,
    /// The record could not be served (malformed, wrong node; for REQUEST-VOTE: the receiver
    /// does not see the coordinator dead, or could not read its ring); values hold nothing.
    Refused = 7,
    /// REQUEST-VOTE: `values[0]` says what the receiver holds of the transaction (see
    /// [`vote`]).
    Vote = 8,
    /// LOCK or VALIDATE of a transaction that began in an older configuration than the
    /// receiver's (`values[0]`): refused, nothing locked (docs/failures.md#reconfiguration).
    Stale = 9,
    /// LOCK or VALIDATE refused because the receiver's own lease from the CM has lapsed
    /// (docs/failures.md#leases): nothing locked, nothing checked. `values` hold nothing.
    LeaseExpired = 10,
}

impl Code {
    fn from_u8(byte: u8) -> Option<Code> {
        [
            Code::Locked,
            Code::Conflict,
            Code::Valid,
            Code::Invalid,
            Code::Allocated,
            Code::AllocFailed,
            Code::Refused,
            Code::Vote,
            Code::Stale,
            Code::LeaseExpired,
        ]
        .into_iter()
        .find(|code| *code as u8 == byte)
    }
}

/// Why an ALLOC failed, as sent in a reply.
pub mod alloc_failure {
    pub const REGION_FULL: u64 = 1;
    pub const TOO_LARGE: u64 = 2;
    /// The node holds no such primary region (`values[1]`: its configuration id).
    pub const NOT_PRIMARY: u64 = 3;
    pub const OTHER: u64 = 4;
    /// The slot's block is new and its header did not reach a backup (`values[1]`: the
    /// backup's node id).
    pub const UNREPLICATED: u64 = 5;
    /// As `UNREPLICATED`, while the primary's configuration (`values[1]`) is not committed.
    pub const RECONFIGURING: u64 = 6;
    /// The region's allocator is still reading its blocks after its primary changed, and those
    /// read have no room (docs/failures.md#allocator-recovery).
    pub const RECOVERING: u64 = 7;
}

/// What a participant holds of a transaction, as the bits of a [`Code::Vote`] reply's
/// `values[0]` (docs/failures.md#a-client-that-dies). No bit set: nothing.
pub mod vote {
    /// Its LOCK (as a primary), not aborted.
    pub const LOCK: u64 = 1;
    /// Its COMMIT-BACKUP (as a backup).
    pub const COMMIT_BACKUP: u64 = 2;
    /// Its COMMIT-PRIMARY (as a primary), or it installed the transaction's values because
    /// another primary held COMMIT-PRIMARY.
    pub const COMMIT_PRIMARY: u64 = 4;
    /// It truncated the transaction (applied and dropped its records) because every primary
    /// held COMMIT-PRIMARY.
    pub const TRUNCATED: u64 = 8;
    /// It aborted the transaction because no participant held COMMIT-BACKUP or COMMIT-PRIMARY.
    pub const ABORTED: u64 = 16;
    /// It is the primary of a region it was not the primary of when the transaction locked
    /// (a backup promoted by a reconfiguration): holding no LOCK says nothing about the
    /// transaction (docs/failures.md#votes).
    pub const NEW_PRIMARY: u64 = 32;
    /// It holds nothing of the transaction and cannot tell whether it truncated it: its memory
    /// of truncated transactions no longer reaches back that far.
    pub const UNSURE: u64 = 64;
    /// It refused a LOCK, COMMIT-BACKUP or COMMIT-PRIMARY record of the transaction from its
    /// coordinator (read after a drain that left the transaction to recovery, or after its
    /// vote): only in an OUTCOME-QUERY's answer, which tells a coordinator whether a record it
    /// appended counts (docs/failures.md#drain). The decision reads no such bit.
    pub const REFUSED: u64 = 128;
    /// With [`NEW_PRIMARY`], which of the transaction's regions: bit `32 + i` for the region
    /// at place `i` of the list the REQUEST-VOTE carries (from 32 on, `i % 32`: two of a
    /// transaction's regions may then share a bit, which only makes the vote say less).
    pub const NEW_PRIMARY_OF: u64 = 0xffff_ffff << 32;
    /// Every bit a vote may carry.
    pub const ALL: u64 = LOCK
        | COMMIT_BACKUP
        | COMMIT_PRIMARY
        | TRUNCATED
        | ABORTED
        | NEW_PRIMARY
        | UNSURE
        | REFUSED
        | NEW_PRIMARY_OF;

    /// The [`NEW_PRIMARY_OF`] bit of the region at place `index` of a transaction's regions.
    pub fn new_primary_at(index: usize) -> u64 {
        1 << (32 + index % 32)
    }
}

/// A reply as the coordinator reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: Code,
    pub values: [u64; 3],
}

/// The operations that deliver a reply: one WRITE of the four words, then a NOTIFY.
pub fn reply_ops(to: ReplyTo, seq: u64, code: Code, values: [u64; 3]) -> Vec<Op> {
    let mut data = Vec::with_capacity(REPLY_BYTES);
    for value in values {
        data.extend_from_slice(&value.to_le_bytes());
    }
    data.extend_from_slice(&tag(seq, code).to_le_bytes());
    vec![
        Op::Write {
            addr: Addr::new(to.area, to.offset),
            key: to.key,
            data,
        },
        Op::Notify,
    ]
}

fn tag(seq: u64, code: Code) -> u64 {
    (seq & SEQ_MASK) << 8 | code as u64
}

/// A slot held by one transaction; give it back with [`ReplyArea::release`].
#[derive(Debug)]
pub struct SlotLease {
    pub slot: u16,
    pub seq: u64,
}

/// A node's reply area and the slots of its transactions.
pub struct ReplyArea {
    region: Arc<Region>,
    doorbell: Arc<Doorbell>,
    free_slots: Mutex<Vec<u16>>,
    quarantined: Mutex<VecDeque<(Time, u16)>>,
    seqs: Vec<AtomicU64>,
    /// What reply waits and quarantines are measured on: the node's clock, once the area is
    /// given to its [`crate::TxnNode`].
    clock: Clock,
}

impl ReplyArea {
    /// Uses `region` (registered as [`REPLY_AREA_ID`], [`REPLY_AREA_BYTES`] long) and wakes on
    /// the node's doorbell. `incarnation` counts the starts of this node id: each start numbers
    /// its transactions from `incarnation << INCARNATION_SHIFT`, so a restarted node never
    /// reuses a transaction id that records of its previous run may still carry.
    pub fn new(region: Arc<Region>, doorbell: Arc<Doorbell>, incarnation: u64) -> ReplyArea {
        assert_eq!(region.id(), REPLY_AREA_ID, "reply area id");
        assert!(region.len() >= REPLY_AREA_BYTES, "reply area too small");
        let first_seq = (incarnation % INCARNATIONS) << INCARNATION_SHIFT;
        ReplyArea {
            region,
            doorbell,
            free_slots: Mutex::new((0..SLOTS_MAX as u16).rev().collect()),
            quarantined: Mutex::new(VecDeque::new()),
            seqs: (0..SLOTS_MAX).map(|_| AtomicU64::new(first_seq)).collect(),
            clock: Clock::system(),
        }
    }

    /// Measures waits and quarantines on `clock` (the system clock until then).
    pub(crate) fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn region(&self) -> &Arc<Region> {
        &self.region
    }

    /// A free slot and the sequence number of its next transaction, if any slot is free.
    pub fn acquire(&self) -> Option<SlotLease> {
        self.end_quarantines();
        let slot = self.free_slots.lock().expect(POISONED).pop()?;
        let seq = self.seqs[slot as usize].fetch_add(1, Ordering::Relaxed) + 1;
        Some(SlotLease { slot, seq })
    }

    /// Gives a slot back. A transaction that may still get replies (`outstanding`: it gave up
    /// waiting, or stopped before reading every reply it asked for) has its slot quarantined
    /// for [`QUARANTINE`]: a late reply must not overwrite a reply meant for the slot's next
    /// transaction before that one reads it.
    pub fn release(&self, lease: SlotLease, outstanding: bool) {
        if outstanding {
            self.quarantined
                .lock()
                .expect(POISONED)
                .push_back((self.clock.now(), lease.slot));
            return;
        }
        let mut free = self.free_slots.lock().expect(POISONED);
        assert!(
            !free.contains(&lease.slot),
            "slot {} released twice",
            lease.slot
        );
        free.push(lease.slot);
    }

    /// Returns quarantined slots whose time is up to the free list.
    fn end_quarantines(&self) {
        let mut quarantined = self.quarantined.lock().expect(POISONED);
        let now = self.clock.now();
        while let Some(&(since, slot)) = quarantined.front() {
            if now - since < QUARANTINE {
                break;
            }
            quarantined.pop_front();
            self.free_slots.lock().expect(POISONED).push(slot);
        }
    }

    /// Where reply `index` of `slot` goes.
    pub fn reply_to(&self, slot: u16, index: usize) -> ReplyTo {
        assert!(index < REPLIES_PER_TXN_MAX, "reply index {index}");
        ReplyTo {
            area: REPLY_AREA_ID,
            offset: (slot as usize * SLOT_BYTES + index * REPLY_BYTES) as u32,
            key: self.region.key(),
        }
    }

    /// The reply at `index` of `slot` if it is for `seq`.
    pub fn poll(&self, slot: u16, seq: u64, index: usize) -> Option<Reply> {
        let offset = slot as usize * SLOT_BYTES + index * REPLY_BYTES;
        let words = self.region.words_at(offset as u32, REPLY_BYTES as u64);
        let tag_word = words[3].load(Ordering::Acquire);
        if tag_word >> 8 != seq & SEQ_MASK {
            return None;
        }
        acre_engine::pause::point("reply.poll.tag_read");
        let code = Code::from_u8(tag_word as u8)?;
        let values = std::array::from_fn(|i| words[i].load(Ordering::Acquire));
        // A late reply of an earlier transaction may have overwritten the values since the tag
        // was read: its own tag lands after them, so an unchanged tag means they are ours.
        // (A writer that has stored new values but not yet its tag is excluded by the slot's
        // quarantine: a late reply is at most QUARANTINE late.)
        if words[3].load(Ordering::Acquire) != tag_word {
            return None;
        }
        Some(Reply { code, values })
    }

    /// Waits up to `timeout` of the node's clock for the replies at `indexes`; returns them in
    /// that order, or the position in `indexes` of the first one still missing.
    pub fn wait(
        &self,
        slot: u16,
        seq: u64,
        indexes: &[usize],
        timeout: Duration,
    ) -> Result<Vec<Reply>, usize> {
        let mut replies: Vec<Option<Reply>> = vec![None; indexes.len()];
        let fill = |replies: &mut Vec<Option<Reply>>| {
            for (reply, &index) in replies.iter_mut().zip(indexes) {
                if reply.is_none() {
                    *reply = self.poll(slot, seq, index);
                }
            }
            replies.iter().all(Option::is_some)
        };
        let deadline = self.clock.now().saturating_add(timeout);
        if !self
            .doorbell
            .wait_until(&self.clock, deadline, || fill(&mut replies))
        {
            return Err(replies.iter().position(Option::is_none).unwrap_or(0));
        }
        Ok(replies
            .into_iter()
            .map(|r| r.expect("all filled"))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::addr::NodeId;
    use acre_engine::fabric::exec;
    use acre_engine::fabric::memory::NodeMemory;

    #[test]
    fn a_reply_is_seen_only_by_its_transaction() {
        let doorbell = Arc::new(Doorbell::anonymous().unwrap());
        let region = Arc::new(Region::anonymous(REPLY_AREA_ID, REPLY_AREA_BYTES).unwrap());
        let memory = NodeMemory::new(NodeId(1), doorbell.clone());
        memory.register(region.clone()).unwrap();
        let area = ReplyArea::new(region, doorbell, 3);
        let lease = area.acquire().unwrap();
        // A third restart numbers its transactions after every earlier start's.
        assert_eq!(lease.seq, (3 << INCARNATION_SHIFT) + 1);
        // An old reply of an earlier start with the same slot and low bits is not this one's.
        for op in reply_ops(area.reply_to(lease.slot, 3), 1, Code::Locked, [0; 3]) {
            exec::execute(&memory, &op).unwrap();
        }
        assert_eq!(area.poll(lease.slot, lease.seq, 3), None);
        let to = area.reply_to(lease.slot, 3);
        for op in reply_ops(to, lease.seq, Code::Allocated, [7, 8, 9]) {
            exec::execute(&memory, &op).unwrap();
        }
        assert_eq!(area.poll(lease.slot, lease.seq + 1, 3), None);
        assert_eq!(area.poll(lease.slot, lease.seq, 2), None);
        let replies = area
            .wait(lease.slot, lease.seq, &[3], Duration::from_secs(1))
            .unwrap();
        assert_eq!(replies[0].values, [7, 8, 9]);
        assert_eq!(replies[0].code, Code::Allocated);
        assert_eq!(
            area.wait(lease.slot, lease.seq, &[3, 4], Duration::from_millis(10)),
            Err(1)
        );
        let slot = lease.slot;
        area.release(lease, false);
        let next = area.acquire().unwrap();
        assert_eq!(next.slot, slot);
        assert_eq!(
            area.poll(next.slot, next.seq, 3),
            None,
            "old reply is stale"
        );
    }

    /// docs/failures.md#clock: a coordinator's wait for a reply and a slot's quarantine are on
    /// the node's clock. A jump past the timeout ends a wait at once (real time: 5 s at most
    /// here, 10 s without the clock), and a jump past [`QUARANTINE`] frees the slot.
    #[test]
    fn reply_waits_and_quarantines_are_on_the_nodes_clock() {
        use acre_engine::clock::Clock;
        use std::time::Instant;
        let doorbell = Arc::new(Doorbell::anonymous().unwrap());
        let region = Arc::new(Region::anonymous(REPLY_AREA_ID, REPLY_AREA_BYTES).unwrap());
        let mut area = ReplyArea::new(region, doorbell, 0);
        let (clock, control) = Clock::controlled();
        area.set_clock(clock);
        let area = Arc::new(area);
        let lease = area.acquire().unwrap();
        let (slot, seq) = (lease.slot, lease.seq);
        let waiter = {
            let area = area.clone();
            std::thread::spawn(move || {
                let start = Instant::now();
                let outcome = area.wait(slot, seq, &[0], Duration::from_secs(10));
                (outcome, start.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "no reply yet, and no time passed");
        control.jump_forward(Duration::from_secs(11));
        let (outcome, waited) = waiter.join().unwrap();
        assert_eq!(outcome, Err(0));
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");

        // The slot may still get its reply: quarantined, so every other slot goes first.
        area.release(lease, true);
        let others: Vec<SlotLease> = std::iter::from_fn(|| area.acquire()).collect();
        assert_eq!(others.len(), SLOTS_MAX - 1);
        assert!(others.iter().all(|other| other.slot != slot));
        control.jump_forward(QUARANTINE);
        assert_eq!(area.acquire().map(|lease| lease.slot), Some(slot));
    }

    /// A late reply of an earlier transaction of the slot (its slot quarantine over) that
    /// overwrites the words while a poll reads them must not be taken for this one's.
    #[test]
    fn a_reply_overwritten_while_it_is_read_is_not_taken() {
        let doorbell = Arc::new(Doorbell::anonymous().unwrap());
        let region = Arc::new(Region::anonymous(REPLY_AREA_ID, REPLY_AREA_BYTES).unwrap());
        let memory = Arc::new(NodeMemory::new(NodeId(1), doorbell.clone()));
        memory.register(region.clone()).unwrap();
        let area = Arc::new(ReplyArea::new(region, doorbell, 0));
        let lease = area.acquire().unwrap();
        let (slot, seq) = (lease.slot, lease.seq);
        for op in reply_ops(area.reply_to(slot, 0), seq, Code::Locked, [1, 2, 3]) {
            exec::execute(&memory, &op).unwrap();
        }
        let paused = acre_engine::pause::arm("reply.poll.tag_read");
        let poller = {
            let area = area.clone();
            std::thread::spawn(move || area.poll(slot, seq, 0))
        };
        assert!(
            paused.wait_reached(Duration::from_secs(5)),
            "the poll read the tag"
        );
        // Between the poll's tag and values: a late reply of seq - 1 overwrites all four words.
        for op in reply_ops(area.reply_to(slot, 0), seq - 1, Code::Conflict, [7, 8, 9]) {
            exec::execute(&memory, &op).unwrap();
        }
        paused.release();
        let polled = poller.join().unwrap();
        assert!(
            polled.is_none()
                || polled
                    == Some(Reply {
                        code: Code::Locked,
                        values: [1, 2, 3]
                    }),
            "took another transaction's reply: {polled:?}"
        );
    }
}
