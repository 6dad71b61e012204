//! Writes every fuzz target's seeds to `fuzz/corpus/<target>/seed-<n>` (what
//! `cargo xtask fuzz --seeds` runs; the files are committed).
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for target in dengine_fuzz::TARGETS {
        let dir = root.join(target.name);
        std::fs::create_dir_all(&dir).unwrap();
        let seeds = (target.seeds)();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
        println!(
            "{}: {} seeds in {}",
            target.name,
            seeds.len(),
            dir.display()
        );
    }
}
