//! [`KvStateMachine`]: the etcd-style store as a dengine [`StateMachine`]. Decodes commands
//! from the log, checks that their user may run them, applies them to the [`KvStore`] (or to
//! the [`AuthStore`]: `auth.rs`), publishes their events to the [`WatchHub`], and encodes the
//! etcd responses; answers queries; takes and installs snapshots.

mod alarm;
mod auth;
mod leases;
mod snapshot;

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use dengine_core::store::{
    Command as Committed, SnapshotData, SnapshotIoError, SnapshotView, StorageError,
};
use dengine_core::{LogIndex, StateMachine};
use prost::Message;

use crate::auth::access::Needs;
use crate::auth::hub::AuthHub;
use crate::auth::{AuthStore, user_of};
use crate::error::KvError;
use crate::lease_hub::LeaseHub;
use crate::proto::dengine::kv::v1::{
    Backup, Command, CommandResponse, HashResult, Query, QueryResponse, Stats, StoreSnapshot,
    WatchHistory, WatchHistoryRequest, command, command_response, query, query_response,
};
use crate::proto::etcdserverpb::{AlarmResponse, CompactionResponse};
use crate::quota;
use crate::store::{self, KvStore};
use crate::watch::WatchHub;

/// Version of the [`StoreSnapshot`] encoding written by this build. 2: with the auth state;
/// 3: without the entry's term and the cluster configuration (the runtime keeps those);
/// 4: with the MVCC history (a build that reads only up to 3 would drop it, so it refuses);
/// 5: with the counts and the `complete` mark after the keys and history (a snapshot cut short
/// is refused; it is read a field at a time, never whole); 6: with the leases (a build that
/// reads only up to 5 would drop them, and keys would never expire, so it refuses).
const SNAPSHOT_FORMAT: u32 = 6;

/// The oldest snapshot format this build reads. Format 1 has no auth state: auth off, no
/// users or roles.
const OLDEST_SNAPSHOT_FORMAT: u32 = 1;

/// What identifies the auth state, alarms and leases a durable store wrote: (auth revision,
/// auth enabled, alarms, lease table generation).
type ClusterMarker = (u64, bool, BTreeSet<(u64, i32)>, u64);

/// The replicated key-value store with etcd v3 semantics.
///
/// Commands are [`Command`] messages (see [`encode_command`]); each response is an encoded
/// [`CommandResponse`] holding the etcd response, or a [`KvError`] when the store refused the
/// command (the command then had no effect). Queries are [`Query`] messages answered with a
/// [`QueryResponse`].
///
/// Every command and query names the user it runs as (empty: none); while auth is enabled,
/// the state machine refuses what that user's permissions do not allow, when it applies the
/// command, against the auth state of that moment.
///
/// The state lives either in memory ([`new`](Self::new)): after a restart it is rebuilt from
/// the log and snapshots ([`applied_index`](StateMachine::applied_index) is the index reached
/// in memory, 0 at start); or in a file ([`open`](Self::open)): each applied batch is written
/// with its log index in one transaction, and a restart resumes from the file.
#[derive(Debug)]
pub struct KvStateMachine {
    store: KvStore,
    /// What of the auth state and alarms a durable store last wrote: (auth revision, auth
    /// enabled, alarms).
    persisted_cluster: Option<ClusterMarker>,
    /// Shared with `auth_hub` (copied on write: auth changes are rare).
    auth: Arc<AuthStore>,
    hub: WatchHub,
    auth_hub: AuthHub,
    /// Where the lease table's changes are published, for the leader's lease keeper.
    lease_hub: LeaseHub,
    /// The log index the state covers.
    applied: LogIndex,
    /// The raised alarms, as (member id, `AlarmType`): replicated through the log and kept in
    /// snapshots (`alarm.rs`).
    alarms: BTreeSet<(u64, i32)>,
    /// The events of the writes applied in the current batch, not yet published to `hub`:
    /// published once per batch (one lock, one wake-up of the watchers), and before a
    /// compaction, which drops the revisions before it from the hub (published after it,
    /// they would stay until the history's bounds dropped them).
    unpublished: Vec<(i64, Vec<crate::proto::mvccpb::Event>)>,
}

