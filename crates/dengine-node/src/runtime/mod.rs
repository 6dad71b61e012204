//! The event loop: one tokio task per node that owns the Raft core, feeds it time, peer
//! messages and client requests, and carries out each `Ready` in the order
//! `docs/protocol.md` prescribes.
//!
//! One turn: wake on one input, drain every other queued input (so that all proposals of the
//! turn go into one `LogStore::persist` call: group commit), then loop over `Ready`:
//! send the messages (the core holds back every response that depends on a write until that
//! write is reported durable, so sending in parallel with the leader's own write is safe,
//! thesis §10.2.1), start the write, hand the committed entries to the apply task, serve the
//! reads that became safe, compact, install snapshots.
//!
//! Writes are pipelined: a synced write runs in its own task while the loop goes on taking
//! messages and proposals; the writes the core hands out meanwhile are merged
//! (`PersistRequest::merge`) into one that starts when the running one is done, so one sync
//! covers every proposal that arrived during the previous sync (group commit across turns).
//! At most one write is on the disk at a time, so writes are durable in the order the core
//! handed them out, as the `Ready` contract requires. Store operations other than appends
//! (compaction, snapshot metadata, snapshot installation, the final sync) first wait for the
//! writes in flight (`flush_writes`).
//!
//! Reading order: this file (state, inputs, `Ready`); `apply.rs` (the apply task);
//! `snapshots.rs` (building, sending and installing snapshots); `admin.rs` (membership
//! changes, leader transfer, status); `stop.rs` (graceful shutdown); `request.rs` (what flows
//! in).

mod admin;
pub(crate) mod apply;
pub(crate) mod request;
mod snapshots;
mod stop;
mod waiters;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::{Snapshot, SnapshotData};
use dengine_core::{
    Entry, EntryId, EntryPayload, LogIndex, LogReader, LogStore, Membership, Message, MessageBody,
    NodeId, PersistRequest, Persisted, Raft, ReadCtx, ReadMode, Role, SnapshotMeta, SoftState,
    Transport,
};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use self::apply::{ApplyCmd, Responder};
use self::request::{EVENT_QUEUE_LEN, Event, Request};
use self::waiters::{Waiter, Waiters};
use crate::api::{Consistency, Leadership};
use crate::config::NodeConfig;
use crate::error::{AdminError, ProposeError, ReadError};
use crate::inbox::{InboxView, PeerInput};
use crate::metric_names as m;
use crate::snapshot_dir::SnapshotDir;

/// Most inputs of one kind taken in one turn before the `Ready` is processed, so that a flood
/// of one kind cannot starve the others.
const DRAIN_LIMIT: usize = 4096;

/// Commands queued for the apply task; when full, the loop waits for the state machine
/// instead of queueing committed entries without limit.
const APPLY_QUEUE_LEN: usize = 64;

/// Ticks between sweeps of abandoned requests and updates of the per-peer lag gauges.
const SWEEP_TICKS: u64 = 20;

/// A `persist` call that takes longer than this stops the node. Proposal deadlines are
/// enforced by the event loop (one timer per tick, not one per proposal), so a loop stuck on
/// a hung disk would otherwise leave callers waiting forever; stopping answers every pending
/// request with `Stopped`. Synced writes run in a task of their own, and the loop checks the
/// one in flight on every tick and while flushing: a timeout around the `persist` future
/// would not do, since stores that write in place when called (as `dengine-storage-common`'s
/// do on a multi-thread runtime) are done, or stuck, before there is a future to time.
const PERSIST_STALL_LIMIT: Duration = Duration::from_secs(60);

// The per-proposal histogram through a static key (hashed once; see `node.rs`).
static METRIC_METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
static COMMIT_LATENCY: metrics::Key = metrics::Key::from_static_name(m::COMMIT_LATENCY_SECONDS);

/// A fatal error: the node must stop (never continue after a failed persist).
type Fatal = String;

/// A membership change whose configuration entry was applied; it resolves once the
/// configuration is final (not joint) and applied.
struct ConfigWaiter {
    index: LogIndex,
    deadline: Instant,
    tx: oneshot::Sender<Result<Membership, AdminError>>,
}

/// A membership change refused for a transient reason, retried on every tick.
struct PendingChange {
    changes: Vec<dengine_core::MembershipChange>,
    addresses: BTreeMap<NodeId, String>,
    deadline: Instant,
    tx: oneshot::Sender<Result<Membership, AdminError>>,
}

struct TransferWaiter {
    to: NodeId,
    deadline: Instant,
    tx: oneshot::Sender<Result<(), AdminError>>,
}

struct PendingRead {
    /// `None`: a barrier.
    query: Option<Bytes>,
    mode: ReadMode,
    tx: oneshot::Sender<Result<Bytes, ReadError>>,
}

/// A graceful shutdown in progress.
struct Stopping {
    deadline: Instant,
    done: Vec<oneshot::Sender<()>>,
}

/// Aborts a helper task (the apply task, a write) if the loop is dropped (killed) without
/// finishing.
struct AbortOnDrop<R = ()>(Option<JoinHandle<R>>);

impl<R> Drop for AbortOnDrop<R> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A finished write, reported by its task.
struct WriteDone {
    /// What to report to the core; `None` when the task itself failed.
    done: Option<Persisted>,
    /// Whether the write was synced.
    synced: bool,
    entries: usize,
    elapsed: Duration,
    result: Result<(), Fatal>,
}

/// Waits for the write in flight; never completes when there is none.
async fn write_finished(writing: &mut AbortOnDrop<WriteDone>) -> WriteDone {
    match writing.0.as_mut() {
        Some(task) => match task.await {
            Ok(done) => done,
            Err(e) => WriteDone {
                done: None,
                synced: false,
                entries: 0,
                elapsed: Duration::ZERO,
                result: Err(format!("the log store write task failed: {e}")),
            },
        },
        None => std::future::pending().await,
    }
}

/// Carries out one write in a task of its own (see `Runtime::start_write`): the event loop
/// watches its duration ([`PERSIST_STALL_LIMIT`]).
async fn write<S: LogStore>(store: &S, write: &PersistRequest) -> Result<(), Fatal> {
    store
        .persist(write)
        .await
        .map_err(|e| format!("persisting to the log store failed: {e}"))
}

