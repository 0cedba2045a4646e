//! The plugin HTTP gateway: requests under a plugin's mount (or on its dedicated
//! listener) become calls of its `http` role; plugin faults become JSON errors, never a
//! hung request. Also the native plugin admin routes.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::caller::{Admin, Caller};
use super::json_error as error;
use crate::broker::Broker;
use crate::plugins::runtime::LoadedPlugin;
use crate::plugins::PluginError;

/// Response headers a plugin may not set: they would desynchronise the connection.
const HOP_BY_HOP: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-connection",
];

/// Largest request body passed to a plugin.
const MAX_BODY: usize = 16 << 20;

/// Routes a request to the plugin mounted at the longest matching prefix.
pub async fn mounted(
    State(b): State<Broker>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(mgr) = b.plugins() else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route");
    };
    if let Some((plugin, rest)) = mgr.stream_route(req.uri().path()) {
        return stream(&b, &mgr, &plugin, rest, peer, req).await;
    }
    if let Some((plugin, rest)) = mgr.socketio_route(req.uri().path()) {
        return socketio(&mgr, &plugin, rest, req).await;
    }
    match mgr.http_route(req.uri().path()) {
        Some((plugin, rest)) => call(&b, plugin, rest, Some(peer), req).await,
        None => error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route"),
    }
}

/// Serves one plugin with no prefix (its dedicated listener).
pub async fn dedicated(
    State((b, name)): State<(Broker, String)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let Some(plugin) = b.plugins().and_then(|m| m.get(&name)) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PLUGIN_UNAVAILABLE",
            format!("plugin {name} is not loaded"),
        );
    };
    let path = req.uri().path().to_string();
    if plugin.serves(crate::plugins::manifest::Role::Stream) {
        if let Some(mgr) = b.plugins() {
            let s = &plugin.ctx.manifest.stream;
            if s.websocket_path(&path) {
                return stream(&b, &mgr, &plugin, path, peer, req).await;
            }
            if s.socketio_path(&path) {
                return socketio(&mgr, &plugin, path, req).await;
            }
        }
    }
    call(&b, plugin, path, Some(peer), req).await
}

/// A request under a plugin's socket.io endpoint (`rest`: its path below the mount).
async fn socketio(
    mgr: &std::sync::Arc<crate::plugins::PluginManager>,
    plugin: &LoadedPlugin,
    rest: String,
    mut req: Request,
) -> Response {
    let Some(srv) = mgr.socketio_server(plugin) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route");
    };
    if rest != req.uri().path() {
        // Below a mount: the endpoint sees the path as on a listener of its own.
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest,
        };
        match pq.parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return error(StatusCode::BAD_REQUEST, "BAD_REQUEST", "bad path"),
        }
    }
    srv.serve(req).await
}

/// A request at a plugin's declared WebSocket path: a stream connection's upgrade.
async fn stream(
    b: &Broker,
    mgr: &std::sync::Arc<crate::plugins::PluginManager>,
    plugin: &LoadedPlugin,
    path: String,
    peer: SocketAddr,
    req: Request,
) -> Response {
    let proto = crate::plugins::PluginProtocol::new(mgr, &plugin.ctx.name);
    crate::stream::upgrade(b, proto, &plugin.ctx.manifest.stream, path, peer, req).await
}

async fn call(
    b: &Broker,
    plugin: std::sync::Arc<LoadedPlugin>,
    path: String,
    peer: Option<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match to_bytes(body, MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "request body over 16 MiB",
            )
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let wreq = crate::plugins::HttpRequest {
        method: parts.method.as_str().to_string(),
        path,
        query: parts.uri.query().unwrap_or("").to_string(),
        target,
        headers,
        body,
        peer,
    };
    let Some(mgr) = b.plugins() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PLUGIN_UNAVAILABLE",
            "plugins not started",
        );
    };
    match plugin.serve_http(mgr.runtime().engine(), wreq).await {
        Ok(r) => {
            let mut resp = Response::new(Body::from(r.body));
            *resp.status_mut() = match StatusCode::from_u16(r.status) {
                Ok(s) if (200..=599).contains(&r.status) => s,
                _ => StatusCode::BAD_GATEWAY,
            };
            let h: &mut HeaderMap = resp.headers_mut();
            for (k, v) in r.headers {
                if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
                    // Framing and hop-by-hop headers are the server's, not the plugin's.
                    if !HOP_BY_HOP.contains(&k.as_str()) {
                        h.append(k, v);
                    }
                }
            }
            resp
        }
        Err(PluginError::Timeout | PluginError::Overloaded) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "PLUGIN_TIMEOUT",
            format!("plugin {}: call timed out", plugin.ctx.name),
        ),
        Err(PluginError::Busy) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PLUGIN_BUSY",
            format!("plugin {} has too many calls in progress", plugin.ctx.name),
        ),
        Err(PluginError::BackingOff) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PLUGIN_BACKING_OFF",
            format!(
                "plugin {} failed repeatedly and is backing off",
                plugin.ctx.name
            ),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "PLUGIN_ERROR",
            format!("plugin {}: {e}", plugin.ctx.name),
        ),
    }
}

/// `GET /plugins` (admin, tenant `*`).
pub async fn list(State(b): State<Broker>, _caller: Caller<Admin>) -> Response {
    let list = b.plugins().map(|m| m.list()).unwrap_or_default();
    Json(list).into_response()
}

/// `GET /plugins/{name}/logs?limit=N` (admin, tenant `*`): the plugin's last log lines,
/// oldest first (its `log` calls at info and above, its loads and load failures).
pub async fn logs(
    State(b): State<Broker>,
    _caller: Caller<Admin>,
    Path(name): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    match b.plugins().and_then(|m| m.logs(&name)) {
        Some(ring) => Json(json!({"name": name, "lines": ring.tail(limit)})).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no plugin {name} has loaded or logged"),
        ),
    }
}

/// `POST /plugins/{name}/reload` (admin, tenant `*`).
pub async fn reload(
    State(b): State<Broker>,
    _caller: Caller<Admin>,
    Path(name): Path<String>,
) -> Response {
    let Some(mgr) = b.plugins() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "PLUGIN_UNAVAILABLE",
            "plugins not started",
        );
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            "bad plugin name",
        );
    }
    match mgr.load(&name).await {
        Ok(p) => Json(json!({"name": name, "version": &p.hash[..12], "roles": p.roles()}))
            .into_response(),
        Err(PluginError::Load(m)) if m.contains("No such file") => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no plugin {name}"),
        ),
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "PLUGIN_LOAD_FAILED",
            e.to_string(),
        ),
    }
}
