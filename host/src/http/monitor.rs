//! `/api/v5/monitor` (the last hour, sample by sample) and `/api/v5/monitor_current`
//! (figures now, rates, listeners): what the dashboard's overview charts, in EMQX's
//! shapes. A key for every tenant with `metrics:read`.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::caller::{Caller, MetricsRead};
use crate::broker::Broker;

/// The routes, to be merged into the native router.
pub fn routes() -> Router<Broker> {
    Router::new()
        .route("/api/v5/monitor", get(history))
        .route("/api/v5/monitor_current", get(current))
}

/// `GET /api/v5/monitor?latest=SECONDS` (default and most: 3600).
async fn history(
    State(b): State<Broker>,
    _caller: Caller<MetricsRead>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let latest = match q.get("latest").map(|v| v.parse::<u64>()) {
        None => 3600,
        Some(Ok(n)) => n.min(3600),
        Some(Err(_)) => {
            return super::json_error(
                axum::http::StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "latest: a number of seconds",
            )
        }
    };
    Json(b.monitor.history(latest)).into_response()
}

/// `GET /api/v5/monitor_current`.
async fn current(State(b): State<Broker>, _caller: Caller<MetricsRead>) -> Response {
    Json(b.monitor.current(&b)).into_response()
}
