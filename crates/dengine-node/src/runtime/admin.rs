//! Administration on the event loop: membership changes (thesis §4.3), leader transfer
//! (thesis §3.10), the waiters that resolve them, and the status report.

use std::collections::BTreeMap;
use tokio::time::Instant;

use dengine_core::{LogStore, MembershipError, NodeId, Role, TransferError, Transport};
use tokio::sync::oneshot;

use super::{PendingChange, Runtime, TransferWaiter, Waiter};
use crate::api::{PeerStatus, Status};
use crate::error::AdminError;

impl<S: LogStore, T: Transport> Runtime<S, T> {
    pub(super) fn try_change_membership(&mut self, change: PendingChange) {
        if change.tx.is_closed() {
            return;
        }
        let result = self
            .raft
            .change_membership_with_addresses(&change.changes, &change.addresses);
        match result {
            Ok(id) => {
                tracing::info!(index = id.index, changes = ?change.changes, "membership change proposed");
                let waiter = Waiter::Config {
                    term: id.term,
                    deadline: change.deadline,
                    tx: change.tx,
                };
                if let Some(old) = self.waiters.insert(id.index, waiter) {
                    self.fail_overwritten(id.index, old);
                }
            }
            Err(
                MembershipError::LeaderNotReady
                | MembershipError::ChangeInProgress { .. }
                | MembershipError::TransferInProgress,
            ) if Instant::now() < change.deadline && self.stopping.is_none() => {
                self.pending_changes.push(change);
            }
            Err(MembershipError::NotLeader { leader }) => {
                let _ = change.tx.send(Err(AdminError::NotLeader {
                    leader,
                    leader_address: self.address_of(leader),
                }));
            }
            Err(e) => {
                let _ = change.tx.send(Err(AdminError::Membership(e)));
            }
        }
    }

    pub(super) fn transfer_leader(
        &mut self,
        to: NodeId,
        deadline: Instant,
        tx: oneshot::Sender<Result<(), AdminError>>,
    ) {
        match self.raft.transfer_leader(to) {
            Ok(()) => {
                tracing::info!(to, "leader transfer started");
                self.transfers.push(TransferWaiter { to, deadline, tx });
            }
            Err(TransferError::AlreadyLeader(_)) => {
                let _ = tx.send(Ok(()));
            }
            Err(TransferError::NotLeader { leader }) if leader == Some(to) => {
                let _ = tx.send(Ok(()));
            }
            Err(TransferError::NotLeader { leader }) => {
                let _ = tx.send(Err(AdminError::NotLeader {
                    leader,
                    leader_address: self.address_of(leader),
                }));
            }
            Err(e) => {
                let _ = tx.send(Err(AdminError::Transfer(e)));
            }
        }
    }

    /// Resolves membership and transfer waiters whose condition now holds.
    pub(super) fn check_waiters(&mut self) {
        let now = Instant::now();
        if !self.config_waiters.is_empty() {
            let applied = self.raft.applied_index();
            let membership = self.raft.membership();
            let settled = !membership.is_joint() && applied >= self.raft.membership_index();
            for w in std::mem::take(&mut self.config_waiters) {
                if applied >= w.index && settled {
                    let _ = w.tx.send(Ok(membership.clone()));
                } else if now >= w.deadline {
                    let _ = w.tx.send(Err(AdminError::Timeout));
                } else {
                    self.config_waiters.push(w);
                }
            }
        }
        if !self.transfers.is_empty() {
            let leader = self.raft.leader();
            let leading = self.raft.role() == Role::Leader;
            let target = self.raft.transfer_target();
            for w in std::mem::take(&mut self.transfers) {
                if leader == Some(w.to) {
                    let _ = w.tx.send(Ok(()));
                } else if now >= w.deadline {
                    let _ = w.tx.send(Err(AdminError::TransferFailed {
                        to: w.to,
                        detail: "timed out".into(),
                    }));
                } else if leading && target != Some(w.to) {
                    let _ = w.tx.send(Err(AdminError::TransferFailed {
                        to: w.to,
                        detail: "abandoned: the target did not catch up or win an election \
                                 within an election timeout"
                            .into(),
                    }));
                } else {
                    self.transfers.push(w);
                }
            }
        }
    }

    pub(super) fn status(&self) -> Status {
        let membership = self.raft.membership().clone();
        let mut peers = BTreeMap::new();
        for peer in membership.members() {
            if let (Some(progress), Some(lag)) = (
                self.raft.peer_progress(peer),
                self.raft.replication_lag(peer),
            ) {
                peers.insert(peer, PeerStatus { progress, lag });
            }
        }
        let leader = self.raft.leader();
        Status {
            id: self.id,
            role: self.raft.role(),
            term: self.raft.term(),
            leader,
            leader_address: self.address_of(leader),
            commit_index: self.raft.commit_index(),
            applied_index: self.raft.applied_index(),
            last_log_index: self.raft.last_log_id().index,
            membership,
            membership_index: self.raft.membership_index(),
            snapshot: self.raft.latest_snapshot().cloned(),
            peers,
        }
    }
}
