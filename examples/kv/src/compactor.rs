//! Auto-compaction (etcd's `--auto-compaction-mode` and `--auto-compaction-retention`): the
//! leader proposes compactions through the log so that the MVCC history, which lives in
//! memory, stays bounded.
//!
//! The decision is the leader's alone and is taken on its clock, but what it decides is a
//! command in the log, so every member compacts at the same revision. A member that does not
//! lead proposes nothing (and forgets its samples: a new leader starts sampling afresh, so
//! periodic compaction pauses for one retention period after an election, as in etcd).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use tokio::time::{Instant, MissedTickBehavior};

use crate::backend::KvBackend;
use crate::config::AutoCompaction;
use crate::node_backend::NodeBackend;
use crate::proto::dengine::kv::v1::{Command, command};
use crate::proto::etcdserverpb::CompactionRequest;
use crate::watch::WatchHub;

impl AutoCompaction {
    /// How often the leader looks.
    ///
    /// In revision mode, ten times a second: at high load a check once a second let the
    /// history grow to the revisions kept plus a second of writes before each compaction, and
    /// every version a state file's group commit found still kept was written to the file and
    /// deleted again soon after (`store/durable/recent.rs`). [`Planner::plan`] proposes only
    /// steps of [`revision_step`], so at low load this is no more compactions than before.
    fn check_every(self) -> Duration {
        match self {
            AutoCompaction::Periodic(keep) => (keep / 10).max(Duration::from_secs(1)),
            AutoCompaction::Revisions(_) => Duration::from_millis(100),
            AutoCompaction::Off => Duration::from_secs(1),
        }
    }
}

/// The fewest revisions a revision-mode compaction drops: a tenth of those kept (at least
/// one), so that the history holds between `keep` and about `1.1 * keep` revisions, and the
/// log gets a compaction command at most once per `keep / 10` writes.
fn revision_step(keep: i64) -> i64 {
    (keep / 10).max(1)
}

/// The leader's decisions: where to compact next, from what it sees at each check.
#[derive(Debug)]
struct Planner {
    mode: AutoCompaction,
    /// (when, the store revision then), oldest first; periodic mode only.
    samples: VecDeque<(Instant, i64)>,
}

impl Planner {
    fn new(mode: AutoCompaction) -> Self {
        Planner {
            mode,
            samples: VecDeque::new(),
        }
    }

    /// The revision to compact at now, if any: `leading` says whether this member leads,
    /// `current` and `compacted` are its store's revision and compaction point.
    fn plan(&mut self, now: Instant, leading: bool, current: i64, compacted: i64) -> Option<i64> {
        if !leading {
            self.samples.clear();
            return None;
        }
        let target = match self.mode {
            AutoCompaction::Off => return None,
            AutoCompaction::Revisions(keep) => {
                let keep = i64::try_from(keep).unwrap_or(i64::MAX);
                let target = current.saturating_sub(keep);
                if target.saturating_sub(compacted) < revision_step(keep) {
                    return None;
                }
                target
            }
            AutoCompaction::Periodic(keep) => {
                self.samples.push_back((now, current));
                let cutoff = now.checked_sub(keep)?;
                // The newest sample at or before the cutoff: the revision `keep` ago.
                while self.samples.get(1).is_some_and(|(t, _)| *t <= cutoff) {
                    self.samples.pop_front();
                }
                match self.samples.front() {
                    Some((t, revision)) if *t <= cutoff => *revision,
                    _ => return None,
                }
            }
        };
        (target > compacted && target > 0).then_some(target)
    }
}

/// The command a compactor proposes: a compaction run by the member itself, not by a client
/// (no user, so it is not subject to auth).
fn auto_compact(revision: i64) -> Bytes {
    let command = Command {
        op: Some(command::Op::AutoCompact(CompactionRequest {
            revision,
            physical: false,
        })),
        ..Command::default()
    };
    Bytes::from(command.encode_to_vec())
}

/// Runs the compactor of one member until its hub closes (the member stops).
pub(crate) fn spawn(backend: Arc<NodeBackend>, hub: WatchHub, mode: AutoCompaction) {
    if mode == AutoCompaction::Off {
        return;
    }
    tokio::spawn(async move {
        let mut planner = Planner::new(mode);
        let mut tick = tokio::time::interval(mode.check_every());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Failures are logged once per streak, not once a second.
        let mut failing = false;
        loop {
            tokio::select! {
                () = hub.closed() => return,
                _ = tick.tick() => {}
            }
            let leading = backend.is_leader();
            let Some(target) = planner.plan(
                Instant::now(),
                leading,
                hub.revision(),
                hub.compact_revision(),
            ) else {
                continue;
            };
            match backend.propose(auto_compact(target)).await {
                Ok(_) => {
                    failing = false;
                    tracing::debug!(revision = target, "auto-compaction");
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(
                        revision = target,
                        "auto-compaction failed (tried again every {:?}): {e}",
                        mode.check_every()
                    );
                }
                Err(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_mode_keeps_the_last_n_revisions_and_only_the_leader_compacts() {
        let now = Instant::now();
        let mut p = Planner::new(AutoCompaction::Revisions(100));
        assert_eq!(p.plan(now, true, 50, 0), None, "not 100 revisions yet");
        assert_eq!(p.plan(now, true, 150, 0), Some(50));
        assert_eq!(p.plan(now, true, 150, 50), None, "already compacted there");
        assert_eq!(
            p.plan(now, true, 159, 50),
            None,
            "9 revisions past the point: less than a tenth of those kept"
        );
        assert_eq!(p.plan(now, true, 160, 50), Some(60), "a tenth: compacted");
        assert_eq!(
            p.plan(now, false, 1_000, 50),
            None,
            "a follower proposes nothing"
        );
        assert_eq!(
            Planner::new(AutoCompaction::Off).plan(now, true, 1_000, 0),
            None
        );
    }

    #[test]
    fn revision_mode_checks_often_and_steps_by_a_tenth() {
        let keep = AutoCompaction::Revisions(10_000);
        assert_eq!(keep.check_every(), Duration::from_millis(100));
        assert_eq!(revision_step(10_000), 1_000);
        assert_eq!(revision_step(5), 1, "at least one revision");
        let now = Instant::now();
        let mut p = Planner::new(AutoCompaction::Revisions(1));
        assert_eq!(
            p.plan(now, true, 3, 1),
            Some(2),
            "keep 1: every new revision"
        );
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_of_one_period_ago() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut p = Planner::new(AutoCompaction::Periodic(s(60)));
        assert_eq!(AutoCompaction::Periodic(s(60)).check_every(), s(6));
        assert_eq!(p.plan(t0, true, 10, 0), None, "no sample a period old");
        assert_eq!(p.plan(t0 + s(30), true, 40, 0), None);
        assert_eq!(p.plan(t0 + s(60), true, 70, 0), Some(10));
        assert_eq!(
            p.plan(t0 + s(89), true, 99, 10),
            None,
            "the newest old sample is 10"
        );
        assert_eq!(p.plan(t0 + s(90), true, 100, 10), Some(40));
        // A lost leadership forgets the samples: a period passes before the next compaction.
        assert_eq!(p.plan(t0 + s(91), false, 100, 40), None);
        assert_eq!(p.plan(t0 + s(120), true, 130, 40), None);
        assert_eq!(p.plan(t0 + s(179), true, 189, 40), None);
        assert_eq!(p.plan(t0 + s(180), true, 190, 40), Some(130));
    }
}
