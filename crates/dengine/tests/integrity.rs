//! Integrity at the disk and configuration boundary, with nodes started by `dengine::start`
//! (real gRPC on loopback, redb in temporary directories): a member that lost or damaged its
//! storage refuses to start with one clear message (or stops with one), and the documented
//! way to replace it works; a start that fails writes nothing; bad configuration is named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{fast_timing, free_ports, leader_of, put, single_member, wait_for};
use dengine::core::store::MemoryStateMachine;
use dengine::settings::ClusterState;
use dengine::settings::LogBackend;
use dengine::{Consistency, Node, Running, Settings, StartNodeError};

struct Cluster {
    dir: tempfile::TempDir,
    members: BTreeMap<u64, String>,
    running: BTreeMap<u64, Running>,
}

impl Cluster {
    async fn start(n: u64) -> Cluster {
        let ports = free_ports(n as usize + 2);
        let members = (1..=n)
            .map(|id| (id, format!("127.0.0.1:{}", ports[id as usize - 1])))
            .collect();
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            members,
            running: BTreeMap::new(),
        };
        // Spare addresses for members added later.
        for (i, id) in (n + 1..=n + 2).enumerate() {
            c.members
                .insert(id, format!("127.0.0.1:{}", ports[n as usize + i]));
        }
        for id in 1..=n {
            let r = c.launch(id).await.unwrap();
            c.running.insert(id, r);
        }
        c
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    fn settings(&self, id: u64) -> Settings {
        let mut s = Settings::default();
        s.node.id = id;
        s.node.cluster_id = 7;
        s.node.listen_addr = self.members[&id].clone();
        s.node.data_dir = self.data_dir(id);
        s.node.initial_members = self
            .members
            .iter()
            .filter(|(m, _)| **m <= 3)
            .map(|(m, a)| (*m, a.clone()))
            .collect();
        fast_timing(&mut s);
        s
    }

    async fn launch(&self, id: u64) -> Result<Running, StartNodeError> {
        self.launch_with(self.settings(id)).await
    }

    async fn launch_with(&self, s: Settings) -> Result<Running, StartNodeError> {
        dengine::start(s, MemoryStateMachine::new()).await
    }

    fn nodes(&self) -> Vec<Node> {
        self.running.values().map(|r| r.node().clone()).collect()
    }

    async fn leader(&self) -> Node {
        leader_of(&self.nodes()).await
    }

    async fn put(&self, key: &str, value: &str) {
        put(&self.nodes(), key, value).await;
    }

    async fn stop(mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            r.shutdown().await;
        }
    }
}

fn refusal(result: Result<Running, StartNodeError>) -> String {
    match result {
        Ok(_) => panic!("the member started although it should have been refused"),
        Err(e) => e.to_string(),
    }
}

/// `rm -rf` of a member's data directory and a restart with the unchanged settings: before,
/// it re-bootstrapped as a cluster of its own and served empty reads. Now the other members
/// remember its incarnation and it refuses to start, saying how to replace it — with
/// `initial_cluster_state = existing` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_is_refused_with_the_way_to_replace_it() {
    let mut c = Cluster::start(3).await;
    for i in 0..20 {
        c.put(&format!("k{i}"), "v").await;
    }
    // Let every member hear from member 3 (its incarnation travels in every request).
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.running.remove(&3).unwrap().shutdown().await;
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    let message = refusal(c.launch(3).await);
    assert!(
        message.contains("lost its data") && message.contains("Replacing a member"),
        "{message}"
    );
    let mut existing = c.settings(3);
    existing.node.initial_cluster_state = ClusterState::Existing;
    let message = refusal(c.launch_with(existing).await);
    assert!(message.contains("lost its data"), "{message}");
    assert!(
        !c.data_dir(3).join("member").exists(),
        "a refused start leaves no identity behind"
    );
    c.stop().await;
}

