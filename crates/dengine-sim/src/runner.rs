//! What the two command-line runners (`dengine-sim`, `dengine-sim-node`) share: the seed
//! options, and running many seeds on worker threads with a progress line, stopping at the
//! first failure when a bug-catching run asks for it, and giving up on a seed that runs far
//! longer than any run should (a spin inside the simulated code, which nothing inside a
//! simulation can interrupt).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Parses the value of a numeric option, naming the option when it is missing or malformed.
pub fn number(name: &str, value: Option<String>) -> Result<u64, String> {
    let value = value.ok_or_else(|| format!("{name} needs a value"))?;
    value
        .parse()
        .map_err(|_| format!("{name} {value}: not a non-negative integer"))
}

/// Which seeds to run, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds {
    /// The first seed.
    pub start: u64,
    /// How many.
    pub count: u64,
    /// Worker threads.
    pub threads: usize,
    /// Stop at the first failing seed (bug-catching runs).
    pub stop_on_failure: bool,
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds {
            start: 0,
            count: 100,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            stop_on_failure: false,
        }
    }
}

impl Seeds {
    /// Takes `arg` if it is one of the seed options (`--seeds`, `--start`, `--seed`,
    /// `--threads`), reading its value from `rest`; `Ok(false)` if it is another option.
    pub fn parse(
        &mut self,
        arg: &str,
        rest: &mut impl Iterator<Item = String>,
    ) -> Result<bool, String> {
        match arg {
            "--seeds" => self.count = number(arg, rest.next())?,
            "--start" => self.start = number(arg, rest.next())?,
            "--seed" => {
                self.start = number(arg, rest.next())?;
                self.count = 1;
            }
            "--threads" => self.threads = number(arg, rest.next())?.max(1) as usize,
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The outcome of [`run_seeds`].
#[derive(Debug)]
pub struct Ran<F> {
    /// Seeds that finished.
    pub done: u64,
    /// The failures, by seed.
    pub failures: Vec<F>,
    /// Wall time.
    pub elapsed: Duration,
}

/// Runs `run` for every seed of `seeds` on worker threads, handing each success to `ok` and
/// printing each failure (`Display`), with a progress line every five seconds on stderr. A seed
/// still running after `stuck_after` of wall time ends the process with a message that names
/// it and the command replaying it (`replay` gets the seed).
pub fn run_seeds<R, F: std::fmt::Display + Send>(
    seeds: &Seeds,
    stuck_after: Duration,
    replay: impl Fn(u64) -> String + Sync,
    run: impl Fn(u64) -> Result<R, F> + Sync,
    ok: impl FnMut(u64, R) + Send,
) -> Ran<F> {
    let started = Instant::now();
    let next = AtomicU64::new(seeds.start);
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let end = seeds.start.saturating_add(seeds.count);
    let results = Mutex::new((ok, Vec::new()));
    let running: Mutex<Vec<Option<(u64, Instant)>>> = Mutex::new(vec![None; seeds.threads]);
    std::thread::scope(|scope| {
        for worker in 0..seeds.threads {
            let (next, done, stop, results, running, run) =
                (&next, &done, &stop, &results, &running, &run);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    set(running, worker, Some((seed, Instant::now())));
                    let result = run(seed);
                    set(running, worker, None);
                    let Ok(mut r) = results.lock() else { return };
                    match result {
                        Ok(report) => (r.0)(seed, report),
                        Err(failure) => {
                            eprintln!("\nFAIL {failure}");
                            r.1.push((seed, failure));
                            if seeds.stop_on_failure {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let (done, stop, running, replay) = (&done, &stop, &running, &replay);
        scope.spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let n = done.load(Ordering::Relaxed);
                if n >= seeds.count || stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(seed) = stuck(running, stuck_after) {
                    eprintln!(
                        "\nFAIL seed {seed} has run for {} s of wall time, far longer than a run \
                         takes: something loops without letting simulated time pass\n    \
                         replay: {}",
                        stuck_after.as_secs(),
                        replay(seed)
                    );
                    std::process::exit(1);
                }
                if last.elapsed() >= Duration::from_secs(5) {
                    last = Instant::now();
                    let rate = n as f64 / started.elapsed().as_secs_f64();
                    eprintln!("  {n}/{} seeds ({rate:.1}/s)", seeds.count);
                }
            }
        });
    });
    let mut failures = match results.into_inner() {
        Ok(r) => r.1,
        Err(poisoned) => poisoned.into_inner().1,
    };
    failures.sort_by_key(|(seed, _)| *seed);
    Ran {
        done: done.load(Ordering::Relaxed),
        failures: failures.into_iter().map(|(_, f)| f).collect(),
        elapsed: started.elapsed(),
    }
}

fn set(running: &Mutex<Vec<Option<(u64, Instant)>>>, worker: usize, now: Option<(u64, Instant)>) {
    if let Ok(mut r) = running.lock() {
        r[worker] = now;
    }
}

fn stuck(running: &Mutex<Vec<Option<(u64, Instant)>>>, after: Duration) -> Option<u64> {
    let r = running.lock().ok()?;
    r.iter()
        .flatten()
        .find(|(_, since)| since.elapsed() > after)
        .map(|(seed, _)| *seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_options_parse_and_refuse_bad_values() {
        let mut s = Seeds::default();
        let mut rest = vec!["7".to_string()].into_iter();
        assert_eq!(s.parse("--seed", &mut rest), Ok(true));
        assert_eq!((s.start, s.count), (7, 1));
        assert_eq!(s.parse("--nodes", &mut rest), Ok(false));
        let mut bad = vec!["x".to_string()].into_iter();
        assert!(
            s.parse("--seeds", &mut bad)
                .unwrap_err()
                .contains("--seeds x")
        );
        assert!(
            number("--seeds", None)
                .unwrap_err()
                .contains("needs a value")
        );
    }

    #[test]
    fn every_seed_runs_once_and_failures_come_back_in_seed_order() {
        let seeds = Seeds {
            start: 10,
            count: 20,
            threads: 3,
            stop_on_failure: false,
        };
        let mut ran = Vec::new();
        let result = run_seeds(
            &seeds,
            Duration::from_secs(60),
            |seed| seed.to_string(),
            |seed| if seed % 7 == 0 { Err(seed) } else { Ok(seed) },
            |_, seed| ran.push(seed),
        );
        ran.sort_unstable();
        assert_eq!(result.done, 20);
        assert_eq!(result.failures, vec![14, 21, 28]);
        assert_eq!(ran.len(), 17);
    }
}
