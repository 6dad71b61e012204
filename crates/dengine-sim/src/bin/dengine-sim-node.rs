//! Command-line runner for the simulation of the real runtime (`dengine_sim::runtime`): many
//! seeds in parallel with a progress line and a summary, or one seed with its events. Usually
//! started through `cargo xtask sim-node`.

use std::process::ExitCode;
use std::time::Duration;

use dengine_node::RuntimeBug;
use dengine_sim::runner::{Seeds, number, run_seeds};
use dengine_sim::runtime::{Failure, NodeSimConfig, Report, Stats, Workload, run};

const USAGE: &str = "usage: dengine-sim-node [options]

  --seeds N            run N seeds (default 100)
  --start S            first seed (default 0)
  --seed X             run only seed X (same as --start X --seeds 1)
  --nodes K            cluster size, 3..=5 (default 3)
  --fault-ms M         simulated milliseconds of faults per seed (default 6000)
  --exactly-once       clients send increments with unique ids through client sessions,
                       resending each until answered; checks none is applied twice
  --exactly-once-without-sessions
                       the same resends as plain proposals (use with --expect-failure:
                       the check catches the increments applied twice)
  --verbose            print the events of each run (use with --seed)
  --replay-check       run every seed twice and require identical fingerprints
  --inject-bug NAME    switch on a deliberate bug (repeatable); names:
                       no-tick-catch-up, ack-before-sync, ignore-failed-sync (runtime),
                       lying-sync (disk)
  --expect-failure     succeed only if some seed fails (bug-catching demonstrations);
                       stops at the first failing seed
  --threads T          worker threads (default: available cores)";

struct Args {
    seeds: Seeds,
    nodes: u64,
    fault_ms: u64,
    verbose: bool,
    replay_check: bool,
    bugs: Vec<RuntimeBug>,
    lying_sync: bool,
    workload: Workload,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seeds: Seeds::default(),
        nodes: 3,
        fault_ms: 6_000,
        verbose: false,
        replay_check: false,
        bugs: Vec::new(),
        lying_sync: false,
        workload: Workload::Kv,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if a.seeds.parse(&arg, &mut it)? {
            continue;
        }
        match arg.as_str() {
            "--nodes" => a.nodes = number("--nodes", it.next())?,
            "--fault-ms" => a.fault_ms = number("--fault-ms", it.next())?,
            "--verbose" => a.verbose = true,
            "--exactly-once" => a.workload = Workload::Increments { sessions: true },
            "--exactly-once-without-sessions" => {
                a.workload = Workload::Increments { sessions: false };
            }
            "--replay-check" => a.replay_check = true,
            "--expect-failure" => a.seeds.stop_on_failure = true,
            "--inject-bug" => {
                let name = it.next().ok_or("--inject-bug needs a name")?;
                if name == "lying-sync" {
                    a.lying_sync = true;
                } else {
                    let bug = RuntimeBug::from_name(&name)
                        .ok_or_else(|| format!("unknown bug `{name}`\n\n{USAGE}"))?;
                    a.bugs.push(bug);
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option `{other}`\n\n{USAGE}")),
        }
    }
    a.config(0).validate()?;
    Ok(a)
}

impl Args {
    fn config(&self, seed: u64) -> NodeSimConfig {
        NodeSimConfig {
            nodes: self.nodes,
            fault_ms: self.fault_ms,
            bugs: self.bugs.clone(),
            lying_sync: self.lying_sync,
            workload: self.workload,
            verbose: self.verbose,
            ..NodeSimConfig::new(seed)
        }
    }

    fn bug_names(&self) -> Vec<&'static str> {
        let mut names: Vec<_> = self.bugs.iter().map(|b| b.name()).collect();
        if self.lying_sync {
            names.push("lying-sync");
        }
        if self.workload == (Workload::Increments { sessions: false }) {
            names.push("resends without sessions");
        }
        names
    }
}

