//! # dengine-client
//!
//! The client of a dengine cluster: a program on another machine proposes commands to the
//! replicated state machine and reads from it through the client service that
//! `dengine::start` serves on each member's `node.client_addr`.
//!
//! * **Follows the leader.** Give it some or all members' client addresses; a follower's
//!   refusal names the leader, and the client goes there (learning which address is which
//!   member by asking, [`Client::leader`]). Across elections it keeps following. Or let
//!   the followers forward writes to the leader ([`ClientConfig::forward`]), for a client
//!   that reaches only some members.
//! * **Retries safely.** Every call has a deadline ([`ClientConfig::request_timeout`]) and is
//!   retried within it, with exponential backoff and jitter, on anything that certainly did
//!   not apply it (no leader yet, busy, a member that cannot be reached). A plain
//!   [`Client::propose`] is **at most once**: when its outcome is unknown (the leader
//!   crashed after taking it), it returns [`ClientError::OutcomeUnknown`] and does not
//!   resend it.
//! * **Exactly once, in a session.** [`Client::open_session`] registers a client session
//!   (Raft thesis §6.3) and [`Session::propose`] numbers each command; the cluster applies a
//!   numbered command once however often it is sent, and answers a retry with the first
//!   response. So a session's proposals are retried through leader crashes and partitions
//!   until the deadline. The cluster needs `[client_sessions] enabled = true`.
//! * **Reads** are linearizable (ReadIndex), lease-based or stale; stale reads are spread
//!   over the members, the others go to the leader (any member can serve them).
//! * **TLS and mutual TLS** ([`ClientTls`]) like the peers.
//!
//! ```no_run
//! # async fn example() -> Result<(), dengine_client::ClientError> {
//! use dengine_client::{Client, ClientConfig, Consistency};
//!
//! let client = Client::connect(ClientConfig::new([
//!     "127.0.0.1:7101",
//!     "127.0.0.1:7102",
//!     "127.0.0.1:7103",
//! ]))?;
//! let session = client.open_session().await?;
//! // Applied once, even if the leader crashes while it is in flight.
//! let response = session.propose("x=1".into()).await?;
//! let x = client.read("x".into(), Consistency::Linearizable).await?;
//! # let _ = (response, x);
//! # Ok(())
//! # }
//! ```
//!
//! What the errors mean for the command is in [`ClientError`]; the wire protocol is
//! `proto/dengine/client/v1/client.proto`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// The generated wire types and stubs of `dengine.client.v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("dengine.client.v1");
}

use pb::client_client::ClientClient;

/// The metadata key of an error's kind (see the protocol file).
const ERROR_KIND: &str = "dengine-error";
/// The metadata key of the leader's id on a `not-leader` refusal.
const LEADER_ID: &str = "dengine-leader";

/// How reads see the state (see [`Client::read`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// ReadIndex (thesis §6.4): sees every write acknowledged before the read began.
    Linearizable,
    /// The leader's lease (thesis §6.4.1): linearizable while the members' clocks drift less
    /// than the cluster's configured bound; no round trip to a majority.
    Lease,
    /// The answering member's state as it is: may be behind (arbitrarily, on a partitioned
    /// member). Spread over the members.
    Stale,
}

/// TLS for the connections to the members: the CA that signed their client-listener
/// certificates and, for mutual TLS, this client's certificate and key (PEM).
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
}

impl ClientTls {
    /// Trusts members whose certificate `ca_pem` signed.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        ClientTls {
            ca_pem: ca_pem.into(),
            identity: None,
            server_name: None,
        }
    }

    /// Presents this certificate and key (PEM) to the members (mutual TLS, for a client
    /// listener with `require_client_cert`).
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The name the members' certificates must carry, when it is not the host of their
    /// addresses (e.g. addresses are IPs and certificates name a DNS name).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reads the CA and, if both are given, the client's certificate and key from PEM files.
    pub fn from_files(
        ca: &std::path::Path,
        cert_and_key: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self, ClientError> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| {
                ClientError::Config(format!("cannot read the {what} {}: {e}", p.display()))
            })
        };
        let mut tls = ClientTls::new(read(ca, "CA certificate")?);
        if let Some((cert, key)) = cert_and_key {
            tls = tls.identity(read(cert, "client certificate")?, read(key, "client key")?);
        }
        Ok(tls)
    }
}

