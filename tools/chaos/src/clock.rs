//! Clock faults: every node runs with libfaketime preloaded (Debian's `faketime` package),
//! which makes the process's clocks — `CLOCK_MONOTONIC`, behind Rust's and tokio's
//! `Instant`, as well as the wall clock — run at a rate and an offset read from a file of its
//! own. The harness gives each host a fixed rate for the run (a fast or slow clock, within
//! [`MAX_SKEW_PPM`]) and makes clocks jump forward by raising the offset.
//!
//! What the lease reads of the run can take: a leader's lease is `election_timeout −
//! lease_drift` = 500 − [`LEASE_DRIFT_MS`] = 300 ms of *its* clock, counted in 50 ms ticks from
//! the heartbeat round a quorum answered; a follower grants no vote before 10 ticks of *its*
//! clock after it received that heartbeat, at least 450 ms after it was sent. The lease is safe
//! while 300 ms on the slowest clock end before 450 ms on the fastest, less the largest jump of
//! a follower's clock: 300 / 0.95 ≈ 316 ms < 450 / 1.05 − [`MAX_FOLLOWER_JUMP_MS`] ≈ 329 ms.
//! A leader's clock may jump by seconds: its lease only ends early. (A jump forward is all a
//! monotonic clock can do; a real one never jumps back.) libfaketime reads the file at most
//! once a second, so a jump lands up to a second after it is written: a leader that lost its
//! leadership in that second and already acknowledged its successor's heartbeats would take
//! a seconds-long jump as a follower, outside the margin. The harness picks the leader of
//! the highest term to make that unlikely; it is a hazard of the harness to keep in mind
//! when a run reports a stale read right after a leader's clock jump.

use std::path::{Path, PathBuf};

use dengine_sim::rng::SimRng;

/// The nodes' `raft.tick_ms` (dengine's default, set explicitly for the bound above).
pub(crate) const TICK_MS: u64 = 50;
/// The nodes' `raft.election_timeout_ms` (dengine's default, likewise).
pub(crate) const ELECTION_TIMEOUT_MS: u64 = 500;
/// The drift margin the nodes run with (`raft.lease_drift_ms`), chosen for the bound above.
pub(crate) const LEASE_DRIFT_MS: u64 = 200;
/// Largest deviation of a host's clock rate from real time, in parts per million (5 %).
pub(crate) const MAX_SKEW_PPM: u64 = 50_000;
/// Largest forward jump of a follower's clock, in milliseconds.
pub(crate) const MAX_FOLLOWER_JUMP_MS: u64 = 100;
/// Range of a leader's clock jump, in milliseconds: past the lease and the election timeout.
pub(crate) const LEADER_JUMP_MS: (u64, u64) = (300, 3_000);

/// Where libfaketime is looked for (Debian's and others' layouts); the multi-threaded build
/// first, since the server is multi-threaded.
const CANDIDATES: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
    "/usr/lib64/faketime/libfaketimeMT.so.1",
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
];

/// The libfaketime library of this machine, or what to install.
pub(crate) fn find_library() -> Result<PathBuf, String> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            format!(
                "libfaketime not found (looked in {}); install it (Debian: apt-get install -y \
                 faketime) or run without clock faults (--no-clock-faults)",
                CANDIDATES.join(", ")
            )
        })
}

/// Every host's clock: its rate for the run and how far it has jumped.
#[derive(Debug)]
pub(crate) struct Clocks {
    library: PathBuf,
    dir: PathBuf,
    /// Per host (index `host - 1`): the rate in parts per million of real time.
    rates_ppm: Vec<u64>,
    /// Per host: the sum of its jumps so far, in milliseconds.
    offsets_ms: Vec<u64>,
}

