//! Command-line runner for the simulator: many seeds in parallel with a progress line and a
//! summary, or one seed with a readable trace. Usually started through `cargo xtask sim`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_core::InjectedBug;
use dengine_sim::{Failure, SimConfig, Stats};

const USAGE: &str = "usage: dengine-sim [options]

  --seeds N            run N seeds (default 100)
  --start S            first seed (default 0)
  --seed X             run only seed X (same as --start X --seeds 1)
  --nodes K            cluster size, 3..=7 (default 5)
  --steps M            ticks of the fault phase (default 3000)
  --verbose            print the event trace of each run (use with --seed)
  --inject-bug NAME    switch on a deliberate core bug (repeatable); names:
                       figure8-commit, vote-before-persist, ack-before-persist,
                       leader-counts-unpersisted, truncate-matching-suffix,
                       read-index-before-first-commit
  --expect-failure     succeed only if some seed fails (bug-catching demonstrations);
                       stops at the first failing seed
  --threads T          worker threads (default: available cores)";

struct Args {
    start: u64,
    seeds: u64,
    nodes: u64,
    steps: u64,
    verbose: bool,
    bugs: Vec<InjectedBug>,
    expect_failure: bool,
    threads: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        start: 0,
        seeds: 100,
        nodes: 5,
        steps: 3000,
        verbose: false,
        bugs: Vec::new(),
        expect_failure: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let mut it = std::env::args().skip(1);
    let num = |name: &str, v: Option<String>| -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("{name} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{name} {v}: not a non-negative integer"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => a.seeds = num("--seeds", it.next())?,
            "--start" => a.start = num("--start", it.next())?,
            "--seed" => {
                a.start = num("--seed", it.next())?;
                a.seeds = 1;
            }
            "--nodes" => a.nodes = num("--nodes", it.next())?,
            "--steps" => a.steps = num("--steps", it.next())?,
            "--threads" => a.threads = num("--threads", it.next())?.max(1) as usize,
            "--verbose" => a.verbose = true,
            "--expect-failure" => a.expect_failure = true,
            "--inject-bug" => {
                let name = it.next().ok_or("--inject-bug needs a name")?;
                let bug = InjectedBug::from_name(&name)
                    .ok_or_else(|| format!("unknown bug `{name}`\n\n{USAGE}"))?;
                a.bugs.push(bug);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    let probe = SimConfig {
        nodes: a.nodes,
        ..SimConfig::new(0)
    };
    probe.validate()?;
    Ok(a)
}

#[derive(Default)]
struct Totals {
    stats: Stats,
    failures: Vec<Failure>,
}

fn add(t: &mut Stats, s: &Stats) {
    t.ticks += s.ticks;
    t.heal_ticks = t.heal_ticks.max(s.heal_ticks);
    t.partitions += s.partitions;
    t.crashes += s.crashes;
    t.pauses += s.pauses;
    t.dropped += s.dropped;
    t.duplicated += s.duplicated;
    t.delivered += s.delivered;
    t.ops_ok += s.ops_ok;
    t.ops_unknown += s.ops_unknown;
    t.ops_checked += s.ops_checked;
    t.elections += s.elections;
    t.committed += s.committed;
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let config = |seed| SimConfig {
        nodes: args.nodes,
        fault_ticks: args.steps,
        verbose: args.verbose,
        bugs: args.bugs.clone(),
        ..SimConfig::new(seed)
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.start));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let end = args.start.saturating_add(args.seeds);
    std::thread::scope(|scope| {
        for _ in 0..args.threads {
            let (next, done, stop, totals) = (&next, &done, &stop, &totals);
            let config = &config;
            let args = &args;
            scope.spawn(move || {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let result = dengine_sim::run(&config(seed));
                    let Ok(mut t) = totals.lock() else { return };
                    match result {
                        Ok(report) => {
                            add(&mut t.stats, &report.stats);
                            if args.verbose {
                                for line in &report.trace {
                                    println!("{line}");
                                }
                                println!("seed {seed}: ok, trace hash {:016x}", report.trace_hash);
                            }
                        }
                        Err(failure) => {
                            add(&mut t.stats, &failure.stats);
                            if args.verbose {
                                for line in &failure.trace {
                                    println!("{line}");
                                }
                            }
                            eprintln!("\nFAIL {failure}");
                            t.failures.push(*failure);
                            if args.expect_failure {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Progress line.
        let (done, stop) = (&done, &stop);
        scope.spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let n = done.load(Ordering::Relaxed);
                if n >= args.seeds || stop.load(Ordering::Relaxed) {
                    return;
                }
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    let rate = n as f64 / started.elapsed().as_secs_f64();
                    eprintln!("  {n}/{} seeds ({rate:.1}/s)", args.seeds);
                }
            }
        });
    });
    let elapsed = started.elapsed();
    let totals = match totals.lock() {
        Ok(t) => t,
        Err(p) => p.into_inner(),
    };
    let n = done.load(Ordering::Relaxed);
    let s = &totals.stats;
    eprintln!(
        "\nsimulated {n} seeds (from {}) of {} nodes in {:.1}s ({:.1} seeds/s on {} threads): \
         {} ticks, {} elections, {} committed entries",
        args.start,
        args.nodes,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64().max(1e-9),
        args.threads,
        s.ticks,
        s.elections,
        s.committed
    );
    eprintln!(
        "faults: {} partitions, {} crashes, {} pauses, {} messages dropped, {} duplicated \
         ({} delivered)",
        s.partitions, s.crashes, s.pauses, s.dropped, s.duplicated, s.delivered
    );
    eprintln!(
        "operations: {} checked for linearizability ({} ok, {} unknown outcome); slowest \
         recovery after healing: {} ticks",
        s.ops_checked, s.ops_ok, s.ops_unknown, s.heal_ticks
    );
    let failed = totals.failures.len();
    if args.expect_failure {
        if let Some(first) = totals.failures.iter().min_by_key(|f| f.seed) {
            println!(
                "caught: injected bug(s) {:?} detected at seed {} after {} seeds: {}",
                args.bugs.iter().map(|b| b.name()).collect::<Vec<_>>(),
                first.seed,
                first.seed - args.start + 1,
                first.message
            );
            return ExitCode::SUCCESS;
        }
        println!("NOT caught: no seed failed in {n} seeds");
        return ExitCode::FAILURE;
    }
    if failed == 0 {
        println!("{n} passed, 0 failed");
        ExitCode::SUCCESS
    } else {
        println!("{} passed, {failed} failed", n - failed as u64);
        for f in &totals.failures {
            println!("  seed {}: {}\n    replay: {}", f.seed, f.message, f.replay);
        }
        ExitCode::FAILURE
    }
}