/// Only the log removed (`rm -rf data/log`): the identity file says the member was
/// initialized, so the missing log is lost data, refused by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_log_vanished_is_refused_by_name() {
    let mut c = Cluster::start(3).await;
    c.put("a", "1").await;
    c.running.remove(&2).unwrap().shutdown().await;
    let log = c.data_dir(2).join("log");
    std::fs::remove_dir_all(&log).unwrap();
    let message = refusal(c.launch(2).await);
    assert!(
        message.contains(&log.display().to_string()) && message.contains("is missing"),
        "{message}"
    );
    c.stop().await;
}

/// A data directory of another member (node.id changed, directories swapped) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_member_is_refused() {
    let mut c = Cluster::start(3).await;
    c.put("a", "1").await;
    c.running.remove(&3).unwrap().shutdown().await;
    let mut s = c.settings(3);
    s.node.data_dir = c.data_dir(1);
    let message = refusal(c.launch_with(s).await);
    assert!(message.contains("belongs to member 1"), "{message}");
    c.stop().await;
}

/// The procedure of docs/operations.md, "Replacing a member": remove the member, wipe its
/// directory, add it again under a new id, start it with `initial_cluster_state =
/// existing`; it catches up and can be promoted; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_lost_its_data_is_replaced_the_documented_way() {
    let mut c = Cluster::start(3).await;
    for i in 0..30 {
        c.put(&format!("k{i}"), &format!("v{i}")).await;
    }
    // Member 3 loses its disk.
    c.running.remove(&3).unwrap().kill().await;
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    // 1. Remove it.
    let leader = c.leader().await;
    leader.remove(3).await.unwrap();
    // 2. The old id cannot come back.
    let err = leader
        .add_learner(3, c.members[&3].clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never reused"), "{err}");
    // 3. Add the machine under a new id, as a learner, and start it joining.
    leader.add_learner(4, c.members[&3].clone()).await.unwrap();
    let mut s = c.settings(4);
    s.node.listen_addr = c.members[&3].clone();
    s.node.data_dir = c.data_dir(3);
    s.node.initial_cluster_state = ClusterState::Existing;
    s.node.initial_members =
        BTreeMap::from([(1, c.members[&1].clone()), (4, c.members[&3].clone())]);
    let four = c.launch_with(s).await.unwrap();
    let node4 = four.node().clone();
    wait_for("the new member to catch up", async || {
        let v = node4
            .read(Bytes::from_static(b"k29"), Consistency::Stale)
            .await
            .ok()?;
        (v == "v29").then_some(())
    })
    .await;
    // 4. Promote it.
    leader.promote(4).await.unwrap();
    c.running.insert(4, four);
    c.put("after", "replacement").await;
    let v = node4
        .read(Bytes::from_static(b"after"), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(v, "replacement");
    c.stop().await;
}

/// Flipped bytes inside a log entry: before, the member logged the checksum error tens of
/// thousands of times a second and never stopped. Now it stops once (redb: the damage shows
/// when the entry is read) or refuses to start (the write-ahead log: its recovery scan finds
/// it), in both cases naming the file and saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_log_entry_stops_the_member_with_one_message() {
    for backend in [LogBackend::Redb, LogBackend::Wal] {
        let dir = tempfile::tempdir().unwrap();
        let mut s = single_member(dir.path());
        s.storage.backend = backend;
        let running = dengine::start(s.clone(), MemoryStateMachine::new())
            .await
            .unwrap();
        let node = running.node().clone();
        let marker = "CORRUPT-ME-".repeat(8);
        wait_for("a write", async || {
            node.propose(Bytes::from(format!("victim={marker}")))
                .await
                .ok()
        })
        .await;
        for i in 0..5 {
            node.propose(Bytes::from(format!("k{i}=v"))).await.unwrap();
        }
        running.shutdown().await;
        let (file, mut bytes) = std::fs::read_dir(s.node.data_dir.join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .find(|(_, bytes)| bytes.windows(marker.len()).any(|w| w == marker.as_bytes()))
            .expect("the entry's bytes are in a file of the store");
        let at = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
            .unwrap();
        for b in &mut bytes[at + 10..at + 20] {
            *b ^= 0x5a;
        }
        std::fs::write(&file, bytes).unwrap();

        let reason = match dengine::start(s, MemoryStateMachine::new()).await {
            Ok(running) => {
                // The store opened (its own structures are intact); reading the log at start
                // finds the damaged entry, and the node stops once.
                let node = running.node().clone();
                wait_for("the damaged member to stop", async || {
                    node.is_stopped().then_some(())
                })
                .await;
                let reason = node.fatal_error().unwrap();
                running.shutdown().await;
                reason
            }
            Err(e) => e.to_string(),
        };
        assert!(
            reason.contains("corrupt")
                && reason.contains(&file.display().to_string())
                && reason.contains("Replacing a member"),
            "{backend}: {reason}"
        );
    }
}

/// A port in use: before, the failed start had already bootstrapped the log with the given
/// members, and a corrected restart silently kept them. Now every listener is bound first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_cannot_bind_writes_nothing() {
    let c = Cluster::start(0).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut s = c.settings(1);
    s.node.listen_addr = busy.local_addr().unwrap().to_string();
    s.node.initial_members = BTreeMap::from([
        (1, s.node.listen_addr.clone()),
        (2, "127.0.0.1:9".to_string()),
    ]);
    let message = refusal(c.launch_with(s.clone()).await);
    assert!(message.contains("cannot listen"), "{message}");
    let dir = c.data_dir(1);
    assert!(
        !dir.join("log").exists() && !dir.join("member").exists(),
        "nothing written"
    );
    // The corrected start founds the cluster with the corrected members.
    drop(busy);
    let port = free_ports(1)[0];
    s.node.listen_addr = format!("127.0.0.1:{port}");
    s.node.initial_members = BTreeMap::from([(1, s.node.listen_addr.clone())]);
    let running = c.launch_with(s.clone()).await.unwrap();
    let status = running.node().status().await.unwrap();
    assert_eq!(
        status.membership.address(1),
        Some(s.node.listen_addr.as_str())
    );
    running.shutdown().await;
}

