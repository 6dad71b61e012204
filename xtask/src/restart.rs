//! `cargo xtask bench restart`: how long a dengine-kv member holding many keys takes to serve
//! again after a restart, and how much memory it holds, with its state on disk (the default)
//! and in memory (`--state memory`), measured in the same run.
//!
//! For each state: a 3-member cluster (release build, default settings otherwise), every key
//! written once by `dengine-loadgen --preload`; then one follower is stopped with SIGTERM and
//! started again, and the time from its start to the moment its `status` reports it has
//! applied everything it had applied before is the restart time; then, after more writes,
//! the same follower is killed with SIGKILL (a crash) and timed the same way. Last, the
//! follower is stopped while the others take `--catch-up-seconds` of writes (enough for the
//! leader to snapshot and compact its log past the follower, every 100,000 entries by
//! default), and started again: it catches up by a snapshot from the leader. That phase
//! reports the time to catch up, the snapshot's size and the peak RSS of both (`VmHWM`, the
//! leader's reset before the phase), which shows whether a snapshot is held whole in memory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, NODES, print_log_tails, wait_until};
use crate::{kvbench, loadgen, machine};

const USAGE: &str = "usage: cargo xtask bench restart [--keys N] [--value-size B] \
                     [--state durable,memory] [--catch-up-seconds S] [--server PATH] [--dir DIR]";

/// Options of `bench restart`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    /// Keys written before the restarts.
    pub(crate) keys: u64,
    /// Value size in bytes.
    pub(crate) value_size: u64,
    /// The `--state` values to measure, in order.
    pub(crate) states: Vec<String>,
    /// Seconds of writes while the follower is down, before it catches up by snapshot.
    pub(crate) catch_up_seconds: u64,
    /// A `dengine-kv` binary to measure instead of this tree's (e.g. an older commit's).
    pub(crate) server: Option<PathBuf>,
    /// Where the data directories go.
    pub(crate) dir: PathBuf,
}

/// Parses the arguments after `bench restart`.
pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        keys: 1_000_000,
        value_size: 100,
        states: vec!["durable".into(), "memory".into()],
        catch_up_seconds: 30,
        server: None,
        dir: std::env::temp_dir(),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--keys" | "--value-size" | "--catch-up-seconds" => {
                let text = value()?;
                let n =
                    text.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("{flag} {text:?}: expected a positive whole number")
                    })?;
                match flag.as_str() {
                    "--keys" => o.keys = n,
                    "--value-size" => o.value_size = n,
                    _ => o.catch_up_seconds = n,
                }
            }
            "--state" => {
                o.states = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = o
                    .states
                    .iter()
                    .find(|s| !["durable", "memory"].contains(&s.as_str()))
                {
                    return Err(format!("--state {bad:?}: expected durable or memory"));
                }
            }
            "--dir" => o.dir = PathBuf::from(value()?),
            "--server" => o.server = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(o)
}

/// `cargo xtask bench restart ...`.
pub(crate) fn bench_restart(args: &[String]) -> ExitCode {
    crate::env::bench_main("restart", USAGE, args, parse, |o, i| {
        run(o, i).map(|()| true)
    })
}

/// What one state measured.
struct Measured {
    state: String,
    preload_s: f64,
    rss_running: u64,
    disk: u64,
    restart_s: f64,
    rss_restarted: u64,
    crash_restart_s: f64,
    catch_up: CatchUp,
}

