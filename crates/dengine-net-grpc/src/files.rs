//! Reading the files a configuration names: PEM files and secrets.

use crate::error::GrpcError;

/// Reads a configuration file (a PEM file, a secret), naming it in the error.
pub fn read_file(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, GrpcError> {
    std::fs::read(path).map_err(|e| GrpcError::TlsFile {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Reads a secret or token file: its first line, trimmed, which must be 16+ printable ASCII
/// characters without spaces.
pub fn read_secret(path: &std::path::Path) -> Result<String, GrpcError> {
    let bytes = read_file(path, "secret file")?;
    let text = String::from_utf8_lossy(&bytes);
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(GrpcError::Config(format!(
            "{} must hold a secret of at least 16 printable ASCII characters without spaces on \
             its first line (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        )));
    }
    Ok(secret)
}
