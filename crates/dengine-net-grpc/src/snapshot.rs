//! Snapshot streaming: checksummed chunks, resumable from the receiver's offset, with a
//! timeout per chunk rather than per snapshot.
//!
//! The sender splits the snapshot into chunks of `snapshot_chunk_bytes`, each with its CRC-32,
//! and sends them on one `InstallSnapshot` call; the first chunk of a call also carries the
//! message header, the metadata, the total size and the CRC-32 of the whole snapshot. The
//! receiver keeps what it verified, per sender. When a chunk fails its checksum, or a call
//! starts at an offset the receiver does not have, it answers `RESUME` with the offset it
//! needs and the sender opens a new call from there. When the whole-snapshot checksum fails,
//! the receiver discards everything and asks for offset 0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use dengine_core::{Message, MessageBody, NodeId, SnapshotMeta, Term, TransportError};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::convert;
use crate::pb;
use crate::pb::snapshot_reply::Outcome;
use crate::stats::Counters;
use crate::transport::Common;

/// Streams `data` to the peer at `address`; see the module docs.
pub(crate) async fn send(
    common: &Arc<Common>,
    address: &str,
    message: Message,
    data: Bytes,
) -> Result<(), TransportError> {
    let peer = message.to;
    let MessageBody::InstallSnapshot(meta) = &message.body else {
        return Err(TransportError::Rejected {
            peer,
            detail: format!(
                "send_snapshot needs an InstallSnapshot message, got {}",
                message.body.kind()
            ),
        });
    };
    let cfg = &common.config;
    let total_crc32 = crc32fast::hash(&data);
    let mut offset: u64 = 0;
    let mut last_error = String::from("no attempt made");
    for attempt in 1..=cfg.snapshot_attempts.max(1) {
        if attempt > 1 {
            Counters::add(&common.stats.snapshot_resumes);
            tracing::debug!(
                node = cfg.id,
                peer,
                attempt,
                offset,
                "resuming snapshot: {last_error}"
            );
        }
        let mut client = match common.connect(address).await {
            Ok(c) => c,
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(cfg.reconnect_initial).await;
                continue;
            }
        };
        let (tx, rx) = mpsc::channel::<pb::SnapshotChunk>(2);
        let call =
            tokio::spawn(async move { client.install_snapshot(ReceiverStream::new(rx)).await });
        let chunk_bytes = cfg.snapshot_chunk_bytes as u64;
        let mut pos = offset.min(data.len() as u64);
        let mut first = true;
        let mut timed_out = false;
        loop {
            let end = (pos + chunk_bytes).min(data.len() as u64);
            let piece = data.slice(pos as usize..end as usize);
            let last = end == data.len() as u64;
            let mut chunk = pb::SnapshotChunk {
                offset: pos,
                crc32: crc32fast::hash(&piece),
                data: piece,
                last,
                ..Default::default()
            };
            if first {
                chunk.header = Some(pb::Header {
                    cluster_id: cfg.cluster_id,
                    from: cfg.id,
                    to: peer,
                });
                chunk.term = message.term;
                chunk.meta = Some(convert::encode_meta(meta));
                chunk.total_size = data.len() as u64;
                chunk.total_crc32 = total_crc32;
                first = false;
            }
            #[cfg(feature = "fault-injection")]
            corrupt_if_asked(cfg, &mut chunk);
            match tokio::time::timeout(cfg.snapshot_chunk_timeout, tx.send(chunk)).await {
                Ok(Ok(())) => {}
                // The receiver answered early (bad chunk) or the call failed: read the answer.
                Ok(Err(_)) => break,
                Err(_) => {
                    timed_out = true;
                    break;
                }
            }
            if last {
                break;
            }
            pos = end;
        }
        drop(tx);
        if timed_out {
            call.abort();
            last_error = format!(
                "a chunk was not taken within {:?}",
                cfg.snapshot_chunk_timeout
            );
            continue;
        }
        let reply = match tokio::time::timeout(cfg.snapshot_chunk_timeout, call).await {
            Ok(Ok(Ok(reply))) => reply.into_inner(),
            Ok(Ok(Err(status))) => {
                if status.code() == tonic::Code::FailedPrecondition {
                    return Err(TransportError::Rejected {
                        peer,
                        detail: status.message().to_string(),
                    });
                }
                last_error = format!("{}: {}", status.code(), status.message());
                continue;
            }
            Ok(Err(join)) => {
                last_error = join.to_string();
                continue;
            }
            Err(_) => {
                last_error = format!(
                    "no answer within {:?} after the last chunk",
                    cfg.snapshot_chunk_timeout
                );
                continue;
            }
        };
        match reply.outcome() {
            Outcome::Done => {
                Counters::add(&common.stats.snapshots_sent);
                return Ok(());
            }
            Outcome::Resume => {
                offset = reply.next_offset;
                last_error = reply.detail;
            }
            Outcome::Refused | Outcome::Unspecified => {
                return Err(TransportError::Rejected {
                    peer,
                    detail: reply.detail,
                });
            }
        }
    }
    Err(TransportError::Unreachable {
        peer,
        detail: format!(
            "snapshot not delivered after {} attempts; last problem: {last_error}",
            cfg.snapshot_attempts
        ),
    })
}

/// What a receiver has verified of one sender's snapshot so far.
struct Partial {
    term: Term,
    meta: SnapshotMeta,
    total_size: u64,
    total_crc32: u32,
    data: BytesMut,
}

