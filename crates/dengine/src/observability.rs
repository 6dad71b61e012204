//! Metrics and trace export: a Prometheus `/metrics` endpoint for the [`metrics`] facade and
//! OpenTelemetry OTLP/gRPC trace export for [`tracing`] spans.
//!
//! A binary calls, in this order:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = dengine::Settings::load(None)?;
//! // Exporters first: `install` needs to run before the tracing subscriber is installed.
//! let _observability = dengine::observability::install(&settings.observability)?;
//! dengine::observability::init_logging("info")?; // RUST_LOG wins when set
//! // ... run the node; dropping the guard flushes pending spans.
//! # Ok(())
//! # }
//! ```
//!
//! With neither `metrics_addr` nor `otlp_endpoint` set, [`install`] does nothing at all.
//!
//! The exporters run on one background thread (`dengine-observability`) with its own small
//! Tokio runtime, so they work whether or not the caller runs inside a runtime and do not
//! compete with the node's tasks.
//!
//! The metric names and their meaning are listed in [`METRICS`] (and in
//! `docs/observability.md`); the runtime records them through the names in
//! `metric_names.rs`.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use opentelemetry::KeyValue;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use dengine_node::metric_names::{
    BATCH_BUCKETS_ENTRIES, LATENCY_BUCKETS_SECONDS, METRICS, MetricKind,
};

use crate::settings::ObservabilitySettings;

/// How long [`ObservabilityGuard`]'s drop waits for pending spans to be exported.
pub const TRACE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Timeout of one OTLP export call; export failures are logged and otherwise ignored.
pub const OTLP_EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a gauge stays exported without being set (see `build_recorder`).
const GAUGE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The `service.name` resource attribute of exported spans.
pub const SERVICE_NAME: &str = "dengine";

/// Targets whose spans and events are never exported as traces: the exporter's own stack
/// (exporting them would produce spans while exporting spans).
const NOT_TRACED_TARGETS: &[&str] = &["opentelemetry", "tonic", "h2", "hyper", "tower"];

/// Longest request head the `/metrics` server reads.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// How long the `/metrics` server waits for a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the Prometheus recorder's upkeep (histogram bucket draining) runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The tracer of the live [`ObservabilityGuard`], picked up by [`init_logging`].
static OTEL_TRACER: Mutex<Option<SdkTracer>> = Mutex::new(None);

/// Why observability could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    /// `observability.metrics_addr` is not a socket address.
    #[error(
        "observability.metrics_addr = {addr:?} is not an IP socket address; use e.g. \
         127.0.0.1:9100"
    )]
    MetricsAddr {
        /// The configured value.
        addr: String,
    },
    /// The metrics port could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source}; is another process using the port? \
         change observability.metrics_addr"
    )]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A [`metrics`] recorder is already installed in this process (it can be set only once).
    #[error(
        "a metrics recorder is already installed in this process; call \
         observability::install only once per process"
    )]
    RecorderAlreadyInstalled,
    /// The Prometheus recorder could not be configured.
    #[error("cannot configure the Prometheus recorder: {0}")]
    Prometheus(String),
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error(
        "cannot set up OTLP trace export to {endpoint}: {message}; check \
         observability.otlp_endpoint (e.g. http://127.0.0.1:4317)"
    )]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// What the exporter reported.
        message: String,
    },
    /// A global tracing subscriber was installed before [`install`], so exported spans could
    /// not be connected to it.
    #[error(
        "a global tracing subscriber is already installed, so spans could not reach the OTLP \
         exporter; call observability::install before init_logging (or add \
         ObservabilityGuard::otel_layer to your own subscriber)"
    )]
    SubscriberAlreadySet,
    /// [`init_logging`] was called when a global tracing subscriber was already installed.
    #[error("logging is already initialized in this process (a global tracing subscriber is set)")]
    LoggingAlreadyInitialized,
    /// The log filter does not parse.
    #[error(
        "invalid log filter {filter:?}: {message}; use e.g. \"info\" or \
         \"info,dengine_node=debug\""
    )]
    Filter {
        /// The filter text.
        filter: String,
        /// The parser's complaint.
        message: String,
    },
    /// The background thread or its runtime could not be started.
    #[error("cannot start the observability thread: {0}")]
    Thread(#[source] io::Error),
    /// Pending spans could not be flushed on shutdown.
    #[error("flushing traces on shutdown failed: {0}")]
    Shutdown(String),
}