/// The catch-up by snapshot.
struct CatchUp {
    seconds: f64,
    snapshots_installed: f64,
    snapshot_bytes: u64,
    follower_peak: u64,
    leader_before: u64,
    leader_peak: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn run(opts: &Options, interrupted: &AtomicBool) -> Result<(), String> {
    let started = Instant::now();
    let (built, loadgen_bin) = kvbench::prepare("restart", &opts.dir)?;
    let server = match &opts.server {
        Some(path) => {
            println!("  server: {}", path.display());
            path.clone()
        }
        None => built,
    };
    println!(
        "  {} keys (16-byte keys, {}-byte values) in a 3-member dengine-kv cluster; a \
         follower restarted after SIGTERM, then after SIGKILL",
        opts.keys, opts.value_size
    );
    let mut all = Vec::new();
    for state in &opts.states {
        let mut cluster = Cluster::new_in(server.clone(), &opts.dir, &format!("restart-{state}"))?;
        cluster.extra_args = vec!["--state".into(), state.clone()];
        for id in 1..=NODES {
            cluster.start(id)?;
        }
        let result = measure(&mut cluster, &loadgen_bin, opts, state, interrupted);
        if result.is_err() {
            cluster.keep_dir = true;
            print_log_tails(&cluster.dir);
        }
        cluster.stop_all();
        all.push(result?);
    }
    println!(
        "\n| | {} |",
        all.iter()
            .map(|m| m.state.as_str())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("| --- |{}", " ---: |".repeat(all.len()));
    let row = |name: &str, cell: &dyn Fn(&Measured) -> String| {
        let cells: Vec<String> = all.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("preload (s)", &|m| format!("{:.1}", m.preload_s));
    row("follower RSS, running", &|m| mib(m.rss_running));
    row("follower data directory", &|m| mib(m.disk));
    row("restart after SIGTERM (s)", &|m| {
        format!("{:.2}", m.restart_s)
    });
    row("RSS after the restart", &|m| mib(m.rss_restarted));
    row("restart after SIGKILL (s)", &|m| {
        format!("{:.2}", m.crash_restart_s)
    });
    row("catch-up by snapshot (s)", &|m| {
        format!("{:.2}", m.catch_up.seconds)
    });
    row("snapshots installed", &|m| {
        format!("{:.0}", m.catch_up.snapshots_installed)
    });
    row("snapshot size", &|m| mib(m.catch_up.snapshot_bytes));
    row("follower peak RSS, catching up", &|m| {
        mib(m.catch_up.follower_peak)
    });
    row("leader RSS before, peak while sending", &|m| {
        format!(
            "{} / {}",
            mib(m.catch_up.leader_before),
            mib(m.catch_up.leader_peak)
        )
    });
    println!(
        "\nbench restart done in {:.0} s; every process it started is stopped.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn measure(
    cluster: &mut Cluster,
    loadgen_bin: &std::path::Path,
    opts: &Options,
    state: &str,
    interrupted: &AtomicBool,
) -> Result<Measured, String> {
    let leader = wait_until("a leader", Duration::from_secs(30), interrupted, || {
        cluster.leader()
    })?;
    let endpoints = cluster.endpoints().join(",");
    let load = |preload: bool| put_args(&endpoints, opts, if preload { 1 } else { 5 }, preload);
    println!("\n  --state {state}: writing {} keys ...", opts.keys);
    let t = Instant::now();
    loadgen::run(loadgen_bin, &load(true), interrupted, |_| {})?;
    let preload_s = t.elapsed().as_secs_f64();
    let follower = (1..=NODES).find(|&id| id != leader).unwrap_or(NODES);
    // Let the follower apply everything, then measure it.
    std::thread::sleep(Duration::from_secs(2));
    let rss_running = cluster.pid(follower).map_or(0, machine::rss_bytes);
    let disk = machine::disk_bytes(&cluster.data_dir(follower));
    let restart_s = restart(cluster, follower, false, interrupted)?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_restarted = cluster.pid(follower).map_or(0, machine::rss_bytes);
    println!(
        "  preload {preload_s:.1} s; follower {follower}: RSS {}, data {}; restart after \
         SIGTERM {restart_s:.2} s, RSS {} after",
        mib(rss_running),
        mib(disk),
        mib(rss_restarted)
    );
    loadgen::run(loadgen_bin, &load(false), interrupted, |_| {})?;
    let crash_restart_s = restart(cluster, follower, true, interrupted)?;
    println!("  restart after SIGKILL {crash_restart_s:.2} s");
    let catch_up = catch_up(cluster, loadgen_bin, opts, follower, interrupted)?;
    Ok(Measured {
        state: state.to_string(),
        preload_s,
        rss_running,
        disk,
        restart_s,
        rss_restarted,
        crash_restart_s,
        catch_up,
    })
}

/// `dengine-loadgen` arguments: puts by 64 clients through `endpoints` for `seconds` (or, with
/// `preload`, until every key was written once).
fn put_args(endpoints: &str, opts: &Options, seconds: u64, preload: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "--endpoints",
        endpoints,
        "--op",
        "put",
        "--clients",
        "64",
        "--keys",
        &opts.keys.to_string(),
        "--value-size",
        &opts.value_size.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--warmup",
        "0",
        "--report-every",
        "30",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if preload {
        args.push("--preload".into());
    }
    args
}

/// Stops member `id`, writes through the others for `--catch-up-seconds`, starts it again and
/// measures its catch-up (see the module docs).
fn catch_up(
    cluster: &mut Cluster,
    loadgen_bin: &std::path::Path,
    opts: &Options,
    id: u64,
    interrupted: &AtomicBool,
) -> Result<CatchUp, String> {
    cluster.stop(id);
    let leader = wait_until("a leader", Duration::from_secs(30), interrupted, || {
        cluster.leader()
    })?;
    let leader_pid = cluster
        .pid(leader)
        .ok_or_else(|| format!("the leader, member {leader}, has no process"))?;
    let endpoints: Vec<String> = cluster
        .running()
        .into_iter()
        .map(|m| cluster.endpoints()[(m - 1) as usize].clone())
        .collect();
    println!(
        "  member {id} stopped; {} s of writes through members {:?} ...",
        opts.catch_up_seconds,
        cluster.running()
    );
    let args = put_args(&endpoints.join(","), opts, opts.catch_up_seconds, false);
    loadgen::run(loadgen_bin, &args, interrupted, |_| {})?;
    let target: u64 = cluster
        .status(leader)?
        .get("applied")
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("the leader, member {leader}, gives no applied index"))?;
    let leader_before = machine::rss_bytes(leader_pid);
    machine::reset_peak_rss(leader_pid)?;
    let t = Instant::now();
    cluster.start(id)?;
    wait_until(
        "the follower to catch up",
        Duration::from_secs(300),
        interrupted,
        || {
            let applied: Option<u64> = cluster.status(id).ok()?.get("applied")?.parse().ok();
            applied.filter(|&a| a >= target)
        },
    )?;
    let seconds = t.elapsed().as_secs_f64();
    let follower_pid = cluster
        .pid(id)
        .ok_or_else(|| format!("member {id} has no process"))?;
    let metrics = &cluster.metrics_addr(id);
    let snapshots_installed = crate::probe::scrape(metrics).map_or(0.0, |t| {
        crate::probe::counter_sum(&t, "dengine_snapshots_installed_total")
    });
    let measured = CatchUp {
        seconds,
        snapshots_installed,
        snapshot_bytes: newest_snapshot_bytes(&cluster.data_dir(id).join("snapshots")),
        follower_peak: machine::peak_rss_bytes(follower_pid),
        leader_before,
        leader_peak: machine::peak_rss_bytes(leader_pid),
    };
    println!(
        "  caught up in {seconds:.2} s with {snapshots_installed:.0} snapshot(s) installed \
         ({}); peak RSS: follower {}, leader {} (before {})",
        mib(measured.snapshot_bytes),
        mib(measured.follower_peak),
        mib(measured.leader_peak),
        mib(leader_before)
    );
    Ok(measured)
}

/// The size of the newest snapshot file in `dir` (0 if none).
fn newest_snapshot_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files: Vec<(String, u64)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().ok()?.len();
            name.ends_with(".dsnap").then_some((name, len))
        })
        .collect();
    files.sort();
    files.last().map_or(0, |(_, len)| *len)
}

