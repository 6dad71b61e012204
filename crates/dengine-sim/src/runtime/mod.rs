//! The production runtime under deterministic simulation: real `dengine-node` nodes — the
//! event loop with its write pipelining and group commit, the apply task, tick catch-up,
//! ReadIndex and lease reads, snapshot streaming and installation, restarts from the log
//! store — each on its own single-threaded tokio runtime whose clock is paused and advanced
//! by this simulation, joined by a simulated network ([`net`]), writing to simulated disks
//! ([`disk`]), and driven by clients through the real client API (`Node::propose`,
//! `Node::read`).
//!
//! One `u64` seed decides everything: the fault schedule, every delay and loss, the disks'
//! latencies and failures, the clients' operations and the nodes' election timeouts
//! (`NodeBuilder::rng_seed`). Nothing reads the wall clock or another thread, so a seed
//! replays exactly; [`Report::fingerprint`] hashes the whole client history and the final
//! state to show it.
//!
//! Time is global simulated time in steps of one millisecond. In each step the loop (1)
//! applies the faults due, (2) hands the network's due messages to the receivers' inboxes,
//! (3) advances every running, unpaused host's clock by its share of the step (hosts' clocks
//! run fast or slow, and jump), running whatever becomes ready on it, and (4) advances the
//! clients. A paused host receives messages but runs nothing; when it resumes, its clock has
//! jumped by the whole pause at once, as a process's monotonic clock does after SIGSTOP and
//! SIGCONT. A crashed host loses its runtime (every task) and whatever its disk had not
//! synced, and restarts later from its disk.
//!
//! Faults are combined, not healed one at a time: asymmetric and overlapping partitions with
//! their own durations, message loss, duplication, delay and reordering, crashes and restarts,
//! pauses, fast and slow clocks and forward clock jumps, slow and stalling disks, and I/O
//! errors on writes and syncs (the node stops; the simulation restarts it, as an operator
//! would). Then everything heals and the run must recover: a fresh write must commit and be
//! read back through every node within [`NodeSimConfig::heal_ms`].
//!
//! The clients run one of two workloads ([`Workload`]): puts, compare-and-sets and reads of a
//! few keys, or **increments** with unique ids that each client resends, through every
//! fault, until it is answered — in a client session (thesis §6.3), or without one to show
//! why sessions exist. The second is checked for exactly once: after healing, no increment
//! was applied twice, every acknowledged one was applied, and every applied one was proposed
//! (so the count lies between the acknowledged increments and those plus the unknown ones).
//!
//! Checks: at most one leader per term (Election Safety, observed at every step through
//! `Node::watch_leadership`); the client history — puts, compare-and-sets, linearizable and
//! lease reads — is linearizable ([`crate::linearizability`]); after healing, every replica's
//! state machine holds the same data at the same index and the logs agree on every index both
//! hold up to it.

pub mod disk;
pub mod machine;
pub mod net;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use dengine_core::{LogReader, LogStore, NodeId, Role};
use dengine_node::testing::MemorySnapshots;
use dengine_node::{
    Consistency, Leadership, Node, NodeBuilder, NodeConfig, ProposeError, RuntimeBug, SessionId,
    SessionLimits, SessionRefusal,
};
use parking_lot::Mutex;
use tokio::sync::{oneshot, watch};

use self::disk::{Disk, DiskFaults, DiskStats, SimDisk};
use self::machine::{
    MachineState, SimMachine, increment_command, read_answer, read_query, write_answer,
};
use self::net::{LinkFaults, NetStats, Packet, SimNet};
use crate::kv::Command;
use crate::linearizability::{self, History, Op, OpResult, Operation, Outcome, Verdict};
use crate::rng::SimRng;

/// One run of the runtime simulation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSimConfig {
    /// Decides everything else.
    pub seed: u64,
    /// Cluster size (3 to 5).
    pub nodes: u64,
    /// Length of the fault phase, in simulated milliseconds.
    pub fault_ms: u64,
    /// How long the healed cluster has to commit and read back a fresh write, and for its
    /// replicas to converge, in simulated milliseconds.
    pub heal_ms: u64,
    /// Concurrent clients.
    pub clients: u64,
    /// Keys the clients work on.
    pub keys: u64,
    /// Deliberate runtime bugs switched on in every node.
    pub bugs: Vec<RuntimeBug>,
    /// Deliberate disk bug: syncs report success without making anything durable.
    pub lying_sync: bool,
    /// What the clients do.
    pub workload: Workload,
    /// Print the run's events.
    pub verbose: bool,
}

/// What the simulated clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts, compare-and-sets and reads of a few keys; the history is checked for
    /// linearizability.
    Kv,
    /// Increments, each with a unique id, resent through every fault until answered; checked
    /// for exactly once. With `sessions`, in client sessions (the nodes run with
    /// [`SESSION_LIMITS`]; the state machine is volatile in even seeds and durable in odd
    /// ones); without, as plain proposals, which a resend can apply twice.
    Increments {
        /// Whether the clients use client sessions.
        sessions: bool,
    },
}

/// The session limits of the exactly-once workload: sessions idle for 3 s of log time
/// expire, so that long partitions and crashes also exercise expiry (a client whose session
/// expired opens a new one; its unanswered increment has an unknown outcome).
pub const SESSION_LIMITS: SessionLimits = SessionLimits {
    max_sessions: 64,
    idle_expiry_ms: 3_000,
    max_unacknowledged: 16,
};

impl NodeSimConfig {
    /// The defaults for `seed`: 3 nodes, 6 s of faults, 10 s to heal, 6 clients on 4 keys.
    pub fn new(seed: u64) -> NodeSimConfig {
        NodeSimConfig {
            seed,
            nodes: 3,
            fault_ms: 6_000,
            heal_ms: 10_000,
            clients: 6,
            keys: 4,
            bugs: Vec::new(),
            lying_sync: false,
            workload: Workload::Kv,
            verbose: false,
        }
    }

    /// Checks the sizes; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=5).contains(&self.nodes) {
            return Err(format!("nodes = {}: must be 3 to 5", self.nodes));
        }
        if self.clients == 0 || self.keys == 0 {
            return Err("clients and keys must be at least 1".into());
        }
        if self.heal_ms < 2_000 {
            return Err(format!(
                "heal_ms = {}: at least 2000 (a few election timeouts)",
                self.heal_ms
            ));
        }
        Ok(())
    }
}

