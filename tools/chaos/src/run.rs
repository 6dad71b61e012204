//! One seed from start to verdict: network, cluster, workload and nemesis; then heal,
//! converge, read every key back, check the history and report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dengine_sim::linearizability::{
    CheckOptions, History, Op, OpResult, Verdict as Check, check_with,
};
use dengine_sim::rng::SimRng;

use crate::clock::{self, Clocks};
use crate::cluster::{self, Cluster};
use crate::history;
use crate::lock::{self, LockLog};
use crate::nemesis::{self, Episode, FaultKind, Mode};
use crate::once::{self, OnceLog};
use crate::topology::{HostRules, Network};
use crate::workload::{self, Recorder, Session};

/// How long a fault that needs a leader waits for one (an election may be running right after
/// the previous fault's heal).
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// What to run (from the command line).
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// The `dengine-kv` binary, built with its `fault-injection` feature.
    pub(crate) server_bin: PathBuf,
    /// Seeds, run one after the other.
    pub(crate) seeds: Vec<u64>,
    /// Length of the fault phase.
    pub(crate) seconds: u64,
    /// Cluster size.
    pub(crate) nodes: usize,
    /// Concurrent clients.
    pub(crate) clients: u64,
    /// Key space.
    pub(crate) keys: u64,
    /// Which nemesis.
    pub(crate) mode: Mode,
    /// `storage.fsync` of the nodes.
    pub(crate) fsync: bool,
    /// A deliberately broken lease rule for the nodes (`--bug lease-...`).
    pub(crate) lease_fault: Option<String>,
    /// Clients of the lock workload (`lock.rs`).
    pub(crate) lock_clients: u64,
    /// Clients of the exactly-once workload (`once.rs`; 0: none).
    pub(crate) once_clients: u64,
    /// Client sessions on the members, and used by the exactly-once clients (`false`:
    /// `--bug sessions-off`).
    pub(crate) sessions: bool,
    /// libfaketime, for clock faults (`None`: the nodes run on the real clock).
    pub(crate) clock_library: Option<PathBuf>,
    /// Passing means finding a safety violation.
    pub(crate) expect_failure: bool,
    /// Keep the run directory of passing runs.
    pub(crate) keep: bool,
    /// Parent of the run directories.
    pub(crate) dir: PathBuf,
}

/// How one seed ended.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Linearizable, nothing lost, every node alive, the cluster converged.
    Pass,
    /// A safety violation: not linearizable, or acknowledged writes lost.
    Unsafe(String),
    /// No safety violation proven, but something else is wrong (a node crashed on its own,
    /// the cluster did not converge after the heal, the checker ran out of budget).
    Fail(String),
    /// The harness itself could not run (setup failed).
    Error(String),
    /// Ctrl-C.
    Interrupted,
}

impl Verdict {
    /// One line for the summary.
    pub(crate) fn headline(&self) -> String {
        match self {
            Verdict::Pass => "PASS".into(),
            Verdict::Unsafe(why) => format!("UNSAFE: {why}"),
            Verdict::Fail(why) => format!("FAIL: {why}"),
            Verdict::Error(why) => format!("ERROR (harness): {why}"),
            Verdict::Interrupted => "interrupted".into(),
        }
    }

    /// Whether this is a proven safety violation.
    pub(crate) fn is_safety_violation(&self) -> bool {
        matches!(self, Verdict::Unsafe(_))
    }
}

/// Runs one seed. Everything it starts is stopped and removed before it returns (the run
/// directory is kept when the seed did not pass, or with `--keep`).
pub(crate) async fn run_seed(options: &Options, seed: u64, interrupted: &AtomicBool) -> Verdict {
    let dir = options
        .dir
        .join(format!("dengine-chaos-{}-seed{seed}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Verdict::Error(format!("cannot create {}: {e}", dir.display()));
    }
    println!(
        "\nchaos: seed {seed}: {} nodes, {} clients, {} keys, {} s of faults ({}), fsync {}; \
         run directory {}",
        options.nodes,
        options.clients,
        options.keys,
        options.seconds,
        match options.mode {
            Mode::All => "every kind",
            Mode::KillMajority => "kill-majority",
        },
        if options.fsync { "on" } else { "OFF" },
        dir.display()
    );
    let started = Instant::now();
    let verdict = match Network::create(options.nodes) {
        Err(e) => {
            // Nothing ran: nothing to keep.
            let _ = std::fs::remove_dir_all(&dir);
            return Verdict::Error(e);
        }
        Ok(net) => {
            let clocks = match &options.clock_library {
                Some(lib) => match Clocks::new(lib.clone(), &dir, options.nodes, seed) {
                    Ok(c) => {
                        println!("chaos: seed {seed}: clocks: {}", c.describe());
                        Some(c)
                    }
                    Err(e) => return Verdict::Error(e),
                },
                None => None,
            };
            let lease: Vec<usize> = (1..=options.nodes)
                .filter(|&h| cluster::lease_reads(h))
                .collect();
            println!(
                "chaos: seed {seed}: linearizable reads by lease on hosts {lease:?}, by \
                 ReadIndex on the others"
            );
            let mut c = Cluster::new(
                options.server_bin.clone(),
                dir.clone(),
                options.nodes,
                options.fsync,
                clocks,
            );
            c.lease_fault = options.lease_fault.clone();
            if options.once_clients > 0 {
                c.client_api = Some(if options.sessions {
                    cluster::Sessions::On
                } else {
                    cluster::Sessions::Off
                });
                println!(
                    "chaos: seed {seed}: {} exactly-once clients, client sessions {}",
                    options.once_clients,
                    if options.sessions { "on" } else { "OFF" }
                );
            }
            let v = drive(options, seed, &net, &mut c, &dir, interrupted).await;
            c.kill_all();
            drop(net);
            v
        }
    };
    // A failing seed keeps its evidence; under --expect-failure the violation is the
    // expected outcome and its directory goes like a pass's.
    let expected = options.expect_failure && verdict.is_safety_violation();
    let keep =
        options.keep || !(expected || matches!(verdict, Verdict::Pass | Verdict::Interrupted));
    if keep {
        println!(
            "chaos: seed {seed}: history (history.jsonl) and node logs kept in {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "chaos: seed {seed}: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    verdict
}

/// Removes run directories (`dengine-chaos-<pid>-seed<N>` in `parent`) whose driver process
/// no longer exists: what a killed run left. Returns what it removed.
pub(crate) fn remove_orphaned_run_dirs(parent: &std::path::Path) -> Vec<String> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(parent) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("dengine-chaos-")
            .and_then(|rest| rest.split_once("-seed"))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed.push(format!("directory {}", entry.path().display()));
        }
    }
    removed
}

