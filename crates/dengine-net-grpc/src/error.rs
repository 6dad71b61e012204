//! [`GrpcError`]: why the transport, or one of its listeners, could not be set up.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the transport could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrpcError {
    /// A setting is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// A TLS or secret file could not be read.
    #[error("cannot read the {what} at {path}: {detail}")]
    TlsFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        detail: String,
    },
    /// The TLS configuration was refused (e.g. a malformed PEM).
    #[error("invalid TLS configuration: {detail}")]
    Tls {
        /// What rustls or tonic reported.
        detail: String,
    },
    /// A peer address is not a valid `host:port` or URI.
    #[error("invalid peer address {address:?}: {detail}")]
    Address {
        /// The address.
        address: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Connecting to a peer failed.
    #[error("cannot connect to {address}: {detail}")]
    Connect {
        /// The peer's address.
        address: String,
        /// The cause.
        detail: String,
    },
    /// The server could not bind its address.
    #[error("cannot listen on {addr}: {detail}; is another process using the port?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        detail: String,
    },
}