/// The timing every simulated node runs with (milliseconds): ticks of 10, elections after
/// 150 to 300, heartbeats every 30, and a lease of 150 − 50 = 100 from a heartbeat's send
/// time. Clock rates stay within ±[`MAX_SKEW_PPM`] and forward jumps within
/// [`MAX_JUMP_MS`], so a follower's shortest election timeout (150 ms on its clock, at least
/// 150 / 1.1 − 10 ≈ 126 ms of real time) always outlasts the leader's lease (100 ms on its
/// clock, at most 100 / 0.9 ≈ 111 ms of real time): the drift the lease's margin covers
/// (`docs/correctness.md`).
const TICK_MS: u64 = 10;
const ELECTION_MS: u64 = 150;
const HEARTBEAT_MS: u64 = 30;
const LEASE_DRIFT_MS: u64 = 50;
/// Largest clock-rate error of a host, parts per million.
pub const MAX_SKEW_PPM: u64 = 100_000;
/// Largest forward jump of a host's clock, milliseconds.
pub const MAX_JUMP_MS: u64 = 10;

/// The fault schedule's intensities, drawn from the seed ("swarm" testing: every seed
/// stresses another mix). Chances are per millisecond step, per million.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Schedule {
    links: LinkFaults,
    disk: DiskFaults,
    partition_ppm: u64,
    crash_ppm: u64,
    pause_ppm: u64,
    jump_ppm: u64,
    skew: bool,
    snapshot_every: u64,
    snapshot_trailing: u64,
}

impl Schedule {
    fn from_rng(rng: &mut SimRng) -> Schedule {
        let max_delay_us = rng.between(200, 20_000);
        Schedule {
            links: LinkFaults {
                loss_per_mille: rng.between(0, 100),
                duplicate_per_mille: rng.between(0, 50),
                min_delay_us: rng.between(50, 200).min(max_delay_us),
                max_delay_us,
            },
            disk: DiskFaults {
                max_latency_ms: rng.between(0, 8),
                stall_per_mille: if rng.chance(300) { 2 } else { 0 },
                stall_ms: rng.between(100, 1_500),
                write_error_per_mille: if rng.chance(200) { 1 } else { 0 },
                sync_error_per_mille: if rng.chance(200) { 1 } else { 0 },
                lying_sync: false,
            },
            partition_ppm: rng.between(200, 1_500),
            crash_ppm: rng.between(100, 1_000),
            pause_ppm: rng.between(100, 1_000),
            jump_ppm: rng.between(0, 1_000),
            skew: rng.chance(700),
            snapshot_every: if rng.chance(600) {
                rng.between(10, 100)
            } else {
                0
            },
            snapshot_trailing: rng.between(0, 10),
        }
    }
}

/// Counts of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Simulated milliseconds.
    pub steps: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Host crashes.
    pub crashes: u64,
    /// Nodes that stopped on a fatal (disk) error and were restarted.
    pub fatal_stops: u64,
    /// Host pauses.
    pub pauses: u64,
    /// Forward clock jumps.
    pub jumps: u64,
    /// Client operations completed with a result.
    pub ops_ok: u64,
    /// Client operations whose outcome stayed unknown.
    pub ops_unknown: u64,
    /// Of the completed ones, lease reads.
    pub lease_reads: u64,
    /// Of the completed ones, linearizable reads.
    pub linearizable_reads: u64,
    /// Stale reads served (not checked for linearizability: they may be stale).
    pub stale_reads: u64,
    /// The highest term reached.
    pub max_term: u64,
    /// Snapshots installed by followers.
    pub snapshot_installs: u64,
    /// Increments acknowledged (exactly-once workload).
    pub increments_ok: u64,
    /// Increments whose outcome stayed unknown (the clients stopped, or the session expired,
    /// while one was unanswered).
    pub increments_unknown: u64,
    /// Increments sent again after a try whose outcome was unknown.
    pub resends: u64,
    /// Sessions that expired (or were evicted) under a client.
    pub sessions_lost: u64,
    /// Increments answered "applied, response lost" (counted as acknowledged): a resend to a
    /// leader whose durable state machine applied the increment before a restart.
    pub responses_lost: u64,
    /// The network's counts.
    pub net: NetStats,
    /// The disks' counts, summed.
    pub disk: DiskStats,
}

/// A run that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// What happened.
    pub stats: Stats,
    /// Hash of the client history (every operation, its times and result), the final state
    /// of every replica and the counts: equal for two runs of one seed.
    pub fingerprint: u64,
}

/// A run that failed a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The seed, to replay it.
    pub seed: u64,
    /// Simulated millisecond of the failure.
    pub at_ms: u64,
    /// Which check.
    pub check: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} failed `{}` at {} ms: {}",
            self.seed, self.check, self.at_ms, self.detail
        )
    }
}

/// One running incarnation of a host's node.
struct Incarnation {
    rt: tokio::runtime::Runtime,
    node: Node,
    store: SimDisk,
    leadership: watch::Receiver<Leadership>,
}

/// A host's clock: its rate, and how far it has been advanced.
#[derive(Clone, Copy, Debug)]
struct Clock {
    rate_ppm: u64,
    /// Local µs owed so far (global µs × rate).
    local_us: u64,
    /// Local ms the runtime has been advanced by.
    advanced_ms: u64,
}

struct Host {
    id: NodeId,
    disk: Disk,
    /// The node's snapshot directory, as production nodes have one
    /// (`NodeBuilder::snapshot_dir`), kept in memory (file I/O would run on tokio's blocking
    /// pool, outside the simulated time); a crash leaves it in place.
    snapshots: MemorySnapshots,
    machine: Arc<Mutex<MachineState>>,
    running: Option<Incarnation>,
    clock: Clock,
    paused_until: Option<u64>,
    down_until: Option<u64>,
    starts: u64,
}

/// Shared between the simulation and the clients.
struct World {
    /// Global simulated time, µs.
    now_us: AtomicU64,
    /// The current node handle of each host and the handle of its runtime (`None` while it
    /// is down).
    nodes: Mutex<BTreeMap<NodeId, Option<(Node, tokio::runtime::Handle)>>>,
    /// Operations resolved so far, and those still pending (by client operation number).
    history: Mutex<(Vec<Operation>, BTreeMap<u64, Operation>)>,
    next_op: AtomicU64,
    /// Calls waiting for a node's answer, by node and call number.
    in_flight: Mutex<BTreeMap<(NodeId, u64), oneshot::Sender<()>>>,
    next_call: AtomicU64,
    stop_clients: AtomicBool,
    stats: Mutex<Stats>,
    /// The exactly-once workload's record.
    increments: Mutex<Increments>,
}

