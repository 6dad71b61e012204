//! The load itself: connections, client tasks, the measured window, progress lines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, GetOptions, KvClient};
use serde_json::json;

use crate::args::{ClientKind, Op, Options};
use crate::grpc;
use crate::stats::summarize;

/// State shared by the client tasks and the reporter.
struct Shared {
    /// Set when clients must stop issuing requests.
    stop: AtomicBool,
    /// Whether completed requests are recorded (after the warm-up, before the end).
    measuring: AtomicBool,
    /// Successful requests so far (warm-up included).
    done: AtomicU64,
    /// Failed or timed-out requests so far (never in the latencies).
    errors: AtomicU64,
    /// `--total` mode: requests claimed by a client (at most the total at once).
    claimed: AtomicU64,
    /// `--total` mode: nanoseconds from the start until 10% / 90% / 100% of the total were
    /// done (0 = not yet).
    decile_ns: [AtomicU64; 3],
    /// When the run started.
    start: Instant,
}

/// One shared connection, of the client `--client` names.
enum Conn {
    H2(Arc<grpc::Connection>),
    Etcd(KvClient),
}

impl Conn {
    /// A client of this connection, for one task.
    async fn client(&self) -> Kv {
        match self {
            Conn::H2(conn) => Kv::H2(conn.client().await),
            Conn::Etcd(kv) => Kv::Etcd(kv.clone()),
        }
    }
}

/// One task's client.
enum Kv {
    H2(grpc::Client),
    Etcd(KvClient),
}

/// One connection per `--conns`, spread round-robin over the endpoints.
async fn connect(opts: &Options) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(opts.conns);
    for i in 0..opts.conns {
        let endpoint = &opts.endpoints[i % opts.endpoints.len()];
        conns.push(match opts.client {
            ClientKind::H2 => Conn::H2(grpc::Connection::open(endpoint).await?),
            ClientKind::EtcdClient => {
                let client = Client::connect([endpoint.as_str()], None)
                    .await
                    .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
                Conn::Etcd(client.kv_client())
            }
        });
    }
    Ok(conns)
}

/// The key with index `i`: `k` then `i` in decimal, zero-padded to `size` bytes.
pub(crate) fn key(i: u64, size: usize) -> Vec<u8> {
    format!("k{i:0>width$}", width = size - 1).into_bytes()
}

/// xorshift64*: cheap, good enough to pick keys, reproducible per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn one_op(kv: &mut Kv, op: Op, key: Vec<u8>, value: &Bytes) -> Result<(), String> {
    match kv {
        Kv::H2(kv) => match op {
            Op::Put => kv.put(key, value.clone()).await.map(drop),
            Op::Get => kv.get(key, false).await.map(drop),
            Op::GetSerializable => kv.get(key, true).await.map(drop),
        },
        Kv::Etcd(kv) => {
            let result = match op {
                Op::Put => kv.put(key, value.to_vec(), None).await.map(drop),
                Op::Get => kv.get(key, None).await.map(drop),
                Op::GetSerializable => kv
                    .get(key, Some(GetOptions::new().with_serializable()))
                    .await
                    .map(drop),
            };
            result.map_err(|e| e.to_string())
        }
    }
}

