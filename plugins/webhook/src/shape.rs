//! Registry events as EMQX's webhook bodies show them (`event` names and fields), with
//! the tenant added.

use apiary_plugin_sdk::events::Event;
use base64::Engine as _;
use serde_json::{json, Value};

/// The EMQX event name of `e`.
pub fn name(e: &Event) -> &'static str {
    match e {
        Event::Connected(_) => "client.connected",
        Event::Disconnected(_) => "client.disconnected",
        Event::Subscribed(_) => "session.subscribed",
        Event::Unsubscribed(_) => "session.unsubscribed",
        Event::MessagePublished(_) => "message.publish",
        Event::MessageDropped(_) => "message.dropped",
        Event::SessionEnded(_) => "session.terminated",
    }
}

/// The topic a message event is about (the filters of a target apply to these).
pub fn topic(e: &Event) -> Option<&str> {
    match e {
        Event::MessagePublished(m) => Some(&m.topic),
        Event::MessageDropped(d) => Some(&d.topic),
        _ => None,
    }
}

/// The JSON body of one event, stamped `timestamp` (Unix ms).
pub fn body(e: &Event, timestamp: i64) -> Value {
    let mut v = match e {
        Event::Connected(c) => json!({
            "tenant": c.tenant, "clientid": c.client_id, "username": c.username,
            "peername": c.peer, "proto_ver": c.proto_ver,
        }),
        Event::Disconnected(s) | Event::SessionEnded(s) => json!({
            "tenant": s.tenant, "clientid": s.client_id, "reason": s.reason,
        }),
        Event::Subscribed(s) | Event::Unsubscribed(s) => json!({
            "tenant": s.tenant, "clientid": s.client_id, "topic": s.topic,
            "qos": s.qos,
        }),
        Event::MessagePublished(m) => {
            let mut v = json!({
                "tenant": m.tenant, "topic": m.topic, "qos": m.qos, "retain": m.retain,
            });
            match std::str::from_utf8(&m.payload) {
                Ok(text) => v["payload"] = json!(text),
                Err(_) => {
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&m.payload);
                    v["payload"] = json!(b64);
                    v["payload_encoding"] = json!("base64");
                }
            }
            v
        }
        Event::MessageDropped(d) => json!({
            "tenant": d.tenant, "clientid": d.client_id, "topic": d.topic,
            "reason": d.reason,
        }),
    };
    v["event"] = json!(name(e));
    v["timestamp"] = json!(timestamp);
    v
}
