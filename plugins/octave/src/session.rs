//! Session ids: `POST /session` checks the API key and issues a random id, kept in the
//! plugin's kv until a socket uses it (once) or it expires; the WebSocket handshake at
//! `/session/{id}/ws` claims it.

use std::sync::atomic::Ordering;

use apiary_plugin_sdk::apikeys::{self, KeyInfo};
use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::keyauth::{has_right, Right};
use apiary_plugin_sdk::stream::{Accepted, HandshakeDecision, HandshakeRequest, Refusal};
use apiary_plugin_sdk::{clock, kv, types};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{http_envelope, SESSION_TTL_SECS};

/// kv prefix of pending session ids.
const PENDING: &str = "session/";

/// What a pending session id stands for.
#[derive(Serialize, Deserialize)]
struct Pending {
    tenant: String,
    key: String,
    expires_ms: i64,
}

/// Why `POST /session` refused.
fn refuse(status: u16, why: impl Into<String>) -> Response {
    http_envelope(status, vec![why.into()], json!({}))
}

/// The key a request authenticates with: `X-Auth-User` + `X-Auth-Token`, or for a
/// restricted token (no `X-Auth-User`) `X-Auth-Token: <key>:<secret>`.
fn key_of(req: &Request) -> Result<KeyInfo, Response> {
    let token = req.header("x-auth-token").filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(refuse(401, "missing X-Auth-Token"));
    };
    let (key, secret) = match req.header("x-auth-user").filter(|u| !u.is_empty()) {
        Some(user) => (user, token),
        None => match token.split_once(':') {
            Some((k, s)) => (k, s),
            None => {
                return Err(refuse(
                    401,
                    "a restricted token (no X-Auth-User) is <key>:<secret>",
                ))
            }
        },
    };
    match apikeys::verify(key, secret) {
        Ok(Some(k)) => Ok(k),
        Ok(None) => Err(refuse(401, "invalid user or token")),
        Err(e) => Err(refuse(503, format!("cannot check the token now: {e:?}"))),
    }
}

/// Whether `id` has the shape `random_id` makes (`<11>.<32>`, URL-safe base64): anything
/// else is unknown without asking the store.
fn well_formed(id: &str) -> bool {
    let b64 = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    matches!(id.split_once('.'), Some((a, b)) if a.len() == 11 && b.len() == 32 && b64(a) && b64(b))
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: ids would be guessable, so none are issued.
        return String::new();
    }
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", e.encode(&b[..8]), e.encode(&b[8..]))
}

/// Drops a few expired ids so abandoned ones do not fill the kv quota.
fn sweep(now: i64) {
    let Ok(keys) = kv::list_keys(PENDING, 32) else {
        return;
    };
    for k in keys {
        let expired = match kv::get(&k) {
            Ok(Some(v)) => {
                serde_json::from_slice::<Pending>(&v).map_or(true, |p| p.expires_ms <= now)
            }
            _ => false,
        };
        if expired {
            let _ = kv::delete(&k);
        }
    }
}

/// `POST /session`.
pub fn create(req: &Request) -> Response {
    let key = match key_of(req) {
        Ok(k) => k,
        Err(r) => return r,
    };
    let Some(company) = req.header("x-auth-company").filter(|c| !c.is_empty()) else {
        return refuse(400, "missing X-Auth-Company");
    };
    if key.tenant != "*" && key.tenant != company {
        return refuse(
            403,
            format!("the key acts on company {}, not {company}", key.tenant),
        );
    }
    if !has_right(&key, Right::ConnectionsRead) {
        return refuse(403, "the key does not hold connections:read");
    }
    let now = clock::now_ms();
    sweep(now);
    let id = random_id();
    if id.is_empty() {
        return refuse(503, "no entropy source for session ids");
    }
    let ttl = SESSION_TTL_SECS.load(Ordering::Relaxed) as i64;
    let p = Pending {
        tenant: company.to_string(),
        key: key.key.clone(),
        expires_ms: now + ttl * 1000,
    };
    let v = serde_json::to_vec(&p).unwrap_or_default();
    match kv::set(&format!("{PENDING}{id}"), &v) {
        Ok(()) => http_envelope(201, vec![], json!({"id": id})),
        Err(types::Error::QuotaExceeded(_)) => {
            refuse(503, "too many pending sessions; connect or retry later")
        }
        Err(e) => refuse(503, format!("cannot store the session: {e:?}")),
    }
}

fn refusal(status: u16, why: &str) -> HandshakeDecision {
    let body = json!({"head": {"ok": false, "status": status, "errors": [why]}, "body": {}});
    HandshakeDecision::Refuse(Refusal {
        status,
        content_type: "application/json".into(),
        body: body.to_string().into_bytes(),
    })
}

/// The upgrade at `/session/{id}/ws`: claims the id (once) and opens the stream.
pub fn handshake(req: &HandshakeRequest) -> HandshakeDecision {
    let id = req.path.split('/').nth(2).unwrap_or("");
    if !well_formed(id) {
        return refusal(404, "unknown or already used session id");
    }
    let k = format!("{PENDING}{id}");
    let pending = match kv::get(&k) {
        Ok(Some(v)) => serde_json::from_slice::<Pending>(&v).ok(),
        Ok(None) => None,
        Err(_) => return refusal(503, "cannot read sessions now"),
    };
    let Some(p) = pending else {
        return refusal(404, "unknown or already used session id");
    };
    // Deleting is the claim: of two sockets racing for one id, only one deletes it.
    if !matches!(kv::delete(&k), Ok(true)) {
        return refusal(404, "unknown or already used session id");
    }
    if p.expires_ms <= clock::now_ms() {
        return refusal(410, "session id expired");
    }
    let description: Value = json!({"company": p.tenant, "session": id});
    HandshakeDecision::Accept(Accepted {
        tenant: p.tenant,
        client_id: format!("octave-{}", id.split('.').next().unwrap_or(id)),
        user_id: Some(p.key.clone()),
        username: Some(p.key),
        description: Some(description.to_string()),
        superuser: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_one_shape() {
        let id = random_id();
        assert!(well_formed(&id), "{id}");
        assert_ne!(id, random_id());
        let long = "x".repeat(2000);
        assert!(
            well_formed("n2fBC9YeE6g.qsQNPOZfoSRP3brEY_9QWapawcjXl04Y"),
            "the seed's"
        );
        for bad in [
            "",
            "nope",
            "a.b",
            &long,
            "n2fBC9YeE6g.qsQNPOZfoSRP3brEY_9QWapawcjXl04",
            "n2fBC9YeE6g.qsQNPOZfoSRP3brEY/9QWapawcjXl04Y",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
