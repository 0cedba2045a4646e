//! The `stream` role: calls into a plugin for its stream connections, and
//! [`PluginProtocol`], the [`Protocol`] the stream transport talks to. It resolves the
//! plugin by name at every call, so connections survive a reload (the next call reaches
//! the new version) and end when the plugin is unloaded. WIT types stop here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::bindings::apiary::plugin::types as wtypes;
use super::bindings::exports::apiary::plugin::stream_protocol as wit;
use super::manager::PluginManager;
use super::manifest::Role;
use super::runtime::LoadedPlugin;
use super::PluginError;
use crate::message::Message;
use crate::stream::{
    Accepted, BoxFuture, ConnInfo, Decision, Frame, Handshake, Protocol, ProtocolError,
    StreamTransport,
};

/// Messages whose frames a plugin version keeps (the newest; older ones are recomputed
/// if a slow connection reaches them late).
const RENDER_CACHE: usize = 256;

type Rendered = Result<Arc<[Frame]>, PluginError>;

/// Frames rendered per message, keyed by the message's allocation (held by a `Weak`, so
/// the address cannot be reused while the entry lives).
#[derive(Default)]
pub(crate) struct RenderCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<usize, (Weak<Message>, Arc<OnceCell<Rendered>>)>,
    order: VecDeque<usize>,
}

