//! Target `client`: dengine's client service (`dengine.client.v1.Client`, what `dengine::start`
//! serves on `node.client_addr`) with arbitrary requests — proposals plain and in sessions,
//! reads, session calls, the leader and its watch — and the leader's side of forwarding
//! (`dengine.client.v1.Forward/Stream`, what followers send on the peer listener; this
//! transport has no peer authentication configured, so every claimed sender is let in and
//! the input reaches the node), against a real single-member node with
//! client sessions on (the runtime, an in-memory log, a state machine that counts what it
//! applies), through the tower service. Time is tokio's paused clock, so one input always
//! runs the same way.
//!
//! Oracle: every unary call ends with a gRPC status (a watch may stay open; it is dropped);
//! nothing panics; afterwards the node still serves a fresh session exactly once: a command
//! sent twice with one number is applied once, and both copies get the same response.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::{Command, StateMachine};
use dengine_core::{LogIndex, sessions::SessionLimits};
use dengine_net_grpc::client_pb;
use dengine_net_grpc::{GrpcConfig, GrpcTransport};
use dengine_node::Consistency;
use dengine_sim::fuzz::Input;
use prost::Message as _;

use crate::grpc::{body_from, call};
use crate::support::{leading_single_member, paused_runtime};

const PATHS: [&str; 8] = [
    "/dengine.client.v1.Client/Propose",
    "/dengine.client.v1.Client/Read",
    "/dengine.client.v1.Client/OpenSession",
    "/dengine.client.v1.Client/KeepSessionAlive",
    "/dengine.client.v1.Client/CloseSession",
    "/dengine.client.v1.Client/Leader",
    "/dengine.client.v1.Client/WatchLeader",
    "/dengine.client.v1.Forward/Stream",
];
/// The streaming call: it stays open while the node runs.
const WATCH: usize = 6;
/// The forwarding stream: it ends once its requests are answered.
const FORWARD: usize = 7;
/// Virtual time: far beyond the node's own timeouts, so a unary call still open is a hang.
const HANG: Duration = Duration::from_secs(600);

/// Counts the commands it applies; every response, and every read, is the count so far.
#[derive(Default)]
struct Counting {
    applied: u64,
}

impl StateMachine for Counting {
    type Error = Infallible;

    async fn apply(&mut self, commands: &[Command], _: LogIndex) -> Result<Vec<Bytes>, Infallible> {
        Ok(commands
            .iter()
            .map(|_| {
                self.applied += 1;
                Bytes::copy_from_slice(&self.applied.to_le_bytes())
            })
            .collect())
    }

    async fn snapshot(&mut self) -> Result<Bytes, Infallible> {
        Ok(Bytes::copy_from_slice(&self.applied.to_le_bytes()))
    }

    async fn install_snapshot(&mut self, data: Bytes, _: LogIndex) -> Result<(), Infallible> {
        self.applied = <[u8; 8]>::try_from(data.as_ref()).map_or(0, u64::from_le_bytes);
        Ok(())
    }

    async fn query(&self, _: Bytes) -> Result<Bytes, Infallible> {
        Ok(Bytes::copy_from_slice(&self.applied.to_le_bytes()))
    }
}

/// Runs one input.
pub fn client(data: &[u8]) {
    run(data);
}

/// Runs one input; returns the gRPC status code and the response body of each call that
/// finished.
fn run(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut codes = Vec::new();
    let mut input = Input::new(data);
    paused_runtime().block_on(async {
        let base = tokio::time::Instant::now();
        let (node, _net) = leading_single_member(Counting::default(), |b| {
            b.client_sessions(SessionLimits {
                max_sessions: 8,
                idle_expiry_ms: 60_000,
                max_unacknowledged: 4,
            })
            // Stamps from the paused clock: one input runs one way.
            .session_clock(move || u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX))
        })
        .await;
        let client_service = dengine::ClientService::new(node.clone(), 1 << 20);
        let transport = match GrpcTransport::new(GrpcConfig::new(1, 1)) {
            Ok(t) => t,
            Err(e) => panic!("cannot make a transport: {e}"),
        };
        let mut forward = client_service.forward_service(transport).server();
        let mut service = client_service.server();
        for _ in 0..8 {
            if input.is_empty() {
                break;
            }
            let which = input.below(PATHS.len() as u64) as usize;
            let body = body_from(&mut input);
            let wait = if which == WATCH {
                Duration::from_millis(50)
            } else {
                HANG
            };
            let reply = if which == FORWARD {
                call(&mut forward, PATHS[which], body, wait).await
            } else {
                call(&mut service, PATHS[which], body, wait).await
            };
            assert_eq!(reply.http_status, 200, "{}: {reply:?}", PATHS[which]);
            match reply.grpc_status {
                Some(code) => codes.push((code, reply.body)),
                None if which == WATCH => {}
                None => panic!(
                    "{} gave no gRPC status within {HANG:?}: {reply:?}",
                    PATHS[which]
                ),
            }
        }
        // Still serving, exactly once.
        let session = match node.open_session().await {
            Ok(s) => s,
            Err(e) => panic!("no session can be opened after the input: {e}"),
        };
        let before = applied(&node).await;
        let first = node
            .propose_in_session(session, 1, 1, Bytes::from_static(b"x"))
            .await;
        let again = node
            .propose_in_session(session, 1, 1, Bytes::from_static(b"x"))
            .await;
        match (first, again) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "a retry got another response"),
            other => panic!("a fresh session's command failed: {other:?}"),
        }
        assert_eq!(applied(&node).await, before + 1, "applied other than once");
        node.shutdown().await;
    });
    codes
}

