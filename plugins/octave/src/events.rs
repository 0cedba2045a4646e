//! Rendering: each MQTT publish on a stream's topic becomes one Octave event, pushed as
//! `{"type":"message","resource":<streamId>,"value":{event}}`. Rendered once per message
//! (the host sends the same frame to every subscribed socket).

use apiary_plugin_sdk::stream::Message;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::streams::id_of;

/// A fresh event id: `e` + 24 hex.
fn event_id() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    let mut s = String::with_capacity(25);
    s.push('e');
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// `elems`: the JSON payload when it is an object, `{"value": x}` for another JSON
/// value, `{"raw": base64}` when it is not JSON.
pub fn elems(payload: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(payload) {
        Ok(v @ Value::Object(_)) => v,
        Ok(v) => json!({"value": v}),
        Err(_) => json!({"raw": base64::engine::general_purpose::STANDARD.encode(payload)}),
    }
}

/// The frame for one message.
pub fn render(m: &Message) -> Value {
    let path = format!("/{}", m.topic);
    let stream_id = id_of(&m.tenant, &path);
    let metadata: Map<String, Value> = m
        .user_properties
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "type": "message",
        "resource": stream_id,
        "value": {
            "id": event_id(),
            "streamId": stream_id,
            "path": path,
            "creationDate": m.received_at,
            "generatedDate": m.received_at,
            "creatorId": m.publisher,
            "elems": elems(&m.payload),
            "hash": null,
            "metadata": metadata,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elems_follow_the_payload() {
        assert_eq!(elems(br#"{"t":21.5}"#), json!({"t": 21.5}));
        assert_eq!(elems(b"42"), json!({"value": 42}));
        assert_eq!(elems(br#""on""#), json!({"value": "on"}));
        assert_eq!(elems(b"not json"), json!({"raw": "bm90IGpzb24="}));
        assert_eq!(elems(&[0xff, 0x00]), json!({"raw": "/wA="}));
    }

    #[test]
    fn event_ids_are_octave_shaped_and_distinct() {
        let a = event_id();
        assert_eq!(a.len(), 25);
        assert!(a.starts_with('e'));
        assert_ne!(a, event_id());
    }
}