/// Carries out one write on the event loop itself (unsynced writes), which nothing else
/// watches: bounded by [`PERSIST_STALL_LIMIT`] for stores whose futures do the waiting.
async fn write_inline<S: LogStore>(store: &S, req: &PersistRequest) -> Result<(), Fatal> {
    tokio::time::timeout(PERSIST_STALL_LIMIT, write(store, req))
        .await
        .unwrap_or_else(|_| Err(write_stalled()))
}

/// Why the node stops when a write passes [`PERSIST_STALL_LIMIT`].
fn write_stalled() -> Fatal {
    format!(
        "the log store did not finish a write within {PERSIST_STALL_LIMIT:?} (a stuck disk?); \
         stopping so that callers get an answer"
    )
}

/// Everything the event loop owns.
pub(crate) struct Runtime<S: LogStore, T: Transport> {
    pub(crate) id: NodeId,
    pub(crate) settings: Arc<NodeConfig>,
    pub(crate) raft: Raft<S::Reader>,
    pub(crate) store: Arc<S>,
    pub(crate) transport: Arc<T>,
    pub(crate) req_rx: mpsc::Receiver<Request>,
    pub(crate) peer_rx: mpsc::Receiver<PeerInput>,
    /// Keeps the inbound channel open while the loop runs (transports hold the other ends).
    pub(crate) _peer_tx: mpsc::Sender<PeerInput>,
    /// What the transport reads about the node (committed configuration, term, log end).
    view: Arc<InboxView>,
    /// The index of the committed configuration last published in `view`.
    published_config: Option<LogIndex>,
    /// Rate limit of the warnings about peer messages the core refused.
    refused_log: dengine_core::LogLimiter,
    /// Rate limit of the warnings about transient log reads that failed.
    read_error_log: dengine_core::LogLimiter,
    /// Rate limit of the warnings about snapshot streams that failed (a peer that stays down
    /// fails one every tick).
    snapshot_send_log: dengine_core::LogLimiter,
    /// The apply task's progress: the newest applied index.
    applied_rx: watch::Receiver<LogIndex>,
    /// The apply task's other reports (bounded, see [`Event`]).
    events_rx: mpsc::Receiver<Event>,
    pub(crate) apply_tx: Option<mpsc::Sender<ApplyCmd>>,
    pub(crate) fatal: Arc<Mutex<Option<String>>>,
    snapshot_dir: Option<SnapshotDir>,
    apply_task: AbortOnDrop,
    /// Snapshots being streamed to peers; each task reports the peer and whether the
    /// snapshot was delivered.
    snapshot_senders: JoinSet<(NodeId, Result<(), String>)>,
    /// The peer of each snapshot task, to report a task that panicked.
    snapshot_peers: BTreeMap<tokio::task::Id, NodeId>,
    /// The synced write on the disk, if any (at most one at a time).
    writing: AbortOnDrop<WriteDone>,
    /// When `writing` was started (see [`PERSIST_STALL_LIMIT`]).
    writing_since: Instant,
    /// The writes handed out while `writing` runs, merged into one.
    queued_write: Option<PersistRequest>,

    waiters: Waiters,
    config_waiters: Vec<ConfigWaiter>,
    pending_changes: Vec<PendingChange>,
    transfers: Vec<TransferWaiter>,
    reads: BTreeMap<ReadCtx, PendingRead>,
    retry_reads: Vec<ReadCtx>,
    next_read_ctx: ReadCtx,
    snapshot_waiters: Vec<oneshot::Sender<Result<Snapshot, AdminError>>>,
    building_snapshot: bool,
    /// The applied index at which the next snapshot by count is due
    /// ([`SnapshotSettings::next_point`](crate::config::SnapshotSettings::next_point)): set
    /// from the first batch applied after start and after each snapshot built or installed
    /// (`None` until then, and when snapshots by count are off).
    snapshot_due_at: Option<LogIndex>,
    since_snapshot_bytes: u64,
    /// The newest snapshot's data, streamed to followers that need compacted entries.
    snapshot_cache: Option<Snapshot>,
    /// See [`Parts::durable_state_machine`].
    durable_state_machine: bool,
    /// A follower asked for a snapshot this process did not hold: keep the next one built.
    snapshot_for_peer: bool,
    /// The newest snapshot received from a peer, until the core asks to install it.
    incoming_snapshot: Option<(SnapshotMeta, SnapshotData)>,
    /// Peers whose snapshot could not be sent; reported failed on the next tick (reporting at
    /// once would make the core ask again in the same turn).
    failed_snapshot_sends: Vec<NodeId>,
    known_members: Membership,
    last_leader: Option<NodeId>,
    leadership: watch::Sender<Leadership>,
    /// The `election` span while this node campaigns: from its first (pre-)vote round to
    /// leading or following.
    election: Option<tracing::Span>,
    /// On the leader: the last heartbeat sent to each peer (its round, and when), to measure
    /// the peer's round-trip time when it is answered.
    heartbeats_out: BTreeMap<NodeId, (u64, Instant)>,
    stopping: Option<Stopping>,
    handles_gone: bool,
    /// Ticks of the core so far.
    ticks: u64,
    /// When tick 0 was due: the core has been ticked once per `raft.tick_ms` since
    /// (`catch_up_ticks`).
    tick_origin: Instant,
    /// Most ticks `catch_up_ticks` replays at once: twice the election timeout's, and two
    /// more (by then every timer of the core has run out).
    max_catch_up_ticks: u64,
    /// Deliberate runtime bugs switched on (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    bugs: Vec<crate::bugs::RuntimeBug>,
}

/// How a snapshot stream task ended: the peer and the transport's error, if any.
type SnapshotSent = Result<(tokio::task::Id, (NodeId, Result<(), String>)), tokio::task::JoinError>;

/// What woke the event loop.
enum Wake {
    Tick,
    WriteDone(WriteDone),
    Applied,
    Event(Event),
    SnapshotSent(SnapshotSent),
    Peer(PeerInput),
    Request(Option<Request>),
}

/// Whether a deliberate runtime bug is switched on; always `false` without `fault-injection`.
macro_rules! bug {
    ($runtime:expr, $bug:ident) => {{
        #[cfg(feature = "fault-injection")]
        {
            $runtime.bugs.contains(&crate::bugs::RuntimeBug::$bug)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            false
        }
    }};
}

