//! [`NodeBuilder`]: assembles a node from [`Settings`], a [`LogStore`], a [`StateMachine`]
//! and a [`Transport`], and starts it in one of two explicit modes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dengine_core::sessions::SessionLimits;
use dengine_core::store::{Snapshot, SnapshotData};
use dengine_core::{
    EntryId, HardState, InitialState, LogIndex, LogStore, Membership, NodeId, PersistRequest, Raft,
    SnapshotMeta, StateMachine, StoredState, Transport,
};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;

use crate::config::NodeConfig;
use crate::error::StartError;
use crate::inbox::{InboxView, NodeInbox, PeerInput};
use crate::node::{Node, Shared};
use crate::runtime::{Parts, Runtime, leadership_of};
use crate::sessions::SessionMachine;
use crate::snapshot_dir::SnapshotDir;

/// Room in the request queue for administrative requests beyond `client.max_pending`.
const ADMIN_QUEUE: usize = 1024;

/// The state a new cluster is founded with instead of an empty one (a restore from a
/// backup): a state-machine snapshot, as [`StateMachine::write_snapshot`] made it, covering the log
/// up to `index` (the index its state machine had applied). See
/// [`bootstrap_from`](NodeBuilder::bootstrap_from).
#[derive(Clone, Debug)]
pub struct Seed {
    /// The log index the snapshot covers (at least 1); the new log continues after it.
    pub index: LogIndex,
    /// The state machine's snapshot (in memory, or read from the backup file).
    pub data: SnapshotData,
}

/// How a new cluster's first members start: the initial voters, and the state they start
/// from.
struct Founding {
    membership: Membership,
    seed: Option<Seed>,
}

/// The term recorded for a [`Seed`]'s snapshot: every member restored from the same backup
/// records the same entry, so their logs match at it (Raft's log matching, §5.3), and the
/// first election is for term 2.
const SEED_TERM: u64 = 1;

/// Assembles a node. Give it a log store, a state machine and a transport, then start it with
/// [`bootstrap`](NodeBuilder::bootstrap) (a brand-new cluster) or
/// [`start`](NodeBuilder::start) (restart, or join an existing cluster).
///
/// The transport needs the node's [`NodeInbox`] to deliver what peers send; take it from
/// [`inbox`](NodeBuilder::inbox) before building the transport. Messages delivered before
/// the node starts wait in the inbox.
///
/// The start methods spawn tasks and must be called within a tokio runtime.
pub struct NodeBuilder<S = (), M = (), T = ()> {
    settings: NodeConfig,
    store: S,
    state_machine: M,
    transport: T,
    peer_tx: mpsc::Sender<PeerInput>,
    peer_rx: mpsc::Receiver<PeerInput>,
    view: Arc<InboxView>,
    snapshot_dir: Option<SnapshotDir>,
    /// Client sessions: off (`None`) unless [`client_sessions`](NodeBuilder::client_sessions).
    sessions: Option<SessionLimits>,
    options: RunOptions,
}

/// What a node runs with besides its configuration: hooks for deterministic simulation and
/// tests, never read from a settings file.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunOptions {
    /// Seed of the core's random election timeouts; `None` derives one from the clock.
    pub(crate) rng_seed: Option<u64>,
    /// Deliberate runtime bugs (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub(crate) bugs: Vec<crate::bugs::RuntimeBug>,
    /// Where session stamps come from; `None`: the system clock.
    pub(crate) session_clock: Option<crate::node::SessionClock>,
}

impl NodeBuilder {
    /// A builder for the node configured by `settings`.
    pub fn new(settings: NodeConfig) -> Self {
        let (peer_tx, peer_rx) = mpsc::channel(settings.raft.inbox_len.max(1));
        NodeBuilder {
            settings,
            store: (),
            state_machine: (),
            transport: (),
            peer_tx,
            peer_rx,
            view: Arc::default(),
            snapshot_dir: None,
            sessions: None,
            options: RunOptions::default(),
        }
    }
}

impl<S, M, T> NodeBuilder<S, M, T> {
    /// Uses `store` for the Raft log and hard state.
    pub fn log_store<S2: LogStore>(self, store: S2) -> NodeBuilder<S2, M, T> {
        NodeBuilder {
            settings: self.settings,
            store,
            state_machine: self.state_machine,
            transport: self.transport,
            peer_tx: self.peer_tx,
            peer_rx: self.peer_rx,
            view: self.view,
            snapshot_dir: self.snapshot_dir,
            sessions: self.sessions,
            options: self.options,
        }
    }

