//! Running a transaction to completion: retrying it while it conflicts, with bounded, jittered
//! exponential backoff. [`Transact`] is what code that needs several transactions (creating an
//! index, loading a table) asks of its caller: the `Db` facade and a bare [`TxnNode`] both
//! provide it.

use crate::backoff::Backoff;
use crate::error::{Error, TxnError};
use crate::txn::Txn;
use crate::txn_node::TxnNode;
use acre_engine::addr::{Addr, RegionId};
use acre_engine::clock::{Clock, Time};
use std::sync::Arc;
use std::time::Duration;

/// Attempts [`run`] makes before giving up with the last conflict.
pub const RUN_ATTEMPTS_MAX: u32 = 1000;
/// The first retry waits about this long; each further one about twice as long...
pub const BACKOFF_FIRST: Duration = Duration::from_micros(10);
/// ...up to this.
pub const BACKOFF_MAX: Duration = Duration::from_millis(5);
/// How long [`run`] waits through a reconfiguration (`Reconfiguring`, `ConfigurationChanged`)
/// before it gives up: attempts that fail that way do not count against
/// [`RUN_ATTEMPTS_MAX`], since the configuration manager waits out removed nodes' leases before
/// it commits a configuration, which can take longer than those attempts last.
pub const RECONFIGURATION_WAIT_MAX: Duration = Duration::from_secs(30);

/// Something that runs transactions to completion.
pub trait Transact {
    /// Runs `body` in a transaction and commits it, retrying while it conflicts (see [`run`]).
    fn transact<T>(&self, body: impl FnMut(&mut Txn) -> Result<T, Error>) -> Result<T, Error>;
}

impl Transact for Arc<TxnNode> {
    fn transact<T>(&self, body: impl FnMut(&mut Txn) -> Result<T, Error>) -> Result<T, Error> {
        run(self.clock(), || self.begin(), body)
    }
}

/// Runs `body` in a transaction from `begin` and commits it, retrying with bounded, jittered
/// exponential backoff while it conflicts (at most [`RUN_ATTEMPTS_MAX`] times), and through a
/// reconfiguration for up to [`RECONFIGURATION_WAIT_MAX`], both waits on `clock` (the node's).
/// An error from `body` ends the run, unless what the transaction read had already changed, in
/// which case the error came from a stale view and the transaction is retried. A commit whose
/// outcome is unknown ([`CommitError::Indeterminate`](crate::CommitError::Indeterminate)) is
/// never retried: it may have committed.
pub fn run<T>(
    clock: &Clock,
    mut begin: impl FnMut() -> Result<Txn, TxnError>,
    mut body: impl FnMut(&mut Txn) -> Result<T, Error>,
) -> Result<T, Error> {
    let mut backoff = Backoff::retry(BACKOFF_FIRST, BACKOFF_MAX).with_clock(clock);
    let mut attempts = 0;
    let mut reconfiguring_since: Option<Time> = None;
    // With a configuration manager, a participant that cannot be reached is either back soon or
    // removed by a new configuration: waited through like a reconfiguration.
    let mut managed = false;
    loop {
        let error = match begin() {
            Err(e) => Error::Txn(e),
            Ok(mut txn) => {
                managed = !txn.config.cm_replicas.is_empty();
                match body(&mut txn) {
                    Ok(value) => match txn.commit() {
                        Ok(()) => return Ok(value),
                        Err(e) => Error::Commit(e),
                    },
                    Err(e) if e.is_retryable() || (managed && e.is_unavailable()) => e,
                    Err(e) => match txn.still_valid() {
                        Ok(false) => Error::Txn(TxnError::Conflict {
                            addr: Addr::new(RegionId(0), 0),
                            why: "the transaction failed on data that had changed",
                        }),
                        _ => return Err(e),
                    },
                }
            }
        };
        let waits = error.is_reconfiguring() || (managed && error.is_unavailable());
        if !error.is_retryable() && !waits {
            return Err(error);
        }
        if waits {
            let now = clock.now();
            let since = *reconfiguring_since.get_or_insert(now);
            if now - since >= RECONFIGURATION_WAIT_MAX {
                return Err(error);
            }
        } else {
            reconfiguring_since = None;
            attempts += 1;
            if attempts >= RUN_ATTEMPTS_MAX {
                return Err(error);
            }
        }
        backoff.wait();
    }
}
