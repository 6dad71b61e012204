//! The Raft state machine: state, role transitions, time, and the message dispatcher.
//!
//! Reading order: this file holds the state and the rules every message passes through
//! (term comparison, §5.1); `election.rs` holds elections, pre-vote and leader stickiness
//! (§5.2, §5.4.1, thesis §9.6, §4.2.3); `replication.rs` holds AppendEntries on both sides and
//! commitment (§5.3, §5.4.2); `read.rs` holds ReadIndex and lease reads (thesis §6.4);
//! `ready.rs` holds the output bundle and persistence/apply acknowledgements.

#[cfg(feature = "fault-injection")]
mod bugs;
mod election;
mod errors;
mod membership;
mod parts;
mod read;
mod ready;
mod replication;
mod snapshot;
mod transfer;

pub use errors::{MembershipChange, MembershipError, SnapshotError, TransferError};

use std::collections::{BTreeMap, VecDeque};

#[cfg(feature = "fault-injection")]
pub use bugs::InjectedBug;

/// Whether a deliberate bug is switched on; always `false` without `fault-injection`.
macro_rules! bug {
    ($raft:expr, $bug:ident) => {{
        #[cfg(feature = "fault-injection")]
        {
            $raft
                .injected_bugs
                .contains(&$crate::raft::InjectedBug::$bug)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            false
        }
    }};
}
pub(crate) use bug;

use self::parts::{ReadQueue, Transfer};
use crate::config::{Config, ConfigError};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody, VoteResponse};
use crate::progress::{Progress, ReplicationState};
use crate::ready::{FailedRead, ReadState};
use crate::rng::Rng;
use crate::store::{LogReader, StorageError};
use crate::types::{EntryId, HardState, LogIndex, Membership, NodeId, Role, SoftState, Term};

/// What a node restarts from: the durable state besides the log itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitialState {
    /// The last saved hard state (default for a brand-new node).
    pub hard_state: HardState,
    /// The cluster configuration (for a new cluster, the initial members on every node).
    pub membership: Membership,
    /// The index the state machine has applied durably (0 for a fresh state machine).
    pub applied: LogIndex,
    /// The newest snapshot, if the node has one; its configuration then takes the place of
    /// `membership` as the base that configuration entries in the log build on.
    pub snapshot: Option<crate::types::SnapshotMeta>,
}

/// Why an input message was refused without being processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The message is addressed to another node (a routing bug in the runtime or transport).
    #[error("message addressed to node {to} was delivered to node {me}")]
    WrongRecipient {
        /// The message's recipient.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The message claims to come from this node itself.
    #[error("message claims to come from this node ({me})")]
    FromSelf {
        /// This node.
        me: NodeId,
    },
    /// A term or index in the message is one no legitimate peer sends (see
    /// [`Message::out_of_range`]): beyond [`MAX_TERM`](crate::MAX_TERM) by more than one
    /// election, beyond [`MAX_INDEX`](crate::MAX_INDEX), or a term inside the message above
    /// the message's own term.
    #[error(
        "message from node {from} refused: its {field} {value} is out of range (terms beyond \
         2^62 only one election at a time, indexes up to 2^62, no term above the message's \
         own); the sender is broken or forged"
    )]
    OutOfRange {
        /// The claimed sender.
        from: NodeId,
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// A public snapshot of the leader's view of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// Highest index known replicated on the peer.
    pub match_index: LogIndex,
    /// Next index the leader will send.
    pub next_index: LogIndex,
    /// Probe or replicate.
    pub state: ReplicationState,
    /// Unacknowledged append messages.
    pub inflight_messages: usize,
}

