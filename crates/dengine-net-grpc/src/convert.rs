//! Conversion between the wire types (`pb`) and the core's types, in one place.
//!
//! Encoding cannot fail. Decoding checks everything a peer (or a corrupted packet) could get
//! wrong and returns a [`DecodeError`] naming the field, never panics: missing fields, node id
//! 0, entries that are not consecutive from `prev`, terms that go backwards or exceed the
//! message's term, empty voter sets, oversized payloads.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use dengine_core::{
    AppendRequest, AppendResponse, ConflictHint, Entry, EntryId, EntryPayload, Heartbeat,
    HeartbeatResponse, Membership, Message, MessageBody, NodeId, ReadIndexRequest,
    ReadIndexResponse, SnapshotMeta, VoteRequest, VoteResponse,
};

use crate::proto::pb;
use crate::proto::pb::raft_message::Body;

/// Why a wire message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct DecodeError {
    /// Which message or field.
    pub what: &'static str,
    /// What is wrong with it.
    pub detail: String,
}

fn bad(what: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        detail: detail.into(),
    }
}

fn missing(what: &'static str) -> DecodeError {
    bad(what, "required field is missing")
}

/// Limits applied while decoding, on top of the gRPC message size limit.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest total payload of the entries of one append message.
    pub max_entry_bytes: u64,
    /// Largest number of entries in one append message.
    pub max_entries: usize,
    /// Largest number of members in a configuration.
    pub max_members: usize,
    /// Longest member address.
    pub max_address_len: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_entry_bytes: 64 << 20,
            max_entries: 1 << 20,
            max_members: 1024,
            max_address_len: 512,
        }
    }
}

/// Encodes a core message with the given cluster id.
pub fn encode_message(cluster_id: u64, m: &Message) -> pb::RaftMessage {
    let body = match &m.body {
        MessageBody::VoteRequest(r) => Body::VoteRequest(pb::VoteRequest {
            pre_vote: r.pre_vote,
            last_log: Some(encode_id(r.last_log)),
            leader_transfer: r.leader_transfer,
        }),
        MessageBody::VoteResponse(r) => Body::VoteResponse(pb::VoteResponse {
            pre_vote: r.pre_vote,
            granted: r.granted,
        }),
        MessageBody::Append(a) => Body::Append(pb::AppendRequest {
            prev: Some(encode_id(a.prev)),
            entries: a.entries.iter().map(encode_entry).collect(),
            commit: a.commit,
        }),
        MessageBody::AppendResponse(r) => Body::AppendResponse(encode_append_response(r)),
        MessageBody::Heartbeat(h) => Body::Heartbeat(pb::Heartbeat {
            commit: h.commit,
            round: h.round,
        }),
        MessageBody::HeartbeatResponse(h) => Body::HeartbeatResponse(pb::HeartbeatResponse {
            round: h.round,
            log_end: h.log_end,
        }),
        MessageBody::ReadIndexRequest(r) => Body::ReadIndexRequest(pb::ReadIndexRequest {
            ctx: r.ctx,
            lease: r.lease,
        }),
        MessageBody::ReadIndexResponse(r) => Body::ReadIndexResponse(pb::ReadIndexResponse {
            ctx: r.ctx,
            index: r.index,
        }),
        MessageBody::TimeoutNow => Body::TimeoutNow(pb::TimeoutNow {}),
        MessageBody::InstallSnapshot(meta) => Body::InstallSnapshot(encode_meta(meta)),
    };
    pb::RaftMessage {
        header: Some(pb::Header {
            cluster_id,
            from: m.from,
            to: m.to,
            incarnation: 0,
        }),
        term: m.term,
        body: Some(body),
    }
}

