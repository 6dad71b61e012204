//! The `dengine-kv` processes, one per host namespace, and the RPCs the nemesis and the final
//! phase need (status, leader transfer, member add and remove).
//!
//! Every process is started with `ip netns exec`, which `exec`s the server in place: the
//! child's pid is the server's, so SIGKILL, SIGSTOP and SIGCONT reach it directly. The
//! [`Cluster`]'s `Drop` kills whatever still runs, so an error or a panic leaves nothing.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use dengine_kv::proto::etcdserverpb::cluster_client::ClusterClient;
use dengine_kv::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use dengine_kv::proto::etcdserverpb::{
    HashKvRequest, MemberAddRequest, MemberRemoveRequest, StatusRequest,
};
use dengine_net_grpc::admin_pb::NodeRequest;
use dengine_net_grpc::admin_pb::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};

use crate::clock::{self, Clocks};
use crate::topology::{addr, netns};

/// The client port of every member (the etcd API), in its own namespace.
pub(crate) const PORT: u16 = 2379;
/// The peer port of every member (Raft and forwarding between members).
pub(crate) const PEER_PORT: u16 = 2380;
/// The admin port of every member (dengine's admin API; reached from the driver's namespace,
/// so it needs the admin token).
pub(crate) const ADMIN_PORT: u16 = 2381;

/// The Prometheus `/metrics` port of every member (`--metrics-addr`).
pub(crate) const METRICS_PORT: u16 = 2382;

/// The members' idle expiry of client sessions when they serve the exactly-once workload
/// (`client_sessions.idle_expiry_ms`): short, so that sessions expire while their clients
/// wait out a fault, and the clients' handling of an expired session is exercised too.
const SESSION_IDLE_EXPIRY_MS: u64 = 5_000;

/// The admin token every member is started with (`admin.token_file`).
const ADMIN_TOKEN: &str = "chaos-harness-admin-token-0123456789";

/// The client URL of host `host`.
pub(crate) fn url(host: usize) -> String {
    format!("http://{}:{PORT}", addr(host))
}

/// The peer URL of host `host`.
pub(crate) fn peer_url(host: usize) -> String {
    format!("http://{}:{PEER_PORT}", addr(host))
}

/// Connects to host `host` with `timeout` for the connection and each request.
pub(crate) async fn connect(host: usize, timeout: Duration) -> Result<Channel, String> {
    connect_url(url(host), host, timeout).await
}

async fn connect_url(url: String, host: usize, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| format!("cannot connect to host {host}: {e}"))
}

/// One host: its member id (`None` while removed from the cluster) and process.
#[derive(Debug)]
pub(crate) struct Host {
    /// The member id it runs as; a host that comes back after membership churn gets a new one.
    pub(crate) id: Option<u64>,
    child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub(crate) paused: bool,
    /// Still the member it was at the bootstrap (not re-added by membership churn): only
    /// such a host is started with the initial members; the others join or restart.
    original: bool,
}

/// Client sessions on the members (`client_sessions.enabled`) or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sessions {
    On,
    Off,
}

/// Every host's process, killed on drop.
#[derive(Debug)]
pub(crate) struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    hosts: Vec<Host>,
    fsync: bool,
    /// A deliberately broken lease rule the nodes run with (`serve --lease-fault`).
    pub(crate) lease_fault: Option<String>,
    /// Whether the nodes serve dengine's client API for the exactly-once workload
    /// (`once.rs`), and with client sessions on or off: `None` (the default), neither.
    pub(crate) client_api: Option<Sessions>,
    /// The hosts' libfaketime clocks (`None`: the real clock).
    clocks: Option<Clocks>,
    initial_members: String,
    /// Processes that exited on their own (a fatal error in the node), with their status.
    pub(crate) crashed: Vec<String>,
}

