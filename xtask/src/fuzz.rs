//! `cargo xtask fuzz`: builds the cargo-fuzz crate in `fuzz/` (nightly, release, address
//! sanitizer) and runs its libFuzzer targets, each for a fixed time, starting from the
//! committed corpus `fuzz/corpus/<target>/`. New inputs go to `target/fuzz/corpus/<target>/`
//! (kept between runs, never committed); a finding is saved under
//! `target/fuzz/artifacts/<target>/` and fails the command with the way to reproduce it.
//! The target bodies live in `crates/dengine-fuzz`, whose tests replay the committed corpora.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::env::workspace_root;

const USAGE: &str = "usage: cargo xtask fuzz [TARGET ...] [--seconds N] [--list] [--seeds]

  TARGET       one or more of the targets in fuzz/fuzz_targets/ (default: all)
  --seconds N  how long each target runs (default 60)
  --list       print the targets and exit
  --seeds      rewrite the committed seed corpora (fuzz/corpus/<target>/seed-*) from
               dengine-fuzz's seed functions, then exit

needs the nightly toolchain and cargo-fuzz (cargo install --locked cargo-fuzz)";

/// Parsed options.
#[derive(Debug, PartialEq)]
struct Options {
    targets: Vec<String>,
    seconds: u64,
    list: bool,
    seeds: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        targets: Vec::new(),
        seconds: 60,
        list: false,
        seeds: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => {
                let v = it.next().ok_or("--seconds needs a value")?;
                o.seconds = v
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .ok_or_else(|| format!("--seconds {v}: expected a whole number above 0"))?;
            }
            "--list" => o.list = true,
            "--seeds" => o.seeds = true,
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag}")),
            target => o.targets.push(target.to_string()),
        }
    }
    Ok(o)
}

/// The targets: the files of `fuzz/fuzz_targets/`, sorted.
fn all_targets(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("fuzz").join("fuzz_targets");
    let items = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names: Vec<String> = items
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// `cargo xtask fuzz ...`.
pub(crate) fn fuzz(args: &[String]) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask fuzz: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let o = parse(args).map_err(|e| format!("{e}\n\n{USAGE}"))?;
    let root = workspace_root();
    let all = all_targets(&root)?;
    if o.list {
        for t in &all {
            println!("{t}");
        }
        return Ok(());
    }
    if o.seeds {
        return status(
            cargo()
                .args([
                    "run",
                    "--quiet",
                    "-p",
                    "dengine-fuzz",
                    "--example",
                    "write_seeds",
                ])
                .current_dir(&root),
            "writing the seed corpora",
        );
    }
    let targets = if o.targets.is_empty() {
        all.clone()
    } else {
        o.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        return Err(format!(
            "no target `{unknown}`; the targets are: {}",
            all.join(", ")
        ));
    }
    check_tools()?;
    let fuzz_dir = root.join("fuzz");
    eprintln!(
        "xtask fuzz: building {} target(s) (nightly, release, address sanitizer; minutes the \
         first time)",
        all.len()
    );
    status(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build", "-O"])
            .current_dir(&fuzz_dir),
        "building the fuzz targets",
    )?;
    let work = root.join("target").join("fuzz");
    let started = Instant::now();
    let mut findings = Vec::new();
    for (i, target) in targets.iter().enumerate() {
        eprintln!(
            "xtask fuzz: [{}/{}] {target} for {} s",
            i + 1,
            targets.len(),
            o.seconds
        );
        match run_target(&fuzz_dir, &work, target, o.seconds)? {
            Outcome::Clean(stats) => eprintln!("xtask fuzz: {target}: no finding; {stats}"),
            Outcome::Finding(text) => {
                eprintln!("xtask fuzz: {target}: FINDING\n{text}");
                findings.push(target.clone());
            }
        }
    }
    let took = started.elapsed().as_secs();
    if findings.is_empty() {
        eprintln!(
            "xtask fuzz: {} target(s), {took} s, no finding",
            targets.len()
        );
        Ok(())
    } else {
        Err(format!(
            "findings in {} (reproducers under {})",
            findings.join(", "),
            work.join("artifacts").display()
        ))
    }
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn status(cmd: &mut Command, what: &str) -> Result<(), String> {
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{what} failed ({s})")),
        Err(e) => Err(format!("{what}: cannot start the command: {e}")),
    }
}

