//! The broker handle: a cheap clone over `Arc<Shared>` holding the registry, the router,
//! the retained store and the metrics. The publish path (match → enqueue → wake) lives here
//! because MQTT connections, admin operations, wills and `$SYS` all publish the same way.

mod admin;
mod cluster_view;
mod lifecycle;
mod restore;

use std::cell::RefCell;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use tokio::sync::watch;

use crate::apikeys::ApiKeyStore;
use crate::config::Config;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::registry::{Event, Registry};
use crate::router::retained::RetainedStore;
use crate::router::{Router, Subscriber};
use crate::session::{EnqueueOutcome, Session, SubOptions};
use crate::store::{Op, Store};
use crate::topic;

pub use crate::refusal::{PublishRefused, SubscribeError};

/// State shared by every task of one broker.
#[derive(Debug)]
pub struct Shared {
    /// Configuration in force (`config()`; replaced whole by `apply_config`).
    config: arc_swap::ArcSwap<Config>,
    /// The TLS certificate in force and what a reload needs from the binary.
    reloading: crate::reload::Hooks,
    /// Every session.
    pub registry: Registry,
    /// Subscriptions.
    pub router: Router,
    /// Retained messages.
    pub retained: RetainedStore,
    /// Counters exported on /metrics.
    pub metrics: Metrics,
    /// Per-tenant message counters, for each tenant's `$SYS` topics.
    pub tenant_stats: crate::metrics::TenantStats,
    /// API keys of every admin surface.
    pub api_keys: ApiKeyStore,
    /// Durable state (None: nothing is stored, as in unit benchmarks).
    pub store: Option<Arc<Store>>,
    /// What publish/subscribe authorisation needs from the plugin set.
    pub acl: crate::acl::AclShared,
    /// CONNECTs per second per IP address.
    pub connect_rate: crate::limits::ConnectRate,
    /// Failed admin API logins per IP address.
    pub login_throttle: crate::limits::LoginThrottle,
    /// Native password checks for auth plugins, on a bounded pool.
    pub passwords: crate::passwords::Passwords,
    /// Message interceptors in force (plugins of the `message` role).
    pub(crate) interceptors: crate::intercept::Interceptors,
    /// Open stream connections (WebSocket, socket.io) of stream plugins.
    pub streams: crate::stream::Hub,
    /// The last hour's figures, for the dashboard.
    pub monitor: crate::monitor::Monitor,
    /// Loaded plugins (set once at startup). Weak: the manager's plugins hold the broker,
    /// and the server owns the manager, so shutdown drops the whole graph.
    plugins_mgr: std::sync::OnceLock<std::sync::Weak<crate::plugins::PluginManager>>,
    /// This node's part of a cluster (set once at startup; never with no `[cluster]`).
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The auth chain (the plugin manager's auth plugins), as the core sees it.
    auth: std::sync::OnceLock<std::sync::Weak<dyn crate::auth::AuthChain>>,
    /// When the broker started.
    pub started: Instant,
    next_id: AtomicU64,
    shutdown: watch::Sender<bool>,
    connect_locks: Vec<tokio::sync::Mutex<()>>,
}

/// Cheap cloneable handle to a running broker's state.
#[derive(Debug, Clone)]
pub struct Broker(Arc<Shared>);

impl Shared {
    /// The configuration in force: a consistent snapshot, cheap to take (no lock).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts `config` in force; later readers see it, snapshots taken before keep theirs.
    pub(crate) fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The TLS listeners' acceptor in force.
    pub fn tls(&self) -> Option<Arc<tokio_rustls::TlsAcceptor>> {
        self.reloading.tls.load_full()
    }

    /// Puts a TLS acceptor in force for the next handshakes.
    pub(crate) fn set_tls(&self, tls: tokio_rustls::TlsAcceptor) {
        self.reloading.tls.store(Some(Arc::new(tls)));
    }

    /// Sets where reloads read the configuration from (once).
    pub fn set_config_source(&self, source: crate::reload::ConfigSource) {
        let _ = self.reloading.source.set(source);
    }

    /// Sets how reloads change the log filter (once).
    pub fn set_log_filter(&self, f: crate::reload::LogFilter) {
        let _ = self.reloading.log.set(f);
    }

    pub(crate) fn config_source(&self) -> Option<&crate::reload::ConfigSource> {
        self.reloading.source.get()
    }

    pub(crate) fn reload_serial(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.reloading.serial.lock()
    }