    /// Applies committed entries to `state_machine`.
    pub fn state_machine<M2: StateMachine>(self, state_machine: M2) -> NodeBuilder<S, M2, T> {
        NodeBuilder {
            settings: self.settings,
            store: self.store,
            state_machine,
            transport: self.transport,
            peer_tx: self.peer_tx,
            peer_rx: self.peer_rx,
            view: self.view,
            snapshot_dir: self.snapshot_dir,
            sessions: self.sessions,
            options: self.options,
        }
    }

    /// Sends messages to peers through `transport`.
    pub fn transport<T2: Transport>(self, transport: T2) -> NodeBuilder<S, M, T2> {
        NodeBuilder {
            settings: self.settings,
            store: self.store,
            state_machine: self.state_machine,
            transport,
            peer_tx: self.peer_tx,
            peer_rx: self.peer_rx,
            view: self.view,
            snapshot_dir: self.snapshot_dir,
            sessions: self.sessions,
            options: self.options,
        }
    }

    /// Keeps the newest snapshots as files in `dir` (created if missing; typically
    /// `<node.data_dir>/snapshots`). On start, a snapshot newer than what the state machine
    /// has applied is installed into it first. Needed for a state machine that is not
    /// durable (such as `MemoryStateMachine`) once the log is compacted: without the file,
    /// the compacted entries could not be replayed and the node refuses to start
    /// ([`StartError::StateMachineBehindLog`]). Needed for a durable one too, wherever it may
    /// receive a snapshot from the leader: a crash after the state machine installed it and
    /// before the log store was reset to it is finished from the file on restart, and
    /// without one the node refuses to start ([`StartError::StateMachineAheadOfLog`]; found
    /// by the runtime simulation, `docs/correctness.md`).
    pub fn snapshot_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshot_dir = Some(SnapshotDir::new(dir.into()));
        self
    }

    /// Keeps the newest snapshots in `snapshots` instead of files: what
    /// [`snapshot_dir`](NodeBuilder::snapshot_dir) does, for deterministic simulation
    /// (feature `testing`; see [`MemorySnapshots`](crate::testing::MemorySnapshots)).
    #[cfg(feature = "testing")]
    pub fn snapshot_memory(mut self, snapshots: crate::testing::MemorySnapshots) -> Self {
        self.snapshot_dir = Some(SnapshotDir::memory(snapshots));
        self
    }

    /// Turns client sessions on (Raft thesis §6.3): commands proposed in a session
    /// ([`Node::propose_in_session`]) take effect at most once however often they are
    /// retried, and a retry gets the first response — the runtime keeps a table of the
    /// sessions and their responses beside the state machine (in every snapshot), so the
    /// state machine never sees a duplicate. `limits` bound the table; every member must use
    /// the same, and **every member must have sessions on or every member off**, from the
    /// cluster's first start (the log's entries are written differently: a member with the
    /// other setting refuses them). With a durable state machine the node needs a
    /// [`snapshot_dir`](Self::snapshot_dir) ([`StartError::SessionsNeedSnapshots`]
    /// otherwise): at a restart it rebuilds the table from the newest snapshot and the log
    /// after it, without the responses of the commands in that stretch of log — a retry of
    /// one of those gets [`ProposeError::ResponseLost`](crate::ProposeError::ResponseLost)
    /// (applied once, response unknown). docs/sessions.md describes what a client gets.
    pub fn client_sessions(mut self, limits: SessionLimits) -> Self {
        self.sessions = Some(limits);
        self
    }

    /// Stamps session entries (the leader time that session expiry counts in, thesis §6.3)
    /// with `clock`, in milliseconds, instead of the system clock: for deterministic
    /// simulation, where nothing may read the wall clock.
    #[cfg(feature = "testing")]
    pub fn session_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.options.session_clock = Some(crate::node::SessionClock(Arc::new(clock)));
        self
    }

    /// Seeds the core's random election timeouts with `seed` instead of the clock. For
    /// deterministic simulation and tests: with the same seed, the same inputs and a tokio
    /// runtime whose clock is paused (`tokio::time::pause`), a node behaves the same way on
    /// every run. Nodes of one cluster need different seeds, or their timeouts collide.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.options.rng_seed = Some(seed);
        self
    }

    /// Makes the node's runtime misbehave in the given way (feature `fault-injection`), for
    /// the simulator's bug-catching runs only.
    #[cfg(feature = "fault-injection")]
    pub fn inject_bug(mut self, bug: crate::bugs::RuntimeBug) -> Self {
        if !self.options.bugs.contains(&bug) {
            self.options.bugs.push(bug);
        }
        self
    }

    /// The inbox the transport delivers peer messages into.
    pub fn inbox(&self) -> NodeInbox {
        NodeInbox::new(self.peer_tx.clone(), self.view.clone())
    }

    /// The configuration the node will run with.
    pub fn settings(&self) -> &NodeConfig {
        &self.settings
    }
}

