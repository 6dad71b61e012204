//! A 3-member etcd 3.4 cluster on loopback, the baseline of `cargo xtask bench e2e --vs-etcd`.
//!
//! etcd runs with its defaults (fsync of its WAL before a commit is acknowledged, like
//! dengine's default `storage.fsync = true`), each member with its own data directory. Like
//! [`crate::cluster::Cluster`], an [`EtcdCluster`] stops its processes and removes its files
//! on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::cluster::{free_port, terminate, wait_until};

/// Finds the `etcd` binary, installing Debian's `etcd-server` (etcd 3.4) if it is missing;
/// returns its version line.
pub(crate) fn ensure_installed() -> Result<String, String> {
    if let Some(version) = etcd_version() {
        return Ok(version);
    }
    eprintln!("etcd not found: installing Debian's etcd-server (apt-get install -y etcd-server)");
    let installed = Command::new("apt-get")
        .args(["install", "-y", "etcd-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    etcd_version().ok_or_else(|| {
        "etcd is not installed and `apt-get install -y etcd-server` did not install it (it \
         needs root and Debian's package lists); install etcd 3.4 so that `etcd` is on the \
         PATH, or run without --vs-etcd"
            .to_string()
    })
}

fn etcd_version() -> Option<String> {
    let out = Command::new("etcd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| text.lines().next().unwrap_or("etcd").trim().to_string())
}

struct Member {
    name: String,
    client: String,
    peer: String,
    child: Option<Child>,
}

/// Three etcd members on loopback; stopped and removed on drop.
pub(crate) struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    /// Keep the directory (and the members' logs) after a failure.
    pub(crate) keep_dir: bool,
}

impl EtcdCluster {
    /// Starts three members on free loopback ports with their data under `parent`, and waits
    /// until a write through every member succeeds.
    pub(crate) fn start(parent: &Path, interrupted: &AtomicBool) -> Result<EtcdCluster, String> {
        let dir = parent.join(format!("etcd-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut members = Vec::new();
        for i in 1..=3 {
            members.push(Member {
                name: format!("etcd{i}"),
                client: format!("http://127.0.0.1:{}", free_port()?),
                peer: format!("http://127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let mut cluster = EtcdCluster {
            dir,
            members,
            keep_dir: false,
        };
        let initial: Vec<String> = cluster
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect();
        let initial = initial.join(",");
        for i in 0..cluster.members.len() {
            let m = &cluster.members[i];
            let log_path = cluster.dir.join(format!("{}.log", m.name));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let log2 = log
                .try_clone()
                .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
            let child = Command::new("etcd")
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(cluster.dir.join(&m.name))
                .args(["--listen-client-urls", &m.client])
                .args(["--advertise-client-urls", &m.client])
                .args(["--listen-peer-urls", &m.peer])
                .args(["--initial-advertise-peer-urls", &m.peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "dengine-bench"])
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(|e| format!("cannot start etcd: {e}"))?;
            cluster.members[i].child = Some(child);
        }
        let endpoints = cluster.endpoints();
        // etcd 3.4's `/health` on a client port answers `"health":"true"` once a quorum read
        // through Raft succeeds on that member (what `etcdctl endpoint health` checks, without
        // needing `etcdctl` installed).
        wait_until(
            "the etcd cluster to accept writes",
            Duration::from_secs(30),
            interrupted,
            || {
                endpoints
                    .iter()
                    .all(|e| {
                        crate::probe::http_get(e, "/health")
                            .is_some_and(|body| body.contains("\"health\":\"true\""))
                    })
                    .then_some(())
            },
        )
        .inspect_err(|_| cluster.keep_dir = true)?;
        Ok(cluster)
    }

    /// The members' client addresses, `host:port`.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.client.trim_start_matches("http://").to_string())
            .collect()
    }

    /// The members' process ids (of those running).
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.members
            .iter()
            .filter_map(|m| m.child.as_ref().map(Child::id))
            .collect()
    }

    /// Where the data directories and logs are.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops every member (SIGTERM, then SIGKILL after 10 s).
    pub(crate) fn stop_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                terminate(&mut child);
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop_all();
        if self.keep_dir {
            eprintln!("kept etcd's data and logs in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
