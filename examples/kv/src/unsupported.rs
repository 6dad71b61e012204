//! Stand-ins for the etcd services dengine-kv does not implement (Lease, Election, Lock): every call gets `UNIMPLEMENTED` with a message naming the method and saying why,
//! rather than tonic's bare `UNIMPLEMENTED` for an unknown service.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::marker::PhantomData;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Names one unsupported gRPC service.
pub(crate) trait UnsupportedApi: Send + Sync + 'static {
    /// The fully qualified service name.
    const NAME: &'static str;
    /// Why it is missing, for the error message.
    const WHY: &'static str;
}

/// A gRPC service that answers every method with `UNIMPLEMENTED`.
pub(crate) struct Unsupported<M>(PhantomData<M>);

impl<M> Unsupported<M> {
    pub(crate) fn new() -> Self {
        Unsupported(PhantomData)
    }
}

impl<M> Clone for Unsupported<M> {
    fn clone(&self) -> Self {
        Unsupported(PhantomData)
    }
}

impl<M: UnsupportedApi> NamedService for Unsupported<M> {
    const NAME: &'static str = M::NAME;
}

impl<M: UnsupportedApi, B> Service<http::Request<B>> for Unsupported<M> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let status = Status::unimplemented(format!(
            "etcdserver: not supported by dengine-kv: {} ({})",
            req.uri().path(),
            M::WHY
        ));
        ready(Ok(status.into_http()))
    }
}

/// etcd's `Lease` service.
pub(crate) struct Lease;
impl UnsupportedApi for Lease {
    const NAME: &'static str = "etcdserverpb.Lease";
    const WHY: &'static str = "leases are not implemented; keys never expire";
}

/// etcd's `Election` service (concurrency API).
pub(crate) struct Election;
impl UnsupportedApi for Election {
    const NAME: &'static str = "v3electionpb.Election";
    const WHY: &'static str = "the election API needs leases, which are not implemented";
}

/// etcd's `Lock` service (concurrency API).
pub(crate) struct Lock;
impl UnsupportedApi for Lock {
    const NAME: &'static str = "v3lockpb.Lock";
    const WHY: &'static str = "the lock API needs leases, which are not implemented";
}
