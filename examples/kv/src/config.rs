//! [`KvConfig`]: the limits the etcd API services enforce on what clients send and receive
//! (and that the leader enforces again on writes forwarded by other members).

use std::time::Duration;

/// etcd's default `--max-request-bytes`: 1.5 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;

/// Default bound on the size of one Range response: 64 MiB.
pub const DEFAULT_MAX_RANGE_RESPONSE_BYTES: usize = 64 << 20;

/// Limits and options of the etcd API services of one member.
#[derive(Clone, Debug)]
pub struct KvConfig {
    /// Most operations in one branch (and most compares) of a transaction (etcd's
    /// `--max-txn-ops`, default 128).
    pub max_txn_ops: usize,
    /// Largest write command, encoded, that a client may send (etcd's `--max-request-bytes`,
    /// default [`DEFAULT_MAX_REQUEST_BYTES`]). Larger requests are refused with etcd's
    /// "request is too large" before they reach the Raft log.
    pub max_request_bytes: usize,
    /// Largest Range response the store builds (default
    /// [`DEFAULT_MAX_RANGE_RESPONSE_BYTES`]). A read over more data is refused with
    /// `RESOURCE_EXHAUSTED` and a message asking the client to page with `limit`; the member
    /// stops collecting keys as soon as the bound is passed, so a huge range costs no more
    /// memory than the bound.
    pub max_range_response_bytes: usize,
    /// etcd's `--client-cert-auth`: a client that presented a TLS certificate verified by the
    /// server is the user named by the certificate's Common Name (when it sent no token).
    pub client_cert_auth: bool,
    /// The client URLs this member reports in `member list` (etcd's
    /// `--advertise-client-urls`); empty: the client listener's own address.
    pub advertise_client_urls: Vec<String>,
    /// How a linearizable Range (one without `serializable`) is confirmed: `false` (the
    /// default) by ReadIndex, a heartbeat round to a majority per batch of reads (thesis
    /// §6.4); `true` by the leader's lease (§6.4.1), with no round trip while the lease holds,
    /// which is only as safe as `raft.lease_drift_ms` covers the members' clock drift
    /// (docs/configuration.md).
    pub lease_reads: bool,
    /// The space quota (etcd's `--quota-backend-bytes`, default [`DEFAULT_QUOTA_BYTES`], 2
    /// GiB as etcd's): a write that would take the key space (an estimate of the bytes its
    /// keys and values hold) past it raises the `NOSPACE` alarm, and while that alarm is
    /// raised every member refuses writes that add data with etcd's "database space
    /// exceeded", until an operator frees space and runs `etcdctl alarm disarm`.
    pub quota_bytes: u64,
    /// How much MVCC history the cluster keeps (etcd's `--auto-compaction-mode` and
    /// `--auto-compaction-retention`; default [`DEFAULT_AUTO_COMPACTION`], the last 10,000
    /// revisions). Only the leader's setting acts: it proposes the compactions.
    pub auto_compaction: AutoCompaction,
    /// This member's name in `member list` (etcd's `--name`); the other members learn it
    /// when they first reach this one. Empty (the default): listed as `node-<id>`.
    pub name: String,
    /// Where the keys live: on disk (the default) or in memory.
    pub state: StateStorage,
    /// How the leader times leases (etcd's lease rules; see [`LeaseConfig`]).
    pub leases: LeaseConfig,
    /// Chaos-harness hook (only in builds with the `fault-injection` feature): also serve
    /// dengine's own client API (`dengine.client.v1`, what `dengine-client` speaks) on the
    /// client listener, next to the etcd API. Its proposals are raw state machine commands,
    /// which name the user they run as: **it bypasses etcd authentication and permissions**,
    /// so it is for test clusters only. Default false.
    #[cfg(feature = "fault-injection")]
    pub dengine_client_api: bool,
}

/// The timing of leases. A member sets `extend` and `min_ttl_secs` from its Raft election
/// timeout when it starts ([`Member::start`](crate::Member::start)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Added to every lease's remaining TTL when a member becomes leader: at least the
    /// longest election timeout, the time a deposed leader may still have acknowledged
    /// keep-alives (etcd's rule). Default 1 s.
    pub extend: std::time::Duration,
    /// The shortest TTL granted, in seconds: a grant asking for less gets this (etcd: 1.5
    /// election timeouts, rounded up). Default 2.
    pub min_ttl_secs: i64,
    /// How often the leader looks for leases to checkpoint: those whose remaining TTL dropped
    /// by a quarter of their TTL since it was last recorded get it recorded through the log,
    /// so that a new leader does not give them their full TTL again. Default 1 s.
    pub checkpoint_interval: std::time::Duration,
    /// The most leases the cluster holds (default [`DEFAULT_MAX_LEASES`]): a grant beyond it
    /// is refused with `RESOURCE_EXHAUSTED` until leases are revoked or expire. Checked by
    /// the member a grant arrives at, on its applied table, so grants racing each other may
    /// pass it by a few. The bound exists because the whole lease table is written to the
    /// state file with every batch that changes a lease, and the leader's keeper scans it
    /// every `checkpoint_interval`: both cost time in proportion to the table.
    pub max_leases: usize,
    /// A deliberately broken lease rule, for showing that the chaos harness catches it.
    #[cfg(feature = "fault-injection")]
    pub fault: LeaseFault,
}

