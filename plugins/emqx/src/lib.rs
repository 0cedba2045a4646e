//! The stock `emqx` plugin: EMQX's clients API (open-source EMQX 5 under `/api/v5`, and
//! the EMQX Cloud page it was specified from) over Apiary's shared session registry.
//! Callers authenticate with HTTP basic auth `app_id:app_secret` = an Apiary API key and
//! its secret, checked by the host; every call then acts with the key's tenant and rights.
//! See this crate's README for what matches EMQX and what differs.

mod clients;
mod messages;
mod openapi;
mod params;
mod publish;
mod subs;
mod time;

use std::rc::Rc;
use std::sync::OnceLock;

use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
pub(crate) use apiary_plugin_sdk::keyauth::Right;
use apiary_plugin_sdk::keyauth::{self, has_right, KeyError};
use apiary_plugin_sdk::{export, parse_config, types, InitError, Plugin};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_node")]
    node: String,
    #[serde(default = "default_tenant")]
    tenant: String,
}

fn default_node() -> String {
    "apiary@127.0.0.1".into()
}

fn default_tenant() -> String {
    "default".into()
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The `node` field.
pub(crate) fn node() -> &'static str {
    CONFIG.get().map_or("apiary@127.0.0.1", |c| c.node.as_str())
}

/// An authenticated caller: its tenant and its key.
pub(crate) struct Caller {
    /// Tenant every call acts on.
    pub tenant: String,
    key: apiary_plugin_sdk::apikeys::KeyInfo,
}

impl Caller {
    /// 403 unless the key holds `right` (or admin).
    pub fn need(&self, right: Right) -> Result<(), HttpError> {
        if has_right(&self.key, right) {
            Ok(())
        } else {
            Err(HttpError::new(
                403,
                "FORBIDDEN",
                format!("the API key does not hold {}", right.as_str()),
            ))
        }
    }
}

/// 404 as EMQX answers an unknown client id.
pub(crate) fn client_not_found() -> HttpError {
    HttpError::new(404, "CLIENTID_NOT_FOUND", "Client ID not found")
}

/// A host error in EMQX's shape.
pub(crate) fn host_error(e: types::Error) -> HttpError {
    match e {
        types::Error::NotFound(_) => client_not_found(),
        types::Error::PermissionDenied(m) => HttpError::new(403, "FORBIDDEN", m),
        types::Error::InvalidArgument(m) => HttpError::bad_request(m),
        types::Error::Unavailable(m) => HttpError::new(503, "SERVICE_UNAVAILABLE", m),
        types::Error::QuotaExceeded(m) => HttpError::new(507, "QUOTA_EXCEEDED", m),
        // The broker's own rules (the client's ACL, subscription or retained limits).
        types::Error::Refused(m) => HttpError::new(403, "FORBIDDEN", m),
    }
}

/// Basic auth against the host's API key store, answered in EMQX's shapes.
fn authenticate(req: &Request) -> Result<Caller, Response> {
    match keyauth::api_key(req) {
        Ok(k) => {
            let default = CONFIG.get().map_or("default", |c| c.tenant.as_str());
            let tenant = keyauth::acting_tenant(&k, default);
            Ok(Caller { tenant, key: k })
        }
        Err(KeyError::Host(e)) => Err(host_error(e).into()),
        Err(e) => Err(HttpError::new(401, "BAD_USERNAME_OR_PWD", e.message()).into()),
    }
}

/// A handler result into a response.
pub(crate) fn reply(r: Result<Response, HttpError>) -> Response {
    r.unwrap_or_else(Into::into)
}

struct Emqx;

impl Plugin for Emqx {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Handler for Emqx {
    fn handle(req: Request) -> Response {
        // Every route needs a key, the API's own description included: nothing the
        // broker serves by default answers without credentials but /healthz.
        let caller = match authenticate(&req) {
            Ok(c) => Rc::new(c),
            Err(r) => return r,
        };
        if req.method == "GET" && req.path == "/openapi.json" {
            return Response::json(200, &openapi::document());
        }
        let c = || caller.clone();
        let (c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12) =
            (c(), c(), c(), c(), c(), c(), c(), c(), c(), c(), c(), c());
        let (c13, c14, c15) = (c(), c(), c());
        Router::new()
            .get("/clients", move |r, _| reply(clients::list(&c1, r)))
            .get("/clients_v2", move |r, _| reply(clients::list_v2(&c13, r)))
            .post("/clients/kickout/bulk", move |r, _| {
                reply(clients::kick_bulk(&c2, r))
            })
            .get("/clients/{clientid}", move |_, p| {
                reply(clients::get(&c3, p))
            })
            .delete("/clients/{clientid}", move |_, p| {
                reply(clients::kick(&c4, p))
            })
            .get("/clients/{clientid}/mqueue_messages", move |r, p| {
                reply(messages::list(&c14, r, p, false))
            })
            .get("/clients/{clientid}/inflight_messages", move |r, p| {
                reply(messages::list(&c15, r, p, true))
            })
            .get("/clients/{clientid}/subscriptions", move |_, p| {
                reply(subs::of_client(&c5, p))
            })
            .post("/clients/{clientid}/subscribe", move |r, p| {
                reply(subs::subscribe(&c6, r, p))
            })
            .post("/clients/{clientid}/unsubscribe", move |r, p| {
                reply(subs::unsubscribe(&c7, r, p))
            })
            .post("/clients/{clientid}/subscribe/bulk", move |r, p| {
                reply(subs::subscribe_bulk(&c8, r, p))
            })
            .post("/clients/{clientid}/unsubscribe/bulk", move |r, p| {
                reply(subs::unsubscribe_bulk(&c9, r, p))
            })
            .get("/subscriptions", move |r, _| reply(subs::list(&c10, r)))
            .post("/publish", move |r, _| reply(publish::one(&c11, r)))
            .post("/publish/bulk", move |r, _| reply(publish::bulk(&c12, r)))
            .dispatch(req)
    }
}

export!(Emqx: http);
