//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `proto` is a symlink to the workspace's `proto/` directory (packaged as a copy).
    // Read at run time: `env!` would bake in the path the build script was compiled at, which
    // is wrong when a target directory is shared between checkouts.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files = [
        root.join("dengine/raft/v1/peer.proto"),
        root.join("dengine/admin/v1/admin.proto"),
        root.join("dengine/client/v1/client.proto"),
        root.join("dengine/client/v1/forward.proto"),
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
