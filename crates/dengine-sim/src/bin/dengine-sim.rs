//! Command-line runner for the simulator: many seeds in parallel with a progress line and a
//! summary, or one seed with a readable trace. Usually started through `cargo xtask sim`.

use std::process::ExitCode;
use std::time::Duration;

use dengine_core::InjectedBug;
use dengine_sim::runner::{Seeds, number, run_seeds};
use dengine_sim::{SimConfig, Stats};

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
    seeds: Seeds,
    nodes: u64,
    steps: u64,
    verbose: bool,
    bugs: Vec<InjectedBug>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: Seeds::default(),
        nodes: 5,
        steps: 3000,
        verbose: false,
        bugs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if a.seeds.parse(&arg, &mut it)? {
            continue;
        }
        match arg.as_str() {
            "--nodes" => a.nodes = number("--nodes", it.next())?,
            "--steps" => a.steps = number("--steps", it.next())?,
            "--verbose" => a.verbose = true,
            "--expect-failure" => a.seeds.stop_on_failure = true,
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
    let mut s = Stats::default();
    let ran = run_seeds(
        &args.seeds,
        Duration::from_secs(120),
        |seed| format!("cargo xtask sim --seed {seed} --verbose"),
        |seed| dengine_sim::run(&config(seed)),
        |seed, report| {
            add(&mut s, &report.stats);
            if args.verbose {
                for line in &report.trace {
                    println!("{line}");
                }
                println!("seed {seed}: ok, trace hash {:016x}", report.trace_hash);
            }
        },
    );
    for failure in &ran.failures {
        add(&mut s, &failure.stats);
        if args.verbose {
            for line in &failure.trace {
                println!("{line}");
            }
        }
    }
    let n = ran.done;
    let elapsed = ran.elapsed.as_secs_f64();
    eprintln!(
        "\nsimulated {n} seeds (from {}) of {} nodes in {elapsed:.1}s ({:.1} seeds/s on {} \
         threads): {} ticks, {} elections, {} committed entries",
        args.seeds.start,
        args.nodes,
        n as f64 / elapsed.max(1e-9),
        args.seeds.threads,
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
    let failed = ran.failures.len();
    if args.seeds.stop_on_failure {
        if let Some(first) = ran.failures.first() {
            println!(
                "caught: injected bug(s) {:?} detected at seed {} after {} seeds: {}",
                args.bugs.iter().map(|b| b.name()).collect::<Vec<_>>(),
                first.seed,
                first.seed - args.seeds.start + 1,
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
        for f in &ran.failures {
            println!("  seed {}: {}\n    replay: {}", f.seed, f.message, f.replay);
        }
        ExitCode::FAILURE
    }
}