/// Keeps the exporters of [`install`] running; dropping it flushes pending spans (waiting at
/// most [`TRACE_SHUTDOWN_TIMEOUT`]) and stops the `/metrics` server. The metrics recorder
/// itself stays installed for the rest of the process (the facade cannot uninstall it).
#[derive(Default)]
#[must_use = "dropping the guard stops the exporters"]
pub struct ObservabilityGuard {
    metrics_addr: Option<SocketAddr>,
    metrics: Option<PrometheusHandle>,
    tracer_provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ObservabilityGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservabilityGuard")
            .field("metrics_addr", &self.metrics_addr)
            .field("traces_enabled", &self.tracer.is_some())
            .finish_non_exhaustive()
    }
}

impl ObservabilityGuard {
    /// The address the `/metrics` server listens on (with the real port when
    /// `metrics_addr` asked for port 0), if metrics are served.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Prometheus text exposition of all metrics, as `/metrics` serves it, if metrics are
    /// enabled.
    pub fn render_metrics(&self) -> Option<String> {
        self.metrics.as_ref().map(exposition)
    }

    /// Whether spans are exported by OTLP.
    pub fn traces_enabled(&self) -> bool {
        self.tracer.is_some()
    }

    /// A `tracing_subscriber` layer that exports spans through this guard's OTLP exporter, for
    /// applications that build their own subscriber instead of calling [`init_logging`].
    /// `None` when OTLP export is off.
    pub fn otel_layer<S>(&self) -> Option<impl Layer<S> + Send + Sync + 'static>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        self.tracer.clone().map(otel_layer)
    }

    /// Flushes pending spans and stops the exporters, reporting a failed flush (dropping the
    /// guard does the same silently).
    pub fn shutdown(mut self) -> Result<(), ObservabilityError> {
        self.stop_all()
    }

    fn stop_all(&mut self) -> Result<(), ObservabilityError> {
        let mut result = Ok(());
        if let Some(provider) = self.tracer_provider.take() {
            if let Ok(mut slot) = OTEL_TRACER.lock() {
                *slot = None;
            }
            self.tracer = None;
            result = provider
                .shutdown_with_timeout(TRACE_SHUTDOWN_TIMEOUT)
                .map_err(|e| ObservabilityError::Shutdown(e.to_string()));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }
}

impl Drop for ObservabilityGuard {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

/// Sets up what `settings` asks for: with `metrics_addr`, a Prometheus recorder for the
/// [`metrics`] facade (descriptions and histogram buckets of [`METRICS`] registered) and an
/// HTTP server answering `GET /metrics`; with `otlp_endpoint`, OTLP/gRPC trace export, which
/// [`init_logging`] (or [`ObservabilityGuard::otel_layer`]) connects to `tracing`. With neither,
/// does nothing and logs nothing.
///
/// Call it once per process, before [`init_logging`]. Export failures (collector down) are
/// reported in the background through the log and never block the node.
pub fn install(settings: &ObservabilitySettings) -> Result<ObservabilityGuard, ObservabilityError> {
    install_inner(settings, true)
}

fn install_inner(
    settings: &ObservabilitySettings,
    require_no_subscriber: bool,
) -> Result<ObservabilityGuard, ObservabilityError> {
    let mut guard = ObservabilityGuard::default();
    if settings.metrics_addr.is_none() && settings.otlp_endpoint.is_none() {
        return Ok(guard);
    }
    if settings.otlp_endpoint.is_some()
        && require_no_subscriber
        && tracing::dispatcher::has_been_set()
    {
        return Err(ObservabilityError::SubscriberAlreadySet);
    }
    // Bind before anything global happens, so a busy port leaves the process unchanged.
    let listener = match &settings.metrics_addr {
        Some(addr) => Some(bind_metrics(addr)?),
        None => None,
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ObservabilityError::Thread)?;
    let handle = runtime.handle().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("dengine-observability".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stop_rx.await;
            });
        })
        .map_err(ObservabilityError::Thread)?;
    guard.stop = Some(stop_tx);
    guard.thread = Some(thread);
    let _entered = handle.enter();

    if let Some(listener) = listener {
        let recorder = build_recorder()?;
        let prometheus = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|_| ObservabilityError::RecorderAlreadyInstalled)?;
        describe_metrics();
        guard.metrics_addr = Some(serve_metrics(&handle, listener, prometheus.clone())?);
        guard.metrics = Some(prometheus);
    }

    if let Some(endpoint) = &settings.otlp_endpoint {
        let instance = settings
            .service_instance_id
            .clone()
            .unwrap_or_else(default_instance_id);
        let provider = build_tracer_provider(endpoint, &instance)?;
        let tracer = provider.tracer(SERVICE_NAME);
        if let Ok(mut slot) = OTEL_TRACER.lock() {
            *slot = Some(tracer.clone());
        }
        guard.tracer = Some(tracer);
        guard.tracer_provider = Some(provider);
    }
    Ok(guard)
}