fn encode_append_response(r: &AppendResponse) -> pb::AppendResponse {
    use pb::append_rejected::Hint;
    use pb::append_response::Result as R;
    let result = match *r {
        AppendResponse::Accepted { last } => R::Accepted(pb::AppendAccepted {
            last: Some(encode_id(last)),
        }),
        AppendResponse::Rejected {
            rejected_index,
            hint,
        } => R::Rejected(pb::AppendRejected {
            rejected_index,
            hint: Some(match hint {
                ConflictHint::LogTooShort { last_index } => {
                    Hint::LogTooShort(pb::LogTooShort { last_index })
                }
                ConflictHint::TermConflict { term, first_index } => {
                    Hint::TermConflict(pb::TermConflict { term, first_index })
                }
            }),
        }),
    };
    pb::AppendResponse {
        result: Some(result),
    }
}

fn encode_id(id: EntryId) -> pb::EntryId {
    pb::EntryId {
        term: id.term,
        index: id.index,
    }
}

fn encode_entry(e: &Entry) -> pb::Entry {
    use pb::entry::Payload;
    pb::Entry {
        term: e.term,
        index: e.index,
        payload: Some(match &e.payload {
            EntryPayload::Blank => Payload::Blank(pb::Blank {}),
            EntryPayload::Normal(data) => Payload::Normal(data.clone()),
            EntryPayload::Membership(m) => Payload::Membership(encode_membership(m)),
        }),
    }
}

/// Encodes a membership.
pub fn encode_membership(m: &Membership) -> pb::Membership {
    pb::Membership {
        voters: m.voters.iter().copied().collect(),
        voters_outgoing: m.voters_outgoing.iter().copied().collect(),
        learners: m.learners.iter().copied().collect(),
        addresses: m.addresses.iter().map(|(k, v)| (*k, v.clone())).collect(),
        highest_id: m.highest_id,
    }
}

/// Encodes snapshot metadata.
pub fn encode_meta(meta: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_included: Some(encode_id(meta.last_included)),
        membership: Some(encode_membership(&meta.membership)),
    }
}

/// Checks a header: right cluster, addressed to `me`, from a real node. Returns the sender.
pub fn check_header(
    header: Option<&pb::Header>,
    cluster_id: u64,
    me: NodeId,
) -> Result<NodeId, HeaderError> {
    let h = header.ok_or(HeaderError::Missing)?;
    if h.cluster_id != cluster_id {
        return Err(HeaderError::WrongCluster {
            theirs: h.cluster_id,
            ours: cluster_id,
            from: h.from,
        });
    }
    if h.to != me {
        return Err(HeaderError::WrongNode {
            to: h.to,
            me,
            from: h.from,
        });
    }
    if h.from == 0 || h.from == me {
        return Err(HeaderError::BadSender { from: h.from });
    }
    Ok(h.from)
}

/// Why a request's header was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No header.
    #[error("the request has no header (cluster id, sender, recipient)")]
    Missing,
    /// Another cluster's request.
    #[error(
        "cluster id mismatch: node {from} belongs to cluster {theirs}, this node to cluster \
         {ours}; check the peer addresses and cluster_id settings"
    )]
    WrongCluster {
        /// The sender's cluster.
        theirs: u64,
        /// Ours.
        ours: u64,
        /// The sender.
        from: NodeId,
    },
    /// Addressed to another node (the address points at the wrong node).
    #[error(
        "node {from} sent a request for node {to} to node {me}; its address book points at the \
         wrong node"
    )]
    WrongNode {
        /// The intended recipient.
        to: NodeId,
        /// This node.
        me: NodeId,
        /// The sender.
        from: NodeId,
    },
    /// Sender id 0 or our own id.
    #[error("invalid sender id {from}")]
    BadSender {
        /// The claimed sender.
        from: NodeId,
    },
}

