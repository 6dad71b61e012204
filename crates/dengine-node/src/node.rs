//! [`Node`]: the handle applications use — client API (propose, read), administration
//! (membership, leader transfer, snapshots, status) and shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::ProposeError as Refusal;
use dengine_core::sessions::{SessionEntry, SessionId, SessionRefusal};
use dengine_core::store::Snapshot;
use dengine_core::{Membership, MembershipChange, NodeId, SnapshotMeta};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::api::{Consistency, Leadership, Status};
use crate::error::{AdminError, ProposeError, ReadError};
use crate::inbox::NodeInbox;
use crate::metric_names as m;
use crate::runtime::request::Request;
use crate::sessions::SessionAnswer;

// Per-proposal metrics through static keys. `metrics::counter!` with a label value that is
// not a literal allocates and hashes a new key on every call (~5% of the instructions per
// proposal in `cargo xtask bench core`); a static key is hashed once.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
static LATENCY: metrics::Key = metrics::Key::from_static_name(m::PROPOSAL_LATENCY_SECONDS);

/// The static key of [`m::PROPOSALS_TOTAL`] with the result label `$value`.
macro_rules! result_key {
    ($value:expr) => {{
        static LABELS: [metrics::Label; 1] =
            [metrics::Label::from_static_parts(m::LABEL_RESULT, $value)];
        static KEY: metrics::Key = metrics::Key::from_static_parts(m::PROPOSALS_TOTAL, &LABELS);
        &KEY
    }};
}

/// `client.max_pending`: requests (proposals and reads) waiting at once. An atomic counter
/// rather than a `tokio::sync::Semaphore`, whose release takes a mutex on every request
/// (~1% of the instructions per proposal in `cargo xtask bench core`, plus contention).
pub(crate) struct PendingLimit {
    count: AtomicUsize,
    max: usize,
}

impl PendingLimit {
    pub(crate) fn new(max: usize) -> Self {
        PendingLimit {
            count: AtomicUsize::new(0),
            max,
        }
    }

    /// A slot, released when the returned guard drops; `None` when all are taken.
    fn try_acquire(&self) -> Option<PendingSlot<'_>> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(PendingSlot(&self.count))
    }
}

/// One taken slot of a [`PendingLimit`].
struct PendingSlot<'a>(&'a AtomicUsize);

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State shared by every [`Node`] handle.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) req_tx: mpsc::Sender<Request>,
    pub(crate) inbox: NodeInbox,
    pub(crate) pending: PendingLimit,
    pub(crate) closing: AtomicBool,
    pub(crate) fatal: Arc<Mutex<Option<String>>>,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    pub(crate) propose_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) admin_timeout: Duration,
    pub(crate) leadership: watch::Receiver<Leadership>,
    /// Client sessions are on: every command goes into the log as a session entry.
    pub(crate) sessions: bool,
    /// Where session stamps come from; `None`: the system clock.
    pub(crate) session_clock: Option<SessionClock>,
}

/// A source of session stamps, milliseconds (see
/// [`NodeBuilder::session_clock`](crate::NodeBuilder)).
#[derive(Clone)]
pub(crate) struct SessionClock(pub(crate) Arc<dyn Fn() -> u64 + Send + Sync>);

impl std::fmt::Debug for SessionClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionClock")
    }
}

