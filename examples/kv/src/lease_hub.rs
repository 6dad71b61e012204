//! [`LeaseHub`]: a member's view of the leases — the TTLs of the applied lease table, and,
//! while the member leads, each lease's expiry on its clock (`lease.rs` says how expiry is
//! decided). Shared by the state machine (which publishes to it), the leader's lease keeper
//! and the member's lease services.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use tokio::time::Instant;

use crate::proto::dengine::kv::v1::{Command, command};
use crate::proto::etcdserverpb::LeaseCheckpoint;

/// One lease as the member tracks it.
#[derive(Clone, Debug)]
struct Tracked {
    /// Granted TTL, seconds.
    ttl: i64,
    /// Checkpointed remaining TTL, seconds (0: the full TTL).
    remaining: i64,
    /// While this member leads: when the lease expires.
    expiry: Option<Instant>,
    /// Its revoke is proposed: not renewed any more.
    expiring: bool,
}

#[derive(Debug, Default)]
struct View {
    leases: HashMap<i64, Tracked>,
    /// The term this member leads and has promoted the leases in.
    primary: Option<u64>,
}

/// A member's view of the leases: the applied table's TTLs (published by the
/// [`KvStateMachine`](crate::KvStateMachine) as it applies grants, revokes and checkpoints)
/// and, while the member leads, each lease's expiry on its clock. Cheap to clone; the
/// state machine and the member's lease services share one.
#[derive(Clone, Debug, Default)]
pub struct LeaseHub {
    view: Arc<Mutex<View>>,
}

/// What a renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// This member does not lead (or has not taken its leases over yet).
    NotLeader,
    /// No such lease, or it has expired.
    NotFound,
    /// Renewed to `ttl` seconds; `reset` says the renewal must be checkpointed first.
    Renewed { ttl: i64, reset: bool },
}

impl LeaseHub {
    /// The state machine granted lease `id`: while this member leads, its clock starts now.
    pub(crate) fn granted(&self, id: i64, ttl: i64) {
        let mut view = self.view.lock();
        let expiry = view.primary.map(|_| Instant::now() + secs(ttl));
        view.leases.insert(
            id,
            Tracked {
                ttl,
                remaining: 0,
                expiry,
                expiring: false,
            },
        );
    }

    /// How many leases the applied table holds.
    pub(crate) fn len(&self) -> usize {
        self.view.lock().leases.len()
    }

    /// The state machine revoked (or expired) lease `id`.
    pub(crate) fn revoked(&self, id: i64) {
        self.view.lock().leases.remove(&id);
    }

    /// The state machine recorded a checkpoint of lease `id`.
    pub(crate) fn checkpointed(&self, id: i64, remaining: i64) {
        if let Some(l) = self.view.lock().leases.get_mut(&id) {
            l.remaining = remaining;
        }
    }

    /// The state machine's table was replaced (opened from its file, or a snapshot
    /// installed): (id, TTL, remaining TTL) of every lease. Expiry times start again at the
    /// next promotion.
    pub(crate) fn reset(&self, leases: impl IntoIterator<Item = (i64, i64, i64)>) {
        let mut view = self.view.lock();
        view.primary = None;
        view.leases = leases
            .into_iter()
            .map(|(id, ttl, remaining)| {
                (
                    id,
                    Tracked {
                        ttl,
                        remaining,
                        expiry: None,
                        expiring: false,
                    },
                )
            })
            .collect();
    }

    /// The term whose leases this member has taken over, if it leads.
    pub(crate) fn primary(&self) -> Option<u64> {
        self.view.lock().primary
    }

    /// Takes the leases over as leader of `term`: each expires after its remaining TTL (or
    /// its full TTL) plus `extend`.
    pub(crate) fn promote(&self, term: u64, now: Instant, extend: Duration) {
        let mut view = self.view.lock();
        view.primary = Some(term);
        for l in view.leases.values_mut() {
            let left = if l.remaining > 0 { l.remaining } else { l.ttl };
            l.expiry = Some(now + secs(left) + extend);
            l.expiring = false;
        }
    }

    /// Stops leading: no expiry is decided here any more.
    pub(crate) fn demote(&self) {
        let mut view = self.view.lock();
        if view.primary.take().is_some() {
            for l in view.leases.values_mut() {
                l.expiry = None;
                l.expiring = false;
            }
        }
    }

    /// Up to `max` leases expired at `now`, marked as expiring.
    pub(crate) fn take_expired(&self, now: Instant, max: usize) -> Vec<i64> {
        let mut view = self.view.lock();
        if view.primary.is_none() {
            return Vec::new();
        }
        let mut expired: Vec<i64> = view
            .leases
            .iter()
            .filter(|(_, l)| !l.expiring && l.expiry.is_some_and(|e| e <= now))
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        expired.truncate(max);
        for id in &expired {
            if let Some(l) = view.leases.get_mut(id) {
                l.expiring = true;
            }
        }
        expired
    }

    /// A revoke that could not be proposed: lease `id` is looked at again next tick.
    pub(crate) fn unmark(&self, id: i64) {
        if let Some(l) = self.view.lock().leases.get_mut(&id) {
            l.expiring = false;
        }
    }

