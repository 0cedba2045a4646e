//! API keys on HTTP requests: HTTP basic auth `key:secret` checked by the host's key
//! store. After a successful check the rest of the call acts as the key (its tenant and
//! rights bound every registry and broker call), so a plugin cannot reach past it.

use crate::apikeys::{self, KeyInfo};
use crate::http::{HttpError, Request};
use crate::types;

/// Why a request's API key was not accepted.
#[derive(Debug, Clone)]
pub enum KeyError {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Basic base64(key:secret)`.
    Malformed,
    /// Unknown key or wrong secret.
    Invalid,
    /// The host refused the check (e.g. too many failed logins from this address).
    Host(types::Error),
}

impl KeyError {
    /// A message for the caller.
    pub fn message(&self) -> String {
        match self {
            KeyError::Missing => "Basic authentication with an API key is required".into(),
            KeyError::Malformed => "malformed basic authentication header".into(),
            KeyError::Invalid => "Bad API key or secret".into(),
            KeyError::Host(e) => format!("{e:?}"),
        }
    }
}

impl From<KeyError> for HttpError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Host(h) => h.into(),
            other => HttpError::new(401, "BAD_API_KEY_OR_SECRET", other.message()),
        }
    }
}

/// The `key` and `secret` of an `Authorization: Basic ...` header (read as the broker's
/// own routes read it).
pub fn basic_credentials(req: &Request) -> Result<(String, String), KeyError> {
    let h = req.header("authorization").ok_or(KeyError::Missing)?;
    apiary_common::credentials::basic(h).ok_or(KeyError::Malformed)
}

/// Checks the request's basic-auth API key with the host (needs the `apikeys`
/// capability). On success the rest of this call acts as the key.
pub fn api_key(req: &Request) -> Result<KeyInfo, KeyError> {
    let (key, secret) = basic_credentials(req)?;
    match apikeys::verify(&key, &secret) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(KeyError::Invalid),
        Err(e) => Err(KeyError::Host(e)),
    }
}

pub use apiary_common::rights::Right;

/// Whether a key holds `right` (`admin` holds every right).
pub fn has_right(k: &KeyInfo, right: Right) -> bool {
    k.rights
        .iter()
        .filter_map(|r| Right::parse(r))
        .any(|r| r == right || r == Right::Admin)
}

/// The tenant a verified key acts on: its own, or `default_tenant` for a key that spans
/// every tenant (`*`), for APIs whose calls name no tenant.
pub fn acting_tenant(k: &KeyInfo, default_tenant: &str) -> String {
    if k.tenant == "*" {
        default_tenant.to_string()
    } else {
        k.tenant.clone()
    }
}
