//! The stock `bifromq` plugin: BifroMQ's API service (`PUT /sub`, `DELETE /unsub`,
//! `POST /pub`, `DELETE /kill`, `DELETE /expireinbox`, every parameter an HTTP header)
//! over Apiary's shared session registry, on a listener of its own as BifroMQ serves it,
//! plus `GET /sessions` (a paged list of a tenant's online sessions, which BifroMQ's users
//! ask for) and the OpenAPI document at `/openapi.yaml`. Unlike BifroMQ, every request
//! carries an API key, checked by the host; see this crate's README for each decision.

mod headers;
mod ops;

use apiary_plugin_sdk::apikeys::KeyInfo;
use apiary_plugin_sdk::http::{Handler, Request, Response, Router};
use apiary_plugin_sdk::keyauth::{self, has_right, KeyError, Right};
use apiary_plugin_sdk::{export, types, InitError, Plugin};

use headers::BadHeader;

/// The OpenAPI document served: BifroMQ's 1.0.2 with Apiary's additions.
const OPENAPI: &str = include_str!("../openapi.yaml");

/// Why a request got no answer of its operation's own.
pub(crate) enum Refusal {
    /// 400: a header is missing or malformed.
    Bad(BadHeader),
    /// 401: no API key, or a wrong one.
    Unauthorized(String),
    /// 403: the key may not do this, or not in this tenant.
    Forbidden(String),
    /// Any other status, as the host's error says.
    Status(u16, String),
}

impl From<BadHeader> for Refusal {
    fn from(b: BadHeader) -> Self {
        Refusal::Bad(b)
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        match r {
            Refusal::Bad(b) => b.into(),
            Refusal::Unauthorized(m) => {
                let mut resp = Response::text(401, m);
                resp.headers
                    .push(("www-authenticate".into(), "Basic realm=\"apiary\"".into()));
                resp
            }
            Refusal::Forbidden(m) => Response::text(403, m),
            Refusal::Status(s, m) => Response::text(s, m),
        }
    }
}

/// A host error as an answer: not found 404, refused by the broker's rules 403, a bad
/// argument 400, anything else 503.
pub(crate) fn host_refusal(e: types::Error) -> Refusal {
    match e {
        types::Error::NotFound(m) => Refusal::Status(404, m),
        types::Error::PermissionDenied(m) | types::Error::Refused(m) => Refusal::Forbidden(m),
        types::Error::InvalidArgument(m) => Refusal::Status(400, m),
        types::Error::Unavailable(m) | types::Error::QuotaExceeded(m) => Refusal::Status(503, m),
    }
}

/// The caller of one request: the tenant it names (and its key may act on).
pub(crate) struct Caller {
    /// The `tenant_id` header.
    pub tenant: String,
}

/// Checks the API key (HTTP basic, through the host), that it holds `right`, and that it
/// may act on the tenant the request names.
fn authorize(req: &Request, right: Right) -> Result<Caller, Refusal> {
    let key: KeyInfo = match keyauth::api_key(req) {
        Ok(k) => k,
        Err(KeyError::Host(e)) => return Err(host_refusal(e)),
        Err(e) => return Err(Refusal::Unauthorized(e.message())),
    };
    let tenant = headers::required(req, "tenant_id")?;
    if tenant.is_empty() {
        return Err(BadHeader("header tenant_id must not be empty".into()).into());
    }
    let tenant = tenant.to_string();
    if key.tenant != "*" && key.tenant != tenant {
        return Err(Refusal::Forbidden(format!(
            "the API key acts on tenant {}, not {tenant}",
            key.tenant
        )));
    }
    if !has_right(&key, right) {
        return Err(Refusal::Forbidden(format!(
            "the API key does not hold {}",
            right.as_str()
        )));
    }
    Ok(Caller { tenant })
}

/// Runs an operation that needs `right`, echoing `req_id` in the answer.
fn serve(
    req: &Request,
    right: Right,
    op: impl Fn(&Caller, &Request) -> Result<Response, Refusal>,
) -> Response {
    let req_id = match headers::req_id(req) {
        Ok(id) => id,
        Err(b) => return b.into(),
    };
    let mut resp = match authorize(req, right).and_then(|c| op(&c, req)) {
        Ok(r) => r,
        Err(r) => r.into(),
    };
    if let Some(id) = req_id {
        resp.headers.push(("req_id".into(), id.to_string()));
    }
    resp
}

struct Bifromq;

impl Plugin for Bifromq {
    fn init(_config: String) -> Result<(), InitError> {
        Ok(())
    }
}

/// The routes, built once per instance rather than per request.
fn router() -> Router {
    Router::new()
        .put("/sub", |r, _| serve(r, Right::ConnectionsWrite, ops::sub))
        .delete("/unsub", |r, _| {
            serve(r, Right::ConnectionsWrite, ops::unsub)
        })
        .post("/pub", |r, _| serve(r, Right::Publish, ops::publish))
        .delete("/kill", |r, _| serve(r, Right::ConnectionsWrite, ops::kill))
        .delete("/expireinbox", |r, _| {
            serve(r, Right::ConnectionsWrite, ops::expire_inbox)
        })
        .get("/sessions", |r, _| {
            serve(r, Right::ConnectionsRead, ops::sessions)
        })
        .get("/openapi.yaml", |r, _| match keyauth::api_key(r) {
            // The document is served to any valid key, as everything here.
            Ok(_) => {
                let mut resp = Response::text(200, OPENAPI);
                resp.headers[0].1 = "application/yaml".into();
                resp
            }
            Err(KeyError::Host(e)) => host_refusal(e).into(),
            Err(e) => Refusal::Unauthorized(e.message()).into(),
        })
}

thread_local! {
    static ROUTER: Router = router();
}

impl Handler for Bifromq {
    fn handle(req: Request) -> Response {
        ROUTER.with(|r| r.dispatch(req))
    }
}

export!(Bifromq: http);
