//! Apiary's broker core: MQTT 3.1.1 + 5 over TCP, TLS, WebSocket and secure WebSocket,
//! sessions, routing, retained messages, and the shared session registry that admin API
//! plugins work over.
//!
//! Shape (after tokio-rs/mini-redis): [`start`] binds every listener, spawns one task per
//! listener and one per connection, and returns a [`Server`]; [`Server::shutdown`]
//! broadcasts shutdown and waits for the tasks.

pub mod acl;
pub mod apikeys;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod http;
pub mod intercept;
pub mod limits;
pub mod message;
pub mod metrics;
pub mod monitor;
pub mod mqtt;
pub mod passwords;
pub mod plugins;
pub mod refusal;
pub mod registry;
pub mod reload;
pub mod router;
pub mod secrets;
pub mod session;
pub mod store;
pub mod stream;
pub mod sys;
pub mod topic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use broker::Broker;

/// A boxed future, for the object-safe traits the core calls through (authenticators,
/// stream protocols).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
pub use config::Config;

use apikeys::{ApiKeyError, ApiKeyStore};
use mqtt::listener::{self, ListenerError};
use session::Transport;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be set up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
    /// The API keys file is unusable.
    #[error(transparent)]
    ApiKeys(#[from] ApiKeyError),
    /// The store cannot be opened or its contents cannot be read.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The plugin runtime could not start.
    #[error("plugin runtime: {0}")]
    Plugins(#[from] plugins::PluginError),
    /// `[cluster]` is set and the node could not join.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The data dir cannot be created or written.
    #[error("data dir {path} is not usable: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Addresses the running broker actually listens on.
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    /// MQTT over TCP.
    pub tcp: Option<SocketAddr>,
    /// MQTT over WebSocket.
    pub ws: Option<SocketAddr>,
    /// MQTT over TLS.
    pub tls: Option<SocketAddr>,
    /// MQTT over secure WebSocket.
    pub wss: Option<SocketAddr>,
    /// Native HTTP API.
    pub http: Option<SocketAddr>,
    /// Native HTTP API over TLS.
    pub https: Option<SocketAddr>,
}

/// A running broker.
pub struct Server {
    /// Handle to its state.
    pub broker: Broker,
    /// The loaded plugins.
    pub plugins: Arc<plugins::PluginManager>,
    /// Where it listens.
    pub addrs: Addrs,
    tasks: JoinSet<()>,
}

/// Binds every configured listener and starts serving, with state in
/// `data_dir/store` (fjall).
pub async fn start(config: Config) -> Result<Server, StartError> {
    start_with_backend(config, None).await
}

/// As [`start`], over a given store backend (None: fjall in `data_dir/store`): for
/// embedding another engine, and for tests that inject disk faults.
pub async fn start_with_backend(
    config: Config,
    backend: Option<Arc<dyn store::Backend>>,
) -> Result<Server, StartError> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| StartError::DataDir {
        path: data_dir.clone(),
        source,
    })?;
    let keys = ApiKeyStore::default();
    if let Some(f) = &config.api_keys_file {
        let n = keys.load_file(f)?;
        tracing::info!(file = %f.display(), keys = n, "loaded API keys");
    }
    let managed = keys.open_managed(&data_dir)?;
    if managed > 0 {
        tracing::info!(keys = managed, "loaded managed API keys");
    }
    first_admin_key(&keys, &data_dir)?;
    // Durable state first: the registry, router and retained set are whole before any
    // listener accepts a connection.
    let store_dir = data_dir.join("store");
    let store = match backend {
        Some(b) => store::Store::with_backend(b, &store_dir, &config.store)?,
        None => store::Store::open(&store_dir, &config.store)?,
    };
    let recovered = store::recovery::load(&store)?;

    let l = config.listeners.clone();
    let tls = if l.tls.is_some() || l.wss.is_some() || config.http.https.is_some() {
        let (cert, key) = match (&l.cert, &l.key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => listener::ensure_self_signed(&data_dir.join("tls"))?,
        };
        Some(listener::tls_acceptor(&cert, &key)?)
    } else {
        None
    };
    let bind_http = |addr: Option<std::net::SocketAddr>| async move {
        match addr {
            Some(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .map(Some)
                .map_err(|source| ListenerError::Bind { addr, source }),
            None => Ok(None),
        }
    };
    let http_listener = bind_http(config.http.listen).await?;
    let https_listener = bind_http(config.http.https).await?;
    let mut bound = Vec::new();
    for (kind, addr) in [
        (Transport::Tcp, l.tcp),
        (Transport::Ws, l.ws),
        (Transport::Tls, l.tls),
        (Transport::Wss, l.wss),
    ] {
        if let Some(a) = addr {
            bound.push(listener::bind(kind, a).await?);
        }
    }
    let sys_interval = config.sys_interval_secs;
    let permits = Arc::new(Semaphore::new(l.max_connections.max(1)));
    let broker = Broker::with_store(config, keys, Some(store));
    if let Some(t) = tls.clone() {
        broker.set_tls(t);
    }
    let stats = broker.restore(recovered);
    tracing::info!(
        path = %store_dir.display(),
        sessions = stats.sessions,
        messages = stats.messages,
        subscriptions = stats.subscriptions,
        retained = stats.retained,
        orphans_removed = stats.orphans,
        elapsed_ms = stats.elapsed.as_millis() as u64,
        "recovered durable state"
    );
    let plugins_dir = broker.config().plugins_dir.clone();
    let cache_dir = broker
        .config()
        .plugin_cache_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("plugin-cache"));
    let key_path = broker
        .config()
        .plugin_cache_key_file
        .clone()
        .unwrap_or_else(|| data_dir.join("plugin-cache.key"));
    let cache_key = secrets::key_file(&key_path).map_err(|source| StartError::DataDir {
        path: key_path.clone(),
        source,
    })?;
    let manager = plugins::PluginManager::new(&plugins_dir, &cache_dir, cache_key, broker.clone())?;
    let watching = manager.watcher();
    manager.load_all().await;
    broker.set_plugins(&manager);
    let auth_plugins: Vec<String> = manager
        .auth_chain()
        .iter()
        .map(|p| p.ctx.name.clone())
        .collect();
    match broker.config().auth.allow_anonymous {
        config::Anonymous::Always => {
            tracing::warn!(plugins = ?auth_plugins, "auth: anonymous clients are accepted from anywhere ([auth] allow_anonymous = true)")
        }
        config::Anonymous::Loopback => {
            tracing::info!(plugins = ?auth_plugins, "auth: anonymous clients are accepted from loopback only; others need a user an auth plugin accepts")
        }
        config::Anonymous::Never if auth_plugins.is_empty() => {
            tracing::warn!("auth: no auth plugin is loaded and anonymous access is off, so every CONNECT will be refused (set [auth] allow_anonymous, or add users to plugins.d/auth-file.toml)")
        }
        config::Anonymous::Never => {
            tracing::info!(plugins = ?auth_plugins, "auth: anonymous access is off; clients no auth plugin accepts are refused")
        }
    }
    let mut addrs = Addrs {
        http: http_listener.as_ref().and_then(|h| h.local_addr().ok()),
        https: https_listener.as_ref().and_then(|h| h.local_addr().ok()),
        ..Default::default()
    };
    let mut tasks = JoinSet::new();
    // Before any listener accepts: every subscription made from now on is heard of.
    if let Some(c) = broker.config().cluster.clone() {
        cluster::start(&broker, &c, &mut tasks).await?;
    }
    for b in bound {
        match b.kind {
            Transport::Tcp => addrs.tcp = Some(b.addr),
            Transport::Ws => addrs.ws = Some(b.addr),
            Transport::Tls => addrs.tls = Some(b.addr),
            Transport::Wss => addrs.wss = Some(b.addr),
        }
        tasks.spawn(listener::run(b, broker.clone(), permits.clone()));
    }
    if let Some(h) = http_listener {
        tasks.spawn(http::serve(h, broker.clone()));
    }
    if let (Some(h), true) = (https_listener, tls.is_some()) {
        tasks.spawn(http::serve_tls(h, broker.clone()));
    }
    let prune = broker.config().retained.prune_interval_secs;
    if prune > 0 {
        tasks.spawn(prune_retained(broker.clone(), Duration::from_secs(prune)));
    }
    if let Some(w) = watching {
        tasks.spawn(manager.clone().watch(w));
    }
    let initial_events = (!manager.events_plugins().is_empty()).then(|| {
        broker
            .registry
            .subscribe_events(manager.events_want_messages())
    });
    tasks.spawn(manager.clone().pump_events(initial_events));
    tasks.spawn(manager.clone().tick_events());
    tasks.spawn(save_key_use(broker.clone(), Duration::from_secs(60)));
    tasks.spawn(monitor::run(broker.clone()));
    if sys_interval > 0 {
        tasks.spawn(sys::run(broker.clone(), Duration::from_secs(sys_interval)));
    }
    Ok(Server {
        broker,
        plugins: manager,
        addrs,
        tasks,
    })
}

