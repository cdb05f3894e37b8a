//! A node whose own lease from the configuration manager has lapsed acts for nobody
//! (docs/failures.md#leases): its worker refuses LOCK and VALIDATE with `LeaseExpired`, its
//! coordinators do not commit, and the refusal is retried by `Db::run` as a reconfiguration
//! until the lease is renewed. Here the test shuts and opens the node's lease gate itself, as
//! its lease thread would.

use crate::fixture::{
    REGION_BYTES, RING_BYTES, create, overwrite, region_of, settle, start_in, txn_node, value_at,
};
use acre_engine::addr::NodeId;
use acre_txn::config::CommitMode;
use acre_txn::{CommitError, Error, T_R, Transact};
use std::time::Duration;

/// How long the gate stays shut while a `Db::run`-style retry loop waits on it.
const LAPSE: Duration = Duration::from_millis(200);

/// FaRM SOSP'15 §5.1: a machine whose lease expired stops acting as a member. In message mode,
/// a primary whose gate is shut refuses LOCK and VALIDATE with the typed, retryable
/// `LeaseExpired` (nothing commits, nothing locked stays locked), a coordinator on it does not
/// commit, and once the lease is granted again the same commits go through; a retry loop that
/// started while it was lapsed commits once it is renewed.
#[test]
fn a_primary_whose_lease_lapsed_refuses_lock_and_validate_until_it_is_renewed() {
    let cluster = start_in(CommitMode::Messages, REGION_BYTES, RING_BYTES, vec![]);
    let n1 = txn_node(&cluster, 0);
    let n2 = txn_node(&cluster, 1);
    let a = create(&n1, region_of(1), b"a0");
    // More than T_R objects at n2, so that validating them is a VALIDATE message to its worker.
    let read_only: Vec<_> = (0..=T_R).map(|_| create(&n1, region_of(1), b"r")).collect();
    let c = create(&n1, region_of(2), b"c0");
    let gate = n2.fabric().memory().lease_gate().clone();
    let refused = CommitError::LeaseExpired { node: NodeId(2) };

    // Asked a CM and granted nothing: shut.
    gate.ask();

    // LOCK at n2.
    let mut txn = n1.begin().expect("begin");
    txn.read(c).expect("read");
    txn.write(a, b"a1").expect("write");
    txn.write(c, b"c1").expect("write");
    assert_eq!(txn.commit(), Err(refused.clone()));
    let error = Error::from(refused.clone());
    assert!(error.is_retryable(), "Db::run runs it again");
    assert!(error.is_reconfiguring(), "as through a reconfiguration");

    // VALIDATE at n2.
    let mut reader = n1.begin().expect("begin");
    for &addr in &read_only {
        assert_eq!(reader.read(addr).expect("read"), b"r");
    }
    reader.read(c).expect("read");
    assert_eq!(reader.commit(), Err(refused.clone()));

    // A coordinator on n2 does not commit, even what it would lock itself.
    let mut own = n2.begin().expect("begin");
    own.write(a, b"a2").expect("write");
    assert_eq!(own.commit(), Err(refused.clone()));

    // Nothing committed, nothing stays locked: n3's object is written at once by n1.
    assert_eq!(value_at(&n1, a).expect("read"), b"a0");
    assert_eq!(value_at(&n1, c).expect("read"), b"c0");
    overwrite(&n1, c, b"c1");

    // Granted, then lapsed: shut again.
    let now = n2.clock().now();
    gate.extend_to(now);
    let mut txn = n1.begin().expect("begin");
    txn.write(a, b"a1").expect("write");
    assert_eq!(txn.commit(), Err(refused));

    // A retry loop started while it is lapsed commits once the lease is renewed.
    let renewer = {
        let gate = gate.clone();
        let clock = n2.clock().clone();
        std::thread::spawn(move || {
            std::thread::sleep(LAPSE);
            gate.extend_to(clock.now() + Duration::from_secs(3600));
        })
    };
    n1.transact(|txn| {
        txn.write(a, b"a3")?;
        Ok(())
    })
    .expect("committed once the lease is renewed");
    renewer.join().expect("the renewer");
    assert_eq!(value_at(&n1, a).expect("read"), b"a3");
    let mut reader = n1.begin().expect("begin");
    for &addr in &read_only {
        reader.read(addr).expect("read");
    }
    assert_eq!(reader.commit(), Ok(()));
    overwrite(&n2, a, b"a4");
    assert_eq!(value_at(&n1, a).expect("read"), b"a4");
    let lease_refused = cluster.nodes()[1]
        .worker()
        .expect("n2's worker")
        .stats()
        .lease_refused
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(lease_refused >= 3, "lease_refused={lease_refused}");

    settle(&cluster);
    cluster.check_replicas().expect("backups match");
    cluster.stop();
}
