//! Forwarded writes in a client session (Raft thesis §6.3): the session's numbers
//! ([`SessionSlot`]) and what each answer means for the write ([`local`], [`remote`]); the
//! resending loop is `NodeBackend::forward_exactly_once` (`node_backend.rs`). Used when the members run with client
//! sessions: each write a follower forwards is numbered in the follower's own session, so
//! the follower can resend one whose outcome is unknown — the leader crashed, the stream
//! broke, the answer did not come — to whichever member leads next, and it is still applied
//! once. Without sessions such a write is reported to the client as of unknown outcome.
//!
//! The follower opens its session through the leader (`Forward/OpenSession`, or its own node
//! when it leads by then), numbers writes 1, 2, 3, ..., and tells the leader the lowest
//! number it has no answer for, so the cluster forgets answered ones. A write is resent until
//! it is answered or [`FORWARD_DEADLINE`](crate::forward::FORWARD_DEADLINE) passes. If the
//! session expired meanwhile, a write never taken by any leader is sent again in a new
//! session; one that may have been taken is reported as of unknown outcome. A leader that
//! restarted after applying a write, with the keys in the durable state, may only be able to
//! say that it was applied ("response lost"): the client gets a timeout that says so.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::ProposeError as Refusal;
use dengine_node::{ProposeError, SessionRefusal};

use crate::backend::BackendError;

/// The forwarding member's session: its id and the numbers handed out and not yet answered.
#[derive(Debug, Default)]
pub(crate) struct SessionSlot {
    open: parking_lot::Mutex<Option<Open>>,
    /// Held while a session is being opened, so that concurrent writes share one.
    pub(crate) opening: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct Open {
    id: u64,
    next: u64,
    unanswered: BTreeSet<u64>,
}

impl SessionSlot {
    /// Session `id` was just opened: numbers start at 1.
    pub(crate) fn install(&self, id: u64) {
        *self.open.lock() = Some(Open {
            id,
            next: 1,
            unanswered: BTreeSet::new(),
        });
    }

    /// The next number of the open session, if one is open.
    pub(crate) fn number(&self) -> Option<(u64, u64)> {
        let mut open = self.open.lock();
        let o = open.as_mut()?;
        let seq = o.next;
        o.next += 1;
        o.unanswered.insert(seq);
        Some((o.id, seq))
    }

    /// The lowest number of session `id` without an answer (`seq` itself at most).
    pub(crate) fn first_unanswered(&self, id: u64, seq: u64) -> u64 {
        match &*self.open.lock() {
            Some(o) if o.id == id => o.unanswered.first().copied().unwrap_or(seq).min(seq),
            _ => seq,
        }
    }

    /// Number `seq` of session `id` is answered (or given up).
    pub(crate) fn settle(&self, id: u64, seq: u64) {
        if let Some(o) = self.open.lock().as_mut()
            && o.id == id
        {
            o.unanswered.remove(&seq);
        }
    }

    /// Session `id` is gone (expired): the next write opens another.
    pub(crate) fn forget(&self, id: u64) {
        let mut open = self.open.lock();
        if open.as_ref().is_some_and(|o| o.id == id) {
            *open = None;
        }
    }
}

/// What one attempt of a session's write came to.
pub(crate) enum Attempt {
    /// The answer, or a refusal to pass on: done.
    Done(Result<Bytes, BackendError>),
    /// Try again (at the leader as it is then); `taken`: this attempt may have been applied.
    Retry { taken: bool, why: String },
    /// The session no longer exists: this attempt was not applied.
    SessionGone,
}

/// The client's message for a write that was applied but whose response the leader lost.
pub(crate) const RESPONSE_LOST: &str = "the write was applied once, but its response was lost when the \
                             leader restarted; read the key to see its effect";

/// 10 ms doubling to 200 ms.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(10u64.saturating_mul(1 << failures.min(5)).min(200))
}

/// What this node's own answer to a session's write means.
pub(crate) fn local(result: Result<Bytes, ProposeError>) -> Attempt {
    match result {
        Ok(response) => Attempt::Done(Ok(response)),
        Err(ProposeError::ResponseLost) => {
            Attempt::Done(Err(BackendError::Timeout(RESPONSE_LOST.into())))
        }
        Err(ProposeError::Session(SessionRefusal::UnknownSession)) => Attempt::SessionGone,
        Err(ProposeError::Session(SessionRefusal::TooManyUnacknowledged)) => Attempt::Retry {
            taken: false,
            why: "too many unanswered writes in the session".into(),
        },
        Err(e @ (ProposeError::Session(_) | ProposeError::SessionsOff)) => Attempt::Done(Err(
            BackendError::Internal(format!("forwarding session: {e}")),
        )),
        Err(ProposeError::Refused(Refusal::TooLarge { .. })) => Attempt::Done(Err(
            BackendError::InvalidArgument("request is too large".into()),
        )),
        Err(e @ (ProposeError::Refused(_) | ProposeError::Busy(_))) => Attempt::Retry {
            taken: false,
            why: e.to_string(),
        },
        // Timeout, interrupted, stopping: it may have been taken; the session makes a resend
        // safe.
        Err(e) => Attempt::Retry {
            taken: true,
            why: e.to_string(),
        },
    }
}

