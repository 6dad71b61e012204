//! `dengine-kv`: an etcd v3 compatible key-value server replicated with dengine, plus a tiny
//! client for scripts (`put`, `get`, `status`).
//!
//! One port per member serves everything: the etcd v3 API for clients, the Raft peer service,
//! dengine's admin service and write forwarding between members.

#[cfg(feature = "fault-injection")]
mod fault_control;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use dengine_kv::proto::etcdserverpb::kv_client::KvClient;
use dengine_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use dengine_kv::proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use dengine_kv::{DEFAULT_MAX_RANGE_RESPONSE_BYTES, DEFAULT_MAX_REQUEST_BYTES, KvConfig, Member};
use dengine_node::{Settings, observability};

#[derive(Parser)]
#[command(
    name = "dengine-kv",
    version,
    about = "An etcd v3 compatible key-value store replicated with dengine"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a member. Flags override the config file, which overrides DENGINE_* variables'
    /// defaults; see docs/configuration.md for every setting.
    Serve(ServeArgs),
    /// Write KEY=VALUE pairs, one request each; prints `OK <key>` per acknowledged write.
    Put {
        /// A member's address (host:port); followers forward writes to the leader.
        #[arg(long)]
        endpoint: String,
        /// Per-request timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// The pairs to write.
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Read a key (or every key with the prefix); prints `key=value` lines.
    Get {
        /// A member's address (host:port).
        #[arg(long)]
        endpoint: String,
        /// Treat KEY as a prefix.
        #[arg(long)]
        prefix: bool,
        /// Answer from the member's local state (may be stale) instead of a linearizable read.
        #[arg(long)]
        serializable: bool,
        /// Per-request timeout in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// The key.
        key: String,
    },
    /// Print one member's status as `id=.. role=.. term=.. leader=.. commit=.. applied=..`.
    Status {
        /// A member's address (host:port).
        #[arg(long)]
        endpoint: String,
        /// Timeout in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// A TOML settings file (docs/configuration.md); flags below override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// This member's id (a positive integer, unique in the cluster).
    #[arg(long)]
    id: Option<u64>,
    /// Address to listen on for clients and peers, e.g. 127.0.0.1:2379.
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Directory for the Raft log and snapshots.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The initial members when bootstrapping a new cluster, e.g.
    /// `1=127.0.0.1:2379,2=127.0.0.1:2479,3=127.0.0.1:2579` (this member included). Ignored
    /// once the data directory holds state. Leave it out to join an existing cluster (then
    /// add this member with `etcdctl member add` on the leader).
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    initial_members: Option<String>,
    /// Cluster id; members of different clusters refuse each other.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// etcd's --client-cert-auth: a client whose TLS certificate the server verified (see
    /// [network.tls] with a CA) and that sends no token is the user its certificate's Common
    /// Name names.
    #[arg(long)]
    client_cert_auth: bool,
    /// Largest write request a client may send, in bytes (etcd's --max-request-bytes).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Largest Range response, in bytes; larger reads are refused with RESOURCE_EXHAUSTED
    /// (clients page with a limit, e.g. etcdctl get --limit).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_RANGE_RESPONSE_BYTES)]
    max_range_response_bytes: usize,
    /// Log filter (RUST_LOG wins when set), e.g. info or dengine_node=debug.
    #[arg(long, default_value = "info")]
    log: String,
    /// Chaos-harness hook: send peer messages through a fault-injecting wrapper controlled by
    /// FILE (see `fault_control.rs`). Only in builds with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "FILE", hide = true)]
    fault_control: Option<PathBuf>,
}

fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut members = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--initial-members: {part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("--initial-members: {id:?} in {part:?} is not a member id"))?;
        members.insert(id, addr.trim().to_string());
    }
    Ok(members)
}

