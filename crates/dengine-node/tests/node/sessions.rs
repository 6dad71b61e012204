//! Client sessions (thesis §6.3) through real nodes: a command retried in its session is
//! applied once — after its leader is killed, and after every member restarts from snapshots
//! that compacted its session's registration away — and the refusals say why.

use bytes::Bytes;
use dengine_core::store::{Command, MemoryStateMachine, MemoryStore};
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

/// A state machine that says it keeps its state across restarts.
#[derive(Default)]
struct Durable(MemoryStateMachine);

impl StateMachine for Durable {
    type Error = <MemoryStateMachine as StateMachine>::Error;

    async fn apply(&mut self, c: &[Command], up_to: LogIndex) -> Result<Vec<Bytes>, Self::Error> {
        self.0.apply(c, up_to).await
    }

    fn durable(&self) -> bool {
        true
    }

    async fn snapshot(&mut self) -> Result<Bytes, Self::Error> {
        self.0.snapshot().await
    }

    async fn install_snapshot(&mut self, data: Bytes, up_to: LogIndex) -> Result<(), Self::Error> {
        self.0.install_snapshot(data, up_to).await
    }

    async fn query(&self, request: Bytes) -> Result<Bytes, Self::Error> {
        self.0.query(request).await
    }
}

#[tokio::test]
async fn sessions_with_a_durable_state_machine_are_refused_at_start() {
    let err = NodeBuilder::new(settings(1))
        .log_store(MemoryStore::new())
        .state_machine(Durable::default())
        .transport(dengine_node::testing::LocalNetwork::new().transport(1))
        .client_sessions(SessionLimits::default())
        .bootstrap([(1, "local-1".to_string())].into())
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::SessionsNeedSnapshots), "{err}");
    assert!(err.to_string().contains("durable"), "{err}");
}
