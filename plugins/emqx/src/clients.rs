//! `/clients`: list with filters and paging, get one, kick one or many.

use apiary_plugin_sdk::http::{HttpError, Params, Request, Response};
use apiary_plugin_sdk::{registry, types};
use serde_json::{json, Map, Value};

use crate::params::{client_filter, paging};
use crate::time::rfc3339;
use crate::Right;
use crate::{client_not_found, host_error, node, Caller};

/// A session as EMQX shows a client: the EMQX 5 field names, plus the older names the
/// seed's field table uses (max_inflight, inflight, ...) so scripts of either work.
pub fn client_json(s: &types::Session) -> Value {
    let unlimited = |n: u32| {
        if n == 0 {
            json!("infinity")
        } else {
            json!(n)
        }
    };
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("node", json!(s.node.as_deref().unwrap_or(node())));
    put("clientid", json!(s.client_id));
    put("username", json!(s.username));
    put("proto_name", json!(s.proto_name));
    put("proto_ver", json!(s.proto_ver));
    put("ip_address", json!(s.ip_address));
    put("port", json!(s.port));
    put("is_bridge", json!(false));
    put("connected", json!(s.connected));
    put("connected_at", json!(s.connected_at.map(rfc3339)));
    if !s.connected {
        put("disconnected_at", json!(s.disconnected_at.map(rfc3339)));
    }
    put("created_at", json!(rfc3339(s.created_at)));
    put("zone", json!("default"));
    put("listener", json!(s.listener));
    put("keepalive", json!(s.keepalive));
    put("clean_start", json!(s.clean_start));
    put("expiry_interval", json!(s.expiry_interval));
    put("is_persistent", json!(s.expiry_interval > 0));
    put("enable_authn", json!(true));
    put("subscriptions_cnt", json!(s.subscriptions.len()));
    put("subscriptions_max", unlimited(s.subscriptions_max));
    put("max_subscriptions", unlimited(s.subscriptions_max));
    put("inflight_cnt", json!(s.inflight_cnt));
    put("inflight", json!(s.inflight_cnt));
    put("inflight_max", json!(s.inflight_max));
    put("max_inflight", json!(s.inflight_max));
    put("mqueue_len", json!(s.mqueue_len));
    put("mqueue_max", json!(s.mqueue_max));
    put("max_mqueue", json!(s.mqueue_max));
    put("mqueue_dropped", json!(s.mqueue_dropped));
    put("awaiting_rel_cnt", json!(s.awaiting_rel_cnt));
    put("awaiting_rel", json!(s.awaiting_rel_cnt));
    put("awaiting_rel_max", json!(s.awaiting_rel_max));
    put("max_awaiting_rel", json!(s.awaiting_rel_max));
    put("recv_oct", json!(s.recv_oct));
    put("recv_cnt", json!(s.recv_cnt));
    put("recv_pkt", json!(s.recv_pkt));
    put("recv_msg", json!(s.recv_msg));
    put("send_oct", json!(s.send_oct));
    put("send_cnt", json!(s.send_cnt));
    put("send_pkt", json!(s.send_pkt));
    put("send_msg", json!(s.send_msg));
    put("send_msg.dropped", json!(s.mqueue_dropped));
    put("send_msg.dropped.queue_full", json!(s.mqueue_dropped));
    // Erlang process figures: Apiary has no per-client process.
    put("mailbox_len", json!(0));
    put("heap_size", json!(0));
    put("reductions", json!(0));
    Value::Object(m)
}

/// `{"meta":{page,limit,count,hasnext},"data":[...]}`.
pub fn paged(page: u32, limit: u32, count: u64, hasnext: bool, data: Vec<Value>) -> Response {
    Response::json(
        200,
        &json!({
            "meta": {"page": page, "limit": limit, "count": count, "hasnext": hasnext},
            "data": data,
        }),
    )
}

/// The filter and set of a clients listing: `clientid` and `username` may repeat (any of
/// them matches, EMQX #4502); None when nothing can match.
fn filter_and_set(
    c: &Caller,
    r: &Request,
) -> Result<Option<(registry::SessionFilter, registry::SessionSet)>, HttpError> {
    let q = r.query_params();
    let Some(mut f) = client_filter(&q, &c.tenant)? else {
        return Ok(None);
    };
    let mut set = registry::SessionSet {
        client_ids: r.query_all("clientid"),
        usernames: r.query_all("username"),
    };
    // One value stays an exact filter (a point lookup); several go to the set.
    if set.client_ids.len() > 1 {
        f.client_id = None;
    } else {
        set.client_ids.clear();
    }
    if set.usernames.len() > 1 {
        f.username = None;
    } else {
        set.usernames.clear();
    }
    Ok(Some((f, set)))
}

