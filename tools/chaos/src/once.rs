//! The exactly-once workload (`--exactly-once-clients N`): clients of `dengine-client` that
//! each open a client session (Raft thesis §6.3) and propose increments through it, resent
//! by the client through leader crashes, partitions and pauses until their deadline. Every
//! increment carries a unique id — it is a put of its own key, `chaos-once/<client>/<n>` —
//! and the state machine records how often it was applied: the key's etcd `version` counts
//! the puts of it.
//!
//! The check ([`judge`]), on the keys read back after the heal: no increment applied twice
//! (every version is 1), every acknowledged increment applied, none applied that the client
//! was told was not, and none that was never proposed — so the final count is the
//! acknowledged increments plus a subset of those of unknown outcome.
//!
//! Odd-numbered clients set `ClientConfig::forward`: a follower forwards their calls to the
//! leader on the members' forwarding streams, so the faults also break those streams with
//! calls in flight; even-numbered clients go to the leader themselves.
//!
//! The members keep their keys in dengine-kv's durable state (the default), so a member
//! restarted after a kill rebuilds its session table from the newest snapshot and the log;
//! a retry of an increment it applied before the kill is answered "applied, response lost"
//! (counted as acknowledged: it must be there, once).
//!
//! With `--bug sessions-off` the members run without sessions and the clients do what a
//! client without them can only do: resend a command whose outcome is unknown as a new
//! plain proposal. The check must then find an increment applied twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dengine_client::{Client, ClientConfig, ClientError, Session};
use dengine_kv::proto::dengine::kv::v1::command;
use dengine_kv::proto::etcdserverpb::kv_client::KvClient;
use dengine_kv::proto::etcdserverpb::{PutRequest, RangeRequest};
use dengine_sim::rng::SimRng;

use crate::cluster::{connect, url};

/// The prefix of the increments' keys.
const PREFIX: &str = "chaos-once/";

/// How long one proposal may take, resends included: a few election timeouts, so that a
/// client stuck behind a lost majority gives up (outcome unknown) and goes on.
const DEADLINE: Duration = Duration::from_secs(4);

/// What a client was told about one increment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Acknowledged: applied.
    Acked,
    /// Unknown: applied once or not at all.
    Unknown,
    /// Refused: not applied.
    Refused,
}

/// What the clients recorded: the outcome of each increment `(client, n)`, and counters.
#[derive(Debug, Default)]
pub(crate) struct OnceLog {
    pub(crate) outcomes: Mutex<BTreeMap<(u64, u64), Outcome>>,
    /// Sessions opened (the first of each client, and new ones after one was lost).
    pub(crate) sessions: AtomicU64,
    /// Sessions found gone (expired while the client waited out a fault).
    pub(crate) sessions_lost: AtomicU64,
    /// Plain proposals resent after an unknown outcome (`--bug sessions-off` only).
    pub(crate) resends: AtomicU64,
    /// Increments answered "applied, response lost" (counted as acknowledged): applied
    /// before a leader restarted, whose durable state machine's table was rebuilt from the
    /// log without the responses.
    pub(crate) responses_lost: AtomicU64,
    /// Increments acknowledged only after [`SLOW`]: they waited out a fault, resent by the
    /// client meanwhile (evidence that the faults reached the workload).
    pub(crate) slow: AtomicU64,
}

/// See [`OnceLog::slow`]: longer than an election timeout.
const SLOW: Duration = Duration::from_secs(1);

impl OnceLog {
    fn record(&self, client: u64, n: u64, outcome: Outcome) {
        self.outcomes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((client, n), outcome);
    }

    /// (acknowledged, unknown, refused).
    pub(crate) fn counts(&self) -> (usize, usize, usize) {
        let outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let count = |o: Outcome| outcomes.values().filter(|&&v| v == o).count();
        (
            count(Outcome::Acked),
            count(Outcome::Unknown),
            count(Outcome::Refused),
        )
    }
}

fn key(client: u64, n: u64) -> String {
    format!("{PREFIX}{client:03}/{n:09}")
}