/// The W3C trace context (`traceparent`, and `tracestate` when set) of the current span, as
/// headers to send with a request to another member, so that its spans join the same trace.
/// Empty when no span is exported (no OTLP endpoint, or the span is filtered out).
pub fn trace_headers() -> Vec<(String, String)> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        // No enabled span (the common case on a write path whose spans are at debug level):
        // nothing to carry, and nothing allocated.
        return Vec::new();
    }
    let mut headers = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers.into_iter().collect()
}

/// Makes `span` a child of the trace that `header` (a request's header lookup) carries, as
/// [`trace_headers`] wrote it on the sending member; a request without one leaves `span` a
/// root.
pub fn continue_trace(span: &tracing::Span, header: impl Fn(&str) -> Option<String>) {
    let mut headers = std::collections::HashMap::new();
    for key in ["traceparent", "tracestate"] {
        if let Some(value) = header(key) {
            headers.insert(key.to_owned(), value);
        }
    }
    if headers.is_empty() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&headers);
    let _ = span.set_parent(parent);
}

/// Installs the process's global `tracing` subscriber: human-readable logs to stderr filtered
/// by `filter` (an `EnvFilter` directive such as `info` or `info,dengine_node=debug`; the
/// `RUST_LOG` environment variable wins when set), plus the OTLP trace layer when [`install`]
/// set up trace export. Also routes `log` records into `tracing`.
///
/// A second call (or a call after another subscriber was installed) returns
/// [`ObservabilityError::LoggingAlreadyInitialized`] and changes nothing.
pub fn init_logging(filter: &str) -> Result<(), ObservabilityError> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => filter.to_owned(),
    };
    let env_filter = tracing_subscriber::EnvFilter::try_new(&directives).map_err(|e| {
        ObservabilityError::Filter {
            filter: directives.clone(),
            message: e.to_string(),
        }
    })?;
    if tracing::dispatcher::has_been_set() {
        return Err(ObservabilityError::LoggingAlreadyInitialized);
    }
    let tracer = OTEL_TRACER.lock().ok().and_then(|slot| slot.clone());
    tracing_subscriber::registry()
        .with(env_filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(io::IsTerminal::is_terminal(&io::stderr())),
        )
        .with(tracer.map(otel_layer))
        .try_init()
        .map_err(|_| ObservabilityError::LoggingAlreadyInitialized)
}

fn otel_layer<S>(tracer: SdkTracer) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            let target = meta.target();
            !NOT_TRACED_TARGETS.iter().any(|t| {
                target
                    .strip_prefix(t)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', ':', '-']))
            })
        }))
}

/// `<host name>-<process id>`: tells processes apart when nothing better was configured.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}

fn build_tracer_provider(
    endpoint: &str,
    instance: &str,
) -> Result<SdkTracerProvider, ObservabilityError> {
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(OTLP_EXPORT_TIMEOUT);
    if endpoint.starts_with("https://") {
        // Trust the system's CA store (where operators add a private CA), via rustls.
        builder = builder.with_tls_config(ClientTlsConfig::new().with_native_roots());
    }
    let exporter = builder.build().map_err(|e| ObservabilityError::Otlp {
        endpoint: endpoint.to_owned(),
        message: e.to_string(),
    })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(SERVICE_NAME)
                .with_attribute(KeyValue::new("service.instance.id", instance.to_owned()))
                .build(),
        )
        .build())
}

/// The Prometheus recorder with the buckets of [`LATENCY_BUCKETS_SECONDS`] and
/// [`BATCH_BUCKETS_ENTRIES`].
fn build_recorder() -> Result<PrometheusRecorder, ObservabilityError> {
    build_recorder_with(GAUGE_IDLE_TIMEOUT)
}

