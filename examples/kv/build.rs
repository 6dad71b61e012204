//! Compiles `proto/` (the etcd v3 API subset, etcd's lock and election services, and the
//! internal command encoding) with protox, a pure-Rust protobuf compiler, so building needs no
//! system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: `env!` would bake in the path the build script was compiled at, which
    // is wrong when a target directory is shared between checkouts.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("proto");
    let files = [
        root.join("etcd/mvccpb/kv.proto"),
        root.join("etcd/authpb/auth.proto"),
        root.join("etcd/etcdserverpb/rpc.proto"),
        root.join("etcd/v3lock/v3lock.proto"),
        root.join("etcd/v3election/v3election.proto"),
        root.join("dengine/kv/v1/command.proto"),
    ];
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .bytes(".")
        // Ordered maps, so that encoded snapshots are deterministic.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
