//! Leases both ways between the CM and every node (FaRM SOSP'15 §5.1), as sans-I/O state
//! machines driven by explicit [`Time`], and the fixed-size authenticated packets they exchange.
//!
//! A lease is a promise bounded in time. The node's lease from the CM lets the node act as a
//! member (serve, coordinate) while it is valid; when the CM sees a node's lease expire it
//! suspects the node and starts a reconfiguration that may give the node's regions to others, so
//! the node must have stopped acting by then. The CM's lease from a node lets the node suspect
//! the CM: when the lease it granted the CM runs out unrenewed, the CM is gone or cut off.
//!
//! # The handshake
//!
//! Every renewal is three packets, and each side sends one per renewal period (1/5 of the
//! lease), so a lost packet costs one period, not the lease:
//!
//! 1. node -> CM `REQUEST {seq}`: the node asks for a lease, and remembers when it sent `seq`;
//! 2. CM -> node `GRANT+REQUEST {seq}`: the CM grants it (counting from now) and asks for one;
//! 3. node -> CM `GRANT {seq}`: the node grants the CM's lease (counting from now).
//!
//! # The timing rule: a holder never outlives its grantor's view
//!
//! A grantor counts a lease from when it granted it; the holder counts it from when it *sent*
//! the request, which is earlier in real time, and counts a shortened length `lease / (1 + ρ)`.
//! With the drift bound ρ ([`LeaseTiming::drift_ppm`]): over any interval, the grantor's clock
//! advances at most `1 + ρ` times as much as the holder's. Then at any real instant the holder
//! believes in its lease only if `holder_elapsed(sent) < lease / (1 + ρ)`, hence
//! `grantor_elapsed(granted) <= grantor_elapsed(sent) <= (1 + ρ) holder_elapsed(sent) < lease`:
//! the grantor still believes in it too. A holder whose clock runs fast gives up early (safe);
//! one whose clock runs slow by more than ρ against its grantor's can outlive the grantor's view,
//! which is why ρ must cover the worst drift (or clock nemesis) the deployment has.
//!
//! The rule is applied both ways: the node's lease (held by the node, granted by the CM at 2)
//! and the CM's lease (held by the CM from 2, granted by the node at 3).
//!
//! # The packet (little-endian, [`PACKET_BYTES`] bytes)
//!
//! | offset | bytes | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `ACLE` |
//! | 4 | 1 | version, [`PACKET_VERSION`] |
//! | 5 | 1 | kind: 1 REQUEST, 2 GRANT+REQUEST, 3 GRANT |
//! | 6 | 2 | the node's id |
//! | 8 | 2 | the CM's id |
//! | 10 | 6 | zero |
//! | 16 | 8 | configuration id |
//! | 24 | 8 | sequence number (the node's request; echoed in 2 and 3) |
//! | 32 | 8 | the sender's lease length in nanoseconds (both ends must agree) |
//! | 40 | 32 | HMAC-SHA256 of bytes 0..40 under the lease key |
//!
//! The lease key is derived from the cluster secret ([`LeaseKey::new`]), so only members sign
//! packets. The MAC does not stop replays; the state machines do: the CM accepts a REQUEST only
//! with a sequence number above the last one it granted to that node, and a GRANT only for its
//! latest GRANT+REQUEST; a node counts a GRANT+REQUEST from the send time of the request it
//! echoes, so a replayed one grants nothing new. A node's first sequence number is the caller's
//! (the lease thread uses the wall clock), so a restarted node continues above its last one.
//!
//! A packet that is malformed, signed with another secret, from another configuration, another
//! CM or for another node is refused with a [`LeaseError`] and changes nothing.
#![forbid(unsafe_code)]

use acre_engine::NodeId;
use acre_engine::clock::Time;
use acre_engine::fabric::tcp::auth::ClusterSecret;
use acre_engine::lease::LeaseGate;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of every lease packet.
pub const PACKET_BYTES: usize = 72;
/// The version this code speaks; a packet of any other is refused.
pub const PACKET_VERSION: u8 = 1;
const PACKET_MAGIC: [u8; 4] = *b"ACLE";
/// Bytes the MAC covers: everything before it.
const SIGNED_BYTES: usize = 40;
const MAC_BYTES: usize = 32;
const _: () = assert!(SIGNED_BYTES + MAC_BYTES == PACKET_BYTES);

/// How many of its latest requests a node remembers the send time of. A grant for an older one
/// is ignored: requests go out every renewal period, so this covers replies that arrive up to
/// this many periods late, far longer than a lease is worth renewing from.
pub const REQUESTS_REMEMBERED: usize = 4;

/// A renewal every lease / this (FaRM renews at 1/5 of the lease).
pub const RENEWALS_PER_LEASE: u32 = 5;

/// The default lease: FaRM used 10 ms on dedicated machines with RDMA; shared two-core machines
/// that also run the harness and the benchmarks need slack for scheduling delays.
pub const LEASE_DEFAULT: Duration = Duration::from_millis(200);
/// The default drift bound: 1% (10 000 ppm), well above real oscillators (tens of ppm), below
/// the rates a clock nemesis uses to show what happens outside the bound.
pub const DRIFT_PPM_DEFAULT: u32 = 10_000;

type HmacSha256 = Hmac<Sha256>;

/// Lease length and the drift bound, the same in every process of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    lease: Duration,
    drift_ppm: u32,
}

impl Default for LeaseTiming {
    fn default() -> LeaseTiming {
        LeaseTiming {
            lease: LEASE_DEFAULT,
            drift_ppm: DRIFT_PPM_DEFAULT,
        }
    }
}

impl LeaseTiming {
    /// Panics on a lease under a millisecond or over an hour (programmer errors), or a drift
    /// bound of 100% or more (no lease would be safe).
    pub fn new(lease: Duration, drift_ppm: u32) -> LeaseTiming {
        assert!(lease >= Duration::from_millis(1), "lease={lease:?}");
        assert!(lease <= Duration::from_secs(3600), "lease={lease:?}");
        assert!(drift_ppm < 1_000_000, "drift_ppm={drift_ppm}");
        LeaseTiming { lease, drift_ppm }
    }

    /// How long a grantor considers a lease valid after granting it.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// ρ in parts per million: over any interval one process's clock advances at most `1 + ρ`
    /// times as much as another's.
    pub fn drift_ppm(&self) -> u32 {
        self.drift_ppm
    }

    /// How often a lease is renewed.
    pub fn renewal_period(&self) -> Duration {
        self.lease / RENEWALS_PER_LEASE
    }

