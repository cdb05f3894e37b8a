//! The ofi kinds of test bed (cargo feature `ofi`): nodes whose fabric is the ofi transport on
//! one of libfabric's software providers over loopback, and a report of what setting a node up
//! costs there (opening the provider, registering memory, adding a peer, the first operation to
//! a peer, which makes the provider's connection, against the ones after it).

use super::{
    DATA_REGION, TARGET_OFFSET, Testbed, TestbedNode, TransportKind, anonymous_memory,
    format_duration, other_error,
};
use acre_engine::addr::{Addr, NodeId};
use acre_engine::fabric::ofi::{OfiConfig, OfiNic, OfiTransport};
use acre_engine::fabric::{Doorbell, Fabric, NodeMemory, Transport};
use acre_engine::region::{AccessKey, Region};
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// libfabric's tcp provider under its reliable-datagram layer: the one that runs anywhere.
pub const PROVIDER_TCP: &str = "tcp;ofi_rxm";
/// libfabric's older sockets provider, which places a batch's RMA in order.
pub const PROVIDER_SOCKETS: &str = "sockets";

/// Builds nodes `ids` on the ofi transport over `provider`: each starts its transport (which
/// registers its data region and rings), then every node adds every other's card.
pub(super) fn build(ids: &[NodeId], kind: TransportKind, provider: &str) -> io::Result<Testbed> {
    let config = OfiConfig::loopback(provider);
    let mut nics: Vec<OfiNic> = Vec::with_capacity(ids.len());
    let mut parts = Vec::with_capacity(ids.len());
    let mut cards = Vec::with_capacity(ids.len());
    for &id in ids {
        let (memory, data_key, inbox) = anonymous_memory(id, ids)?;
        let (transport, nic) = OfiTransport::start(&config, memory.clone())
            .map_err(|e| other_error("start the ofi transport", e))?;
        cards.push(
            transport
                .card()
                .map_err(|e| other_error("make a card", e))?,
        );
        nics.push(nic);
        parts.push((memory, transport, data_key, inbox));
    }
    let mut nodes = Vec::with_capacity(ids.len());
    for (memory, transport, data_key, inbox) in parts {
        let id = memory.node_id();
        for card in cards.iter().filter(|card| card.node != id) {
            transport
                .add_peer(card.clone())
                .map_err(|e| other_error("add a peer", e))?;
        }
        nodes.push(TestbedNode {
            fabric: Arc::new(Fabric::new(memory, Transport::Ofi(transport))),
            inbox: Some(inbox),
            data_key,
        });
    }
    Ok(Testbed {
        kind,
        nodes,
        _keep: Box::new(nics),
    })
}

/// The area whose registration the set-up report times: what the issue names.
pub const LARGE_AREA_BYTES: u64 = 128 << 20;
/// The small area it is compared with (the test bed's data region).
const SMALL_AREA_BYTES: u64 = super::DATA_REGION_BYTES;
/// READs after the first one, whose median the report gives.
const LATER_READS: usize = 1_000;

/// A node with one anonymous data area of `bytes` (none if 0), not started.
fn bare_memory(id: NodeId, bytes: u64) -> io::Result<(Arc<NodeMemory>, AccessKey)> {
    let memory = Arc::new(NodeMemory::new(id, Arc::new(Doorbell::anonymous()?)));
    if bytes == 0 {
        return Ok((memory, AccessKey(0)));
    }
    let data = Region::anonymous(DATA_REGION, bytes)?;
    let key = data.key();
    memory
        .register(Arc::new(data))
        .map_err(|e| other_error("register the data area", e))?;
    Ok((memory, key))
}

/// Times `OfiTransport::start` for `memory`.
fn timed_start(
    config: &OfiConfig,
    memory: &Arc<NodeMemory>,
) -> io::Result<(OfiTransport, OfiNic, Duration)> {
    let started = Instant::now();
    let (transport, nic) = OfiTransport::start(config, memory.clone())
        .map_err(|e| other_error("start the ofi transport", e))?;
    Ok((transport, nic, started.elapsed()))
}

