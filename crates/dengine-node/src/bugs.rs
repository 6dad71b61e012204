//! Deliberate runtime bugs, compiled in only with the `fault-injection` feature, so the
//! simulation of the real runtime (`dengine_sim::runtime`) can show that it catches them
//! (`docs/correctness.md`). The protocol's own bugs are `dengine_core::InjectedBug`.

/// A runtime mistake that [`NodeBuilder::inject_bug`](crate::NodeBuilder::inject_bug)
/// re-introduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuntimeBug {
    /// Tick the core once per timer delivery instead of once per elapsed `raft.tick_ms`:
    /// after a pause (SIGSTOP, a long GC-like stall, a VM migration) the loop takes queued
    /// requests after the first catch-up tick, so a leader that was deposed while it was
    /// stopped still counts its lease as valid and serves a stale lease read (thesis §6.4.1).
    NoTickCatchUp,
    /// Report a log write to the core as durable as soon as it is handed to the log store,
    /// before the store's sync has completed (Figure 2: respond only after persisting).
    AckBeforeSync,
    /// Carry on after a log write or sync failed, as if it had succeeded (the "fsyncgate"
    /// mistake: after a failed `fsync` the kernel may have dropped the dirty pages, so the data
    /// is not durable, and a retried `fsync` reports success).
    IgnoreFailedSync,
}

impl RuntimeBug {
    /// Every injectable runtime bug.
    pub const ALL: [RuntimeBug; 3] = [
        RuntimeBug::NoTickCatchUp,
        RuntimeBug::AckBeforeSync,
        RuntimeBug::IgnoreFailedSync,
    ];

    /// The bug's name in kebab case, as the simulator's command line spells it.
    pub fn name(self) -> &'static str {
        match self {
            RuntimeBug::NoTickCatchUp => "no-tick-catch-up",
            RuntimeBug::AckBeforeSync => "ack-before-sync",
            RuntimeBug::IgnoreFailedSync => "ignore-failed-sync",
        }
    }

    /// Parses [`RuntimeBug::name`].
    pub fn from_name(name: &str) -> Option<RuntimeBug> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for bug in RuntimeBug::ALL {
            assert_eq!(RuntimeBug::from_name(bug.name()), Some(bug));
        }
        assert_eq!(RuntimeBug::from_name("no-such-bug"), None);
    }
}