/// Decodes a wire message into a core message. The header is decoded as given; check it
/// against this node with [`check_header`] first.
pub fn decode_message(m: &pb::RaftMessage, limits: &DecodeLimits) -> Result<Message, DecodeError> {
    let h = m.header.as_ref().ok_or_else(|| missing("message header"))?;
    if h.from == 0 || h.to == 0 {
        return Err(bad("message header", "node id 0 is reserved"));
    }
    let body = m.body.as_ref().ok_or_else(|| missing("message body"))?;
    let body = match body {
        Body::VoteRequest(r) => MessageBody::VoteRequest(VoteRequest {
            pre_vote: r.pre_vote,
            last_log: decode_id(r.last_log.as_ref(), "VoteRequest.last_log")?,
            leader_transfer: r.leader_transfer,
        }),
        Body::VoteResponse(r) => MessageBody::VoteResponse(VoteResponse {
            pre_vote: r.pre_vote,
            granted: r.granted,
        }),
        Body::Append(a) => MessageBody::Append(decode_append(a, m.term, limits)?),
        Body::AppendResponse(r) => MessageBody::AppendResponse(decode_append_response(r)?),
        Body::Heartbeat(hb) => MessageBody::Heartbeat(Heartbeat {
            commit: hb.commit,
            round: hb.round,
        }),
        Body::HeartbeatResponse(r) => MessageBody::HeartbeatResponse(HeartbeatResponse {
            round: r.round,
            log_end: r.log_end,
        }),
        Body::ReadIndexRequest(r) => MessageBody::ReadIndexRequest(ReadIndexRequest {
            ctx: r.ctx,
            lease: r.lease,
        }),
        Body::ReadIndexResponse(r) => MessageBody::ReadIndexResponse(ReadIndexResponse {
            ctx: r.ctx,
            index: r.index,
        }),
        Body::TimeoutNow(_) => MessageBody::TimeoutNow,
        Body::InstallSnapshot(meta) => MessageBody::InstallSnapshot(decode_meta(meta, limits)?),
    };
    let message = Message {
        from: h.from,
        to: h.to,
        term: m.term,
        body,
    };
    check_bounds(&message)?;
    Ok(message)
}

/// The core's structural bounds (indexes up to 2^62, no inner term above the message's),
/// checked on a decoded message — by [`decode_message`], and by the snapshot receiver before it
/// spools a snapshot's data — so nothing malformed reaches the node's queue. Whether the term
/// itself is acceptable depends on the receiver's term; the core decides that.
pub fn check_bounds(message: &Message) -> Result<(), DecodeError> {
    match message.out_of_range(u64::MAX - 1) {
        Some((field, value)) => Err(bad("message", format!("{field} = {value} is out of range"))),
        None => Ok(()),
    }
}

fn decode_id(id: Option<&pb::EntryId>, what: &'static str) -> Result<EntryId, DecodeError> {
    let id = id.ok_or_else(|| missing(what))?;
    if (id.index == 0) != (id.term == 0) {
        return Err(bad(
            what,
            format!(
                "entry id (term {}, index {}) is impossible: only index 0 has term 0",
                id.term, id.index
            ),
        ));
    }
    Ok(EntryId::new(id.term, id.index))
}

fn decode_append(
    a: &pb::AppendRequest,
    term: u64,
    limits: &DecodeLimits,
) -> Result<AppendRequest, DecodeError> {
    let prev = decode_id(a.prev.as_ref(), "AppendRequest.prev")?;
    if a.entries.len() > limits.max_entries {
        return Err(bad(
            "AppendRequest.entries",
            format!(
                "{} entries exceed the limit of {}",
                a.entries.len(),
                limits.max_entries
            ),
        ));
    }
    let mut entries = Vec::with_capacity(a.entries.len());
    let mut bytes = 0u64;
    let mut last = prev;
    for e in &a.entries {
        let expected = last
            .index
            .checked_add(1)
            .ok_or_else(|| bad("AppendRequest.entries", "entry index overflows u64"))?;
        if e.index != expected {
            return Err(bad(
                "AppendRequest.entries",
                format!(
                    "entry index {} where {expected} was expected (entries must be consecutive \
                     from prev.index + 1)",
                    e.index
                ),
            ));
        }
        if e.term < last.term || e.term > term || e.term == 0 {
            return Err(bad(
                "AppendRequest.entries",
                format!(
                    "entry {} has term {}, outside {}..={term} (terms never decrease and never \
                     exceed the leader's term)",
                    e.index,
                    e.term,
                    last.term.max(1)
                ),
            ));
        }
        let entry = decode_entry(e, limits)?;
        bytes += entry.payload_bytes();
        if bytes > limits.max_entry_bytes {
            return Err(bad(
                "AppendRequest.entries",
                format!(
                    "entry payloads exceed the limit of {} bytes",
                    limits.max_entry_bytes
                ),
            ));
        }
        last = entry.id();
        entries.push(entry);
    }
    if prev.term > term {
        return Err(bad(
            "AppendRequest.prev",
            format!("prev term {} exceeds the leader's term {term}", prev.term),
        ));
    }
    Ok(AppendRequest {
        prev,
        entries,
        commit: a.commit,
    })
}

