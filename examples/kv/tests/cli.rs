//! `dengine-kv serve` reads the environment variables docs/configuration.md reserves for the
//! binary: `DENGINE_CONFIG` (the settings file, as `--config`) and `DENGINE_LOG` (the log
//! filter, as `--log`). Each case is a start that must be refused before anything listens, so
//! the refusal's message proves the variable was read.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `dengine-kv serve` with `args` and `env`, expecting it to exit within 30 s (it is
/// killed and the test fails otherwise: a start that should have been refused is serving).
fn serve_refused(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dengine-kv"));
    cmd.arg("serve")
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("DENGINE_CONFIG")
        .env_remove("DENGINE_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("dengine-kv starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("waiting for dengine-kv").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("the killed dengine-kv is reaped");
            panic!(
                "dengine-kv kept running for 30 s instead of refusing to start; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("dengine-kv's output");
    assert!(
        !out.status.success(),
        "dengine-kv accepted a start that must be refused"
    );
    out
}

#[test]
fn dengine_config_names_the_settings_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("from-env.toml");
    std::fs::write(&file, "[node]\nid = 1\nno_such_setting = 5\n").unwrap();
    let data = dir.path().join("data");
    let out = serve_refused(
        &["--data-dir", data.to_str().unwrap()],
        &[("DENGINE_CONFIG", file.to_str().unwrap())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("from-env.toml"),
        "the file is not named: {stderr}"
    );
    assert!(
        stderr.contains("no_such_setting"),
        "the setting is not named: {stderr}"
    );
    assert!(!data.exists(), "a refused start wrote its data directory");
}

#[test]
fn dengine_log_is_the_log_filter_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = serve_refused(
        &[
            "--id",
            "1",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen-client",
            "127.0.0.1:0",
            "--listen-peer",
            "127.0.0.1:0",
        ],
        &[("DENGINE_LOG", "info,[")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DENGINE_LOG") && stderr.contains("invalid log filter"),
        "{stderr}"
    );
    assert!(!data.exists(), "a refused start wrote its data directory");
}

/// The server binary's jemalloc has its options built in (`.cargo/config.toml`): freed
/// blocks of up to 256 KiB stay in the thread's cache. Checked from jemalloc's own report of
/// its options, which it prints at exit when asked to through the environment.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[test]
fn the_server_binary_starts_jemalloc_with_its_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_dengine-kv"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let options: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("opt.tcache_max"))
        .collect();
    assert_eq!(
        options,
        ["opt.tcache_max: 262144"],
        "jemalloc did not report the binary's tcache_max:\n{stderr}"
    );
}
