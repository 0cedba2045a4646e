//! Several nodes as one broker over NATS (issue 16; decision 0023): a message published
//! on any node reaches the matching subscribers of every node, once, with a single
//! node's QoS rules (each node routes what it receives through its own router); a node
//! listens in NATS only for the filters its sessions hold; no message comes back to the
//! node that sent it (`no_echo`). Beside it: membership (`nodes.rs`), shared
//! subscriptions as queue groups (`shared.rs`), retained messages and dead nodes' wills
//! in JetStream buckets (`retained.rs`, `wills.rs`), the admin view and takeover by
//! request/reply (`rpc.rs`, `takeover.rs`).

mod bucket;
mod config;
mod kv;
mod listing;
mod metrics;
mod nodes;
mod retained;
mod rpc;
mod sessions;
mod shared;
mod subject;
mod takeover;
mod wills;
mod wire;

pub use config::ClusterConfig;
pub use kv::{PluginBucket, Replica};
pub use nodes::NodeView;
pub use takeover::MovedSession;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::message::Message;

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `[cluster]` is not usable.
    #[error("invalid [cluster]: {0}")]
    Config(String),
    /// The NATS client could not be set up (credentials, TLS).
    #[error("cannot connect to NATS {servers:?}: {source}")]
    Connect {
        /// The configured servers.
        servers: Vec<String>,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Counters of the cluster traffic, on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages sent to NATS for other nodes.
    pub forwarded: AtomicU64,
    /// Messages not sent because `max_pending` were waiting.
    pub forward_dropped: AtomicU64,
    /// Messages the NATS client refused (e.g. a payload over the server's
    /// `max_payload`, 1 MiB by default).
    pub forward_failed: AtomicU64,
    /// Messages whose topic is too long for a NATS subject (routed locally only).
    pub subject_too_long: AtomicU64,
    /// Messages received from other nodes and routed here.
    pub received: AtomicU64,
    /// Copies of a message already routed (overlapping filters).
    pub duplicates: AtomicU64,
    /// Messages that came too late to be told from copies (past the dedup window).
    pub too_late: AtomicU64,
    /// Cluster messages that could not be read.
    pub undecodable: AtomicU64,
}

impl Drop for Cluster {
    /// The listening tasks hold the NATS connection open: end them with the node.
    fn drop(&mut self) {
        for (_, (_, task)) in self.interest.lock().drain() {
            task.abort();
        }
        for (_, (_, task)) in self.queues.lock().drain() {
            task.abort();
        }
        for (_, (_, task)) in self.plugin_kvs.lock().drain() {
            task.abort();
        }
    }
}

