//! The socket.io transport (the `stream` role), as the Node SDK's Stream speaks it: the
//! handshake names an API key (or token) and a user, `getsid` tells the client its
//! Engine.IO id, `message` events carry `control` (subscribe, unsubscribe) and `stream`
//! (publish, write) requests, and routed messages arrive as `message` events. The
//! connection's description (what the registry and the connections API show) holds its
//! sid, user info and subscriptions.

use apiary_plugin_sdk::http::decode;
use apiary_plugin_sdk::keyauth::acting_tenant;
use apiary_plugin_sdk::stream::{
    Accepted, Connection, Frame, HandshakeDecision, HandshakeRequest, Message, Refusal,
    StreamEvent, StreamTransport,
};
use apiary_plugin_sdk::{apikeys, broker, clock, streams};
use serde_json::{json, Value};

use crate::account::{Account, Credential, DEFAULT_ACCOUNT};
use crate::sign::{self, SignError, Subscription};
use crate::wire::{self, valid_channel, valid_resource};
use crate::{records, tokens};

/// Subscriptions one connection may hold (write-only ones take no router entry, so the
/// broker's own subscription limit does not bound them).
const MAX_SUBSCRIPTIONS: usize = 100;
/// The host's limit on a connection's description (16 KiB), less room for the rest.
const MAX_DESCRIPTION: usize = 15 << 10;
/// Longest user id or username a client may give.
const MAX_NAME: usize = 128;

fn refuse(status: u16, why: &str) -> HandshakeDecision {
    HandshakeDecision::Refuse(Refusal {
        status,
        content_type: "text/plain".into(),
        body: why.as_bytes().to_vec(),
    })
}

/// Decides a socket.io connect: `key=<apiKey>` or `token=<token>`, `username=`, `userid=`.
pub fn handshake(req: &HandshakeRequest) -> HandshakeDecision {
    if req.transport != StreamTransport::Socketio {
        return refuse(404, "Beebotte streams are socket.io");
    }
    let mut q = std::collections::HashMap::new();
    for p in req.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        q.insert(decode(k), decode(v));
    }
    let get = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
    let (tenant, key, token) = if let Some(key) = get("key") {
        match apikeys::lookup(&key) {
            Ok(Some(k)) => (acting_tenant(&k, DEFAULT_ACCOUNT), Some(key), None),
            Ok(None) => return refuse(401, "unknown API key"),
            Err(e) => return refuse(503, &format!("cannot check the key now: {e:?}")),
        }
    } else if let Some(t) = get("token") {
        match tokens::find(&t) {
            Ok(Some(t)) => (t.tenant.clone(), None, Some(t.id)),
            Ok(None) => return refuse(401, "invalid token"),
            Err(e) => return refuse(503, &format!("cannot check the token now: {e:?}")),
        }
    } else {
        return refuse(401, "key or token required");
    };
    let userid = match get("userid") {
        Some(u) if u.len() <= MAX_NAME => u,
        Some(_) => return refuse(400, "userid too long"),
        None => format!("uid-{}", tokens::random(12).unwrap_or_default()),
    };
    let username = get("username").unwrap_or_default();
    if username.len() > MAX_NAME {
        return refuse(400, "username too long");
    }
    let description = json!({
        "owner": tenant, "userinfo": {"userid": userid, "username": username},
        "subscriptions": [], "key": key, "token": token,
    });
    HandshakeDecision::Accept(Accepted {
        tenant,
        client_id: String::new(),
        user_id: Some(userid),
        username: (!username.is_empty()).then_some(username),
        description: Some(description.to_string()),
        // The plugin checks every subscription itself (signatures, tokens).
        superuser: true,
    })
}

fn description(conn: &Connection) -> Value {
    conn.description
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or_else(|| json!({}))
}

fn event(name: &str, arg: Value) -> Frame {
    Frame::Event(StreamEvent {
        name: name.into(),
        args: Value::Array(vec![arg]).to_string(),
    })
}

/// Records the sid in the description and tells the client (`getsid`).
pub fn on_open(conn: &Connection) -> Vec<Frame> {
    let sid = conn.sid.clone().unwrap_or_default();
    let mut d = description(conn);
    d["sid"] = sid.clone().into();
    let _ = streams::describe(conn.id, &d.to_string());
    vec![event("getsid", sid.into())]
}

