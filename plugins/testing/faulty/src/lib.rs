//! A plugin that misbehaves on request, for the runtime's fault tests.

use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
use apiary_plugin_sdk::{auth, broker, export, parse_config, InitError, Plugin};
use serde::Deserialize;

#[derive(Deserialize, Default)]
struct Config {
    #[serde(default)]
    fail_init: bool,
    #[serde(default)]
    version: String,
}

static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

struct Faulty;

impl Plugin for Faulty {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        if c.fail_init {
            return Err(InitError::InvalidConfig("fail_init is set".into()));
        }
        let _ = VERSION.set(c.version);
        Ok(())
    }
}

/// A trivial auth role (for the call-overhead benchmark and the auth-chain test): user
/// "ok" is allowed, "trap" makes it panic, everyone else is left to the next plugin.
impl apiary_plugin_sdk::auth::Guest for Faulty {
    fn authenticate(req: auth::ConnectRequest) -> auth::ConnectDecision {
        if req.username.as_deref() == Some("trap") {
            panic!("auth plugin trap");
        }
        if req.username.as_deref() == Some("ok") {
            auth::ConnectDecision::Allow(auth::Identity {
                tenant: None,
                user_id: None,
                superuser: false,
            })
        } else {
            auth::ConnectDecision::Ignore
        }
    }

    fn authorize(_req: auth::AuthorizeRequest) -> auth::AuthorizeDecision {
        auth::AuthorizeDecision::Allow
    }
}

impl Handler for Faulty {
    fn handle(req: Request) -> Response {
        Router::new()
            .get("/ok", |_, _| Response::text(200, VERSION.get().cloned().unwrap_or_default()))
            .get("/trap", |_, _| panic!("boom"))
            .get("/loop", |_, _| {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            })
            .get("/sleep", |_, _| {
                // Blocked in a host call (WASI clocks), where epochs do not reach.
                std::thread::sleep(std::time::Duration::from_secs(30));
                Response::text(200, "slept")
            })
            .get("/alloc", |_, _| {
                let mut v: Vec<Vec<u8>> = Vec::new();
                loop {
                    v.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&v);
                }
            })
            .get("/forbidden", |_, _| match broker::publish("default", "t", b"x", 0, false) {
                Ok(_) => Response::text(200, "published?!"),
                Err(e) => HttpError::from(e).into(),
            })
            .dispatch(req)
    }
}

export!(Faulty: http, auth);
