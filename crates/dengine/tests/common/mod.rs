//! What the facade's cluster tests share: free ports, polling, fast timing, writes through
//! whichever node leads.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use dengine::{Node, Settings};

mod ports;
pub(crate) use ports::free_ports;

/// Polls `f` every 20 ms until it gives a value; panics after 30 s.
pub async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member that founds a cluster of its own on a free loopback port, its data under `dir`,
/// with [`fast_timing`].
pub fn single_member(dir: &std::path::Path) -> Settings {
    let mut s = Settings::default();
    s.node.id = 1;
    s.node.listen_addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    s.node.data_dir = dir.join("node1");
    s.node.initial_members = [(1, s.node.listen_addr.clone())].into();
    fast_timing(&mut s);
    s
}

/// Timing for tests: 20 ms ticks, 300 ms elections, fast reconnects.
pub fn fast_timing(s: &mut Settings) {
    s.raft.tick_ms = 20;
    s.raft.election_timeout_ms = 300;
    s.raft.heartbeat_interval_ms = 60;
    s.raft.lease_drift_ms = 60;
    s.network.reconnect_initial = Duration::from_millis(20);
    s.network.reconnect_max = Duration::from_millis(300);
    s.shutdown.transfer_timeout_ms = 1000;
}

/// The node that leads, once one does.
pub async fn leader_of(nodes: &[Node]) -> Node {
    wait_for("a leader", async || {
        for n in nodes {
            if let Ok(s) = n.status().await
                && s.role == dengine::core::Role::Leader
            {
                return Some(n.clone());
            }
        }
        None
    })
    .await
}

/// Proposes `key=value` through whichever node takes it (following refusals); the commands
/// are idempotent sets, so retrying an unknown outcome is harmless.
pub async fn put(nodes: &[Node], key: &str, value: &str) {
    let cmd = Bytes::from(format!("{key}={value}"));
    wait_for("a write", async || {
        for n in nodes {
            match n.propose(cmd.clone()).await {
                Ok(_) => return Some(()),
                Err(e) if e.leader().is_some() => continue,
                Err(e) => {
                    eprintln!("propose {key} on node {}: {e}", n.id());
                    continue;
                }
            }
        }
        None
    })
    .await;
}