fn decode_entry(e: &pb::Entry, limits: &DecodeLimits) -> Result<Entry, DecodeError> {
    use pb::entry::Payload;
    let payload = match e.payload.as_ref().ok_or_else(|| missing("Entry.payload"))? {
        Payload::Blank(_) => EntryPayload::Blank,
        Payload::Normal(data) => EntryPayload::Normal(Bytes::clone(data)),
        Payload::Membership(m) => EntryPayload::Membership(decode_membership(m, limits)?),
    };
    Ok(Entry::new(e.term, e.index, payload))
}

fn decode_ids(ids: &[u64], what: &'static str) -> Result<BTreeSet<NodeId>, DecodeError> {
    let set: BTreeSet<NodeId> = ids.iter().copied().collect();
    if set.contains(&0) {
        return Err(bad(what, "node id 0 is reserved"));
    }
    if set.len() != ids.len() {
        return Err(bad(what, "a node id appears twice"));
    }
    Ok(set)
}

/// Decodes a membership, checking its limits and consistency.
pub fn decode_membership(
    m: &pb::Membership,
    limits: &DecodeLimits,
) -> Result<Membership, DecodeError> {
    let count = m.voters.len() + m.voters_outgoing.len() + m.learners.len();
    if count > limits.max_members {
        return Err(bad(
            "Membership",
            format!("{count} members exceed the limit of {}", limits.max_members),
        ));
    }
    let voters = decode_ids(&m.voters, "Membership.voters")?;
    let voters_outgoing = decode_ids(&m.voters_outgoing, "Membership.voters_outgoing")?;
    let learners = decode_ids(&m.learners, "Membership.learners")?;
    if voters.is_empty() {
        return Err(bad("Membership.voters", "a configuration needs a voter"));
    }
    if let Some(id) = learners.iter().find(|l| voters.contains(l)) {
        return Err(bad(
            "Membership.learners",
            format!("node {id} is both a voter and a learner"),
        ));
    }
    let mut addresses = BTreeMap::new();
    for (id, address) in &m.addresses {
        if address.len() > limits.max_address_len {
            return Err(bad(
                "Membership.addresses",
                format!(
                    "the address of node {id} is longer than {} bytes",
                    limits.max_address_len
                ),
            ));
        }
        addresses.insert(*id, address.clone());
    }
    let mut membership = Membership {
        voters,
        voters_outgoing,
        learners,
        addresses,
        highest_id: m.highest_id,
    };
    membership.highest_id = membership.highest_id.max(membership.largest_member_id());
    if let Some(id) = membership
        .addresses
        .keys()
        .find(|id| !membership.contains(**id))
    {
        return Err(bad(
            "Membership.addresses",
            format!("an address is given for node {id}, which is not a member"),
        ));
    }
    Ok(membership)
}