impl<S: LogStore, M: StateMachine, T: Transport> NodeBuilder<S, M, T> {
    /// Starts the first node(s) of a brand-new cluster whose voters are `members` (id →
    /// address peers use; an empty address records none). Every initial member is
    /// bootstrapped with the same `members`.
    ///
    /// Refuses ([`StartError::AlreadyInitialized`]) a log store that already holds state:
    /// bootstrapping twice could elect two leaders. Restart such a node with
    /// [`start`](NodeBuilder::start).
    pub async fn bootstrap(self, members: BTreeMap<NodeId, String>) -> Result<Node, StartError> {
        self.found(members, None).await
    }

    /// [`bootstrap`](NodeBuilder::bootstrap) a new cluster whose state machine starts from
    /// `seed` (a backup of another cluster's state) instead of empty. Every initial member
    /// must be founded with the same `members` and the same seed. The seed becomes the
    /// node's first snapshot (in the snapshot directory, which is therefore required) at
    /// index `seed.index`, term 1; the log continues after it, and members added later
    /// receive that state as a snapshot.
    ///
    /// Refused, with nothing written, for a log store that already holds state
    /// ([`StartError::AlreadyInitialized`]) or a snapshot directory that already holds a
    /// snapshot ([`StartError::SnapshotFile`]).
    pub async fn bootstrap_from(
        self,
        members: BTreeMap<NodeId, String>,
        seed: Seed,
    ) -> Result<Node, StartError> {
        self.found(members, Some(seed)).await
    }

    async fn found(
        self,
        members: BTreeMap<NodeId, String>,
        seed: Option<Seed>,
    ) -> Result<Node, StartError> {
        let id = self.settings.id;
        if members.is_empty() {
            return Err(StartError::InvalidMembers("no members given".into()));
        }
        if members.contains_key(&0) {
            return Err(StartError::InvalidMembers("node id 0 is reserved".into()));
        }
        if !members.contains_key(&id) {
            return Err(StartError::InvalidMembers(format!(
                "this node ({id}) is not among the initial members {:?}",
                members.keys().collect::<Vec<_>>()
            )));
        }
        let mut membership = Membership::new(members.keys().copied());
        for (member, address) in members {
            if !address.is_empty() {
                membership = membership.with_address(member, address);
            }
        }
        self.launch(Some(Founding { membership, seed })).await
    }

    /// Starts from what the log store holds: a restart when it holds state (never
    /// bootstrapping again), or, for an empty store, a new node that waits to be added to an
    /// existing cluster (as a learner, through [`Node::add_learner`] on the leader).
    pub async fn start(self) -> Result<Node, StartError> {
        self.launch(None).await
    }

    /// [`start`](NodeBuilder::start) for a node that is about to be added to an existing
    /// cluster, telling the transport where the current members are (`peers`: id →
    /// address), so that it can answer the leader before the configuration that adds it
    /// (and carries every member's address) has reached its log. On a store that already
    /// holds state this is a plain restart; the addresses in the stored membership win.
    pub async fn join(self, peers: BTreeMap<NodeId, String>) -> Result<Node, StartError> {
        let me = self.settings.id;
        for (id, address) in peers {
            if id != me && id != 0 && !address.is_empty() {
                self.transport.set_peer(id, address);
            }
        }
        self.launch(None).await
    }