    pub(crate) fn log_filter(&self) -> Option<&crate::reload::LogFilter> {
        self.reloading.log.get()
    }
}

impl std::ops::Deref for Broker {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

thread_local! {
    /// Reused per worker thread so matching allocates nothing per message.
    static MATCHES: RefCell<Vec<Subscriber>> = const { RefCell::new(Vec::new()) };
}

impl Broker {
    /// Builds the broker state without a store (no listeners yet).
    pub fn new(config: Config, api_keys: ApiKeyStore) -> Self {
        Self::with_store(config, api_keys, None)
    }

    /// Builds the broker state over a store.
    pub fn with_store(config: Config, api_keys: ApiKeyStore, store: Option<Arc<Store>>) -> Self {
        let (shutdown, _) = watch::channel(false);
        let l = &config.listeners;
        let connect_rate = crate::limits::ConnectRate::new(
            l.connect_rate_per_ip,
            l.connect_burst_per_ip,
            l.connect_rate_loopback,
        );
        let login_throttle = crate::limits::LoginThrottle::new(
            config.http.max_auth_failures,
            std::time::Duration::from_secs(60),
        );
        Broker(Arc::new(Shared {
            config: arc_swap::ArcSwap::from_pointee(config),
            reloading: crate::reload::Hooks::default(),
            registry: Registry::default(),
            router: Router::default(),
            retained: RetainedStore::default(),
            metrics: Metrics::default(),
            tenant_stats: crate::metrics::TenantStats::default(),
            api_keys,
            store,
            acl: crate::acl::AclShared::default(),
            connect_rate,
            login_throttle,
            passwords: crate::passwords::Passwords::default(),
            interceptors: Default::default(),
            streams: crate::stream::Hub::default(),
            monitor: crate::monitor::Monitor::default(),
            plugins_mgr: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            auth: std::sync::OnceLock::new(),
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            shutdown,
            connect_locks: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
        }))
    }

    /// The lock serialising CONNECTs (and expiry) of one client id; striped, so
    /// unrelated client ids rarely share one.
    pub(crate) fn connect_lock(&self, tenant: &str, client_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        tenant.hash(&mut h);
        client_id.hash(&mut h);
        &self.connect_locks[(h.finish() as usize) % self.connect_locks.len()]
    }

    /// The plugin manager, while the server runs.
    pub fn plugins(&self) -> Option<Arc<crate::plugins::PluginManager>> {
        self.plugins_mgr.get()?.upgrade()
    }

    /// Registers the plugin manager (once, at startup); it is the auth chain too.
    pub fn set_plugins(&self, m: &Arc<crate::plugins::PluginManager>) {
        let _ = self.plugins_mgr.set(Arc::downgrade(m));
        let chain: Arc<dyn crate::auth::AuthChain> = m.clone();
        let _ = self.auth.set(Arc::downgrade(&chain));
    }

    /// This node's part of the cluster, when `[cluster]` is set.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Joins the broker to its cluster (once, at startup).
    pub(crate) fn set_cluster(&self, c: Arc<crate::cluster::Cluster>) {
        let _ = self.cluster.set(c);
    }

    /// The auth chain, while the server runs.
    pub fn auth_chain(&self) -> Option<Arc<dyn crate::auth::AuthChain>> {
        self.auth.get()?.upgrade()
    }

    /// A fresh id for sessions and connection generations.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Receiver that flips to true when shutdown starts.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Resolves once shutdown has begun, also when it began before the call (a task
    /// that first runs after a quick shutdown must still end).
    pub async fn stopped(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    #[doc(hidden)]
    pub fn shutdown_receivers(&self) -> usize {
        self.shutdown.receiver_count()
    }
    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Starts shutdown: listeners stop accepting, connections are told to close.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        for s in self.registry.online_sessions() {
            s.control(crate::session::Control::Shutdown);
        }
        // Pending will/expiry timers would keep the broker (and its store) alive.
        for s in self.registry.sessions_of(None) {
            s.cancel_timers();
        }
    }

    /// Routes a message to every matching subscription and stores it if retained.
    /// Returns the number of sessions whose subscriptions matched (a delivery dropped at
    /// a full queue still counts: it had a subscriber, and the drop is counted apart);
    /// in a cluster, at least 1 when the message went to the other nodes.
    /// A retained message its tenant has no room for is refused whole (not routed), as
    /// any other refusal: MQTT 5 publishers see 0x97 (docs/decisions/0009).
    pub fn publish(&self, msg: Message) -> Result<usize, PublishRefused> {
        self.publish_from(msg, None)
    }