    /// What a holder counts from its request: `lease / (1 + ρ)`, rounded down.
    pub fn held(&self) -> Duration {
        let nanos = self.lease.as_nanos() * 1_000_000 / (1_000_000 + u128::from(self.drift_ppm));
        Duration::from_nanos(u64::try_from(nanos).expect("a lease is at most an hour"))
    }

    fn lease_nanos(&self) -> u64 {
        u64::try_from(self.lease.as_nanos()).expect("a lease is at most an hour")
    }
}

/// The key lease packets are signed with, derived from the cluster secret.
#[derive(Clone)]
pub struct LeaseKey {
    /// Keyed once; each packet clones it (no allocation) instead of keying again.
    mac: HmacSha256,
}

impl fmt::Debug for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseKey(<redacted>)")
    }
}

/// What the lease key is derived with from the cluster secret.
pub const SECRET_LABEL: &str = "acre leases";

impl LeaseKey {
    /// The lease key: a secret of the leases' own, derived from the cluster secret
    /// ([`ClusterSecret::derive`]), so no packet or proof of another protocol verifies here.
    pub fn new(secret: &ClusterSecret) -> LeaseKey {
        let key = secret.derive(SECRET_LABEL);
        LeaseKey {
            mac: HmacSha256::new_from_slice(key.bytes()).expect("HMAC takes a key of any length"),
        }
    }

    fn sign(&self, signed: &[u8]) -> [u8; MAC_BYTES] {
        let mut mac = self.mac.clone();
        mac.update(signed);
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&mac.finalize().into_bytes());
        tag
    }

    fn verify(&self, signed: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(signed);
        mac.verify_slice(tag).is_ok()
    }
}

/// What a lease packet says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// node -> CM: grant me a lease.
    Request,
    /// CM -> node: granted; grant me one.
    GrantAndRequest,
    /// node -> CM: granted.
    Grant,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Request => 1,
            Kind::GrantAndRequest => 2,
            Kind::Grant => 3,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Request),
            2 => Some(Kind::GrantAndRequest),
            3 => Some(Kind::Grant),
            _ => None,
        }
    }
}

/// A decoded, authenticated lease packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub node: NodeId,
    pub cm: NodeId,
    pub config: u64,
    pub seq: u64,
    pub lease_nanos: u64,
}

/// Why bytes are not a lease packet. The sender is misconfigured or hostile; the receiver drops
/// the datagram and goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    #[error("a lease packet has {PACKET_BYTES} bytes, not {len}: a sender of another protocol")]
    Length { len: usize },
    #[error("no lease packet magic (found {found:02x?}): a sender of another protocol")]
    Magic { found: [u8; 4] },
    #[error("lease packet version {version}, this process speaks {PACKET_VERSION}: upgrade it")]
    Version { version: u8 },
    #[error(
        "the lease packet's MAC does not match: the sender has another cluster secret, or the \
         packet was altered on the way"
    )]
    Mac,
    #[error("unknown lease packet kind {kind}")]
    Kind { kind: u8 },
    #[error("the lease packet's reserved bytes are not zero")]
    Reserved,
}

impl Packet {
    /// The packet's bytes, signed with `key`.
    pub fn encode(&self, key: &LeaseKey) -> [u8; PACKET_BYTES] {
        let mut bytes = [0u8; PACKET_BYTES];
        bytes[0..4].copy_from_slice(&PACKET_MAGIC);
        bytes[4] = PACKET_VERSION;
        bytes[5] = self.kind.byte();
        bytes[6..8].copy_from_slice(&self.node.0.to_le_bytes());
        bytes[8..10].copy_from_slice(&self.cm.0.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.config.to_le_bytes());
        bytes[24..32].copy_from_slice(&self.seq.to_le_bytes());
        bytes[32..40].copy_from_slice(&self.lease_nanos.to_le_bytes());
        let tag = key.sign(&bytes[..SIGNED_BYTES]);
        bytes[SIGNED_BYTES..].copy_from_slice(&tag);
        bytes
    }

    /// Checks and decodes a datagram. Nothing but the length, magic and version is looked at
    /// before the MAC is checked.
    pub fn decode(bytes: &[u8], key: &LeaseKey) -> Result<Packet, PacketError> {
        let bytes: &[u8; PACKET_BYTES] = bytes
            .try_into()
            .map_err(|_| PacketError::Length { len: bytes.len() })?;
        let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
        if magic != PACKET_MAGIC {
            return Err(PacketError::Magic { found: magic });
        }
        if bytes[4] != PACKET_VERSION {
            return Err(PacketError::Version { version: bytes[4] });
        }
        if !key.verify(&bytes[..SIGNED_BYTES], &bytes[SIGNED_BYTES..]) {
            return Err(PacketError::Mac);
        }
        let kind = Kind::from_byte(bytes[5]).ok_or(PacketError::Kind { kind: bytes[5] })?;
        if bytes[10..16].iter().any(|&b| b != 0) {
            return Err(PacketError::Reserved);
        }
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(word)
        };
        Ok(Packet {
            kind,
            node: NodeId(u16_at(6)),
            cm: NodeId(u16_at(8)),
            config: u64_at(16),
            seq: u64_at(24),
            lease_nanos: u64_at(32),
        })
    }
}

/// Why a lease packet was refused. Nothing changed; the receiver drops it and goes on. The
/// variants say who must do what for leases to flow again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    #[error(transparent)]
    Packet(#[from] PacketError),
    #[error(
        "lease packet of configuration {packet}, this process is at {ours}: the sender must \
         apply the newer configuration"
    )]
    StaleConfiguration { packet: u64, ours: u64 },
    #[error(
        "lease packet of configuration {packet}, this process is at {ours}: this process must \
         apply the newer configuration first"
    )]
    NewerConfiguration { packet: u64, ours: u64 },
    #[error("lease packet names CM {packet}, this process's CM is {ours}")]
    WrongCm { packet: NodeId, ours: NodeId },
    #[error("lease packet for node {packet} reached node {ours}: check the addresses")]
    WrongNode { packet: NodeId, ours: NodeId },
    #[error("{node} is not a member of this configuration: it must rejoin")]
    NotAMember { node: NodeId },
    #[error("a {kind:?} packet is meant for the other side of the lease")]
    WrongSide { kind: Kind },
    #[error(
        "the sender's lease is {packet:?}, this process's {ours:?}: every process of a cluster \
         must run with the same lease length"
    )]
    LeaseMismatch { packet: Duration, ours: Duration },
    #[error("request {seq} from {node} is not newer than {last}: a replay or a late duplicate")]
    OldRequest { node: NodeId, seq: u64, last: u64 },
    #[error("no outstanding request {seq}: a late or replayed reply")]
    UnknownRequest { seq: u64 },
    #[error("{node}'s lease has expired in this configuration: it is suspected and must rejoin")]
    Suspected { node: NodeId },
}