    /// [`bootstrap`](NodeBuilder::bootstrap) with `members` if the log store is empty and
    /// `members` is not; otherwise [`start`](NodeBuilder::start). Never bootstraps a store
    /// that holds state.
    pub async fn start_or_bootstrap(
        self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<Node, StartError> {
        self.start_or_bootstrap_from(members, None).await
    }

    /// [`start_or_bootstrap`](NodeBuilder::start_or_bootstrap), founding the new cluster from
    /// `seed` if one is given ([`bootstrap_from`](NodeBuilder::bootstrap_from)). A store that
    /// holds state restarts and the seed is ignored.
    pub async fn start_or_bootstrap_from(
        self,
        members: BTreeMap<NodeId, String>,
        seed: Option<Seed>,
    ) -> Result<Node, StartError> {
        let stored = self.store.load_state().await?;
        if is_empty(&stored) && !members.is_empty() {
            self.found(members, seed).await
        } else {
            if seed.is_some() {
                tracing::info!(
                    node = self.settings.id,
                    "the log store holds state: restarting from it, the backup to found the \
                     cluster with is ignored"
                );
            }
            self.start().await
        }
    }

    async fn launch(self, bootstrap: Option<Founding>) -> Result<Node, StartError> {
        let NodeBuilder {
            settings,
            store,
            state_machine,
            transport,
            peer_tx,
            peer_rx,
            view,
            snapshot_dir,
            sessions,
            options,
        } = self;
        settings.validate()?;
        if sessions.is_some() && state_machine.durable() && snapshot_dir.is_none() {
            return Err(StartError::SessionsNeedSnapshots);
        }
        let state_machine = SessionMachine::new(state_machine, sessions);
        let id = settings.id;
        // A cluster founded from a seed starts as a restart from what `seed` writes.
        let bootstrap = match bootstrap {
            Some(Founding {
                membership,
                seed: Some(seed),
            }) => {
                plant_seed(&store, snapshot_dir.as_ref(), membership, seed).await?;
                None
            }
            Some(Founding {
                membership,
                seed: None,
            }) => Some(membership),
            None => None,
        };
        let mut stored = store.load_state().await?;
        let mut loaded = crate::snapshot_dir::Loaded::default();
        // A snapshot the state machine already covers is not installed: its data is not read
        // (unless a durable state machine's session table is to be rebuilt from it).
        let durable = state_machine.durable();
        let rebuild_sessions = durable && state_machine.sessions_on();
        let covered = if durable && !rebuild_sessions {
            state_machine.applied_index()
        } else {
            0
        };
        if let Some(dir) = &snapshot_dir {
            loaded = dir
                .load_latest_after(covered)
                .await
                .map_err(StartError::SnapshotFile)?;
        }
        let snapshot_file = loaded.snapshot.take();
        let valid_snapshot_index = snapshot_file.as_ref().map(|f| f.meta.last_included.index);
        if bootstrap.is_some() && !is_empty(&stored) {
            return Err(StartError::AlreadyInitialized {
                term: stored.hard_state.term,
                last_index: stored.last_index,
            });
        }
        if let Some(file) = &snapshot_file
            && is_empty(&stored)
        {
            return Err(StartError::SnapshotFile(format!(
                "the snapshot directory holds a snapshot at {} but the log store is empty; \
                 refusing to mix state of another incarnation: remove the snapshot files or \
                 restore the log store",
                file.meta.last_included
            )));
        }
        let mut base = match bootstrap {
            Some(membership) => {
                // The initial configuration is in no log entry: record it as the snapshot at
                // index 0, so that a restart finds it.
                let meta = SnapshotMeta {
                    last_included: EntryId::ZERO,
                    membership,
                };
                store.save_snapshot_meta(&meta).await?;
                Some(meta)
            }
            None => stored.snapshot_meta.clone(),
        };
        let mut state_machine = state_machine;
        // What the state machine's state covers: what it stored (a durable one), or what the
        // snapshot it is restored from covers.
        let mut applied = state_machine.applied_index();
        let mut installed = false;
        if let Some(file) = &snapshot_file {
            let index = file.meta.last_included.index;
            if index > stored.last_index {
                // A snapshot from the leader was saved, but the node stopped before the log
                // store was reset to it: finish that now, or the log would lag the state.
                store.reset_to_snapshot(&file.meta).await?;
                stored = store.load_state().await?;
            }
            if index > applied {
                tracing::info!(
                    node = id,
                    index,
                    "restoring the state machine from its snapshot file"
                );
                state_machine
                    .install_snapshot_from(file.data.clone(), index)
                    .await
                    .map_err(|e| StartError::StateMachine(e.to_string()))?;
                applied = index;
                installed = true;
            }
            if base.as_ref().is_none_or(|b| b.last_included.index <= index) {
                base = Some(file.meta.clone());
            }
        }
        // Where a durable state machine's session table is rebuilt from (see below).
        let table_base = snapshot_file
            .as_ref()
            .map(|f| (f.meta.last_included.index, f.data.clone()));
        // A durable state machine builds a snapshot when a follower needs one; the runtime
        // does not hold one in memory meanwhile.
        let initial_snapshot = snapshot_file
            .filter(|_| !loaded.data_skipped && !durable)
            .filter(|f| base.as_ref().map(|b| b.last_included) == Some(f.meta.last_included));
        let compacted = stored.first_index.saturating_sub(1);
        if applied < compacted {
            if !loaded.damaged.is_empty() {
                return Err(StartError::SnapshotFile(format!(
                    "the state machine cannot be restored: the log is compacted up to index \
                     {compacted}, and the snapshot that covered it is damaged: {}{}. Restore \
                     the file from a backup, or replace the member (remove it from the \
                     cluster, wipe its data directory, add it again under a new id; \
                     docs/operations.md, \"Replacing a member\")",
                    loaded.describe_damaged(),
                    match valid_snapshot_index {
                        Some(index) =>
                            format!("; the newest valid snapshot ends at index {index}, too old"),
                        None => "; no older valid snapshot exists".into(),
                    }
                )));
            }
            return Err(StartError::StateMachineBehindLog { applied, compacted });
        }
        if applied > stored.last_index {
            return Err(StartError::StateMachineAheadOfLog {
                applied,
                last_index: stored.last_index,
            });
        }
        if rebuild_sessions && !installed {
            rebuild_session_table(
                &mut state_machine,
                &store,
                table_base,
                applied,
                stored.first_index,
            )
            .await?;
        }
        let seed = options.rng_seed.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ id.rotate_left(32)
        });
        let config = settings.core_config(seed);
        let initial = InitialState {
            hard_state: stored.hard_state,
            membership: Membership::default(),
            applied,
            snapshot: base,
        };
        let raft = Raft::new(config, store.reader(), initial)?;
        let applied_id = EntryId::new(raft.log_term(applied)?, applied);
        tracing::info!(
            node = id,
            term = stored.hard_state.term,
            last_index = stored.last_index,
            applied,
            "starting node"
        );

