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

/// Gauge: 1 while this node knows a leader (itself included), 0 during an election or when
/// cut off; etcd's `etcd_server_has_leader`.
pub const HAS_LEADER: &str = "dengine_has_leader";

/// Gauge: 1 while this node leads, 0 otherwise; etcd's `etcd_server_is_leader`.
pub const IS_LEADER: &str = "dengine_is_leader";

/// Gauge, one series per role (label [`LABEL_ROLE`]): 1 for the node's current role, 0 for the
/// others.
pub const ROLE_STATE: &str = "dengine_role_state";

/// Gauge: proposals appended to the log that wait for their entries to commit (etcd's
/// `etcd_server_proposals_pending`).
pub const PENDING_PROPOSALS: &str = "dengine_pending_proposals";

/// Gauge: entries in the log after its compaction point (last index − first index + 1).
pub const LOG_ENTRIES: &str = "dengine_log_entries";

/// Gauge: the highest log index known to be committed.
pub const COMMIT_INDEX: &str = "dengine_commit_index";

/// Gauge: the highest log index applied to the state machine.
pub const APPLIED_INDEX: &str = "dengine_applied_index";

/// Gauge (leader only), label [`LABEL_PEER`]: how many entries the peer is behind the
/// leader's last index.
pub const REPLICATION_LAG_ENTRIES: &str = "dengine_replication_lag_entries";

/// Gauge, label [`LABEL_PEER`], on the leader: the round-trip time of the last heartbeat a
/// peer answered, in seconds.
pub const PEER_ROUND_TRIP_SECONDS: &str = "dengine_peer_round_trip_seconds";

/// Gauge: bytes of the node's data directory on disk (log, snapshots, identity), measured
/// every few seconds by `dengine::start`.
pub const DATA_DIR_BYTES: &str = "dengine_data_dir_bytes";

/// Counter: how often this node saw the leader change (including to "no leader").
pub const LEADER_CHANGES_TOTAL: &str = "dengine_leader_changes_total";

/// Counter, label [`LABEL_RESULT`] (one of the `RESULT_*` values): client proposals by outcome.
pub const PROPOSALS_TOTAL: &str = "dengine_proposals_total";

/// Counter (the leader's): lease reads confirmed by the leader's lease alone, with no heartbeat
/// round (thesis §6.4.1), its own and those forwarded by followers; lease reads that found no
/// valid lease fell back to ReadIndex and are not counted.
pub const LEASE_READS_TOTAL: &str = "dengine_lease_reads_total";

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

/// Histogram (seconds): on the leader, from a proposal entering its log to its commit (the
/// leader's own write and a majority's acknowledgements). With
/// [`PROPOSAL_LATENCY_SECONDS`] and [`APPEND_LATENCY_SECONDS`] it splits a write's latency
/// into its stages.
pub const COMMIT_LATENCY_SECONDS: &str = "dengine_commit_latency_seconds";

/// Histogram (seconds): one `LogStore::persist` call, including its fsync.
pub const APPEND_LATENCY_SECONDS: &str = "dengine_append_latency_seconds";

/// Counter: `LogStore::persist` calls that made their write durable (a sync), i.e. the
/// syncs the runtime asked for; `storage.fsync = false` asks for none. (A store may sync more
/// than once per call: a redb commit does two.)
pub const LOG_SYNCS_TOTAL: &str = "dengine_log_syncs_total";

/// Histogram: entries written by one `LogStore::persist` call (the group-commit batch).
pub const APPEND_BATCH_ENTRIES: &str = "dengine_append_batch_entries";

/// Histogram: entries handed to one `StateMachine::apply` call.
pub const APPLY_BATCH_ENTRIES: &str = "dengine_apply_batch_entries";

/// Label of [`REPLICATION_LAG_ENTRIES`]: the peer's node id.
pub const LABEL_PEER: &str = "peer";

/// Label of [`ROLE_STATE`]: `follower`, `pre-candidate`, `candidate` or `leader`.
pub const LABEL_ROLE: &str = "role";

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

use metrics::Unit;

/// What kind of instrument a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A monotonically increasing count; Prometheus name ends in `_total`.
    Counter,
    /// A distribution, exported as `_bucket`, `_sum` and `_count` series.
    Histogram,
}

/// One metric the node exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricInfo {
    /// The Prometheus name.
    pub name: &'static str,
    /// The instrument.
    pub kind: MetricKind,
    /// Its labels (empty for none).
    pub labels: &'static [&'static str],
    /// The unit, when it has one.
    pub unit: Option<Unit>,
    /// What it measures (exported as the `# HELP` text).
    pub help: &'static str,
}

