//! `cargo xtask <command>`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Commands:
//! - `ci`: runs `.ci/run`, exactly what CI runs (format check, clippy, tests, heavier suites).
//! - `sim`: the deterministic simulator (`dengine-sim`), built in release mode; all further
//!   arguments are passed on (`cargo xtask sim --help`).
//! - `sim-node`: the real runtime (`dengine-node`) under deterministic simulation
//!   (`dengine_sim::runtime`), built in release mode; all further arguments are passed on
//!   (`cargo xtask sim-node --help`).
//! - `cluster-demo`: a 3-node cluster of the example KV server on loopback, failover and
//!   catch-up, then everything stopped (see `demo.rs`).
//! - `bench ...`: the benchmarks of `docs/benchmarks.md`; `bench e2e` (`e2e.rs`),
//!   `bench soak` (`soak.rs`) and `bench restart` (`restart.rs`) drive real clusters with
//!   `dengine-loadgen` (tools/loadgen).
//! - `imports`: the module import graph of every crate, checked for cycles (`imports.rs`).
//! - `fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz, nightly), each for a fixed time
//!   (see `fuzz.rs`).
//! - `mutants`: mutation testing of `dengine-core` with cargo-mutants (see `mutants.rs`).
//! - `chaos`: the real-process chaos harness (`tools/chaos`) in network namespaces, with the
//!   server built with its `fault-injection` feature (see `chaos.rs`).

mod chaos;
mod chart;
mod cluster;
mod demo;
mod e2e;
mod env;
mod etcd;
mod fuzz;
mod imports;
mod kvbench;
mod loadgen;
mod machine;
mod mutants;
mod probe;
mod restart;
mod soak;

