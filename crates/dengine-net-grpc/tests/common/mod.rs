//! What the transport tests share: an inbox that records what arrives, nodes on loopback,
//! messages, and certificates made at test time.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dengine_core::store::SnapshotData;
use dengine_core::{
    AppendRequest, AppendResponse, Entry, EntryId, EntryPayload, Inbox, InboxError, Membership,
    Message, MessageBody, NodeId, SnapshotMeta, Transport,
};
use dengine_net_grpc::{GrpcConfig, GrpcTransport, ServerHandle, TlsConfig};

/// Records what arrives; optionally answers every append through a transport, as a
/// follower's runtime would.
#[derive(Default)]
pub struct Collect {
    pub messages: Mutex<Vec<Message>>,
    pub snapshots: Mutex<Vec<(Message, Bytes)>>,
    /// How many of `snapshots` were handed over in a file rather than in memory.
    pub snapshots_in_files: std::sync::atomic::AtomicUsize,
    pub answer_with: Mutex<Option<GrpcTransport>>,
    /// Senders this node considers removed from the cluster.
    pub retired: Mutex<Vec<NodeId>>,
    /// What the transport reported about this node's own removal.
    pub removed: Mutex<Vec<String>>,
}

impl Collect {
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

impl Inbox for Collect {
    fn deliver(&self, m: Message) -> Result<(), InboxError> {
        if let (MessageBody::Append(a), Some(t)) = (&m.body, &*self.answer_with.lock().unwrap()) {
            let last = a.entries.last().map_or(a.prev, Entry::id);
            t.send(Message {
                from: m.to,
                to: m.from,
                term: m.term,
                body: MessageBody::AppendResponse(AppendResponse::Accepted { last }),
            });
        }
        self.messages.lock().unwrap().push(m);
        Ok(())
    }

    fn deliver_snapshot(&self, m: Message, data: SnapshotData) -> Result<(), InboxError> {
        if matches!(data, SnapshotData::Source(_)) {
            self.snapshots_in_files
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let bytes = data.to_bytes().expect("the delivered snapshot reads back");
        self.snapshots.lock().unwrap().push((m, bytes));
        Ok(())
    }

    fn is_retired(&self, from: NodeId) -> bool {
        self.retired.lock().unwrap().contains(&from)
    }

    fn removed_from_cluster(&self, detail: String) {
        self.removed.lock().unwrap().push(detail);
    }
}

pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub struct Node {
    pub transport: GrpcTransport,
    pub inbox: Arc<Collect>,
    pub server: ServerHandle,
}

pub async fn node_with(config: GrpcConfig) -> Node {
    let transport = GrpcTransport::new(config).unwrap();
    let inbox = Arc::new(Collect::default());
    let server = transport
        .serve("127.0.0.1:0".parse().unwrap(), inbox.clone())
        .await
        .unwrap();
    Node {
        transport,
        inbox,
        server,
    }
}

pub fn fast(id: NodeId, cluster: u64) -> GrpcConfig {
    let mut c = GrpcConfig::new(id, cluster);
    c.reconnect_initial = Duration::from_millis(10);
    c.reconnect_max = Duration::from_millis(100);
    c
}

pub fn append(from: NodeId, to: NodeId, index: u64, entries: usize) -> Message {
    let entries = (0..entries as u64)
        .map(|i| {
            Entry::new(
                1,
                index + i,
                EntryPayload::Normal(Bytes::from(vec![b'x'; 256])),
            )
        })
        .collect();
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Append(AppendRequest {
            prev: EntryId::new(u64::from(index > 1), index - 1),
            entries,
            commit: 0,
        }),
    }
}

pub fn snapshot_message(from: NodeId, to: NodeId) -> Message {
    Message {
        from,
        to,
        term: 3,
        body: MessageBody::InstallSnapshot(SnapshotMeta {
            last_included: EntryId::new(2, 500),
            membership: Membership::new([1, 2, 3]).with_address(2, "127.0.0.1:1"),
        }),
    }
}

pub fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// Certificates made at test time: a CA, nodes signed by it, and an impostor signed by
/// another CA.
pub struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki { dir };
        pki.make_ca("ca");
        pki.make_ca("other-ca");
        pki
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    pub fn make_ca(&self, name: &str) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("dengine test {name}"));
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// A certificate for "localhost" that names member `id` (`member-<id>`), signed by `ca`;
    /// returns its TLS settings.
    pub fn node(&self, id: NodeId, ca: &str, require_client_cert: bool) -> TlsConfig {
        let name = format!("node{id}-{ca}");
        let ca_key_pem = std::fs::read_to_string(self.path(&format!("{ca}.key"))).unwrap();
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("dengine test {ca}"));
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), format!("member-{id}")])
                .unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        TlsConfig {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}.key")),
            // Every node trusts the real CA for the servers it talks to.
            ca: self.path("ca.pem"),
            require_client_cert,
            server_name: Some("localhost".into()),
        }
    }
}
