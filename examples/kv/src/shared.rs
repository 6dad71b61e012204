//! [`Shared`]: what every etcd service of a member uses — the backend, the watch and auth
//! hubs, the limits — and the way a request goes through them.
//!
//! Every request is identified first (its token or client certificate, see
//! [`Credentials`]); a write is checked against the member's auth state before it is
//! proposed (to refuse early) and carries its user into the log, where the state machine
//! checks it again when it applies it; a read carries its user into the query, checked when
//! it is served.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Status};

use crate::auth::access::Needs;
use crate::auth::hub::AuthHub;
use crate::auth::identity::Credentials;
use crate::auth::user_of;
use crate::backend::KvBackend;
use crate::config::KvConfig;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{
    Command, Query, StatsRequest, command, command_response, query, query_response,
};
use crate::proto::etcdserverpb::alarm_request::AlarmAction;
use crate::proto::etcdserverpb::{AlarmRequest, AlarmType, ResponseHeader};
use crate::quota;
use crate::state_machine::{decode_command_response, decode_query_response};
use crate::validate;
use crate::watch::WatchHub;

/// What every service shares.
#[derive(Debug)]
pub(crate) struct Shared<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) hub: WatchHub,
    pub(crate) auth: AuthHub,
    pub(crate) config: KvConfig,
}

impl<B: KvBackend> Shared<B> {
    /// A header with this member's fields and the given store revision.
    pub(crate) fn header(&self, revision: i64) -> ResponseHeader {
        let info = self.backend.header();
        ResponseHeader {
            cluster_id: info.cluster_id,
            member_id: info.member_id,
            revision,
            raft_term: info.raft_term,
        }
    }

    /// Completes a header the state machine filled with its revision.
    pub(crate) fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header
            .as_ref()
            .map_or_else(|| self.hub.revision(), |h| h.revision);
        *header = Some(self.header(revision));
    }

    /// A request's credentials.
    pub(crate) fn credentials<T>(&self, request: &Request<T>) -> Credentials {
        Credentials::of(request, self.config.client_cert_auth)
    }

    /// The user a request runs as (`None`: no credentials), or its refusal (an unknown
    /// token while auth is enabled).
    pub(crate) fn identify<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        Ok(self.auth.identify(&self.credentials(request))?)
    }

    /// Checks a write as the client API requires ([`validate::check_command`]) and against
    /// this member's auth state (a refusal costs no round through the log), then replicates
    /// it, run as `user`, and decodes the state machine's answer.
    pub(crate) async fn propose(
        &self,
        op: command::Op,
        user: Option<String>,
    ) -> Result<command_response::Result, Status> {
        // Auth and alarm commands are the ones without key-value needs: answered once this
        // member has applied them too.
        let auth_change = !Needs::has_needs(&op);
        // While auth is off everything is allowed: the needs (a copy of every key touched)
        // are not worked out.
        let auth = self.auth.store();
        let needs = if auth.is_enabled() {
            Needs::command(&op)
        } else {
            None
        };
        let adds_data = quota::adds_data(&op);
        let command = Command {
            op: Some(op),
            user: user.unwrap_or_default(),
            max_range_response_bytes: u64::try_from(self.config.max_range_response_bytes)
                .unwrap_or(u64::MAX),
        };
        // The request's shape first, then its user's permissions, as etcd does.
        validate::check_command(&command, &self.config)?;
        if let Some(needs) = &needs {
            auth.authorize(user_of(&command.user), needs)?;
        }
        let encoded = Bytes::from(command.encode_to_vec());
        if adds_data {
            self.check_quota(encoded.len()).await?;
        }
        let response = self.backend.propose(encoded).await?;
        if auth_change {
            self.applied_here().await;
        }
        Ok(decode_command_response(&response)?)
    }

    /// etcd's space quota, checked before a write that adds data is proposed: refused while
    /// a `NOSPACE` alarm is raised; a write that would take the store past
    /// [`KvConfig::quota_bytes`] raises the alarm (through the log, for every member) and is
    /// refused. The state machine refuses such writes too once the alarm is applied, so a
    /// write that passed this check just before is the only kind that can still land.
    async fn check_quota(&self, command_bytes: usize) -> Result<(), Status> {
        if self.hub.no_space() {
            return Err(quota::no_space().into());
        }
        let after = self
            .hub
            .size_bytes()
            .saturating_add(u64::try_from(command_bytes).unwrap_or(u64::MAX));
        if after <= self.config.quota_bytes {
            return Ok(());
        }
        let raise = Command {
            op: Some(command::Op::Alarm(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.backend.header().member_id,
                alarm: AlarmType::Nospace as i32,
            })),
            ..Command::default()
        };
        match self
            .backend
            .propose(Bytes::from(raise.encode_to_vec()))
            .await
        {
            Ok(_) => tracing::warn!(
                quota_bytes = self.config.quota_bytes,
                "the key space reached its quota (quota_bytes, etcd's --quota-backend-bytes): \
                 NOSPACE alarm raised; writes that add data are refused until an operator \
                 frees space (delete keys, compact) and runs `etcdctl alarm disarm`"
            ),
            Err(e) => tracing::warn!(
                "the key space reached its quota; raising the NOSPACE alarm failed: {e}"
            ),
        }
        Err(quota::no_space().into())
    }

    /// Waits until this member has applied every write committed so far (a linearizable
    /// read's barrier). A follower answers a forwarded write once the leader applied it; for
    /// auth changes that is not enough: this member checks its next requests against its own
    /// auth state and tokens (the token just issued, the user just added), so it answers
    /// only once it has applied the change too, as etcd does. If the barrier fails the change
    /// is applied all the same; it only shows here a little later.
    async fn applied_here(&self) {
        let barrier = Query {
            op: Some(query::Op::Stats(StatsRequest {})),
            ..Query::default()
        };
        if let Err(e) = self
            .backend
            .read(Bytes::from(barrier.encode_to_vec()), false)
            .await
        {
            tracing::debug!("no read barrier after an auth change: {e}");
        }
    }

    /// Runs a read as `user` (checked by the state machine when it serves it).
    pub(crate) async fn query(
        &self,
        op: query::Op,
        user: Option<String>,
        serializable: bool,
    ) -> Result<query_response::Result, Status> {
        let query = Query {
            op: Some(op),
            user: user.unwrap_or_default(),
            max_range_response_bytes: u64::try_from(self.config.max_range_response_bytes)
                .unwrap_or(u64::MAX),
        };
        let response = self
            .backend
            .read(Bytes::from(query.encode_to_vec()), serializable)
            .await?;
        Ok(decode_query_response(&response)?)
    }
}

pub(crate) fn unexpected(what: &str) -> Status {
    KvError::Internal(format!(
        "the state machine answered a {what} with another response type"
    ))
    .to_status()
}
