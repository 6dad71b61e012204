//! What applying puts costs dengine-kv's durable state machine, without a cluster, a network
//! or a log: the apply task's share of a durable put, measured alone (at 256 clients it is
//! about a third of the servers' CPU, docs/benchmarks.md).
//!
//! `cargo bench -p dengine-kv --bench apply [-- ROUNDS]`: a state file in a temporary
//! directory (the default 64 MiB page cache), 10,000 16-byte keys written once, then rounds
//! of 100,000 puts of 256-byte values to random keys, applied in batches of 64 as the runtime
//! hands them over, with a compaction down to the last 10,000 revisions whenever 20,000 are
//! kept (dengine-kv's auto-compaction keeps 10,000, once a second). Prints each round's puts per second and CPU per put
//! (the process's user + system time) and the median of each. Compare builds by running it on
//! each, one after the other; single rounds differ by a few percent on a busy machine.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Instant;

use bytes::Bytes;
use dengine_core::StateMachine;
use dengine_core::store::Command as Committed;
use dengine_kv::proto::dengine::kv::v1::command;
use dengine_kv::proto::etcdserverpb::{CompactionRequest, PutRequest};
use dengine_kv::{AuthHub, KvStateMachine, WatchHub, encode_command};

#[path = "../tests/support/xorshift.rs"]
mod xorshift;
use xorshift::Rng;

/// The server's allocator ([`dengine_kv::ServerAllocator`]), so that allocation costs what it
/// does there.
#[global_allocator]
static GLOBAL: dengine_kv::ServerAllocator = dengine_kv::ServerAllocator;

const KEYS: u64 = 10_000;
const PUTS_PER_ROUND: u64 = 100_000;
const BATCH: u64 = 64;
const KEEP: i64 = 10_000;

fn put(key: u64, value: &Bytes) -> Bytes {
    encode_command(command::Op::Put(PutRequest {
        key: Bytes::from(format!("key-{key:012}")),
        value: value.clone(),
        ..Default::default()
    }))
}

/// The process's CPU time (user + system) in microseconds.
fn cpu_us() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces) end with ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command.
    (ticks(11) + ticks(12)) * 1e6 / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut sm = KvStateMachine::open(
        WatchHub::default(),
        AuthHub::default(),
        &dir.path().join("kv.redb"),
        64 << 20,
    )
    .unwrap();
    let value = Bytes::from(vec![b'v'; 256]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut index = 0u64;
    let mut apply = |sm: &mut KvStateMachine, data: Vec<Bytes>| {
        let commands: Vec<Committed> = data
            .into_iter()
            .map(|data| {
                index += 1;
                Committed { index, data }
            })
            .collect();
        rt.block_on(sm.apply(&commands, index)).unwrap();
    };
    for first in (0..KEYS).step_by(BATCH as usize) {
        let batch = (first..(first + BATCH).min(KEYS))
            .map(|k| put(k, &value))
            .collect();
        apply(&mut sm, batch);
    }
    println!(
        "apply: {rounds} rounds of {PUTS_PER_ROUND} puts over {KEYS} keys, batches of {BATCH}"
    );
    let (mut rates, mut cpus) = (Vec::new(), Vec::new());
    let mut compacted = 0i64;
    for round in 1..=rounds {
        let (t, cpu) = (Instant::now(), cpu_us());
        for _ in 0..PUTS_PER_ROUND / BATCH {
            let mut batch: Vec<Bytes> = (0..BATCH).map(|_| put(rng.below(KEYS), &value)).collect();
            if sm.revision() - compacted >= 2 * KEEP {
                compacted = sm.revision() - KEEP;
                batch.push(encode_command(command::Op::Compact(CompactionRequest {
                    revision: compacted,
                    physical: false,
                })));
            }
            apply(&mut sm, batch);
        }
        let puts = (PUTS_PER_ROUND / BATCH * BATCH) as f64;
        let rate = puts / t.elapsed().as_secs_f64();
        let cpu_per_put = (cpu_us() - cpu) / puts;
        println!("  round {round}: {rate:>9.0} puts/s  {cpu_per_put:>6.2} µs CPU per put");
        rates.push(rate);
        cpus.push(cpu_per_put);
    }
    println!(
        "median: {:.0} puts/s, {:.2} µs CPU per put",
        median(rates),
        median(cpus)
    );
}