use crate::env::workspace_root;
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci             run exactly what CI runs (.ci/run): fmt check, clippy -D warnings, tests
  bench storage [--seconds N]
                 append throughput of the redb, sled and WAL log stores (batches of 1,
                 16, 256 entries of 256 bytes, fsync each) next to the disk's raw
                 fdatasync rates (appending, and overwriting a preallocated file),
                 measured in the same run
  bench net [--seconds N] [--windows 1,64]
                 append round trips/s and MB/s between two gRPC transports on loopback,
                 1, 16 and 256 entries of 256 bytes per message, one at a time and
                 pipelined
  bench core [--seconds N] [--warmup N] [--clients 1,64,256,1024] [--workers N]
                 3 nodes in one process (MemoryStore, no-op state machine, in-process
                 messages), N clients proposing empty entries one at a time: put/s and
                 ns/op per N next to openraft's reference for the same shape
  bench failover [--runs N]
                 N times (default 10): a fresh 3-member dengine-kv cluster (release,
                 default settings) under a write load, SIGKILL of the leader, time until a
                 survivor acknowledges a write; median and max
  bench e2e [--vs-etcd] [--seconds N] [--warmup N] [--clients 1,16,64,256]
            [--read-clients 1,16,64,256] [--no-reads] [--conns C] [--keys K] [--dir DIR]
            [--chart PATH] [--server-bin PATH] [--client h2|etcd-client]
                 a 3-member dengine-kv cluster (release, default settings: the WAL,
                 fsync before ack) on loopback driven by dengine-loadgen through the etcd v3 KV
                 API: puts, linearizable and serializable gets, N clients each with one
                 request at a time; with --vs-etcd the same against a 3-member etcd 3.4
                 (apt-get install -y etcd-server if missing), afterwards, then both side by
                 side with ratios, the servers' and the load generator's CPU per request;
                 writes the chart to docs/img/e2e.svg (or --chart). --server-bin runs that
                 dengine-kv binary instead of building one; --client picks the load
                 generator's gRPC client (default h2, its own; etcd-client, the crate)
  bench soak [--entries N] [--clients N] [--keys K] [--report-every S] [--max-seconds S]
             [--dir DIR]
                 N puts (default 5,000,000) to a 3-member dengine-kv cluster (default
                 settings, compaction every 100,000 entries); rate, RSS and disk per member
                 every 10 s; fails unless the last 10% ran at >= 80% of the first 10%'s rate
  bench restart [--keys N] [--value-size B] [--state durable,memory] [--dir DIR]
                 N keys (default 1,000,000, 100-byte values) in a 3-member dengine-kv
                 cluster, once per --state: a follower's RSS and data size, then the time
                 until it applied again what it had, after SIGTERM and after SIGKILL
  sim [ARGS]     run the deterministic simulator in release mode, e.g.
                 `cargo xtask sim --seeds 1000` or `cargo xtask sim --seed 42 --verbose`
                 (`cargo xtask sim --help` lists every option)
  sim-node [ARGS]
                 run the real runtime (dengine-node) under deterministic simulation in
                 release mode, e.g. `cargo xtask sim-node --seeds 300 --replay-check` or
                 `cargo xtask sim-node --seed 42 --verbose` (`--help` lists every option)
  cluster-demo [--keep-running]
                 build the example KV server, start 3 nodes on loopback, write keys,
                 SIGKILL the leader, time the failover, check nothing was lost, restart
                 the killed node and show it caught up, then stop everything
                 (--keep-running: leave the cluster up and print etcdctl commands)
  chaos [--seeds 1,2,3] [--seconds 60] [--nodes 5] [--clients 5] [--keys 8]
        [--nemesis all|kill-majority] [--bug fsync-off] [--expect-failure] [--keep]
                 real dengine-kv processes (release, fault-injection build) in Linux
                 network namespaces under a seeded nemesis: nft partitions (leader
                 isolated, majority/minority, bridge, one-way), SIGKILL, SIGSTOP pauses,
                 membership churn, leader transfers, message delay; concurrent etcd-API
                 clients; the history is checked for linearizability and lost
                 acknowledged writes after a final heal. Needs root, ip and nft.
                 --bug fsync-off: storage.fsync = false on redb and SIGKILL of majorities,
                 which must lose acknowledged writes (with --expect-failure: pass if caught)
  fuzz [TARGET ...] [--seconds N] [--list] [--seeds]
                 build the cargo-fuzz targets of fuzz/ (nightly toolchain, cargo-fuzz:
                 cargo install --locked cargo-fuzz) and run each for N seconds (default
                 60) from its committed corpus; fails on any crash, hang or out-of-memory
                 and says how to reproduce it (docs/correctness.md lists the targets)
  mutants [--file PATH ...] [--shard K/N] [--iterate] [--list]
                 mutation testing of dengine-core (cargo install --locked cargo-mutants):
                 every mutant built and tested with the core's tests, the simulator's
                 fixed seeds and the storage conformance suite; prints the score and the
                 surviving mutants
  imports        check that no module of any crate imports one that imports it back
                 (directly or through others); names the files and paths of each cycle
  chaos --cleanup
                 remove namespaces, links and processes a killed chaos run left behind";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("sim") => sim(&args[1..]),
        Some("sim-node") => sim_node(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("cluster-demo") => demo::cluster_demo(&args[1..]),
        Some("chaos") => chaos::chaos(&args[1..]),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        Some("mutants") => mutants::mutants(&args[1..]),
        Some("imports") => match imports::run(&workspace_root()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("xtask imports: {e}");
                ExitCode::FAILURE
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command `{other}`\n\n{USAGE}");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> ExitCode {
    let root = workspace_root();
    let script = root.join(".ci").join("run");
    eprintln!("xtask ci: running {}", script.display());
    match Command::new("bash")
        .arg(&script)
        .current_dir(&root)
        .status()
    {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("xtask ci: .ci/run failed ({status})");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("xtask ci: could not start bash to run .ci/run: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo xtask bench <what>`.
fn bench(args: &[String]) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("storage") => {
            for (krate, example) in [
                ("dengine-storage-redb", "redb_storage_bench"),
                ("dengine-storage-sled", "sled_storage_bench"),
                ("dengine-storage-wal", "wal_storage_bench"),
            ] {
                eprintln!("xtask bench storage: {krate} (release build)");
                let ok = cargo_release_run(&["-p", krate, "--example", example], &args[1..]);
                if !ok {
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Some("net") => {
            eprintln!("xtask bench net: dengine-net-grpc (release build)");
            let target = ["-p", "dengine-net-grpc", "--example", "net_bench"];
            if cargo_release_run(&target, &args[1..]) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("core") => {
            eprintln!("xtask bench core: dengine-node (release build)");
            let target = ["-p", "dengine-node", "--example", "core_bench"];
            if cargo_release_run(&target, &args[1..]) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("failover") => demo::bench_failover(&args[1..]),
        Some("e2e") => e2e::bench_e2e(&args[1..]),
        Some("soak") => soak::bench_soak(&args[1..]),
        Some("restart") => restart::bench_restart(&args[1..]),
        other => {
            eprintln!(
                "unknown benchmark {other:?}: available are `cargo xtask bench storage`, \
                 `net`, `core`, `failover`, `e2e`, `soak` and `restart`"
            );
            ExitCode::FAILURE
        }
    }
}

/// `cargo run --release <target> -- <args>` in the workspace root; whether it succeeded.
fn cargo_release_run(target: &[&str], args: &[String]) -> bool {
    let root = workspace_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--quiet", "--release"])
        .args(target)
        .arg("--")
        .args(args)
        .current_dir(&root)
        .status();
    match status {
        Ok(s) => s.success(),
        Err(e) => {
            eprintln!("xtask: could not start cargo: {e}");
            false
        }
    }
}

/// Builds and runs the simulator in release mode (it is CPU-bound; debug is ~10x slower).
fn sim(args: &[String]) -> ExitCode {
    if cargo_release_run(&["-p", "dengine-sim", "--bin", "dengine-sim"], args) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Builds and runs the simulation of the real runtime in release mode.
fn sim_node(args: &[String]) -> ExitCode {
    if cargo_release_run(&["-p", "dengine-sim", "--bin", "dengine-sim-node"], args) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
