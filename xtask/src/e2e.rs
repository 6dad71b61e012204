//! `cargo xtask bench e2e [--vs-etcd]`: durable writes and reads through the etcd v3 KV API
//! against a 3-member `dengine-kv` cluster, and (with `--vs-etcd`) the same load against a
//! 3-member etcd 3.4 cluster, one system after the other; tables with the ratios and an SVG
//! chart.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::chart::{self, Series};
use crate::cluster::{Cluster, NODES, build_bins, print_log_tails, wait_until};
use crate::etcd::{self, EtcdCluster};
use crate::loadgen::{self, LoadResult};
use crate::probe::{self, ServerProbe};
use crate::{env::workspace_root, machine};

const USAGE: &str = "usage: cargo xtask bench e2e [--vs-etcd] [--seconds N] [--warmup N]
       [--clients 1,16,64,256] [--read-clients 1,16,64,256] [--no-reads] [--conns C]
       [--keys K] [--dir DIR] [--chart PATH] [--server-bin PATH] [--client h2|etcd-client]";

/// Options of `bench e2e`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    /// Also run etcd (installed with apt-get if missing).
    pub(crate) vs_etcd: bool,
    /// Measured seconds per point.
    pub(crate) seconds: f64,
    /// Warm-up seconds per point.
    pub(crate) warmup: f64,
    /// Client counts of the write points.
    pub(crate) clients: Vec<u64>,
    /// Client counts of the read points (empty: no reads).
    pub(crate) read_clients: Vec<u64>,
    /// Connections per point (default: the load generator's, min(clients, 8)).
    pub(crate) conns: Option<u64>,
    /// Key space.
    pub(crate) keys: u64,
    /// Where the data directories go.
    pub(crate) dir: PathBuf,
    /// Where the chart goes.
    pub(crate) chart: PathBuf,
    /// A `dengine-kv` binary to run instead of building one (to compare two builds, one run
    /// after the other).
    pub(crate) server_bin: Option<PathBuf>,
    /// The load generator's client (its `--client`; default: its own, `h2`).
    pub(crate) client: Option<String>,
}

fn list(flag: &str, text: &str) -> Result<Vec<u64>, String> {
    let values: Result<Vec<u64>, _> = text.split(',').map(|v| v.trim().parse::<u64>()).collect();
    match values {
        Ok(v) if !v.is_empty() && v.iter().all(|&n| n > 0) => Ok(v),
        _ => Err(format!(
            "{flag} {text:?}: expected positive numbers separated by commas"
        )),
    }
}

/// Parses the arguments after `bench e2e`.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        vs_etcd: false,
        seconds: 10.0,
        warmup: 2.0,
        clients: vec![1, 16, 64, 256],
        read_clients: vec![1, 16, 64, 256],
        conns: None,
        keys: 10_000,
        dir: std::env::temp_dir(),
        chart: workspace_root().join("docs").join("img").join("e2e.svg"),
        server_bin: None,
        client: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let seconds = |text: &str| match text.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=3600.0).contains(&s) => Ok(s),
            _ => Err(format!("{flag} {text:?}: expected seconds, 0..=3600")),
        };
        match flag.as_str() {
            "--vs-etcd" => o.vs_etcd = true,
            "--seconds" => o.seconds = seconds(value()?)?,
            "--warmup" => o.warmup = seconds(value()?)?,
            "--clients" => o.clients = list(flag, value()?)?,
            "--read-clients" => o.read_clients = list(flag, value()?)?,
            "--no-reads" => o.read_clients.clear(),
            "--conns" => o.conns = Some(list(flag, value()?)?[0]),
            "--keys" => {
                o.keys = list(flag, value()?)?[0];
            }
            "--dir" => o.dir = PathBuf::from(value()?),
            "--chart" => o.chart = PathBuf::from(value()?),
            "--server-bin" => o.server_bin = Some(PathBuf::from(value()?)),
            "--client" => match value()? {
                c @ ("h2" | "etcd-client") => o.client = Some(c.to_string()),
                c => return Err(format!("--client {c:?}: expected h2 or etcd-client")),
            },
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.seconds <= 0.0 {
        return Err("--seconds must be positive".into());
    }
    Ok(o)
}

/// `cargo xtask bench e2e ...`.
pub(crate) fn bench_e2e(args: &[String]) -> ExitCode {
    crate::env::bench_main("e2e", USAGE, args, parse, |o, i| run(o, i).map(|()| true))
}