/// What the clients of the exactly-once workload know about their increments.
#[derive(Debug, Default)]
struct Increments {
    /// Acknowledged: certainly applied.
    acked: std::collections::BTreeSet<u64>,
    /// Sent at least once, never acknowledged: applied once or not at all.
    unknown: std::collections::BTreeSet<u64>,
    /// Being sent.
    in_flight: std::collections::BTreeSet<u64>,
    /// Answers that must never come (a session refusing a client's own current command).
    violations: Vec<String>,
}

impl World {
    fn now(&self) -> u64 {
        self.now_us.load(Ordering::Relaxed)
    }

    /// Runs `call` with node `id`'s handle on that node's own runtime, so that the node's
    /// clock measures the call's deadlines, with a 3-second timeout (of that clock).
    async fn call<T, F, Fut>(&self, id: NodeId, call: F) -> Call<T>
    where
        T: Send + 'static,
        F: FnOnce(Node) -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let Some((node, rt)) = self.nodes.lock().get(&id).cloned().flatten() else {
            return Call::Down;
        };
        let call = call(node);
        let key = (id, self.next_call.fetch_add(1, Ordering::Relaxed));
        let (cancel_tx, cancel_rx) = oneshot::channel::<()>();
        self.in_flight.lock().insert(key, cancel_tx);
        let (answer_tx, answer_rx) = oneshot::channel();
        // The timeout is made inside the task: a deadline is an instant of the clock of the
        // runtime that creates it, and only the node's clock may measure this one.
        rt.spawn(async move {
            let _ = answer_tx.send(tokio::time::timeout(Duration::from_secs(3), call).await);
        });
        // The client gives up after a second of its own clock (a paused node's clock stands
        // still): the call stays in flight on the node and may still take effect. A crash of
        // the node ends the wait through `cancel_calls`, in call order: the order in which
        // tokio drops a runtime's tasks depends on their ids, which are global to the process.
        let answer = tokio::time::timeout(Duration::from_secs(1), async {
            tokio::select! {
                biased;
                _ = cancel_rx => None,
                answer = answer_rx => answer.ok(),
            }
        })
        .await;
        self.in_flight.lock().remove(&key);
        match answer {
            Ok(Some(Ok(answer))) => Call::Answered(answer),
            // Timed out, or the host crashed.
            _ => Call::Lost,
        }
    }

    /// Host `id` crashed: ends the wait of every call to it, in call order.
    fn cancel_calls(&self, id: NodeId) {
        let mut in_flight = self.in_flight.lock();
        let rest = in_flight.split_off(&(id + 1, 0));
        let mut mine = in_flight.split_off(&(id, 0));
        in_flight.extend(rest);
        drop(in_flight);
        while let Some((_, cancel)) = mine.pop_first() {
            let _ = cancel.send(());
        }
    }

    fn node_count(&self) -> u64 {
        self.nodes.lock().len() as u64
    }

    fn invoke(&self, client: u64, key: u64, op: Op) -> u64 {
        let n = self.next_op.fetch_add(1, Ordering::Relaxed);
        let operation = Operation {
            client,
            key,
            op,
            invoke: self.now(),
            outcome: Outcome::Unknown,
        };
        self.history.lock().1.insert(n, operation);
        n
    }

    /// The operation had an effect we know: record its result.
    fn complete(&self, n: u64, result: OpResult) {
        let at = self.now();
        let mut h = self.history.lock();
        if let Some(mut op) = h.1.remove(&n) {
            op.outcome = Outcome::Completed { at, result };
            h.0.push(op);
        }
        drop(h);
        self.stats.lock().ops_ok += 1;
    }

    /// The operation certainly had no effect (refused): forget it.
    fn forget(&self, n: u64) {
        self.history.lock().1.remove(&n);
    }

    /// The operation may or may not have taken effect.
    fn unknown(&self, n: u64) {
        let mut h = self.history.lock();
        if let Some(op) = h.1.remove(&n) {
            h.0.push(op);
        }
    }
}

/// How a client's call to a node ended.
enum Call<T> {
    /// The node is down: nothing was sent.
    Down,
    /// No answer (timeout, or the node crashed meanwhile).
    Lost,
    /// The node answered.
    Answered(T),
}

/// Runs one seed of the runtime simulation.
pub fn run(config: &NodeSimConfig) -> Result<Report, Failure> {
    config.validate().map_err(|detail| Failure {
        seed: config.seed,
        at_ms: 0,
        check: "config",
        detail,
    })?;
    Sim::new(config)?.run()
}

struct Sim<'a> {
    config: &'a NodeSimConfig,
    rng: SimRng,
    schedule: Schedule,
    net: SimNet,
    hosts: Vec<Host>,
    world: Arc<World>,
    clients: tokio::runtime::Runtime,
    client_clock_ms: u64,
    /// Global simulated time, µs, for the nodes' session stamps (kept apart from [`World`],
    /// which holds the nodes: a node holding it would never be freed).
    clock: Arc<AtomicU64>,
    /// Active partitions: the links each one cuts, and when it heals (µs).
    partitions: Vec<(Vec<(NodeId, NodeId)>, u64)>,
    /// Leader of each term seen so far.
    leaders: BTreeMap<u64, NodeId>,
    now_ms: u64,
}

fn paused_runtime(seed: u64) -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| Failure {
            seed,
            at_ms: 0,
            check: "setup",
            detail: format!("cannot build a tokio runtime: {e}"),
        })
}

fn members(n: u64) -> BTreeMap<NodeId, String> {
    (1..=n).map(|id| (id, format!("sim-{id}"))).collect()
}