/// [`build_recorder`] with another idle timeout for gauges (for the tests).
fn build_recorder_with(gauge_idle: Duration) -> Result<PrometheusRecorder, ObservabilityError> {
    let err =
        |e: metrics_exporter_prometheus::BuildError| ObservabilityError::Prometheus(e.to_string());
    Ok(PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS_SECONDS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)
        .map_err(err)?
        .set_buckets_for_metric(
            Matcher::Suffix("_batch_entries".into()),
            BATCH_BUCKETS_ENTRIES,
        )
        .map_err(err)?
        // The node refreshes its gauges at least every second; one that is not set for
        // `GAUGE_IDLE_TIMEOUT` describes what no longer exists (a removed peer's lag and
        // round-trip time, the lag a former leader measured) and is dropped.
        .idle_timeout(MetricKindMask::GAUGE, Some(gauge_idle))
        .build_recorder())
}

/// Registers the `# HELP` text and unit of every metric in [`METRICS`] with the installed
/// recorder.
fn describe_metrics() {
    for m in METRICS {
        match (m.kind, m.unit) {
            (MetricKind::Gauge, Some(unit)) => metrics::describe_gauge!(m.name, unit, m.help),
            (MetricKind::Gauge, None) => metrics::describe_gauge!(m.name, m.help),
            (MetricKind::Counter, Some(unit)) => metrics::describe_counter!(m.name, unit, m.help),
            (MetricKind::Counter, None) => metrics::describe_counter!(m.name, m.help),
            (MetricKind::Histogram, Some(unit)) => {
                metrics::describe_histogram!(m.name, unit, m.help)
            }
            (MetricKind::Histogram, None) => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

fn bind_metrics(addr: &str) -> Result<std::net::TcpListener, ObservabilityError> {
    let addr: SocketAddr = addr.parse().map_err(|_| ObservabilityError::MetricsAddr {
        addr: addr.to_owned(),
    })?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| ObservabilityError::MetricsBind { addr, source })?;
    Ok(listener)
}

/// Serves `GET /metrics` on `listener` from the runtime behind `rt`, and runs the recorder's
/// upkeep. Returns the bound address.
fn serve_metrics(
    rt: &tokio::runtime::Handle,
    listener: std::net::TcpListener,
    prometheus: PrometheusHandle,
) -> Result<SocketAddr, ObservabilityError> {
    let _entered = rt.enter();
    let local = listener.local_addr();
    let listener = tokio::net::TcpListener::from_std(listener);
    let (listener, addr) = match (listener, local) {
        (Ok(l), Ok(a)) => (l, a),
        (Err(source), Ok(addr)) => return Err(ObservabilityError::MetricsBind { addr, source }),
        (_, Err(e)) => return Err(ObservabilityError::Thread(e)),
    };
    let upkeep = prometheus.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let prometheus = prometheus.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &prometheus)).await;
            });
        }
    });
    Ok(addr)
}

/// `GET /metrics` for a client listener: etcd serves its metrics on its client port as well,
/// where Prometheus setups made for etcd and `etcdctl check datascale` look for them. The
/// whole exposition when metrics are enabled (`observability.metrics_addr`), otherwise the
/// process metrics and the build info.
pub(crate) fn client_port_metrics(
    guard: Option<&ObservabilityGuard>,
) -> axum::routing::MethodRouter {
    let prometheus = guard.and_then(|g| g.metrics.clone());
    axum::routing::get(move || {
        let body = match &prometheus {
            Some(p) => exposition(p),
            None => crate::process_metrics::render(),
        };
        std::future::ready((
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        ))
    })
}

/// Everything a scrape returns: the recorded metrics, the process metrics and the build info.
fn exposition(prometheus: &PrometheusHandle) -> String {
    let mut body = prometheus.render();
    body.push_str(&crate::process_metrics::render());
    body
}

/// Answers one HTTP/1.x request: `GET /metrics` (or `HEAD`) gets the exposition, other paths
/// 404, other methods 405. The connection is closed after the response.
async fn answer(
    mut stream: tokio::net::TcpStream,
    prometheus: &PrometheusHandle,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = exposition(prometheus);
            respond(&mut stream, "200 OK", &body, method == "HEAD").await
        }
        ("GET" | "HEAD", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "not found; metrics are at /metrics\n",
                false,
            )
            .await
        }
        _ => {
            respond(
                &mut stream,
                "405 Method Not Allowed",
                "use GET /metrics\n",
                false,
            )
            .await
        }
    }
}

