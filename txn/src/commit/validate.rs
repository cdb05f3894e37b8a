//! Step 2 (docs/protocol.md#validate): the objects a transaction read but did not write are
//! still at the versions it read, and unlocked. Per primary, by one-sided re-reads of their
//! header words, or, in message mode when that primary holds more than [`T_R`] of them, by one
//! VALIDATE message its worker answers. This node's own primary validates in place. Every
//! primary's re-reads and messages are in flight together, so a validation takes one round
//! trip however many primaries it spans. A read-only transaction commits by this step alone.

use crate::config::CommitMode;
use crate::error::TxnError;
use crate::record::Body;
use crate::reply::{Code, Reply};
use crate::txn::Txn;
use crate::txn_node::REPLY_TIMEOUT;
use acre_engine::addr::{Addr, NodeId};
use acre_engine::fabric::Pending;
use acre_engine::object::Header;
use std::collections::BTreeMap;

/// In message mode, a primary holding more than this many of the objects to validate is sent
/// one VALIDATE message instead of that many one-sided reads (FaRM's `t_r`). One-sided mode
/// never sends one: the re-reads to a node go in one batch, which costs a round trip as the
/// message does but wakes no thread of the primary, and a validation that waits for a worker
/// to wake leaves a long window for writers to invalidate it (audits of many objects then
/// rarely commit under load).
pub const T_R: usize = 4;

/// A VALIDATE message sent: to whom, where its reply arrives, and the first object it covers.
struct ValidateSent {
    primary: NodeId,
    reply_index: usize,
    first: Addr,
}

/// One-sided header re-reads posted to one primary.
struct HeadersPosted {
    primary: NodeId,
    reads: Vec<(Addr, u64)>,
    pending: Pending,
}

/// Validates `(addr, version)` pairs, and the blocks the transaction found unclaimed. Every
/// VALIDATE message sent and every batch of re-reads posted is waited for even after a
/// conflict is found, so no reply arrives after the transaction gave its slot back.
pub(crate) fn validate(txn: &mut Txn, reads: &[(Addr, u64)]) -> Result<(), TxnError> {
    // The fault-injection harness's test of itself (feature `break-skip-validate`, never for
    // use): nothing is validated, so a transaction commits on whatever it read, however stale,
    // and `acre jepsen` must find the anomalies that follows.
    if cfg!(feature = "break-skip-validate") {
        return Ok(());
    }
    let mut by_primary: BTreeMap<NodeId, Vec<(Addr, u64)>> = BTreeMap::new();
    for &(addr, version) in reads {
        let (primary, _) = txn.node.reader().primary_of(&txn.config, addr)?;
        by_primary.entry(primary).or_default().push((addr, version));
    }
    let by_message = txn.config.commit == CommitMode::Messages;
    let mut sent = Vec::new();
    let mut posted = Vec::new();
    let mut local = None;
    let mut failure = None;
    for (primary, reads) in by_primary {
        let outcome = if primary == txn.node.node_id() {
            local = Some(reads);
            Ok(())
        } else if by_message && reads.len() > T_R {
            send_validate(txn, primary, reads).map(|message| sent.push(message))
        } else {
            let addrs: Vec<Addr> = reads.iter().map(|(addr, _)| *addr).collect();
            txn.node
                .reader()
                .post_header_reads(primary, &addrs)
                .map(|pending| {
                    posted.push(HeadersPosted {
                        primary,
                        reads,
                        pending,
                    })
                })
        };
        if let Err(e) = outcome {
            failure = Some(e);
            break;
        }
    }
    // While the re-reads and messages travel, the local primary's objects.
    if failure.is_none()
        && let Some(reads) = local
    {
        failure = validate_here(txn, &reads).err();
    }
    for HeadersPosted {
        primary,
        reads,
        pending,
    } in posted
    {
        let checked = txn
            .node
            .reader()
            .headers_read(primary, pending, reads.len())
            .and_then(|headers| check_headers(&reads, &headers));
        if failure.is_none() {
            failure = checked.err();
        }
    }
    let replies = wait_for_replies(txn, &sent)?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    check_replies(&sent, &replies, txn.id.config)?;
    validate_unclaimed_blocks(txn)
}

