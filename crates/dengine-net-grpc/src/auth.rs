//! Who may speak for a member: peer authentication on the peer listener.
//!
//! Raft trusts every message that claims to come from a member: one forged append can make a
//! follower drop acknowledged entries, one forged term can depose a leader. So the peer
//! listener checks, on every request, the credentials that bind a connection to member ids:
//!
//! * **Mutual TLS with member identities** (when peer TLS requires client certificates): the
//!   client certificate, already verified against the CA, must name the member the request
//!   claims to come from — its Common Name or a DNS name equal to `member-<id>` or starting
//!   with `member-<id>.` (e.g. `member-3.db.internal`), or, when
//!   [`GrpcConfig::member_names`](crate::GrpcConfig::member_names) is set, the name configured
//!   for that id.
//! * **A shared cluster secret** (when configured): every request carries it in the
//!   `dengine-cluster-secret` metadata; a request without the right secret is refused. It
//!   keeps out blind injection by anyone who can reach the port but cannot read the traffic.
//!   Without TLS the secret crosses the network in clear text: whoever can observe the
//!   traffic learns it. Use mutual TLS where the network is not trusted.
//!
//! With neither, every request is accepted as its header says (the default; bind the peer
//! listener to a private address).

use std::collections::BTreeMap;

use dengine_core::NodeId;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// The metadata key that carries the cluster secret.
pub const SECRET_METADATA: &str = "dengine-cluster-secret";

/// What a request presented: the names in its verified client certificate (if any) and
/// whether it carried the right cluster secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Common Name and DNS/URI subject alternative names of the client certificate.
    pub names: Vec<String>,
}

/// The peer-authentication policy of one node.
#[derive(Clone, Debug, Default)]
pub struct PeerAuth {
    secret: Option<String>,
    require_certificate: bool,
    member_names: BTreeMap<NodeId, String>,
}

impl PeerAuth {
    /// A policy: check `secret` if given; require a client certificate naming the member when
    /// `require_certificate` (peer TLS with client certificates), using `member_names` when
    /// not empty and the `member-<id>` convention otherwise.
    pub fn new(
        secret: Option<String>,
        require_certificate: bool,
        member_names: BTreeMap<NodeId, String>,
    ) -> Self {
        PeerAuth {
            secret,
            require_certificate,
            member_names,
        }
    }

    /// Whether any check is configured.
    pub fn is_enabled(&self) -> bool {
        self.secret.is_some() || self.require_certificate
    }

    /// The metadata outgoing peer requests carry (the secret, if configured).
    pub(crate) fn outgoing_secret(&self) -> Option<&str> {
        self.secret.as_deref()
    }

    /// Checks the connection-level credentials of `request` (the secret) and returns what it
    /// presented, for [`allows`](Self::allows) to check against each claimed sender.
    pub fn credentials<T>(&self, request: &Request<T>) -> Result<PeerCredentials, Status> {
        if let Some(secret) = &self.secret
            && !secret_matches(request.metadata(), secret)
        {
            return Err(Status::unauthenticated(
                "peer request without the right cluster secret (network.cluster_secret_file)",
            ));
        }
        let names = match request.peer_certs() {
            Some(certs) => certs
                .first()
                .map(|leaf| certificate_names(leaf))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        if self.require_certificate && names.is_empty() {
            return Err(Status::unauthenticated(
                "peer request without a client certificate that names a member",
            ));
        }
        Ok(PeerCredentials { names })
    }

    /// Whether `credentials` may speak for member `from`.
    pub fn allows(&self, credentials: &PeerCredentials, from: NodeId) -> Result<(), Status> {
        if !self.require_certificate {
            return Ok(());
        }
        let ok = match self.member_names.get(&from) {
            Some(expected) => credentials.names.iter().any(|n| n == expected),
            None if !self.member_names.is_empty() => false,
            None => credentials.names.iter().any(|n| names_member(n, from)),
        };
        if ok {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "the client certificate ({}) does not identify member {from}",
                credentials.names.join(", ")
            )))
        }
    }
}

/// Whether certificate name `name` identifies member `id` by the `member-<id>` convention.
fn names_member(name: &str, id: NodeId) -> bool {
    let want = format!("member-{id}");
    name == want
        || name
            .strip_prefix(&want)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Compares the request's secret with `secret`.
fn secret_matches(metadata: &MetadataMap, secret: &str) -> bool {
    metadata
        .get(SECRET_METADATA)
        .is_some_and(|given| constant_time_eq(given.as_bytes(), secret.as_bytes()))
}

/// Whether `given` equals `want`, in time that does not depend on where they differ (only on
/// `want`'s length), so a secret cannot be guessed byte by byte from response times.
pub fn constant_time_eq(given: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= w ^ given.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The Common Name and the DNS and URI subject alternative names of a DER certificate
/// (empty when it cannot be parsed; the TLS layer has verified it already).
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::URI(n) => names.push((*n).to_string()),
                _ => {}
            }
        }
    }
    names
}

/// The Common Name of the verified client certificate of `request`, if it presented one (for
/// client authentication by certificate, as etcd's `--client-cert-auth`).
pub fn client_common_name<T>(request: &Request<T>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let certs = request.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_follow_the_convention_or_the_configured_map() {
        assert!(names_member("member-3", 3));
        assert!(names_member("member-3.db.internal", 3));
        assert!(!names_member("member-31", 3));
        assert!(!names_member("member-3x", 3));
        assert!(!names_member("xmember-3", 3));
        let creds = PeerCredentials {
            names: vec!["10.0.0.3".into(), "member-3.db".into()],
        };
        let convention = PeerAuth::new(None, true, BTreeMap::new());
        assert!(convention.allows(&creds, 3).is_ok());
        assert_eq!(
            convention.allows(&creds, 1).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let mapped = PeerAuth::new(None, true, BTreeMap::from([(1, "10.0.0.3".to_string())]));
        assert!(mapped.allows(&creds, 1).is_ok());
        assert!(
            mapped.allows(&creds, 3).is_err(),
            "an unmapped id is refused"
        );
        assert!(PeerAuth::default().allows(&creds, 9).is_ok(), "no policy");
    }

    #[test]
    fn the_secret_must_match_exactly() {
        let auth = PeerAuth::new(Some("s3cret-s3cret-s3cret".into()), false, BTreeMap::new());
        for (given, ok) in [
            (None, false),
            (Some("s3cret-s3cret-s3cret"), true),
            (Some("s3cret-s3cret-s3cre"), false),
            (Some("s3cret-s3cret-s3cret!"), false),
            (Some("x3cret-s3cret-s3cret"), false),
        ] {
            let mut request = Request::new(());
            if let Some(g) = given {
                request
                    .metadata_mut()
                    .insert(SECRET_METADATA, g.parse().unwrap());
            }
            assert_eq!(auth.credentials(&request).is_ok(), ok, "{given:?}");
        }
    }
}
