//! Runs `dengine-loadgen` (tools/loadgen) and reads its JSON lines: progress reports as they
//! come, then the result.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// The result line of one load-generator run.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct LoadResult {
    /// `put`, `get` or `get-serializable`.
    pub(crate) op: String,
    /// Concurrent clients.
    pub(crate) clients: u64,
    /// Successful requests per second in the measured window.
    pub(crate) throughput: f64,
    /// Mean latency of successful requests, µs.
    pub(crate) mean_us: f64,
    /// Latency percentiles of successful requests, µs.
    pub(crate) p50_us: f64,
    /// 99th percentile, µs.
    pub(crate) p99_us: f64,
    /// 99.9th percentile, µs.
    pub(crate) p999_us: f64,
    /// Failed or timed-out requests (not in the latencies).
    pub(crate) errors: u64,
    /// Successful requests in the window.
    pub(crate) ops: u64,
    /// Length of the window, s.
    pub(crate) seconds: f64,
    /// `--total` runs: requests/s over the first and the last 10% of the total.
    pub(crate) first_10pct_rate: f64,
    /// See `first_10pct_rate`.
    pub(crate) last_10pct_rate: f64,
    /// The last error message, if any request failed.
    pub(crate) last_error: Option<String>,
    /// Filled by the driver when it sampled the servers over the window: their CPU time
    /// (user + system, all server processes) per successful request, µs.
    pub(crate) cpu_us_per_op: Option<f64>,
    /// Likewise: log syncs the servers reported per successful request.
    pub(crate) syncs_per_op: Option<f64>,
    /// Likewise (dengine only): the mean durations of a write's stages on the servers.
    pub(crate) stages: Option<crate::probe::Stages>,
    /// The load generator's own CPU time per successful request over the window, µs (it
    /// shares the machine with the servers: what it spends, they cannot).
    pub(crate) client_cpu_us_per_op: Option<f64>,
}

impl LoadResult {
    /// Reads a `"event": "result"` line.
    pub(crate) fn from_json(v: &Value) -> LoadResult {
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        LoadResult {
            op: v
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            clients: u("clients"),
            throughput: f("throughput"),
            mean_us: f("mean_us"),
            p50_us: f("p50_us"),
            p99_us: f("p99_us"),
            p999_us: f("p999_us"),
            errors: u("errors"),
            ops: u("ops"),
            seconds: f("seconds"),
            first_10pct_rate: f("first_10pct_rate"),
            last_10pct_rate: f("last_10pct_rate"),
            last_error: v
                .get("last_error")
                .and_then(Value::as_str)
                .map(String::from),
            cpu_us_per_op: None,
            syncs_per_op: None,
            stages: None,
            client_cpu_us_per_op: None,
        }
    }
}

/// Runs `bin` with `args`; calls `on_progress` with every progress line; returns the result
/// line, with the load generator's own CPU time per request over the measured window. Ctrl-C
/// (`interrupted`) kills the load generator and returns an error.
pub(crate) fn run(
    bin: &Path,
    args: &[String],
    interrupted: &AtomicBool,
    mut on_progress: impl FnMut(&Value),
) -> Result<LoadResult, String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child
        .stdout
        .take()
        .ok_or("the load generator has no stdout")?;
    let pid = child.id();
    let (mut window_start, mut window_end) = (None, None);
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut result = None;
    loop {
        if interrupted.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("interrupted".into());
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    eprintln!("loadgen: {line}");
                    continue;
                };
                let event = v.get("event").and_then(Value::as_str);
                if event == Some("result") {
                    result = Some(LoadResult::from_json(&v));
                    continue;
                }
                if event == Some("window") {
                    let cpu = crate::probe::process_cpu_us(pid);
                    match v.get("edge").and_then(Value::as_str) {
                        Some("start") => window_start = cpu,
                        Some("end") => window_end = cpu,
                        _ => {}
                    }
                }
                on_progress(&v);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = reader.join();
    let status = child
        .wait()
        .map_err(|e| format!("waiting for the load generator: {e}"))?;
    if interrupted.load(Ordering::SeqCst) {
        // A terminal's Ctrl-C reaches the load generator too; say what happened.
        return Err("interrupted".into());
    }
    if let (Some(r), Some(start), Some(end)) = (&mut result, window_start, window_end)
        && r.ops > 0
        && end >= start
    {
        r.client_cpu_us_per_op = Some((end - start) / r.ops as f64);
    }
    match (status.success(), result) {
        (true, Some(r)) => Ok(r),
        (_, Some(r)) => Err(format!(
            "the load generator failed ({status}) after {} ops, {} errors (last: {})",
            r.ops,
            r.errors,
            r.last_error.unwrap_or_default()
        )),
        (_, None) => Err(format!(
            "the load generator failed ({status}) without a result"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_line_is_read() {
        let v: Value = serde_json::from_str(
            r#"{"event":"result","op":"put","clients":64,"throughput":1234.5,
                "p50_us":100,"p99_us":900,"p999_us":2000,"errors":2,"ops":12345,
                "seconds":10.0,"last_error":"boom"}"#,
        )
        .unwrap();
        let r = LoadResult::from_json(&v);
        assert_eq!(r.op, "put");
        assert_eq!((r.clients, r.errors, r.ops), (64, 2, 12345));
        assert_eq!((r.throughput, r.p50_us, r.p99_us), (1234.5, 100.0, 900.0));
        assert_eq!(r.last_error.as_deref(), Some("boom"));
        assert_eq!(r.first_10pct_rate, 0.0);
    }
}