/// Stops member `id` (SIGKILL if `crash`, else SIGTERM), starts it again and returns the
/// seconds from the start until its status reports the applied index it had before.
fn restart(
    cluster: &mut Cluster,
    id: u64,
    crash: bool,
    interrupted: &AtomicBool,
) -> Result<f64, String> {
    let applied = |c: &Cluster| -> Option<u64> { c.status(id).ok()?.get("applied")?.parse().ok() };
    let before = applied(cluster).ok_or_else(|| format!("member {id} gives no status"))?;
    if crash {
        cluster.kill(id);
    } else {
        cluster.stop(id);
    }
    let t = Instant::now();
    cluster.start(id)?;
    // Polled every 10 ms (each poll runs `dengine-kv status`, a few ms itself).
    let deadline = t + Duration::from_secs(120);
    loop {
        if applied(cluster).is_some_and(|a| a >= before) {
            return Ok(t.elapsed().as_secs_f64());
        }
        if interrupted.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "member {id} did not apply up to index {before} within 120 s of its restart"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
        assert_eq!((o.keys, o.value_size), (1_000_000, 100));
        assert_eq!(o.states, ["durable", "memory"]);
        assert_eq!((o.catch_up_seconds, o.server), (30, None));
        let o = parse(&args(
            "--keys 5000 --value-size 10 --state memory --dir /d --catch-up-seconds 9 --server /b",
        ))
        .unwrap();
        assert_eq!((o.keys, o.value_size, o.catch_up_seconds), (5000, 10, 9));
        assert_eq!(o.server, Some(PathBuf::from("/b")));
        assert_eq!(o.states, ["memory"]);
        assert_eq!(o.dir, PathBuf::from("/d"));
        assert!(parse(&args("--keys 0")).is_err());
        assert!(parse(&args("--state disk")).is_err());
        assert!(parse(&args("--keys")).is_err());
        assert!(parse(&args("--nope")).is_err());
    }
}