async fn applied(node: &dengine_node::Node) -> u64 {
    match node.read(Bytes::new(), Consistency::Linearizable).await {
        Ok(b) => <[u8; 8]>::try_from(b.as_ref()).map_or(0, u64::from_le_bytes),
        Err(e) => panic!("read: {e}"),
    }
}

/// Calls that reach the service's paths: plain and session proposals (the first session of
/// a fresh node is opened at log index 2, after the founding configuration), a retry, reads,
/// keep-alive, close, the leader and its watch.
pub fn seeds() -> Vec<Vec<u8>> {
    let one = |path: u8, message: Vec<u8>| {
        let mut out = vec![path, 0];
        out.extend_from_slice(&(message.len() as u16).to_le_bytes());
        out.extend_from_slice(&message);
        out
    };
    let plain = client_pb::ProposeRequest {
        command: Bytes::from_static(b"a"),
        ..Default::default()
    };
    let in_session = client_pb::ProposeRequest {
        command: Bytes::from_static(b"b"),
        session: 2,
        seq: 1,
        first_unanswered: 1,
        // The only member leads: nothing to forward, and the flag changes nothing.
        forward: true,
    };
    let read = client_pb::ReadRequest {
        query: Bytes::new(),
        consistency: client_pb::Consistency::Lease as i32,
    };
    let session = client_pb::SessionRequest {
        session: 2,
        ..Default::default()
    };
    let open = one(2, client_pb::OpenSessionRequest::default().encode_to_vec());
    let propose = one(0, in_session.encode_to_vec());
    vec![
        one(0, plain.encode_to_vec()),
        one(1, read.encode_to_vec()),
        [open.clone(), propose.clone(), propose.clone()].concat(),
        [
            open.clone(),
            one(3, session.encode_to_vec()),
            one(4, session.encode_to_vec()),
            propose,
        ]
        .concat(),
        one(5, client_pb::LeaderRequest {}.encode_to_vec()),
        [
            one(6, client_pb::LeaderRequest {}.encode_to_vec()),
            open.clone(),
        ]
        .concat(),
        [open, one(7, forwarded().encode_to_vec())].concat(),
    ]
}

/// A follower's message (after the session 2 was opened): a plain proposal, a command of
/// the session sent twice, a keep-alive, and a call without a request. The leader runs a
/// message's calls concurrently.
fn forwarded() -> client_pb::ForwardBatch {
    use client_pb::forward_call::Call;
    let in_session = client_pb::ProposeRequest {
        command: Bytes::from_static(b"c"),
        session: 2,
        seq: 1,
        first_unanswered: 1,
        forward: false,
    };
    let calls = [
        Some(Call::Propose(client_pb::ProposeRequest {
            command: Bytes::from_static(b"a"),
            ..Default::default()
        })),
        Some(Call::Propose(in_session.clone())),
        Some(Call::Propose(in_session)),
        Some(Call::KeepSessionAlive(client_pb::SessionRequest {
            session: 2,
            forward: false,
        })),
        None,
    ];
    client_pb::ForwardBatch {
        from: 2,
        calls: (1..)
            .zip(calls)
            .map(|(id, call)| client_pb::ForwardCall { id, call })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_are_carried_out() {
        let codes: Vec<Vec<String>> = seeds()
            .iter()
            .map(|s| run(s).into_iter().map(|(code, _)| code).collect())
            .collect();
        // A plain proposal; a lease read; a session, a command and its retry; a session
        // kept alive, closed, and then refused (FAILED_PRECONDITION: session-unknown); the
        // leader; a watch (left open) and a session; a session and a forwarding stream (it
        // ends OK; its calls are answered inside it).
        let expected: [&[&str]; 7] = [
            &["0"],
            &["0"],
            &["0", "0", "0"],
            &["0", "0", "0", "9"],
            &["0"],
            &["0"],
            &["0", "0"],
        ];
        for (got, want) in codes.iter().zip(expected) {
            assert_eq!(got, want, "all: {codes:?}");
        }
    }

    /// The forwarded seed's calls are each answered on the stream as the client service
    /// would answer them: both copies of the session's command with one response (applied
    /// once), the call without a request refused.
    #[test]
    fn forwarded_calls_are_answered_like_the_client_services() {
        use client_pb::forward_answer::Outcome;
        let seed = seeds().pop().unwrap();
        let [_, (code, body)] = run(&seed).try_into().unwrap();
        assert_eq!(code, "0");
        let mut answers = std::collections::BTreeMap::new();
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
            let message = client_pb::ForwardAnswers::decode(&rest[5..5 + len]).unwrap();
            for a in message.answers {
                answers.insert(a.id, a.outcome.unwrap());
            }
            rest = &rest[5 + len..];
        }
        let count = |o: &Outcome| match o {
            Outcome::Response(b) => u64::from_le_bytes(b.as_ref().try_into().unwrap()),
            other => panic!("not a proposal's response: {other:?}"),
        };
        assert_eq!(answers.len(), 5, "{answers:?}");
        // Two commands applied, in either order; the copy answered from the table.
        let mut applied = [count(&answers[&1]), count(&answers[&2])];
        applied.sort_unstable();
        assert_eq!(applied, [1, 2], "{answers:?}");
        assert_eq!(answers[&3], answers[&2], "the copy got another response");
        assert_eq!(answers[&4], Outcome::Response(Bytes::new()));
        match &answers[&5] {
            Outcome::Refusal(r) => assert_eq!(r.kind, "invalid-request", "{r:?}"),
            other => panic!("a call without a request was answered {other:?}"),
        }
    }
}
