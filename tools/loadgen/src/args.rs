//! Command-line options of the load generator and their parsing (pure, unit-tested).

use std::time::Duration;

/// Usage text, printed for `--help` and after a bad option.
pub(crate) const USAGE: &str =
    "usage: dengine-loadgen --endpoints HOST:PORT[,HOST:PORT...] [options]

Drives an etcd v3 KV server (etcd or dengine-kv) with N concurrent clients, each with one
request at a time, over C shared connections spread round-robin over the endpoints. Prints one
JSON line per progress report and a final JSON result line on stdout.

options:
  --endpoints LIST      comma-separated host:port of the servers (required)
  --clients N           concurrent clients (default 16)
  --conns C             gRPC connections shared by the clients (default min(N, 8))
  --op OP               put | get (linearizable range of one key) | get-serializable
                        (default put)
  --key-size B          key length in bytes (default 16)
  --value-size B        value length in bytes (default 256)
  --keys K              key space; each op picks a key at random (default 10000)
  --preload             write every key of the key space once before measuring (a failed
                        put is tried again, up to 100 times 100 ms apart)
  --seconds S           measured window in seconds (default 10); with --total, the longest
                        the run may take (default 3600)
  --warmup S            unmeasured warm-up before the window, seconds (default 2; not with
                        --total)
  --total N             run exactly N successful ops instead of a timed window (soak)
  --report-every S      seconds between progress lines (default 1)
  --timeout-ms MS       per-request timeout; a timed-out request is an error (default 10000)
  --client C            h2 (gRPC straight on HTTP/2, light on CPU) | etcd-client (the
                        etcd-client crate, an independent cross-check; about 1.5x the CPU
                        per request) (default h2)";

/// The gRPC client the load is sent through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientKind {
    /// `grpc.rs`: gRPC straight on an h2 connection.
    H2,
    /// The `etcd-client` crate (tonic 0.6, hyper 0.14).
    EtcdClient,
}

/// The operation every client repeats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// `Put` of a random key with a fresh value.
    Put,
    /// Linearizable `Range` of one random key (etcd's default).
    Get,
    /// Serializable `Range` of one random key (answered from the member's local state).
    GetSerializable,
}

impl Op {
    /// The name used on the command line and in the JSON output.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::GetSerializable => "get-serializable",
        }
    }
}

/// Everything one run needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Options {
    /// Server addresses, `host:port` or `http://host:port`.
    pub(crate) endpoints: Vec<String>,
    /// Concurrent clients.
    pub(crate) clients: usize,
    /// Shared connections.
    pub(crate) conns: usize,
    /// What each client repeats.
    pub(crate) op: Op,
    /// Key length in bytes.
    pub(crate) key_size: usize,
    /// Value length in bytes.
    pub(crate) value_size: usize,
    /// Number of distinct keys.
    pub(crate) keys: u64,
    /// Write every key once before measuring.
    pub(crate) preload: bool,
    /// Measured window, or the cap on a `--total` run.
    pub(crate) seconds: Duration,
    /// Unmeasured warm-up.
    pub(crate) warmup: Duration,
    /// Run exactly this many successful ops (soak mode).
    pub(crate) total: Option<u64>,
    /// Interval between progress lines.
    pub(crate) report_every: Duration,
    /// Per-request timeout.
    pub(crate) timeout: Duration,
    /// The client the requests go through.
    pub(crate) client: ClientKind,
}