/// Saves the managed API keys' last-used times every `every` and at shutdown (a crash
/// loses at most `every` of them; a key's use never waits for a disk write).
async fn save_key_use(broker: Broker, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        let stop = tokio::select! {
            _ = tick.tick() => false,
            _ = broker.stopped() => true,
        };
        let b = broker.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.api_keys.save_last_used()).await {
            tracing::warn!(error = %e, "could not save API keys' last-used times");
        }
        if stop {
            return;
        }
    }
}

/// Removes expired retained messages every `every` until shutdown.
async fn prune_retained(broker: Broker, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = broker.prune_retained();
                if n > 0 {
                    tracing::debug!(removed = n, "expired retained messages pruned");
                }
            }
            _ = broker.stopped() => return,
        }
    }
}

/// The admin key a first start makes: with no API key configured, the admin API would
/// be unusable, so one key (every right, every tenant) is created in
/// `data_dir/api-keys.txt` (mode 0600, the bootstrap format) and its secret logged once.
/// Later starts load that file without logging the secret.
fn first_admin_key(keys: &ApiKeyStore, data_dir: &std::path::Path) -> Result<(), StartError> {
    let path = data_dir.join("api-keys.txt");
    let io = |source| StartError::DataDir {
        path: path.clone(),
        source,
    };
    if path.exists() {
        secrets::tighten(&path).map_err(io)?;
        let n = keys.load_file(&path)?;
        tracing::info!(file = %path.display(), keys = n, "loaded API keys");
    }
    if !keys.is_empty() {
        return Ok(());
    }
    let key = format!("admin-{:08x}", rand::random::<u32>());
    let secret: String = (0..32)
        .map(|_| char::from(b"abcdefghijkmnpqrstuvwxyz23456789"[rand::random_range(0..32)]))
        .collect();
    let line = format!(
        "# Created at first start because no API key was configured. Format: key:secret:rights[:tenant=NAME]\n{key}:{secret}:admin:tenant=*\n"
    );
    secrets::write_private(&path, line.as_bytes()).map_err(io)?;
    keys.load_file(&path)?;
    tracing::warn!(
        file = %path.display(),
        key = %key,
        secret = %secret,
        "created an admin API key (every right, every tenant); the secret is shown only now, and kept in the file (mode 0600). Use it as HTTP basic auth: curl -u {key}:{secret}",
    );
    Ok(())
}

impl Server {
    /// Stops accepting, tells every connection to close, and waits (bounded) for the
    /// listener tasks to end.
    pub async fn shutdown(mut self) {
        self.broker.begin_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        // Give connection tasks a moment to flush their DISCONNECTs.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.broker.registry.connected_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(store) = self.broker.store.clone() {
            let _ = tokio::task::spawn_blocking(move || store.close()).await;
        }
    }
}