/// The nightly toolchain and cargo-fuzz are there, or an error saying how to get them.
fn check_tools() -> Result<(), String> {
    let works = |args: &[&str]| {
        Command::new("cargo")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(&["+nightly", "--version"]) {
        return Err(
            "the nightly toolchain is missing (`cargo +nightly --version` fails); \
                    libFuzzer's instrumentation needs it (rustup toolchain install nightly)"
                .into(),
        );
    }
    if !works(&["+nightly", "fuzz", "--version"]) {
        return Err("cargo-fuzz is missing: cargo install --locked cargo-fuzz".into());
    }
    Ok(())
}

enum Outcome {
    /// The run's last statistics line.
    Clean(String),
    /// The end of libFuzzer's report and how to reproduce.
    Finding(String),
}

fn run_target(fuzz_dir: &Path, work: &Path, target: &str, seconds: u64) -> Result<Outcome, String> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    for d in [&corpus, &artifacts] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let log_path = work.join(format!("{target}.log"));
    let log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let seeds: PathBuf = fuzz_dir.join("corpus").join(target);
    let mut artifact_prefix = artifacts.clone().into_os_string();
    artifact_prefix.push("/");
    let mut prefix_arg = std::ffi::OsString::from("-artifact_prefix=");
    prefix_arg.push(&artifact_prefix);
    let mut child = Command::new("cargo")
        .args(["+nightly", "fuzz", "run", "-O", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // An input that takes this long is a hang (a spin), reported as a finding.
        .arg("-timeout=60")
        .arg("-rss_limit_mb=4096")
        .arg("-print_final_stats=1")
        .arg(prefix_arg)
        .current_dir(fuzz_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start cargo fuzz: {e}"))?;
    let started = Instant::now();
    let mut next_note = 30;
    let exit = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        let elapsed = started.elapsed().as_secs();
        if elapsed >= next_note {
            eprintln!("xtask fuzz: {target}: {elapsed}/{seconds} s");
            next_note += 30;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if exit.success() {
        let stats = text
            .lines()
            .rev()
            .find(|l| l.contains("DONE") && l.contains("cov:"))
            .map(summarize)
            .unwrap_or_else(|| "no statistics line".into());
        return Ok(Outcome::Clean(stats));
    }
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Ok(Outcome::Finding(format!(
        "{}\n(full log: {}; replay a saved input with `cargo +nightly fuzz run {target} \
         <file>` in fuzz/, or on stable by copying it into fuzz/corpus/{target}/ and running \
         `cargo test -p dengine-fuzz`, which then keeps it as a regression test)",
        tail.join("\n"),
        log_path.display()
    )))
}

/// `#24388 DONE cov: 2612 ft: 11918 corp: 1237/271Kb lim: 319 exec/s: 1161 rss: 450Mb` →
/// `24388 runs, 1161/s, coverage 2612 edges (11918 features), corpus 1237 inputs`.
fn summarize(line: &str) -> String {
    let field = |name: &str| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == name)?;
        words.next().map(str::to_owned)
    };
    let runs = line
        .split_whitespace()
        .next()
        .unwrap_or("#?")
        .trim_start_matches('#')
        .to_owned();
    let corpus = field("corp:").unwrap_or_default();
    format!(
        "{runs} runs, {}/s, coverage {} edges ({} features), corpus {} inputs",
        field("exec/s:").unwrap_or_default(),
        field("cov:").unwrap_or_default(),
        field("ft:").unwrap_or_default(),
        corpus.split('/').next().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args("kv peer --seconds 30")).unwrap();
        assert_eq!(o.targets, ["kv", "peer"]);
        assert_eq!(o.seconds, 30);
        assert!(!o.list && !o.seeds);
        assert_eq!(parse(&[]).unwrap().seconds, 60);
        assert!(parse(&args("--seconds 0")).is_err());
        assert!(parse(&args("--seconds")).is_err());
        assert!(parse(&args("--fast")).is_err());
        assert!(parse(&args("--list")).unwrap().list);
    }

    #[test]
    fn the_targets_are_the_files_of_fuzz_targets() {
        let targets = all_targets(&workspace_root()).unwrap();
        assert!(targets.contains(&"protocol".to_string()), "{targets:?}");
        assert!(targets.len() >= 8, "{targets:?}");
    }

    #[test]
    fn a_statistics_line_is_summarized() {
        let line = "#24388\tDONE   cov: 2612 ft: 11918 corp: 1237/271Kb lim: 319 exec/s: 1161 \
                    rss: 450Mb";
        assert_eq!(
            summarize(line),
            "24388 runs, 1161/s, coverage 2612 edges (11918 features), corpus 1237 inputs"
        );
    }
}
