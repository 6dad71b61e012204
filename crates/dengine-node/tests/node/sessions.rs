//! Client sessions (thesis §6.3) through real nodes: a command retried in its session is
//! applied once — after its leader is killed, and after every member restarts from snapshots
//! that compacted its session's registration away — and the refusals say why.

use bytes::Bytes;
use dengine_core::store::{Command, MemoryStore};
use dengine_core::{LogIndex, StateMachine};
use dengine_node::{
    Consistency, NodeBuilder, ProposeError, SessionId, SessionLimits, SessionRefusal, StartError,
};

use crate::common::{Cluster, compacting, eventually, settings};

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Proposes command `seq` of `session` on whichever node leads, until one answers.
async fn in_session(
    c: &Cluster,
    session: SessionId,
    seq: u64,
    first_unanswered: u64,
    command: &str,
) -> Result<Bytes, ProposeError> {
    eventually("a session command to be answered", || async move {
        let leader = c.current_leader().await?;
        let node = c.nodes.get(&leader)?;
        match node
            .propose_in_session(session, seq, first_unanswered, b(command))
            .await
        {
            Err(ProposeError::Refused(_) | ProposeError::Timeout) => None,
            other => Some(other),
        }
    })
    .await
}

async fn value(c: &Cluster, key: &str) -> Bytes {
    let leader = c.leader().await;
    c.read(leader, key, Consistency::Linearizable).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_session_command_is_applied_once_across_a_crash_and_restarts() {
    let snapshots = tempfile::tempdir().unwrap();
    let mut c = Cluster::build_with_sessions(
        3,
        compacting,
        Some(snapshots.path().to_path_buf()),
        Some(SessionLimits::default()),
    )
    .await;
    let leader = c.leader().await;
    let session = c.node(leader).open_session().await.unwrap();

    // MemoryStateMachine answers `k=v` with the previous value of k.
    assert_eq!(in_session(&c, session, 1, 1, "x=1").await.unwrap(), "");
    assert_eq!(in_session(&c, session, 2, 1, "x=2").await.unwrap(), "1");
    // A retry of command 1 gets its first response and does not set x back to 1.
    assert_eq!(in_session(&c, session, 1, 1, "x=1").await.unwrap(), "");
    assert_eq!(value(&c, "x").await, "2");

    // The leader dies; its successor answers the retry of command 2 from the table.
    c.kill(leader).await;
    assert_eq!(in_session(&c, session, 2, 1, "x=2").await.unwrap(), "1");
    assert_eq!(value(&c, "x").await, "2");
    c.start(leader).await;

    // Enough plain writes for snapshots (every 5 entries, nothing kept behind) to compact the
    // session's registration away; then every member restarts from its snapshot.
    for i in 0..12 {
        c.propose(&format!("k{i}=v")).await;
    }
    let leader = c.leader().await;
    let commit = c.status(leader).await.unwrap().commit_index;
    for id in 1..=3 {
        c.wait_applied(id, commit).await;
    }
    c.shutdown_all().await;
    for id in 1..=3 {
        c.start(id).await;
    }
    assert_eq!(in_session(&c, session, 2, 1, "x=2").await.unwrap(), "1");
    assert_eq!(value(&c, "x").await, "2");

    // Acknowledging 1 and 2 (first unanswered: 3) forgets their responses: a late retry of 1
    // is refused, not applied.
    assert_eq!(in_session(&c, session, 3, 3, "x=3").await.unwrap(), "2");
    assert_eq!(
        in_session(&c, session, 1, 3, "x=1").await,
        Err(ProposeError::Session(SessionRefusal::AlreadyAcknowledged))
    );
    assert_eq!(value(&c, "x").await, "3");

    // An unknown session, and a closed one, are refused.
    assert_eq!(
        in_session(&c, 999_999, 1, 1, "x=9").await,
        Err(ProposeError::Session(SessionRefusal::UnknownSession))
    );
    let leader = c.leader().await;
    c.node(leader).close_session(session).await.unwrap();
    assert_eq!(
        in_session(&c, session, 4, 4, "x=4").await,
        Err(ProposeError::Session(SessionRefusal::UnknownSession))
    );
    assert_eq!(value(&c, "x").await, "3");
    c.shutdown_all().await;
}

#[tokio::test]
async fn session_calls_on_a_node_without_sessions_are_refused() {
    let mut c = Cluster::new(1).await;
    let leader = c.leader().await;
    assert_eq!(
        c.node(leader).open_session().await,
        Err(ProposeError::SessionsOff)
    );
    assert_eq!(
        c.node(leader).propose_in_session(1, 1, 1, b("x=1")).await,
        Err(ProposeError::SessionsOff)
    );
    c.shutdown_all().await;
}

/// A durable state machine: `k=v` commands on a map, answered with the previous value; its
/// state and applied index live in `Arc`s the test keeps, so they survive the node (as a
/// file would), and it counts every command it applies.
#[derive(Clone, Default)]
struct Durable(std::sync::Arc<std::sync::Mutex<DurableState>>);

#[derive(Default)]
struct DurableState {
    map: std::collections::BTreeMap<String, String>,
    applied: LogIndex,
    commands: u64,
}

impl Durable {
    fn commands(&self) -> u64 {
        self.0.lock().unwrap().commands
    }
}

impl StateMachine for Durable {
    type Error = std::convert::Infallible;

    async fn apply(&mut self, c: &[Command], up_to: LogIndex) -> Result<Vec<Bytes>, Self::Error> {
        let mut state = self.0.lock().unwrap();
        let answers = c
            .iter()
            .map(|c| {
                state.commands += 1;
                let text = String::from_utf8_lossy(&c.data).into_owned();
                let (k, v) = text.split_once('=').unwrap_or((&text, ""));
                let previous = state.map.insert(k.to_string(), v.to_string());
                Bytes::from(previous.unwrap_or_default())
            })
            .collect();
        state.applied = up_to;
        Ok(answers)
    }

    fn applied_index(&self) -> LogIndex {
        self.0.lock().unwrap().applied
    }

    fn durable(&self) -> bool {
        true
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        let state = self.0.lock().unwrap();
        let text: Vec<String> = state.map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        Ok(Bytes::from(text.join("\n")))
    }

    async fn install_snapshot(&mut self, data: Bytes, up_to: LogIndex) -> Result<(), Self::Error> {
        let mut state = self.0.lock().unwrap();
        state.map = String::from_utf8_lossy(&data)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        state.applied = up_to;
        Ok(())
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, Self::Error> {
        let state = self.0.lock().unwrap();
        let key = String::from_utf8_lossy(&request).into_owned();
        Ok(Bytes::from(
            state.map.get(&key).cloned().unwrap_or_default(),
        ))
    }
}

/// Member 1 of a single-member cluster with sessions on, `state` as its durable state
/// machine, snapshots in `snapshots` (none: no snapshot directory).
async fn durable_member(
    store: &MemoryStore,
    state: &Durable,
    snapshots: Option<&std::path::Path>,
    bootstrap: bool,
) -> Result<dengine_node::Node, StartError> {
    let net = dengine_node::testing::LocalNetwork::new();
    let mut b = NodeBuilder::new(settings(1))
        .log_store(store.clone())
        .state_machine(state.clone())
        .transport(net.transport(1))
        .client_sessions(SessionLimits::default());
    if let Some(dir) = snapshots {
        b = b.snapshot_dir(dir);
    }
    net.register(1, b.inbox());
    if bootstrap {
        b.bootstrap([(1, crate::common::address(1))].into()).await
    } else {
        b.start().await
    }
}

#[tokio::test]
async fn a_durable_state_machine_keeps_commands_exactly_once_across_restarts() {
    let snapshots = tempfile::tempdir().unwrap();
    let (store, state) = (MemoryStore::new(), Durable::default());
    let node = durable_member(&store, &state, Some(snapshots.path()), true)
        .await
        .unwrap();
    crate::common::wait_leader(&node).await;
    let session = node.open_session().await.unwrap();
    assert_eq!(
        node.propose_in_session(session, 1, 1, b("x=1"))
            .await
            .unwrap(),
        ""
    );
    // Command 1's response goes into the snapshot's table; command 2 comes after it.
    node.trigger_snapshot().await.unwrap();
    assert_eq!(
        node.propose_in_session(session, 2, 1, b("x=2"))
            .await
            .unwrap(),
        "1"
    );
    node.kill().await;

    // The state machine resumes at its own applied index; the table is rebuilt from the
    // snapshot and the log after it.
    let node = durable_member(&store, &state, Some(snapshots.path()), false)
        .await
        .unwrap();
    crate::common::wait_leader(&node).await;
    assert_eq!(
        node.propose_in_session(session, 1, 1, b("x=1"))
            .await
            .unwrap(),
        "",
        "a response in the snapshot's table is answered again"
    );
    assert_eq!(
        node.propose_in_session(session, 2, 1, b("x=2")).await,
        Err(ProposeError::ResponseLost),
        "applied after the snapshot: applied once, its response gone"
    );
    assert_eq!(state.commands(), 2, "no retry reached the state machine");
    assert_eq!(
        node.propose_in_session(session, 3, 3, b("x=3"))
            .await
            .unwrap(),
        "2"
    );
    // Below first_unanswered: refused, as on any member.
    assert_eq!(
        node.propose_in_session(session, 2, 3, b("x=2")).await,
        Err(ProposeError::Session(SessionRefusal::AlreadyAcknowledged))
    );
    node.shutdown().await;

    // Without any snapshot at all the table is rebuilt from the whole log.
    let (store, state) = (MemoryStore::new(), Durable::default());
    let empty = tempfile::tempdir().unwrap();
    let node = durable_member(&store, &state, Some(empty.path()), true)
        .await
        .unwrap();
    crate::common::wait_leader(&node).await;
    let session = node.open_session().await.unwrap();
    node.propose_in_session(session, 1, 1, b("y=1"))
        .await
        .unwrap();
    node.kill().await;
    let node = durable_member(&store, &state, Some(empty.path()), false)
        .await
        .unwrap();
    crate::common::wait_leader(&node).await;
    assert_eq!(
        node.propose_in_session(session, 1, 1, b("y=1")).await,
        Err(ProposeError::ResponseLost)
    );
    assert_eq!(state.commands(), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn sessions_with_a_durable_state_machine_need_snapshot_files() {
    let err = durable_member(&MemoryStore::new(), &Durable::default(), None, true)
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::SessionsNeedSnapshots), "{err}");
    assert!(err.to_string().contains("snapshot"), "{err}");
}
