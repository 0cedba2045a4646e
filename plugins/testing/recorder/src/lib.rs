//! Records every registry event it is given (events role) in its kv store, and lists them
//! over HTTP, for the events-delivery test.

use apiary_plugin_sdk::events::{Event, Guest as Events};
use apiary_plugin_sdk::http::{Handler, HttpError, Request, Response, Router};
use apiary_plugin_sdk::{export, kv, InitError, Plugin};

struct Recorder;

impl Plugin for Recorder {
    fn init(_config: String) -> Result<(), InitError> {
        Ok(())
    }
}

fn summary(e: &Event) -> String {
    match e {
        Event::Connected(c) => format!("connected:{}", c.client_id),
        Event::Disconnected(s) => format!("disconnected:{}", s.client_id),
        Event::Subscribed(s) => format!("subscribed:{}:{}", s.client_id, s.topic),
        Event::Unsubscribed(s) => format!("unsubscribed:{}:{}", s.client_id, s.topic),
        Event::MessagePublished(m) => format!(
            "published:{}:{}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        ),
        Event::MessageDropped(d) => format!("dropped:{}:{}", d.client_id, d.reason),
        Event::SessionEnded(s) => format!("ended:{}", s.client_id),
    }
}

impl Events for Recorder {
    fn on_events(events: Vec<Event>) {
        let mut n: u64 = kv::get("n")
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        for e in &events {
            let _ = kv::set(&format!("ev/{n:08}"), summary(e).as_bytes());
            n += 1;
        }
        let _ = kv::set("n", n.to_string().as_bytes());
    }
}

impl Handler for Recorder {
    fn handle(req: Request) -> Response {
        Router::new()
            .get("/seen", |_, _| match kv::list_keys("ev/", 10_000) {
                Ok(keys) => {
                    let seen: Vec<String> = keys
                        .iter()
                        .filter_map(|k| kv::get(k).ok().flatten())
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .collect();
                    Response::json(200, &seen)
                }
                Err(e) => HttpError::from(e).into(),
            })
            .dispatch(req)
    }
}

export!(Recorder: http, events);