/// Every metric the node exports. `dengine::observability::install` registers their
/// descriptions and histogram buckets; `docs/observability.md` and
/// `docs/grafana-dashboard.json` are checked against this list by the unit tests.
pub const METRICS: &[MetricInfo] = &[
    MetricInfo {
        name: TERM,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "The node's current Raft term.",
    },
    MetricInfo {
        name: ROLE,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "The node's role: 0 follower, 1 pre-candidate, 2 candidate, 3 leader.",
    },
    MetricInfo {
        name: HAS_LEADER,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "1 while this node knows a leader (itself included), else 0.",
    },
    MetricInfo {
        name: IS_LEADER,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "1 while this node is the leader, else 0.",
    },
    MetricInfo {
        name: ROLE_STATE,
        kind: MetricKind::Gauge,
        labels: &[LABEL_ROLE],
        unit: None,
        help: "1 for the node's current role (label role), 0 for the other roles.",
    },
    MetricInfo {
        name: PENDING_PROPOSALS,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "Proposals appended to the log that wait for their entries to commit.",
    },
    MetricInfo {
        name: LOG_ENTRIES,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "Entries in the log after its compaction point.",
    },
    MetricInfo {
        name: COMMIT_INDEX,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "The highest log index known to be committed.",
    },
    MetricInfo {
        name: APPLIED_INDEX,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: None,
        help: "The highest log index applied to the state machine.",
    },
    MetricInfo {
        name: REPLICATION_LAG_ENTRIES,
        kind: MetricKind::Gauge,
        labels: &[LABEL_PEER],
        unit: None,
        help: "On the leader: how many entries each peer is behind the leader's last index.",
    },
    MetricInfo {
        name: PEER_ROUND_TRIP_SECONDS,
        kind: MetricKind::Gauge,
        labels: &[LABEL_PEER],
        unit: Some(Unit::Seconds),
        help: "On the leader: round-trip time of each peer's last answered heartbeat.",
    },
    MetricInfo {
        name: DATA_DIR_BYTES,
        kind: MetricKind::Gauge,
        labels: &[],
        unit: Some(Unit::Bytes),
        help: "Bytes of the node's data directory on disk (log, snapshots, identity).",
    },
    MetricInfo {
        name: LEADER_CHANGES_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Times this node saw the leader change (including to no leader).",
    },
    MetricInfo {
        name: PROPOSALS_TOTAL,
        kind: MetricKind::Counter,
        labels: &[LABEL_RESULT],
        unit: None,
        help: "Client proposals by outcome (ok, not_leader, timeout, busy, too_large, \
               shutting_down).",
    },
    MetricInfo {
        name: LEASE_READS_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Lease reads the leader confirmed by its lease alone, with no heartbeat round.",
    },
    MetricInfo {
        name: SNAPSHOTS_SENT_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Snapshots this node streamed to a peer successfully.",
    },
    MetricInfo {
        name: SNAPSHOTS_INSTALLED_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Snapshots received from a leader and installed by this node.",
    },
    MetricInfo {
        name: MESSAGES_DROPPED_TOTAL,
        kind: MetricKind::Counter,
        labels: &[LABEL_REASON],
        unit: None,
        help: "Peer messages dropped by this node, by reason (inbox_full, shutting_down, queue_full, unreachable, unknown_peer).",
    },
    MetricInfo {
        name: PEER_MESSAGES_REFUSED_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Peer messages this node's core refused (out-of-range terms or indexes, \
               misrouted, snapshot metadata without data).",
    },
    MetricInfo {
        name: PEER_REFUSED_TOTAL,
        kind: MetricKind::Counter,
        labels: &["kind"],
        unit: None,
        help: "Peer requests the transport refused (authentication, removed sender, wrong \
               cluster or recipient, malformed), by kind (message, stream, snapshot, probe, \
               request).",
    },
    MetricInfo {
        name: CONNECTIONS_REFUSED_TOTAL,
        kind: MetricKind::Counter,
        labels: &["listener", "reason"],
        unit: None,
        help: "Connections a listener closed or could not accept, by listener (peer, client, \
               admin) and reason (too_many_connections, handshake_timeout, tls_failed, \
               accept_failed).",
    },
    MetricInfo {
        name: PEER_REGRESSIONS_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "On the leader: followers found to have lost log entries they had acknowledged.",
    },
    MetricInfo {
        name: PEER_INCARNATION_CHANGES_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Members that came back under their id with a new incarnation (new storage).",
    },
    MetricInfo {
        name: PROPOSAL_LATENCY_SECONDS,
        kind: MetricKind::Histogram,
        labels: &[],
        unit: Some(Unit::Seconds),
        help: "Time from a client's propose call to its response (after apply).",
    },
    MetricInfo {
        name: COMMIT_LATENCY_SECONDS,
        kind: MetricKind::Histogram,
        labels: &[],
        unit: Some(Unit::Seconds),
        help: "On the leader: time from a proposal entering its log to its commit.",
    },
    MetricInfo {
        name: APPEND_LATENCY_SECONDS,
        kind: MetricKind::Histogram,
        labels: &[],
        unit: Some(Unit::Seconds),
        help: "Duration of one log-store persist call, including its fsync.",
    },
    MetricInfo {
        name: LOG_SYNCS_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        unit: None,
        help: "Log-store persist calls that synced their write (the syncs the runtime asked for).",
    },
    MetricInfo {
        name: APPEND_BATCH_ENTRIES,
        kind: MetricKind::Histogram,
        labels: &[],
        unit: Some(Unit::Count),
        help: "Entries written by one log-store persist call (the group-commit batch).",
    },
    MetricInfo {
        name: APPLY_BATCH_ENTRIES,
        kind: MetricKind::Histogram,
        labels: &[],
        unit: Some(Unit::Count),
        help: "Entries handed to one state-machine apply call.",
    },
];

