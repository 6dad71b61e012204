//! Target `peer`: the peer service as a member's peer port sees it — `Deliver`,
//! `InstallSnapshot` (snapshot chunks spooled to disk) and `Probe` requests with arbitrary
//! bodies, through the same tower service `dengine::start` serves.
//!
//! Oracle: every call ends with a gRPC status (never a panic, a hang or a dropped
//! connection); whatever reaches the node's inbox is addressed to this node by another real
//! node, and survives the trip core → wire → core unchanged (the decoder accepts only what the
//! encoder can say).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::{
    AppendRequest, Entry, EntryId, EntryPayload, Heartbeat, Inbox, InboxError, Membership, Message,
    MessageBody, SnapshotMeta, VoteRequest,
};
use dengine_net_grpc::convert::{self, DecodeLimits};
use dengine_net_grpc::{GrpcConfig, GrpcTransport, pb};
use dengine_sim::fuzz::Input;
use prost::Message as _;

use crate::grpc::{body_from, call};
use crate::support::runtime;

/// This node and its cluster.
const ME: u64 = 1;
const CLUSTER: u64 = 7;
const PATHS: [&str; 3] = [
    "/dengine.raft.v1.Peer/Deliver",
    "/dengine.raft.v1.Peer/InstallSnapshot",
    "/dengine.raft.v1.Peer/Probe",
];
/// Longer than any honest answer takes: a call still open after this is a hang.
const HANG: Duration = Duration::from_secs(10);

/// Checks what the service hands the node, and counts it.
#[derive(Debug, Default)]
struct CheckingInbox {
    delivered: AtomicUsize,
}

impl CheckingInbox {
    fn check(&self, m: &Message) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        assert_eq!(m.to, ME, "a message for node {} reached node {ME}", m.to);
        assert!(
            m.from != 0 && m.from != ME,
            "a message from node {} reached node {ME}",
            m.from
        );
        let wire = convert::encode_message(CLUSTER, m);
        match convert::decode_message(&wire, &DecodeLimits::default()) {
            Ok(back) => assert_eq!(&back, m, "a decoded message does not survive re-encoding"),
            Err(e) => panic!("a decoded message does not decode again: {e}: {m:?}"),
        }
    }
}

impl Inbox for CheckingInbox {
    fn deliver(&self, message: Message) -> Result<(), InboxError> {
        self.check(&message);
        Ok(())
    }

    fn deliver_snapshot(
        &self,
        message: Message,
        _data: dengine_core::SnapshotData,
    ) -> Result<(), InboxError> {
        assert!(
            matches!(message.body, MessageBody::InstallSnapshot(_)),
            "snapshot data came with a {} message",
            message.body.kind()
        );
        self.check(&message);
        Ok(())
    }
}

/// Runs one input.
pub fn peer(data: &[u8]) {
    run(data);
}

/// Runs one input; returns how many messages reached the node.
fn run(data: &[u8]) -> usize {
    let inbox = Arc::new(CheckingInbox::default());
    let mut input = Input::new(data);
    let spool = crate::support::scratch_dir();
    runtime().block_on(async {
        let mut config = GrpcConfig::new(ME, CLUSTER);
        config.snapshot_spool_dir = Some(spool.path().to_path_buf());
        config.snapshot_chunk_timeout = Duration::from_secs(1);
        let transport = match GrpcTransport::new(config) {
            Ok(t) => t,
            Err(e) => panic!("cannot make a transport: {e}"),
        };
        let mut service = transport.peer_service(inbox.clone());
        for _ in 0..4 {
            if input.is_empty() {
                break;
            }
            let path = PATHS[input.below(PATHS.len() as u64) as usize];
            let body = body_from(&mut input);
            let reply = call(&mut service, path, body, HANG).await;
            assert_eq!(reply.http_status, 200, "{path}: {reply:?}");
            assert!(
                reply.grpc_status.is_some(),
                "{path} gave no gRPC status within {HANG:?} (hang or dropped call): {reply:?}"
            );
        }
    });
    inbox.delivered.load(Ordering::Relaxed)
}

/// Inputs that reach every message kind, a whole snapshot and a probe.
pub fn seeds() -> Vec<Vec<u8>> {
    let id = EntryId::new;
    let entries = vec![
        Entry::new(2, 5, EntryPayload::Normal(Bytes::from_static(b"put x=1"))),
        Entry::new(2, 6, EntryPayload::Blank),
        Entry::new(2, 7, EntryPayload::Membership(Membership::new([1, 2, 3]))),
    ];
    let bodies = [
        MessageBody::VoteRequest(VoteRequest {
            pre_vote: true,
            last_log: id(2, 7),
            leader_transfer: false,
        }),
        MessageBody::Append(AppendRequest {
            prev: id(1, 4),
            entries,
            commit: 4,
        }),
        MessageBody::Heartbeat(Heartbeat {
            commit: 4,
            round: 9,
        }),
        MessageBody::TimeoutNow,
    ];
    let mut seeds = Vec::new();
    for body in bodies {
        let m = Message {
            from: 2,
            to: ME,
            term: 2,
            body,
        };
        let wire = convert::encode_message(CLUSTER, &m).encode_to_vec();
        seeds.push(request(0, &[wire]));
    }
    // A snapshot in two chunks.
    let meta = SnapshotMeta {
        last_included: id(2, 7),
        membership: Membership::new([1, 2, 3]),
    };
    let data = b"snapshot bytes, two chunks";
    let (a, b) = data.split_at(10);
    let first = pb::SnapshotChunk {
        header: Some(header()),
        term: 2,
        meta: Some(convert::encode_meta(&meta)),
        total_size: data.len() as u64,
        total_crc32: crc32(data),
        offset: 0,
        data: Bytes::copy_from_slice(a),
        crc32: crc32(a),
        last: false,
    };
    let second = pb::SnapshotChunk {
        header: None,
        term: 0,
        meta: None,
        total_size: 0,
        total_crc32: 0,
        offset: a.len() as u64,
        data: Bytes::copy_from_slice(b),
        crc32: crc32(b),
        last: true,
    };
    seeds.push(request(1, &[first.encode_to_vec(), second.encode_to_vec()]));
    let probe = pb::ProbeRequest {
        header: Some(header()),
    };
    seeds.push(request(2, &[probe.encode_to_vec()]));
    seeds
}

fn header() -> pb::Header {
    pb::Header {
        cluster_id: CLUSTER,
        from: 2,
        to: ME,
        ..Default::default()
    }
}

/// The input bytes for one call of `PATHS[path]` with `messages` as frames (see `body_from`).
fn request(path: u8, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![path, (messages.len() - 1) as u8];
    for m in messages {
        out.extend_from_slice(&(m.len() as u16).to_le_bytes());
        out.extend_from_slice(m);
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_seed_reaches_the_node_and_a_forged_header_does_not() {
        let seeds = seeds();
        // Four messages, one snapshot, one probe (which delivers nothing).
        let delivered: Vec<usize> = seeds.iter().map(|s| run(s)).collect();
        assert_eq!(delivered, [1, 1, 1, 1, 1, 0]);
        // The same append addressed from this node to itself is refused at the header.
        let m = Message {
            from: ME,
            to: ME,
            term: 2,
            body: MessageBody::TimeoutNow,
        };
        let wire = convert::encode_message(CLUSTER, &m).encode_to_vec();
        assert_eq!(run(&request(0, &[wire])), 0);
    }
}
