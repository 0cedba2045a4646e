//! The native HTTP API (axum): `/healthz` open, the broker-wide routes behind an API key
//! with tenant `*` (HTTP basic auth `key:secret`): `/metrics` with `metrics:read` (or
//! `admin`), `/plugins`, `/reload` and `/api/v5/api_key` (managed keys) with `admin`. Requests under a plugin's mount go to it (see
//! `gateway`), which authenticates its callers itself.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::apikeys::{ApiKey, Right};
use crate::broker::Broker;
use caller::{Admin, Caller, MetricsRead};

mod api_keys;
mod caller;
mod cluster;
mod dashboard;
mod gateway;
mod monitor;
mod retained;

/// Builds the native API router.
pub fn router(broker: Broker) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/plugins", get(gateway::list))
        .route("/plugins/{name}/reload", post(gateway::reload))
        .merge(api_keys::routes())
        .merge(retained::routes())
        .merge(monitor::routes())
        .merge(cluster::routes())
        .merge(dashboard::routes())
        .route("/plugins/{name}/logs", get(gateway::logs))
        .route("/reload", post(reload))
        .fallback(gateway::mounted)
        .layer(axum::middleware::map_response(no_login_prompt))
        .with_state(broker)
}

/// A script's request (`X-Requested-With`, as the dashboard sends) gets its 401 without
/// `WWW-Authenticate`, so the browser shows the page's own login, not its prompt.
async fn no_login_prompt(headers: HeaderMap, mut res: Response) -> Response {
    if headers.contains_key("x-requested-with") {
        res.headers_mut().remove(header::WWW_AUTHENTICATE);
    }
    res
}

/// Accepted sockets with Nagle's algorithm off: stream connections (WebSocket events)
/// and small API answers must not wait for the peer's delayed ACK.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> axum::serve::TapIo<tokio::net::TcpListener, fn(&mut TcpStream)> {
    fn set(t: &mut TcpStream) {
        let _ = t.set_nodelay(true);
    }
    axum::serve::ListenerExt::tap_io(listener, set as fn(&mut TcpStream))
}

/// Serves one plugin on its dedicated listener (no prefix) until shutdown.
pub async fn serve_plugin(listener: tokio::net::TcpListener, broker: Broker, name: String) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(listener = "http", plugin = %name, %addr, "listening");
    }
    let stop = broker.clone();
    let app = Router::new()
        .fallback(gateway::dedicated)
        .with_state((broker, name))
        .into_make_service_with_connect_info::<SocketAddr>();
    let _ = axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
}

/// Accepted HTTPS connections, handshaken by tasks of their own (each bounded by the
/// connect timeout) so a client that stalls its handshake never holds up the others.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The accept loop ended (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// HTTPS handshakes in progress at most.
const MAX_TLS_HANDSHAKES: usize = 256;

/// Serves the router over TLS (the MQTT listeners' certificate) until shutdown.
/// Each handshake uses the certificate in force when it starts (a reload swaps it).
pub async fn serve_tls(listener: tokio::net::TcpListener, broker: Broker) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    tracing::info!(listener = "https", %addr, "listening");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    // Handshakes in progress at most: past it a new connection is closed at once (as the
    // MQTT listeners bound theirs), so stalled handshakes cannot pile up.
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_TLS_HANDSHAKES));
    let timeout =
        std::time::Duration::from_secs(broker.config().listeners.connect_timeout_secs.max(1));
    let b = broker.clone();
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "https accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = b.stopped() => return,
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                b.metrics.handshake_failed.fetch_add(1, Ordering::Relaxed);
                drop(sock);
                continue;
            };
            let Some(tls) = b.tls() else {
                drop(sock);
                continue;
            };
            let (tx, b) = (tx.clone(), b.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, tls.accept(sock)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send((s, peer)).await;
                    }
                    _ => {
                        b.metrics.handshake_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let stop = broker.clone();
    let app = router(broker).into_make_service_with_connect_info::<SocketAddr>();
    let listener = axum::serve::ListenerExt::tap_io(TlsListener { rx, addr }, |_| {});
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "HTTPS server failed");
    }
}

