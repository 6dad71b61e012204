//! Target `settings`: the settings loader over an arbitrary TOML file and arbitrary
//! `DENGINE_*` environment values — what `dengine::Settings::load` reads at startup.
//!
//! Oracle: loading either fails with a message or gives settings that validate or are
//! refused with a message; valid settings convert to the runtime's and the transport's
//! configuration without panicking; loading from text and from a file agree.

use dengine::Settings;
use dengine_sim::fuzz::Input;

/// Runs one input: TOML text up to the first 0xFF byte, then `NAME=value` lines (the
/// `DENGINE_` prefix is added to names that lack it).
pub fn settings(data: &[u8]) {
    let mut input = Input::new(data);
    let rest = input.rest();
    let (toml, env) = match rest.iter().position(|&b| b == 0xFF) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let toml = String::from_utf8_lossy(toml).into_owned();
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once('=')?;
            let name = if name.starts_with("DENGINE_") {
                name.to_owned()
            } else {
                format!("DENGINE_{name}")
            };
            Some((name, value.to_owned()))
        })
        .collect();

    let from_text = Settings::from_toml_str(&toml);
    if let Err(e) = &from_text {
        assert!(!e.to_string().is_empty(), "an error without a message");
    }
    let scratch = crate::support::scratch_dir();
    let path = scratch.path().join("dengine.toml");
    if std::fs::write(&path, &toml).is_err() {
        return;
    }
    let from_file = Settings::load_with_env(Some(&path), Vec::<(String, String)>::new());
    assert_eq!(
        from_text.is_ok(),
        from_file.is_ok(),
        "text and file disagree: {:?} vs {:?}",
        from_text.as_ref().err().map(ToString::to_string),
        from_file.as_ref().err().map(ToString::to_string)
    );
    let loaded = match Settings::load_with_env(Some(&path), env) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error without a message");
            return;
        }
    };
    match loaded.validate() {
        Ok(()) => {
            let _ = loaded.node_config();
            let _ = loaded.grpc_config();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "a refusal without a message"),
    }
}

/// A complete settings file and a few overrides, plus an empty input.
pub fn seeds() -> Vec<Vec<u8>> {
    let toml = "[node]\nid = 1\ncluster_id = 42\nlisten_addr = \"127.0.0.1:7000\"\n\
                data_dir = \"/tmp/dengine-fuzz\"\ninitial_cluster_state = \"new\"\n\
                [node.initial_members]\n1 = \"127.0.0.1:7000\"\n2 = \"127.0.0.1:7010\"\n\
                [raft]\ntick_ms = 20\nelection_timeout_ms = 400\nheartbeat_interval_ms = 60\n\
                [storage]\nbackend = \"wal\"\nfsync = true\n\
                [network]\ncompression = \"gzip\"\nmax_message_bytes = 33554432\n";
    let mut with_env = toml.as_bytes().to_vec();
    with_env.push(0xFF);
    with_env.extend_from_slice(b"RAFT__PRE_VOTE=false\nDENGINE_NODE__ID=3\nSTORAGE__FSYNC=maybe\n");
    vec![Vec::new(), toml.as_bytes().to_vec(), with_env]
}
