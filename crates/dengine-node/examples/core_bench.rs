//! Core throughput in one process: `cargo xtask bench core [--seconds N] [--clients 1,64]`.
//!
//! Three nodes in one process (tokio multi-thread runtime, 2 workers), the in-memory log store
//! (`MemoryStore`), a state machine that stores nothing, messages passed in-process
//! (`LocalNetwork`: no serialization, no sockets), empty (0-byte) proposals. N client tasks
//! each propose one entry at a time to the leader and wait for its response (after apply).
//! Per N: a warm-up, then a fixed measuring window; prints put/s and ns/op next to openraft's
//! reference for the same shape (`shared/design/PERFORMANCE.md`, section 1).
//!
//! Options: `--seconds N` (measuring window per N, default 5), `--warmup N` (default 1),
//! `--clients 1,64,256,1024` (default), `--workers N` (tokio workers, default 2).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::{Future, ready};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_core::store::{Command, MemoryStore};
use dengine_core::{LogIndex, Role, StateMachine};
use dengine_node::testing::LocalNetwork;
use dengine_node::{Node, NodeBuilder, NodeConfig, ProposeError};

/// openraft's best put/s for the same shape (PERFORMANCE.md §1, best of 2 and 16 workers).
const OPENRAFT_BEST: [(usize, f64); 4] = [
    (1, 17_000.0),
    (64, 443_000.0),
    (256, 737_000.0),
    (1024, 904_000.0),
];

/// A state machine that stores nothing: one empty response per command.
#[derive(Default)]
struct NoopStateMachine;

impl StateMachine for NoopStateMachine {
    type Error = Infallible;

    fn apply(
        &mut self,
        commands: &[Command],
        _applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<Vec<Bytes>, Infallible>> + Send {
        ready(Ok(vec![Bytes::new(); commands.len()]))
    }

    fn snapshot(&mut self) -> impl Future<Output = Result<Bytes, Infallible>> + Send {
        ready(Ok(Bytes::new()))
    }

    fn install_snapshot(
        &mut self,
        _data: Bytes,
        _applied_up_to: LogIndex,
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        ready(Ok(()))
    }

    fn query(&self, _request: Bytes) -> impl Future<Output = Result<Bytes, Infallible>> + Send {
        ready(Ok(Bytes::new()))
    }
}

struct Options {
    seconds: f64,
    warmup: f64,
    clients: Vec<usize>,
    workers: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        seconds: 5.0,
        warmup: 1.0,
        clients: vec![1, 64, 256, 1024],
        workers: 2,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => o.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup" => o.warmup = value()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--workers" => o.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--clients" => {
                o.clients = value()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("--clients: {e}"))?;
            }
            "-h" | "--help" => {
                return Err("usage: core_bench [--seconds N] [--warmup N] \
                            [--clients 1,64,256,1024] [--workers N]"
                    .into());
            }
            other => return Err(format!("unknown option {other:?} (try --help)")),
        }
    }
    if o.seconds <= 0.0 || o.clients.is_empty() || o.clients.contains(&0) || o.workers == 0 {
        return Err("--seconds must be > 0, --clients non-empty and > 0, --workers > 0".into());
    }
    Ok(o)
}

fn settings(id: u64) -> NodeConfig {
    let mut s = NodeConfig::new(id);
    s.raft.tick_ms = 20;
    s.raft.election_timeout_ms = 1000;
    s.raft.heartbeat_interval_ms = 100;
    s.raft.lease_drift_ms = 100;
    s.storage.fsync = false; // irrelevant for MemoryStore
    s.client.max_pending = 100_000;
    s.client.propose_timeout_ms = 10_000;
    s
}

async fn start_cluster() -> Result<(Vec<Node>, LocalNetwork), String> {
    let network = LocalNetwork::new();
    let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, format!("local-{id}"))).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let builder = NodeBuilder::new(settings(id))
            .log_store(MemoryStore::new())
            .state_machine(NoopStateMachine)
            .transport(network.transport(id));
        network.register(id, builder.inbox());
        let node = builder
            .bootstrap(members.clone())
            .await
            .map_err(|e| format!("starting node {id}: {e}"))?;
        nodes.push(node);
    }
    Ok((nodes, network))
}

