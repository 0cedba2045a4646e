//! The stock `octave` plugin: Octave's event streams over WebSocket. `POST /session` with
//! an API key gives a single-use session id; `GET /session/{id}/ws` upgrades to a stream
//! connection the host owns (a registry session of protocol `websocket`), on which the
//! client subscribes to streams (MQTT topics of its company's tenant) and receives every
//! publish there as an Octave event. See this crate's README for each decision.

mod events;
mod frames;
mod session;
mod streams;

use std::sync::atomic::{AtomicU64, Ordering};

use apiary_plugin_sdk::http::{Handler, Request, Response, Router};
use apiary_plugin_sdk::stream::{self, Frame};
use apiary_plugin_sdk::{export, parse_config, InitError, Plugin};
use serde_json::{json, Value};

/// Seconds a session id stays valid with no socket connected (`session_ttl_secs`).
static SESSION_TTL_SECS: AtomicU64 = AtomicU64::new(60);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    session_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            session_ttl_secs: 60,
        }
    }
}

/// Octave's answer envelope for HTTP: `head.status` is the HTTP status.
pub(crate) fn http_envelope(status: u16, errors: Vec<String>, body: Value) -> Response {
    let ok = (200..300).contains(&status);
    Response::json(
        status,
        &json!({"head": {"ok": ok, "status": status, "errors": errors}, "body": body}),
    )
}

struct Octave;

impl Plugin for Octave {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        if c.session_ttl_secs == 0 {
            return Err(InitError::InvalidConfig(
                "session_ttl_secs must be positive".into(),
            ));
        }
        SESSION_TTL_SECS.store(c.session_ttl_secs, Ordering::Relaxed);
        Ok(())
    }
}

thread_local! {
    static ROUTER: Router = Router::new().post("/session", |r, _| session::create(r));
}

impl Handler for Octave {
    fn handle(req: Request) -> Response {
        ROUTER.with(|r| r.dispatch(req))
    }
}

impl stream::Guest for Octave {
    fn handshake(req: stream::HandshakeRequest) -> stream::HandshakeDecision {
        session::handshake(&req)
    }

    fn on_open(_conn: stream::Connection) -> Vec<Frame> {
        Vec::new()
    }

    fn on_frame(conn: stream::Connection, frame: Frame) -> Vec<Frame> {
        vec![Frame::Text(frames::answer(&conn, frame).to_string())]
    }

    fn on_close(_conn: stream::Connection, _reason: String) {}

    fn render(msg: stream::Message) -> Vec<Frame> {
        vec![Frame::Text(events::render(&msg).to_string())]
    }
}

export!(Octave: http, stream);