/// Answers one event: `message` with a control or stream request; others are ignored.
pub fn on_frame(conn: &Connection, frame: Frame) -> Vec<Frame> {
    let Frame::Event(ev) = frame else {
        return Vec::new();
    };
    if ev.name != "message" {
        return Vec::new();
    }
    let req = match serde_json::from_str::<Value>(&ev.args) {
        Ok(Value::Array(mut a)) if !a.is_empty() => a.swap_remove(0),
        _ => return Vec::new(),
    };
    let data = req.get("data").cloned().unwrap_or(Value::Null);
    let ch = req.get("channel").and_then(Value::as_str);
    match (ch, req.get("event").and_then(Value::as_str)) {
        (Some("control"), Some("subscribe")) => vec![subscribe(conn, &data)],
        (Some("control"), Some("unsubscribe")) => vec![unsubscribe(conn, &data)],
        (Some("stream"), Some("publish")) => publish(conn, &data, false),
        (Some("stream"), Some("write")) => publish(conn, &data, true),
        _ => Vec::new(),
    }
}

fn control(ev: &str, channel: &str, resource: &str, message: Option<String>) -> Frame {
    let mut v = json!({"event": ev, "data": {"channel": channel, "resource": resource}});
    if let Some(m) = message {
        v["message"] = m.into();
    }
    event("control", v)
}

/// The account a subscription authenticates with (signature or token), if it needs one.
fn subscriber(
    conn: &Connection,
    d: &Value,
    channel: &str,
    resource: &str,
) -> Result<Account, String> {
    let (read, write) = (flag(d, "read", true), flag(d, "write", false));
    let acc = if let Some(sig) = d.get("sig").and_then(Value::as_str) {
        let sid = d.get("sid").and_then(Value::as_str).unwrap_or("");
        if Some(sid) != conn.sid.as_deref() {
            return Err("sid is not this connection's".into());
        }
        let userid = d
            .get("userid")
            .or_else(|| d.pointer("/userinfo/userid"))
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty());
        // The user the signature names is the one this connection is listed and dropped as.
        if userid.is_some_and(|u| Some(u) != conn.user_id.as_deref()) {
            return Err("the signed userid is not this connection's".into());
        }
        let ttl = match d.get("ttl") {
            Some(Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => "0".into(),
        };
        let sub = Subscription {
            sid,
            channel,
            resource,
            ttl,
            read,
            write,
            userid,
        };
        match sign::verify_subscription(sig, &sub) {
            Ok(k) => Account::of_key(&k),
            Err(SignError::Refused(m)) => return Err(m),
            Err(SignError::Host(e)) => {
                return Err(format!("cannot check the signature now: {e:?}"))
            }
        }
    } else if let Some(t) = d.get("token").and_then(Value::as_str) {
        match tokens::find(t) {
            Ok(Some(t)) => t.account(),
            Ok(None) => return Err("invalid token".into()),
            Err(e) => return Err(format!("cannot check the token now: {e:?}")),
        }
    } else {
        return Err("private channels and write access need a signature or a token".into());
    };
    if acc.tenant != conn.tenant {
        return Err("the credential belongs to another account".into());
    }
    if (read && !acc.may_read(channel)) || (write && !acc.may_write(channel)) {
        return Err(format!("no such access to channel {channel}"));
    }
    Ok(acc)
}

fn flag(d: &Value, k: &str, default: bool) -> bool {
    d.get(k).and_then(Value::as_bool).unwrap_or(default)
}

fn names(d: &Value) -> (String, String) {
    let s = |k| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    (s("channel"), s("resource"))
}

