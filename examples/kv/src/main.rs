//! `dengine-kv`: an etcd v3 compatible key-value server replicated with dengine, plus a tiny
//! client for scripts (`put`, `get`, `status`).
//!
//! Each member has separate listeners, like etcd's client and peer URLs: the etcd v3 API for
//! clients (`--listen-client`), the Raft peer service and write forwarding between members
//! (`--listen-peer`), and, if asked for, dengine's admin API (`--listen-admin`).

mod admin_cli;
mod etcd_flags;
#[cfg(feature = "fault-injection")]
mod fault_control;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use dengine::settings::ClusterState;
use dengine::{Settings, observability};
use dengine_kv::proto::etcdserverpb::kv_client::KvClient;
use dengine_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use dengine_kv::proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use dengine_kv::{
    DEFAULT_MAX_LEASES, DEFAULT_MAX_RANGE_RESPONSE_BYTES, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_QUOTA_BYTES, DEFAULT_STATE_CACHE_BYTES, KvConfig, LeaseConfig, Member, StateStorage,
};

/// [`dengine_kv::ServerAllocator`]: jemalloc by default (why: its docs).
#[global_allocator]
static GLOBAL: dengine_kv::ServerAllocator = dengine_kv::ServerAllocator;

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
    /// Run a member. Flags override DENGINE_* variables, which override the config file; see
    /// docs/configuration.md for every setting.
    Serve(Box<ServeArgs>),
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
    /// dengine's admin API of one member (its --listen-admin): status, add-learner, promote,
    /// remove, transfer-leader, snapshot.
    Admin(admin_cli::AdminArgs),
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
    /// A TOML settings file (docs/configuration.md); DENGINE_* variables and the flags below
    /// override it.
    #[arg(long, value_name = "FILE", env = "DENGINE_CONFIG")]
    config: Option<PathBuf>,
    /// This member's id (a positive integer, unique in the cluster). Without an id (and
    /// without --initial-members) the member is member 1 of a new single-member cluster, with
    /// its data in ./default.dengine unless --data-dir says otherwise.
    #[arg(long)]
    id: Option<u64>,
    /// Address of the etcd v3 API for clients (node.client_addr). Default 127.0.0.1:2379
    /// unless the config file sets node.client_addr.
    #[arg(long, value_name = "HOST:PORT")]
    listen_client: Option<String>,
    /// Address of the peer listener: Raft traffic and forwarding between members
    /// (node.listen_addr). Only members should reach it; see docs/operations.md, "Securing a
    /// cluster".
    #[arg(long, value_name = "HOST:PORT")]
    listen_peer: Option<String>,
    /// Address of dengine's admin API (node.admin_addr; membership, leader transfer,
    /// snapshots). Off unless given. A non-loopback address needs [admin] credentials.
    #[arg(long, value_name = "HOST:PORT")]
    listen_admin: Option<String>,
    /// Directory for the Raft log and snapshots.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The initial members' peer addresses when bootstrapping a new cluster, e.g.
    /// `1=127.0.0.1:2380,2=127.0.0.1:2480,3=127.0.0.1:2580` (this member included). Ignored
    /// once the data directory holds state.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    initial_members: Option<String>,
    /// `new` (default) founds the cluster of --initial-members; `existing` joins a running
    /// cluster that added this member (under a new id) with `etcdctl member add`. With an
    /// empty data directory only; a member that lost its data is refused either way.
    #[arg(long, value_name = "new|existing")]
    initial_cluster_state: Option<String>,
    /// Found the new cluster from a backup (`etcdctl snapshot save FILE` against a dengine-kv
    /// member) instead of empty: give every initial member the same file. With an empty data
    /// directory and `--initial-cluster-state new` only; ignored once the data directory
    /// holds state (node.restore_from).
    #[arg(long, value_name = "FILE")]
    restore_from: Option<PathBuf>,
    /// Cluster id; members of different clusters refuse each other.
    #[arg(long)]
    cluster_id: Option<u64>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// etcd's --client-cert-auth: a client whose TLS certificate the server verified (see
    /// [client_api.tls] with a CA) and that sends no token is the user its certificate's Common
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
    /// Confirm linearizable reads with the leader's lease (no round trip while it holds)
    /// instead of ReadIndex; safe only while raft.lease_drift_ms covers the members' clock
    /// drift (docs/configuration.md).
    #[arg(long)]
    lease_reads: bool,
    /// The space quota in bytes (etcd's --quota-backend-bytes; 0: the default, 2 GiB): a
    /// write past it raises the NOSPACE alarm, and writes that add data are refused until
    /// `etcdctl alarm disarm`.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    quota_backend_bytes: u64,
    /// The most leases the cluster holds: a grant beyond it is refused with
    /// RESOURCE_EXHAUSTED until leases are revoked or expire.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_LEASES)]
    max_leases: usize,
    /// Where the keys live: `durable` (the default: a redb file in DATA_DIR/state, written with
    /// each applied batch, so a restart resumes from it) or `memory` (rebuilt from the
    /// snapshot and the log at every start; the whole data set in memory).
    #[arg(long, value_name = "durable|memory", default_value = "durable")]
    state: StateArg,
    /// Page cache of the durable state file, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_STATE_CACHE_BYTES >> 20)]
    state_cache_mb: usize,
    /// Log filter (RUST_LOG wins when set), e.g. info or dengine_node=debug.
    #[arg(long, default_value = "info", env = "DENGINE_LOG")]
    log: String,
    /// Chaos-harness hook: send peer messages through a fault-injecting wrapper controlled by
    /// FILE (see `fault_control.rs`). Only in builds with the `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "FILE", hide = true)]
    fault_control: Option<PathBuf>,
    /// Chaos-harness hook: run with a deliberately broken lease rule (`follower-clock`,
    /// `no-extension`), which the harness must catch. Only in builds with the
    /// `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[arg(long, value_name = "RULE", hide = true)]
    lease_fault: Option<String>,
    /// Chaos-harness hook: also serve dengine's client API (`dengine-client`) on the client
    /// listener. It bypasses etcd authentication: test clusters only. Only in builds with the
    /// `fault-injection` feature.
    #[cfg(feature = "fault-injection")]
    #[arg(long, hide = true)]
    dengine_client_api: bool,
    #[command(flatten)]
    etcd: etcd_flags::EtcdFlags,
}

fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, String> {
    dengine_net_grpc::id_map::parse(text).map_err(|e| format!("--initial-members: {e}"))
}

fn settings(args: &ServeArgs, kv: &mut KvConfig) -> Result<Settings, String> {
    let mut s = Settings::load_unvalidated(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(id) = args.id {
        s.node.id = id;
    }
    if let Some(client) = &args.listen_client {
        s.node.client_addr = Some(client.clone());
    }
    if s.node.client_addr.is_none() {
        s.node.client_addr = Some("127.0.0.1:2379".into());
    }
    if let Some(peer) = &args.listen_peer {
        s.node.listen_addr = peer.clone();
    }
    if let Some(admin) = &args.listen_admin {
        s.node.admin_addr = Some(admin.clone());
    }
    if let Some(state) = &args.initial_cluster_state {
        s.node.initial_cluster_state = match state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(format!(
                    "--initial-cluster-state {other:?}: expected new or existing"
                ));
            }
        };
    }
    if let Some(dir) = &args.data_dir {
        s.node.data_dir = dir.clone();
    }
    if let Some(members) = &args.initial_members {
        s.node.initial_members = parse_members(members)?;
    }
    if let Some(backup) = &args.restore_from {
        s.node.restore_from = Some(backup.clone());
    }
    if let Some(cluster) = args.cluster_id {
        s.node.cluster_id = cluster;
    }
    if let Some(m) = &args.metrics_addr {
        s.observability.metrics_addr = Some(m.clone());
    }
    args.etcd.apply(&mut s, kv)?;
    if s.node.id == 0 {
        if !s.node.initial_members.is_empty() {
            return Err(
                "a member id is needed with --initial-members: pass --id N (this \
                 member's id in that list), or node.id in --config"
                    .into(),
            );
        }
        single_member_defaults(&mut s, args);
    }
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

/// The data directory of a member started with no id, like etcd's `default.etcd`.
const DEFAULT_DATA_DIR: &str = "default.dengine";
/// The peer address of a member started with no id, etcd's peer port.
const DEFAULT_PEER_ADDR: &str = "127.0.0.1:2380";