    /// [`Broker::publish`] for a publisher that can be made to wait (an MQTT connection):
    /// with `held`, full queues of online sessions take its QoS 1/2 deliveries past their
    /// limit (`[session] backpressure`) and are listed there with their pressure epoch,
    /// for it to wait on.
    pub fn publish_from(
        &self,
        msg: Message,
        held: Option<&mut Vec<(Arc<Session>, u64)>>,
    ) -> Result<usize, PublishRefused> {
        let msg = Arc::new(msg);
        let cluster = self.to_cluster(&msg);
        let matched = self.route(&msg, held, true, Self::shared_here(cluster, &msg))?;
        if let Some(c) = cluster {
            c.forward(&msg);
        }
        Ok(Self::matched_in(cluster, matched))
    }

    /// [`Broker::publish_from`] for an MQTT publisher of QoS 1/2, which waits (at most
    /// `backpressure_timeout_ms`) for room in the queue to the other nodes rather than
    /// having a message acknowledged that they would not get.
    pub async fn publish_waiting(
        &self,
        msg: Message,
        held: &mut Vec<(Arc<Session>, u64)>,
    ) -> Result<usize, PublishRefused> {
        let msg = Arc::new(msg);
        let cluster = self.to_cluster(&msg);
        let shared = Self::shared_here(cluster, &msg);
        let matched = self.route(&msg, Some(held), true, shared)?;
        if let Some(c) = cluster {
            let ms = self.config().session.backpressure_timeout_ms;
            c.forward_waiting(&msg, std::time::Duration::from_millis(ms))
                .await;
        }
        Ok(Self::matched_in(cluster, matched))
    }

    /// The cluster, when `msg` goes to the other nodes (each publishes its own `$SYS`).
    fn to_cluster(&self, msg: &Message) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster
            .get()
            .filter(|_| !msg.topic.starts_with("$SYS/"))
    }

    /// The count a publisher is told: this node's sessions cannot tell a message that
    /// went to other nodes has no subscriber (MQTT 5's 0x10), so there it is at least 1.
    fn matched_in(cluster: Option<&Arc<crate::cluster::Cluster>>, matched: usize) -> usize {
        if cluster.is_some() {
            matched.max(1)
        } else {
            matched
        }
    }

    /// Whether this node serves its shared groups for `msg` itself: not when NATS
    /// balances them over the cluster's queue groups.
    fn shared_here(cluster: Option<&Arc<crate::cluster::Cluster>>, msg: &Message) -> bool {
        cluster.is_none_or(|c| !c.serves_shared(msg))
    }

    /// Routes a message another node of the cluster received to this node's subscribers
    /// (its retained copy comes through the cluster's bucket: `retain_from_cluster`;
    /// shared groups through their queue groups: `deliver_shared_from_cluster`).
    pub(crate) fn publish_from_cluster(&self, msg: Message) {
        let _ = self.route(&Arc::new(msg), None, false, false);
    }

    /// Delivers a message NATS handed to this node's part of the shared subscription
    /// `$share/<group>/<filter>` to one of its members here.
    pub(crate) fn deliver_shared_from_cluster(&self, msg: Message, group: &str, filter: &str) {
        // NATS wildcards also match `$` topics, which MQTT's leading wildcards do not.
        if !topic::matches(filter, &msg.topic) {
            return;
        }
        let Some(sub) = self.router.pick_shared(&msg.tenant, group, filter) else {
            return; // The last member here left as the message came.
        };
        if let Some(d) = merge(&Arc::new(msg), std::slice::from_ref(&sub)) {
            self.offer(&self.config().session, &sub.session, d, false);
        }
    }

    /// Keeps another node's retained message (an empty one clears) without routing it.
    pub(crate) fn retain_from_cluster(&self, msg: Message) {
        let config = self.config();
        if !config.mqtt.retain_available {
            return;
        }
        let set = self
            .retained
            .set(Arc::new(msg), &config.retained, |m| self.store_retained(m));
        if let Err(e) = set {
            self.metrics
                .retained_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "retained message of another node refused");
        }
    }

