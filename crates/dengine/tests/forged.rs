//! Forged traffic against running clusters started by `dengine::start` (real gRPC on
//! loopback): with the defaults, one forged packet cannot end a cluster; with peer mutual TLS,
//! a forged append "from the leader" is refused; the admin API needs its token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::{fast_timing, free_ports, put, wait_for};
use dengine::core::store::MemoryStateMachine;
use dengine::core::{Entry, EntryId, EntryPayload, Message, MessageBody, Role};
use dengine::grpc::TlsConfig;
use dengine::grpc::admin_pb::StatusRequest;
use dengine::grpc::admin_pb::admin_client::AdminClient;
use dengine::grpc::pb::peer_client::PeerClient;
use dengine::grpc::{convert, pb, tonic};
use dengine::{Node, Running, Settings};

struct Cluster {
    _dir: tempfile::TempDir,
    members: BTreeMap<u64, String>,
    running: Vec<Running>,
}

impl Cluster {
    async fn start(tweak: impl Fn(u64, &mut Settings)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(3);
        let members: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
            .collect();
        let mut running = Vec::new();
        for id in 1..=3 {
            let mut s = Settings::default();
            s.node.id = id;
            s.node.cluster_id = 5;
            s.node.listen_addr = members[&id].clone();
            s.node.data_dir = dir.path().join(format!("node{id}"));
            s.node.initial_members = members.clone();
            fast_timing(&mut s);
            tweak(id, &mut s);
            running.push(dengine::start(s, MemoryStateMachine::new()).await.unwrap());
        }
        Cluster {
            _dir: dir,
            members,
            running,
        }
    }

    fn nodes(&self) -> Vec<Node> {
        self.running.iter().map(|r| r.node().clone()).collect()
    }

    /// The leader once one leads and every node knows it: (id, term).
    async fn settled(&self) -> (u64, u64) {
        let nodes = self.nodes();
        wait_for("a settled leader", async || {
            let mut seen = Vec::new();
            for n in &nodes {
                let s = n.status().await.ok()?;
                seen.push((s.leader?, s.term, s.role));
            }
            let (leader, term, _) = seen[0];
            let agreed = seen.iter().all(|&(l, t, _)| l == leader && t == term);
            let one = seen.iter().filter(|(_, _, r)| *r == Role::Leader).count() == 1;
            (agreed && one).then_some((leader, term))
        })
        .await
    }

    async fn put(&self, key: &str) {
        put(&self.nodes(), key, "v").await;
    }

    async fn stop(self) {
        for r in self.running {
            r.shutdown().await;
        }
    }
}

fn wire(cluster_id: u64, m: &Message) -> pb::RaftMessage {
    convert::encode_message(cluster_id, m)
}

/// Before: one `Deliver` of a heartbeat with term 2^64 − 1 "from the leader" moved every
/// member to a term with no successor — no leader ever again, surviving restarts. A vote
/// request from a stranger forced an election. Now both are refused or ignored, and the
/// cluster carries on in its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_forged_packet_cannot_end_or_disturb_a_cluster() {
    let c = Cluster::start(|_, _| {}).await;
    c.put("a").await;
    let (leader, term) = c.settled().await;
    for (&id, address) in &c.members {
        if id == leader {
            continue;
        }
        let mut peer = PeerClient::connect(format!("http://{address}"))
            .await
            .unwrap();
        let huge = Message {
            from: leader,
            to: id,
            term: u64::MAX,
            body: MessageBody::Heartbeat(dengine::core::Heartbeat {
                commit: 0,
                round: 1,
            }),
        };
        let _ = peer.deliver(wire(5, &huge)).await;
        let stranger = Message {
            from: 77,
            to: id,
            term: term + 5,
            body: MessageBody::VoteRequest(dengine::core::VoteRequest {
                pre_vote: false,
                last_log: EntryId::new(term + 5, 1_000_000),
                leader_transfer: true,
            }),
        };
        let _ = peer.deliver(wire(5, &stranger)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.settled().await, (leader, term), "same leader, same term");
    c.put("b").await;
    c.stop().await;
}

