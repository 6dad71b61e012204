//! `dengine-loadgen`: the load generator of `cargo xtask bench e2e` and `bench soak`.
//!
//! It speaks only the etcd v3 KV API (its own lean gRPC client, `grpc.rs`, or with `--client
//! etcd-client` the `etcd-client` crate), so the very same binary, options and code path
//! drive dengine-kv and etcd: N clients, each with one request
//! at a time, share C connections spread round-robin over the endpoints; every successful
//! request's latency is recorded, errors are counted apart. Output is JSON lines on stdout
//! (`"event": "progress"` per report period, `"event": "window"` with `"edge": "start"` and
//! `"end"` around the measured window, then one `"event": "result"`), which xtask parses;
//! `--help` lists the options.

mod args;
mod grpc;
mod run;
mod stats;

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let opts = match args::parse(&argv) {
        Ok(Some(opts)) => opts,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("dengine-loadgen: {e}\n\n{}", args::USAGE);
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dengine-loadgen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dengine-loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
