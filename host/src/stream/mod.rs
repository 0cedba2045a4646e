//! Stream connections: WebSocket (and socket.io) connections the host owns for a plugin
//! that speaks a protocol over them (Octave's event streams, Beebotte's). Each one is a
//! registry session like an MQTT one: routed publishes reach it through its session
//! queue, administrators list and kick it. The host owns the socket, framing, keepalive,
//! the bounded queues and the session; the plugin, behind [`Protocol`], decides the
//! handshake, answers frames and renders messages.
//!
//! - [`Hub`]: every open stream connection by id, per-plugin counts, closing a plugin's;
//! - `ws`: the WebSocket upgrade and the connection task.

mod sio;
#[doc(hidden)]
pub use sio::delay_connect_handlers;
mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

pub use sio::SocketIoServer;
pub use ws::{is_upgrade, upgrade, UpgradeError};

use crate::message::Message;
use crate::session::Session;

/// Where and how a `stream` plugin's connections are served (`[stream]` in its toml).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamSettings {
    /// Paths (below the mount, or on the plugin's listener) served as plain WebSockets;
    /// a `*` segment matches any one segment, e.g. `/session/*/ws`.
    pub websocket: Vec<String>,
    /// The socket.io endpoint's path (socket.io's default is `/socket.io/`), serving
    /// Engine.IO v3 and v4 clients, polling and WebSocket; none: no socket.io.
    pub socketio: Option<String>,
    /// Connections the plugin may hold at once; further upgrades get 503.
    pub max_connections: usize,
    /// Largest frame (message) a client may send, in bytes; a larger one closes the
    /// connection with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued for a connection by the plugin (`streams.send` and replies) beyond
    /// which further frames are dropped and counted.
    pub max_queued_frames: usize,
    /// Seconds between pings; a client that answers nothing for two intervals is closed.
    pub ping_interval_secs: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            websocket: Vec::new(),
            socketio: None,
            max_connections: 10_000,
            max_frame_bytes: 64 << 10,
            max_queued_frames: 1024,
            ping_interval_secs: 30,
        }
    }
}

impl StreamSettings {
    /// Whether `path` is under the socket.io endpoint.
    pub fn socketio_path(&self, path: &str) -> bool {
        self.socketio.as_deref().is_some_and(|p| {
            let p = p.trim_end_matches('/');
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// Whether `path` is one of the declared WebSocket paths.
    pub fn websocket_path(&self, path: &str) -> bool {
        self.websocket.iter().any(|pat| {
            let mut a = pat.split('/');
            let mut b = path.split('/');
            loop {
                match (a.next(), b.next()) {
                    (None, None) => return true,
                    (Some("*"), Some(seg)) if !seg.is_empty() => {}
                    (Some(x), Some(y)) if x == y => {}
                    _ => return false,
                }
            }
        })
    }
}

/// How a stream connection reached the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTransport {
    /// A plain WebSocket.
    WebSocket,
    /// socket.io.
    SocketIo,
}

impl StreamTransport {
    /// The protocol name the registry shows (`proto_name`).
    pub fn proto_name(self) -> &'static str {
        match self {
            StreamTransport::WebSocket => "websocket",
            StreamTransport::SocketIo => "socketio",
        }
    }
}

/// One message of a stream connection, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// WebSocket text (shared bytes: one rendered frame goes to every receiver uncopied).
    Text(bytestring::ByteString),
    /// WebSocket binary.
    Binary(Bytes),
    /// A socket.io event: name and its arguments as a JSON array.
    Event {
        /// Event name.
        name: String,
        /// Arguments, a JSON array.
        args: String,
    },
}

impl Frame {
    /// Bytes it carries (for counters).
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
            Frame::Event { name, args } => name.len() + args.len(),
        }
    }

    /// Whether it carries nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A handshake to decide, before the connection exists.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// How the client connects.
    pub transport: StreamTransport,
    /// Path below the mount (or on the plugin's listener).
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// Headers, names lower case.
    pub headers: Vec<(String, String)>,
    /// Peer address.
    pub peer: Option<std::net::SocketAddr>,
    /// socket.io auth payload (JSON).
    pub auth: Option<String>,
}

/// Who an accepted connection is: the registry session it becomes.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Tenant.
    pub tenant: String,
    /// Client id; empty = assigned by the host.
    pub client_id: String,
    /// User id.
    pub user_id: Option<String>,
    /// Username.
    pub username: Option<String>,
    /// Description (JSON).
    pub description: Option<String>,
    /// ACL checks skipped.
    pub superuser: bool,
}

