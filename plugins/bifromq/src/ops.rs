//! The operations: what each route does with the registry and the broker.

use apiary_plugin_sdk::http::{Request, Response};
use apiary_plugin_sdk::{broker, registry, session_filter, topic, types};
use serde_json::json;

use crate::headers::{self, boolean, parsed, qos, required};
use crate::{host_refusal, Caller, Refusal};

/// Inbox types (`subbroker_id`): a clean session, or a persistent one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inbox {
    Clean,
    Persistent,
}

fn subbroker(req: &Request) -> Result<Option<Inbox>, Refusal> {
    let id: i32 = parsed(req, "subbroker_id", |v| v.parse().ok(), "an int32")?;
    Ok(match id {
        0 => Some(Inbox::Clean),
        1 => Some(Inbox::Persistent),
        // External inboxes (BifroMQ's announced feature) are not served.
        _ => None,
    })
}

/// The session `inbox_id` names in the caller's tenant, if it exists and is of the kind
/// `subbroker_id` says (clean: session expiry 0; persistent: above 0).
fn inbox(c: &Caller, id: &str, kind: Inbox) -> Result<Option<types::Session>, Refusal> {
    let s = registry::get(&c.tenant, id).map_err(host_refusal)?;
    Ok(s.filter(|s| (s.expiry_interval > 0) == (kind == Inbox::Persistent)))
}

/// Whether a filter is well formed (depth is the broker's to check).
fn filter_ok(f: &str) -> bool {
    topic::parse_filter(f, usize::from(u16::MAX)).is_ok()
}

fn with_sub_qos(status: u16, granted: u8) -> Response {
    let mut r = Response::empty(status);
    r.headers.push(("sub_qos".into(), granted.to_string()));
    r
}

/// 403 with `sub_qos: 128` and the reason.
fn invalid_filter(filter: &str) -> Response {
    let mut r = Response::text(403, format!("invalid topic filter {filter:?}"));
    r.headers.push(("sub_qos".into(), "128".into()));
    r
}

/// `PUT /sub`: 200 with `sub_qos` = the granted QoS, or 128 when the subscription cannot
/// be made (no such inbox, a limit, the inbox's ACL, an external inbox); 403 with 128 for a
/// filter that is not valid.
pub fn sub(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    let filter = required(req, "topic_filter")?;
    let q = parsed(req, "sub_qos", qos, "0, 1 or 2")?;
    let id = required(req, "inbox_id")?;
    let kind = subbroker(req)?;
    let _deliverer = req.header("deliverer_key");
    if !filter_ok(filter) {
        return Ok(invalid_filter(filter));
    }
    let Some(kind) = kind else {
        return Ok(with_sub_qos(200, 128));
    };
    if inbox(c, id, kind)?.is_none() {
        return Ok(with_sub_qos(200, 128));
    }
    match registry::subscribe(&c.tenant, id, filter, q, false, false, 0) {
        Ok(_) => Ok(with_sub_qos(200, q)),
        Err(types::Error::NotFound(_) | types::Error::Refused(_)) => Ok(with_sub_qos(200, 128)),
        Err(types::Error::InvalidArgument(_)) => Ok(invalid_filter(filter)),
        Err(e) => Err(host_refusal(e)),
    }
}

/// `DELETE /unsub`: 200, 404 "Topic filter not found" when the inbox does not exist or
/// does not hold the filter, 403 for a filter that is not valid.
pub fn unsub(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    let filter = required(req, "topic_filter")?;
    let id = required(req, "inbox_id")?;
    let kind = subbroker(req)?;
    let not_found = || Response::text(404, "Topic filter not found");
    if !filter_ok(filter) {
        return Ok(Response::text(
            403,
            format!("invalid topic filter {filter:?}"),
        ));
    }
    let Some(kind) = kind else {
        return Ok(not_found());
    };
    if inbox(c, id, kind)?.is_none() {
        return Ok(not_found());
    }
    match registry::unsubscribe(&c.tenant, id, filter) {
        Ok(true) => Ok(Response::empty(200)),
        Ok(false) | Err(types::Error::NotFound(_)) => Ok(not_found()),
        Err(types::Error::InvalidArgument(m)) => Ok(Response::text(403, m)),
        Err(e) => Err(host_refusal(e)),
    }
}