impl<'a> Sim<'a> {
    fn new(config: &'a NodeSimConfig) -> Result<Self, Failure> {
        let mut rng = SimRng::new(config.seed);
        let mut schedule = Schedule::from_rng(&mut rng);
        schedule.disk.lying_sync = config.lying_sync;
        let net = SimNet::new(rng.next_u64(), schedule.links);
        let hosts = (1..=config.nodes)
            .map(|id| Host {
                id,
                disk: Disk::new(rng.next_u64(), schedule.disk),
                snapshots: MemorySnapshots::new(),
                machine: Arc::default(),
                running: None,
                clock: Clock {
                    rate_ppm: if schedule.skew {
                        rng.between(1_000_000 - MAX_SKEW_PPM, 1_000_000 + MAX_SKEW_PPM)
                    } else {
                        1_000_000
                    },
                    local_us: 0,
                    advanced_ms: 0,
                },
                paused_until: None,
                down_until: None,
                starts: 0,
            })
            .collect();
        let world = Arc::new(World {
            now_us: AtomicU64::new(0),
            nodes: Mutex::new(BTreeMap::new()),
            history: Mutex::new((Vec::new(), BTreeMap::new())),
            next_op: AtomicU64::new(0),
            in_flight: Mutex::new(BTreeMap::new()),
            next_call: AtomicU64::new(0),
            stop_clients: AtomicBool::new(false),
            stats: Mutex::new(Stats::default()),
            increments: Mutex::new(Increments::default()),
        });
        Ok(Sim {
            config,
            rng,
            schedule,
            net,
            hosts,
            world,
            clients: paused_runtime(config.seed)?,
            client_clock_ms: 0,
            clock: Arc::default(),
            partitions: Vec::new(),
            leaders: BTreeMap::new(),
            now_ms: 0,
        })
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.config.verbose {
            println!("[{:>6} ms] {}", self.now_ms, what());
        }
    }

    fn fail(&self, check: &'static str, detail: String) -> Failure {
        Failure {
            seed: self.config.seed,
            at_ms: self.now_ms,
            check,
            detail,
        }
    }

    fn node_config(&self, id: NodeId) -> NodeConfig {
        let mut c = NodeConfig::new(id);
        c.raft.tick_ms = TICK_MS;
        c.raft.election_timeout_ms = ELECTION_MS;
        c.raft.heartbeat_interval_ms = HEARTBEAT_MS;
        c.raft.lease_drift_ms = LEASE_DRIFT_MS;
        c.raft.max_inflight_messages = 16;
        c.snapshot.every_entries = self.schedule.snapshot_every;
        c.snapshot.every_bytes = 0;
        c.snapshot.trailing_entries = self.schedule.snapshot_trailing;
        c.client.propose_timeout_ms = 2_000;
        c.client.read_timeout_ms = 2_000;
        c
    }

    /// Starts host `i` from its disk (bootstrapping the cluster on the very first start).
    fn start(&mut self, i: usize) -> Result<(), Failure> {
        let config = self.node_config(self.hosts[i].id);
        let host = &mut self.hosts[i];
        let store = host.disk.open();
        let rt = paused_runtime(self.config.seed)?;
        let seed = self.config.seed ^ (host.id << 48) ^ (host.starts << 32);
        // The exactly-once workload's state machine: volatile in even seeds (what it held is
        // gone with the crash, and the runtime rebuilds it and the session table from the
        // snapshot and the log), durable in odd ones (it keeps its state, and the runtime
        // rebuilds the session table from the newest snapshot and the log after it).
        let machine = match self.config.workload {
            Workload::Increments { .. } if self.config.seed % 2 == 1 => {
                SimMachine::durable(host.machine.clone())
            }
            Workload::Increments { .. } => {
                host.machine = Arc::default();
                SimMachine::new(host.machine.clone())
            }
            Workload::Kv => SimMachine::new(host.machine.clone()),
        };
        let mut builder = NodeBuilder::new(config)
            .log_store(store.clone())
            .state_machine(machine)
            .transport(self.net.transport(host.id))
            .snapshot_memory(host.snapshots.clone())
            .rng_seed(seed);
        for bug in &self.config.bugs {
            builder = builder.inject_bug(*bug);
        }
        if self.config.workload == (Workload::Increments { sessions: true }) {
            // Stamped with the simulated time: nothing reads the wall clock.
            let now_us = self.clock.clone();
            builder = builder
                .client_sessions(SESSION_LIMITS)
                .session_clock(move || now_us.load(Ordering::Relaxed) / 1000);
        }
        // The initial members bootstrap an empty disk (again, if the first attempt's writes
        // were lost); a disk that holds state is restarted from.
        let n = self.config.nodes;
        let errors_before = host.disk.stats().write_errors + host.disk.stats().sync_errors;
        let started = rt.block_on(builder.start_or_bootstrap(members(n)));
        host.starts += 1;
        host.clock.advanced_ms = host.clock.local_us / 1000;
        let node = match started {
            Ok(node) => node,
            Err(e) => {
                let stats = host.disk.stats();
                if stats.write_errors + stats.sync_errors > errors_before {
                    // The disk failed during the start: the node refused to start, as it
                    // should. Try again later, after a crash that forgets what it had not
                    // synced.
                    let id = host.id;
                    self.log(|| format!("node {id} failed to start on a disk error: {e}"));
                    drop(rt);
                    self.crash(i, 100);
                    return Ok(());
                }
                return Err(self.fail(
                    "restart",
                    format!("node {} cannot start from its disk: {e}", self.hosts[i].id),
                ));
            }
        };
        let leadership = node.watch_leadership();
        self.world
            .nodes
            .lock()
            .insert(host.id, Some((node.clone(), rt.handle().clone())));
        host.running = Some(Incarnation {
            rt,
            node,
            store,
            leadership,
        });
        host.down_until = None;
        Ok(())
    }

    /// Host `i` loses power: its runtime and every task on it are gone, and so is what its
    /// disk had not synced.
    fn crash(&mut self, i: usize, down_ms: u64) {
        let id = self.hosts[i].id;
        self.world.nodes.lock().insert(id, None);
        self.world.cancel_calls(id);
        if let Some(inc) = self.hosts[i].running.take() {
            drop(inc.node);
            inc.rt.shutdown_background();
        }
        self.hosts[i].disk.crash(&mut self.rng);
        self.hosts[i].paused_until = None;
        self.hosts[i].down_until = Some(self.now_us() + down_ms * 1000);
    }

    fn now_us(&self) -> u64 {
        self.now_ms * 1000
    }

    fn run(mut self) -> Result<Report, Failure> {
        for i in 0..self.hosts.len() {
            self.start(i)?;
        }
        for c in 0..self.config.clients {
            let world = self.world.clone();
            let seed = self.rng.next_u64();
            let (nodes, keys) = (self.config.nodes, self.config.keys);
            match self.config.workload {
                Workload::Kv => self.clients.spawn(client(world, c, seed, nodes, keys)),
                Workload::Increments { sessions } => self
                    .clients
                    .spawn(incrementer(world, c, seed, nodes, sessions)),
            };
        }
        let fault_end = self.config.fault_ms;
        while self.now_ms < fault_end {
            self.inject_faults()?;
            self.step()?;
        }
        self.heal()?;
        self.recover()?;
        self.finish()
    }

