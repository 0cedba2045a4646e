//! `/api/v5/api_key`: API keys as a managed resource, in EMQX's shapes (name, api_key,
//! api_secret once, expired_at, created_at, desc, enable, expired, role) with Apiary's
//! tenant, rights, signing, last-used time and source beside them. Needs a key for every
//! tenant with `admin`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::caller::{Admin, Caller};
use super::ApiAuthError;
use crate::apikeys::{
    unix_now, ApiKey, ApiKeyStore, KeyChange, ManagedError, NewKey, Right, Source,
};
use crate::broker::Broker;

/// The routes, to be merged into the native router.
pub fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/v5/api_key", get(list).post(create))
        .route(
            "/api/v5/api_key/{name}",
            get(show).put(update).delete(remove),
        )
        .route("/api/v5/api_key/{name}/rotate", post(rotate))
}

/// A refused request: the login's refusal, or a status, EMQX-style code and why.
#[derive(Debug)]
enum ApiError {
    Auth(ApiAuthError),
    Refused(StatusCode, &'static str, String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Auth(e) => e.into_response(),
            ApiError::Refused(status, code, message) => super::json_error(status, code, message),
        }
    }
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::Refused(StatusCode::BAD_REQUEST, "BAD_REQUEST", message.to_string())
}

impl From<ApiAuthError> for ApiError {
    fn from(e: ApiAuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<ManagedError> for ApiError {
    fn from(e: ManagedError) -> Self {
        let (status, code) = match &e {
            ManagedError::NoBacking => (StatusCode::SERVICE_UNAVAILABLE, "NOT_SUPPORTED"),
            ManagedError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ManagedError::Exists(_) => (StatusCode::BAD_REQUEST, "ALREADY_EXISTS"),
            ManagedError::FromFile { .. } => (StatusCode::CONFLICT, "DEFINED_IN_FILE"),
            ManagedError::Invalid(_) | ManagedError::TooMany => {
                (StatusCode::BAD_REQUEST, "BAD_REQUEST")
            }
            ManagedError::Write(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        ApiError::Refused(status, code, e.to_string())
    }
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> Value {
    OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// EMQX's role for a set of rights ("custom" where none fits).
fn role(rights: &[Right]) -> &'static str {
    if rights.contains(&Right::Admin) {
        "administrator"
    } else if rights
        .iter()
        .all(|r| matches!(r, Right::ConnectionsRead | Right::MetricsRead))
    {
        "viewer"
    } else if rights == [Right::Publish] {
        "publisher"
    } else {
        "custom"
    }
}

/// A key as the API shows it (never its secret).
fn view(k: &ApiKey) -> Value {
    let now = unix_now();
    let (source, file) = match &k.source {
        Source::Managed => ("api", Value::Null),
        Source::File(p) => ("file", Value::String(p.to_string())),
    };
    json!({
        "name": k.name,
        "api_key": k.key,
        "desc": k.desc,
        "enable": k.enabled,
        "expired": k.expired(now),
        "expired_at": k.expires_at.map_or(Value::String("infinity".into()), rfc3339),
        "created_at": rfc3339(k.created_at),
        "last_used_at": k.last_used().map_or(Value::Null, rfc3339),
        "role": role(&k.rights),
        "rights": k.rights.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "tenant": k.tenant,
        "signing": k.signs(),
        "source": source,
        "file": file,
    })
}

/// The body of a create or update; unknown fields are refused so typos do not pass.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    name: Option<String>,
    desc: Option<String>,
    enable: Option<bool>,
    expired_at: Option<Value>,
    role: Option<String>,
    rights: Option<Vec<String>>,
    tenant: Option<String>,
    signing: Option<bool>,
}

/// `expired_at`: RFC 3339, Unix seconds, or "infinity"/null (never).
fn parse_expiry(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s == "infinity" => Ok(None),
        Value::String(s) => OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| Some(t.unix_timestamp().max(0) as u64))
            .map_err(|e| format!("expired_at {s:?}: not RFC 3339 ({e})")),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("expired_at {n}: not Unix seconds")),
        other => Err(format!(
            "expired_at {other}: RFC 3339, Unix seconds or \"infinity\""
        )),
    }
}

/// Rights from `role` (EMQX's administrator, viewer, publisher) or `rights` (Apiary's).
fn parse_rights(
    role: Option<&str>,
    rights: Option<&[String]>,
) -> Result<Option<Vec<Right>>, String> {
    match (role, rights) {
        (Some(_), Some(_)) => Err("give role or rights, not both".into()),
        (Some("administrator"), None) => Ok(Some(vec![Right::Admin])),
        (Some("viewer"), None) => Ok(Some(vec![Right::ConnectionsRead, Right::MetricsRead])),
        (Some("publisher"), None) => Ok(Some(vec![Right::Publish])),
        (Some(r), None) => Err(format!(
            "role {r:?}: administrator, viewer or publisher (or give rights)"
        )),
        (None, Some(list)) => list
            .iter()
            .map(|r| {
                Right::parse(r).ok_or_else(|| {
                    let known: Vec<&str> = Right::ALL.iter().map(|r| r.as_str()).collect();
                    format!("unknown right {r:?} (known: {})", known.join(", "))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        (None, None) => Ok(None),
    }
}

/// The JSON body, or a 400 saying what is wrong with it.
fn body(raw: &[u8]) -> Result<Body, ApiError> {
    serde_json::from_slice(raw).map_err(|e| bad(format!("body: {e}")))
}

/// Runs a store change off the async threads (it writes and fsyncs a file).
async fn blocking<T: Send + 'static>(
    b: &Broker,
    f: impl FnOnce(&ApiKeyStore) -> Result<T, ManagedError> + Send + 'static,
) -> Result<T, ApiError> {
    let b = b.clone();
    match tokio::task::spawn_blocking(move || f(&b.api_keys)).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ApiError::Refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        )),
    }
}

type Answer = Result<Response, ApiError>;

async fn list(State(b): State<Broker>, _admin: Caller<Admin>) -> Answer {
    let keys: Vec<Value> = b.api_keys.list().iter().map(view).collect();
    Ok(Json(keys).into_response())
}

async fn show(State(b): State<Broker>, _admin: Caller<Admin>, Path(name): Path<String>) -> Answer {
    let k = b
        .api_keys
        .by_name(&name)
        .ok_or(ManagedError::NotFound(name))?;
    Ok(Json(view(&k)).into_response())
}

/// The view of a key with its secret, shown this once.
fn with_secret(k: &ApiKey, secret: String) -> Response {
    let mut v = view(k);
    v["api_secret"] = Value::String(secret);
    // A secret must not be kept by a cache on the way.
    let no_store = [(axum::http::header::CACHE_CONTROL, "no-store")];
    (no_store, Json(v)).into_response()
}

async fn create(State(b): State<Broker>, _admin: Caller<Admin>, raw: axum::body::Bytes) -> Answer {
    let body = body(&raw)?;
    let name = body.name.ok_or_else(|| bad("name is required"))?;
    let rights = parse_rights(body.role.as_deref(), body.rights.as_deref()).map_err(bad)?;
    let expires_at = body.expired_at.as_ref().map(parse_expiry).transpose();
    let new = NewKey {
        name,
        desc: body.desc.unwrap_or_default(),
        tenant: body.tenant.unwrap_or_else(|| "*".into()),
        rights: rights.unwrap_or_else(|| vec![Right::Admin]),
        expires_at: expires_at.map_err(bad)?.flatten(),
        enabled: body.enable.unwrap_or(true),
        signing: body.signing.unwrap_or(false),
    };
    let (k, secret) = blocking(&b, move |s| s.create(new)).await?;
    tracing::info!(name = %k.name, key = %k.key, tenant = %k.tenant, "API key created");
    Ok(with_secret(&k, secret))
}

async fn update(
    State(b): State<Broker>,
    _admin: Caller<Admin>,
    Path(name): Path<String>,
    raw: axum::body::Bytes,
) -> Answer {
    let body = body(&raw)?;
    if body.name.as_ref().is_some_and(|n| *n != name) {
        return Err(bad("name cannot change (create a new key)"));
    }
    if body.signing.is_some() {
        return Err(bad("signing cannot change (create a new key)"));
    }
    let ch = KeyChange {
        desc: body.desc,
        tenant: body.tenant,
        rights: parse_rights(body.role.as_deref(), body.rights.as_deref()).map_err(bad)?,
        expires_at: body
            .expired_at
            .as_ref()
            .map(parse_expiry)
            .transpose()
            .map_err(bad)?,
        enabled: body.enable,
    };
    let k = blocking(&b, move |s| s.update(&name, ch)).await?;
    tracing::info!(name = %k.name, key = %k.key, enable = k.enabled, "API key changed");
    Ok(Json(view(&k)).into_response())
}

async fn rotate(
    State(b): State<Broker>,
    _admin: Caller<Admin>,
    Path(name): Path<String>,
) -> Answer {
    let (k, secret) = blocking(&b, move |s| s.rotate(&name)).await?;
    tracing::info!(name = %k.name, key = %k.key, "API key secret rotated");
    Ok(with_secret(&k, secret))
}

async fn remove(
    State(b): State<Broker>,
    _admin: Caller<Admin>,
    Path(name): Path<String>,
) -> Answer {
    let n = name.clone();
    blocking(&b, move |s| s.delete(&n)).await?;
    tracing::info!(name = %name, "API key deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
