//! [`SimMachine`]: the simulated hosts' state machine, the [`KvStore`] behind the
//! [`StateMachine`] contract. It is durable in the contract's sense: each applied batch and
//! its index are saved together, atomically (the state lives in a [`MachineState`] that the
//! host keeps across crashes), so a restarted node resumes after what was applied.
//!
//! The exactly-once workload adds increments ([`increment_command`]), each with a unique id:
//! the machine counts how often each id was applied, so an increment applied twice is seen.
//! That workload runs the machine as a volatile one (the host forgets its state on a crash
//! and the runtime rebuilds it, and the session table, from a snapshot and the log) in even
//! seeds, and as a durable one ([`SimMachine::durable`]: the state survives, and the runtime
//! rebuilds only the session table from the newest snapshot and the log) in odd seeds.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dengine_core::LogIndex;
use dengine_core::store::{Command as Applied, StateMachine};
use parking_lot::Mutex;

use crate::kv::{Command, KvStore};

/// What a host's state machine holds, shared with the simulation (which reads it to compare
/// replicas) and kept across the host's crashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MachineState {
    /// The key-value store.
    pub kv: KvStore,
    /// The last log index the store covers.
    pub applied: LogIndex,
    /// Commands applied, and snapshots installed, over the host's life.
    pub commands: u64,
    /// Snapshots installed.
    pub installs: u64,
    /// How many times each increment (by id) was applied: once, if exactly once holds.
    pub increments: BTreeMap<u64, u32>,
}

/// The tag of an increment command.
const INCREMENT: u8 = 3;

/// Encodes the increment with unique `id` (the response is the number of increments
/// applied so far, 8 bytes).
pub fn increment_command(id: u64) -> Bytes {
    let mut b = Vec::with_capacity(9);
    b.push(INCREMENT);
    b.extend_from_slice(&id.to_be_bytes());
    Bytes::from(b)
}

fn increment_id(data: &[u8]) -> Option<u64> {
    match data {
        [INCREMENT, id @ ..] => Some(u64::from_be_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// The [`StateMachine`] of one node incarnation over its host's [`MachineState`].
#[derive(Clone, Debug)]
pub struct SimMachine {
    state: Arc<Mutex<MachineState>>,
    durable: bool,
}

impl SimMachine {
    /// A state machine over `state` that reports itself not durable
    /// ([`StateMachine::durable`] false; it resumes at its applied index all the same).
    pub fn new(state: Arc<Mutex<MachineState>>) -> SimMachine {
        SimMachine {
            state,
            durable: false,
        }
    }

    /// A state machine over `state` that reports itself durable: the runtime then reads no
    /// snapshot its state covers, and with client sessions rebuilds the session table at a
    /// restart from the newest snapshot and the log.
    pub fn durable(state: Arc<Mutex<MachineState>>) -> SimMachine {
        SimMachine {
            state,
            durable: true,
        }
    }
}

/// Encodes a read of `key` for [`StateMachine::query`].
pub fn read_query(key: u64) -> Bytes {
    Bytes::copy_from_slice(&key.to_be_bytes())
}

/// Decodes the answer to [`read_query`]: the key's value, or `None` for an absent key or an
/// answer that is not one.
pub fn read_answer(answer: &[u8]) -> Option<Option<u64>> {
    match answer.len() {
        0 => Some(None),
        8 => Some(Some(u64::from_be_bytes(answer.try_into().ok()?))),
        _ => None,
    }
}

/// The response to a write: whether it took effect (always for a put).
pub fn write_answer(answer: &[u8]) -> Option<bool> {
    match answer {
        [0] => Some(false),
        [1] => Some(true),
        _ => None,
    }
}

/// Reads what [`SimMachine`]'s `snapshot` wrote.
fn decode_snapshot(data: &[u8]) -> Option<(KvStore, BTreeMap<u64, u32>)> {
    let kv_len = usize::try_from(u64::from_be_bytes(data.get(..8)?.try_into().ok()?)).ok()?;
    let kv = KvStore::decode(data.get(8..8usize.checked_add(kv_len)?)?)?;
    let rest = &data[8 + kv_len..];
    if !rest.len().is_multiple_of(12) {
        return None;
    }
    let increments = rest
        .chunks_exact(12)
        .map(|c| {
            let (id, times) = c.split_at(8);
            Some((
                u64::from_be_bytes(id.try_into().ok()?),
                u32::from_be_bytes(times.try_into().ok()?),
            ))
        })
        .collect::<Option<_>>()?;
    Some((kv, increments))
}

impl StateMachine for SimMachine {
    type Error = std::io::Error;

    async fn apply(
        &mut self,
        commands: &[Applied],
        applied_up_to: LogIndex,
    ) -> Result<Vec<Bytes>, std::io::Error> {
        let mut state = self.state.lock();
        let mut answers = Vec::with_capacity(commands.len());
        for c in commands {
            let answer = if let Some(id) = increment_id(&c.data) {
                *state.increments.entry(id).or_default() += 1;
                let applied: u64 = state.increments.values().map(|&n| u64::from(n)).sum();
                Bytes::copy_from_slice(&applied.to_be_bytes())
            } else {
                match Command::decode(&c.data) {
                    Some(cmd) => Bytes::from_static(if state.kv.apply(cmd) { &[1] } else { &[0] }),
                    None => Bytes::new(),
                }
            };
            answers.push(answer);
        }
        state.commands += commands.len() as u64;
        state.applied = applied_up_to;
        Ok(answers)
    }

    fn applied_index(&self) -> LogIndex {
        self.state.lock().applied
    }

    fn durable(&self) -> bool {
        self.durable
    }

    /// The key-value pairs (length-prefixed) and then the increments, (id, times) each.
    async fn snapshot(&mut self) -> Result<Bytes, std::io::Error> {
        let state = self.state.lock();
        let kv = state.kv.encode();
        let mut b = Vec::with_capacity(8 + kv.len() + state.increments.len() * 12);
        b.extend_from_slice(&(kv.len() as u64).to_be_bytes());
        b.extend_from_slice(&kv);
        for (id, times) in &state.increments {
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&times.to_be_bytes());
        }
        Ok(Bytes::from(b))
    }

    async fn install_snapshot(
        &mut self,
        data: Bytes,
        applied_up_to: LogIndex,
    ) -> Result<(), std::io::Error> {
        let (kv, increments) = decode_snapshot(&data).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "not a simulator snapshot")
        })?;
        let mut state = self.state.lock();
        state.kv = kv;
        state.increments = increments;
        state.applied = applied_up_to;
        state.installs += 1;
        Ok(())
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, std::io::Error> {
        let key: [u8; 8] = request.as_ref().try_into().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a read is an 8-byte key")
        })?;
        let value = self.state.lock().kv.get(u64::from_be_bytes(key));
        Ok(value.map_or_else(Bytes::new, |v| Bytes::copy_from_slice(&v.to_be_bytes())))
    }
}
