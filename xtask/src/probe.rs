//! What the servers of a benchmark spend: CPU time of their processes (`/proc/PID/stat`) and
//! the syncs they report on their Prometheus `/metrics` endpoints, sampled at the edges of the
//! load generator's measured window.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// The processes and metrics endpoints of one system under test.
pub(crate) struct ServerProbe {
    /// The server processes.
    pub(crate) pids: Vec<u32>,
    /// `host:port` of each server's `/metrics` endpoint.
    pub(crate) metrics: Vec<String>,
    /// The counter that counts the system's log syncs (summed over label sets and servers).
    pub(crate) sync_metric: &'static str,
    /// Whether the servers export dengine's [`STAGE_HISTOGRAMS`] (and `dengine_is_leader`).
    pub(crate) stages: bool,
}

/// The dengine histograms that split a write into stages: on the leader, proposal to
/// response, proposal to commit, and its log write; on each member, its log write.
pub(crate) const STAGE_HISTOGRAMS: [&str; 3] = [
    "dengine_proposal_latency_seconds",
    "dengine_commit_latency_seconds",
    "dengine_append_latency_seconds",
];

/// One reading of a [`ServerProbe`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Sample {
    /// User + system CPU time of all server processes, µs.
    pub(crate) cpu_us: f64,
    /// The sync counter summed over the servers; `None` if any endpoint did not answer.
    pub(crate) syncs: Option<f64>,
    /// Per server (with `stages`): whether it leads, and `(sum, count)` of each of
    /// [`STAGE_HISTOGRAMS`]; `None` if it did not answer.
    pub(crate) servers: Vec<Option<ServerReading>>,
}

/// One server's part of a [`Sample`]: whether it leads, and `(sum, count)` of each of
/// [`STAGE_HISTOGRAMS`].
pub(crate) type ServerReading = (bool, [(f64, f64); 3]);

/// Mean durations of a write's stages over a window, in µs (see [`stages`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stages {
    /// Leader: from `propose` to the response (reaching its log, commit, apply).
    pub(crate) leader_proposal_us: f64,
    /// Leader: from the entry entering its log to its commit.
    pub(crate) leader_commit_us: f64,
    /// Leader: one log write, with its sync.
    pub(crate) leader_append_us: f64,
    /// Followers: one log write, with its sync.
    pub(crate) follower_append_us: f64,
}

/// The stage means between two samples, if one server led at both ends and every figure
/// has at least one observation in the window.
pub(crate) fn stages(before: &Sample, after: &Sample) -> Option<Stages> {
    let leader = after
        .servers
        .iter()
        .position(|s| s.is_some_and(|(leads, _)| leads))?;
    let delta = |server: usize, h: usize| -> Option<(f64, f64)> {
        let (_, b) = before.servers.get(server).copied().flatten()?;
        let (_, a) = after.servers.get(server).copied().flatten()?;
        Some((a[h].0 - b[h].0, a[h].1 - b[h].1))
    };
    let mean = |(sum, count): (f64, f64)| (count > 0.0).then(|| sum / count * 1e6);
    let (mut f_sum, mut f_count) = (0.0, 0.0);
    for server in (0..after.servers.len()).filter(|&s| s != leader) {
        let (sum, count) = delta(server, 2)?;
        f_sum += sum;
        f_count += count;
    }
    Some(Stages {
        leader_proposal_us: mean(delta(leader, 0)?)?,
        leader_commit_us: mean(delta(leader, 1)?)?,
        leader_append_us: mean(delta(leader, 2)?)?,
        follower_append_us: mean((f_sum, f_count))?,
    })
}