/// How a [`Client`] connects and how long it tries.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The members' client addresses (`node.client_addr`): `host:port`, or a URI with
    /// `http://` / `https://`. One is enough to reach a cluster whose leader it is; give all
    /// of them so that the client can follow the leader anywhere.
    pub endpoints: Vec<String>,
    /// TLS; plaintext when `None`.
    pub tls: Option<ClientTls>,
    /// The deadline of one call, retries included. Default 10 s.
    pub request_timeout: Duration,
    /// How long a connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// The first retry's delay; it doubles up to [`backoff_max`](Self::backoff_max), and each
    /// delay is drawn at random from its upper half (jitter). Default 20 ms.
    pub backoff_initial: Duration,
    /// The longest delay between retries. Default 1 s.
    pub backoff_max: Duration,
    /// The largest message sent or received. Default 64 MiB (the members' default).
    pub max_message_bytes: usize,
    /// Whether a follower that receives a proposal or session call forwards it to the leader
    /// (`true`) or refuses it with the leader's id, so that the client sends it there
    /// itself (`false`, the default). Forwarding lets a client that can reach only some
    /// members (say, one behind a load balancer) write through any of them, at the cost of a
    /// hop between members; the retry rules are the same either way. Reads are not
    /// forwarded (any member serves them).
    pub forward: bool,
}

impl ClientConfig {
    /// The defaults, with these endpoints.
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            max_message_bytes: 64 << 20,
            forward: false,
        }
    }
}

/// Why a call failed, and what that means for the command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The configuration cannot be used (an endpoint that is not an address, unreadable TLS
    /// files). Nothing was sent.
    #[error("client configuration: {0}")]
    Config(String),
    /// A plain proposal was taken by the leader, but its fate could not be learnt (the leader
    /// crashed or lost its leadership, the connection broke after sending): **it may or may
    /// not be applied**. It was not resent. Use a [`Session`] to retry safely.
    #[error("the outcome of the command is unknown (it may still be applied): {0}")]
    OutcomeUnknown(String),
    /// The call's deadline passed before any member answered it. For a proposal the
    /// outcome is unknown when `outcome_unknown` (a member may have taken it); a read or a
    /// proposal never taken changed nothing.
    #[error(
        "no answer within the request timeout ({}); last error: {last_error}",
        if *.outcome_unknown { "the outcome of the command is unknown" } else { "nothing was applied" }
    )]
    Deadline {
        /// Whether a proposal may have been applied.
        outcome_unknown: bool,
        /// The last error seen while retrying.
        last_error: String,
    },
    /// A session's command **was applied, once**, but its response is lost: the leader
    /// applied it before a restart, and with a durable state machine the cluster keeps no
    /// copy of such a response (docs/sessions.md). It will not be applied again; read the
    /// state to learn its effect.
    #[error("the command was applied once, but its response is lost: {0}")]
    ResponseLost(String),
    /// The cluster refused the request: **this copy of it was not applied**. `kind` says
    /// why (`too-large`, `session-unknown` — the session expired or was closed: open a new
    /// one —, `session-acknowledged`, `session-too-many`, `session-invalid`, `sessions-off`,
    /// `read-failed`, or a gRPC code for a request the member could not parse). When a
    /// session's command was resent after an attempt of unknown outcome, that earlier copy
    /// may have been applied (its session then expired, say, before the resend arrived):
    /// `outcome_unknown` says so, and [`ClientError::outcome_unknown`] is true.
    #[error(
        "refused ({kind}): {message}{}",
        if *.outcome_unknown { "; an earlier attempt of unknown outcome may have applied the command" } else { "" }
    )]
    Refused {
        /// The refusal's kind.
        kind: String,
        /// The member's explanation.
        message: String,
        /// Whether an earlier attempt of the same call may have applied the command.
        outcome_unknown: bool,
    },
}

