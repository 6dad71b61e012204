//! Write coalescing for HTTP/2 connections: a connection's writes are gathered in a small
//! buffer and reach the socket at its flush, after the connection task has given the other
//! tasks one turn to add theirs — when such turns have been gathering something on this
//! connection. The price is one copy of each small write into the buffer.
//!
//! Why: the HTTP/2 server flushes at the end of every poll of its connection task, and under
//! load each response (written by its own request task) wakes that task on its own, so a
//! busy connection wrote about one `writev` per response — measured 1.29 per request for
//! 48,000 serializable reads/s and 1.26 per put at 256 clients, each a system call plus a
//! wake-up of the reader on the other end. Giving the task back once before the write lets
//! the responses that are ready meanwhile go out in the same write.
//!
//! Why only then: a turn given away is not free. The task re-queues itself behind the others
//! and the scheduler wakes an idle worker thread to share the queue, which on a mostly idle
//! machine costs a cross-CPU wake-up per flush. A connection whose turns gather nothing (one
//! client, one request at a time) writes at once instead, and tries a turn again every
//! [`PROBE_EVERY`] flushes to notice when it gets busy (docs/benchmarks.md, "2026-12-06
//! 02:05–03:40 UTC": with in-place commit-index writes, 8 fewer context switches per put and
//! a 9% lower p50 at one client).
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

/// How sure a connection is that giving its turn away gathers writes: each turn that
/// gathered something adds one, each that gathered nothing takes one away, up to this.
const PAYOFF_MAX: u8 = 3;

/// While turns have stopped paying (payoff 0), one flush in this many still gives its turn
/// away, to notice that the connection has become busy.
pub(crate) const PROBE_EVERY: u8 = 8;

/// The gathered bytes of one connection, whether its flush has already given its turn, and
/// whether giving it has been worth it lately.
#[derive(Debug)]
pub(crate) struct WriteCork {
    buf: Vec<u8>,
    /// Bytes of `buf` already written to the socket.
    sent: usize,
    /// The current flush returned `Pending` once to let other tasks add their writes; the
    /// next one writes.
    yielded: bool,
    /// Bytes were gathered while the turn was given away.
    gathered: bool,
    /// 0 to [`PAYOFF_MAX`]: how many more of the recent turns gathered writes than did not.
    /// A flush gives its turn away while this is above 0.
    payoff: u8,
    /// Flushes without a turn given away since payoff fell to 0.
    since_probe: u8,
}

impl Default for WriteCork {
    fn default() -> Self {
        WriteCork {
            buf: Vec::new(),
            sent: 0,
            yielded: false,
            gathered: false,
            // A new connection starts by giving turns: a burst of requests is what opens most.
            payoff: 1,
            since_probe: 0,
        }
    }
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
        // Bytes arriving while the turn is given away are what the turn is for.
        self.gathered |= self.yielded && total > 0;
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

    /// Flushes: the first call with bytes gathered may return `Pending` after waking the task
    /// (one turn for the other tasks to add theirs, see [`give_turn`](Self::give_turn)); the
    /// next writes everything gathered, then flushes `io`.
    pub(crate) fn poll_flush<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending() > 0 && !self.yielded && self.give_turn() {
            self.yielded = true;
            self.gathered = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(self.poll_drain(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    /// Whether this flush gives the task's turn away first: yes while recent turns gathered
    /// writes, else once every [`PROBE_EVERY`] flushes.
    fn give_turn(&mut self) -> bool {
        if self.payoff > 0 {
            return true;
        }
        self.since_probe += 1;
        if self.since_probe >= PROBE_EVERY {
            self.since_probe = 0;
            return true;
        }
        false
    }

    /// Scores the turn given away before this write: did other writes join it?
    fn settle_turn(&mut self) {
        if self.yielded {
            self.payoff = if self.gathered {
                (self.payoff + 1).min(PAYOFF_MAX)
            } else {
                self.payoff.saturating_sub(1)
            };
        }
        self.yielded = false;
        self.gathered = false;
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
        self.settle_turn();
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

    /// One flush cycle: `parts` written, a flush, and `during_turn` written if the flush gave
    /// its turn away. Returns whether it did.
    fn cycle(cork: &mut WriteCork, socket: &mut Socket, during_turn: &[u8]) -> bool {
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(cork.poll_write(socket, &mut cx, b"response").is_ready());
        let gave_turn = cork.poll_flush(socket, &mut cx).is_pending();
        if gave_turn && !during_turn.is_empty() {
            assert!(cork.poll_write(socket, &mut cx, during_turn).is_ready());
        }
        finish(|cx| cork.poll_flush(socket, cx)).unwrap();
        gave_turn
    }

    #[test]
    fn a_connection_whose_turns_gather_nothing_writes_at_once_and_probes_now_and_then() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        // One request at a time: the first turn gathers nothing, and from then on flushes
        // write at once, except one in PROBE_EVERY.
        let turns: Vec<bool> = (0..1 + 3 * PROBE_EVERY as usize)
            .map(|_| cycle(&mut cork, &mut socket, b""))
            .collect();
        assert!(turns[0], "a new connection gives its first turn");
        let later: Vec<usize> = (1..turns.len()).filter(|&i| turns[i]).collect();
        let every = PROBE_EVERY as usize;
        assert_eq!(later, vec![every, 2 * every, 3 * every]);
        // Every byte went out, one write per flush.
        assert_eq!(socket.writes.len(), turns.len());
    }

    #[test]
    fn a_connection_whose_turns_gather_writes_keeps_giving_them_and_an_idle_one_resumes() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        for _ in 0..20 {
            assert!(cycle(&mut cork, &mut socket, b"another response"));
        }
        // Busy: one turn that gathers nothing does not stop the next.
        assert!(cycle(&mut cork, &mut socket, b""));
        assert!(cycle(&mut cork, &mut socket, b"more"));
        // Idle long enough: turns stop (after at most PAYOFF_MAX that gather nothing)...
        let idle: Vec<bool> = (0..8).map(|_| cycle(&mut cork, &mut socket, b"")).collect();
        assert_eq!(idle, [true, true, true, false, false, false, false, false]);
        // ...until a probe gathers something, after which every flush gives its turn again.
        let until_probe = (0..PROBE_EVERY)
            .position(|_| cycle(&mut cork, &mut socket, b"a burst"))
            .expect("a probe within PROBE_EVERY flushes");
        // (The five flushes without a turn above count towards it.)
        assert_eq!(until_probe, usize::from(PROBE_EVERY) - 5 - 1);
        assert!(cycle(&mut cork, &mut socket, b"a burst"));
        assert!(cycle(&mut cork, &mut socket, b"a burst"));
        assert_eq!(
            socket.bytes().len(),
            socket.writes.iter().map(Vec::len).sum::<usize>()
        );
    }

    #[test]
    fn a_turn_cut_short_by_a_full_buffer_counts_as_one_that_gathered() {
        let (mut cork, mut socket) = (WriteCork::default(), Socket::default());
        let (_, w) = waker();
        let mut cx = Context::from_waker(&w);
        assert!(cork.poll_write(&mut socket, &mut cx, b"first").is_ready());
        assert!(cork.poll_flush(&mut socket, &mut cx).is_pending());
        // A large write arrives during the turn: the gathered bytes go out before it.
        let big = vec![1u8; CORK_BYTES];
        finish(|cx| cork.poll_write(&mut socket, cx, &big)).unwrap();
        assert_eq!(socket.bytes(), b"first");
        assert_eq!(cork.payoff, 2, "the turn was worth it");
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
