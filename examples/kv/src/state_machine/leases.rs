//! The lease commands and queries of the [`KvStateMachine`]: grant, revoke (a client's, or
//! the leader's expiry), checkpoint; a lease's TTL and keys, the list of leases. Every change
//! is published to the member's [`LeaseHub`](crate::LeaseHub), where the leader's clock runs.

use bytes::Bytes;

use super::KvStateMachine;
use crate::auth::access::{Interval, Needs};
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{command, command_response};
use crate::proto::etcdserverpb::{
    LeaseCheckpointResponse, LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::store;

impl KvStateMachine {
    /// Applies a lease command run as `user` (`None` for the leader's own expiries and
    /// checkpoints, which are not a client's).
    pub(super) fn apply_lease(
        &mut self,
        op: command::Op,
        user: Option<&str>,
    ) -> Result<command_response::Result, KvError> {
        use command_response::Result as R;
        match op {
            command::Op::LeaseGrant(req) => {
                self.store.grant_lease(req.id, req.ttl)?;
                self.lease_hub.granted(req.id, req.ttl);
                Ok(R::LeaseGrant(LeaseGrantResponse {
                    header: Some(store::header(self.store.revision())),
                    id: req.id,
                    ttl: req.ttl,
                    error: String::new(),
                }))
            }
            command::Op::LeaseRevoke(req) => {
                // etcd: revoking deletes the lease's keys, so it needs write access to each.
                if let Some(lease) = self.store.leases().get(req.id) {
                    let needs = Needs {
                        write: lease
                            .keys
                            .iter()
                            .map(|k| Interval::of_request(k, &Bytes::new()))
                            .collect(),
                        ..Needs::default()
                    };
                    self.auth.authorize(user, &needs)?;
                }
                self.revoke(req.id).map(R::LeaseRevoke)
            }
            command::Op::LeaseExpire(req) => self.revoke(req.id).map(R::LeaseRevoke),
            command::Op::LeaseCheckpoint(req) => {
                for c in &req.checkpoints {
                    self.store.checkpoint_lease(c.id, c.remaining_ttl);
                    if let Some(l) = self.store.leases().get(c.id) {
                        self.lease_hub.checkpointed(c.id, l.remaining);
                    }
                }
                Ok(R::LeaseCheckpoint(LeaseCheckpointResponse {
                    header: Some(store::header(self.store.revision())),
                }))
            }
            other => Err(KvError::Internal(format!("not a lease command: {other:?}"))),
        }
    }

    /// Revokes lease `id`: its keys are deleted in one revision, watchers see the deletes.
    fn revoke(&mut self, id: i64) -> Result<LeaseRevokeResponse, KvError> {
        let out = self.store.revoke_lease(id)?;
        self.lease_hub.revoked(id);
        self.hub_publish(out.revision, out.events);
        Ok(LeaseRevokeResponse {
            header: Some(store::header(out.revision)),
        })
    }

    /// A lease's granted TTL and (if asked) its keys, as applied; `ttl` is the remaining TTL
    /// of the last checkpoint (0: the full TTL) — the leader replaces it with its clock's.
    /// -1 if there is no such lease (etcd's answer, not an error).
    pub(super) fn lease_time_to_live(
        &self,
        req: &LeaseTimeToLiveRequest,
    ) -> LeaseTimeToLiveResponse {
        let header = Some(store::header(self.store.revision()));
        match self.store.leases().get(req.id) {
            Some(lease) => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: lease.remaining,
                granted_ttl: lease.ttl,
                keys: if req.keys {
                    lease.keys.iter().cloned().collect()
                } else {
                    Vec::new()
                },
            },
            None => LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
        }
    }

    /// Every lease's id, in id order.
    pub(super) fn lease_list(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: Some(store::header(self.store.revision())),
            leases: self
                .store
                .leases()
                .iter()
                .map(|(id, _)| LeaseStatus { id })
                .collect(),
        }
    }
}