/// One client: one request at a time until told to stop; returns its latencies (µs) of
/// requests completed while measuring, and its last error message, if any.
async fn client(
    shared: Arc<Shared>,
    opts: Arc<Options>,
    mut kv: Kv,
    seed: u64,
) -> (Vec<u32>, Option<String>) {
    let value = Bytes::from(vec![b'v'; opts.value_size]);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut latencies = Vec::new();
    let mut last_error = None;
    while !shared.stop.load(Ordering::Relaxed) {
        if let Some(total) = opts.total
            && shared.claimed.fetch_add(1, Ordering::Relaxed) >= total
        {
            shared.claimed.fetch_sub(1, Ordering::Relaxed);
            break;
        }
        let k = key(rng.below(opts.keys), opts.key_size);
        let started = Instant::now();
        let result = tokio::time::timeout(opts.timeout, one_op(&mut kv, opts.op, k, &value))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        match result {
            Ok(()) => {
                if shared.measuring.load(Ordering::Relaxed) {
                    latencies.push(micros);
                }
                let done = shared.done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(total) = opts.total {
                    let at = shared.start.elapsed().as_nanos() as u64;
                    for (slot, mark) in [total / 10, total - total / 10, total]
                        .into_iter()
                        .enumerate()
                    {
                        if done == mark.max(1) {
                            shared.decile_ns[slot].store(at, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                last_error = Some(e);
                if opts.total.is_some() {
                    // The slot is retried; a failing cluster is not hammered in a tight loop.
                    shared.claimed.fetch_sub(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latencies, last_error)
}

/// Writes every key of the key space once, with up to 64 requests in flight.
/// How many times the preload tries one key before it gives up.
const PRELOAD_ATTEMPTS: u32 = 100;

async fn preload(opts: &Options, conns: &[Conn]) -> Result<(), String> {
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'v'; opts.value_size]);
    let mut tasks = Vec::new();
    for i in 0..opts.clients.clamp(16, 64) {
        let mut kv = conns[i % conns.len()].client().await;
        let (next, value, keys, key_size, timeout) = (
            next.clone(),
            value.clone(),
            opts.keys,
            opts.key_size,
            opts.timeout,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= keys {
                    return Ok(());
                }
                // A put of the same value is idempotent: one that failed (an election under
                // way, a timeout) is tried again, for up to about 10 s.
                let mut attempts = 0;
                loop {
                    let k = key(i, key_size);
                    let put = one_op(&mut kv, Op::Put, k, &value);
                    let error = match tokio::time::timeout(timeout, put).await {
                        Ok(Ok(())) => break,
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => "timed out".to_string(),
                    };
                    attempts += 1;
                    if attempts == PRELOAD_ATTEMPTS {
                        return Err(format!("preload of key {i}: {error} ({attempts} attempts)"));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| format!("preload task: {e}"))??;
    }
    Ok(())
}

fn emit(line: serde_json::Value) {
    println!("{line}");
}

/// Runs the load described by `opts`; prints progress and result lines on stdout. Fails if
/// nothing succeeded or a `--total` run did not finish within `--seconds`.
pub(crate) async fn run(opts: Options) -> Result<(), String> {
    let conns = connect(&opts).await?;
    if opts.preload {
        let started = Instant::now();
        preload(&opts, &conns).await?;
        emit(json!({
            "event": "preload",
            "keys": opts.keys,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    let opts = Arc::new(opts);
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(opts.warmup.is_zero()),
        done: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        claimed: AtomicU64::new(0),
        decile_ns: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        start: Instant::now(),
    });
    let mut tasks = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let kv = conns[i % conns.len()].client().await;
        tasks.push(tokio::spawn(client(
            shared.clone(),
            opts.clone(),
            kv,
            i as u64 + 1,
        )));
    }

    // Reporter: warm-up, then the window (or until the total is done), a line per period.
    let mut window_start = shared.start;
    let mut done_at_window_start = 0;
    let mut last = (Instant::now(), 0u64);
    let deadline = shared.start + opts.warmup + opts.seconds;
    if shared.measuring.load(Ordering::Relaxed) {
        emit(json!({"event": "window", "edge": "start"}));
    }
    loop {
        let now = Instant::now();
        let warmup_end = shared.start + opts.warmup;
        let next_report = last.0 + opts.report_every;
        // Short naps: a `--total` run notices its end promptly.
        let mut wake = next_report
            .min(deadline)
            .min(now + Duration::from_millis(100));
        if !shared.measuring.load(Ordering::Relaxed) {
            wake = wake.min(warmup_end);
        }
        let finished = opts
            .total
            .is_some_and(|t| shared.done.load(Ordering::Relaxed) >= t);
        if finished || now >= deadline {
            break;
        }
        tokio::time::sleep_until(wake.into()).await;
        let now = Instant::now();
        if !shared.measuring.load(Ordering::Relaxed) && now >= warmup_end {
            done_at_window_start = shared.done.load(Ordering::Relaxed);
            window_start = now;
            shared.measuring.store(true, Ordering::Relaxed);
            // For a driver that samples the servers (CPU, syncs) over exactly the window.
            emit(json!({"event": "window", "edge": "start"}));
        }
        if now >= next_report {
            let done = shared.done.load(Ordering::Relaxed);
            let rate = (done - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            emit(json!({
                "event": "progress",
                "phase": if now < warmup_end { "warmup" } else { "measure" },
                "elapsed_s": now.duration_since(shared.start).as_secs_f64(),
                "done": done,
                "rate": rate,
                "errors": shared.errors.load(Ordering::Relaxed),
            }));
            last = (now, done);
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    shared.stop.store(true, Ordering::Relaxed);
    emit(json!({"event": "window", "edge": "end"}));
    let mut window = window_start.elapsed();
    let finished_ns = shared.decile_ns[2].load(Ordering::Relaxed);
    if opts.total.is_some() && finished_ns > 0 {
        window = Duration::from_nanos(finished_ns);
    }
    let done_in_window = shared.done.load(Ordering::Relaxed) - done_at_window_start;

    let mut latencies = Vec::new();
    let mut last_error = None;
    for task in tasks {
        let (l, e) = task.await.map_err(|e| format!("client task: {e}"))?;
        latencies.extend(l);
        last_error = e.or(last_error);
    }
    let summary = summarize(&mut latencies);
    let errors = shared.errors.load(Ordering::Relaxed);
    let mut result = json!({
        "event": "result",
        "op": opts.op.name(),
        "clients": opts.clients,
        "conns": opts.conns,
        "endpoints": opts.endpoints.len(),
        "seconds": window.as_secs_f64(),
        "ops": done_in_window,
        "throughput": done_in_window as f64 / window.as_secs_f64(),
        "p50_us": summary.p50,
        "p99_us": summary.p99,
        "p999_us": summary.p999,
        "max_us": summary.max,
        "mean_us": summary.mean,
        "errors": errors,
        "last_error": last_error,
    });
    if let Some(total) = opts.total {
        let ns = |i: usize| shared.decile_ns[i].load(Ordering::Relaxed) as f64 / 1e9;
        let (t10, t90, t100) = (ns(0), ns(1), ns(2));
        let tenth = (total / 10).max(1) as f64;
        result["first_10pct_rate"] = json!(if t10 > 0.0 { tenth / t10 } else { 0.0 });
        result["last_10pct_rate"] = json!(if t100 > t90 && t90 > 0.0 {
            (total - (total - total / 10)) as f64 / (t100 - t90)
        } else {
            0.0
        });
        result["complete"] = json!(done_in_window >= total);
    }
    emit(result);
    if done_in_window == 0 {
        return Err(format!(
            "no request succeeded ({errors} errors; last: {})",
            last_error.unwrap_or_default()
        ));
    }
    if let Some(total) = opts.total
        && done_in_window < total
    {
        return Err(format!(
            "only {done_in_window} of {total} requests done within {:?}",
            opts.seconds
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_asked_size_and_differ() {
        assert_eq!(key(0, 16), b"k000000000000000");
        assert_eq!(key(12345, 16), b"k000000000012345");
        assert_eq!(key(9, 2), b"k9");
    }

    #[test]
    fn rng_stays_below_its_bound_and_covers_it() {
        let mut rng = Rng(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = rng.below(10);
            seen[v as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
