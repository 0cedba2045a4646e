//! A session: the state MQTT keeps for a client id across connections (subscriptions,
//! queue, inflight window, QoS 2 receive state) plus what the registry shows about it.
//! Online or offline, deliveries land in the same queue under a per-session lock; the
//! connection task, when there is one, is woken to drain it. Attaching and detaching
//! connections is the broker's (`broker::lifecycle`).

mod control;
mod listing;
mod pressure;
mod state;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::{Mutex, RwLock};
use tokio::sync::{oneshot, Notify};

pub use control::{mailbox, ControlRx, ControlTx};
pub use listing::{Listed, Listing, MessageSnapshot};
pub use state::{EnqueueOutcome, Inflight, InflightState, Outgoing, SessionState, SubOptions};

use crate::message::Message;

/// Transport a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls,
    /// MQTT over WebSocket.
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss,
}

impl Transport {
    /// Listener name as EMQX shows it (`tcp:default`, `ws:default`, ...).
    pub fn listener(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp:default",
            Transport::Tls => "ssl:default",
            Transport::Ws => "ws:default",
            Transport::Wss => "wss:default",
        }
    }

    /// Short name used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }
}

/// The will message of a session, published when its connection ends abnormally.
#[derive(Debug, Clone)]
pub struct Will {
    /// The message to publish.
    pub msg: Message,
    /// v5 will delay interval in seconds.
    pub delay_secs: u32,
    /// v5 message expiry interval, counted from when the will is published.
    pub expiry: Option<std::num::NonZeroU32>,
}

/// What the registry shows about a session's client: identity, connection and settings.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Username from CONNECT.
    pub username: Option<Arc<str>>,
    /// User id assigned by authentication (defaults to the username).
    pub user_id: Option<Arc<str>>,
    /// "MQTT" or "MQIsdp".
    pub proto_name: &'static str,
    /// 3, 4 or 5.
    pub proto_ver: u8,
    /// Transport of the last connection.
    pub transport: Transport,
    /// Peer address of the last connection.
    pub peer: Option<SocketAddr>,
    /// Whether a connection is attached now.
    pub connected: bool,
    /// When the last connection was accepted (CONNACK sent).
    pub connected_at: Option<SystemTime>,
    /// When the last connection ended.
    pub disconnected_at: Option<SystemTime>,
    /// Keepalive in seconds in force.
    pub keepalive: u16,
    /// Clean start / clean session flag of the last CONNECT.
    pub clean_start: bool,
    /// Session expiry interval in seconds (u32::MAX = never).
    pub expiry_interval: u32,
    /// Receive maximum the client advertised (v5), capping our inflight window.
    pub inflight_max: u16,
    /// Authentication made the client a superuser: ACL never applies to it, nor to what
    /// administrators do on its behalf.
    pub superuser: bool,
    /// What a stream plugin says about its connection (JSON); None for MQTT.
    pub description: Option<Arc<str>>,
}

impl Default for ClientInfo {
    /// An MQTT 5 client over TCP that never connected: what sessions made by hand
    /// (admin tools, benchmarks, tests) start from.
    fn default() -> Self {
        Self {
            username: None,
            user_id: None,
            proto_name: "MQTT",
            proto_ver: 5,
            transport: Transport::Tcp,
            peer: None,
            connected: false,
            connected_at: None,
            disconnected_at: None,
            keepalive: 60,
            clean_start: true,
            expiry_interval: 0,
            inflight_max: 32,
            superuser: false,
            description: None,
        }
    }
}

