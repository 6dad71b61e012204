//! What every target needs around its input: a runtime, a scratch directory, a node.

use std::time::Duration;

use dengine_core::StateMachine;
use dengine_core::store::MemoryStore;
use dengine_node::testing::{LocalNetwork, LocalTransport};
use dengine_node::{Node, NodeBuilder, NodeConfig};

/// A current-thread runtime for one input.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    }
}

/// A current-thread runtime on tokio's paused clock: elections and timeouts pass at once, and
/// one input always runs the same way.
pub(crate) fn paused_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime: {e}"),
    }
}

/// A node's builder with what the targets' single-member nodes share.
pub(crate) type SingleMember<M> = NodeBuilder<MemoryStore, M, LocalTransport>;

/// Founds a single-member cluster (member 1, an in-memory log, `state_machine`, a proposal
/// timeout of 2 s, and whatever `more` adds to the builder) and waits until the member leads.
/// The network must live as long as the node.
pub(crate) async fn leading_single_member<M: StateMachine>(
    state_machine: M,
    more: impl FnOnce(SingleMember<M>) -> SingleMember<M>,
) -> (Node, LocalNetwork) {
    let mut settings = NodeConfig::new(1);
    settings.client.propose_timeout_ms = 2_000;
    let net = LocalNetwork::new();
    let builder = NodeBuilder::new(settings)
        .log_store(MemoryStore::new())
        .state_machine(state_machine)
        .transport(net.transport(1));
    net.register(1, builder.inbox());
    let node = match more(builder)
        .bootstrap([(1, "node-1:7000".to_string())].into())
        .await
    {
        Ok(n) => n,
        Err(e) => panic!("cannot start a single-member node: {e}"),
    };
    // A single member elects itself after one election timeout.
    for _ in 0..1000 {
        if node.status().await.is_ok_and(|s| s.leader == Some(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (node, net)
}

/// A temporary directory, in memory (`/dev/shm`) where there is one: the storage targets write
/// and sync small files for every input.
pub(crate) fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("dengine-fuzz-")
            .tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix("dengine-fuzz-").tempdir()
    };
    match dir {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}
