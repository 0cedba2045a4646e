//! The native HTTP API (axum): `/healthz` open, everything else behind an API key with the
//! `admin` right (HTTP basic auth `key:secret`). Requests under a plugin's mount go to it
//! (see `gateway`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;

use crate::apikeys::ApiKey;
use crate::broker::Broker;

mod gateway;

/// Builds the native API router.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/plugins", get(gateway::list))
        .route("/plugins/{name}/reload", post(gateway::reload))
        .fallback(gateway::mounted)
        .with_state(broker)
}

/// Serves one plugin on its dedicated listener (no prefix) until shutdown.
pub async fn serve_plugin(listener: tokio::net::TcpListener, broker: Broker, name: String) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = "http", plugin = %name, %addr, "listening");
    }
    let mut shutdown = broker.shutdown_signal();
    let app = Router::new()
        .fallback(gateway::dedicated)
        .with_state((broker, name))
        .into_make_service_with_connect_info::<SocketAddr>();
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
}

/// Serves the router until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, broker: Broker) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = "http", %addr, "listening");
    }
    let mut shutdown = broker.shutdown_signal();
    let app = router(broker).into_make_service_with_connect_info::<SocketAddr>();
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.changed().await;
        })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Why an admin request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuthError {
    /// No credentials, or wrong ones: 401.
    Unauthorized,
    /// A valid key without the right: 403.
    Forbidden(String),
}

impl IntoResponse for ApiAuthError {
    fn into_response(self) -> Response {
        match self {
            ApiAuthError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"apiary\"")],
                Json(json!({"code": "BAD_API_KEY_OR_SECRET", "message": "missing or invalid API key"})),
            )
                .into_response(),
            ApiAuthError::Forbidden(right) => (
                StatusCode::FORBIDDEN,
                Json(json!({"code": "FORBIDDEN", "message": format!("API key lacks the {right} right")})),
            )
                .into_response(),
        }
    }
}

/// Parses HTTP basic auth `key:secret`.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (k, s) = text.split_once(':')?;
    Some((k.to_string(), s.to_string()))
}

/// Checks HTTP basic auth against the API key store and a required right.
pub fn authorize(
    broker: &Broker,
    headers: &HeaderMap,
    right: &str,
) -> Result<ApiKey, ApiAuthError> {
    let key = basic_credentials(headers).and_then(|(k, s)| broker.api_keys.verify(&k, &s));
    let Some(key) = key else {
        broker
            .metrics
            .api_auth_failed
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiAuthError::Unauthorized);
    };
    if !key.has(right) {
        return Err(ApiAuthError::Forbidden(right.to_string()));
    }
    Ok(key)
}

async fn metrics(State(b): State<Broker>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&b, &headers, "admin") {
        return e.into_response();
    }
    let gauges = [
        (
            "apiary_sessions",
            "Sessions in the registry, online or offline.",
            b.registry.len() as u64,
        ),
        (
            "apiary_sessions_connected",
            "Sessions with a connection attached.",
            b.registry.connected_count() as u64,
        ),
        (
            "apiary_retained_messages",
            "Retained messages stored.",
            b.retained.len() as u64,
        ),
        (
            "apiary_uptime_seconds",
            "Seconds since start.",
            b.started.elapsed().as_secs(),
        ),
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics.render(&gauges),
    )
        .into_response()
}
