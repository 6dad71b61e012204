//! `dengine-kv admin`: dengine's admin API (`dengine.admin.v1.Admin`, served on
//! `--listen-admin`) from the command line — the status of every member as a table, learners,
//! promotion, removal, leader transfer, snapshots (sent to whichever endpoint leads) — with
//! the admin token and TLS the admin listener asks for. It works against any dengine-based
//! service that serves the admin API, not only dengine-kv.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use dengine_net_grpc::admin_pb::admin_client::AdminClient;
use dengine_net_grpc::admin_pb::{
    AddLearnerRequest, NodeRequest, StatusReply, StatusRequest, TriggerSnapshotRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the admin API is and how to prove admin rights.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The members' admin addresses (their --listen-admin), comma-separated, e.g.
    /// 127.0.0.1:2381,127.0.0.1:2481. `status` shows every one; the other commands go to the
    /// one that leads.
    #[arg(long, alias = "endpoint", value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// A file holding the admin token (the members' admin.token_file).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the admin listener's TLS; connects with TLS when given.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for admin listeners that require one.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Timeout of each call in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    #[command(subcommand)]
    command: AdminCmd,
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Role, term, leader, indexes and membership of the member.
    Status,
    /// Add a learner (leader only): it receives the log but does not vote.
    AddLearner {
        /// The new member's id (one the cluster never had).
        id: u64,
        /// Its peer address, host:port.
        address: String,
    },
    /// Make a learner a voter (leader only).
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member (leader only).
    Remove {
        /// The member's id.
        id: u64,
    },
    /// Hand leadership to a voter (leader only).
    TransferLeader {
        /// The voter's id.
        id: u64,
    },
    /// Take a snapshot and compact the log now.
    Snapshot,
}

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

async fn connect(args: &AdminArgs, endpoint: &str) -> Result<Channel, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let scheme = if args.cacert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut channel = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
        .map_err(|e| format!("{endpoint:?} is not an admin address (host:port): {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(ca) = &args.cacert {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            tls = tls.identity(Identity::from_pem(
                read(cert, "certificate")?,
                read(key, "key")?,
            ));
        }
        channel = channel
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    channel
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}; is --listen-admin set there?"))
}

