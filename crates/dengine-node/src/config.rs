//! [`NodeConfig`]: what the runtime runs with — the node's id and the protocol's timing and
//! limits, the write policy, the snapshot policy, the client-facing limits and the shutdown.
//!
//! No addresses, no TLS, no files: those belong to the transport and to whoever assembles a
//! server (the `dengine` facade loads a whole settings file and hands each part its own
//! section). Every section derives serde with defaults, so a server can embed them in its own
//! settings as they are; [`NodeConfig::validate`] names every bad field by its path
//! (`raft.tick_ms`). Times are in milliseconds, sizes in bytes.

use dengine_core::{ConfigError, ConfigProblem, LogIndex, NodeId};
use serde::{Deserialize, Serialize};

/// Largest allowed `raft.tick_ms`.
pub const MAX_TICK_MS: u64 = 1000;

/// Largest value of any `*_ms` duration setting (one day): deadlines are `now + duration`,
/// which must not overflow the clock.
pub const MAX_DURATION_MS: u64 = 86_400_000;

/// Everything the runtime is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster; must not be 0.
    pub id: NodeId,
    /// Protocol timing and limits.
    pub raft: RaftSettings,
    /// The write policy.
    pub storage: StorageSettings,
    /// When to snapshot and compact.
    pub snapshot: SnapshotSettings,
    /// Limits on client requests.
    pub client: ClientSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
}

/// `[raft]`: protocol timing and limits (see `dengine_core::Config`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    /// Length of one logical tick of the core. Default 50.
    pub tick_ms: u64,
    /// Base election timeout; the real timeout is random in `[t, 2t)`. Default 500.
    pub election_timeout_ms: u64,
    /// Leader heartbeat interval; below the election timeout. Default 100.
    pub heartbeat_interval_ms: u64,
    /// Pre-vote (thesis §9.6). Default true.
    pub pre_vote: bool,
    /// Check-quorum and leader stickiness (thesis §6.2, §4.2.3); needed for lease reads.
    /// Default true.
    pub check_quorum: bool,
    /// Clock-drift margin subtracted from the lease. Default 100.
    pub lease_drift_ms: u64,
    /// Append messages in flight per follower. Default 256.
    pub max_inflight_messages: usize,
    /// Soft limit on entry bytes per append message. Default 1 MiB.
    pub max_message_bytes: u64,
    /// Largest command a client may propose. Default 1 MiB.
    pub max_proposal_bytes: u64,
    /// Appended-but-uncommitted bytes after which proposals are refused. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Soft limit on committed bytes handed to the state machine per batch. Default 4 MiB.
    pub max_apply_batch_bytes: u64,
    /// Peer messages waiting for the event loop; when full, more are dropped and counted
    /// (`dengine_messages_dropped_total{reason="inbox_full"}`). Default 4096.
    pub inbox_len: usize,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 50,
            election_timeout_ms: 500,
            heartbeat_interval_ms: 100,
            pre_vote: true,
            check_quorum: true,
            lease_drift_ms: 100,
            max_inflight_messages: 256,
            max_message_bytes: 1 << 20,
            max_proposal_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_apply_batch_bytes: 4 << 20,
            inbox_len: 4096,
        }
    }
}

/// `[storage]`: the write policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// Sync the log to disk before acknowledging. Turning it off loses acknowledged writes on
    /// power loss or SIGKILL of a majority; only for tests and benchmarks. Default true.
    pub fsync: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings { fsync: true }
    }
}

/// `[snapshot]`: when to snapshot and compact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Take a snapshot about every this many applied entries (0 = never by count). Default
    /// 100 000. Each member takes them at its own points of the log (a phase within the
    /// period from its id), so that members do not all snapshot at once; two snapshots of a
    /// member are half a period to a period and a half apart.
    pub every_entries: u64,
    /// Take a snapshot after this many bytes were applied since the last one (0 = never by
    /// size). Default 256 MiB.
    pub every_bytes: u64,
    /// Entries kept behind a snapshot for followers that lag a little. Default 1024.
    pub trailing_entries: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            every_entries: 100_000,
            every_bytes: 256 << 20,
            trailing_entries: 1024,
        }
    }
}

