//! Append round trips between two gRPC transports on loopback (`cargo xtask bench net`).
//!
//! Node 1 sends append messages of 1, 16 and 256 entries (256-byte payloads) to node 2; node
//! 2's inbox answers each with an append response, which travels back on the same stream.
//! A window bounds the appends in flight: window 1 measures one round trip at a time (latency),
//! a larger window measures pipelined throughput. Reports round trips/s and payload MB/s.
//!
//! Usage: `net_bench [--seconds N] [--windows 1,64]`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_core::{
    AppendRequest, AppendResponse, Entry, EntryId, EntryPayload, Inbox, InboxError, Message,
    MessageBody, Transport,
};
use dengine_net_grpc::{GrpcConfig, GrpcTransport};
use tokio::sync::Semaphore;

const PAYLOAD: usize = 256;

/// Node 2: answers every append through its own transport.
struct Follower {
    transport: GrpcTransport,
}

impl Inbox for Follower {
    fn deliver(&self, m: Message) -> Result<(), InboxError> {
        if let MessageBody::Append(a) = &m.body {
            let last = a.entries.last().map_or(a.prev, Entry::id);
            self.transport.send(Message {
                from: m.to,
                to: m.from,
                term: m.term,
                body: MessageBody::AppendResponse(AppendResponse::Accepted { last }),
            });
        }
        Ok(())
    }

    fn deliver_snapshot(
        &self,
        _m: Message,
        _d: dengine_core::SnapshotData,
    ) -> Result<(), InboxError> {
        Ok(())
    }
}

/// Node 1: each response frees one slot of the window.
struct Leader {
    window: Arc<Semaphore>,
    done: AtomicU64,
}

impl Inbox for Leader {
    fn deliver(&self, m: Message) -> Result<(), InboxError> {
        if matches!(m.body, MessageBody::AppendResponse(_)) {
            self.done.fetch_add(1, Ordering::Relaxed);
            self.window.add_permits(1);
        }
        Ok(())
    }

    fn deliver_snapshot(
        &self,
        _m: Message,
        _d: dengine_core::SnapshotData,
    ) -> Result<(), InboxError> {
        Ok(())
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: net_bench [--seconds N (default 3)] [--windows 1,64 (default)]");
        return;
    }
    let seconds: f64 = arg(&args, "--seconds").map_or(3.0, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("--seconds needs a number, got {s:?}"))
    });
    let windows: Vec<usize> = arg(&args, "--windows")
        .unwrap_or_else(|| "1,64".into())
        .split(',')
        .map(|w| w.parse().unwrap_or_else(|_| panic!("bad window {w:?}")))
        .collect();

    println!("# append round trips between two gRPC transports on loopback");
    println!("# {PAYLOAD}-byte payloads, {seconds} s per row, release build");
    println!("| entries/msg | in flight | round trips/s | entries/s | payload MB/s | mean RTT |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for &window in &windows {
        for entries in [1usize, 16, 256] {
            run(entries, window, seconds).await;
        }
    }
}

async fn run(entries_per_msg: usize, window: usize, seconds: f64) {
    eprintln!("net bench: {entries_per_msg} entries/msg, window {window} ...");
    let one = GrpcTransport::new(GrpcConfig::new(1, 1)).unwrap();
    let two = GrpcTransport::new(GrpcConfig::new(2, 1)).unwrap();
    let leader = Arc::new(Leader {
        window: Arc::new(Semaphore::new(window)),
        done: AtomicU64::new(0),
    });
    let _s1 = one
        .serve("127.0.0.1:0".parse().unwrap(), leader.clone())
        .await
        .unwrap();
    let s2 = two
        .serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Follower {
                transport: two.clone(),
            }),
        )
        .await
        .unwrap();
    one.set_peer(2, s2.local_addr().to_string());

    let payload = Bytes::from(vec![0xAB; PAYLOAD]);
    let mut index = 0u64;
    let mut make = || {
        let prev = EntryId::new(u64::from(index > 0), index);
        let entries: Vec<Entry> = (1..=entries_per_msg as u64)
            .map(|i| Entry::new(1, index + i, EntryPayload::Normal(payload.clone())))
            .collect();
        index += entries_per_msg as u64;
        Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append(AppendRequest {
                prev,
                entries,
                commit: 0,
            }),
        }
    };
    // Warm up the connection.
    for _ in 0..window.min(16) {
        leader.window.acquire().await.unwrap().forget();
        one.send(make());
    }
    while leader.done.load(Ordering::Relaxed) < window.min(16) as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let start = Instant::now();
    let base = leader.done.load(Ordering::Relaxed);
    let limit = Duration::from_secs_f64(seconds);
    while start.elapsed() < limit {
        match tokio::time::timeout(Duration::from_secs(5), leader.window.acquire()).await {
            Ok(permit) => permit.unwrap().forget(),
            Err(_) => panic!(
                "no response for 5 s: messages were lost ({:?})",
                one.stats()
            ),
        }
        one.send(make());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let trips = (leader.done.load(Ordering::Relaxed) - base) as f64;
    let rate = trips / elapsed;
    let entries_rate = rate * entries_per_msg as f64;
    let mb = entries_rate * PAYLOAD as f64 / 1e6;
    let rtt_us = 1e6 * window as f64 / rate;
    println!(
        "| {entries_per_msg} | {window} | {rate:.0} | {entries_rate:.0} | {mb:.1} | {rtt_us:.0} µs |"
    );
    let stats = one.stats();
    assert_eq!(
        stats.dropped(),
        0,
        "the benchmark must not overrun the queue: {stats:?}"
    );
}