async fn find_leader(nodes: &[Node]) -> Result<Node, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for node in nodes {
            if let Ok(st) = node.status().await
                && st.role == Role::Leader
            {
                // A new leader commits its blank entry first; wait for a proposal to pass.
                if node.propose(Bytes::new()).await.is_ok() {
                    return Ok(node.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no leader elected within 30 s".into())
}

struct Run {
    /// Puts answered during the whole run, warm-up included.
    total: u64,
    ops: u64,
    elapsed: Duration,
    errors: u64,
    /// CPU time the whole process used during the window (all threads), if known.
    cpu: Option<Duration>,
}

/// CPU time (user + system) of this process so far, from `/proc/self/stat` (Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here (0-based 11, 12).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(Duration::from_millis(ticks * 10))
}

async fn run_clients(leader: &Node, clients: usize, warmup: Duration, window: Duration) -> Run {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (leader, done, errors, stop) =
                (leader.clone(), done.clone(), errors.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match leader.propose(Bytes::new()).await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            if matches!(
                                e,
                                ProposeError::Refused(_)
                                    | ProposeError::ShuttingDown
                                    | ProposeError::Stopped { .. }
                            ) {
                                return;
                            }
                            tokio::task::yield_now().await;
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    let (start_ops, start_errors, start_cpu, started) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        process_cpu(),
        Instant::now(),
    );
    tokio::time::sleep(window).await;
    let (end_ops, end_errors, end_cpu, elapsed) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        process_cpu(),
        started.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Run {
        total: done.load(Ordering::Relaxed),
        ops: end_ops - start_ops,
        elapsed,
        errors: end_errors - start_errors,
        cpu: end_cpu
            .zip(start_cpu)
            .map(|(end, start)| end.saturating_sub(start)),
    }
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("core_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(opts: &Options) -> Result<(), String> {
    let (nodes, _network) = start_cluster().await?;
    let leader = find_leader(&nodes).await?;
    let warmup = Duration::from_secs_f64(opts.warmup);
    let window = Duration::from_secs_f64(opts.seconds);
    let mut rows = Vec::new();
    for &clients in &opts.clients {
        eprintln!(
            "core_bench: {clients} client(s), {:.1} s warm-up + {:.1} s ...",
            opts.warmup, opts.seconds
        );
        let run = run_clients(&leader, clients, warmup, window).await;
        let secs = run.elapsed.as_secs_f64();
        let rate = run.ops as f64 / secs;
        let cpu_per_op = run
            .cpu
            .filter(|_| run.ops > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e9 / run.ops as f64);
        eprintln!(
            "core_bench: {clients} client(s): {} puts in {secs:.2} s = {rate:.0} put/s, \
             CPU {:.0} ns/put, {} errors ({} puts with the warm-up)",
            run.ops,
            cpu_per_op.unwrap_or(f64::NAN),
            run.errors,
            run.total
        );
        if run.errors > 0 && run.ops == 0 {
            return Err(format!(
                "{clients} clients: every proposal failed (leadership lost?)"
            ));
        }
        rows.push((clients, rate, cpu_per_op, run.errors));
    }
    for node in &nodes {
        node.shutdown().await;
    }

    println!(
        "3 nodes in one process, {} tokio workers, MemoryStore, no-op state machine, \
         LocalNetwork, 0-byte proposals; {:.0} s per row after {:.0} s warm-up\n",
        opts.workers, opts.seconds, opts.warmup
    );
    println!(
        "| clients | put/s | ns/op | CPU ns/put (all threads) | openraft best put/s (ns/op) \
         | dengine / openraft |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (clients, rate, cpu, errors) in rows {
        let ns = if rate > 0.0 {
            1e9 / rate
        } else {
            f64::INFINITY
        };
        let reference = OPENRAFT_BEST.iter().find(|(n, _)| *n == clients);
        let (theirs, ratio) = match reference {
            Some((_, r)) => (
                format!("{} ({:.0})", group(*r), 1e9 / r),
                format!("{:.2}x", rate / r),
            ),
            None => ("–".into(), "–".into()),
        };
        let note = if errors > 0 {
            format!(" ({errors} errors)")
        } else {
            String::new()
        };
        let cpu = cpu.map_or_else(|| "–".into(), |c| format!("{c:.0}"));
        println!(
            "| {clients} | {}{note} | {ns:.0} | {cpu} | {theirs} | {ratio} |",
            group(rate)
        );
    }
    Ok(())
}

/// 1234567.8 -> "1,234,568".
fn group(v: f64) -> String {
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
