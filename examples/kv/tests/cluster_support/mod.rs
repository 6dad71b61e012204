//! A three-member `dengine-kv` cluster (real Raft, redb logs, gRPC on loopback) for the
//! cluster tests, and the patient client calls they make (elections may happen at any time on
//! a loaded machine).

#![allow(dead_code)] // Shared by several test crates; each uses a part.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dengine::Settings;
use dengine_core::Role;
use dengine_kv::{KvConfig, Member};
use etcd_client::Client;
use tokio::time::{Instant, timeout};

/// One test at a time (see the module documentation). A tokio mutex works across the
/// tests' separate runtimes and is not poisoned by a failing test.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest wait for anything that should happen "soon" (an election, a catch-up).
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// The longest wait for one client call.
pub(crate) const CALL: Duration = Duration::from_secs(5);
pub(crate) const CLUSTER_ID: u64 = 0x6b76;

/// A directory removed when dropped.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "dengine-kv-cluster-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[path = "../../../../crates/dengine/tests/common/ports.rs"]
mod ports;
pub(crate) use ports::free_ports;

/// Polls `f` every 20 ms until it gives a value; panics after `PATIENCE`.
pub(crate) async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three members; the ones running are in `members`, a crashed one can be started again.
/// Dropping it (a failed test) drops the members, which stops their servers; their nodes stop
/// with the test's runtime.
pub(crate) struct TestCluster {
    pub(crate) members: BTreeMap<u64, Member>,
    /// Peer listeners.
    pub(crate) addrs: BTreeMap<u64, String>,
    /// Client listeners (the etcd API).
    pub(crate) clients: BTreeMap<u64, String>,
    /// The backup the cluster is founded from (`node.restore_from`), if any.
    restore_from: Option<std::path::PathBuf>,
    /// Every member's etcd API configuration.
    kv: KvConfig,
    /// Client sessions on every member (`[client_sessions] enabled`).
    sessions: bool,
    dir: TempDir,
}

impl TestCluster {
    pub(crate) async fn start() -> Self {
        Self::start_from(None).await
    }

    /// A new cluster founded from the backup file `restore_from` (or empty).
    pub(crate) async fn start_from(restore_from: Option<std::path::PathBuf>) -> Self {
        Self::start_with(restore_from, KvConfig::default()).await
    }

    /// [`start_from`](Self::start_from), every member with the etcd API configuration `kv`.
    pub(crate) async fn start_with(restore_from: Option<std::path::PathBuf>, kv: KvConfig) -> Self {
        Self::start_configured(restore_from, kv, false).await
    }

    /// A new cluster whose members run with client sessions: followers forward writes in
    /// their own sessions.
    pub(crate) async fn start_with_sessions(kv: KvConfig) -> Self {
        Self::start_configured(None, kv, true).await
    }

    /// A new cluster of three members of which only `ids` are started (the others can be
    /// started later with [`start_member`](Self::start_member)).
    pub(crate) async fn start_only(ids: &[u64]) -> Self {
        Self::start_some(None, KvConfig::default(), false, ids).await
    }

    async fn start_configured(
        restore_from: Option<std::path::PathBuf>,
        kv: KvConfig,
        sessions: bool,
    ) -> Self {
        Self::start_some(restore_from, kv, sessions, &[1, 2, 3]).await
    }

