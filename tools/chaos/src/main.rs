//! `dengine-chaos`: real `dengine-kv` processes in Linux network namespaces under a seeded
//! nemesis (partitions with `nft`, SIGKILL, SIGSTOP, membership churn, leader transfers,
//! message delay, clock jumps and fast and slow clocks with libfaketime, several at once) and
//! a concurrent etcd-API workload, half of whose linearizable reads are lease reads, whose
//! history is checked for linearizability and lost acknowledged writes, a lock workload and,
//! if asked, an exactly-once workload in client sessions. Run it through `cargo xtask chaos`, which
//! builds the server with its `fault-injection` feature and passes `--server-bin`.
//!
//! Modules: [`topology`] (namespaces, bridge, `nft` rules), [`cluster`] (processes and
//! admin RPCs), [`clock`] (libfaketime clocks and the lease margin), [`nemesis`] (the seeded schedule), [`workload`] (clients and recording),
//! [`history`] (file format and the checks), [`lock`] and [`once`] (the lock and
//! exactly-once workloads), [`run`] (one seed from start to verdict).

mod clock;
mod cluster;
mod history;
mod lock;
mod nemesis;
mod once;
mod run;
mod topology;
mod workload;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::nemesis::Mode;
use crate::run::{Options, Verdict};

const USAGE: &str =
    "usage: dengine-chaos --server-bin PATH [options]   (normally: cargo xtask chaos [options])
       dengine-chaos --cleanup
       dengine-chaos --check HISTORY.jsonl   (re-check a kept history; no root needed)

options:
  --seeds 1,2,3        seeds to run, one after the other (default 1)
  --seconds N          length of the fault phase per seed (default 60; >= 55 for every fault kind)
  --nodes N            cluster size (default 5, 3..=9)
  --clients N          concurrent clients (default 5)
  --keys N             size of the key space (default 8)
  --nemesis KIND       all (default): every fault kind; kill-majority: only SIGKILL of a majority
  --bug fsync-off      run the nodes with storage.fsync = false on the redb backend (implies
                       --nemesis kill-majority unless --nemesis is given): acknowledged writes
                       should be lost
  --bug lease-follower-clock
                       every member expires leases on its own clock, leader or not: keys of
                       leases kept alive should vanish early
  --bug lease-no-extension
                       a new leader does not extend the leases it takes over
  --bug sessions-off   with --exactly-once-clients: the members run without client sessions
                       and the clients resend a command of unknown outcome as a new plain
                       proposal: some increment should be applied twice
  --exactly-once-clients N
                       clients of the exactly-once workload (default 0: none): increments
                       proposed through dengine-client in client sessions, resent through
                       every fault, checked to be applied once each
  --lock-clients N     clients of the lock workload (default 3; 0: none): a lease, a lock,
                       guarded increments of a counter, checked for mutual exclusion and
                       leases that never expire early
  --expect-failure     succeed only if some seed finds a safety violation (linearizability or a
                       lost acknowledged write), to prove the harness catches a known bug
  --no-clock-faults    run the nodes on the real clock (no libfaketime: no clock jumps, no fast
                       or slow clocks)
  --keep               keep the run directory (history, node logs, data) of passing runs too
  --dir DIR            where run directories go (default: the system temp directory)
  --cleanup            remove leftovers of killed runs (processes, namespaces, links, and run
                       directories in the temp directory whose driver is gone) and exit";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let [flag, file] = args.as_slice()
        && flag == "--check"
    {
        return check_file(file);
    }
    if let Err(why) = preflight() {
        eprintln!("chaos: cannot run: {why}");
        return ExitCode::from(2);
    }
    if args.iter().any(|a| a == "--cleanup") {
        let mut removed = topology::cleanup_leftovers();
        removed.extend(run::remove_orphaned_run_dirs(&std::env::temp_dir()));
        if removed.is_empty() {
            println!("chaos --cleanup: nothing left behind");
        } else {
            for r in removed {
                println!("chaos --cleanup: removed {r}");
            }
        }
        return ExitCode::SUCCESS;
    }
    let options = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chaos: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        if let Err(e) = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)) {
            eprintln!("chaos: cannot install the Ctrl-C handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chaos: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut verdicts = Vec::new();
    for &seed in &options.seeds {
        let verdict = runtime.block_on(run::run_seed(&options, seed, &interrupted));
        println!("chaos: seed {seed}: {}", verdict.headline());
        let stop = matches!(verdict, Verdict::Interrupted)
            || (options.expect_failure && verdict.is_safety_violation());
        verdicts.push((seed, verdict));
        if stop {
            break;
        }
    }
    summarize(&options, &verdicts)
}

/// `--check FILE`: the linearizability verdict on a history file a run kept.
fn check_file(file: &str) -> ExitCode {
    use dengine_sim::linearizability::{CheckOptions, History, check_with};
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("chaos: cannot read {file}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut h = History::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match history::decode(line).map(|op| h.push(op)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("chaos: {file}:{}: {e:?}", n + 1);
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("chaos: {file}:{}: {e}", n + 1);
                return ExitCode::from(2);
            }
        }
    }
    let verdict = check_with(&h, &CheckOptions::default());
    println!("{} operations: {verdict}", h.len());
    if verdict.is_linearizable() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn summarize(options: &Options, verdicts: &[(u64, Verdict)]) -> ExitCode {
    println!("\nchaos: summary");
    for (seed, v) in verdicts {
        println!("  seed {seed}: {}", v.headline());
    }
    if verdicts
        .iter()
        .any(|(_, v)| matches!(v, Verdict::Interrupted))
    {
        println!("chaos: interrupted; everything started was stopped and removed");
        return ExitCode::from(130);
    }
    if options.expect_failure {
        if verdicts.iter().any(|(_, v)| v.is_safety_violation()) {
            println!("chaos: the expected failure was found: the harness catches this bug");
            ExitCode::SUCCESS
        } else {
            println!(
                "chaos: FAILED: a failure was expected (--expect-failure) but no seed found a \
                 safety violation"
            );
            ExitCode::FAILURE
        }
    } else if verdicts.iter().all(|(_, v)| matches!(v, Verdict::Pass)) {
        println!("chaos: PASSED ({} seeds)", verdicts.len());
        ExitCode::SUCCESS
    } else {
        println!("chaos: FAILED");
        ExitCode::FAILURE
    }
}