    /// Writes a change of the retained store to disk (an empty message deletes).
    pub(crate) fn store_retained(&self, m: &Arc<Message>) {
        if let Some(store) = &self.store {
            store.submit(if m.payload.is_empty() {
                Op::DeleteRetained(m.tenant.clone(), m.topic.clone())
            } else {
                Op::PutRetained(m.clone())
            });
        }
    }

    /// Queues `msg` for every matching local subscription. A `local` message (published
    /// on this node) is also stored if retained, counted, and shown to event plugins; one
    /// from another node was all that on its own node.
    fn route(
        &self,
        msg: &Arc<Message>,
        mut held: Option<&mut Vec<(Arc<Session>, u64)>>,
        local: bool,
        shared: bool,
    ) -> Result<usize, PublishRefused> {
        let msg = msg.clone();
        // One snapshot for the whole publish: every delivery sees the same limits.
        let config = self.config();
        if local {
            self.metrics
                .messages_received
                .fetch_add(1, Ordering::Relaxed);
        }
        if msg.retain && local && config.mqtt.retain_available {
            // A compact copy: the decoded topic and payload are slices that would keep the
            // whole read buffer they arrived in alive for as long as the message is retained.
            let mut kept = (*msg).clone();
            kept.topic = ByteString::from(&*msg.topic);
            kept.payload = bytes::Bytes::copy_from_slice(&msg.payload);
            let kept = Arc::new(kept);
            let set = || {
                self.retained
                    .set(kept.clone(), &config.retained, |m| self.store_retained(m))
            };
            let r = match self.to_cluster(&msg) {
                Some(c) => c.retain(&kept, set),
                None => set(),
            };
            if let Err(e) = r {
                self.metrics
                    .retained_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(tenant = %msg.tenant, topic = %&*msg.topic, error = %e, "retained publish refused");
                return Err(PublishRefused::Retained(e));
            }
        }
        if local {
            self.registry.emit_message(&msg);
        }
        MATCHES.with_borrow_mut(|subs| {
            self.router
                .matches_with(&msg.tenant, &msg.topic, shared, subs);
            if subs.len() > 1 {
                subs.sort_unstable_by_key(|s| s.session.id);
            }
            let mut matched = 0;
            let mut i = 0;
            while i < subs.len() {
                let mut j = i + 1;
                while j < subs.len() && subs[j].session.id == subs[i].session.id {
                    j += 1;
                }
                if let Some(d) = merge(&msg, &subs[i..j]) {
                    let s = &subs[i].session;
                    // Never on its own queue: that drains only as it reads its acks.
                    let hold = held.is_some() && s.id != msg.publisher;
                    if let EnqueueOutcome::Held(epoch) = self.offer(&config.session, s, d, hold) {
                        if let Some(h) = held.as_deref_mut() {
                            h.push((s.clone(), epoch));
                        }
                    }
                    matched += 1;
                }
                i = j;
            }
            subs.clear();
            if matched == 0 && local {
                self.metrics
                    .messages_no_subscriber
                    .fetch_add(1, Ordering::Relaxed);
            }
            Ok(matched)
        })
    }

