//! Property test: under random message loss, duplication and reordering (and restarts),
//! 3–5 cores never elect two leaders in one term (Election Safety, Figure 3) and never commit
//! two different entries at one index (State Machine Safety, Figure 3).

use std::collections::BTreeMap;

use dengine_core::{EntryId, Role};
use proptest::prelude::*;

use crate::cluster::Cluster;

/// SplitMix64, so each case is a pure function of its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Checker {
    leaders: BTreeMap<u64, u64>,
    committed: BTreeMap<u64, (EntryId, Vec<u8>)>,
    applied_seen: BTreeMap<u64, usize>,
}

impl Checker {
    fn check(&mut self, c: &Cluster) -> Result<(), String> {
        for node in c.nodes.values() {
            if node.role() == Role::Leader {
                let prev = self.leaders.insert(node.term(), node.id());
                if let Some(other) = prev
                    && other != node.id()
                {
                    return Err(format!(
                        "two leaders in term {}: {other} and {}",
                        node.term(),
                        node.id()
                    ));
                }
            }
        }
        for (&id, applied) in &c.applied {
            let seen = self.applied_seen.entry(id).or_default();
            for e in &applied[*seen..] {
                let payload = match &e.payload {
                    dengine_core::EntryPayload::Normal(d) => d.to_vec(),
                    _ => Vec::new(),
                };
                let entry = (e.id(), payload);
                match self.committed.get(&e.index) {
                    Some(existing) if *existing != entry => {
                        return Err(format!(
                            "index {}: node {id} applied {:?}, another node applied {:?}",
                            e.index, entry.0, existing.0
                        ));
                    }
                    Some(_) => {}
                    None => {
                        self.committed.insert(e.index, entry);
                    }
                }
            }
            *seen = applied.len();
        }
        Ok(())
    }
}

fn run(nodes: u64, seed: u64, steps: usize) -> Result<usize, String> {
    let mut rng = Rng(seed);
    let mut c = Cluster::new(nodes);
    let mut checker = Checker {
        leaders: BTreeMap::new(),
        committed: BTreeMap::new(),
        applied_seen: BTreeMap::new(),
    };
    let mut proposals = 0;
    for step in 0..steps {
        let roll = rng.below(100);
        if roll < 45 && !c.network.is_empty() {
            // Deliver a random in-flight message: reordering, with loss and duplication.
            let i = rng.below(c.network.len() as u64) as usize;
            let m = c.network[i].clone();
            match rng.below(100) {
                0..=9 => {
                    c.network.remove(i); // lost
                }
                10..=14 => c.deliver(m), // duplicated: stays queued
                _ => {
                    c.network.remove(i);
                    c.deliver(m);
                }
            }
        } else if roll < 85 {
            let id = 1 + rng.below(nodes);
            c.tick(id);
        } else if roll < 98 {
            let id = 1 + rng.below(nodes);
            if c.node(id).role() == Role::Leader
                && c.node_mut(id).propose(format!("s{step}").into()).is_ok()
            {
                proposals += 1;
            }
        } else {
            let id = 1 + rng.below(nodes);
            c.restart(id);
        }
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.drain(id);
        }
        checker.check(&c).map_err(|e| format!("step {step}: {e}"))?;
    }
    Ok(proposals)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_two_leaders_per_term_and_no_conflicting_commits(nodes in 3u64..=5, seed in any::<u64>()) {
        if let Err(e) = run(nodes, seed, 3000) {
            prop_assert!(false, "nodes={nodes} seed={seed}: {e}");
        }
    }
}

/// The property test is not vacuous: runs elect leaders and commit proposals.
#[test]
fn random_runs_make_progress() {
    let mut total = 0;
    for seed in 0..8 {
        total += run(3, seed, 3000).unwrap();
    }
    assert!(total > 50, "only {total} proposals accepted");
}