fn add(t: &mut Stats, s: &Stats) {
    t.steps += s.steps;
    t.partitions += s.partitions;
    t.crashes += s.crashes;
    t.fatal_stops += s.fatal_stops;
    t.pauses += s.pauses;
    t.jumps += s.jumps;
    t.ops_ok += s.ops_ok;
    t.ops_unknown += s.ops_unknown;
    t.lease_reads += s.lease_reads;
    t.linearizable_reads += s.linearizable_reads;
    t.stale_reads += s.stale_reads;
    t.max_term = t.max_term.max(s.max_term);
    t.snapshot_installs += s.snapshot_installs;
    t.increments_ok += s.increments_ok;
    t.increments_unknown += s.increments_unknown;
    t.resends += s.resends;
    t.sessions_lost += s.sessions_lost;
    t.responses_lost += s.responses_lost;
    t.net.sent += s.net.sent;
    t.net.dropped += s.net.dropped;
    t.net.duplicated += s.net.duplicated;
    t.net.delivered += s.net.delivered;
    t.disk.syncs += s.disk.syncs;
    t.disk.write_errors += s.disk.write_errors;
    t.disk.sync_errors += s.disk.sync_errors;
    t.disk.lost_in_crashes += s.disk.lost_in_crashes;
    t.disk.kept_in_crashes += s.disk.kept_in_crashes;
}

/// One seed, run twice with `--replay-check`.
fn one(args: &Args, seed: u64) -> Result<Report, Failure> {
    let report = run(&args.config(seed))?;
    if args.replay_check {
        let again = run(&args.config(seed))?;
        if again != report {
            return Err(Failure {
                seed,
                at_ms: report.stats.steps,
                check: "replay",
                detail: format!(
                    "two runs of the seed differ: fingerprints {:016x} and {:016x}",
                    report.fingerprint, again.fingerprint
                ),
            });
        }
    }
    Ok(report)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut s = Stats::default();
    let ran = run_seeds(
        &args.seeds,
        Duration::from_secs(120),
        |seed| format!("cargo xtask sim-node --seed {seed} --verbose"),
        |seed| one(&args, seed),
        |seed, report| {
            add(&mut s, &report.stats);
            if args.verbose {
                println!(
                    "seed {seed}: ok, fingerprint {:016x}\n{:#?}",
                    report.fingerprint, report.stats
                );
            }
        },
    );
    let elapsed = ran.elapsed.as_secs_f64();
    let n = ran.done;
    let runs = if args.replay_check { 2 * n } else { n };
    eprintln!(
        "\nsimulated {n} seeds (from {}) of {} real nodes in {elapsed:.1}s: {:.2} seeds/s on {} \
         threads ({:.2} runs/s per thread{}); {:.0} simulated seconds",
        args.seeds.start,
        args.nodes,
        n as f64 / elapsed.max(1e-9),
        args.seeds.threads,
        runs as f64 / elapsed.max(1e-9) / args.seeds.threads as f64,
        if args.replay_check {
            ", each seed run twice"
        } else {
            ""
        },
        s.steps as f64 / 1000.0,
    );
    eprintln!(
        "faults: {} partitions, {} crashes, {} stops on disk errors, {} pauses, {} clock \
         jumps; {} of {} messages dropped, {} duplicated; disk: {} syncs, {} write errors, {} \
         sync errors, {} unsynced writes lost and {} kept in crashes",
        s.partitions,
        s.crashes,
        s.fatal_stops,
        s.pauses,
        s.jumps,
        s.net.dropped,
        s.net.sent,
        s.net.duplicated,
        s.disk.syncs,
        s.disk.write_errors,
        s.disk.sync_errors,
        s.disk.lost_in_crashes,
        s.disk.kept_in_crashes
    );
    eprintln!(
        "operations checked for linearizability: {} with a result ({} linearizable reads, {} \
         lease reads), {} with an unknown outcome; {} stale reads; {} snapshots installed; \
         highest term {}",
        s.ops_ok,
        s.linearizable_reads,
        s.lease_reads,
        s.ops_unknown,
        s.stale_reads,
        s.snapshot_installs,
        s.max_term
    );
    if let Workload::Increments { sessions } = args.workload {
        eprintln!(
            "increments {}: {} acknowledged, {} with an unknown outcome, {} resends after an \
             unknown outcome; {} sessions expired under their clients; {} answered \"applied, \
             response lost\" (durable state machines, odd seeds)",
            if sessions {
                "in client sessions"
            } else {
                "WITHOUT sessions"
            },
            s.increments_ok,
            s.increments_unknown,
            s.resends,
            s.sessions_lost,
            s.responses_lost
        );
    }
    let failed = ran.failures.len();
    if args.seeds.stop_on_failure {
        if let Some(first) = ran.failures.first() {
            println!(
                "caught: {:?} detected at seed {} after {} seeds: {first}",
                args.bug_names(),
                first.seed,
                first.seed - args.seeds.start + 1,
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
            println!(
                "  {f}\n    replay: cargo xtask sim-node --seed {} --verbose",
                f.seed
            );
        }
        ExitCode::FAILURE
    }
}