/// `message` as a request carrying the admin token, if one is given.
fn request<T>(args: &AdminArgs, message: T) -> Result<tonic::Request<T>, String> {
    let mut request = tonic::Request::new(message);
    if let Some(path) = &args.token_file {
        let token = String::from_utf8_lossy(&read(path, "admin token")?)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| format!("{} does not hold a usable token", path.display()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// A refused or failed call as a sentence: what failed, the member's reason, and what to do
/// when the status code says more than the reason.
fn failed(what: &str, endpoint: &str, status: &tonic::Status) -> String {
    use tonic::Code;
    let hint = match status.code() {
        Code::Unauthenticated => "; pass the members' admin token with --token-file",
        Code::PermissionDenied => "; the admin listener wants an admin client certificate",
        Code::Unavailable => "; is the member running, with --listen-admin at this address?",
        Code::DeadlineExceeded => {
            "; the change may still take effect: check with `status` before retrying"
        }
        _ => "",
    };
    format!("{what} at {endpoint} failed: {}{hint}", status.message())
}

/// One member's answer to `status`, or why there is none.
type Answer = Result<StatusReply, String>;

/// Asks every endpoint for its status, one after the other.
async fn statuses(args: &AdminArgs) -> Vec<(String, Answer)> {
    let mut out = Vec::new();
    for endpoint in &args.endpoints {
        let answer = async {
            let mut admin = AdminClient::new(connect(args, endpoint).await?);
            let reply = admin
                .status(request(args, StatusRequest {})?)
                .await
                .map_err(|e| failed("status", endpoint, &e))?;
            Ok(reply.into_inner())
        }
        .await;
        out.push((endpoint.clone(), answer));
    }
    out
}

/// The endpoint that takes a leader-only command: the only one given, or the one whose member
/// reports that it leads.
async fn leader_endpoint(args: &AdminArgs) -> Result<String, String> {
    if let [only] = args.endpoints.as_slice() {
        return Ok(only.clone());
    }
    let answers = statuses(args).await;
    if let Some((endpoint, _)) = answers
        .iter()
        .find(|(_, a)| a.as_ref().is_ok_and(|s| s.role == "leader"))
    {
        return Ok(endpoint.clone());
    }
    let reasons: Vec<String> = answers
        .iter()
        .map(|(endpoint, a)| match a {
            Ok(s) => format!("{endpoint}: member {} is a {}", s.id, s.role),
            Err(e) => e.clone(),
        })
        .collect();
    Err(format!(
        "no member among the endpoints leads (an election may be under way, or the leader's \
         admin address is not among them): {}",
        reasons.join("; ")
    ))
}

/// Prints the members' statuses as a table, with each member's lag as its leader reports it.
fn print_table(answers: &[(String, Answer)]) {
    let lag: std::collections::BTreeMap<u64, u64> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .filter(|s| s.role == "leader")
        .flat_map(|s| s.peers.iter().map(|p| (p.id, p.lag)))
        .collect();
    let mut rows = vec![
        [
            "ENDPOINT", "ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAG", "VOTERS",
            "LEARNERS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    for (endpoint, answer) in answers {
        match answer {
            Ok(s) => {
                let m = s.membership.clone().unwrap_or_default();
                let list = |ids: &[u64]| {
                    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
                    if ids.is_empty() {
                        "-".into()
                    } else {
                        ids.join(",")
                    }
                };
                rows.push(vec![
                    endpoint.clone(),
                    s.id.to_string(),
                    s.role.clone(),
                    s.term.to_string(),
                    if s.leader == 0 {
                        "none".into()
                    } else {
                        s.leader.to_string()
                    },
                    s.commit_index.to_string(),
                    s.applied_index.to_string(),
                    lag.get(&s.id).map_or("-".into(), u64::to_string),
                    list(&m.voters),
                    list(&m.learners),
                ]);
            }
            Err(e) => {
                let mut row = vec![endpoint.clone(), "?".into(), "unreachable".into()];
                row.resize(10, "-".into());
                rows.push(row);
                errors.push(e.clone());
            }
        }
    }
    let widths: Vec<usize> = (0..10)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    for e in errors {
        eprintln!("{e}");
    }
}

/// Runs one admin command; prints its answer on stdout.
pub(crate) async fn run(args: AdminArgs) -> Result<(), String> {
    let membership = |m: Option<dengine_net_grpc::pb::Membership>| {
        let m = m.unwrap_or_default();
        format!("voters={:?} learners={:?}", m.voters, m.learners)
    };
    if let AdminCmd::Status = args.command {
        let answers = statuses(&args).await;
        print_table(&answers);
        return if answers.iter().any(|(_, a)| a.is_ok()) {
            Ok(())
        } else {
            Err("no member answered".into())
        };
    }
    let endpoint = leader_endpoint(&args).await?;
    let mut admin = AdminClient::new(connect(&args, &endpoint).await?);
    let e = endpoint.as_str();
    match &args.command {
        AdminCmd::Status => unreachable!("answered above"),
        AdminCmd::AddLearner { id, address } => {
            let r = admin
                .add_learner(request(
                    &args,
                    AddLearnerRequest {
                        id: *id,
                        address: address.clone(),
                    },
                )?)
                .await
                .map_err(|s| failed("add-learner", e, &s))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::Promote { id } => {
            let r = admin
                .promote(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|s| failed("promote", e, &s))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::Remove { id } => {
            let r = admin
                .remove(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|s| failed("remove", e, &s))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::TransferLeader { id } => {
            admin
                .transfer_leader(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|s| failed("transfer-leader", e, &s))?;
            println!("member {id} leads");
        }
        AdminCmd::Snapshot => {
            let r = admin
                .trigger_snapshot(request(&args, TriggerSnapshotRequest {})?)
                .await
                .map_err(|s| failed("snapshot", e, &s))?
                .into_inner();
            let id = r.last_included.unwrap_or_default();
            println!("snapshot at index {} term {}", id.index, id.term);
        }
    }
    Ok(())
}
