//! Plain WebSocket stream connections: the upgrade (checked, decided by the protocol,
//! answered 101 or with the protocol's refusal) and the connection task, one per socket,
//! which multiplexes the client's frames, the session's deliveries, the plugin's queued
//! frames, the control channel (kick, takeover, shutdown) and the keepalive ping.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use futures_util::{Sink, SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::StreamTransport;
use super::{Accepted, ConnInfo, Decision, Frame, Handshake, Out, Protocol, StreamSettings};
use crate::broker::Broker;
use crate::session::{Control, Counters, Session};

/// Why an upgrade was not attempted (answered before the protocol is asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Not a WebSocket upgrade request.
    #[error("expected a WebSocket upgrade (GET with Upgrade: websocket, Sec-WebSocket-Key and Sec-WebSocket-Version: 13)")]
    NotUpgrade,
}

/// Whether a request asks for a WebSocket upgrade.
pub fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn plain(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// Serves a WebSocket upgrade at a path the plugin declared: checks the request, asks
/// the protocol, and on acceptance answers 101 and spawns the connection task.
pub async fn upgrade(
    broker: &Broker,
    proto: Arc<dyn Protocol>,
    settings: &StreamSettings,
    path: String,
    peer: SocketAddr,
    mut req: Request,
) -> Response {
    let h = req.headers();
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let version_ok = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let http11 = req.version() == axum::http::Version::HTTP_11;
    let get = req.method() == axum::http::Method::GET;
    let (Some(key), true, true, true) = (key, version_ok, get && http11, is_upgrade(&req)) else {
        broker
            .streams
            .counters
            .bad_upgrades
            .fetch_add(1, Ordering::Relaxed);
        return plain(
            StatusCode::BAD_REQUEST,
            "text/plain",
            UpgradeError::NotUpgrade.to_string(),
        );
    };
    let plugin: Arc<str> = proto.name().into();
    let Some(slot) = super::Reservation::new(broker, plugin.clone(), settings.max_connections)
    else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("plugin {plugin} holds its maximum of stream connections"),
        );
    };
    let hs = Handshake {
        transport: StreamTransport::WebSocket,
        path,
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        peer: Some(peer),
        auth: None,
    };
    let accepted = match proto.handshake(hs).await {
        Ok(Decision::Accept(a)) => a,
        Ok(Decision::Refuse {
            status,
            content_type,
            body,
        }) => {
            let status = StatusCode::from_u16(status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::FORBIDDEN);
            return plain(status, &content_type, body);
        }
        Err(e) => return plain(StatusCode::SERVICE_UNAVAILABLE, "text/plain", e.to_string()),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let b = broker.clone();
    let settings = settings.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => {
                // A small read buffer: tungstenite allocates it up front for every socket
                // (128 KiB by default), and stream clients mostly listen.
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .max_message_size(Some(settings.max_frame_bytes))
                    .max_frame_size(Some(settings.max_frame_bytes));
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(cfg))
                        .await;
                serve(b, proto, settings, slot.id(), peer, accepted, ws).await;
            }
            Err(e) => tracing::debug!(error = %e, "stream upgrade failed"),
        }
        drop(slot);
    });
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hd = r.headers_mut();
    hd.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    hd.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(&key)) {
        hd.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Why a stream connection ended.
enum End {
    Closed(String),
    Takeover(oneshot::Sender<()>),
}

/// One stream connection's state inside its task.
struct Conn {
    broker: Broker,
    proto: Arc<dyn Protocol>,
    session: Arc<Session>,
    info: ConnInfo,
    write_timeout: Duration,
}

/// Attaches the registry session, runs the connection, detaches and tells the plugin.
async fn serve<S>(
    broker: Broker,
    proto: Arc<dyn Protocol>,
    settings: StreamSettings,
    id: u64,
    peer: SocketAddr,
    a: Accepted,
    ws: WebSocketStream<S>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let origin = super::Origin {
        id,
        plugin: proto.name().into(),
        transport: StreamTransport::WebSocket,
        proto_ver: 13,
        peer: Some(peer),
        sid: None,
    };
    let (att, rx, info) = super::open_session(&broker, &settings, origin, a).await;
    let mut conn = Conn {
        broker: broker.clone(),
        proto: proto.clone(),
        session: att.session.clone(),
        info,
        write_timeout: Duration::from_secs(settings.ping_interval_secs.max(5)),
    };
    let ping = Duration::from_secs(settings.ping_interval_secs);
    let end = conn.run(ws, att.control, rx, ping).await;
    let reason = match &end {
        End::Closed(r) => r.clone(),
        End::Takeover(_) => "taken_over".to_string(),
    };
    broker.detach(&att.session, att.generation, false, 0, reason.clone());
    if let End::Takeover(ack) = end {
        let _ = ack.send(());
    }
    let info = conn.info_now();
    proto.on_close(info, reason).await;
}

impl Conn {
    /// The connection as the plugin sees it now (the description may have changed).
    fn info_now(&self) -> ConnInfo {
        let mut i = self.info.clone();
        i.description = self.session.info.read().description.clone();
        i
    }

    async fn run<S>(
        &mut self,
        ws: WebSocketStream<S>,
        mut control: crate::session::ControlRx,
        mut out: mpsc::Receiver<Out>,
        ping: Duration,
    ) -> End
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let mut heard = Instant::now();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
        // Deliveries queued before the connection attached (retained messages of an
        // earlier subscription cannot exist yet, but a takeover may leave some).
        self.session.notify.notify_one();
        let mut step = match self.proto.on_open(self.info_now()).await {
            Ok(f) => self.write(&mut sink, f).await,
            Err(super::ProtocolError::Unloaded(_)) => Err("plugin_unloaded".into()),
            Err(_) => Ok(()),
        };
        let end = loop {
            if let Err(reason) = step {
                break End::Closed(reason);
            }
            step = tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Takeover(ack)) => break End::Takeover(ack),
                    Some(Control::Kick { .. }) => Err("kicked".to_string()),
                    Some(Control::Shutdown) | None => Err("server_shutdown".to_string()),
                },
                o = out.recv() => match o {
                    Some(Out::Frames(f)) => self.write(&mut sink, f).await,
                    Some(Out::Close(reason)) => Err(reason),
                    None => Err("closed".to_string()),
                },
                _ = self.session.notify.notified() => self.deliver(&mut sink).await,
                m = stream.next() => {
                    heard = Instant::now();
                    self.received(&mut sink, m).await
                }
                _ = ticker.tick() => {
                    // Silent since the tick before last (a tick may fire a hair early).
                    if heard.elapsed() + ping / 10 >= ping * 2 {
                        Err("keepalive_timeout".to_string())
                    } else {
                        self.timed(sink.send(WsMessage::Ping(Default::default()))).await
                    }
                }
            };
        };
        let code = match &end {
            End::Closed(r) if r == "frame_too_large" => CloseCode::Size,
            End::Closed(r) if r == "server_shutdown" || r.starts_with("plugin") => CloseCode::Away,
            End::Closed(r) if r == "bad_frame" => CloseCode::Unsupported,
            _ => CloseCode::Normal,
        };
        let reason = match &end {
            End::Closed(r) => r.as_str(),
            End::Takeover(_) => "taken_over",
        };
        let close = WsMessage::Close(Some(CloseFrame {
            code,
            reason: truncate(reason, 123).to_string().into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
        end
    }

    /// A write that a client not reading cannot hold up forever.
    async fn timed<F, E>(&self, f: F) -> Result<(), String>
    where
        F: std::future::Future<Output = Result<(), E>>,
    {
        match tokio::time::timeout(self.write_timeout, f).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("write_failed".to_string()),
            Err(_) => Err("write_timeout".to_string()),
        }
    }

    /// Sends frames and flushes once.
    async fn write<K>(&self, sink: &mut K, frames: Vec<Frame>) -> Result<(), String>
    where
        K: Sink<WsMessage, Error = WsError> + Unpin,
    {
        if frames.is_empty() {
            return Ok(());
        }
        let c = &self.session.counters;
        let n = frames.len() as u64;
        self.timed(async {
            for f in frames {
                Counters::add(&c.send_oct, f.len() as u64);
                sink.feed(ws_message(f)).await?;
            }
            sink.flush().await
        })
        .await?;
        Counters::add(&c.send_pkt, n);
        Counters::add(&c.send_cnt, 1);
        Ok(())
    }

    /// Drains the session queue: each delivery becomes the plugin's rendered frames.
    async fn deliver<K>(&self, sink: &mut K) -> Result<(), String>
    where
        K: Sink<WsMessage, Error = WsError> + Unpin,
    {
        let frames = super::drain(&*self.proto, &self.session, &self.broker.streams).await?;
        self.write(sink, frames).await
    }

    /// Handles what the client sent.
    async fn received<K>(
        &self,
        sink: &mut K,
        m: Option<Result<WsMessage, WsError>>,
    ) -> Result<(), String>
    where
        K: Sink<WsMessage, Error = WsError> + Unpin,
    {
        let c = &self.session.counters;
        let frame = match m {
            None | Some(Ok(WsMessage::Close(_))) => return Err("closed_by_client".into()),
            Some(Err(WsError::Capacity(_))) => {
                self.broker
                    .streams
                    .counters
                    .frames_too_large
                    .fetch_add(1, Ordering::Relaxed);
                return Err("frame_too_large".into());
            }
            Some(Err(WsError::Utf8(_))) => return Err("bad_frame".into()),
            Some(Err(_)) => return Err("connection_error".into()),
            Some(Ok(WsMessage::Text(t))) => {
                // Valid UTF-8 already (tungstenite checked it): the bytes move over as is.
                let b: bytes::Bytes = t.into();
                match bytestring::ByteString::try_from(b) {
                    Ok(s) => Frame::Text(s),
                    Err(_) => return Err("bad_frame".into()),
                }
            }
            Some(Ok(WsMessage::Binary(b))) => Frame::Binary(b),
            // Pings are answered by tungstenite at the next flush; pongs only count as life.
            Some(Ok(_)) => return self.timed(sink.flush()).await,
        };
        Counters::add(&c.recv_oct, frame.len() as u64);
        Counters::add(&c.recv_pkt, 1);
        Counters::add(&c.recv_cnt, 1);
        match self.proto.on_frame(self.info_now(), frame).await {
            Ok(replies) => self.write(sink, replies).await,
            Err(super::ProtocolError::Unloaded(_)) => Err("plugin_unloaded".into()),
            Err(e) => {
                tracing::debug!(plugin = self.proto.name(), error = %e, "stream frame not handled");
                self.broker
                    .streams
                    .counters
                    .frames_failed
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (a close frame's reason has
/// room for 123).
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn ws_message(f: Frame) -> WsMessage {
    match f {
        // SAFETY: a ByteString holds valid UTF-8, which is all Utf8Bytes requires; the
        // frame's bytes are shared with every other receiver, not copied.
        Frame::Text(t) => {
            WsMessage::Text(unsafe { Utf8Bytes::from_bytes_unchecked(t.into_bytes()) })
        }
        Frame::Binary(b) => WsMessage::Binary(b),
        // A socket.io event on a plain WebSocket: its JSON array form.
        Frame::Event { name, args } => {
            let args = serde_json::from_str::<serde_json::Value>(&args)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            let mut v = vec![serde_json::Value::String(name)];
            v.extend(args);
            WsMessage::Text(serde_json::Value::Array(v).to_string().into())
        }
    }
}
