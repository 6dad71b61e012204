//! `cargo xtask cluster-demo`: a 3-node `dengine-kv` cluster on loopback, failover, catch-up.
//!
//! Everything the demo starts (processes, a temporary directory) is registered in a
//! [`Cluster`] whose `Drop` stops and removes it, so a failure, a panic or Ctrl-C leaves
//! nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{built_binary, cargo_build};

const NODES: u64 = 3;
const KEYS: usize = 50;

struct Node {
    id: u64,
    addr: String,
    metrics: String,
    child: Option<Child>,
}

/// The demo's processes and files; stopped and removed on drop.
struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    keep_dir: bool,
    nodes: Vec<Node>,
    members: String,
}

impl Cluster {
    /// A cluster of [`NODES`] members on free loopback ports, data in a fresh temporary
    /// directory named after `what`; nothing started yet.
    fn new(bin: PathBuf, what: &str) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("dengine-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            nodes.push(Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()?),
                metrics: format!("127.0.0.1:{}", free_port()?),
                child: None,
            });
        }
        let members = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            bin,
            dir,
            keep_dir: false,
            nodes,
            members,
        })
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node-{id}"))
    }

    fn start(&mut self, id: u64) -> Result<(), String> {
        let i = (id - 1) as usize;
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))
            .map_err(|e| format!("cannot create the log file of node {id}: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open the log file of node {id}: {e}"))?;
        let child = Command::new(&self.bin)
            .args(["serve", "--id", &id.to_string()])
            .args(["--listen", &self.nodes[i].addr])
            .args(["--initial-members", &self.members])
            .args(["--metrics-addr", &self.nodes[i].metrics])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.nodes[(id - 1) as usize].child.take() {
            // std's kill is SIGKILL on Unix: no graceful shutdown, as in a crash.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop_all(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                terminate(&mut child);
            }
        }
    }

    fn client(&self, args: &[&str]) -> Result<String, String> {
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
    fn status(&self, id: u64) -> Result<BTreeMap<String, String>, String> {
        let addr = &self.nodes[(id - 1) as usize].addr;
        let out = self.client(&["status", "--endpoint", addr, "--timeout-ms", "1000"])?;
        Ok(out
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    fn leader(&self) -> Option<u64> {
        self.running().into_iter().find(|&id| {
            self.status(id)
                .is_ok_and(|s| s.get("role").map(String::as_str) == Some("leader"))
        })
    }

    fn print_status(&self) {
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
fn terminate(child: &mut Child) {
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

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

fn wait_until<T>(
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

pub(crate) fn cluster_demo(args: &[String]) -> ExitCode {
    let keep_running = args.iter().any(|a| a == "--keep-running");
    if let Some(bad) = args.iter().find(|a| *a != "--keep-running") {
        eprintln!("cluster-demo: unknown option {bad:?} (the only option is --keep-running)");
        return ExitCode::FAILURE;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            eprintln!("cluster-demo: cannot install the Ctrl-C handler: {e}");
        }
    }
    match run(keep_running, &interrupted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ncluster-demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build_server(release: bool) -> Result<PathBuf, String> {
    let profile = if release { " --release" } else { "" };
    println!("building the example KV server (cargo build -p dengine-kv{profile}) ...");
    let target = ["-p", "dengine-kv", "--bin", "dengine-kv"];
    cargo_build(release, &target, "dengine-kv")?;
    built_binary(release, "dengine-kv")
}

fn run(keep_running: bool, interrupted: &AtomicBool) -> Result<(), String> {
    let build_started = Instant::now();
    print!("[1/7] ");
    let bin = build_server(false)?;
    println!(
        "      built in {:.1} s",
        build_started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let mut cluster = Cluster::new(bin, "demo")?;
    let result = demo(&mut cluster, keep_running, interrupted, started);
    if result.is_err() {
        cluster.keep_dir = true;
        print_log_tails(&cluster.dir);
    }
    result
}

fn demo(
    c: &mut Cluster,
    keep_running: bool,
    interrupted: &AtomicBool,
    started: Instant,
) -> Result<(), String> {
    println!(
        "[2/7] starting {NODES} nodes on loopback, data in {}",
        c.dir.display()
    );
    for id in 1..=NODES {
        c.start(id)?;
    }
    let leader = wait_until("a leader", Duration::from_secs(30), interrupted, || {
        c.leader()
    })?;
    println!("      node {leader} was elected leader");

    println!("[3/7] writing {KEYS} keys through node {leader} ...");
    let leader_addr = c.nodes[(leader - 1) as usize].addr.clone();
    let pairs: Vec<String> = (0..KEYS)
        .map(|i| format!("demo/key-{i:03}=value-{i}"))
        .collect();
    let mut args = vec!["put", "--endpoint", leader_addr.as_str()];
    args.extend(pairs.iter().map(String::as_str));
    let out = c.client(&args)?;
    let acknowledged: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("OK ")).collect();
    if acknowledged.len() != KEYS {
        return Err(format!(
            "{} of {KEYS} writes acknowledged",
            acknowledged.len()
        ));
    }
    println!("      {KEYS} writes acknowledged");
    c.print_status();

    println!("[4/7] SIGKILL of the leader, node {leader}");
    c.kill(leader);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = c.running();
    let mut attempt = 0u64;
    let new_leader = wait_until(
        "a new leader to accept a write",
        Duration::from_secs(30),
        interrupted,
        || {
            attempt += 1;
            survivors.iter().copied().find(|&id| {
                let addr = &c.nodes[(id - 1) as usize].addr;
                let pair = format!("demo/after-failover={attempt}");
                c.client(&["put", "--endpoint", addr, "--timeout-ms", "1000", &pair])
                    .is_ok()
            })
        },
    )?;
    let failover = killed_at.elapsed();
    let new_leader = c.leader().unwrap_or(new_leader);
    println!(
        "      a new leader (node {new_leader}) accepted a write {:.0} ms after the kill",
        failover.as_secs_f64() * 1000.0
    );

    println!("[5/7] reading every acknowledged key back (linearizable) ...");
    let addr = c.nodes[(new_leader - 1) as usize].addr.clone();
    let out = c.client(&["get", "--endpoint", &addr, "--prefix", "demo/key-"])?;
    let found: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let missing: Vec<&str> = pairs
        .iter()
        .filter(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
            found.get(k) != Some(&v)
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} acknowledged writes are missing or wrong: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        ));
    }
    println!("      all {KEYS} acknowledged keys are there, nothing was lost");

    println!("[6/7] restarting node {leader} from its data directory ...");
    c.start(leader)?;
    let target: u64 = c
        .status(new_leader)?
        .get("commit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    wait_until(
        "the restarted node to catch up",
        Duration::from_secs(30),
        interrupted,
        || {
            let s = c.status(leader).ok()?;
            let applied: u64 = s.get("applied")?.parse().ok()?;
            (applied >= target).then_some(())
        },
    )?;
    let addr = c.nodes[(leader - 1) as usize].addr.clone();
    let out = c.client(&[
        "get",
        "--endpoint",
        &addr,
        "--prefix",
        "--serializable",
        "demo/key-",
    ])?;
    let local = out.lines().count();
    if local != KEYS {
        return Err(format!(
            "the restarted node holds {local} of {KEYS} keys locally"
        ));
    }
    println!(
        "      node {leader} caught up (applied ≥ {target}) and serves all {KEYS} keys locally"
    );
    c.print_status();

    println!("[7/7] Prometheus metrics:");
    for n in &c.nodes {
        println!("      node {}: http://{}/metrics", n.id, n.metrics);
    }
    if keep_running {
        let endpoints = c
            .nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",");
        println!("\nThe cluster keeps running (Ctrl-C stops it). With etcdctl (v3 API):");
        println!("  export ETCDCTL_API=3 ENDPOINTS={endpoints}");
        println!("  etcdctl --endpoints=$ENDPOINTS put greeting hello");
        println!("  etcdctl --endpoints=$ENDPOINTS get --prefix demo/");
        println!("  etcdctl --endpoints=$ENDPOINTS member list -w table");
        println!("  etcdctl --endpoints=$ENDPOINTS endpoint status -w table");
        println!("  etcdctl --endpoints=$ENDPOINTS watch greeting");
        while !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
        println!("\nstopping ...");
    }
    c.stop_all();
    println!(
        "\ncluster-demo passed in {:.1} s after the build: failover took {:.0} ms, no \
         acknowledged write was lost; every process stopped.",
        started.elapsed().as_secs_f64(),
        failover.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn print_log_tails(dir: &Path) {
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

/// `cargo xtask bench failover [--runs N]`: N times, a fresh 3-member cluster (release build,
/// default settings) under a write load; SIGKILL the leader and time until a survivor
/// acknowledges a write. Prints each run, the median and the maximum.
pub(crate) fn bench_failover(args: &[String]) -> ExitCode {
    let runs: usize = match args {
        [] => 10,
        [flag, n] if flag == "--runs" => match n.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("bench failover: --runs needs a positive number, got {n:?}");
                return ExitCode::FAILURE;
            }
        },
        _ => {
            eprintln!("usage: cargo xtask bench failover [--runs N]");
            return ExitCode::FAILURE;
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    match failover_runs(runs, &interrupted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench failover FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

fn failover_runs(runs: usize, interrupted: &AtomicBool) -> Result<(), String> {
    let bin = build_server(true)?;
    let mut times = Vec::new();
    for run in 1..=runs {
        let mut c = Cluster::new(bin.clone(), "failover")?;
        let result = failover_once(&mut c, interrupted);
        if result.is_err() {
            c.keep_dir = true;
            print_log_tails(&c.dir);
        }
        let t = result?;
        eprintln!(
            "bench failover: run {run}/{runs}: {:.0} ms",
            t.as_secs_f64() * 1000.0
        );
        times.push(t);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = if times.len() % 2 == 1 {
        ms(times[times.len() / 2])
    } else {
        (ms(times[times.len() / 2 - 1]) + ms(times[times.len() / 2])) / 2.0
    };
    let all: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
    println!("| runs | median | max | all (ms, sorted) |");
    println!("|---:|---:|---:|---|");
    println!(
        "| {} | {median:.0} ms | {:.0} ms | {} |",
        times.len(),
        times.last().map_or(0.0, |t| ms(*t)),
        all.join(", ")
    );
    Ok(())
}

/// One run: start, load, kill the leader, time until a survivor acknowledges a write.
fn failover_once(c: &mut Cluster, interrupted: &AtomicBool) -> Result<Duration, String> {
    for id in 1..=NODES {
        c.start(id)?;
    }
    let leader = wait_until("a leader", Duration::from_secs(30), interrupted, || {
        c.leader()
    })?;
    // A write load through a follower (forwarded to the leader), running across the kill.
    let follower = (1..=NODES).find(|&id| id != leader).unwrap_or(1);
    let pairs: Vec<String> = (0..20_000).map(|i| format!("load/{i}=v{i}")).collect();
    let mut load = Command::new(&c.bin)
        .args(["put", "--endpoint", &c.nodes[(follower - 1) as usize].addr])
        .args(["--timeout-ms", "2000"])
        .args(&pairs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the load: {e}"))?;
    std::thread::sleep(Duration::from_millis(500));
    c.kill(leader);
    let killed_at = Instant::now();
    let survivors = c.running();
    let mut attempt = 0u64;
    let acknowledged = wait_until(
        "a survivor to acknowledge a write",
        Duration::from_secs(30),
        interrupted,
        || {
            attempt += 1;
            survivors.iter().copied().find_map(|id| {
                let addr = &c.nodes[(id - 1) as usize].addr;
                let pair = format!("probe/{attempt}=x");
                c.client(&["put", "--endpoint", addr, "--timeout-ms", "300", &pair])
                    .ok()
                    .map(|_| killed_at.elapsed())
            })
        },
    );
    let _ = load.kill();
    let _ = load.wait();
    c.stop_all();
    acknowledged
}
