//! Who a request comes from: the credentials it carries ([`Credentials`]: etcd's `token`
//! metadata, or the Common Name of a verified TLS client certificate when the member runs with
//! `client_cert_auth`), resolved to a user name by the member's [`AuthHub`].

use tonic::Request;

use super::hub::AuthHub;
use crate::error::KvError;

/// The metadata keys etcd reads a token from: `token` (gRPC clients), `authorization` (its
/// HTTP gateway).
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// A request's credentials, taken from it before its body is consumed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl Credentials {
    /// The token in `request`'s metadata and, if `client_cert_auth`, the Common Name of the
    /// client certificate the TLS layer verified (tonic hands out only verified peer
    /// certificates: the server requires them to chain to its client CA).
    pub(crate) fn of<T>(request: &Request<T>, client_cert_auth: bool) -> Self {
        let token = TOKEN_KEYS
            .iter()
            .find_map(|k| request.metadata().get(*k))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let common_name = if client_cert_auth {
            request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|leaf| common_name(leaf)))
        } else {
            None
        };
        Credentials { token, common_name }
    }
}

/// The Common Name of a DER certificate's subject; `None` if the certificate cannot be read,
/// has no Common Name, or has several (which one names the user would be a guess).
pub(crate) fn common_name(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut names = cert.subject().iter_common_name();
    let first = names.next()?.as_str().ok()?;
    match names.next() {
        None if !first.is_empty() => Some(first.to_owned()),
        _ => None,
    }
}

impl AuthHub {
    /// The user `credentials` name: a token's user (the token wins, as in etcd), else the
    /// certificate's name, else nobody. A token this member does not know is an error while
    /// auth is enabled (etcd's "invalid auth token", on which clients authenticate again)
    /// and ignored while it is disabled. Whether the user may do anything is decided later,
    /// against the request.
    pub(crate) fn identify(&self, credentials: &Credentials) -> Result<Option<String>, KvError> {
        if let Some(token) = &credentials.token {
            match self.user_of_token(token) {
                Some(user) => return Ok(Some(user)),
                None if self.is_enabled() => return Err(KvError::InvalidAuthToken),
                None => {}
            }
        }
        Ok(credentials.common_name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_certificate() {
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(common_name(&[]), None);
    }

    #[test]
    fn an_unknown_token_is_ignored_while_auth_is_disabled() {
        let hub = AuthHub::default();
        let mut request = Request::new(());
        request
            .metadata_mut()
            .insert("token", tonic::metadata::MetadataValue::from_static("abc"));
        let credentials = Credentials::of(&request, true);
        assert_eq!(credentials.token.as_deref(), Some("abc"));
        assert_eq!(credentials.common_name, None, "no TLS, no certificate");
        assert_eq!(hub.identify(&credentials), Ok(None));
        assert_eq!(hub.identify(&Credentials::default()), Ok(None));
    }
}
