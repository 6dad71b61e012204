//! How the client service says what happened to a request: a gRPC status whose
//! `dengine-error` metadata kind tells whether the command was applied
//! (`proto/dengine/client/v1/client.proto` lists the kinds), so that a client never has to
//! parse a message to decide whether it may retry. Shared by the client service and the
//! forwarding between members, which passes a leader's refusal on unchanged.

use dengine_core::sessions::SessionRefusal;
use dengine_net_grpc::tonic::metadata::{Ascii, MetadataMap, MetadataValue};
use dengine_net_grpc::tonic::{Code, Status};
use dengine_node::{ProposeError, ReadError};

/// The metadata key of an error's kind.
pub const ERROR_KIND: &str = "dengine-error";
/// The metadata key of the leader's id on a `not-leader` refusal.
pub const LEADER_ID: &str = "dengine-leader";

/// A refusal with its kind (and the leader's id, for `not-leader`) in the metadata.
pub(crate) fn refusal(
    code: Code,
    kind: &'static str,
    leader: Option<u64>,
    message: String,
) -> Status {
    with_kind(code, MetadataValue::from_static(kind), leader, message)
}

/// A refusal whose kind came from another member (a leader's answer to a forwarded
/// request), passed on as it came. A kind that is not a word of printable ASCII is
/// passed on as `unknown-outcome`: nothing is then assumed about the command.
pub(crate) fn status_of(code: Code, kind: &str, leader: Option<u64>, message: String) -> Status {
    let readable = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_graphic());
    let kind = match kind.parse::<MetadataValue<Ascii>>() {
        Ok(kind) if readable => kind,
        _ => MetadataValue::from_static("unknown-outcome"),
    };
    with_kind(code, kind, leader, message)
}