/// Checks the fields every lease packet shares against the receiver's configuration.
fn check_common(
    packet: &Packet,
    config: u64,
    cm: NodeId,
    timing: &LeaseTiming,
) -> Result<(), LeaseError> {
    if packet.config < config {
        return Err(LeaseError::StaleConfiguration {
            packet: packet.config,
            ours: config,
        });
    }
    if packet.config > config {
        return Err(LeaseError::NewerConfiguration {
            packet: packet.config,
            ours: config,
        });
    }
    if packet.cm != cm {
        return Err(LeaseError::WrongCm {
            packet: packet.cm,
            ours: cm,
        });
    }
    if packet.lease_nanos != timing.lease_nanos() {
        return Err(LeaseError::LeaseMismatch {
            packet: Duration::from_nanos(packet.lease_nanos),
            ours: timing.lease(),
        });
    }
    Ok(())
}

/// The expiry of a node's lease from the CM, readable by any thread without a lock: a worker
/// checks [`LeaseExpiry::is_valid`] before it serves. It is the node's [`LeaseGate`]: in a node
/// process, the one its memory holds, which the NIC thread and the worker check
/// (docs/failures.md#leases).
#[derive(Clone, Debug)]
pub struct LeaseExpiry {
    gate: Arc<LeaseGate>,
}

impl Default for LeaseExpiry {
    /// A node that asks at once and holds nothing yet.
    fn default() -> LeaseExpiry {
        LeaseExpiry {
            gate: Arc::new(LeaseGate::asked()),
        }
    }
}

impl LeaseExpiry {
    /// The expiry published into `gate` (a node memory's, so that its data path sees it).
    pub fn with_gate(gate: Arc<LeaseGate>) -> LeaseExpiry {
        LeaseExpiry { gate }
    }

    /// Whether the lease is valid at `now` (a reading of the node's lease clock); a node that
    /// asked no CM yet may act ([`LeaseGate`]).
    pub fn is_valid(&self, now: Time) -> bool {
        self.gate.is_open(now)
    }

    /// When the lease expires, if one was ever granted.
    pub fn until(&self) -> Option<Time> {
        self.gate.until()
    }

    /// The node asks a CM: from now on it may act only while a grant holds.
    pub fn ask(&self) {
        self.gate.ask();
    }

    /// Only ever extends: a grant that arrives late never shortens a later one.
    fn extend_to(&self, until: Time) {
        self.gate.extend_to(until);
    }
}

/// The node's side: asks the CM for its lease, grants the CM's, and knows when either expires.
#[derive(Debug)]
pub struct NodeLease {
    node: NodeId,
    cm: NodeId,
    config: u64,
    timing: LeaseTiming,
    next_seq: u64,
    /// The latest requests and when they were sent, at `seq % REQUESTS_REMEMBERED`.
    sent: [Option<(u64, Time)>; REQUESTS_REMEMBERED],
    next_request_at: Time,
    expiry: LeaseExpiry,
    /// Until when this node has granted the CM its lease (from the start: one lease of grace
    /// for the first handshake to complete).
    cm_granted_until: Time,
}

impl NodeLease {
    /// A node that will ask `cm` of configuration `config` for a lease at once. `first_seq`
    /// must exceed every sequence number an earlier incarnation of this node sent in this
    /// configuration, or the CM ignores it as a replay until it suspects it.
    pub fn new(
        node: NodeId,
        cm: NodeId,
        config: u64,
        timing: LeaseTiming,
        first_seq: u64,
        now: Time,
    ) -> NodeLease {
        NodeLease {
            node,
            cm,
            config,
            timing,
            next_seq: first_seq,
            sent: [None; REQUESTS_REMEMBERED],
            next_request_at: now,
            expiry: LeaseExpiry::default(),
            cm_granted_until: now + timing.lease(),
        }
    }