/// Serves the router until shutdown.
pub async fn serve(listener: tokio::net::TcpListener, broker: Broker) {
    if let Ok(addr) = listener.local_addr() {
        let dashboard = format!("http://{addr}/dashboard/");
        tracing::info!(listener = "http", %addr, %dashboard, "listening");
    }
    let stop = broker.clone();
    let app = router(broker).into_make_service_with_connect_info::<SocketAddr>();
    let r = axum::serve(no_delay(listener), app)
        .with_graceful_shutdown(async move { stop.stopped().await })
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Open: 200 while the broker can keep what it acknowledges, 503 (with why) once its
/// store has failed.
async fn healthz(State(b): State<Broker>) -> Response {
    match b.store.as_ref().and_then(|s| s.failure()) {
        None => Json(json!({"status": "ok"})).into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "store": why})),
        )
            .into_response(),
    }
}

/// `POST /reload` (admin, tenant `*`): re-reads the configuration as SIGHUP does and
/// answers what was applied and what needs a restart.
async fn reload(State(b): State<Broker>, _caller: Caller<Admin>) -> Response {
    let r = tokio::task::spawn_blocking(move || b.reload()).await;
    match r {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e @ crate::reload::ReloadError::NoSource)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_SUPPORTED",
            e.to_string(),
        ),
        Ok(Err(e)) => json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "RELOAD_FAILED",
            e.to_string(),
        ),
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            e.to_string(),
        ),
    }
}

/// An error answer in the shape every admin route uses: `{"code", "message"}`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

/// Why an admin request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuthError {
    /// No credentials, or wrong ones: 401.
    Unauthorized,
    /// A valid key without the right or the tenant scope: 403, and why.
    Forbidden(String),
    /// Too many failed logins from this address: 429, retry after this long.
    Throttled(std::time::Duration),
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
            ApiAuthError::Forbidden(why) => (
                StatusCode::FORBIDDEN,
                Json(json!({"code": "FORBIDDEN", "message": why})),
            )
                .into_response(),
            ApiAuthError::Throttled(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, (wait.as_secs() + 1).to_string())],
                Json(json!({"code": "TOO_MANY_REQUESTS", "message": "too many failed logins from this address; try again later"})),
            )
                .into_response(),
        }
    }
}

/// Parses HTTP basic auth `key:secret` (the rule plugins use too, `apiary-common`).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    apiary_common::credentials::basic(headers.get(header::AUTHORIZATION)?.to_str().ok()?)
}

/// Checks HTTP basic auth against the API key store for a broker-wide route: the key
/// must span every tenant (`tenant=*`) and hold one of `rights` (admin holds all). Failed
/// logins are counted per peer address and throttled (429 with Retry-After).
pub fn authorize_global(
    broker: &Broker,
    headers: &HeaderMap,
    peer: SocketAddr,
    right: Right,
) -> Result<ApiKey, ApiAuthError> {
    let now = std::time::Instant::now();
    let throttle = &broker.login_throttle;
    if let Some(wait) = throttle.blocked(peer.ip(), now) {
        broker
            .metrics
            .api_auth_throttled
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiAuthError::Throttled(wait));
    }
    let key = basic_credentials(headers).and_then(|(k, s)| broker.api_keys.verify(&k, &s));
    let Some(key) = key else {
        throttle.failed(peer.ip(), now);
        broker
            .metrics
            .api_auth_failed
            .fetch_add(1, Ordering::Relaxed);
        return Err(ApiAuthError::Unauthorized);
    };
    if !key.is_global() {
        return Err(ApiAuthError::Forbidden(format!(
            "this route spans every tenant: it needs a key with tenant=* (this key's tenant is {})",
            key.tenant
        )));
    }
    if !key.has(right) {
        return Err(ApiAuthError::Forbidden(format!(
            "API key lacks the {right} right"
        )));
    }
    Ok(key)
}

async fn metrics(State(b): State<Broker>, _caller: Caller<MetricsRead>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_text(&b),
    )
        .into_response()
}