    /// One millisecond of global time.
    fn step(&mut self) -> Result<(), Failure> {
        self.now_ms += 1;
        let now_us = self.now_us();
        self.world.now_us.store(now_us, Ordering::Relaxed);
        self.clock.store(now_us, Ordering::Relaxed);
        self.net.set_now(now_us);
        // Restarts and resumptions due.
        for i in 0..self.hosts.len() {
            if self.hosts[i].down_until.is_some_and(|t| t <= now_us) {
                self.log(|| format!("node {} restarts", i + 1));
                self.start(i)?;
            }
            if self.hosts[i].paused_until.is_some_and(|t| t <= now_us) {
                self.log(|| format!("node {} resumes", i + 1));
                self.hosts[i].paused_until = None;
            }
        }
        for packet in self.net.take_due() {
            let to = match &packet {
                Packet::Message(m) | Packet::Snapshot(m, _) => m.to,
            };
            let Some(inc) = self
                .hosts
                .get((to - 1) as usize)
                .and_then(|h| h.running.as_ref())
            else {
                continue;
            };
            let inbox = inc.node.inbox();
            // A full inbox drops the message, as a real one does.
            let _ = match packet {
                Packet::Message(m) => dengine_core::Inbox::deliver(&inbox, m),
                Packet::Snapshot(m, data) => dengine_core::Inbox::deliver_snapshot(&inbox, m, data),
            };
        }
        for i in 0..self.hosts.len() {
            let host = &mut self.hosts[i];
            host.clock.local_us += host.clock.rate_ppm / 1000;
            if host.paused_until.is_some() {
                continue;
            }
            let Some(inc) = host.running.as_ref() else {
                continue;
            };
            let target = host.clock.local_us / 1000;
            let ms = target.saturating_sub(host.clock.advanced_ms);
            host.clock.advanced_ms = host.clock.advanced_ms.max(target);
            advance(&inc.rt, ms);
        }
        self.client_clock_ms += 1;
        advance(&self.clients, 1);
        self.observe()
    }