    /// This node publishing its lease into `gate` (its memory's, so that the node's data path
    /// sees it) rather than a gate of its own. The gate is asked at the first request.
    pub fn with_gate(mut self, gate: Arc<LeaseGate>) -> NodeLease {
        self.expiry = LeaseExpiry::with_gate(gate);
        self
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn config(&self) -> u64 {
        self.config
    }

    /// A handle on this node's lease expiry for other threads.
    pub fn expiry(&self) -> LeaseExpiry {
        self.expiry.clone()
    }

    /// Whether this node holds a valid lease from the CM at `now`: it may act only then.
    pub fn is_valid(&self, now: Time) -> bool {
        self.expiry.is_valid(now)
    }

    /// Whether the lease this node granted the CM has run out at `now`: suspect the CM.
    pub fn cm_expired(&self, now: Time) -> bool {
        now >= self.cm_granted_until
    }

    /// The next time after `now` that [`NodeLease::poll`] has a request to send or the CM's
    /// lease expires. (The node's own expiry needs no wake-up: readers compare it with their
    /// clock.)
    pub fn next_deadline(&self, now: Time) -> Time {
        if self.cm_granted_until > now {
            self.next_request_at.min(self.cm_granted_until)
        } else {
            self.next_request_at
        }
    }

    /// The request to send at `now`, if one is due.
    pub fn poll(&mut self, now: Time) -> Option<Packet> {
        if now < self.next_request_at {
            return None;
        }
        // The CM's grace for this node may start from here: the node's gate counts on a grant
        // from now on (a no-op after the first request).
        self.expiry.ask();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent[slot(seq)] = Some((seq, now));
        self.next_request_at = now + self.timing.renewal_period();
        Some(Packet {
            kind: Kind::Request,
            node: self.node,
            cm: self.cm,
            config: self.config,
            seq,
            lease_nanos: self.timing.lease_nanos(),
        })
    }

    /// Takes the CM's GRANT+REQUEST received at `now`: extends this node's lease from when it
    /// sent the request, grants the CM's from now, and returns the GRANT to send back.
    pub fn receive(&mut self, now: Time, packet: &Packet) -> Result<Packet, LeaseError> {
        if packet.kind != Kind::GrantAndRequest {
            return Err(LeaseError::WrongSide { kind: packet.kind });
        }
        check_common(packet, self.config, self.cm, &self.timing)?;
        if packet.node != self.node {
            return Err(LeaseError::WrongNode {
                packet: packet.node,
                ours: self.node,
            });
        }
        let sent_at = match self.sent[slot(packet.seq)] {
            Some((seq, sent_at)) if seq == packet.seq => sent_at,
            _ => return Err(LeaseError::UnknownRequest { seq: packet.seq }),
        };
        self.expiry.extend_to(sent_at + self.timing.held());
        self.cm_granted_until = self.cm_granted_until.max(now + self.timing.lease());
        Ok(Packet {
            kind: Kind::Grant,
            ..*packet
        })
    }

    /// The CM of this configuration.
    pub fn cm(&self) -> NodeId {
        self.cm
    }

    /// The CM of the current configuration moved (its process restarted and leads again in
    /// the same configuration): asks it for a lease at once, as for a new configuration, with
    /// the replies the old process owed forgotten.
    pub fn cm_moved(&mut self, now: Time) {
        self.expiry.ask();
        self.sent = [None; REQUESTS_REMEMBERED];
        self.next_request_at = now;
        if self.cm_granted_until < now + self.timing.lease() {
            self.cm_granted_until = now + self.timing.lease();
        }
    }

    /// Moves to a newer configuration (and maybe another CM) and asks for a lease at once. The
    /// lease held so far stays: the CM of the new configuration waits out the old leases.
    pub fn set_configuration(&mut self, config: u64, cm: NodeId, now: Time) {
        assert!(
            config > self.config,
            "config={config} current={}",
            self.config
        );
        self.expiry.ask();
        self.config = config;
        self.cm = cm;
        self.sent = [None; REQUESTS_REMEMBERED];
        self.next_request_at = now;
        if self.cm_granted_until < now + self.timing.lease() {
            self.cm_granted_until = now + self.timing.lease();
        }
    }
}

fn slot(seq: u64) -> usize {
    (seq % REQUESTS_REMEMBERED as u64) as usize
}

/// What the CM knows of one node's leases.
#[derive(Clone, Copy, Debug)]
struct NodeEntry {
    node: NodeId,
    /// Until when the CM considers the node's lease valid (from the grant, or the grace given
    /// at the start).
    granted_until: Time,
    /// The highest request granted, so a replayed one is refused.
    last_request: Option<u64>,
    /// The CM's latest GRANT+REQUEST to this node: its sequence number and when it was sent.
    asked: Option<(u64, Time)>,
    /// Until when the CM holds a lease from the node (counted from `asked`, shortened).
    held_until: Option<Time>,
    suspected: bool,
    reported: bool,
}

/// The CM's side: grants nodes their leases, asks for its own, and reports the nodes whose
/// lease it has seen expire. The table is allocated once; receiving and polling never allocate.
#[derive(Debug)]
pub struct CmLeases {
    cm: NodeId,
    config: u64,
    timing: LeaseTiming,
    /// Sorted by node id; capacity [`MEMBERS_MAX`], so a new configuration never allocates.
    nodes: Vec<NodeEntry>,
    /// Where a new configuration's table is built, then swapped with `nodes`.
    spare: Vec<NodeEntry>,
    /// The latest expiry of a lease granted to a node no longer a member.
    removed_until: Option<Time>,
}

/// The most members a CM's lease table holds (FaRM ran 90 machines).
pub const MEMBERS_MAX: usize = 1024;

impl NodeEntry {
    /// A member's entry with one lease of grace from `now` for a first handshake.
    fn new(node: NodeId, now: Time, timing: &LeaseTiming) -> NodeEntry {
        NodeEntry {
            node,
            granted_until: now + timing.lease(),
            last_request: None,
            asked: None,
            held_until: None,
            suspected: false,
            reported: false,
        }
    }
}

impl CmLeases {
    /// The CM `cm` of configuration `config` with these members, each given one lease of grace
    /// from `now` to complete a first handshake.
    pub fn new(
        cm: NodeId,
        config: u64,
        timing: LeaseTiming,
        members: &[NodeId],
        now: Time,
    ) -> CmLeases {
        assert!(members.len() <= MEMBERS_MAX, "members={}", members.len());
        let mut nodes = Vec::with_capacity(MEMBERS_MAX);
        nodes.extend(
            members
                .iter()
                .map(|&node| NodeEntry::new(node, now, &timing)),
        );
        nodes.sort_by_key(|entry| entry.node);
        let unique = nodes.windows(2).all(|pair| pair[0].node != pair[1].node);
        assert!(unique, "members listed twice: {members:?}");
        CmLeases {
            cm,
            config,
            timing,
            nodes,
            spare: Vec::with_capacity(MEMBERS_MAX),
            removed_until: None,
        }
    }

    /// Moves to a newer configuration with `members` (in increasing id order). A member that
    /// stays keeps its lease and, if it was suspected, is no longer: the configuration that
    /// kept it is the verdict on the suspicion; it gets one lease of grace, as a new member
    /// does, to renew under the new configuration id. Allocates nothing.
    pub fn set_configuration(&mut self, config: u64, members: &[NodeId], now: Time) {
        assert!(
            config > self.config,
            "config={config} current={}",
            self.config
        );
        assert!(members.len() <= MEMBERS_MAX, "members={}", members.len());
        let sorted = members.windows(2).all(|pair| pair[0] < pair[1]);
        assert!(
            sorted,
            "members must be unique and in id order: {members:?}"
        );
        let grace = now + self.timing.lease();
        self.spare.clear();
        for &node in members {
            let entry = match self.entry(node) {
                Some(old) => NodeEntry {
                    granted_until: old.granted_until.max(grace),
                    suspected: false,
                    reported: false,
                    ..*old
                },
                None => NodeEntry::new(node, now, &self.timing),
            };
            self.spare.push(entry);
        }
        for old in &self.nodes {
            if members.binary_search(&old.node).is_err() {
                let until = old.granted_until;
                self.removed_until = Some(self.removed_until.map_or(until, |u| u.max(until)));
            }
        }
        std::mem::swap(&mut self.nodes, &mut self.spare);
        self.config = config;
    }

    pub fn config(&self) -> u64 {
        self.config
    }

    /// This CM's id.
    pub fn cm(&self) -> NodeId {
        self.cm
    }

    /// The members and until when the CM considers each one's lease valid, in id order.
    pub fn members(&self) -> impl Iterator<Item = (NodeId, Time)> + '_ {
        self.nodes
            .iter()
            .map(|entry| (entry.node, entry.granted_until))
    }

    fn entry(&self, node: NodeId) -> Option<&NodeEntry> {
        let index = self.nodes.binary_search_by_key(&node, |e| e.node).ok()?;
        Some(&self.nodes[index])
    }

    fn entry_mut(&mut self, node: NodeId) -> Result<&mut NodeEntry, LeaseError> {
        let index = self
            .nodes
            .binary_search_by_key(&node, |e| e.node)
            .map_err(|_| LeaseError::NotAMember { node })?;
        Ok(&mut self.nodes[index])
    }

