//! A complete Apiary plugin, as a template: the `http` role with a router, a typed
//! `[config]`, registry queries and the private kv store.

use std::sync::OnceLock;

use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
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

fn greet(_: &Request, p: &apiary_plugin_sdk::http::Params) -> Response {
    let greeting = CONFIG.get().map(|c| c.greeting.as_str()).unwrap_or("Hello");
    let name = p.get("name").unwrap_or("world");
    Response::json(200, &json!({ "message": format!("{greeting}, {name}!") }))
}

fn sessions(req: &Request, _: &apiary_plugin_sdk::http::Params) -> Response {
    let mut f = session_filter();
    f.tenant = Some("default".into());
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

fn kv_get(_: &Request, p: &apiary_plugin_sdk::http::Params) -> Response {
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

fn kv_put(req: &Request, p: &apiary_plugin_sdk::http::Params) -> Response {
    match kv::set(p.get("key").unwrap_or_default(), &req.body) {
        Ok(()) => Response::empty(204),
        Err(e) => HttpError::from(e).into(),
    }
}

impl Handler for Hello {
    fn handle(req: Request) -> Response {
        Router::new()
            .get("/hello/{name}", greet)
            .get("/sessions", sessions)
            .get("/kv/{key}", kv_get)
            .put("/kv/{key}", kv_put)
            .dispatch(req)
    }
}

export!(Hello: http);
