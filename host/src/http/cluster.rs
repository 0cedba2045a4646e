//! `GET /cluster`: the nodes this node has heard of and the state of its NATS
//! connection (a key for every tenant with `metrics:read`).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::caller::{Caller, MetricsRead};
use crate::broker::Broker;

/// The routes, to be merged into the native router.
pub fn routes() -> Router<Broker> {
    Router::new().route("/cluster", get(nodes))
}

/// `{"enabled", "node", "nats", "retained": {state, reason}, "nodes": [{node, state, self, last_seen_ms, ...}]}`.
async fn nodes(State(b): State<Broker>, _caller: Caller<MetricsRead>) -> Response {
    match b.cluster() {
        None => Json(
            json!({"enabled": false, "node": null, "nats": null, "retained": null, "nodes": []}),
        ),
        Some(c) => {
            let (state, reason) = c.retained_state();
            Json(json!({
                "enabled": true,
                "node": c.node(),
                "nats": c.nats_state(),
                "retained": {"state": state, "reason": reason},
                "nodes": c.nodes(&b),
            }))
        }
    }
    .into_response()
}
