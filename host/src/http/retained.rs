//! `/retained`: list and delete retained messages (a key for every tenant with
//! `connections:read` to list, `connections:write` to delete). Listing pages by topic
//! (`after`), so a page never repeats or skips a topic however the set changes.

use std::time::SystemTime;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::caller::{Caller, ConnectionsRead, ConnectionsWrite};
use crate::broker::Broker;
use crate::message::Message;

/// The routes, to be merged into the native router.
pub fn routes() -> Router<Broker> {
    Router::new().route("/retained", get(list).delete(remove))
}

/// Most messages one page shows.
const MAX_LIMIT: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    tenant: Option<String>,
    topic: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

fn refused(status: StatusCode, code: &str, message: impl std::fmt::Display) -> Response {
    super::json_error(status, code, message.to_string())
}

fn view(m: &Message) -> Value {
    let at = SystemTime::now()
        .checked_sub(m.received.elapsed())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    json!({
        "topic": &*m.topic,
        "qos": m.qos as u8,
        "size": m.payload.len(),
        "payload": std::str::from_utf8(&m.payload).ok(),
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&m.payload),
        "publish_at_ms": at,
    })
}

/// `GET /retained?tenant=default&topic=%23&limit=100&after=TOPIC`.
async fn list(
    State(b): State<Broker>,
    _caller: Caller<ConnectionsRead>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q.map_err(|e| e.body_text()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "query: tenant, topic (a filter), limit, after",
        );
    };
    let tenant = q.tenant.unwrap_or_else(|| "default".into());
    let filter = q.topic.unwrap_or_else(|| "#".into());
    if let Err(e) = crate::topic::validate_filter(&filter, b.config().mqtt.max_topic_levels) {
        return refused(StatusCode::BAD_REQUEST, "BAD_REQUEST", e);
    }
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_LIMIT);
    let mut all = b.retained.matching(&tenant, &filter);
    all.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
    let start = q
        .after
        .as_deref()
        .map_or(0, |after| all.partition_point(|m| &*m.topic <= after));
    let page: Vec<Value> = all[start..].iter().take(limit).map(|m| view(m)).collect();
    let hasnext = all.len() > start + page.len();
    let next = hasnext
        .then(|| page.last().map(|v| v["topic"].clone()))
        .flatten();
    Json(json!({
        "data": page,
        "meta": {"count": all.len(), "limit": limit, "hasnext": hasnext, "next": next},
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    tenant: Option<String>,
    topic: String,
}

/// `DELETE /retained?tenant=default&topic=NAME`: 204, or 404 when there was none.
async fn remove(
    State(b): State<Broker>,
    _caller: Caller<ConnectionsWrite>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return refused(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "query: topic (a topic name) and tenant",
        );
    };
    let tenant = q.tenant.unwrap_or_else(|| "default".into());
    match b.delete_retained(&tenant, &q.topic) {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => refused(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no retained message on {:?}", q.topic),
        ),
        Err(e) => refused(StatusCode::BAD_REQUEST, "BAD_REQUEST", e),
    }
}