/// The blocks the transaction found unclaimed (reading addresses that held no slot yet) still
/// are: no object was created where it saw none.
fn validate_unclaimed_blocks(txn: &Txn) -> Result<(), TxnError> {
    for &block in &txn.unclaimed_blocks {
        if !txn.node.reader().block_unclaimed(&txn.config, block)? {
            return Err(TxnError::Conflict {
                addr: block,
                why: "a block read as empty was claimed",
            });
        }
    }
    Ok(())
}

/// This node's own primary: no message needed.
fn validate_here(txn: &Txn, reads: &[(Addr, u64)]) -> Result<(), TxnError> {
    if txn.node.primary().validate(reads) {
        return Ok(());
    }
    Err(TxnError::Conflict {
        addr: reads[0].0,
        why: "an object read was changed or is locked",
    })
}

/// Whether the headers re-read for `reads` show each object unlocked at the version read.
fn check_headers(reads: &[(Addr, u64)], headers: &[Header]) -> Result<(), TxnError> {
    assert_eq!(headers.len(), reads.len(), "a header per object");
    for ((addr, version), header) in reads.iter().zip(headers) {
        if header.is_locked() {
            return Err(TxnError::Conflict {
                addr: *addr,
                why: "an object read is locked by a committing transaction",
            });
        }
        if header.version() != *version {
            return Err(TxnError::Conflict {
                addr: *addr,
                why: "an object read was changed",
            });
        }
    }
    Ok(())
}

/// Sends one VALIDATE message to `primary` for all of `reads`.
fn send_validate(
    txn: &mut Txn,
    primary: NodeId,
    reads: Vec<(Addr, u64)>,
) -> Result<ValidateSent, TxnError> {
    assert!(reads.len() > T_R, "{} reads go one-sided", reads.len());
    let first = reads[0].0;
    let reply_index = txn.send_request(primary, Body::Validate { reads })?;
    Ok(ValidateSent {
        primary,
        reply_index,
        first,
    })
}

/// Waits for the answers to every VALIDATE message sent, in the order sent.
fn wait_for_replies(txn: &mut Txn, sent: &[ValidateSent]) -> Result<Vec<Reply>, TxnError> {
    if sent.is_empty() {
        return Ok(Vec::new());
    }
    let indexes: Vec<usize> = sent.iter().map(|message| message.reply_index).collect();
    let replies = txn
        .node
        .replies()
        .wait(txn.slot(), txn.id.seq, &indexes, REPLY_TIMEOUT)
        .map_err(|missing| TxnError::Unavailable {
            node: sent[missing].primary,
            reason: format!("no VALIDATE reply within {REPLY_TIMEOUT:?}"),
        })?;
    txn.replies_consumed(replies.len());
    Ok(replies)
}

/// What the primaries answered: all valid, or the first conflict.
fn check_replies(sent: &[ValidateSent], replies: &[Reply], began_in: u64) -> Result<(), TxnError> {
    assert_eq!(sent.len(), replies.len(), "a reply per VALIDATE sent");
    for (message, reply) in sent.iter().zip(replies) {
        match reply.code {
            Code::Valid => {}
            Code::Stale => {
                return Err(TxnError::ConfigurationChanged {
                    began: began_in,
                    current: reply.values[0],
                });
            }
            Code::LeaseExpired => {
                return Err(TxnError::LeaseExpired {
                    node: message.primary,
                });
            }
            Code::Invalid => {
                return Err(TxnError::Conflict {
                    addr: message.first,
                    why: "an object read was changed or is locked",
                });
            }
            other => {
                return Err(TxnError::Protocol {
                    node: message.primary,
                    reason: format!("VALIDATE answered with {other:?}"),
                });
            }
        }
    }
    Ok(())
}