/// `(client, n)` of an increment's key.
fn parse_key(key: &[u8]) -> Option<(u64, u64)> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(PREFIX)?;
    let (client, n) = rest.split_once('/')?;
    Some((client.parse().ok()?, n.parse().ok()?))
}

/// The state machine command of increment `n` of `client`: a put of its key.
fn increment(client: u64, n: u64) -> Bytes {
    dengine_kv::encode_command(command::Op::Put(PutRequest {
        key: Bytes::from(key(client, n)),
        value: Bytes::from(n.to_string()),
        ..Default::default()
    }))
}

/// What the state machine answered: acknowledged, or refused by the store (nothing applied).
fn answered(response: &[u8]) -> Outcome {
    match dengine_kv::decode_command_response(response) {
        Ok(_) => Outcome::Acked,
        Err(_) => Outcome::Refused,
    }
}

/// What an error says about the command.
fn failed(e: &ClientError) -> Outcome {
    if e.outcome_unknown() {
        Outcome::Unknown
    } else if matches!(e, ClientError::ResponseLost(_)) {
        // Applied once before the leader restarted; only its response is gone.
        Outcome::Acked
    } else {
        Outcome::Refused
    }
}

/// One client until `stop`: increments `1, 2, ...`, each proposed once in its session
/// (`sessions`), or resent plainly while its outcome is unknown (`!sessions`).
pub(crate) async fn client(
    log: Arc<OnceLog>,
    stop: Arc<AtomicBool>,
    client: u64,
    hosts: usize,
    seed: u64,
    sessions: bool,
) {
    let mut config = ClientConfig::new((1..=hosts).map(url));
    // Every other client lets the followers forward its calls to the leader (on the
    // members' forwarding streams); the others follow the leader themselves.
    config.forward = client % 2 == 1;
    config.request_timeout = DEADLINE;
    config.connect_timeout = Duration::from_millis(500);
    let cluster = match Client::connect(config) {
        Ok(c) => c,
        Err(e) => {
            println!("  exactly-once client {client}: cannot start: {e}");
            return;
        }
    };
    let mut rng = SimRng::new(seed.wrapping_mul(7_919).wrapping_add(client));
    let mut session: Option<Session> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if sessions && session.is_none() {
            match cluster.open_session().await {
                Ok(s) => {
                    log.sessions.fetch_add(1, Ordering::Relaxed);
                    session = Some(s);
                }
                Err(_) => {
                    // Nobody leads yet; do not spin.
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
                    continue;
                }
            }
        }
        n += 1;
        let command = increment(client, n);
        let started = Instant::now();
        let outcome = match &session {
            Some(s) => match s.propose(command).await {
                Ok(response) => answered(&response),
                Err(e) => {
                    if matches!(e, ClientError::ResponseLost(_)) {
                        log.responses_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    if e.is_session_gone() {
                        log.sessions_lost.fetch_add(1, Ordering::Relaxed);
                        session = None;
                    }
                    failed(&e)
                }
            },
            None => resend_plainly(&cluster, &log, &stop, command).await,
        };
        log.record(client, n, outcome);
        if outcome == Outcome::Acked && started.elapsed() >= SLOW {
            log.slow.fetch_add(1, Ordering::Relaxed);
        }
        if outcome != Outcome::Acked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Without sessions: the command again, plainly, while its outcome is unknown (until it is
/// answered or the run ends) — a retry that may apply it twice.
async fn resend_plainly(
    cluster: &Client,
    log: &OnceLog,
    stop: &AtomicBool,
    command: Bytes,
) -> Outcome {
    loop {
        match cluster.propose(command.clone()).await {
            Ok(response) => return answered(&response),
            Err(e) if e.outcome_unknown() && !stop.load(Ordering::Relaxed) => {
                log.resends.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return failed(&e),
        }
    }
}

/// Every increment key with its version (how often it was put), read linearizably in pages
/// through any member, retried until `deadline`.
pub(crate) async fn read_back(
    hosts: usize,
    seed: u64,
    deadline: Instant,
) -> Result<BTreeMap<Vec<u8>, i64>, String> {
    let mut rng = SimRng::new(seed ^ 0x0c_e0);
    let end = {
        let mut e = PREFIX.as_bytes().to_vec();
        if let Some(last) = e.last_mut() {
            *last += 1;
        }
        Bytes::from(e)
    };
    let mut found = BTreeMap::new();
    let mut from = Bytes::from(PREFIX);
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        let host = 1 + rng.below(hosts as u64) as usize;
        let page = async {
            KvClient::new(connect(host, Duration::from_millis(500)).await?)
                .range(RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: 1_000,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
                .map_err(|e| format!("host {host}: {}", e.message()))
        };
        match tokio::time::timeout(Duration::from_secs(3), page).await {
            Ok(Ok(r)) => {
                for kv in &r.kvs {
                    found.insert(kv.key.to_vec(), kv.version);
                }
                match r.kvs.last() {
                    Some(kv) if r.more => {
                        let mut next = kv.key.to_vec();
                        next.push(0);
                        from = Bytes::from(next);
                    }
                    _ => return Ok(found),
                }
            }
            Ok(Err(e)) => {
                last = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => last = format!("host {host}: no answer in 3 s"),
        }
    }
    Err(format!("the increments could not be read back: {last}"))
}

/// The violations of exactly-once (empty: none) in the keys read back, `found` (key →
/// version), against what the clients were told.
pub(crate) fn judge(
    outcomes: &BTreeMap<(u64, u64), Outcome>,
    found: &BTreeMap<Vec<u8>, i64>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (k, &version) in found {
        let Some(id) = parse_key(k) else {
            problems.push(format!(
                "a key no client writes: {:?}",
                String::from_utf8_lossy(k)
            ));
            continue;
        };
        if version != 1 {
            problems.push(format!(
                "increment {id:?} applied {version} times (its key's version)"
            ));
        }
        match outcomes.get(&id) {
            None => problems.push(format!("increment {id:?} applied but never proposed")),
            Some(Outcome::Refused) => problems.push(format!(
                "increment {id:?} applied, though its client was told it was not"
            )),
            Some(Outcome::Acked | Outcome::Unknown) => {}
        }
    }
    for (&(client, n), outcome) in outcomes {
        if *outcome == Outcome::Acked && !found.contains_key(key(client, n).as_bytes()) {
            problems.push(format!(
                "increment {:?} acknowledged but not applied (lost)",
                (client, n)
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `((client, n), version)` of keys read back.
    type Keys = [((u64, u64), i64)];

    fn found(entries: &Keys) -> BTreeMap<Vec<u8>, i64> {
        entries
            .iter()
            .map(|&((c, n), v)| (key(c, n).into_bytes(), v))
            .collect()
    }

    #[test]
    fn keys_round_trip_and_sort_by_client_then_number() {
        assert_eq!(parse_key(key(7, 42).as_bytes()), Some((7, 42)));
        assert!(key(1, 9) < key(1, 10) && key(1, 999) < key(2, 1));
        assert_eq!(parse_key(b"chaos/1"), None);
    }

    #[test]
    fn each_violation_of_exactly_once_is_found_and_a_clean_run_passes() {
        use Outcome::*;
        let outcomes: BTreeMap<_, _> = [
            ((1, 1), Acked),
            ((1, 2), Unknown),
            ((1, 3), Unknown),
            ((1, 4), Refused),
        ]
        .into_iter()
        .collect();
        // Acknowledged once, one unknown applied and one not, the refused one not applied.
        assert!(judge(&outcomes, &found(&[((1, 1), 1), ((1, 2), 1)])).is_empty());
        let cases: [(&Keys, &str); 5] = [
            (&[((1, 1), 1), ((1, 2), 2)], "applied 2 times"),
            (&[((1, 1), 2)], "applied 2 times"),
            (&[], "acknowledged but not applied"),
            (&[((1, 1), 1), ((1, 4), 1)], "told it was not"),
            (&[((1, 1), 1), ((9, 9), 1)], "never proposed"),
        ];
        for (keys, expected) in cases {
            let problems = judge(&outcomes, &found(keys));
            assert!(
                problems.iter().any(|p| p.contains(expected)),
                "{keys:?}: expected {expected:?} in {problems:?}"
            );
        }
    }
}
