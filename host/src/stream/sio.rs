//! socket.io stream connections, served by socketioxide with Engine.IO v3 (socket.io-client
//! 2.x, Beebotte's SDK, `b64=1` polling included) and v4 clients on one endpoint. The
//! namespace `/` asks the protocol at connect (a refusal reaches the client as a connect
//! error), and each accepted socket gets a task like a WebSocket's: deliveries rendered by
//! the plugin, its events answered, kicks sent as the socket.io DISCONNECT packet (so the
//! client does not reconnect). Engine.IO runs the heartbeat.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::Value;
use socketioxide::extract::{Data, Event, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::service::SocketIoService;
use socketioxide::socket::DisconnectReason;
use socketioxide::{ProtocolVersion, SocketIo};
use tokio::sync::{mpsc, oneshot};

use super::StreamTransport;
use super::{Accepted, ConnInfo, Decision, Frame, Handshake, Out, Protocol, StreamSettings};
use crate::broker::Broker;
use crate::session::{Control, Counters, Session};

/// One plugin's socket.io endpoint.
pub struct SocketIoServer {
    svc: SocketIoService<axum::Router>,
    _io: SocketIo,
}

impl std::fmt::Debug for SocketIoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SocketIoServer")
    }
}

/// What the namespace handlers of one endpoint share.
struct Ctx {
    broker: Broker,
    proto: Arc<dyn Protocol>,
    settings: StreamSettings,
    plugin: Arc<str>,
    /// Accepted at the connect middleware, picked up by the connect handler.
    pending: Mutex<HashMap<String, Pending>>,
}

/// A socket the plugin accepted whose connect handler has not run yet.
struct Pending {
    slot: super::Reservation,
    accepted: Accepted,
    /// Drops the entry (and its slot) if the handler never comes.
    timer: tokio::task::AbortHandle,
    /// The socket's events since the handshake, in order (see [`queue_events`]).
    inbound: mpsc::Receiver<In>,
}

/// Test seam: how long connect handlers wait before wiring the socket, to widen the
/// window between socketioxide's CONNECT answer and the handler (0: none).
static OPEN_DELAY_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Delays every socket.io connect handler by `d` (tests: events a client sends right
/// after the CONNECT answer must still arrive).
#[doc(hidden)]
pub fn delay_connect_handlers(d: Duration) {
    OPEN_DELAY_MS.store(d.as_millis() as u64, Ordering::Relaxed);
}

/// All of an event's arguments (socketioxide's `Data<Value>` keeps only the first).
struct AllArgs(Vec<Value>);

impl<'de> serde::Deserialize<'de> for AllArgs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AllArgs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut s: S,
            ) -> Result<AllArgs, S::Error> {
                let mut v = Vec::new();
                while let Some(x) = s.next_element()? {
                    v.push(x);
                }
                Ok(AllArgs(v))
            }
        }
        d.deserialize_tuple(usize::MAX, V)
    }
}

/// Arguments to emit, each its own socket.io argument.
struct Args<'a, T>(&'a [T]);

impl<T: serde::Serialize> serde::Serialize for Args<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl SocketIoServer {
    /// The endpoint of a plugin at `settings.socketio` (e.g. `/socket.io`).
    pub fn new(
        broker: Broker,
        proto: Arc<dyn Protocol>,
        settings: &StreamSettings,
        path: &str,
    ) -> Arc<Self> {
        let ping = Duration::from_secs(settings.ping_interval_secs);
        let (layer, io) = SocketIo::builder()
            .req_path(path.trim_end_matches('/').to_string())
            .ping_interval(ping)
            .ping_timeout(ping)
            .max_payload(settings.max_frame_bytes as u64)
            .max_buffer_size(settings.max_queued_frames.max(16))
            .build_layer();
        let ctx = Arc::new(Ctx {
            broker,
            plugin: proto.name().into(),
            proto,
            settings: settings.clone(),
            pending: Mutex::new(HashMap::new()),
        });
        let (c1, c2) = (ctx.clone(), ctx);
        let decide = move |s: SocketRef, TryData(auth): TryData<Value>| {
            let ctx = c1.clone();
            async move { handshake(&ctx, &s, auth.ok()).await }
        };
        let opened = move |s: SocketRef| {
            let ctx = c2.clone();
            async move {
                let delay = OPEN_DELAY_MS.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                open(ctx, s)
            }
        };
        io.ns("/", opened.with(decide));
        let svc = tower_layer::Layer::layer(&layer, axum::Router::new());
        Arc::new(Self { svc, _io: io })
    }

    /// Serves one request under the endpoint (polling, or the WebSocket upgrade).
    pub async fn serve(&self, req: Request) -> Response {
        let mut svc = self.svc.clone();
        match tower_service::Service::call(&mut svc, req).await {
            Ok(r) => r.map(Body::new),
            Err(e) => match e {},
        }
    }
}

