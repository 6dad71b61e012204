//! `cargo xtask chaos`: builds `dengine-kv` with its `fault-injection` feature and the chaos
//! harness (`tools/chaos`, package `dengine-chaos`) in release mode, in one cargo invocation
//! so both share one build of the workspace, then runs the harness with every argument
//! passed on. The harness cleans up after itself; Ctrl-C is left to it (xtask waits).

use std::process::{Command, ExitCode};

use crate::cluster::build_bins;

pub(crate) fn chaos(args: &[String]) -> ExitCode {
    eprintln!(
        "xtask chaos: building dengine-kv (feature fault-injection) and dengine-chaos (release)"
    );
    let bins = build_bins(
        true,
        &[
            ("dengine-kv", "dengine-kv"),
            ("dengine-chaos", "dengine-chaos"),
        ],
        &["--features", "dengine-kv/fault-injection"],
    )
    .and_then(|b| match <[std::path::PathBuf; 2]>::try_from(b) {
        Ok([server, harness]) => Ok((server, harness)),
        Err(_) => Err("the build did not name both binaries".to_string()),
    });
    let (server, harness) = match bins {
        Ok(b) => b,
        Err(e) => {
            eprintln!("xtask chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C reaches the harness too (same process group); it stops and removes everything,
    // so xtask only waits for it instead of dying first.
    let _interrupted = crate::env::interrupt_flag("chaos");
    let status = Command::new(harness)
        .arg("--server-bin")
        .arg(server)
        .args(args)
        .status();
    match status {
        Ok(s) => match s.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("xtask chaos: cannot run the harness: {e}");
            ExitCode::FAILURE
        }
    }
}
