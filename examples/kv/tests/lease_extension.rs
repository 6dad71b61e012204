//! The leader-change extension of leases (etcd's rule): a leader cut off from its peers keeps
//! acknowledging keep-alives until CheckQuorum makes it step down, which may be after its
//! successor took the leases over. The successor must give every lease at least that long
//! (it adds the longest election timeout to each), or a lease whose keep-alive was
//! acknowledged expires before its TTL ran out.
//!
//! The scenario is made to happen every time: the old leader (member 1) notices the partition
//! slowly (a 1.5 s election timeout) while the others elect a successor within about half a
//! second. One test runs the real rule and finds no early expiry; the other runs a build
//! without the extension (`LeaseFault::NoExtension`) and shows the expiry comes early. Only
//! with the `fault-injection` feature (`FaultyTransport` cuts the peer links):
//! `cargo test -p dengine-kv --features fault-injection --test lease_extension`.

#![cfg(feature = "fault-injection")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use dengine::Settings;
use dengine_core::Role;
use dengine_kv::proto::etcdserverpb::lease_client::LeaseClient;
use dengine_kv::proto::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest};
use dengine_kv::{KvConfig, LeaseFault, Member};
use dengine_net_grpc::fault::FaultHandle;
use etcd_client::{Client, PutOptions};
use tokio::time::{Instant, timeout};

mod cluster_support;
use cluster_support::{CLUSTER_ID, SERIAL, TempDir, free_ports, wait_for};

/// The old leader's election timeout: how long it goes on leading, cut off, before
/// CheckQuorum makes it step down.
const SLOW_MS: u64 = 1_500;
/// The others' election timeout.
const FAST_MS: u64 = 300;
/// The lease's TTL (the minimum for the slow member's timeout: 1.5 × 2 × 1.5 s, rounded up).
const TTL: i64 = 5;

struct Cluster {
    members: BTreeMap<u64, (Member, FaultHandle)>,
    clients: BTreeMap<u64, String>,
    _dir: TempDir,
}

async fn start(fault: LeaseFault) -> Cluster {
    let dir = TempDir::new();
    let ports = free_ports(6);
    let peers: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
        .collect();
    let clients: BTreeMap<u64, String> = (1..=3)
        .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize + 2])))
        .collect();
    let mut members = BTreeMap::new();
    for id in 1..=3u64 {
        let mut s = Settings::default();
        s.node.id = id;
        s.node.cluster_id = CLUSTER_ID;
        s.node.listen_addr = peers[&id].clone();
        s.node.client_addr = Some(clients[&id].clone());
        s.node.data_dir = dir.path().join(format!("member{id}"));
        s.node.initial_members = peers.clone();
        s.raft.tick_ms = 20;
        s.raft.election_timeout_ms = if id == 1 { SLOW_MS } else { FAST_MS };
        s.raft.heartbeat_interval_ms = 60;
        s.raft.lease_drift_ms = 60;
        s.network.reconnect_initial = Duration::from_millis(20);
        s.network.reconnect_max = Duration::from_millis(300);
        let mut kv = KvConfig::default();
        // The extension must cover the longest election timeout of any member (a member
        // computes it from its own): the slow one's, twice over (timeouts are random in
        // [t, 2t)).
        kv.leases.extend = Duration::from_millis(2 * SLOW_MS);
        kv.leases.fault = fault;
        let started = Member::start_faulty(s, kv, id).await.unwrap();
        members.insert(id, started);
    }
    Cluster {
        members,
        clients,
        _dir: dir,
    }
}

impl Cluster {
    async fn leader(&self) -> u64 {
        wait_for("a leader", async || {
            for (id, (m, _)) in &self.members {
                if m.node().status().await.ok()?.role == Role::Leader {
                    return Some(*id);
                }
            }
            None
        })
        .await
    }

    async fn stop(self) {
        for (_, (m, _)) in self.members {
            m.kill().await;
        }
    }
}

/// How early (if at all) the lease's key went, measured against its last keep-alive that
/// the cut-off leader acknowledged.
async fn early_expiry(fault: LeaseFault) -> Option<Duration> {
    let cluster = start(fault).await;
    // Member 1 leads (it is the slow one to notice a partition).
    let first = cluster.leader().await;
    if first != 1 {
        let (m, _) = &cluster.members[&first];
        m.node().transfer_leader(1).await.unwrap();
    }
    wait_for("member 1 to lead", async || {
        let (m, _) = &cluster.members[&1];
        (m.node().status().await.ok()?.role == Role::Leader).then_some(())
    })
    .await;
    let url = format!("http://{}", cluster.clients[&1]);
    let mut leases = LeaseClient::connect(url.clone()).await.unwrap();
    let lease = leases
        .lease_grant(LeaseGrantRequest { ttl: TTL, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(lease.ttl, TTL);
    let mut c = Client::connect([url], None).await.unwrap();
    c.put("held", "1", Some(PutOptions::new().with_lease(lease.id)))
        .await
        .unwrap();
    // Let every member apply the grant and the put.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Cut member 1 off from the others (clients still reach it).
    cluster.members[&1].1.block([2, 3]);
    cluster.members[&2].1.block([1]);
    cluster.members[&3].1.block([1]);

    // Renew through member 1 every 50 ms while it acknowledges.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut acks = leases
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut last_ack_sent = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let sent = Instant::now();
        if tx
            .send(LeaseKeepAliveRequest { id: lease.id })
            .await
            .is_err()
        {
            break;
        }
        match timeout(Duration::from_secs(1), acks.message()).await {
            Ok(Ok(Some(ack))) if ack.ttl > 0 => last_ack_sent = Some(sent),
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_ack_sent = last_ack_sent.expect("the cut-off leader acknowledged keep-alives");
    // The new leader's side: when does the key go?
    let mut majority = Client::connect([format!("http://{}", cluster.clients[&2])], None)
        .await
        .unwrap();
    let gone = wait_for("the lease's key to go", async || {
        let r = majority.get("held", None).await.ok()?;
        (r.count() == 0).then(Instant::now)
    })
    .await;
    cluster.stop().await;
    let promise = last_ack_sent + Duration::from_secs(TTL as u64);
    promise.checked_duration_since(gone)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_acknowledged_by_a_cut_off_leader_is_honoured_by_its_successor() {
    let _serial = SERIAL.lock().await;
    let early = early_expiry(LeaseFault::None).await;
    assert_eq!(early, None, "the lease expired before its TTL ran out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_extension_the_successor_expires_the_lease_early() {
    let _serial = SERIAL.lock().await;
    let early = early_expiry(LeaseFault::NoExtension).await;
    let early = early.expect("without the extension the lease should expire early");
    eprintln!("expired {early:?} early without the extension");
    assert!(early > Duration::from_millis(200), "{early:?}");
}
