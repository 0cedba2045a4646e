//! The stock `beebotte` plugin: Beebotte's REST API (connection management, publish,
//! write, read), its socket.io transport (the `stream` role) and its MQTT credentials and
//! topic rules (the `auth` role), over one registry and one router, so applications built
//! on the official SDKs work against Apiary by changing a host name. See this crate's
//! README for each decision.

mod account;
mod connections;
mod data;
mod mqtt;
mod records;
mod rest;
mod sign;
mod socket;
mod tokens;
mod tokens_admin;
mod wire;

use std::sync::atomic::{AtomicU64, Ordering};

use apiary_plugin_sdk::http::{Handler, Request, Response};
use apiary_plugin_sdk::stream::{self, Frame};
use apiary_plugin_sdk::{auth, export, parse_config, InitError, Plugin};

/// Records kept per channel/resource (`records_per_resource`).
static RECORDS_PER_RESOURCE: AtomicU64 = AtomicU64::new(1000);
/// Resources with written records one account may hold (`resources_per_account`).
static RESOURCES_PER_ACCOUNT: AtomicU64 = AtomicU64::new(100);
/// Replay window of signed requests in seconds (`date_window_secs`).
static DATE_WINDOW_SECS: AtomicU64 = AtomicU64::new(900);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    records_per_resource: u64,
    resources_per_account: u64,
    date_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            records_per_resource: 1000,
            resources_per_account: 100,
            date_window_secs: 900,
        }
    }
}

struct Beebotte;

impl Plugin for Beebotte {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        if !(1..=100_000).contains(&c.records_per_resource) {
            return Err(InitError::InvalidConfig(
                "records_per_resource must be 1 to 100000".into(),
            ));
        }
        if c.date_window_secs == 0 {
            return Err(InitError::InvalidConfig(
                "date_window_secs must be positive".into(),
            ));
        }
        if c.resources_per_account == 0 {
            return Err(InitError::InvalidConfig(
                "resources_per_account must be positive".into(),
            ));
        }
        RECORDS_PER_RESOURCE.store(c.records_per_resource, Ordering::Relaxed);
        RESOURCES_PER_ACCOUNT.store(c.resources_per_account, Ordering::Relaxed);
        DATE_WINDOW_SECS.store(c.date_window_secs, Ordering::Relaxed);
        Ok(())
    }
}

impl Handler for Beebotte {
    fn handle(req: Request) -> Response {
        rest::handle(req)
    }
}

impl stream::Guest for Beebotte {
    fn handshake(req: stream::HandshakeRequest) -> stream::HandshakeDecision {
        socket::handshake(&req)
    }

    fn on_open(conn: stream::Connection) -> Vec<Frame> {
        socket::on_open(&conn)
    }

    fn on_frame(conn: stream::Connection, frame: Frame) -> Vec<Frame> {
        socket::on_frame(&conn, frame)
    }

    fn on_close(_conn: stream::Connection, _reason: String) {}

    fn render(msg: stream::Message) -> Vec<Frame> {
        socket::render(&msg)
    }
}

impl auth::Guest for Beebotte {
    fn authenticate(req: auth::ConnectRequest) -> auth::ConnectDecision {
        mqtt::authenticate(&req)
    }

    fn authenticate_step(_step: auth::AuthStep) -> auth::AuthStepDecision {
        auth::AuthStepDecision::Ignore
    }

    fn authorize(req: auth::AuthorizeRequest) -> auth::AuthorizeDecision {
        mqtt::authorize(&req)
    }
}

export!(Beebotte: http, stream, auth);
