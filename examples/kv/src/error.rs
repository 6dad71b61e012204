//! Application-level refusals of the KV store ([`KvError`]) and how they travel: encoded in the
//! state machine's responses, and mapped to the gRPC statuses etcd uses.

use tonic::{Code, Status};

use crate::proto::dengine::kv::v1 as pb;

/// Why the store refused a request. The request had no effect; the message is what etcd says
/// (prefixed with `etcdserver: `) where etcd has a message, so etcd clients recognise it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The request is malformed or not allowed by etcd's rules (empty key, duplicate key in a
    /// transaction, `ignore_value` on a missing key, ...).
    #[error("etcdserver: {0}")]
    InvalidArgument(String),
    /// The requested revision lies before the compaction point (or before the oldest event
    /// still kept, for watches).
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision lies after the current revision.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The request uses a feature dengine-kv does not implement.
    #[error("etcdserver: not supported by dengine-kv: {0}")]
    Unimplemented(String),
    /// Something the request names does not exist.
    #[error("etcdserver: {0}")]
    NotFound(String),
    /// The request is refused in the state the store is in (etcd's `FAILED_PRECONDITION`
    /// errors: a user or role that exists already or does not exist, authentication not
    /// enabled, ...).
    #[error("etcdserver: {0}")]
    FailedPrecondition(String),
    /// The authenticated user lacks a permission the request needs.
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    /// The request carried a token this member does not know (never issued, expired, or its
    /// user's password changed); etcd clients authenticate again on this error.
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    /// Serving the request would take more than a bound allows (a Range response larger than
    /// the member's `max_range_response_bytes`); the message says how to ask for less.
    #[error("etcdserver: {0}")]
    ResourceExhausted(String),
    /// A lease was asked for a TTL above the maximum (etcd's `ErrLeaseTTLTooLarge`).
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A response from the state machine could not be understood (a bug or a version skew
    /// between members).
    #[error("etcdserver: internal error: {0}")]
    Internal(String),
}

impl KvError {
    /// etcd's `ErrLeaseNotFound`: the lease named does not exist (never granted, expired or
    /// revoked).
    pub fn lease_not_found() -> Self {
        KvError::NotFound("requested lease not found".into())
    }

    /// etcd's `ErrLeaseExist`: a grant named an id already in use.
    pub fn lease_exists() -> Self {
        KvError::FailedPrecondition("lease already exists".into())
    }

    /// The gRPC status etcd answers with for this error.
    pub fn to_status(&self) -> Status {
        let code = match self {
            KvError::InvalidArgument(_) => Code::InvalidArgument,
            KvError::Compacted | KvError::FutureRevision | KvError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            KvError::Unimplemented(_) => Code::Unimplemented,
            KvError::NotFound(_) => Code::NotFound,
            KvError::ResourceExhausted(_) => Code::ResourceExhausted,
            KvError::FailedPrecondition(_) => Code::FailedPrecondition,
            KvError::PermissionDenied => Code::PermissionDenied,
            KvError::InvalidAuthToken => Code::Unauthenticated,
            KvError::Internal(_) => Code::Internal,
        };
        Status::new(code, self.to_string())
    }

    pub(crate) fn to_proto(&self) -> pb::KvError {
        use pb::kv_error::Code as C;
        let (code, message) = match self {
            KvError::InvalidArgument(m) => (C::InvalidArgument, m.clone()),
            KvError::Compacted => (C::Compacted, String::new()),
            KvError::FutureRevision => (C::FutureRevision, String::new()),
            KvError::Unimplemented(m) => (C::Unimplemented, m.clone()),
            KvError::NotFound(m) => (C::NotFound, m.clone()),
            KvError::ResourceExhausted(m) => (C::ResourceExhausted, m.clone()),
            KvError::FailedPrecondition(m) => (C::FailedPrecondition, m.clone()),
            KvError::PermissionDenied => (C::PermissionDenied, String::new()),
            KvError::InvalidAuthToken => (C::Unauthenticated, String::new()),
            KvError::LeaseTtlTooLarge => (C::LeaseTtlTooLarge, String::new()),
            KvError::Internal(m) => (C::Internal, m.clone()),
        };
        pb::KvError {
            code: code as i32,
            message,
        }
    }

    pub(crate) fn from_proto(err: &pb::KvError) -> Self {
        use pb::kv_error::Code as C;
        match C::try_from(err.code) {
            Ok(C::InvalidArgument) => KvError::InvalidArgument(err.message.clone()),
            Ok(C::Compacted) => KvError::Compacted,
            Ok(C::FutureRevision) => KvError::FutureRevision,
            Ok(C::Unimplemented) => KvError::Unimplemented(err.message.clone()),
            Ok(C::NotFound) => KvError::NotFound(err.message.clone()),
            Ok(C::ResourceExhausted) => KvError::ResourceExhausted(err.message.clone()),
            Ok(C::FailedPrecondition) => KvError::FailedPrecondition(err.message.clone()),
            Ok(C::PermissionDenied) => KvError::PermissionDenied,
            Ok(C::Unauthenticated) => KvError::InvalidAuthToken,
            Ok(C::Internal) => KvError::Internal(err.message.clone()),
            Ok(C::LeaseTtlTooLarge) => KvError::LeaseTtlTooLarge,
            Err(_) => KvError::Internal(format!(
                "unknown error code {} from the state machine: {}",
                err.code, err.message
            )),
        }
    }
}

impl From<KvError> for Status {
    fn from(err: KvError) -> Self {
        err.to_status()
    }
}
