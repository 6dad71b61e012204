//! The names of every metric the runtime records through the [`metrics`] facade, in one place
//! so that exporters, dashboards and alerts refer to the same constants.
//!
//! The runtime only records; installing a recorder (for example the Prometheus exporter) is up
//! to the application. Without a recorder every call is a no-op.
//!
//! Labels: every metric of a node is recorded without a node label (one process is usually one
//! node; an exporter adds instance labels). The labels named below are the only ones used.

/// Gauge: the node's current Raft term.
pub const TERM: &str = "dengine_term";

/// Gauge: the node's role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader.
pub const ROLE: &str = "dengine_role";

/// Gauge: the highest log index known to be committed.
pub const COMMIT_INDEX: &str = "dengine_commit_index";

/// Gauge: the highest log index applied to the state machine.
pub const APPLIED_INDEX: &str = "dengine_applied_index";

/// Gauge (leader only), label [`LABEL_PEER`]: how many entries the peer is behind the
/// leader's last index.
pub const REPLICATION_LAG_ENTRIES: &str = "dengine_replication_lag_entries";

/// Counter: how often this node saw the leader change (including to "no leader").
pub const LEADER_CHANGES_TOTAL: &str = "dengine_leader_changes_total";

/// Counter, label [`LABEL_RESULT`] (one of the `RESULT_*` values): client proposals by outcome.
pub const PROPOSALS_TOTAL: &str = "dengine_proposals_total";

/// Counter: snapshots this node streamed to a peer successfully.
pub const SNAPSHOTS_SENT_TOTAL: &str = "dengine_snapshots_sent_total";

/// Counter: snapshots from a leader this node installed.
pub const SNAPSHOTS_INSTALLED_TOTAL: &str = "dengine_snapshots_installed_total";

/// Counter, label [`LABEL_REASON`]: peer messages dropped at this node's inbox
/// ([`REASON_INBOX_FULL`], [`REASON_SHUTTING_DOWN`]) and, by the gRPC transport, on the way
/// out (`queue_full`: the peer's send queue was full; `unreachable`: the peer was down;
/// `unknown_peer`: no address known).
pub const MESSAGES_DROPPED_TOTAL: &str = "dengine_messages_dropped_total";

/// Counter: peer messages this node's core refused (out-of-range terms or indexes, snapshot
/// metadata without data, misrouted messages).
pub const PEER_MESSAGES_REFUSED_TOTAL: &str = "dengine_peer_messages_refused_total";

/// Counter (leader only): followers found to have lost log entries they had acknowledged.
pub const PEER_REGRESSIONS_TOTAL: &str = "dengine_peer_regressions_total";

/// Counter, label `kind` (`message`, `stream`, `snapshot`, `probe`, `request`): peer requests
/// the gRPC transport refused (wrong cluster or recipient, failed authentication, a removed
/// sender, malformed). Recorded by `dengine-net-grpc`.
pub const PEER_REFUSED_TOTAL: &str = "dengine_peer_refused_total";

/// Counter, labels `listener` (`peer`, `client`, `admin`) and `reason`
/// (`too_many_connections`, `handshake_timeout`, `tls_failed`, `accept_failed`): connections
/// a listener closed or could not accept. Recorded by `dengine-net-grpc`.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "dengine_connections_refused_total";

/// Counter: members that came back under their id with a new incarnation (new storage).
/// Recorded by `dengine-net-grpc`.
pub const PEER_INCARNATION_CHANGES_TOTAL: &str = "dengine_peer_incarnation_changes_total";

/// Histogram (seconds): from a client's `propose` call to its response (after apply).
pub const PROPOSAL_LATENCY_SECONDS: &str = "dengine_proposal_latency_seconds";

/// Histogram (seconds): one `LogStore::persist` call, including its fsync.
pub const APPEND_LATENCY_SECONDS: &str = "dengine_append_latency_seconds";

/// Histogram: entries written by one `LogStore::persist` call (the group-commit batch).
pub const APPEND_BATCH_ENTRIES: &str = "dengine_append_batch_entries";

/// Histogram: entries handed to one `StateMachine::apply` call.
pub const APPLY_BATCH_ENTRIES: &str = "dengine_apply_batch_entries";

/// Label of [`REPLICATION_LAG_ENTRIES`]: the peer's node id.
pub const LABEL_PEER: &str = "peer";

/// Label of [`PROPOSALS_TOTAL`]: the outcome.
pub const LABEL_RESULT: &str = "result";

/// Label of [`MESSAGES_DROPPED_TOTAL`]: why the message was dropped.
pub const LABEL_REASON: &str = "reason";

/// [`LABEL_RESULT`]: applied, response returned.
pub const RESULT_OK: &str = "ok";
/// [`LABEL_RESULT`]: refused because this node does not lead (or leadership moved).
pub const RESULT_NOT_LEADER: &str = "not_leader";
/// [`LABEL_RESULT`]: no outcome within the timeout.
pub const RESULT_TIMEOUT: &str = "timeout";
/// [`LABEL_RESULT`]: refused because too many requests were pending or too much was
/// uncommitted.
pub const RESULT_BUSY: &str = "busy";
/// [`LABEL_RESULT`]: refused because the command was too large.
pub const RESULT_TOO_LARGE: &str = "too_large";
/// [`LABEL_RESULT`]: refused or abandoned because the node is shutting down or stopped.
pub const RESULT_SHUTTING_DOWN: &str = "shutting_down";

/// [`LABEL_REASON`]: the node's inbound queue was full.
pub const REASON_INBOX_FULL: &str = "inbox_full";
/// [`LABEL_REASON`]: the node was shutting down.
pub const REASON_SHUTTING_DOWN: &str = "shutting_down";