    /// Takes a node's REQUEST or GRANT received at `now`; for a REQUEST, returns the
    /// GRANT+REQUEST to send back.
    pub fn receive(&mut self, now: Time, packet: &Packet) -> Result<Option<Packet>, LeaseError> {
        if packet.kind == Kind::GrantAndRequest {
            return Err(LeaseError::WrongSide { kind: packet.kind });
        }
        check_common(packet, self.config, self.cm, &self.timing)?;
        let lease = self.timing.lease();
        let held = self.timing.held();
        let entry = self.entry_mut(packet.node)?;
        // An expiry seen is final for this configuration: the reconfiguration that follows
        // counts on the node not holding a lease after it.
        if entry.suspected || now >= entry.granted_until {
            return Err(LeaseError::Suspected { node: packet.node });
        }
        match packet.kind {
            Kind::Request => {
                if let Some(last) = entry.last_request
                    && packet.seq <= last
                {
                    return Err(LeaseError::OldRequest {
                        node: packet.node,
                        seq: packet.seq,
                        last,
                    });
                }
                entry.last_request = Some(packet.seq);
                entry.granted_until = entry.granted_until.max(now + lease);
                entry.asked = Some((packet.seq, now));
                Ok(Some(Packet {
                    kind: Kind::GrantAndRequest,
                    ..*packet
                }))
            }
            Kind::Grant => {
                let asked_at = match entry.asked {
                    Some((seq, asked_at)) if seq == packet.seq => asked_at,
                    _ => return Err(LeaseError::UnknownRequest { seq: packet.seq }),
                };
                let until = asked_at + held;
                entry.held_until = Some(entry.held_until.map_or(until, |u| u.max(until)));
                Ok(None)
            }
            Kind::GrantAndRequest => unreachable!("refused above"),
        }
    }

    /// The next node whose lease has expired at `now` and was not reported yet; each is
    /// reported once. Call until `None`.
    pub fn next_suspect(&mut self, now: Time) -> Option<NodeId> {
        for entry in &mut self.nodes {
            if now >= entry.granted_until {
                entry.suspected = true;
            }
            if entry.suspected && !entry.reported {
                entry.reported = true;
                return Some(entry.node);
            }
        }
        None
    }

    /// The CM's lease thread did not run from `from` to `to` (descheduled on a busy host, or
    /// stopped): the requests that arrived meanwhile wait unread in its socket, so a lease that
    /// was still valid at `from` is not judged on that gap: it is extended by `to - from`.
    /// Safe: the CM only believes a node's lease ends later than it does (it suspects later and
    /// waits longer for a removed node's lease); what the node holds is unchanged. A lease that
    /// had ended by `from`, or a node already suspected, is left as it is.
    pub fn excuse_gap(&mut self, from: Time, to: Time) {
        let gap = to.saturating_duration_since(from);
        if gap.is_zero() {
            return;
        }
        for entry in &mut self.nodes {
            if !entry.suspected && entry.granted_until > from {
                entry.granted_until = entry.granted_until.saturating_add(gap);
            }
        }
    }

    /// This CM takes up its role again (its replica leads again, in a configuration that
    /// already names it, so no new configuration resets the table): every member is given one
    /// lease of grace from `now`, as a new configuration gives it, and its suspicion is
    /// cleared, so a member still silent one lease from now is suspected and reported again.
    /// The suspicion this CM stood down from is otherwise never reported again: the table
    /// reports each once. Safe for the reason [`CmLeases::excuse_gap`] is: the CM only believes
    /// a lease ends later than the node does.
    pub fn regrace(&mut self, now: Time) {
        let grace = now + self.timing.lease();
        for entry in &mut self.nodes {
            entry.granted_until = entry.granted_until.max(grace);
            entry.suspected = false;
            entry.reported = false;
        }
    }

    /// Whether the CM has seen `node`'s lease expire in this configuration.
    pub fn is_suspected(&self, node: NodeId) -> bool {
        self.entry(node).is_some_and(|entry| entry.suspected)
    }

    /// Until when the CM considers `node`'s lease valid.
    pub fn node_lease_until(&self, node: NodeId) -> Option<Time> {
        self.entry(node).map(|entry| entry.granted_until)
    }

    /// Whether the CM holds a lease from `node` at `now`.
    pub fn holds_lease_from(&self, node: NodeId, now: Time) -> bool {
        self.entry(node)
            .and_then(|entry| entry.held_until)
            .is_some_and(|until| now < until)
    }

    /// When every lease this CM granted has expired: what a reconfiguration waits out before
    /// it hands a removed node's regions to others.
    /// Nodes removed by a configuration change count too.
    pub fn all_granted_until(&self) -> Option<Time> {
        let members = self.nodes.iter().map(|entry| entry.granted_until).max();
        members.max(self.removed_until)
    }