/// A running node: a cheap, cloneable handle (`Send + Sync`) on its event loop.
///
/// Requests are answered by the event loop; the calls are safe to make from many tasks at
/// once. Dropping every handle stops the node (without the graceful steps of
/// [`shutdown`](Node::shutdown)); the transport's [`NodeInbox`] does not keep it alive.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Node { shared }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The inbox a transport delivers peer messages to.
    pub fn inbox(&self) -> NodeInbox {
        self.shared.inbox.clone()
    }

    /// The fatal error that stopped the node, if it stopped on one.
    pub fn fatal_error(&self) -> Option<String> {
        self.shared.fatal.lock().clone()
    }

    /// Whether the event loop has stopped (after a shutdown, a kill or a fatal error).
    pub fn is_stopped(&self) -> bool {
        self.shared.req_tx.is_closed()
    }

    /// Replicates `command` and returns the state machine's response once the entry is
    /// applied on this node (the leader).
    ///
    /// Fails fast with [`ProposeError::Refused`] when the protocol refuses the command (on a
    /// follower: `NotLeader`, naming the leader and its address when known,
    /// [`ProposeError::leader`]; a command over `raft.max_proposal_bytes`: `TooLarge`), or
    /// [`ProposeError::Busy`] when `client.max_pending` requests are already waiting. [`ProposeError::Timeout`] after
    /// `client.propose_timeout_ms` means the outcome is unknown. The event loop enforces that
    /// deadline on its ticks (`raft.tick_ms`), so the answer may come a little late; an
    /// entry already handed to the state machine is answered when it is applied. A log store
    /// write that hangs for a minute stops the node, which answers every waiting caller with
    /// [`ProposeError::Stopped`].
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, ProposeError> {
        let command = if self.shared.sessions {
            SessionEntry::Plain(command).encode()
        } else {
            command
        };
        self.propose_entry(command).await
    }

    /// Whether this node runs with client sessions
    /// ([`NodeBuilder::client_sessions`](crate::NodeBuilder::client_sessions)).
    pub fn client_sessions(&self) -> bool {
        self.shared.sessions
    }

    /// Opens a client session (thesis §6.3; needs
    /// [`NodeBuilder::client_sessions`](crate::NodeBuilder::client_sessions) on every
    /// member): its id, to pass to [`propose_in_session`](Self::propose_in_session). Like a
    /// proposal, it is answered by the leader; a session left idle longer than the
    /// `idle_expiry_ms` of [`SessionLimits`](crate::SessionLimits) (in the leaders' clock
    /// time, as recorded in the log) is closed.
    pub async fn open_session(&self) -> Result<SessionId, ProposeError> {
        match self
            .session_call(SessionEntry::Register {
                stamp_ms: self.stamp(),
            })
            .await?
        {
            SessionAnswer::Registered(id) => Ok(id),
            _ => Err(ProposeError::Session(SessionRefusal::Malformed)),
        }
    }

    /// Proposes `command` as number `seq` of `session` and returns the state machine's
    /// response. **Exactly once**: proposing the same `(session, seq)` again — after a
    /// timeout, a lost leader, from another node — never applies it a second time; the
    /// retry gets the response of the first.
    ///
    /// Number a session's commands 1, 2, 3, ... and pass, as `first_unanswered`, the
    /// lowest number whose response you have not received yet: the runtime then forgets the
    /// responses below it (a retry of one of those is refused with
    /// [`SessionRefusal::AlreadyAcknowledged`](crate::SessionRefusal), never applied). Other
    /// refusals: [`ProposeError::Session`] with `UnknownSession` (expired, evicted, closed:
    /// open a new session; the unanswered commands of the old one have an unknown outcome)
    /// or `TooManyUnacknowledged`. The errors of [`propose`](Self::propose) apply too, and
    /// after a `Timeout` the same call may simply be made again.
    pub async fn propose_in_session(
        &self,
        session: SessionId,
        seq: u64,
        first_unanswered: u64,
        command: Bytes,
    ) -> Result<Bytes, ProposeError> {
        let entry = SessionEntry::Command {
            session,
            seq,
            first_unanswered,
            stamp_ms: self.stamp(),
            command,
        };
        match self.session_call(entry).await? {
            SessionAnswer::Response(response) => Ok(response),
            SessionAnswer::ResponseLost => Err(ProposeError::ResponseLost),
            _ => Err(ProposeError::Session(SessionRefusal::Malformed)),
        }
    }

    /// Keeps an idle session open (any command of the session does too).
    pub async fn keep_session_alive(&self, session: SessionId) -> Result<(), ProposeError> {
        let entry = SessionEntry::KeepAlive {
            session,
            stamp_ms: self.stamp(),
        };
        self.session_call(entry).await.map(drop)
    }

    /// Closes a session: its saved responses are dropped.
    pub async fn close_session(&self, session: SessionId) -> Result<(), ProposeError> {
        let entry = SessionEntry::Close {
            session,
            stamp_ms: self.stamp(),
        };
        self.session_call(entry).await.map(drop)
    }

    /// The time to stamp a session entry with (milliseconds; the leader's clock, as the log
    /// records it).
    fn stamp(&self) -> u64 {
        self.shared
            .session_clock
            .as_ref()
            .map_or_else(system_stamp, |clock| (clock.0)())
    }

    /// Proposes a session entry and decodes the runtime's answer; a refusal is an error.
    async fn session_call(&self, entry: SessionEntry) -> Result<SessionAnswer, ProposeError> {
        if !self.shared.sessions {
            return Err(ProposeError::SessionsOff);
        }
        let response = self.propose_entry(entry.encode()).await?;
        match SessionAnswer::decode(&response) {
            Some(SessionAnswer::Refused(why)) => Err(ProposeError::Session(why)),
            Some(answer) => Ok(answer),
            None => Err(ProposeError::Session(SessionRefusal::Malformed)),
        }
    }

    /// Replicates an encoded log entry's command and returns its response (see
    /// [`propose`](Self::propose)).
    async fn propose_entry(&self, command: Bytes) -> Result<Bytes, ProposeError> {
        let started = Instant::now();
        // At debug level: a span per proposal costs an allocation and a formatted field in every
        // subscriber that sees it (about 1% of a put's CPU at the default `info` filter).
        let span = tracing::debug_span!(
            "propose",
            node = self.shared.id,
            index = tracing::field::Empty
        );
        let deadline = started + self.shared.propose_timeout;
        let result = self
            .propose_inner(command, deadline, span.clone())
            .instrument(span)
            .await;
        let key = match &result {
            Ok(_) => {
                let seconds = started.elapsed().as_secs_f64();
                metrics::with_recorder(|r| {
                    r.register_histogram(&LATENCY, &METADATA).record(seconds)
                });
                result_key!(m::RESULT_OK)
            }
            Err(ProposeError::Refused(refusal)) => match refusal {
                Refusal::NotLeader { .. } | Refusal::TransferInProgress { .. } => {
                    result_key!(m::RESULT_NOT_LEADER)
                }
                Refusal::UncommittedLimit { .. } => result_key!(m::RESULT_BUSY),
                Refusal::TooLarge { .. } => result_key!(m::RESULT_TOO_LARGE),
            },
            Err(ProposeError::Timeout | ProposeError::Interrupted(_)) => {
                result_key!(m::RESULT_TIMEOUT)
            }
            Err(ProposeError::Busy(_)) => result_key!(m::RESULT_BUSY),
            Err(ProposeError::ShuttingDown | ProposeError::Stopped { .. }) => {
                result_key!(m::RESULT_SHUTTING_DOWN)
            }
            // Decided from the entry's response, after this point: never seen here.
            Err(
                ProposeError::Session(_) | ProposeError::SessionsOff | ProposeError::ResponseLost,
            ) => result_key!(m::RESULT_OK),
        };
        metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
        result
    }

    async fn propose_inner(
        &self,
        command: Bytes,
        deadline: Instant,
        span: tracing::Span,
    ) -> Result<Bytes, ProposeError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(self.stopped_or(ProposeError::ShuttingDown, |reason| {
                ProposeError::Stopped { reason }
            }));
        }
        let Some(_permit) = self.shared.pending.try_acquire() else {
            return Err(ProposeError::Busy(
                "client.max_pending requests are waiting",
            ));
        };
        let (tx, rx) = oneshot::channel();
        self.shared
            .req_tx
            .try_send(Request::Propose {
                command,
                deadline,
                span,
                tx,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ProposeError::Busy("the request queue is full")
                }
                mpsc::error::TrySendError::Closed(_) => self
                    .stopped_or(ProposeError::ShuttingDown, |reason| ProposeError::Stopped {
                        reason,
                    }),
            })?;
        // The event loop answers `Timeout` once `deadline` has passed (checked every tick), so
        // no timer is registered per proposal: a timer wheel entry per proposal cost about a
        // sixth of the CPU of the in-process benchmark (`cargo xtask bench core`).
        match rx.await {
            Ok(result) => result,
            Err(_) => {
                Err(
                    self.stopped_or(ProposeError::ShuttingDown, |reason| ProposeError::Stopped {
                        reason,
                    }),
                )
            }
        }
    }

    /// Answers `query` from the state machine with the given [`Consistency`].
    ///
    /// Linearizable and lease reads wait (up to `client.read_timeout_ms`) until the read is
    /// confirmed and the local state machine has caught up to the read index; a follower
    /// forwards the confirmation to its leader, so any node can serve them. While there is no
    /// leader the read is retried until the timeout.
    pub async fn read(&self, query: Bytes, consistency: Consistency) -> Result<Bytes, ReadError> {
        // At debug level, as `propose`'s: a span per read costs an allocation in every
        // subscriber that sees it.
        let span = tracing::debug_span!("read", node = self.shared.id, consistency = ?consistency);
        self.read_inner(Some(query), consistency)
            .instrument(span)
            .await
    }

    /// Waits until this node's state machine has applied every entry committed before the
    /// call, without asking the state machine anything: a linearizable barrier (ReadIndex,
    /// thesis §6.4; on a follower, confirmed by the leader), under the same timeout as
    /// [`read`](Node::read).
    ///
    /// On a node that has just become leader it returns once the leader has committed an
    /// entry of its own term and applied everything before it: from then on the local state
    /// includes every write of earlier terms. That is the point from which a leader-side
    /// task may act on the state — expire leases, fire timers, compact — as this pattern
    /// does (`dengine-kv`'s lease keeper is one):
    ///
    /// ```no_run
    /// # async fn example(node: dengine_node::Node) {
    /// use dengine_core::Role;
    /// let mut leadership = node.watch_leadership();
    /// loop {
    ///     let term = leadership.borrow_and_update().term;
    ///     let leads = leadership.borrow().role == Role::Leader;
    ///     if leads && node.barrier().await.is_ok() {
    ///         // Caught up as leader of `term`: start the term's leader-side work, and stop it
    ///         // when `watch_leadership` shows another role or term.
    ///         let _ = term;
    ///     }
    ///     if leadership.changed().await.is_err() {
    ///         break; // the node stopped
    ///     }
    /// }
    /// # }
    /// ```
    ///
    /// Time on the leader side should be read from tokio's clock
    /// (`tokio::time::Instant`), as the runtime does: under a paused clock (the simulator)
    /// it is then deterministic.
    pub async fn barrier(&self) -> Result<(), ReadError> {
        let span = tracing::debug_span!("barrier", node = self.shared.id);
        self.read_inner(None, Consistency::Linearizable)
            .instrument(span)
            .await
            .map(drop)
    }

    async fn read_inner(
        &self,
        query: Option<Bytes>,
        consistency: Consistency,
    ) -> Result<Bytes, ReadError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(
                self.stopped_or(ReadError::ShuttingDown, |reason| ReadError::Stopped {
                    reason,
                }),
            );
        }
        let Some(_permit) = self.shared.pending.try_acquire() else {
            return Err(ReadError::Busy);
        };
        let (tx, rx) = oneshot::channel();
        self.shared
            .req_tx
            .try_send(Request::Read {
                query,
                consistency,
                tx,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => ReadError::Busy,
                mpsc::error::TrySendError::Closed(_) => self
                    .stopped_or(ReadError::ShuttingDown, |reason| ReadError::Stopped {
                        reason,
                    }),
            })?;
        match tokio::time::timeout(self.shared.read_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                Err(
                    self.stopped_or(ReadError::ShuttingDown, |reason| ReadError::Stopped {
                        reason,
                    }),
                )
            }
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Role, term, leader and membership as this node sees them, now and at every change:
    /// `borrow()` gives the current value, `changed().await` waits for the next one (changes
    /// in quick succession may be seen as one), and fails once the node has stopped. For
    /// reacting to elections and membership changes without polling [`status`](Node::status).
    ///
    /// ```no_run
    /// # async fn example(node: dengine_node::Node) {
    /// let mut leadership = node.watch_leadership();
    /// while leadership.changed().await.is_ok() {
    ///     let now = leadership.borrow_and_update().clone();
    ///     println!("term {}: leader {:?}, {} members", now.term, now.leader, now.membership.members().count());
    /// }
    /// # }
    /// ```
    pub fn watch_leadership(&self) -> watch::Receiver<Leadership> {
        self.shared.leadership.clone()
    }

    /// This node's view of itself and the cluster.
    pub async fn status(&self) -> Result<Status, AdminError> {
        let (tx, rx) = oneshot::channel();
        self.admin(Request::Status { tx }, rx).await
    }

    /// Adds `id` as a learner reached at `address`: it receives the log but does not vote.
    /// Resolves once the configuration is committed and applied here (the leader).
    pub async fn add_learner(
        &self,
        id: NodeId,
        address: impl Into<String>,
    ) -> Result<Membership, AdminError> {
        let addresses = BTreeMap::from([(id, address.into())]);
        self.change_membership(vec![MembershipChange::AddLearner(id)], addresses)
            .await
    }

    /// Makes the learner `id` a voter (through a joint configuration). Promote a learner once
    /// its lag in [`Status::peers`] is small. Resolves once the final configuration is
    /// committed and applied here.
    pub async fn promote(&self, id: NodeId) -> Result<Membership, AdminError> {
        self.change_membership(vec![MembershipChange::AddVoter(id)], BTreeMap::new())
            .await
    }

    /// Removes `id` (voter or learner) from the cluster. Resolves once the final
    /// configuration is committed and applied here. Stop the removed node afterwards.
    pub async fn remove(&self, id: NodeId) -> Result<Membership, AdminError> {
        self.change_membership(vec![MembershipChange::Remove(id)], BTreeMap::new())
            .await
    }

    /// Changes any number of members at once through joint consensus (thesis §4.3),
    /// recording `addresses` (usually of the nodes being added) in the configuration.
    /// Transient refusals (a new leader not ready yet, another change still in progress) are
    /// retried until the admin timeout. Resolves with the final configuration once it is
    /// committed and applied here.
    pub async fn change_membership(
        &self,
        changes: Vec<MembershipChange>,
        addresses: BTreeMap<NodeId, String>,
    ) -> Result<Membership, AdminError> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.shared.admin_timeout;
        let span =
            tracing::info_span!("change_membership", node = self.shared.id, changes = ?changes);
        let req = Request::ChangeMembership {
            changes,
            addresses,
            deadline,
            tx,
        };
        self.admin(req, rx).instrument(span).await?
    }

    /// Hands leadership to the voter `to` (thesis §3.10). Resolves once this node sees `to`
    /// lead, or fails with [`AdminError::TransferFailed`] when the transfer is abandoned.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), AdminError> {
        let (tx, rx) = oneshot::channel();
        let deadline = Instant::now() + self.shared.admin_timeout;
        let span = tracing::info_span!("transfer_leader", node = self.shared.id, to);
        self.admin(Request::TransferLeader { to, deadline, tx }, rx)
            .instrument(span)
            .await?
    }

    /// Takes a snapshot of the state machine now and lets the log be compacted behind it.
    /// Resolves with what the snapshot covers.
    pub async fn trigger_snapshot(&self) -> Result<SnapshotMeta, AdminError> {
        Ok(self.snapshot().await?.meta)
    }

    /// [`trigger_snapshot`](Self::trigger_snapshot), resolving with the snapshot itself: what
    /// it covers and the state machine's data, read on demand from the snapshot file (in
    /// memory when the node keeps no snapshot files). For a backup of this node's applied
    /// state that is never held whole in memory; the file stays readable through the handle
    /// even after newer snapshots replace it.
    pub async fn snapshot(&self) -> Result<Snapshot, AdminError> {
        let (tx, rx) = oneshot::channel();
        let span = tracing::info_span!("trigger_snapshot", node = self.shared.id);
        self.admin(Request::TriggerSnapshot { tx }, rx)
            .instrument(span)
            .await?
    }

    /// Starts an election on this node now, as if its election timeout had fired. For tests
    /// and tools; a healthy cluster elects on its own.
    pub async fn campaign(&self) -> Result<(), AdminError> {
        self.send_admin(Request::Campaign).await
    }

    async fn send_admin(&self, req: Request) -> Result<(), AdminError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(
                self.stopped_or(AdminError::ShuttingDown, |reason| AdminError::Stopped {
                    reason,
                }),
            );
        }
        match tokio::time::timeout(self.shared.admin_timeout, self.shared.req_tx.send(req)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                Err(
                    self.stopped_or(AdminError::ShuttingDown, |reason| AdminError::Stopped {
                        reason,
                    }),
                )
            }
            Err(_) => Err(AdminError::Timeout),
        }
    }

    async fn admin<R>(&self, req: Request, rx: oneshot::Receiver<R>) -> Result<R, AdminError> {
        self.send_admin(req).await?;
        // The loop enforces the operation's own deadline; this one only guards against a
        // loop that never answers.
        let guard = self.shared.admin_timeout + Duration::from_secs(1);
        match tokio::time::timeout(guard, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => {
                Err(
                    self.stopped_or(AdminError::ShuttingDown, |reason| AdminError::Stopped {
                        reason,
                    }),
                )
            }
            Err(_) => Err(AdminError::Timeout),
        }
    }

    /// Stops the node gracefully: new requests are refused with `ShuttingDown`; a leader
    /// first hands leadership to the most up-to-date voter (waiting up to
    /// `shutdown.transfer_timeout_ms`); pending requests then fail with `ShuttingDown`
    /// (outcome unknown), the log store is synced and the tasks stop. Returns once they have.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .req_tx
            .send(Request::Shutdown { tx })
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
        let task = self.shared.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Simulates a crash: aborts the event loop and every task of the node at once, without
    /// handing over leadership, answering requests or syncing storage. Writes a `persist` call
    /// had not finished may be lost, exactly as in a process crash. For tests.
    pub async fn kill(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let task = self.shared.task.lock().take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    /// Shuts the node down gracefully (as [`shutdown`](Node::shutdown)) once `signal`
    /// completes — a cancellation token's `cancelled()`, `tokio::signal::ctrl_c()`, a
    /// oneshot receiver. Returns at once; the shutdown runs in a spawned task.
    pub fn shutdown_on<F>(&self, signal: F)
    where
        F: std::future::Future + Send + 'static,
    {
        let node = self.clone();
        tokio::spawn(async move {
            let signalled = tokio::select! {
                _ = signal => true,
                () = node.stopped() => false,
            };
            if signalled {
                node.shutdown().await;
            }
        });
    }

    /// Waits until the event loop has stopped (after [`shutdown`](Node::shutdown), a kill
    /// or a fatal error).
    pub async fn stopped(&self) {
        self.shared.req_tx.closed().await;
    }

    fn stopped_or<E>(&self, shutting_down: E, stopped: impl FnOnce(String) -> E) -> E {
        match self.fatal_error() {
            Some(reason) => stopped(reason),
            None => shutting_down,
        }
    }
}

/// The leader's clock for a session entry, in milliseconds since the Unix epoch: session
/// expiry counts in these (as the log records them), never in a replica's own clock.
fn system_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
