//! Protocol configuration: one struct, documented defaults, and validation that names the field.

use std::fmt;

use crate::types::NodeId;

/// Configuration of one Raft core. Times are in ticks: the runtime decides how long a tick is
/// (e.g. 100 ms) and calls [`Raft::tick`](crate::Raft::tick) that often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must not be 0.
    pub id: NodeId,
    /// Base election timeout. A follower that hears nothing from a leader for a random time in
    /// `[election_timeout_ticks, 2 * election_timeout_ticks)` starts an election (§5.2).
    /// Default 10.
    pub election_timeout_ticks: u64,
    /// How often a leader sends heartbeats. Must be smaller than the election timeout.
    /// Default 2.
    pub heartbeat_interval_ticks: u64,
    /// Ask for pre-votes before raising the term, so a node that was partitioned away cannot
    /// disrupt a healthy cluster when it returns (thesis §9.6). Default `true`.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum within an election timeout steps down
    /// (thesis §6.2); followers that heard from a leader within the base election timeout
    /// refuse to vote for others ("leader stickiness", thesis §4.2.3). Lease reads require it.
    /// Default `true`.
    pub check_quorum: bool,
    /// Maximum number of append messages in flight to one follower in the replicate state.
    /// Default 256.
    pub max_inflight_messages: usize,
    /// Soft limit on the entry bytes in one append message (a single larger entry is still sent
    /// alone). Default 1 MiB.
    pub max_message_bytes: u64,
    /// Largest payload a proposal may carry. Default 1 MiB.
    pub max_proposal_bytes: u64,
    /// Largest total size of entries the leader has appended but not yet committed (payload
    /// plus [`ENTRY_OVERHEAD_BYTES`](crate::ENTRY_OVERHEAD_BYTES) per entry); further proposals
    /// are refused, bounding memory while followers are unreachable. Default 64 MiB.
    pub max_uncommitted_bytes: u64,
    /// Soft limit on the bytes of committed entries handed out in one [`Ready`](crate::Ready).
    /// Default 4 MiB.
    pub max_apply_batch_bytes: u64,
    /// Safety margin for lease reads: the lease lasts `election_timeout_ticks -
    /// lease_drift_ticks` from the send time of the last heartbeat a quorum acknowledged, to
    /// absorb clock-rate differences between nodes. Must be below the election timeout.
    /// Default 2.
    pub lease_drift_ticks: u64,
    /// Entries kept in the log behind a snapshot, so followers that lag a little catch up from
    /// the log rather than by a whole snapshot. Default 1024.
    pub snapshot_trailing_entries: u64,
    /// Seed for the election-timeout jitter. The core has no randomness of its own: the same
    /// seed and inputs give the same outputs. Default 0 (mixed with `id`, so nodes differ).
    pub seed: u64,
    /// Allow a membership change to add a node under an id the cluster had before
    /// ([`Membership::highest_id`](crate::Membership::highest_id)). Raft itself permits that
    /// only if the node kept its storage intact, which nothing can check; by default such a
    /// change is refused and a returning node must take a new id. The simulator turns it on
    /// to bring removed nodes back with their storage. Default `false`.
    pub allow_node_id_reuse: bool,
}