/// `GET /clients`: page paging with a count; `fields=` picks the fields shown.
pub fn list(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    let q = r.query_params();
    let (page, limit) = paging(&q)?;
    let fields = fields(r)?;
    let Some((f, set)) = filter_and_set(c, r)? else {
        return Ok(paged(page, limit, 0, false, vec![]));
    };
    let start = registry::Start::Page(page);
    let p = registry::list_sessions(&f, &set, &start, limit).map_err(host_error)?;
    let data = p
        .items
        .iter()
        .map(|s| pick(client_json(s), &fields))
        .collect();
    Ok(paged(page, limit, p.count.unwrap_or(0), p.has_next, data))
}

/// `GET /clients_v2`: cursor paging, stable while clients come and go (EMQX #7870);
/// `meta.cursor` only when a later page has clients (EMQX #18531).
pub fn list_v2(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    let q = r.query_params();
    let (_, limit) = paging(&q)?;
    let fields = fields(r)?;
    let cursor = q.get("cursor").filter(|c| !c.is_empty()).cloned();
    let Some((f, set)) = filter_and_set(c, r)? else {
        let meta = json!({"limit": limit, "hasnext": false});
        return Ok(Response::json(200, &json!({"meta": meta, "data": []})));
    };
    let start = registry::Start::After(cursor);
    let p = registry::list_sessions(&f, &set, &start, limit).map_err(host_error)?;
    let mut meta = json!({"limit": limit, "hasnext": p.has_next});
    if let Some(next) = p.cursor {
        meta["cursor"] = json!(next);
    }
    let data: Vec<Value> = p
        .items
        .iter()
        .map(|s| pick(client_json(s), &fields))
        .collect();
    Ok(Response::json(200, &json!({"meta": meta, "data": data})))
}

/// `fields=a,b` (repeatable; `all` or absent: every field). Unknown names are an error.
fn fields(r: &Request) -> Result<Option<Vec<String>>, HttpError> {
    let asked: Vec<String> = r
        .query_all("fields")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|f| f.trim().to_string())
        .filter(|f| !f.is_empty())
        .collect();
    if asked.is_empty() || asked.iter().any(|f| f == "all") {
        return Ok(None);
    }
    // The fields a client shows are those its OpenAPI schema lists (host/tests/it/
    // emqx_v2.rs asks for every field shown by name).
    let known = crate::openapi::client_fields();
    if let Some(bad) = asked.iter().find(|f| !known.contains(f)) {
        return Err(HttpError::bad_request(format!(
            "unknown field {bad:?} in fields (known: {})",
            known.join(", ")
        )));
    }
    Ok(Some(asked))
}

/// Only `fields` of a client's JSON (all of it for None).
fn pick(v: Value, fields: &Option<Vec<String>>) -> Value {
    match (fields, v) {
        (Some(f), Value::Object(mut m)) => {
            m.retain(|k, _| f.iter().any(|x| x == k));
            Value::Object(m)
        }
        (_, v) => v,
    }
}

fn clientid(p: &Params) -> &str {
    p.get("clientid").unwrap_or_default()
}

/// `GET /clients/{clientid}`.
pub fn get(c: &Caller, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    match registry::get(&c.tenant, clientid(p)).map_err(host_error)? {
        Some(s) => Ok(Response::json(200, &client_json(&s))),
        None => Err(client_not_found()),
    }
}

/// `DELETE /clients/{clientid}`: the connection and the session end.
pub fn kick(c: &Caller, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    match registry::kick(&c.tenant, clientid(p), true).map_err(host_error)? {
        0 => Err(client_not_found()),
        _ => Ok(Response::empty(204)),
    }
}

/// `POST /clients/kickout/bulk` with a JSON array of client ids; unknown ids are skipped.
pub fn kick_bulk(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    let ids: Vec<String> = r.json()?;
    if ids.is_empty() {
        return Err(HttpError::bad_request("an array of client ids is required"));
    }
    for id in ids {
        registry::kick(&c.tenant, &id, true).map_err(host_error)?;
    }
    Ok(Response::empty(204))
}
