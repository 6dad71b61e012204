//! `cargo xtask bench soak`: millions of durable writes against a 3-member `dengine-kv`
//! cluster with default settings (compaction on: a snapshot every 100,000 applied entries),
//! printing progress, memory and disk per member over time, then whether the write rate
//! stayed flat (the last 10% of the entries no slower than 80% of the first 10%).

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{Cluster, NODES, print_log_tails, wait_until};
use crate::{kvbench, loadgen, machine};

const USAGE: &str = "usage: cargo xtask bench soak [--entries N] [--clients N] [--keys K]
       [--report-every S] [--max-seconds S] [--dir DIR]";

/// Options of `bench soak`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    /// Writes to make.
    pub(crate) entries: u64,
    /// Concurrent clients.
    pub(crate) clients: u64,
    /// Key space (bounded, so the state machine's size is too).
    pub(crate) keys: u64,
    /// Seconds between progress lines.
    pub(crate) report_every: u64,
    /// Longest the run may take.
    pub(crate) max_seconds: u64,
    /// Where the data directories go.
    pub(crate) dir: PathBuf,
}

/// Parses the arguments after `bench soak`.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        entries: 5_000_000,
        clients: 64,
        keys: 100_000,
        report_every: 10,
        max_seconds: 7200,
        dir: std::env::temp_dir(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let mut number = |target: &mut u64| -> Result<(), String> {
            let text = value()?;
            match text.parse::<u64>() {
                Ok(n) if n > 0 => {
                    *target = n;
                    Ok(())
                }
                _ => Err(format!("{flag} {text:?}: expected a positive whole number")),
            }
        };
        match flag.as_str() {
            "--entries" => number(&mut o.entries)?,
            "--clients" => number(&mut o.clients)?,
            "--keys" => number(&mut o.keys)?,
            "--report-every" => number(&mut o.report_every)?,
            "--max-seconds" => number(&mut o.max_seconds)?,
            "--dir" => o.dir = PathBuf::from(value()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// `cargo xtask bench soak ...`.
pub(crate) fn bench_soak(args: &[String]) -> ExitCode {
    crate::env::bench_main("soak", USAGE, args, parse, |o, i| {
        let flat = run(o, i)?;
        if !flat {
            eprintln!("\nbench soak: the write rate was NOT flat");
        }
        Ok(flat)
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Whether the rate stayed flat: the last tenth at least 80% of the first tenth's rate (a
/// faster end is fine).
pub(crate) fn flat(first: f64, last: f64) -> bool {
    first > 0.0 && last >= 0.8 * first
}

/// Runs the soak; `Ok(flat)`.
fn run(opts: &Options, interrupted: &AtomicBool) -> Result<bool, String> {
    let started = Instant::now();
    let (server, loadgen_bin) = kvbench::prepare("soak", &opts.dir)?;
    println!(
        "  {} puts by {} clients (random keys out of {}, 16-byte keys, 256-byte values) to a \
         3-member dengine-kv cluster with default settings (write-ahead log, fsync before ack, a snapshot \
         and log compaction every 100,000 applied entries)",
        opts.entries, opts.clients, opts.keys
    );
    let mut cluster = Cluster::new_in(server, &opts.dir, "soak")?;
    for id in 1..=NODES {
        cluster.start(id)?;
    }
    let result = soak(&mut cluster, &loadgen_bin, opts, interrupted);
    if result.is_err() && !interrupted.load(Ordering::SeqCst) {
        cluster.keep_dir = true;
        print_log_tails(&cluster.dir);
    }
    cluster.stop_all();
    println!(
        "bench soak done in {:.0} s; every process it started is stopped.",
        started.elapsed().as_secs_f64()
    );
    result
}

fn soak(
    cluster: &mut Cluster,
    loadgen_bin: &std::path::Path,
    opts: &Options,
    interrupted: &AtomicBool,
) -> Result<bool, String> {
    wait_until("a leader", Duration::from_secs(30), interrupted, || {
        cluster.leader()
    })?;
    let args: Vec<String> = [
        "--endpoints",
        &cluster.endpoints().join(","),
        "--op",
        "put",
        "--clients",
        &opts.clients.to_string(),
        "--keys",
        &opts.keys.to_string(),
        "--total",
        &opts.entries.to_string(),
        "--seconds",
        &opts.max_seconds.to_string(),
        "--report-every",
        &opts.report_every.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut max_rss = [0u64; NODES as usize];
    let mut max_disk = [0u64; NODES as usize];
    let mut last_disk = [0u64; NODES as usize];
    let mut last_rss = [0u64; NODES as usize];
    println!(
        "\n  {:>6}  {:>10}  {:>6}  {:>8}  {:>20}  {:>20}",
        "time s", "entries", "done", "puts/s", "RSS MiB (1/2/3)", "disk MiB (1/2/3)"
    );
    let on_progress = |v: &Value| {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let mut rss = Vec::new();
        let mut disk = Vec::new();
        for id in 1..=NODES {
            let i = (id - 1) as usize;
            let r = cluster.pid(id).map_or(0, machine::rss_bytes);
            let d = machine::disk_bytes(&cluster.data_dir(id));
            max_rss[i] = max_rss[i].max(r);
            max_disk[i] = max_disk[i].max(d);
            last_rss[i] = r;
            last_disk[i] = d;
            rss.push(format!("{:.0}", mib(r)));
            disk.push(format!("{:.0}", mib(d)));
        }
        let done = f("done");
        println!(
            "  {:>6.0}  {:>10.0}  {:>5.1}%  {:>8.0}  {:>20}  {:>20}",
            f("elapsed_s"),
            done,
            100.0 * done / opts.entries as f64,
            f("rate"),
            rss.join("/"),
            disk.join("/"),
        );
    };
    let r = loadgen::run(loadgen_bin, &args, interrupted, on_progress)?;
    let ok = flat(r.first_10pct_rate, r.last_10pct_rate);
    if let Some(e) = &r.last_error {
        println!("  last error (failed puts are retried, not counted): {e}");
    }
    let mb = |v: &[u64]| {
        v.iter()
            .map(|b| format!("{:.0}", mib(*b)))
            .collect::<Vec<_>>()
            .join("/")
    };
    println!(
        "\n  {} puts in {:.0} s: {:.0} puts/s on average, p50 {:.2} ms, p99 {:.2} ms, p99.9 \
         {:.2} ms, {} errors",
        r.ops,
        r.seconds,
        r.throughput,
        r.p50_us / 1000.0,
        r.p99_us / 1000.0,
        r.p999_us / 1000.0,
        r.errors
    );
    println!(
        "  first 10%: {:.0} puts/s, last 10%: {:.0} puts/s (last/first = {:.2}): {}",
        r.first_10pct_rate,
        r.last_10pct_rate,
        r.last_10pct_rate / r.first_10pct_rate.max(1e-9),
        if ok {
            "flat (>= 0.80)"
        } else {
            "NOT flat (< 0.80)"
        }
    );
    println!(
        "  RSS MiB per member: max {}, at the end {}; disk MiB per data dir: max {}, at the \
         end {}",
        mb(&max_rss),
        mb(&last_rss),
        mb(&max_disk),
        mb(&last_disk)
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_flatness() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            (o.entries, o.clients, o.keys, o.report_every),
            (5_000_000, 64, 100_000, 10)
        );
        let args: Vec<String> = "--entries 1000 --clients 8 --dir /d"
            .split_whitespace()
            .map(String::from)
            .collect();
        let o = parse(&args).unwrap();
        assert_eq!((o.entries, o.clients), (1000, 8));
        assert_eq!(o.dir, PathBuf::from("/d"));
        assert!(parse(&["--entries".into(), "0".into()]).is_err());
        assert!(parse(&["--nope".into()]).is_err());
        assert!(flat(100.0, 80.0));
        assert!(flat(100.0, 150.0));
        assert!(!flat(100.0, 79.0));
        assert!(!flat(0.0, 0.0));
    }
}