/// Everything `/metrics` shows: the broker's counters, and gauges and counters read from
/// the registry, the retained set, the store and the password pool.
pub fn metrics_text(b: &Broker) -> String {
    let (queued_ops, queued_bytes) = b.store.as_ref().map_or((0, 0), |s| s.queue_depth());
    let healthy = b.store.as_ref().is_none_or(|s| s.failure().is_none());
    let lag = b
        .store
        .as_ref()
        .map_or(0, |s| s.stats().lag_ms.load(Ordering::Relaxed));
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
            "apiary_retained_bytes",
            "Payload bytes of the retained messages stored.",
            b.retained.bytes() as u64,
        ),
        (
            "apiary_uptime_seconds",
            "Seconds since start.",
            b.started.elapsed().as_secs(),
        ),
        (
            "apiary_store_queued_ops",
            "Store operations waiting for the writer.",
            queued_ops as u64,
        ),
        (
            "apiary_store_queued_bytes",
            "Bytes of store operations waiting for the writer.",
            queued_bytes as u64,
        ),
        (
            "apiary_store_lag_ms",
            "How long the oldest operation of the writer's last batch had waited, in ms.",
            lag,
        ),
        (
            "apiary_store_healthy",
            "1 while the store writes, 0 once a write or fsync failed.",
            u64::from(healthy),
        ),
    ];
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut counters = vec![
        (
            "apiary_password_checks_total",
            "Password hashes checked by the host for auth plugins.",
            ld(&b.passwords.verified),
        ),
        (
            "apiary_password_checks_busy_total",
            "Password checks refused because every worker stayed busy.",
            ld(&b.passwords.busy),
        ),
    ];
    counters.extend(b.streams.counters.export());
    if let Some(st) = b.store.as_ref().map(|s| s.stats()) {
        counters.extend([
            (
                "apiary_store_bytes_written_total",
                "Bytes of keys and values the store wrote.",
                ld(&st.bytes_written),
            ),
            (
                "apiary_store_ops_written_total",
                "Operations the store wrote.",
                ld(&st.ops_written),
            ),
            (
                "apiary_store_write_errors_total",
                "Failed store writes or fsyncs (the first one fails the store).",
                ld(&st.write_errors),
            ),
            (
                "apiary_store_ops_discarded_total",
                "Operations not written because the store had failed.",
                ld(&st.ops_discarded),
            ),
            (
                "apiary_store_stalls_total",
                "Times a submitter blocked on a full store queue.",
                ld(&st.stalls),
            ),
            (
                "apiary_store_acks_held_total",
                "QoS 1/2 acknowledgements held until the store's writer caught up.",
                ld(&st.acks_held),
            ),
        ]);
    }
    let mut text = b.metrics.render(&gauges, &counters);
    if let Some(st) = b.store.as_ref().map(|s| s.stats()) {
        text.push_str("# HELP apiary_store_batches_total Batches the store wrote.\n# TYPE apiary_store_batches_total counter\n");
        text.push_str(&format!("apiary_store_batches_total {}\n", ld(&st.batches)));
        text.push_str("# HELP apiary_store_fsync_seconds Time to make a batch durable (fsync).\n# TYPE apiary_store_fsync_seconds histogram\n");
        st.fsync
            .render_unlabelled("apiary_store_fsync_seconds", &mut text);
    }
    tenant_metrics(b, &mut text);
    if let Some(m) = b.plugins() {
        text.push_str(&crate::plugins::stats::render(&m.stats()));
    }
    if let Some(c) = b.cluster() {
        c.metrics(b, &mut text);
    }
    text
}

/// Per tenant: sessions, connections and subscriptions (gauges), messages received from
/// and sent to its MQTT clients (counters).
fn tenant_metrics(b: &Broker, out: &mut String) {
    use crate::metrics::label;
    use std::fmt::Write as _;
    let mut tenants = b.registry.tenants();
    tenants.sort();
    let counts: Vec<_> = tenants
        .iter()
        .map(|t| (t, b.registry.tenant_counts(t)))
        .collect();
    type Pick = fn(&(usize, usize, usize)) -> usize;
    let gauges: [(&str, &str, Pick); 3] = [
        (
            "apiary_tenant_sessions",
            "Sessions of the tenant, online or offline.",
            |c| c.0,
        ),
        (
            "apiary_tenant_connections",
            "Connected sessions of the tenant.",
            |c| c.1,
        ),
        (
            "apiary_tenant_subscriptions",
            "Subscriptions of the tenant's sessions.",
            |c| c.2,
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (t, c) in &counts {
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {}", label(t), get(c));
        }
    }
    let rates = b.tenant_stats.snapshot();
    for (i, (name, help)) in [
        (
            "apiary_tenant_messages_received_total",
            "PUBLISH packets received from the tenant's MQTT clients.",
        ),
        (
            "apiary_tenant_messages_sent_total",
            "PUBLISH packets sent to the tenant's MQTT clients.",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (t, rx, tx) in &rates {
            let v = if i == 0 { rx } else { tx };
            let _ = writeln!(out, "{name}{{tenant=\"{}\"}} {v}", label(t));
        }
    }
}