impl Cluster {
    /// `hosts` members with ids `1..=hosts`, data and logs under `dir`, on `clocks` if
    /// given; nothing started.
    pub(crate) fn new(
        bin: PathBuf,
        dir: PathBuf,
        hosts: usize,
        fsync: bool,
        clocks: Option<Clocks>,
    ) -> Cluster {
        let initial_members = (1..=hosts)
            .map(|h| format!("{h}={}:{PEER_PORT}", addr(h)))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            bin,
            dir,
            hosts: (1..=hosts)
                .map(|h| Host {
                    id: Some(h as u64),
                    child: None,
                    paused: false,
                    original: true,
                })
                .collect(),
            fsync,
            lease_fault: None,
            client_api: None,
            clocks,
            initial_members,
            crashed: Vec::new(),
        }
    }

    /// The admin token file every host reads at start, written once: rewriting it at each
    /// start would truncate it under a member that reads it at that moment, which then
    /// refuses to start. Written to a temporary name and renamed, so no reader sees it empty.
    fn admin_token_file(&self) -> Result<PathBuf, String> {
        let token = self.dir.join("admin-token");
        if !token.exists() {
            let tmp = self.dir.join("admin-token.tmp");
            std::fs::write(&tmp, ADMIN_TOKEN)
                .and_then(|()| std::fs::rename(&tmp, &token))
                .map_err(|e| format!("cannot write {}: {e}", token.display()))?;
        }
        Ok(token)
    }

    /// The number of hosts.
    pub(crate) fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Host `host` (1-based).
    pub(crate) fn host(&self, host: usize) -> &Host {
        &self.hosts[host - 1]
    }

    fn data_dir(&self, host: usize) -> PathBuf {
        self.dir.join(format!("data-{host}"))
    }

    /// The file whose content sets host `host`'s message faults (see dengine-kv's
    /// `fault_control.rs`).
    pub(crate) fn fault_file(&self, host: usize) -> PathBuf {
        self.dir.join(format!("faults-{host}"))
    }

    /// Starts host `host` as its current member id: bootstrapping with the initial members
    /// the first time, from its data directory after a kill, or empty in join mode after
    /// membership churn (`join`).
    pub(crate) fn start(&mut self, host: usize, join: bool) -> Result<(), String> {
        let Some(id) = self.hosts[host - 1].id else {
            return Err(format!("host {host} is not a member"));
        };
        if self.hosts[host - 1].child.is_some() {
            return Ok(());
        }
        let log_path = self.dir.join(format!("node-{host}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
        let token = self.admin_token_file()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns(host)])
            .arg(&self.bin)
            .args(["serve", "--id", &id.to_string()])
            .args(["--listen-client", &format!("{}:{PORT}", addr(host))])
            .args(["--listen-peer", &format!("{}:{PEER_PORT}", addr(host))])
            .args(["--listen-admin", &format!("{}:{ADMIN_PORT}", addr(host))])
            .args(["--metrics-addr", &format!("{}:{METRICS_PORT}", addr(host))])
            .env("DENGINE_ADMIN__TOKEN_FILE", &token)
            .arg("--data-dir")
            .arg(self.data_dir(host))
            .arg("--fault-control")
            .arg(self.fault_file(host))
            .args(["--log", "info"])
            // The timings the lease margin of `clock.rs` is worked out for.
            .env("DENGINE_RAFT__TICK_MS", clock::TICK_MS.to_string())
            .env(
                "DENGINE_RAFT__ELECTION_TIMEOUT_MS",
                clock::ELECTION_TIMEOUT_MS.to_string(),
            )
            .env(
                "DENGINE_RAFT__LEASE_DRIFT_MS",
                clock::LEASE_DRIFT_MS.to_string(),
            );
        if lease_reads(host) {
            cmd.arg("--lease-reads");
        }
        if let Some(fault) = &self.lease_fault {
            cmd.args(["--lease-fault", fault]);
        }
        if let Some(clocks) = &self.clocks {
            cmd.envs(clocks.env(host));
        }
        if !join && self.hosts[host - 1].original {
            cmd.args(["--initial-members", &self.initial_members]);
        } else if join {
            // The documented way to bring back a member that lost its data: it was removed
            // and added again under a new id; it joins the running cluster, whose members it
            // asks first whether they knew this id before.
            let members = self
                .hosts
                .iter()
                .enumerate()
                .filter_map(|(i, h)| h.id.map(|id| format!("{id}={}:{PEER_PORT}", addr(i + 1))))
                .collect::<Vec<_>>()
                .join(",");
            cmd.args(["--initial-cluster-state", "existing"])
                .args(["--initial-members", &members]);
        }
        if let Some(sessions) = self.client_api {
            // The exactly-once workload: dengine's client API next to the etcd API.
            cmd.arg("--dengine-client-api");
            if sessions == Sessions::On {
                cmd.env("DENGINE_CLIENT_SESSIONS__ENABLED", "true").env(
                    "DENGINE_CLIENT_SESSIONS__IDLE_EXPIRY_MS",
                    SESSION_IDLE_EXPIRY_MS.to_string(),
                );
            }
        }
        if !self.fsync {
            // On redb, whose unsynced commits live in the process's memory and die with a
            // SIGKILL, as a power loss would lose them. The write-ahead log (the default) hands
            // its unsynced writes to the page cache, which a SIGKILL does not lose: with it this
            // bug could not be seen by killing processes.
            cmd.env("DENGINE_STORAGE__FSYNC", "false")
                .env("DENGINE_STORAGE__BACKEND", "redb");
            // The keys in memory: dengine-kv's state file is synced on its own, so it ends up
            // ahead of the unsynced log and the member refuses to start ("state machine ahead
            // of the log") instead of serving with acknowledged writes lost, which is the bug
            // this run must show.
            cmd.args(["--state", "memory"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let h = &mut self.hosts[host - 1];
        h.child = Some(child);
        h.paused = false;
        Ok(())
    }

    /// Moves host `host`'s clock forward by `ms` (it need not run: the offset stays).
    pub(crate) fn clock_jump(&mut self, host: usize, ms: u64) -> Result<(), String> {
        match &mut self.clocks {
            Some(c) => c.jump(host, ms),
            None => Err("clock faults are off (--no-clock-faults)".into()),
        }
    }

    /// Whether the hosts run on libfaketime clocks.
    pub(crate) fn has_clock_faults(&self) -> bool {
        self.clocks.is_some()
    }

    /// Whether host `host`'s process runs (paused or not).
    pub(crate) fn is_running(&self, host: usize) -> bool {
        self.hosts[host - 1].child.is_some()
    }

    /// Hosts whose process runs and is not paused.
    pub(crate) fn live(&self) -> Vec<usize> {
        (1..=self.len())
            .filter(|&h| self.hosts[h - 1].child.is_some() && !self.hosts[h - 1].paused)
            .collect()
    }

    /// SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self, host: usize) {
        let h = &mut self.hosts[host - 1];
        if let Some(mut child) = h.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        h.paused = false;
    }

    /// SIGSTOP (`stop = true`) or SIGCONT.
    pub(crate) fn signal_pause(&mut self, host: usize, stop: bool) -> Result<(), String> {
        let h = &mut self.hosts[host - 1];
        let Some(child) = &h.child else {
            return Err(format!("host {host} is not running"));
        };
        let sig = if stop { "-STOP" } else { "-CONT" };
        crate::topology::run("kill", &[sig, &child.id().to_string()])?;
        h.paused = stop;
        Ok(())
    }

    /// Removes host `host`'s data directory (it must not run).
    pub(crate) fn wipe(&mut self, host: usize) -> Result<(), String> {
        let dir = self.data_dir(host);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("cannot wipe {}: {e}", dir.display())),
        }
    }

    /// Sets host `host`'s member id (`None`: removed).
    pub(crate) fn set_id(&mut self, host: usize, id: Option<u64>) {
        self.hosts[host - 1].id = id;
        self.hosts[host - 1].original = false;
    }

    /// Notes processes that exited without being killed (a node stopping on a fatal error is
    /// a finding of its own).
    pub(crate) fn reap(&mut self) {
        for (i, h) in self.hosts.iter_mut().enumerate() {
            if let Some(child) = &mut h.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.crashed.push(format!(
                    "host {} (member {:?}) exited: {status}",
                    i + 1,
                    h.id
                ));
                h.child = None;
                h.paused = false;
            }
        }
    }

    /// Kills every process.
    pub(crate) fn kill_all(&mut self) {
        for host in 1..=self.len() {
            self.kill(host);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Whether host `host` answers linearizable reads with the leader's lease (odd hosts) rather
/// than ReadIndex (even hosts): each run exercises both. A follower forwards the read to the
/// leader with its own choice.
pub(crate) fn lease_reads(host: usize) -> bool {
    host % 2 == 1
}

/// What one member says about itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberStatus {
    /// Its member id.
    pub(crate) id: u64,
    /// The leader it knows (0: none).
    pub(crate) leader: u64,
    /// Its commit index.
    pub(crate) commit: u64,
    /// Its applied index.
    pub(crate) applied: u64,
    /// Its current term.
    pub(crate) term: u64,
}

/// The etcd `Status` of host `host`.
pub(crate) async fn status(host: usize) -> Result<MemberStatus, String> {
    let t = Duration::from_millis(500);
    let s = MaintenanceClient::new(connect(host, t).await?)
        .status(StatusRequest {})
        .await
        .map_err(|e| format!("status of host {host}: {}", e.message()))?
        .into_inner();
    Ok(MemberStatus {
        id: s.header.as_ref().map_or(0, |h| h.member_id),
        term: s.header.map_or(0, |h| h.raft_term),
        leader: s.leader,
        commit: s.raft_index,
        applied: s.raft_applied_index,
    })
}

/// The member on `host`'s checksum of its key space at its current revision (etcd's HashKV):
/// `(revision, hash)`.
pub(crate) async fn hash_kv(host: usize) -> Result<(i64, u32), String> {
    let t = Duration::from_secs(2);
    let h = MaintenanceClient::new(connect(host, t).await?)
        .hash_kv(HashKvRequest { revision: 0 })
        .await
        .map_err(|e| format!("HashKV of host {host}: {}", e.message()))?
        .into_inner();
    Ok((h.header.map_or(0, |h| h.revision), h.hash))
}

/// The host that leads now, as the leader itself says, among `hosts`. A deposed leader that
/// has not heard of the new term yet still says it leads: of several, the one of the highest
/// term is the leader (a clock jump meant for the leader must not land on a follower).
pub(crate) async fn leader(hosts: &[usize]) -> Option<(usize, MemberStatus)> {
    let mut best: Option<(usize, MemberStatus)> = None;
    for &h in hosts {
        if let Ok(s) = status(h).await
            && s.leader != 0
            && s.leader == s.id
            && best.is_none_or(|(_, b)| s.term > b.term)
        {
            best = Some((h, s));
        }
    }
    best
}

/// Asks the leader on `host` to hand leadership to member `to`.
pub(crate) async fn transfer_leader(host: usize, to: u64) -> Result<(), String> {
    let url = format!("http://{}:{ADMIN_PORT}", addr(host));
    let mut request = tonic::Request::new(NodeRequest { id: to });
    let bearer = format!("Bearer {ADMIN_TOKEN}")
        .parse()
        .map_err(|_| "the admin token is not a header value".to_string())?;
    request.metadata_mut().insert("authorization", bearer);
    AdminClient::new(connect_url(url, host, Duration::from_secs(3)).await?)
        .transfer_leader(request)
        .await
        .map(|_| ())
        .map_err(|e| format!("transfer to {to}: {}", e.message()))
}

/// etcd `MemberRemove` of member `id`, sent to `leader_host`.
pub(crate) async fn member_remove(leader_host: usize, id: u64) -> Result<(), String> {
    ClusterClient::new(connect(leader_host, Duration::from_secs(5)).await?)
        .member_remove(MemberRemoveRequest { id })
        .await
        .map(|_| ())
        .map_err(|e| format!("member remove {id}: {}", e.message()))
}

/// etcd `MemberAdd` of host `host` as a voter, sent to `leader_host`; the new member id.
pub(crate) async fn member_add(leader_host: usize, host: usize) -> Result<u64, String> {
    let r = ClusterClient::new(connect(leader_host, Duration::from_secs(5)).await?)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer_url(host)],
            is_learner: false,
        })
        .await
        .map_err(|e| format!("member add of host {host}: {}", e.message()))?
        .into_inner();
    r.member
        .map(|m| m.id)
        .ok_or_else(|| format!("member add of host {host}: no member in the answer"))
}

/// The value of the unlabelled counter or gauge `name` in host `host`'s `/metrics`.
pub(crate) async fn metric(host: usize, name: &str) -> Result<u64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream =
            tokio::net::TcpStream::connect(format!("{}:{METRICS_PORT}", addr(host))).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: chaos\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let body = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| format!("/metrics of host {host}: no answer in 2 s"))?
        .map_err(|e| format!("/metrics of host {host}: {e}"))?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| format!("/metrics of host {host} has no {name}"))
}

/// `key` as the store's key bytes.
pub(crate) fn key_bytes(key: u64) -> Bytes {
    Bytes::from(format!("chaos/{key}"))
}
