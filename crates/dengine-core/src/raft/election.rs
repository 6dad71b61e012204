//! Elections: timeouts, pre-vote, RequestVote on both sides, leader stickiness, and becoming
//! leader (Raft paper §5.2, §5.4.1; thesis §9.6 pre-vote, §4.2.3 stickiness, §8 blank entry).

use super::{Raft, bug};
use crate::message::{MessageBody, VoteRequest, VoteResponse};
use crate::quorum::{VoteResult, joint_vote_result};
use crate::store::LogReader;
use crate::types::{Entry, EntryPayload, NodeId, Role, Term};

impl<L: LogReader> Raft<L> {
    /// Starts an election now, as if the election timeout had elapsed (with a pre-vote round
    /// first when `pre_vote` is on). Does nothing on a leader or a node that is not a voter.
    pub fn campaign(&mut self) {
        if self.role != Role::Leader && self.is_promotable() {
            self.start_election(false);
        }
    }

    /// Starts a pre-vote round, or a real election when pre-vote is off or `force` is set
    /// (leader transfer skips pre-vote: the leader asked for it).
    pub(super) fn start_election(&mut self, force: bool) {
        if self.cfg.pre_vote && !force {
            self.become_pre_candidate();
        } else {
            self.become_candidate(force);
        }
    }

    /// Thesis §9.6: ask whether we *could* win before raising the term, so a node that was
    /// partitioned away cannot force the cluster into a new term when it returns.
    fn become_pre_candidate(&mut self) {
        // The term stays; our vote and the leader are forgotten only for our own bookkeeping.
        let term = self.term;
        self.reset_for_term(term, None);
        self.role = Role::PreCandidate;
        self.votes.insert(self.id(), true);
        let request = VoteRequest {
            pre_vote: true,
            last_log: self.log.last_id(),
            leader_transfer: false,
        };
        self.request_votes(self.term + 1, request);
        self.count_votes();
    }

    /// §5.2: increment the term, vote for ourselves, ask every other voter.
    fn become_candidate(&mut self, leader_transfer: bool) {
        let term = self.term + 1;
        self.reset_for_term(term, None);
        self.role = Role::Candidate;
        self.vote = Some(self.id());
        let request = VoteRequest {
            pre_vote: false,
            last_log: self.log.last_id(),
            leader_transfer,
        };
        self.request_votes(term, request);
        // Our own vote counts only once the new term and vote are durable, like anyone
        // else's: a candidate that crashed before persisting could otherwise vote again in
        // the same term after restart and help elect a second leader.
        let me = self.id();
        self.send(
            me,
            MessageBody::VoteResponse(VoteResponse {
                pre_vote: false,
                granted: true,
            }),
        );
    }

    fn request_votes(&mut self, term: Term, request: VoteRequest) {
        let me = self.id();
        let voters: Vec<NodeId> = self
            .membership
            .all_voters()
            .into_iter()
            .filter(|&v| v != me)
            .collect();
        for to in voters {
            // Requests do not depend on our write: a crash before persisting leaves nothing
            // that counted (our own vote is held back, see `become_candidate`).
            self.messages.push(crate::message::Message {
                from: me,
                to,
                term,
                body: MessageBody::VoteRequest(request),
            });
        }
    }

    /// Leader stickiness (thesis §4.2.3), active with CheckQuorum: a node that heard from a
    /// leader less than one base election timeout ago does not help anyone else get elected.
    /// A node that just restarted counts as having heard from one: it may have forgotten a
    /// leader whose lease the rest of the cluster still honours. (A brand-new node, at term 0,
    /// has never heard from any leader.)
    pub(super) fn in_leader_lease(&self) -> bool {
        let timeout = self.cfg.election_timeout_ticks;
        self.cfg.check_quorum
            && ((self.leader.is_some() && self.election_elapsed < timeout)
                || (self.restarted && self.now < timeout))
    }

    /// RequestVote receiver (§5.2, §5.4.1). `term` is the message term, already reconciled
    /// with ours by the dispatcher (equal, or higher for a pre-vote).
    pub(super) fn handle_vote_request(&mut self, from: NodeId, term: Term, req: VoteRequest) {
        // §5.2: at most one vote per term, first come first served; a repeated request from
        // the candidate we voted for is answered again (the first answer may have been lost).
        // A pre-vote for a higher term is granted regardless of our vote in this term.
        let can_vote = self.vote == Some(from)
            || (self.vote.is_none() && self.leader.is_none())
            || (req.pre_vote && term > self.term);
        // §5.4.1: only for candidates whose log is at least as up to date as ours, so a
        // leader always holds every committed entry (Leader Completeness).
        let granted = can_vote && self.log.is_up_to_date(req.last_log);
        if granted && !req.pre_vote {
            self.vote = Some(from);
            // Granting a vote defers our own candidacy (§5.2).
            self.reset_election_timer();
        }
        let body = MessageBody::VoteResponse(VoteResponse {
            pre_vote: req.pre_vote,
            granted,
        });
        // A granted pre-vote answers in the proposed term; everything else in ours.
        let response_term = if req.pre_vote && granted {
            term
        } else {
            self.term
        };
        let msg = crate::message::Message {
            from: self.id(),
            to: from,
            term: response_term,
            body,
        };
        self.send_message(msg);
    }

    pub(super) fn handle_vote_response(&mut self, from: NodeId, term: Term, resp: VoteResponse) {
        let counts = match self.role {
            // A pre-vote grant is only for the term we proposed (one above ours): grants from
            // an earlier round must not count.
            Role::PreCandidate => resp.pre_vote && (!resp.granted || term == self.term + 1),
            Role::Candidate => !resp.pre_vote && term == self.term,
            _ => false,
        };
        if !counts || !self.voters_contain(from) {
            return;
        }
        self.votes.entry(from).or_insert(resp.granted);
        self.count_votes();
    }

    fn count_votes(&mut self) {
        let m = &self.membership;
        let outcome = if bug!(self, JointQuorumIncomingOnly) {
            crate::quorum::vote_result(&m.voters, &self.votes)
        } else {
            joint_vote_result(&m.voters, &m.voters_outgoing, &self.votes)
        };
        match outcome {
            VoteResult::Won => match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            },
            VoteResult::Lost => {
                let term = self.term;
                self.become_follower(term, None);
            }
            VoteResult::Pending => {}
        }
    }

    /// §5.2: a candidate with a majority becomes leader; it appends a blank entry of its term
    /// (§8), because it may commit entries of earlier terms only by committing one of its own
    /// (§5.4.2), and it needs that commit to learn the commit index for reads (thesis §6.4).
    fn become_leader(&mut self) {
        self.role = Role::Leader;
        self.leader = Some(self.id());
        self.votes.clear();
        self.heartbeat_elapsed = 0;
        self.election_elapsed = 0;
        self.progress.clear();
        let me = self.id();
        let members: Vec<NodeId> = self.membership.members().filter(|&m| m != me).collect();
        for peer in members {
            let mut p = self.new_progress();
            // Followers start active so CheckQuorum gives them a full timeout to answer.
            p.recent_active = true;
            self.progress.insert(peer, p);
        }
        self.reads.reset_for_new_term();
        let index = self.log.last_index() + 1;
        self.log
            .append([Entry::new(self.term, index, EntryPayload::Blank)]);
        self.broadcast_pending = true;
    }
}
