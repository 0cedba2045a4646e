//! `POST /publish` and `/publish/bulk`: publish as the broker into the caller's tenant.

use apiary_plugin_sdk::broker;
use apiary_plugin_sdk::http::{HttpError, Request, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::Right;
use crate::{host_error, Caller};

#[derive(Deserialize)]
struct PubReq {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    payload_encoding: Option<String>,
    // Accepted and not used: the broker publishes as itself.
    #[serde(default)]
    #[allow(dead_code)]
    clientid: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<Value>,
}

/// One publish: `{"id"}` when it reached a subscriber, else EMQX's 202-style
/// `{"reason_code":16,"message":"no_matching_subscribers"}`.
fn publish(c: &Caller, p: PubReq) -> Result<(bool, Value), HttpError> {
    if p.qos > 2 {
        return Err(HttpError::bad_request("qos must be 0, 1 or 2"));
    }
    let payload = match p.payload_encoding.as_deref() {
        None | Some("plain") => p.payload.into_bytes(),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(p.payload.as_bytes())
            .map_err(|e| HttpError::bad_request(format!("payload is not base64: {e}")))?,
        Some(other) => {
            return Err(HttpError::bad_request(format!(
                "payload_encoding must be plain or base64, got {other:?}"
            )))
        }
    };
    let n = broker::publish(&c.tenant, &p.topic, &payload, p.qos, p.retain).map_err(host_error)?;
    if n == 0 {
        Ok((
            false,
            json!({"reason_code": 16, "message": "no_matching_subscribers"}),
        ))
    } else {
        Ok((true, json!({ "id": message_id() })))
    }
}

/// A unique-enough message id: time, then a per-instance random start plus a counter.
fn message_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "{:016X}{:016X}",
        apiary_plugin_sdk::clock::now_ms(),
        seed.wrapping_add(n)
    )
}

/// `POST /publish`: 200 with the message id, or 202 when no subscriber matched.
pub fn one(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::Publish)?;
    let p: PubReq = r.json()?;
    let (delivered, v) = publish(c, p)?;
    Ok(Response::json(if delivered { 200 } else { 202 }, &v))
}

/// `POST /publish/bulk`: one result per message, in order.
pub fn bulk(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::Publish)?;
    let ps: Vec<PubReq> = r.json()?;
    if ps.is_empty() {
        return Err(HttpError::bad_request("an array of messages is required"));
    }
    let mut out = Vec::with_capacity(ps.len());
    let mut any = false;
    for p in ps {
        let (d, v) = publish(c, p)?;
        any |= d;
        out.push(v);
    }
    Ok(Response::json(if any { 200 } else { 202 }, &out))
}