/// Partially received snapshots, one per sender.
#[derive(Default)]
pub(crate) struct Receiver {
    partials: Mutex<HashMap<NodeId, Partial>>,
}

fn reply(outcome: Outcome, next_offset: u64, detail: impl Into<String>) -> pb::SnapshotReply {
    pb::SnapshotReply {
        outcome: outcome as i32,
        next_offset,
        detail: detail.into(),
    }
}

impl Receiver {
    fn take(&self, from: NodeId) -> Option<Partial> {
        self.partials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&from)
    }

    fn keep(&self, from: NodeId, partial: Partial) {
        self.partials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from, partial);
    }

    /// Serves one `InstallSnapshot` call.
    pub(crate) async fn receive(
        &self,
        common: &Common,
        mut stream: Streaming<pb::SnapshotChunk>,
    ) -> Result<pb::SnapshotReply, Status> {
        let cfg = &common.config;
        let timeout = cfg.snapshot_chunk_timeout;
        let Some(first) = next_chunk(&mut stream, timeout).await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let from =
            convert::check_header(first.header.as_ref(), cfg.cluster_id, cfg.id).map_err(|e| {
                Counters::add(&common.stats.refused);
                tracing::warn!(node = cfg.id, "refused a snapshot: {e}");
                Status::failed_precondition(e.to_string())
            })?;
        let meta = first
            .meta
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no metadata"))
            .and_then(|m| {
                convert::decode_meta(m, &common.limits)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        if first.total_size > cfg.max_snapshot_bytes {
            return Ok(reply(
                Outcome::Refused,
                0,
                format!(
                    "snapshot of {} bytes exceeds this node's limit of {} bytes",
                    first.total_size, cfg.max_snapshot_bytes
                ),
            ));
        }
        // Continue the sender's partial snapshot if it is the same one, else start afresh.
        let mut partial = match self.take(from) {
            Some(p)
                if p.meta == meta
                    && p.term == first.term
                    && p.total_size == first.total_size
                    && p.total_crc32 == first.total_crc32 =>
            {
                p
            }
            _ => Partial {
                term: first.term,
                meta,
                total_size: first.total_size,
                total_crc32: first.total_crc32,
                data: BytesMut::new(),
            },
        };
        let mut chunk = first;
        loop {
            let have = partial.data.len() as u64;
            if chunk.offset != have {
                let detail = format!("have {have} bytes, the chunk starts at {}", chunk.offset);
                self.keep(from, partial);
                return Ok(reply(Outcome::Resume, have, detail));
            }
            if crc32fast::hash(&chunk.data) != chunk.crc32 {
                let detail = format!("the chunk at offset {} failed its checksum", chunk.offset);
                tracing::warn!(node = cfg.id, peer = from, "{detail}; asking to resend");
                self.keep(from, partial);
                return Ok(reply(Outcome::Resume, have, detail));
            }
            if have + chunk.data.len() as u64 > partial.total_size {
                return Ok(reply(
                    Outcome::Resume,
                    0,
                    "chunks exceed the announced snapshot size; restarting",
                ));
            }
            partial.data.extend_from_slice(&chunk.data);
            if chunk.last {
                break;
            }
            match next_chunk(&mut stream, timeout).await {
                Ok(Some(c)) => chunk = c,
                Ok(None) => {
                    let have = partial.data.len() as u64;
                    self.keep(from, partial);
                    return Ok(reply(
                        Outcome::Resume,
                        have,
                        "the stream ended before the last chunk",
                    ));
                }
                Err(status) => {
                    self.keep(from, partial);
                    return Err(status);
                }
            }
        }
        let data = partial.data.freeze();
        if data.len() as u64 != partial.total_size || crc32fast::hash(&data) != partial.total_crc32
        {
            tracing::warn!(
                node = cfg.id,
                peer = from,
                "whole-snapshot checksum failed; restarting"
            );
            return Ok(reply(
                Outcome::Resume,
                0,
                "the whole-snapshot checksum failed; restarting from offset 0",
            ));
        }
        let message = Message {
            from,
            to: cfg.id,
            term: partial.term,
            body: MessageBody::InstallSnapshot(partial.meta),
        };
        let Some(inbox) = common.inbox() else {
            return Ok(reply(
                Outcome::Refused,
                0,
                "this node is not accepting messages yet",
            ));
        };
        match inbox.deliver_snapshot(message, data) {
            Ok(()) => {
                Counters::add(&common.stats.snapshots_received);
                Ok(reply(Outcome::Done, 0, ""))
            }
            Err(e) => Ok(reply(Outcome::Refused, 0, e.to_string())),
        }
    }
}

/// Flips a byte of the chunk if the configuration asks for corrupted chunks (testing only).
#[cfg(feature = "fault-injection")]
fn corrupt_if_asked(cfg: &crate::GrpcConfig, chunk: &mut pb::SnapshotChunk) {
    use std::sync::atomic::Ordering;
    let take = cfg
        .corrupt_snapshot_chunks
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    if take.is_ok() && !chunk.data.is_empty() {
        let mut bytes = chunk.data.to_vec();
        bytes[0] ^= 0xFF;
        chunk.data = Bytes::from(bytes);
    }
}

/// The next chunk of a call, waiting at most `timeout` for it.
async fn next_chunk(
    stream: &mut Streaming<pb::SnapshotChunk>,
    timeout: std::time::Duration,
) -> Result<Option<pb::SnapshotChunk>, Status> {
    match tokio::time::timeout(timeout, stream.message()).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no snapshot chunk within {timeout:?}"
        ))),
    }
}
