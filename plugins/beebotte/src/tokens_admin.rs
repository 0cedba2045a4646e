//! `/v1/apiary/tokens`: creating, listing and revoking IAM and channel tokens. Not a
//! Beebotte route (Beebotte manages tokens in its web console): an API key with the `admin`
//! right manages its account's tokens here, signed or with HTTP basic auth. Revoking a
//! token drops the connections it opened, as regenerating one does on Beebotte.

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::{session_filter, types};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::account::{Account, IamRight};
use crate::connections::{each_session, kick_all};
use crate::rest::{bad_parameter, host_error, not_allowed};
use crate::tokens::{self, Kind, NewToken, Token};
use crate::wire::valid_channel;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    kind: Kind,
    #[serde(default)]
    name: String,
    #[serde(default)]
    acl: Vec<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    read: bool,
    #[serde(default)]
    write: bool,
}

fn admin_only(acc: &Account) -> Result<(), Response> {
    if acc.admin {
        Ok(())
    } else {
        Err(not_allowed(
            "managing tokens needs an API key with the admin right",
        ))
    }
}

fn shown(t: &Token) -> Value {
    json!({"id": t.id, "kind": t.kind, "name": t.name, "acl": t.acl, "channel": t.channel,
           "read": t.read, "write": t.write, "created": t.created_ms})
}

/// `GET /v1/apiary/tokens`: the account's tokens (never the tokens themselves).
pub fn list(acc: &Account) -> Response {
    if let Err(r) = admin_only(acc) {
        return r;
    }
    match tokens::list(&acc.tenant) {
        Ok(v) => Response::json(200, &v.iter().map(shown).collect::<Vec<_>>()),
        Err(e) => host_error(e),
    }
}

/// `POST /v1/apiary/tokens` with `{"kind":"iam","acl":[...]}` or
/// `{"kind":"channel","channel":"c","read":true,"write":false}`: the token, shown once.
pub fn create(acc: &Account, req: &Request) -> Response {
    if let Err(r) = admin_only(acc) {
        return r;
    }
    let c: Create = match serde_json::from_slice(&req.body) {
        Ok(c) => c,
        Err(e) => return bad_parameter(format!("body: {e}")),
    };
    let channel = match (c.kind, c.channel) {
        (Kind::Iam, None) => {
            if c.acl.is_empty() {
                return bad_parameter("an IAM token needs an acl");
            }
            if let Some(bad) = c.acl.iter().find(|a| IamRight::parse(a).is_none()) {
                let known: Vec<&str> = IamRight::ALL.iter().map(|(_, n)| *n).collect();
                return bad_parameter(format!(
                    "unknown right {bad:?} (known: {})",
                    known.join(", ")
                ));
            }
            None
        }
        (Kind::Channel, Some(ch)) if valid_channel(&ch) && c.acl.is_empty() => {
            if !c.read && !c.write {
                return bad_parameter("a channel token needs read or write");
            }
            Some((ch, c.read, c.write))
        }
        _ => return bad_parameter("kind iam takes acl; kind channel takes channel, read, write"),
    };
    let n = NewToken {
        kind: c.kind,
        name: c.name,
        acl: c.acl,
        channel,
    };
    match tokens::create(&acc.tenant, n) {
        Ok((token, t)) => {
            let mut v = shown(&t);
            v["token"] = token.into();
            Response::json(200, &v)
        }
        Err(e) => host_error(e),
    }
}

/// `DELETE /v1/apiary/tokens/{id}`: revokes the token and drops its connections;
/// 200 with an empty body, as Beebotte's drops answer.
pub fn revoke(acc: &Account, id: &str) -> Response {
    if let Err(r) = admin_only(acc) {
        return r;
    }
    // Its connections go first: if dropping fails, the token still exists and a retry of
    // the revocation finds it.
    match tokens::by_id(&acc.tenant, id) {
        Ok(Some(_)) => {}
        Ok(None) => return crate::rest::error(404, 1301, format!("no token {id}")),
        Err(e) => return host_error(e),
    }
    if let Err(e) = drop_connections(&acc.tenant, id) {
        return host_error(e);
    }
    match tokens::revoke(&acc.tenant, id) {
        Ok(_) => {
            // Whatever connected with it in the meantime.
            let _ = drop_connections(&acc.tenant, id);
            Response::empty(200)
        }
        Err(e) => host_error(e),
    }
}

/// Drops the connections a token opened or authenticated a subscription of: MQTT clients
/// record it as their username, socket.io connections in their description.
fn drop_connections(tenant: &str, id: &str) -> Result<u32, types::Error> {
    let mut f = session_filter();
    f.tenant = Some(tenant.to_string());
    f.connected = Some(true);
    let mut victims = Vec::new();
    let mut m = f.clone();
    m.username = Some(crate::account::Credential::Token(id.to_string()).username());
    each_session(&m, |s| {
        victims.push(s.client_id);
        true
    })?;
    f.proto_name = Some("socketio".into());
    each_session(&f, |s| {
        let d: Option<Value> = s
            .description
            .as_deref()
            .and_then(|d| serde_json::from_str(d).ok());
        if d.is_some_and(|d| uses_token(&d, id)) {
            victims.push(s.client_id);
        }
        true
    })?;
    kick_all(tenant, victims)
}

/// Whether a socket.io connection's description shows token `id`: at the handshake or on
/// a subscription.
fn uses_token(d: &Value, id: &str) -> bool {
    d["token"] == id
        || d["subscriptions"]
            .as_array()
            .is_some_and(|subs| subs.iter().any(|s| s["token"] == id))
}