/// One repetition's figures.
#[derive(Clone, Copy, Debug, Default)]
struct SetupTimes {
    start_empty: Duration,
    start_small: Duration,
    start_large: Duration,
    add_peer: Duration,
    first_read: Duration,
    later_read_p50: Duration,
}

fn setup_once(config: &OfiConfig) -> io::Result<SetupTimes> {
    let (empty, _) = bare_memory(NodeId(3), 0)?;
    let (_empty_transport, _empty_nic, start_empty) = timed_start(config, &empty)?;
    let (memory_a, _) = bare_memory(NodeId(1), SMALL_AREA_BYTES)?;
    let (transport_a, nic_a, start_small) = timed_start(config, &memory_a)?;
    let (memory_b, key_b) = bare_memory(NodeId(2), LARGE_AREA_BYTES)?;
    let (transport_b, nic_b, start_large) = timed_start(config, &memory_b)?;
    let card = |t: &OfiTransport| t.card().map_err(|e| other_error("make a card", e));
    let (card_a, card_b) = (card(&transport_a)?, card(&transport_b)?);
    let started = Instant::now();
    transport_a
        .add_peer(card_b)
        .map_err(|e| other_error("add a peer", e))?;
    let add_peer = started.elapsed();
    transport_b
        .add_peer(card_a)
        .map_err(|e| other_error("add a peer", e))?;
    let a = Fabric::new(memory_a, Transport::Ofi(transport_a));
    let b = Fabric::new(memory_b, Transport::Ofi(transport_b));
    let addr = Addr::new(DATA_REGION, TARGET_OFFSET);
    let read = || -> io::Result<Duration> {
        let started = Instant::now();
        std::hint::black_box(
            a.read(NodeId(2), addr, key_b, 64)
                .map_err(|e| other_error("read", e))?,
        );
        Ok(started.elapsed())
    };
    let first_read = read()?;
    let mut later = (0..LATER_READS)
        .map(|_| read())
        .collect::<io::Result<Vec<_>>>()?;
    later.sort_unstable();
    // The fabrics go before their NIC threads, as in a test bed.
    drop(a);
    drop(b);
    drop((nic_a, nic_b));
    Ok(SetupTimes {
        start_empty,
        start_small,
        start_large,
        add_peer,
        first_read,
        later_read_p50: later[LATER_READS / 2],
    })
}

/// Sets nodes up on `provider` `repetitions` times, fresh each time, and reports the median
/// (and the range) of: starting a node with no area, with a 1 MiB area and with a 128 MiB area
/// (opening the provider, endpoints, NIC thread, and registering the area), adding a peer's
/// card, the first 64-byte READ to that peer, and the median of the next [`LATER_READS`].
pub fn setup_report(provider: &str, repetitions: usize) -> io::Result<String> {
    assert!(repetitions > 0, "repetitions={repetitions}");
    let config = OfiConfig::loopback(provider);
    let runs = (0..repetitions)
        .map(|_| setup_once(&config))
        .collect::<io::Result<Vec<_>>>()?;
    let line = |what: &str, pick: fn(&SetupTimes) -> Duration| {
        let mut times: Vec<Duration> = runs.iter().map(pick).collect();
        times.sort_unstable();
        format!(
            "ofi set-up {provider:<12} {what:<34} median {:>9}  range {} – {}  ({repetitions} runs)\n",
            format_duration(times[times.len() / 2]),
            format_duration(times[0]),
            format_duration(times[times.len() - 1]),
        )
    };
    let mut report = String::new();
    for (what, pick) in [
        (
            "start, no area",
            (|t| t.start_empty) as fn(&SetupTimes) -> Duration,
        ),
        ("start, one 1 MiB area", |t| t.start_small),
        ("start, one 128 MiB area", |t| t.start_large),
        ("add_peer", |t| t.add_peer),
        ("first READ 64 B to the peer", |t| t.first_read),
        ("later READ 64 B (median of 1000)", |t| t.later_read_p50),
    ] {
        report.push_str(&line(what, pick));
    }
    Ok(report)
}
