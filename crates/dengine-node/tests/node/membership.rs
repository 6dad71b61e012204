//! Membership changes and leader transfer while a write load runs: every acknowledged write
//! must be there at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::{NodeId, Role};
use dengine_node::{Consistency, Node, ProposeError};

use crate::common::{Cluster, PATIENCE, address, eventually};

/// Writes `w{i}=1` in a loop to whichever node leads, recording the acknowledged ones.
fn start_load(
    nodes: Arc<Mutex<BTreeMap<NodeId, Node>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut target: NodeId = 1;
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let node = {
                let nodes = nodes.lock().unwrap();
                nodes
                    .get(&target)
                    .or_else(|| nodes.values().next())
                    .cloned()
            };
            let Some(node) = node else { break };
            match node.propose(Bytes::from(format!("w{i}=1"))).await {
                Ok(_) => {
                    acked.push(i);
                    i += 1;
                }
                Err(e) if e.leader().is_some() => target = e.leader().map_or(target, |(l, _)| l),
                Err(ProposeError::Refused(_)) | Err(ProposeError::ShuttingDown) => {
                    // Try the next node.
                    target = {
                        let nodes = nodes.lock().unwrap();
                        nodes
                            .keys()
                            .copied()
                            .find(|&id| id > target)
                            .or_else(|| nodes.keys().next().copied())
                            .unwrap_or(1)
                    };
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Outcome unknown: use a fresh key so acknowledged writes stay unambiguous.
                Err(_) => i += 1,
            }
        }
        acked
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_remove_and_transfer_under_load() {
    let mut c = Cluster::new(3).await;
    c.leader().await;
    let shared = Arc::new(Mutex::new(c.nodes.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(shared.clone(), stop.clone());

    // Node 4 joins: started empty, then added as a learner by the leader.
    let joiner = c.join(4).await;
    assert_eq!(
        c.net.peers_of(4).len(),
        3,
        "join told the transport where the members are"
    );
    let m = c
        .on_leader("add learner 4", |n| async move {
            n.add_learner(4, address(4)).await
        })
        .await;
    assert!(m.learners.contains(&4));
    assert_eq!(m.address(4), Some(address(4).as_str()));
    // The learner catches up.
    eventually("the learner to catch up", || {
        let c = &c;
        async move {
            let leader = c.current_leader().await?;
            let st = c.status(leader).await?;
            let lag = st.peers.get(&4)?.lag;
            (lag < 20).then_some(())
        }
    })
    .await;
    // Every member's transport learned where node 4 is.
    for id in 1..=3 {
        eventually("every member to learn node 4's address", || {
            let net = c.net.clone();
            async move { (net.peers_of(id).get(&4) == Some(&address(4))).then_some(()) }
        })
        .await;
    }

    let m = c
        .on_leader("promote 4", |n| async move { n.promote(4).await })
        .await;
    assert!(m.voters.contains(&4) && !m.is_joint());
    shared.lock().unwrap().insert(4, joiner.clone());

    // Remove a voter that does not lead, then stop it.
    let leader = c.leader().await;
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    let m = c
        .on_leader("remove a voter", |n| async move { n.remove(victim).await })
        .await;
    assert!(!m.contains(victim));
    shared.lock().unwrap().remove(&victim);
    c.shutdown(victim).await;
    // The remaining members' transports forgot the removed node.
    for &id in c.nodes.keys() {
        eventually("the removed node to be forgotten", || {
            let net = c.net.clone();
            async move { (!net.peers_of(id).contains_key(&victim)).then_some(()) }
        })
        .await;
    }

    // Hand leadership to the new node.
    c.on_leader(
        "transfer to 4",
        |n| async move { n.transfer_leader(4).await },
    )
    .await;
    eventually("node 4 to lead", || {
        let joiner = joiner.clone();
        async move {
            let st = joiner.status().await.ok()?;
            (st.role == Role::Leader).then_some(())
        }
    })
    .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let acked = load.await.unwrap();
    assert!(
        acked.len() >= 10,
        "the load made progress: {} writes",
        acked.len()
    );

    // Every acknowledged write is on every remaining member.
    let leader = c.leader().await;
    let commit = c.status(leader).await.unwrap().commit_index;
    let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
    for &id in &ids {
        c.wait_applied(id, commit).await;
        for &i in &acked {
            let v = c.read(id, &format!("w{i}"), Consistency::Stale).await;
            assert_eq!(v, "1", "write w{i} acknowledged but missing on node {id}");
        }
    }
    let st = c.status(leader).await.unwrap();
    assert_eq!(st.membership.voters.len(), 3);
    assert!(st.membership.voters.contains(&4));
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership() {
    let mut c = Cluster::new(3).await;
    c.propose("a=1").await;
    let old = c.leader().await;
    let to = (1..=3).find(|&id| id != old).unwrap();
    c.node(old).transfer_leader(to).await.unwrap();
    let new = c.leader().await;
    assert_eq!(new, to);
    // Transferring to a non-member is refused.
    assert!(c.node(new).transfer_leader(9).await.is_err());
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_removes_itself_answers_the_removal_then_stops() {
    // Before, the caller got no answer (the leader stopped with the change still waiting)
    // and saw a timeout although the removal had taken effect.
    let mut c = Cluster::new(3).await;
    c.propose("a=1").await;
    let old = c.leader().await;
    let membership = tokio::time::timeout(PATIENCE, c.node(old).remove(old))
        .await
        .expect("an answer, not a hang")
        .expect("the removal took effect");
    assert!(!membership.contains(old), "{membership:?}");
    assert_eq!(membership.all_voters().len(), 2);
    tokio::time::timeout(PATIENCE, c.node(old).stopped())
        .await
        .expect("the removed leader stops");
    assert!(
        c.node(old)
            .fatal_error()
            .unwrap()
            .contains("removed from the cluster")
    );
    c.kill(old).await;
    let new = c.leader().await;
    assert_ne!(new, old);
    c.propose("b=2").await;
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_changes_are_published_to_subscribers() {
    let mut c = Cluster::new(3).await;
    c.propose("a=1").await;
    let old = c.leader().await;
    let watcher = (1..=3).find(|&id| id != old).unwrap();
    let mut leadership = c.node(watcher).watch_leadership();
    let now = leadership.borrow_and_update().clone();
    assert_eq!(now.leader, Some(old));
    assert_eq!(now.leader_address.as_deref(), Some(address(old).as_str()));
    assert_eq!(now.membership.all_voters().len(), 3);

    // A leader transfer reaches the subscriber as a change: a new term, a new leader.
    let to = (1..=3).find(|&id| id != old && id != watcher).unwrap();
    c.node(old).transfer_leader(to).await.unwrap();
    let moved = tokio::time::timeout(PATIENCE, async {
        loop {
            leadership.changed().await.expect("the node is running");
            let now = leadership.borrow_and_update().clone();
            if now.leader == Some(to) {
                return now;
            }
        }
    })
    .await
    .expect("the subscriber sees the new leader");
    assert!(moved.term > now.term);
    assert_eq!(moved.role, Role::Follower);

    // A membership change too.
    c.node(to).add_learner(4, address(4)).await.unwrap();
    let grown = tokio::time::timeout(PATIENCE, async {
        loop {
            leadership.changed().await.expect("the node is running");
            let now = leadership.borrow_and_update().clone();
            if now.membership.is_learner(4) {
                return now;
            }
        }
    })
    .await
    .expect("the subscriber sees the new learner");
    assert_eq!(grown.leader, Some(to));

    // It ends when the node stops (after any change published while stopping).
    c.shutdown(watcher).await;
    tokio::time::timeout(PATIENCE, async {
        while leadership.changed().await.is_ok() {}
    })
    .await
    .expect("the subscription ends when the node stops");
    c.shutdown_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joint_change_replaces_several_voters_at_once() {
    use dengine_core::MembershipChange::{AddLearner, AddVoter, Remove};
    let mut c = Cluster::new(3).await;
    c.propose("before=1").await;
    c.join(4).await;
    c.join(5).await;
    let addresses: BTreeMap<NodeId, String> = [(4, address(4)), (5, address(5))].into();
    let m = c
        .on_leader("add two learners", |n| {
            let addresses = addresses.clone();
            async move {
                n.change_membership(vec![AddLearner(4), AddLearner(5)], addresses)
                    .await
            }
        })
        .await;
    assert!(m.learners.contains(&4) && m.learners.contains(&5));
    let leader = c.leader().await;
    let out = (1..=3).find(|&id| id != leader).unwrap();
    let m = c
        .on_leader("swap voters", |n| async move {
            n.change_membership(vec![AddVoter(4), AddVoter(5), Remove(out)], BTreeMap::new())
                .await
        })
        .await;
    assert!(!m.is_joint());
    assert_eq!(m.voters.len(), 4);
    assert!(!m.contains(out));
    c.shutdown(out).await;
    c.propose("after=1").await;
    for id in [4, 5] {
        assert_eq!(c.read(id, "before", Consistency::Linearizable).await, "1");
        assert_eq!(c.read(id, "after", Consistency::Linearizable).await, "1");
    }
    c.shutdown_all().await;
}