/// Per-session traffic counters, updated by its connection task only (uncontended).
#[derive(Debug, Default)]
pub struct Counters {
    /// Bytes received.
    pub recv_oct: AtomicU64,
    /// Socket reads.
    pub recv_cnt: AtomicU64,
    /// Packets received.
    pub recv_pkt: AtomicU64,
    /// PUBLISH packets received.
    pub recv_msg: AtomicU64,
    /// Bytes sent.
    pub send_oct: AtomicU64,
    /// Socket writes.
    pub send_cnt: AtomicU64,
    /// Packets sent.
    pub send_pkt: AtomicU64,
    /// PUBLISH packets sent.
    pub send_msg: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Commands sent to the connection task currently attached to a session.
#[derive(Debug)]
pub enum Control {
    /// Another connection takes the session over; reply once detached.
    Takeover(oneshot::Sender<()>),
    /// An administrator kicks the client. `end_session` also discards the session.
    Kick {
        /// Discard the session after the connection closes.
        end_session: bool,
    },
    /// Server shutdown.
    Shutdown,
}

/// The result of attaching a connection to a session.
pub struct Attach {
    /// The session now attached.
    pub session: Arc<Session>,
    /// Whether an existing session was resumed (CONNACK session present).
    pub session_present: bool,
    /// Generation of this connection.
    pub generation: u64,
    /// Control commands for this connection.
    pub control: ControlRx,
}

/// Handle to the connection attached to a session.
#[derive(Debug)]
pub struct ConnHandle {
    /// Generation of that connection, to detect stale detaches.
    pub generation: u64,
    /// Control channel.
    pub tx: ControlTx,
}

/// One session, online or offline.
#[derive(Debug)]
pub struct Session {
    /// Unique id of this session instance (a new session for the same client id gets a new one).
    pub id: u64,
    /// Tenant the session belongs to.
    pub tenant: Arc<str>,
    /// MQTT client id.
    pub client_id: Arc<str>,
    /// Creation time.
    pub created_at: SystemTime,
    /// Registry-visible client information.
    pub info: RwLock<ClientInfo>,
    /// Subscriptions, queue and inflight state.
    pub state: Mutex<SessionState>,
    /// Traffic counters.
    pub counters: Counters,
    /// Wakes the attached connection when deliveries are queued.
    pub notify: Notify,
    /// Wakes publishers waiting for room in this session's queue (backpressure).
    pub space: Notify,
    /// The attached connection, if online.
    pub conn: Mutex<Option<ConnHandle>>,
    /// The will to publish if the connection ends abnormally (boxed: most sessions have
    /// none, and inline it would double the size of every session).
    pub will: Mutex<Option<Box<Will>>>,
    /// Pending will-delay and expiry timers, aborted when a connection attaches or the
    /// session ends (so reconnect loops do not pile up sleeping tasks).
    pub timers: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Mirrors `conn.is_some()` without the lock, for the publish path.
    pub online: std::sync::atomic::AtomicBool,
    /// The session outlives its connection (session expiry > 0): its state is stored.
    pub persistent: std::sync::atomic::AtomicBool,
    /// Bumped at every attach, so delayed-will and expiry timers started at a detach
    /// can tell whether the client came back since.
    pub epoch: AtomicU64,
    /// `state.subscriptions.len()` as last noted, readable without the lock (the
    /// registry's index pages subscriptions by it).
    subs_count: std::sync::atomic::AtomicU32,
}

impl Session {
    /// Creates an offline session.
    pub fn new(id: u64, tenant: Arc<str>, client_id: Arc<str>, info: ClientInfo) -> Self {
        Self {
            id,
            tenant,
            client_id,
            created_at: SystemTime::now(),
            info: RwLock::new(info),
            state: Mutex::new(SessionState::default()),
            counters: Counters::default(),
            notify: Notify::new(),
            space: Notify::new(),
            conn: Mutex::new(None),
            will: Mutex::new(None),
            epoch: AtomicU64::new(0),
            persistent: std::sync::atomic::AtomicBool::new(false),
            online: std::sync::atomic::AtomicBool::new(false),
            timers: Mutex::new(Vec::new()),
            subs_count: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Notes the number of subscriptions (call under the state lock after a change).
    pub fn set_subscription_count(&self, n: usize) {
        self.subs_count
            .store(u32::try_from(n).unwrap_or(u32::MAX), Ordering::Relaxed);
    }

    /// The number of subscriptions as last noted.
    pub fn subscription_count(&self) -> usize {
        self.subs_count.load(Ordering::Relaxed) as usize
    }

    /// Whether the session's state is kept in the store.
    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Whether a connection is attached.
    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Whether a publisher that overfilled this session's queue in pressure `epoch`
    /// should still wait: it is online (an offline queue does not drain), not shedding
    /// load, and its queue has not had room since.
    pub fn blocks_publishers(&self, epoch: u64) -> bool {
        self.is_online() && self.state.lock().pressure.blocks(epoch)
    }

    /// Cancels pending will and expiry timers.
    pub fn cancel_timers(&self) {
        for t in self.timers.lock().drain(..) {
            t.abort();
        }
    }

    /// Sends a control command to the attached connection; false if offline.
    pub fn control(&self, c: Control) -> bool {
        match &*self.conn.lock() {
            Some(h) => h.tx.send(c),
            None => false,
        }
    }
}
