//! What a client sends on its stream: subscribe and unsubscribe requests, answered with
//! Octave's envelope echoing `msgId`. Anything else gets an error envelope (status 400)
//! and the socket stays open.

use apiary_plugin_sdk::stream::{Connection, Frame};
use apiary_plugin_sdk::{streams, types};
use serde_json::{json, Map, Value};

use crate::streams::{self as st, Stream};

/// Octave's acknowledgement text.
const PROCESSED: &str = "Your request has been processed successfully.";

fn head(
    msg_id: Option<&Value>,
    ok: bool,
    status: Option<u16>,
    errors: Vec<String>,
) -> Map<String, Value> {
    let mut h = Map::new();
    if let Some(id) = msg_id {
        h.insert("msgId".into(), id.clone());
    }
    h.insert("ok".into(), json!(ok));
    if let Some(s) = status {
        h.insert("status".into(), json!(s));
    }
    h.insert("errors".into(), json!(errors));
    h.insert(
        "messages".into(),
        json!(if ok { vec![PROCESSED] } else { vec![] }),
    );
    h
}

fn error(msg_id: Option<&Value>, status: u16, why: impl Into<String>) -> Value {
    json!({"head": head(msg_id, false, Some(status), vec![why.into()]), "body": {}})
}

/// The answer to one frame.
pub fn answer(conn: &Connection, frame: Frame) -> Value {
    let text = match frame {
        Frame::Text(t) => t,
        _ => return error(None, 400, "frames are JSON text"),
    };
    let req: Value = match serde_json::from_str(&text) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return error(None, 400, "a request is a JSON object"),
        Err(e) => return error(None, 400, format!("malformed JSON: {e}")),
    };
    let msg_id = req.get("msgId").filter(|v| !v.is_null());
    if let Some(id) = msg_id.filter(|v| !v.is_string() && !v.is_number()) {
        return error(None, 400, format!("msgId must be a string, not {id}"));
    }
    match req.get("object").and_then(Value::as_str) {
        Some("event") => {}
        Some(o) => {
            return error(
                msg_id,
                400,
                format!("unknown object {o:?} (only \"event\")"),
            )
        }
        None => return error(msg_id, 400, "missing object (\"event\")"),
    }
    let subscribe = match req.get("type").and_then(Value::as_str) {
        Some("subscribe") => true,
        Some("unsubscribe") => false,
        Some(t) => {
            return error(
                msg_id,
                400,
                format!("unknown type {t:?} (subscribe or unsubscribe)"),
            )
        }
        None => return error(msg_id, 400, "missing type (subscribe or unsubscribe)"),
    };
    let stream = match (req.get("streamId"), req.get("path")) {
        (Some(Value::String(id)), None) => st::by_id(&conn.tenant, id),
        (None, Some(Value::String(p))) => st::by_path(&conn.tenant, p),
        (Some(_), Some(_)) => Err("give streamId or path, not both".into()),
        (None, None) => Err("missing streamId or path".into()),
        _ => Err("streamId and path are strings".into()),
    };
    let stream = match stream {
        Ok(s) => s,
        Err(why) => {
            return error(
                msg_id,
                if why.starts_with("unknown streamId") {
                    404
                } else {
                    400
                },
                why,
            )
        }
    };
    match apply(conn.id, &stream, subscribe) {
        Ok(()) => {
            if subscribe {
                // Only a stream a client subscribed to is worth its id's kv entry.
                st::remember(&conn.tenant, &stream);
            }
            json!({
                "head": head(msg_id, true, None, vec![]),
                "body": {"streamId": stream.id, "path": stream.path},
            })
        }
        Err((status, why)) => error(msg_id, status, why),
    }
}

fn apply(conn: u64, s: &Stream, subscribe: bool) -> Result<(), (u16, String)> {
    let r = if subscribe {
        streams::subscribe(conn, st::topic(s), 0).map(|_| ())
    } else {
        streams::unsubscribe(conn, st::topic(s)).map(|_| ())
    };
    r.map_err(|e| match e {
        types::Error::Refused(m) | types::Error::PermissionDenied(m) => (403, m),
        types::Error::InvalidArgument(m) => (400, m),
        types::Error::NotFound(m) => (410, m),
        types::Error::Unavailable(m) | types::Error::QuotaExceeded(m) => (503, m),
    })
}