/// No member id from the flags, the environment or a file, and no initial members: like etcd
/// with no flags, member 1 of a cluster of one, with its data in `./default.dengine` and its
/// peer listener on 127.0.0.1:2380 unless they were given. On a restart the same defaults find
/// the same member.
fn single_member_defaults(s: &mut Settings, args: &ServeArgs) {
    let defaults = Settings::default().node;
    s.node.id = 1;
    if args.data_dir.is_none() && s.node.data_dir == defaults.data_dir {
        s.node.data_dir = PathBuf::from(DEFAULT_DATA_DIR);
    }
    if args.listen_peer.is_none() && s.node.listen_addr == defaults.listen_addr {
        s.node.listen_addr = DEFAULT_PEER_ADDR.into(); // etcd's peer port
    }
    let peer = s
        .node
        .advertise_addr
        .clone()
        .unwrap_or_else(|| s.node.listen_addr.clone());
    s.node.initial_members.insert(1, peer);
    eprintln!(
        "dengine-kv: no member id given: running member 1 of a single-member cluster, data in \
         {}, clients on {}, peers on {}.\n\
         To grow it, add members with `etcdctl member add` and start them with \
         --initial-cluster-state existing (examples/kv/README.md); to start a multi-member \
         cluster instead, give every member --id and --initial-members.",
        s.node.data_dir.display(),
        s.node.client_addr.as_deref().unwrap_or("-"),
        s.node.listen_addr,
    );
}

/// `--state`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum StateArg {
    Durable,
    Memory,
}

fn kv_config(args: &ServeArgs) -> KvConfig {
    KvConfig {
        state: match args.state {
            StateArg::Durable => StateStorage::Durable {
                cache_bytes: args.state_cache_mb.saturating_mul(1 << 20),
            },
            StateArg::Memory => StateStorage::Memory,
        },
        max_request_bytes: args.max_request_bytes,
        max_range_response_bytes: args.max_range_response_bytes,
        client_cert_auth: args.client_cert_auth,
        lease_reads: args.lease_reads,
        quota_bytes: match args.quota_backend_bytes {
            0 => DEFAULT_QUOTA_BYTES,
            bytes => bytes,
        },
        leases: LeaseConfig {
            max_leases: args.max_leases,
            ..LeaseConfig::default()
        },
        ..KvConfig::default()
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut config = kv_config(&args);
    let mut settings = settings(&args, &mut config)?;
    let instance = &mut settings.observability.service_instance_id;
    instance.get_or_insert_with(|| format!("member-{}", settings.node.id));
    // Metrics and trace export, then logging, before anything else: what start-up has to say
    // (a damaged snapshot, a refused data directory) must reach the operator.
    let observability =
        observability::install(&settings.observability).map_err(|e| e.to_string())?;
    observability::init_logging(&args.log).map_err(|e| format!("--log / DENGINE_LOG: {e}"))?;
    settings.observability = Default::default(); // installed above
    #[cfg(feature = "fault-injection")]
    {
        config.leases.fault = dengine_kv::LeaseFault::parse(args.lease_fault.as_deref())?;
        config.dengine_client_api = args.dengine_client_api;
    }
    #[cfg(feature = "fault-injection")]
    let member = match &args.fault_control {
        Some(file) => {
            let seed = settings.node.id;
            let (member, handle) = Member::start_faulty(settings, config, seed)
                .await
                .map_err(|e| e.to_string())?;
            fault_control::spawn_poller(file.clone(), handle);
            member
        }
        None => Member::start(settings, config)
            .await
            .map_err(|e| e.to_string())?,
    };
    #[cfg(not(feature = "fault-injection"))]
    let member = Member::start(settings, config)
        .await
        .map_err(|e| e.to_string())?;
    let client = member
        .client_addr()
        .map_or_else(|| "-".to_string(), |a| a.to_string());
    tracing::info!(
        member = member.node().id(),
        client = %client,
        peer = %member.peer_addr(),
        admin = ?member.admin_addr(),
        metrics = ?observability.metrics_addr(),
        "dengine-kv serving the etcd v3 API"
    );
    eprintln!(
        "dengine-kv member {} serving clients on {client}, peers on {}{}",
        member.node().id(),
        member.peer_addr(),
        member
            .admin_addr()
            .map(|a| format!(", admin on {a}"))
            .unwrap_or_default()
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
    let _ = observability.shutdown();
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
        Cmd::Serve(_) | Cmd::Admin(_) => Err("unreachable".into()),
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
            Cmd::Serve(args) => serve(*args).await,
            Cmd::Admin(args) => admin_cli::run(args).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_members_with_a_duplicate_id_are_refused() {
        // Before, `1=A,1=B,2=C` was accepted and the second address of member 1 won silently.
        let err = parse_members("1=127.0.0.1:2380,1=127.0.0.1:2480,2=127.0.0.1:2580").unwrap_err();
        assert!(err.contains("id 1 appears twice"), "{err}");
        let ok = parse_members("1=127.0.0.1:2380, 2=127.0.0.1:2480").unwrap();
        assert_eq!(ok.len(), 2);
        assert!(parse_members("x=127.0.0.1:1").is_err());
        assert!(parse_members("1127.0.0.1:1").is_err());
    }
}