impl ServerProbe {
    /// Reads CPU time and sync counters now.
    pub(crate) fn sample(&self) -> Sample {
        let cpu_us = self
            .pids
            .iter()
            .filter_map(|&pid| process_cpu_us(pid))
            .sum();
        let texts: Vec<Option<String>> = self.metrics.iter().map(|addr| scrape(addr)).collect();
        let syncs = texts
            .iter()
            .map(|text| text.as_ref().map(|t| counter_sum(t, self.sync_metric)))
            .sum::<Option<f64>>();
        let servers = if self.stages {
            texts
                .iter()
                .map(|text| {
                    let t = text.as_ref()?;
                    let histogram = |name: &str| {
                        (
                            counter_sum(t, &format!("{name}_sum")),
                            counter_sum(t, &format!("{name}_count")),
                        )
                    };
                    Some((
                        counter_sum(t, "dengine_is_leader") > 0.0,
                        STAGE_HISTOGRAMS.map(histogram),
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        Sample {
            cpu_us,
            syncs,
            servers,
        }
    }
}

/// Per operation between two samples: (CPU µs, syncs).
pub(crate) fn per_op(before: &Sample, after: &Sample, ops: u64) -> (Option<f64>, Option<f64>) {
    if ops == 0 {
        return (None, None);
    }
    let n = ops as f64;
    let cpu = (after.cpu_us >= before.cpu_us).then(|| (after.cpu_us - before.cpu_us) / n);
    let syncs = match (before.syncs, after.syncs) {
        (Some(b), Some(a)) if a >= b => Some((a - b) / n),
        _ => None,
    };
    (cpu, syncs)
}

/// CPU time (user + system) `pid` has used so far, µs.
pub(crate) fn process_cpu_us(pid: u32) -> Option<f64> {
    cpu_ticks(pid).map(|t| t as f64 * 1e6 / clock_ticks_per_second())
}

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`, counted
/// after the parenthesised command name, which may contain spaces).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (xtask links no libc binding); 100, the value on
/// every Linux architecture in practice, if that fails.
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The body of `GET /metrics` from `addr`, or `None`.
pub(crate) fn scrape(addr: &str) -> Option<String> {
    http_get(addr, "/metrics")
}

/// The body of `GET path` (HTTP/1.0) from `addr` if it answered 200, or `None`.
pub(crate) fn http_get(addr: &str, path: &str) -> Option<String> {
    let socket = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&socket, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let ok = head
        .lines()
        .next()
        .is_some_and(|l| l.starts_with("HTTP/1.") && l.contains(" 200"));
    ok.then(|| body.to_string())
}

/// The sum of every sample of counter `name` (any labels) in Prometheus text format.
pub(crate) fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name 12` or `name{a="b"} 12`, not `name_other 12`.
            let value = match rest.chars().next()? {
                ' ' => rest,
                '{' => &rest[rest.find('}')? + 1..],
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_fields_are_read_after_a_name_with_spaces() {
        let stat = "1234 (dengine kv) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 75 0 0 20 0 9 0 \
                    100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(325));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn counters_are_summed_over_labels_and_not_confused_with_longer_names() {
        let text = "# HELP x\n# TYPE etcd_disk_wal_fsync_duration_seconds histogram\n\
                    etcd_disk_wal_fsync_duration_seconds_count 40\n\
                    etcd_disk_wal_fsync_duration_seconds_count_other 7\n\
                    dengine_log_syncs_total{node=\"1\"} 3\n\
                    dengine_log_syncs_total{node=\"2\"} 4.5\n";
        assert_eq!(
            counter_sum(text, "etcd_disk_wal_fsync_duration_seconds_count"),
            40.0
        );
        assert_eq!(counter_sum(text, "dengine_log_syncs_total"), 7.5);
        assert_eq!(counter_sum(text, "missing"), 0.0);
    }

    #[test]
    fn per_op_divides_the_differences() {
        let a = Sample {
            cpu_us: 1_000.0,
            syncs: Some(10.0),
            servers: Vec::new(),
        };
        let b = Sample {
            cpu_us: 5_000.0,
            syncs: Some(30.0),
            servers: Vec::new(),
        };
        assert_eq!(per_op(&a, &b, 100), (Some(40.0), Some(0.2)));
        assert_eq!(per_op(&a, &b, 0), (None, None));
        let no_metrics = Sample {
            syncs: None,
            ..b.clone()
        };
        assert_eq!(per_op(&a, &no_metrics, 100), (Some(40.0), None));
    }

    #[test]
    fn stages_are_the_leaders_and_the_followers_means_over_the_window() {
        let at = |leader: usize, scale: f64| Sample {
            servers: (0..3)
                .map(|s| {
                    // (sum s, count) of proposal, commit and append: the leader's take 1 ms,
                    // 0.6 ms, 0.3 ms per observation; the followers' appends 0.2 ms.
                    let per = if s == leader {
                        [1e-3, 0.6e-3, 0.3e-3]
                    } else {
                        [0.0, 0.0, 0.2e-3]
                    };
                    Some((s == leader, per.map(|p| (p * 10.0 * scale, 10.0 * scale))))
                })
                .collect(),
            ..Sample::default()
        };
        let s = stages(&at(1, 1.0), &at(1, 3.0)).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(s.leader_proposal_us, 1000.0), "{s:?}");
        assert!(close(s.leader_commit_us, 600.0), "{s:?}");
        assert!(close(s.leader_append_us, 300.0), "{s:?}");
        assert!(close(s.follower_append_us, 200.0), "{s:?}");
        // No leader, or a server that did not answer: no stages.
        let mut lost = at(1, 3.0);
        lost.servers[2] = None;
        assert_eq!(stages(&at(1, 1.0), &lost), None);
        assert_eq!(stages(&Sample::default(), &Sample::default()), None);
    }

    #[test]
    fn the_probe_reads_this_process_cpu() {
        let probe = ServerProbe {
            pids: vec![std::process::id()],
            metrics: Vec::new(),
            sync_metric: "x",
            stages: false,
        };
        let before = probe.sample();
        // Burn a little CPU.
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = probe.sample();
        assert!(after.cpu_us > before.cpu_us, "{before:?} {after:?}");
        assert_eq!(after.syncs, Some(0.0));
    }
}