/// Root, `ip` with network namespaces, and `nft` are needed; without them this is not a pass.
fn preflight() -> Result<(), String> {
    const INSTALL: &str = "install them with `apt-get install -y iproute2 nftables`";
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Err(format!(
            "the chaos harness needs root (effective uid is {uid}): it creates network \
             namespaces, veth links and nft rules. Run it as root (e.g. `sudo -E cargo xtask \
             chaos ...`)"
        ));
    }
    for (program, arg) in [("ip", "-V"), ("nft", "--version")] {
        let ok = Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(format!(
                "`{program}` is not available; the harness needs `ip` (iproute2) and `nft` \
                 (nftables): {INSTALL}"
            ));
        }
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        server_bin: PathBuf::new(),
        seeds: vec![1],
        seconds: 60,
        nodes: 5,
        clients: 5,
        keys: 8,
        mode: Mode::All,
        fsync: true,
        lease_fault: None,
        lock_clients: 3,
        once_clients: 0,
        sessions: true,
        clock_library: None,
        expect_failure: false,
        keep: false,
        dir: std::env::temp_dir(),
    };
    let mut mode_given = false;
    let mut clock_faults = true;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let number = |v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{flag}: {v:?} is not a number"))
        };
        match flag.as_str() {
            "--server-bin" => o.server_bin = PathBuf::from(value()?),
            "--seeds" | "--seed" => {
                o.seeds = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .map_err(|_| format!("{flag}: {s:?} is not a seed"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => o.seconds = number(value()?)?,
            "--nodes" => o.nodes = number(value()?)? as usize,
            "--clients" => o.clients = number(value()?)?,
            "--keys" => o.keys = number(value()?)?,
            "--nemesis" => {
                mode_given = true;
                o.mode = match value()?.as_str() {
                    "all" => Mode::All,
                    "kill-majority" => Mode::KillMajority,
                    other => return Err(format!("unknown --nemesis {other:?}")),
                };
            }
            "--bug" => match value()?.as_str() {
                "fsync-off" => o.fsync = false,
                fault @ ("lease-follower-clock" | "lease-no-extension") => {
                    o.lease_fault = Some(fault.trim_start_matches("lease-").to_string());
                }
                "sessions-off" => o.sessions = false,
                other => {
                    return Err(format!(
                        "unknown --bug {other:?} (known: fsync-off, lease-follower-clock, \
                         lease-no-extension, sessions-off)"
                    ));
                }
            },
            "--lock-clients" => o.lock_clients = number(value()?)?,
            "--exactly-once-clients" => o.once_clients = number(value()?)?,
            "--expect-failure" => o.expect_failure = true,
            "--no-clock-faults" => clock_faults = false,
            "--keep" => o.keep = true,
            "--dir" => o.dir = PathBuf::from(value()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if !o.fsync && !mode_given {
        o.mode = Mode::KillMajority;
    }
    if clock_faults {
        o.clock_library = Some(clock::find_library()?);
    }
    if o.server_bin.as_os_str().is_empty() {
        return Err("--server-bin is required (cargo xtask chaos passes it)".into());
    }
    if !(3..=9).contains(&o.nodes) {
        return Err(format!("--nodes {} is not in 3..=9", o.nodes));
    }
    if !o.sessions && o.once_clients == 0 {
        return Err(
            "--bug sessions-off needs the exactly-once workload (--exactly-once-clients N)".into(),
        );
    }
    if o.clients == 0 || o.keys == 0 || o.seeds.is_empty() {
        return Err("--clients, --keys and --seeds need at least one".into());
    }
    if o.mode == Mode::All && o.seconds < nemesis::min_seconds() {
        eprintln!(
            "chaos: note: {} s is too short for every fault kind (needs {} s)",
            o.seconds,
            nemesis::min_seconds()
        );
    }
    Ok(o)
}
