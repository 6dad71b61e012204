//! What every target needs around its input: a runtime and a scratch directory.

/// A current-thread runtime for one input.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    }
}

/// A temporary directory, in memory (`/dev/shm`) where there is one: the storage targets write
/// and sync small files for every input.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("dengine-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("dengine-fuzz-").tempdir()
    };
    match dir {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}
