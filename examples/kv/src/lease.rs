//! Lease expiry: decided by the leader, on its clock, and applied through the log.
//!
//! The replicated state ([`Leases`](crate::store::Leases)) holds each lease's granted TTL,
//! the remaining TTL its leader last checkpointed, and its keys; it never expires anything by
//! itself. The member that leads keeps, in its [`LeaseHub`], each lease's expiry time on its
//! own clock, and:
//!
//! * **renews** a lease on a keep-alive: expiry = now + TTL. If the lease carries a
//!   checkpointed remaining TTL, the renewal is first recorded through the log (a checkpoint
//!   of 0, "full TTL") before it is acknowledged, so that a later leader cannot give the lease
//!   less than the renewal promised;
//! * **expires** a lease whose time has come by proposing its revoke (`lease_expire`): every
//!   replica deletes the lease's keys in one revision when it applies it. Followers never
//!   decide expiry, and the keeper never forwards its proposals: a member that stopped leading
//!   proposes nothing;
//! * on **becoming leader**, waits until it has applied every entry of earlier terms
//!   ([`KvBackend::barrier`]), then gives every lease expiry = now + remaining TTL (the
//!   checkpointed one, or the full TTL) + [`LeaseConfig::extend`], etcd's rule. The extension
//!   covers the time the old leader may still have acknowledged keep-alives before it
//!   noticed it was deposed (CheckQuorum makes it step down within an election timeout), so
//!   a lease whose keep-alives were acknowledged never expires early;
//! * **checkpoints** remaining TTLs (looking every [`LeaseConfig::checkpoint_interval`]):
//!   a lease whose remaining TTL dropped by a quarter of its TTL since the state last recorded
//!   it is recorded again, so that a lease nobody renews does not get its full TTL back at
//!   every election. A lease renewed more often is never checkpointed.
//!
//! Time is tokio's clock: deterministic under a paused clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::backend::KvBackend;
use crate::config::LeaseConfig;
use crate::lease_hub::{LeaseHub, internal};
use crate::proto::dengine::kv::v1::command;
use crate::proto::etcdserverpb::{LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::watch::WatchHub;

/// How often the keeper looks for expired leases.
const TICK: Duration = Duration::from_millis(100);

/// Revokes proposed per tick at most, so that a mass expiry (after a long partition heals,
/// say) does not flood the log in one burst.
const MAX_EXPIRIES_PER_TICK: usize = 500;

/// Runs the lease keeper of one member until `hub` closes (the member stops): while the
/// member leads, it expires leases and checkpoints their remaining TTLs.
pub(crate) fn spawn_keeper<B: KvBackend>(
    backend: Arc<B>,
    leases: LeaseHub,
    hub: WatchHub,
    config: LeaseConfig,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_checkpoint = Instant::now() + config.checkpoint_interval;
        // Failures are logged once per streak.
        let mut failing = false;
        loop {
            tokio::select! {
                () = hub.closed() => return,
                _ = tick.tick() => {}
            }
            #[cfg(feature = "fault-injection")]
            if config.fault == crate::config::LeaseFault::FollowerClock
                && backend.leading_term().is_none()
            {
                follower_clock_tick(&backend, &leases, config.extend).await;
                continue;
            }
            let Some(term) = backend.leading_term() else {
                leases.demote();
                continue;
            };
            if leases.primary() != Some(term) {
                leases.demote();
                // Every entry of earlier terms applied first: the table is then complete.
                if backend.barrier().await.is_err() || backend.leading_term() != Some(term) {
                    continue;
                }
                #[cfg(feature = "fault-injection")]
                let extend = if config.fault == crate::config::LeaseFault::NoExtension {
                    Duration::ZERO
                } else {
                    config.extend
                };
                #[cfg(not(feature = "fault-injection"))]
                let extend = config.extend;
                leases.promote(term, Instant::now(), extend);
                next_checkpoint = Instant::now() + config.checkpoint_interval;
                tracing::debug!(term, "took the leases over as leader");
            }
            let now = Instant::now();
            for id in leases.take_expired(now, MAX_EXPIRIES_PER_TICK) {
                let op = command::Op::LeaseExpire(LeaseRevokeRequest { id });
                let (backend, leases) = (backend.clone(), leases.clone());
                tokio::spawn(async move {
                    if let Err(e) = backend.propose_as_leader(internal(op)).await {
                        tracing::debug!(lease = id, "lease expiry not proposed: {e}");
                        leases.unmark(id);
                    }
                });
            }
            if now >= next_checkpoint {
                next_checkpoint = now + config.checkpoint_interval;
                let checkpoints = leases.checkpoints(now);
                if !checkpoints.is_empty() {
                    let op = command::Op::LeaseCheckpoint(LeaseCheckpointRequest { checkpoints });
                    match backend.propose_as_leader(internal(op)).await {
                        Ok(_) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!("lease checkpoint failed (tried again later): {e}");
                        }
                        Err(_) => {}
                    }
                }
            }
        }
    });
}

/// The deliberately broken rule `LeaseFault::FollowerClock`: a member that does not lead
/// expires leases on its own clock (it never sees the renewals, which the leader takes) and
/// sends the revokes to the leader as a client would.
#[cfg(feature = "fault-injection")]
async fn follower_clock_tick<B: KvBackend>(backend: &Arc<B>, leases: &LeaseHub, extend: Duration) {
    /// The "term" a follower's clock runs in.
    const FOLLOWER: u64 = u64::MAX;
    if leases.primary() != Some(FOLLOWER) {
        leases.promote(FOLLOWER, Instant::now(), extend);
    }
    for id in leases.take_expired(Instant::now(), MAX_EXPIRIES_PER_TICK) {
        let op = command::Op::LeaseRevoke(LeaseRevokeRequest { id });
        let (backend, leases) = (backend.clone(), leases.clone());
        tokio::spawn(async move {
            if backend.propose(internal(op)).await.is_err() {
                leases.unmark(id);
            }
        });
    }
}