/// The text of metadata `key` of `status` (its kind, its leader), if it has readable text.
pub(crate) fn metadata_text(status: &Status, key: &str) -> Option<String> {
    status
        .metadata()
        .get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn with_kind(
    code: Code,
    kind: MetadataValue<Ascii>,
    leader: Option<u64>,
    message: String,
) -> Status {
    let mut metadata = MetadataMap::new();
    metadata.insert(ERROR_KIND, kind);
    if let Some(leader) = leader {
        metadata.insert(LEADER_ID, MetadataValue::from(leader));
    }
    Status::with_metadata(code, message, metadata)
}

/// The gRPC status of a failed proposal or session call.
pub fn propose_status(e: ProposeError) -> Status {
    use dengine_core::ProposeError as Core;
    let message = e.to_string();
    match e {
        ProposeError::Refused(Core::NotLeader {
            leader: Some(leader),
            ..
        }) => refusal(
            Code::FailedPrecondition,
            "not-leader",
            Some(leader),
            message,
        ),
        ProposeError::Refused(Core::NotLeader { leader: None, .. })
        | ProposeError::Refused(Core::TransferInProgress { .. })
        | ProposeError::Refused(Core::UncommittedLimit { .. })
        | ProposeError::Busy(_) => refusal(Code::Unavailable, "retry", None, message),
        ProposeError::Refused(Core::TooLarge { .. }) => {
            refusal(Code::InvalidArgument, "too-large", None, message)
        }
        ProposeError::Timeout => refusal(Code::DeadlineExceeded, "unknown-outcome", None, message),
        ProposeError::Interrupted(_)
        | ProposeError::ShuttingDown
        | ProposeError::Stopped { .. } => {
            refusal(Code::Unavailable, "unknown-outcome", None, message)
        }
        ProposeError::Session(why) => {
            let (code, kind) = match why {
                SessionRefusal::UnknownSession => (Code::FailedPrecondition, "session-unknown"),
                SessionRefusal::AlreadyAcknowledged => {
                    (Code::FailedPrecondition, "session-acknowledged")
                }
                SessionRefusal::TooManyUnacknowledged => {
                    (Code::ResourceExhausted, "session-too-many")
                }
                SessionRefusal::InvalidSequence | SessionRefusal::Malformed => {
                    (Code::InvalidArgument, "session-invalid")
                }
            };
            refusal(code, kind, None, message)
        }
        ProposeError::SessionsOff => {
            refusal(Code::FailedPrecondition, "sessions-off", None, message)
        }
        ProposeError::ResponseLost => {
            refusal(Code::FailedPrecondition, "response-lost", None, message)
        }
        // A kind added later: its outcome is not known to this mapping.
        _ => refusal(Code::Unavailable, "unknown-outcome", None, message),
    }
}

/// The gRPC status of a failed read. Nothing of a read changes state, so every kind but a
/// failed query may be retried.
pub fn read_status(e: ReadError) -> Status {
    let message = e.to_string();
    match e {
        ReadError::StateMachine(_) => refusal(Code::Internal, "read-failed", None, message),
        ReadError::Timeout => refusal(Code::DeadlineExceeded, "retry", None, message),
        _ => refusal(Code::Unavailable, "retry", None, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dengine_core::ProposeError as Core;

    fn kind(status: &Status) -> (&'static str, Code, Option<String>) {
        let meta = |key: &str| metadata_text(status, key);
        let kind = match meta(ERROR_KIND).as_deref() {
            Some("not-leader") => "not-leader",
            Some("retry") => "retry",
            Some("unknown-outcome") => "unknown-outcome",
            Some("too-large") => "too-large",
            Some("session-unknown") => "session-unknown",
            Some("session-acknowledged") => "session-acknowledged",
            Some("session-too-many") => "session-too-many",
            Some("session-invalid") => "session-invalid",
            Some("sessions-off") => "sessions-off",
            Some("response-lost") => "response-lost",
            Some("read-failed") => "read-failed",
            other => panic!("no known kind: {other:?}"),
        };
        (kind, status.code(), meta(LEADER_ID))
    }

    /// Every refusal says whether the command was applied (client.proto's table): what was
    /// certainly not applied is `not-leader`, `retry`, `too-large` or a session refusal; what
    /// may have been is `unknown-outcome`, never `retry`.
    #[test]
    fn every_propose_error_has_the_kind_that_says_whether_it_applied() {
        let cases = [
            (
                ProposeError::Refused(Core::NotLeader {
                    leader: Some(3),
                    leader_address: None,
                }),
                (
                    "not-leader",
                    Code::FailedPrecondition,
                    Some("3".to_string()),
                ),
            ),
            (
                ProposeError::Refused(Core::NotLeader {
                    leader: None,
                    leader_address: None,
                }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::TransferInProgress { to: 2 }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::UncommittedLimit {
                    uncommitted: 9,
                    max: 8,
                }),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Busy("full"),
                ("retry", Code::Unavailable, None),
            ),
            (
                ProposeError::Refused(Core::TooLarge { size: 9, max: 8 }),
                ("too-large", Code::InvalidArgument, None),
            ),
            (
                ProposeError::Timeout,
                ("unknown-outcome", Code::DeadlineExceeded, None),
            ),
            (
                ProposeError::Interrupted("snapshot"),
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::ShuttingDown,
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::Stopped {
                    reason: "disk".into(),
                },
                ("unknown-outcome", Code::Unavailable, None),
            ),
            (
                ProposeError::Session(SessionRefusal::UnknownSession),
                ("session-unknown", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::Session(SessionRefusal::AlreadyAcknowledged),
                ("session-acknowledged", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::Session(SessionRefusal::TooManyUnacknowledged),
                ("session-too-many", Code::ResourceExhausted, None),
            ),
            (
                ProposeError::Session(SessionRefusal::InvalidSequence),
                ("session-invalid", Code::InvalidArgument, None),
            ),
            (
                ProposeError::SessionsOff,
                ("sessions-off", Code::FailedPrecondition, None),
            ),
            (
                ProposeError::ResponseLost,
                ("response-lost", Code::FailedPrecondition, None),
            ),
        ];
        for (error, want) in cases {
            let shown = error.to_string();
            let status = propose_status(error);
            assert_eq!(status.message(), shown, "the message is the error's");
            let (k, code, leader) = kind(&status);
            assert_eq!((k, code, leader), want, "{shown}");
        }
        let failed = read_status(ReadError::StateMachine("boom".into()));
        assert_eq!(kind(&failed).0, "read-failed");
        assert_eq!(kind(&read_status(ReadError::Timeout)).0, "retry");
        assert_eq!(kind(&read_status(ReadError::Busy)).0, "retry");
    }
}