impl Config {
    /// A configuration with every default and the given node id.
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 2,
            pre_vote: true,
            check_quorum: true,
            max_inflight_messages: 256,
            max_message_bytes: 1 << 20,
            max_proposal_bytes: 1 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_apply_batch_bytes: 4 << 20,
            lease_drift_ticks: 2,
            snapshot_trailing_entries: 1024,
            seed: 0,
            allow_node_id_reuse: false,
        }
    }

    /// Checks every field and reports all that are out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, value: String, allowed: String| {
            problems.push(ConfigProblem {
                field: field.to_string(),
                value,
                allowed,
            })
        };
        if self.id == 0 {
            bad("id", "0".into(), "any id except 0".into());
        }
        if self.election_timeout_ticks < 2 {
            bad(
                "election_timeout_ticks",
                self.election_timeout_ticks.to_string(),
                ">= 2".into(),
            );
        }
        if self.election_timeout_ticks > u64::MAX / 4 {
            bad(
                "election_timeout_ticks",
                self.election_timeout_ticks.to_string(),
                format!("<= {}", u64::MAX / 4),
            );
        }
        if self.heartbeat_interval_ticks == 0
            || self.heartbeat_interval_ticks >= self.election_timeout_ticks
        {
            bad(
                "heartbeat_interval_ticks",
                self.heartbeat_interval_ticks.to_string(),
                format!(
                    "1..{} (below election_timeout_ticks)",
                    self.election_timeout_ticks
                ),
            );
        }
        if self.max_inflight_messages == 0 {
            bad("max_inflight_messages", "0".into(), ">= 1".into());
        }
        if self.max_message_bytes == 0 {
            bad("max_message_bytes", "0".into(), ">= 1".into());
        }
        if self.max_proposal_bytes == 0 {
            bad("max_proposal_bytes", "0".into(), ">= 1".into());
        }
        let one_proposal = self
            .max_proposal_bytes
            .saturating_add(crate::types::ENTRY_OVERHEAD_BYTES);
        if self.max_uncommitted_bytes < one_proposal {
            bad(
                "max_uncommitted_bytes",
                self.max_uncommitted_bytes.to_string(),
                format!(
                    ">= max_proposal_bytes + {} ({one_proposal})",
                    crate::types::ENTRY_OVERHEAD_BYTES
                ),
            );
        }
        if self.max_apply_batch_bytes == 0 {
            bad("max_apply_batch_bytes", "0".into(), ">= 1".into());
        }
        if self.lease_drift_ticks >= self.election_timeout_ticks {
            bad(
                "lease_drift_ticks",
                self.lease_drift_ticks.to_string(),
                format!(
                    "0..{} (below election_timeout_ticks)",
                    self.election_timeout_ticks
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// One setting that is out of range: of a [`Config`], or of the settings of a runtime,
/// transport or server built on it (they report their problems in this type too, so that a
/// server can list every bad setting of every part at once).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The setting's name or path (`election_timeout_ticks`, `raft.tick_ms`).
    pub field: String,
    /// The value it had.
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

/// A [`Config`] that failed validation, with every problem found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The fields that are out of range.
    pub problems: Vec<ConfigProblem>,
}

impl ConfigProblem {
    /// A problem with `field`, which has `value` where `allowed` would be accepted.
    pub fn new(field: impl Into<String>, value: impl ToString, allowed: impl Into<String>) -> Self {
        ConfigProblem {
            field: field.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

impl ConfigError {
    /// The same problems with `section.` put before every field name.
    pub fn prefixed(mut self, section: &str) -> Self {
        for p in &mut self.problems {
            p.field = format!("{section}.{}", p.field);
        }
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid raft config:")?;
        for p in &self.problems {
            write!(f, " {} = {} (allowed: {});", p.field, p.value, p.allowed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Config::new(1).validate(), Ok(()));
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        let mut c = Config::new(0);
        c.heartbeat_interval_ticks = 10;
        c.max_inflight_messages = 0;
        c.lease_drift_ticks = 11;
        let err = c.validate().unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "heartbeat_interval_ticks",
                "max_inflight_messages",
                "lease_drift_ticks"
            ]
        );
        let text = err.to_string();
        assert!(text.contains("heartbeat_interval_ticks = 10"), "{text}");
        assert!(text.contains("lease_drift_ticks = 11"), "{text}");
    }

    #[test]
    fn uncommitted_limit_must_fit_one_proposal() {
        let mut c = Config::new(1);
        c.max_uncommitted_bytes = 10;
        c.max_proposal_bytes = 11;
        let err = c.validate().unwrap_err();
        assert_eq!(err.problems[0].field, "max_uncommitted_bytes");
    }

    /// The documented bounds are inclusive: the values at the edge are accepted, the next
    /// ones refused with the field named.
    #[test]
    fn bounds_accept_their_edge_values() {
        let check = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::new(1);
            f(&mut c);
            c.validate().map_err(|e| {
                e.problems
                    .iter()
                    .map(|p| p.field.clone())
                    .collect::<Vec<_>>()
            })
        };
        let timeout = |t: u64| {
            move |c: &mut Config| {
                c.election_timeout_ticks = t;
                c.heartbeat_interval_ticks = 1;
                c.lease_drift_ticks = 0;
            }
        };
        assert_eq!(check(&timeout(2)), Ok(()));
        assert_eq!(check(&timeout(u64::MAX / 4)), Ok(()));
        let field = Err(vec!["election_timeout_ticks".to_string()]);
        assert_eq!(check(&timeout(u64::MAX / 4 + 1)), field);
        assert!(check(&timeout(1)).is_err_and(|f| f.contains(&"election_timeout_ticks".into())));
        let one = |c: &mut Config| {
            c.max_uncommitted_bytes = c.max_proposal_bytes + crate::types::ENTRY_OVERHEAD_BYTES;
        };
        assert_eq!(
            check(&one),
            Ok(()),
            "room for exactly one proposal is enough"
        );
    }
}