    async fn start_some(
        restore_from: Option<std::path::PathBuf>,
        kv: KvConfig,
        sessions: bool,
        ids: &[u64],
    ) -> Self {
        let dir = TempDir::new();
        let ports = free_ports(6);
        let addrs: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
            .collect();
        let clients: BTreeMap<u64, String> = (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize + 2])))
            .collect();
        let mut cluster = TestCluster {
            members: BTreeMap::new(),
            addrs,
            clients,
            restore_from,
            kv,
            sessions,
            dir,
        };
        for &id in ids {
            cluster.start_member(id).await;
        }
        cluster
    }

    pub(crate) fn settings(&self, id: u64) -> Settings {
        let mut s = Settings::default();
        s.node.id = id;
        s.node.cluster_id = CLUSTER_ID;
        s.node.listen_addr = self.addrs[&id].clone();
        s.node.client_addr = Some(self.clients[&id].clone());
        s.node.data_dir = self.dir.path().join(format!("member{id}"));
        s.node.initial_members = self.addrs.clone();
        s.node.restore_from = self.restore_from.clone();
        s.raft.tick_ms = 20;
        s.raft.election_timeout_ms = 300;
        s.raft.heartbeat_interval_ms = 60;
        s.raft.lease_drift_ms = 60;
        s.network.reconnect_initial = Duration::from_millis(20);
        s.network.reconnect_max = Duration::from_millis(300);
        s.shutdown.transfer_timeout_ms = 1000;
        s.client_sessions.enabled = self.sessions;
        s
    }

    /// Starts member `id` (again, after a crash: same port, same data directory).
    pub(crate) async fn start_member(&mut self, id: u64) {
        let member = Member::start(self.settings(id), self.kv.clone())
            .await
            .unwrap();
        assert_eq!(member.peer_addr().to_string(), self.addrs[&id]);
        assert_eq!(
            member.client_addr().map(|a| a.to_string()),
            Some(self.clients[&id].clone())
        );
        self.members.insert(id, member);
    }

    /// Crashes member `id`.
    pub(crate) async fn kill(&mut self, id: u64) {
        self.members.remove(&id).unwrap().kill().await;
    }

    pub(crate) fn url(&self, id: u64) -> String {
        format!("http://{}", self.clients[&id])
    }

    /// A client that talks to member `id` only.
    pub(crate) async fn client(&self, id: u64) -> Client {
        Client::connect([self.url(id)], None).await.unwrap()
    }

    /// Waits until one running member leads and every running member knows it.
    pub(crate) async fn leader(&self) -> u64 {
        wait_for("a leader known to every running member", async || {
            let mut known = BTreeSet::new();
            let mut leading = Vec::new();
            for (id, m) in &self.members {
                let s = m.node().status().await.ok()?;
                known.insert(s.leader?);
                if s.role == Role::Leader {
                    leading.push(*id);
                }
            }
            (known.len() == 1 && leading.len() == 1 && known.first() == leading.first())
                .then(|| leading[0])
        })
        .await
    }

    pub(crate) fn running_except(&self, id: u64) -> Vec<u64> {
        self.members.keys().copied().filter(|m| *m != id).collect()
    }

    /// Graceful shutdown of every running member, all at once.
    pub(crate) async fn stop(mut self) {
        let mut terms = BTreeMap::new();
        for (id, m) in &self.members {
            if let Ok(s) = m.node().status().await {
                terms.insert(*id, s.term);
            }
        }
        eprintln!("terms at the end: {terms:?}");
        let tasks: Vec<_> = std::mem::take(&mut self.members)
            .into_values()
            .map(|m| tokio::spawn(m.shutdown()))
            .collect();
        for t in tasks {
            timeout(PATIENCE, t)
                .await
                .expect("a member shuts down in time")
                .unwrap();
        }
    }
}

/// Whether a call was refused because the member knows no leader or is not the leader
/// (an election is under way): nothing was proposed, so even a write may be sent again.
pub(crate) fn refused(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(s) = e else {
        return false;
    };
    let m = s.message();
    format!("{:?}", s.code()) == "Unavailable"
        && (m.contains("no leader") || m.contains("not leader") || m.contains("not the leader"))
}

/// A call that must succeed, in time; it is repeated only when it was refused (an election
/// may happen at any time on a loaded machine), so writes happen exactly once.
pub(crate) async fn ok<T>(
    what: &str,
    mut call: impl AsyncFnMut() -> Result<T, etcd_client::Error>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match timeout(CALL, call()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) if refused(&e) && Instant::now() < deadline => {
                eprintln!("{what}: refused, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => panic!("{what}: {e:?}"),
            Err(_) => panic!("{what}: no answer within {CALL:?}"),
        }
    }
}

/// A call without side effects that must succeed; repeated after any failure until
/// `PATIENCE` runs out.
pub(crate) async fn read<T>(
    what: &str,
    mut call: impl AsyncFnMut() -> Result<T, etcd_client::Error>,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let failure = match timeout(CALL, call()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => format!("{e:?}"),
            Err(_) => format!("no answer within {CALL:?}"),
        };
        assert!(Instant::now() < deadline, "{what}: {failure}");
        eprintln!("{what}: failed, retrying: {failure}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
