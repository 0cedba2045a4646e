//! Connection management: list the account's live MQTT and socket.io connections in
//! Beebotte's shape, filtered by user id, sid and protocol (combined with AND), and drop
//! them. An MQTT connection's sid and user id are its client id; a socket.io connection's
//! sid is its Engine.IO session id and its user id the one the client gave.

use std::collections::HashSet;

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::{registry, session_filter, types};
use serde_json::{json, Value};

use crate::account::{Account, IamRight};
use crate::rest::{bad_parameter, host_error, not_allowed};

/// Sessions fetched per registry page (a socket.io session's description is up to 16 KiB).
const PAGE: u32 = 200;
/// Most sessions one call looks at.
const MAX_SESSIONS: usize = 100_000;
/// Most connections one listing or drop covers.
const MAX_LISTED: usize = 10_000;
/// Most description bytes one listing holds.
const MAX_LISTED_BYTES: usize = 8 << 20;

/// Beebotte's two protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (or 3.1 / 5).
    Mqtt,
    /// socket.io.
    SocketIo,
}

impl Protocol {
    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "mqtt" => Some(Protocol::Mqtt),
            "socketio" => Some(Protocol::SocketIo),
            _ => None,
        }
    }

    fn of(s: &types::Session) -> Option<Protocol> {
        match s.proto_name.as_str() {
            "MQTT" | "MQIsdp" => Some(Protocol::Mqtt),
            "socketio" => Some(Protocol::SocketIo),
            _ => None,
        }
    }
}

/// Which connections a call is about.
#[derive(Debug, Default)]
pub struct Selector {
    /// User id.
    pub userid: Option<String>,
    /// Session id.
    pub sid: Option<String>,
    /// Protocol.
    pub protocol: Option<Protocol>,
}

/// A live connection: the registry session and its Beebotte description.
pub struct Found {
    /// Client id of the registry session (what a kick names).
    pub client_id: String,
    /// Beebotte's description.
    pub entry: Value,
}

/// Subscriptions as Beebotte lists them (without what the plugin keeps for itself).
fn listed(subs: &Value) -> Value {
    let one = |s: &Value| {
        json!({"channel": s["channel"], "resource": s["resource"],
               "read": s["read"], "write": s["write"]})
    };
    Value::Array(
        subs.as_array()
            .map_or(Vec::new(), |a| a.iter().map(one).collect()),
    )
}

/// The description of a registry session, if it is a Beebotte connection.
fn entry(s: &types::Session) -> Option<(Protocol, Value)> {
    let proto = Protocol::of(s)?;
    let ip = s.ip_address.clone().unwrap_or_default();
    Some(match proto {
        Protocol::Mqtt => (
            proto,
            json!({"clientid": s.client_id, "clientip": ip, "owner": s.tenant,
                   "protocol": "mqtt", "sid": s.client_id, "userid": s.client_id}),
        ),
        Protocol::SocketIo => {
            let d: Value = serde_json::from_str(s.description.as_deref()?).ok()?;
            let sid = d.get("sid")?.as_str()?;
            let userid = s.user_id.clone().unwrap_or_default();
            (
                proto,
                json!({"clientid": userid, "clientip": ip, "owner": s.tenant,
                       "protocol": "socketio", "sid": sid, "userid": userid,
                       "subscriptions": listed(&d["subscriptions"]),
                       "userinfo": d.get("userinfo").cloned().unwrap_or(json!({}))}),
            )
        }
    })
}

/// Visits the registry sessions matching `f`, a page at a time (a page is dropped before
/// the next is fetched), until `visit` says stop or `MAX_SESSIONS` were seen.
pub fn each_session(
    f: &registry::SessionFilter,
    mut visit: impl FnMut(types::Session) -> bool,
) -> Result<(), types::Error> {
    let mut seen = 0;
    for page in 1.. {
        let p = registry::query(f, page, PAGE)?;
        for s in p.items {
            seen += 1;
            if !visit(s) || seen >= MAX_SESSIONS {
                return Ok(());
            }
        }
        if !p.has_next {
            return Ok(());
        }
    }
    Ok(())
}