/// What [`Runtime::new`] needs besides the core.
pub(crate) struct Parts<S, T> {
    pub(crate) id: NodeId,
    pub(crate) settings: Arc<NodeConfig>,
    pub(crate) store: S,
    pub(crate) transport: Arc<T>,
    pub(crate) req_rx: mpsc::Receiver<Request>,
    pub(crate) peer_rx: mpsc::Receiver<PeerInput>,
    pub(crate) peer_tx: mpsc::Sender<PeerInput>,
    pub(crate) view: Arc<InboxView>,
    pub(crate) fatal: Arc<Mutex<Option<String>>>,
    pub(crate) snapshot_dir: Option<SnapshotDir>,
    /// The snapshot file the node started from, if it matches the core's snapshot.
    pub(crate) initial_snapshot: Option<Snapshot>,
    /// The state machine is durable: the newest snapshot is held in memory only while a
    /// follower waits for it ([`StateMachine::durable`](dengine_core::StateMachine::durable)).
    pub(crate) durable_state_machine: bool,
    /// Where the loop publishes role, leader and membership changes.
    pub(crate) leadership: watch::Sender<Leadership>,
    /// Deliberate runtime bugs (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub(crate) bugs: Vec<crate::bugs::RuntimeBug>,
}

impl<S: LogStore, T: Transport> Runtime<S, T> {
    /// Assembles the loop and spawns the apply task that owns `state_machine`, which has
    /// applied everything up to `applied` (an entry of the log or of the snapshot).
    pub(crate) fn new<M: dengine_core::StateMachine>(
        parts: Parts<S, T>,
        raft: Raft<S::Reader>,
        state_machine: M,
        applied: EntryId,
    ) -> Self {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE_LEN);
        let (applied_tx, applied_rx) = watch::channel(raft.applied_index());
        // Bounded: when the state machine falls behind, the loop waits for it instead of
        // queueing committed entries without limit.
        let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_LEN);
        let apply_task = tokio::spawn(apply::run(
            state_machine,
            parts.snapshot_dir.clone(),
            apply_rx,
            applied_tx,
            events_tx,
            raft.applied_membership().clone(),
            applied,
        ));
        let raft_settings = &parts.settings.raft;
        let max_catch_up_ticks = 2 * raft_settings
            .election_timeout_ms
            .div_ceil(raft_settings.tick_ms.max(1))
            + 2;
        Runtime {
            id: parts.id,
            settings: parts.settings,
            raft,
            store: Arc::new(parts.store),
            transport: parts.transport,
            req_rx: parts.req_rx,
            peer_rx: parts.peer_rx,
            _peer_tx: parts.peer_tx,
            view: parts.view,
            published_config: None,
            refused_log: dengine_core::LogLimiter::per_ten_seconds(),
            read_error_log: dengine_core::LogLimiter::per_ten_seconds(),
            snapshot_send_log: dengine_core::LogLimiter::per_ten_seconds(),
            applied_rx,
            events_rx,
            apply_tx: Some(apply_tx),
            fatal: parts.fatal,
            snapshot_dir: parts.snapshot_dir,
            apply_task: AbortOnDrop(Some(apply_task)),
            snapshot_senders: JoinSet::new(),
            snapshot_peers: BTreeMap::new(),
            writing: AbortOnDrop(None),
            writing_since: Instant::now(),
            queued_write: None,
            waiters: Waiters::default(),
            config_waiters: Vec::new(),
            pending_changes: Vec::new(),
            transfers: Vec::new(),
            reads: BTreeMap::new(),
            retry_reads: Vec::new(),
            next_read_ctx: 1,
            snapshot_waiters: Vec::new(),
            building_snapshot: false,
            snapshot_due_at: None,
            since_snapshot_bytes: 0,
            snapshot_cache: parts.initial_snapshot,
            durable_state_machine: parts.durable_state_machine,
            snapshot_for_peer: false,
            incoming_snapshot: None,
            failed_snapshot_sends: Vec::new(),
            known_members: Membership::default(),
            last_leader: None,
            leadership: parts.leadership,
            election: None,
            heartbeats_out: BTreeMap::new(),
            stopping: None,
            handles_gone: false,
            ticks: 0,
            tick_origin: Instant::now(),
            max_catch_up_ticks,
            #[cfg(feature = "fault-injection")]
            bugs: parts.bugs,
        }
    }

    /// A node that is the only voter of its configuration cannot be contested, so it campaigns
    /// as soon as it starts instead of after a randomized election timeout: a single-member
    /// cluster leads within a tick (the Ready is carried out on the first turn). Raft leaves
    /// when a node starts an election to the node; the timeout only keeps candidates from
    /// colliding (§5.2), and a sole voter has no one to collide with.
    fn campaign_if_sole_voter(&mut self) {
        let voters = self.raft.membership().all_voters();
        if voters.len() == 1 && voters.contains(&self.id) {
            self.raft.campaign();
        }
    }

    /// Runs the loop until shutdown, until every handle is dropped, or until a fatal error.
    pub(crate) async fn run(mut self) {
        self.sync_transport_peers();
        self.publish_leadership();
        register_counters();
        self.update_gauges();
        self.campaign_if_sole_voter();
        metrics::gauge!(m::APPLIED_INDEX).set(self.raft.applied_index() as f64);
        let tick = Duration::from_millis(self.settings.raft.tick_ms.max(1));
        self.tick_origin = Instant::now();
        let mut ticker = tokio::time::interval_at(self.tick_origin + tick, tick);
        // Missed timer deliveries are not made up in a burst: `catch_up_ticks` counts the ticks
        // from the clock, whatever woke the loop.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let fatal = loop {
            // Biased: the branches are polled in this order, so the loop behaves the same on
            // every run under a simulated clock (an unbiased select draws from a random
            // source). No input starves: every turn drains all the queues (`turn`).
            let woke = tokio::select! {
                biased;
                _ = ticker.tick() => Wake::Tick,
                done = write_finished(&mut self.writing) => Wake::WriteDone(done),
                Ok(()) = self.applied_rx.changed() => Wake::Applied,
                Some(event) = self.events_rx.recv() => Wake::Event(event),
                Some(sent) = self.snapshot_senders.join_next_with_id(), if !self.snapshot_senders.is_empty() => {
                    Wake::SnapshotSent(sent)
                }
                Some(input) = self.peer_rx.recv() => Wake::Peer(input),
                request = self.req_rx.recv() => Wake::Request(request),
            };
            let turn = match self.on_wake(woke).await {
                Ok(()) => self.turn().await,
                Err(e) => Err(e),
            };
            if let Err(reason) = turn {
                break Some(reason);
            }
            if self.handles_gone || self.stop_due() {
                break None;
            }
        };
        self.finish(fatal).await;
    }

    /// Handles what woke the loop, after the ticks the clock says are due.
    async fn on_wake(&mut self, woke: Wake) -> Result<(), Fatal> {
        let caught_up = match self.catch_up_ticks() {
            Some(ticked) => {
                ticked?;
                true
            }
            None => false,
        };
        match woke {
            // Without catch-up (a deliberate bug), one timer delivery is one tick.
            Wake::Tick if !caught_up => self.on_tick(),
            Wake::Tick => Ok(()),
            Wake::WriteDone(done) => self.on_write_done(done),
            Wake::Applied => self.on_applied(),
            Wake::Event(event) => self.on_event(event).await,
            Wake::SnapshotSent(sent) => {
                self.on_snapshot_sent(sent);
                Ok(())
            }
            Wake::Peer(input) => self.on_peer_input(input),
            Wake::Request(Some(request)) => self.on_request(request).await,
            Wake::Request(None) => {
                self.handles_gone = true;
                Ok(())
            }
        }
    }

    /// Ticks the core once for every `raft.tick_ms` that has passed since the last tick,
    /// before the loop looks at anything else that woke it. Timer deliveries are not a count
    /// of elapsed time: after a pause of the process (SIGSTOP, a stall, a VM migration), the
    /// loop wakes to a queue of requests and messages with one timer due, however long it
    /// was stopped. A leader must see the whole pause before it answers a lease read, or it
    /// serves one after its lease ran out and a new leader took writes (thesis §6.4.1: the
    /// lease is measured on the leader's clock, which kept running). At most twice the
    /// election timeout's ticks (and two more) are replayed: by then every timer of the core
    /// (randomized election timeout below twice the base, lease, heartbeats) has run out, and
    /// the rest would change nothing.
    ///
    /// `None` when catch-up is switched off (the `NoTickCatchUp` deliberate bug); otherwise
    /// the result of the ticks taken.
    fn catch_up_ticks(&mut self) -> Option<Result<(), Fatal>> {
        if bug!(self, NoTickCatchUp) {
            return None;
        }
        let tick = Duration::from_millis(self.settings.raft.tick_ms.max(1));
        let elapsed = Instant::now().saturating_duration_since(self.tick_origin);
        let due = (elapsed.as_nanos() / tick.as_nanos()) as u64;
        let owed = due.saturating_sub(self.ticks);
        let most = self.max_catch_up_ticks;
        if owed > most {
            // The skipped ticks change nothing the replayed ones do not: count them as done.
            self.ticks += owed - most;
        }
        for _ in 0..owed.min(most) {
            if let Err(e) = self.on_tick() {
                return Some(Err(e));
            }
        }
        Some(Ok(()))
    }

    /// The rest of a turn: drain queued inputs, then carry out `Ready` until there is none.
    async fn turn(&mut self) -> Result<(), Fatal> {
        if self.applied_rx.has_changed().unwrap_or(false) {
            self.on_applied()?;
        }
        for _ in 0..DRAIN_LIMIT {
            match self.events_rx.try_recv() {
                Ok(event) => self.on_event(event).await?,
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match self.peer_rx.try_recv() {
                Ok(input) => self.on_peer_input(input)?,
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match self.req_rx.try_recv() {
                Ok(request) => self.on_request(request).await?,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.handles_gone = true;
                    break;
                }
            }
        }
        self.process_ready().await?;
        self.check_waiters();
        Ok(())
    }

    // ----- inputs ------------------------------------------------------------------------------

    fn on_tick(&mut self) -> Result<(), Fatal> {
        self.check_write_stall()?;
        self.ticks += 1;
        self.raft.tick();
        for peer in std::mem::take(&mut self.failed_snapshot_sends) {
            self.raft.report_snapshot(peer, false);
        }
        // Reads refused for a transient reason (no leader yet, a new leader not ready) are
        // asked again while their caller still waits.
        for ctx in std::mem::take(&mut self.retry_reads) {
            self.issue_read(ctx);
        }
        for change in std::mem::take(&mut self.pending_changes) {
            self.try_change_membership(change);
        }
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            self.sweep_abandoned();
        } else {
            self.expire_proposals();
        }
        self.update_gauges();
        Ok(())
    }

    fn on_peer_input(&mut self, input: PeerInput) -> Result<(), Fatal> {
        let msg = match input {
            PeerInput::Removed(detail) => {
                return Err(format!(
                    "this node (member {}) was removed from the cluster and stops: {detail}",
                    self.id
                ));
            }
            PeerInput::Message(msg) => {
                if matches!(msg.body, MessageBody::InstallSnapshot(_)) {
                    // A snapshot needs its data, which only arrives through deliver_snapshot.
                    self.refused_by_core(msg.from, "InstallSnapshot without its data");
                    return Ok(());
                }
                msg
            }
            PeerInput::Snapshot(msg, data) => {
                let MessageBody::InstallSnapshot(meta) = &msg.body else {
                    self.refused_by_core(msg.from, "snapshot data with a non-snapshot message");
                    return Ok(());
                };
                let newer = self
                    .incoming_snapshot
                    .as_ref()
                    .is_none_or(|(have, _)| have.last_included.index <= meta.last_included.index);
                if newer {
                    self.incoming_snapshot = Some((meta.clone(), data));
                }
                msg
            }
        };
        let from = msg.from;
        if let MessageBody::HeartbeatResponse(r) = &msg.body {
            self.on_heartbeat_answered(from, r.round);
        }
        if let Err(e) = self.raft.step(msg) {
            self.refused_by_core(from, &e.to_string());
        }
        Ok(())
    }

    /// Counts and logs (at a bounded rate) a peer message that was refused here.
    fn refused_by_core(&mut self, from: NodeId, detail: &str) {
        metrics::counter!(m::PEER_MESSAGES_REFUSED_TOTAL).increment(1);
        if let Some(suppressed) = self.refused_log.allow(Instant::now().into_std()) {
            tracing::warn!(from, suppressed, "refused a peer message: {detail}");
        }
    }

    async fn on_request(&mut self, request: Request) -> Result<(), Fatal> {
        match request {
            Request::Propose {
                command,
                deadline,
                span,
                tx,
            } => self.propose(command, deadline, span, tx),
            Request::Read {
                query,
                consistency,
                tx,
            } => {
                let mode = match consistency {
                    Consistency::Stale => {
                        return self.send_apply(ApplyCmd::Query { query, tx }).await;
                    }
                    Consistency::Linearizable => ReadMode::ReadIndex,
                    Consistency::Lease => ReadMode::Lease,
                };
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                self.reads.insert(ctx, PendingRead { query, mode, tx });
                self.issue_read(ctx);
            }
            Request::Status { tx } => {
                let _ = tx.send(self.status());
            }
            Request::ChangeMembership {
                changes,
                addresses,
                deadline,
                tx,
            } => self.try_change_membership(PendingChange {
                changes,
                addresses,
                deadline,
                tx,
            }),
            Request::TransferLeader { to, deadline, tx } => self.transfer_leader(to, deadline, tx),
            Request::TriggerSnapshot { tx } => {
                self.snapshot_waiters.push(tx);
                if !self.building_snapshot {
                    self.build_snapshot().await?;
                }
            }
            Request::Campaign => self.raft.campaign(),
            Request::Shutdown { tx } => self.begin_shutdown(tx),
        }
        Ok(())
    }

    fn propose(
        &mut self,
        command: Bytes,
        deadline: Instant,
        span: tracing::Span,
        tx: oneshot::Sender<Result<Bytes, ProposeError>>,
    ) {
        if self.stopping.is_some() {
            let _ = tx.send(Err(ProposeError::ShuttingDown));
            return;
        }
        match self.raft.propose(command) {
            Ok(id) => {
                span.record("index", id.index);
                tracing::debug!(parent: &span, term = id.term, index = id.index, "appended");
                let waiter = Waiter::Proposal {
                    term: id.term,
                    deadline,
                    appended: Instant::now(),
                    tx,
                    span,
                };
                if let Some(old) = self.waiters.insert(id.index, waiter) {
                    // The index was reused by this leader: the old entry was overwritten.
                    self.fail_overwritten(id.index, old);
                }
            }
            Err(e) => {
                let _ = tx.send(Err(ProposeError::Refused(e)));
            }
        }
    }

    fn issue_read(&mut self, ctx: ReadCtx) {
        let Some(read) = self.reads.get(&ctx) else {
            return;
        };
        if read.tx.is_closed() {
            self.reads.remove(&ctx);
            return;
        }
        if self.stopping.is_some() {
            if let Some(read) = self.reads.remove(&ctx) {
                let _ = read.tx.send(Err(ReadError::ShuttingDown));
            }
            return;
        }
        if self.raft.read_index(ctx, read.mode).is_err() {
            self.retry_reads.push(ctx);
        }
    }

    // ----- events from the helper tasks --------------------------------------------------------

    /// The apply task applied more entries.
    fn on_applied(&mut self) -> Result<(), Fatal> {
        let index = *self.applied_rx.borrow_and_update();
        self.raft.on_applied(index);
        Ok(())
    }

    async fn on_event(&mut self, event: Event) -> Result<(), Fatal> {
        match event {
            Event::SnapshotBuilt(result) => self.on_snapshot_built(result).await?,
            Event::Installed { meta, data, result } => {
                self.on_snapshot_loaded(meta, data, result).await?;
            }
            Event::Fatal(reason) => return Err(reason),
        }
        Ok(())
    }

    // ----- Ready -------------------------------------------------------------------------------

    async fn process_ready(&mut self) -> Result<(), Fatal> {
        while self.raft.has_ready() {
            let ready = self.raft.ready();
            if let Some(soft) = ready.soft_state {
                self.on_soft_state(soft);
            }
            for msg in ready.messages {
                self.send(msg);
            }
            if let Some(write) = ready.persist {
                self.submit_write(write).await?;
            }
            if !ready.committed_entries.is_empty() {
                self.hand_to_apply(ready.committed_entries).await?;
            }
            for read in ready.read_states {
                if let Some(pending) = self.reads.remove(&read.ctx) {
                    let query = ApplyCmd::Query {
                        query: pending.query,
                        tx: pending.tx,
                    };
                    self.send_apply(query).await?;
                }
            }
            for failed in ready.failed_reads {
                if self.reads.contains_key(&failed.ctx) {
                    self.retry_reads.push(failed.ctx);
                }
            }
            for e in ready.storage_errors {
                if !e.is_out_of_range() {
                    // A damaged or failing log fails again on every retry: stop once, loudly,
                    // rather than spin on it. (An index outside the log is expected while it
                    // is compacted or truncated: logged below, at a bounded rate.)
                    return Err(format!(
                        "the log store failed: {e}. The member stops: a member must not \
                         serve or vote with a log it cannot read. Restore its data directory \
                         from a backup, or replace the member (remove it from the cluster, \
                         wipe its data directory, add it again under a new id; \
                         docs/operations.md, \"Replacing a member\")"
                    ));
                }
                if let Some(suppressed) = self.read_error_log.allow(Instant::now().into_std()) {
                    tracing::warn!(error = %e, suppressed, "the core could not read the log");
                }
            }
            for r in ready.regressed_peers {
                metrics::counter!(m::PEER_REGRESSIONS_TOTAL).increment(1);
                tracing::warn!(
                    peer = r.peer,
                    acknowledged = r.acknowledged,
                    log_end = r.log_end,
                    "member {} lost log entries it had acknowledged (it had entries up to {}, \
                     now its log ends at {}): its storage was wiped, damaged or rolled back. \
                     It no longer counts for those entries and is being refilled; if this was \
                     not a deliberate restore, check its disk and replace it \
                     (docs/operations.md, \"Replacing a member\")",
                    r.peer,
                    r.acknowledged,
                    r.log_end
                );
            }
            if let Some(to) = ready.compact_log_to {
                // The entries to purge may still be on their way to the disk.
                self.flush_writes().await?;
                if let Err(e) = self.store.purge(to).await {
                    return Err(format!("compacting the log up to {to} failed: {e}"));
                }
            }
            if let Some(meta) = ready.snapshot_to_install {
                self.install(meta).await?;
            }
        }
        self.sync_transport_peers();
        self.publish_view()
    }

    /// Keeps what the transport reads about this node current, and stops the node once a
    /// committed configuration has removed it.
    fn publish_view(&mut self) -> Result<(), Fatal> {
        self.view
            .set_position(self.raft.term(), self.raft.last_log_id().index);
        let index = self.raft.committed_membership_index();
        if self.published_config == Some(index) {
            return Ok(());
        }
        self.published_config = Some(index);
        let committed = self.raft.committed_membership();
        self.view.set_committed(committed);
        if committed.is_retired(self.id) {
            let committed = committed.clone();
            self.answer_changes_that_removed_this_node(index, &committed);
            return Err(format!(
                "this node (member {}) was removed from the cluster by the configuration \
                 committed at index {index}, and stops. Member ids are never reused: to bring \
                 this machine back, wipe its data directory and add it under a new id",
                self.id
            ));
        }
        Ok(())
    }

    /// The configuration committed at `index` removed this node, which stops now: the changes
    /// waiting here that it completes took effect, and their callers are told so (with the
    /// final configuration) instead of an error or a timeout. A change whose entry is at or
    /// before `index` in this leader's term is complete: that entry was committed.
    fn answer_changes_that_removed_this_node(&mut self, index: LogIndex, committed: &Membership) {
        for w in std::mem::take(&mut self.config_waiters) {
            if w.index <= index {
                let _ = w.tx.send(Ok(committed.clone()));
            } else {
                self.config_waiters.push(w);
            }
        }
        let done: Vec<LogIndex> = self
            .waiters
            .iter()
            .filter(|(i, w)| {
                *i <= index
                    && matches!(w, Waiter::Config { term, .. }
                        if self.raft.log_term(*i).is_ok_and(|t| t == *term))
            })
            .map(|(i, _)| i)
            .collect();
        for i in done {
            if let Some(Waiter::Config { tx, .. }) = self.waiters.remove(i) {
                let _ = tx.send(Ok(committed.clone()));
            }
        }
    }

    /// Hands a write to the disk. Writes are durable in the order the core hands them out
    /// (the `Ready` contract): a write arriving while another runs waits, merged with any
    /// other waiting write, and starts when the running one is done. A write that need not be
    /// synced (only the commit index changed, or `storage.fsync = false`) is done at once
    /// when nothing else is in flight: it costs no sync, and a task would cost more.
    async fn submit_write(&mut self, mut write: PersistRequest) -> Result<(), Fatal> {
        if !self.settings.storage.fsync {
            // storage.fsync = false (tests, benchmarks): acknowledged writes may be lost on
            // power loss, as the setting documents.
            write.must_sync = false;
        }
        if self.writing.0.is_some() {
            match &mut self.queued_write {
                Some(queued) => queued.merge(write),
                None => self.queued_write = Some(write),
            }
            return Ok(());
        }
        if write.must_sync && bug!(self, AckBeforeSync) {
            return self.write_then_sync_later(write).await;
        }
        if write.must_sync {
            self.start_write(write);
            return Ok(());
        }
        let started = Instant::now();
        let result = write_inline(&*self.store, &write).await;
        self.on_write_done(WriteDone {
            done: Some(write.done()),
            synced: false,
            entries: write.entries.len(),
            elapsed: started.elapsed(),
            result,
        })
    }

    fn start_write(&mut self, request: PersistRequest) {
        let store = Arc::clone(&self.store);
        self.writing_since = Instant::now();
        self.writing.0 = Some(tokio::spawn(async move {
            let started = Instant::now();
            let result = write(&*store, &request).await;
            WriteDone {
                done: Some(request.done()),
                synced: request.must_sync,
                entries: request.entries.len(),
                elapsed: started.elapsed(),
                result,
            }
        }));
    }

    /// The `AckBeforeSync` deliberate bug: writes without the sync, reports the write durable
    /// at once, and syncs afterwards (a crash in between loses an acknowledged write).
    async fn write_then_sync_later(&mut self, mut write: PersistRequest) -> Result<(), Fatal> {
        write.must_sync = false;
        let result = write_inline(&*self.store, &write).await;
        self.on_write_done(WriteDone {
            done: Some(write.done()),
            synced: false,
            entries: write.entries.len(),
            elapsed: Duration::ZERO,
            result,
        })?;
        if self.writing.0.is_none() {
            let store = Arc::clone(&self.store);
            self.writing_since = Instant::now();
            self.writing.0 = Some(tokio::spawn(async move {
                WriteDone {
                    done: None,
                    synced: true,
                    entries: 0,
                    elapsed: Duration::ZERO,
                    result: store.sync().await.map_err(|e| e.to_string()),
                }
            }));
        }
        Ok(())
    }

    /// A write finished: report it to the core and start the next one, if any.
    fn on_write_done(&mut self, finished: WriteDone) -> Result<(), Fatal> {
        self.writing.0 = None;
        // A failed write stops the node: the store's state is unknown, and a sync that failed
        // must not be retried and trusted.
        if let Err(e) = finished.result
            && !bug!(self, IgnoreFailedSync)
        {
            return Err(e);
        }
        metrics::histogram!(m::APPEND_LATENCY_SECONDS).record(finished.elapsed.as_secs_f64());
        if finished.synced {
            metrics::counter!(m::LOG_SYNCS_TOTAL).increment(1);
        }
        if finished.entries > 0 {
            metrics::histogram!(m::APPEND_BATCH_ENTRIES).record(finished.entries as f64);
        }
        if let Some(done) = finished.done {
            self.raft.on_persisted(done);
        }
        if let Some(next) = self.queued_write.take() {
            self.start_write(next);
        }
        Ok(())
    }

    /// Waits until every write handed out so far is durable (and reported to the core), for
    /// store operations that must not overtake them.
    pub(crate) async fn flush_writes(&mut self) -> Result<(), Fatal> {
        while self.writing.0.is_some() || self.queued_write.is_some() {
            if self.writing.0.is_none()
                && let Some(next) = self.queued_write.take()
            {
                self.start_write(next);
            }
            let stalled = self.writing_since + PERSIST_STALL_LIMIT;
            match tokio::time::timeout_at(stalled, write_finished(&mut self.writing)).await {
                Ok(finished) => self.on_write_done(finished)?,
                Err(_) => return Err(write_stalled()),
            }
        }
        Ok(())
    }

    /// The write in flight has taken longer than [`PERSIST_STALL_LIMIT`] (checked every tick;
    /// see there).
    fn check_write_stall(&self) -> Result<(), Fatal> {
        if self.writing.0.is_some() && self.writing_since.elapsed() > PERSIST_STALL_LIMIT {
            return Err(write_stalled());
        }
        Ok(())
    }

    /// Sends one peer message: through the transport's queue, or, for a snapshot, by
    /// streaming its data in a task of its own (`snapshots.rs`).
    fn send(&mut self, msg: Message) {
        match &msg.body {
            MessageBody::InstallSnapshot(meta) => {
                let meta = meta.clone();
                self.send_snapshot(msg, &meta);
            }
            MessageBody::Heartbeat(hb) => {
                self.heartbeats_out
                    .insert(msg.to, (hb.round, Instant::now()));
                self.transport.send(msg);
            }
            _ => self.transport.send(msg),
        }
    }

    /// A heartbeat answered: its round trip (network both ways plus the follower's turn, no
    /// disk write) is the peer's round-trip time.
    fn on_heartbeat_answered(&mut self, from: NodeId, round: u64) {
        if let Some(&(sent_round, sent)) = self.heartbeats_out.get(&from)
            && sent_round == round
        {
            self.heartbeats_out.remove(&from);
            metrics::gauge!(m::PEER_ROUND_TRIP_SECONDS, m::LABEL_PEER => from.to_string())
                .set(sent.elapsed().as_secs_f64());
        }
    }

    fn on_soft_state(&mut self, soft: SoftState) {
        metrics::gauge!(m::TERM).set(soft.term as f64);
        set_role_gauges(soft.role, soft.leader);
        match soft.role {
            Role::PreCandidate | Role::Candidate if self.election.is_none() => {
                let span = tracing::info_span!(
                    "election",
                    term = soft.term,
                    outcome = tracing::field::Empty
                );
                self.election = Some(span);
            }
            Role::Leader | Role::Follower => {
                if let Some(span) = self.election.take() {
                    let outcome = match (soft.role, soft.leader) {
                        (Role::Leader, _) => "won",
                        (_, Some(_)) => "another member won",
                        (_, None) => "no leader yet",
                    };
                    span.record("outcome", outcome);
                }
            }
            _ => {}
        }
        tracing::debug!(role = %soft.role, term = soft.term, leader = ?soft.leader, "role or leader changed");
        self.publish_leadership();
        if soft.leader != self.last_leader {
            metrics::counter!(m::LEADER_CHANGES_TOTAL).increment(1);
            // One line per change of leader (elections are at least an election timeout
            // apart, so these cannot flood): an operator reading one member's log sees when
            // it lost its leader and whom it followed next.
            let previous = std::mem::replace(&mut self.last_leader, soft.leader);
            match soft.leader {
                Some(leader) if leader == self.id => {
                    tracing::info!(term = soft.term, "became leader");
                }
                Some(leader) => tracing::info!(term = soft.term, leader, "following a new leader"),
                None => tracing::info!(
                    term = soft.term,
                    previous = ?previous,
                    "no leader known: an election is under way or this member is cut off"
                ),
            }
        }
    }

    async fn hand_to_apply(&mut self, entries: Vec<Entry>) -> Result<(), Fatal> {
        let mut responders = Vec::new();
        let mut bytes = 0u64;
        let now = Instant::now();
        for entry in &entries {
            bytes += entry.payload_bytes();
            let Some(waiter) = self.waiters.remove(entry.index) else {
                continue;
            };
            match waiter {
                Waiter::Proposal {
                    term,
                    tx,
                    span,
                    appended,
                    ..
                } if term == entry.term => {
                    tracing::debug!(parent: &span, index = entry.index, "committed");
                    let seconds = now.saturating_duration_since(appended).as_secs_f64();
                    metrics::with_recorder(|r| {
                        r.register_histogram(&COMMIT_LATENCY, &METRIC_METADATA)
                            .record(seconds)
                    });
                    responders.push(Responder {
                        index: entry.index,
                        tx,
                        span,
                    });
                }
                Waiter::Config { term, deadline, tx } if term == entry.term => {
                    self.config_waiters.push(ConfigWaiter {
                        index: entry.index,
                        deadline,
                        tx,
                    });
                }
                other => self.fail_overwritten(entry.index, other),
            }
            if let EntryPayload::Membership(m) = &entry.payload {
                tracing::info!(index = entry.index, voters = ?m.voters, learners = ?m.learners, "configuration committed");
            }
        }
        self.since_snapshot_bytes += bytes;
        let span = entries
            .first()
            .zip(entries.last())
            .map(|(f, l)| (f.index, l.index));
        self.send_apply(ApplyCmd::Apply {
            entries,
            responders,
        })
        .await?;
        let policy = &self.settings.snapshot;
        let due_by_count = match (span, self.snapshot_due_at) {
            (Some((_, last)), Some(at)) => last >= at,
            (Some((first, last)), None) => {
                self.snapshot_due_at = policy.next_point(self.id, first.saturating_sub(1));
                self.snapshot_due_at.is_some_and(|at| last >= at)
            }
            (None, _) => false,
        };
        let due = due_by_count
            || (policy.every_bytes > 0 && self.since_snapshot_bytes >= policy.every_bytes);
        if due && !self.building_snapshot {
            self.build_snapshot().await?;
        }
        Ok(())
    }

    async fn send_apply(&mut self, cmd: ApplyCmd) -> Result<(), Fatal> {
        let Some(apply) = &self.apply_tx else {
            return Err("the apply task is gone".into());
        };
        apply
            .send(cmd)
            .await
            .map_err(|_| Fatal::from("the apply task stopped"))
    }

    // ----- housekeeping ------------------------------------------------------------------------

    fn fail_overwritten(&self, index: LogIndex, waiter: Waiter) {
        match waiter {
            Waiter::Proposal { tx, .. } => {
                let leader = self.raft.leader();
                let _ = tx.send(Err(ProposeError::not_leader(
                    leader,
                    self.address_of(leader),
                )));
            }
            Waiter::Config { tx, .. } => {
                let _ = tx.send(Err(AdminError::Overwritten { index }));
            }
        }
    }

    /// Answers `Timeout` to the oldest proposals whose deadline has passed. Deadlines grow with
    /// the index (up to the time a request waits in the queue), so this stops at the first
    /// proposal still in time; [`sweep_abandoned`](Self::sweep_abandoned) catches the rest.
    fn expire_proposals(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for (index, waiter) in self.waiters.iter() {
            match waiter {
                Waiter::Proposal { deadline, .. } if *deadline <= now => expired.push(index),
                Waiter::Proposal { .. } => break,
                Waiter::Config { .. } => {}
            }
        }
        for index in expired {
            if let Some(Waiter::Proposal { tx, .. }) = self.waiters.remove(index) {
                let _ = tx.send(Err(ProposeError::Timeout));
            }
        }
    }

    /// Forgets requests whose callers gave up (timed out), so nothing grows without bound, and
    /// answers `Timeout` to every proposal past its deadline.
    fn sweep_abandoned(&mut self) {
        self.reads.retain(|_, r| !r.tx.is_closed());
        let now = Instant::now();
        let mut expired = Vec::new();
        self.waiters.retain(|index, w| match w {
            Waiter::Proposal { deadline, .. } if *deadline <= now => {
                expired.push(index);
                true
            }
            Waiter::Proposal { tx, .. } => !tx.is_closed(),
            Waiter::Config { tx, .. } => !tx.is_closed(),
        });
        for index in expired {
            if let Some(Waiter::Proposal { tx, .. }) = self.waiters.remove(index) {
                let _ = tx.send(Err(ProposeError::Timeout));
            }
        }
        self.snapshot_waiters.retain(|tx| !tx.is_closed());
    }

    /// Tells the transport where members are reached, after every configuration change.
    fn sync_transport_peers(&mut self) {
        let current = self.raft.membership();
        if *current == self.known_members {
            return;
        }
        for (&id, address) in &current.addresses {
            if id != self.id && self.known_members.address(id) != Some(address.as_str()) {
                self.transport.set_peer(id, address.clone());
            }
        }
        for id in self.known_members.members() {
            if id != self.id && !current.contains(id) {
                self.transport.remove_peer(id);
                self.heartbeats_out.remove(&id);
            }
        }
        self.known_members = current.clone();
        self.publish_leadership();
    }

    /// Publishes role, term, leader and membership to
    /// [`Node::watch_leadership`](crate::Node::watch_leadership) subscribers, when they changed.
    fn publish_leadership(&self) {
        let now = leadership_of(&self.raft);
        self.leadership.send_if_modified(|published| {
            let changed = *published != now;
            if changed {
                *published = now;
            }
            changed
        });
    }

    fn update_gauges(&self) {
        metrics::gauge!(m::TERM).set(self.raft.term() as f64);
        metrics::gauge!(m::COMMIT_INDEX).set(self.raft.commit_index() as f64);
        metrics::gauge!(m::PENDING_PROPOSALS).set(self.waiters.len() as f64);
        metrics::counter!(m::LEASE_READS_TOTAL).absolute(self.raft.lease_reads_served());
        let entries =
            (self.raft.last_log_id().index + 1).saturating_sub(self.raft.first_log_index());
        metrics::gauge!(m::LOG_ENTRIES).set(entries as f64);
        if self.ticks.is_multiple_of(SWEEP_TICKS) {
            // Set on every change already; refreshed here so that the series of an idle node
            // stay exported (gauges not set for a while are dropped).
            set_role_gauges(self.raft.role(), self.raft.leader());
            // The apply task sets the applied index as it applies; once it has caught up (and
            // is idle) the loop refreshes it.
            if self.raft.applied_index() >= self.raft.commit_index() {
                metrics::gauge!(m::APPLIED_INDEX).set(self.raft.applied_index() as f64);
            }
        }
        if self.raft.role() == Role::Leader && self.ticks.is_multiple_of(SWEEP_TICKS) {
            for peer in self.raft.membership().members() {
                if peer == self.id {
                    continue;
                }
                if let Some(lag) = self.raft.replication_lag(peer) {
                    metrics::gauge!(m::REPLICATION_LAG_ENTRIES, m::LABEL_PEER => peer.to_string())
                        .set(lag as f64);
                }
            }
        }
    }

    fn address_of(&self, id: Option<NodeId>) -> Option<String> {
        id.and_then(|id| self.raft.membership().address(id).map(str::to_owned))
    }
}

