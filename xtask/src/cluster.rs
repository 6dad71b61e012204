//! A 3-member `dengine-kv` cluster on loopback for xtask's demo and benchmarks: builds the
//! server, starts, kills and stops its processes, finds the leader.
//!
//! Everything a [`Cluster`] starts (processes, a temporary directory) is stopped and removed
//! by its `Drop`, so a failure, a panic or Ctrl-C leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::env::workspace_root;

/// Members of every cluster xtask starts.
pub(crate) const NODES: u64 = 3;

/// One member: its id, addresses and process (if running).
pub(crate) struct Node {
    pub(crate) id: u64,
    /// The client listener (the etcd API).
    pub(crate) addr: String,
    /// The peer listener (Raft and forwarding between members).
    pub(crate) peer: String,
    pub(crate) metrics: String,
    pub(crate) child: Option<Child>,
}

/// The cluster's processes and files; stopped and removed on drop.
pub(crate) struct Cluster {
    pub(crate) bin: PathBuf,
    pub(crate) dir: PathBuf,
    pub(crate) keep_dir: bool,
    pub(crate) nodes: Vec<Node>,
    /// More `serve` flags for every member (e.g. `--state memory`).
    pub(crate) extra_args: Vec<String>,
    members: String,
}

impl Cluster {
    /// A cluster of [`NODES`] members on free loopback ports, data in a fresh temporary
    /// directory named after `what`; nothing started yet.
    pub(crate) fn new(bin: PathBuf, what: &str) -> Result<Cluster, String> {
        Cluster::new_in(bin, &std::env::temp_dir(), what)
    }

    /// As [`Cluster::new`], with the data directory created under `parent`.
    pub(crate) fn new_in(bin: PathBuf, parent: &Path, what: &str) -> Result<Cluster, String> {
        let dir = parent.join(format!("dengine-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            nodes.push(Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                peer: format!("127.0.0.1:{}", free_port()?),
                metrics: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            bin,
            dir,
            keep_dir: false,
            nodes,
            extra_args: Vec::new(),
            members,
        })
    }

