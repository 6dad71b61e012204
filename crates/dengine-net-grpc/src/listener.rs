//! One hardened gRPC listener: bounded connections, a deadline for the handshake, HTTP/2
//! keep-alive, back-off when `accept` fails, TLS done here (with its own deadline).
//!
//! Every listener of a node — peers, clients, operators — is served through [`serve_routes`],
//! so each gets the same defences against connections that never finish their handshake,
//! sit idle forever or exhaust file descriptors:
//!
//! * at most [`ListenerLimits::max_connections`] open connections; one more is accepted and
//!   closed at once (counted, and logged at a bounded rate), so it does not wait in the
//!   kernel's backlog;
//! * a connection must complete its TLS handshake and send the HTTP/2 preface within
//!   [`ListenerLimits::handshake_timeout`] of being accepted, or it is closed;
//! * established connections are pinged every [`ListenerLimits::keepalive_interval`] and
//!   closed when a ping is not answered within [`ListenerLimits::keepalive_timeout`];
//! * at most [`ListenerLimits::max_concurrent_streams`] requests at once per connection;
//! * when `accept` fails for lack of resources (EMFILE, ENFILE, ENOBUFS, ENOMEM) the loop
//!   backs off (10 ms doubling to 1 s) instead of spinning, and says so at a bounded rate.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dengine_core::LogLimiter;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::authority::AuthorityFix;
use crate::config::{ListenerLimits, TlsConfig};
use crate::cork::Corked;
use crate::error::GrpcError;
use crate::files::read_file;

