//! Calls a gRPC service in process, through its tower `Service`, with request bodies built from
//! fuzz input: what arrives on the port after TLS and HTTP/2, without the sockets.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};

use dengine_sim::fuzz::Input;

/// The most frames one request carries.
const MAX_FRAMES: usize = 8;

/// A request body read from the input: a few gRPC frames (1-byte flag, 4-byte length, message),
/// or, if the first byte says so, raw bytes (a broken frame, a lying length).
pub(crate) fn body_from(input: &mut Input<'_>) -> Bytes {
    let shape = input.byte();
    if shape & 0x80 != 0 {
        let len = input.u16() as usize;
        return Bytes::copy_from_slice(input.bytes(len));
    }
    let frames = (shape as usize % MAX_FRAMES) + 1;
    let mut body = BytesMut::new();
    for _ in 0..frames {
        let len = input.u16() as usize;
        let message = input.bytes(len);
        body.put_slice(&frame(message));
        if input.is_empty() {
            break;
        }
    }
    body.freeze()
}

/// One uncompressed gRPC frame.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// What a call returned.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status (200 for every gRPC answer, errors included).
    pub(crate) http_status: u16,
    /// Response body bytes (gRPC frames).
    pub(crate) body: Vec<u8>,
    /// The `grpc-status` trailer or header, if the call finished.
    pub(crate) grpc_status: Option<String>,
}

/// Calls `path` on `service` with `body`; reads the answer for at most `wait` (a streaming call
/// may stay open: then the reply so far is returned and the call dropped, as a client would).
pub(crate) async fn call<S>(service: &mut S, path: &str, body: Bytes, wait: Duration) -> Reply
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>,
    S::Error: std::fmt::Debug,
{
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://fuzz.local{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(body)));
    let Ok(request) = request else {
        unreachable!("the request is well-formed")
    };
    let response = match service.ready().await {
        Ok(s) => s.call(request).await,
        Err(e) => panic!("the service is not ready: {e:?}"),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => panic!("the service failed instead of answering with a status: {e:?}"),
    };
    let http_status = response.status().as_u16();
    let mut grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = Vec::new();
    let mut stream = response.into_body();
    let read = async {
        while let Some(frame) = stream.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(data) = frame.data_ref() {
                body.extend_from_slice(data);
            } else if let Some(trailers) = frame.trailers_ref() {
                grpc_status = trailers
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
            }
        }
    };
    let _ = tokio::time::timeout(wait, read).await;
    Reply {
        http_status,
        body,
        grpc_status,
    }
}
