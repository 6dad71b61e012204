//! [`SimNet`]: the network between simulated hosts. A message sent at global time `t` is due at
//! `t` plus a random delay (so messages overtake each other), may be lost or duplicated, and is
//! dropped if its link is cut when it is sent or when it is due. Cuts are one-directional, so
//! partitions can be asymmetric and several can overlap. The simulation loop takes the due
//! messages ([`SimNet::take_due`]) and hands them to the receivers' inboxes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::store::SnapshotData;
use dengine_core::{Message, NodeId, Transport, TransportError};
use parking_lot::Mutex;

use crate::rng::SimRng;

/// How the network misbehaves; chances per message, per mille.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Chance that a message is lost.
    pub loss_per_mille: u64,
    /// Chance that a message is delivered twice.
    pub duplicate_per_mille: u64,
    /// Smallest one-way delay, µs.
    pub min_delay_us: u64,
    /// Largest one-way delay, µs; delays are uniform in between, which reorders messages.
    pub max_delay_us: u64,
}

/// What travels: a message, or a snapshot message with its data.
#[derive(Clone, Debug)]
pub enum Packet {
    /// A peer message.
    Message(Message),
    /// `InstallSnapshot` and the snapshot's bytes.
    Snapshot(Message, SnapshotData),
}

impl Packet {
    fn to(&self) -> NodeId {
        match self {
            Packet::Message(m) | Packet::Snapshot(m, _) => m.to,
        }
    }

    fn from(&self) -> NodeId {
        match self {
            Packet::Message(m) | Packet::Snapshot(m, _) => m.from,
        }
    }
}

/// Counts of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Packets handed to the network.
    pub sent: u64,
    /// Packets lost (random loss or a cut link).
    pub dropped: u64,
    /// Packets sent twice.
    pub duplicated: u64,
    /// Packets that came due and were handed to the loop.
    pub delivered: u64,
}

#[derive(Debug)]
struct NetInner {
    now_us: u64,
    rng: SimRng,
    faults: LinkFaults,
    /// Cut links, one direction each: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    in_flight: BTreeMap<(u64, u64), Packet>,
    seq: u64,
    stats: NetStats,
}

impl NetInner {
    fn up(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    /// Queues `packet`; its delay in µs, or `None` if it was dropped.
    fn send(&mut self, packet: Packet) -> Option<u64> {
        self.stats.sent += 1;
        let (from, to) = (packet.from(), packet.to());
        if !self.up(from, to) || self.rng.chance(self.faults.loss_per_mille) {
            self.stats.dropped += 1;
            return None;
        }
        let copies = if self.rng.chance(self.faults.duplicate_per_mille) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let mut first = None;
        for _ in 0..copies {
            let delay = self
                .rng
                .between(self.faults.min_delay_us, self.faults.max_delay_us);
            first.get_or_insert(delay);
            self.seq += 1;
            self.in_flight
                .insert((self.now_us + delay, self.seq), packet.clone());
        }
        first
    }
}

/// The simulated network. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct SimNet {
    inner: Arc<Mutex<NetInner>>,
}

impl SimNet {
    /// A network whose random choices are drawn from `seed`.
    pub fn new(seed: u64, faults: LinkFaults) -> SimNet {
        SimNet {
            inner: Arc::new(Mutex::new(NetInner {
                now_us: 0,
                rng: SimRng::new(seed),
                faults,
                cut: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                seq: 0,
                stats: NetStats::default(),
            })),
        }
    }

    /// The transport of host `id`.
    pub fn transport(&self, id: NodeId) -> SimTransport {
        SimTransport {
            id,
            net: self.clone(),
        }
    }

    /// Sets the global time; messages sent from now on are due after it.
    pub fn set_now(&self, now_us: u64) {
        self.inner.lock().now_us = now_us;
    }

    /// Changes how the network misbehaves from now on.
    pub fn set_faults(&self, faults: LinkFaults) {
        self.inner.lock().faults = faults;
    }

    /// Cuts the link from `from` to `to`.
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.inner.lock().cut.insert((from, to));
    }

    /// Restores the link from `from` to `to`.
    pub fn restore(&self, from: NodeId, to: NodeId) {
        self.inner.lock().cut.remove(&(from, to));
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.inner.lock().cut.clear();
    }

    /// Packets due by now whose link is up, in the order they are due.
    pub fn take_due(&self) -> Vec<Packet> {
        let mut n = self.inner.lock();
        let now = n.now_us;
        let mut due = Vec::new();
        while let Some(entry) = n.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let packet = entry.remove();
            if n.up(packet.from(), packet.to()) {
                n.stats.delivered += 1;
                due.push(packet);
            } else {
                n.stats.dropped += 1;
            }
        }
        due
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetStats {
        self.inner.lock().stats
    }
}

/// One host's [`Transport`] on the [`SimNet`].
#[derive(Clone, Debug)]
pub struct SimTransport {
    id: NodeId,
    net: SimNet,
}

impl Transport for SimTransport {
    fn send(&self, message: Message) {
        debug_assert_eq!(message.from, self.id);
        self.net.inner.lock().send(Packet::Message(message));
    }

    fn send_snapshot(
        &self,
        message: Message,
        data: SnapshotData,
    ) -> impl Future<Output = Result<(), TransportError>> + Send {
        let to = message.to;
        // A snapshot streams for a while: its delay grows with its size (1 µs per 64 bytes).
        let extra = data.len() / 64;
        let sent = self.net.inner.lock().send(Packet::Snapshot(message, data));
        async move {
            match sent {
                Some(delay) => {
                    tokio::time::sleep(Duration::from_micros(delay + extra)).await;
                    Ok(())
                }
                None => Err(TransportError::Unreachable {
                    peer: to,
                    detail: "the simulated link is down or lost the stream".into(),
                }),
            }
        }
    }

    fn set_peer(&self, _id: NodeId, _address: String) {}

    fn remove_peer(&self, _id: NodeId) {}
}

#[cfg(test)]
mod tests {
    use dengine_core::MessageBody;

    use super::*;

    fn msg(from: NodeId, to: NodeId) -> Message {
        Message {
            from,
            to,
            term: 1,
            body: MessageBody::TimeoutNow,
        }
    }

    #[test]
    fn messages_arrive_after_their_delay_and_not_over_a_cut_link() {
        let net = SimNet::new(
            1,
            LinkFaults {
                min_delay_us: 100,
                max_delay_us: 100,
                ..LinkFaults::default()
            },
        );
        net.transport(1).send(msg(1, 2));
        assert!(net.take_due().is_empty());
        net.set_now(100);
        assert_eq!(net.take_due().len(), 1);
        net.cut(1, 2);
        net.transport(1).send(msg(1, 2));
        net.transport(2).send(msg(2, 1));
        net.set_now(200);
        let due = net.take_due();
        assert_eq!(due.len(), 1, "only the other direction passes");
        assert_eq!(net.stats().dropped, 1);
    }
}
