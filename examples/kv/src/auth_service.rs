//! The etcd v3 `Auth` service: users, roles, permissions, enabling and disabling auth, and
//! Authenticate (password check, then a token learned by every member through the log).
//!
//! Changes are commands through the Raft log, run as the caller's user; the state machine
//! applies etcd's rules (root only while auth is enabled, root's protections). Passwords are
//! hashed here, on the member that took the request, before anything is proposed, so they
//! never reach the log. Reads (UserGet, RoleList, ...) are linearizable queries.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::errors;
use crate::auth::hub::unix_millis;
use crate::auth::password::{hash_password, new_token, verify_password};
use crate::backend::KvBackend;
use crate::error::KvError;
use crate::proto::dengine::kv::v1::{
    Authenticate, PasswordHash, UserAdd, UserChangePassword, command,
    command_response::Result as C, query, query_response::Result as Q,
};
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};
use crate::shared::{Shared, unexpected};

/// The `Auth` service.
#[derive(Debug)]
pub(crate) struct AuthService<B> {
    shared: Arc<Shared<B>>,
}

impl<B> AuthService<B> {
    pub(crate) fn new(shared: Arc<Shared<B>>) -> Self {
        AuthService { shared }
    }
}

/// Answers `$request` by proposing the command `$op` built from it, run as the caller, and
/// unwrapping the state machine's response variant `$variant`.
macro_rules! command {
    ($self:ident, $request:ident, $op:expr, $variant:ident, $what:literal) => {{
        let user = $self.shared.identify(&$request)?;
        let req = $request.into_inner();
        match $self.shared.propose($op(req), user).await? {
            C::$variant(mut resp) => {
                $self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected($what)),
        }
    }};
}

/// Answers `$request` with the linearizable query `$op`, asked as the caller.
macro_rules! query {
    ($self:ident, $request:ident, $op:expr, $variant:ident, $what:literal) => {{
        let user = $self.shared.identify(&$request)?;
        let req = $request.into_inner();
        match $self.shared.query($op(req), user, false).await? {
            Q::$variant(mut resp) => {
                $self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected($what)),
        }
    }};
}

impl<B: KvBackend> AuthService<B> {
    /// Runs a password hash or check off the async threads, at most
    /// `max_concurrent_password_checks` at a time (the permit is released when the work
    /// ends, even if the client has gone away meanwhile).
    async fn with_password_permit<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        let permit = self.shared.auth.password_permit().await?;
        tokio::task::spawn_blocking(move || {
            let result = work();
            drop(permit);
            result
        })
        .await
        .map_err(|e| KvError::Internal(format!("password hashing failed: {e}")).into())
    }

    async fn hash(&self, password: String) -> Result<PasswordHash, Status> {
        let iterations = self.shared.auth.config().password_iterations;
        Ok(self
            .with_password_permit(move || hash_password(&password, iterations))
            .await??)
    }

    /// The caller must be root (while auth is enabled) before a password is hashed for it:
    /// hashing is costly, and the state machine would refuse the command anyway.
    fn check_root<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        let user = self.shared.identify(request)?;
        self.shared.auth.store().check_root(user.as_deref())?;
        Ok(user)
    }
}

fn no_prehashed(hashed: &str) -> Result<(), Status> {
    if hashed.is_empty() {
        Ok(())
    } else {
        Err(KvError::InvalidArgument(
            "hashedPassword is not supported by dengine-kv: send the password, the member \
             hashes it"
                .into(),
        )
        .into())
    }
}

#[tonic::async_trait]
impl<B: KvBackend> Auth for AuthService<B> {
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        command!(
            self,
            request,
            command::Op::AuthEnable,
            AuthEnable,
            "auth enable"
        )
    }

    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        command!(
            self,
            request,
            command::Op::AuthDisable,
            AuthDisable,
            "auth disable"
        )
    }

    async fn auth_status(
        &self,
        request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        query!(
            self,
            request,
            query::Op::AuthStatus,
            AuthStatus,
            "auth status"
        )
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let store = self.shared.auth.store();
        if !store.is_enabled() {
            // etcd clients log in whenever they have a user name; this answer tells them to
            // go on without a token.
            return Err(errors::auth_not_enabled().into());
        }
        let stored = store
            .user(&req.name)
            .and_then(|u| u.password().map(|p| (p.clone(), u.credential_revision())));
        // An unknown user (or one without password) costs as much as a wrong password, so
        // that timing does not tell which user names exist.
        let (hash, credential_revision, known) = match stored {
            Some((hash, revision)) => (hash, revision, true),
            None => (
                decoy_hash(self.shared.auth.config().password_iterations),
                0,
                false,
            ),
        };
        let password = req.password;
        let matches = self
            .with_password_permit(move || verify_password(&hash, &password))
            .await?;
        if !(known && matches) {
            return Err(errors::auth_failed().into());
        }
        let token = new_token()?;
        let op = command::Op::Authenticate(Authenticate {
            name: req.name,
            token,
            credential_revision,
            issued_unix_ms: unix_millis(),
        });
        match self.shared.propose(op, None).await? {
            C::Authenticate(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("authenticate")),
        }
    }

    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let user = self.check_root(&request)?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(errors::user_empty().into());
        }
        no_prehashed(&req.hashed_password)?;
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password = if no_password {
            None
        } else {
            Some(self.hash(req.password).await?)
        };
        let op = command::Op::UserAdd(UserAdd {
            name: req.name,
            password,
            no_password,
        });
        match self.shared.propose(op, user).await? {
            C::UserAdd(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("user add")),
        }
    }

    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        query!(self, request, query::Op::UserGet, UserGet, "user get")
    }

    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        query!(self, request, query::Op::UserList, UserList, "user list")
    }

    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        command!(
            self,
            request,
            command::Op::UserDelete,
            UserDelete,
            "user delete"
        )
    }

    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let user = self.check_root(&request)?;
        let req = request.into_inner();
        no_prehashed(&req.hashed_password)?;
        let op = command::Op::UserChangePassword(UserChangePassword {
            name: req.name,
            password: Some(self.hash(req.password).await?),
        });
        match self.shared.propose(op, user).await? {
            C::UserChangePassword(mut resp) => {
                self.shared.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("user change password")),
        }
    }

    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        command!(
            self,
            request,
            command::Op::UserGrantRole,
            UserGrantRole,
            "user grant role"
        )
    }

    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        command!(
            self,
            request,
            command::Op::UserRevokeRole,
            UserRevokeRole,
            "user revoke role"
        )
    }

    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        command!(self, request, command::Op::RoleAdd, RoleAdd, "role add")
    }

    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        query!(self, request, query::Op::RoleGet, RoleGet, "role get")
    }

    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        query!(self, request, query::Op::RoleList, RoleList, "role list")
    }

    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        command!(
            self,
            request,
            command::Op::RoleDelete,
            RoleDelete,
            "role delete"
        )
    }

    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        command!(
            self,
            request,
            command::Op::RoleGrantPermission,
            RoleGrantPermission,
            "role grant permission"
        )
    }

    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        command!(
            self,
            request,
            command::Op::RoleRevokePermission,
            RoleRevokePermission,
            "role revoke permission"
        )
    }
}

/// A hash no password matches in practice (an all-zero salt and hash), checked for unknown
/// users at the cost of a real one.
fn decoy_hash(iterations: u32) -> PasswordHash {
    use crate::proto::dengine::kv::v1::password_hash::Algorithm;
    PasswordHash {
        algorithm: Algorithm::Pbkdf2HmacSha256 as i32,
        iterations,
        salt: vec![0; 16].into(),
        hash: vec![0; 32].into(),
    }
}
