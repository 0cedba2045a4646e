//! The `stream` role in brief, as a template to copy: the host owns the WebSocket (and
//! its registry session, keepalive and limits); this plugin decides who may connect,
//! answers what clients send, and renders routed MQTT messages into frames.
//!
//! At `/echo/ws?token=letmein` (WebSocket): a text frame `sub <filter> [qos]` subscribes the
//! connection (through the router and ACL, like an MQTT SUBSCRIBE), `unsub <filter>`
//! unsubscribes, anything else is echoed back; each publish on a subscribed topic
//! arrives as `<topic> <payload>`. Over socket.io at `/echo/socket.io/?token=letmein`
//! the same as events: `sub`/`unsub` with the filter as argument (answered `subscribed`
//! / `unsubscribed`), any other event echoed, publishes as `message` events. Not served
//! by `cargo xtask run`.

use apiary_plugin_sdk::stream::{
    Accepted, Connection, Frame, Guest, HandshakeDecision, HandshakeRequest, Message, Refusal,
    StreamEvent,
};
use apiary_plugin_sdk::{export, streams, InitError, Plugin};

struct Echo;

impl Plugin for Echo {
    fn init(_config: String) -> Result<(), InitError> {
        Ok(())
    }
}

fn text(s: impl Into<String>) -> Vec<Frame> {
    vec![Frame::Text(s.into())]
}

impl Guest for Echo {
    fn handshake(req: HandshakeRequest) -> HandshakeDecision {
        // A real plugin checks a key through the host (`apikeys::verify`) here.
        if !req.query.split('&').any(|kv| kv == "token=letmein") {
            return HandshakeDecision::Refuse(Refusal {
                status: 401,
                content_type: "text/plain".into(),
                body: b"add ?token=letmein".to_vec(),
            });
        }
        HandshakeDecision::Accept(Accepted {
            tenant: "default".into(),
            // Empty: the host names the session `stream-echo-<n>`.
            client_id: String::new(),
            user_id: None,
            username: None,
            description: Some(format!(r#"{{"peer":{:?}}}"#, req.peer.unwrap_or_default())),
            superuser: false,
        })
    }

    fn on_open(conn: Connection) -> Vec<Frame> {
        text(format!("welcome {}", conn.client_id))
    }

    fn on_frame(conn: Connection, frame: Frame) -> Vec<Frame> {
        let t = match frame {
            Frame::Text(t) => t,
            Frame::Event(e) => return on_event(&conn, e),
            Frame::Binary(_) => return text("error: text frames only"),
        };
        if let Some(rest) = t.strip_prefix("sub ") {
            // `sub <filter>`, or `sub <filter> <qos>`.
            let (filter, qos) = match rest.rsplit_once(' ') {
                Some((f, q)) if q.len() == 1 && matches!(q, "0" | "1" | "2") => {
                    (f, q.as_bytes()[0] - b'0')
                }
                _ => (rest, 0),
            };
            match streams::subscribe(conn.id, filter, qos) {
                Ok(_) => text(format!("subscribed {filter}")),
                Err(e) => text(format!("error: {e:?}")),
            }
        } else if let Some(filter) = t.strip_prefix("unsub ") {
            match streams::unsubscribe(conn.id, filter) {
                Ok(existed) => text(format!("unsubscribed {filter} ({existed})")),
                Err(e) => text(format!("error: {e:?}")),
            }
        } else {
            text(t)
        }
    }

    fn on_close(_conn: Connection, _reason: String) {}

    fn render(msg: Message) -> Vec<Frame> {
        text(format!(
            "{} {}",
            msg.topic,
            String::from_utf8_lossy(&msg.payload)
        ))
    }
}

/// A socket.io event: `sub`/`unsub` with a filter, or anything else echoed.
fn on_event(conn: &Connection, e: StreamEvent) -> Vec<Frame> {
    let arg = e
        .args
        .trim_start_matches("[\"")
        .split('"')
        .next()
        .unwrap_or("");
    let (name, ok) = match e.name.as_str() {
        "sub" => ("subscribed", streams::subscribe(conn.id, arg, 0).is_ok()),
        "unsub" => ("unsubscribed", streams::unsubscribe(conn.id, arg).is_ok()),
        _ => return vec![Frame::Event(e)],
    };
    let name = if ok { name } else { "error" };
    vec![Frame::Event(StreamEvent {
        name: name.into(),
        args: format!("[{arg:?}]"),
    })]
}

export!(Echo: stream);
