//! Channels, resources and messages as every transport sees them: a channel/resource pair
//! is the MQTT topic `channel/resource` of the account's tenant, and a message is the JSON
//! the SDKs exchange (`{channel, resource, data, ts, ispublic[, write]}`).

use serde_json::{json, Map, Value};

/// Longest channel or resource name (the SDKs allow 64).
const MAX_NAME: usize = 64;

/// Whether `s` can be a channel name: SDK names are `\w` with `-` for `private-`/`presence-`.
pub fn valid_channel(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Whether `s` can be a resource name (`*` is a wildcard, not a name).
pub fn valid_resource(s: &str) -> bool {
    valid_channel(s)
}

/// The topic of a channel/resource pair.
pub fn topic(channel: &str, resource: &str) -> String {
    format!("{channel}/{resource}")
}

/// The filter a subscription to `resource` (`*`: every resource) of `channel` becomes.
pub fn filter(channel: &str, resource: &str) -> String {
    if resource == "*" {
        format!("{channel}/+")
    } else {
        topic(channel, resource)
    }
}

/// The channel and resource of a two-level topic; none for any other topic (the SDK's MQTT
/// client crashes on those, and its socket.io client ignores them).
pub fn split_topic(topic: &str) -> Option<(&str, &str)> {
    let (c, r) = topic.split_once('/')?;
    (!c.is_empty() && !r.is_empty() && !r.contains('/')).then_some((c, r))
}

/// Whether a channel needs an authenticated subscription.
pub fn is_private(channel: &str) -> bool {
    channel.starts_with("private-") || channel.starts_with("presence-")
}

/// The message a publish or write sends: what the SDKs' own MQTT publishes carry.
pub fn message(channel: &str, resource: &str, data: Value, ts: i64, write: bool) -> Value {
    let mut m = json!({
        "channel": channel,
        "resource": resource,
        "data": data,
        "ts": ts,
        "ispublic": !is_private(channel),
    });
    if write {
        m["write"] = Value::Bool(true);
    }
    m
}

/// A routed payload as the socket.io client receives it: JSON with a `data` key is kept
/// (channel and resource set from the topic, ts filled in when missing), any other JSON value or text becomes
/// `data`, as the SDK's MQTT client reads payloads.
pub fn delivered(channel: &str, resource: &str, payload: &[u8], received_ms: i64) -> Value {
    let mut m = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(o)) if o.contains_key("data") => o,
        Ok(v) => wrap(v),
        Err(_) => wrap(Value::String(String::from_utf8_lossy(payload).into_owned())),
    };
    // The topic decides, whatever the payload claims: the SDK dispatches on these two, so
    // a publisher must not reach another channel's handlers by naming it.
    m.insert("channel".into(), channel.into());
    m.insert("resource".into(), resource.into());
    m.entry("ts").or_insert_with(|| received_ms.into());
    Value::Object(m)
}

fn wrap(data: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("data".into(), data);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_topics_and_filters() {
        assert!(valid_channel("private-demo") && valid_channel("a_1"));
        assert!(!valid_channel("a/b") && !valid_channel("#") && !valid_channel(""));
        assert!(!valid_resource("*"));
        assert_eq!(filter("c", "*"), "c/+");
        assert_eq!(filter("c", "r"), "c/r");
        assert_eq!(split_topic("c/r"), Some(("c", "r")));
        assert_eq!(split_topic("c/r/x"), None);
        assert_eq!(split_topic("c"), None);
    }

    #[test]
    fn plain_payloads_are_wrapped_and_sdk_payloads_kept() {
        let v = delivered("c", "r", b"Hello World", 7);
        assert_eq!(
            v,
            json!({"data": "Hello World", "channel": "c", "resource": "r", "ts": 7})
        );
        let v = delivered("c", "r", b"{\"data\":1,\"ts\":3,\"write\":true}", 7);
        assert_eq!(v["ts"], 3);
        assert_eq!(v["write"], true);
        assert_eq!(v["channel"], "c");
        let forged = delivered(
            "c",
            "r",
            b"{\"data\":1,\"channel\":\"private-x\",\"resource\":\"y\"}",
            7,
        );
        assert_eq!(
            (&forged["channel"], &forged["resource"]),
            (&json!("c"), &json!("r"))
        );
        let v = delivered("c", "r", b"[1,2]", 7);
        assert_eq!(v["data"], json!([1, 2]));
        let m = message("private-c", "r", json!(1), 5, true);
        assert_eq!(m["ispublic"], false);
        assert_eq!(m["write"], true);
    }
}
