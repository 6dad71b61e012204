//! [`LeanKv`]: the etcd `KV` service with its calls framed and unframed here, not by tonic.
//!
//! Every `KV` call is unary, and a put's request and response are a few hundred bytes; for
//! each call tonic's generated server builds a decoding stream (a boxed decoder, a wrapped
//! body, an 8 KiB buffer the request is copied into), an encoding stream for the response (a
//! second buffer, a boxed body) and two boxed futures. In a profile of three members at 256
//! clients that machinery was about 6% of all their CPU, more than the put itself
//! (docs/benchmarks.md, 2026-12-06 21:40). Here a call's request is decoded from the body's
//! data as it arrives (without a copy when it comes in one frame, as it does), the service's
//! method is called as tonic would call it, and the response goes out as one data frame and
//! the trailers. A call this does not frame itself — a compressed one (`grpc-encoding`), a
//! method `KV` does not have — goes to the generated server, so its answer is tonic's.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::{Body as _, Frame};
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use crate::backend::KvBackend;
use crate::proto::etcdserverpb::kv_server::{Kv, KvServer};
use crate::service::KvService;
use crate::unsupported::NamesMissing;

/// The largest request message accepted, as tonic's server default (4 MiB): a larger one is
/// refused `OUT_OF_RANGE` from its prefix, before the rest of its body is read.
const MAX_REQUEST: usize = 4 * 1024 * 1024;

/// The five bytes before a message in a gRPC body: a compression flag and the length.
const PREFIX: usize = 5;

/// The `KV` service (see the module docs).
pub(crate) struct LeanKv<B> {
    kv: Arc<KvService<B>>,
    generated: NamesMissing<KvServer<KvService<B>>>,
}

impl<B> Clone for LeanKv<B> {
    fn clone(&self) -> Self {
        LeanKv {
            kv: self.kv.clone(),
            generated: self.generated.clone(),
        }
    }
}

impl<B: KvBackend> LeanKv<B> {
    /// `kv`, served.
    pub(crate) fn new(kv: KvService<B>) -> Self {
        let kv = Arc::new(kv);
        LeanKv {
            generated: NamesMissing(KvServer::from_arc(kv.clone())),
            kv,
        }
    }
}

impl<B> NamedService for LeanKv<B> {
    const NAME: &'static str = "etcdserverpb.KV";
}

type CallFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<B: KvBackend> Service<http::Request<Body>> for LeanKv<B> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> CallFuture {
        // A compressed request is left to tonic, which refuses it (no encoding is enabled).
        if !req.headers().contains_key("grpc-encoding") {
            let kv = self.kv.clone();
            match req.uri().path() {
                "/etcdserverpb.KV/Range" => {
                    return Box::pin(unary(req, move |r| async move { kv.range(r).await }));
                }
                "/etcdserverpb.KV/Put" => {
                    return Box::pin(unary(req, move |r| async move { kv.put(r).await }));
                }
                "/etcdserverpb.KV/DeleteRange" => {
                    return Box::pin(unary(req, move |r| async move { kv.delete_range(r).await }));
                }
                "/etcdserverpb.KV/Txn" => {
                    return Box::pin(unary(req, move |r| async move { kv.txn(r).await }));
                }
                "/etcdserverpb.KV/Compact" => {
                    return Box::pin(unary(req, move |r| async move { kv.compact(r).await }));
                }
                _ => {}
            }
        }
        Box::pin(self.generated.call(req))
    }
}

/// Answers one unary call: decodes `req`'s message, calls `method` with it (and the call's
/// metadata and extensions, as tonic passes them) and frames the answer.
async fn unary<Q, R, M, F>(
    req: http::Request<Body>,
    method: M,
) -> Result<http::Response<Body>, Infallible>
where
    Q: Message + Default,
    R: Message,
    M: FnOnce(tonic::Request<Q>) -> F,
    F: Future<Output = Result<tonic::Response<R>, Status>>,
{
    let (parts, body) = req.into_parts();
    let answer = match read_message::<Q>(body, MAX_REQUEST).await {
        Ok(message) => {
            method(tonic::Request::from_http(http::Request::from_parts(
                parts, message,
            )))
            .await
        }
        Err(status) => Err(status),
    };
    Ok(match answer {
        Ok(response) => respond(response),
        Err(status) => status.into_http(),
    })
}