/// One Raft node's protocol state machine. No I/O: feed it inputs ([`tick`](Raft::tick),
/// [`step`](Raft::step), [`propose`](Raft::propose), [`read_index`](Raft::read_index)), then
/// take a [`Ready`](crate::Ready) and carry it out as documented there.
pub struct Raft<L> {
    cfg: Config,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog<L>,
    membership: Membership,
    /// Configuration entries in the log from the newest committed one on, as (index,
    /// configuration); the first may be the base configuration at index 0 or the snapshot.
    configs: Vec<(LogIndex, Membership)>,
    /// A leadership transfer in progress (leader only).
    transfer: Option<Transfer>,
    /// The newest snapshot (created here or installed), sent to followers that need
    /// compacted entries.
    snapshot: Option<crate::types::SnapshotMeta>,
    /// A snapshot from the leader that the runtime is installing.
    installing: Option<crate::types::SnapshotMeta>,
    /// Whether `installing` has been handed out in a `Ready`.
    install_reported: bool,
    /// The log may be purged up to here (reported in the next `Ready`).
    compact_to: Option<LogIndex>,
    /// Lease reads are not served before this tick (a transfer may elect someone else while
    /// followers still honour our lease).
    lease_blocked_until: u64,

    /// Ticks since this node was created; the core's only clock.
    now: u64,
    /// This node restarted with state (term > 0): until one election timeout has passed it
    /// behaves as if it had just heard from a leader (see `in_leader_lease`).
    restarted: bool,
    /// Ticks since the last contact with a leader (follower), the start of the election
    /// (candidate), or the last CheckQuorum round (leader).
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    randomized_election_timeout: u64,
    rng: Rng,

    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, bool>,

    // Leader state.
    progress: BTreeMap<NodeId, Progress>,
    /// Bytes of proposals appended in this term and not yet committed: (index, bytes).
    uncommitted: VecDeque<(LogIndex, u64)>,
    uncommitted_bytes: u64,
    /// New entries or a new commit index must be sent to followers at the end of the turn.
    broadcast_pending: bool,
    reads: ReadQueue,

    // Output state.
    messages: Vec<Message>,
    /// Responses held until the write with that id is durable.
    gated: VecDeque<(u64, Message)>,
    next_write_id: u64,
    /// Id of the last emitted write that must be synced.
    last_sync_write: u64,
    /// Id of the last emitted write that changed the term or vote.
    last_term_write: u64,
    /// The last entry handed to the runtime in any write so far (a later write without
    /// entries still covers it when acknowledged).
    last_written_entry: Option<EntryId>,
    acked_write: u64,
    /// Hard state as last handed to the runtime.
    written_hard_state: HardState,
    reported_soft_state: SoftState,
    read_states: Vec<ReadState>,
    failed_reads: Vec<FailedRead>,
    storage_errors: Vec<StorageError>,
    regressions: Vec<crate::ready::PeerRegression>,
    #[cfg(feature = "fault-injection")]
    injected_bugs: Vec<InjectedBug>,
}

