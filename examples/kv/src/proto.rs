//! The protobuf types and gRPC service stubs generated from `proto/` at build time: the etcd v3
//! API subset ([`etcdserverpb`], [`mvccpb`], [`authpb`]), etcd's lock and election services
//! ([`v3lockpb`], [`v3electionpb`]) and dengine-kv's internal encoding of commands, queries and
//! snapshots ([`dengine::kv::v1`]).

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// etcd's storage types (`mvccpb`): `KeyValue` and `Event`.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's auth types (`authpb`): `Permission` and `UserAddOptions`.
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// etcd's v3 RPC messages and services (`etcdserverpb`), the subset dengine-kv serves.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service (`v3lockpb`): `Lock` and `Unlock`.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's election service (`v3electionpb`): `Campaign`, `Proclaim`, `Leader`, `Observe` and
/// `Resign`.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// dengine-kv's own messages (package `dengine.kv.v1`).
pub mod dengine {
    /// dengine-kv's own messages (package `dengine.kv.v1`).
    pub mod kv {
        /// Commands, command responses, queries and snapshots of the KV state machine.
        pub mod v1 {
            tonic::include_proto!("dengine.kv.v1");
        }
    }
}
