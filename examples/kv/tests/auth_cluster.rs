//! Auth on a three-member cluster, driven with the `etcd-client` crate against each member
//! alone: every member refuses what a user may not do (reads served locally, writes forwarded
//! by followers and checked again when applied), a token issued through one member works on
//! the others, a revoked permission and a disabled auth take effect everywhere.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use dengine_kv::proto::dengine::kv::v1::forward_client::ForwardClient;
use dengine_kv::proto::dengine::kv::v1::{Command, ForwardRequest, command};
use dengine_kv::proto::etcdserverpb::{PutRequest, RangeRequest, kv_client::KvClient};
use dengine_kv::{KvError, decode_command_response};
use etcd_client::{Client, ConnectOptions, Error, GetOptions, Permission};
use prost::Message;

mod cluster_support;
use cluster_support::{SERIAL, TestCluster, ok, read, wait_for};

/// A client of member `id` alone, logged in as `user` (retried while the cluster has no
/// leader: logging in goes through the log).
async fn login(cluster: &TestCluster, id: u64, user: &str, password: &str) -> Client {
    let url = cluster.url(id);
    ok(&format!("log in as {user} on member {id}"), async || {
        Client::connect(
            [url.as_str()],
            Some(ConnectOptions::new().with_user(user, password)),
        )
        .await
    })
    .await
}

fn is_denied(result: &Result<impl Sized, Error>) -> bool {
    matches!(result, Err(Error::GRpcStatus(s))
        if format!("{:?}", s.code()) == "PermissionDenied"
            && s.message() == "etcdserver: permission denied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_holds_users_to_their_permissions() {
    let _turn = SERIAL.lock().await;
    let cluster = TestCluster::start().await;
    let leader = cluster.leader().await;
    let followers = cluster.running_except(leader);
    let members = [leader, followers[0], followers[1]];

    // Setup through a follower: root, auth on, alice reads app/ and writes w/.
    let mut anon = cluster.client(followers[0]).await;
    ok("put app/a", async || anon.put("app/a", "1", None).await).await;
    ok("add root", async || {
        anon.user_add("root", "rootpw", None).await
    })
    .await;
    ok("grant root", async || {
        anon.user_grant_role("root", "root").await
    })
    .await;
    ok("enable", async || anon.auth_enable().await).await;
    let mut root = login(&cluster, followers[1], "root", "rootpw").await;
    ok("role", async || root.role_add("app-reader").await).await;
    ok("grant read", async || {
        root.role_grant_permission("app-reader", Permission::read("app/").with_prefix())
            .await
    })
    .await;
    ok("grant write", async || {
        root.role_grant_permission("app-reader", Permission::write("w/").with_prefix())
            .await
    })
    .await;
    ok("add alice", async || {
        root.user_add("alice", "alicepw", None).await
    })
    .await;
    ok("grant alice", async || {
        root.user_grant_role("alice", "app-reader").await
    })
    .await;

    for id in members {
        let mut alice = login(&cluster, id, "alice", "alicepw").await;
        // Reads are checked where they are served, after the read index caught up.
        let got = read(&format!("alice reads app/ on member {id}"), async || {
            alice
                .get("app/", Some(GetOptions::new().with_prefix()))
                .await
        })
        .await;
        assert_eq!(got.kvs().len(), 1, "member {id}");
        assert!(is_denied(&alice.get("other", None).await), "member {id}");
        assert!(
            is_denied(&alice.get("w/1", None).await),
            "member {id}: write only"
        );
        // Writes: refused where she may not write, forwarded and applied where she may.
        assert!(
            is_denied(&alice.put("app/b", "x", None).await),
            "member {id}"
        );
        let key = format!("w/{id}");
        ok(&format!("alice writes {key} via member {id}"), async || {
            alice.put(key.as_str(), "ok", None).await
        })
        .await;
        // A wrong password, on every member.
        let url = cluster.url(id);
        let wrong = Client::connect(
            [url.as_str()],
            Some(ConnectOptions::new().with_user("alice", "nope")),
        )
        .await;
        assert!(
            matches!(&wrong, Err(Error::GRpcStatus(s)) if s.message()
                == "etcdserver: authentication failed, invalid user ID or password"),
            "member {id}"
        );
        // Without credentials, nothing.
        let mut nobody = cluster.client(id).await;
        assert!(nobody.get("app/a", None).await.is_err(), "member {id}");
    }

    // The leader checks a forwarded write again when it applies it: a command that names
    // alice for a key she may not write, sent as a follower would forward it, is refused.
    let forged = Command {
        op: Some(command::Op::Put(PutRequest {
            key: Bytes::from_static(b"app/forged"),
            value: Bytes::from_static(b"x"),
            ..Default::default()
        })),
        user: "alice".into(),
        ..Default::default()
    };
    let leader_now = cluster.leader().await;
    let follower_now = *cluster.members.keys().find(|m| **m != leader_now).unwrap();
    let mut forward = ForwardClient::connect(format!("http://{}", cluster.addrs[&leader_now]))
        .await
        .unwrap();
    let reply = forward
        .propose(ForwardRequest {
            command: Bytes::from(forged.encode_to_vec()),
            from: follower_now,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        decode_command_response(&reply.response).map(|_| ()),
        Err(KvError::PermissionDenied)
    );

    // A token issued through one member works on the others once they applied its entry.
    let on_leader = cluster.client(leader).await;
    let token = ok("authenticate on the leader", async || {
        on_leader
            .auth_client()
            .authenticate("alice".into(), "alicepw".into())
            .await
    })
    .await
    .token()
    .to_string();
    for id in &followers {
        let url = cluster.url(*id);
        wait_for(
            &format!("alice's token to work on member {id}"),
            async || {
                let mut kv = KvClient::connect(url.clone()).await.ok()?;
                let mut request = tonic::Request::new(RangeRequest {
                    key: Bytes::from_static(b"app/a"),
                    ..Default::default()
                });
                request.metadata_mut().insert("token", token.parse().ok()?);
                let r = kv.range(request).await.ok()?;
                (r.into_inner().kvs.len() == 1).then_some(())
            },
        )
        .await;
    }

    // A revoked permission is refused on every member.
    ok("revoke", async || {
        root.role_revoke_permission(
            "app-reader",
            "app/",
            Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
        )
        .await
    })
    .await;
    for id in members {
        let mut alice = login(&cluster, id, "alice", "alicepw").await;
        let denied = alice.get("app/a", None).await;
        assert!(is_denied(&denied), "member {id}: {:?}", denied.err());
    }

    // Auth off: anyone, everywhere.
    ok("disable", async || root.auth_disable().await).await;
    for id in members {
        let mut c = cluster.client(id).await;
        ok(&format!("anonymous put via member {id}"), async || {
            c.put("app/free", "yes", None).await
        })
        .await;
        let got = read("anonymous get", async || c.get("app/free", None).await).await;
        assert_eq!(got.kvs().len(), 1);
    }

    drop((anon, root, on_leader));
    cluster.stop().await;
}