impl ClientError {
    /// Whether a session's command was refused because the session no longer exists
    /// (expired, evicted, closed): open a new session.
    pub fn is_session_gone(&self) -> bool {
        matches!(self, ClientError::Refused { kind, .. } if kind == "session-unknown")
    }

    /// Whether the command may have been applied.
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::OutcomeUnknown(_)
                | ClientError::Deadline {
                    outcome_unknown: true,
                    ..
                }
                | ClientError::Refused {
                    outcome_unknown: true,
                    ..
                }
        )
    }
}

/// One member as a member reported it ([`LeaderInfo::members`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: u64,
    /// Where the other members reach it (its peer address, not its client address).
    pub peer_address: String,
    /// A voter, or a learner.
    pub voter: bool,
}

/// A member's view of the leader and the membership ([`Client::leader`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// The member that answered.
    pub member: u64,
    /// Its role ("follower", "pre-candidate", "candidate" or "leader").
    pub role: String,
    /// Its term.
    pub term: u64,
    /// The leader it follows, if it knows one.
    pub leader: Option<u64>,
    /// The members, as it last applied them.
    pub members: Vec<Member>,
}

impl From<pb::LeaderReply> for LeaderInfo {
    fn from(r: pb::LeaderReply) -> Self {
        LeaderInfo {
            member: r.id,
            role: r.role,
            term: r.term,
            leader: (r.leader != 0).then_some(r.leader),
            members: r
                .members
                .into_iter()
                .map(|m| Member {
                    id: m.id,
                    peer_address: m.peer_address,
                    voter: m.voter,
                })
                .collect(),
        }
    }
}

/// One member's connection and, once learnt, its id.
#[derive(Debug)]
struct Target {
    address: String,
    stub: ClientClient<Channel>,
    /// 0 until the member said who it is.
    id: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    targets: Vec<Target>,
    /// The target believed to lead.
    leader: AtomicUsize,
    /// The next target for a stale read.
    spread: AtomicUsize,
}

/// A connection to a cluster: cheap to clone, safe to share between tasks.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

/// What a call does with a failure that a member reported as of unknown outcome.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A plain proposal: an unknown outcome ends the call.
    Propose,
    /// A session's entry: resent until the deadline (the session makes that safe).
    SessionEntry,
    /// A read: nothing to lose; `stale` ones are spread over the members.
    Read { stale: bool },
}

/// What to do after a failed attempt.
enum Next {
    /// Give up with this error.
    Fail(ClientError),
    /// Try again: at `target`, after a backoff or not.
    Retry {
        target: Option<usize>,
        backoff: bool,
        /// The failure left the command's fate unknown.
        unknown: bool,
    },
}

