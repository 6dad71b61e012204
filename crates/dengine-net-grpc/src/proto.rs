//! The generated wire types and gRPC stubs (compiled at build time from `proto/` by a
//! pure-Rust compiler), one module per protobuf package, and short names for them.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod generated {
    /// `dengine.*` packages.
    pub mod dengine {
        /// `dengine.raft.*`.
        pub mod raft {
            /// `dengine.raft.v1`: the peer protocol.
            pub mod v1 {
                tonic::include_proto!("dengine.raft.v1");
            }
        }
        /// `dengine.admin.*`.
        pub mod admin {
            /// `dengine.admin.v1`: the admin service.
            pub mod v1 {
                tonic::include_proto!("dengine.admin.v1");
            }
        }
        /// `dengine.client.*`.
        pub mod client {
            /// `dengine.client.v1`: the client service.
            pub mod v1 {
                tonic::include_proto!("dengine.client.v1");
            }
        }
    }
}

/// The admin service's wire types and stubs (`dengine.admin.v1`).
pub use generated::dengine::admin::v1 as admin_pb;
/// The client service's wire types and stubs (`dengine.client.v1`), and those of the
/// forwarding between members that it uses (`Forward`).
pub use generated::dengine::client::v1 as client_pb;
/// The peer protocol's wire types and stubs (`dengine.raft.v1`).
pub use generated::dengine::raft::v1 as pb;