/// The account's live connections that `sel` selects: at most `MAX_LISTED`, and at most
/// `MAX_LISTED_BYTES` of descriptions (a listing has no paging in Beebotte's API).
pub fn find(tenant: &str, sel: &Selector) -> Result<Vec<Found>, types::Error> {
    let mut f = session_filter();
    f.tenant = Some(tenant.to_string());
    f.connected = Some(true);
    let mut filters = Vec::new();
    match &sel.userid {
        // A user id is an MQTT client id or a socket.io user id: ask for both.
        Some(u) => {
            if sel.protocol != Some(Protocol::SocketIo) {
                let mut m = f.clone();
                m.client_id = Some(u.clone());
                filters.push(m);
            }
            if sel.protocol != Some(Protocol::Mqtt) {
                let mut s = f.clone();
                s.user_id = Some(u.clone());
                s.proto_name = Some("socketio".into());
                filters.push(s);
            }
        }
        None => {
            if sel.protocol == Some(Protocol::SocketIo) {
                f.proto_name = Some("socketio".into());
            }
            filters.push(f);
        }
    }
    let mut out: Vec<Found> = Vec::new();
    let mut ids = HashSet::new();
    let mut bytes = 0;
    for f in &filters {
        each_session(f, |s| {
            let Some((proto, e)) = entry(&s) else {
                return true;
            };
            let wanted = sel.protocol.is_none_or(|p| p == proto)
                && sel.sid.as_deref().is_none_or(|sid| e["sid"] == sid)
                && sel.userid.as_deref().is_none_or(|u| e["userid"] == u);
            if wanted && ids.insert(s.client_id.clone()) {
                bytes += s.description.as_ref().map_or(0, String::len) + 200;
                out.push(Found {
                    client_id: s.client_id,
                    entry: e,
                });
            }
            out.len() < MAX_LISTED && bytes < MAX_LISTED_BYTES
        })?;
    }
    Ok(out)
}

fn selector(userid: Option<&str>, req: &Request) -> Result<Selector, Response> {
    let q = req.query_params();
    let protocol = match q.get("protocol").filter(|p| !p.is_empty()) {
        Some(p) => Some(
            Protocol::parse(p).ok_or_else(|| bad_parameter("protocol must be mqtt or socketio"))?,
        ),
        None => None,
    };
    Ok(Selector {
        userid: userid.map(str::to_string),
        sid: q.get("sid").filter(|s| !s.is_empty()).cloned(),
        protocol,
    })
}

/// `GET /v1/connections[/{userid}][?sid=..&protocol=..]`.
pub fn list(acc: &Account, userid: Option<&str>, req: &Request) -> Response {
    if !acc.may(IamRight::ConnectionRead) {
        return not_allowed("admin:connection:read is required");
    }
    let sel = match selector(userid, req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match find(&acc.tenant, &sel) {
        Ok(v) => Response::json(200, &v.into_iter().map(|f| f.entry).collect::<Vec<_>>()),
        Err(e) => host_error(e),
    }
}

/// `DELETE /v1/connections/drop/{userid}[?sid=..&protocol=..]`: 200 with an empty body,
/// also when nothing matched.
pub fn drop(acc: &Account, userid: &str, req: &Request) -> Response {
    if !acc.may(IamRight::ConnectionWrite) {
        return not_allowed("admin:connection:write is required");
    }
    let sel = match selector(Some(userid), req) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match drop_selected(&acc.tenant, &sel) {
        Ok(_) => Response::empty(200),
        Err(e) => host_error(e),
    }
}

/// Drops the selected connections; returns how many.
pub fn drop_selected(tenant: &str, sel: &Selector) -> Result<u32, types::Error> {
    kick_all(tenant, find(tenant, sel)?.into_iter().map(|f| f.client_id))
}

/// Closes the connections of these registry sessions; returns how many were closed. One
/// that left in the meantime is not an error.
pub fn kick_all(
    tenant: &str,
    client_ids: impl IntoIterator<Item = String>,
) -> Result<u32, types::Error> {
    let mut n = 0;
    for id in client_ids {
        match registry::kick(tenant, &id, false) {
            Ok(k) => n += k,
            Err(types::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