/// Reads the message of a unary call's `body`: refuses a length over `limit` before reading
/// it, a compressed message (no encoding was agreed), a body that ends early and bytes that
/// do not decode, each with the status tonic gives. The call is answered once its message is
/// here; what the client sends after it is not read (tonic reads on to the end of the body,
/// decoding and dropping further messages and adding request trailers to the metadata; gRPC
/// clients send neither on a unary call, and send the end of the stream with the message).
async fn read_message<Q: Message + Default>(mut body: Body, limit: usize) -> Result<Q, Status> {
    let mut gathered = Gathered::default();
    loop {
        if let Some(len) = gathered.message_len(limit)?
            && let Some(message) = gathered.take(len)
        {
            return Q::decode(message).map_err(|e| Status::internal(e.to_string()));
        }
        match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    gathered.push(data);
                }
            }
            Some(Err(status)) => return Err(status),
            None if gathered.is_empty() => {
                return Err(Status::internal("Missing request message."));
            }
            None => return Err(Status::internal("Unexpected EOF decoding stream.")),
        }
    }
}

/// The data of a body received so far: the first chunk alone while it is the only one (a
/// message that arrives in one frame is decoded from it, with no allocation and no copy),
/// else all of it joined in one buffer.
#[derive(Default)]
struct Gathered {
    first: Bytes,
    joined: Option<BytesMut>,
}

impl Gathered {
    fn is_empty(&self) -> bool {
        self.first.is_empty() && self.joined.is_none()
    }

    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        if let Some(joined) = &mut self.joined {
            joined.put(chunk);
        } else if self.first.is_empty() {
            self.first = chunk;
        } else {
            let mut joined = BytesMut::with_capacity(self.first.len() + chunk.len());
            joined.put(std::mem::take(&mut self.first));
            joined.put(chunk);
            self.joined = Some(joined);
        }
    }

    /// Everything received, contiguous.
    fn bytes(&self) -> &[u8] {
        self.joined.as_deref().unwrap_or(&self.first)
    }

    /// The message's length once its prefix is here.
    fn message_len(&self, limit: usize) -> Result<Option<usize>, Status> {
        let Some(prefix) = self.bytes().get(..PREFIX) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding \
                     was specified",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {flag} \
                     (valid flags are 0 and 1), while sending request"
                )));
            }
        }
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        if len > limit {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: \
                 {limit} bytes"
            )));
        }
        Ok(Some(len))
    }

    /// The message of `len` bytes after the prefix, once all of it is here.
    fn take(&mut self, len: usize) -> Option<Bytes> {
        if self.bytes().len() < PREFIX + len {
            return None;
        }
        let mut all = match self.joined.take() {
            Some(joined) => joined.freeze(),
            None => std::mem::take(&mut self.first),
        };
        all.advance(PREFIX);
        all.truncate(len);
        Some(all)
    }
}

/// The headers tonic never copies from a response's metadata into its HTTP headers.
const RESERVED: [&str; 5] = [
    "te",
    "content-type",
    "grpc-message",
    "grpc-message-type",
    "grpc-status",
];

