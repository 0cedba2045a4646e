//! Connection management: list the account's live MQTT and socket.io connections in
//! Beebotte's shape, filtered by user id, sid and protocol (combined with AND), and drop
//! them. An MQTT connection's sid and user id are its client id; a socket.io connection's
//! sid is its Engine.IO session id and its user id the one the client gave.

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::{registry, session_filter, types};
use serde_json::{json, Value};

use crate::account::{Account, IamRight};
use crate::rest::{bad_parameter, host_error, not_allowed};

/// Sessions fetched per registry page.
const PAGE: u32 = 1000;
/// Most connections one call lists or drops (pages of `PAGE`).
const MAX_PAGES: u32 = 100;

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
                       "subscriptions": d.get("subscriptions").cloned().unwrap_or(json!([])),
                       "userinfo": d.get("userinfo").cloned().unwrap_or(json!({}))}),
            )
        }
    })
}

/// Every registry session matching `f`, page by page.
fn sessions(f: &registry::SessionFilter) -> Result<Vec<types::Session>, types::Error> {
    let mut out = Vec::new();
    for page in 1..=MAX_PAGES {
        let p = registry::query(f, page, PAGE)?;
        out.extend(p.items);
        if !p.has_next {
            break;
        }
    }
    Ok(out)
}

/// The account's live connections that `sel` selects.
pub fn find(tenant: &str, sel: &Selector) -> Result<Vec<Found>, types::Error> {
    let mut f = session_filter();
    f.tenant = Some(tenant.to_string());
    f.connected = Some(true);
    let mut all = Vec::new();
    match &sel.userid {
        // A user id is an MQTT client id or a socket.io user id: ask for both.
        Some(u) => {
            if sel.protocol != Some(Protocol::SocketIo) {
                let mut m = f.clone();
                m.client_id = Some(u.clone());
                all.extend(sessions(&m)?);
            }
            if sel.protocol != Some(Protocol::Mqtt) {
                let mut s = f.clone();
                s.user_id = Some(u.clone());
                s.proto_name = Some("socketio".into());
                all.extend(sessions(&s)?);
            }
        }
        None => {
            if sel.protocol == Some(Protocol::SocketIo) {
                f.proto_name = Some("socketio".into());
            }
            all = sessions(&f)?;
        }
    }
    let mut out: Vec<Found> = Vec::new();
    for s in all {
        let Some((proto, e)) = entry(&s) else {
            continue;
        };
        let wanted = sel.protocol.is_none_or(|p| p == proto)
            && sel.sid.as_deref().is_none_or(|sid| e["sid"] == sid)
            && sel.userid.as_deref().is_none_or(|u| e["userid"] == u);
        if wanted && !out.iter().any(|o| o.client_id == s.client_id) {
            out.push(Found {
                client_id: s.client_id,
                entry: e,
            });
        }
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
    let mut n = 0;
    for f in find(tenant, sel)? {
        match registry::kick(tenant, &f.client_id, false) {
            Ok(k) => n += k,
            // It left in the meantime: nothing to drop.
            Err(types::Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
