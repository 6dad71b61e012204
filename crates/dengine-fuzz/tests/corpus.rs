//! Every fuzz target over its seeds and over every input committed under
//! `fuzz/corpus/<target>/` (seeds and reproducers of fixed findings).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::path::PathBuf;

use dengine_fuzz::TARGETS;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

#[test]
fn every_target_passes_its_seeds_and_committed_corpus() {
    for target in TARGETS {
        let seeds = (target.seeds)();
        assert!(!seeds.is_empty(), "{} has no seeds", target.name);
        for seed in &seeds {
            (target.run)(seed);
        }
        let dir = corpus_dir(target.name);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask fuzz --seeds`)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            files.len() >= seeds.len(),
            "{} holds fewer inputs than {} has seeds: run `cargo xtask fuzz --seeds`",
            dir.display(),
            target.name
        );
        for file in files {
            let data = std::fs::read(&file).unwrap();
            (target.run)(&data);
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_binary_and_no_binary_lacks_a_target() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|t| format!("{}.rs", t.name)).collect();
    names.sort();
    assert_eq!(files, names);
    let manifest = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/Cargo.toml"),
    )
    .unwrap();
    for t in TARGETS {
        assert!(
            manifest.contains(&format!("path = \"fuzz_targets/{}.rs\"", t.name)),
            "fuzz/Cargo.toml has no [[bin]] for {}",
            t.name
        );
    }
}
