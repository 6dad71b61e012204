//! [`NamesMissing`]: around each etcd service dengine-kv serves, so that a call of a method the
//! service does not have gets `UNIMPLEMENTED` with a message naming the method, rather than
//! tonic's bare `UNIMPLEMENTED` with an empty message (which etcdctl prints as
//! `code = Unimplemented desc = `).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::uri::PathAndQuery;

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Wraps one of the implemented etcd services: a call of a method the service does not have
/// (tonic answers those `UNIMPLEMENTED` with no message) gets a message naming the method.
#[derive(Clone)]
pub(crate) struct NamesMissing<S>(pub(crate) S);

impl<S: NamedService> NamedService for NamesMissing<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for NamesMissing<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = NamingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // One reference count: the path is only read if the answer is UNIMPLEMENTED.
        let path = req.uri().path_and_query().cloned();
        NamingFuture {
            inner: self.0.call(req),
            path,
        }
    }
}

/// The future of [`NamesMissing`].
pub(crate) struct NamingFuture<F> {
    inner: F,
    path: Option<PathAndQuery>,
}

impl<F> Future for NamingFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, Infallible>> + Unpin,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        let headers = response.headers_mut();
        let unimplemented = headers
            .get(Status::GRPC_STATUS)
            .is_some_and(|code| code.as_bytes() == b"12");
        if unimplemented && !headers.contains_key(Status::GRPC_MESSAGE) {
            let path = self.path.as_ref().map_or("", |p| p.path());
            let message = unnamed_method(path);
            if let Ok(value) = http::HeaderValue::from_str(&message) {
                headers.insert(Status::GRPC_MESSAGE, value);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// The message for a method of an implemented service that dengine-kv does not serve. Only
/// printable ASCII survives (the header carries it unencoded; gRPC's percent-encoding leaves
/// those characters as they are).
fn unnamed_method(path: &str) -> String {
    let path: String = path
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(200)
        .collect();
    format!(
        "etcdserver: not supported by dengine-kv: {path} (the methods it serves are listed in \
         examples/kv/README.md, \"Supported\")"
    )
}