/// What [`Node::watch_leadership`](crate::Node::watch_leadership) publishes of `raft`.
pub(crate) fn leadership_of<L: LogReader>(raft: &Raft<L>) -> Leadership {
    let leader = raft.leader();
    let membership = raft.membership();
    Leadership {
        role: raft.role(),
        term: raft.term(),
        leader,
        leader_address: leader.and_then(|id| membership.address(id).map(str::to_owned)),
        membership: membership.clone(),
    }
}

/// The role as `dengine_role`'s number and as the `dengine_has_leader` / `dengine_is_leader`
/// flags.
fn set_role_gauges(role: Role, leader: Option<NodeId>) {
    metrics::gauge!(m::ROLE).set(role_code(role));
    metrics::gauge!(m::HAS_LEADER).set(if leader.is_some() { 1.0 } else { 0.0 });
    metrics::gauge!(m::IS_LEADER).set(if role == Role::Leader { 1.0 } else { 0.0 });
    for r in Role::ALL {
        let state = if r == role { 1.0 } else { 0.0 };
        metrics::gauge!(m::ROLE_STATE, m::LABEL_ROLE => r.as_str()).set(state);
    }
}

/// Registers the counters that may stay at zero for a long time, so that they are exported
/// (and graphed, and alerted on) from the start instead of appearing at their first event.
fn register_counters() {
    for name in [
        m::LEADER_CHANGES_TOTAL,
        m::SNAPSHOTS_SENT_TOTAL,
        m::SNAPSHOTS_INSTALLED_TOTAL,
        m::PEER_MESSAGES_REFUSED_TOTAL,
        m::PEER_REGRESSIONS_TOTAL,
        m::PEER_INCARNATION_CHANGES_TOTAL,
        m::LOG_SYNCS_TOTAL,
        m::LEASE_READS_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::counter!(m::PROPOSALS_TOTAL, m::LABEL_RESULT => m::RESULT_OK).increment(0);
    for reason in [m::REASON_INBOX_FULL, m::REASON_SHUTTING_DOWN] {
        metrics::counter!(m::MESSAGES_DROPPED_TOTAL, m::LABEL_REASON => reason).increment(0);
    }
}

fn role_code(role: Role) -> f64 {
    match role {
        Role::Follower => 0.0,
        Role::PreCandidate => 1.0,
        Role::Candidate => 2.0,
        Role::Leader => 3.0,
    }
}
