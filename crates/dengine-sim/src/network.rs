//! The simulated network: per-message delay, loss, duplication and reordering, and
//! partitions (symmetric, one-way, partial) that the fault schedule opens and heals.

use std::collections::{BTreeSet, VecDeque};

use dengine_core::{Message, NodeId};

use crate::rng::SimRng;

/// Probabilities and delays of the network, fixed per run by the seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkFaults {
    /// Chance a message is lost, per mille.
    pub loss_per_mille: u64,
    /// Chance a message is delivered twice, per mille.
    pub duplicate_per_mille: u64,
    /// Extra delay of a message, uniformly in `0..=max_extra_delay` ticks beyond one tick.
    /// Different delays reorder messages.
    pub max_extra_delay: u64,
}

impl NetworkFaults {
    /// A network that delivers everything after one tick, in order.
    pub const RELIABLE: NetworkFaults = NetworkFaults {
        loss_per_mille: 0,
        duplicate_per_mille: 0,
        max_extra_delay: 0,
    };
}

#[derive(Debug)]
struct InFlight {
    deliver_at: u64,
    /// Tie-breaker that keeps delivery deterministic: send order.
    seq: u64,
    msg: Message,
}

/// Messages in flight and the links that are cut.
#[derive(Debug, Default)]
pub struct Network {
    in_flight: VecDeque<InFlight>,
    /// Directed links (from, to) that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    seq: u64,
    /// Messages lost to faults or cut links so far.
    pub dropped: u64,
    /// Messages duplicated so far.
    pub duplicated: u64,
    /// Messages delivered so far.
    pub delivered: u64,
}

impl Network {
    /// Queues `msg` for delivery, applying loss, duplication and delay.
    /// Returns the message back if it was lost (so a snapshot's sender can be told).
    pub fn send(
        &mut self,
        msg: Message,
        now: u64,
        faults: &NetworkFaults,
        rng: &mut SimRng,
    ) -> Option<Message> {
        if rng.chance(faults.loss_per_mille) {
            self.dropped += 1;
            return Some(msg);
        }
        let copies = if rng.chance(faults.duplicate_per_mille) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let deliver_at = now + 1 + rng.below(faults.max_extra_delay + 1);
            self.seq += 1;
            self.in_flight.push_back(InFlight {
                deliver_at,
                seq: self.seq,
                msg: msg.clone(),
            });
        }
        None
    }

    /// Removes and returns the messages due at `now`, in (time, send order) order, except
    /// those whose recipient is not ready to receive (`deferred(to)`), which wait. Messages on
    /// a cut link are dropped.
    /// Messages dropped on a cut link are returned in the second list.
    pub fn due(
        &mut self,
        now: u64,
        deferred: impl Fn(NodeId) -> bool,
    ) -> (Vec<Message>, Vec<Message>) {
        let mut due: Vec<InFlight> = Vec::new();
        let mut keep = VecDeque::with_capacity(self.in_flight.len());
        for f in self.in_flight.drain(..) {
            if f.deliver_at <= now && !deferred(f.msg.to) {
                due.push(f);
            } else {
                keep.push_back(f);
            }
        }
        self.in_flight = keep;
        due.sort_by_key(|f| (f.deliver_at, f.seq));
        let mut out = Vec::with_capacity(due.len());
        let mut lost = Vec::new();
        for f in due {
            if self.blocked.contains(&(f.msg.from, f.msg.to)) {
                self.dropped += 1;
                lost.push(f.msg);
            } else {
                self.delivered += 1;
                out.push(f.msg);
            }
        }
        (out, lost)
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Splits the nodes into `side` and the rest, both ways.
    pub fn partition(&mut self, side: &[NodeId], all: &[NodeId]) {
        for &a in side {
            for &b in all {
                if !side.contains(&b) {
                    self.block(a, b);
                    self.block(b, a);
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Whether any link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// Drops every message addressed to `node` (it crashed: its sockets are gone).
    /// Returns the dropped messages.
    pub fn drop_to(&mut self, node: NodeId) -> Vec<Message> {
        let (lost, keep): (VecDeque<InFlight>, VecDeque<InFlight>) =
            self.in_flight.drain(..).partition(|f| f.msg.to == node);
        self.in_flight = keep;
        self.dropped += lost.len() as u64;
        lost.into_iter().map(|f| f.msg).collect()
    }

    /// Messages still in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}