impl<L: LogReader> Raft<L> {
    /// Creates a node from its configuration, its durable log and the rest of its durable
    /// state. For a brand-new cluster, give every initial member the same
    /// [`InitialState::membership`] and an empty log; a node that will be added later starts
    /// with an empty membership and learns it from the leader.
    pub fn new(config: Config, log: L, initial: InitialState) -> Result<Self, ConfigError> {
        config.validate()?;
        let hs = initial.hard_state;
        let log = RaftLog::new(log, hs.commit, initial.applied);
        let rng = Rng::new(config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let soft = SoftState {
            role: Role::Follower,
            term: hs.term,
            leader: None,
        };
        let mut raft = Raft {
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: None,
            reads: ReadQueue::default(),
            configs: vec![match &initial.snapshot {
                Some(snap) => (snap.last_included.index, snap.membership.clone()),
                None => (0, initial.membership.clone()),
            }],
            snapshot: initial.snapshot.clone(),
            installing: None,
            install_reported: false,
            compact_to: None,
            transfer: None,
            lease_blocked_until: 0,
            membership: match initial.snapshot {
                Some(snap) => snap.membership,
                None => initial.membership,
            },
            now: 0,
            restarted: hs.term > 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            rng,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            uncommitted: VecDeque::new(),
            uncommitted_bytes: 0,
            broadcast_pending: false,
            messages: Vec::new(),
            gated: VecDeque::new(),
            next_write_id: 1,
            last_sync_write: 0,
            last_term_write: 0,
            last_written_entry: None,
            acked_write: 0,
            written_hard_state: HardState {
                commit: log.committed,
                ..hs
            },
            reported_soft_state: soft,
            read_states: Vec::new(),
            failed_reads: Vec::new(),
            storage_errors: Vec::new(),
            regressions: Vec::new(),
            #[cfg(feature = "fault-injection")]
            injected_bugs: Vec::new(),
            log,
            cfg: config,
        };
        raft.reset_election_timer();
        raft.recover_configs();
        Ok(raft)
    }

    // ----- accessors -------------------------------------------------------------------------

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current term.
    pub fn term(&self) -> Term {
        self.term
    }
    /// Vote cast in the current term.
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The leader this node knows of in the current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    /// Highest index known committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }
    /// Highest index reported applied by the runtime.
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }
    /// How many lease reads (its own and those followers forwarded) this node confirmed by
    /// its lease alone, with no heartbeat round, since it was created (thesis §6.4.1); the
    /// others fell back to ReadIndex. Counts over every term it led.
    pub fn lease_reads_served(&self) -> u64 {
        self.reads.served_by_lease
    }
    /// Highest index known durable on this node.
    pub fn persisted_index(&self) -> LogIndex {
        self.log.persisted
    }
    /// Id of the last entry in the log (durable or not).
    pub fn last_log_id(&self) -> EntryId {
        self.log.last_id()
    }
    /// Index of the first entry still in the log (the one after the compaction point).
    pub fn first_log_index(&self) -> LogIndex {
        self.log.first_index()
    }
    /// Term of the entry at `index`, from the unstable tail or storage.
    pub fn log_term(&self, index: LogIndex) -> Result<Term, StorageError> {
        self.log.term(index)
    }
    /// Current term, vote and commit index.
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
    /// Current role, term and leader.
    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            term: self.term,
            leader: self.leader,
        }
    }
    /// Current cluster configuration.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The durable log view.
    pub fn log_reader(&self) -> &L {
        &self.log.store
    }
    /// Mutable access to the durable log view, for runtimes whose reader is also the writer
    /// and needs `&mut` to write (the in-memory `MemoryStore` writes through `&self` and does
    /// not). Writes must follow the ready contract.
    pub fn log_reader_mut(&mut self) -> &mut L {
        &mut self.log.store
    }
    /// The leader's view of `peer`, if this node leads and `peer` is a member.
    pub fn peer_progress(&self, peer: NodeId) -> Option<PeerProgress> {
        if self.role != Role::Leader || peer == self.id() {
            return None;
        }
        self.progress.get(&peer).map(|p| PeerProgress {
            match_index: p.match_index,
            next_index: p.next_index,
            state: p.state,
            inflight_messages: p.inflights.len(),
        })
    }
    /// Whether this leader has committed an entry of its own term, which it must before it
    /// serves reads (thesis §6.4).
    pub fn committed_in_current_term(&self) -> bool {
        self.log
            .term(self.log.committed)
            .is_ok_and(|t| t == self.term)
    }

    // ----- time --------------------------------------------------------------------------------

    /// Advances logical time by one tick: drives election timeouts, heartbeats and
    /// CheckQuorum.
    pub fn tick(&mut self) {
        self.now += 1;
        self.election_elapsed += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else if self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            if self.is_promotable() {
                self.start_election(false);
            } else {
                self.reset_election_timer();
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.tick_transfer();
        if self.election_elapsed >= self.cfg.election_timeout_ticks {
            self.election_elapsed = 0;
            // CheckQuorum (thesis §6.2): a leader that has not heard from a majority within an
            // election timeout steps down, so clients stop waiting on it and lease reads end.
            if self.cfg.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.term, None);
                return;
            }
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_interval_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    fn quorum_recently_active(&mut self) -> bool {
        let me = self.id();
        let active = self.quorum_value(|v| {
            u64::from(v == me || self.progress.get(&v).is_some_and(|p| p.recent_active))
        });
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        active == 1
    }

    // ----- messages ----------------------------------------------------------------------------

    /// Handles a message from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), StepError> {
        if msg.to != self.id() {
            return Err(StepError::WrongRecipient {
                to: msg.to,
                me: self.id(),
            });
        }
        if msg.from == self.id() {
            return Err(StepError::FromSelf { me: self.id() });
        }
        if let Some((field, value)) = msg.out_of_range(self.term) {
            return Err(StepError::OutOfRange {
                from: msg.from,
                field,
                value,
            });
        }
        self.step_inner(msg);
        Ok(())
    }

    /// The rules every message passes through before its own handler (§5.1: terms act as a
    /// logical clock; a higher term makes a node follower, a lower one marks a stale message).
    pub(super) fn step_inner(&mut self, msg: Message) {
        if msg.term > self.term {
            match &msg.body {
                MessageBody::VoteRequest(req) => {
                    // A transfer (thesis §3.10) only ever elects a voter of the configuration;
                    // a "transfer" vote from anyone else gets no exemption.
                    let transfer = req.leader_transfer && self.membership.is_voter(msg.from);
                    if self.in_leader_lease() && !transfer {
                        // Leader stickiness (thesis §4.2.3): we heard from a live leader within
                        // the minimum election timeout, so this candidate is disrupting a
                        // working cluster. Ignore it without adopting its term. This holds for
                        // real votes as for pre-votes, and on the leader itself.
                        return;
                    }
                    if !req.pre_vote {
                        self.become_follower(msg.term, None);
                    }
                }
                // A granted pre-vote carries the term the candidate proposes, not one anybody
                // is in (thesis §9.6): it must not change our term.
                MessageBody::VoteResponse(VoteResponse {
                    pre_vote: true,
                    granted: true,
                }) => {}
                MessageBody::Append(_) | MessageBody::Heartbeat(_) => {
                    self.become_follower(msg.term, Some(msg.from));
                }
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            self.step_stale(msg);
            return;
        }

        match msg.body {
            MessageBody::VoteRequest(req) => self.handle_vote_request(msg.from, msg.term, req),
            MessageBody::VoteResponse(resp) => self.handle_vote_response(msg.from, msg.term, resp),
            MessageBody::Append(req) => self.handle_append(msg.from, req),
            MessageBody::AppendResponse(resp) => self.handle_append_response(msg.from, resp),
            MessageBody::Heartbeat(hb) => self.handle_heartbeat(msg.from, hb),
            MessageBody::HeartbeatResponse(resp) => self.handle_heartbeat_response(msg.from, resp),
            MessageBody::ReadIndexRequest(req) => self.handle_read_index_request(msg.from, req),
            MessageBody::ReadIndexResponse(resp) => self.handle_read_index_response(msg.from, resp),
            MessageBody::TimeoutNow => self.handle_timeout_now(msg.from),
            MessageBody::InstallSnapshot(meta) => self.handle_install_snapshot(msg.from, meta),
        }
    }

    /// A message from an older term.
    fn step_stale(&mut self, msg: Message) {
        match msg.body {
            // A leader of an older term is still sending. §5.1 / Figure 2: reject it with our
            // term, so it steps down. Needed for liveness with pre-vote or check-quorum: a
            // node whose term rose while it was partitioned could otherwise wait forever for
            // a leader that never learns it is stale (and without them it costs one message).
            MessageBody::Append(_) | MessageBody::Heartbeat(_) => {
                self.send(
                    msg.from,
                    MessageBody::HeartbeatResponse(crate::message::HeartbeatResponse {
                        round: 0,
                        log_end: None,
                    }),
                );
            }
            // Reject a stale pre-vote explicitly, with our term, so the pre-candidate learns
            // the term and can catch up rather than retrying forever (thesis §9.6).
            MessageBody::VoteRequest(req) if req.pre_vote => {
                self.send(
                    msg.from,
                    MessageBody::VoteResponse(VoteResponse {
                        pre_vote: true,
                        granted: false,
                    }),
                );
            }
            // Everything else from an old term is obsolete (§5.1).
            _ => {}
        }
    }

    // ----- role transitions ------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.cfg.election_timeout_ticks;
        // §5.2: randomized timeouts in [base, 2*base) make split votes rare.
        self.randomized_election_timeout = self.rng.range(base, 2 * base);
    }

    /// Enters `term` (keeping the vote if the term is unchanged) knowing `leader`.
    fn reset_for_term(&mut self, term: Term, leader: Option<NodeId>) {
        if term != self.term {
            self.term = term;
            self.vote = None;
        }
        let leader_changed = leader != self.leader;
        self.leader = leader;
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.reset_election_timer();
        if self.role == Role::Leader {
            self.stop_leading();
        }
        if leader_changed {
            // Reads forwarded to the previous leader will not be answered by it any more.
            self.fail_forwarded_reads();
        }
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        self.reset_for_term(term, leader);
        self.role = Role::Follower;
    }

    fn stop_leading(&mut self) {
        self.transfer = None;
        self.progress.clear();
        self.uncommitted.clear();
        self.uncommitted_bytes = 0;
        self.broadcast_pending = false;
        let leader = self.leader.filter(|&l| l != self.id());
        self.fail_pending_reads(leader);
    }

    /// Whether this node may campaign: it is a voter of the current configuration.
    fn is_promotable(&self) -> bool {
        self.membership.is_voter(self.id())
    }

    /// Queues a message. Responses wait until every write issued so far is durable: Figure 2
    /// requires persisting currentTerm, votedFor and log entries before answering an RPC.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        let msg = Message {
            from: self.id(),
            to,
            term: self.term,
            body,
        };
        self.send_message(msg);
    }

    fn send_message(&mut self, msg: Message) {
        let skip_gate = match &msg.body {
            MessageBody::VoteResponse(_) => bug!(self, VoteBeforePersist),
            MessageBody::AppendResponse(_) => bug!(self, AckBeforePersist),
            _ => false,
        };
        if msg.body.is_response() && !skip_gate {
            // Vote and append answers report the log and vote: they wait for every write so
            // far. Heartbeat and read answers report only our term: they wait for that alone,
            // so a slow disk does not delay leadership confirmation.
            let term_only = matches!(
                msg.body,
                MessageBody::HeartbeatResponse(_) | MessageBody::ReadIndexResponse(_)
            );
            let gate = if term_only {
                if self.has_unsynced_term() {
                    self.next_write_id
                } else {
                    self.last_term_write
                }
            } else if self.has_unsynced_state() {
                self.next_write_id
            } else {
                self.last_sync_write
            };
            if gate > self.acked_write {
                self.gated.push_back((gate, msg));
                return;
            }
        }
        if msg.to == self.id() {
            // Only gated self-votes are addressed to ourselves, and they never get here
            // ungated: a candidate always has its new term and vote to persist.
            self.step_inner(msg);
        } else {
            self.messages.push(msg);
        }
    }

    /// Whether the term, vote or log changed since the last write handed to the runtime.
    fn has_unsynced_state(&self) -> bool {
        self.has_unsynced_term() || self.log.has_unwritten()
    }

    /// Whether the term or vote changed since the last write handed to the runtime.
    fn has_unsynced_term(&self) -> bool {
        self.term != self.written_hard_state.term || self.vote != self.written_hard_state.vote
    }

    fn new_progress(&self) -> Progress {
        Progress::new(self.log.last_index() + 1, self.cfg.max_inflight_messages)
    }

    fn voters_contain(&self, id: NodeId) -> bool {
        self.membership.is_voter(id)
    }

    /// The largest value a quorum of the current (possibly joint) configuration has reached.
    fn quorum_value(&self, value: impl Fn(NodeId) -> u64) -> u64 {
        let m = &self.membership;
        if bug!(self, JointQuorumIncomingOnly) {
            return crate::quorum::quorum_value(&m.voters, value);
        }
        crate::quorum::joint_quorum_value(&m.voters, &m.voters_outgoing, value)
    }

    /// Re-reads configuration entries from the log after a restart: the newest one in the
    /// log is the configuration in effect (thesis §4.1), committed or not.
    fn recover_configs(&mut self) {
        let mut next = self.log.first_index();
        let end = self.log.last_index() + 1;
        while next < end {
            match self.log.entries(next, end, 4 << 20) {
                Ok(batch) if !batch.is_empty() => {
                    next = batch.last().map_or(end, |e| e.index + 1);
                    self.track_config_entries(&batch);
                }
                Ok(_) => break,
                Err(e) => {
                    self.storage_errors.push(e);
                    break;
                }
            }
        }
        self.compact_configs();
    }
}

#[cfg(feature = "fault-injection")]
impl<L> Raft<L> {
    /// Makes this node misbehave in the given way. For the simulator's bug-catching tests only.
    pub fn inject_bug(&mut self, bug: InjectedBug) {
        if !self.injected_bugs.contains(&bug) {
            self.injected_bugs.push(bug);
        }
    }
}