    pub(crate) fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    pub(crate) fn start(&mut self, id: u64) -> Result<(), String> {
        let i = (id - 1) as usize;
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))
            .map_err(|e| format!("cannot create the log file of node {id}: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open the log file of node {id}: {e}"))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--id", &id.to_string()])
            .args(["--listen-client", &self.nodes[i].addr])
            .args(["--listen-peer", &self.nodes[i].peer])
            .args(["--initial-members", &self.members])
            .args(["--metrics-addr", &self.nodes[i].metrics])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    pub(crate) fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            // std's kill is SIGKILL on Unix: no graceful shutdown, as in a crash.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops member `id` gracefully (SIGTERM; SIGKILL after 10 s).
    pub(crate) fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            terminate(&mut child);
        }
    }

    pub(crate) fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                terminate(&mut child);
            }
        }
    }

    pub(crate) fn client(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `status` of one node as key=value fields, or why not.
    pub(crate) fn status(&self, id: u64) -> Result<BTreeMap<String, String>, String> {
        let addr = &self.nodes[(id - 1) as usize].addr;
        let out = self.client(&["status", "--endpoint", addr, "--timeout-ms", "1000"])?;
        Ok(out
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    /// The metrics address (`host:port`) of member `id`.
    pub(crate) fn metrics_addr(&self, id: u64) -> String {
        self.nodes[(id - 1) as usize].metrics.clone()
    }

    /// The process id of member `id`, if it runs.
    pub(crate) fn pid(&self, id: u64) -> Option<u32> {
        self.nodes[(id - 1) as usize].child.as_ref().map(Child::id)
    }

    /// The client addresses of all members, `host:port`.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    pub(crate) fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub(crate) fn leader(&self) -> Option<u64> {
        self.running().into_iter().find(|&id| {
            self.status(id)
                .is_ok_and(|s| s.get("role").map(String::as_str) == Some("leader"))
        })
    }

    pub(crate) fn print_status(&self) {
        println!("  node  role       term  commit  applied  address");
        for n in &self.nodes {
            match (n.child.is_some(), self.status(n.id)) {
                (false, _) => println!("  {:<4}  (stopped)", n.id),
                (true, Ok(s)) => {
                    let get = |k: &str| s.get(k).cloned().unwrap_or_else(|| "?".into());
                    println!(
                        "  {:<4}  {:<9}  {:>4}  {:>6}  {:>7}  {}",
                        n.id,
                        get("role"),
                        get("term"),
                        get("commit"),
                        get("applied"),
                        n.addr
                    );
                }
                (true, Err(e)) => println!("  {:<4}  (no answer: {e})", n.id),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
        if self.keep_dir {
            println!("kept the data and logs in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// SIGTERM (graceful shutdown), then SIGKILL after 10 s.
pub(crate) fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The first port of the kernel's ephemeral range (32768, Linux's default, if unreadable).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768)
}

/// A port on 127.0.0.1 that was free a moment ago, never the same twice in this process.
///
/// Picked below the kernel's ephemeral range (`net.ipv4.ip_local_port_range`): a port found by
/// binding port 0 comes from that range, which is also where outgoing connections get their
/// local ports, so between picking it and the server binding it a connection (a peer's, the
/// load generator's) could take it, and the server failed with "Address already in use".
pub(crate) fn free_port() -> Result<u16, String> {
    use std::hash::{BuildHasher as _, Hasher as _};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let (from, to) = (10_000u16, ephemeral_low());
    if to > from + 1_000 {
        let mut x = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1;
        for _ in 0..500 {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = from + (x % u64::from(to - from)) as u16;
            if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return Ok(port);
            }
        }
    }
    // No room below the ephemeral range (or all taken): any free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))?;
    given.push(port);
    Ok(port)
}

/// Calls `f` every 100 ms until it returns something, `timeout` passes or Ctrl-C.
pub(crate) fn wait_until<T>(
    what: &str,
    timeout: Duration,
    interrupted: &AtomicBool,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Builds the example KV server; the path of its binary.
pub(crate) fn build_server(release: bool) -> Result<PathBuf, String> {
    let bins = build_bins(release, &[("dengine-kv", "dengine-kv")], &[])?;
    Ok(bins.into_iter().next().unwrap_or_default())
}

/// Builds the binaries `(package, bin)` with one cargo invocation (plus `extra` arguments,
/// e.g. `--features`), so they share one build of the workspace; their paths, in order.
pub(crate) fn build_bins(
    release: bool,
    bins: &[(&str, &str)],
    extra: &[&str],
) -> Result<Vec<PathBuf>, String> {
    let root = workspace_root();
    let profile = if release { " --release" } else { "" };
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet"]);
    for (package, bin) in bins {
        cmd.args(["-p", package, "--bin", bin]);
    }
    cmd.args(extra);
    if release {
        cmd.arg("--release");
    }
    let names: Vec<&str> = bins.iter().map(|(_, b)| *b).collect();
    println!("building {}{profile} ...", names.join(", "));
    let status = cmd
        .current_dir(&root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building {} failed (see the compiler output above)",
            names.join(", ")
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let dir = target.join(if release { "release" } else { "debug" });
    names
        .iter()
        .map(|name| {
            let bin = dir.join(name);
            if bin.exists() {
                Ok(bin)
            } else {
                Err(format!("built, but {} does not exist", bin.display()))
            }
        })
        .collect()
}

/// The last lines of each member's log in `dir`, on stderr (after a failure).
pub(crate) fn print_log_tails(dir: &Path) {
    for id in 1..=NODES {
        let path = dir.join(format!("node-{id}.log"));
        if let Ok(text) = std::fs::read_to_string(&path) {
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {} ---", path.display());
            for l in &lines[lines.len().saturating_sub(15)..] {
                eprintln!("{l}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let low = ephemeral_low();
        let ports: Vec<u16> = (0..100).map(|_| free_port().unwrap()).collect();
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if low > 11_000 {
            assert!(
                ports.iter().all(|&p| (10_000..low).contains(&p)),
                "{ports:?}"
            );
        }
    }
}