/// What the protocol decided about a handshake.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Open the connection.
    Accept(Accepted),
    /// Refuse with an HTTP status, content type and body.
    Refuse {
        /// Status (400..=599).
        status: u16,
        /// Content type.
        content_type: String,
        /// Body.
        body: Vec<u8>,
    },
}

/// The connection a protocol call is about.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Connection id.
    pub id: u64,
    /// Transport.
    pub transport: StreamTransport,
    /// Tenant.
    pub tenant: Arc<str>,
    /// Client id.
    pub client_id: Arc<str>,
    /// User id.
    pub user_id: Option<Arc<str>>,
    /// Description as last set.
    pub description: Option<Arc<str>>,
    /// socket.io: the Engine.IO session id.
    pub sid: Option<Arc<str>>,
}

/// Why a protocol call produced nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProtocolError {
    /// The plugin is no longer loaded.
    #[error("plugin {0} is not loaded")]
    Unloaded(String),
    /// The call failed (trap, timeout, backoff, busy).
    #[error("plugin call failed: {0}")]
    Failed(String),
}

pub use crate::BoxFuture;

/// What a stream connection needs from the plugin that speaks over it. The plugin runtime
/// implements it; the transport knows nothing of wasm.
pub trait Protocol: Send + Sync + 'static {
    /// Name of the plugin (for logs and the hub).
    fn name(&self) -> &str;
    /// Decides a handshake.
    fn handshake(&self, h: Handshake) -> BoxFuture<'_, Result<Decision, ProtocolError>>;
    /// The connection is open: frames to send first.
    fn on_open(&self, conn: ConnInfo) -> BoxFuture<'_, Result<Vec<Frame>, ProtocolError>>;
    /// Answers a frame from the client.
    fn on_frame(
        &self,
        conn: ConnInfo,
        frame: Frame,
    ) -> BoxFuture<'_, Result<Vec<Frame>, ProtocolError>>;
    /// Tells the plugin a connection closed.
    fn on_close(&self, conn: ConnInfo, reason: String) -> BoxFuture<'_, ()>;
    /// Renders a routed message (once per message and plugin version: cached).
    fn render(&self, msg: Arc<Message>) -> BoxFuture<'_, Result<Arc<[Frame]>, ProtocolError>>;
}

/// Where a new stream connection comes from.
pub(crate) struct Origin {
    /// Hub id.
    pub id: u64,
    /// Its plugin.
    pub plugin: Arc<str>,
    /// Transport.
    pub transport: StreamTransport,
    /// Protocol version the registry shows (13; Engine.IO 3 or 4).
    pub proto_ver: u8,
    /// The client's address.
    pub peer: Option<std::net::SocketAddr>,
    /// socket.io session id.
    pub sid: Option<Arc<str>>,
}

/// Attaches the registry session of an accepted stream connection (a clean session that
/// ends with it) and enters it in the hub: its session, the plugin's frame queue and the
/// connection as the plugin sees it.
pub(crate) async fn open_session(
    broker: &crate::broker::Broker,
    settings: &StreamSettings,
    o: Origin,
    a: Accepted,
) -> (crate::session::Attach, mpsc::Receiver<Out>, ConnInfo) {
    let client_id: Arc<str> = if a.client_id.is_empty() {
        format!("{}-{}", o.plugin, o.id).into()
    } else {
        a.client_id.into()
    };
    let info = crate::session::ClientInfo {
        username: a.username.map(Arc::from),
        user_id: a.user_id.map(Arc::from),
        proto_name: o.transport.proto_name(),
        proto_ver: o.proto_ver,
        transport: crate::session::Transport::Ws,
        peer: o.peer,
        keepalive: u16::try_from(settings.ping_interval_secs).unwrap_or(u16::MAX),
        clean_start: true,
        expiry_interval: 0,
        superuser: a.superuser,
        description: a.description.map(Arc::from),
        ..Default::default()
    };
    let tenant: Arc<str> = a.tenant.into();
    let att = broker
        .attach(tenant.clone(), client_id.clone(), true, info, None)
        .await;
    let (tx, rx) = mpsc::channel(settings.max_queued_frames.max(1));
    broker
        .streams
        .insert(o.id, o.plugin, att.session.clone(), tx);
    let conn = ConnInfo {
        id: o.id,
        transport: o.transport,
        tenant,
        client_id,
        user_id: att.session.info.read().user_id.clone(),
        description: None,
        sid: o.sid,
    };
    (att, rx, conn)
}

