//! `cargo xtask cluster-demo`: a 3-node `dengine-kv` cluster on loopback, failover, catch-up.
//!
//! Everything the demo starts (processes, a temporary directory) is registered in a
//! [`Cluster`] (`cluster.rs`) whose `Drop` stops and removes it, so a failure, a panic or
//! Ctrl-C leaves nothing behind.

use std::collections::BTreeMap;
use std::process::{Command, ExitCode, Stdio};

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, NODES, build_server, print_log_tails, wait_until};

const KEYS: usize = 50;

pub(crate) fn cluster_demo(args: &[String]) -> ExitCode {
    let keep_running = args.iter().any(|a| a == "--keep-running");
    if let Some(bad) = args.iter().find(|a| *a != "--keep-running") {
        eprintln!("cluster-demo: unknown option {bad:?} (the only option is --keep-running)");
        return ExitCode::FAILURE;
    }
    let interrupted = crate::env::interrupt_flag("cluster-demo");
    match run(keep_running, &interrupted) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\ncluster-demo FAILED: {e}");
            ExitCode::FAILURE
        }
    }
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
    let interrupted = crate::env::interrupt_flag("bench failover");
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
