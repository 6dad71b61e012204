//! etcd's authentication and authorization: [`AuthStore`], the replicated users, roles,
//! permissions and enabled flag with etcd's rules for changing them and for checking a
//! request against them; the member-local [`AuthHub`](hub::AuthHub) (tokens, the published
//! store); password hashing; what a request needs ([`access`]); who a request comes from
//! ([`identity`]).
//!
//! [`AuthStore`] is part of the state machine: pure and deterministic, changed only by
//! applied commands, included in snapshots. Every write command carries the name of the user
//! it runs as, and the state machine checks that user's permissions when it applies the
//! command, so a permission revoked between a member's early check and the apply still
//! refuses, identically on every replica.

pub(crate) mod access;
pub(crate) mod hub;
pub(crate) mod identity;
pub(crate) mod password;

use std::collections::{BTreeMap, BTreeSet};

use crate::error::KvError;
use crate::proto::authpb::{Permission, permission::Type as PermType};
use crate::proto::dengine::kv::v1::{
    AuthRole, AuthSnapshot, AuthUser, Authenticate, PasswordHash, UserAdd, UserChangePassword,
};
use crate::proto::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
};
use access::{Interval, Needs, covers};

/// The user every cluster with auth enabled must have.
pub(crate) const ROOT_USER: &str = "root";
/// The role that grants everything, and the right to administer.
pub(crate) const ROOT_ROLE: &str = "root";

/// etcd's errors, with etcd's exact texts and codes: clients match on them (an etcd client
/// authenticates again on "invalid auth token", for one).
pub(crate) mod errors {
    use crate::error::KvError;

    pub(crate) fn user_empty() -> KvError {
        KvError::InvalidArgument("user name is empty".into())
    }
    pub(crate) fn role_empty() -> KvError {
        KvError::InvalidArgument("role name is empty".into())
    }
    pub(crate) fn auth_failed() -> KvError {
        KvError::InvalidArgument("authentication failed, invalid user ID or password".into())
    }
    pub(crate) fn invalid_auth_mgmt() -> KvError {
        KvError::InvalidArgument("invalid auth management".into())
    }
    pub(crate) fn root_user_missing() -> KvError {
        KvError::FailedPrecondition("root user does not exist".into())
    }
    pub(crate) fn root_role_missing() -> KvError {
        KvError::FailedPrecondition("root user does not have root role".into())
    }
    pub(crate) fn user_exists() -> KvError {
        KvError::FailedPrecondition("user name already exists".into())
    }
    pub(crate) fn user_not_found() -> KvError {
        KvError::FailedPrecondition("user name not found".into())
    }
    pub(crate) fn role_exists() -> KvError {
        KvError::FailedPrecondition("role name already exists".into())
    }
    pub(crate) fn role_not_found() -> KvError {
        KvError::FailedPrecondition("role name not found".into())
    }
    pub(crate) fn role_not_granted() -> KvError {
        KvError::FailedPrecondition("role is not granted to the user".into())
    }
    pub(crate) fn permission_not_granted() -> KvError {
        KvError::FailedPrecondition("permission is not granted to the role".into())
    }
    pub(crate) fn auth_not_enabled() -> KvError {
        KvError::FailedPrecondition("authentication is not enabled".into())
    }
}

/// One user.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct User {
    roles: BTreeSet<String>,
    /// `None`: the user has no password (etcd's `no_password`) and cannot log in with one.
    password: Option<PasswordHash>,
    /// The auth revision at which the password was last set: a token or an authentication
    /// checked against an older one is void.
    credential_revision: u64,
}

impl User {
    /// The stored password hash, if the user has a password.
    pub(crate) fn password(&self) -> Option<&PasswordHash> {
        self.password.as_ref()
    }

    /// The auth revision at which the password was last set (tokens and authentications
    /// carry it, and are void once it changes).
    pub(crate) fn credential_revision(&self) -> u64 {
        self.credential_revision
    }

    fn is_root(&self) -> bool {
        self.roles.contains(ROOT_ROLE)
    }
}

/// Users, roles, their permissions and whether auth is enabled.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct AuthStore {
    enabled: bool,
    /// Counts changes (etcd's auth revision), reported by AuthStatus.
    revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, in `(key, range_end)` order, one per pair.
    roles: BTreeMap<String, Vec<Permission>>,
}

