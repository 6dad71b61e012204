//! A lean gRPC client for the two calls the load makes, etcd's `KV.Put` and `KV.Range`,
//! straight on an HTTP/2 connection (the `h2` crate).
//!
//! The load generator shares two cores with the servers it measures, so every microsecond it
//! spends on a request is taken from them. Through `etcd-client` (tonic 0.6 and hyper 0.14:
//! a request crosses a buffer task and hyper's dispatch task before reaching the connection)
//! it spent 27–31 µs of CPU per put at 256 clients, about a third of what a dengine-kv
//! cluster spent serving it (docs/benchmarks.md, 2026-12-06 15:40). Here a client task
//! writes its request onto the connection's stream itself; the connection's task only frames
//! and flushes. Both systems see the same bytes on the wire either way; `--client
//! etcd-client` still drives them through the independent client.
//!
//! A connection that fails (a server restarted) is opened again by the first client that
//! finds it closed; the others wait for that one and use it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// etcd's `KV.Put` path.
const PUT: &str = "/etcdserverpb.KV/Put";
/// etcd's `KV.Range` path.
const RANGE: &str = "/etcdserverpb.KV/Range";

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The HTTP/2 windows this client grants (hyper's client defaults, as `etcd-client` had):
/// responses never wait for a window update under load.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
/// The largest response message accepted (etcd's default request limit is 1.5 MiB; a
/// one-key range answers far less).
const MAX_RESPONSE: usize = 4 << 20;

/// `etcdserverpb.PutRequest`, the fields the load sets.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PutRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    /// The value (shared by every request of a client: not copied per put).
    #[prost(bytes = "bytes", tag = "2")]
    pub(crate) value: Bytes,
}

/// `etcdserverpb.RangeRequest`, the fields the load sets (one key).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RangeRequest {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) key: Vec<u8>,
    /// Answered from the member's own state, without a read index.
    #[prost(bool, tag = "7")]
    pub(crate) serializable: bool,
}

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResponseHeader {
    /// The cluster's id.
    #[prost(uint64, tag = "1")]
    pub(crate) cluster_id: u64,
    /// The answering member's id.
    #[prost(uint64, tag = "2")]
    pub(crate) member_id: u64,
    /// The store's revision when the request was served.
    #[prost(int64, tag = "3")]
    pub(crate) revision: i64,
    /// The Raft term.
    #[prost(uint64, tag = "4")]
    pub(crate) raft_term: u64,
}

/// `etcdserverpb.PutResponse` (without `prev_kv`, which the load never asks for).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PutResponse {
    /// The response header.
    #[prost(message, optional, tag = "1")]
    pub(crate) header: Option<ResponseHeader>,
}

/// `mvccpb.KeyValue`, the fields a range's answer is checked with.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct KeyValue {
    /// The key.
    #[prost(bytes = "bytes", tag = "1")]
    pub(crate) key: Bytes,
    /// Revision of the key's last change.
    #[prost(int64, tag = "3")]
    pub(crate) mod_revision: i64,
    /// The value.
    #[prost(bytes = "bytes", tag = "5")]
    pub(crate) value: Bytes,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RangeResponse {
    /// The response header.
    #[prost(message, optional, tag = "1")]
    pub(crate) header: Option<ResponseHeader>,
    /// The keys found.
    #[prost(message, repeated, tag = "2")]
    pub(crate) kvs: Vec<KeyValue>,
    /// Whether more keys were in range.
    #[prost(bool, tag = "3")]
    pub(crate) more: bool,
    /// How many keys were in range.
    #[prost(int64, tag = "4")]
    pub(crate) count: i64,
}

/// One server's address and its current HTTP/2 connection, shared by the clients on it.
#[derive(Debug)]
pub(crate) struct Connection {
    /// `host:port`.
    addr: String,
    /// The full URIs of the two calls.
    put: Uri,
    range: Uri,
    /// The current connection and its generation (bumped at every reconnection).
    current: Mutex<(u64, SendRequest<Bytes>)>,
}