async fn respond(
    stream: &mut tokio::net::TcpStream,
    status: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes()).await?;
    if !head_only {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::Instant;

    fn http_get(addr: SocketAddr, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response
    }

    /// The server and recorder without touching the process-global recorder, so this test
    /// does not depend on which test installs the global one.
    #[test]
    fn metrics_endpoint_serves_recorded_metrics() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let recorder = build_recorder().unwrap();
        let prometheus = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe_metrics();
            metrics::counter!("dengine_proposals_total", "result" => "ok").increment(3);
            metrics::histogram!("dengine_proposal_latency_seconds").record(0.002);
            metrics::histogram!("dengine_append_batch_entries").record(10.0);
        });
        let listener = bind_metrics("127.0.0.1:0").unwrap();
        let addr = serve_metrics(rt.handle(), listener, prometheus).unwrap();
        assert_ne!(addr.port(), 0);

        let response = http_get(addr, "/metrics");
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.contains("dengine_proposals_total{result=\"ok\"} 3"),
            "{response}"
        );
        assert!(
            response.contains("# HELP dengine_proposals_total Client proposals"),
            "{response}"
        );
        assert!(
            response.contains("dengine_proposal_latency_seconds_bucket{le=\"0.0025\"} 1"),
            "{response}"
        );
        assert!(
            response.contains("dengine_append_batch_entries_bucket{le=\"16\"} 1"),
            "{response}"
        );

        #[cfg(target_os = "linux")]
        assert!(
            response.contains("\nprocess_resident_memory_bytes "),
            "{response}"
        );
        assert!(
            response.contains("\ndengine_build_info{version="),
            "{response}"
        );

        assert!(http_get(addr, "/other").starts_with("HTTP/1.1 404"));
    }

    /// The only test that installs the global recorder (it can be installed once per
    /// process). If another test of this binary installed one first, `install` must say so.
    #[test]
    fn install_serves_metrics_on_an_ephemeral_port() {
        let settings = ObservabilitySettings {
            metrics_addr: Some("127.0.0.1:0".into()),
            otlp_endpoint: None,
            ..ObservabilitySettings::default()
        };
        let guard = match install(&settings) {
            Ok(guard) => guard,
            Err(ObservabilityError::RecorderAlreadyInstalled) => {
                eprintln!("a metrics recorder was installed by another test; skipping");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let addr = guard.metrics_addr().unwrap();
        metrics::counter!("dengine_leader_changes_total").increment(1);
        let response = http_get(addr, "/metrics");
        assert!(
            response.contains("dengine_leader_changes_total 1"),
            "{response}"
        );
        assert!(
            response.contains("# TYPE dengine_leader_changes_total counter"),
            "{response}"
        );
        drop(guard);
        // The server is gone with the guard.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn nothing_configured_installs_nothing() {
        let guard = install(&ObservabilitySettings::default()).unwrap();
        assert!(guard.metrics_addr().is_none());
        assert!(!guard.traces_enabled());
        assert!(guard.render_metrics().is_none());
        assert!(guard.thread.is_none());
    }

    #[test]
    fn busy_metrics_port_is_reported() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let settings = ObservabilitySettings {
            metrics_addr: Some(addr.to_string()),
            otlp_endpoint: None,
            ..ObservabilitySettings::default()
        };
        let err = install(&settings).unwrap_err();
        assert!(
            matches!(err, ObservabilityError::MetricsBind { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    /// OTLP export to an endpoint nobody listens on neither fails `install` nor hangs; the
    /// same test then checks `init_logging` (the global subscriber, also once per process).
    #[test]
    fn otlp_to_a_dead_endpoint_does_not_fail_or_hang_and_logging_inits_once() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = dead.local_addr().unwrap().port();
        drop(dead);
        let settings = ObservabilitySettings {
            metrics_addr: None,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..ObservabilitySettings::default()
        };
        let started = Instant::now();
        let guard = install_inner(&settings, false).unwrap();
        assert!(guard.traces_enabled());

        // Spans through the tracing layer, on a local subscriber.
        let layer = guard.otel_layer().unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("test_span", answer = 42);
            let _entered = span.enter();
            tracing::info!("inside");
        });

        // The global path: picks up the tracer; a second call is refused, not a panic.
        match init_logging("warn") {
            Ok(()) => {
                let again = init_logging("warn").unwrap_err();
                assert!(matches!(
                    again,
                    ObservabilityError::LoggingAlreadyInitialized
                ));
                tracing::warn!(target: "dengine_node::test", "exported span attempt");
            }
            Err(ObservabilityError::LoggingAlreadyInitialized) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(matches!(
            init_logging("not a [valid filter"),
            Err(ObservabilityError::Filter { .. } | ObservabilityError::LoggingAlreadyInitialized)
        ));

        let result = guard.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        // Flushing to a dead collector may report an error; it must not hang or panic.
        drop(result);
    }

    /// The whole path is wired: a span recorded through the layer is exported on shutdown,
    /// which connects to the endpoint (a plain listener that never answers, so the export
    /// times out after [`OTLP_EXPORT_TIMEOUT`] without blocking anything but the flush).
    #[test]
    fn spans_are_exported_to_the_endpoint_on_shutdown() {
        let collector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = collector.local_addr().unwrap().port();
        let settings = ObservabilitySettings {
            metrics_addr: None,
            otlp_endpoint: Some(format!("http://127.0.0.1:{port}")),
            ..ObservabilitySettings::default()
        };
        let guard = install_inner(&settings, false).unwrap();
        let subscriber = tracing_subscriber::registry().with(guard.otel_layer().unwrap());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("exported").in_scope(|| tracing::info!("inside"));
        });
        let started = Instant::now();
        drop(guard.shutdown());
        assert!(started.elapsed() < TRACE_SHUTDOWN_TIMEOUT + Duration::from_secs(2));
        collector.set_nonblocking(true).unwrap();
        assert!(
            collector.accept().is_ok(),
            "the exporter never connected to the endpoint"
        );
    }

    /// A gauge nobody sets any more (a removed peer's lag) leaves the exposition after the
    /// idle timeout; counters stay.
    #[test]
    fn idle_gauges_are_dropped_and_counters_stay() {
        let recorder = build_recorder_with(Duration::from_millis(200)).unwrap();
        let prometheus = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::gauge!("dengine_replication_lag_entries", "peer" => "7").set(3.0);
            metrics::counter!("dengine_leader_changes_total").increment(1);
        });
        assert!(prometheus.render().contains("peer=\"7\""));
        std::thread::sleep(Duration::from_millis(400));
        let text = prometheus.render();
        assert!(!text.contains("peer=\"7\""), "{text}");
        assert!(text.contains("dengine_leader_changes_total 1"), "{text}");
    }

    /// A request's trace context, sent as `traceparent` by one member and continued by the
    /// next, puts both spans in one trace; without it the receiver's span starts a new one.
    #[test]
    fn trace_context_crosses_members_as_traceparent() {
        use opentelemetry::trace::TraceContextExt as _;
        let trace_of = |span: &tracing::Span| span.context().span().span_context().trace_id();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry().with(otel_layer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let sender = tracing::info_span!("forward_write");
            let headers = sender.in_scope(trace_headers);
            let header = |key: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, v)| v.clone())
            };
            let traceparent = header("traceparent").expect("a traceparent header");
            assert!(
                traceparent.contains(&trace_of(&sender).to_string()),
                "{traceparent}"
            );
            let receiver = tracing::info_span!("forwarded_write");
            continue_trace(&receiver, header);
            assert_eq!(trace_of(&receiver), trace_of(&sender));
            let unrelated = tracing::info_span!("unrelated");
            continue_trace(&unrelated, |_| None);
            assert_ne!(trace_of(&unrelated), trace_of(&sender));
        });
        // Nothing exported, nothing sent.
        let plain = tracing_subscriber::registry();
        assert!(tracing::subscriber::with_default(plain, trace_headers).is_empty());
    }

    #[test]
    fn https_otlp_endpoint_is_accepted() {
        let settings = ObservabilitySettings {
            metrics_addr: None,
            otlp_endpoint: Some("https://127.0.0.1:1".into()),
            ..ObservabilitySettings::default()
        };
        let guard = install_inner(&settings, false).unwrap();
        assert!(guard.traces_enabled());
    }

    #[test]
    fn malformed_otlp_endpoint_is_an_error() {
        let settings = ObservabilitySettings {
            metrics_addr: None,
            otlp_endpoint: Some("http://[not a host".into()),
            ..ObservabilitySettings::default()
        };
        let err = install_inner(&settings, false).unwrap_err();
        assert!(matches!(err, ObservabilityError::Otlp { .. }), "{err}");
    }

    #[test]
    fn exporter_stack_targets_are_not_traced() {
        let skipped = |t: &str| {
            NOT_TRACED_TARGETS.iter().any(|p| {
                t.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', ':', '-']))
            })
        };
        assert!(skipped("h2::codec"));
        assert!(skipped("opentelemetry_sdk"));
        assert!(skipped("opentelemetry-otlp"));
        assert!(skipped("hyper_util::client"));
        assert!(!skipped("dengine_node::runtime"));
        assert!(!skipped("towerish"));
    }
}