        let max_pending = settings
            .client
            .max_pending
            .clamp(1, Semaphore::MAX_PERMITS / 2);
        let (req_tx, req_rx) = mpsc::channel(max_pending + ADMIN_QUEUE);
        let fatal = Arc::new(Mutex::new(None));
        let settings = Arc::new(settings);
        let (leadership_tx, leadership) = watch::channel(leadership_of(&raft));
        let parts = Parts {
            id,
            settings: settings.clone(),
            store,
            transport: Arc::new(transport),
            req_rx,
            peer_rx,
            peer_tx: peer_tx.clone(),
            view: view.clone(),
            fatal: fatal.clone(),
            snapshot_dir,
            initial_snapshot,
            durable_state_machine: durable,
            leadership: leadership_tx,
            #[cfg(feature = "fault-injection")]
            bugs: options.bugs,
        };
        let runtime = Runtime::new(parts, raft, state_machine, applied_id);
        let task = tokio::spawn(
            runtime
                .run()
                .instrument(tracing::info_span!("dengine_node", node = id)),
        );
        let client = &settings.client;
        let propose_timeout = Duration::from_millis(client.propose_timeout_ms);
        let election = Duration::from_millis(settings.raft.election_timeout_ms);
        let shared = Shared {
            id,
            req_tx,
            inbox: NodeInbox::new(peer_tx, view),
            pending: crate::node::PendingLimit::new(max_pending),
            closing: AtomicBool::new(false),
            fatal,
            task: Mutex::new(Some(task)),
            propose_timeout,
            read_timeout: Duration::from_millis(client.read_timeout_ms),
            admin_timeout: propose_timeout.max(election * 4),
            leadership,
            sessions: sessions.is_some(),
            session_clock: options.session_clock,
        };
        Ok(Node::new(Arc::new(shared)))
    }
}