impl Client {
    /// A client of the members at `config.endpoints`. Connections are made when first used,
    /// so this fails only on a configuration that cannot work (no endpoints, an endpoint
    /// that is not an address, TLS material that does not parse).
    pub fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::Config(
                "no endpoints: give the client address (node.client_addr) of at least one member"
                    .into(),
            ));
        }
        let targets = config
            .endpoints
            .iter()
            .map(|address| {
                let channel = endpoint(&config, address)?.connect_lazy();
                let stub = ClientClient::new(channel)
                    .max_decoding_message_size(config.max_message_bytes)
                    .max_encoding_message_size(config.max_message_bytes);
                Ok(Target {
                    address: address.clone(),
                    stub,
                    id: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok(Client {
            inner: Arc::new(Inner {
                config,
                targets,
                leader: AtomicUsize::new(0),
                spread: AtomicUsize::new(0),
            }),
        })
    }

    /// Proposes `command` and returns the state machine's response once the leader applied
    /// it. **At most once**: refusals that certainly did not apply it are retried (on the
    /// leader, after a backoff) until the deadline; an unknown outcome is returned as
    /// [`ClientError::OutcomeUnknown`], never resent. For retries that are safe, use a
    /// [`Session`].
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, ClientError> {
        let request = pb::ProposeRequest {
            command,
            forward: self.inner.config.forward,
            ..Default::default()
        };
        self.call(Kind::Propose, move |mut stub, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { stub.propose(request).await.map(|r| r.into_inner().response) }
        })
        .await
    }

    /// Answers `query` from the state machine. Retried on any member until the deadline
    /// (a read changes nothing); a linearizable or lease read goes to the leader first, a
    /// stale one to the members in turn.
    pub async fn read(&self, query: Bytes, consistency: Consistency) -> Result<Bytes, ClientError> {
        let request = pb::ReadRequest {
            query,
            consistency: match consistency {
                Consistency::Linearizable => pb::Consistency::Linearizable,
                Consistency::Lease => pb::Consistency::Lease,
                Consistency::Stale => pb::Consistency::Stale,
            } as i32,
        };
        let stale = consistency == Consistency::Stale;
        self.call(Kind::Read { stale }, move |mut stub, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { stub.read(request).await.map(|r| r.into_inner().response) }
        })
        .await
    }

    /// Opens an exactly-once session (thesis §6.3). The cluster must run with
    /// `[client_sessions] enabled = true`; otherwise this fails with the `sessions-off`
    /// refusal. A session left idle longer than the cluster's `idle_expiry_ms` expires
    /// ([`Session::keep_alive`] prevents it).
    pub async fn open_session(&self) -> Result<Session, ClientError> {
        // An unknown outcome here at worst registers a session nobody uses, which expires:
        // the registration is retried like a session's entry.
        let id = self
            .call(Kind::SessionEntry, |mut stub, timeout| {
                let request = with_timeout(
                    pb::OpenSessionRequest {
                        forward: self.inner.config.forward,
                    },
                    timeout,
                );
                async move {
                    stub.open_session(request)
                        .await
                        .map(|r| r.into_inner().session)
                }
            })
            .await?;
        Ok(Session {
            client: self.clone(),
            id,
            state: Mutex::new(SessionState {
                next: 1,
                unanswered: BTreeSet::new(),
            }),
        })
    }

    /// A member's view of the leader, its term and the membership (the member believed to
    /// lead is asked first; any that answers will do).
    pub async fn leader(&self) -> Result<LeaderInfo, ClientError> {
        self.call(Kind::Read { stale: false }, |mut stub, timeout| {
            let request = with_timeout(pb::LeaderRequest {}, timeout);
            async move { stub.leader(request).await.map(|r| r.into_inner()) }
        })
        .await
        .map(LeaderInfo::from)
    }

    /// Follows one member's view of the leader and membership: the current one first, then
    /// one at every change, until the stream ends (the member stopped; call again to
    /// follow another). Connects like [`leader`](Self::leader).
    pub async fn watch_leader(&self) -> Result<LeaderWatch, ClientError> {
        let stream = self
            .call(Kind::Read { stale: false }, |mut stub, timeout| {
                let request = with_timeout(pb::LeaderRequest {}, timeout);
                async move { stub.watch_leader(request).await.map(|r| r.into_inner()) }
            })
            .await?;
        Ok(LeaderWatch { stream })
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes.
    async fn call<T, F, Fut>(&self, kind: Kind, mut attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(ClientClient<Channel>, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let inner = &self.inner;
        let config = &inner.config;
        let deadline = Instant::now() + config.request_timeout;
        let mut target = match kind {
            Kind::Read { stale: true } => {
                inner.spread.fetch_add(1, Ordering::Relaxed) % inner.targets.len()
            }
            _ => inner.leader.load(Ordering::Relaxed) % inner.targets.len(),
        };
        let mut failures = 0u32;
        let mut unknown = false;
        let mut last_error = String::from("none");
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Deadline {
                    outcome_unknown: unknown,
                    last_error,
                });
            }
            let remaining = deadline - now;
            let stub = inner.targets[target].stub.clone();
            let status = match tokio::time::timeout(remaining, attempt(stub, remaining)).await {
                Ok(Ok(value)) => {
                    // Only the leader answers proposals; any member answers reads.
                    if !matches!(kind, Kind::Read { .. }) {
                        inner.leader.store(target, Ordering::Relaxed);
                    }
                    return Ok(value);
                }
                Ok(Err(status)) => status,
                Err(_) => {
                    // A proposal in flight at the deadline may have been taken.
                    let taken = !matches!(kind, Kind::Read { .. });
                    return Err(ClientError::Deadline {
                        outcome_unknown: unknown || taken,
                        last_error: format!(
                            "{} did not answer in time",
                            inner.targets[target].address
                        ),
                    });
                }
            };
            last_error = format!("{}: {}", inner.targets[target].address, status.message());
            match self.after(kind, target, &status, deadline).await {
                // A refusal answers this copy only; an earlier one may have been applied.
                Next::Fail(ClientError::Refused { kind, message, .. }) => {
                    return Err(ClientError::Refused {
                        kind,
                        message,
                        outcome_unknown: unknown,
                    });
                }
                Next::Fail(e) => return Err(e),
                Next::Retry {
                    target: next,
                    backoff,
                    unknown: this_unknown,
                } => {
                    unknown |= this_unknown;
                    target = next.unwrap_or((target + 1) % inner.targets.len());
                    if backoff {
                        let delay = backoff_delay(config, failures)
                            .min(deadline.saturating_duration_since(Instant::now()));
                        failures = failures.saturating_add(1);
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    /// Decides what follows a failed attempt at `target`.
    async fn after(&self, kind: Kind, target: usize, status: &Status, deadline: Instant) -> Next {
        let error_kind = status
            .metadata()
            .get(ERROR_KIND)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let refused = |kind: &str| {
            Next::Fail(ClientError::Refused {
                kind: kind.to_string(),
                message: status.message().to_string(),
                outcome_unknown: false,
            })
        };
        let Some(error_kind) = error_kind else {
            // Not an answer of the client service: the connection, or a member that could not
            // parse the request.
            return match status.code() {
                Code::InvalidArgument | Code::Unimplemented | Code::OutOfRange => {
                    refused(&format!("{:?}", status.code()))
                }
                _ if never_sent(status) || matches!(kind, Kind::Read { .. }) => Next::Retry {
                    target: None,
                    backoff: true,
                    unknown: false,
                },
                _ if kind == Kind::SessionEntry => Next::Retry {
                    target: None,
                    backoff: true,
                    unknown: true,
                },
                _ => Next::Fail(ClientError::OutcomeUnknown(format!(
                    "{}: {}",
                    self.inner.targets[target].address,
                    status.message()
                ))),
            };
        };
        match error_kind.as_str() {
            "not-leader" => {
                let leader = status
                    .metadata()
                    .get(LEADER_ID)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                match leader {
                    Some(leader) => match self.find(leader, deadline).await {
                        Some(at) if at != target => Next::Retry {
                            target: Some(at),
                            backoff: false,
                            unknown: false,
                        },
                        // The named leader is not among the endpoints, or it is the member
                        // that refused (a stale view): wait for the election to settle.
                        _ => Next::Retry {
                            target: None,
                            backoff: true,
                            unknown: false,
                        },
                    },
                    None => Next::Retry {
                        target: None,
                        backoff: true,
                        unknown: false,
                    },
                }
            }
            // Busy, or no leader yet: another member may know better.
            "retry" => Next::Retry {
                target: None,
                backoff: true,
                unknown: false,
            },
            "unknown-outcome" => match kind {
                Kind::Propose => Next::Fail(ClientError::OutcomeUnknown(format!(
                    "{}: {}",
                    self.inner.targets[target].address,
                    status.message()
                ))),
                _ => Next::Retry {
                    target: None,
                    backoff: true,
                    unknown: kind == Kind::SessionEntry,
                },
            },
            "response-lost" => Next::Fail(ClientError::ResponseLost(status.message().to_string())),
            other => refused(other),
        }
    }

    /// The endpoint of member `id`, asking the members whose id is not known yet.
    async fn find(&self, id: u64, deadline: Instant) -> Option<usize> {
        let targets = &self.inner.targets;
        if let Some(at) = targets
            .iter()
            .position(|t| t.id.load(Ordering::Relaxed) == id)
        {
            return Some(at);
        }
        let ask = Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
        for (at, t) in targets.iter().enumerate() {
            if t.id.load(Ordering::Relaxed) != 0 {
                continue;
            }
            let mut stub = t.stub.clone();
            let request = with_timeout(pb::LeaderRequest {}, ask);
            if let Ok(Ok(reply)) = tokio::time::timeout(ask, stub.leader(request)).await {
                let member = reply.into_inner().id;
                t.id.store(member, Ordering::Relaxed);
                if member == id {
                    return Some(at);
                }
            }
        }
        None
    }
}

/// Whether a transport failure happened before the request left (the connection could not
/// be made), so that nothing can have been applied.
fn never_sent(status: &Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        let text = e.to_string();
        if text.contains("connect error")
            || text.contains("Connection refused")
            || text.contains("error trying to connect")
        {
            return true;
        }
        source = e.source();
    }
    false
}

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The delay before retry number `failures` (from 0): exponential, capped, jittered over its
/// upper half so that clients that failed together do not retry together.
fn backoff_delay(config: &ClientConfig, failures: u32) -> Duration {
    let full = config
        .backoff_initial
        .saturating_mul(1u32 << failures.min(16))
        .min(config.backoff_max);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

fn endpoint(config: &ClientConfig, address: &str) -> Result<Endpoint, ClientError> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("{scheme}://{address}")
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::Config(format!("endpoint {address:?}: {e}")))?
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(tls) = &config.tls {
        let mut client_tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            client_tls = client_tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &tls.server_name {
            client_tls = client_tls.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(client_tls)
            .map_err(|e| ClientError::Config(format!("TLS for {address:?}: {e}")))?;
    }
    Ok(endpoint)
}

/// The stream of [`Client::watch_leader`].
#[derive(Debug)]
pub struct LeaderWatch {
    stream: tonic::Streaming<pb::LeaderReply>,
}

impl LeaderWatch {
    /// The next view: `None` when the member ended the stream (it stopped), an error when
    /// the connection broke.
    pub async fn next(&mut self) -> Option<Result<LeaderInfo, ClientError>> {
        match self.stream.message().await {
            Ok(Some(reply)) => Some(Ok(reply.into())),
            Ok(None) => None,
            Err(status) => Some(Err(ClientError::Refused {
                kind: format!("{:?}", status.code()),
                message: status.message().to_string(),
                outcome_unknown: false,
            })),
        }
    }
}

#[derive(Debug)]
struct SessionState {
    /// The number of the next command.
    next: u64,
    /// Numbers sent whose answer has not come back (or been given up on) yet.
    unanswered: BTreeSet<u64>,
}

/// An exactly-once client session (Raft thesis §6.3), from [`Client::open_session`].
///
/// Each [`propose`](Session::propose) gets the next sequence number and is resent, with the
/// same number, through leader crashes, lost connections and elections until it is answered
/// or the deadline passes; the cluster applies it once and answers every copy with the
/// first response. Proposals may run concurrently from several tasks. A proposal that hits
/// its deadline has an unknown outcome (applied once or not at all): its number is then
/// given up, and a late copy of it is refused by the cluster rather than applied.
#[derive(Debug)]
pub struct Session {
    client: Client,
    id: u64,
    state: Mutex<SessionState>,
}

impl Session {
    /// The session's id (the log index of its registration).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Proposes `command` exactly once and returns the state machine's response. Errors: a
    /// [`Deadline`](ClientError::Deadline) (outcome unknown), or a refusal: the session is
    /// gone ([`ClientError::is_session_gone`]: open a new one), too many unanswered commands
    /// (`session-too-many`), a command over the size limit.
    pub async fn propose(&self, command: Bytes) -> Result<Bytes, ClientError> {
        let seq = {
            let mut state = self.lock();
            let seq = state.next;
            state.next += 1;
            state.unanswered.insert(seq);
            seq
        };
        let session = self.id;
        let forward = self.client.inner.config.forward;
        let result = self
            .client
            .call(Kind::SessionEntry, |mut stub, timeout| {
                // Computed for every attempt: answers that arrived meanwhile let the cluster
                // forget more.
                let first_unanswered = self.first_unanswered(seq);
                let request = with_timeout(
                    pb::ProposeRequest {
                        command: command.clone(),
                        session,
                        seq,
                        first_unanswered,
                        forward,
                    },
                    timeout,
                );
                async move { stub.propose(request).await.map(|r| r.into_inner().response) }
            })
            .await;
        // Answered, refused or given up: the number is settled either way.
        self.lock().unanswered.remove(&seq);
        result
    }

    /// Keeps the session open while it has nothing to propose (every proposal does too).
    pub async fn keep_alive(&self) -> Result<(), ClientError> {
        let request = self.request();
        self.client
            .call(Kind::SessionEntry, |mut stub, timeout| {
                let request = with_timeout(request, timeout);
                async move { stub.keep_session_alive(request).await.map(drop) }
            })
            .await
    }

    /// Closes the session: the cluster drops its saved responses.
    pub async fn close(self) -> Result<(), ClientError> {
        let request = self.request();
        self.client
            .call(Kind::SessionEntry, |mut stub, timeout| {
                let request = with_timeout(request, timeout);
                async move { stub.close_session(request).await.map(drop) }
            })
            .await
    }

    /// A keep-alive or close request of this session.
    fn request(&self) -> pb::SessionRequest {
        pb::SessionRequest {
            session: self.id,
            forward: self.client.inner.config.forward,
        }
    }

    fn first_unanswered(&self, seq: u64) -> u64 {
        self.lock().unanswered.first().copied().unwrap_or(seq)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        // The state is two counters updated in one step each: a panic elsewhere while holding
        // the lock cannot leave it half-changed.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stays_in_the_upper_half() {
        let config = ClientConfig::new(["a:1"]);
        for failures in 0..40 {
            let full =
                (config.backoff_initial * 2u32.pow(failures.min(16))).min(config.backoff_max);
            let d = backoff_delay(&config, failures);
            assert!(
                d >= full / 2 && d <= full,
                "{failures}: {d:?} outside {full:?}/2..{full:?}"
            );
        }
    }

    #[test]
    fn a_configuration_without_endpoints_or_with_a_bad_one_is_refused() {
        let none = Client::connect(ClientConfig::new(Vec::<String>::new())).unwrap_err();
        assert!(none.to_string().contains("no endpoints"), "{none}");
        let bad = Client::connect(ClientConfig::new(["http://[::1"])).unwrap_err();
        assert!(matches!(bad, ClientError::Config(_)), "{bad}");
    }

    fn status(code: Code, kind: Option<&'static str>, leader: Option<u64>) -> Status {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(kind) = kind {
            metadata.insert(
                ERROR_KIND,
                tonic::metadata::MetadataValue::from_static(kind),
            );
        }
        if let Some(leader) = leader {
            metadata.insert(LEADER_ID, tonic::metadata::MetadataValue::from(leader));
        }
        Status::with_metadata(code, "test", metadata)
    }

    /// What the client does after each kind of failure, for each kind of call: the retry
    /// semantics of docs/sessions.md. A plain proposal is never resent after an unknown
    /// outcome; a session's entry is; a read always is; a definite refusal ends every call.
    #[tokio::test]
    async fn each_failure_leads_to_the_documented_next_step() {
        // Endpoints connect lazily: nothing here reaches the network.
        let client = Client::connect(ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2"])).unwrap();
        let deadline = Instant::now() + Duration::from_secs(1);
        let read = Kind::Read { stale: false };
        let kinds = [Kind::Propose, Kind::SessionEntry, read];
        // (status, [plain proposal, session entry, read]); `R(unknown)` retries, `F` fails.
        #[derive(Debug, PartialEq)]
        enum N {
            R(bool),
            Unknown,
            Refused(String),
            Lost,
        }
        let next =
            async |kind: Kind, status: &Status| match client.after(kind, 0, status, deadline).await
            {
                Next::Retry { unknown, .. } => N::R(unknown),
                Next::Fail(ClientError::OutcomeUnknown(_)) => N::Unknown,
                Next::Fail(ClientError::Refused { kind, .. }) => N::Refused(kind),
                Next::Fail(ClientError::ResponseLost(_)) => N::Lost,
                Next::Fail(e) => panic!("unexpected {e}"),
            };
        let cases = [
            (
                status(Code::Unavailable, Some("retry"), None),
                [N::R(false), N::R(false), N::R(false)],
            ),
            (
                status(Code::FailedPrecondition, Some("not-leader"), None),
                [N::R(false), N::R(false), N::R(false)],
            ),
            (
                status(Code::Unavailable, Some("unknown-outcome"), None),
                [N::Unknown, N::R(true), N::R(false)],
            ),
            (
                status(Code::InvalidArgument, Some("too-large"), None),
                [
                    N::Refused("too-large".into()),
                    N::Refused("too-large".into()),
                    N::Refused("too-large".into()),
                ],
            ),
            (
                status(Code::FailedPrecondition, Some("session-unknown"), None),
                [
                    N::Refused("session-unknown".into()),
                    N::Refused("session-unknown".into()),
                    N::Refused("session-unknown".into()),
                ],
            ),
            // Applied once before a restart, response not kept: not resent.
            (
                status(Code::FailedPrecondition, Some("response-lost"), None),
                [N::Lost, N::Lost, N::Lost],
            ),
            // The connection broke after sending (no kind: not the service's answer).
            (
                status(Code::Unavailable, None, None),
                [N::Unknown, N::R(true), N::R(false)],
            ),
            // A member that cannot parse the request.
            (
                status(Code::Unimplemented, None, None),
                [
                    N::Refused("Unimplemented".into()),
                    N::Refused("Unimplemented".into()),
                    N::Refused("Unimplemented".into()),
                ],
            ),
        ];
        for (status, expected) in cases {
            for (kind, want) in kinds.iter().zip(expected) {
                assert_eq!(
                    next(*kind, &status).await,
                    want,
                    "{:?} {:?}",
                    status.metadata().get(ERROR_KIND),
                    status.code()
                );
            }
        }
        // Nothing was sent when the connection could not be made: every call retries.
        let refused = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused",
        )));
        for kind in kinds {
            assert_eq!(next(kind, &refused).await, N::R(false));
        }
    }

    /// A session's command resent after an attempt of unknown outcome, then refused (its
    /// session expired meanwhile): the refusal does not prove the first copy unapplied.
    #[tokio::test]
    async fn a_refusal_after_an_unknown_outcome_does_not_claim_the_command_unapplied() {
        let mut config = ClientConfig::new(["127.0.0.1:1"]);
        config.backoff_initial = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(1);
        let client = Client::connect(config).unwrap();
        for (first, unknown) in [("unknown-outcome", true), ("retry", false)] {
            let mut attempts = 0;
            let err = client
                .call(Kind::SessionEntry, |_stub, _timeout| {
                    attempts += 1;
                    let answer = if attempts == 1 {
                        status(Code::Unavailable, Some(first), None)
                    } else {
                        status(Code::FailedPrecondition, Some("session-unknown"), None)
                    };
                    async move { Err::<(), _>(answer) }
                })
                .await
                .unwrap_err();
            assert!(err.is_session_gone(), "{first}: {err}");
            assert_eq!(err.outcome_unknown(), unknown, "{first}: {err}");
            assert_eq!(attempts, 2, "{first}");
        }
    }

    #[test]
    fn only_unknown_outcomes_and_deadlines_that_may_have_applied_say_so() {
        assert!(ClientError::OutcomeUnknown("x".into()).outcome_unknown());
        let refused = ClientError::Refused {
            kind: "session-unknown".into(),
            message: String::new(),
            outcome_unknown: false,
        };
        assert!(!refused.outcome_unknown() && refused.is_session_gone());
        // The session expired while a resend was on its way: the first copy may be applied.
        let after_unknown = ClientError::Refused {
            kind: "session-unknown".into(),
            message: String::new(),
            outcome_unknown: true,
        };
        assert!(after_unknown.outcome_unknown() && after_unknown.is_session_gone());
        let read_deadline = ClientError::Deadline {
            outcome_unknown: false,
            last_error: String::new(),
        };
        assert!(!read_deadline.outcome_unknown());
    }
}