/// Takes what the session queue holds (up to a byte budget; the session is woken again
/// for the rest) and renders it through the protocol: the frames to send, in order. A
/// delivery the plugin fails to render is dropped and counted.
pub(crate) async fn drain(
    proto: &dyn Protocol,
    session: &Session,
    hub: &Hub,
) -> Result<Vec<Frame>, String> {
    const BUDGET: usize = 256 << 10;
    let mut out = Vec::new();
    let (more, relieved) = {
        let mut st = session.state.lock();
        let more = st.take_outgoing(usize::MAX, std::time::Instant::now(), BUDGET, &mut out);
        let relieved = st.relieve();
        // A stream has no acknowledgements: a QoS 1/2 delivery is sent once, as QoS 0
        // would be, and must not wait in the inflight window for an ack never coming.
        for o in &out {
            if let crate::session::Outgoing::Publish { pid: Some(pid), .. } = o {
                st.forget(*pid);
            }
        }
        (more, relieved)
    };
    if relieved {
        session.space.notify_waiters();
    }
    if more {
        // The rest after whatever else is waiting: one busy stream cannot starve kicks.
        session.notify.notify_one();
    }
    let mut frames = Vec::new();
    for o in out {
        let crate::session::Outgoing::Publish { delivery, .. } = o else {
            continue;
        };
        match proto.render(delivery.msg.clone()).await {
            Ok(f) => {
                crate::session::Counters::add(&session.counters.send_msg, 1);
                frames.extend(f.iter().cloned());
            }
            Err(ProtocolError::Unloaded(_)) => return Err("plugin_unloaded".into()),
            Err(_) => {
                hub.counters.render_failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(frames)
}

/// Milliseconds since the epoch at which a message was received.
pub(crate) fn received_ms(received: std::time::Instant) -> i64 {
    let ago = received.elapsed();
    let at = std::time::SystemTime::now()
        .checked_sub(ago)
        .unwrap_or(std::time::SystemTime::now());
    crate::store::records::to_ms(at)
}

/// What the plugin asks of one connection, queued to its task.
#[derive(Debug)]
pub(crate) enum Out {
    /// Frames to send.
    Frames(Vec<Frame>),
    /// Close with a reason.
    Close(String),
}

/// One open stream connection as the hub sees it.
#[derive(Debug)]
struct Entry {
    plugin: Arc<str>,
    session: Arc<Session>,
    tx: mpsc::Sender<Out>,
}

/// Why a hub operation on a connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// No open connection with that id belongs to the plugin.
    #[error("no open connection {0} of this plugin")]
    NotFound(u64),
    /// Its outbound queue is full: the frames were dropped (and counted).
    #[error("outbound queue of connection {0} is full")]
    QueueFull(u64),
}

/// A hub slot reserved for a connection being opened: given back when dropped, so a
/// request abandoned mid-handshake (the client hung up, the handler was cancelled) never
/// keeps one.
pub(crate) struct Reservation {
    broker: crate::broker::Broker,
    plugin: Arc<str>,
    id: u64,
}

impl Reservation {
    /// Reserves a slot of `plugin` (None at its `max` connections).
    pub(crate) fn new(
        broker: &crate::broker::Broker,
        plugin: Arc<str>,
        max: usize,
    ) -> Option<Self> {
        let id = broker.streams.reserve(&plugin, max)?;
        Some(Self {
            broker: broker.clone(),
            plugin,
            id,
        })
    }

    /// The connection's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.broker.streams.release(&self.plugin, self.id);
    }
}

/// Every open stream connection of the broker.
#[derive(Debug, Default)]
pub struct Hub {
    conns: Mutex<HashMap<u64, Entry>>,
    per_plugin: Mutex<HashMap<Arc<str>, usize>>,
    next: AtomicU64,
    /// Counters exported on /metrics.
    pub counters: StreamCounters,
}

/// What went wrong with stream connections, broker-wide (exported on /metrics).
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// Frames dropped at a full outbound queue (slow readers).
    pub frames_dropped: AtomicU64,
    /// Upgrades refused at a plugin's connection limit.
    pub refused_at_limit: AtomicU64,
    /// Requests at a stream path that were not a valid WebSocket upgrade.
    pub bad_upgrades: AtomicU64,
    /// Connections closed for a frame over the plugin's `max_frame_bytes`.
    pub frames_too_large: AtomicU64,
    /// Client frames the plugin failed to handle (trap, timeout, backoff).
    pub frames_failed: AtomicU64,
    /// Deliveries the plugin failed to render (dropped).
    pub render_failed: AtomicU64,
}