/// What a running fault needs undone at its heal.
#[derive(Debug)]
enum Undo {
    Nothing,
    Partition,
    Restart(Vec<usize>),
    RestartThenResume(Vec<usize>, Vec<usize>),
    Resume(usize),
    Rejoin,
    Delay,
    /// The parts of a combined fault, each with the pause before its heal.
    Many(Vec<(Undo, u64)>),
}

struct Nemesis<'a> {
    net: &'a Network,
    c: &'a mut Cluster,
    /// Hosts removed by membership churn that still have to come back.
    to_rejoin: Vec<usize>,
    faults: BTreeMap<&'static str, u64>,
    skipped: BTreeMap<&'static str, u64>,
}

impl Nemesis<'_> {
    async fn leader(&self) -> Option<usize> {
        cluster::leader(&self.c.live()).await.map(|(h, _)| h)
    }

    /// The leader's host, polled for up to `limit` (an election may be running).
    async fn leader_within(&self, limit: Duration) -> Option<usize> {
        let until = Instant::now() + limit;
        loop {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn set_delay(&self, text: &str) -> Result<(), String> {
        for h in 1..=self.c.len() {
            let f = self.c.fault_file(h);
            std::fs::write(&f, text).map_err(|e| format!("cannot write {}: {e}", f.display()))?;
        }
        Ok(())
    }

    /// Starts `e`'s fault; what the heal must undo and a description.
    async fn inject(&mut self, e: &Episode) -> Result<(Undo, String), String> {
        if e.kind != FaultKind::Combined {
            return self.inject_one(e).await;
        }
        let mut rng = SimRng::new(e.pick);
        let process: Vec<FaultKind> = FaultKind::PROCESS
            .into_iter()
            .filter(|&k| k != FaultKind::ClockJump || self.c.has_clock_faults())
            .collect();
        let mut kinds = vec![
            FaultKind::PARTITIONS[rng.below(FaultKind::PARTITIONS.len() as u64) as usize],
            process[rng.below(process.len() as u64) as usize],
        ];
        if rng.chance(500) {
            kinds.push(FaultKind::Delay);
        }
        // Which comes first matters (a kill before a partition picks its victims among
        // hosts that still see the leader): shuffle.
        for i in (1..kinds.len()).rev() {
            kinds.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut undos = Vec::new();
        let mut what = Vec::new();
        for kind in kinds {
            let part = Episode {
                kind,
                pick: rng.next_u64(),
                ..*e
            };
            match self.inject_one(&part).await {
                Ok((undo, text)) => {
                    undos.push((undo, rng.below(400)));
                    what.push(format!("{}: {text}", kind.name()));
                }
                Err(why) => what.push(format!("{} not injected: {why}", kind.name())),
            }
        }
        if undos.is_empty() {
            // Nothing is in force: the episode counts as not injected.
            return Err(what.join("; "));
        }
        // Healed in a random order, a few hundred milliseconds apart.
        for i in (1..undos.len()).rev() {
            undos.swap(i, rng.below(i as u64 + 1) as usize);
        }
        Ok((Undo::Many(undos), what.join("; ")))
    }

    /// Starts one fault (not a combined one).
    async fn inject_one(&mut self, e: &Episode) -> Result<(Undo, String), String> {
        let n = self.c.len();
        let mut rng = SimRng::new(e.pick);
        let leader = self.leader().await;
        let random_host = |rng: &mut SimRng| 1 + rng.below(n as u64) as usize;
        let mut shuffled: Vec<usize> = (1..=n).collect();
        for i in (1..n).rev() {
            shuffled.swap(i, rng.below(i as u64 + 1) as usize);
        }
        match e.kind {
            FaultKind::IsolateLeader => {
                let l = leader.unwrap_or_else(|| random_host(&mut rng));
                self.net
                    .apply(&HostRules::from_matrix(n, |a, b| a != l && b != l))?;
                Ok((
                    Undo::Partition,
                    format!("host {l} (leader: {leader:?}) isolated"),
                ))
            }
            FaultKind::MajorityMinority => {
                let size = 1 + rng.below(((n - 1) / 2) as u64) as usize;
                let minority: Vec<usize> = shuffled[..size].to_vec();
                let side = |h: usize| minority.contains(&h);
                self.net
                    .apply(&HostRules::from_matrix(n, |a, b| side(a) == side(b)))?;
                Ok((Undo::Partition, format!("minority {minority:?} cut off")))
            }
            FaultKind::Bridge => {
                let bridge = shuffled[0];
                let half: Vec<usize> = shuffled[1..].iter().copied().step_by(2).collect();
                let side = |h: usize| half.contains(&h);
                self.net.apply(&HostRules::from_matrix(n, |a, b| {
                    a == bridge || b == bridge || side(a) == side(b)
                }))?;
                Ok((
                    Undo::Partition,
                    format!("bridge host {bridge} between {half:?} and the rest"),
                ))
            }
            FaultKind::OneWay => {
                let x = match leader {
                    Some(l) if rng.chance(500) => l,
                    _ => random_host(&mut rng),
                };
                self.net.apply(&HostRules::from_matrix(n, |a, _| a != x))?;
                Ok((
                    Undo::Partition,
                    format!("host {x} (leader: {leader:?}) cannot send to the others"),
                ))
            }
            FaultKind::Kill | FaultKind::KillMajority => {
                let count = if e.kind == FaultKind::Kill {
                    1 + rng.below(2) as usize
                } else {
                    n / 2 + 1
                };
                let mut victims: Vec<usize> = Vec::new();
                if let Some(l) = leader
                    && (e.kind == FaultKind::KillMajority || rng.chance(500))
                {
                    victims.push(l);
                }
                for h in shuffled {
                    if victims.len() < count && !victims.contains(&h) {
                        victims.push(h);
                    }
                }
                if e.kind == FaultKind::KillMajority {
                    // The minority is paused meanwhile and resumed only after the restarted
                    // majority had time to elect a leader and serve writes on its own: what
                    // that majority lost in the crash cannot come back from the minority.
                    let minority: Vec<usize> = self
                        .c
                        .live()
                        .into_iter()
                        .filter(|h| !victims.contains(h))
                        .collect();
                    for &h in &minority {
                        self.c.signal_pause(h, true)?;
                    }
                    for &h in &victims {
                        self.c.kill(h);
                    }
                    return Ok((
                        Undo::RestartThenResume(victims.clone(), minority.clone()),
                        format!(
                            "SIGKILL of {victims:?} (leader: {leader:?}), SIGSTOP of {minority:?} \
                             until 2 s after the restart"
                        ),
                    ));
                }
                for &h in &victims {
                    self.c.kill(h);
                }
                Ok((
                    Undo::Restart(victims.clone()),
                    format!("SIGKILL of {victims:?} (leader: {leader:?})"),
                ))
            }
            FaultKind::Pause => {
                let live = self.c.live();
                let h = match leader {
                    Some(l) if rng.chance(600) => l,
                    _ => *live
                        .get(rng.below(live.len() as u64) as usize)
                        .ok_or("no live host to pause")?,
                };
                self.c.signal_pause(h, true)?;
                Ok((
                    Undo::Resume(h),
                    format!(
                        "SIGSTOP of host {h} for {} ms (leader: {leader:?})",
                        e.hold_ms
                    ),
                ))
            }
            FaultKind::MembershipChurn => {
                // Right after the previous fault's heal an election may still be running: wait
                // for it, as an operator would, rather than skip the fault.
                let leader = match leader {
                    Some(l) => Some(l),
                    None => self.leader_within(LEADER_WAIT).await,
                };
                let l = leader.ok_or("no leader to remove a member through (waited 5 s)")?;
                let followers: Vec<usize> = self
                    .c
                    .live()
                    .into_iter()
                    .filter(|&h| h != l && self.c.host(h).id.is_some())
                    .collect();
                let h = *followers
                    .get(rng.below(followers.len() as u64) as usize)
                    .ok_or("no follower to remove")?;
                let id = self.c.host(h).id.ok_or("not a member")?;
                cluster::member_remove(l, id).await?;
                self.c.kill(h);
                self.c.wipe(h)?;
                self.c.set_id(h, None);
                self.to_rejoin.push(h);
                Ok((
                    Undo::Rejoin,
                    format!("member {id} (host {h}) removed and wiped"),
                ))
            }
            FaultKind::TransferLeader => {
                // Up to three tries, as an operator would retry: right after the previous
                // fault's heal an election may still be running, or the chosen follower (one
                // that was just cut off) may not catch up within one election timeout, and the
                // transfer is then abandoned.
                let mut leader = leader;
                let mut failure = String::new();
                for attempt in 1..=3 {
                    if attempt > 1 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        leader = self.leader().await;
                    }
                    let Some(l) = leader else {
                        failure = "no leader to transfer from".into();
                        continue;
                    };
                    let targets: Vec<u64> = self
                        .c
                        .live()
                        .into_iter()
                        .filter(|&h| h != l)
                        .filter_map(|h| self.c.host(h).id)
                        .collect();
                    if targets.is_empty() {
                        failure = "no member to transfer to".into();
                        continue;
                    }
                    let to = targets[rng.below(targets.len() as u64) as usize];
                    match cluster::transfer_leader(l, to).await {
                        Ok(()) => {
                            let tries = if attempt > 1 {
                                format!(" (try {attempt} of 3; before: {failure})")
                            } else {
                                String::new()
                            };
                            return Ok((
                                Undo::Nothing,
                                format!("leadership from host {l} to member {to}{tries}"),
                            ));
                        }
                        Err(e) => failure = e,
                    }
                }
                Err(format!("3 tries; the last: {failure}"))
            }
            FaultKind::Delay => {
                self.set_delay("delay_ms=20..300\n")?;
                Ok((Undo::Delay, "every peer message delayed 20-300 ms".into()))
            }
            FaultKind::ClockJump => {
                let live = self.c.live();
                let (h, ms) = match leader {
                    Some(l) if rng.chance(500) => (
                        l,
                        rng.between(clock::LEADER_JUMP_MS.0, clock::LEADER_JUMP_MS.1),
                    ),
                    _ => {
                        let followers: Vec<usize> =
                            live.into_iter().filter(|&h| Some(h) != leader).collect();
                        let h = *followers
                            .get(rng.below(followers.len().max(1) as u64) as usize)
                            .ok_or("no live follower")?;
                        (h, rng.between(10, clock::MAX_FOLLOWER_JUMP_MS))
                    }
                };
                self.c.clock_jump(h, ms)?;
                Ok((
                    Undo::Nothing,
                    format!("host {h}'s clock {ms} ms forward (leader: {leader:?})"),
                ))
            }
            FaultKind::Combined => Err("a combined fault inside a combined fault".into()),
        }
    }

    /// Undoes a fault.
    async fn heal(&mut self, undo: Undo) -> Result<(), String> {
        let Undo::Many(parts) = undo else {
            return self.heal_one(undo).await;
        };
        let mut failures = Vec::new();
        for (part, pause_ms) in parts {
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            if let Err(e) = self.heal_one(part).await {
                failures.push(e);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Undoes one fault (not a combined one).
    async fn heal_one(&mut self, undo: Undo) -> Result<(), String> {
        match undo {
            Undo::Nothing => Ok(()),
            Undo::Partition => self.net.heal(),
            Undo::Delay => self.set_delay(""),
            Undo::Resume(h) => self.c.signal_pause(h, false),
            Undo::Restart(hosts) => {
                for h in hosts {
                    if self.c.host(h).id.is_some() {
                        self.c.start(h, false)?;
                    }
                }
                Ok(())
            }
            Undo::RestartThenResume(killed, paused) => {
                for h in killed {
                    if self.c.host(h).id.is_some() {
                        self.c.start(h, false)?;
                    }
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                for h in paused {
                    self.c.signal_pause(h, false)?;
                }
                Ok(())
            }
            Undo::Rejoin => self.rejoin().await,
            Undo::Many(_) => Err("nested combined faults".into()),
        }
    }

    /// Adds every removed host back as a new member and starts it empty in join mode.
    async fn rejoin(&mut self) -> Result<(), String> {
        while let Some(&h) = self.to_rejoin.first() {
            let l = self
                .leader()
                .await
                .ok_or("no leader to add a member through")?;
            let id = cluster::member_add(l, h).await?;
            self.c.set_id(h, Some(id));
            self.c.wipe(h)?;
            self.c.start(h, true)?;
            self.to_rejoin.remove(0);
        }
        Ok(())
    }

    /// Heals everything: partitions, delay, pauses, dead processes, removed members.
    async fn heal_all(&mut self) -> Result<(), String> {
        self.net.heal()?;
        self.set_delay("")?;
        for h in 1..=self.c.len() {
            if self.c.host(h).paused {
                self.c.signal_pause(h, false)?;
            }
            if self.c.host(h).id.is_some() && !self.c.is_running(h) {
                self.c.start(h, false)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.rejoin().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("cannot add removed hosts back: {e}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
}

async fn sleep_until(origin: Instant, ms: u64, interrupted: &AtomicBool) -> bool {
    let at = origin + Duration::from_millis(ms);
    while Instant::now() < at {
        if interrupted.load(Ordering::SeqCst) {
            return false;
        }
        let left = at.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
    !interrupted.load(Ordering::SeqCst)
}

async fn drive(
    o: &Options,
    seed: u64,
    net: &Network,
    c: &mut Cluster,
    dir: &std::path::Path,
    interrupted: &AtomicBool,
) -> Verdict {
    for h in 1..=o.nodes {
        if let Err(e) = c.start(h, false) {
            return Verdict::Error(e);
        }
    }
    let boot = Instant::now();
    while cluster::leader(&c.live()).await.is_none() {
        if interrupted.load(Ordering::SeqCst) {
            return Verdict::Interrupted;
        }
        if boot.elapsed() > Duration::from_secs(30) {
            c.reap();
            return Verdict::Error(format!(
                "no leader 30 s after the start (crashed: {:?}); see the node logs",
                c.crashed
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "chaos: seed {seed}: leader elected after {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    let schedule = nemesis::schedule(seed, o.seconds, o.mode);
    let order: Vec<&str> = schedule.iter().map(|e| e.kind.name()).collect();
    println!("chaos: seed {seed}: schedule: {}", order.join(", "));

    let rec = Arc::new(Recorder::new());
    let current = Arc::new(Mutex::new(String::from("none")));
    let mut clients = Vec::new();
    for client in 1..=o.clients {
        clients.push(tokio::spawn(workload::client(
            rec.clone(),
            client,
            o.nodes,
            o.keys,
            seed,
        )));
    }
    // The lock workload, beside the key-value clients.
    let lock_log = Arc::new(LockLog::default());
    let lock_stop = Arc::new(AtomicBool::new(false));
    let max_jump = if o.clock_library.is_some() {
        Duration::from_millis(crate::clock::LEADER_JUMP_MS.1)
    } else {
        Duration::ZERO
    };
    let margin = lock::margin(max_jump);
    let lock_clients: Vec<_> = (1..=o.lock_clients)
        .map(|client| {
            tokio::spawn(lock::client(
                lock_log.clone(),
                lock_stop.clone(),
                client,
                o.nodes,
                seed,
                margin,
            ))
        })
        .collect();
    // The exactly-once workload.
    let once_log = Arc::new(OnceLog::default());
    let once_stop = Arc::new(AtomicBool::new(false));
    let once_clients: Vec<_> = (1..=o.once_clients)
        .map(|client| {
            tokio::spawn(once::client(
                once_log.clone(),
                once_stop.clone(),
                client,
                o.nodes,
                seed,
                o.sessions,
            ))
        })
        .collect();
    let progress = {
        let rec = rec.clone();
        let current = current.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let c = &rec.counters;
                println!(
                    "  [{:>4.0} s] ops: {} ok, {} unknown, {} failed | fault: {}",
                    rec.origin.elapsed().as_secs_f64(),
                    c.ok.load(Ordering::Relaxed),
                    c.unknown.load(Ordering::Relaxed),
                    c.failed.load(Ordering::Relaxed),
                    current.lock().unwrap_or_else(|p| p.into_inner())
                );
            }
        })
    };
    let set_current = |text: String| {
        *current.lock().unwrap_or_else(|p| p.into_inner()) = text;
    };

    let mut nem = Nemesis {
        net,
        c,
        to_rejoin: Vec::new(),
        faults: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    let mut harness_errors = Vec::new();
    let mut was_interrupted = false;
    for e in &schedule {
        if !sleep_until(rec.origin, e.start_ms, interrupted).await {
            was_interrupted = true;
            break;
        }
        nem.c.reap();
        let undo = match nem.inject(e).await {
            Ok((undo, what)) => {
                *nem.faults.entry(e.kind.name()).or_default() += 1;
                println!(
                    "  [{:>4.0} s] fault {}: {what}",
                    rec.origin.elapsed().as_secs_f64(),
                    e.kind.name()
                );
                set_current(format!("{} ({what})", e.kind.name()));
                undo
            }
            Err(why) => {
                *nem.skipped.entry(e.kind.name()).or_default() += 1;
                println!(
                    "  [{:>4.0} s] fault {} not injected: {why}",
                    rec.origin.elapsed().as_secs_f64(),
                    e.kind.name()
                );
                Undo::Nothing
            }
        };
        if !sleep_until(rec.origin, e.start_ms + e.hold_ms, interrupted).await {
            was_interrupted = true;
            break;
        }
        if let Err(why) = nem.heal(undo).await {
            println!("  heal after {} incomplete: {why}", e.kind.name());
        }
        set_current("none (healed)".into());
    }
    if !was_interrupted {
        sleep_until(rec.origin, o.seconds * 1000, interrupted).await;
        was_interrupted = interrupted.load(Ordering::SeqCst);
    }
    rec.stop.store(true, Ordering::SeqCst);
    lock_stop.store(true, Ordering::SeqCst);
    once_stop.store(true, Ordering::SeqCst);
    for client in once_clients {
        // A proposal's deadline (resends included) is a few seconds.
        if tokio::time::timeout(Duration::from_secs(15), client)
            .await
            .is_err()
        {
            harness_errors.push("an exactly-once client did not stop within 15 s".into());
        }
    }
    for client in clients {
        let _ = client.await;
    }
    for client in lock_clients {
        // A lock client checks the stop flag at least every half second.
        if tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .is_err()
        {
            harness_errors.push("a lock client did not stop within 10 s".into());
        }
    }
    progress.abort();
    if was_interrupted {
        return Verdict::Interrupted;
    }
    let workload_ops = rec.ops.lock().map(|o| o.len()).unwrap_or(0);

    println!("chaos: seed {seed}: healing everything and waiting for convergence ...");
    let heal_started = Instant::now();
    if let Err(e) = nem.heal_all().await {
        harness_errors.push(format!("heal: {e}"));
    }
    let converged = converge(nem.c, interrupted).await;
    let finals = match &converged {
        Ok(()) => read_back(&rec, o.keys, o.nodes, seed).await,
        Err(_) => Err("not converged".into()),
    };
    let counter = match &converged {
        Ok(()) => {
            lock::final_counter(o.nodes, seed, Instant::now() + Duration::from_secs(20)).await
        }
        Err(_) => Err("not converged".into()),
    };
    let once_found = match (&converged, o.once_clients) {
        (_, 0) => Ok(Default::default()),
        (Ok(()), _) => {
            once::read_back(o.nodes, seed, Instant::now() + Duration::from_secs(20)).await
        }
        (Err(_), _) => Err("not converged".into()),
    };
    let hashes = match &converged {
        Ok(()) => compare_hashes(nem.c).await,
        Err(_) => HashCheck::NotDone("not converged".into()),
    };
    // Lease reads the running members served by their lease alone (counted since each one's
    // last start): the lease path must have been taken, not only its ReadIndex fallback.
    let mut lease_served = 0;
    let mut lease_unknown = Vec::new();
    for h in nem.c.live() {
        match cluster::metric(h, "dengine_lease_reads_total").await {
            Ok(n) => lease_served += n,
            Err(e) => lease_unknown.push(e),
        }
    }
    nem.c.reap();
    let crashed = nem.c.crashed.clone();
    let faults = nem.faults.clone();
    let skipped = nem.skipped.clone();
    println!(
        "chaos: seed {seed}: heal, convergence and read-back took {:.1} s",
        heal_started.elapsed().as_secs_f64()
    );

    // The checks.
    let ops = std::mem::take(&mut *rec.ops.lock().unwrap_or_else(|p| p.into_inner()));
    let lines: Vec<String> = ops.iter().map(history::encode).collect();
    let history_path = dir.join("history.jsonl");
    if let Err(e) = std::fs::write(&history_path, lines.join("\n") + "\n") {
        harness_errors.push(format!("cannot write {}: {e}", history_path.display()));
    }
    let mut h = History::new();
    for op in &ops {
        if let Err(e) = h.push(*op) {
            harness_errors.push(format!("bad history entry {op:?}: {e:?}"));
        }
    }
    let check_started = Instant::now();
    let check = check_with(&h, &CheckOptions::default());
    let check_time = check_started.elapsed();
    let lost = match &finals {
        Ok(f) => history::lost_writes(&ops, f),
        Err(_) => Vec::new(),
    };

    // The report.
    let count = |pred: &dyn Fn(&dengine_sim::linearizability::Operation) -> bool| {
        ops.iter().filter(|o| pred(o)).count()
    };
    let unknown = count(&|o| o.outcome == dengine_sim::linearizability::Outcome::Unknown);
    let c = &rec.counters;
    println!("chaos: seed {seed}: summary");
    println!(
        "  operations: {} recorded ({} during the faults, {} final reads): {} ok, {} unknown; \
         {} failed (reads that failed or requests never sent, not recorded)",
        ops.len(),
        workload_ops,
        ops.len() - workload_ops,
        ops.len() - unknown,
        unknown,
        c.failed.load(Ordering::Relaxed)
    );
    let puts = count(&|o| matches!(o.op, Op::Put { .. }));
    let gets = count(&|o| o.op == Op::Get);
    println!(
        "  by kind: {puts} puts, {gets} gets, {} compare-and-sets",
        ops.len() - puts - gets
    );
    println!(
        "  reads served by a leader's lease, no heartbeat round (dengine_lease_reads_total of \
         the running members, since their last start): {lease_served}{}",
        if lease_unknown.is_empty() {
            String::new()
        } else {
            format!(" (not read: {})", lease_unknown.join("; "))
        }
    );
    if lease_served == 0 && gets >= 1_000 && lease_unknown.is_empty() {
        harness_errors.push(format!(
            "{gets} gets, yet no member served a read by its lease: the lease path was not \
             exercised"
        ));
    }
    let faults_text: Vec<String> = faults.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  faults injected: {}", faults_text.join(", "));
    if !skipped.is_empty() {
        let text: Vec<String> = skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("  faults that could not be injected: {}", text.join(", "));
    }
    if o.mode == Mode::All && o.seconds >= nemesis::min_seconds() {
        let missing: Vec<&str> = FaultKind::ALL
            .iter()
            .filter(|&&k| k != FaultKind::ClockJump || o.clock_library.is_some())
            .map(|k| k.name())
            .filter(|k| !faults.contains_key(k))
            .collect();
        if !missing.is_empty() {
            harness_errors.push(format!("fault kinds never injected: {missing:?}"));
        }
    }
    println!(
        "  linearizability: {} (checked in {:.1} s)",
        match &check {
            Check::Linearizable => "linearizable".to_string(),
            Check::NotLinearizable(v) => format!("NOT LINEARIZABLE on key {}", v.key),
            Check::Inconclusive { key } => format!("INCONCLUSIVE (budget exceeded on key {key})"),
        },
        check_time.as_secs_f64()
    );
    match &finals {
        Ok(f) => println!(
            "  final read-back of {} keys: {} acknowledged writes lost",
            f.len(),
            lost.len()
        ),
        Err(e) => println!("  final read-back: not done ({e})"),
    }
    for l in lost.iter().take(10) {
        println!("    {l}");
    }
    if let Check::NotLinearizable(v) = &check {
        // The explanation's end says what could not be linearized; the whole of it (every
        // operation on the key, the longest linearizable prefix) goes to violation.txt.
        let text = v.to_string();
        let lines: Vec<&str> = text.lines().collect();
        println!(
            "  violation (the end of it; all of it in violation.txt):\n{}",
            lines[lines.len().saturating_sub(8)..].join("\n")
        );
        let _ = std::fs::write(dir.join("violation.txt"), text);
    }
    let increments = std::mem::take(
        &mut *lock_log
            .increments
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    let early = std::mem::take(&mut *lock_log.early.lock().unwrap_or_else(|p| p.into_inner()));
    let acked = increments.iter().filter(|i| i.acked).count();
    println!(
        "  locks: {} leases, {} acquisitions, {} guarded increments acknowledged, {} unknown, \
         {} fenced off; {} keep-alives acknowledged; {} leases left to expire ({} seen gone); \
         early-expiry margin {:.1} s",
        lock_log.leases.load(Ordering::Relaxed),
        lock_log.acquired.load(Ordering::Relaxed),
        acked,
        increments.len() - acked,
        lock_log.fenced.load(Ordering::Relaxed),
        lock_log.keepalives.load(Ordering::Relaxed),
        lock_log.let_expire.load(Ordering::Relaxed),
        lock_log.expired_seen.load(Ordering::Relaxed),
        margin.as_secs_f64()
    );
    let lock_problems = match &counter {
        Ok(value) => {
            println!("  final counter: {value}");
            lock::judge(&increments, &early, *value)
        }
        Err(e) => {
            println!("  final counter: not read ({e})");
            lock::judge(&[], &early, 0)
        }
    };
    for p in &lock_problems {
        println!("  LOCK VIOLATION: {p}");
    }
    if o.lock_clients > 0 && o.seconds >= 30 && acked == 0 {
        harness_errors.push("the lock workload acknowledged no guarded increment".into());
    }
    let once_problems = if o.once_clients == 0 {
        Vec::new()
    } else {
        let (acked, unknown, refused) = once_log.counts();
        println!(
            "  exactly-once: {acked} increments acknowledged ({} after more than a second: \
             waited out a fault; {} answered \"applied, response lost\"), {unknown} unknown, \
             {refused} refused; {} sessions opened, {} found expired; {} plain resends",
            once_log.slow.load(Ordering::Relaxed),
            once_log.responses_lost.load(Ordering::Relaxed),
            once_log.sessions.load(Ordering::Relaxed),
            once_log.sessions_lost.load(Ordering::Relaxed),
            once_log.resends.load(Ordering::Relaxed),
        );
        if o.seconds >= 30 && acked == 0 {
            harness_errors.push("the exactly-once workload acknowledged no increment".into());
        }
        match &once_found {
            Ok(found) => {
                println!(
                    "  exactly-once: {} increments applied (acknowledged {acked} + {} of the \
                     unknown)",
                    found.len(),
                    found.len().saturating_sub(acked)
                );
                let outcomes = once_log.outcomes.lock().unwrap_or_else(|p| p.into_inner());
                once::judge(&outcomes, found)
            }
            Err(e) => {
                println!("  exactly-once: not read back ({e})");
                Vec::new()
            }
        }
    };
    for p in once_problems.iter().take(10) {
        println!("  EXACTLY-ONCE VIOLATION: {p}");
    }
    match &hashes {
        HashCheck::Agree(what) => println!("  replicas (HashKV): {what}"),
        HashCheck::Differ(what) => println!("  replicas (HashKV): DIFFER: {what}"),
        HashCheck::NotDone(why) => println!("  replicas (HashKV): not compared ({why})"),
    }
    for e in &crashed {
        println!("  node exited on its own: {e}");
    }

    if let Check::NotLinearizable(v) = &check {
        return Verdict::Unsafe(format!(
            "history not linearizable (key {}){}",
            v.key,
            if lost.is_empty() {
                String::new()
            } else {
                format!("; {} acknowledged writes lost", lost.len())
            }
        ));
    }
    if !lost.is_empty() {
        return Verdict::Unsafe(format!("{} acknowledged writes lost", lost.len()));
    }
    if let Some(first) = lock_problems.first() {
        return Verdict::Unsafe(format!(
            "lock workload: {first}{}",
            if lock_problems.len() > 1 {
                format!(" (and {} more)", lock_problems.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    if let Some(first) = once_problems.first() {
        return Verdict::Unsafe(format!(
            "exactly-once workload: {first}{}",
            if once_problems.len() > 1 {
                format!(" (and {} more)", once_problems.len() - 1)
            } else {
                String::new()
            }
        ));
    }
    if let HashCheck::Differ(what) = &hashes {
        return Verdict::Unsafe(format!("the replicas' key spaces differ: {what}"));
    }
    let mut problems = Vec::new();
    if let Err(e) = converged {
        problems.push(e);
    }
    if let Err(e) = counter {
        problems.push(format!("lock workload: {e}"));
    }
    if let Err(e) = finals {
        problems.push(format!("final read-back: {e}"));
    }
    if let Err(e) = once_found {
        problems.push(format!("exactly-once workload: {e}"));
    }
    if let HashCheck::NotDone(why) = hashes {
        problems.push(format!("HashKV not compared: {why}"));
    }
    if let Check::Inconclusive { key } = check {
        problems.push(format!("checker inconclusive on key {key}"));
    }
    if !crashed.is_empty() {
        problems.push(format!(
            "{} node processes exited on their own",
            crashed.len()
        ));
    }
    problems.extend(harness_errors);
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(problems.join("; "))
    }
}

/// Waits until a leader exists and every member has applied what it had committed.
async fn converge(c: &mut Cluster, interrupted: &AtomicBool) -> Result<(), String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        if interrupted.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        c.reap();
        if let Some((_, ls)) = cluster::leader(&c.live()).await {
            let members: Vec<usize> = (1..=c.len()).filter(|&h| c.host(h).id.is_some()).collect();
            let mut behind = Vec::new();
            for &h in &members {
                match cluster::status(h).await {
                    Ok(s) if s.applied >= ls.commit && s.leader == ls.id => {}
                    Ok(s) => behind.push(format!("host {h} applied {}", s.applied)),
                    Err(e) => behind.push(e),
                }
            }
            if behind.is_empty() {
                println!(
                    "chaos: converged after {:.1} s: leader member {}, commit {}",
                    started.elapsed().as_secs_f64(),
                    ls.id,
                    ls.commit
                );
                return Ok(());
            }
            last = format!(
                "leader {} at commit {}; {}",
                ls.id,
                ls.commit,
                behind.join(", ")
            );
        } else {
            last = "no leader".into();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!(
        "the cluster did not converge within 60 s after the heal ({last})"
    ))
}

/// What comparing the members' HashKV found.
#[derive(Debug, PartialEq)]
enum HashCheck {
    /// Every member has the same hash at the same revision.
    Agree(String),
    /// Two members at the same revision have different key spaces.
    Differ(String),
    /// The members could not be compared (unreachable, or never at one revision).
    NotDone(String),
}

/// Every member's HashKV once all are at the same revision (after convergence nothing writes
/// any more, so they get there): replicas that applied the same log must hold the same key
/// space, byte for byte (etcd's own corruption check).
async fn compare_hashes(c: &Cluster) -> HashCheck {
    let members: Vec<usize> = (1..=c.len()).filter(|&h| c.host(h).id.is_some()).collect();
    let started = Instant::now();
    loop {
        let mut seen = Vec::new();
        let mut failed = Vec::new();
        for &h in &members {
            match cluster::hash_kv(h).await {
                Ok(x) => seen.push((h, x)),
                Err(e) => failed.push(e),
            }
        }
        if failed.is_empty()
            && let Some(verdict) = judge_hashes(&seen)
        {
            return verdict;
        }
        if started.elapsed() > Duration::from_secs(15) {
            let at: Vec<String> = seen
                .iter()
                .map(|(h, (r, _))| format!("host {h} at revision {r}"))
                .chain(failed)
                .collect();
            return HashCheck::NotDone(format!(
                "not all at one revision within 15 s: {}",
                at.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The verdict on `(host, (revision, hash))` of every member, once all are at one revision
/// (`None` before).
fn judge_hashes(seen: &[(usize, (i64, u32))]) -> Option<HashCheck> {
    let &[(first, (revision, hash)), ..] = seen else {
        return None;
    };
    if seen.iter().any(|(_, (r, _))| *r != revision) {
        return None;
    }
    Some(match seen.iter().find(|(_, (_, x))| *x != hash) {
        Some((other, (_, x))) => HashCheck::Differ(format!(
            "at revision {revision} host {first} has hash {hash:#010x}, host {other} {x:#010x}"
        )),
        None => HashCheck::Agree(format!(
            "{} members agree at revision {revision} (hash {hash:#010x})",
            seen.len()
        )),
    })
}

/// Reads every key back with a linearizable get (recorded as client 0's operations).
async fn read_back(
    rec: &Recorder,
    keys: u64,
    hosts: usize,
    seed: u64,
) -> Result<BTreeMap<u64, Option<u64>>, String> {
    let mut rng = SimRng::new(seed ^ 0xF1A1);
    let mut session = Session::new(hosts, 1);
    let mut finals = BTreeMap::new();
    for key in 0..keys {
        let started = Instant::now();
        loop {
            if let Some(OpResult::Get(v)) =
                workload::run_op(rec, &mut session, &mut rng, 0, key, Op::Get).await
            {
                finals.insert(key, v);
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("key {key} could not be read in 30 s"));
            }
        }
    }
    Ok(finals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_judged_only_at_one_revision_and_any_difference_is_a_divergence() {
        assert_eq!(judge_hashes(&[]), None);
        // Not all at one revision yet: wait.
        assert_eq!(judge_hashes(&[(1, (7, 0xa)), (2, (6, 0xa))]), None);
        assert!(matches!(
            judge_hashes(&[(1, (7, 0xa)), (2, (7, 0xa)), (3, (7, 0xa))]),
            Some(HashCheck::Agree(what)) if what.starts_with("3 members agree at revision 7")
        ));
        assert_eq!(
            judge_hashes(&[(1, (7, 0xa)), (2, (7, 0xa)), (3, (7, 0xb))]),
            Some(HashCheck::Differ(
                "at revision 7 host 1 has hash 0x0000000a, host 3 0x0000000b".into()
            ))
        );
    }
}