/// Lease rules deliberately broken (only in builds with the `fault-injection` feature): the
/// chaos harness must catch each.
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LeaseFault {
    /// None: the real rules.
    #[default]
    None,
    /// Every member expires leases on its own clock, leading or not (a follower never sees
    /// the renewals, which the leader takes).
    FollowerClock,
    /// A new leader does not extend the leases it takes over.
    NoExtension,
}

#[cfg(feature = "fault-injection")]
impl LeaseFault {
    /// From `serve --lease-fault` (`follower-clock`, `no-extension`; absent: none).
    pub fn parse(rule: Option<&str>) -> Result<Self, String> {
        match rule {
            None => Ok(LeaseFault::None),
            Some("follower-clock") => Ok(LeaseFault::FollowerClock),
            Some("no-extension") => Ok(LeaseFault::NoExtension),
            Some(other) => Err(format!(
                "--lease-fault {other:?}: expected follower-clock or no-extension"
            )),
        }
    }
}

/// The default bound on the number of leases: 10,000.
pub const DEFAULT_MAX_LEASES: usize = 10_000;

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            extend: Duration::from_secs(1),
            min_ttl_secs: 2,
            checkpoint_interval: Duration::from_secs(1),
            max_leases: DEFAULT_MAX_LEASES,
            #[cfg(feature = "fault-injection")]
            fault: LeaseFault::None,
        }
    }
}

impl LeaseConfig {
    /// The timing for a cluster whose election timeout is at most `election_timeout`.
    pub fn for_election_timeout(election_timeout: Duration) -> Self {
        let min_ms = election_timeout.as_millis().saturating_mul(3) / 2;
        LeaseConfig {
            extend: election_timeout,
            min_ttl_secs: i64::try_from(min_ms.div_ceil(1000))
                .unwrap_or(i64::MAX)
                .max(1),
            ..LeaseConfig::default()
        }
    }
}

/// Where a member keeps its keys, their history, the auth state and alarms (the `state` of
/// [`KvConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateStorage {
    /// In a redb file, `<data_dir>/state/kv.redb`, written with each applied batch: a restart
    /// resumes from it (replaying at most about a second of the log), and memory holds only
    /// the file's page cache of `cache_bytes`, not the data set.
    Durable {
        /// The page cache's size in bytes (default [`DEFAULT_STATE_CACHE_BYTES`]).
        cache_bytes: usize,
    },
    /// In memory, rebuilt from the newest snapshot and the log on every start: restarts take
    /// longer as the data grows, and the whole data set (with its history) is in memory.
    Memory,
}

/// The default page cache of a durable state: 64 MiB.
pub const DEFAULT_STATE_CACHE_BYTES: usize = 64 << 20;

impl Default for StateStorage {
    fn default() -> Self {
        StateStorage::Durable {
            cache_bytes: DEFAULT_STATE_CACHE_BYTES,
        }
    }
}

/// The default space quota: 2 GiB, as etcd's.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            max_txn_ops: 128,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_range_response_bytes: DEFAULT_MAX_RANGE_RESPONSE_BYTES,
            client_cert_auth: false,
            advertise_client_urls: Vec::new(),
            lease_reads: false,
            quota_bytes: DEFAULT_QUOTA_BYTES,
            auto_compaction: DEFAULT_AUTO_COMPACTION,
            name: String::new(),
            state: StateStorage::default(),
            leases: LeaseConfig::default(),
            #[cfg(feature = "fault-injection")]
            dengine_client_api: false,
        }
    }
}

/// How much MVCC history a cluster keeps (the `auto_compaction` of
/// [`KvConfig`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Never compacted automatically: the history grows until a client compacts
    /// (`etcdctl compaction REV`), as etcd's default.
    Off,
    /// Keep this many revisions: the leader compacts to `current - n` once that drops at
    /// least `n / 10` more, checking ten times a second, so the history holds between `n` and
    /// about `1.1 * n` revisions (etcd's `--auto-compaction-mode=revision`, which checks every
    /// 5 minutes).
    Revisions(u64),
    /// Keep this much time: the leader compacts to the revision the store had that long ago,
    /// sampled every tenth of the period (at least every second), as etcd's
    /// `--auto-compaction-mode=periodic`.
    Periodic(Duration),
}

/// The default: keep the last 10,000 revisions (etcd keeps everything by default; dengine-kv
/// bounds its history unless told otherwise: with [`StateStorage::Memory`] it is all in
/// memory, and every snapshot carries it).
pub const DEFAULT_AUTO_COMPACTION: AutoCompaction = AutoCompaction::Revisions(10_000);

impl Default for AutoCompaction {
    fn default() -> Self {
        DEFAULT_AUTO_COMPACTION
    }
}
