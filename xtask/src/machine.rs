//! What the end-to-end benchmarks ran on, printed with their results: cores, memory, CPU
//! model, kernel, the raw `write + fdatasync` rate of the data directory's disk, and what
//! each process uses (RSS, disk) while the soak runs.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// A few lines describing this machine; `data_dir` is where the benchmark keeps its data
/// (its disk's raw fdatasync rate is measured for one second).
pub(crate) fn describe(data_dir: &Path) -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let sync = match raw_fdatasync_rate(data_dir, Duration::from_secs(1)) {
        Ok((rate, median)) => format!(
            "{rate:.0}/s (median {:.0} µs), 4 KiB appends, 1 s",
            median.as_secs_f64() * 1e6
        ),
        Err(e) => format!("not measured: {e}"),
    };
    vec![
        format!("cores: {cores}, memory: {mem_gib:.1} GiB, CPU: {cpu}"),
        format!(
            "kernel: {}, load average at the start: {}",
            kernel.trim(),
            load.join(" ")
        ),
        format!("raw write+fdatasync in {}: {sync}", data_dir.display()),
    ]
}

/// Appends 4 KiB and `fdatasync`s, as often as possible for `duration`, in a scratch file
/// under `dir` (removed after): syncs per second and the median sync.
fn raw_fdatasync_rate(dir: &Path, duration: Duration) -> Result<(f64, Duration), String> {
    let path = dir.join(format!("raw-fdatasync-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::new();
    let started = Instant::now();
    let result = (|| {
        while started.elapsed() < duration {
            let t = Instant::now();
            file.write_all(&block).map_err(|e| e.to_string())?;
            file.sync_data().map_err(|e| e.to_string())?;
            samples.push(t.elapsed());
        }
        Ok::<(), String>(())
    })();
    let _ = std::fs::remove_file(&path);
    result?;
    samples.sort_unstable();
    let median = samples.get(samples.len() / 2).copied().unwrap_or_default();
    Ok((
        samples.len() as f64 / started.elapsed().as_secs_f64(),
        median,
    ))
}

/// Resident set size of process `pid`, bytes (0 if it cannot be read).
pub(crate) fn rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:") * 1024
}

/// The highest resident set size of process `pid` since it started or since
/// [`reset_peak_rss`], bytes (0 if it cannot be read).
pub(crate) fn peak_rss_bytes(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:") * 1024
}

/// Starts the peak of [`peak_rss_bytes`] over from the current RSS (Linux `clear_refs` 5).
pub(crate) fn reset_peak_rss(pid: u32) -> Result<(), String> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .map_err(|e| format!("cannot reset the peak RSS of process {pid}: {e}"))
}

/// A `kB` field of `/proc/PID/status` (0 if it cannot be read).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
}

/// Disk space used by the files under `dir` (allocated blocks, as `du` counts), bytes.
pub(crate) fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_and_a_file_on_disk_are_seen() {
        let me = std::process::id();
        // RSS first: the peak, read after it, can only have grown since (other tests of this
        // binary allocate on other threads meanwhile).
        let rss = rss_bytes(me);
        assert!(rss > 0);
        assert!(peak_rss_bytes(me) >= rss);
        // Touch 64 MiB, let it go: the peak keeps it until it is reset.
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        drop(big);
        assert!(peak_rss_bytes(me) >= 64 << 20);
        reset_peak_rss(me).unwrap();
        assert!(
            peak_rss_bytes(me) < 64 << 20,
            "the peak starts over at the reset: {}",
            peak_rss_bytes(me)
        );
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("f"), vec![1u8; 100_000]).unwrap();
        let used = disk_bytes(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(used >= 100_000, "{used}");
    }
}
