//! The runtime's spans: elections (with their outcome), snapshots built, sent and installed,
//! and the admin operations, seen by a `tracing` layer (what an OTLP exporter would export);
//! and its log lines when a member's leader changes.
//!
//! A test binary of its own, with the subscriber installed for the whole process: `tracing`
//! caches per call site whether anyone is interested, and with a thread-scoped subscriber
//! that cache raced with the other tests of the `node` binary running in parallel (spans went
//! missing in about one run of three).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

#[path = "node/common.rs"]
#[allow(dead_code)]
mod common;

use std::sync::{Arc, Mutex};

use dengine_node::Consistency;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

use crate::common::{Cluster, catch_up_by_snapshot, compacting};

/// Remembers every span created (by name), every `outcome` recorded on one, and the message
/// of every event.
#[derive(Clone, Default)]
struct Spans {
    names: Arc<Mutex<Vec<String>>>,
    outcomes: Arc<Mutex<Vec<String>>>,
    messages: Arc<Mutex<Vec<String>>>,
}

struct Message<'a>(&'a Mutex<Vec<String>>);

impl Visit for Message<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.lock().unwrap().push(format!("{value:?}"));
        }
    }
}

struct Outcome<'a>(&'a Mutex<Vec<String>>);

impl Visit for Outcome<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "outcome" {
            self.0.lock().unwrap().push(value.to_owned());
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl Layer<Registry> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, Registry>) {
        self.names
            .lock()
            .unwrap()
            .push(attrs.metadata().name().to_owned());
    }
    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, Registry>) {
        values.record(&mut Outcome(&self.outcomes));
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, Registry>) {
        event.record(&mut Message(&self.messages));
    }
}

#[test]
fn elections_snapshots_and_admin_operations_have_spans() {
    let spans = Spans::default();
    let subscriber = Registry::default().with(spans.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Cluster::with_settings(3, compacting).await;
        let (leader, follower) = catch_up_by_snapshot(&mut c).await;
        c.node(leader).trigger_snapshot().await.unwrap();
        c.node(leader).transfer_leader(follower).await.unwrap();
        c.node(follower)
            .add_learner(9, crate::common::address(9))
            .await
            .unwrap();
        assert_eq!(c.read(leader, "a", Consistency::Linearizable).await, "1");
        c.shutdown_all().await;
    });
    let names = spans.names.lock().unwrap().clone();
    for expected in [
        "election",
        "snapshot_build",
        "snapshot_send",
        "snapshot_install",
        "trigger_snapshot",
        "transfer_leader",
        "change_membership",
        "propose",
        "read",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no {expected} span among {names:?}"
        );
    }
    let outcomes = spans.outcomes.lock().unwrap().clone();
    assert!(outcomes.iter().any(|o| o == "won"), "{outcomes:?}");
    // The members that followed the first leader said so; at the transfer the old leader
    // stepped down to a higher term before it heard who won, and said that too.
    let messages = spans.messages.lock().unwrap().clone();
    for expected in [
        "became leader",
        "following a new leader",
        "no leader known: an election is under way or this member is cut off",
    ] {
        let seen = messages.iter().filter(|m| *m == expected).count();
        assert!(seen > 0, "no {expected:?} line among {messages:?}");
    }
}