/// A data directory that is a file is named as such (before: "File exists (os error 17)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_is_a_file_is_named() {
    let c = Cluster::start(0).await;
    let file = c.dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let mut s = c.settings(1);
    s.node.listen_addr = "127.0.0.1:0".into();
    s.node.data_dir = file.clone();
    s.node.initial_members = BTreeMap::new();
    let message = refusal(c.launch_with(s).await);
    assert!(
        message.contains("node.data_dir") && message.contains("this is a file"),
        "{message}"
    );
}

/// A damaged snapshot file, with the log compacted behind it: before, the member failed with a
/// message about state machines that named no file. Now the damaged file is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_snapshot_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = single_member(dir.path());
    s.snapshot.every_entries = 10;
    s.snapshot.trailing_entries = 0;
    let running = dengine::start(s.clone(), MemoryStateMachine::new())
        .await
        .unwrap();
    let node = running.node().clone();
    wait_for("a write", async || {
        node.propose(Bytes::from_static(b"a=1")).await.ok()
    })
    .await;
    for i in 0..25 {
        node.propose(Bytes::from(format!("k{i}=v"))).await.unwrap();
    }
    node.trigger_snapshot().await.unwrap();
    running.shutdown().await;
    let snaps = s.node.data_dir.join("snapshots");
    let damage = |path: &Path| {
        let mut bytes = std::fs::read(path).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n - 64..] {
            *b ^= 0xff;
        }
        std::fs::write(path, bytes).unwrap();
    };
    let files: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dsnap"))
        .collect();
    assert!(!files.is_empty());
    for f in &files {
        damage(f);
    }
    let message = refusal(dengine::start(s, MemoryStateMachine::new()).await);
    assert!(
        files
            .iter()
            .any(|f| message.contains(&f.display().to_string()))
            && message.contains("damaged"),
        "{message}"
    );
}
