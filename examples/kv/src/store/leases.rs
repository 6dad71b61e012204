//! [`Leases`]: the leases as the replicated state holds them — each lease's granted TTL, the
//! remaining TTL its leader last checkpointed, and its keys — and which lease each live key is
//! attached to.
//!
//! Pure and deterministic, like the rest of the store: a lease never expires here. Expiry is
//! the leader's decision, on its clock (`crate::lease`), and reaches every replica as a revoke
//! in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;

use crate::error::KvError;
use crate::proto::dengine::kv::v1::LeaseState;

/// The largest TTL a lease may be granted, in seconds (etcd's `MaxLeaseTTL`, about 2,850
/// years): larger ones would overflow a clock's arithmetic.
pub(crate) const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The granted time to live, in seconds.
    pub(crate) ttl: i64,
    /// What was left of the TTL at the leader's last checkpoint, in seconds (0: the full TTL,
    /// as after a grant or a renewal).
    pub(crate) remaining: i64,
    /// The live keys attached to it.
    pub(crate) keys: BTreeSet<Bytes>,
}

/// The lease table and the key-to-lease index.
#[derive(Clone, Debug, Default)]
pub(crate) struct Leases {
    by_id: BTreeMap<i64, Lease>,
    /// Each attached key: its lease, and the mod revision of the key's version that the
    /// attachment belongs to (the live one; older versions report no lease).
    by_key: HashMap<Bytes, (i64, i64)>,
    /// Advances with every change, so that a durable store knows when to write the table.
    generation: u64,
}

impl Leases {
    /// Advances with every change of the table.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The lease `id`.
    pub(crate) fn get(&self, id: i64) -> Option<&Lease> {
        self.by_id.get(&id)
    }

    /// Every lease by id, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (i64, &Lease)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    /// The lease `key`'s version with mod revision `mod_revision` is attached to (0: none).
    pub(crate) fn lease_of(&self, key: &[u8], mod_revision: i64) -> i64 {
        if self.by_key.is_empty() {
            return 0;
        }
        match self.by_key.get(key) {
            Some((id, at)) if *at == mod_revision => *id,
            _ => 0,
        }
    }

    /// The lease the live version of `key` is attached to (0: none).
    pub(crate) fn lease_of_live(&self, key: &[u8]) -> i64 {
        self.by_key.get(key).map_or(0, |(id, _)| *id)
    }

    /// Adds a lease with no keys. Refused if `id` is taken, not positive, or the TTL is out
    /// of range.
    pub(crate) fn grant(&mut self, id: i64, ttl: i64) -> Result<(), KvError> {
        if id <= 0 {
            return Err(KvError::InvalidArgument(format!(
                "lease id {id} is not positive"
            )));
        }
        if ttl > MAX_LEASE_TTL {
            return Err(KvError::LeaseTtlTooLarge);
        }
        if ttl <= 0 {
            return Err(KvError::InvalidArgument(format!(
                "lease TTL {ttl} is not positive"
            )));
        }
        if self.by_id.contains_key(&id) {
            return Err(KvError::lease_exists());
        }
        self.by_id.insert(
            id,
            Lease {
                ttl,
                remaining: 0,
                keys: BTreeSet::new(),
            },
        );
        self.generation += 1;
        Ok(())
    }

    /// Records a checkpointed remaining TTL (ignored for a lease that no longer exists: the
    /// checkpoint raced with its revoke).
    pub(crate) fn checkpoint(&mut self, id: i64, remaining: i64) {
        if let Some(lease) = self.by_id.get_mut(&id) {
            let remaining = remaining.clamp(0, lease.ttl);
            if lease.remaining != remaining {
                lease.remaining = remaining;
                self.generation += 1;
            }
        }
    }

    /// Attaches the new live version of `key` (at `mod_revision`) to lease `id` (0: to none),
    /// detaching it from any other.
    pub(crate) fn attach(&mut self, key: &Bytes, id: i64, mod_revision: i64) {
        let before = self.by_key.get(key).map(|(old, _)| *old);
        if before.is_none() && id == 0 {
            return;
        }
        if let Some(old) = before
            && old != id
        {
            self.detach(key);
        }
        if id == 0 {
            return;
        }
        if let Some(lease) = self.by_id.get_mut(&id) {
            lease.keys.insert(key.clone());
            self.by_key.insert(key.clone(), (id, mod_revision));
            self.generation += 1;
        }
    }

    /// Detaches `key` (deleted) from its lease, if it has one.
    pub(crate) fn detach(&mut self, key: &[u8]) {
        if let Some((id, _)) = self.by_key.remove(key) {
            if let Some(lease) = self.by_id.get_mut(&id) {
                lease.keys.remove(key);
            }
            self.generation += 1;
        }
    }

    /// Removes lease `id`; its keys (which the caller deletes) are detached.
    pub(crate) fn remove(&mut self, id: i64) -> Option<Lease> {
        let lease = self.by_id.remove(&id)?;
        for key in &lease.keys {
            self.by_key.remove(key);
        }
        self.generation += 1;
        Some(lease)
    }

