//! The process metrics every Prometheus client library exports (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`) and `dengine_build_info`, rendered at
//! scrape time from `/proc/self`. On a system without `/proc` only the build info is rendered.

use std::fmt::Write as _;

/// `/proc` reports CPU times and start times in USER_HZ ticks, which Linux fixes at 100 for
/// every architecture's user-visible interfaces.
const USER_HZ: f64 = 100.0;

/// The exposition text of the process metrics and the build info, to append to a scrape.
pub(crate) fn render() -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    let field = |i: usize| {
        fields
            .as_ref()
            .and_then(|f| f.get(i))
            .and_then(|v| v.parse::<f64>().ok())
    };
    // Fields counted from `state` (the first after the command name), so `utime` is 11.
    let cpu = field(11).zip(field(12)).map(|(u, s)| (u + s) / USER_HZ);
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        cpu,
    );
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let kib = |key: &str| {
        status
            .as_deref()
            .and_then(|s| status_kib(s, key))
            .map(|k| k * 1024.0)
    };
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        kib("VmRSS:"),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        kib("VmSize:"),
    );
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        open_fds,
    );
    let limits = std::fs::read_to_string("/proc/self/limits").ok();
    metric(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        limits.as_deref().and_then(max_open_files),
    );
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    let start = field(19)
        .zip(boot_time)
        .map(|(ticks, boot)| boot + ticks / USER_HZ);
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        start,
    );
    let _ = write!(
        out,
        "# HELP dengine_build_info The dengine version this process runs; always 1.\n\
         # TYPE dengine_build_info gauge\n\
         dengine_build_info{{version=\"{}\"}} 1\n",
        env!("CARGO_PKG_VERSION")
    );
    out
}

/// The fields of `/proc/self/stat` after the command name (which is in parentheses and may
/// itself hold spaces and parentheses), starting with the state.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// A `Key:   1234 kB` line of `/proc/self/status`, in KiB.
fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The soft limit of `Max open files` in `/proc/self/limits` (none when unlimited).
fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_are_parsed_as_the_kernel_writes_them() {
        // A command name with a space and a parenthesis must not shift the fields.
        let stat = "4242 (dengine (kv) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 \
                    9 0 123456 1048576 300 18446744073709551615";
        let f = stat_fields(stat).unwrap();
        assert_eq!((f[0], f[11], f[12], f[19]), ("S", "250", "50", "123456"));
        let status = "Name:\tdengine-kv\nVmSize:\t  204800 kB\nVmRSS:\t   13000 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(13000.0));
        assert_eq!(status_kib(status, "VmSize:"), Some(204800.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024.0));
    }

    #[test]
    fn this_process_is_rendered() {
        let text = render();
        assert!(text.contains("dengine_build_info{version=\""), "{text}");
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_virtual_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
            ] {
                let value: f64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name} ")))
                    .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
                    .parse()
                    .unwrap();
                assert!(value >= 0.0, "{name} = {value}");
                if name != "process_cpu_seconds_total" {
                    assert!(value > 0.0, "{name} = {value}");
                }
            }
            let start: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("process_start_time_seconds "))
                .unwrap()
                .parse()
                .unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!(
                start <= now + 1.0 && start > now - 86_400.0 * 365.0,
                "{start} vs {now}"
            );
        }
    }
}
