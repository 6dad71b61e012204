//! [`FaultyTransport`]: wraps any [`Transport`] and drops, delays, duplicates or blocks what
//! it sends, under the control of a [`FaultHandle`]. For tests and the chaos harness, where
//! kernel network emulation (netem) is not available.
//!
//! Faults apply to what *this* node sends. A symmetric partition between two groups blocks
//! each group's sends to the other (call [`FaultHandle::block`] on both sides); blocking one
//! side only gives a one-way partition.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use dengine_core::store::SnapshotData;
use dengine_core::{Message, NodeId, Transport, TransportError};
use parking_lot::{Mutex, MutexGuard};

/// The fault settings in force, changed at any time through a [`FaultHandle`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability in `[0, 1]` that a message is dropped.
    pub drop_rate: f64,
    /// Probability in `[0, 1]` that a message is sent twice.
    pub duplicate_rate: f64,
    /// Each message is held back for a random time in this range (inclusive lower bound),
    /// which also reorders messages. `None`: sent at once.
    pub delay: Option<(Duration, Duration)>,
    /// Peers this node cannot reach: messages and snapshots to them are dropped.
    pub blocked: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct State {
    faults: Faults,
    rng: u64,
    dropped: u64,
    duplicated: u64,
    delayed: u64,
}

impl State {
    /// A uniform number in `[0, 1)` (splitmix64).
    fn unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn delay(&mut self) -> Option<Duration> {
        let (lo, hi) = self.faults.delay?;
        let span = hi.saturating_sub(lo);
        Some(lo + span.mul_f64(self.unit()))
    }
}

/// Changes the faults of a [`FaultyTransport`] while it runs. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FaultHandle {
    state: Arc<Mutex<State>>,
}

impl FaultHandle {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Replaces all fault settings.
    pub fn set(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The settings in force.
    pub fn get(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Sets the drop probability.
    pub fn set_drop_rate(&self, rate: f64) {
        self.lock().faults.drop_rate = rate.clamp(0.0, 1.0);
    }

    /// Sets the duplication probability.
    pub fn set_duplicate_rate(&self, rate: f64) {
        self.lock().faults.duplicate_rate = rate.clamp(0.0, 1.0);
    }

    /// Sets the delay range (`None`: no delay).
    pub fn set_delay(&self, delay: Option<(Duration, Duration)>) {
        self.lock().faults.delay = delay;
    }

    /// Stops sending to `peers` (adds them to the blocked set).
    pub fn block(&self, peers: impl IntoIterator<Item = NodeId>) {
        self.lock().faults.blocked.extend(peers);
    }

    /// Sends to every peer again.
    pub fn unblock_all(&self) {
        self.lock().faults.blocked.clear();
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.lock().faults = Faults::default();
    }

    /// Messages dropped, duplicated and delayed so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.dropped, s.duplicated, s.delayed)
    }
}

/// A [`Transport`] that injects the faults of its [`FaultHandle`] into another one.
/// Delays need a tokio runtime (each delayed message is a short task).
#[derive(Clone, Debug)]
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    handle: FaultHandle,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`; `seed` makes the random choices repeatable. Starts without faults.
    pub fn new(inner: T, seed: u64) -> Self {
        FaultyTransport {
            inner: Arc::new(inner),
            handle: FaultHandle {
                state: Arc::new(Mutex::new(State {
                    faults: Faults::default(),
                    rng: seed,
                    dropped: 0,
                    duplicated: 0,
                    delayed: 0,
                })),
            },
        }
    }

    /// The handle that changes the faults.
    pub fn handle(&self) -> FaultHandle {
        self.handle.clone()
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, message: Message) {
        let delays = {
            let mut s = self.handle.lock();
            if s.faults.blocked.contains(&message.to) || s.unit() < s.faults.drop_rate {
                s.dropped += 1;
                return;
            }
            let copies = if s.unit() < s.faults.duplicate_rate {
                s.duplicated += 1;
                2
            } else {
                1
            };
            let delays: Vec<Option<Duration>> = (0..copies).map(|_| s.delay()).collect();
            if delays[0].is_some() {
                s.delayed += 1;
            }
            delays
        };
        for delay in delays {
            let m = message.clone();
            match delay {
                None => self.inner.send(m),
                Some(d) => {
                    let inner = self.inner.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        inner.send(m);
                    });
                }
            }
        }
    }

    fn send_snapshot(
        &self,
        message: Message,
        data: SnapshotData,
    ) -> impl std::future::Future<Output = Result<(), TransportError>> + Send {
        let (blocked, delay) = {
            let mut s = self.handle.lock();
            let blocked = s.faults.blocked.contains(&message.to);
            if blocked {
                s.dropped += 1;
            }
            (blocked, s.delay())
        };
        let inner = self.inner.clone();
        async move {
            if blocked {
                return Err(TransportError::Unreachable {
                    peer: message.to,
                    detail: "blocked by fault injection".into(),
                });
            }
            if let Some(d) = delay {
                tokio::time::sleep(d).await;
            }
            inner.send_snapshot(message, data).await
        }
    }

    fn set_peer(&self, id: NodeId, address: String) {
        self.inner.set_peer(id, address);
    }

    fn remove_peer(&self, id: NodeId) {
        self.inner.remove_peer(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::{HeartbeatResponse, MessageBody};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Message>>);

    impl Transport for Recorder {
        fn send(&self, message: Message) {
            self.0.lock().push(message);
        }
        async fn send_snapshot(&self, _m: Message, _d: SnapshotData) -> Result<(), TransportError> {
            Ok(())
        }
        fn set_peer(&self, _id: NodeId, _address: String) {}
        fn remove_peer(&self, _id: NodeId) {}
    }

    fn msg(to: NodeId, round: u64) -> Message {
        Message {
            from: 1,
            to,
            term: 1,
            body: MessageBody::HeartbeatResponse(HeartbeatResponse {
                round,
                log_end: None,
            }),
        }
    }

    #[test]
    fn blocked_peers_get_nothing_and_drop_and_duplicate_rates_hold() {
        let t = FaultyTransport::new(Recorder::default(), 42);
        let h = t.handle();
        h.block([3]);
        for i in 0..100 {
            t.send(msg(2, i));
            t.send(msg(3, i));
        }
        let sent = t.inner().0.lock().clone();
        assert_eq!(sent.len(), 100);
        assert!(sent.iter().all(|m| m.to == 2));
        h.heal();
        h.set_drop_rate(0.5);
        h.set_duplicate_rate(0.5);
        for i in 0..2000 {
            t.send(msg(2, i));
        }
        let n = t.inner().0.lock().len() - 100;
        // Kept ~1000, of which ~half duplicated: ~1500 arrive.
        assert!((1300..1700).contains(&n), "{n}");
        let (dropped, duplicated, _) = h.counts();
        assert!((900..1100).contains(&(dropped - 100)), "{dropped}");
        assert!((400..600).contains(&duplicated), "{duplicated}");
    }

    #[tokio::test]
    async fn delayed_messages_arrive_later_and_blocked_snapshots_fail() {
        let t = FaultyTransport::new(Recorder::default(), 1);
        let h = t.handle();
        h.set_delay(Some((Duration::from_millis(20), Duration::from_millis(40))));
        t.send(msg(2, 1));
        assert!(t.inner().0.lock().is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(t.inner().0.lock().len(), 1);
        h.heal();
        h.block([2]);
        let r = t.send_snapshot(msg(2, 0), SnapshotData::empty()).await;
        assert!(matches!(
            r,
            Err(TransportError::Unreachable { peer: 2, .. })
        ));
    }
}
