//! Cluster membership changes: joint consensus for changes of any size and single-server
//! changes as a shortcut (Raft paper §6, thesis §4.1–§4.3), learners, and removing the leader.
//!
//! A configuration takes effect on a node as soon as its entry is in the node's log, committed
//! or not (thesis §4.1), and is rolled back if that entry is truncated. Every configuration
//! entry in the log after the commit point is remembered so that rollback needs no storage
//! read.

use std::collections::BTreeMap;

use super::errors::{MembershipChange, MembershipError};
use super::{Raft, bug};
use crate::store::LogReader;
use crate::types::{Entry, EntryId, EntryPayload, LogIndex, Membership, NodeId, Role};

impl<L: LogReader> Raft<L> {
    /// Proposes a membership change of any size through joint consensus: first the joint
    /// configuration C_old,new (decisions need majorities of both), then, automatically once it
    /// commits, C_new. Returns the id of the joint entry.
    pub fn change_membership(
        &mut self,
        changes: &[MembershipChange],
    ) -> Result<EntryId, MembershipError> {
        self.change_membership_with_addresses(changes, &BTreeMap::new())
    }

    /// [`change_membership`](Self::change_membership), also recording where nodes are reached
    /// ([`Membership::addresses`]); typically the addresses of the nodes being added. The
    /// addresses travel in the configuration entry, so every node learns them. Addresses of
    /// removed nodes are dropped.
    pub fn change_membership_with_addresses(
        &mut self,
        changes: &[MembershipChange],
        addresses: &BTreeMap<NodeId, String>,
    ) -> Result<EntryId, MembershipError> {
        self.check_can_change()?;
        let mut next = self.membership.clone();
        apply_changes(&mut next, changes, self.cfg.allow_node_id_reuse)?;
        for (&id, address) in addresses {
            if !next.contains(id) {
                return Err(MembershipError::Invalid(format!(
                    "an address is given for node {id}, which is not a member after the change"
                )));
            }
            next.addresses.insert(id, address.clone());
        }
        if next.voters == self.membership.voters {
            // Only learners change: no joint phase needed, nothing about quorums changes.
            return Ok(self.append_membership(next));
        }
        next.voters_outgoing = self.membership.voters.clone();
        if let Some(&both) = next
            .learners
            .iter()
            .find(|l| next.voters_outgoing.contains(l))
        {
            return Err(MembershipError::Invalid(format!(
                "node {both} cannot turn from voter into learner in one change; remove it \
                 first, then add it as a learner"
            )));
        }
        Ok(self.append_membership(next))
    }

    /// Proposes a single-server change: at most one voter is added or removed, and the new
    /// configuration is used directly, without a joint phase (thesis §4.2). Any two
    /// majorities of configurations that differ by one voter overlap, which is what makes
    /// this safe — together with the rule that a new leader first commits an entry of its
    /// term.
    pub fn change_membership_single(
        &mut self,
        change: MembershipChange,
    ) -> Result<EntryId, MembershipError> {
        self.check_can_change()?;
        let mut next = self.membership.clone();
        apply_changes(&mut next, &[change], self.cfg.allow_node_id_reuse)?;
        let diff = next
            .voters
            .symmetric_difference(&self.membership.voters)
            .count();
        if diff > 1 {
            return Err(MembershipError::Invalid(format!(
                "a single-server change may change one voter, this changes {diff}"
            )));
        }
        Ok(self.append_membership(next))
    }

    /// How far behind the leader's log `peer` is, in entries (the leader's last index minus
    /// the peer's match index); `None` if this node does not lead or `peer` is not a member.
    /// A runtime promotes a learner once its lag is small.
    pub fn replication_lag(&self, peer: NodeId) -> Option<u64> {
        if self.role != Role::Leader {
            return None;
        }
        let matched = if peer == self.id() {
            self.log.persisted
        } else {
            self.progress.get(&peer)?.match_index
        };
        Some(self.log.last_index().saturating_sub(matched))
    }

