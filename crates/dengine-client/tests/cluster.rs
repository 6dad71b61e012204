//! The client against real members started by `dengine::start` (loopback gRPC, write-ahead
//! logs in temporary directories): follower redirects and forwarding, exactly-once session
//! retries through a leader crash, deadlines, TLS and mutual TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use dengine::{Command, LogIndex, Running, Settings};
use dengine_client::{Client, ClientConfig, ClientError, ClientTls, Consistency};

/// Counts increments, each carrying a unique 8-byte id, and remembers every id it applied:
/// an increment applied twice shows up as a duplicate. Responds with the count; a read
/// answers (count, duplicates), 16 bytes.
#[derive(Default)]
struct Increments {
    seen: BTreeSet<u64>,
    count: u64,
    duplicates: u64,
}

impl Increments {
    fn encode(&self) -> Bytes {
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(&self.count.to_le_bytes());
        b.extend_from_slice(&self.duplicates.to_le_bytes());
        Bytes::from(b)
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl dengine::StateMachine for Increments {
    type Error = Infallible;

    async fn apply(&mut self, commands: &[Command], _: LogIndex) -> Result<Vec<Bytes>, Infallible> {
        Ok(commands
            .iter()
            .map(|c| {
                if c.data.len() == 8 {
                    self.count += 1;
                    if !self.seen.insert(u64_at(&c.data, 0)) {
                        self.duplicates += 1;
                    }
                }
                Bytes::copy_from_slice(&self.count.to_le_bytes())
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Bytes, Infallible> {
        let mut b = self.encode().to_vec();
        for id in &self.seen {
            b.extend_from_slice(&id.to_le_bytes());
        }
        Ok(Bytes::from(b))
    }

    async fn install_snapshot(&mut self, data: Bytes, _: LogIndex) -> Result<(), Infallible> {
        self.count = u64_at(&data, 0);
        self.duplicates = u64_at(&data, 8);
        self.seen = data[16..].chunks(8).map(|c| u64_at(c, 0)).collect();
        Ok(())
    }

    async fn query(&self, _: Bytes) -> Result<Bytes, Infallible> {
        Ok(self.encode())
    }
}

#[path = "../../dengine/tests/common/ports.rs"]
mod ports;
use ports::free_ports;

/// The test clusters' cluster secret (`network.cluster_secret_file`).
const CLUSTER_SECRET: &str = "dengine-client-tests-secret";

/// Three members with client listeners and fast timing; sessions on when `sessions`.
struct Cluster {
    _dir: tempfile::TempDir,
    members: BTreeMap<u64, Running>,
    client_addrs: BTreeMap<u64, String>,
    peer_addrs: BTreeMap<u64, String>,
}

impl Cluster {
    /// Started on free ports; started again on others when a port was taken between the
    /// check and the bind (another test's connection can get it as its local port).
    async fn start(sessions: bool, tls: Option<dengine::grpc::TlsConfig>) -> Cluster {
        for _ in 0..5 {
            if let Some(cluster) = Self::try_start(sessions, tls.clone()).await {
                return cluster;
            }
        }
        panic!("no free ports for a cluster in 5 attempts");
    }

    /// `None` if a port was taken meanwhile (what started is stopped again).
    async fn try_start(sessions: bool, tls: Option<dengine::grpc::TlsConfig>) -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(6);
        let peers: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
            .collect();
        let mut members = BTreeMap::new();
        let mut client_addrs = BTreeMap::new();
        for (&id, peer) in &peers {
            let mut s = Settings::default();
            s.node.id = id;
            s.node.listen_addr = peer.clone();
            s.node.client_addr = Some(format!("127.0.0.1:{}", ports[id as usize + 2]));
            s.node.data_dir = dir.path().join(format!("node{id}"));
            s.node.initial_members = peers.clone();
            s.raft.tick_ms = 20;
            s.raft.election_timeout_ms = 300;
            s.raft.heartbeat_interval_ms = 60;
            s.raft.lease_drift_ms = 60;
            s.network.reconnect_initial = Duration::from_millis(20);
            s.network.reconnect_max = Duration::from_millis(300);
            s.client.propose_timeout_ms = 2000;
            s.client_sessions.enabled = sessions;
            s.client_api.tls = tls.clone();
            // Peer requests, the forwarded ones among them, must carry it.
            s.network.cluster_secret = Some(CLUSTER_SECRET.to_string());
            client_addrs.insert(id, s.node.client_addr.clone().unwrap());
            match dengine::start(s, Increments::default()).await {
                Ok(running) => members.insert(id, running),
                Err(e) if e.to_string().contains("Address already in use") => {
                    for (_, running) in members {
                        running.kill().await;
                    }
                    return None;
                }
                Err(e) => panic!("member {id} did not start: {e}"),
            };
        }
        Some(Cluster {
            _dir: dir,
            members,
            client_addrs,
            peer_addrs: peers,
        })
    }

    async fn leader(&self) -> u64 {
        for _ in 0..1500 {
            for (&id, r) in &self.members {
                if r.node().watch_leadership().borrow().role == dengine::core::Role::Leader {
                    return id;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader within 30 s");
    }

    fn config(&self, order: impl IntoIterator<Item = u64>) -> ClientConfig {
        ClientConfig::new(order.into_iter().map(|id| self.client_addrs[&id].clone()))
    }

    async fn stop(self) {
        for (_, r) in self.members {
            r.shutdown().await;
        }
    }
}

fn id_command(id: u64) -> Bytes {
    Bytes::copy_from_slice(&id.to_le_bytes())
}

/// A follower refuses a proposal with the leader's id; the client learns which endpoint that
/// is and sends it there, and keeps going to the leader afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refers_the_client_to_the_leader() {
    let c = Cluster::start(false, None).await;
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    // The leader's endpoint last: the first attempt certainly reaches a follower.
    let client = Client::connect(c.config([followers[0], followers[1], leader])).unwrap();
    let response = client.propose(id_command(1)).await.unwrap();
    assert_eq!(u64_at(&response, 0), 1);
    let response = client.propose(id_command(2)).await.unwrap();
    assert_eq!(u64_at(&response, 0), 2);
    // Over the size limit: refused at once, never retried until the deadline. Just over
    // raft.max_proposal_bytes, by the core (`too-large`); far over, before the member reads
    // the request at all.
    for size in [(1 << 20) + 1, 2 << 20] {
        let started = tokio::time::Instant::now();
        let e = client
            .propose(Bytes::from(vec![0u8; size]))
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }), "{size}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{size}: retried"
        );
    }
    let info = client.leader().await.unwrap();
    assert_eq!(info.leader, Some(leader), "{info:?}");
    assert_eq!(info.members.len(), 3, "{info:?}");
    for consistency in [Consistency::Linearizable, Consistency::Lease] {
        let state = client.read(Bytes::new(), consistency).await.unwrap();
        assert_eq!(u64_at(&state, 0), 2, "{consistency:?}");
    }
    // Stale reads go to every member in turn; each has the writes once it applied them.
    let mut answers = 0;
    for _ in 0..200 {
        let state = client.read(Bytes::new(), Consistency::Stale).await.unwrap();
        if u64_at(&state, 0) == 2 {
            answers += 1;
            if answers == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answers, 3, "stale reads caught up");
    let mut watch = client.watch_leader().await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.leader, Some(leader));
    // Sessions are off in this cluster: a session is refused, and says why.
    let off = client.open_session().await.unwrap_err();
    assert!(
        matches!(&off, ClientError::Refused { kind, .. } if kind == "sessions-off"),
        "{off}"
    );
    c.stop().await;
}

/// A client that reaches only a follower writes through it when it asks for forwarding
/// (plain proposals, and session calls applied once however often they are sent), and
/// cannot write at all when it does not (the follower refers it to a leader it cannot reach).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_forwards_to_the_leader_when_the_client_asks() {
    use dengine_client::pb::client_client::ClientClient;
    use dengine_client::pb::{ProposeRequest, SessionRequest};

    let c = Cluster::start(true, None).await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&id| id != leader).unwrap();

    let mut config = c.config([follower]);
    config.request_timeout = Duration::from_secs(1);
    let redirected = Client::connect(config.clone()).unwrap();
    let e = redirected.propose(id_command(1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Deadline {
                outcome_unknown: false,
                ..
            }
        ),
        "{e}"
    );

    config.forward = true;
    let forwarded = Client::connect(config).unwrap();
    let response = forwarded.propose(id_command(1)).await.unwrap();
    assert_eq!(u64_at(&response, 0), 1);
    let session = forwarded.open_session().await.unwrap();
    assert_eq!(u64_at(&session.propose(id_command(2)).await.unwrap(), 0), 2);
    session.keep_alive().await.unwrap();

    // The same (session, seq) sent twice through the follower: the second is answered
    // with the first's response, not applied again.
    let mut raw = ClientClient::connect(format!("http://{}", c.client_addrs[&follower]))
        .await
        .unwrap();
    let again = ProposeRequest {
        command: id_command(3),
        session: session.id(),
        seq: 7,
        first_unanswered: 7,
        forward: true,
    };
    let first = raw.propose(again.clone()).await.unwrap().into_inner();
    let second = raw.propose(again.clone()).await.unwrap().into_inner();
    assert_eq!(u64_at(&first.response, 0), 3);
    assert_eq!(
        first.response, second.response,
        "answered from the session table"
    );
    // Without `forward` the follower refuses with the leader's id, as before.
    let refused = raw
        .propose(ProposeRequest {
            forward: false,
            seq: 8,
            ..again.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        refused.metadata().get("dengine-error").unwrap(),
        "not-leader",
        "{refused:?}"
    );
    assert_eq!(
        refused.metadata().get("dengine-leader").unwrap(),
        leader.to_string().as_str()
    );
    // Number 8 through the follower says the client holds 7's answer; a refusal of the
    // leader's session table then comes back through the follower as the leader sent it.
    let eighth = raw
        .propose(ProposeRequest {
            command: id_command(4),
            seq: 8,
            first_unanswered: 8,
            ..again.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u64_at(&eighth.response, 0), 4);
    let acknowledged = raw.propose(again).await.unwrap_err();
    assert_eq!(
        acknowledged.metadata().get("dengine-error").unwrap(),
        "session-acknowledged",
        "{acknowledged:?}"
    );
    raw.close_session(SessionRequest {
        session: session.id(),
        forward: true,
    })
    .await
    .unwrap();

    // The leader's side of forwarding is a peer service: a caller without the cluster's
    // secret that claims to be a member is refused, and nothing it sent is applied.
    {
        use dengine::grpc::client_pb::forward_client::ForwardClient;
        use dengine::grpc::client_pb::{
            self as member_pb, ForwardBatch, ForwardCall, forward_call,
        };
        let mut forged = ForwardClient::connect(format!("http://{}", c.peer_addrs[&leader]))
            .await
            .unwrap();
        let batch = ForwardBatch {
            from: follower,
            calls: vec![ForwardCall {
                id: 1,
                call: Some(forward_call::Call::Propose(member_pb::ProposeRequest {
                    command: id_command(99),
                    ..Default::default()
                })),
            }],
        };
        let refused = forged
            .stream(tokio_stream::iter([batch]))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }

    let state = forwarded
        .read(Bytes::new(), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        (u64_at(&state, 0), u64_at(&state, 8)),
        (4, 0),
        "(count, duplicates)"
    );
    c.stop().await;
}

/// Four sessions propose 40 increments each while the leader is killed: every proposal is
/// answered, and each increment is applied exactly once (the count is 160, no id twice),
/// though some were in flight at the leader when it died and were sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_proposals_retried_through_a_leader_crash_are_applied_once() {
    sessions_through_a_leader_crash(false).await;
}

/// The same through the followers only, which forward every call to the leader: the calls
/// in flight on the forwarding streams when the leader dies come back of unknown outcome,
/// are sent again (to the follower that then leads, or forwarded to it) and still apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_proposals_forwarded_through_a_leader_crash_are_applied_once() {
    sessions_through_a_leader_crash(true).await;
}

async fn sessions_through_a_leader_crash(forward: bool) {
    let mut c = Cluster::start(true, None).await;
    let leader = c.leader().await;
    let mut config = if forward {
        c.config((1..=3).filter(|&id| id != leader))
    } else {
        c.config(1..=3)
    };
    config.forward = forward;
    let client = Client::connect(config).unwrap();
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let client = client.clone();
        let progress = progress_tx.clone();
        tasks.push(tokio::spawn(async move {
            let session = client.open_session().await.unwrap();
            for i in 0..40 {
                session.propose(id_command(t * 1000 + i)).await.unwrap();
                let _ = progress.send(());
            }
            session.close().await.unwrap();
        }));
    }
    // Kill the leader once the sessions are well under way (with commands in flight).
    for _ in 0..30 {
        progress.recv().await.unwrap();
    }
    c.members.remove(&leader).unwrap().kill().await;
    for t in tasks {
        t.await.unwrap();
    }
    let state = client
        .read(Bytes::new(), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(
        (u64_at(&state, 0), u64_at(&state, 8)),
        (160, 0),
        "(count, duplicates)"
    );
    let new_leader = client.leader().await.unwrap().leader;
    assert!(new_leader.is_some() && new_leader != Some(leader));
    c.stop().await;
}

/// A call ends at its deadline: with no member listening nothing was applied; with a leader
/// that lost its quorum, a proposal's outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_end_at_their_deadline_and_say_whether_anything_may_have_applied() {
    let nobody = free_ports(2);
    let mut config = ClientConfig::new(nobody.iter().map(|p| format!("127.0.0.1:{p}")));
    config.request_timeout = Duration::from_millis(600);
    let client = Client::connect(config).unwrap();
    let started = tokio::time::Instant::now();
    let e = client.propose(id_command(1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Deadline {
                outcome_unknown: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let mut c = Cluster::start(false, None).await;
    let leader = c.leader().await;
    let mut config = c.config([leader]);
    config.request_timeout = Duration::from_millis(800);
    let client = Client::connect(config).unwrap();
    client.propose(id_command(1)).await.unwrap();
    for id in (1..=3).filter(|&id| id != leader) {
        c.members.remove(&id).unwrap().kill().await;
    }
    let e = client.propose(id_command(2)).await.unwrap_err();
    assert!(e.outcome_unknown(), "{e}");
    c.stop().await;
}

/// A CA, a member certificate for `localhost` and a client certificate signed by it, as
/// files in `dir`: `ca.pem`, `member.pem`/`member.key`, `client.pem`/`client.key`. Returns the
/// members' `[client_api.tls]`.
fn tls_files(dir: &std::path::Path, require_client_cert: bool) -> dengine::grpc::TlsConfig {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = rcgen::Issuer::new(ca_params, ca_key);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, subject) in [("member", "localhost"), ("client", "app-client")] {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![subject.to_string()]).unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
    dengine::grpc::TlsConfig {
        cert: dir.join("member.pem"),
        key: dir.join("member.key"),
        ca: dir.join("ca.pem"),
        require_client_cert,
        server_name: None,
    }
}

/// With `[client_api.tls]` and `require_client_cert`, a client with a certificate of the CA
/// gets through; one that trusts the CA but has no certificate does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_mutual_tls_client_listener_only_with_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let c = Cluster::start(false, Some(tls_files(dir.path(), true))).await;
    c.leader().await;
    let with_identity = ClientTls::from_files(
        &path("ca.pem"),
        Some((path("client.pem").as_path(), path("client.key").as_path())),
    )
    .unwrap()
    .server_name("localhost");
    let without = ClientTls::from_files(&path("ca.pem"), None)
        .unwrap()
        .server_name("localhost");
    let mut config = c.config(1..=3);
    config.tls = Some(with_identity);
    let client = Client::connect(config).unwrap();
    let response = client.propose(id_command(7)).await.unwrap();
    assert_eq!(u64_at(&response, 0), 1);

    let mut config = c.config(1..=3);
    config.tls = Some(without);
    config.request_timeout = Duration::from_millis(800);
    let client = Client::connect(config).unwrap();
    let e = client
        .read(Bytes::new(), Consistency::Stale)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Deadline { .. }), "{e}");
    c.stop().await;
}

/// With `[client_api.tls]`, a client that trusts the CA gets through; one that does not
/// trust it, or speaks plaintext, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_a_tls_client_listener_only_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f);
    let tls = tls_files(dir.path(), false);
    let c = Cluster::start(false, Some(tls)).await;
    c.leader().await;

    let mut config = c.config(1..=3);
    config.tls = Some(
        ClientTls::from_files(&path("ca.pem"), None)
            .unwrap()
            .server_name("localhost"),
    );
    let client = Client::connect(config).unwrap();
    let response = client.propose(id_command(7)).await.unwrap();
    assert_eq!(u64_at(&response, 0), 1);

    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut other = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = other.self_signed(&other_key).unwrap();
    for tls in [
        Some(ClientTls::new(other.pem()).server_name("localhost")),
        None,
    ] {
        let mut config = c.config(1..=3);
        config.tls = tls;
        config.request_timeout = Duration::from_millis(800);
        let client = Client::connect(config).unwrap();
        let e = client
            .read(Bytes::new(), Consistency::Stale)
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Deadline { .. }), "{e}");
    }
    c.stop().await;
}
