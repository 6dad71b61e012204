//! Write coalescing for HTTP/2 connections: a connection's writes are gathered in a small
//! buffer and reach the socket at its flush, after the connection task has given the other
//! tasks one turn to add theirs. The price is one copy of each small write into the buffer.
//!
//! Why: the HTTP/2 server flushes at the end of every poll of its connection task, and under
//! load each response (written by its own request task) wakes that task on its own, so a
//! busy connection wrote about one `writev` per response — measured 1.29 per request for
//! 48,000 serializable reads/s and 1.26 per put at 256 clients, each a system call plus a
//! wake-up of the reader on the other end. Giving the task back once before the write lets
//! the responses that are ready meanwhile go out in the same write. An idle connection pays
//! one extra poll of its task (microseconds) per flush, not a timer.
//!
//! [`WriteCork`] holds the buffer and the rule; [`Corked`] is a socket whose writes go
//! through one. The server's connections ([`LimitedConn`](crate::listener::LimitedConn)) wrap
//! theirs in it, and so do the connections this member opens to the others (Raft messages,
//! forwarded writes), made by [`CorkedConnector`].

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::transport::Uri;

/// Bytes gathered before a write goes straight to the socket: responses and acknowledgements
/// are small; a larger write (a snapshot chunk, a large range answer) first sends what is
/// gathered and then goes through unbuffered.
pub(crate) const CORK_BYTES: usize = 16 * 1024;

/// The gathered bytes of one connection and whether its flush has already given its turn.
#[derive(Debug, Default)]
pub(crate) struct WriteCork {
    buf: Vec<u8>,
    /// Bytes of `buf` already written to the socket.
    sent: usize,
    /// The current flush returned `Pending` once to let other tasks add their writes; the
    /// next one writes.
    yielded: bool,
}

impl WriteCork {
    /// Gathers `data` (all of it, or nothing if it does not fit: then what is gathered goes
    /// to `io` first and `data` is written to `io` directly).
    pub(crate) fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(io, cx, &[io::IoSlice::new(data)])
    }

    /// [`poll_write`](Self::poll_write) of several slices, gathered as one.
    pub(crate) fn poll_write_vectored<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending() + total > CORK_BYTES {
            std::task::ready!(self.poll_drain(io, cx))?;
            if total > CORK_BYTES {
                return Pin::new(io).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            self.buf.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    /// Flushes: the first call with bytes gathered returns `Pending` after waking the task
    /// (one turn for the other tasks to add theirs); the next writes everything gathered,
    /// then flushes `io`.
    pub(crate) fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 && !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.poll_drain(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    /// Writes everything gathered, then shuts `io` down.
    pub(crate) fn poll_shutdown<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_drain(io, cx))?;
        Pin::new(io).poll_shutdown(cx)
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Writes the gathered bytes to `io` until none is left.
    fn poll_drain<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match std::task::ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.sent..])) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the connection accepted no more bytes",
                    )));
                }
                Ok(n) => self.sent += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.buf.clear();
        self.sent = 0;
        self.yielded = false;
        if self.buf.capacity() > CORK_BYTES {
            self.buf.shrink_to(CORK_BYTES);
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection whose writes go through a [`WriteCork`]; reads pass straight through.
#[derive(Debug)]
pub(crate) struct Corked<IO> {
    io: IO,
    cork: WriteCork,
}

impl<IO> Corked<IO> {
    pub(crate) fn new(io: IO) -> Self {
        Corked {
            io,
            cork: WriteCork::default(),
        }
    }

    /// The socket.
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Corked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Corked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.cork.poll_write(&mut this.io, cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.cork.poll_write_vectored(&mut this.io, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Slices are gathered into the cork's buffer: one copy, whatever the socket supports.
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.cork.poll_flush(&mut this.io, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.cork.poll_shutdown(&mut this.io, cx)
    }
}

/// Opens the TCP connections of a client channel (`Endpoint::connect_with_connector`) as
/// [`Corked`] sockets with `TCP_NODELAY` (the cork gathers the writes, so Nagle's delay would
/// only add to it). The endpoint's TLS, if any, is layered on top by tonic; its connect timeout
/// still applies.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CorkedConnector;

impl Service<Uri> for CorkedConnector {
    type Response = TokioIo<Corked<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let tcp = TcpStream::connect(socket_address(&uri)?).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(Corked::new(tcp)))
        })
    }
}