/// This node's part of the cluster.
#[derive(Debug)]
pub struct Cluster {
    node: String,
    origin: String,
    started_ms: u64,
    settings: ClusterConfig,
    client: async_nats::Client,
    /// A second connection, with echo, for the queue groups of shared subscriptions:
    /// their messages are served through NATS also when published on this node.
    shared_client: async_nats::Client,
    out: mpsc::Sender<Arc<Message>>,
    inbound: mpsc::Sender<Inbound>,
    /// Subjects listened on: how many filters want each, and the task that listens.
    interest: Mutex<HashMap<String, (usize, tokio::task::AbortHandle)>>,
    /// Queue subscriptions of shared subscriptions, by subject and queue group.
    queues: Mutex<HashMap<(String, String), (usize, tokio::task::AbortHandle)>>,
    /// Listening tasks not yet subscribed in NATS.
    subscribing: Arc<AtomicUsize>,
    /// Payload bytes waiting in `out`.
    pending_bytes: AtomicUsize,
    /// Sequence numbers seen per origin (the receive loop's; heartbeats forget
    /// incarnations that are gone).
    seen: Mutex<wire::Seen>,
    peers: Mutex<BTreeMap<String, nodes::Peer>>,
    /// The traffic counters.
    pub counters: Counters,
    /// Times the NATS client dropped messages this node read too slowly.
    slow: Arc<AtomicU64>,
    /// Retained messages shared through JetStream.
    retained: Arc<retained::Retained>,
    /// The admin traffic between nodes.
    rpc: rpc::RpcCounters,
    /// Pending wills, for when this node dies.
    wills: Arc<wills::Wills>,
    /// Persistent sessions, for another node to adopt when this one dies.
    sessions: Arc<sessions::Sessions>,
    /// The NATS server's `max_payload` (0: not known yet).
    max_payload: AtomicUsize,
    /// Plugins' kv buckets opened here, by plugin, with the tasks that watch them.
    plugin_kvs: Mutex<HashMap<String, (Arc<PluginBucket>, tokio::task::AbortHandle)>>,
    /// The plugins' kv traffic.
    kv_counters: Arc<kv::KvCounters>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A message from NATS, and the shared subscription it came for if through a queue group.
#[derive(Debug)]
struct Inbound {
    queue: Option<Arc<shared::QueueKey>>,
    msg: async_nats::Message,
}

/// Connects to NATS as this node (`echo`: also hear what this connection publishes).
async fn connect(
    c: &ClusterConfig,
    node: &str,
    slow: Arc<AtomicU64>,
    echo: bool,
) -> Result<async_nats::Client, ClusterError> {
    let err = |e: Box<dyn std::error::Error + Send + Sync>| ClusterError::Connect {
        servers: c.nats.clone(),
        source: e,
    };
    let mut opts = async_nats::ConnectOptions::new().name(format!(
        "apiary-{node}{}",
        if echo { "-shared" } else { "" }
    ));
    if !echo {
        opts = opts.no_echo();
    }
    opts = opts
        // A NATS server that is down at start is retried in the background (logged by
        // the client): the node serves its own clients meanwhile.
        .retry_on_initial_connect()
        .require_tls(c.tls_required)
        .event_callback(move |e| {
            if let async_nats::Event::SlowConsumer(_) = e {
                slow.fetch_add(1, Ordering::Relaxed);
            }
            async {}
        });
    if let Some(f) = &c.credentials_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| err(Box::new(e)))?;
    }
    if let (Some(u), Some(p)) = (&c.user, &c.password) {
        opts = opts.user_and_password(u.clone(), p.clone());
    }
    if let Some(t) = &c.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &c.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    let servers: Vec<async_nats::ServerAddr> = c
        .nats
        .iter()
        .map(|s| s.parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| err(Box::new(e)))?;
    opts.connect(servers).await.map_err(|e| err(Box::new(e)))
}

