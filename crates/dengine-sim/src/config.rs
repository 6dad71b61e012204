//! What one simulation run does: cluster size, lengths of its phases, the workload, and the
//! fault schedule's intensities, all derived from one seed unless set explicitly.

use dengine_core::InjectedBug;

use crate::network::NetworkFaults;
use crate::rng::SimRng;

/// The faults a run injects and how often. Every kind is on; the seed picks intensities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Faults {
    /// Message loss, duplication, delay and reordering.
    pub network: NetworkFaults,
    /// Chance per tick that a partition starts when none is active, per mille.
    pub partition_per_mille: u64,
    /// Chance per tick that a node crashes, per mille (at most a minority is down at once).
    pub crash_per_mille: u64,
    /// Chance per tick that a node is paused (SIGSTOP-like), per mille.
    pub pause_per_mille: u64,
    /// Largest disk write latency in ticks (writes complete in order).
    pub max_disk_delay: u64,
    /// Whether nodes' clocks run at slightly different rates.
    pub tick_skew: bool,
    /// Whether one node's disk is much slower than the others' (a degraded disk).
    pub slow_node_disk: bool,
    /// Protocol options under test: pre-vote on this run's cores.
    pub pre_vote: bool,
    /// Protocol options under test: check-quorum (and stickiness, leases) on this run's cores.
    pub check_quorum: bool,
    /// Flow control under test: one entry per append and a small in-flight window (`None`:
    /// the defaults). Splits replication into many small steps.
    pub small_window: Option<usize>,
    /// Membership churn: the cluster starts with three voters and the leader is asked to
    /// grow, shrink and replace voters, add and promote learners, remove nodes (itself
    /// included). Removed nodes are stopped once their removal commits, as an operator would.
    pub membership_changes: bool,
    /// Chance per tick that the leader is asked to transfer leadership, per mille.
    pub transfer_per_mille: u64,
    /// Nodes snapshot their state machine every this many applied entries (`None`: never).
    pub snapshot_every: Option<u64>,
    /// Entries kept in the log behind a snapshot.
    pub snapshot_trailing: u64,
}

impl Faults {
    /// Intensities drawn from `rng`, every kind enabled ("swarm" testing: each seed stresses a
    /// different mix).
    pub fn from_rng(rng: &mut SimRng) -> Faults {
        Faults {
            network: NetworkFaults {
                loss_per_mille: rng.between(0, 150),
                duplicate_per_mille: rng.between(0, 50),
                max_extra_delay: rng.between(0, 3),
            },
            partition_per_mille: rng.between(2, 20),
            crash_per_mille: rng.between(1, 12),
            pause_per_mille: rng.between(1, 6),
            // Mostly fast disks; sometimes slow ones, which widen every window in which a
            // crash can lose un-synced writes.
            max_disk_delay: if rng.chance(300) {
                rng.between(4, 12)
            } else {
                rng.between(0, 3)
            },
            tick_skew: rng.chance(700),
            slow_node_disk: rng.chance(300),
            // Mostly the defaults; sometimes the weaker settings a user may choose, which take
            // away protections that otherwise hide other bugs.
            pre_vote: rng.chance(750),
            check_quorum: rng.chance(750),
            small_window: rng.chance(300).then(|| rng.between(1, 8) as usize),
            membership_changes: rng.chance(500),
            transfer_per_mille: rng.between(0, 8),
            snapshot_every: rng.chance(600).then(|| rng.between(10, 80)),
            snapshot_trailing: rng.between(0, 10),
        }
    }

    /// No faults at all: the healing phase.
    pub const NONE: Faults = Faults {
        network: NetworkFaults::RELIABLE,
        partition_per_mille: 0,
        crash_per_mille: 0,
        pause_per_mille: 0,
        max_disk_delay: 1,
        tick_skew: false,
        slow_node_disk: false,
        pre_vote: true,
        check_quorum: true,
        small_window: None,
        membership_changes: false,
        transfer_per_mille: 0,
        snapshot_every: None,
        snapshot_trailing: 0,
    };
}

/// A simulation run's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Cluster size (3–7).
    pub nodes: u64,
    /// Ticks of the fault phase.
    pub fault_ticks: u64,
    /// Most ticks the healing phase may take before the run fails for lack of liveness.
    pub heal_ticks: u64,
    /// Concurrent logical clients.
    pub clients: u64,
    /// Size of the key space.
    pub keys: u64,
    /// Ticks after which a client gives up on an operation (outcome unknown).
    pub op_timeout: u64,
    /// Record a readable event trace.
    pub verbose: bool,
    /// Deliberate core bugs to switch on (bug-catching demonstrations).
    pub bugs: Vec<InjectedBug>,
    /// Override of the seed-derived fault intensities.
    pub faults: Option<Faults>,
}

impl SimConfig {
    /// The default run for `seed`: 5 nodes, 3000 ticks of faults, then healing.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 5,
            fault_ticks: 3000,
            heal_ticks: 2000,
            clients: 4,
            keys: 5,
            op_timeout: 60,
            verbose: false,
            bugs: Vec::new(),
            faults: None,
        }
    }

    /// Checks the settings, naming the bad one.
    pub fn validate(&self) -> Result<(), String> {
        if !(3..=7).contains(&self.nodes) {
            return Err(format!("nodes = {}: must be 3..=7", self.nodes));
        }
        if self.clients == 0 || self.keys == 0 {
            return Err("clients and keys must be at least 1".into());
        }
        if self.op_timeout < 10 {
            return Err(format!(
                "op_timeout = {}: must be at least 10",
                self.op_timeout
            ));
        }
        Ok(())
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo xtask sim --seed {} --nodes {} --steps {}",
            self.seed, self.nodes, self.fault_ticks
        );
        for bug in &self.bugs {
            cmd.push_str(&format!(" --inject-bug {}", bug.name()));
        }
        cmd.push_str(" --verbose");
        cmd
    }
}