    /// Index of the configuration entry in effect (0 for the initial configuration, or the
    /// snapshot's index). The configuration is committed once the commit index reaches it.
    pub fn membership_index(&self) -> LogIndex {
        self.latest_config().0
    }

    fn check_can_change(&self) -> Result<(), MembershipError> {
        if self.role != Role::Leader {
            return Err(MembershipError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer.is_some() {
            return Err(MembershipError::TransferInProgress);
        }
        // The 2015 fix: until a leader commits an entry of its term, an uncommitted
        // configuration of a previous leader may still be in the logs, and a second change
        // on top of it could produce two disjoint majorities.
        if !self.committed_in_current_term() && !bug!(self, SingleChangeBeforeCommit) {
            return Err(MembershipError::LeaderNotReady);
        }
        let (index, _) = self.latest_config();
        if index > self.log.committed || self.membership.is_joint() {
            return Err(MembershipError::ChangeInProgress { index });
        }
        Ok(())
    }

    fn append_membership(&mut self, mut next: Membership) -> EntryId {
        // Addresses are kept while a node is a member of either configuration (a removed
        // voter stays reachable until the joint phase ends).
        let members: Vec<NodeId> = next.members().collect();
        next.addresses.retain(|id, _| members.contains(id));
        let id = EntryId::new(self.term, self.log.last_index() + 1);
        let entry = Entry::new(id.term, id.index, EntryPayload::Membership(next));
        self.log.append([entry.clone()]);
        self.track_config_entries(std::slice::from_ref(&entry));
        self.broadcast_pending = true;
        id
    }

    /// The newest configuration that is committed: what every future leader will have. Unlike
    /// [`membership`](Self::membership) (the newest configuration in the log, which a new
    /// leader may still roll back, thesis §4.1), a node absent from it that was a member is
    /// gone for good ([`Membership::is_retired`]).
    pub fn committed_membership(&self) -> &Membership {
        self.committed_config().1
    }

    /// The index of the configuration entry of
    /// [`committed_membership`](Self::committed_membership) (0 for the initial configuration,
    /// or the snapshot's index): it changes exactly when the committed configuration does.
    pub fn committed_membership_index(&self) -> LogIndex {
        self.committed_config().0
    }

    fn committed_config(&self) -> (LogIndex, &Membership) {
        let committed = self.log.committed;
        self.configs
            .iter()
            .rev()
            .find(|(index, _)| *index <= committed)
            .map_or((0, &self.membership), |(i, m)| (*i, m))
    }

    /// The configuration in effect at the applied index: what a snapshot of the state
    /// machine taken now covers, and must record with it (§7: a snapshot carries the latest
    /// configuration as of its last included index). The runtime, not the state machine,
    /// keeps it.
    pub fn applied_membership(&self) -> &Membership {
        let applied = self.log.applied;
        self.configs
            .iter()
            .rev()
            .find(|(index, _)| *index <= applied)
            .map_or(&self.membership, |(_, m)| m)
    }

    /// The newest configuration entry in the log (or the base configuration).
    pub(super) fn latest_config(&self) -> (LogIndex, &Membership) {
        match self.configs.last() {
            Some((i, m)) => (*i, m),
            None => (0, &self.membership),
        }
    }

    /// Records configuration entries just written to the log; the newest takes effect.
    pub(super) fn track_config_entries(&mut self, entries: &[Entry]) {
        let mut newest = None;
        for e in entries {
            if let EntryPayload::Membership(m) = &e.payload {
                self.configs.push((e.index, m.clone()));
                newest = Some(m.clone());
            }
        }
        if let Some(m) = newest {
            self.set_membership(m);
        }
    }

    /// The log was truncated from `from` on: configurations in the removed part are undone.
    pub(super) fn on_log_truncated(&mut self, from: LogIndex) {
        let before = self.configs.len();
        while self.configs.len() > 1 && self.configs.last().is_some_and(|&(i, _)| i >= from) {
            self.configs.pop();
        }
        if self.configs.len() != before
            && let Some((_, m)) = self.configs.last()
        {
            let m = m.clone();
            self.set_membership(m);
        }
    }

    /// Forgets configurations no longer needed: those older than the one in effect at the
    /// applied index (which is never after the commit index), since a snapshot of the state
    /// machine records that one (§7).
    pub(super) fn compact_configs(&mut self) {
        let applied = self.log.applied.min(self.log.committed);
        let keep_from = self
            .configs
            .iter()
            .rposition(|&(i, _)| i <= applied)
            .unwrap_or(0);
        if keep_from > 0 {
            self.configs.drain(..keep_from);
        }
    }

    pub(super) fn set_membership(&mut self, m: Membership) {
        self.membership = m;
        if self.role != Role::Leader {
            return;
        }
        let me = self.id();
        let members: Vec<NodeId> = self.membership.members().filter(|&id| id != me).collect();
        self.progress.retain(|id, _| members.contains(id));
        for id in members {
            if !self.progress.contains_key(&id) {
                let mut p = self.new_progress();
                p.recent_active = true;
                self.progress.insert(id, p);
                self.broadcast_pending = true;
            }
        }
    }

    /// After the commit index advanced on a leader: leave a committed joint configuration
    /// (thesis §4.3), and step down if the committed configuration no longer has this node
    /// as a voter (thesis §4.2.2).
    pub(super) fn after_commit_membership(&mut self) {
        self.compact_configs();
        if self.role != Role::Leader {
            return;
        }
        let (index, latest) = self.latest_config();
        if index > self.log.committed {
            return;
        }
        if latest.is_joint() {
            let next = Membership {
                voters: latest.voters.clone(),
                voters_outgoing: Default::default(),
                learners: latest.learners.clone(),
                addresses: latest.addresses.clone(),
                highest_id: latest.highest_id,
            };
            self.append_membership(next);
        } else if !latest.is_voter(self.id()) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}

/// Applies `changes` to `m` (incoming voters and learners), checking each makes sense.
fn apply_changes(
    m: &mut Membership,
    changes: &[MembershipChange],
    allow_id_reuse: bool,
) -> Result<(), MembershipError> {
    let mut seen = Vec::new();
    for &change in changes {
        let id = match change {
            MembershipChange::AddVoter(id)
            | MembershipChange::AddLearner(id)
            | MembershipChange::Remove(id) => id,
        };
        if id == 0 {
            return Err(MembershipError::Invalid("node id 0 is reserved".into()));
        }
        if seen.contains(&id) {
            return Err(MembershipError::Invalid(format!(
                "node {id} appears twice in one change"
            )));
        }
        seen.push(id);
        // Node ids are never reused: a removed node, or a stale copy of its data, must never
        // count as the member it once was (a voter that forgot what it acknowledged could
        // vote for a leader lacking committed entries). A newcomer takes an id above every id
        // the cluster has had.
        let adding = matches!(
            change,
            MembershipChange::AddVoter(_) | MembershipChange::AddLearner(_)
        );
        if adding && !allow_id_reuse && !m.contains(id) && id <= m.highest_id {
            return Err(MembershipError::Invalid(format!(
                "node id {id} was used before (the highest id this cluster has had is {}); \
                 ids are never reused, so add the node under a new id, e.g. {}",
                m.highest_id,
                m.highest_id.saturating_add(1)
            )));
        }
        match change {
            MembershipChange::AddVoter(_) => {
                if m.voters.contains(&id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is already a voter"
                    )));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            MembershipChange::AddLearner(_) => {
                if m.voters.contains(&id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is a voter; remove it first to make it a learner"
                    )));
                }
                if !m.learners.insert(id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is already a learner"
                    )));
                }
            }
            MembershipChange::Remove(_) => {
                if !m.voters.remove(&id) && !m.learners.remove(&id) {
                    return Err(MembershipError::Invalid(format!(
                        "node {id} is not a member"
                    )));
                }
            }
        }
    }
    if m.voters.is_empty() {
        return Err(MembershipError::Invalid(
            "the change would leave no voters".into(),
        ));
    }
    m.highest_id = m.highest_id.max(m.largest_member_id());
    Ok(())
}
