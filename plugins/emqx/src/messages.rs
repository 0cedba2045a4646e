//! `GET /clients/{clientid}/mqueue_messages` and `/inflight_messages`: what a session holds,
//! paged by `position` with `meta.hasnext` (EMQX #18758), payloads as base64 (default),
//! plain text or left out (`payload=base64|plain|none`).

use apiary_plugin_sdk::http::{HttpError, Params, Request, Response};
use apiary_plugin_sdk::registry;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::params::MAX_LIMIT;
use crate::Right;
use crate::{client_not_found, host_error, Caller};

/// How payloads are shown.
#[derive(Clone, Copy)]
enum Payload {
    Base64,
    Plain,
    None,
}

fn message_json(m: &registry::SessionMessage, how: Payload) -> Value {
    let mut v = json!({
        "msgid": m.position.to_string(),
        "topic": m.topic,
        "qos": m.qos,
        "retain": m.retain,
        "publish_at": m.published_at,
        "from_clientid": m.from_client_id,
        "inserted_at": m.published_at.to_string(),
        "mqueue_priority": 0,
    });
    if let Some(pid) = m.packet_id {
        v["packet_id"] = json!(pid);
    }
    match how {
        Payload::Base64 => {
            v["payload"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.payload))
        }
        Payload::Plain => v["payload"] = json!(String::from_utf8_lossy(&m.payload)),
        Payload::None => {}
    }
    v
}

/// One page of a client's queued (or inflight) messages.
pub fn list(c: &Caller, r: &Request, p: &Params, inflight: bool) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    let q = r.query_params();
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                HttpError::bad_request(format!("limit must be between 1 and {MAX_LIMIT}"))
            })?,
    };
    let after = match q.get("position").filter(|s| !s.is_empty() && *s != "none") {
        None => None,
        Some(pos) => Some(pos.parse::<u64>().map_err(|_| {
            HttpError::bad_request(format!(
                "position {pos:?}: the meta.position of a previous page"
            ))
        })?),
    };
    let how = match q.get("payload").map(String::as_str) {
        None | Some("base64") => Payload::Base64,
        Some("plain") => Payload::Plain,
        Some("none") => Payload::None,
        Some(v) => {
            return Err(HttpError::bad_request(format!(
                "payload must be base64, plain or none, got {v:?}"
            )))
        }
    };
    let id = p.get("clientid").unwrap_or_default();
    let page = match registry::session_messages(&c.tenant, id, inflight, after, limit) {
        Ok(page) => page,
        Err(apiary_plugin_sdk::types::Error::NotFound(_)) => return Err(client_not_found()),
        Err(e) => return Err(host_error(e)),
    };
    let mut meta = json!({"limit": limit, "hasnext": page.has_next, "count": page.items.len()});
    if let Some(first) = page.items.first() {
        meta["start"] = json!(first.position.to_string());
    }
    if page.has_next {
        if let Some(last) = page.items.last() {
            meta["position"] = json!(last.position.to_string());
        }
    }
    let data: Vec<Value> = page.items.iter().map(|m| message_json(m, how)).collect();
    Ok(Response::json(200, &json!({"meta": meta, "data": data})))
}