/// What the leader's answer to a forwarded write in a session means (`kind`: what the
/// session said, [`FORWARD_KIND`](crate::forward::FORWARD_KIND)).
pub(crate) fn remote(answer: Result<Bytes, BackendError>, kind: &str) -> Attempt {
    match (answer, kind) {
        (Ok(response), _) => Attempt::Done(Ok(response)),
        (Err(_), "response-lost") => {
            Attempt::Done(Err(BackendError::Timeout(RESPONSE_LOST.into())))
        }
        (Err(_), "session-unknown") => Attempt::SessionGone,
        (Err(e), "session-too-many") => Attempt::Retry {
            taken: false,
            why: e.to_string(),
        },
        (Err(e), k) if !k.is_empty() => Attempt::Done(Err(BackendError::Internal(format!(
            "forwarding session ({k}): {e}"
        )))),
        // Not sent: certainly not applied.
        (Err(e @ (BackendError::Unavailable(_) | BackendError::NoLeader)), _) => Attempt::Retry {
            taken: false,
            why: e.to_string(),
        },
        (Err(e @ BackendError::NotLeader { .. }), _) => Attempt::Retry {
            taken: false,
            why: e.to_string(),
        },
        // The stream broke or the answer did not come: outcome unknown, resend.
        (Err(e @ BackendError::Timeout(_)), _) => Attempt::Retry {
            taken: true,
            why: e.to_string(),
        },
        // The leader's own failure: not leading any more, timed out, stopping or stopped —
        // resent to whichever member leads next — or a refusal of the write itself.
        (Err(e @ BackendError::Forwarded { code, .. }), _) => match code {
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Internal
            | tonic::Code::Unknown
            | tonic::Code::Aborted
            | tonic::Code::Cancelled => Attempt::Retry {
                taken: true,
                why: e.to_string(),
            },
            _ => Attempt::Done(Err(e)),
        },
        (Err(e), _) => Attempt::Done(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which answers end a session's forwarded write and which resend it: a resend is
    /// always safe in the session, so only an answer, a refusal of the write itself, a lost
    /// response or a gone session end it.
    #[test]
    fn each_answer_ends_or_resends_the_write_as_documented() {
        let end = |a: &Attempt| matches!(a, Attempt::Done(_));
        let resend =
            |a: &Attempt, t: bool| matches!(a, Attempt::Retry { taken, .. } if *taken == t);
        assert!(end(&remote(Ok(Bytes::new()), "")));
        assert!(matches!(
            remote(Err(BackendError::Timeout("x".into())), "response-lost"),
            Attempt::Done(Err(BackendError::Timeout(m))) if m.contains("applied once")
        ));
        assert!(matches!(
            remote(
                Err(BackendError::Unavailable("x".into())),
                "session-unknown"
            ),
            Attempt::SessionGone
        ));
        assert!(resend(
            &remote(Err(BackendError::Timeout("stream broke".into())), ""),
            true
        ));
        assert!(resend(
            &remote(Err(BackendError::Unavailable("not sent".into())), ""),
            false
        ));
        let leader_said = |code| BackendError::Forwarded {
            code,
            message: "etcdserver: x".into(),
        };
        assert!(resend(
            &remote(Err(leader_said(tonic::Code::Unavailable)), ""),
            true
        ));
        assert!(end(&remote(
            Err(leader_said(tonic::Code::InvalidArgument)),
            ""
        )));
        assert!(end(&remote(
            Err(leader_said(tonic::Code::FailedPrecondition)),
            "session-acknowledged"
        )));

        assert!(matches!(
            local(Err(ProposeError::Session(SessionRefusal::UnknownSession))),
            Attempt::SessionGone
        ));
        assert!(resend(&local(Err(ProposeError::Timeout)), true));
        assert!(resend(&local(Err(ProposeError::Busy("x"))), false));
        assert!(matches!(
            local(Err(ProposeError::ResponseLost)),
            Attempt::Done(Err(BackendError::Timeout(_)))
        ));
    }

    #[test]
    fn numbers_count_up_and_the_lowest_unanswered_one_is_reported() {
        let slot = SessionSlot::default();
        assert_eq!(slot.number(), None, "no session yet");
        *slot.open.lock() = Some(Open {
            id: 7,
            next: 1,
            unanswered: BTreeSet::new(),
        });
        assert_eq!(slot.number(), Some((7, 1)));
        assert_eq!(slot.number(), Some((7, 2)));
        assert_eq!(slot.first_unanswered(7, 2), 1);
        slot.settle(7, 1);
        assert_eq!(slot.first_unanswered(7, 2), 2);
        slot.forget(8);
        assert!(
            slot.open.lock().is_some(),
            "another session's loss changes nothing"
        );
        slot.forget(7);
        assert_eq!(slot.number(), None);
    }
}
