//! `dengine-kv admin`: dengine's admin API (`dengine.admin.v1.Admin`, served on
//! `--listen-admin`) from the command line — status, learners, promotion, removal, leader
//! transfer, snapshots — with the admin token and TLS the admin listener asks for.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use dengine_net_grpc::admin_pb::admin_client::AdminClient;
use dengine_net_grpc::admin_pb::{
    AddLearnerRequest, NodeRequest, StatusRequest, TriggerSnapshotRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Where the admin API is and how to prove admin rights.
#[derive(Args)]
pub(crate) struct AdminArgs {
    /// The member's admin address (its --listen-admin), e.g. 127.0.0.1:2381.
    #[arg(long)]
    endpoint: String,
    /// A file holding the admin token (the member's admin.token_file).
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
    /// Timeout of the call in milliseconds.
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

async fn connect(args: &AdminArgs) -> Result<Channel, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let scheme = if args.cacert.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{}", args.endpoint))
        .map_err(|e| format!("bad endpoint {:?}: {e}", args.endpoint))?
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
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.endpoint))
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

fn failed(what: &str, status: tonic::Status) -> String {
    format!("{what}: {} ({:?})", status.message(), status.code())
}

/// Runs one admin command; prints its answer on stdout.
pub(crate) async fn run(args: AdminArgs) -> Result<(), String> {
    let mut admin = AdminClient::new(connect(&args).await?);
    let membership = |m: Option<dengine_net_grpc::pb::Membership>| {
        let m = m.unwrap_or_default();
        format!("voters={:?} learners={:?}", m.voters, m.learners)
    };
    match &args.command {
        AdminCmd::Status => {
            let s = admin
                .status(request(&args, StatusRequest {})?)
                .await
                .map_err(|e| failed("status", e))?
                .into_inner();
            println!(
                "id={} role={} term={} leader={} commit={} applied={} {}",
                s.id,
                s.role,
                s.term,
                s.leader,
                s.commit_index,
                s.applied_index,
                membership(s.membership)
            );
        }
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
                .map_err(|e| failed("add-learner", e))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::Promote { id } => {
            let r = admin
                .promote(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|e| failed("promote", e))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::Remove { id } => {
            let r = admin
                .remove(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|e| failed("remove", e))?
                .into_inner();
            println!("{}", membership(r.membership));
        }
        AdminCmd::TransferLeader { id } => {
            admin
                .transfer_leader(request(&args, NodeRequest { id: *id })?)
                .await
                .map_err(|e| failed("transfer-leader", e))?;
            println!("member {id} leads");
        }
        AdminCmd::Snapshot => {
            let r = admin
                .trigger_snapshot(request(&args, TriggerSnapshotRequest {})?)
                .await
                .map_err(|e| failed("snapshot", e))?
                .into_inner();
            let id = r.last_included.unwrap_or_default();
            println!("snapshot at index {} term {}", id.index, id.term);
        }
    }
    Ok(())
}