impl StreamCounters {
    /// (name, help, value) for the Prometheus exposition.
    pub fn export(&self) -> [(&'static str, &'static str, u64); 6] {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            (
                "apiary_stream_frames_dropped_total",
                "Frames dropped at a stream connection's full outbound queue.",
                g(&self.frames_dropped),
            ),
            (
                "apiary_stream_refused_total",
                "Stream upgrades refused at a plugin's max_connections.",
                g(&self.refused_at_limit),
            ),
            (
                "apiary_stream_bad_upgrades_total",
                "Requests at a stream path that were not a valid WebSocket upgrade.",
                g(&self.bad_upgrades),
            ),
            (
                "apiary_stream_frames_too_large_total",
                "Stream connections closed for a frame over max_frame_bytes.",
                g(&self.frames_too_large),
            ),
            (
                "apiary_stream_frames_failed_total",
                "Client frames a stream plugin failed to handle.",
                g(&self.frames_failed),
            ),
            (
                "apiary_stream_render_failed_total",
                "Deliveries a stream plugin failed to render (dropped).",
                g(&self.render_failed),
            ),
        ]
    }
}

impl Hub {
    /// Reserves a slot for a new connection of `plugin`, unless it holds `max` already.
    fn reserve(&self, plugin: &Arc<str>, max: usize) -> Option<u64> {
        let mut pp = self.per_plugin.lock();
        let n = pp.entry(plugin.clone()).or_default();
        if *n >= max {
            self.counters
                .refused_at_limit
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Gives back a slot reserved by [`Hub::reserve`] (the connection ended or never opened).
    fn release(&self, plugin: &Arc<str>, id: u64) {
        self.conns.lock().remove(&id);
        if let Some(n) = self.per_plugin.lock().get_mut(plugin) {
            *n = n.saturating_sub(1);
        }
    }

    fn insert(&self, id: u64, plugin: Arc<str>, session: Arc<Session>, tx: mpsc::Sender<Out>) {
        self.conns.lock().insert(
            id,
            Entry {
                plugin,
                session,
                tx,
            },
        );
    }

    /// The sessions of a plugin's open connections.
    pub fn sessions(&self, plugin: &str) -> Vec<Arc<Session>> {
        self.conns
            .lock()
            .values()
            .filter(|e| &*e.plugin == plugin)
            .map(|e| e.session.clone())
            .collect()
    }

    /// Open connections of a plugin.
    pub fn count(&self, plugin: &str) -> usize {
        self.per_plugin.lock().get(plugin).copied().unwrap_or(0)
    }

    /// The session of a plugin's connection.
    pub fn session(&self, plugin: &str, id: u64) -> Result<Arc<Session>, ConnError> {
        match self.conns.lock().get(&id) {
            Some(e) if &*e.plugin == plugin => Ok(e.session.clone()),
            _ => Err(ConnError::NotFound(id)),
        }
    }

    fn sender(&self, plugin: &str, id: u64) -> Result<mpsc::Sender<Out>, ConnError> {
        match self.conns.lock().get(&id) {
            Some(e) if &*e.plugin == plugin => Ok(e.tx.clone()),
            _ => Err(ConnError::NotFound(id)),
        }
    }

    /// Queues frames for a plugin's connection; at a full queue they are dropped and counted.
    pub fn send(&self, plugin: &str, id: u64, frames: Vec<Frame>) -> Result<(), ConnError> {
        let n = frames.len() as u64;
        match self.sender(plugin, id)?.try_send(Out::Frames(frames)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.frames_dropped.fetch_add(n, Ordering::Relaxed);
                Err(ConnError::QueueFull(id))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ConnError::NotFound(id)),
        }
    }

    /// Asks a plugin's connection to close.
    pub fn close(&self, plugin: &str, id: u64, reason: String) -> Result<(), ConnError> {
        let tx = self.sender(plugin, id)?;
        // A full queue must not keep a close from happening: the kick path is the session's
        // control channel, which is unbounded.
        if tx.try_send(Out::Close(reason)).is_err() {
            let s = self.session(plugin, id)?;
            s.control(crate::session::Control::Kick { end_session: true });
        }
        Ok(())
    }

    /// Closes every connection of a plugin (it was unloaded). Returns how many.
    pub fn close_plugin(&self, plugin: &str, reason: &str) -> usize {
        let ids: Vec<u64> = self
            .conns
            .lock()
            .iter()
            .filter(|(_, e)| &*e.plugin == plugin)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            let _ = self.close(plugin, *id, reason.to_string());
        }
        ids.len()
    }
}