    /// Election Safety, and nodes that stopped on a fatal error.
    fn observe(&mut self) -> Result<(), Failure> {
        for i in 0..self.hosts.len() {
            let Some(inc) = self.hosts[i].running.as_ref() else {
                continue;
            };
            if inc.node.is_stopped() {
                let reason = inc.node.fatal_error().unwrap_or_default();
                self.log(|| format!("node {} stopped: {reason}", i + 1));
                self.world.stats.lock().fatal_stops += 1;
                // Its disk failed; an operator restarts it. The restart is modelled as a
                // power loss, the worst case: what the disk had not synced is gone too.
                let down = self.rng.between(50, 500);
                self.crash(i, down);
                continue;
            }
            let l = inc.leadership.borrow().clone();
            let mut stats = self.world.stats.lock();
            stats.max_term = stats.max_term.max(l.term);
            drop(stats);
            if l.role == Role::Leader {
                let id = self.hosts[i].id;
                match self.leaders.get(&l.term) {
                    Some(&other) if other != id => {
                        return Err(self.fail(
                            "election safety",
                            format!("nodes {other} and {id} both led term {}", l.term),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.log(|| format!("node {id} leads term {}", l.term));
                        self.leaders.insert(l.term, id);
                    }
                }
            }
        }
        Ok(())
    }

    fn chance_ppm(&mut self, ppm: u64) -> bool {
        self.rng.below(1_000_000) < ppm
    }

    fn inject_faults(&mut self) -> Result<(), Failure> {
        let n = self.hosts.len() as u64;
        let now = self.now_us();
        // Partitions heal on their own schedules; the cut links are the union of the rest.
        let before = self.partitions.len();
        self.partitions.retain(|(_, until)| *until > now);
        if self.partitions.len() != before {
            self.net.heal();
            for (links, _) in &self.partitions {
                for &(a, b) in links {
                    self.net.cut(a, b);
                }
            }
            self.log(|| "a partition heals".into());
        }
        if self.partitions.len() < 2 && self.chance_ppm(self.schedule.partition_ppm) {
            // A proper, non-empty subset of the nodes on one side.
            let mask = 1 + self.rng.below((1 << n) - 2);
            let side: Vec<NodeId> = (1..=n).filter(|id| mask & (1 << (id - 1)) != 0).collect();
            let one_way = self.rng.chance(300);
            let mut links = Vec::new();
            for a in 1..=n {
                for b in 1..=n {
                    if side.contains(&a) && !side.contains(&b) {
                        links.push((a, b));
                        if !one_way {
                            links.push((b, a));
                        }
                    }
                }
            }
            let until = now + self.rng.between(100, 2_000) * 1000;
            for &(a, b) in &links {
                self.net.cut(a, b);
            }
            self.log(|| format!("partition {side:?} (one way: {one_way})"));
            self.partitions.push((links, until));
            self.world.stats.lock().partitions += 1;
        }
        if self.chance_ppm(self.schedule.crash_ppm) {
            let i = self.rng.below(n) as usize;
            if self.hosts[i].running.is_some() {
                let down = self.rng.between(20, 1_500);
                self.log(|| format!("node {} crashes for {down} ms", i + 1));
                self.crash(i, down);
                self.world.stats.lock().crashes += 1;
            }
        }
        if self.chance_ppm(self.schedule.pause_ppm) {
            let i = self.rng.below(n) as usize;
            if self.hosts[i].running.is_some() && self.hosts[i].paused_until.is_none() {
                let pause = self.rng.between(20, 1_500);
                self.hosts[i].paused_until = Some(now + pause * 1000);
                self.world.stats.lock().pauses += 1;
                // Half of the pauses come with a network outage of the same host (a virtual
                // machine stopped and moved): peers' messages sent meanwhile are lost, so on
                // resuming it learns of no newer term and must rely on its clock alone.
                if self.rng.chance(500) {
                    let id = self.hosts[i].id;
                    let until = now + (pause + self.rng.between(0, 300)) * 1000;
                    let links: Vec<(NodeId, NodeId)> = (1..=n)
                        .filter(|&other| other != id)
                        .flat_map(|other| [(id, other), (other, id)])
                        .collect();
                    for &(a, b) in &links {
                        self.net.cut(a, b);
                    }
                    self.partitions.push((links, until));
                    self.log(|| format!("node {} pauses for {pause} ms, isolated", i + 1));
                } else {
                    self.log(|| format!("node {} pauses for {pause} ms", i + 1));
                }
            }
        }
        if self.chance_ppm(self.schedule.jump_ppm) {
            let i = self.rng.below(n) as usize;
            let jump = self.rng.between(1, MAX_JUMP_MS);
            self.log(|| format!("node {}'s clock jumps {jump} ms ahead", i + 1));
            self.hosts[i].clock.local_us += jump * 1000;
            self.world.stats.lock().jumps += 1;
        }
        Ok(())
    }

    /// Every fault ends: links heal, paused hosts resume, crashed ones restart, disks behave.
    fn heal(&mut self) -> Result<(), Failure> {
        self.log(|| "heal".into());
        self.partitions.clear();
        self.net.heal();
        self.net.set_faults(LinkFaults {
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            ..self.schedule.links
        });
        let calm = DiskFaults {
            max_latency_ms: self.schedule.disk.max_latency_ms,
            lying_sync: self.schedule.disk.lying_sync,
            ..DiskFaults::default()
        };
        for i in 0..self.hosts.len() {
            self.hosts[i].disk.set_faults(calm);
            self.hosts[i].paused_until = None;
            if self.hosts[i].running.is_none() {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Liveness after healing: a fresh write commits and every node reads it back; then the
    /// clients stop and the replicas converge.
    fn recover(&mut self) -> Result<(), Failure> {
        let deadline = self.now_ms + self.config.heal_ms;
        let probe_key = self.config.keys; // the clients use keys 0..keys
        let done = Arc::new(AtomicBool::new(false));
        self.clients.spawn(probe(
            self.world.clone(),
            probe_key,
            self.config.nodes,
            done.clone(),
        ));
        while !done.load(Ordering::Relaxed) {
            if self.now_ms >= deadline {
                return Err(self.fail(
                    "liveness",
                    format!(
                        "{} ms after healing, a fresh write has not been committed and read \
                         back through every node",
                        self.config.heal_ms
                    ),
                ));
            }
            self.step()?;
        }
        self.world.stop_clients.store(true, Ordering::Relaxed);
        // Let every node apply everything.
        loop {
            let applied: Vec<u64> = self
                .hosts
                .iter()
                .map(|h| h.machine.lock().applied)
                .collect();
            let longest_log = self
                .hosts
                .iter()
                .filter_map(|h| h.running.as_ref())
                .map(|inc| inc.store.reader().last_index())
                .max()
                .unwrap_or(0);
            if applied.iter().all(|a| *a == applied[0]) && self.quiet() {
                break;
            }
            if self.now_ms >= deadline + 2_000 {
                return Err(self.fail(
                    "convergence",
                    format!(
                        "the replicas did not converge after healing: applied indexes \
                         {applied:?}, longest log {longest_log}"
                    ),
                ));
            }
            self.step()?;
        }
        Ok(())
    }

    /// No client operation is pending.
    fn quiet(&self) -> bool {
        self.world.history.lock().1.is_empty() && self.world.increments.lock().in_flight.is_empty()
    }

    fn finish(self) -> Result<Report, Failure> {
        // Replicas agree: same state machine, logs equal where both hold entries.
        let first = self.hosts[0].machine.lock().clone();
        for h in &self.hosts[1..] {
            let m = h.machine.lock().clone();
            if m.kv != first.kv || m.applied != first.applied {
                return Err(self.fail(
                    "state machine safety",
                    format!(
                        "node {} holds {:?} at index {}, node 1 holds {:?} at index {}",
                        h.id, m.kv, m.applied, first.kv, first.applied
                    ),
                ));
            }
            if m.increments != first.increments {
                return Err(self.fail(
                    "state machine safety",
                    format!(
                        "node {} applied {} increments, node 1 {}, at index {} (snapshots \
                         installed: {} and {}; increments one has and the other not: {:?})",
                        h.id,
                        m.increments.len(),
                        first.increments.len(),
                        first.applied,
                        m.installs,
                        first.installs,
                        m.increments
                            .keys()
                            .filter(|k| !first.increments.contains_key(k))
                            .chain(
                                first
                                    .increments
                                    .keys()
                                    .filter(|k| !m.increments.contains_key(k))
                            )
                            .take(6)
                            .map(|k| format!("{k:#x}"))
                            .collect::<Vec<_>>()
                    ),
                ));
            }
        }
        self.check_logs(first.applied)?;
        self.check_exactly_once(&first.increments)?;
        let (mut done, pending) = std::mem::take(&mut *self.world.history.lock());
        done.extend(pending.into_values());
        let mut history = History::new();
        for op in &done {
            if let Err(e) = history.push(*op) {
                return Err(self.fail("history", e.to_string()));
            }
        }
        match linearizability::check(&history) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(v) => {
                return Err(self.fail("linearizability", v.to_string()));
            }
            Verdict::Inconclusive { key } => {
                return Err(self.fail(
                    "linearizability",
                    format!("the check of key {key} ran out of budget (inconclusive)"),
                ));
            }
        }
        let mut stats = *self.world.stats.lock();
        stats.steps = self.now_ms;
        stats.ops_unknown = done
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count() as u64;
        stats.net = self.net.stats();
        for h in &self.hosts {
            let d = h.disk.stats();
            stats.disk.syncs += d.syncs;
            stats.disk.write_errors += d.write_errors;
            stats.disk.sync_errors += d.sync_errors;
            stats.disk.lost_in_crashes += d.lost_in_crashes;
            stats.disk.kept_in_crashes += d.kept_in_crashes;
            stats.snapshot_installs += h.machine.lock().installs;
        }
        let mut fp = Fnv::default();
        for op in &done {
            fp.write(&format!("{op:?}"));
        }
        fp.write(&format!(
            "{:?}{:?}{:?}",
            first.kv.encode(),
            first.applied,
            first.increments
        ));
        fp.write(&format!("{stats:?}"));
        let report = Report {
            seed: self.config.seed,
            stats,
            fingerprint: fp.0,
        };
        self.shutdown();
        Ok(report)
    }

    /// Exactly once (thesis §6.3), for the increments: none applied twice, every
    /// acknowledged one applied, every applied one proposed and not certainly refused. So the
    /// count lies between the acknowledged increments and those plus the unknown ones.
    fn check_exactly_once(&self, applied: &BTreeMap<u64, u32>) -> Result<(), Failure> {
        let record = self.world.increments.lock();
        if let Some(v) = record.violations.first() {
            return Err(self.fail("exactly once", v.clone()));
        }
        if let Some((id, times)) = applied.iter().find(|(_, times)| **times > 1) {
            return Err(self.fail(
                "exactly once",
                format!(
                    "increment {id:#x} (client {}) was applied {times} times",
                    id >> 32
                ),
            ));
        }
        if let Some(id) = record.acked.iter().find(|id| !applied.contains_key(id)) {
            return Err(self.fail(
                "exactly once",
                format!("acknowledged increment {id:#x} was never applied (lost)"),
            ));
        }
        if let Some(id) = applied
            .keys()
            .find(|id| !record.acked.contains(id) && !record.unknown.contains(id))
        {
            return Err(self.fail(
                "exactly once",
                format!("increment {id:#x} was applied, but its client saw it refused"),
            ));
        }
        Ok(())
    }

    /// Log Matching where it can be seen: every pair of nodes holds the same term at every
    /// index both still have, up to the applied index they agree on.
    fn check_logs(&self, applied: u64) -> Result<(), Failure> {
        let mut terms: BTreeMap<u64, (NodeId, u64)> = BTreeMap::new();
        for h in &self.hosts {
            let Some(inc) = h.running.as_ref() else {
                continue;
            };
            let reader = inc.store.reader();
            let low = reader.first_index();
            let high = reader.last_index().min(applied);
            for index in low..=high {
                let Ok(term) = reader.term(index) else {
                    continue;
                };
                match terms.get(&index) {
                    Some(&(other, t)) if t != term => {
                        return Err(self.fail(
                            "log matching",
                            format!(
                                "index {index}: node {other} holds term {t}, node {} term {term}",
                                h.id
                            ),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        terms.insert(index, (h.id, term));
                    }
                }
            }
        }
        Ok(())
    }

    fn shutdown(mut self) {
        self.world.nodes.lock().clear();
        for h in &mut self.hosts {
            if let Some(inc) = h.running.take() {
                drop(inc.node);
                inc.rt.shutdown_background();
            }
        }
    }
}

/// Runs `rt` for `ms` milliseconds of its own clock (or, for 0, only what is ready now).
/// Up to [`MAX_STEP_MS`], time flows: every timer fires at its own time, and what it wakes
/// runs before the clock moves on. Beyond, the clock jumps at once, as a process's clock has
/// when it is resumed after a pause (or when it jumps): everything that became due fires "at
/// the same time", and whatever was queued runs at the new time.
fn advance(rt: &tokio::runtime::Runtime, ms: u64) {
    rt.block_on(async {
        match ms {
            0 => {
                for _ in 0..4 {
                    tokio::task::yield_now().await;
                }
            }
            1..=MAX_STEP_MS => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => tokio::time::advance(Duration::from_millis(ms)).await,
        }
    });
}

/// The most a host's clock moves in one step while it runs normally (a fast clock gains a
/// millisecond now and then); more is a jump.
const MAX_STEP_MS: u64 = 2;

/// FNV-1a, for the run's fingerprint.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, s: &str) {
        for b in s.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// What a client does next.
enum Action {
    Put(u64, u64),
    Cas(u64, Option<u64>, u64),
    Read(u64, Consistency),
}

/// One client: operations one at a time against the node it believes leads (any node for
/// reads), retrying elsewhere when refused.
async fn client(world: Arc<World>, id: u64, seed: u64, nodes: u64, keys: u64) {
    let mut rng = SimRng::new(seed);
    let mut target: NodeId = 1 + rng.below(nodes);
    let mut next_value = (id + 1) << 32;
    while !world.stop_clients.load(Ordering::Relaxed) {
        let key = rng.below(keys);
        next_value += 1;
        let action = match rng.below(10) {
            0..=2 => Action::Put(key, next_value),
            3..=4 => Action::Cas(
                key,
                rng.chance(300).then(|| next_value - 1 - rng.below(4)),
                next_value,
            ),
            5..=6 => Action::Read(key, Consistency::Linearizable),
            7..=8 => Action::Read(key, Consistency::Lease),
            _ => Action::Read(key, Consistency::Stale),
        };
        // Lease reads go where the client believes the leader is (where they are cheap);
        // the others to any node (followers forward linearizable reads to the leader).
        let reader = match action {
            Action::Read(_, Consistency::Lease) => target,
            _ => 1 + rng.below(nodes),
        };
        match action {
            Action::Put(key, value) => {
                target = write(&world, id, target, key, Command::Put { key, value }).await;
            }
            Action::Cas(key, expected, new) => {
                let cmd = Command::Cas { key, expected, new };
                target = write(&world, id, target, key, cmd).await;
            }
            Action::Read(key, consistency) => read(&world, id, reader, key, consistency).await,
        }
        let pause = rng.below(20);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Proposes `cmd` on `target`; returns the node to use next.
async fn write(world: &World, client: u64, target: NodeId, key: u64, cmd: Command) -> NodeId {
    let next = target % world.node_count() + 1;
    let op = match cmd {
        Command::Put { value, .. } => Op::Put { value },
        Command::Cas { expected, new, .. } => Op::Cas { expected, new },
    };
    let n = world.invoke(client, key, op);
    let answer = world
        .call(target, move |node| async move {
            node.propose(cmd.encode()).await
        })
        .await;
    match answer {
        Call::Answered(Ok(bytes)) => match (cmd, write_answer(&bytes)) {
            (Command::Put { .. }, Some(true)) => world.complete(n, OpResult::Put),
            (Command::Cas { .. }, Some(swapped)) => world.complete(n, OpResult::Cas(swapped)),
            _ => world.unknown(n),
        },
        Call::Answered(Err(e @ (ProposeError::Refused(_) | ProposeError::Busy(_)))) => {
            // Refused: certainly not applied.
            world.forget(n);
            tokio::time::sleep(Duration::from_millis(5)).await;
            return e.leader().map_or(next, |(leader, _)| leader);
        }
        Call::Down => {
            world.forget(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
            return next;
        }
        Call::Answered(Err(_)) => world.unknown(n),
        Call::Lost => {
            // No answer: the outcome is unknown, and the node may be gone; try another.
            world.unknown(n);
            return next;
        }
    }
    target
}

/// Reads `key` through `target`; a linearizable or lease read is recorded in the history.
async fn read(world: &World, client: u64, target: NodeId, key: u64, consistency: Consistency) {
    let n = (consistency != Consistency::Stale).then(|| world.invoke(client, key, Op::Get));
    let answer = world
        .call(target, move |node| async move {
            node.read(read_query(key), consistency).await
        })
        .await;
    let value = match answer {
        Call::Answered(Ok(bytes)) => read_answer(&bytes),
        _ => None,
    };
    match (n, value) {
        (None, Some(_)) => world.stats.lock().stale_reads += 1,
        (None, None) => {}
        (Some(n), Some(value)) => {
            world.complete(n, OpResult::Get(value));
            let mut stats = world.stats.lock();
            match consistency {
                Consistency::Lease => stats.lease_reads += 1,
                _ => stats.linearizable_reads += 1,
            }
        }
        // A read that failed had no effect.
        (Some(n), None) => world.forget(n),
    }
}

/// After healing: writes a fresh value to `key` (retrying on whichever node leads) and reads
/// it back through every node; sets `done` once all of that succeeded.
async fn probe(world: Arc<World>, key: u64, nodes: u64, done: Arc<AtomicBool>) {
    let value = u64::MAX / 2;
    let mut target = 1;
    loop {
        let n = world.invoke(u64::MAX, key, Op::Put { value });
        let cmd = Command::Put { key, value };
        let answer = world
            .call(target, move |node| async move {
                node.propose(cmd.encode()).await
            })
            .await;
        match answer {
            Call::Answered(Ok(_)) => {
                world.complete(n, OpResult::Put);
                break;
            }
            Call::Answered(Err(e @ (ProposeError::Refused(_) | ProposeError::Busy(_)))) => {
                world.forget(n);
                target = e.leader().map_or(target % nodes + 1, |(l, _)| l);
            }
            Call::Down => {
                world.forget(n);
                target = target % nodes + 1;
            }
            Call::Answered(Err(_)) | Call::Lost => world.unknown(n),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in 1..=nodes {
        loop {
            let n = world.invoke(u64::MAX, key, Op::Get);
            let answer = world
                .call(id, move |node| async move {
                    node.read(read_query(key), Consistency::Linearizable).await
                })
                .await;
            match answer {
                Call::Answered(Ok(bytes)) if read_answer(&bytes).is_some() => {
                    let got = read_answer(&bytes).flatten();
                    world.complete(n, OpResult::Get(got));
                    if got == Some(value) {
                        break;
                    }
                }
                _ => world.forget(n),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    done.store(true, Ordering::Relaxed);
}

/// One client of the exactly-once workload: increments with unique ids, one at a time, each
/// sent until it is answered — to the node it believes leads, and on anything that leaves
/// the outcome unknown (no answer, a crash, a timeout) again to the next node. With
/// `sessions` the increments go through a client session (opened again when it expires);
/// without, the same resends are plain proposals.
async fn incrementer(world: Arc<World>, client: u64, seed: u64, nodes: u64, sessions: bool) {
    let mut rng = SimRng::new(seed);
    let mut target: NodeId = 1 + rng.below(nodes);
    let mut session: Option<(SessionId, u64)> = None;
    let mut k = 0u64;
    let next = |t: NodeId| t % nodes + 1;
    while !world.stop_clients.load(Ordering::Relaxed) {
        if sessions && session.is_none() {
            match world
                .call(target, |node| async move { node.open_session().await })
                .await
            {
                Call::Answered(Ok(id)) => session = Some((id, 1)),
                Call::Answered(Err(e)) => {
                    target = e.leader().map_or(next(target), |(l, _)| l);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // A registration lost on the way is a session nobody uses: it expires.
                Call::Down | Call::Lost => {
                    target = next(target);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            continue;
        }
        k += 1;
        let id = (client << 32) | k;
        world.increments.lock().in_flight.insert(id);
        target = send_increment(&world, id, target, nodes, &mut session).await;
        if let Some((_, seq)) = &mut session {
            *seq += 1;
        }
        let pause = rng.below(20);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Sends increment `id` until it is answered, its session is gone, or the clients stop;
/// records the outcome and returns the node to use next.
async fn send_increment(
    world: &World,
    id: u64,
    mut target: NodeId,
    nodes: u64,
    session: &mut Option<(SessionId, u64)>,
) -> NodeId {
    let next = |t: NodeId| t % nodes + 1;
    let mut taken = false;
    let settle = |acked: bool, taken: bool| {
        let mut record = world.increments.lock();
        record.in_flight.remove(&id);
        if acked {
            record.acked.insert(id);
        } else if taken {
            record.unknown.insert(id);
        }
        drop(record);
        let mut stats = world.stats.lock();
        if acked {
            stats.increments_ok += 1;
        } else if taken {
            stats.increments_unknown += 1;
        }
    };
    loop {
        if world.stop_clients.load(Ordering::Relaxed) {
            settle(false, taken);
            return target;
        }
        let command = increment_command(id);
        let in_session = *session;
        let answer = world
            .call(target, move |node| async move {
                match in_session {
                    // One command at a time: the first unanswered one is this one.
                    Some((s, seq)) => node.propose_in_session(s, seq, seq, command).await,
                    None => node.propose(command).await,
                }
            })
            .await;
        match answer {
            Call::Answered(Ok(_)) => {
                settle(true, taken);
                return target;
            }
            Call::Answered(Err(ProposeError::ResponseLost)) => {
                // Applied, once, before that leader restarted: acknowledged all the same.
                settle(true, taken);
                world.stats.lock().responses_lost += 1;
                return target;
            }
            Call::Answered(Err(ProposeError::Session(SessionRefusal::UnknownSession))) => {
                // Expired or evicted: a try taken before may have been applied.
                settle(false, taken);
                world.stats.lock().sessions_lost += 1;
                *session = None;
                return target;
            }
            Call::Answered(Err(ProposeError::Session(why))) => {
                world.increments.lock().violations.push(format!(
                    "the session refused its client's current increment {id:#x}: {why}"
                ));
                settle(false, true);
                *session = None;
                return target;
            }
            Call::Answered(Err(e @ (ProposeError::Refused(_) | ProposeError::Busy(_)))) => {
                // Certainly not applied by this try.
                target = e.leader().map_or(next(target), |(l, _)| l);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Call::Down => {
                target = next(target);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Timeout, interrupted, shutting down, stopped, or no answer at all: this try may
            // still be applied. Send it again (safe only in a session).
            Call::Answered(Err(_)) | Call::Lost => {
                taken = true;
                world.stats.lock().resends += 1;
                target = next(target);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