/// Connects this node to the cluster, registers what its sessions subscribe to, and
/// starts its tasks in `tasks` (they end when the broker stops or the set is dropped).
pub async fn start(
    broker: &Broker,
    c: &ClusterConfig,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Result<Arc<Cluster>, ClusterError> {
    c.check().map_err(ClusterError::Config)?;
    let node = c.node_name();
    let slow = Arc::new(AtomicU64::new(0));
    let client = connect(c, &node, slow.clone(), false).await?;
    let shared_client = connect(c, &node, slow.clone(), true).await?;
    let (out, out_rx) = mpsc::channel(c.max_pending);
    let (inbound, in_rx) = mpsc::channel(c.max_pending);
    let (retained, retained_rx) = retained::Retained::new(c.max_pending);
    let (wills, wills_rx) = wills::Wills::new(c.max_pending);
    let cluster = Arc::new(Cluster {
        origin: format!("{node}/{:016x}", rand::random::<u64>()),
        node,
        started_ms: unix_ms(),
        settings: c.clone(),
        client,
        shared_client,
        out,
        inbound,
        interest: Mutex::new(HashMap::new()),
        queues: Mutex::new(HashMap::new()),
        subscribing: Arc::new(AtomicUsize::new(0)),
        pending_bytes: AtomicUsize::new(0),
        seen: Mutex::new(wire::Seen::default()),
        peers: Mutex::new(BTreeMap::new()),
        counters: Counters::default(),
        slow,
        retained: Arc::new(retained),
        rpc: rpc::RpcCounters::default(),
        wills: Arc::new(wills),
        sessions: Arc::default(),
        max_payload: AtomicUsize::new(0),
        plugin_kvs: Mutex::new(HashMap::new()),
        kv_counters: Arc::default(),
    });
    cluster.refresh_max_payload();
    // Joined first, then the sessions' filters: a subscription that ends meanwhile (an
    // expiry) is removed after it was added, or never added; none is left behind.
    broker.set_cluster(cluster.clone());
    for s in broker.registry.sessions_of(None) {
        // Under the session's lock, as subscribe and unsubscribe change both.
        // Restored with a will still waiting for its delay: kept for if this node dies.
        cluster.will_set(&s.tenant, &s.client_id, s.will.lock().as_deref());
        let st = s.state.lock();
        for f in st.subscriptions.keys() {
            let (group, filter) = crate::topic::split_share(f);
            cluster.interest_add(&s.tenant, group, filter);
        }
    }
    tasks.spawn(cluster.clone().send_loop(out_rx, broker.clone()));
    tasks.spawn(cluster.clone().receive_loop(in_rx, broker.clone()));
    tasks.spawn(cluster.clone().heartbeats(broker.clone()));
    tasks.spawn(cluster.clone().serve_rpc(broker.clone()));
    tasks.spawn(cluster.wills.clone().run(
        async_nats::jetstream::new(cluster.client.clone()),
        c.replicas,
        wills_rx,
        broker.clone(),
        cluster.node.clone(),
    ));
    tasks.spawn(cluster.sessions.clone().run(
        async_nats::jetstream::new(cluster.client.clone()),
        c.replicas,
        broker.clone(),
        cluster.node.clone(),
    ));
    tasks.spawn(cluster.retained.clone().run(
        async_nats::jetstream::new(cluster.client.clone()),
        c.replicas,
        cluster.origin.clone(),
        retained_rx,
        broker.clone(),
    ));
    tracing::info!(node = %cluster.node, nats = ?c.nats, "cluster: joined");
    Ok(cluster)
}

impl Cluster {
    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Hands a message published here to the other nodes (never waits: past
    /// `max_pending` it is counted and not sent).
    pub fn forward(&self, msg: &Arc<Message>) {
        let n = msg.payload.len();
        let before = self.pending_bytes.fetch_add(n, Ordering::Relaxed);
        if before + n > self.settings.max_pending_bytes || self.out.try_send(msg.clone()).is_err() {
            self.pending_bytes.fetch_sub(n, Ordering::Relaxed);
            self.counters
                .forward_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`Cluster::forward`] that waits (at most `wait`, in arrival order) for a place in
    /// the queue instead of dropping: for publishers that can be held (MQTT QoS 1/2).
    /// The byte bound does not apply to these: their number is the bound.
    pub async fn forward_waiting(&self, msg: &Arc<Message>, wait: Duration) {
        let n = msg.payload.len();
        self.pending_bytes.fetch_add(n, Ordering::Relaxed);
        if tokio::time::timeout(wait, self.out.send(msg.clone()))
            .await
            .map_or(true, |r| r.is_err())
        {
            self.pending_bytes.fetch_sub(n, Ordering::Relaxed);
            self.counters
                .forward_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores a retained publish of this node with `set` (the local store) and, when
    /// it took it, shares it with the other nodes through the bucket.
    pub fn retain<E>(
        &self,
        msg: &Arc<Message>,
        set: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        self.retained.publish(msg, set)
    }

    /// The will pending for this node's session of `client_id` is now `will`: kept in
    /// the cluster's bucket, for the other nodes to publish if this node dies.
    pub fn will_set(&self, tenant: &str, client_id: &str, will: Option<&crate::session::Will>) {
        self.wills
            .set(&self.node, &self.origin, tenant, client_id, will);
    }

    /// A persistent session of this node changed in the store (record, subscriptions,
    /// end): kept in the cluster's bucket for another node to adopt if this one dies.
    pub fn session_changed(&self, tenant: &Arc<str>, client_id: &Arc<str>) {
        self.sessions.changed(tenant, client_id);
    }

    /// How retained messages are kept: `shared`, `starting`, or `local` with the reason
    /// the bucket cannot be opened.
    pub fn retained_state(&self) -> (&'static str, Option<String>) {
        match self.retained.state() {
            retained::RetainedState::Starting => ("starting", None),
            retained::RetainedState::Shared => ("shared", None),
            retained::RetainedState::Unavailable(e) => ("local", Some(e)),
        }
    }

    /// A session here subscribed to `filter` (without `$share/`; `group` for a shared
    /// subscription, served through a NATS queue group): listen for it.
    pub fn interest_add(&self, tenant: &str, group: Option<&str>, filter: &str) {
        if let Some(g) = group {
            return self.queue_add(tenant, g, filter);
        }
        let Some(subjects) = subject::of_filter(tenant, filter) else {
            self.counters
                .subject_too_long
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut interest = self.interest.lock();
        for s in subjects {
            if let Some((n, _)) = interest.get_mut(&s) {
                *n += 1;
                continue;
            }
            let task = self.listen(&self.client, s.clone(), None);
            interest.insert(s, (1, task));
        }
    }

    /// A session here dropped `filter`: stop listening once no filter wants its subjects.
    pub fn interest_remove(&self, tenant: &str, group: Option<&str>, filter: &str) {
        if let Some(g) = group {
            return self.queue_remove(tenant, g, filter);
        }
        let Some(subjects) = subject::of_filter(tenant, filter) else {
            return;
        };
        let mut interest = self.interest.lock();
        for s in subjects {
            if let Some((n, task)) = interest.get_mut(&s) {
                *n -= 1;
                if *n == 0 {
                    task.abort();
                    interest.remove(&s);
                }
            }
        }
    }

    /// Waits until NATS has every subscription asked for so far: a message published
    /// anywhere after this reaches this node's subscribers.
    /// Bounded by 5 s (NATS may be unreachable).
    pub async fn settled(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.subscribing.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            // A round trip through the server (no one answers: "no responders"), after
            // the subscriptions on this connection: the server has them all.
            for c in [&self.client, &self.shared_client] {
                let _ = c.request(c.new_inbox(), bytes::Bytes::new()).await;
            }
        })
        .await;
    }

    /// Subscribes to `subject` in NATS (in a queue group for a shared subscription) and
    /// passes what arrives to the receive loop; aborting the task drops the subscription
    /// (NATS is told on drop).
    fn listen(
        &self,
        client: &async_nats::Client,
        subject: String,
        queue: Option<Arc<shared::QueueKey>>,
    ) -> tokio::task::AbortHandle {
        let (client, tx, pending) = (
            client.clone(),
            self.inbound.clone(),
            self.subscribing.clone(),
        );
        pending.fetch_add(1, Ordering::AcqRel);
        // Counted down exactly once, even when the task is aborted before subscribing.
        struct Done(Arc<AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let done = Done(pending);
        tokio::spawn(async move {
            let sub = match &queue {
                Some(q) => {
                    client
                        .queue_subscribe(subject.clone(), q.name.clone())
                        .await
                }
                None => client.subscribe(subject.clone()).await,
            };
            drop(done);
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(%subject, error = %e, "cluster: cannot subscribe");
                    return;
                }
            };
            while let Some(msg) = sub.next().await {
                let queue = queue.clone();
                if tx.send(Inbound { queue, msg }).await.is_err() {
                    return;
                }
            }
        })
        .abort_handle()
    }

    /// Sends forwarded messages to NATS, numbered in sending order.
    async fn send_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Arc<Message>>, b: Broker) {
        let mut seq = 0u64;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = b.stopped() => return,
            };
            let Some(subject) = subject::of_topic(&msg.tenant, &msg.topic) else {
                self.counters
                    .subject_too_long
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            };
            seq += 1;
            let bytes = wire::encode(&self.origin, seq, &msg);
            self.pending_bytes
                .fetch_sub(msg.payload.len(), Ordering::Relaxed);
            drop(msg);
            // A publish waits while NATS is away and the client's buffer is full: never
            // past shutdown.
            let sent = tokio::select! {
                r = self.client.publish(subject, bytes.into()) => r.is_ok(),
                _ = b.stopped() => return,
            };
            let c = if sent {
                &self.counters.forwarded
            } else {
                &self.counters.forward_failed
            };
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Routes what other nodes sent, each message once.
    async fn receive_loop(self: Arc<Self>, mut rx: mpsc::Receiver<Inbound>, b: Broker) {
        loop {
            let Inbound { queue, msg: m } = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return },
                _ = b.stopped() => return,
            };
            let e = match wire::decode(&m.payload) {
                Ok(e) => e,
                Err(e) => {
                    self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, subject = %m.subject, "cluster: dropped a message");
                    continue;
                }
            };
            if let Some(q) = queue {
                // NATS picked this node's member of the group, once per message; this
                // node's own publishes come this way too.
                self.counters.received.fetch_add(1, Ordering::Relaxed);
                b.deliver_shared_from_cluster(e.into_message(), &q.group, &q.filter);
                continue;
            }
            if e.origin == self.origin {
                continue;
            }
            let verdict = self.seen.lock().check(&e.origin, e.seq);
            match verdict {
                wire::Verdict::First => {}
                wire::Verdict::Repeat => {
                    self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                wire::Verdict::TooLate => {
                    self.counters.too_late.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            b.publish_from_cluster(e.into_message());
        }
    }

    /// The NATS connection's state: `connected`, `disconnected` or `pending`.
    pub fn nats_state(&self) -> &'static str {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => "connected",
            async_nats::connection::State::Disconnected => "disconnected",
            async_nats::connection::State::Pending => "pending",
        }
    }
}
