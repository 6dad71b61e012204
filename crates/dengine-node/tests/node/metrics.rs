//! The runtime records the documented metrics (by the names in `metric_names`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::{Inbox, Message, MessageBody};
use dengine_node::NodeBuilder;
use dengine_node::metric_names as m;
use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    with_local_recorder,
};

use crate::common::{Cluster, catch_up_by_snapshot, compacting, settings};

/// Remembers every metric registered, as `name{label=value,...}`.
#[derive(Clone, Default)]
struct Names(Arc<Mutex<BTreeSet<String>>>);

impl Names {
    fn note(&self, key: &Key) {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = if labels.is_empty() {
            key.name().to_string()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        self.0.lock().unwrap().insert(name);
    }
}

impl Recorder for Names {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.note(key);
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.note(key);
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.note(key);
        Histogram::noop()
    }
}

#[test]
fn the_documented_metrics_are_recorded() {
    let names = Names::default();
    // A local recorder sees what this thread records: run every node on one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    with_local_recorder(&names, || {
        rt.block_on(async {
            let mut c = Cluster::with_settings(3, compacting).await;
            let (leader, _) = catch_up_by_snapshot(&mut c).await;
            let too_large = Bytes::from(vec![0u8; 2 << 20]);
            assert!(c.node(leader).propose(too_large).await.is_err());
            tokio::time::sleep(Duration::from_millis(400)).await;
            c.shutdown_all().await;

            let mut s = settings(9);
            s.raft.inbox_len = 1;
            let builder = NodeBuilder::new(s);
            let inbox = builder.inbox();
            let msg = Message {
                from: 2,
                to: 9,
                term: 1,
                body: MessageBody::TimeoutNow,
            };
            let _ = inbox.deliver(msg.clone());
            let _ = inbox.deliver(msg);
            drop(builder);
        });
    });
    let names = names.0.lock().unwrap().clone();
    let expected = [
        m::TERM.to_string(),
        m::ROLE.to_string(),
        m::HAS_LEADER.to_string(),
        m::IS_LEADER.to_string(),
        format!("{}{{role=leader}}", m::ROLE_STATE),
        format!("{}{{role=follower}}", m::ROLE_STATE),
        m::PENDING_PROPOSALS.to_string(),
        m::LOG_ENTRIES.to_string(),
        m::COMMIT_INDEX.to_string(),
        // Never incremented in this run: exported at zero from the start.
        m::PEER_REGRESSIONS_TOTAL.to_string(),
        m::PEER_INCARNATION_CHANGES_TOTAL.to_string(),
        m::PEER_MESSAGES_REFUSED_TOTAL.to_string(),
        m::LEASE_READS_TOTAL.to_string(),
        m::APPLIED_INDEX.to_string(),
        m::LEADER_CHANGES_TOTAL.to_string(),
        format!("{}{{result=ok}}", m::PROPOSALS_TOTAL),
        format!("{}{{result=too_large}}", m::PROPOSALS_TOTAL),
        m::SNAPSHOTS_SENT_TOTAL.to_string(),
        m::SNAPSHOTS_INSTALLED_TOTAL.to_string(),
        format!("{}{{reason=inbox_full}}", m::MESSAGES_DROPPED_TOTAL),
        m::PROPOSAL_LATENCY_SECONDS.to_string(),
        m::COMMIT_LATENCY_SECONDS.to_string(),
        m::APPEND_LATENCY_SECONDS.to_string(),
        m::APPEND_BATCH_ENTRIES.to_string(),
        m::APPLY_BATCH_ENTRIES.to_string(),
    ];
    let rtt = format!("{}{{peer=", m::PEER_ROUND_TRIP_SECONDS);
    assert!(
        names.iter().any(|n| n.starts_with(&rtt)),
        "no peer round-trip time in {names:?}"
    );
    for name in expected {
        assert!(names.contains(&name), "{name} not recorded; got {names:?}");
    }
    assert!(
        names
            .iter()
            .any(|n| n.starts_with(&format!("{}{{peer=", m::REPLICATION_LAG_ENTRIES))),
        "{names:?}"
    );
}
