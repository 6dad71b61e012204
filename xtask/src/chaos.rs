//! `cargo xtask chaos`: builds `dengine-kv` with its `fault-injection` feature and the chaos
//! harness (`tools/chaos`, package `dengine-chaos`) in release mode, in one cargo invocation
//! so both share one build of the workspace, then runs the harness with every argument
//! passed on. The harness cleans up after itself; Ctrl-C is left to it (xtask waits).

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{built_binary, cargo_build};

pub(crate) fn chaos(args: &[String]) -> ExitCode {
    eprintln!(
        "xtask chaos: building dengine-kv (feature fault-injection) and dengine-chaos (release)"
    );
    let target = [
        "-p",
        "dengine-kv",
        "-p",
        "dengine-chaos",
        "--features",
        "dengine-kv/fault-injection",
    ];
    let bins = cargo_build(true, &target, "the chaos harness").and_then(|()| {
        Ok((
            built_binary(true, "dengine-kv")?,
            built_binary(true, "dengine-chaos")?,
        ))
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
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
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
