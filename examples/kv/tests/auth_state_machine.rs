//! etcd's auth rules in `KvStateMachine`, through the `StateMachine` contract: enabling,
//! root's protections, who may manage users and roles, permission checks on key ranges
//! (single keys, ranges, prefixes, from-key, unions of several roles, transactions), a
//! permission revoked between a member's check and the apply, tokens learned by every
//! replica, and snapshots with auth state (and of the format before it).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_kv::proto::authpb::{Permission, permission::Type as PermType};
use dengine_kv::proto::dengine::kv::v1::{
    Authenticate, Command, PasswordHash, Query, StoreSnapshot, UserAdd, UserChangePassword,
    command, command_response, password_hash::Algorithm, query, query_response,
};
use dengine_kv::proto::etcdserverpb::{
    AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGetRequest, AuthRoleGrantPermissionRequest, AuthRoleListRequest,
    AuthRoleRevokePermissionRequest, AuthStatusRequest, AuthUserDeleteRequest, AuthUserGetRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthUserRevokeRoleRequest, CompactionRequest,
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    request_op::Request,
};
use dengine_kv::proto::mvccpb::KeyValue;
use dengine_kv::{
    AuthHub, KvError, KvStateMachine, WatchHub, decode_command_response, decode_query_response,
};
use prost::Message;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A stand-in hash: the state machine stores hashes, it never computes or checks them.
fn hash(tag: u8) -> PasswordHash {
    PasswordHash {
        algorithm: Algorithm::Pbkdf2HmacSha256 as i32,
        iterations: 1,
        salt: vec![tag; 16].into(),
        hash: vec![tag; 32].into(),
    }
}

fn encode(op: command::Op, user: &str) -> Bytes {
    Bytes::from(
        Command {
            op: Some(op),
            user: user.into(),
            ..Command::default()
        }
        .encode_to_vec(),
    )
}

/// One replica: a state machine with its own auth hub.
struct Replica {
    sm: KvStateMachine,
}

impl Replica {
    fn new() -> Self {
        Replica {
            sm: KvStateMachine::with_auth_hub(WatchHub::default(), AuthHub::default()),
        }
    }

    fn hub(&self) -> &AuthHub {
        self.sm.auth_hub()
    }

    async fn apply(&mut self, command: Bytes) -> Result<command_response::Result, KvError> {
        decode_command_response(&self.sm.apply_next(command).await.unwrap())
    }

    /// Runs `op` as `user` ("" for none).
    async fn run(&mut self, user: &str, op: command::Op) -> Result<(), KvError> {
        self.apply(encode(op, user)).await.map(|_| ())
    }

    async fn ask(&self, user: &str, op: query::Op) -> Result<query_response::Result, KvError> {
        let query = Query {
            op: Some(op),
            user: user.into(),
            ..Query::default()
        };
        decode_query_response(
            &self
                .sm
                .query(Bytes::from(query.encode_to_vec()))
                .await
                .unwrap(),
        )
    }

    async fn get(&self, user: &str, key: &str, end: &str) -> Result<usize, KvError> {
        let req = RangeRequest {
            key: b(key),
            range_end: b(end),
            ..RangeRequest::default()
        };
        match self.ask(user, query::Op::Range(req)).await? {
            query_response::Result::Range(r) => Ok(r.kvs.len()),
            other => panic!("unexpected {other:?}"),
        }
    }

    async fn put(&mut self, user: &str, key: &str) -> Result<(), KvError> {
        self.run(user, put_op(key, false)).await
    }
}

fn put_op(key: &str, prev_kv: bool) -> command::Op {
    command::Op::Put(PutRequest {
        key: b(key),
        value: b("v"),
        prev_kv,
        ..PutRequest::default()
    })
}

fn user_add(name: &str, tag: u8) -> command::Op {
    command::Op::UserAdd(UserAdd {
        name: name.into(),
        password: Some(hash(tag)),
        no_password: false,
    })
}

fn grant_role(user: &str, role: &str) -> command::Op {
    command::Op::UserGrantRole(AuthUserGrantRoleRequest {
        user: user.into(),
        role: role.into(),
    })
}

fn role_add(name: &str) -> command::Op {
    command::Op::RoleAdd(AuthRoleAddRequest { name: name.into() })
}

