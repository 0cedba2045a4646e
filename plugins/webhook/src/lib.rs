//! The stock `webhook` plugin: delivers chosen registry events and messages to HTTP
//! endpoints as JSON in EMQX's webhook shapes. The event pump's calls queue request
//! bodies per target in the kv store (bounded, drops counted); the host's ticks
//! (`[events] tick_ms`) send them in order, retrying with backoff; each request carries an
//! HMAC-SHA256 signature of its body when a secret is set. `GET /stats` (an API key with
//! `metrics:read` for every tenant) shows per target what was delivered, queued,
//! retried, rejected and dropped.

mod queue;
mod shape;

use apiary_plugin_sdk::events::{Event, Guest as Events};
use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
use apiary_plugin_sdk::keyauth::{self, has_right, Right};
use apiary_plugin_sdk::{clock, export, parse_config, topic, InitError, Plugin};
use serde::Deserialize;

/// One endpoint and what it gets.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Where to POST (its origin must be in the toml's `[outbound_http] allowed_hosts`).
    pub url: String,
    /// EMQX event names it gets (`client.connected`, `message.publish`, ...); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Topic filters for `message.publish` and `message.dropped`.
    #[serde(default = "all_topics")]
    pub topics: Vec<String>,
    /// Events per request: 1 sends each event as its own JSON object (as EMQX does),
    /// more sends a JSON array.
    #[serde(default = "batch_size")]
    pub batch_size: usize,
    /// Requests queued at most; further events are dropped (counted).
    #[serde(default = "max_queued")]
    pub max_queued: u32,
    /// Longest wait between retries, ms.
    #[serde(default = "max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Its queue's and counters' key: a hash of the URL (set at init).
    #[serde(skip)]
    pub id: String,
}

/// FNV-1a of the URL: the same target keeps its queue across reloads and reorderings.
fn target_id(url: &str) -> String {
    let h = url.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

fn all_topics() -> Vec<String> {
    vec!["#".into()]
}
fn batch_size() -> usize {
    100
}
fn max_queued() -> u32 {
    1000
}
fn max_backoff_ms() -> u64 {
    30_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// HMAC-SHA256 key of the `x-apiary-signature` header; none: unsigned.
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    targets: Vec<Target>,
    /// How long one tick may spend sending, ms: below the toml's `call_timeout_ms`.
    #[serde(default = "tick_budget_ms")]
    tick_budget_ms: u64,
}

fn tick_budget_ms() -> u64 {
    3000
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

fn config() -> &'static Config {
    CONFIG.get().expect("init ran")
}

struct Webhook;

impl Plugin for Webhook {
    fn init(config: String) -> Result<(), InitError> {
        let mut c: Config = parse_config(&config)?;
        for t in &mut c.targets {
            t.id = target_id(&t.url);
        }
        for t in &c.targets {
            if !t.url.starts_with("http://") && !t.url.starts_with("https://") {
                return Err(InitError::InvalidConfig(format!(
                    "{:?} is not an http(s) URL",
                    t.url
                )));
            }
            if let Some(f) = t
                .topics
                .iter()
                .find(|f| topic::validate_filter(f, 128).is_err())
            {
                return Err(InitError::InvalidConfig(format!(
                    "{f:?} is not a topic filter"
                )));
            }
            if t.batch_size == 0 || t.max_queued == 0 {
                return Err(InitError::InvalidConfig(
                    "batch_size and max_queued must be positive".into(),
                ));
            }
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

fn wants(t: &Target, e: &Event) -> bool {
    let name = shape::name(e);
    (t.events.is_empty() || t.events.iter().any(|n| n == name))
        && shape::topic(e).is_none_or(|topic| t.topics.iter().any(|f| topic::matches(f, topic)))
}

impl Events for Webhook {
    fn on_events(events: Vec<Event>) {
        let c = config();
        if events.is_empty() {
            // A tick: deliver what is queued (a few requests per target per tick, for at
            // most `tick_budget_ms`).
            let until = clock::now_ms() + c.tick_budget_ms as i64;
            for t in &c.targets {
                queue::drain(t, c.secret.as_deref(), 16, until);
            }
            return;
        }
        let now = clock::now_ms();
        for t in &c.targets {
            let mine: Vec<_> = events
                .iter()
                .filter(|e| wants(t, e))
                .map(|e| shape::body(e, now))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let mut queue = queue::Pusher::new(t);
            for chunk in mine.chunks(t.batch_size) {
                let body = if t.batch_size == 1 {
                    serde_json::to_vec(&chunk[0])
                } else {
                    serde_json::to_vec(chunk)
                };
                if let Ok(body) = body {
                    queue.push(&body, chunk.len() as u64);
                }
            }
        }
    }
}

impl Handler for Webhook {
    fn handle(req: Request) -> Response {
        // Its figures name the targets: a key with `metrics:read` for every tenant.
        let key = match keyauth::api_key(&req) {
            Ok(k) => k,
            Err(e) => return HttpError::from(e).into(),
        };
        if !has_right(&key, Right::MetricsRead) || key.tenant != "*" {
            return HttpError::new(403, "FORBIDDEN", "needs metrics:read for every tenant").into();
        }
        Router::new()
            .get("/stats", |_, _| {
                let c = config();
                let targets: Vec<_> = c
                    .targets
                    .iter()
                    .map(|t| {
                        let id = &t.id;
                        serde_json::json!({
                            "url": t.url,
                            "queued_requests": queue::queued(id, t.max_queued).len(),
                            "delivered": queue::counter(id, "delivered"),
                            "failed_attempts": queue::counter(id, "failed_attempts"),
                            "rejected": queue::counter(id, "rejected"),
                            "dropped": queue::counter(id, "dropped"),
                        })
                    })
                    .collect();
                Response::json(200, &serde_json::json!({ "targets": targets }))
            })
            .dispatch(req)
    }
}

export!(Webhook: events, http);