/// Logs who a caller says it is (`client_type`, `client_meta_*`), at debug level: the
/// line is built only when the broker writes debug lines.
fn log_client(op: &str, c: &Caller, req: &Request) {
    if !apiary_plugin_sdk::log_enabled(apiary_plugin_sdk::log::Level::Debug) {
        return;
    }
    let meta = headers::client_meta(req);
    apiary_plugin_sdk::log::log(
        apiary_plugin_sdk::log::Level::Debug,
        &format!(
            "{op} in {} by client_type={:?} {meta:?}",
            c.tenant,
            req.header("client_type").unwrap_or_default()
        ),
    );
}

/// `POST /pub`: the body is the payload (empty allowed), distributed with `pub_qos`,
/// stored as retained with `retain: true`. 400 for a topic that is not valid.
pub fn publish(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    let t = required(req, "topic")?;
    required(req, "client_type")?;
    let q = parsed(req, "pub_qos", qos, "0, 1 or 2")?;
    let retain = headers::optional(req, "retain", boolean, "true or false")?.unwrap_or(false);
    if let Err(e) = topic::validate_name(t, usize::from(u16::MAX)) {
        return Err(Refusal::Bad(headers::BadHeader(format!(
            "header topic is not a valid topic name: {e}"
        ))));
    }
    log_client("pub", c, req);
    broker::publish(&c.tenant, t, &req.body, q, retain).map_err(host_refusal)?;
    Ok(Response::empty(200))
}

/// `DELETE /kill`: every connection of `user_id` in the tenant is disconnected (their
/// sessions stay, as a kick in BifroMQ). 200 when at least one was, 404 when none.
pub fn kill(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    let user = required(req, "user_id")?;
    required(req, "client_type")?;
    log_client("kill", c, req);
    let n = registry::kick_user(&c.tenant, user, None, false).map_err(host_refusal)?;
    if n == 0 {
        return Ok(Response::text(404, format!("no connection of user {user}")));
    }
    Ok(Response::empty(200))
}

/// `DELETE /expireinbox`: the tenant's persistent sessions disconnected for longer than
/// `expiry_seconds` end; 0 ends every persistent session of the tenant, online ones
/// disconnected. Clean sessions are untouched. 200 with the count.
pub fn expire_inbox(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    // An int64 as the document says, not negative.
    let secs = parsed(
        req,
        "expiry_seconds",
        |v| v.parse::<i64>().ok().and_then(|n| u64::try_from(n).ok()),
        "a whole number of seconds (an int64, not negative)",
    )?;
    let n = registry::expire(&c.tenant, secs).map_err(host_refusal)?;
    Ok(Response::text(200, n.to_string()))
}

/// A paging value from the query string or, failing that, a header.
fn paging(req: &Request, name: &str, default: u32) -> Result<u32, Refusal> {
    let q = req.query_params();
    let v = q.get(name).map(String::as_str).or(req.header(name));
    match v {
        None => Ok(default),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 && (name != "limit" || n <= 10_000) => Ok(n),
            _ => Err(Refusal::Bad(headers::BadHeader(format!(
                "{name} must be a whole number from 1{}, not {v:?}",
                if name == "limit" { " to 10000" } else { "" }
            )))),
        },
    }
}

/// `GET /sessions` (not in BifroMQ; apache/bifromq#256 asks for it): the tenant's online
/// sessions, optionally of one `user_id` or with `client_id` in their client id, paged.
pub fn sessions(c: &Caller, req: &Request) -> Result<Response, Refusal> {
    let page = paging(req, "page", 1)?;
    let limit = paging(req, "limit", 100)?;
    let mut f = session_filter();
    f.tenant = Some(c.tenant.clone());
    f.connected = Some(true);
    f.user_id = req.header("user_id").map(str::to_string);
    f.like_client_id = req.header("client_id").map(str::to_string);
    let p = registry::query(&f, page, limit).map_err(host_refusal)?;
    let sessions: Vec<_> = p
        .items
        .iter()
        .map(|s| {
            json!({
                "client_id": s.client_id,
                "user_id": s.user_id,
                "username": s.username,
                "ip": s.ip_address,
                "port": s.port,
                "protocol": s.proto_name,
                "protocol_version": s.proto_ver,
                "transport": s.transport,
                "connected_at": s.connected_at,
                "clean_session": s.expiry_interval == 0,
                "expiry_interval": s.expiry_interval,
                "subscriptions": s.subscriptions.iter().map(|x| json!({"topic_filter": x.topic, "qos": x.qos})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Response::json(
        200,
        &json!({
            "tenant_id": c.tenant,
            "page": page,
            "limit": limit,
            "count": p.count,
            "has_next": p.has_next,
            "sessions": sessions,
        }),
    ))
}