impl Connection {
    /// Connects to `endpoint` (`host:port` or `http://host:port`).
    pub(crate) async fn open(endpoint: &str) -> Result<Arc<Connection>, String> {
        if endpoint.starts_with("https://") {
            return Err(format!(
                "{endpoint}: TLS is not supported by the load generator's client \
                 (give the plaintext port)"
            ));
        }
        let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
        let uri = |path: &str| {
            format!("http://{addr}{path}")
                .parse::<Uri>()
                .map_err(|e| format!("{endpoint}: not a host:port ({e})"))
        };
        let (put, range) = (uri(PUT)?, uri(RANGE)?);
        let send = handshake(addr).await?;
        Ok(Arc::new(Connection {
            addr: addr.to_string(),
            put,
            range,
            current: Mutex::new((0, send)),
        }))
    }

    /// A client of this connection.
    pub(crate) async fn client(self: &Arc<Connection>) -> Client {
        let current = self.current.lock().await;
        Client {
            conn: Arc::clone(self),
            generation: current.0,
            send: current.1.clone(),
        }
    }
}

/// Opens an HTTP/2 connection to `addr`; its task runs until the connection ends.
async fn handshake(addr: &str) -> Result<SendRequest<Bytes>, String> {
    let open = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true)
            .map_err(|e| format!("{addr}: cannot set TCP_NODELAY: {e}"))?;
        h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(tcp)
            .await
            .map_err(|e| format!("{addr}: HTTP/2 handshake failed: {e}"))
    };
    let (send, connection) = tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("cannot connect to {addr}: no answer in {CONNECT_TIMEOUT:?}"))??;
    tokio::spawn(async move {
        // Its end (an error included) is seen by the clients as a closed connection.
        let _ = connection.await;
    });
    Ok(send)
}

/// One client's handle on a shared [`Connection`]: one request at a time.
#[derive(Debug)]
pub(crate) struct Client {
    conn: Arc<Connection>,
    generation: u64,
    send: SendRequest<Bytes>,
}

impl Client {
    /// `KV.Put` of `key` = `value`.
    pub(crate) async fn put(&mut self, key: Vec<u8>, value: Bytes) -> Result<PutResponse, String> {
        let uri = self.conn.put.clone();
        self.unary(uri, &PutRequest { key, value }).await
    }

    /// `KV.Range` of one key.
    pub(crate) async fn get(
        &mut self,
        key: Vec<u8>,
        serializable: bool,
    ) -> Result<RangeResponse, String> {
        let uri = self.conn.range.clone();
        self.unary(uri, &RangeRequest { key, serializable }).await
    }

    /// A stream ready for a request, on a new connection if the one held has closed.
    async fn ready(&mut self) -> Result<SendRequest<Bytes>, String> {
        if let Ok(send) = self.send.clone().ready().await {
            return Ok(send);
        }
        let mut current = self.conn.current.lock().await;
        if current.0 == self.generation {
            // The first client to find it closed opens the next one; the others take it.
            let send = handshake(&self.conn.addr).await?;
            *current = (current.0 + 1, send);
        }
        (self.generation, self.send) = (current.0, current.1.clone());
        drop(current);
        self.send
            .clone()
            .ready()
            .await
            .map_err(|e| format!("{}: connection closed: {e}", self.conn.addr))
    }

    /// One unary call: `request` framed and sent on a new stream, the response's message
    /// read and decoded, the call's `grpc-status` checked.
    async fn unary<Q: Message, R: Message + Default>(
        &mut self,
        uri: Uri,
        request: &Q,
    ) -> Result<R, String> {
        let mut send = self.ready().await?;
        let head = Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| format!("building a request: {e}"))?;
        let (response, mut stream) = send
            .send_request(head, false)
            .map_err(|e| format!("{}: sending a request: {e}", self.conn.addr))?;
        stream
            .send_data(frame(request), true)
            .map_err(|e| format!("{}: sending a request: {e}", self.conn.addr))?;
        let response = response
            .await
            .map_err(|e| format!("{}: no response: {e}", self.conn.addr))?;
        let (head, mut body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(format!("{}: HTTP status {}", self.conn.addr, head.status));
        }
        // A call that fails at once answers with headers only ("Trailers-Only").
        if let Some(status) = grpc_status(&head.headers) {
            status?;
        }
        let mut message = Received::default();
        while let Some(chunk) = body.data().await {
            let chunk =
                chunk.map_err(|e| format!("{}: reading a response: {e}", self.conn.addr))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.push(chunk)?;
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| format!("{}: reading a response: {e}", self.conn.addr))?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status?,
            None => {
                return Err(format!(
                    "{}: a response without grpc-status",
                    self.conn.addr
                ));
            }
        }
        unframe(message.into_bytes())
    }
}