impl SnapshotSettings {
    /// The first applied index after `from` (the index the last snapshot covered, or where
    /// the member started applying) at which member `id` takes its next snapshot by count;
    /// `None` when `every_entries` is 0.
    ///
    /// Members snapshot at different points of the log: each at the indexes
    /// `phase + k × every_entries`, its phase the fraction of `id` times the golden ratio's
    /// inverse, of the period (for ids 1, 2 and 3: 62%, 24% and 85% of it, so they are at
    /// least about a quarter of a period apart). Every member applies the same indexes, so
    /// this holds across restarts. Building a snapshot takes a member's CPU and disk for a
    /// moment; when the three members of a cluster on one machine all built theirs from the
    /// same index, the p99 of writes at 256 clients was 7% and the p99.9 16% higher than with
    /// them staggered (docs/benchmarks.md, 2026-12-05 22:45); on separate machines, a
    /// majority that is not snapshotting keeps committing at full speed. The point is at
    /// least half a period after `from`, so that a snapshot installed from the leader just
    /// before a member's point does not make it build another at once: a member's snapshots
    /// are half a period to a period and a half apart.
    pub fn next_point(&self, id: NodeId, from: LogIndex) -> Option<LogIndex> {
        let every = self.every_entries;
        if every == 0 {
            return None;
        }
        // The fraction of id × (√5 − 1) / 2, in 64-bit fixed point, scaled to the period.
        let fraction = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let phase = ((u128::from(fraction) * u128::from(every)) >> 64) as u64;
        let earliest = from.saturating_add(every.div_ceil(2));
        if earliest <= phase {
            return Some(phase);
        }
        // The first phase + k × every at or after `earliest`.
        let periods = (earliest - phase).div_ceil(every);
        Some(phase.saturating_add(periods.saturating_mul(every)))
    }
}

/// `[client]`: limits on client requests.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// How long a proposal may wait to be applied before the caller gets a timeout (outcome
    /// unknown). Default 5000.
    pub propose_timeout_ms: u64,
    /// How long a linearizable or lease read may wait. Default 5000.
    pub read_timeout_ms: u64,
    /// Proposals and reads waiting at once; more are refused with a "busy" error. Default
    /// 10 000.
    pub max_pending: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            propose_timeout_ms: 5000,
            read_timeout_ms: 5000,
            max_pending: 10_000,
        }
    }
}

/// `[shutdown]`: graceful shutdown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long a leader tries to hand leadership over before stopping. Default 2000.
    pub transfer_timeout_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            transfer_timeout_ms: 2000,
        }
    }
}

impl NodeConfig {
    /// The defaults for node `id`.
    pub fn new(id: NodeId) -> Self {
        NodeConfig {
            id,
            ..Self::default()
        }
    }

    /// The core's [`Config`](dengine_core::Config): times are converted from milliseconds to
    /// ticks of `raft.tick_ms` (rounded up, at least one tick). `seed` seeds the election
    /// jitter; pass something that differs between runs (the runtime uses the clock).
    pub fn core_config(&self, seed: u64) -> dengine_core::Config {
        let tick = self.raft.tick_ms.max(1);
        let ticks = |ms: u64| ms.div_ceil(tick).max(1);
        let r = &self.raft;
        dengine_core::Config {
            id: self.id,
            election_timeout_ticks: ticks(r.election_timeout_ms),
            heartbeat_interval_ticks: ticks(r.heartbeat_interval_ms),
            pre_vote: r.pre_vote,
            check_quorum: r.check_quorum,
            max_inflight_messages: r.max_inflight_messages,
            max_message_bytes: r.max_message_bytes,
            max_proposal_bytes: r.max_proposal_bytes,
            max_uncommitted_bytes: r.max_uncommitted_bytes,
            max_apply_batch_bytes: r.max_apply_batch_bytes,
            lease_drift_ticks: ticks(r.lease_drift_ms),
            snapshot_trailing_entries: self.snapshot.trailing_entries,
            seed,
            allow_node_id_reuse: false,
        }
    }

