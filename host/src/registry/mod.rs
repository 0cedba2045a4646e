//! The session registry: the one place that knows every session of every protocol and
//! tenant, online or offline, with what the EMQX clients API shows about it. Admin API
//! plugins query it and act through it; connections register and update it.

mod cursor;
mod index;
mod ops;
mod query;
mod subs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;
use tokio::sync::broadcast;

pub use cursor::{Cursor, CursorPage, NodeCursor};
use index::TenantIndex;
pub use ops::{KickTarget, OpError, Via};
pub use query::{Page, PageResult, Query, SessionSnapshot, SubscriptionSnapshot};
pub use subs::{SubEntry, SubPage, SubQuery};

use crate::message::Message;
use crate::session::Session;

/// Something that happened to a session, for plugins consuming the event stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A client connected (CONNACK sent).
    Connected {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Username, if any.
        username: Option<Arc<str>>,
        /// Peer address.
        peer: Option<String>,
        /// Protocol version.
        proto_ver: u8,
    },
    /// A client's connection ended.
    Disconnected {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Why.
        reason: String,
    },
    /// A subscription was added.
    Subscribed {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Filter.
        filter: String,
        /// Granted QoS.
        qos: u8,
    },
    /// A subscription was removed.
    Unsubscribed {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Filter.
        filter: String,
    },
    /// A message was published (only emitted while someone listens for messages).
    MessagePublished {
        /// Tenant.
        tenant: Arc<str>,
        /// Topic.
        topic: String,
        /// QoS.
        qos: u8,
        /// Retain flag.
        retain: bool,
        /// Payload size.
        size: usize,
        /// Payload (shared, not copied).
        #[serde(skip)]
        payload: bytes::Bytes,
    },
    /// A message was dropped for a session.
    MessageDropped {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Topic.
        topic: String,
        /// Why: queue_full, qos0_offline, expired, too_large.
        reason: &'static str,
    },
    /// A session ended (clean, expired, kicked, or taken over with clean start).
    SessionEnded {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Why.
        reason: &'static str,
    },
}

/// Every session, by tenant, in a scan-friendly index (see [`index`]).
#[derive(Debug)]
pub struct Registry {
    tenants: RwLock<HashMap<Arc<str>, TenantIndex>>,
    count: AtomicUsize,
    /// Insertion numbers, rising across every tenant: a tenant emptied and refilled never
    /// reuses one, so an old cursor cannot skip its new sessions.
    next_seq: std::sync::atomic::AtomicU64,
    events: broadcast::Sender<Event>,
    message_listeners: Arc<AtomicUsize>,
    listeners: Arc<AtomicUsize>,
}