impl KvStateMachine {
    /// An empty store at revision 0 that publishes its changes to `hub`, with auth disabled
    /// and a new [`AuthHub`] (see [`auth_hub`](Self::auth_hub)).
    pub fn new(hub: WatchHub) -> Self {
        KvStateMachine::with_auth_hub(hub, AuthHub::default())
    }

    /// [`new`](Self::new), publishing its auth state and the tokens it learns to `auth_hub`.
    pub fn with_auth_hub(hub: WatchHub, auth_hub: AuthHub) -> Self {
        let auth = Arc::new(AuthStore::default());
        auth_hub.publish(auth.clone());
        KvStateMachine {
            store: KvStore::default(),
            persisted_cluster: None,
            auth,
            hub,
            auth_hub,
            lease_hub: LeaseHub::default(),
            applied: 0,
            alarms: BTreeSet::new(),
            unpublished: Vec::new(),
        }
    }

    /// The hub this state machine publishes its leases to; the member's lease services and
    /// the leader's lease keeper need it
    /// ([`NodeBackend::with_lease_hub`](crate::NodeBackend::with_lease_hub)).
    pub fn lease_hub(&self) -> &LeaseHub {
        &self.lease_hub
    }

    /// Tells the lease hub the whole lease table (after it was replaced).
    fn publish_leases(&self) {
        self.lease_hub.reset(
            self.store
                .leases()
                .iter()
                .map(|(id, l)| (id, l.ttl, l.remaining)),
        );
    }

    /// Opens the durable store in the file at `path` (created if missing) with a page cache
    /// of `cache_bytes`, publishing to `hub` and `auth_hub` as
    /// [`with_auth_hub`](Self::with_auth_hub). The state is what the file holds: the runtime resumes applying
    /// after its [`applied_index`](StateMachine::applied_index). Watchers of revisions before
    /// the restart are served from the store's history (the hub starts empty).
    ///
    /// A file of another format or with a damaged state record is refused with an error
    /// that names it.
    pub fn open(
        hub: WatchHub,
        auth_hub: AuthHub,
        path: &std::path::Path,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        let failed = |detail: String| StorageError::Backend {
            path: path.to_path_buf(),
            op: "opening the state file",
            detail,
        };
        let store::Opened {
            keyspace,
            state,
            cluster,
        } = store::DurableKeyspace::open(path, cache_bytes).map_err(failed)?;
        let mut sm = KvStateMachine::with_auth_hub(hub, auth_hub);
        let mut leases = Vec::new();
        if let Some(cluster) = cluster {
            let cluster = StoreSnapshot::decode(cluster.as_slice())
                .map_err(|e| failed(format!("undecodable auth state and alarms: {e}")))?;
            sm.auth = Arc::new(
                cluster
                    .auth
                    .map(AuthStore::from_snapshot)
                    .unwrap_or_default(),
            );
            sm.auth_hub.publish(sm.auth.clone());
            sm.alarms = cluster
                .alarms
                .iter()
                .map(|a| (a.member_id, a.alarm))
                .collect();
            leases = cluster.leases;
        }
        sm.store = KvStore::reopen(Box::new(keyspace), &state);
        sm.store
            .set_leases(leases)
            .map_err(|e| failed(format!("damaged lease table: {e}")))?;
        sm.publish_leases();
        sm.persisted_cluster = Some(sm.cluster_marker());
        sm.applied = state.applied;
        sm.hub.reset(
            state.revision,
            state.compact_revision,
            state.revision.saturating_add(1),
            Vec::new(),
        );
        sm.hub.set_usage(sm.store.size_bytes(), sm.no_space());
        Ok(sm)
    }

    /// What identifies the auth state and alarms a durable store last wrote.
    fn cluster_marker(&self) -> ClusterMarker {
        (
            self.auth.revision(),
            self.auth.is_enabled(),
            self.alarms.clone(),
            self.store.leases().generation(),
        )
    }

