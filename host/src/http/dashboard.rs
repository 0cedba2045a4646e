//! The web dashboard at `/dashboard/`: static files embedded in the binary (from
//! `host/dashboard/`), open to anyone; the page logs in with an API key and calls the
//! REST routes with it, so serving the files reveals nothing.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::broker::Broker;

/// The embedded files: (path under `/dashboard/`, content type, bytes).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_bytes!("../../dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/app.css"),
    ),
    (
        "vendor/preact-htm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/vendor/preact-htm.js"),
    ),
    (
        "vendor/uplot.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uplot.min.js"),
    ),
    (
        "vendor/uplot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../dashboard/vendor/uplot.min.css"),
    ),
    (
        "vendor/LICENSES.txt",
        "text/plain; charset=utf-8",
        include_bytes!("../../dashboard/vendor/LICENSES.txt"),
    ),
];

/// Scripts, styles and calls from this origin only; no framing (clickjacking).
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The routes, to be merged into the native router.
pub fn routes() -> Router<Broker> {
    Router::new()
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route("/dashboard/", get(|| async { file("") }))
        .route(
            "/dashboard/{*path}",
            get(|Path(p): Path<String>| async move { file(&p) }),
        )
}

fn file(path: &str) -> Response {
    let Some((_, kind, body)) = FILES.iter().find(|(p, _, _)| *p == path) else {
        return super::json_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no dashboard file {path:?}"),
        );
    };
    (
        [
            (header::CONTENT_TYPE, *kind),
            // Small files: revalidate each load, so an upgraded broker serves its own.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        *body,
    )
        .into_response()
}
