//! Couriers: where a delivery can wait on its receiver, one thread per peer delivers this
//! node's replies to coordinators on that peer, so the worker, which answers every coordinator,
//! never waits on one of them: a paused or dead peer stalls only its own courier, whose queue
//! is bounded (docs/failures.md#what-happens-today).
//!
//! On the local and shm transports a reply is a few stores into mapped memory that no peer can
//! hold up, so it is delivered inline and costs no thread hop. Over tcp, or on a fabric with
//! injected faults (which stand for a network), it goes through the peer's courier.

use crate::POISONED;
use crate::backoff::Backoff;
use crate::directory::Directory;
use crate::reply::REPLY_AREA_ID;
use acre_engine::addr::NodeId;
use acre_engine::fabric::{Fabric, Op, OpError};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Deliveries waiting for one peer's courier; more are dropped (their coordinators time out).
pub const COURIER_QUEUE_MAX: usize = 1024;
/// How long a reply refused by a peer in a newer configuration is tried again (see `deliver`).
pub const BEHIND_RETRY_MAX: Duration = Duration::from_millis(500);
/// The first wait before it is.
const BEHIND_RETRY_FIRST: Duration = Duration::from_millis(1);

/// The couriers of one node.
pub(crate) struct Couriers {
    node: NodeId,
    fabric: Arc<Fabric>,
    directory: Arc<Directory>,
    /// Whether deliveries go through couriers at all (see the module docs).
    enabled: bool,
    queues: Mutex<HashMap<NodeId, SyncSender<Vec<Op>>>>,
}

impl Couriers {
    pub(crate) fn new(fabric: Arc<Fabric>, directory: Arc<Directory>) -> Couriers {
        Couriers {
            node: fabric.node_id(),
            enabled: fabric.transport_name() == "tcp" || fabric.faults().is_some(),
            fabric,
            directory,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Delivers `ops` to `to` (fire and forget: a lost delivery becomes the coordinator's
    /// timeout), inline or through `to`'s courier.
    pub(crate) fn deliver(&self, to: NodeId, ops: Vec<Op>) {
        if !self.enabled {
            deliver(self.node, &self.fabric, &self.directory, to, ops);
            return;
        }
        let mut queues = self.queues.lock().expect(POISONED);
        let queue = match queues.entry(to) {
            Entry::Occupied(queue) => queue.into_mut(),
            Entry::Vacant(vacant) => match self.spawn(to) {
                Ok(queue) => vacant.insert(queue),
                Err(e) => {
                    drop(queues);
                    tracing::warn!(node = %self.node, %to, "no courier ({e}): delivering inline");
                    deliver(self.node, &self.fabric, &self.directory, to, ops);
                    return;
                }
            },
        };
        match queue.try_send(ops) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(node = %self.node, %to, "courier queue full: a reply is dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                queues.remove(&to);
                tracing::error!(node = %self.node, %to, "courier gone: a reply is dropped");
            }
        }
    }

    fn spawn(&self, to: NodeId) -> std::io::Result<SyncSender<Vec<Op>>> {
        let (queue, deliveries) = sync_channel(COURIER_QUEUE_MAX);
        let (node, fabric, directory) = (self.node, self.fabric.clone(), self.directory.clone());
        std::thread::Builder::new()
            .name(format!("acre-{node}-courier-{to}"))
            .spawn(move || run(node, &fabric, &directory, to, deliveries))?;
        Ok(queue)
    }
}

/// A courier's life: deliveries in order until its node drops its queue.
fn run(
    node: NodeId,
    fabric: &Fabric,
    directory: &Directory,
    to: NodeId,
    deliveries: Receiver<Vec<Op>>,
) {
    for ops in deliveries {
        deliver(node, fabric, directory, to, ops);
    }
}

/// One delivery. Refused because `to` adopted a newer configuration than this node holds
/// (`NotMember`; nothing was executed), it is tried again, backing off, for up to
/// [`BEHIND_RETRY_MAX`]: this node adopts that configuration within milliseconds (a client
/// adopts a configuration the CM is distributing as soon as it is published, often before a
/// member has it). Otherwise it is tried again once after looking `to` up afresh (it may have
/// restarted).
fn deliver(node: NodeId, fabric: &Fabric, directory: &Directory, to: NodeId, ops: Vec<Op>) {
    let attempt = |ops: Vec<Op>| fabric.execute(to, ops).into_iter().find_map(Result::err);
    let Some(mut first) = attempt(ops.clone()) else {
        return;
    };
    if matches!(first, OpError::NotMember { .. }) {
        let clock = fabric.clock();
        let deadline = clock.now() + BEHIND_RETRY_MAX;
        let mut backoff = Backoff::retry(BEHIND_RETRY_FIRST, BEHIND_RETRY_MAX).with_clock(clock);
        while matches!(first, OpError::NotMember { .. }) && clock.now() < deadline {
            backoff.wait();
            match attempt(ops.clone()) {
                None => return,
                Some(e) => first = e,
            }
        }
    }
    // The coordinator's node may have restarted (a client process): look it up afresh.
    fabric.forget_peer(to);
    directory.forget(to);
    let _ = directory.lookup(fabric, to, REPLY_AREA_ID);
    if let Some(e) = attempt(ops) {
        tracing::warn!(%node, %to, "reply lost: {first}; then {e}");
    }
}