    /// The auth state and alarms, encoded, if they changed since a durable store last wrote
    /// them (and records that it does now).
    fn changed_cluster(&mut self) -> Option<Vec<u8>> {
        let marker = self.cluster_marker();
        if self.persisted_cluster.as_ref() == Some(&marker) {
            return None;
        }
        self.persisted_cluster = Some(marker);
        Some(
            StoreSnapshot {
                format: SNAPSHOT_FORMAT,
                auth: Some(self.auth.to_snapshot()),
                alarms: self.alarm_members(0, 0),
                leases: self.store.leases().to_states(),
                ..StoreSnapshot::default()
            }
            .encode_to_vec(),
        )
    }

    /// Ends a batch on a durable store: its writes, the applied index and (if changed) the
    /// auth state and alarms in one commit.
    fn commit_batch(&mut self, sync: bool) -> Result<(), StorageError> {
        if !self.store.data().is_durable() {
            return Ok(());
        }
        let state = self.store.durable_state(self.applied);
        let cluster = self.changed_cluster();
        let result = self
            .store
            .data_mut()
            .commit_batch(&state, cluster.as_deref(), sync);
        result.map_err(|e| {
            // Written again with the next batch, if there is one.
            self.persisted_cluster = None;
            self.store_error("committing a batch to", e)
        })
    }

    /// A storage error the store hit since the last check.
    fn check_store(&self) -> Result<(), StorageError> {
        match self.store.data().take_error() {
            Some(e) => Err(self.store_error("reading or writing", e)),
            None => Ok(()),
        }
    }

    fn store_error(&self, op: &'static str, detail: String) -> StorageError {
        StorageError::Backend {
            path: self.store.data().location(),
            op,
            detail,
        }
    }

    /// The hub this state machine publishes to.
    pub fn watch_hub(&self) -> &WatchHub {
        &self.hub
    }

    /// The hub this state machine publishes its auth state and tokens to; the member's
    /// services need it ([`kv_services`](crate::kv_services)).
    pub fn auth_hub(&self) -> &AuthHub {
        &self.auth_hub
    }

    /// Applies `command` as the next entry of the log (at the applied index + 1) and returns
    /// its encoded response: for callers that run it without Raft (the single-member
    /// [`LocalBackend`](crate::LocalBackend), tests).
    pub async fn apply_next(&mut self, command: Bytes) -> Result<Bytes, StorageError> {
        let index = self.applied + 1;
        let mut responses = self
            .apply(
                &[Committed {
                    index,
                    data: command,
                }],
                index,
            )
            .await?;
        responses.pop().ok_or_else(|| {
            StorageError::InvalidArgument("the state machine answered no command".into())
        })
    }

    /// The current store revision.
    pub fn revision(&self) -> i64 {
        self.store.revision()
    }

    /// The last compaction revision (0 if never compacted).
    pub fn compact_revision(&self) -> i64 {
        self.store.compact_revision()
    }