/// The connect middleware: asks the protocol; a refusal is the client's connect error.
async fn handshake(ctx: &Arc<Ctx>, s: &SocketRef, auth: Option<Value>) -> Result<(), String> {
    let parts = s.req_parts();
    let max = ctx.settings.max_connections;
    let Some(slot) = super::Reservation::new(&ctx.broker, ctx.plugin.clone(), max) else {
        return Err(format!(
            "plugin {} holds its maximum of stream connections",
            ctx.plugin
        ));
    };
    let hs = Handshake {
        transport: StreamTransport::SocketIo,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        peer: peer(s),
        auth: auth.filter(|a| !a.is_null()).map(|a| a.to_string()),
    };
    match ctx.proto.handshake(hs).await {
        Ok(Decision::Accept(accepted)) => {
            let sid = s.id.to_string();
            // A socket that goes away between this and its connect handler must not
            // keep its slot: nobody else would ever release it.
            let (c, key) = (ctx.clone(), sid.clone());
            let timer = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                c.pending.lock().remove(&key);
            })
            .abort_handle();
            let p = Pending {
                slot,
                accepted,
                timer,
                inbound: queue_events(ctx, s),
            };
            ctx.pending.lock().insert(sid, p);
            Ok(())
        }
        Ok(Decision::Refuse { body, .. }) => Err(String::from_utf8_lossy(&body).into_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn peer(s: &SocketRef) -> Option<SocketAddr> {
    s.req_parts()
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// What the socket's handlers pass to its task.
enum In {
    Event(String, Vec<Value>),
}

/// Queues the socket's events from now on. Called in the connect middleware, before
/// socketioxide answers the client's CONNECT: its connect handler runs later, on a task
/// of its own, and an event sent right after the answer (as socket.io clients send their
/// buffered ones) would otherwise find no handler and be dropped without a trace.
fn queue_events(ctx: &Arc<Ctx>, s: &SocketRef) -> mpsc::Receiver<In> {
    let (in_tx, in_rx) = mpsc::channel(ctx.settings.max_queued_frames.max(1));
    let b = ctx.broker.clone();
    s.on_fallback(
        move |Event(name): Event, Data(AllArgs(args)): Data<AllArgs>| {
            // Called in arrival order (the handler's future is spawned): queue, don't await.
            if in_tx.try_send(In::Event(name, args)).is_err() {
                b.streams
                    .counters
                    .frames_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
            std::future::ready(())
        },
    );
    in_rx
}

/// The connect handler: hands the socket and its queued events to a new connection task.
fn open(ctx: Arc<Ctx>, s: SocketRef) {
    let Some(p) = ctx.pending.lock().remove(&s.id.to_string()) else {
        let _ = s.disconnect();
        return;
    };
    p.timer.abort();
    let in_rx = p.inbound;
    let (closed_tx, closed_rx) = oneshot::channel::<String>();
    let closed_tx = Arc::new(Mutex::new(Some(closed_tx)));
    let on_closed = closed_tx.clone();
    s.on_disconnect(move |reason: DisconnectReason| {
        if let Some(tx) = on_closed.lock().take() {
            let _ = tx.send(close_reason(reason).to_string());
        }
        std::future::ready(())
    });
    if !s.connected() {
        // Gone before the handler was in place: its disconnect was never reported.
        if let Some(tx) = closed_tx.lock().take() {
            let _ = tx.send("closed_by_client".to_string());
        }
    }
    tokio::spawn(async move {
        serve(&ctx, s, p.slot.id(), p.accepted, in_rx, closed_rx).await;
        drop(p.slot);
    });
}

fn close_reason(r: DisconnectReason) -> &'static str {
    match r {
        DisconnectReason::ClientNSDisconnect | DisconnectReason::TransportClose => {
            "closed_by_client"
        }
        DisconnectReason::HeartbeatTimeout => "keepalive_timeout",
        DisconnectReason::ServerNSDisconnect => "closed_by_server",
        DisconnectReason::ClosingServer => "server_shutdown",
        _ => "connection_error",
    }
}

/// One socket.io connection: the registry session and the loop.
async fn serve(
    ctx: &Ctx,
    s: SocketRef,
    id: u64,
    a: Accepted,
    mut inbound: mpsc::Receiver<In>,
    mut closed: oneshot::Receiver<String>,
) {
    let broker = &ctx.broker;
    let origin = super::Origin {
        id,
        plugin: ctx.plugin.clone(),
        transport: StreamTransport::SocketIo,
        proto_ver: if s.protocol() == ProtocolVersion::V4 {
            3
        } else {
            4
        },
        peer: peer(&s),
        sid: Some(s.id.to_string().into()),
    };
    let (att, mut out, info) = super::open_session(broker, &ctx.settings, origin, a).await;
    let conn = Conn {
        ctx,
        socket: s.clone(),
        session: att.session.clone(),
        info,
    };
    let mut control = att.control;
    let mut takeover = None;
    let mut step = match ctx.proto.on_open(conn.info_now()).await {
        Ok(f) => conn.emit(f),
        Err(super::ProtocolError::Unloaded(_)) => Err("plugin_unloaded".to_string()),
        Err(_) => Ok(()),
    };
    conn.session.notify.notify_one();
    let reason = loop {
        if let Err(r) = step {
            break r;
        }
        // Biased: kicks first, then what the client sent (also what it sent before it
        // left, which is handled before its leaving), then what goes out to it.
        step = tokio::select! {
            biased;
            c = control.recv() => match c {
                Some(Control::Takeover(ack)) => {
                    takeover = Some(ack);
                    Err("taken_over".to_string())
                }
                Some(Control::Kick { .. }) => Err("kicked".to_string()),
                Some(Control::Shutdown) | None => Err("server_shutdown".to_string()),
            },
            m = inbound.recv() => match m {
                Some(In::Event(name, args)) => conn.received(name, args).await,
                None => Err("closed_by_client".to_string()),
            },
            o = out.recv() => match o {
                Some(Out::Frames(f)) => conn.emit(f),
                Some(Out::Close(reason)) => Err(reason),
                None => Err("closed".to_string()),
            },
            _ = conn.session.notify.notified() => conn.deliver().await,
            r = &mut closed => {
                let r = r.unwrap_or_else(|_| "closed".to_string());
                // Already gone: nothing to send.
                broker.detach(&att.session, att.generation, false, 0, r.clone());
                ctx.proto.on_close(conn.info_now(), r).await;
                return;
            }
        };
    };
    // The DISCONNECT packet: socket.io-client then does not reconnect.
    let _ = s.disconnect();
    broker.detach(&att.session, att.generation, false, 0, reason.clone());
    if let Some(ack) = takeover {
        let _ = ack.send(());
    }
    ctx.proto.on_close(conn.info_now(), reason).await;
}

/// One socket.io connection's state inside its task.
struct Conn<'a> {
    ctx: &'a Ctx,
    socket: SocketRef,
    session: Arc<Session>,
    info: ConnInfo,
}

impl Conn<'_> {
    fn info_now(&self) -> ConnInfo {
        let mut i = self.info.clone();
        i.description = self.session.info.read().description.clone();
        i
    }

    /// Emits frames: an event as itself, text or binary as a `message` event.
    fn emit(&self, frames: Vec<Frame>) -> Result<(), String> {
        use socketioxide::{SendError, SocketError};
        let c = &self.session.counters;
        for f in frames {
            Counters::add(&c.send_oct, f.len() as u64);
            let r = match &f {
                Frame::Event { name, args } => {
                    // The same frame goes to every receiver of a message: its arguments
                    // are split, not parsed into values, and written out as they are.
                    match serde_json::from_str::<Vec<&RawValue>>(args) {
                        Ok(a) => self.socket.emit(name, &Args(&a)),
                        Err(_) => match serde_json::from_str::<&RawValue>(args) {
                            Ok(v) => self.socket.emit(name, &Args(&[v])),
                            Err(_) => self.socket.emit(name, &Args(&[&**args])),
                        },
                    }
                }
                Frame::Text(t) => self.socket.emit("message", &**t),
                Frame::Binary(b) => self.socket.emit("message", &serde_bytes::Bytes::new(b)),
            };
            match r {
                Ok(()) => Counters::add(&c.send_pkt, 1),
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    self.ctx
                        .broker
                        .streams
                        .counters
                        .frames_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(SendError::Socket(SocketError::Closed)) => return Err("closed".into()),
                Err(e) => tracing::debug!(error = %e, "socket.io frame not sent"),
            }
        }
        Ok(())
    }

    /// Drains the session queue through the plugin's renderer.
    async fn deliver(&self) -> Result<(), String> {
        let frames =
            super::drain(&*self.ctx.proto, &self.session, &self.ctx.broker.streams).await?;
        self.emit(frames)
    }

    /// Answers one event from the client.
    async fn received(&self, name: String, args: Vec<Value>) -> Result<(), String> {
        let args = Value::Array(args).to_string();
        let c = &self.session.counters;
        Counters::add(&c.recv_oct, (name.len() + args.len()) as u64);
        Counters::add(&c.recv_pkt, 1);
        Counters::add(&c.recv_cnt, 1);
        let frame = Frame::Event { name, args };
        match self.ctx.proto.on_frame(self.info_now(), frame).await {
            Ok(replies) => self.emit(replies),
            Err(super::ProtocolError::Unloaded(_)) => Err("plugin_unloaded".into()),
            Err(e) => {
                tracing::debug!(plugin = %self.ctx.plugin, error = %e, "stream event not handled");
                self.ctx
                    .broker
                    .streams
                    .counters
                    .frames_failed
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}
