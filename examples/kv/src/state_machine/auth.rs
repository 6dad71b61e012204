//! The state machine's auth commands and queries: each applies an [`AuthStore`] rule (who
//! may run it is the rule's business), then publishes the changed store to the member's
//! [`AuthHub`](crate::auth::hub::AuthHub) and keeps its tokens in step.

use std::sync::Arc;

use super::KvStateMachine;
use crate::auth::AuthStore;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{command, command_response, query, query_response};
use crate::proto::etcdserverpb::{
    AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse, AuthRoleDeleteResponse,
    AuthRoleGetResponse, AuthRoleGrantPermissionResponse, AuthRoleListResponse,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGetResponse,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse,
    AuthenticateResponse, ResponseHeader,
};
use crate::store;

impl KvStateMachine {
    fn header(&self) -> Option<ResponseHeader> {
        Some(store::header(self.store.revision()))
    }

    /// Applies an auth command run as `user`. The key-value commands are not auth commands:
    /// they are refused here, which the caller never lets happen.
    pub(super) fn apply_auth(
        &mut self,
        op: command::Op,
        user: Option<&str>,
    ) -> Result<command_response::Result, KvError> {
        use command_response::Result as R;
        let header = self.header();
        let before = (self.auth.revision(), self.auth.is_enabled());
        // Copy on write: the hub holds the published store until the new one replaces it.
        let auth = Arc::make_mut(&mut self.auth);
        let result = match op {
            command::Op::AuthEnable(_) => auth
                .enable(user)
                .map(|()| R::AuthEnable(AuthEnableResponse { header })),
            command::Op::AuthDisable(_) => auth
                .disable(user)
                .map(|()| R::AuthDisable(AuthDisableResponse { header })),
            command::Op::Authenticate(cmd) => auth.check_authenticate(&cmd).map(|()| {
                self.auth_hub.learn_token(&cmd);
                R::Authenticate(AuthenticateResponse {
                    header,
                    token: cmd.token,
                })
            }),
            command::Op::UserAdd(cmd) => auth
                .user_add(user, cmd)
                .map(|()| R::UserAdd(AuthUserAddResponse { header })),
            command::Op::UserDelete(req) => auth.user_delete(user, &req.name).map(|()| {
                self.auth_hub.forget_tokens_of(&req.name);
                R::UserDelete(AuthUserDeleteResponse { header })
            }),
            command::Op::UserChangePassword(cmd) => {
                let name = cmd.name.clone();
                auth.user_change_password(user, cmd).map(|()| {
                    self.auth_hub.forget_tokens_of(&name);
                    R::UserChangePassword(AuthUserChangePasswordResponse { header })
                })
            }
            command::Op::UserGrantRole(req) => auth
                .user_grant_role(user, &req)
                .map(|()| R::UserGrantRole(AuthUserGrantRoleResponse { header })),
            command::Op::UserRevokeRole(req) => auth
                .user_revoke_role(user, &req)
                .map(|()| R::UserRevokeRole(AuthUserRevokeRoleResponse { header })),
            command::Op::RoleAdd(req) => auth
                .role_add(user, &req.name)
                .map(|()| R::RoleAdd(AuthRoleAddResponse { header })),
            command::Op::RoleDelete(req) => auth
                .role_delete(user, &req.role)
                .map(|()| R::RoleDelete(AuthRoleDeleteResponse { header })),
            command::Op::RoleGrantPermission(req) => auth
                .role_grant_permission(user, &req)
                .map(|()| R::RoleGrantPermission(AuthRoleGrantPermissionResponse { header })),
            command::Op::RoleRevokePermission(req) => auth
                .role_revoke_permission(user, &req)
                .map(|()| R::RoleRevokePermission(AuthRoleRevokePermissionResponse { header })),
            command::Op::Put(_)
            | command::Op::DeleteRange(_)
            | command::Op::Txn(_)
            | command::Op::Compact(_)
            | command::Op::AutoCompact(_)
            | command::Op::Alarm(_)
            | command::Op::LeaseGrant(_)
            | command::Op::LeaseRevoke(_)
            | command::Op::LeaseExpire(_)
            | command::Op::LeaseCheckpoint(_) => Err(KvError::Internal(
                "a key-value command was taken for an auth command".into(),
            )),
        };
        if (self.auth.revision(), self.auth.is_enabled()) != before {
            if before.1 && !self.auth.is_enabled() {
                // etcd: disabling auth voids every token.
                self.auth_hub.forget_tokens();
            }
            self.auth_hub.publish(self.auth.clone());
        }
        result
    }

    /// Answers an auth query asked as `user`.
    pub(super) fn answer_auth(
        &self,
        op: query::Op,
        user: Option<&str>,
    ) -> Result<query_response::Result, KvError> {
        use query_response::Result as R;
        let header = self.header();
        let auth: &AuthStore = &self.auth;
        match op {
            query::Op::UserGet(req) => auth
                .user_get(user, &req.name)
                .map(|roles| R::UserGet(AuthUserGetResponse { header, roles })),
            query::Op::UserList(_) => auth
                .user_list(user)
                .map(|users| R::UserList(AuthUserListResponse { header, users })),
            query::Op::RoleGet(req) => auth
                .role_get(user, &req.role)
                .map(|perm| R::RoleGet(AuthRoleGetResponse { header, perm })),
            query::Op::RoleList(_) => auth
                .role_list(user)
                .map(|roles| R::RoleList(AuthRoleListResponse { header, roles })),
            query::Op::AuthStatus(_) => Ok(R::AuthStatus(AuthStatusResponse {
                header,
                enabled: auth.is_enabled(),
                auth_revision: auth.revision(),
            })),
            query::Op::Range(_)
            | query::Op::Stats(_)
            | query::Op::Hash(_)
            | query::Op::Alarms(_)
            | query::Op::Backup(_)
            | query::Op::WatchHistory(_)
            | query::Op::LeaseTimeToLive(_)
            | query::Op::LeaseLeases(_) => Err(KvError::Internal(
                "a key-value query was taken for an auth query".into(),
            )),
        }
    }
}
