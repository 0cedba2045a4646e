//! A complete Apiary plugin, as a template to copy: the `http` role with a router, a
//! typed `[config]`, API-key authentication on every route (through the host, so the
//! call then acts with the key's tenant and rights), registry queries and the private kv
//! store (bounded by the quota in the plugin's toml).
//!
//! Not served by `cargo xtask run`: it is an example, built and tested by
//! `cargo xtask test`. Serve it by copying `hello.wasm` and `hello.toml` into the plugins
//! directory.

use std::sync::OnceLock;

use apiary_plugin_sdk::http::{Handler, HttpError, Params, Request, Response, Router};
use apiary_plugin_sdk::keyauth::{self, has_right, Right};
use apiary_plugin_sdk::{export, kv, parse_config, registry, session_filter, InitError, Plugin};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
struct Config {
    #[serde(default = "default_greeting")]
    greeting: String,
}

fn default_greeting() -> String {
    "Hello".into()
}

static CONFIG: OnceLock<Config> = OnceLock::new();

struct Hello;

impl Plugin for Hello {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        let _ = CONFIG.set(c);
        Ok(())
    }
}

fn greet(_: &Request, p: &Params) -> Response {
    let greeting = CONFIG.get().map(|c| c.greeting.as_str()).unwrap_or("Hello");
    let name = p.get("name").unwrap_or("world");
    Response::json(200, &json!({ "message": format!("{greeting}, {name}!") }))
}

fn sessions(req: &Request, tenant: String) -> Response {
    let mut f = session_filter();
    f.tenant = Some(tenant);
    f.connected = req.query_params().get("connected").map(|v| v == "true");
    match registry::query(&f, 1, 100) {
        Ok(page) => Response::json(
            200,
            &json!({
                "count": page.count,
                "clients": page.items.iter().map(|s| &s.client_id).collect::<Vec<_>>(),
            }),
        ),
        Err(e) => HttpError::from(e).into(),
    }
}

fn kv_get(_: &Request, p: &Params) -> Response {
    match kv::get(p.get("key").unwrap_or_default()) {
        Ok(Some(v)) => Response {
            status: 200,
            headers: vec![],
            body: v,
        },
        Ok(None) => HttpError::not_found("no such key").into(),
        Err(e) => HttpError::from(e).into(),
    }
}

fn kv_put(req: &Request, p: &Params) -> Response {
    match kv::set(p.get("key").unwrap_or_default(), &req.body) {
        Ok(()) => Response::empty(204),
        Err(e) => HttpError::from(e).into(),
    }
}

impl Handler for Hello {
    fn handle(req: Request) -> Response {
        // Every route needs an API key; writes need `connections:write`.
        let key = match keyauth::api_key(&req) {
            Ok(k) => k,
            Err(e) => return HttpError::from(e).into(),
        };
        if req.method != "GET" && !has_right(&key, Right::ConnectionsWrite) {
            return HttpError::new(403, "FORBIDDEN", "this key may only read").into();
        }
        // A key spanning every tenant lists `default`.
        let tenant = keyauth::acting_tenant(&key, "default");
        Router::new()
            .get("/hello/{name}", greet)
            .get("/sessions", move |r, _| sessions(r, tenant.clone()))
            .get("/kv/{key}", kv_get)
            .put("/kv/{key}", kv_put)
            .dispatch(req)
    }
}

export!(Hello: http);