impl Clocks {
    /// Clocks for `hosts` hosts, with rates drawn from `seed`, their files in `dir`.
    pub(crate) fn new(
        library: PathBuf,
        dir: &Path,
        hosts: usize,
        seed: u64,
    ) -> Result<Clocks, String> {
        let mut rng = SimRng::new(seed ^ 0xC10C_C10C);
        let rates_ppm = (0..hosts)
            .map(|_| 1_000_000 - MAX_SKEW_PPM + rng.below(2 * MAX_SKEW_PPM + 1))
            .collect();
        let clocks = Clocks {
            library,
            dir: dir.to_path_buf(),
            rates_ppm,
            offsets_ms: vec![0; hosts],
        };
        for host in 1..=hosts {
            clocks.write(host)?;
        }
        Ok(clocks)
    }

    fn file(&self, host: usize) -> PathBuf {
        self.dir.join(format!("clock-{host}"))
    }

    /// The environment that puts host `host`'s process on its clock. libfaketime re-reads
    /// the file at most once a second, so a jump takes effect within a second.
    pub(crate) fn env(&self, host: usize) -> Vec<(&'static str, std::ffi::OsString)> {
        vec![
            ("LD_PRELOAD", self.library.clone().into_os_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file(host).into_os_string()),
            ("FAKETIME_CACHE_DURATION", "1".into()),
        ]
    }

    /// What libfaketime reads: `+<offset seconds> x<rate>`.
    fn spec(&self, host: usize) -> String {
        let offset = self.offsets_ms[host - 1];
        let rate = self.rates_ppm[host - 1];
        format!(
            "+{}.{:03} x{}.{:06}\n",
            offset / 1000,
            offset % 1000,
            rate / 1_000_000,
            rate % 1_000_000
        )
    }

    /// Writes host `host`'s file, through a rename so that no reader sees it half written.
    fn write(&self, host: usize) -> Result<(), String> {
        let file = self.file(host);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, self.spec(host))
            .and_then(|()| std::fs::rename(&tmp, &file))
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
    }

    /// Moves host `host`'s clock forward by `ms`.
    pub(crate) fn jump(&mut self, host: usize, ms: u64) -> Result<(), String> {
        self.offsets_ms[host - 1] += ms;
        self.write(host)
    }

    /// The rates for the run's header, e.g. `host 1 x1.0312`.
    pub(crate) fn describe(&self) -> String {
        self.rates_ppm
            .iter()
            .enumerate()
            .map(|(i, r)| format!("host {} x{:.4}", i + 1, *r as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_stay_within_the_bound_and_files_say_what_libfaketime_reads() {
        let dir = std::env::temp_dir().join(format!("dengine-clock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut clocks = Clocks::new(PathBuf::from("/lib.so"), &dir, 5, 7).unwrap();
        assert!(
            clocks
                .rates_ppm
                .iter()
                .all(|r| r.abs_diff(1_000_000) <= MAX_SKEW_PPM)
        );
        assert_ne!(clocks.rates_ppm[0], clocks.rates_ppm[1]);
        clocks.jump(2, 1_250).unwrap();
        clocks.jump(2, 5).unwrap();
        let text = std::fs::read_to_string(dir.join("clock-2")).unwrap();
        let rate = clocks.rates_ppm[1];
        assert_eq!(
            text,
            format!("+1.255 x{}.{:06}\n", rate / 1_000_000, rate % 1_000_000)
        );
        assert!(
            std::fs::read_to_string(dir.join("clock-1"))
                .unwrap()
                .starts_with("+0.000 x")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The margin the module docs work out, from the constants, so that changing one of them
    /// cannot leave the bound silently broken.
    #[test]
    fn the_clock_faults_stay_inside_the_lease_margin() {
        let (election, tick) = (ELECTION_TIMEOUT_MS as f64, TICK_MS as f64);
        let lease = election - LEASE_DRIFT_MS as f64;
        let skew = MAX_SKEW_PPM as f64 / 1e6;
        let slowest_lease_end = lease / (1.0 - skew);
        let fastest_vote = (election - tick) / (1.0 + skew) - MAX_FOLLOWER_JUMP_MS as f64;
        assert!(
            slowest_lease_end < fastest_vote,
            "{slowest_lease_end} ms >= {fastest_vote} ms"
        );
    }
}
