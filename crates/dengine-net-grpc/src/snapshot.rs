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
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_core::store::SnapshotData;
use dengine_core::{Message, MessageBody, NodeId, SnapshotMeta, Term, TransportError};
use dengine_storage_common::{FileRegion, crc32_of};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::common::Common;
use crate::convert;
use crate::proto::pb;
use crate::proto::pb::snapshot_reply::Outcome;
use crate::stats::Counters;

/// Streams `data` to the peer at `address`, read a chunk at a time (a snapshot in a file is
/// never held whole in memory); see the module docs.
pub(crate) async fn send(
    common: &Arc<Common>,
    address: &str,
    message: Message,
    data: SnapshotData,
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
    let unreadable = |e: std::io::Error| TransportError::Rejected {
        peer,
        detail: format!("the snapshot to send cannot be read: {e}"),
    };
    let chunk_bytes = cfg.snapshot_chunk_bytes;
    let total_crc32 = crc_of(&data, chunk_bytes).await.map_err(unreadable)?;
    let total = data.len();
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
        let request = common.request(ReceiverStream::new(rx));
        let call = tokio::spawn(async move { client.install_snapshot(request).await });
        let mut pos = offset.min(total);
        let mut first = true;
        let mut timed_out = false;
        loop {
            let piece = match read_chunk(&data, pos, chunk_bytes).await {
                Ok(piece) => piece,
                Err(e) => {
                    call.abort();
                    return Err(unreadable(e));
                }
            };
            let end = pos + piece.len() as u64;
            let last = end == total;
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
                    incarnation: cfg.incarnation,
                });
                chunk.term = message.term;
                chunk.meta = Some(convert::encode_meta(meta));
                chunk.total_size = total;
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
                common.check_removed(peer, &status);
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

/// Up to `max` bytes of `data` from `offset` on, read off the async threads.
async fn read_chunk(data: &SnapshotData, offset: u64, max: usize) -> std::io::Result<Bytes> {
    if let SnapshotData::Bytes(bytes) = data {
        let start = (offset as usize).min(bytes.len());
        return Ok(bytes.slice(start..(start.saturating_add(max)).min(bytes.len())));
    }
    let data = data.clone();
    tokio::task::spawn_blocking(move || data.read_chunk(offset, max))
        .await
        .map_err(std::io::Error::other)?
}

/// The CRC-32 of all of `data`, read `piece` bytes at a time off the async threads.
async fn crc_of(data: &SnapshotData, piece: usize) -> std::io::Result<u32> {
    if let SnapshotData::Bytes(bytes) = data {
        return Ok(crc32fast::hash(bytes));
    }
    let data = data.clone();
    tokio::task::spawn_blocking(move || crc32_of(&data, piece))
        .await
        .map_err(std::io::Error::other)?
}

/// What a receiver has verified of one sender's snapshot so far. The bytes are in a spool
/// file, not in memory; `crc` is the running checksum of what was written.
struct Partial {
    term: Term,
    meta: SnapshotMeta,
    total_size: u64,
    total_crc32: u32,
    path: PathBuf,
    file: tokio::fs::File,
    received: u64,
    crc: crc32fast::Hasher,
    last_activity: Instant,
}

/// The one upload slot of a sender: at most one upload per sending member at a time. A newer
/// call from the same sender takes the slot over; the older call notices and ends.
#[derive(Default)]
struct Slot {
    /// The newest call's number; a call whose number is older has been superseded.
    newest: AtomicU64,
    superseded: Notify,
    partial: tokio::sync::Mutex<Option<Partial>>,
}

/// Snapshots being received, one slot per sender, spooled to files in one directory, with a
/// bound on their total size. Dropping it removes its spool files.
pub(crate) struct Receiver {
    dir: PathBuf,
    slots: Mutex<HashMap<NodeId, Arc<Slot>>>,
    /// Announced sizes of the partial snapshots in the spool, together.
    spooled: AtomicU64,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.remove_leftovers();
    }
}

fn reply(outcome: Outcome, next_offset: u64, detail: impl Into<String>) -> pb::SnapshotReply {
    pb::SnapshotReply {
        outcome: outcome as i32,
        next_offset,
        detail: detail.into(),
    }
}

fn io_status(what: &str, path: &std::path::Path, e: std::io::Error) -> Status {
    tracing::error!("snapshot spool: {what} {}: {e}", path.display());
    Status::internal(format!(
        "the receiver cannot {what} its snapshot spool file: {e}"
    ))
}

impl Receiver {
    /// A receiver spooling into `dir` (created if missing). Spool files left by an earlier
    /// process are removed: a new process never resumes them.
    pub(crate) fn new(dir: PathBuf) -> Self {
        let receiver = Receiver {
            dir,
            slots: Mutex::new(HashMap::new()),
            spooled: AtomicU64::new(0),
        };
        receiver.remove_leftovers();
        receiver
    }