/// A message with gRPC's length prefix: no compression (0), then its length (big-endian
/// u32), then the protobuf bytes.
pub(crate) fn frame<M: Message>(message: &M) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // (Cannot fail: the capacity was reserved.)
    let _ = message.encode(&mut out);
    out.freeze()
}

/// The one message of a unary response, decoded from its framed bytes.
pub(crate) fn unframe<M: Message + Default>(mut framed: Bytes) -> Result<M, String> {
    if framed.len() < 5 {
        return Err(format!(
            "a response of {} bytes: no gRPC message in it",
            framed.len()
        ));
    }
    let compressed = framed.get_u8();
    let len = framed.get_u32() as usize;
    if compressed != 0 {
        return Err("a compressed response (none was asked for)".into());
    }
    if len != framed.len() {
        return Err(format!(
            "a response framed as {len} bytes carries {}",
            framed.len()
        ));
    }
    M::decode(framed).map_err(|e| format!("a response that does not decode: {e}"))
}

/// A response body as it arrives: usually one chunk, kept as it is.
#[derive(Default)]
struct Received {
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl Received {
    fn push(&mut self, chunk: Bytes) -> Result<(), String> {
        let len = self.first.as_ref().map_or(0, Bytes::len)
            + self.more.as_ref().map_or(0, BytesMut::len)
            + chunk.len();
        if len > MAX_RESPONSE {
            return Err(format!("a response over {MAX_RESPONSE} bytes"));
        }
        match (&self.first, &mut self.more) {
            (None, _) => self.first = Some(chunk),
            (Some(_), Some(more)) => more.extend_from_slice(&chunk),
            (Some(first), None) => {
                let mut more = BytesMut::with_capacity(len);
                more.extend_from_slice(first);
                more.extend_from_slice(&chunk);
                self.more = Some(more);
            }
        }
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        match (self.first, self.more) {
            (_, Some(more)) => more.freeze(),
            (Some(first), None) => first,
            (None, None) => Bytes::new(),
        }
    }
}

/// The call's outcome from `grpc-status` (and `grpc-message`), if the headers carry it.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let code = headers.get("grpc-status")?;
    if code.as_bytes() == b"0" {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Err(format!(
        "grpc status {}: {message}",
        String::from_utf8_lossy(code.as_bytes())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_is_framed_as_etcd_expects() {
        let framed = frame(&PutRequest {
            key: b"k1".to_vec(),
            value: Bytes::from_static(b"v"),
        });
        // Field 1 (bytes): 0x0a, length 2, "k1"; field 2 (bytes): 0x12, length 1, "v".
        assert_eq!(
            framed.as_ref(),
            [0, 0, 0, 0, 7, 0x0a, 2, b'k', b'1', 0x12, 1, b'v']
        );
        let framed = frame(&RangeRequest {
            key: b"k".to_vec(),
            serializable: true,
        });
        // Field 7 (varint): 0x38, 1.
        assert_eq!(framed.as_ref(), [0, 0, 0, 0, 5, 0x0a, 1, b'k', 0x38, 1]);
    }

    #[test]
    fn a_response_is_unframed_and_bad_frames_are_refused() {
        let answer = RangeResponse {
            header: Some(ResponseHeader {
                revision: 7,
                ..Default::default()
            }),
            kvs: vec![KeyValue {
                key: Bytes::from_static(b"k"),
                mod_revision: 7,
                value: Bytes::from_static(b"v"),
            }],
            more: false,
            count: 1,
        };
        let framed = frame(&answer);
        assert_eq!(unframe::<RangeResponse>(framed.clone()), Ok(answer));
        // Short, compressed, and a length that does not match.
        assert!(unframe::<RangeResponse>(framed.slice(..4)).is_err());
        let mut compressed = BytesMut::from(framed.as_ref());
        compressed[0] = 1;
        assert!(unframe::<RangeResponse>(compressed.freeze()).is_err());
        assert!(unframe::<RangeResponse>(framed.slice(..framed.len() - 1)).is_err());
    }

    #[test]
    fn a_body_in_several_chunks_is_joined() {
        let mut r = Received::default();
        r.push(Bytes::from_static(b"ab")).unwrap();
        assert_eq!(r.into_bytes(), Bytes::from_static(b"ab"));
        let mut r = Received::default();
        for part in [&b"ab"[..], b"c", b"de"] {
            r.push(Bytes::copy_from_slice(part)).unwrap();
        }
        assert_eq!(r.into_bytes(), Bytes::from_static(b"abcde"));
        let mut r = Received::default();
        assert!(r.push(Bytes::from(vec![0; MAX_RESPONSE + 1])).is_err());
    }

    #[test]
    fn grpc_status_is_read_with_its_message() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(Ok(())));
        h.insert("grpc-status", "14".parse().unwrap());
        h.insert("grpc-message", "no leader".parse().unwrap());
        assert_eq!(
            grpc_status(&h),
            Some(Err("grpc status 14: no leader".to_string()))
        );
    }

    /// How the test server answers a call.
    enum Answer {
        /// The framed message, then `grpc-status: 0`.
        Message(Bytes),
        /// Trailers-Only: this `grpc-status` with `grpc-message: refused`.
        Status(u32),
        /// This HTTP status, nothing else.
        Http(u16),
        /// The body, then the end of the stream without trailers.
        NoStatus(Bytes),
    }

    /// A gRPC server on h2 that answers each call with `answer(path, request message)`. It
    /// drops each connection after `calls_per_connection` calls.
    async fn server(
        calls_per_connection: usize,
        answer: fn(&str, Bytes) -> Answer,
    ) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                for _ in 0..calls_per_connection {
                    let Some(Ok((request, mut respond))) = conn.accept().await else {
                        break;
                    };
                    let (head, mut body) = request.into_parts();
                    assert_eq!(head.method, Method::POST);
                    assert_eq!(head.headers["content-type"], "application/grpc");
                    assert_eq!(head.headers["te"], "trailers");
                    let mut got = BytesMut::new();
                    while let Some(chunk) = body.data().await {
                        got.extend_from_slice(&chunk.unwrap());
                    }
                    let path = head.uri.path().to_string();
                    let response = http::Response::builder().status(200);
                    match answer(&path, got.freeze()) {
                        Answer::Message(message) => {
                            let head = response.body(()).unwrap();
                            let mut send = respond.send_response(head, false).unwrap();
                            send.send_data(message, false).unwrap();
                            let mut trailers = HeaderMap::new();
                            trailers.insert("grpc-status", "0".parse().unwrap());
                            send.send_trailers(trailers).unwrap();
                        }
                        Answer::Status(code) => {
                            let head = response
                                .header("grpc-status", code.to_string())
                                .header("grpc-message", "refused")
                                .body(())
                                .unwrap();
                            respond.send_response(head, true).unwrap();
                        }
                        Answer::Http(code) => {
                            let head = response.status(code).body(()).unwrap();
                            respond.send_response(head, true).unwrap();
                        }
                        Answer::NoStatus(body) => {
                            let head = response.body(()).unwrap();
                            let mut send = respond.send_response(head, false).unwrap();
                            send.send_data(body, true).unwrap();
                        }
                    }
                }
                // Tells the client (GOAWAY), lets the last answer out, then closes.
                conn.graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while conn.accept().await.is_some() {}
                })
                .await;
                drop(conn);
            }
        });
        (addr, task)
    }

    /// Answers a put with its key's length as the revision, a range with the key it asked
    /// for; a put of key "no" is refused (grpc-status 9), of "http" answered HTTP 503, of
    /// "bare" without a grpc-status, of "junk" with a message that does not decode.
    fn echo(path: &str, framed: Bytes) -> Answer {
        match path {
            PUT => {
                let put: PutRequest = unframe(framed).unwrap();
                match put.key.as_slice() {
                    b"no" => return Answer::Status(9),
                    b"http" => return Answer::Http(503),
                    b"bare" => return Answer::NoStatus(frame(&PutResponse::default())),
                    // Field 1 (a message) whose length runs past the end.
                    b"junk" => {
                        return Answer::Message(Bytes::from_static(&[0, 0, 0, 0, 2, 0x0a, 9]));
                    }
                    _ => {}
                }
                let header = ResponseHeader {
                    revision: put.key.len() as i64,
                    ..Default::default()
                };
                Answer::Message(frame(&PutResponse {
                    header: Some(header),
                }))
            }
            RANGE => {
                let get: RangeRequest = unframe(framed).unwrap();
                Answer::Message(frame(&RangeResponse {
                    kvs: vec![KeyValue {
                        key: Bytes::from(get.key),
                        mod_revision: i64::from(get.serializable),
                        value: Bytes::from_static(b"v"),
                    }],
                    count: 1,
                    ..Default::default()
                }))
            }
            other => panic!("unexpected call {other}"),
        }
    }

    #[tokio::test]
    async fn calls_reach_a_grpc_server_and_failures_say_why() {
        let (addr, server) = server(usize::MAX, echo).await;
        let conn = Connection::open(&format!("http://{addr}")).await.unwrap();
        let mut client = conn.client().await;
        let put = client
            .put(b"abc".to_vec(), Bytes::from_static(b"v"))
            .await
            .unwrap();
        assert_eq!(put.header.unwrap().revision, 3);
        let got = client.get(b"key".to_vec(), true).await.unwrap();
        assert_eq!(got.kvs[0].key, Bytes::from_static(b"key"));
        assert_eq!(got.kvs[0].mod_revision, 1);
        let refused = client.put(b"no".to_vec(), Bytes::new()).await;
        assert_eq!(refused.unwrap_err(), "grpc status 9: refused");
        let http = client
            .put(b"http".to_vec(), Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(http, format!("{addr}: HTTP status 503 Service Unavailable"));
        let bare = client
            .put(b"bare".to_vec(), Bytes::new())
            .await
            .unwrap_err();
        assert_eq!(bare, format!("{addr}: a response without grpc-status"));
        let junk = client
            .put(b"junk".to_vec(), Bytes::new())
            .await
            .unwrap_err();
        assert!(
            junk.starts_with("a response that does not decode"),
            "{junk}"
        );
        // Each failure ended its own stream only: the connection still serves.
        assert!(client.put(b"k".to_vec(), Bytes::new()).await.is_ok());
        server.abort();
    }

    #[tokio::test]
    async fn a_closed_connection_is_opened_again_once_for_all_its_clients() {
        // Every connection serves two calls and closes.
        let (addr, server) = server(2, echo).await;
        let conn = Connection::open(&addr).await.unwrap();
        let mut a = conn.client().await;
        let mut b = conn.client().await;
        let mut ok = 0;
        for _ in 0..10 {
            for client in [&mut a, &mut b] {
                // A call in flight when the server closes may fail; the next one reconnects.
                if client.put(b"k".to_vec(), Bytes::new()).await.is_ok() {
                    ok += 1;
                }
            }
        }
        assert!(
            ok >= 10,
            "only {ok} of 20 calls succeeded across reconnections"
        );
        let generation = conn.current.lock().await.0;
        assert!(
            (4..=20).contains(&generation),
            "{generation} reconnections for 20 calls, 2 per connection"
        );
        server.abort();
    }

    #[tokio::test]
    async fn refusals_name_the_endpoint() {
        let e = Connection::open("https://127.0.0.1:1").await.unwrap_err();
        assert!(e.contains("TLS"), "{e}");
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let e = Connection::open(&addr).await.unwrap_err();
        assert!(e.contains(&addr), "{e}");
    }
}