impl Default for Registry {
    fn default() -> Self {
        let (events, _) = broadcast::channel(4096);
        Self {
            tenants: RwLock::new(HashMap::new()),
            count: AtomicUsize::new(0),
            next_seq: std::sync::atomic::AtomicU64::new(0),
            events,
            message_listeners: Arc::new(AtomicUsize::new(0)),
            listeners: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// A subscription to registry events; while alive with `with_messages`, publishes are
/// reported too (they are not otherwise, to keep the hot path free of it).
pub struct EventStream {
    /// The receiver.
    pub rx: broadcast::Receiver<Event>,
    message_listeners: Option<Arc<AtomicUsize>>,
    listeners: Arc<AtomicUsize>,
}

impl EventStream {
    /// Whether publishes are reported on this stream.
    pub fn with_messages(&self) -> bool {
        self.message_listeners.is_some()
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.listeners.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = self.message_listeners.take() {
            n.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Registry {
    /// Looks up a session.
    pub fn get(&self, tenant: &str, client_id: &str) -> Option<Arc<Session>> {
        self.tenants.read().get(tenant)?.get(client_id).cloned()
    }

    /// Inserts a session, returning the one it replaced.
    pub fn insert(&self, s: Arc<Session>) -> Option<Arc<Session>> {
        let mut map = self.tenants.write();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let old = map.entry(s.tenant.clone()).or_default().insert(s, seq);
        if old.is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        old
    }

    /// Re-reads a session's client info into the index (after connect or disconnect).
    pub fn refresh(&self, s: &Session) {
        if let Some(t) = self.tenants.write().get_mut(&s.tenant) {
            t.refresh(s);
        }
    }

    /// Records a change in `s`'s number of subscriptions (after
    /// `Session::set_subscription_count`), for paging subscriptions without a scan.
    pub fn note_subscriptions(&self, s: &Session) {
        if let Some(t) = self.tenants.read().get(&s.tenant) {
            t.note_subscriptions(s);
        }
    }

    /// Removes `s` if it is still the registered session for its client id.
    pub fn remove(&self, s: &Session) -> bool {
        let mut map = self.tenants.write();
        let Some(t) = map.get_mut(&s.tenant) else {
            return false;
        };
        if !t.remove(s) {
            return false;
        }
        if t.is_empty() {
            map.remove(&s.tenant);
        }
        self.count.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the registry is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sessions with a connection attached.
    pub fn online_sessions(&self) -> Vec<Arc<Session>> {
        self.tenants
            .read()
            .values()
            .flat_map(|t| t.rows())
            .filter(|r| r.connected)
            .map(|r| r.session.clone())
            .collect()
    }

    /// One tenant's sessions, connected ones, and their subscriptions.
    pub fn tenant_counts(&self, tenant: &str) -> (usize, usize, usize) {
        let map = self.tenants.read();
        let Some(t) = map.get(tenant) else {
            return (0, 0, 0);
        };
        (t.len(), t.connected(), t.subscription_total() as usize)
    }

    /// Number of connected sessions.
    pub fn connected_count(&self) -> usize {
        self.tenants.read().values().map(|t| t.connected()).sum()
    }

    /// Tenants that have sessions.
    pub fn tenants(&self) -> Vec<Arc<str>> {
        self.tenants.read().keys().cloned().collect()
    }

    /// Sessions of a tenant (all tenants if None), in creation order.
    pub(crate) fn sessions_of(&self, tenant: Option<&str>) -> Vec<Arc<Session>> {
        let map = self.tenants.read();
        match tenant {
            Some(t) => map
                .get(t)
                .map(|t| t.rows().map(|r| r.session.clone()).collect())
                .unwrap_or_default(),
            None => map
                .values()
                .flat_map(|t| t.rows().map(|r| r.session.clone()))
                .collect(),
        }
    }

    /// Subscribes to events; `with_messages` also receives every MessagePublished.
    pub fn subscribe_events(&self, with_messages: bool) -> EventStream {
        let message_listeners = with_messages.then(|| {
            self.message_listeners.fetch_add(1, Ordering::Relaxed);
            self.message_listeners.clone()
        });
        self.listeners.fetch_add(1, Ordering::Relaxed);
        EventStream {
            rx: self.events.subscribe(),
            message_listeners,
            listeners: self.listeners.clone(),
        }
    }

    /// Emits an event (dropped if nobody listens).
    pub fn emit(&self, e: Event) {
        if self.listeners.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(e);
        }
    }

    /// Emits an event built only if someone listens (no allocation otherwise).
    pub fn emit_with(&self, f: impl FnOnce() -> Event) {
        if self.listeners.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(f());
        }
    }

    /// Emits MessagePublished only while a listener asked for messages (hot path).
    pub fn emit_message(&self, m: &Message) {
        if self.message_listeners.load(Ordering::Relaxed) > 0 {
            let _ = self.events.send(Event::MessagePublished {
                tenant: m.tenant.clone(),
                topic: m.topic.to_string(),
                qos: m.qos.value(),
                retain: m.retain,
                size: m.payload.len(),
                payload: m.payload.clone(),
            });
        }
    }
}
