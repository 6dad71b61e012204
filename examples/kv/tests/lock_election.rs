//! etcd's `Lock` and `Election` services over loopback against one member (`LocalBackend`),
//! driven by the `etcd-client` crate (and tonic clients generated from dengine-kv's protos
//! where a call needs a deadline): locks held in create-revision order, waiters that go away
//! leaving no key behind, campaigns, proclamations, resignations, observers, etcd's error
//! texts, permissions, and a member that stops while calls wait.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use dengine_kv::proto::v3lockpb::{LockRequest, lock_client::LockClient as PbLockClient};
use dengine_kv::{KvConfig, LocalBackend, WatchConfig, WatchHub, kv_services};
use etcd_client::{
    Client, ConnectOptions, Error, GetOptions, LeaderKey, LeaderResponse, LockResponse,
    ObserveStream, Permission, ProclaimOptions, ResignOptions,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use tokio_stream::wrappers::TcpListenerStream;

mod common;

/// How long a call that must block is watched not to return.
const BLOCKED: Duration = Duration::from_millis(300);
/// The longest wait for something that should happen soon.
const SOON: Duration = Duration::from_secs(10);

async fn start() -> (String, Client) {
    let url = common::serve_local(WatchConfig::default()).await;
    let client = Client::connect([url.as_str()], None).await.unwrap();
    (url, client)
}

/// Runs a test's steps, failing the test if they hang (a call that never returns).
async fn bounded(steps: impl std::future::Future<Output = ()>) {
    timeout(Duration::from_secs(120), steps)
        .await
        .expect("the test's steps finish in time");
}

/// The gRPC code name and message of a failed call.
fn status_of(err: Error) -> (String, String) {
    match err {
        Error::GRpcStatus(s) => (format!("{:?}", s.code()), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

fn expect_err<T: std::fmt::Debug>(result: Result<T, Error>, code: &str, message: &str) {
    let err = result.expect_err("the call should fail");
    let (c, m) = status_of(err);
    assert_eq!((c.as_str(), m.as_str()), (code, message));
}

/// The keys under `prefix`, in create-revision order.
async fn queue(c: &mut Client, prefix: &str) -> Vec<String> {
    let options = GetOptions::new().with_prefix().with_sort(
        etcd_client::SortTarget::Create,
        etcd_client::SortOrder::Ascend,
    );
    c.get(prefix, Some(options))
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.key_str().unwrap().to_owned())
        .collect()
}

/// Waits until the keys under `prefix` are `n` many; returns them.
async fn queue_of(c: &mut Client, prefix: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let keys = queue(c, prefix).await;
        if keys.len() == n {
            return keys;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} keys under {prefix}, have {keys:?}"
        );
        sleep(Duration::from_millis(10)).await;
    }
}

fn lock_in_background(c: &Client, name: &'static str) -> JoinHandle<Result<LockResponse, Error>> {
    let mut c = c.clone();
    tokio::spawn(async move { c.lock(name, None).await })
}

/// The answer of a background call that must come soon.
async fn answer<T>(call: JoinHandle<Result<T, Error>>) -> T {
    timeout(SOON, call)
        .await
        .expect("the call returns in time")
        .unwrap()
        .unwrap()
}

/// Checks that a background call does not return (for [`BLOCKED`]).
async fn still_blocked<T>(call: &JoinHandle<T>) {
    sleep(BLOCKED).await;
    assert!(!call.is_finished(), "the call should still be waiting");
}

fn key_of(r: &LockResponse) -> String {
    std::str::from_utf8(r.key()).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_lock_waits_until_the_first_is_unlocked() {
    bounded(a_second_lock_waits_until_the_first_is_unlocked_steps()).await;
}

async fn a_second_lock_waits_until_the_first_is_unlocked_steps() {
    let (_, mut c) = start().await;
    let first = c.lock("job", None).await.unwrap();
    let first_key = key_of(&first);
    assert!(first_key.starts_with("job/"), "{first_key}");
    assert_eq!(queue(&mut c, "job/").await, [first_key.as_str()]);

    let second = lock_in_background(&c, "job");
    // Queued (its key exists) and waiting.
    let keys = queue_of(&mut c, "job/", 2).await;
    assert_eq!(keys[0], first_key);
    still_blocked(&second).await;

    // Another lock name is independent.
    let other = c.lock("other", None).await.unwrap();
    c.unlock(other.key()).await.unwrap();
    still_blocked(&second).await;

    c.unlock(first_key.clone()).await.unwrap();
    let second = answer(second).await;
    let second_key = key_of(&second);
    assert_eq!(second_key, keys[1]);
    assert_ne!(second_key, first_key);
    assert!(second.header().unwrap().revision() > first.header().unwrap().revision());
    assert_eq!(queue(&mut c, "job/").await, [second_key.as_str()]);

    c.unlock(second_key).await.unwrap();
    assert!(queue(&mut c, "job/").await.is_empty());
    // Free again: answered at once.
    let third = timeout(SOON, c.lock("job", None)).await.unwrap().unwrap();
    c.unlock(third.key()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_get_the_lock_in_the_order_their_keys_were_created() {
    bounded(waiters_get_the_lock_in_the_order_their_keys_were_created_steps()).await;
}

async fn waiters_get_the_lock_in_the_order_their_keys_were_created_steps() {
    let (_, mut c) = start().await;
    let holder = c.lock("q", None).await.unwrap();
    let b = lock_in_background(&c, "q");
    queue_of(&mut c, "q/", 2).await;
    let cc = lock_in_background(&c, "q");
    let keys = queue_of(&mut c, "q/", 3).await;
    assert_eq!(keys[0], key_of(&holder));
    still_blocked(&b).await;
    assert!(!cc.is_finished());

    c.unlock(holder.key()).await.unwrap();
    let b = answer(b).await;
    assert_eq!(key_of(&b), keys[1], "the older waiter goes first");
    still_blocked(&cc).await;

    c.unlock(b.key()).await.unwrap();
    let cc = answer(cc).await;
    assert_eq!(key_of(&cc), keys[2]);
    c.unlock(cc.key()).await.unwrap();
    assert!(queue(&mut c, "q/").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_goes_away_leaves_no_key_behind() {
    bounded(a_waiter_that_goes_away_leaves_no_key_behind_steps()).await;
}

async fn a_waiter_that_goes_away_leaves_no_key_behind_steps() {
    let (url, mut c) = start().await;
    let holder = c.lock("gone", None).await.unwrap();
    let holder_key = key_of(&holder);

    // A client that drops its call (the HTTP/2 stream is reset).
    let dropped = lock_in_background(&c, "gone");
    queue_of(&mut c, "gone/", 2).await;
    dropped.abort();
    assert_eq!(queue_of(&mut c, "gone/", 1).await, [holder_key.as_str()]);

    // A client whose deadline passes while it waits.
    let mut pb = PbLockClient::connect(url.clone()).await.unwrap();
    let mut request = tonic::Request::new(LockRequest {
        name: "gone".into(),
        lease: 0,
    });
    request.set_timeout(Duration::from_millis(500));
    let status = pb.lock(request).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    assert_eq!(queue_of(&mut c, "gone/", 1).await, [holder_key.as_str()]);

    // A waiter whose own key is deleted under it is told so (etcd's text).
    let waiting = lock_in_background(&c, "gone");
    let keys = queue_of(&mut c, "gone/", 2).await;
    c.delete(keys[1].clone(), None).await.unwrap();
    c.unlock(holder_key).await.unwrap();
    let err = timeout(SOON, waiting).await.unwrap().unwrap();
    expect_err(err, "Unknown", "mutex: session is expired");

    // Nothing left over: the next lock is granted at once.
    assert!(queue(&mut c, "gone/").await.is_empty());
    let next = timeout(SOON, c.lock("gone", None)).await.unwrap().unwrap();
    c.unlock(next.key()).await.unwrap();
}

async fn observed(stream: &mut ObserveStream) -> LeaderResponse {
    timeout(SOON, stream.message())
        .await
        .expect("an observe response in time")
        .unwrap()
        .expect("the observe stream open")
}

fn value_of(r: &LeaderResponse) -> (String, String) {
    let kv = r.kv().unwrap();
    (
        kv.key_str().unwrap().to_owned(),
        kv.value_str().unwrap().to_owned(),
    )
}

async fn leader_value(c: &mut Client, name: &str) -> String {
    c.leader(name)
        .await
        .unwrap()
        .kv()
        .unwrap()
        .value_str()
        .unwrap()
        .to_owned()
}

fn with_leader(leader: &LeaderKey) -> Option<ProclaimOptions> {
    Some(ProclaimOptions::new().with_leader(leader.clone()))
}

fn resign_as(leader: &LeaderKey) -> Option<ResignOptions> {
    Some(ResignOptions::new().with_leader(leader.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_proclaim_resign_and_observe() {
    bounded(campaign_proclaim_resign_and_observe_steps()).await;
}

async fn campaign_proclaim_resign_and_observe_steps() {
    let (_, mut c) = start().await;
    expect_err(c.leader("e").await, "Unknown", "election: no leader");
    // An observer from before there is a leader.
    let mut early = c.observe("e").await.unwrap();

    let won = c.campaign("e", "v1", 0).await.unwrap();
    let first = won.leader().unwrap().clone();
    let first_key = first.key_str().unwrap().to_owned();
    assert_eq!(first.name(), b"e");
    assert!(first_key.starts_with("e/"), "{first_key}");
    assert_eq!(first.lease(), 0);
    let kv = c.get(first_key.clone(), None).await.unwrap().kvs()[0].clone();
    assert_eq!(first.rev(), kv.create_revision());
    assert_eq!(kv.value_str().unwrap(), "v1");

    assert_eq!(
        value_of(&observed(&mut early).await),
        (first_key.clone(), "v1".into())
    );
    assert_eq!(leader_value(&mut c, "e").await, "v1");
    // An observer from after: the leader now.
    let mut late = c.observe("e").await.unwrap();
    assert_eq!(
        value_of(&observed(&mut late).await),
        (first_key.clone(), "v1".into())
    );

    c.proclaim("v2", with_leader(&first)).await.unwrap();
    assert_eq!(leader_value(&mut c, "e").await, "v2");
    for stream in [&mut early, &mut late] {
        let seen = observed(stream).await;
        assert_eq!(value_of(&seen), (first_key.clone(), "v2".into()));
        assert_eq!(
            seen.header().unwrap().revision(),
            seen.kv().unwrap().mod_revision()
        );
    }

    // A second campaigner waits for the leader to resign.
    let mut c2 = c.clone();
    let second = tokio::spawn(async move { c2.campaign("e", "w1", 0).await });
    queue_of(&mut c, "e/", 2).await;
    still_blocked(&second).await;
    assert_eq!(leader_value(&mut c, "e").await, "v2");

    c.resign(resign_as(&first)).await.unwrap();
    let won = answer(second).await;
    let next = won.leader().unwrap().clone();
    let next_key = next.key_str().unwrap().to_owned();
    assert_ne!(next_key, first_key);
    assert!(next.rev() > first.rev());
    assert_eq!(leader_value(&mut c, "e").await, "w1");
    for stream in [&mut early, &mut late] {
        assert_eq!(
            value_of(&observed(stream).await),
            (next_key.clone(), "w1".into())
        );
    }

    // The old leadership proclaims nothing, and its resignation changes nothing.
    expect_err(
        c.proclaim("stale", with_leader(&first)).await,
        "Unknown",
        "election: not leader",
    );
    let forged = next.clone().with_rev(next.rev() + 1);
    expect_err(
        c.proclaim("forged", with_leader(&forged)).await,
        "Unknown",
        "election: not leader",
    );
    expect_err(
        c.proclaim("none", None).await,
        "Unknown",
        "\"leader\" field must be provided",
    );
    expect_err(
        c.resign(None).await,
        "Unknown",
        "\"leader\" field must be provided",
    );
    c.resign(resign_as(&first)).await.unwrap();
    assert_eq!(leader_value(&mut c, "e").await, "w1");

    // A campaigner that goes away leaves no key behind.
    let mut c3 = c.clone();
    let dropped = tokio::spawn(async move { c3.campaign("e", "x", 0).await });
    queue_of(&mut c, "e/", 2).await;
    dropped.abort();
    assert_eq!(queue_of(&mut c, "e/", 1).await, [next_key.as_str()]);

    // The last leader resigns: no leader, and the observers hear nothing more.
    c.resign(resign_as(&next)).await.unwrap();
    expect_err(c.leader("e").await, "Unknown", "election: no leader");
    assert!(
        timeout(BLOCKED, early.message()).await.is_err(),
        "nothing to observe without a leader"
    );
    // Until the next one.
    let third = c.campaign("e", "z", 0).await.unwrap();
    let third_key = third.leader().unwrap().key_str().unwrap().to_owned();
    assert_eq!(
        value_of(&observed(&mut early).await),
        (third_key, "z".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_elections_run_as_the_user_and_are_checked() {
    bounded(locks_and_elections_run_as_the_user_and_are_checked_steps()).await;
}

async fn locks_and_elections_run_as_the_user_and_are_checked_steps() {
    let (url, mut anon) = start().await;
    anon.user_add("root", "rootpw", None).await.unwrap();
    anon.user_grant_role("root", "root").await.unwrap();
    anon.auth_enable().await.unwrap();
    let login = |user: &'static str, password: &'static str| {
        let url = url.clone();
        async move {
            Client::connect([url], Some(ConnectOptions::new().with_user(user, password)))
                .await
                .unwrap()
        }
    };
    let mut root = login("root", "rootpw").await;
    root.role_add("locker").await.unwrap();
    root.role_grant_permission("locker", Permission::read_write("mine/").with_prefix())
        .await
        .unwrap();
    root.user_add("alice", "alicepw", None).await.unwrap();
    root.user_grant_role("alice", "locker").await.unwrap();
    let mut alice = login("alice", "alicepw").await;

    let denied = ("PermissionDenied", "etcdserver: permission denied");
    let empty = ("InvalidArgument", "etcdserver: user name is empty");
    expect_err(anon.lock("mine/l", None).await, empty.0, empty.1);

    // Within her prefix: allowed.
    let held = alice.lock("mine/l", None).await.unwrap();
    assert!(held.key().starts_with(b"mine/l/"));
    alice.unlock(held.key()).await.unwrap();
    let won = alice.campaign("mine/e", "a", 0).await.unwrap();
    assert_eq!(leader_value(&mut alice, "mine/e").await, "a");
    let mut observing = alice.observe("mine/e").await.unwrap();
    assert_eq!(value_of(&observed(&mut observing).await).1, "a");
    alice
        .resign(resign_as(won.leader().unwrap()))
        .await
        .unwrap();

    // Outside it: refused as her Txn and Range would be, and nothing is left behind.
    expect_err(alice.lock("theirs", None).await, denied.0, denied.1);
    expect_err(alice.campaign("theirs", "a", 0).await, denied.0, denied.1);
    expect_err(alice.leader("theirs").await, denied.0, denied.1);
    expect_err(alice.observe("theirs").await, denied.0, denied.1);
    assert!(queue(&mut root, "theirs/").await.is_empty());
    let theirs = root.lock("theirs", None).await.unwrap();
    expect_err(alice.unlock(theirs.key()).await, denied.0, denied.1);
    // (Another name: a lock and an election with the same name would share one queue.)
    let their_leader = root.campaign("their-election", "r", 0).await.unwrap();
    let leader = their_leader.leader().unwrap();
    expect_err(
        alice.proclaim("mine now", with_leader(leader)).await,
        denied.0,
        denied.1,
    );
    expect_err(alice.resign(resign_as(leader)).await, denied.0, denied.1);
    assert_eq!(leader_value(&mut root, "their-election").await, "r");
    root.unlock(theirs.key()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_member_ends_waiting_calls_and_observers() {
    bounded(a_stopping_member_ends_waiting_calls_and_observers_steps()).await;
}

async fn a_stopping_member_ends_waiting_calls_and_observers_steps() {
    let hub = WatchHub::default();
    let backend = Arc::new(
        LocalBackend::new(hub.clone(), "http://127.0.0.1:2380")
            .await
            .unwrap(),
    );
    let routes = kv_services(
        backend.clone(),
        hub.clone(),
        backend.auth_hub().clone(),
        KvConfig::default(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut c = Client::connect([url], None).await.unwrap();
    let holder = c.lock("s", None).await.unwrap();
    let waiting = lock_in_background(&c, "s");
    queue_of(&mut c, "s/", 2).await;
    let mut observing = c.observe("s-election").await.unwrap();
    still_blocked(&waiting).await;

    hub.close();
    let err = timeout(SOON, waiting).await.unwrap().unwrap();
    let stopping = (
        "Unavailable",
        "etcdserver: the member is stopping; call again on another member",
    );
    expect_err(err, stopping.0, stopping.1);
    let ended = timeout(SOON, observing.message()).await.unwrap();
    expect_err(ended, stopping.0, stopping.1);
    // The waiter's key went with it.
    assert_eq!(queue(&mut c, "s/").await, [key_of(&holder)]);
}
