//! What the benchmarks that drive a dengine-kv cluster with the load generator share
//! (`bench soak`, `bench restart`).

use std::path::{Path, PathBuf};

/// The start of a benchmark that drives dengine-kv with the load generator: `dir` created,
/// both built in release mode, then the benchmark's title and the machine printed. The
/// paths of the `dengine-kv` and `dengine-loadgen` binaries.
pub(crate) fn prepare(name: &str, dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let bins = crate::cluster::build_bins(
        true,
        &[
            ("dengine-kv", "dengine-kv"),
            ("dengine-loadgen", "dengine-loadgen"),
        ],
        &[],
    )?;
    println!("bench {name}, {}", crate::e2e::now_utc());
    for line in crate::machine::describe(dir) {
        println!("  {line}");
    }
    Ok((bins[0].clone(), bins[1].clone()))
}