/// The results of one system.
#[derive(Default)]
struct Results {
    name: String,
    points: Vec<LoadResult>,
}

impl Results {
    fn get(&self, op: &str, clients: u64) -> Option<&LoadResult> {
        self.points
            .iter()
            .find(|r| r.op == op && r.clients == clients)
    }
}

const READ_OPS: [&str; 2] = ["get", "get-serializable"];

fn run(opts: &Options, interrupted: &AtomicBool) -> Result<(), String> {
    let started = Instant::now();
    std::fs::create_dir_all(&opts.dir)
        .map_err(|e| format!("cannot create {}: {e}", opts.dir.display()))?;
    let etcd_version = if opts.vs_etcd {
        Some(etcd::ensure_installed()?)
    } else {
        None
    };
    // With --server-bin only the load generator is built (it does not depend on
    // dengine-kv): a server built from another tree is not rebuilt from this one first.
    let (server, loadgen_bin) = match &opts.server_bin {
        Some(bin) => {
            if !bin.is_file() {
                return Err(format!("--server-bin {}: no such file", bin.display()));
            }
            println!("dengine-kv binary: {} (--server-bin)", bin.display());
            let loadgen = build_bins(true, &[("dengine-loadgen", "dengine-loadgen")], &[])?;
            (bin.clone(), loadgen[0].clone())
        }
        None => {
            let bins = build_bins(
                true,
                &[
                    ("dengine-kv", "dengine-kv"),
                    ("dengine-loadgen", "dengine-loadgen"),
                ],
                &[],
            )?;
            (bins[0].clone(), bins[1].clone())
        }
    };
    println!("bench e2e, {}", now_utc());
    for line in machine::describe(&opts.dir) {
        println!("  {line}");
    }
    let points = opts.clients.len() + 2 * opts.read_clients.len();
    println!(
        "  {points} points per system, each {} s warm-up + {} s measured; 16-byte keys \
         ({} of them), 256-byte values; clients spread round-robin over all 3 members",
        opts.warmup, opts.seconds, opts.keys
    );

    // dengine first, then etcd: never both at once.
    let mut all = Vec::new();
    {
        println!(
            "\n== dengine-kv: 3 members, default settings (write-ahead log, fsync before ack)"
        );
        let mut cluster = Cluster::new_in(server, &opts.dir, "e2e")?;
        for id in 1..=NODES {
            cluster.start(id)?;
        }
        let run = wait_until("a leader", Duration::from_secs(30), interrupted, || {
            cluster.leader()
        })
        .and_then(|leader| {
            let endpoints = cluster.endpoints();
            let leader = cluster.nodes.iter().position(|n| n.id == leader);
            let endpoints = follower_first(&endpoints, leader);
            let probe = ServerProbe {
                pids: (1..=NODES).filter_map(|id| cluster.pid(id)).collect(),
                metrics: cluster.nodes.iter().map(|n| n.metrics.clone()).collect(),
                sync_metric: "dengine_log_syncs_total",
                stages: true,
            };
            run_points(
                "dengine",
                &loadgen_bin,
                &endpoints,
                &probe,
                opts,
                interrupted,
            )
        });
        match run {
            Ok(r) => {
                // A point with failed requests keeps the members' logs: what failed (a lost
                // leader, say) is in them, and a rerun may not show it again.
                let errors: u64 = r.points.iter().map(|p| p.errors).sum();
                all.push(r);
                cluster.stop_all();
                if errors > 0 {
                    cluster.keep_dir = true;
                    println!("{errors} requests failed: keeping the members' logs (node-N.log)");
                }
            }
            Err(e) => {
                if !interrupted.load(Ordering::SeqCst) {
                    cluster.keep_dir = true;
                    print_log_tails(&cluster.dir);
                }
                return Err(e);
            }
        }
    }
    if let Some(version) = &etcd_version {
        println!("\n== etcd: 3 members, default settings ({version})");
        let mut cluster = EtcdCluster::start(&opts.dir, interrupted)?;
        // etcd serves its metrics on the client port, `etcd_server_is_leader` among them.
        let leader = wait_until(
            "etcd's leader",
            Duration::from_secs(30),
            interrupted,
            || etcd_leader(&cluster.endpoints()),
        )
        .ok();
        let endpoints = follower_first(&cluster.endpoints(), leader);
        let probe = ServerProbe {
            pids: cluster.pids(),
            metrics: cluster.endpoints(),
            sync_metric: "etcd_disk_wal_fsync_duration_seconds_count",
            stages: false,
        };
        match run_points("etcd", &loadgen_bin, &endpoints, &probe, opts, interrupted) {
            Ok(r) => all.push(r),
            Err(e) => {
                if !interrupted.load(Ordering::SeqCst) {
                    cluster.keep_dir = true;
                    eprintln!("etcd's logs are in {}", cluster.dir().display());
                }
                return Err(e);
            }
        }
        cluster.stop_all();
    }

    println!("\n### Durable writes (put)\n");
    print!("{}", write_table(&all, &opts.clients));
    if !opts.read_clients.is_empty() {
        println!("\n### Reads (range of one key)\n");
        print!("{}", read_table(&all, &opts.read_clients));
    }
    if all.len() == 2 {
        println!();
        for line in verdicts(&all[0], &all[1]) {
            println!("{line}");
        }
    }
    write_chart(&all, &opts.chart, etcd_version.as_deref())?;
    println!(
        "\nchart: {}\nbench e2e done in {:.0} s; every process it started is stopped.",
        opts.chart.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `endpoints` reordered from the one after the leader's (`leader`, an index into them) round
/// to the leader's, so that the load generator's first connection, a single client's only one,
/// goes to a follower in both systems. Whether a lone client's member leads decides whether
/// its writes are forwarded (about 0.15 ms of a 1 ms write here), so without this the
/// one-client comparison depended on where each system's election happened to land. Prints
/// the order; with no leader known, the order is kept and the line says so.
fn follower_first(endpoints: &[String], leader: Option<usize>) -> Vec<String> {
    let n = endpoints.len();
    match leader {
        Some(leader) if leader < n => {
            let ordered: Vec<String> = (1..=n)
                .map(|k| endpoints[(leader + k) % n].clone())
                .collect();
            println!(
                "  a single client talks to a follower ({}); the leader is {}",
                ordered[0], endpoints[leader]
            );
            ordered
        }
        _ => {
            println!(
                "  the leader is not known: a single client talks to {}",
                endpoints[0]
            );
            endpoints.to_vec()
        }
    }
}

/// Which of etcd's members leads (an index into `endpoints`), from `etcd_server_is_leader`
/// on their metrics.
fn etcd_leader(endpoints: &[String]) -> Option<usize> {
    endpoints.iter().position(|addr| {
        probe::scrape(addr).is_some_and(|text| {
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["etcd_server_is_leader", "1"])
        })
    })
}

/// Every point against one system: writes, then (after a preload) linearizable and
/// serializable reads. `probe` samples the servers' CPU and syncs at the edges of each
/// measured window.
fn run_points(
    name: &str,
    bin: &Path,
    endpoints: &[String],
    probe: &ServerProbe,
    opts: &Options,
    interrupted: &AtomicBool,
) -> Result<Results, String> {
    let mut results = Results {
        name: name.to_string(),
        points: Vec::new(),
    };
    let mut plan: Vec<(&str, u64)> = opts.clients.iter().map(|&c| ("put", c)).collect();
    for op in READ_OPS {
        plan.extend(opts.read_clients.iter().map(|&c| (op, c)));
    }
    let mut preloaded = false;
    for (op, clients) in plan {
        let mut args: Vec<String> = vec![
            "--endpoints".into(),
            endpoints.join(","),
            "--op".into(),
            op.into(),
            "--clients".into(),
            clients.to_string(),
            "--keys".into(),
            opts.keys.to_string(),
            "--seconds".into(),
            opts.seconds.to_string(),
            "--warmup".into(),
            opts.warmup.to_string(),
            "--report-every".into(),
            "1".into(),
        ];
        if let Some(c) = opts.conns {
            args.extend(["--conns".into(), c.min(clients).to_string()]);
        }
        if let Some(c) = &opts.client {
            args.extend(["--client".into(), c.clone()]);
        }
        if op != "put" && !preloaded {
            args.push("--preload".into());
            preloaded = true;
        }
        let t = Instant::now();
        let (mut start, mut end) = (None, None);
        let mut r = loadgen::run(bin, &args, interrupted, |event| {
            if event.get("event").and_then(|e| e.as_str()) == Some("window") {
                match event.get("edge").and_then(|e| e.as_str()) {
                    Some("start") => start = Some(probe.sample()),
                    Some("end") => end = Some(probe.sample()),
                    _ => {}
                }
            }
        })?;
        if let (Some(start), Some(end)) = (start, end) {
            (r.cpu_us_per_op, r.syncs_per_op) = probe::per_op(&start, &end, r.ops);
            r.stages = probe::stages(&start, &end);
        }
        println!(
            "  {name:<7} {op:<16} {clients:>4} clients: {:>9.0} ops/s  p50 {:>7.2} ms  \
             p99 {:>7.2} ms  p99.9 {:>7.2} ms  CPU {} µs/op  syncs {}/op  loadgen CPU {} µs/op  \
             errors {}  ({:.0} s)",
            r.throughput,
            r.p50_us / 1000.0,
            r.p99_us / 1000.0,
            r.p999_us / 1000.0,
            r.cpu_us_per_op.map_or("-".into(), |v| format!("{v:.0}")),
            r.syncs_per_op.map_or("-".into(), |v| format!("{v:.3}")),
            r.client_cpu_us_per_op
                .map_or("-".into(), |v| format!("{v:.0}")),
            r.errors,
            t.elapsed().as_secs_f64()
        );
        if r.errors > 0
            && let Some(e) = &r.last_error
        {
            println!("          last error: {e}");
        }
        if op == "put"
            && let Some(s) = &r.stages
        {
            println!("{}", stage_line(r.mean_us, s));
        }
        results.points.push(r);
    }
    Ok(results)
}

/// Where a write's time goes, from the servers' histograms over the window (means): the
/// leader's log write and its commit wait, apply and response, and what lies outside the
/// leader's node (the client's request and response, forwarding by a follower).
fn stage_line(client_mean_us: f64, s: &probe::Stages) -> String {
    format!(
        "          stages (means, ms): client sees {}; leader: propose → response {} \
         (of which log write {}, propose → commit {}, commit → response {}); followers' \
         log write {}; outside the leader's node (client ↔ member, forwarding) {}",
        ms(client_mean_us),
        ms(s.leader_proposal_us),
        ms(s.leader_append_us),
        ms(s.leader_commit_us),
        ms(s.leader_proposal_us - s.leader_commit_us),
        ms(s.follower_append_us),
        ms(client_mean_us - s.leader_proposal_us),
    )
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The write table: per client count, each system's put/s, latencies and the servers' CPU
/// time and syncs per put, with the ratios (dengine / etcd; below 1 is better for all but
/// put/s).
fn write_table(all: &[Results], clients: &[u64]) -> String {
    let mut t = String::new();
    let two = all.len() == 2;
    let names: Vec<&str> = all.iter().map(|r| r.name.as_str()).collect();
    let mut header = vec!["clients".to_string()];
    for metric in [
        "put/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "CPU µs/put",
        "syncs/put",
        "loadgen CPU µs/put",
    ] {
        for n in &names {
            header.push(format!("{n} {metric}"));
        }
        if two {
            header.push("ratio".into());
        }
    }
    t.push_str(&format!("| {} |\n", header.join(" | ")));
    t.push_str(&format!("|{}\n", "---:|".repeat(header.len())));
    for &c in clients {
        let mut row = vec![c.to_string()];
        let fields: [(Field, Format); 7] = [
            (|r| Some(r.throughput), Format::Count),
            (|r| Some(r.p50_us), Format::Latency),
            (|r| Some(r.p99_us), Format::Latency),
            (|r| Some(r.p999_us), Format::Latency),
            (|r| r.cpu_us_per_op, Format::Count),
            (|r| r.syncs_per_op, Format::Fraction),
            (|r| r.client_cpu_us_per_op, Format::Count),
        ];
        push_cells(&mut row, all, "put", c, &fields);
        t.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    t
}

/// One figure of a [`LoadResult`] (`None` where it was not measured).
type Field = fn(&LoadResult) -> Option<f64>;

/// How a figure is printed.
#[derive(Clone, Copy)]
enum Format {
    /// A whole number with thousands separators.
    Count,
    /// µs printed as ms.
    Latency,
    /// Three decimals.
    Fraction,
}

/// Appends, for each field, the figure of every system for `op` at `clients` (`-` where it
/// was not measured), then the first-to-second ratio when two systems ran.
fn push_cells(
    row: &mut Vec<String>,
    all: &[Results],
    op: &str,
    clients: u64,
    fields: &[(Field, Format)],
) {
    for &(field, format) in fields {
        let values: Vec<Option<f64>> = all
            .iter()
            .map(|r| r.get(op, clients).and_then(field))
            .collect();
        for v in &values {
            row.push(match (v, format) {
                (Some(v), Format::Latency) => ms(*v),
                (Some(v), Format::Count) => thousands(*v),
                (Some(v), Format::Fraction) => format!("{v:.3}"),
                (None, _) => "-".into(),
            });
        }
        if all.len() == 2 {
            row.push(match (values[0], values[1]) {
                (Some(a), Some(b)) => ratio(a, b),
                _ => "-".into(),
            });
        }
    }
}

/// The read table: one row per read kind and client count.
fn read_table(all: &[Results], clients: &[u64]) -> String {
    let mut t = String::new();
    let two = all.len() == 2;
    let mut header = vec!["read".to_string(), "clients".to_string()];
    for metric in ["reads/s", "p50 ms", "p99 ms"] {
        for r in all {
            header.push(format!("{} {metric}", r.name));
        }
        if two {
            header.push("ratio".into());
        }
    }
    t.push_str(&format!("| {} |\n", header.join(" | ")));
    t.push_str(&format!("|---|{}\n", "---:|".repeat(header.len() - 1)));
    for op in READ_OPS {
        let kind = if op == "get" {
            "linearizable"
        } else {
            "serializable"
        };
        for &c in clients {
            let mut row = vec![kind.to_string(), c.to_string()];
            let fields: [(Field, Format); 3] = [
                (|r| Some(r.throughput), Format::Count),
                (|r| Some(r.p50_us), Format::Latency),
                (|r| Some(r.p99_us), Format::Latency),
            ];
            push_cells(&mut row, all, op, c, &fields);
            t.push_str(&format!("| {} |\n", row.join(" | ")));
        }
    }
    t
}

/// The durable-write targets (docs/benchmarks.md), each met or not, with the measured figures.
fn verdicts(dengine: &Results, etcd: &Results) -> Vec<String> {
    let mut out = vec!["targets (dengine vs etcd, this run):".to_string()];
    let mark = |ok: bool| if ok { "met" } else { "NOT met" };
    for c in [64, 256] {
        if let (Some(d), Some(e)) = (dengine.get("put", c), etcd.get("put", c)) {
            let x = d.throughput / e.throughput.max(1e-9);
            out.push(format!(
                "  writes at {c} clients >= 3x etcd's throughput: {x:.2}x, {}",
                mark(x >= 3.0)
            ));
        }
    }
    if let (Some(d), Some(e)) = (dengine.get("put", 256), etcd.get("put", 256))
        && let (Some(dc), Some(ec)) = (d.cpu_us_per_op, e.cpu_us_per_op)
    {
        out.push(format!(
            "  servers' CPU per write at 256 clients <= 1/3 of etcd's: {dc:.0} vs {ec:.0} µs \
             ({:.2}x), {}",
            dc / ec.max(1e-9),
            mark(dc * 3.0 <= ec)
        ));
    }
    if let (Some(d), Some(e)) = (dengine.get("put", 1), etcd.get("put", 1)) {
        out.push(format!(
            "  single-client write p50 <= etcd's: {} vs {} ms, {}",
            ms(d.p50_us),
            ms(e.p50_us),
            mark(d.p50_us <= e.p50_us)
        ));
    }
    for d in dengine.points.iter().filter(|p| p.op == "put") {
        if let Some(e) = etcd.get("put", d.clients) {
            out.push(format!(
                "  writes at {} clients p99 <= etcd's: {} vs {} ms, {}",
                d.clients,
                ms(d.p99_us),
                ms(e.p99_us),
                mark(d.p99_us <= e.p99_us)
            ));
        }
    }
    if let (Some(d), Some(e)) = (dengine.get("get", 64), etcd.get("get", 64)) {
        let x = d.throughput / e.throughput.max(1e-9);
        out.push(format!(
            "  linearizable reads at 64 clients >= 2x etcd's: {x:.2}x, {}",
            mark(x >= 2.0)
        ));
    }
    out
}

fn write_chart(all: &[Results], path: &Path, etcd_version: Option<&str>) -> Result<(), String> {
    let colors = ["#1f77b4", "#d62728"];
    let series: Vec<Series> = all
        .iter()
        .zip(colors)
        .map(|(r, color)| Series {
            name: if r.name == "etcd" {
                etcd_version
                    .and_then(|v| v.split_whitespace().last())
                    .map_or("etcd".into(), |v| format!("etcd {v}"))
            } else {
                "dengine-kv".into()
            },
            color,
            points: r
                .points
                .iter()
                .filter(|p| p.op == "put")
                .map(|p| (p.clients, p.throughput, p.p99_us / 1000.0))
                .collect(),
        })
        .collect();
    let svg = chart::render(
        "Durable writes, 3 members on loopback: dengine-kv vs etcd",
        &series,
    );
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, svg).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC` (from `date`, which every Unix has).
pub(crate) fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&[]).unwrap();
        assert!(!o.vs_etcd);
        assert_eq!(o.clients, vec![1, 16, 64, 256]);
        assert_eq!((o.seconds, o.warmup), (10.0, 2.0));
        let o = parse(&args(
            "--vs-etcd --seconds 3 --warmup 0.5 --clients 1,64 --no-reads --dir /x --chart c.svg",
        ))
        .unwrap();
        assert!(o.vs_etcd);
        assert_eq!((o.seconds, o.warmup), (3.0, 0.5));
        assert_eq!(o.clients, vec![1, 64]);
        assert!(o.read_clients.is_empty());
        assert_eq!(o.dir, PathBuf::from("/x"));
        assert_eq!(o.chart, PathBuf::from("c.svg"));
        assert_eq!(o.client, None);
        let o = parse(&args("--client etcd-client")).unwrap();
        assert_eq!(o.client.as_deref(), Some("etcd-client"));
        for bad in [
            "--client tonic",
            "--clients 1,x",
            "--clients 0",
            "--seconds 0",
            "--seconds",
            "--what",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} accepted");
        }
    }

    fn point(op: &str, clients: u64, throughput: f64, p99_us: f64) -> LoadResult {
        LoadResult {
            op: op.into(),
            clients,
            throughput,
            p50_us: p99_us / 4.0,
            p99_us,
            p999_us: p99_us * 2.0,
            cpu_us_per_op: Some(1_000_000.0 / throughput),
            syncs_per_op: (op == "put").then_some(0.125),
            client_cpu_us_per_op: Some(20.0),
            ..LoadResult::default()
        }
    }

    #[test]
    fn tables_show_ratios() {
        let all = vec![
            Results {
                name: "dengine".into(),
                points: vec![
                    point("put", 64, 30000.0, 5000.0),
                    point("get", 64, 8000.0, 1000.0),
                ],
            },
            Results {
                name: "etcd".into(),
                points: vec![
                    point("put", 64, 6000.0, 26000.0),
                    point("get", 64, 4000.0, 2000.0),
                ],
            },
        ];
        let w = write_table(&all, &[64]);
        assert!(w.contains("| 64 | 30,000 | 6,000 | 5.00x |"), "{w}");
        assert!(w.contains("| 5.00 | 26.00 | 0.19x |"), "{w}");
        assert!(
            w.contains("| 33 | 167 | 0.20x | 0.125 | 0.125 | 1.00x | 20 | 20 | 1.00x |"),
            "{w}"
        );
        assert!(w.contains("| dengine loadgen CPU µs/put | etcd loadgen CPU µs/put |"));
        let r = read_table(&all, &[64]);
        assert!(
            r.contains("| linearizable | 64 | 8,000 | 4,000 | 2.00x |"),
            "{r}"
        );
        assert!(r.contains("| serializable | 64 | - | - | - |"), "{r}");
        let v = verdicts(&all[0], &all[1]).join("\n");
        assert!(
            v.contains("at 64 clients >= 3x etcd's throughput: 5.00x, met"),
            "{v}"
        );
        assert!(
            v.contains("reads at 64 clients >= 2x etcd's: 2.00x, met"),
            "{v}"
        );
        assert!(
            v.contains("writes at 64 clients p99 <= etcd's: 5.00 vs 26.00 ms, met"),
            "{v}"
        );
    }

    #[test]
    fn a_follower_comes_first_and_the_leader_last() {
        let e: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(follower_first(&e, Some(0)), ["b", "c", "a"]);
        assert_eq!(follower_first(&e, Some(2)), ["a", "b", "c"]);
        assert_eq!(follower_first(&e, None), ["a", "b", "c"]);
        assert_eq!(follower_first(&e, Some(7)), ["a", "b", "c"]);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234567.0), "1,234,567");
    }
}