/// Rebuilds a durable state machine's session table at start: from the table of the newest
/// snapshot (`base`: its index and data; `None`: there is none) through the log entries after
/// it up to `applied`, the state machine's own applied index (see
/// [`SessionMachine::rebuild_table`]).
async fn rebuild_session_table<M: StateMachine, S: LogStore>(
    state_machine: &mut SessionMachine<M>,
    store: &S,
    base: Option<(LogIndex, SnapshotData)>,
    applied: LogIndex,
    first_index: LogIndex,
) -> Result<(), StartError> {
    let from = base.as_ref().map_or(0, |(index, _)| *index);
    let data = base.map(|(_, data)| data);
    state_machine
        .rebuild_table(data.as_ref(), &[])
        .map_err(StartError::SessionTable)?;
    if from >= applied {
        return Ok(());
    }
    if from + 1 < first_index {
        return Err(StartError::SessionTable(format!(
            "the log is compacted up to index {}, but the newest snapshot ends at {from}: the \
             entries between them are gone (was the snapshot file removed?)",
            first_index - 1
        )));
    }
    let mut next = from + 1;
    while next <= applied {
        let chunk = store
            .read_entries(next, applied + 1, 16 << 20)
            .await
            .map_err(|e| {
                StartError::SessionTable(format!("reading log entries {next}..={applied}: {e}"))
            })?;
        let Some(last) = chunk.last().map(|e| e.index) else {
            return Err(StartError::SessionTable(format!(
                "the log store returned no entries for {next}..={applied}"
            )));
        };
        state_machine
            .rebuild_table(None, &chunk)
            .map_err(StartError::SessionTable)?;
        next = last + 1;
    }
    tracing::info!(
        from = from + 1,
        to = applied,
        "client session table rebuilt from the snapshot and the log"
    );
    Ok(())
}

/// Whether a store was never written: no term, no entries, no snapshot.
/// Writes a [`Seed`] as the node's first snapshot: the snapshot file, then the log store
/// reset to it with the hard state of [`SEED_TERM`]. A crash in between leaves a directory
/// the next start refuses (a snapshot file with an empty store): wipe it and restore again.
async fn plant_seed<S: LogStore>(
    store: &S,
    snapshot_dir: Option<&SnapshotDir>,
    membership: Membership,
    seed: Seed,
) -> Result<(), StartError> {
    let stored = store.load_state().await?;
    if !is_empty(&stored) {
        return Err(StartError::AlreadyInitialized {
            term: stored.hard_state.term,
            last_index: stored.last_index,
        });
    }
    let Some(dir) = snapshot_dir else {
        return Err(StartError::SnapshotFile(
            "founding a cluster from a backup needs a snapshot directory \
             (NodeBuilder::snapshot_dir): the backup is kept there as the first snapshot"
                .into(),
        ));
    };
    if let Some(found) = dir
        .load_latest()
        .await
        .map_err(StartError::SnapshotFile)?
        .snapshot
    {
        return Err(StartError::SnapshotFile(format!(
            "the snapshot directory already holds a snapshot (at {}); a cluster is founded \
             from a backup only in an empty data directory",
            found.meta.last_included
        )));
    }
    if seed.index == 0 {
        return Err(StartError::SnapshotFile(
            "the backup covers no log entry (index 0); a backup must come from a state \
             machine that applied at least one entry"
                .into(),
        ));
    }
    let meta = SnapshotMeta {
        last_included: EntryId {
            term: SEED_TERM,
            index: seed.index,
        },
        membership,
    };
    dir.save(&Snapshot {
        meta: meta.clone(),
        data: seed.data,
    })
    .await
    .map_err(StartError::SnapshotFile)?;
    store.reset_to_snapshot(&meta).await?;
    let hard_state = HardState {
        term: SEED_TERM,
        vote: None,
        commit: seed.index,
    };
    store
        .persist(&PersistRequest::new(Some(hard_state), Vec::new(), true))
        .await?;
    Ok(())
}

fn is_empty(stored: &StoredState) -> bool {
    stored.hard_state == Default::default()
        && stored.last_index == 0
        && stored.snapshot_meta.is_none()
}