/// A successful call's HTTP response: the metadata as headers, the message as one data frame,
/// `grpc-status: 0` as the trailers.
fn respond<R: Message>(response: tonic::Response<R>) -> http::Response<Body> {
    let (metadata, message, extensions) = response.into_parts();
    let mut headers = metadata.into_headers();
    for name in RESERVED {
        headers.remove(name);
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    let len = message.encoded_len();
    // A message over 4 GiB cannot be framed; no KV response comes near it, but should one,
    // the client is told rather than sent a bad frame.
    let Ok(framed_len) = u32::try_from(len) else {
        return Status::resource_exhausted("etcdserver: response too large to send").into_http();
    };
    let mut framed = BytesMut::with_capacity(PREFIX + len);
    framed.put_u8(0);
    framed.put_u32(framed_len);
    // `encode_raw` cannot fail: the buffer grows if it must (it was sized for the message).
    message.encode_raw(&mut framed);
    let mut http = http::Response::new(Body::new(OneMessage {
        message: Some(framed.freeze()),
        trailers: true,
    }));
    *http.version_mut() = http::Version::HTTP_2;
    *http.headers_mut() = headers;
    *http.extensions_mut() = extensions;
    http
}

/// A response body: one data frame, then the `grpc-status: 0` trailers.
struct OneMessage {
    message: Option<Bytes>,
    trailers: bool,
}

impl http_body::Body for OneMessage {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = http::HeaderMap::with_capacity(1);
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.message.as_ref().map_or(0, |m| m.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::proto::etcdserverpb::{PutRequest, PutResponse, ResponseHeader};

    /// A request body of these frames, as the HTTP/2 server would hand them over.
    struct Frames(VecDeque<Result<Frame<Bytes>, Status>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn body(chunks: impl IntoIterator<Item = Bytes>) -> Body {
        Body::new(Frames(
            chunks.into_iter().map(|c| Ok(Frame::data(c))).collect(),
        ))
    }

    fn framed(message: &impl Message) -> Bytes {
        let mut out = BytesMut::new();
        out.put_u8(0);
        out.put_u32(u32::try_from(message.encoded_len()).unwrap());
        message.encode(&mut out).unwrap();
        out.freeze()
    }

    fn put() -> PutRequest {
        PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from(vec![7u8; 300]),
            ..PutRequest::default()
        }
    }

    async fn read(body: Body) -> Result<PutRequest, Status> {
        read_message::<PutRequest>(body, MAX_REQUEST).await
    }

    #[tokio::test]
    async fn a_message_in_one_frame_is_decoded_without_a_copy_and_in_many_is_joined() {
        let whole = framed(&put());
        let got = read(body([whole.clone()])).await.unwrap();
        assert_eq!(got, put());
        // The value points into the received frame.
        let frame = whole.as_ptr_range();
        assert!(frame.contains(&got.value.as_ptr()));

        // The same bytes one, two, three … at a time, and a trailing message left unread.
        let mut chunks = Vec::new();
        let mut rest = whole.clone();
        let mut n = 1;
        while !rest.is_empty() {
            chunks.push(rest.split_to(n.min(rest.len())));
            n += 1;
        }
        chunks.push(framed(&PutRequest::default()));
        assert_eq!(read(body(chunks)).await.unwrap(), put());
    }

    #[tokio::test]
    async fn bad_bodies_are_refused_as_tonic_refuses_them() {
        let whole = framed(&put());
        let refused = async |b: Body| read(b).await.unwrap_err();

        let s = refused(body([])).await;
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Internal, "Missing request message.")
        );
        for cut in [3, PREFIX, whole.len() - 1] {
            let s = refused(body([whole.slice(..cut)])).await;
            assert_eq!(
                (s.code(), s.message()),
                (tonic::Code::Internal, "Unexpected EOF decoding stream."),
                "cut at {cut}"
            );
        }
        let mut compressed = BytesMut::from(&whole[..]);
        compressed[0] = 1;
        let s = refused(body([compressed.clone().freeze()])).await;
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(s.message().contains("compressed-flag"), "{}", s.message());
        compressed[0] = 7;
        let s = refused(body([compressed.freeze()])).await;
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(
            s.message().contains("invalid compression flag: 7"),
            "{}",
            s.message()
        );
        // Field 1 with wire type 7, which does not exist.
        let s = refused(body([Bytes::from_static(&[0, 0, 0, 0, 2, 0x0f, 0])])).await;
        assert_eq!(s.code(), tonic::Code::Internal);

        // Over the limit: refused from the prefix, before the body's next frame (an error
        // here) is read.
        let over = u32::try_from(MAX_REQUEST + 1).unwrap().to_be_bytes();
        let frames = Frames(VecDeque::from([
            Ok(Frame::data(Bytes::from(vec![
                0, over[0], over[1], over[2], over[3],
            ]))),
            Err(Status::aborted("read past the prefix")),
        ]));
        let s = refused(Body::new(frames)).await;
        assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
        assert!(s.message().contains("too large"), "{}", s.message());

        // A body that fails (the stream was reset) gives its status.
        let frames = Frames(VecDeque::from([
            Ok(Frame::data(whole.slice(..10))),
            Err(Status::cancelled("reset")),
        ]));
        assert_eq!(
            refused(Body::new(frames)).await.code(),
            tonic::Code::Cancelled
        );
    }

    #[tokio::test]
    async fn a_response_is_one_data_frame_then_the_ok_trailers() {
        let message = PutResponse {
            header: Some(ResponseHeader {
                revision: 42,
                ..ResponseHeader::default()
            }),
            prev_kv: None,
        };
        let mut response = tonic::Response::new(message.clone());
        response
            .metadata_mut()
            .insert("x-note", "kept".parse().unwrap());
        response
            .metadata_mut()
            .insert("grpc-status", "13".parse().unwrap());
        let http = respond(response);
        assert_eq!(http.headers()["content-type"], "application/grpc");
        assert_eq!(http.headers()["x-note"], "kept");
        assert!(!http.headers().contains_key("grpc-status"));

        let mut body = http.into_body();
        let data = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(data, framed(&message));
        let trailers = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert!(
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .is_none()
        );
        assert!(body.is_end_stream());
    }

    /// The `KV` service of a single in-memory member.
    async fn service() -> LeanKv<crate::LocalBackend> {
        let hub = crate::WatchHub::default();
        let backend = Arc::new(
            crate::LocalBackend::new(hub.clone(), "http://127.0.0.1:2380")
                .await
                .unwrap(),
        );
        let auth = backend.auth_hub().clone();
        LeanKv::new(KvService {
            shared: Arc::new(crate::shared::Shared {
                backend,
                hub,
                auth,
                config: crate::KvConfig::default(),
            }),
        })
    }

    fn call(path: &str, encoding: Option<&str>, message: Bytes) -> http::Request<Body> {
        let mut req = http::Request::new(body([message]));
        *req.uri_mut() = path.parse().unwrap();
        if let Some(encoding) = encoding {
            req.headers_mut()
                .insert("grpc-encoding", encoding.parse().unwrap());
        }
        req
    }

    /// The `grpc-status` of a response: from its headers when it has no message (an error),
    /// else from its trailers, with the message.
    async fn answer(response: http::Response<Body>) -> (String, Option<Bytes>) {
        if let Some(status) = response.headers().get("grpc-status") {
            return (status.to_str().unwrap().to_owned(), None);
        }
        let mut body = response.into_body();
        let mut data = None;
        loop {
            let frame = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .await
                .unwrap()
                .unwrap();
            match frame.into_data() {
                Ok(d) => data = Some(d),
                Err(frame) => {
                    let trailers = frame.into_trailers().unwrap();
                    return (trailers["grpc-status"].to_str().unwrap().to_owned(), data);
                }
            }
        }
    }

    #[tokio::test]
    async fn calls_are_answered_here_or_by_the_generated_server() {
        let mut kv = service().await;
        // Framed here: a put, then a range that sees it.
        let (status, data) = answer(
            kv.call(call("/etcdserverpb.KV/Put", None, framed(&put())))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, "0");
        let mut data = data.unwrap();
        data.advance(PREFIX);
        let revision = PutResponse::decode(data).unwrap().header.unwrap().revision;
        assert!(revision > 0);
        let range = crate::proto::etcdserverpb::RangeRequest {
            key: Bytes::from_static(b"key"),
            ..Default::default()
        };
        let (status, data) = answer(
            kv.call(call("/etcdserverpb.KV/Range", None, framed(&range)))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, "0");
        let mut data = data.unwrap();
        data.advance(PREFIX);
        let got = crate::proto::etcdserverpb::RangeResponse::decode(data).unwrap();
        assert_eq!(got.kvs[0].value, put().value);
        assert_eq!(got.kvs[0].mod_revision, revision);
        // A refusal of the method itself comes back as its status (an empty key).
        let (status, _) = answer(
            kv.call(call(
                "/etcdserverpb.KV/Put",
                None,
                framed(&PutRequest::default()),
            ))
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(status, "3"); // INVALID_ARGUMENT: etcdserver: key is not provided

        // A compressed call goes to tonic, which accepts no encoding: UNIMPLEMENTED.
        let (status, _) = answer(
            kv.call(call("/etcdserverpb.KV/Put", Some("gzip"), framed(&put())))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, "12");
        // So does a method KV does not have, named in the message.
        let response = kv
            .call(call("/etcdserverpb.KV/Nope", None, framed(&put())))
            .await
            .unwrap();
        let message = response.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains("not supported by dengine-kv: /etcdserverpb.KV/Nope"),
            "{message}"
        );
        assert_eq!(answer(response).await.0, "12");
    }
}