fn decode_append_response(r: &pb::AppendResponse) -> Result<AppendResponse, DecodeError> {
    use pb::append_rejected::Hint;
    use pb::append_response::Result as R;
    match r
        .result
        .as_ref()
        .ok_or_else(|| missing("AppendResponse.result"))?
    {
        R::Accepted(a) => Ok(AppendResponse::Accepted {
            last: decode_id(a.last.as_ref(), "AppendAccepted.last")?,
        }),
        R::Rejected(rj) => {
            let hint = match rj
                .hint
                .as_ref()
                .ok_or_else(|| missing("AppendRejected.hint"))?
            {
                Hint::LogTooShort(h) => ConflictHint::LogTooShort {
                    last_index: h.last_index,
                },
                Hint::TermConflict(h) => {
                    if h.first_index == 0 || h.first_index > rj.rejected_index {
                        return Err(bad(
                            "AppendRejected.term_conflict",
                            format!(
                                "first index {} of the conflicting term is not in 1..={}",
                                h.first_index, rj.rejected_index
                            ),
                        ));
                    }
                    ConflictHint::TermConflict {
                        term: h.term,
                        first_index: h.first_index,
                    }
                }
            };
            Ok(AppendResponse::Rejected {
                rejected_index: rj.rejected_index,
                hint,
            })
        }
    }
}