/// Server-side TLS of one listener, ready to accept handshakes.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    require_client_cert: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM files of `tls`: this server's certificate chain and key, and the CA
    /// whose client certificates it accepts — required when
    /// [`require_client_cert`](TlsConfig::require_client_cert) is set, optional otherwise
    /// (a client may still present one, e.g. for etcd's certificate authentication).
    pub fn from_config(tls: &TlsConfig) -> Result<Self, GrpcError> {
        let bad = |detail: String| GrpcError::Tls { detail };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&read_file(&tls.cert, "certificate")?)
                .collect::<Result<_, _>>()
                .map_err(|e| bad(format!("{}: {e}", tls.cert.display())))?;
        if certs.is_empty() {
            return Err(bad(format!(
                "{} holds no PEM certificate",
                tls.cert.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(&read_file(&tls.key, "private key")?)
            .map_err(|e| bad(format!("{}: {e}", tls.key.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&read_file(&tls.ca, "CA certificate")?) {
            let ca = ca.map_err(|e| bad(format!("{}: {e}", tls.ca.display())))?;
            roots
                .add(ca)
                .map_err(|e| bad(format!("{}: {e}", tls.ca.display())))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if tls.require_client_cert {
            verifier.build()
        } else {
            verifier.allow_unauthenticated().build()
        }
        .map_err(|e| bad(format!("client CA {}: {e}", tls.ca.display())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| {
                bad(format!(
                    "{} and {}: {e}",
                    tls.cert.display(),
                    tls.key.display()
                ))
            })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            require_client_cert: tls.require_client_cert,
        })
    }

    /// Whether clients must present a certificate signed by the configured CA.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }
}

/// A bound listening socket, not yet served. Binding every listener before anything is
/// written lets a node refuse to start (port in use) without leaving state behind.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    addr: SocketAddr,
    name: &'static str,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port). `name` ("peer", "client", "admin") appears in
    /// errors, logs and metrics.
    pub async fn bind(addr: SocketAddr, name: &'static str) -> Result<Self, GrpcError> {
        let inner = TcpListener::bind(addr).await.map_err(|e| GrpcError::Bind {
            addr,
            detail: format!("{name} listener: {e}"),
        })?;
        let addr = inner.local_addr().map_err(|e| GrpcError::Bind {
            addr,
            detail: e.to_string(),
        })?;
        // Exported at zero from the start, so that a dashboard has the series before the
        // first refusal.
        for reason in REFUSAL_REASONS {
            metrics::counter!(
                "dengine_connections_refused_total",
                "listener" => name, "reason" => reason
            )
            .increment(0);
        }
        Ok(Listener { inner, addr, name })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// What a listener accepts beyond gRPC over HTTP/2 ([`serve_routes`]). The default: nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServeOptions {
    /// Serve HTTP/1.1 requests too (for plain HTTP routes such as a client port's
    /// `/metrics`); gRPC always speaks HTTP/2.
    pub http1: bool,
    /// Accept an HTTP/2 `:authority` that carries a scheme (`http://host:port`), as etcd's Go
    /// client (etcdctl 3.4) sends: the scheme is dropped before the HTTP/2 server sees the
    /// request, which would otherwise reset it with `PROTOCOL_ERROR` (`authority.rs`). Costs
    /// an HPACK decoding of every request's headers.
    pub authority_with_scheme: bool,
}

/// Serves `routes` on `listener` with `tls` (plaintext when `None`) and `limits` until the
/// returned handle is shut down or dropped. `close` is signalled at shutdown so that open
/// streams of the services can end. `options` says what is accepted beyond gRPC.
pub fn serve_routes(
    listener: Listener,
    routes: Routes,
    tls: Option<ServerTls>,
    limits: &ListenerLimits,
    close: watch::Sender<bool>,
    options: ServeOptions,
) -> ServerHandle {
    let local_addr = listener.addr;
    let name = listener.name;
    let router = Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // Large frames: a 64 KiB append crosses in one frame instead of four.
        .max_frame_size(Some(1 << 20))
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .accept_http1(options.http1)
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .add_routes(routes);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    // The accept loop stops (and closes the listening socket) as soon as shutdown begins,
    // not when the last connection has drained: the address is free again at once.
    let accept_stopped = close.subscribe();
    let accept = Accept {
        listener: listener.inner,
        name,
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        max_connections: limits.max_connections,
        handshake_timeout: limits.handshake_timeout,
        authority_with_scheme: options.authority_with_scheme,
    };
    let task = tokio::spawn(async move {
        let stop = async {
            let _ = stop_rx.await;
        };
        // One accept task feeds the server; TLS handshakes run in their own tasks, each with
        // a deadline, so a slow client never holds up the others.
        let served = match tls {
            Some(tls) => {
                let (tx, rx) = mpsc::channel(64);
                let accepting = tokio::spawn(accept.run_tls(tls, tx, accept_stopped));
                serve_accepted(router, rx, accepting, stop).await
            }
            None => {
                let (tx, rx) = mpsc::channel(64);
                let accepting = tokio::spawn(accept.run_plain(tx, accept_stopped));
                serve_accepted(router, rx, accepting, stop).await
            }
        };
        if let Err(e) = served {
            tracing::error!(listener = name, %local_addr, "server stopped: {e}");
        }
    });
    ServerHandle::new(local_addr, close, stop_tx, task)
}

/// Serves `router` on the connections the accept task sends on `rx` until `stop`, then waits
/// for the accept task: the listening socket is closed when this returns.
async fn serve_accepted<IO>(
    router: tonic::transport::server::Router,
    rx: mpsc::Receiver<io::Result<IO>>,
    accepting: JoinHandle<()>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    IO: AsyncRead + AsyncWrite + Connected + Send + Unpin + 'static,
{
    let result = router
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), stop)
        .await;
    accepting.abort();
    let _ = accepting.await;
    result
}

/// HTTP/2 connection preface length: a client that has sent this much has started HTTP/2.
const PREFACE_BYTES: usize = 24;

/// The accept loop of one listener.
struct Accept {
    listener: TcpListener,
    name: &'static str,
    permits: Arc<Semaphore>,
    max_connections: usize,
    handshake_timeout: Duration,
    /// Connections go through an [`AuthorityFix`].
    authority_with_scheme: bool,
}

impl Accept {
    /// Accepts the next connection that may be served: backs off while `accept` fails for
    /// lack of resources, closes connections beyond the limit. `None` when told to stop.
    async fn next(
        &self,
        stopped: &mut watch::Receiver<bool>,
        refused_log: &mut LogLimiter,
        error_log: &mut LogLimiter,
    ) -> Option<(TcpStream, OwnedSemaphorePermit, Instant)> {
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = stopped.changed() => return None,
            };
            let (stream, remote) = match accepted {
                Ok(pair) => pair,
                Err(e) if is_transient(&e) => continue,
                Err(e) => {
                    count_refused(self.name, "accept_failed");
                    if let Some(suppressed) = error_log.allow(Instant::now()) {
                        tracing::warn!(
                            listener = self.name,
                            suppressed,
                            "accepting a connection failed: {e}; backing off {backoff:?} \
                             (out of file descriptors? raise the limit or lower \
                             max_connections)"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(10);
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                count_refused(self.name, "too_many_connections");
                if let Some(suppressed) = refused_log.allow(Instant::now()) {
                    tracing::warn!(
                        listener = self.name,
                        %remote,
                        suppressed,
                        "refused a connection: {} connections are open (the limit)",
                        self.max_connections
                    );
                }
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            return Some((stream, permit, Instant::now()));
        }
    }

    async fn run_plain(
        self,
        tx: mpsc::Sender<io::Result<LimitedConn<TcpStream>>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let (mut refused, mut errors) =
            (LogLimiter::per_ten_seconds(), LogLimiter::per_ten_seconds());
        while let Some((stream, permit, accepted)) =
            self.next(&mut stopped, &mut refused, &mut errors).await
        {
            let mut conn =
                LimitedConn::new(stream, permit, accepted + self.handshake_timeout, self.name);
            if self.authority_with_scheme {
                conn.fix = Some(Box::new(AuthorityFix::new()));
            }
            if tx.send(Ok(conn)).await.is_err() {
                return;
            }
        }
    }

    async fn run_tls(
        self,
        tls: ServerTls,
        tx: mpsc::Sender<io::Result<LimitedConn<TlsStream<TcpStream>>>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let (mut refused, mut errors) =
            (LogLimiter::per_ten_seconds(), LogLimiter::per_ten_seconds());
        let failed_log = Arc::new(parking_lot::Mutex::new(LogLimiter::per_ten_seconds()));
        while let Some((stream, permit, accepted)) =
            self.next(&mut stopped, &mut refused, &mut errors).await
        {
            let deadline = accepted + self.handshake_timeout;
            let acceptor = tls.acceptor.clone();
            let tx = tx.clone();
            let name = self.name;
            let failed_log = failed_log.clone();
            let fix = self.authority_with_scheme;
            tokio::spawn(async move {
                let remote = stream.peer_addr().ok();
                let handshake = tokio::time::timeout_at(deadline.into(), acceptor.accept(stream));
                let problem = match handshake.await {
                    Ok(Ok(tls_stream)) => {
                        let mut conn = LimitedConn::new(tls_stream, permit, deadline, name);
                        if fix {
                            conn.fix = Some(Box::new(AuthorityFix::new()));
                        }
                        let _ = tx.send(Ok(conn)).await;
                        return;
                    }
                    Ok(Err(e)) => ("tls_failed", e.to_string()),
                    Err(_) => ("handshake_timeout", "handshake not finished in time".into()),
                };
                count_refused(name, problem.0);
                let allowed = failed_log.lock().allow(Instant::now());
                if let Some(suppressed) = allowed {
                    tracing::warn!(
                        listener = name,
                        remote = ?remote,
                        suppressed,
                        "TLS handshake refused: {}",
                        problem.1
                    );
                }
            });
        }
    }
}

/// Errors of one connection attempt that say nothing about the listener.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// An accepted connection that holds one of the listener's connection permits while it
/// lives, and is closed if the client has not sent the HTTP/2 preface by `deadline`.
pub(crate) struct LimitedConn<IO> {
    /// The socket; the server's writes are gathered until its flush (`cork.rs`).
    io: Corked<IO>,
    _permit: OwnedSemaphorePermit,
    /// Until the preface arrived: the deadline and the bytes read so far.
    handshake: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
    name: &'static str,
    /// The client's bytes go through this filter first, if set.
    fix: Option<Box<AuthorityFix>>,
    /// The client closed its side (with a filter: once its last bytes are handed over, reads
    /// answer end of stream).
    eof: bool,
}

impl<IO> LimitedConn<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit, deadline: Instant, name: &'static str) -> Self {
        LimitedConn {
            io: Corked::new(io),
            _permit: permit,
            handshake: Some((Box::pin(tokio::time::sleep_until(deadline.into())), 0)),
            name,
            fix: None,
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> LimitedConn<IO> {
    /// Reads from the connection itself, closing it if the preface is late.
    fn poll_io(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some((_, read)) = &mut self.handshake {
                    *read += buf.filled().len() - before;
                    if *read >= PREFACE_BYTES {
                        self.handshake = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some((deadline, _)) = &mut self.handshake
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    count_refused(self.name, "handshake_timeout");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface before the handshake deadline",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for LimitedConn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.fix.as_ref().is_some_and(|f| f.is_done()) {
            this.fix = None;
        }
        let Some(mut fix) = this.fix.take() else {
            return this.poll_io(cx, buf);
        };
        let polled = loop {
            let out = fix.output();
            if !out.is_empty() {
                let n = out.len().min(buf.remaining());
                buf.put_slice(&out.split_to(n));
                break Poll::Ready(Ok(()));
            }
            if this.eof {
                break Poll::Ready(Ok(()));
            }
            let mut scratch = [const { std::mem::MaybeUninit::<u8>::uninit() }; 16 * 1024];
            let mut read = ReadBuf::uninit(&mut scratch);
            match this.poll_io(cx, &mut read) {
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    fix.finish();
                    this.eof = true;
                }
                Poll::Ready(Ok(())) => {
                    if let Err(e) = fix.feed(read.filled()) {
                        break Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "HTTP/2 from the client that the authority filter cannot \
                                 follow after re-encoding its headers: {}",
                                e.0
                            ),
                        )));
                    }
                }
                other => break other,
            }
        };
        this.fix = Some(fix);
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for LimitedConn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for LimitedConn<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.get_ref().connect_info()
    }
}

impl Connected for LimitedConn<TlsStream<TcpStream>> {
    type ConnectInfo = <TlsStream<TcpStream> as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.get_ref().connect_info()
    }
}

/// Every `reason` of `dengine_connections_refused_total`.
const REFUSAL_REASONS: [&str; 4] = [
    "accept_failed",
    "too_many_connections",
    "tls_failed",
    "handshake_timeout",
];

/// Counts a connection a listener refused (`dengine_connections_refused_total`).
fn count_refused(listener: &'static str, reason: &'static str) {
    metrics::counter!(
        "dengine_connections_refused_total",
        "listener" => listener, "reason" => reason
    )
    .increment(1);
}

/// HTTP/2 flow-control windows. The defaults (64 KiB) stall a pipelined append stream after
/// one large message per round trip.
pub(crate) const STREAM_WINDOW: u32 = 8 << 20;
pub(crate) const CONNECTION_WINDOW: u32 = 16 << 20;

/// A running server. Dropping it stops the server (without waiting).
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    close: watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl ServerHandle {
    pub(crate) fn new(
        local_addr: SocketAddr,
        close: watch::Sender<bool>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    ) -> Self {
        ServerHandle {
            local_addr,
            close,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, ends the open streams (peers reconnect elsewhere or
    /// later) and waits up to two seconds for the connections to close.
    pub async fn shutdown(mut self) {
        let _ = self.close.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.close.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