/// Parses the arguments after the program name; `Ok(None)` for `--help`.
pub(crate) fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut endpoints = None;
    let mut clients = 16usize;
    let mut conns = None;
    let mut op = Op::Put;
    let mut key_size = 16usize;
    let mut value_size = 256usize;
    let mut keys = 10_000u64;
    let mut preload = false;
    let mut seconds = None;
    let mut warmup = None;
    let mut total = None;
    let mut report_every = 1.0f64;
    let mut timeout_ms = 10_000u64;
    let mut client = ClientKind::H2;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--endpoints" => {
                let list: Vec<String> = value()?
                    .split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(String::from)
                    .collect();
                endpoints = Some(list);
            }
            "--clients" => clients = number(flag, value()?)?,
            "--conns" => conns = Some(number(flag, value()?)?),
            "--op" => {
                op = match value()? {
                    "put" => Op::Put,
                    "get" => Op::Get,
                    "get-serializable" => Op::GetSerializable,
                    other => {
                        return Err(format!(
                            "--op {other:?}: expected put, get or get-serializable"
                        ));
                    }
                }
            }
            "--key-size" => key_size = number(flag, value()?)?,
            "--value-size" => value_size = number(flag, value()?)?,
            "--keys" => keys = number(flag, value()?)?,
            "--preload" => preload = true,
            "--seconds" => seconds = Some(seconds_value(flag, value()?)?),
            "--warmup" => warmup = Some(seconds_value(flag, value()?)?),
            "--total" => total = Some(number(flag, value()?)?),
            "--report-every" => report_every = seconds_value(flag, value()?)?,
            "--timeout-ms" => timeout_ms = number(flag, value()?)?,
            "--client" => {
                client = match value()? {
                    "h2" => ClientKind::H2,
                    "etcd-client" => ClientKind::EtcdClient,
                    other => {
                        return Err(format!("--client {other:?}: expected h2 or etcd-client"));
                    }
                }
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let endpoints = endpoints.ok_or("--endpoints is required")?;
    if endpoints.is_empty() {
        return Err("--endpoints: no endpoint given".into());
    }
    if clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    let conns = conns.unwrap_or(clients.min(8));
    if conns == 0 || conns > clients {
        return Err(format!(
            "--conns {conns}: expected 1..={clients} (the clients)"
        ));
    }
    if keys == 0 {
        return Err("--keys must be at least 1".into());
    }
    let digits = (keys - 1).to_string().len();
    if key_size < digits + 1 {
        return Err(format!(
            "--key-size {key_size}: {keys} keys need at least {} bytes",
            digits + 1
        ));
    }
    if total == Some(0) {
        return Err("--total must be at least 1".into());
    }
    if total.is_some() && warmup.is_some() {
        return Err("--warmup does not go with --total (the whole run is measured)".into());
    }
    if report_every <= 0.0 {
        return Err("--report-every must be positive".into());
    }
    let default_seconds = if total.is_some() { 3600.0 } else { 10.0 };
    let seconds = seconds.unwrap_or(default_seconds);
    if seconds <= 0.0 {
        return Err("--seconds must be positive".into());
    }
    Ok(Some(Options {
        endpoints,
        clients,
        conns,
        op,
        key_size,
        value_size,
        keys,
        preload,
        seconds: Duration::from_secs_f64(seconds),
        warmup: Duration::from_secs_f64(warmup.unwrap_or(if total.is_some() { 0.0 } else { 2.0 })),
        total,
        report_every: Duration::from_secs_f64(report_every),
        timeout: Duration::from_millis(timeout_ms),
        client,
    }))
}

fn number<T: std::str::FromStr>(flag: &str, text: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{flag} {text:?}: expected a whole number"))
}

fn seconds_value(flag: &str, text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("{flag} {text:?}: expected seconds, 0..=86400")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults() {
        let o = parse(&args("--endpoints a:1,b:2")).unwrap().unwrap();
        assert_eq!(o.endpoints, vec!["a:1", "b:2"]);
        assert_eq!((o.clients, o.conns, o.op), (16, 8, Op::Put));
        assert_eq!((o.key_size, o.value_size, o.keys), (16, 256, 10_000));
        assert_eq!(o.seconds, Duration::from_secs(10));
        assert_eq!(o.warmup, Duration::from_secs(2));
        assert_eq!(o.total, None);
        assert!(!o.preload);
        assert_eq!(o.client, ClientKind::H2);
    }

    #[test]
    fn conns_default_to_clients_when_fewer_than_eight() {
        let o = parse(&args("--endpoints a:1 --clients 3"))
            .unwrap()
            .unwrap();
        assert_eq!(o.conns, 3);
    }

    #[test]
    fn everything_set() {
        let o = parse(&args(
            "--endpoints a:1 --clients 64 --conns 4 --op get-serializable --key-size 20 \
             --value-size 10 --keys 5 --preload --seconds 1.5 --warmup 0.5 --report-every 2 \
             --timeout-ms 300 --client etcd-client",
        ))
        .unwrap()
        .unwrap();
        assert_eq!((o.clients, o.conns, o.op), (64, 4, Op::GetSerializable));
        assert_eq!((o.key_size, o.value_size, o.keys), (20, 10, 5));
        assert!(o.preload);
        assert_eq!(o.seconds, Duration::from_millis(1500));
        assert_eq!(o.warmup, Duration::from_millis(500));
        assert_eq!(o.report_every, Duration::from_secs(2));
        assert_eq!(o.timeout, Duration::from_millis(300));
        assert_eq!(o.client, ClientKind::EtcdClient);
    }

    #[test]
    fn total_mode_has_a_long_cap_and_no_warmup() {
        let o = parse(&args("--endpoints a:1 --total 1000"))
            .unwrap()
            .unwrap();
        assert_eq!(o.total, Some(1000));
        assert_eq!(o.seconds, Duration::from_secs(3600));
        assert_eq!(o.warmup, Duration::ZERO);
        assert!(parse(&args("--endpoints a:1 --total 10 --warmup 1")).is_err());
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "--endpoints",
            "--endpoints ,",
            "--endpoints a:1 --clients 0",
            "--endpoints a:1 --clients 2 --conns 3",
            "--endpoints a:1 --op delete",
            "--endpoints a:1 --keys 1000 --key-size 3",
            "--endpoints a:1 --seconds -1",
            "--endpoints a:1 --total 0",
            "--endpoints a:1 --bogus",
            "--endpoints a:1 --client grpc",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse(&args("--help")), Ok(None));
    }
}