/// Decodes snapshot metadata.
pub fn decode_meta(
    m: &pb::SnapshotMeta,
    limits: &DecodeLimits,
) -> Result<SnapshotMeta, DecodeError> {
    let last_included = decode_id(m.last_included.as_ref(), "SnapshotMeta.last_included")?;
    if last_included.index == 0 {
        return Err(bad(
            "SnapshotMeta.last_included",
            "a snapshot covers at least entry 1",
        ));
    }
    let membership = decode_membership(
        m.membership
            .as_ref()
            .ok_or_else(|| missing("SnapshotMeta.membership"))?,
        limits,
    )?;
    Ok(SnapshotMeta {
        last_included,
        membership,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn samples() -> Vec<Message> {
        let m = Membership::new([1, 2, 3])
            .with_learners([4])
            .with_address(4, "10.0.0.4:7000");
        let bodies = vec![
            MessageBody::VoteRequest(VoteRequest {
                pre_vote: true,
                last_log: EntryId::new(3, 7),
                leader_transfer: false,
            }),
            MessageBody::VoteResponse(VoteResponse {
                pre_vote: false,
                granted: true,
            }),
            MessageBody::Append(AppendRequest {
                prev: EntryId::new(2, 5),
                entries: vec![
                    Entry::new(2, 6, EntryPayload::Blank),
                    Entry::new(4, 7, EntryPayload::Normal(Bytes::from_static(b"x"))),
                    Entry::new(4, 8, EntryPayload::Membership(m.clone())),
                ],
                commit: 5,
            }),
            MessageBody::Append(AppendRequest {
                prev: EntryId::default(),
                entries: vec![],
                commit: 0,
            }),
            MessageBody::AppendResponse(AppendResponse::Accepted {
                last: EntryId::new(4, 8),
            }),
            MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected_index: 9,
                hint: ConflictHint::TermConflict {
                    term: 2,
                    first_index: 4,
                },
            }),
            MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected_index: 9,
                hint: ConflictHint::LogTooShort { last_index: 3 },
            }),
            MessageBody::Heartbeat(Heartbeat {
                commit: 4,
                round: 11,
            }),
            MessageBody::HeartbeatResponse(HeartbeatResponse {
                round: 11,
                log_end: Some(3),
            }),
            MessageBody::ReadIndexRequest(ReadIndexRequest {
                ctx: 5,
                lease: true,
            }),
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                ctx: 5,
                index: Some(9),
            }),
            MessageBody::ReadIndexResponse(ReadIndexResponse {
                ctx: 6,
                index: None,
            }),
            MessageBody::TimeoutNow,
            MessageBody::InstallSnapshot(SnapshotMeta {
                last_included: EntryId::new(3, 100),
                membership: m,
            }),
        ];
        bodies
            .into_iter()
            .map(|body| Message {
                from: 1,
                to: 2,
                term: 4,
                body,
            })
            .collect()
    }

    #[test]
    fn every_message_kind_round_trips_through_bytes() {
        for m in samples() {
            let wire = encode_message(7, &m).encode_to_vec();
            let pb = pb::RaftMessage::decode(wire.as_slice()).unwrap();
            assert_eq!(check_header(pb.header.as_ref(), 7, 2), Ok(1));
            assert_eq!(decode_message(&pb, &DecodeLimits::default()), Ok(m));
        }
    }

    #[test]
    fn headers_for_another_cluster_or_node_are_refused() {
        let pb = encode_message(7, &samples()[0]);
        assert!(matches!(
            check_header(pb.header.as_ref(), 8, 2),
            Err(HeaderError::WrongCluster {
                theirs: 7,
                ours: 8,
                from: 1
            })
        ));
        assert!(matches!(
            check_header(pb.header.as_ref(), 7, 3),
            Err(HeaderError::WrongNode { .. })
        ));
        assert_eq!(check_header(None, 7, 2), Err(HeaderError::Missing));
    }

    #[test]
    fn malformed_appends_are_refused_with_the_field_named() {
        let base = encode_message(7, &samples()[2]);
        let limits = DecodeLimits::default();
        let mut cases: Vec<(&str, pb::RaftMessage)> = Vec::new();
        let mut gap = base.clone();
        if let Some(Body::Append(a)) = &mut gap.body {
            a.entries[1].index = 9;
        }
        cases.push(("consecutive", gap));
        let mut term_back = base.clone();
        if let Some(Body::Append(a)) = &mut term_back.body {
            a.entries[2].term = 1;
        }
        cases.push(("terms never decrease", term_back));
        let mut future_term = base.clone();
        if let Some(Body::Append(a)) = &mut future_term.body {
            a.entries[2].term = 5;
        }
        cases.push(("exceed the leader", future_term));
        let mut no_prev = base.clone();
        if let Some(Body::Append(a)) = &mut no_prev.body {
            a.prev = None;
        }
        cases.push(("missing", no_prev));
        let mut no_payload = base.clone();
        if let Some(Body::Append(a)) = &mut no_payload.body {
            a.entries[0].payload = None;
        }
        cases.push(("Entry.payload", no_payload));
        let mut zero_voter = base.clone();
        if let Some(Body::Append(a)) = &mut zero_voter.body
            && let Some(pb::entry::Payload::Membership(m)) = &mut a.entries[2].payload
        {
            m.voters.push(0);
        }
        cases.push(("reserved", zero_voter));
        let mut impossible = base.clone();
        if let Some(Body::Append(a)) = &mut impossible.body {
            a.prev = Some(pb::EntryId { term: 0, index: 5 });
        }
        cases.push(("impossible", impossible));
        let mut no_body = base.clone();
        no_body.body = None;
        cases.push(("body", no_body));
        for (needle, msg) in cases {
            let err = decode_message(&msg, &limits).unwrap_err();
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let tight = DecodeLimits {
            max_entry_bytes: 0,
            ..limits
        };
        let err = decode_message(&base, &tight).unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Arbitrary bytes never make the decoders panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(m) = pb::RaftMessage::decode(data.as_slice()) {
                let _ = check_header(m.header.as_ref(), 1, 2);
                let _ = decode_message(&m, &DecodeLimits::default());
            }
            if let Ok(c) = pb::SnapshotChunk::decode(data.as_slice())
                && let Some(meta) = &c.meta
            {
                let _ = decode_meta(meta, &DecodeLimits::default());
            }
        }

        /// Valid messages with a few bytes flipped either decode to something or are refused;
        /// never a panic.
        #[test]
        fn mutated_messages_never_panic(which in 0usize..14, flips in proptest::collection::vec((0usize..4096, 0u8..8), 1..8)) {
            let m = &samples()[which];
            let mut wire = encode_message(7, m).encode_to_vec();
            for (pos, bit) in flips {
                let len = wire.len();
                wire[pos % len] ^= 1 << bit;
            }
            if let Ok(pb) = pb::RaftMessage::decode(wire.as_slice()) {
                let _ = decode_message(&pb, &DecodeLimits::default());
            }
        }
    }
}
