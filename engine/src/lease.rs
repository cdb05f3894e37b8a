//! The lease gate: whether this node may act as a member now, as its data path checks it
//! (docs/failures.md#leases). FaRM's lease safety: the configuration manager waits out a removed
//! node's lease before it commits a configuration without it, which is sound only if the node
//! stops serving once that lease has lapsed.
//!
//! The gate is one atomic word, the node's lease deadline on its clock, written by the node's
//! lease thread (acre-cm) and read by its worker and NIC thread: a check is one atomic load and,
//! once a configuration manager has been asked for a lease, one clock read. No lock, no
//! allocation. It lives in the engine because the two readers sit on either side of the crates
//! that know about leases: the NIC thread (engine) and the worker (acre-replication, through
//! acre-txn's `TxnNode`), and acre-txn must not depend on acre-cm.
//!
//! The word holds one of three states:
//!
//! - **not asked** ([`LeaseGate::unleased`], `u64::MAX`): no configuration manager was ever asked
//!   for a lease, so nobody counts on this node stopping; the gate is open. This is every node of
//!   a cluster without a CM (static, embedded, tests), and a node of a cluster with one until it
//!   adopts the first configuration that names the CM: the cluster file's configuration, which
//!   a node starts in, names none, and no CM has granted (or will wait out) a lease in it.
//! - **asked, never granted** (0): the node adopted a configuration naming a CM and asked it;
//!   the gate stays shut until the first grant arrives. The CM gives every member of a new
//!   configuration one lease of grace and waits it out if it removes the member, so a node that
//!   never heard back must not act either.
//! - **granted until** (any other value): open while the node's clock reads less than it.
//!
//! The states only move forward (not asked -> asked -> granted, deadlines only grow), so a reader
//! that saw the gate shut at some instant never sees it open for that same instant.

use crate::clock::Time;
use std::sync::atomic::{AtomicU64, Ordering};

/// The word's value while no CM was ever asked: every reading of a clock is before it.
const NOT_ASKED: u64 = u64::MAX;
/// The word's value once a CM was asked and has granted nothing yet.
const NOT_GRANTED: u64 = 0;

/// A node's lease deadline, shared by the lease thread that writes it and the threads that must
/// not act without a lease (module docs).
#[derive(Debug)]
pub struct LeaseGate {
    until_nanos: AtomicU64,
}

impl Default for LeaseGate {
    fn default() -> LeaseGate {
        LeaseGate::unleased()
    }
}

impl LeaseGate {
    /// A gate of a node that has asked no CM for a lease: open until [`LeaseGate::ask`].
    pub fn unleased() -> LeaseGate {
        LeaseGate {
            until_nanos: AtomicU64::new(NOT_ASKED),
        }
    }

    /// A gate of a node that has asked a CM and holds nothing yet: shut until
    /// [`LeaseGate::extend_to`].
    pub fn asked() -> LeaseGate {
        LeaseGate {
            until_nanos: AtomicU64::new(NOT_GRANTED),
        }
    }

    /// Whether the node may act at `now` (a reading of the node's clock). The data path's check:
    /// one atomic load.
    #[inline]
    pub fn is_open(&self, now: Time) -> bool {
        now.as_nanos() < self.until_nanos.load(Ordering::Acquire)
    }

    /// [`LeaseGate::is_open`] with the clock read only when the answer depends on it: a node
    /// that asked no CM reads one atomic word and no clock.
    #[inline]
    pub fn is_open_now(&self, now: impl FnOnce() -> Time) -> bool {
        let until = self.until_nanos.load(Ordering::Acquire);
        until == NOT_ASKED || now().as_nanos() < until
    }

    /// Whether no CM was ever asked: the gate does not depend on time, so a caller may skip
    /// reading the clock.
    #[inline]
    pub fn is_unleased(&self) -> bool {
        self.until_nanos.load(Ordering::Acquire) == NOT_ASKED
    }

    /// The node asks a CM for a lease (or is about to): from now on the gate is shut unless a
    /// grant holds it open. Called before the request goes out, so that the CM's grace never
    /// starts while the gate still ignores it. Does nothing once asked.
    pub fn ask(&self) {
        let _ = self.until_nanos.compare_exchange(
            NOT_ASKED,
            NOT_GRANTED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// A grant: the lease holds until `until`. Only ever extends (a grant that arrives late never
    /// shortens a later one), and asks first if nobody did.
    pub fn extend_to(&self, until: Time) {
        let until = until.as_nanos();
        assert!(
            until < NOT_ASKED,
            "until={until}: a lease deadline is finite"
        );
        let _ = self
            .until_nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |current| {
                let current = if current == NOT_ASKED {
                    NOT_GRANTED
                } else {
                    current
                };
                Some(current.max(until))
            });
    }

    /// When the lease ends, if one was ever granted.
    pub fn until(&self) -> Option<Time> {
        match self.until_nanos.load(Ordering::Acquire) {
            NOT_ASKED | NOT_GRANTED => None,
            nanos => Some(Time::from_nanos(nanos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn unleased_is_open_at_every_time() {
        let gate = LeaseGate::unleased();
        assert!(gate.is_unleased());
        for nanos in [0, 1, SECOND, u64::MAX - 1] {
            assert!(gate.is_open(Time::from_nanos(nanos)), "nanos={nanos}");
        }
        assert_eq!(gate.until(), None);
    }

    #[test]
    fn asked_is_shut_until_granted_then_open_until_the_deadline() {
        let gate = LeaseGate::unleased();
        gate.ask();
        assert!(!gate.is_unleased());
        assert!(!gate.is_open(Time::ZERO));
        assert!(!gate.is_open(Time::from_nanos(SECOND)));
        gate.extend_to(Time::from_nanos(2 * SECOND));
        assert!(gate.is_open(Time::from_nanos(SECOND)));
        assert!(!gate.is_open(Time::from_nanos(2 * SECOND)));
        assert_eq!(gate.until(), Some(Time::from_nanos(2 * SECOND)));
    }

    #[test]
    fn deadlines_only_grow_and_asking_again_changes_nothing() {
        let gate = LeaseGate::asked();
        gate.extend_to(Time::from_nanos(3 * SECOND));
        gate.extend_to(Time::from_nanos(2 * SECOND));
        gate.ask();
        assert_eq!(gate.until(), Some(Time::from_nanos(3 * SECOND)));
    }

    #[test]
    fn a_grant_without_an_ask_still_shuts_the_gate_after_it() {
        let gate = LeaseGate::unleased();
        gate.extend_to(Time::from_nanos(SECOND));
        assert!(!gate.is_unleased());
        assert!(!gate.is_open(Time::from_nanos(SECOND)));
    }
}