    /// Checks every field and reports all problems at once, each with its path (`raft.tick_ms`,
    /// `id`), its value and what would be accepted. Includes the core's own checks on
    /// [`core_config`](Self::core_config), reported under these fields' names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems: Vec<ConfigProblem> = Vec::new();
        let mut bad = |field: &str, value: &dyn ToString, allowed: String| {
            problems.push(ConfigProblem::new(field, value.to_string(), allowed));
        };
        if self.id == 0 {
            bad(
                "id",
                &0,
                "any id except 0 (1, 2, ...), unique in the cluster".into(),
            );
        }
        let r = &self.raft;
        if !(1..=MAX_TICK_MS).contains(&r.tick_ms) {
            bad("raft.tick_ms", &r.tick_ms, format!("1..={MAX_TICK_MS}"));
        }
        let tick = r.tick_ms.max(1);
        if r.election_timeout_ms < tick.saturating_mul(2) {
            bad(
                "raft.election_timeout_ms",
                &r.election_timeout_ms,
                format!(">= 2 * raft.tick_ms ({})", tick.saturating_mul(2)),
            );
        }
        if r.heartbeat_interval_ms == 0 || r.heartbeat_interval_ms >= r.election_timeout_ms {
            bad(
                "raft.heartbeat_interval_ms",
                &r.heartbeat_interval_ms,
                format!(
                    "1..{} (below raft.election_timeout_ms; a tenth to a fifth of it is usual)",
                    r.election_timeout_ms
                ),
            );
        }
        if r.lease_drift_ms >= r.election_timeout_ms {
            bad(
                "raft.lease_drift_ms",
                &r.lease_drift_ms,
                format!(
                    "0..{} (below raft.election_timeout_ms)",
                    r.election_timeout_ms
                ),
            );
        }
        for (field, value) in [
            ("raft.max_inflight_messages", r.max_inflight_messages as u64),
            ("raft.max_message_bytes", r.max_message_bytes),
            ("raft.max_proposal_bytes", r.max_proposal_bytes),
            ("raft.max_uncommitted_bytes", r.max_uncommitted_bytes),
            ("raft.max_apply_batch_bytes", r.max_apply_batch_bytes),
            ("raft.inbox_len", r.inbox_len as u64),
            ("client.propose_timeout_ms", self.client.propose_timeout_ms),
            ("client.read_timeout_ms", self.client.read_timeout_ms),
            ("client.max_pending", self.client.max_pending as u64),
        ] {
            if value == 0 {
                bad(field, &0, ">= 1".into());
            }
        }
        let one_proposal = r
            .max_proposal_bytes
            .saturating_add(dengine_core::ENTRY_OVERHEAD_BYTES);
        if r.max_uncommitted_bytes != 0 && r.max_uncommitted_bytes < one_proposal {
            bad(
                "raft.max_uncommitted_bytes",
                &r.max_uncommitted_bytes,
                format!(
                    ">= raft.max_proposal_bytes + {} ({one_proposal}), so one largest proposal fits",
                    dengine_core::ENTRY_OVERHEAD_BYTES
                ),
            );
        }
        for (field, value) in [
            ("raft.election_timeout_ms", r.election_timeout_ms),
            ("raft.heartbeat_interval_ms", r.heartbeat_interval_ms),
            ("raft.lease_drift_ms", r.lease_drift_ms),
            ("client.propose_timeout_ms", self.client.propose_timeout_ms),
            ("client.read_timeout_ms", self.client.read_timeout_ms),
            (
                "shutdown.transfer_timeout_ms",
                self.shutdown.transfer_timeout_ms,
            ),
        ] {
            if value > MAX_DURATION_MS {
                bad(field, &value, format!("<= {MAX_DURATION_MS} (one day)"));
            }
        }
        // The core's own checks, on the values after conversion to ticks.
        if let Err(err) = self.core_config(0).validate() {
            for p in err.problems {
                let field = match p.field.as_str() {
                    "id" => continue, // checked above
                    "election_timeout_ticks" => "raft.election_timeout_ms",
                    "heartbeat_interval_ticks" => "raft.heartbeat_interval_ms",
                    "lease_drift_ticks" => "raft.lease_drift_ms",
                    "max_inflight_messages" => "raft.max_inflight_messages",
                    "max_message_bytes" => "raft.max_message_bytes",
                    "max_proposal_bytes" => "raft.max_proposal_bytes",
                    "max_uncommitted_bytes" => "raft.max_uncommitted_bytes",
                    "max_apply_batch_bytes" => "raft.max_apply_batch_bytes",
                    other => other,
                }
                .to_string();
                if problems.iter().any(|q| q.field == field) {
                    continue;
                }
                let value = match field.as_str() {
                    "raft.election_timeout_ms" => r.election_timeout_ms.to_string(),
                    "raft.heartbeat_interval_ms" => r.heartbeat_interval_ms.to_string(),
                    "raft.lease_drift_ms" => r.lease_drift_ms.to_string(),
                    _ => p.value.clone(),
                };
                problems.push(ConfigProblem::new(
                    field,
                    value,
                    format!(
                        "rejected by the core after rounding up to ticks of raft.tick_ms \
                         ({tick} ms): {} = {}, allowed {}",
                        p.field, p.value, p.allowed
                    ),
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The snapshot points of `every` entries for member `id` after `from`.
    fn point(every: u64, id: NodeId, from: LogIndex) -> LogIndex {
        let s = SnapshotSettings {
            every_entries: every,
            ..SnapshotSettings::default()
        };
        s.next_point(id, from).unwrap()
    }

    #[test]
    fn members_snapshot_at_their_own_points_a_period_apart() {
        let every = 100_000;
        // Ids 1, 2, 3: 61.8%, 23.6% and 85.4% of the period.
        assert_eq!(point(every, 1, 0), 61_803);
        assert_eq!(point(every, 2, 0), 123_606);
        assert_eq!(point(every, 3, 0), 85_410);
        // From a member's own point, the next is one period on.
        for id in 1..=3 {
            let first = point(every, id, 0);
            assert_eq!(point(every, id, first), first + every);
            assert_eq!(point(every, id, first + every), first + 2 * every);
        }
        // Any two of the first five ids are at least a tenth of a period apart.
        let phases: Vec<u64> = (1..=5).map(|id| point(every, id, 0) % every).collect();
        for (i, a) in phases.iter().enumerate() {
            for b in &phases[i + 1..] {
                let gap = a.abs_diff(*b).min(every - a.abs_diff(*b));
                assert!(gap >= every / 10, "{phases:?}");
            }
        }
        // Never by count when every_entries is 0.
        let never = SnapshotSettings {
            every_entries: 0,
            ..SnapshotSettings::default()
        };
        assert_eq!(never.next_point(1, 0), None);
    }

    #[test]
    fn a_snapshot_point_is_half_a_period_to_a_period_and_a_half_away() {
        for every in [1, 2, 3, 7, 10, 1000, 100_000] {
            for id in 1..=9 {
                for from in [0, 1, every / 2, every, 3 * every + 1, 1_000_003] {
                    let at = point(every, id, from);
                    let case = format!("every {every} id {id} from {from}: {at}");
                    assert!(at - from >= every.div_ceil(2), "{case}");
                    assert!(at - from < every.div_ceil(2) + every, "{case}");
                    assert_eq!(at % every, point(every, id, 0) % every, "{case}");
                }
            }
        }
        // Near the end of the index space it saturates instead of overflowing.
        assert_eq!(point(100, 1, u64::MAX - 10), u64::MAX);
    }

    #[test]
    fn defaults_convert_to_a_valid_core_config() {
        let c = NodeConfig::new(1);
        c.validate().unwrap();
        let core = c.core_config(7);
        assert_eq!(core.election_timeout_ticks, 10);
        assert_eq!(core.heartbeat_interval_ticks, 2);
        assert_eq!(core.lease_drift_ticks, 2);
        assert_eq!(core.seed, 7);
        core.validate().unwrap();
    }

    #[test]
    fn every_problem_is_named_with_value_and_range() {
        let mut c = NodeConfig::new(0);
        c.raft.tick_ms = 0;
        c.raft.heartbeat_interval_ms = 900;
        c.client.max_pending = 0;
        c.shutdown.transfer_timeout_ms = MAX_DURATION_MS + 1;
        let err = c.validate().unwrap_err();
        let fields: Vec<&str> = err.problems.iter().map(|p| p.field.as_str()).collect();
        for want in [
            "id",
            "raft.tick_ms",
            "raft.heartbeat_interval_ms",
            "client.max_pending",
            "shutdown.transfer_timeout_ms",
        ] {
            assert!(fields.contains(&want), "{want} missing in {fields:?}");
        }
        let hb = err
            .problems
            .iter()
            .find(|p| p.field == "raft.heartbeat_interval_ms")
            .unwrap();
        assert_eq!(hb.value, "900");
        assert!(
            hb.allowed.contains("below raft.election_timeout_ms"),
            "{hb:?}"
        );
    }

    #[test]
    fn core_checks_after_tick_rounding_are_reported_under_these_names() {
        let mut c = NodeConfig::new(1);
        c.raft.tick_ms = 100;
        c.raft.election_timeout_ms = 200;
        c.raft.heartbeat_interval_ms = 150; // rounds up to 2 ticks = the election timeout
        let err = c.validate().unwrap_err();
        let p = &err.problems[0];
        assert_eq!(p.field, "raft.heartbeat_interval_ms");
        assert!(p.allowed.contains("rounding up to ticks"), "{p:?}");
    }

    #[test]
    fn sections_round_trip_through_serde() {
        let mut c = NodeConfig::new(3);
        c.raft.tick_ms = 20;
        c.snapshot.every_entries = 9;
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NodeConfig>(&json).unwrap(), c);
        let unknown = serde_json::from_str::<RaftSettings>(r#"{"tick_mz": 5}"#).unwrap_err();
        assert!(unknown.to_string().contains("tick_mz"), "{unknown}");
    }
}