    /// The table as snapshots and the state file keep it, in id order.
    pub(crate) fn to_states(&self) -> Vec<LeaseState> {
        self.by_id
            .iter()
            .map(|(id, l)| LeaseState {
                id: *id,
                ttl: l.ttl,
                remaining_ttl: l.remaining,
                keys: l.keys.iter().cloned().collect(),
            })
            .collect()
    }

    /// The table from `states` (a snapshot's or the state file's); `live_mod_revision` gives
    /// the mod revision of a live key (`None`: no such key). Refused if two leases share an
    /// id or a key, a TTL is out of range, or a key is not live: the state is damaged.
    pub(crate) fn from_states(
        states: Vec<LeaseState>,
        live_mod_revision: impl Fn(&Bytes) -> Option<i64>,
    ) -> Result<Self, String> {
        let mut leases = Leases::default();
        for state in states {
            if state.id <= 0 || state.ttl <= 0 || state.ttl > MAX_LEASE_TTL {
                return Err(format!(
                    "lease {:x} with TTL {}: id and TTL must be positive (TTL at most {MAX_LEASE_TTL})",
                    state.id, state.ttl
                ));
            }
            if leases.by_id.contains_key(&state.id) {
                return Err(format!("lease {:x} recorded twice", state.id));
            }
            let mut keys = BTreeSet::new();
            for key in state.keys {
                let Some(mod_revision) = live_mod_revision(&key) else {
                    return Err(format!(
                        "lease {:x} holds key {:?}, which does not exist",
                        state.id,
                        String::from_utf8_lossy(&key)
                    ));
                };
                if leases
                    .by_key
                    .insert(key.clone(), (state.id, mod_revision))
                    .is_some()
                {
                    return Err(format!(
                        "key {:?} attached to two leases",
                        String::from_utf8_lossy(&key)
                    ));
                }
                keys.insert(key);
            }
            leases.by_id.insert(
                state.id,
                Lease {
                    ttl: state.ttl,
                    remaining: state.remaining_ttl.clamp(0, state.ttl),
                    keys,
                },
            );
        }
        Ok(leases)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_key_follows_its_last_put_and_leaves_its_lease_when_deleted() {
        let mut leases = Leases::default();
        leases.grant(1, 10).unwrap();
        leases.grant(2, 10).unwrap();
        leases.attach(&key("a"), 1, 5);
        assert_eq!(leases.lease_of(b"a", 5), 1);
        // An older version of the key reports no lease.
        assert_eq!(leases.lease_of(b"a", 4), 0);
        leases.attach(&key("a"), 2, 6);
        assert!(leases.get(1).unwrap().keys.is_empty());
        assert_eq!(leases.get(2).unwrap().keys.len(), 1);
        // A put without a lease detaches it.
        leases.attach(&key("a"), 0, 7);
        assert_eq!(leases.lease_of_live(b"a"), 0);
        assert!(leases.get(2).unwrap().keys.is_empty());
        leases.attach(&key("b"), 2, 8);
        leases.detach(b"b");
        assert!(leases.get(2).unwrap().keys.is_empty());
        assert_eq!(leases.lease_of_live(b"b"), 0);
    }

    #[test]
    fn grants_refuse_taken_ids_and_out_of_range_ttls() {
        let mut leases = Leases::default();
        leases.grant(7, 5).unwrap();
        assert_eq!(leases.grant(7, 5), Err(KvError::lease_exists()));
        assert_eq!(
            leases.grant(8, MAX_LEASE_TTL + 1),
            Err(KvError::LeaseTtlTooLarge)
        );
        assert!(matches!(
            leases.grant(0, 5),
            Err(KvError::InvalidArgument(_))
        ));
        assert!(matches!(
            leases.grant(9, 0),
            Err(KvError::InvalidArgument(_))
        ));
    }

    #[test]
    fn removing_a_lease_detaches_its_keys_and_the_table_round_trips() {
        let mut leases = Leases::default();
        leases.grant(3, 60).unwrap();
        leases.attach(&key("x"), 3, 2);
        leases.attach(&key("y"), 3, 3);
        leases.checkpoint(3, 20);
        let states = leases.to_states();
        let back = Leases::from_states(states.clone(), |k| {
            Some(if k.as_ref() == b"x" { 2 } else { 3 })
        })
        .unwrap();
        assert_eq!(back.to_states(), states);
        assert_eq!(back.lease_of(b"y", 3), 3);
        let gone = leases.remove(3).unwrap();
        assert_eq!(gone.keys.len(), 2);
        assert_eq!(leases.lease_of_live(b"x"), 0);
        assert!(leases.iter().next().is_none());
    }

    #[test]
    fn a_damaged_table_is_refused() {
        let lease = |id, ttl, keys: &[&str]| LeaseState {
            id,
            ttl,
            remaining_ttl: 0,
            keys: keys.iter().map(|k| key(k)).collect(),
        };
        let live = |_: &Bytes| Some(1);
        assert!(Leases::from_states(vec![lease(1, 0, &[])], live).is_err());
        assert!(Leases::from_states(vec![lease(1, 5, &[]), lease(1, 5, &[])], live).is_err());
        assert!(Leases::from_states(vec![lease(1, 5, &["a"]), lease(2, 5, &["a"])], live).is_err());
        assert!(Leases::from_states(vec![lease(1, 5, &["a"])], |_| None).is_err());
    }
}