fn subscribe(conn: &Connection, d: &Value) -> Frame {
    let (channel, resource) = names(d);
    let no = |m: String| control("subscribeError", &channel, &resource, Some(m));
    if !valid_channel(&channel) || !(resource == "*" || valid_resource(&resource)) {
        return no(
            "channel and resource are 1 to 64 of A-Z a-z 0-9 _ - (resource * for all)".into(),
        );
    }
    let (read, write) = (flag(d, "read", true), flag(d, "write", false));
    let mut desc = description(conn);
    let cred = if write || wire::is_private(&channel) {
        match subscriber(conn, d, &channel, &resource) {
            Ok(a) => Some(a),
            Err(m) => return no(m),
        }
    } else {
        // A public read needs nothing, but a socket opened with a token is held to it.
        if let Some(id) = desc["token"].as_str() {
            match tokens::by_id(&conn.tenant, id) {
                Ok(Some(t)) if t.account().may_read(&channel) => {}
                Ok(Some(_)) => return no(format!("the token does not cover channel {channel}")),
                Ok(None) => return no("the connection's token was revoked".into()),
                Err(e) => return no(format!("cannot check the token now: {e:?}")),
            }
        }
        None
    };
    let mut entry = json!({"channel": channel, "resource": resource, "read": read, "write": write});
    if let Some(Credential::Token(id)) = cred.map(|a| a.credential) {
        // So revoking the token finds this connection.
        entry["token"] = id.into();
    }
    let subs = subscriptions(&mut desc);
    subs.retain(|s| names(s) != (channel.clone(), resource.clone()));
    if subs.len() >= MAX_SUBSCRIPTIONS {
        return no(format!(
            "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
        ));
    }
    subs.push(entry);
    let text = desc.to_string();
    if text.len() > MAX_DESCRIPTION {
        return no("this connection's subscriptions are at their limit".into());
    }
    let filter = wire::filter(&channel, &resource);
    let routed = if read {
        streams::subscribe(conn.id, &filter, 0)
    } else {
        // Write access only: nothing to receive.
        streams::unsubscribe(conn.id, &filter)
    };
    if let Err(e) = routed {
        return no(format!("{e:?}"));
    }
    if let Err(e) = streams::describe(conn.id, &text) {
        // Not recorded means not granted: undo the routing.
        let _ = streams::unsubscribe(conn.id, &filter);
        return no(format!("{e:?}"));
    }
    control("subscribed", &channel, &resource, None)
}

fn subscriptions(desc: &mut Value) -> &mut Vec<Value> {
    if !desc["subscriptions"].is_array() {
        desc["subscriptions"] = json!([]);
    }
    desc["subscriptions"]
        .as_array_mut()
        .expect("made an array above")
}

fn unsubscribe(conn: &Connection, d: &Value) -> Frame {
    let (channel, resource) = names(d);
    let mut desc = description(conn);
    let subs = subscriptions(&mut desc);
    let before = subs.len();
    subs.retain(|s| names(s) != (channel.clone(), resource.clone()));
    if subs.len() == before {
        return control(
            "unsubscribeError",
            &channel,
            &resource,
            Some("not subscribed".into()),
        );
    }
    let _ = streams::unsubscribe(conn.id, &wire::filter(&channel, &resource));
    let _ = streams::describe(conn.id, &desc.to_string());
    control("unsubscribed", &channel, &resource, None)
}

/// Whether the connection subscribed to `channel.resource` (or `channel.*`) with write access.
fn may_write(conn: &Connection, channel: &str, resource: &str) -> bool {
    let mut desc = description(conn);
    subscriptions(&mut desc).iter().any(|s| {
        let (c, r) = names(s);
        c == channel && (r == resource || r == "*") && flag(s, "write", false)
    })
}

/// `stream`/`publish` and `write`: sent to the topic (and kept, for `write`) when the
/// connection holds write access there; otherwise dropped, as the SDK itself refuses.
fn publish(conn: &Connection, d: &Value, write: bool) -> Vec<Frame> {
    let (channel, resource) = names(d);
    if !valid_channel(&channel)
        || !valid_resource(&resource)
        || !may_write(conn, &channel, &resource)
    {
        return Vec::new();
    }
    let data = d.get("data").cloned().unwrap_or(Value::Null);
    let ts = d
        .get("ts")
        .and_then(Value::as_i64)
        .unwrap_or_else(clock::now_ms);
    if write && records::write(&conn.tenant, &channel, &resource, &data, ts).is_err() {
        return Vec::new();
    }
    let msg = wire::message(&channel, &resource, data, ts, write).to_string();
    let _ = broker::publish(
        &conn.tenant,
        &wire::topic(&channel, &resource),
        msg.as_bytes(),
        0,
        false,
    );
    Vec::new()
}

/// A routed message as the `message` event; none for topics that are not `channel/resource`.
pub fn render(msg: &Message) -> Vec<Frame> {
    match wire::split_topic(&msg.topic) {
        Some((c, r)) => vec![event(
            "message",
            wire::delivered(c, r, &msg.payload, msg.received_at),
        )],
        None => Vec::new(),
    }
}