fn grant(role: &str, perm: PermType, key: &str, end: &str) -> command::Op {
    command::Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
        name: role.into(),
        perm: Some(Permission {
            perm_type: perm as i32,
            key: b(key),
            range_end: b(end),
        }),
    })
}

fn revoke(role: &str, key: &str, end: &str) -> command::Op {
    command::Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
        role: role.into(),
        key: b(key),
        range_end: b(end),
    })
}

fn enable() -> command::Op {
    command::Op::AuthEnable(AuthEnableRequest {})
}

fn precondition(m: &str) -> KvError {
    KvError::FailedPrecondition(m.into())
}

fn invalid(m: &str) -> KvError {
    KvError::InvalidArgument(m.into())
}

fn denied<T>() -> Result<T, KvError> {
    Err(KvError::PermissionDenied)
}

/// Root (with role root) and auth enabled.
async fn enabled() -> Replica {
    let mut r = Replica::new();
    r.run("", user_add("root", 1)).await.unwrap();
    r.run("", grant_role("root", "root")).await.unwrap();
    r.run("", enable()).await.unwrap();
    r
}

#[tokio::test]
async fn enabling_needs_user_root_with_role_root() {
    let mut r = Replica::new();
    assert_eq!(
        r.run("", enable()).await,
        Err(precondition("root user does not exist"))
    );
    r.run("", user_add("root", 1)).await.unwrap();
    assert_eq!(
        r.run("", enable()).await,
        Err(precondition("root user does not have root role"))
    );
    // As in etcd, role root need not exist to be granted.
    r.run("", grant_role("root", "root")).await.unwrap();
    // Still disabled: anyone may do anything.
    r.put("", "k").await.unwrap();
    r.run("", enable()).await.unwrap();
    match r.ask("", query::Op::AuthStatus(AuthStatusRequest {})).await {
        Ok(query_response::Result::AuthStatus(s)) => {
            assert!(s.enabled);
            assert!(s.auth_revision >= 3, "{}", s.auth_revision);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(r.put("", "k").await, Err(invalid("user name is empty")));
    assert_eq!(r.get("", "k", "").await, Err(invalid("user name is empty")));
    r.put("root", "k").await.unwrap();
    assert_eq!(r.get("root", "k", "").await, Ok(1));
    // Enabling again: a no-op for root, refused to others.
    r.run("root", enable()).await.unwrap();
    assert_eq!(
        r.run("", enable()).await,
        Err(invalid("user name is empty"))
    );
    // An error's gRPC status is etcd's.
    let status = precondition("root user does not exist").to_status();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(status.message(), "etcdserver: root user does not exist");
}

#[tokio::test]
async fn root_keeps_its_user_and_role_while_auth_is_enabled() {
    let mut r = enabled().await;
    r.run("root", role_add("root")).await.unwrap();
    let mgmt = Err(invalid("invalid auth management"));
    let delete_root = || {
        command::Op::UserDelete(AuthUserDeleteRequest {
            name: "root".into(),
        })
    };
    let revoke_root = || {
        command::Op::UserRevokeRole(AuthUserRevokeRoleRequest {
            name: "root".into(),
            role: "root".into(),
        })
    };
    let delete_root_role = || {
        command::Op::RoleDelete(AuthRoleDeleteRequest {
            role: "root".into(),
        })
    };
    assert_eq!(r.run("root", delete_root()).await, mgmt);
    assert_eq!(r.run("root", revoke_root()).await, mgmt);
    assert_eq!(r.run("root", delete_root_role()).await, mgmt);
    // Disabled, they are allowed.
    r.run("root", command::Op::AuthDisable(AuthDisableRequest {}))
        .await
        .unwrap();
    r.run("", revoke_root()).await.unwrap();
    r.run("", delete_root_role()).await.unwrap();
    r.run("", delete_root()).await.unwrap();
    assert_eq!(
        r.run("", enable()).await,
        Err(precondition("root user does not exist"))
    );
}

#[tokio::test]
async fn managing_users_and_roles_needs_root_while_enabled() {
    let mut r = enabled().await;
    r.run("root", user_add("alice", 2)).await.unwrap();
    r.run("root", role_add("reader")).await.unwrap();
    r.run("root", grant_role("alice", "reader")).await.unwrap();
    let denied = Err(KvError::PermissionDenied);
    assert_eq!(r.run("alice", role_add("other")).await, denied);
    assert_eq!(r.run("alice", user_add("mallory", 3)).await, denied);
    assert_eq!(r.run("alice", grant_role("alice", "root")).await, denied);
    assert_eq!(
        r.run("", role_add("other")).await,
        Err(invalid("user name is empty"))
    );
    assert_eq!(
        r.run("ghost", role_add("other")).await,
        Err(precondition("user name not found"))
    );
    assert_eq!(
        r.run("alice", command::Op::AuthDisable(AuthDisableRequest {}))
            .await,
        denied
    );
    // Compaction is administration too.
    let compact = || {
        command::Op::Compact(CompactionRequest {
            revision: 0,
            physical: false,
        })
    };
    assert_eq!(r.run("alice", compact()).await.map(|_| ()), denied);
    // A user may read itself and the roles it has; lists are root's.
    let get_user = |name: &str| query::Op::UserGet(AuthUserGetRequest { name: name.into() });
    match r.ask("alice", get_user("alice")).await {
        Ok(query_response::Result::UserGet(u)) => assert_eq!(u.roles, ["reader"]),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(r.ask("alice", get_user("root")).await.map(|_| ()), denied);
    let get_role = |role: &str| query::Op::RoleGet(AuthRoleGetRequest { role: role.into() });
    assert!(r.ask("alice", get_role("reader")).await.is_ok());
    assert_eq!(r.ask("alice", get_role("root")).await.map(|_| ()), denied);
    assert_eq!(
        r.ask("alice", query::Op::UserList(AuthUserListRequest {}))
            .await
            .map(|_| ()),
        denied
    );
    match r
        .ask("root", query::Op::UserList(AuthUserListRequest {}))
        .await
    {
        Ok(query_response::Result::UserList(l)) => assert_eq!(l.users, ["alice", "root"]),
        other => panic!("unexpected {other:?}"),
    }
    match r
        .ask("root", query::Op::RoleList(AuthRoleListRequest {}))
        .await
    {
        Ok(query_response::Result::RoleList(l)) => assert_eq!(l.roles, ["reader"]),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn user_and_role_errors_are_etcds() {
    let mut r = Replica::new();
    r.run("", user_add("alice", 2)).await.unwrap();
    assert_eq!(
        r.run("", user_add("alice", 2)).await,
        Err(precondition("user name already exists"))
    );
    assert_eq!(
        r.run("", user_add("", 2)).await,
        Err(invalid("user name is empty"))
    );
    assert_eq!(
        r.run("", role_add("")).await,
        Err(invalid("role name is empty"))
    );
    r.run("", role_add("r")).await.unwrap();
    assert_eq!(
        r.run("", role_add("r")).await,
        Err(precondition("role name already exists"))
    );
    assert_eq!(
        r.run("", grant_role("bob", "r")).await,
        Err(precondition("user name not found"))
    );
    assert_eq!(
        r.run("", grant_role("alice", "nope")).await,
        Err(precondition("role name not found"))
    );
    assert_eq!(
        r.run(
            "",
            command::Op::UserRevokeRole(AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "r".into(),
            })
        )
        .await,
        Err(precondition("role is not granted to the user"))
    );
    assert_eq!(
        r.run("", revoke("r", "k", "")).await,
        Err(precondition("permission is not granted to the role"))
    );
    assert_eq!(
        r.run("", grant("nope", PermType::Read, "k", "")).await,
        Err(precondition("role name not found"))
    );
    // Granting the same key and range again changes the permission's type.
    r.run("", grant("r", PermType::Read, "k", ""))
        .await
        .unwrap();
    r.run("", grant("r", PermType::Write, "k", ""))
        .await
        .unwrap();
    r.run("", grant("r", PermType::Read, "a", "b"))
        .await
        .unwrap();
    match r
        .ask(
            "",
            query::Op::RoleGet(AuthRoleGetRequest { role: "r".into() }),
        )
        .await
    {
        Ok(query_response::Result::RoleGet(g)) => {
            let perms: Vec<(i32, Bytes)> = g
                .perm
                .iter()
                .map(|p| (p.perm_type, p.key.clone()))
                .collect();
            assert_eq!(
                perms,
                [
                    (PermType::Read as i32, b("a")),
                    (PermType::Write as i32, b("k"))
                ]
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Deleting a role takes it from its users.
    r.run("", grant_role("alice", "r")).await.unwrap();
    r.run(
        "",
        command::Op::RoleDelete(AuthRoleDeleteRequest { role: "r".into() }),
    )
    .await
    .unwrap();
    match r
        .ask(
            "",
            query::Op::UserGet(AuthUserGetRequest {
                name: "alice".into(),
            }),
        )
        .await
    {
        Ok(query_response::Result::UserGet(u)) => assert!(u.roles.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
}

/// alice: role `reader` reads the prefix `app/`, role `writer` reads and writes `x`, writes
/// every key from `z` on and reads `[app0, b)`.
async fn alice() -> Replica {
    let mut r = enabled().await;
    r.run("root", user_add("alice", 2)).await.unwrap();
    for role in ["reader", "writer"] {
        r.run("root", role_add(role)).await.unwrap();
        r.run("root", grant_role("alice", role)).await.unwrap();
    }
    r.run("root", grant("reader", PermType::Read, "app/", "app0"))
        .await
        .unwrap();
    r.run("root", grant("writer", PermType::Readwrite, "x", ""))
        .await
        .unwrap();
    r.run("root", grant("writer", PermType::Write, "z", "\0"))
        .await
        .unwrap();
    r.run("root", grant("writer", PermType::Read, "app0", "b"))
        .await
        .unwrap();
    for key in ["app/1", "app/2", "apple", "c", "x", "zz"] {
        r.put("root", key).await.unwrap();
    }
    r
}

#[tokio::test]
async fn permissions_cover_keys_ranges_prefixes_and_from_key() {
    let mut r = alice().await;
    // Reads.
    assert_eq!(r.get("alice", "app/1", "").await, Ok(1));
    assert_eq!(r.get("alice", "app/", "app0").await, Ok(2), "the prefix");
    // [app/, app0) from one role and [app0, b) from the other: one run, apple included.
    assert_eq!(r.get("alice", "app/", "b").await, Ok(3), "two roles' union");
    assert_eq!(r.get("alice", "apple", "").await, Ok(1));
    assert_eq!(
        r.get("alice", "app/", "c\0").await,
        denied(),
        "c is not granted"
    );
    assert_eq!(r.get("alice", "c", "").await, denied());
    assert_eq!(
        r.get("alice", "app", "app0").await,
        denied(),
        "wider than the prefix"
    );
    assert_eq!(r.get("alice", "x", "").await, Ok(1));
    assert_eq!(r.get("alice", "zz", "").await, denied(), "write only");
    assert_eq!(r.get("alice", "\0", "\0").await, denied(), "every key");
    // Writes.
    assert_eq!(r.put("alice", "app/1").await, denied(), "read only");
    r.put("alice", "x").await.unwrap();
    r.put("alice", "zzz").await.unwrap();
    assert_eq!(r.put("alice", "y").await, denied());
    // A put that returns the previous value reads it too.
    assert_eq!(r.run("alice", put_op("zzz", true)).await, denied());
    r.run("alice", put_op("x", true)).await.unwrap();
    let delete = |key: &str, end: &str, prev_kv: bool| {
        command::Op::DeleteRange(DeleteRangeRequest {
            key: b(key),
            range_end: b(end),
            prev_kv,
        })
    };
    assert_eq!(r.run("alice", delete("z", "\0", true)).await, denied());
    r.run("alice", delete("z", "\0", false)).await.unwrap();
    assert_eq!(r.run("alice", delete("y", "\0", false)).await, denied());
    // Transactions: compares read, and both branches count whichever runs.
    let txn = |compare_key: &str, success: Vec<RequestOp>, failure: Vec<RequestOp>| {
        command::Op::Txn(TxnRequest {
            compare: vec![Compare {
                key: b(compare_key),
                ..Compare::default()
            }],
            success,
            failure,
        })
    };
    let put_req = |key: &str| RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: b(key),
            value: b("t"),
            ..PutRequest::default()
        })),
    };
    let get_req = |key: &str| RequestOp {
        request: Some(Request::RequestRange(RangeRequest {
            key: b(key),
            ..RangeRequest::default()
        })),
    };
    r.run(
        "alice",
        txn("app/1", vec![put_req("x")], vec![get_req("app/2")]),
    )
    .await
    .unwrap();
    assert_eq!(
        r.run("alice", txn("c", vec![put_req("x")], vec![])).await,
        denied(),
        "a compare on a key alice may not read"
    );
    assert_eq!(
        r.run(
            "alice",
            txn("x", vec![put_req("x")], vec![put_req("app/1")])
        )
        .await,
        denied(),
        "the failure branch writes where alice may not"
    );
    // Root may do anything; a user that does not exist nothing.
    assert_eq!(r.get("root", "\0", "\0").await, Ok(5));
    assert_eq!(r.get("ghost", "x", "").await, denied());
    let revision = r.sm.revision();
    assert_eq!(r.put("alice", "app/9").await, denied());
    assert_eq!(r.sm.revision(), revision, "a refused write changes nothing");
}

#[tokio::test]
async fn a_permission_revoked_before_the_apply_refuses_on_every_replica() {
    let mut a = alice().await;
    let mut b_replica = alice().await;
    // A member checked alice's put on x and proposed it; the revocation was proposed
    // elsewhere and comes first in the log.
    let put = encode(put_op("x", false), "alice");
    let revocation = encode(revoke("writer", "x", ""), "root");
    for r in [&mut a, &mut b_replica] {
        r.apply(revocation.clone()).await.unwrap();
        assert_eq!(
            r.apply(put.clone()).await.map(|_| ()),
            Err(KvError::PermissionDenied)
        );
    }
    assert_eq!(a.sm.revision(), b_replica.sm.revision());
    assert_eq!(
        a.sm.snapshot().await.unwrap(),
        b_replica.sm.snapshot().await.unwrap()
    );
}

fn authenticate(name: &str, token: &str, credential_revision: u64) -> command::Op {
    command::Op::Authenticate(Authenticate {
        name: name.into(),
        token: token.into(),
        credential_revision,
        issued_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    })
}

#[tokio::test]
async fn every_replica_learns_a_token_and_forgets_it_with_the_password() {
    let mut replicas = [enabled().await, enabled().await];
    let mut credential = 0;
    for r in &mut replicas {
        r.run("root", user_add("alice", 2)).await.unwrap();
        match r
            .ask("root", query::Op::AuthStatus(AuthStatusRequest {}))
            .await
        {
            Ok(query_response::Result::AuthStatus(s)) => credential = s.auth_revision,
            other => panic!("unexpected {other:?}"),
        }
    }
    for r in &mut replicas {
        // A stale check (an older password) is refused; the current one is learned.
        assert_eq!(
            r.run("", authenticate("alice", "stale", credential - 1))
                .await,
            Err(invalid(
                "authentication failed, invalid user ID or password"
            ))
        );
        match r
            .apply(encode(authenticate("alice", "tok", credential), ""))
            .await
        {
            Ok(command_response::Result::Authenticate(resp)) => assert_eq!(resp.token, "tok"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.hub().token_count(), 1);
    }
    // The services resolve tokens through the hub: both replicas know this one.
    for r in &replicas {
        assert_eq!(r.hub().user_of_token("tok").as_deref(), Some("alice"));
        assert_eq!(r.hub().user_of_token("stale"), None);
    }
    // A password change voids it everywhere.
    for r in &mut replicas {
        r.run(
            "root",
            command::Op::UserChangePassword(UserChangePassword {
                name: "alice".into(),
                password: Some(hash(9)),
            }),
        )
        .await
        .unwrap();
        assert_eq!(r.hub().token_count(), 0);
        assert_eq!(r.hub().user_of_token("tok"), None);
        assert_eq!(
            r.run("", authenticate("alice", "tok2", credential)).await,
            Err(invalid(
                "authentication failed, invalid user ID or password"
            )),
            "checked against the old password"
        );
    }
    // Disabling auth voids every token; authenticating is then refused.
    let [a, _] = &mut replicas;
    a.run("", authenticate("root", "root-token", 1))
        .await
        .unwrap();
    assert_eq!(a.hub().token_count(), 1);
    a.run("root", command::Op::AuthDisable(AuthDisableRequest {}))
        .await
        .unwrap();
    assert_eq!(a.hub().token_count(), 0);
    assert!(!a.hub().is_enabled());
    assert_eq!(
        a.run("", authenticate("root", "again", 1)).await,
        Err(precondition("authentication is not enabled"))
    );
}

async fn auth_answers(r: &Replica) -> Vec<String> {
    let mut answers = Vec::new();
    for (user, op) in [
        ("root", query::Op::UserList(AuthUserListRequest {})),
        ("root", query::Op::RoleList(AuthRoleListRequest {})),
        (
            "root",
            query::Op::RoleGet(AuthRoleGetRequest {
                role: "writer".into(),
            }),
        ),
        (
            "alice",
            query::Op::UserGet(AuthUserGetRequest {
                name: "alice".into(),
            }),
        ),
        ("", query::Op::AuthStatus(AuthStatusRequest {})),
    ] {
        let mut answer = format!("{:?}", r.ask(user, op).await);
        // Headers carry the revision only; fine to compare whole.
        answer.truncate(2000);
        answers.push(answer);
    }
    for (key, end) in [("app/", "app0"), ("x", ""), ("zz", ""), ("\0", "\0")] {
        answers.push(format!("{:?}", r.get("alice", key, end).await));
    }
    answers
}

#[tokio::test]
async fn snapshots_carry_the_auth_state() {
    let mut a = alice().await;
    let snapshot = a.sm.snapshot().await.unwrap();
    let mut b_replica = Replica::new();
    let index = a.sm.applied_index();
    b_replica
        .sm
        .install_snapshot(snapshot.clone(), index)
        .await
        .unwrap();
    assert_eq!(auth_answers(&a).await, auth_answers(&b_replica).await);
    assert!(
        b_replica.hub().is_enabled(),
        "the hub sees the installed state"
    );
    assert_eq!(b_replica.sm.snapshot().await.unwrap(), snapshot);
    // Both go on identically.
    for r in [&mut a, &mut b_replica] {
        assert_eq!(
            r.put("alice", "app/3").await,
            Err(KvError::PermissionDenied)
        );
        r.put("alice", "x").await.unwrap();
    }
    assert_eq!(
        a.sm.snapshot().await.unwrap(),
        b_replica.sm.snapshot().await.unwrap()
    );
}

#[tokio::test]
async fn a_format_1_snapshot_loads_with_auth_off() {
    // What the build before auth wrote: format 1, no auth field.
    let old = StoreSnapshot {
        format: 1,
        applied_index: 7,
        applied_term: 2,
        revision: 3,
        compact_revision: 0,
        kvs: vec![KeyValue {
            key: b("k"),
            value: b("v"),
            create_revision: 3,
            mod_revision: 3,
            version: 1,
            lease: 0,
        }],
        membership: None,
        auth: None,
        alarms: Vec::new(),
        history: Vec::new(),
        ..Default::default()
    };
    let mut r = Replica::new();
    r.sm.install_snapshot(Bytes::from(old.encode_to_vec()), 7)
        .await
        .unwrap();
    assert_eq!(r.sm.revision(), 3);
    assert!(!r.hub().is_enabled());
    assert_eq!(r.get("", "k", "").await, Ok(1));
    r.run("", user_add("root", 1)).await.unwrap();
    // Snapshots it takes are of the current format, with the auth state.
    let taken = StoreSnapshot::decode(r.sm.snapshot().await.unwrap()).unwrap();
    assert_eq!(taken.format, 6);
    assert!(taken.complete && taken.key_count == 1, "{taken:?}");
    assert_eq!((taken.applied_index, taken.applied_term), (8, 0));
    assert!(
        taken.membership.is_none(),
        "the runtime keeps the configuration"
    );
    assert_eq!(taken.auth.unwrap().users.len(), 1);
    // A format from the future is refused.
    let future = StoreSnapshot { format: 6, ..old };
    assert!(
        r.sm.install_snapshot(Bytes::from(future.encode_to_vec()), 7)
            .await
            .is_err()
    );
}
