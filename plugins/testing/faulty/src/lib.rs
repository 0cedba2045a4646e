//! A plugin that misbehaves on request, for the runtime's fault tests.

use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
use apiary_plugin_sdk::{apikeys, auth, broker, export, parse_config, registry, InitError, Plugin};
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
                username: None,
                superuser: false,
            })
        } else {
            auth::ConnectDecision::Ignore
        }
    }

    fn authorize(_req: auth::AuthorizeRequest) -> auth::AuthorizeDecision {
        auth::AuthorizeDecision::Allow
    }

    /// Method "echo-2": a two-round exchange for the enhanced-auth tests. The first step
    /// challenges with "nonce"; the answer must be "nonce:" + the username. Other methods
    /// are left to the next plugin.
    fn authenticate_step(step: auth::AuthStep) -> auth::AuthStepDecision {
        if step.method != "echo-2" {
            return auth::AuthStepDecision::Ignore;
        }
        match step.state {
            None => auth::AuthStepDecision::Continue(auth::Challenge {
                data: b"nonce".to_vec(),
                state: b"sent-nonce".to_vec(),
            }),
            Some(state) => {
                let want = format!("nonce:{}", step.connect.username.unwrap_or_default());
                if state == b"sent-nonce" && step.data.as_deref() == Some(want.as_bytes()) {
                    auth::AuthStepDecision::Success(auth::AuthSuccess {
                        identity: auth::Identity {
                            tenant: None,
                            user_id: None,
                            username: None,
                            superuser: false,
                        },
                        data: Some(b"welcome".to_vec()),
                    })
                } else {
                    auth::AuthStepDecision::Deny(auth::Denial {
                        reason_code: 0x86,
                        message: "wrong answer to the echo-2 challenge".into(),
                    })
                }
            }
        }
    }
}

impl Handler for Faulty {
    fn handle(req: Request) -> Response {
        Router::new()
            .get("/ok", |_, _| {
                Response::text(200, VERSION.get().cloned().unwrap_or_default())
            })
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
            .post("/as-key/kick", |req, _| {
                // Credentials: x-key + x-secret, or x-key + x-sig (hex HMAC-SHA256 of
                // "tenant/client"); then a kick, held by the host to the key's scope.
                let q = req.query_params();
                let tenant = q.get("tenant").cloned().unwrap_or_default();
                let client = q.get("client").cloned().unwrap_or_default();
                let key = req.header("x-key").unwrap_or_default();
                let who = match req.header("x-sig") {
                    Some(sig) => {
                        let sig: Vec<u8> = (0..sig.len() / 2)
                            .filter_map(|i| u8::from_str_radix(&sig[2 * i..2 * i + 2], 16).ok())
                            .collect();
                        let msg = format!("{tenant}/{client}");
                        apikeys::verify_mac(
                            key,
                            apikeys::MacAlgorithm::HmacSha256,
                            msg.as_bytes(),
                            &sig,
                        )
                    }
                    None => apikeys::verify(key, req.header("x-secret").unwrap_or_default()),
                };
                match who {
                    Ok(Some(_)) => {}
                    Ok(None) => return Response::text(401, "bad credentials"),
                    Err(e) => return HttpError::from(e).into(),
                }
                match registry::kick(&tenant, &client, false) {
                    Ok(n) => Response::text(200, n.to_string()),
                    Err(e) => HttpError::from(e).into(),
                }
            })
            .get("/forbidden", |_, _| {
                match broker::publish("default", "t", b"x", 0, false) {
                    Ok(_) => Response::text(200, "published?!"),
                    Err(e) => HttpError::from(e).into(),
                }
            })
            .dispatch(req)
    }
}

export!(Faulty: http, auth);
