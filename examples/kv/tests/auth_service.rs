//! The `Auth` service and authorization over loopback against one member (`LocalBackend`),
//! driven by the `etcd-client` crate as an etcd client would: users, roles, permissions,
//! enabling, logging in, refusals with etcd's codes and texts, tokens, watches, and
//! authentication by TLS client certificate (etcd's `--client-cert-auth`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dengine_kv::proto::etcdserverpb::{
    AuthenticateRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
    auth_client::AuthClient, kv_client::KvClient, watch_client::WatchClient,
    watch_request::RequestUnion,
};
use dengine_kv::{KvConfig, LocalBackend, WatchConfig, WatchHub, kv_services};
use etcd_client::{
    Client, ConnectOptions, Error, GetOptions, Permission, UserAddOptions, WatchOptions,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

mod common;

/// The gRPC code name and message of a failed call.
fn status_of(err: Error) -> (String, String) {
    match err {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn expect_err<T>(result: Result<T, Error>, code: &str, message: &str) {
    let Err(err) = result else {
        panic!("expected {code} {message:?}, the call succeeded");
    };
    let (c, m) = status_of(err);
    assert_eq!((c.as_str(), m.as_str()), (code, message));
}

const DENIED: (&str, &str) = ("PermissionDenied", "etcdserver: permission denied");

async fn as_user(url: &str, user: &str, password: &str) -> Result<Client, Error> {
    Client::connect([url], Some(ConnectOptions::new().with_user(user, password))).await
}

/// Root (password `rootpw`, role root) and auth enabled, through `c` (no credentials).
async fn enable_with_root(c: &mut Client) {
    c.user_add("root", "rootpw", None).await.unwrap();
    expect_err(
        c.auth_enable().await,
        "FailedPrecondition",
        "etcdserver: root user does not have root role",
    );
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_clients_log_in_and_are_held_to_their_permissions() {
    let url = common::serve_local(WatchConfig::default()).await;
    let mut anon = Client::connect([url.as_str()], None).await.unwrap();
    anon.put("app/a", "1", None).await.unwrap();
    anon.put("other", "x", None).await.unwrap();
    // Logging in while auth is off: etcd's answer, on which clients go on without a token.
    expect_err(
        as_user(&url, "root", "rootpw").await,
        "FailedPrecondition",
        "etcdserver: authentication is not enabled",
    );
    expect_err(
        anon.auth_enable().await,
        "FailedPrecondition",
        "etcdserver: root user does not exist",
    );
    enable_with_root(&mut anon).await;

    // Without credentials, nothing but status.
    let empty = ("InvalidArgument", "etcdserver: user name is empty");
    expect_err(anon.put("app/a", "2", None).await, empty.0, empty.1);
    expect_err(anon.get("app/a", None).await, empty.0, empty.1);
    expect_err(anon.role_add("r").await, empty.0, empty.1);
    anon.status().await.unwrap();
    anon.member_list().await.unwrap();

    let mut root = as_user(&url, "root", "rootpw").await.unwrap();
    root.role_add("reader").await.unwrap();
    root.role_grant_permission("reader", Permission::read("app/").with_prefix())
        .await
        .unwrap();
    root.role_grant_permission("reader", Permission::read_write("own"))
        .await
        .unwrap();
    root.user_add("alice", "alicepw", None).await.unwrap();
    root.user_grant_role("alice", "reader").await.unwrap();
    expect_err(
        root.user_add("alice", "x", None).await,
        "FailedPrecondition",
        "etcdserver: user name already exists",
    );
    expect_err(
        root.user_grant_role("bob", "reader").await,
        "FailedPrecondition",
        "etcdserver: user name not found",
    );
    expect_err(
        root.role_get("writer").await,
        "FailedPrecondition",
        "etcdserver: role name not found",
    );
    expect_err(
        root.user_delete("root").await,
        "InvalidArgument",
        "etcdserver: invalid auth management",
    );
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
    assert_eq!(root.role_list().await.unwrap().roles(), ["reader"]);
    assert_eq!(root.user_get("alice").await.unwrap().roles(), ["reader"]);
    let perms = root.role_get("reader").await.unwrap().permissions();
    let shown: Vec<(i32, &[u8], &[u8])> = perms
        .iter()
        .map(|p| (p.get_type(), p.key(), p.range_end()))
        .collect();
    assert_eq!(
        shown,
        [(0, &b"app/"[..], &b"app0"[..]), (2, &b"own"[..], &b""[..])]
    );

    // A wrong password, an unknown user.
    let failed = (
        "InvalidArgument",
        "etcdserver: authentication failed, invalid user ID or password",
    );
    expect_err(as_user(&url, "alice", "wrong").await, failed.0, failed.1);
    expect_err(as_user(&url, "mallory", "x").await, failed.0, failed.1);

    let mut alice = as_user(&url, "alice", "alicepw").await.unwrap();
    let got = alice
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    alice.put("own", "mine", None).await.unwrap();
    expect_err(alice.put("app/a", "2", None).await, DENIED.0, DENIED.1);
    expect_err(alice.get("other", None).await, DENIED.0, DENIED.1);
    expect_err(
        alice
            .get("app", Some(GetOptions::new().with_prefix()))
            .await,
        DENIED.0,
        DENIED.1,
    );
    expect_err(alice.user_list().await, DENIED.0, DENIED.1);
    expect_err(alice.compact(1, None).await, DENIED.0, DENIED.1);
    expect_err(
        alice.member_add(["http://127.0.0.1:9"], None).await,
        DENIED.0,
        DENIED.1,
    );
    expect_err(alice.auth_disable().await, DENIED.0, DENIED.1);
    // Her own user and her roles, she may read.
    assert_eq!(alice.user_get("alice").await.unwrap().roles(), ["reader"]);
    alice.role_get("reader").await.unwrap();

    // Watches: created on what she may read, refused (canceled at once) elsewhere.
    let (_w, mut allowed) = alice
        .watch("app/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    // etcd-client swallows a watch's first response: the refusal is seen with the generated
    // client, with alice's token.
    let token = AuthClient::connect(url.clone())
        .await
        .unwrap()
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: "alicepw".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    for (key, refused) in [("other", true), ("app/a", false)] {
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                ..Default::default()
            })),
        };
        let mut request = tonic::Request::new(tokio_stream::iter([create]));
        request
            .metadata_mut()
            .insert("token", token.parse().unwrap());
        let mut stream = WatchClient::connect(url.clone())
            .await
            .unwrap()
            .watch(request)
            .await
            .unwrap()
            .into_inner();
        let created = stream.message().await.unwrap().unwrap();
        assert!(created.created);
        assert_eq!(created.canceled, refused, "{key}: {created:?}");
        if refused {
            assert_eq!(
                created.cancel_reason,
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
            );
        }
    }
    root.put("app/b", "2", None).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), allowed.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.events()[0].kv().unwrap().key(), b"app/b");

    // A permission revoked takes effect at once.
    root.role_revoke_permission("reader", "own", None)
        .await
        .unwrap();
    expect_err(alice.get("own", None).await, DENIED.0, DENIED.1);

    // Disabling auth: root only; then anyone again (the old tokens are ignored).
    root.auth_disable().await.unwrap();
    anon.put("app/a", "3", None).await.unwrap();
    alice.put("other", "y", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_password_changes() {
    let url = common::serve_local(WatchConfig::default()).await;
    let mut anon = Client::connect([url.as_str()], None).await.unwrap();
    enable_with_root(&mut anon).await;
    // A token, as etcd clients send it: the `token` metadata.
    let mut auth = AuthClient::connect(url.clone()).await.unwrap();
    let login = |name: &str, password: &str| AuthenticateRequest {
        name: name.into(),
        password: password.into(),
    };
    let token = auth
        .authenticate(login("root", "rootpw"))
        .await
        .unwrap()
        .into_inner()
        .token;
    assert_eq!(token.len(), 48);
    let mut kv = KvClient::connect(url.clone()).await.unwrap();
    let get = |token: &str| {
        let mut r = tonic::Request::new(RangeRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        });
        r.metadata_mut().insert("token", token.parse().unwrap());
        r
    };
    kv.range(get(&token)).await.unwrap();
    let unknown = kv.range(get("not-a-token")).await.unwrap_err();
    assert_eq!(
        (unknown.code(), unknown.message()),
        (
            tonic::Code::Unauthenticated,
            "etcdserver: invalid auth token"
        )
    );
    // A password change voids the user's tokens.
    let mut root = as_user(&url, "root", "rootpw").await.unwrap();
    root.user_change_password("root", "newpw").await.unwrap();
    let voided = kv.range(get(&token)).await.unwrap_err();
    assert_eq!(voided.code(), tonic::Code::Unauthenticated);
    assert!(as_user(&url, "root", "rootpw").await.is_err());
    let mut root = as_user(&url, "root", "newpw").await.unwrap();
    // A user without password cannot log in with one.
    root.user_add("svc", "", Some(UserAddOptions::new().with_no_pwd()))
        .await
        .unwrap();
    assert!(as_user(&url, "svc", "").await.is_err());
    // Pre-hashed passwords are refused, not stored.
    let mut raw = AuthClient::connect(url.clone()).await.unwrap();
    let mut add = tonic::Request::new(dengine_kv::proto::etcdserverpb::AuthUserAddRequest {
        name: "hashed".into(),
        hashed_password: "$2a$10$abc".into(),
        ..Default::default()
    });
    let root_token = raw
        .authenticate(login("root", "newpw"))
        .await
        .unwrap()
        .into_inner()
        .token;
    add.metadata_mut()
        .insert("token", root_token.parse().unwrap());
    let refused = raw.user_add(add).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        !root
            .user_list()
            .await
            .unwrap()
            .users()
            .contains(&"hashed".to_string())
    );
}

