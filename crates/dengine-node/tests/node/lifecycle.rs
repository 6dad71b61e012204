//! Fatal storage errors, dropping every handle, and a state machine that cannot be rebuilt.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::{MemoryStateMachine, MemoryStore};
use dengine_core::{Inbox, InboxError, LogStore, Message, MessageBody};
use dengine_node::testing::LocalNetwork;
use dengine_node::{Node, NodeBuilder, ProposeError, StartError};

use crate::common::{
    address, compacting, eventually, settings, single, single_running, wait_leader,
};
use crate::test_store::TestStore;

#[test]
fn node_handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Node>();
    check::<dengine_node::NodeInbox>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_persist_stops_the_node_with_a_clear_error() {
    let store = TestStore::default();
    let node = single(store.clone(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from_static(b"a=1")).await.unwrap();

    store.fail.store(true, Ordering::SeqCst);
    match node.propose(Bytes::from_static(b"b=2")).await {
        Err(ProposeError::Stopped { reason }) => {
            assert!(reason.contains("injected disk failure"), "{reason}");
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), node.stopped())
        .await
        .unwrap();
    assert!(node.is_stopped());
    assert!(node.fatal_error().unwrap().contains("persisting"));
    // Later calls fail at once with the same reason.
    assert!(matches!(
        node.propose(Bytes::from_static(b"c=3")).await,
        Err(ProposeError::Stopped { .. })
    ));
}

/// A synced write that never finishes (a hung disk) stops the node after the stall limit
/// (60 s, on a paused clock here), so that callers get an answer instead of waiting forever.
/// The write hangs inside its task, where only the event loop's own watch can see it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_write_stuck_on_the_disk_stops_the_node_after_the_stall_limit() {
    let store = TestStore::default();
    let node = single(store.clone(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from_static(b"a=1")).await.unwrap();

    store.hold_writes();
    let started = tokio::time::Instant::now();
    let stuck = node.clone();
    let proposal = tokio::spawn(async move { stuck.propose(Bytes::from_static(b"b=2")).await });
    tokio::time::timeout(Duration::from_secs(120), node.stopped())
        .await
        .expect("the node did not stop within 120 s of a stuck write");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(60),
        "stopped after {waited:?}"
    );
    let reason = node.fatal_error().unwrap();
    assert!(
        reason.contains("did not finish a write within 60s"),
        "{reason}"
    );
    assert!(proposal.await.unwrap().is_err());
    store.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_signal_shuts_the_node_down_gracefully() {
    let node = single(MemoryStore::new(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    node.shutdown_on(cancelled);
    node.propose(Bytes::from_static(b"a=1")).await.unwrap();
    assert!(!node.is_stopped(), "nothing happens before the signal");
    cancel.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), node.stopped())
        .await
        .unwrap();
    assert!(
        node.fatal_error().is_none(),
        "a graceful stop, not a failure"
    );
    assert!(matches!(
        node.propose(Bytes::from_static(b"b=2")).await,
        Err(ProposeError::ShuttingDown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_every_handle_stops_the_node() {
    let node = single(MemoryStore::new(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    let inbox = node.inbox();
    drop(node);
    let msg = Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    eventually("the loop to stop", || {
        let inbox = inbox.clone();
        let msg = msg.clone();
        async move { (inbox.deliver(msg) == Err(InboxError::ShuttingDown)).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_log_needs_a_durable_state_machine_or_the_snapshot_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let net = LocalNetwork::new();
    let builder = |store: MemoryStore| {
        let b = NodeBuilder::new(compacting(1))
            .log_store(store)
            .state_machine(MemoryStateMachine::new())
            .transport(net.transport(1));
        net.register(1, b.inbox());
        b
    };
    let node = builder(store.clone())
        .snapshot_dir(tmp.path())
        .bootstrap([(1, address(1))].into())
        .await
        .unwrap();
    wait_leader(&node).await;
    for i in 0..12 {
        node.propose(Bytes::from(format!("k{i}=v{i}")))
            .await
            .unwrap();
    }
    eventually("the log to be compacted", || {
        let store = store.clone();
        async move {
            let st = store.load_state().await.ok()?;
            (st.first_index > 5).then_some(())
        }
    })
    .await;
    node.shutdown().await;

    // Without the snapshot files an empty state machine cannot be rebuilt.
    match builder(store.clone()).start().await {
        Err(StartError::StateMachineBehindLog { applied, compacted }) => {
            assert_eq!(applied, 0);
            assert!(compacted >= 5);
        }
        other => panic!("expected StateMachineBehindLog, got {other:?}"),
    }
    // With them it is restored from the newest snapshot, then the log.
    let node = builder(store.clone())
        .snapshot_dir(tmp.path())
        .start()
        .await
        .unwrap();
    wait_leader(&node).await;
    for i in [0, 6, 11] {
        let v = node
            .read(
                Bytes::from(format!("k{i}")),
                dengine_node::Consistency::Linearizable,
            )
            .await
            .unwrap();
        assert_eq!(v, format!("v{i}"));
    }
    node.shutdown().await;

    // Snapshot files next to an empty log store belong to something else: refused.
    assert!(matches!(
        builder(MemoryStore::new())
            .snapshot_dir(tmp.path())
            .bootstrap([(1, address(1))].into())
            .await,
        Err(StartError::SnapshotFile(_))
    ));
}

/// A cluster founded from a seed (a backup's snapshot) starts with that state, takes writes
/// after it, restarts from it (the seed is its first snapshot file), and refuses to be
/// founded again or over snapshot files of something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_founded_from_a_seed_starts_with_its_state() {
    use dengine_core::StateMachine;
    use dengine_node::Seed;

    let mut old = MemoryStateMachine::new();
    let commands: Vec<_> = [(1, "a=1"), (2, "b=2")]
        .into_iter()
        .map(|(index, c)| dengine_core::store::Command {
            index,
            data: Bytes::from(c),
        })
        .collect();
    old.apply(&commands, 2).await.unwrap();
    let seed = Seed {
        index: 40,
        data: old.snapshot().await.unwrap().into(),
    };

    let tmp = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let net = LocalNetwork::new();
    let builder = |store: MemoryStore| {
        let b = NodeBuilder::new(settings(1))
            .log_store(store)
            .state_machine(MemoryStateMachine::new())
            .transport(net.transport(1));
        net.register(1, b.inbox());
        b
    };
    let members = || [(1, address(1))].into();
    // No snapshot directory to keep the seed in: refused, nothing written.
    assert!(matches!(
        builder(store.clone())
            .bootstrap_from(members(), seed.clone())
            .await,
        Err(StartError::SnapshotFile(_))
    ));
    assert_eq!(store.load_state().await.unwrap().snapshot_meta, None);
    // A seed that covers no entry (index 0) is refused too, nothing written.
    let empty_seed = Seed {
        index: 0,
        data: seed.data.clone(),
    };
    match builder(store.clone())
        .snapshot_dir(tmp.path())
        .bootstrap_from(members(), empty_seed)
        .await
    {
        Err(StartError::SnapshotFile(e)) => assert!(e.contains("index 0"), "{e}"),
        other => panic!("expected SnapshotFile, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    let node = builder(store.clone())
        .snapshot_dir(tmp.path())
        .bootstrap_from(members(), seed.clone())
        .await
        .unwrap();
    wait_leader(&node).await;
    let read = async |node: &Node, key: &'static str| {
        node.read(Bytes::from(key), dengine_node::Consistency::Linearizable)
            .await
            .unwrap()
    };
    assert_eq!(read(&node, "a").await, "1");
    assert_eq!(read(&node, "b").await, "2");
    node.propose(Bytes::from_static(b"c=3")).await.unwrap();
    let status = node.status().await.unwrap();
    assert_eq!(status.snapshot.unwrap().last_included.index, 40);
    assert!(status.last_log_index > 40, "{}", status.last_log_index);
    assert!(status.term >= 2, "the seed is term 1; elections come after");
    node.shutdown().await;

    // A restart finds the seed's state in the snapshot file, then the log after it.
    let node = builder(store.clone())
        .snapshot_dir(tmp.path())
        .start_or_bootstrap_from(members(), Some(seed.clone()))
        .await
        .unwrap();
    wait_leader(&node).await;
    assert_eq!(read(&node, "a").await, "1");
    assert_eq!(read(&node, "c").await, "3");
    node.shutdown().await;

    // Founding it again is refused: the store holds state.
    assert!(matches!(
        builder(store.clone())
            .snapshot_dir(tmp.path())
            .bootstrap_from(members(), seed.clone())
            .await,
        Err(StartError::AlreadyInitialized { .. })
    ));
    // So is founding an empty store next to another cluster's snapshot files.
    let fresh = MemoryStore::new();
    assert!(matches!(
        builder(fresh.clone())
            .snapshot_dir(tmp.path())
            .bootstrap_from(members(), seed)
            .await,
        Err(StartError::SnapshotFile(_))
    ));
    assert_eq!(fresh.load_state().await.unwrap().last_index, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_settings_are_refused() {
    let mut s = settings(1);
    s.raft.tick_ms = 0;
    assert!(matches!(
        single(MemoryStore::new(), s).await,
        Err(StartError::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_inbox_refuses_messages_instead_of_blocking() {
    let mut s = settings(1);
    s.raft.inbox_len = 2;
    let builder = NodeBuilder::new(s);
    let inbox = builder.inbox();
    let msg = Message {
        from: 2,
        to: 1,
        term: 1,
        body: MessageBody::TimeoutNow,
    };
    // Nothing drains the queue before the node starts.
    assert_eq!(inbox.deliver(msg.clone()), Ok(()));
    assert_eq!(inbox.deliver(msg.clone()), Ok(()));
    assert_eq!(inbox.deliver(msg), Err(InboxError::Full));
}

/// A state machine whose "disk" outlives the node: every command it applied, and the index
/// stored with them (one write), as a durable state machine keeps them.
#[derive(Clone, Default)]
struct DurableLog(std::sync::Arc<parking_lot::Mutex<Disk>>);

/// The commands applied (index, data) and the stored index.
type Disk = (Vec<(u64, Bytes)>, u64);

impl dengine_core::StateMachine for DurableLog {
    type Error = std::convert::Infallible;

    async fn apply(
        &mut self,
        commands: &[dengine_core::store::Command],
        applied_up_to: u64,
    ) -> Result<Vec<Bytes>, Self::Error> {
        let mut disk = self.0.lock();
        disk.0
            .extend(commands.iter().map(|c| (c.index, c.data.clone())));
        disk.1 = applied_up_to;
        Ok(vec![Bytes::new(); commands.len()])
    }

    fn applied_index(&self) -> u64 {
        self.0.lock().1
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        Ok(Bytes::from(self.0.lock().0.len().to_string()))
    }

    async fn install_snapshot(&mut self, _: Bytes, _: u64) -> Result<(), Self::Error> {
        unreachable!("a single member never receives a snapshot")
    }

    async fn query(&self, _: Bytes) -> Result<Bytes, Self::Error> {
        Ok(Bytes::new())
    }
}

/// The runtime resumes a durable state machine after the index it stored (nothing applied
/// twice, nothing skipped), and keeps what the state machine does not: the configuration
/// (§7: a snapshot records the configuration as of its last entry), restored from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_state_machine_resumes_after_its_stored_index() {
    let store = MemoryStore::new();
    let disk = DurableLog::default();
    let net = LocalNetwork::new();
    let start = |store: MemoryStore| {
        let b = NodeBuilder::new(settings(1))
            .log_store(store)
            .state_machine(disk.clone())
            .transport(net.transport(1));
        net.register(1, b.inbox());
        b
    };
    let node = start(store.clone())
        .bootstrap([(1, address(1))].into())
        .await
        .unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from("a")).await.unwrap();
    node.add_learner(2, address(2)).await.unwrap();
    node.propose(Bytes::from("b")).await.unwrap();
    node.shutdown().await;
    let (applied_before, stored) = {
        let d = disk.0.lock();
        (d.0.clone(), d.1)
    };
    assert_eq!(applied_before.len(), 2, "{applied_before:?}");
    assert!(
        stored >= applied_before[1].0,
        "the index covers the last command"
    );

    let node = start(store.clone()).start().await.unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from("c")).await.unwrap();
    let indexes: Vec<u64> = disk.0.lock().0.iter().map(|(i, _)| *i).collect();
    assert_eq!(indexes.len(), 3, "nothing applied twice: {indexes:?}");
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    let meta = node.trigger_snapshot().await.unwrap();
    assert!(
        meta.membership.learners.contains(&2),
        "the snapshot records the configuration the state machine never saw: {meta:?}"
    );
    assert!(meta.last_included.index >= indexes[2]);
    node.shutdown().await;
}

/// A durable state machine that says it has applied more than the log holds: what a crash in
/// the middle of a snapshot install leaves without a snapshot directory (the state machine
/// took the snapshot, the log store was not reset to it yet).
struct AheadOfTheLog(MemoryStateMachine, u64);

impl dengine_core::StateMachine for AheadOfTheLog {
    type Error = dengine_core::StorageError;

    async fn apply(
        &mut self,
        commands: &[dengine_core::store::Command],
        applied_up_to: u64,
    ) -> Result<Vec<Bytes>, Self::Error> {
        self.0.apply(commands, applied_up_to).await
    }

    fn applied_index(&self) -> u64 {
        self.1
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        self.0.snapshot().await
    }

    async fn install_snapshot(
        &mut self,
        data: Bytes,
        applied_up_to: u64,
    ) -> Result<(), Self::Error> {
        self.0.install_snapshot(data, applied_up_to).await
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, Self::Error> {
        self.0.query(request).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_ahead_of_the_log_is_refused_with_the_reason() {
    let store = MemoryStore::new();
    let node = single(store.clone(), settings(1)).await.unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from_static(b"a=1")).await.unwrap();
    node.shutdown().await;
    let last = store.load_state().await.unwrap().last_index;

    let net = LocalNetwork::new();
    let b = NodeBuilder::new(settings(1))
        .log_store(store.clone())
        .state_machine(AheadOfTheLog(MemoryStateMachine::new(), last + 40))
        .transport(net.transport(1));
    net.register(1, b.inbox());
    match b.start().await {
        Err(
            e @ StartError::StateMachineAheadOfLog {
                applied,
                last_index,
            },
        ) => {
            assert_eq!((applied, last_index), (last + 40, last));
            let text = e.to_string();
            assert!(text.contains("snapshot directory"), "{text}");
        }
        other => panic!("expected StateMachineAheadOfLog, got {other:?}"),
    }
}

/// A gate a test holds shut: opened by the test, waited on (at most 10 s) by the view.
#[derive(Clone, Default)]
struct Gate(std::sync::Arc<(parking_lot::Mutex<(bool, bool)>, parking_lot::Condvar)>);

impl Gate {
    /// (the view began writing, the gate is open)
    fn state(&self) -> (bool, bool) {
        *self.0.0.lock()
    }

    fn open(&self) {
        self.0.0.lock().1 = true;
        self.0.1.notify_all();
    }

    fn pass(&self) {
        let mut state = self.0.0.lock();
        state.0 = true;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !state.1 && std::time::Instant::now() < until {
            self.0.1.wait_until(&mut state, until);
        }
    }
}

/// A counter of applied commands that gives a [`SnapshotView`]: the count as of the view,
/// written (once the gate opens) on the runtime's thread; or a view that fails as `fails`
/// says.
#[derive(Clone, Default)]
struct ViewedCounter {
    count: u64,
    gate: Gate,
    fails: Option<ViewFailure>,
}

/// How [`ViewedCounter`]'s view fails.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ViewFailure {
    /// `snapshot_view` refuses.
    Refused,
    /// The view panics while it writes.
    Panics,
}

struct CountView {
    count: u64,
    gate: Gate,
    panics: bool,
}

impl dengine_core::store::SnapshotView for CountView {
    fn write_to(
        self: Box<Self>,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), dengine_core::store::SnapshotIoError> {
        self.gate.pass();
        assert!(!self.panics, "a view that panics while it writes");
        out.write_all(self.count.to_string().as_bytes())?;
        Ok(())
    }
}

impl dengine_core::StateMachine for ViewedCounter {
    type Error = std::convert::Infallible;

    async fn apply(
        &mut self,
        commands: &[dengine_core::store::Command],
        _: u64,
    ) -> Result<Vec<Bytes>, Self::Error> {
        self.count += commands.len() as u64;
        Ok(vec![Bytes::new(); commands.len()])
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        unreachable!("the runtime writes snapshots from the view")
    }

    async fn install_snapshot(&mut self, _: Bytes, _: u64) -> Result<(), Self::Error> {
        unreachable!("a single member never receives a snapshot")
    }

    fn snapshot_view(
        &mut self,
    ) -> Result<
        Option<Box<dyn dengine_core::store::SnapshotView>>,
        dengine_core::store::SnapshotIoError,
    > {
        if self.fails == Some(ViewFailure::Refused) {
            return Err("the state cannot be frozen (injected)".into());
        }
        Ok(Some(Box::new(CountView {
            count: self.count,
            gate: self.gate.clone(),
            panics: self.fails == Some(ViewFailure::Panics),
        })))
    }

    async fn query(&self, _: Bytes) -> Result<Bytes, Self::Error> {
        Ok(Bytes::from(self.count.to_string()))
    }
}

/// A state machine with a [`SnapshotView`] has its snapshot written from the view on another
/// thread: writes go on being applied and answered while it is written, and the snapshot is
/// the state as of the view, recorded at the index the view was taken at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_a_snapshot_is_written_from_a_view() {
    let sm = ViewedCounter::default();
    let gate = sm.gate.clone();
    let node = single_running(MemoryStore::new(), sm, settings(1), true)
        .await
        .unwrap();
    wait_leader(&node).await;
    node.propose(Bytes::from("a")).await.unwrap();
    node.propose(Bytes::from("b")).await.unwrap();
    let building = tokio::spawn({
        let node = node.clone();
        async move { node.snapshot().await }
    });
    eventually("the view is written", || async {
        gate.state().0.then_some(())
    })
    .await;
    // The view is being written, and held: a write is applied and answered meanwhile.
    tokio::time::timeout(Duration::from_secs(5), node.propose(Bytes::from("c")))
        .await
        .expect("a write is applied while the snapshot is written")
        .unwrap();
    let count = node
        .read(Bytes::new(), dengine_node::Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(count, Bytes::from("3"));
    assert!(!building.is_finished(), "the snapshot waits for the gate");
    gate.open();
    let snapshot = building.await.unwrap().unwrap();
    assert_eq!(snapshot.data.to_bytes().unwrap(), Bytes::from("2"));
    let applied_c = node.status().await.unwrap().applied_index;
    assert!(
        snapshot.meta.last_included.index < applied_c,
        "the snapshot covers the log up to the view, not what was applied after: {:?} vs {applied_c}",
        snapshot.meta
    );
    node.shutdown().await;
}

/// A view that cannot be taken, or that panics while it is written, fails that snapshot with
/// what went wrong; the node goes on applying and answering writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_fails_or_panics_fails_the_snapshot_not_the_node() {
    for (failure, says) in [
        (ViewFailure::Refused, "cannot be frozen"),
        (ViewFailure::Panics, "panicked"),
    ] {
        let sm = ViewedCounter {
            fails: Some(failure),
            ..ViewedCounter::default()
        };
        sm.gate.open();
        let node = single_running(MemoryStore::new(), sm, settings(1), true)
            .await
            .unwrap();
        wait_leader(&node).await;
        node.propose(Bytes::from("a")).await.unwrap();
        let err = node.snapshot().await.unwrap_err();
        assert!(err.to_string().contains(says), "{failure:?}: {err}");
        node.propose(Bytes::from("b")).await.unwrap();
        let count = node
            .read(Bytes::new(), dengine_node::Consistency::Linearizable)
            .await
            .unwrap();
        assert_eq!(count, Bytes::from("2"), "{failure:?}");
        node.shutdown().await;
    }
}