    /// Removes expired retained messages (memory and store); returns how many.
    pub fn prune_retained(&self) -> usize {
        let n = self
            .retained
            .prune_expired(std::time::Instant::now(), |tenant, topic| {
                if let Some(store) = &self.store {
                    store.submit(Op::DeleteRetained(tenant.clone(), topic.clone()));
                }
            });
        self.metrics
            .retained_expired
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Queues one delivery for a session and wakes its connection. False if dropped.
    /// QoS 1/2 deliveries to a persistent session go to the store as well.
    pub fn deliver(&self, session: &Arc<Session>, d: Delivery) -> bool {
        self.offer(&self.config().session, session, d, false) != EnqueueOutcome::Dropped
    }

    /// Queues one delivery; with `hold`, a QoS 1/2 delivery to a full queue of an online
    /// session is taken past the limit (Held) when backpressure is on.
    fn offer(
        &self,
        cfg: &crate::config::SessionConfig,
        session: &Arc<Session>,
        mut d: Delivery,
        hold: bool,
    ) -> EnqueueOutcome {
        let online = session.is_online();
        let hold = hold && cfg.backpressure && online && d.qos != QoS::AtMostOnce;
        if !online && d.qos == QoS::AtMostOnce && !cfg.queue_qos0_offline {
            self.dropped(session, &d.msg, "qos0_offline");
            return EnqueueOutcome::Dropped;
        }
        let msg = d.msg.clone();
        let store = self
            .store
            .as_ref()
            .filter(|_| d.qos != QoS::AtMostOnce && session.is_persistent());
        let (outcome, dels) = {
            let mut st = session.state.lock();
            if st.ended {
                // Matched a session that ended a moment ago: nobody will read it.
                return EnqueueOutcome::Dropped;
            }
            let put = store.map(|_| {
                st.next_seq += 1;
                d.seq = st.next_seq;
                d.clone()
            });
            let outcome = st.offer(d, cfg, hold);
            // Submitted under the session lock: the connection may take the message and
            // store its packet id the moment the lock is released, and that write must
            // come after this one.
            if let (Some(store), Some(delivery)) = (store, put) {
                if outcome != EnqueueOutcome::Dropped {
                    store.submit(Op::PutInbox {
                        tenant: session.tenant.clone(),
                        client_id: session.client_id.clone(),
                        delivery,
                        pid: None,
                        state: 0,
                    });
                }
            }
            (outcome, std::mem::take(&mut st.store_dels))
        };
        self.store_deletes(session, dels);
        match outcome {
            EnqueueOutcome::Queued | EnqueueOutcome::Held(_) => {}
            EnqueueOutcome::QueuedDroppedOldest => self.dropped(session, &msg, "queue_full"),
            EnqueueOutcome::Dropped => {
                self.dropped(session, &msg, "queue_full");
                return outcome;
            }
        }
        // Unconditional: a connection attaching right now must not miss it (a permit is
        // stored when nobody waits).
        session.notify.notify_one();
        outcome
    }

    /// Removes stored inbox entries that left a session without an ack.
    pub fn store_deletes(&self, session: &Session, seqs: Vec<u64>) {
        if let Some(store) = &self.store {
            for seq in seqs {
                store.submit(Op::DeleteInbox(
                    session.tenant.clone(),
                    session.client_id.clone(),
                    seq,
                ));
            }
        }
    }

    /// Writes a persistent session's record (will, expiry, identity; subscriptions are
    /// keys of their own). Built and submitted under the session's lock, so two
    /// snapshots of one session reach the store in the order they were taken.
    pub fn persist_session(&self, s: &Session) {
        if !s.is_persistent() {
            return;
        }
        let st = s.state.lock();
        if st.ended {
            return;
        }
        self.session_changed(s);
        if let Some(store) = &self.store {
            let r = crate::store::recovery::session_record(s, &st);
            store.submit(Op::PutSession(
                s.tenant.clone(),
                s.client_id.clone(),
                Box::new(r),
            ));
        }
    }

    /// Counts and reports a message dropped for a session.
    pub fn dropped(&self, session: &Session, msg: &Message, reason: &'static str) {
        self.metrics.drop(reason);
        self.registry.emit_with(|| Event::MessageDropped {
            tenant: session.tenant.clone(),
            client_id: session.client_id.clone(),
            topic: msg.topic.to_string(),
            reason,
        });
    }

    /// Adds or replaces a subscription of a session (MQTT SUBSCRIBE or an admin operation).
    /// Returns whether it is new. Retained messages are not sent here: see
    /// [`Broker::send_retained`]. The session's subscriptions, the router and the store
    /// change in one critical section of the session's lock, which a discard also takes:
    /// a subscription cannot land on a session that has ended.
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        raw: &str,
        opts: SubOptions,
    ) -> Result<bool, SubscribeError> {
        let config = self.config();
        let mcfg = &config.mqtt;
        let parsed = topic::parse_filter(raw, mcfg.max_topic_levels)?;
        if parsed.group.is_some() && !mcfg.shared_subscription_available {
            return Err(SubscribeError::SharedNotSupported);
        }
        if !mcfg.wildcard_subscription_available && parsed.filter.contains(['+', '#']) {
            return Err(SubscribeError::WildcardNotSupported);
        }
        let new = {
            let mut st = session.state.lock();
            if st.ended {
                return Err(SubscribeError::SessionEnded);
            }
            let exists = st.subscriptions.contains_key(raw);
            if !exists
                && mcfg.max_subscriptions > 0
                && st.subscriptions.len() >= mcfg.max_subscriptions
            {
                return Err(SubscribeError::QuotaExceeded);
            }
            st.subscriptions.insert(raw.to_string(), opts);
            // Noted in the registry once this lock is released: the registry is locked
            // before sessions (listings lock sessions under it), never after.
            session.set_subscription_count(st.subscriptions.len());
            if session.is_persistent() {
                self.session_changed(session);
            }
            if let (Some(store), true) = (&self.store, session.is_persistent()) {
                store.submit(Op::PutSub(
                    session.tenant.clone(),
                    session.client_id.clone(),
                    Box::new(crate::store::recovery::sub_record(raw, &opts)),
                ));
            }
            let new = self.router.subscribe(
                &session.tenant,
                &parsed,
                Subscriber {
                    session: session.clone(),
                    opts,
                },
            );
            // Under the session's lock, as `unroute` removes it: an unsubscribe or a
            // discard cannot come between the router and the cluster's interest.
            if let (true, Some(c)) = (new, self.cluster.get()) {
                c.interest_add(&session.tenant, parsed.group, parsed.filter);
            }
            new
        };
        self.registry.note_subscriptions(session);
        self.metrics
            .subscriptions
            .fetch_add(u64::from(new), Ordering::Relaxed);
        self.registry.emit(Event::Subscribed {
            tenant: session.tenant.clone(),
            client_id: session.client_id.clone(),
            filter: raw.to_string(),
            qos: opts.qos.value(),
        });
        Ok(new)
    }