/// `host:port` of `uri` for [`TcpStream::connect`] (which resolves names): the port of the
/// URI, else the scheme's (443 for `https`, 80 otherwise).
fn socket_address(uri: &Uri) -> io::Result<String> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    // `host` keeps the brackets of an IPv6 address, as the socket address syntax wants.
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    /// A socket that records each write it accepts, takes at most `limit` bytes per write,
    /// answers `Pending` to every `stall`-th write, and can fail.
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
        limit: Option<usize>,
        stall_every: Option<usize>,
        calls: usize,
        fail: bool,
    }

    impl Socket {
        fn bytes(&self) -> Vec<u8> {
            self.writes.concat()
        }
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.fail {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone")));
            }
            self.calls += 1;
            if self
                .stall_every
                .is_some_and(|n| self.calls.is_multiple_of(n))
            {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = self.limit.map_or(data.len(), |l| l.min(data.len()));
            self.writes.push(data[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct CountWakes(AtomicUsize);

    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<CountWakes>, Waker) {
        let count = Arc::new(CountWakes::default());
        (count.clone(), Waker::from(count))
    }

    /// Polls `f` until it is ready (the socket's stalls wake the task, as a real one would).
    fn finish<T>(mut f: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        for _ in 0..1000 {
            if let Poll::Ready(v) = f(&mut cx) {
                return v;
            }
        }
        panic!("never finished");
    }

    #[test]
    fn writes_gathered_before_a_flush_reach_the_socket_in_one_write_after_one_turn() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        for part in [&b"headers"[..], b"data", b"trailers"] {
            let written = cork.poll_write(&mut socket, &mut cx, part);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == part.len()));
        }
        assert!(
            socket.writes.is_empty(),
            "nothing is written before the flush"
        );
        // The first flush gives the task's turn away, and wakes it to come back.
        assert!(cork.poll_flush(&mut socket, &mut cx).is_pending());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert!(socket.writes.is_empty());
        // Another response added meanwhile goes out in the same write.
        assert!(cork.poll_write(&mut socket, &mut cx, b"more").is_ready());
        assert!(matches!(
            cork.poll_flush(&mut socket, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(socket.writes, vec![b"headersdatatrailersmore".to_vec()]);
        assert_eq!(socket.flushes, 1);
        // The next flush with new bytes yields again: the turn is per flush.
        assert!(cork.poll_write(&mut socket, &mut cx, b"next").is_ready());
        assert!(cork.poll_flush(&mut socket, &mut cx).is_pending());
        assert!(cork.poll_flush(&mut socket, &mut cx).is_ready());
        assert_eq!(socket.bytes(), b"headersdatatrailersmorenext");
    }

    #[test]
    fn a_flush_with_nothing_gathered_flushes_the_socket_at_once() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        let (wakes, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(matches!(
            cork.poll_flush(&mut socket, &mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!((socket.flushes, wakes.0.load(Ordering::SeqCst)), (1, 0));
    }

    #[test]
    fn a_write_larger_than_the_buffer_sends_what_is_gathered_first_then_goes_straight_through() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        let big = vec![7u8; CORK_BYTES + 1];
        finish(|cx| cork.poll_write(&mut socket, cx, b"small")).unwrap();
        let n = finish(|cx| cork.poll_write(&mut socket, cx, &big)).unwrap();
        assert_eq!(n, big.len());
        assert_eq!(socket.writes.len(), 2);
        assert_eq!(socket.writes[0], b"small");
        assert_eq!(socket.writes[1], big);
        // Vectored: the same rule on the slices' total.
        let halves = [io::IoSlice::new(&big[..10]), io::IoSlice::new(&big[10..])];
        finish(|cx| cork.poll_write(&mut socket, cx, b"x")).unwrap();
        let n = finish(|cx| cork.poll_write_vectored(&mut socket, cx, &halves)).unwrap();
        // This socket writes the first slice of a vectored write only (tokio's default):
        // the partial count comes back to the caller, who writes the rest.
        assert_eq!(n, 10);
        assert_eq!(socket.writes[2], b"x");
        assert_eq!(socket.writes[3], big[..10]);
    }

    #[test]
    fn bytes_keep_their_order_through_partial_writes_and_stalls() {
        let mut cork = WriteCork::default();
        let mut socket = Socket {
            limit: Some(1000),
            stall_every: Some(3),
            ..Socket::default()
        };
        let mut expected = Vec::new();
        for i in 0..200u32 {
            let part: Vec<u8> = (0..(i * 37 % 3000)).map(|j| (i + j) as u8).collect();
            expected.extend_from_slice(&part);
            let mut off = 0;
            while off < part.len() {
                off += finish(|cx| cork.poll_write(&mut socket, cx, &part[off..])).unwrap();
            }
            if i.is_multiple_of(7) {
                finish(|cx| cork.poll_flush(&mut socket, cx)).unwrap();
            }
            if i.is_multiple_of(11) {
                let slices = [io::IoSlice::new(b"ab"), io::IoSlice::new(b"cd")];
                expected.extend_from_slice(b"abcd");
                assert_eq!(
                    finish(|cx| cork.poll_write_vectored(&mut socket, cx, &slices)).unwrap(),
                    4
                );
            }
        }
        finish(|cx| cork.poll_shutdown(&mut socket, cx)).unwrap();
        assert!(socket.shut);
        assert_eq!(socket.bytes(), expected);
    }

    #[test]
    fn shutdown_sends_what_is_gathered_first() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        finish(|cx| cork.poll_write(&mut socket, cx, b"last words")).unwrap();
        finish(|cx| cork.poll_shutdown(&mut socket, cx)).unwrap();
        assert_eq!(socket.bytes(), b"last words");
        assert!(socket.shut);
    }

    #[tokio::test]
    async fn the_connector_opens_a_corked_socket_that_carries_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = [0u8; 5];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let io = CorkedConnector.call(uri).await.unwrap();
        let mut conn = io.into_inner();
        conn.write_all(b"hello").await.unwrap();
        conn.flush().await.unwrap();
        let mut back = [0u8; 5];
        conn.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        echo.await.unwrap();
        // An address nobody listens on is an error, not a hang.
        drop(conn);
        let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = free.local_addr().unwrap();
        drop(free);
        let uri: Uri = format!("http://{closed}").parse().unwrap();
        assert!(CorkedConnector.call(uri).await.is_err());
    }

    #[test]
    fn the_socket_address_of_a_uri_keeps_ipv6_brackets_and_defaults_the_port_by_scheme() {
        let of = |u: &str| socket_address(&u.parse().unwrap()).unwrap();
        assert_eq!(of("http://127.0.0.1:2380"), "127.0.0.1:2380");
        assert_eq!(of("https://[::1]:2380"), "[::1]:2380");
        assert!(
            of("https://[::1]:2380")
                .parse::<std::net::SocketAddr>()
                .is_ok()
        );
        assert_eq!(of("http://node-2.example:2380"), "node-2.example:2380");
        assert_eq!(of("https://node-2.example"), "node-2.example:443");
        assert_eq!(of("http://node-2.example"), "node-2.example:80");
        let no_host = socket_address(&"/only/a/path".parse().unwrap()).unwrap_err();
        assert_eq!(no_host.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_socket_error_reaches_the_flush() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        finish(|cx| cork.poll_write(&mut socket, cx, b"lost")).unwrap();
        socket.fail = true;
        let err = finish(|cx| cork.poll_flush(&mut socket, cx)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