    /// Applies one command and returns the encoded response. Never fails: a
    /// command that cannot be decoded or is refused gets an error response, identically on
    /// every replica.
    fn apply_command(&mut self, data: &[u8]) -> CommandResponse {
        use command_response::Result as R;
        let (command, user, max_range_bytes) = match Command::decode(data) {
            Ok(Command {
                op: Some(op),
                user,
                max_range_response_bytes,
            }) => (op, user, bound(max_range_response_bytes)),
            Ok(Command { op: None, .. }) => {
                return error_response(KvError::InvalidArgument("empty command".into()));
            }
            Err(e) => {
                return error_response(KvError::InvalidArgument(format!(
                    "undecodable command: {e}"
                )));
            }
        };
        let user = user_of(&user);
        // While auth is off everything is allowed (`authorize`): the needs are not worked out.
        if self.auth.is_enabled()
            && let Some(needs) = Needs::command(&command)
            && let Err(e) = self.auth.authorize(user, &needs)
        {
            return error_response(e);
        }
        // etcd's capped applier: while the space quota's alarm is raised, nothing that adds
        // data is applied (deletes and compactions still are, to free space).
        if self.no_space() && quota::adds_data(&command) {
            return error_response(quota::no_space());
        }
        let result = match command {
            command::Op::Alarm(req) => Ok(R::Alarm(self.apply_alarm(&req))),
            command::Op::Put(req) => self.store.put(&req).map(|out| {
                self.hub_publish(out.revision, out.events);
                R::Put(out.response)
            }),
            command::Op::DeleteRange(req) => self.store.delete_range(&req).map(|out| {
                self.hub_publish(out.revision, out.events);
                R::DeleteRange(out.response)
            }),
            command::Op::Txn(req) => self.store.txn(&req, max_range_bytes).map(|out| {
                self.hub_publish(out.revision, out.events);
                R::Txn(out.response)
            }),
            command::Op::Compact(req) | command::Op::AutoCompact(req) => {
                self.store.compact(req.revision).map(|revision| {
                    self.publish_events();
                    self.hub.compact(req.revision);
                    R::Compact(CompactionResponse {
                        header: Some(store::header(revision)),
                    })
                })
            }
            command::Op::LeaseGrant(_)
            | command::Op::LeaseRevoke(_)
            | command::Op::LeaseExpire(_)
            | command::Op::LeaseCheckpoint(_) => self.apply_lease(command, user),
            auth_op => self.apply_auth(auth_op, user),
        };
        CommandResponse {
            result: Some(result.unwrap_or_else(|e| R::Error(e.to_proto()))),
        }
    }

    /// Keeps the events of a write at `revision` for [`publish_events`](Self::publish_events).
    fn hub_publish(&mut self, revision: i64, events: Vec<crate::proto::mvccpb::Event>) {
        if !events.is_empty() {
            self.unpublished.push((revision, events));
        }
    }

    /// Publishes the events kept since the last call to the watch hub. Called at the end of
    /// each batch, before its responses are returned: a client that wrote and then watches
    /// from its write's revision finds it in the hub.
    ///
    /// A batch applied while nobody followed the hub made no events (`apply` turns the
    /// store's recording off for it): the hub is only told how far the revisions went.
    fn publish_events(&mut self) {
        if !self.unpublished.is_empty() {
            self.hub.publish_all(std::mem::take(&mut self.unpublished));
        }
        if !self.store.records_events() {
            self.hub.pass(self.store.revision());
        }
    }

    fn answer(&self, request: &[u8]) -> QueryResponse {
        use query_response::Result as R;
        let result = match Query::decode(request) {
            Ok(Query {
                op: Some(query::Op::Range(req)),
                user,
                max_range_response_bytes,
            }) => self
                .auth
                .authorize(user_of(&user), &Needs::range(&req))
                .and_then(|()| self.store.range(&req, bound(max_range_response_bytes)))
                .map(R::Range),
            // Status and the membership barrier: no key is read, no permission needed (etcd
            // answers Status and MemberList to anyone).
            Ok(Query {
                op: Some(query::Op::Stats(_)),
                ..
            }) => Ok(R::Stats(Stats {
                revision: self.store.revision(),
                compact_revision: self.store.compact_revision(),
                keys: self.store.key_count(),
                size_bytes: self.store.size_bytes(),
                past_versions: self.store.past_version_count(),
            })),
            // Alarms: root only, checked by the service before it asks.
            Ok(Query {
                op: Some(query::Op::Alarms(req)),
                ..
            }) => Ok(R::Alarms(AlarmResponse {
                header: Some(store::header(self.store.revision())),
                alarms: self.alarm_members(req.member_id, req.alarm),
            })),
            // A backup (etcd's Snapshot): root only, checked by the service before it asks.
            Ok(Query {
                op: Some(query::Op::Backup(_)),
                ..
            }) => Ok(R::Backup(Backup {
                applied_index: self.applied,
                data: self.encode_snapshot(),
                revision: self.store.revision(),
            })),
            Ok(Query {
                op: Some(query::Op::WatchHistory(req)),
                user,
                ..
            }) => self
                .auth
                .authorize(user_of(&user), &Needs::read(&req.key, &req.range_end))
                .and_then(|()| self.watch_history(&req)),
            // Etcd's HashKV: root only, checked by the service before it asks.
            Ok(Query {
                op: Some(query::Op::Hash(req)),
                ..
            }) => self.store.hash(req.revision).map(|hash| {
                R::Hash(HashResult {
                    hash,
                    revision: self.store.revision(),
                    compact_revision: self.store.compact_revision(),
                })
            }),
            Ok(Query {
                op: Some(query::Op::LeaseTimeToLive(req)),
                ..
            }) => Ok(R::LeaseTimeToLive(self.lease_time_to_live(&req))),
            Ok(Query {
                op: Some(query::Op::LeaseLeases(_)),
                ..
            }) => Ok(R::LeaseLeases(self.lease_list())),
            Ok(Query {
                op: Some(op), user, ..
            }) => self.answer_auth(op, user_of(&user)),
            Ok(Query { op: None, .. }) => Err(KvError::InvalidArgument("empty query".into())),
            Err(e) => Err(KvError::InvalidArgument(format!("undecodable query: {e}"))),
        };
        QueryResponse {
            result: Some(result.unwrap_or_else(|e| R::Error(e.to_proto()))),
        }
    }

