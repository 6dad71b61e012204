//! `cargo xtask mutants`: mutation testing of `dengine-core` with cargo-mutants. Each mutant (a
//! function body replaced, an operator swapped, a condition negated) is built and tested with
//! the core's own tests (unit and rule tests), the simulator's fixed-seed tests
//! (`crates/dengine-sim/tests/simulation.rs`, which include the injected-bug seeds) and the
//! storage conformance suite run against the core's `MemoryStore` (`dengine-storage-common`);
//! a mutant no test notices "survives". Prints the score and every survivor.

use std::path::Path;
use std::process::{Command, ExitCode};

use crate::env::workspace_root;

const USAGE: &str =
    "usage: cargo xtask mutants [--file PATH ...] [--shard K/N] [--iterate] [--list]

  --file PATH  mutate only this file of crates/dengine-core (repeatable; default: all)
  --shard K/N  only the K-th of N equal parts of the mutants (to split a run)
  --iterate    skip the mutants the previous run (in target/mutants/) caught: re-test the
               survivors after adding tests
  --list       list the mutants and exit

needs cargo-mutants (cargo install --locked cargo-mutants); the whole core takes hours on
2 cores (about 1,000 mutants); results go to target/mutants/";

/// `cargo xtask mutants ...`.
pub(crate) fn mutants(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask mutants: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<bool, String> {
    let root = workspace_root();
    let mut extra: Vec<String> = Vec::new();
    let mut list = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--file" => {
                let f = it.next().ok_or("--file needs a path")?;
                let path = if f.starts_with("crates/") {
                    f.clone()
                } else {
                    format!("crates/dengine-core/src/{f}")
                };
                if !root.join(&path).is_file() {
                    return Err(format!("no file {path}"));
                }
                extra.extend(["--file".into(), path]);
            }
            "--shard" => {
                let s = it.next().ok_or("--shard needs K/N")?;
                extra.extend(["--shard".into(), s.clone()]);
            }
            "--iterate" => extra.push("--iterate".into()),
            "--list" => list = true,
            other => return Err(format!("unknown argument {other}\n\n{USAGE}")),
        }
    }
    let installed = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        return Err("cargo-mutants is missing: cargo install --locked cargo-mutants".into());
    }
    let out = root.join("target").join("mutants");
    let mut cmd = Command::new("cargo");
    cmd.args(["mutants", "--package", "dengine-core"])
        .args([
            "--test-package",
            "dengine-core",
            "--test-package",
            "dengine-sim",
            "--test-package",
            "dengine-storage-common",
        ])
        .args(["--timeout-multiplier", "3", "--no-shuffle"])
        // Copy the sources only (fuzz/target and the like are gitignored and large).
        .args(["--gitignore", "true"])
        .arg("--output")
        .arg(&out)
        .args(&extra)
        .current_dir(&root);
    if list {
        cmd.arg("--list");
        return Ok(cmd.status().map_err(|e| e.to_string())?.success());
    }
    eprintln!(
        "xtask mutants: cargo-mutants over dengine-core (tests: dengine-core's, dengine-sim's \
         and the storage conformance suite of dengine-storage-common); progress below, \
         results in {}",
        out.display()
    );
    let status = cmd
        .status()
        .map_err(|e| format!("cannot start cargo mutants: {e}"))?;
    // 0: all caught; 2: some missed; 3: some timed out. Anything else is a failed run (a
    // usage error, or the unmutated tree failing its own tests), not a score.
    match status.code() {
        Some(0 | 2 | 3) => summarize(
            &out.join("mutants.out"),
            extra.iter().any(|a| a == "--iterate"),
        ),
        _ => Err(format!("cargo mutants did not finish its run ({status})")),
    }
}

/// Prints the score from cargo-mutants' result lists; whether every viable mutant was caught.
/// After `--iterate` the lists cover only the mutants this run tested (the others were caught
/// or unviable before, and cargo-mutants keeps them together in previously_caught.txt), so the
/// score is of those alone.
fn summarize(dir: &Path, iterate: bool) -> Result<bool, String> {
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    if !dir.is_dir() {
        return Err(format!(
            "cargo-mutants left no results in {}",
            dir.display()
        ));
    }
    let caught = read("caught.txt");
    if iterate {
        println!(
            "--iterate: this run re-tested only the survivors of the previous run and the \
             mutants whose lines moved; {} skipped as caught or unviable before",
            read("previously_caught.txt").len()
        );
    }
    let missed = read("missed.txt");
    let timeout = read("timeout.txt");
    let unviable = read("unviable.txt");
    let s = score(caught.len(), timeout.len(), missed.len());
    println!(
        "mutants: {} caught, {} timed out (caught), {} missed, {} unviable (do not build)",
        caught.len(),
        timeout.len(),
        missed.len(),
        unviable.len()
    );
    match s {
        Some(pct) => println!("score: {pct:.1}% of viable mutants caught"),
        None => println!("score: no viable mutant"),
    }
    if !missed.is_empty() {
        println!("survivors (each needs a test, or a note in docs/correctness.md):");
        for m in &missed {
            println!("  {m}");
        }
    }
    Ok(missed.is_empty())
}

/// Caught (timeouts included) over viable mutants, in percent.
fn score(caught: usize, timeout: usize, missed: usize) -> Option<f64> {
    let viable = caught + timeout + missed;
    (viable > 0).then(|| 100.0 * (caught + timeout) as f64 / viable as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_counts_timeouts_as_caught_and_ignores_unviable_mutants() {
        assert_eq!(score(0, 0, 0), None);
        assert_eq!(score(9, 0, 1), Some(90.0));
        assert_eq!(score(8, 1, 1), Some(90.0));
        assert_eq!(score(0, 0, 4), Some(0.0));
    }
}
