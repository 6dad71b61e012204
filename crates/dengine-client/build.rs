//! Compiles the client service's protocol with protox (a pure-Rust protobuf compiler), so
//! building needs no system `protoc`. Only the client stubs: this crate serves nothing.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `proto` is a symlink to the workspace's `proto/` directory (packaged as a copy).
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let file = root.join("dengine/client/v1/client.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