    /// The next time a lease not yet suspected expires.
    pub fn next_deadline(&self) -> Option<Time> {
        self.nodes
            .iter()
            .filter(|entry| !entry.suspected)
            .map(|entry| entry.granted_until)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use acre_engine::clock::{Clock, ManualClock};

    const MS: Duration = Duration::from_millis(1);
    const CM: NodeId = NodeId(0);
    const CONFIG: u64 = 7;

    fn key() -> LeaseKey {
        LeaseKey::new(&ClusterSecret::from_bytes([5; 32]))
    }

    fn timing() -> LeaseTiming {
        LeaseTiming::new(100 * MS, 10_000)
    }

    /// A CM with members 1 and 2 and node 1's side, on one manual clock (no delay).
    fn pair() -> (CmLeases, NodeLease, Clock, ManualClock) {
        let (clock, manual) = Clock::manual(Time::from_nanos(1_000_000_000));
        let cm = CmLeases::new(CM, CONFIG, timing(), &[NodeId(2), NodeId(1)], clock.now());
        let node = NodeLease::new(NodeId(1), CM, CONFIG, timing(), 1, clock.now());
        (cm, node, clock, manual)
    }

    /// One full handshake through encoded packets; returns the request's sequence number.
    fn handshake(cm: &mut CmLeases, node: &mut NodeLease, now: Time) -> u64 {
        let key = key();
        let request = node.poll(now).expect("a request is due");
        let request = Packet::decode(&request.encode(&key), &key).unwrap();
        let reply = cm.receive(now, &request).unwrap().expect("a grant+request");
        let reply = Packet::decode(&reply.encode(&key), &key).unwrap();
        let grant = node.receive(now, &reply).unwrap();
        let grant = Packet::decode(&grant.encode(&key), &key).unwrap();
        assert_eq!(cm.receive(now, &grant).unwrap(), None);
        request.seq
    }

    /// A CM whose thread stalled past a member's lease does not suspect it for the stall: its
    /// renewals were waiting unread. A lease that had ended before the stall is still suspected.
    #[test]
    fn a_stall_of_the_cms_thread_is_not_held_against_the_members() {
        let (clock, manual) = Clock::manual(Time::ZERO);
        let t = timing();
        let members = [NodeId(1), NodeId(2)];
        let mut cm = CmLeases::new(CM, CONFIG, t, &members, clock.now());
        let lease = Duration::from_nanos(t.lease_nanos());
        // n1 renews at once; n2 never does, and its grace ends at `lease`.
        let request = Packet {
            kind: Kind::Request,
            node: NodeId(1),
            cm: CM,
            config: CONFIG,
            seq: 1,
            lease_nanos: t.lease_nanos(),
        };
        manual.advance(lease / 2);
        cm.receive(clock.now(), &request).unwrap();
        // n2's grace ends; then the thread stalls for two leases.
        manual.advance(lease / 2 + lease / 10);
        let stalled_from = clock.now();
        manual.advance(2 * lease);
        cm.excuse_gap(stalled_from, clock.now());
        assert_eq!(cm.next_suspect(clock.now()), Some(NodeId(2)));
        assert_eq!(
            cm.next_suspect(clock.now()),
            None,
            "n1 is excused the stall"
        );
        // Without the excuse n1 would be suspected now.
        let mut unexcused = CmLeases::new(CM, CONFIG, t, &members, Time::ZERO);
        unexcused.receive(Time::ZERO + lease / 2, &request).unwrap();
        let suspects: Vec<NodeId> =
            std::iter::from_fn(|| unexcused.next_suspect(clock.now())).collect();
        assert_eq!(suspects, members);
    }

    #[test]
    fn packets_round_trip_and_anything_else_is_refused() {
        let key = key();
        let packet = Packet {
            kind: Kind::GrantAndRequest,
            node: NodeId(3),
            cm: NodeId(1),
            config: u64::MAX - 1,
            seq: 0x0102_0304_0506_0708,
            lease_nanos: 100_000_000,
        };
        let bytes = packet.encode(&key);
        assert_eq!(&bytes[0..4], b"ACLE");
        assert_eq!(&bytes[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(Packet::decode(&bytes, &key), Ok(packet));

        let other = LeaseKey::new(&ClusterSecret::from_bytes([6; 32]));
        assert_eq!(Packet::decode(&bytes, &other), Err(PacketError::Mac));
        assert_eq!(
            Packet::decode(&bytes[..71], &key),
            Err(PacketError::Length { len: 71 })
        );
        // Every single-bit flip anywhere is caught.
        for bit in 0..PACKET_BYTES * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Packet::decode(&flipped, &key).is_err(), "bit {bit}");
        }
        let mut wrong_version = bytes;
        wrong_version[4] = 2;
        assert_eq!(
            Packet::decode(&wrong_version, &key),
            Err(PacketError::Version { version: 2 })
        );
        // Properly signed but with a kind or reserved bytes this code does not know.
        let mut unknown = bytes;
        unknown[5] = 9;
        let tag = key.sign(&unknown[..SIGNED_BYTES]);
        unknown[SIGNED_BYTES..].copy_from_slice(&tag);
        assert_eq!(
            Packet::decode(&unknown, &key),
            Err(PacketError::Kind { kind: 9 })
        );
        let mut reserved = bytes;
        reserved[12] = 1;
        let tag = key.sign(&reserved[..SIGNED_BYTES]);
        reserved[SIGNED_BYTES..].copy_from_slice(&tag);
        assert_eq!(Packet::decode(&reserved, &key), Err(PacketError::Reserved));
    }

    // FaRM SOSP'15 §5.1: a three-way handshake grants leases both ways.
    #[test]
    fn a_handshake_grants_both_leases_and_renewals_keep_them() {
        let (mut cm, mut node, clock, manual) = pair();
        assert!(!node.is_valid(clock.now()), "no lease before a grant");
        handshake(&mut cm, &mut node, clock.now());
        let expiry = node.expiry();
        assert!(expiry.is_valid(clock.now()));
        assert!(cm.holds_lease_from(NodeId(1), clock.now()));
        assert!(!node.cm_expired(clock.now()));

        // Node 2 renews too, so only silence makes a suspect.
        let mut other = NodeLease::new(NodeId(2), CM, CONFIG, timing(), 1, clock.now());
        handshake(&mut cm, &mut other, clock.now());

        // Renew at every period for ten leases: both leases are still valid when each renewal
        // is due, and renewed by it.
        for _ in 0..50 {
            manual.advance(timing().renewal_period() - MS);
            assert!(node.poll(clock.now()).is_none(), "not before the period");
            manual.advance(MS);
            assert!(node.is_valid(clock.now()));
            assert!(cm.holds_lease_from(NodeId(1), clock.now()));
            let until = node.expiry().until();
            handshake(&mut cm, &mut node, clock.now());
            handshake(&mut cm, &mut other, clock.now());
            assert!(node.expiry().until() > until, "renewed");
            assert!(!node.cm_expired(clock.now()));
            assert_eq!(cm.next_suspect(clock.now()), None);
        }
    }

    #[test]
    fn a_suspect_is_reported_again_one_lease_after_a_regrace() {
        let timing = LeaseTiming::new(Duration::from_millis(100), 0);
        let mut cm = CmLeases::new(NodeId(9), 1, timing, &[NodeId(1), NodeId(2)], Time::ZERO);
        let at = |ms| Time::ZERO + Duration::from_millis(ms);
        assert_eq!(cm.next_suspect(at(150)), Some(NodeId(1)));
        assert_eq!(cm.next_suspect(at(150)), Some(NodeId(2)));
        assert_eq!(cm.next_suspect(at(300)), None, "each reported once");
        cm.regrace(at(300));
        assert!(!cm.is_suspected(NodeId(1)));
        assert_eq!(cm.next_suspect(at(399)), None, "a lease of grace");
        assert_eq!(cm.next_suspect(at(400)), Some(NodeId(1)));
        assert_eq!(cm.next_suspect(at(400)), Some(NodeId(2)));
    }

    #[test]
    fn a_silent_node_is_suspected_after_one_lease_and_knows_it_is_invalid_first() {
        let (mut cm, mut node, clock, manual) = pair();
        let granted_at = clock.now();
        handshake(&mut cm, &mut node, granted_at);
        // Node 2 never spoke: its grace runs out one lease after the start, as does node 1's.
        // The holder counts 100 ms / 1.01 = 99.0099 ms, the grantor 100 ms.
        manual.advance(Duration::from_micros(99_000));
        assert!(node.is_valid(clock.now()));
        manual.advance(Duration::from_micros(600));
        assert_eq!(cm.next_suspect(clock.now()), None);
        assert!(
            !node.is_valid(clock.now()),
            "the holder gave up before the grantor"
        );
        manual.advance(Duration::from_micros(400));
        assert_eq!(cm.next_suspect(clock.now()), Some(NodeId(1)));
        assert_eq!(cm.next_suspect(clock.now()), Some(NodeId(2)));
        assert_eq!(cm.next_suspect(clock.now()), None, "each reported once");
        assert!(cm.is_suspected(NodeId(1)));

        // A suspected node gets no new lease in this configuration.
        let request = node.poll(clock.now()).unwrap();
        assert_eq!(
            cm.receive(clock.now(), &request),
            Err(LeaseError::Suspected { node: NodeId(1) })
        );
        assert_eq!(cm.node_lease_until(NodeId(1)), Some(granted_at + 100 * MS));
    }

    #[test]
    fn stale_foreign_and_replayed_packets_change_nothing() {
        let (mut cm, mut node, clock, manual) = pair();
        handshake(&mut cm, &mut node, clock.now());
        manual.advance(20 * MS);
        let request = node.poll(clock.now()).unwrap();
        let reply = cm.receive(clock.now(), &request).unwrap().unwrap();
        let until = node.expiry().until();
        let cm_until = cm.node_lease_until(NodeId(1));

        let cases = [
            (
                Packet {
                    config: CONFIG - 1,
                    ..reply
                },
                LeaseError::StaleConfiguration {
                    packet: CONFIG - 1,
                    ours: CONFIG,
                },
            ),
            (
                Packet {
                    config: CONFIG + 1,
                    ..reply
                },
                LeaseError::NewerConfiguration {
                    packet: CONFIG + 1,
                    ours: CONFIG,
                },
            ),
            (
                Packet {
                    cm: NodeId(9),
                    ..reply
                },
                LeaseError::WrongCm {
                    packet: NodeId(9),
                    ours: CM,
                },
            ),
            (
                Packet {
                    node: NodeId(2),
                    ..reply
                },
                LeaseError::WrongNode {
                    packet: NodeId(2),
                    ours: NodeId(1),
                },
            ),
            (
                Packet {
                    seq: reply.seq + 1,
                    ..reply
                },
                LeaseError::UnknownRequest { seq: reply.seq + 1 },
            ),
            (
                Packet {
                    lease_nanos: 1,
                    ..reply
                },
                LeaseError::LeaseMismatch {
                    packet: Duration::from_nanos(1),
                    ours: 100 * MS,
                },
            ),
            (
                request,
                LeaseError::WrongSide {
                    kind: Kind::Request,
                },
            ),
        ];
        manual.advance(10 * MS);
        for (packet, error) in cases {
            assert_eq!(node.receive(clock.now(), &packet), Err(error), "{packet:?}");
            assert_eq!(
                node.expiry().until(),
                until,
                "{packet:?} changed the node's lease"
            );
        }
        // The CM refuses a replayed request, a request from a stranger, a grant it did not ask
        // for, and a stale configuration, without extending anything.
        let cm_cases = [
            (
                request,
                LeaseError::OldRequest {
                    node: NodeId(1),
                    seq: request.seq,
                    last: request.seq,
                },
            ),
            (
                Packet {
                    node: NodeId(5),
                    seq: 99,
                    ..request
                },
                LeaseError::NotAMember { node: NodeId(5) },
            ),
            (
                Packet {
                    kind: Kind::Grant,
                    seq: request.seq - 1,
                    ..request
                },
                LeaseError::UnknownRequest {
                    seq: request.seq - 1,
                },
            ),
            (
                Packet {
                    config: CONFIG - 1,
                    seq: 99,
                    ..request
                },
                LeaseError::StaleConfiguration {
                    packet: CONFIG - 1,
                    ours: CONFIG,
                },
            ),
            (
                reply,
                LeaseError::WrongSide {
                    kind: Kind::GrantAndRequest,
                },
            ),
        ];
        for (packet, error) in cm_cases {
            assert_eq!(cm.receive(clock.now(), &packet), Err(error), "{packet:?}");
            assert_eq!(cm.node_lease_until(NodeId(1)), cm_until, "{packet:?}");
        }
        // The genuine reply still works, counted from when the request was sent.
        let sent_at = clock.now() - 10 * MS;
        node.receive(clock.now(), &reply).unwrap();
        assert_eq!(node.expiry().until(), Some(sent_at + timing().held()));
        // Replaying it grants nothing new.
        manual.advance(10 * MS);
        node.receive(clock.now(), &reply).unwrap();
        assert_eq!(node.expiry().until(), Some(sent_at + timing().held()));
    }

    #[test]
    fn a_late_grant_is_counted_from_its_request_and_never_shortens_the_lease() {
        let (mut cm, mut node, clock, manual) = pair();
        let first = node.poll(clock.now()).unwrap();
        let first_sent = clock.now();
        let first_reply = cm.receive(clock.now(), &first).unwrap().unwrap();
        manual.advance(timing().renewal_period());
        let second_sent = clock.now();
        handshake(&mut cm, &mut node, second_sent);
        assert_eq!(node.expiry().until(), Some(second_sent + timing().held()));
        // The first reply arrives late: the lease stays at the later expiry.
        node.receive(clock.now(), &first_reply).unwrap();
        assert_eq!(node.expiry().until(), Some(second_sent + timing().held()));
        assert!(first_sent < second_sent);
    }

    /// Two clocks: the CM's (a manual clock standing for real time) and the node's, which runs
    /// at `node_ppm` parts per million of it.
    struct TwoClocks {
        cm: Clock,
        cm_manual: ManualClock,
        node_nanos: u128,
        node_ppm: u64,
    }

    impl TwoClocks {
        fn node_now(&self) -> Time {
            Time::from_nanos(u64::try_from(self.node_nanos).unwrap())
        }

        fn advance(&mut self, by: Duration) {
            self.cm_manual.advance(by);
            self.node_nanos += by.as_nanos() * u128::from(self.node_ppm) / 1_000_000;
        }
    }

    /// Each packet takes `delay`; the node renews every period for 20 periods, then stops.
    /// Returns whether the node ever believed in its lease while the CM held it expired, checked
    /// every 100 µs until two leases after the last renewal.
    fn node_outlives_cm(node_ppm: u64, delay: Duration) -> bool {
        let (cm_clock, cm_manual) = Clock::manual(Time::from_nanos(1_000_000_000));
        let mut clocks = TwoClocks {
            cm: cm_clock,
            cm_manual,
            node_nanos: 5_000_000_000,
            node_ppm,
        };
        let mut cm = CmLeases::new(CM, CONFIG, timing(), &[NodeId(1)], clocks.cm.now());
        let mut node = NodeLease::new(NodeId(1), CM, CONFIG, timing(), 1, clocks.node_now());
        let step = Duration::from_micros(100);
        let mut outlived = false;
        let watch = |clocks: &mut TwoClocks, cm: &CmLeases, node: &NodeLease, span: Duration| {
            let mut outlived = false;
            for _ in 0..span.as_micros() / step.as_micros() {
                clocks.advance(step);
                let cm_valid = clocks.cm.now() < cm.node_lease_until(NodeId(1)).unwrap();
                outlived |= node.is_valid(clocks.node_now()) && !cm_valid;
            }
            outlived
        };
        for _ in 0..20 {
            let request = node
                .poll(clocks.node_now())
                .expect("one request per period");
            clocks.advance(delay);
            let reply = cm.receive(clocks.cm.now(), &request).unwrap().unwrap();
            clocks.advance(delay);
            let grant = node.receive(clocks.node_now(), &reply).unwrap();
            clocks.advance(delay);
            cm.receive(clocks.cm.now(), &grant).unwrap();
            // Until the next request is due on the node's clock.
            let due = node.next_request_at - clocks.node_now();
            let span = Duration::from_nanos(
                u64::try_from(due.as_nanos() * 1_000_000 / u128::from(node_ppm)).unwrap(),
            ) + step;
            outlived |= watch(&mut clocks, &cm, &node, span);
        }
        outlived |= watch(&mut clocks, &cm, &node, 2 * timing().lease());
        assert_eq!(
            cm.next_suspect(clocks.cm.now()),
            Some(NodeId(1)),
            "the lease did expire"
        );
        outlived
    }

    #[test]
    fn drift_within_the_bound_never_lets_a_node_outlive_the_cms_view() {
        for delay in [Duration::ZERO, 3 * MS] {
            // A node clock running fast gives up early.
            assert!(
                !node_outlives_cm(1_500_000, delay),
                "rate 1.5, delay {delay:?}"
            );
            assert!(
                !node_outlives_cm(1_000_000, delay),
                "rate 1, delay {delay:?}"
            );
            // Slow by the whole bound (1%): still safe.
            assert!(
                !node_outlives_cm(990_100, delay),
                "rate 1/1.01, delay {delay:?}"
            );
        }
        // Slower than the bound with no delay to absorb it: the rule cannot hold, which is why
        // the bound must cover the worst drift.
        assert!(
            node_outlives_cm(900_000, Duration::ZERO),
            "rate 0.9 breaks the bound"
        );
    }

    #[test]
    fn the_node_suspects_a_cm_that_stops_asking() {
        let (mut cm, mut node, clock, manual) = pair();
        handshake(&mut cm, &mut node, clock.now());
        manual.advance(Duration::from_micros(99_600));
        assert!(!node.cm_expired(clock.now()));
        assert!(
            !cm.holds_lease_from(NodeId(1), clock.now()),
            "the holder gives up first"
        );
        manual.advance(Duration::from_micros(400));
        assert!(node.cm_expired(clock.now()));
        assert_eq!(
            node.next_deadline(clock.now()),
            node.next_request_at,
            "an expiry seen is no deadline"
        );
    }

    #[test]
    fn a_cms_new_configuration_keeps_members_leases_and_waits_out_removed_ones() {
        let (mut cm, mut node, clock, manual) = pair();
        handshake(&mut cm, &mut node, clock.now());
        let removed_until = cm.node_lease_until(NodeId(1)).unwrap();
        manual.advance(100 * MS);
        assert_eq!(cm.next_suspect(clock.now()), Some(NodeId(1)));
        assert_eq!(cm.next_suspect(clock.now()), Some(NodeId(2)));
        // Node 1 is removed, node 2 (suspected) stays, node 3 joins.
        let capacity = cm.nodes.capacity();
        cm.set_configuration(CONFIG + 1, &[NodeId(2), NodeId(3)], clock.now());
        assert_eq!(cm.nodes.capacity(), capacity, "no allocation");
        assert_eq!(cm.config(), CONFIG + 1);
        assert!(
            !cm.is_suspected(NodeId(2)),
            "kept: the suspicion is settled"
        );
        assert_eq!(cm.node_lease_until(NodeId(3)), Some(clock.now() + 100 * MS));
        assert_eq!(cm.node_lease_until(NodeId(1)), None);
        assert!(cm.all_granted_until() >= Some(removed_until));
        // The removed node's requests are refused, old configuration or new.
        let request = node.poll(clock.now()).unwrap();
        assert!(matches!(
            cm.receive(clock.now(), &request),
            Err(LeaseError::StaleConfiguration { .. })
        ));
        node.set_configuration(CONFIG + 1, CM, clock.now());
        let request = node.poll(clock.now()).unwrap();
        assert_eq!(
            cm.receive(clock.now(), &request),
            Err(LeaseError::NotAMember { node: NodeId(1) })
        );
        // A member renews under the new id.
        let mut other = NodeLease::new(NodeId(3), CM, CONFIG + 1, timing(), 1, clock.now());
        handshake(&mut cm, &mut other, clock.now());
        assert!(other.is_valid(clock.now()));
    }

    #[test]
    #[should_panic(expected = "config=7 current=7")]
    fn a_configuration_id_never_goes_back() {
        let (mut cm, ..) = pair();
        cm.set_configuration(CONFIG, &[NodeId(1)], Time::ZERO);
    }

    #[test]
    fn a_new_configuration_keeps_the_lease_and_asks_at_once() {
        let (mut cm, mut node, clock, manual) = pair();
        handshake(&mut cm, &mut node, clock.now());
        let until = node.expiry().until();
        manual.advance(5 * MS);
        node.set_configuration(CONFIG + 1, NodeId(2), clock.now());
        assert_eq!(node.expiry().until(), until);
        let request = node.poll(clock.now()).expect("asks at once");
        assert_eq!((request.config, request.cm), (CONFIG + 1, NodeId(2)));
        // The old CM refuses it until it learns the configuration too.
        assert!(matches!(
            cm.receive(clock.now(), &request),
            Err(LeaseError::NewerConfiguration { .. })
        ));
    }
}