    /// The remaining TTLs to checkpoint, in whole seconds (at least 1): those of the leases
    /// whose remaining TTL dropped by a quarter of their TTL (at least a second) below what
    /// the state last recorded. A lease renewed more often than that is never checkpointed
    /// (its renewals cost nothing in the log); one left alone is recorded as it runs down, so
    /// a new leader gives it about what it had left, not its full TTL again.
    pub(crate) fn checkpoints(&self, now: Instant) -> Vec<LeaseCheckpoint> {
        let view = self.view.lock();
        if view.primary.is_none() {
            return Vec::new();
        }
        let mut out: Vec<LeaseCheckpoint> = view
            .leases
            .iter()
            .filter(|(_, l)| !l.expiring)
            .filter_map(|(id, l)| {
                let left = ceil_secs(l.expiry?.saturating_duration_since(now)).clamp(1, l.ttl);
                let recorded = if l.remaining > 0 { l.remaining } else { l.ttl };
                (recorded - left >= (l.ttl / 4).max(1)).then_some(LeaseCheckpoint {
                    id: *id,
                    remaining_ttl: left,
                })
            })
            .collect();
        out.sort_unstable_by_key(|c| c.id);
        out
    }

    /// Renews lease `id` at `now` (keep-alive), on the leader.
    pub(crate) fn renew(&self, id: i64, now: Instant) -> Renewal {
        let mut view = self.view.lock();
        if view.primary.is_none() {
            return Renewal::NotLeader;
        }
        match view.leases.get_mut(&id) {
            Some(l) if !l.expiring && l.expiry.is_some_and(|e| e > now) => {
                l.expiry = Some(now + secs(l.ttl));
                Renewal::Renewed {
                    ttl: l.ttl,
                    reset: l.remaining != 0,
                }
            }
            _ => Renewal::NotFound,
        }
    }

    /// Lease `id`'s remaining TTL in whole seconds, rounded up, on the leader: `Ok(None)` if
    /// there is no such lease (or it has expired), `Err(())` if this member does not lead.
    pub(crate) fn remaining(&self, id: i64, now: Instant) -> Result<Option<i64>, ()> {
        let view = self.view.lock();
        if view.primary.is_none() {
            return Err(());
        }
        Ok(view.leases.get(&id).and_then(|l| {
            let expiry = l.expiry.filter(|e| !l.expiring && *e > now)?;
            Some(ceil_secs(expiry - now))
        }))
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(u64::try_from(s).unwrap_or(0))
}

fn ceil_secs(d: Duration) -> i64 {
    let whole = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i64::try_from(whole).unwrap_or(i64::MAX)
}

/// A command the leader proposes on its own (an expiry, a checkpoint): run by the cluster
/// itself, as no user.
pub(crate) fn internal(op: command::Op) -> Bytes {
    Bytes::from(
        Command {
            op: Some(op),
            ..Command::default()
        }
        .encode_to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn a_follower_decides_nothing_and_a_new_leader_extends_every_lease() {
        let hub = LeaseHub::default();
        hub.granted(1, 5);
        hub.granted(2, 60);
        hub.checkpointed(2, 10);
        let t0 = Instant::now();
        // Not leading: nothing expires, nothing is renewed.
        assert!(hub.take_expired(at(t0, 100_000), 10).is_empty());
        assert_eq!(hub.renew(1, t0), Renewal::NotLeader);
        assert_eq!(hub.remaining(1, t0), Err(()));
        hub.promote(7, t0, Duration::from_secs(1));
        // Full TTL + extension for 1; the checkpointed remainder + extension for 2.
        assert_eq!(hub.remaining(1, t0), Ok(Some(6)));
        assert_eq!(hub.remaining(2, t0), Ok(Some(11)));
        assert!(hub.take_expired(at(t0, 5_999), 10).is_empty());
        assert_eq!(hub.take_expired(at(t0, 6_000), 10), vec![1]);
        // Marked: not taken twice, not renewable.
        assert!(hub.take_expired(at(t0, 6_000), 10).is_empty());
        assert_eq!(hub.renew(1, at(t0, 6_000)), Renewal::NotFound);
        hub.unmark(1);
        assert_eq!(hub.take_expired(at(t0, 6_100), 10), vec![1]);
        hub.demote();
        assert!(hub.take_expired(at(t0, 100_000), 10).is_empty());
    }

    #[tokio::test]
    async fn a_renewal_restarts_the_full_ttl_and_asks_for_a_reset_after_a_checkpoint() {
        let hub = LeaseHub::default();
        let t0 = Instant::now();
        hub.promote(1, t0, Duration::from_secs(1));
        hub.granted(9, 10);
        assert_eq!(
            hub.renew(9, at(t0, 4_000)),
            Renewal::Renewed {
                ttl: 10,
                reset: false
            }
        );
        assert_eq!(hub.remaining(9, at(t0, 4_000)), Ok(Some(10)));
        assert_eq!(hub.take_expired(at(t0, 13_999), 10), Vec::<i64>::new());
        // Renewed at 4 s: at 5.5 s it has dropped 1.5 s of 10, less than a quarter: no
        // checkpoint; at 8.5 s, 4.5 s: recorded as 6 s (rounded up).
        assert!(hub.checkpoints(at(t0, 5_500)).is_empty());
        let checkpoints = hub.checkpoints(at(t0, 8_500));
        assert_eq!(checkpoints.len(), 1);
        assert_eq!(checkpoints[0].remaining_ttl, 6);
        hub.checkpointed(9, 6);
        // Measured from the recorded 6 s now: 2 s more (a quarter of 10, in whole seconds)
        // before the next one.
        assert!(hub.checkpoints(at(t0, 9_500)).is_empty());
        assert_eq!(hub.checkpoints(at(t0, 11_000))[0].remaining_ttl, 3);
        assert_eq!(
            hub.renew(9, at(t0, 9_000)),
            Renewal::Renewed {
                ttl: 10,
                reset: true
            }
        );
        assert_eq!(hub.renew(5, t0), Renewal::NotFound);
        hub.revoked(9);
        assert_eq!(hub.remaining(9, t0), Ok(None));
    }
}