/// A CA, a server certificate for localhost and client certificates with a given Common
/// Name, in memory.
struct Pki {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dengine-kv test CA");
        let ca_pem = params.self_signed(&key).unwrap().pem();
        Pki {
            ca_pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names` (subject alternative names) and Common Name
    /// `cn`.
    fn issue(&self, names: Vec<String>, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// One member over TLS, requiring client certificates from the CA, with
/// `client_cert_auth`; its address.
async fn serve_tls(pki: &Pki) -> String {
    let hub = WatchHub::default();
    let backend = Arc::new(
        LocalBackend::new(hub.clone(), "http://127.0.0.1:2380")
            .await
            .unwrap(),
    );
    let config = KvConfig {
        client_cert_auth: true,
        ..KvConfig::default()
    };
    let routes = kv_services(backend.clone(), hub, backend.auth_hub().clone(), config);
    let (cert, key) = pki.issue(vec!["localhost".into()], "server");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("https://localhost:{}", addr.port())
}

/// A channel presenting a client certificate with Common Name `cn`.
async fn channel_as(pki: &Pki, url: &str, cn: &str) -> Channel {
    let (cert, key) = pki.issue(Vec::new(), cn);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .identity(Identity::from_pem(cert, key))
        .domain_name("localhost");
    Channel::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn put(key: &'static str) -> PutRequest {
    PutRequest {
        key: Bytes::from_static(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_user() {
    use dengine_kv::proto::authpb::{Permission as PbPermission, permission::Type};
    use dengine_kv::proto::etcdserverpb::{
        AuthEnableRequest, AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest,
    };
    let pki = Pki::new();
    let url = serve_tls(&pki).await;
    // Root and alice have no password: their certificates name them.
    let root_channel = channel_as(&pki, &url, "root").await;
    let mut admin = AuthClient::new(root_channel.clone());
    for name in ["root", "alice"] {
        admin
            .user_add(AuthUserAddRequest {
                name: name.into(),
                options: Some(dengine_kv::proto::authpb::UserAddOptions { no_password: true }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    admin
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .unwrap();
    admin
        .role_add(AuthRoleAddRequest {
            name: "writer".into(),
        })
        .await
        .unwrap();
    admin
        .role_grant_permission(AuthRoleGrantPermissionRequest {
            name: "writer".into(),
            perm: Some(PbPermission {
                perm_type: Type::Write as i32,
                key: Bytes::from_static(b"a/"),
                range_end: Bytes::from_static(b"a0"),
            }),
        })
        .await
        .unwrap();
    admin
        .user_grant_role(AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "writer".into(),
        })
        .await
        .unwrap();
    admin.auth_enable(AuthEnableRequest {}).await.unwrap();

    let mut alice = KvClient::new(channel_as(&pki, &url, "alice").await);
    alice.put(put("a/1")).await.unwrap();
    let denied = alice.put(put("b/1")).await.unwrap_err();
    assert_eq!(
        (denied.code(), denied.message()),
        (
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied"
        )
    );
    // A certificate naming no user may do nothing.
    let mut bob = KvClient::new(channel_as(&pki, &url, "bob").await);
    assert_eq!(
        bob.put(put("a/2")).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // Root's certificate: root.
    KvClient::new(root_channel).put(put("b/1")).await.unwrap();
    // A user without password cannot log in with one, even over this channel.
    let mut auth = AuthClient::new(channel_as(&pki, &url, "alice").await);
    let refused = auth
        .authenticate(AuthenticateRequest {
            name: "alice".into(),
            password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
}