/// Certificates for a cluster: a CA, member certificates that name `member-<id>`, and a
/// client certificate of the same CA that names no member.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dengine test CA");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for "localhost" with the extra DNS name `name`; returns (cert, key).
    fn issue(&self, file: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{file}.pem")),
            self.dir.path().join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

async fn tls_client(
    pki: &Pki,
    address: &str,
    cert: &Path,
    key: &Path,
) -> PeerClient<tonic::transport::Channel> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(pki.ca()).unwrap(),
        ))
        .identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    PeerClient::new(channel)
}

/// Before: reading term and last index from the admin API, one `Deliver` of an append "from
/// the leader" made a follower take a write the leader never made and lose an acknowledged
/// one. With peer mutual TLS, a certificate of the cluster's own CA that does not name the
/// leader (a client's, or another member's) cannot speak for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_peer_mtls_a_forged_append_is_refused() {
    let pki = Pki::new();
    let certs: BTreeMap<u64, _> = (1..=3)
        .map(|id| {
            (
                id,
                pki.issue(&format!("member{id}"), &format!("member-{id}")),
            )
        })
        .collect();
    let c = Cluster::start(|id, s| {
        let (cert, key) = certs[&id].clone();
        s.network.tls = Some(TlsConfig {
            cert,
            key,
            ca: pki.ca(),
            require_client_cert: true,
            server_name: Some("localhost".into()),
        });
    })
    .await;
    c.put("a").await;
    let (leader, term) = c.settled().await;
    let follower = *c.members.keys().find(|id| **id != leader).unwrap();
    let forged = Message {
        from: leader,
        to: follower,
        term,
        body: MessageBody::Append(dengine::core::AppendRequest {
            prev: EntryId::new(term, 2),
            entries: vec![Entry::new(
                term,
                3,
                EntryPayload::Normal(Bytes::from_static(b"forged=1")),
            )],
            commit: 3,
        }),
    };
    // A client's certificate (same CA), and another member's certificate.
    let (alice_cert, alice_key) = pki.issue("alice", "alice");
    let other = *c
        .members
        .keys()
        .find(|id| **id != leader && **id != follower)
        .unwrap();
    for (cert, key) in [(alice_cert, alice_key), certs[&other].clone()] {
        let mut peer = tls_client(&pki, &c.members[&follower], &cert, &key).await;
        let err = peer.deliver(wire(5, &forged)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }
    // A client without any certificate does not get through the handshake.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", c.members[&follower]))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        assert!(
            PeerClient::new(channel)
                .deliver(wire(5, &forged))
                .await
                .is_err()
        );
    }
    let nodes = c.nodes();
    let reader = nodes.iter().find(|n| n.id() == follower).unwrap();
    let v = reader
        .read(Bytes::from_static(b"forged"), dengine::Consistency::Stale)
        .await
        .unwrap();
    assert_eq!(v, "", "the forged write never arrived");
    assert_eq!(c.settled().await, (leader, term));
    c.stop().await;
}

/// Before: `Admin.Remove`, `TransferLeader` and `TriggerSnapshot` succeeded for anyone who
/// reached the (only) port. Now the admin API has its own listener, and with a token set,
/// requests without it are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, "an-admin-token-of-some-length\n").unwrap();
    let c = Cluster::start(|_, s| {
        s.node.admin_addr = Some("127.0.0.1:0".into());
        s.admin.token_file = Some(token.clone());
    })
    .await;
    c.put("a").await;
    let addr = c.running[0].admin_addr().unwrap();
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = admin.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let mut wrong = tonic::Request::new(StatusRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token".parse().unwrap());
    assert!(admin.status(wrong).await.is_err());
    let mut right = tonic::Request::new(StatusRequest {});
    right.metadata_mut().insert(
        "authorization",
        "Bearer an-admin-token-of-some-length".parse().unwrap(),
    );
    let status = admin.status(right).await.unwrap().into_inner();
    assert_eq!(status.id, c.running[0].node().id());
    c.stop().await;

    // An admin address other hosts can reach, without a token or client certificates, is
    // refused at start.
    let mut s = Settings::default();
    s.node.id = 1;
    s.node.listen_addr = "127.0.0.1:0".into();
    s.node.admin_addr = Some("0.0.0.0:0".into());
    s.node.data_dir = dir.path().join("exposed");
    let err = dengine::start(s, MemoryStateMachine::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("node.admin_addr"), "{err}");
}