    /// The events a watcher behind the watch event history needs, from the MVCC history.
    fn watch_history(&self, req: &WatchHistoryRequest) -> Result<query_response::Result, KvError> {
        if req.from <= self.store.compact_revision() {
            return Err(KvError::Compacted);
        }
        let range = crate::key_range::KeyRange::new(&req.key, &req.range_end);
        let events = self
            .store
            .events_between(&range, req.from, req.through)
            .into_iter()
            .flat_map(|(_, events)| events)
            .collect();
        Ok(query_response::Result::WatchHistory(WatchHistory {
            events,
        }))
    }
}

impl KvStateMachine {
    /// The whole snapshot in memory (for a backup, and the runtime's [`StateMachine::snapshot`]).
    fn encode_snapshot(&self) -> Bytes {
        let estimate = usize::try_from(self.store.size_bytes()).unwrap_or(0);
        let mut out = Vec::with_capacity(estimate + 4096);
        // Writing into memory cannot fail.
        let _ = self.write_snapshot_into(&mut out);
        Bytes::from(out)
    }
}

/// A size bound as the wire carries it (0: none).
fn bound(bytes: u64) -> Option<usize> {
    (bytes != 0).then(|| usize::try_from(bytes).unwrap_or(usize::MAX))
}

fn error_response(err: KvError) -> CommandResponse {
    CommandResponse {
        result: Some(command_response::Result::Error(err.to_proto())),
    }
}

/// The encoded command response for a refusal, as the state machine would give it (for
/// refusals decided before a command reaches the log).
pub(crate) fn encode_error_response(err: &KvError) -> Bytes {
    Bytes::from(error_response(err.clone()).encode_to_vec())
}

fn corrupt_snapshot(index: LogIndex, detail: String) -> StorageError {
    StorageError::Corrupt {
        path: "<kv snapshot>".into(),
        index,
        detail,
    }
}

impl StateMachine for KvStateMachine {
    type Error = StorageError;

    async fn apply(
        &mut self,
        commands: &[Committed],
        applied_up_to: LogIndex,
    ) -> Result<Vec<Bytes>, StorageError> {
        let mut responses = Vec::with_capacity(commands.len());
        self.store
            .data_mut()
            .begin_batch()
            .map_err(|e| self.store_error("starting a batch in", e))?;
        // Events only for a hub someone follows (see `WatchHub::pass` for one who comes
        // while the batch is applied).
        self.store.record_events(self.hub.is_followed());
        for c in commands {
            // The contract: each command once, in log order. Applying one twice or out of
            // order would make this replica diverge, so refuse loudly (the runtime stops the
            // node).
            if c.index <= self.applied || c.index > applied_up_to {
                self.publish_events();
                return Err(StorageError::InvalidArgument(format!(
                    "kv state machine: command at index {} applied after index {} (in a batch \
                     up to {applied_up_to}); commands must come once, in log order",
                    c.index, self.applied
                )));
            }
            responses.push(Bytes::from(self.apply_command(&c.data).encode_to_vec()));
            self.applied = c.index;
        }
        self.applied = self.applied.max(applied_up_to);
        self.publish_events();
        self.commit_batch(false)?;
        self.hub.set_usage(self.store.size_bytes(), self.no_space());
        Ok(responses)
    }