impl RenderCache {
    /// The cell for `msg`, shared by every connection rendering it.
    fn cell(&self, msg: &Arc<Message>) -> Arc<OnceCell<Rendered>> {
        let key = Arc::as_ptr(msg) as usize;
        let mut c = self.inner.lock();
        if let Some((w, cell)) = c.map.get(&key) {
            if w.upgrade().is_some_and(|m| Arc::ptr_eq(&m, msg)) {
                return cell.clone();
            }
        }
        if c.order.len() >= RENDER_CACHE {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
        let cell = Arc::new(OnceCell::new());
        c.map.insert(key, (Arc::downgrade(msg), cell.clone()));
        c.order.push_back(key);
        cell
    }
}

fn to_wit_frame(f: Frame) -> wtypes::Frame {
    match f {
        Frame::Text(t) => wtypes::Frame::Text(t.to_string()),
        Frame::Binary(b) => wtypes::Frame::Binary(b.to_vec()),
        Frame::Event { name, args } => wtypes::Frame::Event(wtypes::StreamEvent { name, args }),
    }
}

/// A guest frame in the host's terms.
pub(crate) fn from_wit_frame(f: wtypes::Frame) -> Frame {
    match f {
        wtypes::Frame::Text(t) => Frame::Text(t.into()),
        wtypes::Frame::Binary(b) => Frame::Binary(b.into()),
        wtypes::Frame::Event(e) => Frame::Event {
            name: e.name,
            args: e.args,
        },
    }
}

fn wit_transport(t: StreamTransport) -> wtypes::StreamTransport {
    match t {
        StreamTransport::WebSocket => wtypes::StreamTransport::Websocket,
        StreamTransport::SocketIo => wtypes::StreamTransport::Socketio,
    }
}

fn wit_conn(c: &ConnInfo) -> wit::Connection {
    wit::Connection {
        id: c.id,
        transport: wit_transport(c.transport),
        tenant: c.tenant.to_string(),
        client_id: c.client_id.to_string(),
        user_id: c.user_id.as_deref().map(str::to_string),
        description: c.description.as_deref().map(str::to_string),
        sid: c.sid.as_deref().map(str::to_string),
    }
}

fn wit_message(m: &Message) -> wit::Message {
    wit::Message {
        tenant: m.tenant.to_string(),
        topic: m.topic.to_string(),
        payload: m.payload.to_vec(),
        qos: m.qos.value(),
        retain: m.retain,
        publisher: m.publisher_client.as_deref().map(str::to_string),
        user_properties: m
            .props
            .as_ref()
            .map(|p| {
                p.user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        received_at: crate::stream::received_ms(m.received),
    }
}

impl LoadedPlugin {
    /// Calls the stream role's handshake.
    async fn stream_handshake(
        &self,
        engine: &wasmtime::Engine,
        req: wit::HandshakeRequest,
    ) -> Result<wit::HandshakeDecision, PluginError> {
        if !self.serves(Role::Stream) {
            return Err(PluginError::NoRole("stream"));
        }
        self.call(Role::Stream, engine, move |i| {
            Box::pin(async move {
                let s = i.stream.as_ref().expect("role checked");
                s.call_handshake(&mut i.store, &req).await
            })
        })
        .await
    }

    async fn stream_on_open(
        &self,
        engine: &wasmtime::Engine,
        conn: wit::Connection,
    ) -> Result<Vec<wtypes::Frame>, PluginError> {
        if !self.serves(Role::Stream) {
            return Err(PluginError::NoRole("stream"));
        }
        self.call(Role::Stream, engine, move |i| {
            Box::pin(async move {
                let s = i.stream.as_ref().expect("role checked");
                s.call_on_open(&mut i.store, &conn).await
            })
        })
        .await
    }

    async fn stream_on_frame(
        &self,
        engine: &wasmtime::Engine,
        conn: wit::Connection,
        frame: wtypes::Frame,
    ) -> Result<Vec<wtypes::Frame>, PluginError> {
        if !self.serves(Role::Stream) {
            return Err(PluginError::NoRole("stream"));
        }
        self.call(Role::Stream, engine, move |i| {
            Box::pin(async move {
                let s = i.stream.as_ref().expect("role checked");
                s.call_on_frame(&mut i.store, &conn, &frame).await
            })
        })
        .await
    }

    async fn stream_on_close(
        &self,
        engine: &wasmtime::Engine,
        conn: wit::Connection,
        reason: String,
    ) -> Result<(), PluginError> {
        if !self.serves(Role::Stream) {
            return Err(PluginError::NoRole("stream"));
        }
        self.call(Role::Stream, engine, move |i| {
            Box::pin(async move {
                let s = i.stream.as_ref().expect("role checked");
                s.call_on_close(&mut i.store, &conn, &reason).await
            })
        })
        .await
    }

    /// Renders a message once for this version, however many connections receive it.
    async fn stream_render(&self, engine: &wasmtime::Engine, msg: Arc<Message>) -> Rendered {
        if !self.serves(Role::Stream) {
            return Err(PluginError::NoRole("stream"));
        }
        let cell = self.rendered.cell(&msg);
        cell.get_or_init(|| async {
            let m = wit_message(&msg);
            self.call(Role::Stream, engine, move |i| {
                Box::pin(async move {
                    let s = i.stream.as_ref().expect("role checked");
                    s.call_render(&mut i.store, &m).await
                })
            })
            .await
            .map(|frames| frames.into_iter().map(from_wit_frame).collect())
        })
        .await
        .clone()
    }
}

/// A stream plugin as the stream transport sees it, by name.
pub struct PluginProtocol {
    mgr: Weak<PluginManager>,
    name: String,
}

impl PluginProtocol {
    /// The protocol of plugin `name`.
    pub fn new(mgr: &Arc<PluginManager>, name: &str) -> Arc<Self> {
        Arc::new(Self {
            mgr: Arc::downgrade(mgr),
            name: name.to_string(),
        })
    }

    fn current(&self) -> Result<(Arc<PluginManager>, Arc<LoadedPlugin>), ProtocolError> {
        let mgr = self
            .mgr
            .upgrade()
            .ok_or_else(|| ProtocolError::Unloaded(self.name.clone()))?;
        let p = mgr
            .get(&self.name)
            .filter(|p| p.serves(Role::Stream))
            .ok_or_else(|| ProtocolError::Unloaded(self.name.clone()))?;
        Ok((mgr, p))
    }
}

fn failed(e: PluginError) -> ProtocolError {
    ProtocolError::Failed(e.to_string())
}

impl Protocol for PluginProtocol {
    fn name(&self) -> &str {
        &self.name
    }

    fn handshake(&self, h: Handshake) -> BoxFuture<'_, Result<Decision, ProtocolError>> {
        Box::pin(async move {
            let (mgr, p) = self.current()?;
            let req = wit::HandshakeRequest {
                transport: wit_transport(h.transport),
                path: h.path,
                query: h.query,
                headers: h.headers,
                peer: h.peer.map(|p| p.to_string()),
                auth: h.auth,
            };
            let d = p
                .stream_handshake(mgr.runtime().engine(), req)
                .await
                .map_err(failed)?;
            Ok(match d {
                wit::HandshakeDecision::Accept(a) if !p.ctx.manifest.may_touch(&a.tenant) => {
                    tracing::warn!(plugin = %self.name, tenant = %a.tenant, "stream plugin accepted a connection into a tenant its toml does not grant; refused");
                    Decision::Refuse {
                        status: 403,
                        content_type: "text/plain".into(),
                        body: b"tenant not granted to the plugin".to_vec(),
                    }
                }
                wit::HandshakeDecision::Accept(a) => Decision::Accept(Accepted {
                    tenant: a.tenant,
                    client_id: a.client_id,
                    user_id: a.user_id,
                    username: a.username,
                    description: a.description,
                    superuser: a.superuser,
                }),
                wit::HandshakeDecision::Refuse(r) => Decision::Refuse {
                    status: r.status,
                    content_type: r.content_type,
                    body: r.body,
                },
            })
        })
    }

    fn on_open(&self, conn: ConnInfo) -> BoxFuture<'_, Result<Vec<Frame>, ProtocolError>> {
        Box::pin(async move {
            let (mgr, p) = self.current()?;
            let out = p
                .stream_on_open(mgr.runtime().engine(), wit_conn(&conn))
                .await
                .map_err(failed)?;
            Ok(out.into_iter().map(from_wit_frame).collect())
        })
    }

    fn on_frame(
        &self,
        conn: ConnInfo,
        frame: Frame,
    ) -> BoxFuture<'_, Result<Vec<Frame>, ProtocolError>> {
        Box::pin(async move {
            let (mgr, p) = self.current()?;
            let out = p
                .stream_on_frame(mgr.runtime().engine(), wit_conn(&conn), to_wit_frame(frame))
                .await
                .map_err(failed)?;
            Ok(out.into_iter().map(from_wit_frame).collect())
        })
    }

    fn on_close(&self, conn: ConnInfo, reason: String) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Ok((mgr, p)) = self.current() {
                let _ = p
                    .stream_on_close(mgr.runtime().engine(), wit_conn(&conn), reason)
                    .await;
            }
        })
    }

    fn render(&self, msg: Arc<Message>) -> BoxFuture<'_, Result<Arc<[Frame]>, ProtocolError>> {
        Box::pin(async move {
            let (mgr, p) = self.current()?;
            p.stream_render(mgr.runtime().engine(), msg)
                .await
                .map_err(failed)
        })
    }
}
