//! Where xtask runs and how it is stopped: the workspace root, and a Ctrl-C flag.

use std::path::PathBuf;

/// The workspace root: the nearest directory, from the current one upward, whose
/// `Cargo.toml` declares the workspace (as cargo itself finds it). Falls back to where this
/// crate was built.
pub(crate) fn workspace_root() -> PathBuf {
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            let manifest = dir.join("Cargo.toml");
            if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
                return dir;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(PathBuf::from)
        .unwrap_or(manifest_dir)
}

/// A flag that Ctrl-C sets (instead of killing xtask), so a command can stop and remove what
/// it started; `what` names the command if the handler cannot be installed.
pub(crate) fn interrupt_flag(what: &str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let interrupted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = interrupted.clone();
    if let Err(e) =
        ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
    {
        eprintln!("{what}: cannot install the Ctrl-C handler: {e}");
    }
    interrupted
}

/// The body of a `cargo xtask bench NAME` command: parses the options (printing the error and
/// `usage` if they are wrong), runs with Ctrl-C caught, and turns the outcome into an exit
/// code: `Ok(true)` success, `Ok(false)` a failure `run` has already explained, `Err` printed
/// as "bench NAME FAILED".
pub(crate) fn bench_main<O>(
    name: &str,
    usage: &str,
    args: &[String],
    parse: impl FnOnce(&[String]) -> Result<O, String>,
    run: impl FnOnce(&O, &std::sync::atomic::AtomicBool) -> Result<bool, String>,
) -> std::process::ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench {name}: {e}\n{usage}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let interrupted = interrupt_flag(&format!("bench {name}"));
    match run(&opts, &interrupted) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("\nbench {name} FAILED: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
