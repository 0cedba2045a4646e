//! Subscriptions: on behalf of a client (one or in bulk), a client's list, and
//! `GET /subscriptions` across clients.

use apiary_plugin_sdk::http::{HttpError, Params, Request, Response};
use apiary_plugin_sdk::{registry, types};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::clients::paged;
use crate::params::paging;
use crate::Right;
use crate::{client_not_found, host_error, node, Caller};

/// A subscribe request body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubReq {
    topic: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    nl: u8,
    #[serde(default)]
    rap: u8,
    #[serde(default)]
    rh: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubReq {
    topic: String,
}

/// A subscription row; `node` holds the session (None: this one).
fn sub_json(node_name: Option<&str>, clientid: &str, s: &types::Subscription) -> Value {
    json!({
        "clientid": clientid,
        "topic": s.topic,
        "qos": s.qos,
        "node": node_name.unwrap_or(node()),
        "nl": u8::from(s.nl),
        "rap": u8::from(s.rap),
        "rh": s.rh,
    })
}

fn clientid(p: &Params) -> &str {
    p.get("clientid").unwrap_or_default()
}

fn do_subscribe(c: &Caller, id: &str, s: SubReq) -> Result<Value, HttpError> {
    if s.qos > 2 || s.nl > 1 || s.rap > 1 || s.rh > 2 {
        return Err(HttpError::bad_request(
            "qos and rh are 0 to 2, nl and rap 0 or 1",
        ));
    }
    if s.topic.is_empty() {
        return Err(HttpError::bad_request("topic is required"));
    }
    registry::subscribe(&c.tenant, id, &s.topic, s.qos, s.nl == 1, s.rap == 1, s.rh)
        .map_err(host_error)?;
    Ok(sub_json(
        None,
        id,
        &types::Subscription {
            topic: s.topic,
            qos: s.qos,
            nl: s.nl == 1,
            rap: s.rap == 1,
            rh: s.rh,
        },
    ))
}

/// `POST /clients/{clientid}/subscribe`.
pub fn subscribe(c: &Caller, r: &Request, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    let s: SubReq = r.json()?;
    Ok(Response::json(200, &do_subscribe(c, clientid(p), s)?))
}

/// `POST /clients/{clientid}/subscribe/bulk`: `{"data": [...]}`, as the seed shows.
pub fn subscribe_bulk(c: &Caller, r: &Request, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    let subs: Vec<SubReq> = r.json()?;
    if subs.is_empty() {
        return Err(HttpError::bad_request(
            "an array of subscriptions is required",
        ));
    }
    let id = clientid(p);
    let data = subs
        .into_iter()
        .map(|s| do_subscribe(c, id, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Response::json(200, &json!({ "data": data })))
}

fn do_unsubscribe(c: &Caller, id: &str, topic: &str) -> Result<(), HttpError> {
    if registry::get(&c.tenant, id).map_err(host_error)?.is_none() {
        return Err(client_not_found());
    }
    registry::unsubscribe(&c.tenant, id, topic).map_err(host_error)?;
    Ok(())
}

/// `POST /clients/{clientid}/unsubscribe` (204 whether or not it was subscribed).
pub fn unsubscribe(c: &Caller, r: &Request, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    let u: UnsubReq = r.json()?;
    do_unsubscribe(c, clientid(p), &u.topic)?;
    Ok(Response::empty(204))
}

/// `POST /clients/{clientid}/unsubscribe/bulk`.
pub fn unsubscribe_bulk(c: &Caller, r: &Request, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsWrite)?;
    let us: Vec<UnsubReq> = r.json()?;
    for u in us {
        do_unsubscribe(c, clientid(p), &u.topic)?;
    }
    Ok(Response::empty(204))
}

/// `GET /clients/{clientid}/subscriptions`: a bare array, as EMQX 5.
pub fn of_client(c: &Caller, p: &Params) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    let id = clientid(p);
    let s = registry::get(&c.tenant, id)
        .map_err(host_error)?
        .ok_or_else(client_not_found)?;
    let v: Vec<Value> = s
        .subscriptions
        .iter()
        .map(|x| sub_json(s.node.as_deref(), id, x))
        .collect();
    Ok(Response::json(200, &v))
}

/// `GET /subscriptions` with clientid, topic, qos, share_group, match_topic and paging.
pub fn list(c: &Caller, r: &Request) -> Result<Response, HttpError> {
    c.need(Right::ConnectionsRead)?;
    let q = r.query_params();
    let (page, limit) = paging(&q)?;
    let qos = match q.get("qos") {
        None => None,
        Some(v) => match v.parse::<u8>() {
            Ok(n) if n <= 2 => Some(n),
            _ => {
                return Err(HttpError::bad_request(format!(
                    "qos must be 0, 1 or 2, got {v:?}"
                )))
            }
        },
    };
    let f = registry::SubscriptionFilter {
        tenant: Some(c.tenant.clone()),
        client_id: q.get("clientid").cloned(),
        topic: q.get("topic").cloned(),
        qos,
        share_group: q.get("share_group").cloned(),
        match_topic: q.get("match_topic").cloned(),
    };
    let p = registry::subscriptions(&f, page, limit).map_err(host_error)?;
    let data = p
        .items
        .iter()
        .map(|o| sub_json(o.node.as_deref(), &o.client_id, &o.subscription))
        .collect();
    Ok(paged(page, limit, p.count, p.has_next, data))
}