/// `Some(name)` unless `name` is empty: the wire's "no user".
pub(crate) fn user_of(name: &str) -> Option<&str> {
    (!name.is_empty()).then_some(name)
}

impl AuthStore {
    /// Whether authentication is enabled.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// A user, if it exists.
    pub(crate) fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    fn changed(&mut self) {
        self.revision += 1;
    }

    /// Whether `user` may do what `needs` says. Everything is allowed while auth is
    /// disabled; then a user is required (etcd's "user name is empty"); root may do
    /// anything; others need their roles' permissions to cover every range.
    pub(crate) fn authorize(&self, user: Option<&str>, needs: &Needs) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        if needs.root {
            return self.check_root(user);
        }
        let name = user.ok_or_else(errors::user_empty)?;
        let Some(u) = self.users.get(name) else {
            // etcd: an unknown user (a certificate's name, a user deleted since) may do nothing.
            return Err(KvError::PermissionDenied);
        };
        if u.is_root() {
            return Ok(());
        }
        let read = self.granted(u, |t| matches!(t, PermType::Read | PermType::Readwrite));
        let write = self.granted(u, |t| matches!(t, PermType::Write | PermType::Readwrite));
        let read: Vec<&Interval> = read.iter().collect();
        let write: Vec<&Interval> = write.iter().collect();
        let allowed = needs.read.iter().all(|w| covers(&read, w))
            && needs.write.iter().all(|w| covers(&write, w));
        if allowed {
            Ok(())
        } else {
            Err(KvError::PermissionDenied)
        }
    }

    /// The ranges `user`'s roles grant with a permission type `wanted` accepts.
    fn granted(&self, user: &User, wanted: impl Fn(PermType) -> bool) -> Vec<Interval> {
        user.roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flatten()
            .filter(|p| PermType::try_from(p.perm_type).is_ok_and(&wanted))
            .map(|p| Interval::of(&p.key, &p.range_end))
            .collect()
    }

    /// etcd's administration check: nothing while auth is disabled, otherwise a user that
    /// exists and has the root role.
    pub(crate) fn check_root(&self, user: Option<&str>) -> Result<(), KvError> {
        if !self.enabled {
            return Ok(());
        }
        let name = user.ok_or_else(errors::user_empty)?;
        match self.users.get(name) {
            None => Err(errors::user_not_found()),
            Some(u) if u.is_root() => Ok(()),
            Some(_) => Err(KvError::PermissionDenied),
        }
    }

    /// AuthEnable: needs user root with role root. Enabling twice is a no-op (for root).
    pub(crate) fn enable(&mut self, caller: Option<&str>) -> Result<(), KvError> {
        if self.enabled {
            return self.check_root(caller);
        }
        let root = self
            .users
            .get(ROOT_USER)
            .ok_or_else(errors::root_user_missing)?;
        if !root.is_root() {
            return Err(errors::root_role_missing());
        }
        self.enabled = true;
        self.changed();
        Ok(())
    }

    /// AuthDisable (root only; a no-op when disabled).
    pub(crate) fn disable(&mut self, caller: Option<&str>) -> Result<(), KvError> {
        self.check_root(caller)?;
        if self.enabled {
            self.enabled = false;
            self.changed();
        }
        Ok(())
    }

    /// Checks an authentication decided by a member against the current state: auth is
    /// enabled and the user's password is still the one that was checked.
    pub(crate) fn check_authenticate(&self, cmd: &Authenticate) -> Result<(), KvError> {
        if !self.enabled {
            return Err(errors::auth_not_enabled());
        }
        match self.users.get(&cmd.name) {
            Some(u) if u.password.is_some() && u.credential_revision == cmd.credential_revision => {
                Ok(())
            }
            _ => Err(errors::auth_failed()),
        }
    }

    /// UserAdd (root only).
    pub(crate) fn user_add(&mut self, caller: Option<&str>, cmd: UserAdd) -> Result<(), KvError> {
        self.check_root(caller)?;
        if cmd.name.is_empty() {
            return Err(errors::user_empty());
        }
        if self.users.contains_key(&cmd.name) {
            return Err(errors::user_exists());
        }
        let password = match (cmd.password, cmd.no_password) {
            (_, true) => None,
            (Some(hash), false) => Some(hash),
            (None, false) => {
                return Err(KvError::InvalidArgument(
                    "a user without the no_password option needs a password hash".into(),
                ));
            }
        };
        self.changed();
        let user = User {
            roles: BTreeSet::new(),
            password,
            credential_revision: self.revision,
        };
        self.users.insert(cmd.name, user);
        Ok(())
    }

    /// UserDelete (root only; root itself cannot be deleted while auth is enabled).
    pub(crate) fn user_delete(&mut self, caller: Option<&str>, name: &str) -> Result<(), KvError> {
        self.check_root(caller)?;
        if self.enabled && name == ROOT_USER {
            return Err(errors::invalid_auth_mgmt());
        }
        self.users.remove(name).ok_or_else(errors::user_not_found)?;
        self.changed();
        Ok(())
    }

    /// UserChangePassword (root only). Voids the user's tokens (their credential revision
    /// changes).
    pub(crate) fn user_change_password(
        &mut self,
        caller: Option<&str>,
        cmd: UserChangePassword,
    ) -> Result<(), KvError> {
        self.check_root(caller)?;
        let hash = cmd.password.ok_or_else(|| {
            KvError::InvalidArgument("a password change needs a password hash".into())
        })?;
        let revision = self.revision + 1;
        let user = self
            .users
            .get_mut(&cmd.name)
            .ok_or_else(errors::user_not_found)?;
        user.password = Some(hash);
        user.credential_revision = revision;
        self.changed();
        Ok(())
    }

    /// UserGrantRole (root only). The root role need not exist as a role to be granted, as in
    /// etcd; granting a role twice is a no-op.
    pub(crate) fn user_grant_role(
        &mut self,
        caller: Option<&str>,
        req: &AuthUserGrantRoleRequest,
    ) -> Result<(), KvError> {
        self.check_root(caller)?;
        if !self.users.contains_key(&req.user) {
            return Err(errors::user_not_found());
        }
        if req.role != ROOT_ROLE && !self.roles.contains_key(&req.role) {
            return Err(errors::role_not_found());
        }
        let inserted = self
            .users
            .get_mut(&req.user)
            .is_some_and(|u| u.roles.insert(req.role.clone()));
        if inserted {
            self.changed();
        }
        Ok(())
    }

    /// UserRevokeRole (root only; root keeps role root while auth is enabled).
    pub(crate) fn user_revoke_role(
        &mut self,
        caller: Option<&str>,
        req: &AuthUserRevokeRoleRequest,
    ) -> Result<(), KvError> {
        self.check_root(caller)?;
        if self.enabled && req.name == ROOT_USER && req.role == ROOT_ROLE {
            return Err(errors::invalid_auth_mgmt());
        }
        let user = self
            .users
            .get_mut(&req.name)
            .ok_or_else(errors::user_not_found)?;
        if !user.roles.remove(&req.role) {
            return Err(errors::role_not_granted());
        }
        self.changed();
        Ok(())
    }

    /// RoleAdd (root only).
    pub(crate) fn role_add(&mut self, caller: Option<&str>, name: &str) -> Result<(), KvError> {
        self.check_root(caller)?;
        if name.is_empty() {
            return Err(errors::role_empty());
        }
        if self.roles.contains_key(name) {
            return Err(errors::role_exists());
        }
        self.roles.insert(name.to_string(), Vec::new());
        self.changed();
        Ok(())
    }

    /// RoleDelete (root only; not role root while auth is enabled). The role is revoked from
    /// every user that had it.
    pub(crate) fn role_delete(&mut self, caller: Option<&str>, name: &str) -> Result<(), KvError> {
        self.check_root(caller)?;
        if self.enabled && name == ROOT_ROLE {
            return Err(errors::invalid_auth_mgmt());
        }
        self.roles.remove(name).ok_or_else(errors::role_not_found)?;
        for user in self.users.values_mut() {
            user.roles.remove(name);
        }
        self.changed();
        Ok(())
    }

    /// RoleGrantPermission (root only): adds the permission, or changes the type of the one
    /// with the same key and range end.
    pub(crate) fn role_grant_permission(
        &mut self,
        caller: Option<&str>,
        req: &AuthRoleGrantPermissionRequest,
    ) -> Result<(), KvError> {
        self.check_root(caller)?;
        let perm = req
            .perm
            .clone()
            .ok_or_else(|| KvError::InvalidArgument("permission not given".into()))?;
        if PermType::try_from(perm.perm_type).is_err() {
            return Err(KvError::InvalidArgument(format!(
                "invalid permission type {}",
                perm.perm_type
            )));
        }
        let perms = self
            .roles
            .get_mut(&req.name)
            .ok_or_else(errors::role_not_found)?;
        let at = perms.partition_point(|p| (&p.key, &p.range_end) < (&perm.key, &perm.range_end));
        match perms.get_mut(at) {
            Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                p.perm_type = perm.perm_type;
            }
            _ => perms.insert(at, perm),
        }
        self.changed();
        Ok(())
    }

    /// RoleRevokePermission (root only): removes the permission with exactly this key and
    /// range end.
    pub(crate) fn role_revoke_permission(
        &mut self,
        caller: Option<&str>,
        req: &AuthRoleRevokePermissionRequest,
    ) -> Result<(), KvError> {
        self.check_root(caller)?;
        let perms = self
            .roles
            .get_mut(&req.role)
            .ok_or_else(errors::role_not_found)?;
        let before = perms.len();
        perms.retain(|p| p.key != req.key || p.range_end != req.range_end);
        if perms.len() == before {
            return Err(errors::permission_not_granted());
        }
        self.changed();
        Ok(())
    }

    /// UserGet: root, or the user asking about itself. The user's roles, in name order.
    pub(crate) fn user_get(
        &self,
        caller: Option<&str>,
        name: &str,
    ) -> Result<Vec<String>, KvError> {
        if caller != Some(name) {
            self.check_root(caller)?;
        }
        let user = self.users.get(name).ok_or_else(errors::user_not_found)?;
        Ok(user.roles.iter().cloned().collect())
    }

    /// UserList (root only), in name order.
    pub(crate) fn user_list(&self, caller: Option<&str>) -> Result<Vec<String>, KvError> {
        self.check_root(caller)?;
        Ok(self.users.keys().cloned().collect())
    }

    /// RoleGet: root, or a user that has the role. Its permissions in key order.
    pub(crate) fn role_get(
        &self,
        caller: Option<&str>,
        role: &str,
    ) -> Result<Vec<Permission>, KvError> {
        let has_role = caller
            .and_then(|c| self.users.get(c))
            .is_some_and(|u| u.roles.contains(role));
        if !has_role {
            self.check_root(caller)?;
        }
        self.roles
            .get(role)
            .cloned()
            .ok_or_else(errors::role_not_found)
    }

    /// RoleList (root only), in name order.
    pub(crate) fn role_list(&self, caller: Option<&str>) -> Result<Vec<String>, KvError> {
        self.check_root(caller)?;
        Ok(self.roles.keys().cloned().collect())
    }

    /// The store as a snapshot carries it.
    pub(crate) fn to_snapshot(&self) -> AuthSnapshot {
        AuthSnapshot {
            enabled: self.enabled,
            revision: self.revision,
            users: self
                .users
                .iter()
                .map(|(name, u)| AuthUser {
                    name: name.clone(),
                    roles: u.roles.iter().cloned().collect(),
                    password: u.password.clone(),
                    credential_revision: u.credential_revision,
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(name, perms)| AuthRole {
                    name: name.clone(),
                    permissions: perms.clone(),
                })
                .collect(),
        }
    }

    /// The store a snapshot describes (restoring the orders the store keeps, whatever order
    /// the snapshot lists things in).
    pub(crate) fn from_snapshot(snapshot: AuthSnapshot) -> Self {
        let users = snapshot
            .users
            .into_iter()
            .map(|u| {
                let user = User {
                    roles: u.roles.into_iter().collect(),
                    password: u.password,
                    credential_revision: u.credential_revision,
                };
                (u.name, user)
            })
            .collect();
        let roles = snapshot
            .roles
            .into_iter()
            .map(|r| {
                let mut perms = r.permissions;
                perms.sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                perms.dedup_by(|a, b| a.key == b.key && a.range_end == b.range_end);
                (r.name, perms)
            })
            .collect();
        AuthStore {
            enabled: snapshot.enabled,
            revision: snapshot.revision,
            users,
            roles,
        }
    }
}