    /// Removes what is left in the spool when the service goes away (uploads in progress
    /// cannot be resumed by another process).
    fn remove_leftovers(&self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "part") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        // Only succeeds when empty: a directory of the operator's own is never removed.
        let _ = std::fs::remove_dir(&self.dir);
    }

    fn slot(&self, from: NodeId) -> Arc<Slot> {
        self.slots.lock().entry(from).or_default().clone()
    }

    /// Drops a partial snapshot and its file.
    async fn discard(&self, partial: Partial) {
        self.spooled
            .fetch_sub(partial.total_size, std::sync::atomic::Ordering::Relaxed);
        drop(partial.file);
        let _ = tokio::fs::remove_file(&partial.path).await;
    }

    /// Deletes partial snapshots nobody continued for `after` (their slots are idle).
    async fn discard_abandoned(&self, after: Duration) {
        let slots: Vec<Arc<Slot>> = self.slots.lock().values().cloned().collect();
        for slot in slots {
            let Ok(mut guard) = slot.partial.try_lock() else {
                continue; // an upload is running
            };
            if guard
                .as_ref()
                .is_some_and(|p| p.last_activity.elapsed() >= after)
                && let Some(p) = guard.take()
            {
                tracing::info!(
                    path = %p.path.display(),
                    "discarding a snapshot upload abandoned by its sender"
                );
                self.discard(p).await;
            }
        }
    }

    /// Serves one `InstallSnapshot` call.
    pub(crate) async fn receive(
        &self,
        common: &Common,
        request: tonic::Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<pb::SnapshotReply, Status> {
        let cfg = &common.config;
        let credentials = common.auth.credentials(&request).inspect_err(|e| {
            common.refused("snapshot", 0, e.message());
        })?;
        let mut stream = request.into_inner();
        let timeout = cfg.snapshot_chunk_timeout;
        let Some(first) = next_chunk(&mut stream, timeout).await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let from =
            convert::check_header(first.header.as_ref(), cfg.cluster_id, cfg.id).map_err(|e| {
                common.refused("snapshot", 0, &e.to_string());
                Status::failed_precondition(e.to_string())
            })?;
        common.auth.allows(&credentials, from).inspect_err(|e| {
            common.refused("snapshot", from, e.message());
        })?;
        if common.inbox().is_some_and(|inbox| inbox.is_retired(from)) {
            common.refused("snapshot", from, "the sender was removed from the cluster");
            return Err(crate::common::retired_status(cfg.id, from));
        }
        let meta = first
            .meta
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no metadata"))
            .and_then(|m| {
                convert::decode_meta(m, &common.limits)
                    .map_err(|e| Status::invalid_argument(e.to_string()))
            })?;
        // The message the node will get, checked before any of its data is spooled (the
        // fuzzer found a snapshot ending at a term above its sender's spooled in full, then
        // refused by the core).
        let message = Message {
            from,
            to: cfg.id,
            term: first.term,
            body: MessageBody::InstallSnapshot(meta.clone()),
        };
        if let Err(e) = convert::check_bounds(&message) {
            common.refused("snapshot", from, &e.to_string());
            return Err(Status::invalid_argument(e.to_string()));
        }
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
        self.discard_abandoned(cfg.snapshot_abandon_after).await;
        // One upload per sender: take the slot over; an older call of the same sender ends.
        let slot = self.slot(from);
        let me = slot
            .newest
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        slot.superseded.notify_waiters();
        let mut guard = slot.partial.lock().await;
        let superseded = || slot.newest.load(std::sync::atomic::Ordering::SeqCst) != me;
        if superseded() {
            return Err(Status::aborted(
                "superseded by a newer upload from the same member",
            ));
        }
        // Continue the sender's partial snapshot if it is the same one, else start afresh.
        let same = guard.as_ref().is_some_and(|p| {
            p.meta == meta
                && p.term == first.term
                && p.total_size == first.total_size
                && p.total_crc32 == first.total_crc32
        });
        if !same {
            if let Some(old) = guard.take() {
                self.discard(old).await;
            }
            *guard = Some(self.start(cfg, from, &first, meta).await?);
        }
        let Some(partial) = guard.as_mut() else {
            return Err(Status::internal("snapshot slot lost its upload"));
        };
        let mut chunk = first;
        loop {
            partial.last_activity = Instant::now();
            let have = partial.received;
            if chunk.offset != have {
                let detail = format!("have {have} bytes, the chunk starts at {}", chunk.offset);
                return Ok(reply(Outcome::Resume, have, detail));
            }
            if crc32fast::hash(&chunk.data) != chunk.crc32 {
                let detail = format!("the chunk at offset {} failed its checksum", chunk.offset);
                tracing::warn!(node = cfg.id, peer = from, "{detail}; asking to resend");
                return Ok(reply(Outcome::Resume, have, detail));
            }
            if have + chunk.data.len() as u64 > partial.total_size {
                if let Some(p) = guard.take() {
                    self.discard(p).await;
                }
                return Ok(reply(
                    Outcome::Resume,
                    0,
                    "chunks exceed the announced snapshot size; restarting",
                ));
            }
            partial
                .file
                .write_all(&chunk.data)
                .await
                .map_err(|e| io_status("write", &partial.path, e))?;
            partial.crc.update(&chunk.data);
            partial.received += chunk.data.len() as u64;
            if chunk.last {
                break;
            }
            // Only a newer call of the same sender notifies: it supersedes this one.
            let next = tokio::select! {
                next = next_chunk(&mut stream, timeout) => next,
                () = slot.superseded.notified() => {
                    return Err(Status::aborted("superseded by a newer upload from the same member"));
                }
            };
            if superseded() {
                return Err(Status::aborted(
                    "superseded by a newer upload from the same member",
                ));
            }
            match next {
                Ok(Some(c)) => chunk = c,
                Ok(None) => {
                    return Ok(reply(
                        Outcome::Resume,
                        partial.received,
                        "the stream ended before the last chunk",
                    ));
                }
                Err(status) => return Err(status),
            }
        }
        let Some(partial) = guard.take() else {
            return Err(Status::internal("snapshot slot lost its upload"));
        };
        drop(guard);
        self.finish(common, from, partial).await
    }

    /// Opens the spool file of a new upload, if the spool has room for it.
    async fn start(
        &self,
        cfg: &crate::config::GrpcConfig,
        from: NodeId,
        first: &pb::SnapshotChunk,
        meta: SnapshotMeta,
    ) -> Result<Partial, Status> {
        use std::sync::atomic::Ordering;
        let reserved = self.spooled.fetch_add(first.total_size, Ordering::Relaxed);
        if reserved.saturating_add(first.total_size) > cfg.max_snapshot_spool_bytes {
            self.spooled.fetch_sub(first.total_size, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "snapshot uploads in progress already take {reserved} bytes of this node's \
                 spool (max_snapshot_spool_bytes = {}); retry later",
                cfg.max_snapshot_spool_bytes
            )));
        }
        let path = self.dir.join(format!(
            "from-{from}-{}-{}.part",
            meta.last_included.index, meta.last_included.term
        ));
        let opened = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::File::create(&path).await
        };
        match opened.await {
            Ok(file) => Ok(Partial {
                term: first.term,
                meta,
                total_size: first.total_size,
                total_crc32: first.total_crc32,
                path,
                file,
                received: 0,
                crc: crc32fast::Hasher::new(),
                last_activity: Instant::now(),
            }),
            Err(e) => {
                self.spooled.fetch_sub(first.total_size, Ordering::Relaxed);
                Err(io_status("create", &path, e))
            }
        }
    }

    /// Checks a complete upload and hands it to the node.
    async fn finish(
        &self,
        common: &Common,
        from: NodeId,
        mut partial: Partial,
    ) -> Result<pb::SnapshotReply, Status> {
        let cfg = &common.config;
        let crc = std::mem::take(&mut partial.crc).finalize();
        if partial.received != partial.total_size || crc != partial.total_crc32 {
            tracing::warn!(
                node = cfg.id,
                peer = from,
                "whole-snapshot checksum failed; restarting"
            );
            self.discard(partial).await;
            return Ok(reply(
                Outcome::Resume,
                0,
                "the whole-snapshot checksum failed; restarting from offset 0",
            ));
        }
        // A tokio file hands writes to a background thread: `write_all` may return before the
        // last chunk is in the file. Without this flush the read below could miss the tail
        // (seen in CI: a 4 MiB snapshot delivered short).
        if let Err(e) = partial.file.flush().await {
            let status = io_status("write", &partial.path, e);
            self.discard(partial).await;
            return Err(status);
        }
        // Handed over as the spool file itself, opened before its name is removed: the node
        // reads it from disk (it is never held whole in memory), and its space is freed when
        // the node drops the last handle.
        let path = partial.path.clone();
        let total_size = partial.total_size;
        let reread = tokio::task::spawn_blocking(move || {
            let data = FileRegion::open(&path, 0, total_size)?.into_data();
            let crc = crc32_of(&data, 1 << 20)?;
            Ok::<_, std::io::Error>((data, crc))
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        let data = match reread {
            Ok((data, crc)) if crc == partial.total_crc32 => data,
            Ok(_) => {
                // What is handed to the node is checked again as read back from the spool, so
                // a damaged spool file is never delivered.
                tracing::warn!(
                    node = cfg.id,
                    peer = from,
                    path = %partial.path.display(),
                    "the spooled snapshot read back differs from what was received; restarting"
                );
                self.discard(partial).await;
                return Ok(reply(
                    Outcome::Resume,
                    0,
                    "the spooled snapshot read back differs from what was received; restarting \
                     from offset 0",
                ));
            }
            Err(e) => {
                let status = io_status("read back", &partial.path, e);
                self.discard(partial).await;
                return Err(status);
            }
        };
        let message = Message {
            from,
            to: cfg.id,
            term: partial.term,
            body: MessageBody::InstallSnapshot(partial.meta.clone()),
        };
        self.discard(partial).await;
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
fn corrupt_if_asked(cfg: &crate::config::GrpcConfig, chunk: &mut pb::SnapshotChunk) {
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