    /// Queues the retained messages matching a new subscription, per its retain handling.
    pub fn send_retained(&self, session: &Arc<Session>, raw: &str, opts: SubOptions, new: bool) {
        if opts.retain_handling == 2 || (opts.retain_handling == 1 && !new) {
            return;
        }
        let Ok(parsed) = topic::parse_filter(raw, self.config().mqtt.max_topic_levels) else {
            return;
        };
        if parsed.group.is_some() {
            return; // MQTT 5 §4.8.2: no retained messages for shared subscriptions.
        }
        for m in self.retained.matching(&session.tenant, parsed.filter) {
            let qos = m.qos.less_value(opts.qos);
            let d = Delivery {
                msg: m,
                qos,
                retain: true,
                sub_ids: opts.sub_id.into_iter().collect(),
                seq: 0,
            };
            self.deliver(session, d);
        }
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&self, session: &Arc<Session>, raw: &str) -> bool {
        let existed = {
            let mut st = session.state.lock();
            let existed = st.subscriptions.remove(raw).is_some();
            if existed {
                session.set_subscription_count(st.subscriptions.len());
                self.unroute(session, raw);
                if session.is_persistent() {
                    self.session_changed(session);
                }
                if let (Some(store), true) = (&self.store, session.is_persistent()) {
                    store.submit(Op::DeleteSub(
                        session.tenant.clone(),
                        session.client_id.clone(),
                        raw.to_string(),
                    ));
                }
            }
            existed
        };
        if existed {
            self.registry.note_subscriptions(session);
            self.registry.emit(Event::Unsubscribed {
                tenant: session.tenant.clone(),
                client_id: session.client_id.clone(),
                filter: raw.to_string(),
            });
        }
        existed
    }

    /// Removes one of a session's filters from the router (caller holds its lock).
    pub(crate) fn unroute(&self, session: &Session, raw: &str) {
        if let Ok(parsed) = topic::parse_filter(raw, self.config().mqtt.max_topic_levels) {
            if self
                .router
                .unsubscribe(&session.tenant, &parsed, session.id)
            {
                self.metrics.subscriptions.fetch_sub(1, Ordering::Relaxed);
                if let Some(c) = self.cluster.get() {
                    c.interest_remove(&session.tenant, parsed.group, parsed.filter);
                }
            }
        }
    }
}

/// Folds the matching subscriptions of one session into one delivery (MQTT 5 §3.3.4:
/// highest QoS, every subscription identifier). None if no-local excludes them all.
fn merge(msg: &Arc<Message>, subs: &[Subscriber]) -> Option<Delivery> {
    let mut qos: Option<QoS> = None;
    let mut retain = false;
    let mut sub_ids: Vec<NonZeroU32> = Vec::new();
    for s in subs {
        if s.opts.no_local && s.session.id == msg.publisher {
            continue;
        }
        let q = msg.qos.less_value(s.opts.qos);
        qos = Some(qos.map_or(q, |old| if q > old { q } else { old }));
        retain |= s.opts.retain_as_published && msg.retain;
        if let Some(id) = s.opts.sub_id {
            sub_ids.push(id);
        }
    }
    qos.map(|qos| Delivery {
        msg: msg.clone(),
        qos,
        retain,
        sub_ids,
        seq: 0,
    })
}