fn settings(args: &ServeArgs) -> Result<Settings, String> {
    let mut s = Settings::load_unvalidated(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(id) = args.id {
        s.node.id = id;
    }
    if let Some(listen) = &args.listen {
        s.node.listen_addr = listen.clone();
    }
    if let Some(dir) = &args.data_dir {
        s.node.data_dir = dir.clone();
    }
    if let Some(members) = &args.initial_members {
        s.node.initial_members = parse_members(members)?;
    }
    if let Some(cluster) = args.cluster_id {
        s.node.cluster_id = cluster;
    }
    if let Some(m) = &args.metrics_addr {
        s.observability.metrics_addr = Some(m.clone());
    }
    if s.node.id == 0 {
        return Err("a member id is needed: pass --id N (or node.id in --config)".into());
    }
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

fn kv_config(args: &ServeArgs) -> KvConfig {
    KvConfig {
        max_request_bytes: args.max_request_bytes,
        max_range_response_bytes: args.max_range_response_bytes,
        client_cert_auth: args.client_cert_auth,
        ..KvConfig::default()
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let settings = settings(&args)?;
    let config = kv_config(&args);
    #[cfg(feature = "fault-injection")]
    let member = match &args.fault_control {
        Some(file) => {
            let seed = settings.node.id;
            let (member, handle) = Member::start_faulty(settings, seed)
                .await
                .map_err(|e| e.to_string())?;
            fault_control::spawn_poller(file.clone(), handle);
            member
        }
        None => Member::start_with_config(settings, config)
            .await
            .map_err(|e| e.to_string())?,
    };
    #[cfg(not(feature = "fault-injection"))]
    let member = Member::start_with_config(settings, config)
        .await
        .map_err(|e| e.to_string())?;
    let _ = observability::init_logging(&args.log);
    tracing::info!(
        member = member.node().id(),
        addr = %member.local_addr(),
        metrics = ?member.metrics_addr(),
        "dengine-kv serving the etcd v3 API"
    );
    eprintln!(
        "dengine-kv member {} listening on {}",
        member.node().id(),
        member.local_addr()
    );
    let node = member.node().clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = term.recv() => eprintln!("SIGTERM: shutting down gracefully"),
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted: shutting down gracefully"),
        () = node.stopped() => {
            let reason = node.fatal_error().unwrap_or_else(|| "unknown".into());
            member.shutdown().await;
            return Err(format!("the node stopped: {reason}"));
        }
    }
    member.shutdown().await;
    Ok(())
}

async fn connect(endpoint: &str, timeout: Duration) -> Result<tonic::transport::Channel, String> {
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| format!("bad endpoint {endpoint:?}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))
}

/// The end of the range of every key with `prefix`, as etcd computes it.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

async fn client(cmd: Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Serve(_) => Err("unreachable".into()),
        Cmd::Put {
            endpoint,
            timeout_ms,
            pairs,
        } => {
            let mut kv =
                KvClient::new(connect(&endpoint, Duration::from_millis(timeout_ms)).await?);
            for pair in pairs {
                let (k, v) = pair
                    .split_once('=')
                    .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
                kv.put(PutRequest {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::copy_from_slice(v.as_bytes()),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("put {k}: {}", s.message()))?;
                println!("OK {k}");
            }
            Ok(())
        }
        Cmd::Get {
            endpoint,
            prefix,
            serializable,
            timeout_ms,
            key,
        } => {
            let mut kv =
                KvClient::new(connect(&endpoint, Duration::from_millis(timeout_ms)).await?);
            let range_end = if prefix {
                Bytes::from(prefix_end(key.as_bytes()))
            } else {
                Bytes::new()
            };
            let r = kv
                .range(RangeRequest {
                    key: Bytes::copy_from_slice(key.as_bytes()),
                    range_end,
                    serializable,
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("get {key}: {}", s.message()))?
                .into_inner();
            for kv in r.kvs {
                println!(
                    "{}={}",
                    String::from_utf8_lossy(&kv.key),
                    String::from_utf8_lossy(&kv.value)
                );
            }
            Ok(())
        }
        Cmd::Status {
            endpoint,
            timeout_ms,
        } => {
            let channel = connect(&endpoint, Duration::from_millis(timeout_ms)).await?;
            let s = MaintenanceClient::new(channel)
                .status(StatusRequest {})
                .await
                .map_err(|s| format!("status of {endpoint}: {}", s.message()))?
                .into_inner();
            let id = s.header.map_or(0, |h| h.member_id);
            let role = if s.leader == id {
                "leader"
            } else if s.is_learner {
                "learner"
            } else {
                "follower"
            };
            println!(
                "id={id} role={role} term={} leader={} commit={} applied={}",
                s.raft_term, s.leader, s.raft_index, s.raft_applied_index
            );
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dengine-kv: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Cmd::Serve(args) => serve(args).await,
            other => client(other).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dengine-kv: {e}");
            ExitCode::FAILURE
        }
    }
}