/// Histogram buckets of the `*_seconds` metrics: 50 µs to 10 s.
pub const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets of the `*_batch_entries` metrics: powers of two, 1 to 4096.
pub const BATCH_BUCKETS_ENTRIES: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn metric_names() -> BTreeSet<&'static str> {
        METRICS.iter().map(|m| m.name).collect()
    }

    /// Names a PromQL expression uses that look like dengine metrics, with the histogram
    /// suffixes stripped.
    fn referenced_metrics(expr: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("dengine_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let mut name = &tail[..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                if let Some(base) = name.strip_suffix(suffix)
                    && METRICS
                        .iter()
                        .any(|m| m.name == base && m.kind == MetricKind::Histogram)
                {
                    name = base;
                }
            }
            out.push(name.to_owned());
            rest = &tail[end..];
        }
        out
    }

    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "expr"
                        && let Some(s) = v.as_str()
                    {
                        out.push(s.to_owned());
                    }
                    exprs(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn grafana_dashboard_uses_exactly_the_exported_metrics() {
        let text = include_str!("../../../docs/grafana-dashboard.json");
        let dashboard: serde_json::Value = serde_json::from_str(text).unwrap();
        assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
        assert!(
            dashboard["__inputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["name"] == "DS_PROMETHEUS")
        );
        let mut all = Vec::new();
        exprs(&dashboard, &mut all);
        assert!(!all.is_empty());
        let known = metric_names();
        let mut used = BTreeSet::new();
        for expr in &all {
            for name in referenced_metrics(expr) {
                assert!(
                    known.contains(name.as_str()),
                    "unknown metric {name} in {expr}"
                );
                used.insert(name);
            }
        }
        for name in known {
            assert!(used.contains(name), "no panel shows {name}");
        }
        // Every panel has a datasource and a title.
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()));
            if panel["type"] != "row" {
                assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{panel}");
            }
        }
    }

    #[test]
    fn docs_describe_every_metric() {
        let doc = include_str!("../../../docs/observability.md");
        for m in METRICS {
            assert!(
                doc.contains(&format!("`{}`", m.name)),
                "{} undocumented",
                m.name
            );
        }
    }

    #[test]
    fn metric_catalog_is_the_agreed_list() {
        let expected = [
            "dengine_term",
            "dengine_role",
            "dengine_has_leader",
            "dengine_is_leader",
            "dengine_role_state",
            "dengine_pending_proposals",
            "dengine_log_entries",
            "dengine_commit_index",
            "dengine_applied_index",
            "dengine_replication_lag_entries",
            "dengine_peer_round_trip_seconds",
            "dengine_data_dir_bytes",
            "dengine_leader_changes_total",
            "dengine_proposals_total",
            "dengine_lease_reads_total",
            "dengine_snapshots_sent_total",
            "dengine_snapshots_installed_total",
            "dengine_messages_dropped_total",
            "dengine_peer_messages_refused_total",
            "dengine_peer_refused_total",
            "dengine_connections_refused_total",
            "dengine_peer_regressions_total",
            "dengine_peer_incarnation_changes_total",
            "dengine_proposal_latency_seconds",
            "dengine_commit_latency_seconds",
            "dengine_append_latency_seconds",
            "dengine_log_syncs_total",
            "dengine_append_batch_entries",
            "dengine_apply_batch_entries",
        ];
        let names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(names, expected);
    }

    /// Every metric name this module declares is in [`METRICS`], so that it gets its `# HELP`
    /// text (promtool refuses a metric without one; CI once found `dengine_lease_reads_total`
    /// missing here).
    #[test]
    fn every_declared_metric_is_in_the_catalog() {
        let source = include_str!("metric_names.rs");
        let known = metric_names();
        let mut declared = 0;
        for line in source.lines() {
            let Some(rest) = line.strip_prefix("pub const ") else {
                continue;
            };
            let Some((_, value)) = rest.split_once("= \"") else {
                continue;
            };
            let name = value.trim_end_matches("\";");
            if name.starts_with("dengine_") {
                declared += 1;
                assert!(known.contains(name), "{name} is not in METRICS");
            }
        }
        assert_eq!(declared, METRICS.len());
    }

    #[test]
    fn metric_catalog_is_consistent() {
        assert_eq!(metric_names().len(), METRICS.len(), "duplicate names");
        for m in METRICS {
            assert!(m.name.starts_with("dengine_"));
            assert_eq!(
                m.kind == MetricKind::Counter,
                m.name.ends_with("_total"),
                "{}",
                m.name
            );
            if m.kind == MetricKind::Histogram {
                assert!(
                    m.name.ends_with("_seconds") || m.name.ends_with("_batch_entries"),
                    "{} gets no buckets",
                    m.name
                );
            }
        }
    }
}