    fn applied_index(&self) -> LogIndex {
        self.applied
    }

    fn durable(&self) -> bool {
        self.store.data().is_durable()
    }

    async fn snapshot(&mut self) -> Result<Bytes, StorageError> {
        let snapshot = self.encode_snapshot();
        self.check_store()?;
        Ok(snapshot)
    }

    async fn install_snapshot(
        &mut self,
        data: Bytes,
        applied_up_to: LogIndex,
    ) -> Result<(), StorageError> {
        self.install(&SnapshotData::from(data), applied_up_to)
    }

    async fn write_snapshot(
        &mut self,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), SnapshotIoError> {
        self.write_snapshot_into(out)?;
        self.check_store()?;
        Ok(())
    }

    async fn install_snapshot_from(
        &mut self,
        data: SnapshotData,
        applied_up_to: LogIndex,
    ) -> Result<(), SnapshotIoError> {
        Ok(self.install(&data, applied_up_to)?)
    }

    /// A durable store's snapshots are written from a read transaction on another thread,
    /// while writes go on being applied; a store in memory writes them between applies.
    fn snapshot_view(&mut self) -> Result<Option<Box<dyn SnapshotView>>, SnapshotIoError> {
        match self.frozen_view() {
            Some(view) => Ok(Some(Box::new(view?))),
            None => Ok(None),
        }
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, StorageError> {
        let answer = self.answer(&request);
        self.check_store()?;
        Ok(Bytes::from(answer.encode_to_vec()))
    }
}

/// Encodes a write command for [`KvStateMachine`] (run as no user, with no bound on the size
/// of a transaction's reads).
pub fn encode_command(op: command::Op) -> Bytes {
    Bytes::from(
        Command {
            op: Some(op),
            ..Command::default()
        }
        .encode_to_vec(),
    )
}

/// Encodes a query for [`KvStateMachine`] (run as no user, with no bound on the size of a
/// Range response).
pub fn encode_query(op: query::Op) -> Bytes {
    Bytes::from(
        Query {
            op: Some(op),
            ..Query::default()
        }
        .encode_to_vec(),
    )
}

/// Decodes a [`KvStateMachine`] command response: the etcd response, or the store's refusal.
/// An undecodable or empty response (for instance the empty response of a blank entry) is an
/// [`KvError::Internal`] naming the problem.
pub fn decode_command_response(data: &[u8]) -> Result<command_response::Result, KvError> {
    match CommandResponse::decode(data) {
        Ok(CommandResponse {
            result: Some(command_response::Result::Error(e)),
        }) => Err(KvError::from_proto(&e)),
        Ok(CommandResponse { result: Some(r) }) => Ok(r),
        Ok(CommandResponse { result: None }) => Err(KvError::Internal(
            "the state machine gave an empty response to a command".into(),
        )),
        Err(e) => Err(KvError::Internal(format!(
            "undecodable state machine response: {e}"
        ))),
    }
}

/// Decodes a [`KvStateMachine`] query response.
pub fn decode_query_response(data: &[u8]) -> Result<query_response::Result, KvError> {
    match QueryResponse::decode(data) {
        Ok(QueryResponse {
            result: Some(query_response::Result::Error(e)),
        }) => Err(KvError::from_proto(&e)),
        Ok(QueryResponse { result: Some(r) }) => Ok(r),
        Ok(QueryResponse { result: None }) => Err(KvError::Internal(
            "the state machine gave an empty response to a query".into(),
        )),
        Err(e) => Err(KvError::Internal(format!(
            "undecodable state machine response: {e}"
        ))),
    }
}
