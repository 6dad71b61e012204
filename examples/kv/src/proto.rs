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

/// The codec of every service above: prost's, with buffers sized for etcd's messages.
///
/// tonic allocates an encoding and a decoding buffer for every call, 8 KiB each by default;
/// a put's request and response are a few hundred bytes. Buffers start at
/// [`CodecBuffers::START`] bytes and grow to fit a larger message as they would anyway.
#[derive(Debug)]
pub struct Codec<T, U>(std::marker::PhantomData<(T, U)>);

/// The buffer sizes of [`Codec`].
#[derive(Debug)]
pub struct CodecBuffers;

impl CodecBuffers {
    /// The bytes a call's encoding and decoding buffers start with.
    pub const START: usize = 1024;

    fn settings() -> tonic::codec::BufferSettings {
        // A streaming call's encoder sends what it has gathered once it reaches 32 KiB
        // (tonic's default).
        tonic::codec::BufferSettings::new(Self::START, 32 * 1024)
    }
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(CodecBuffers::settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(CodecBuffers::settings())
    }
}
