//! The component runtime: one wasmtime Engine, components compiled once and cached on disk
//! by content hash, one `InstancePre` per loaded plugin, and a small pool of initialised
//! instances per plugin (each with its own Store, memory limit and epoch deadline). A call
//! that traps, overruns its deadline or hits its memory limit fails alone; its instance
//! is dropped and a fresh one takes its place.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::exports::apiary::plugin::{
    auth, events, http, lifecycle, message, stream_protocol as stream,
};
use super::bindings::Full;
use super::manifest::{Manifest, Role};
use crate::broker::Broker;

/// Epoch tick: the granularity of call deadlines.
pub const TICK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    /// Not a component, or it does not link against the host's interfaces.
    #[error("cannot load: {0}")]
    Load(String),
    /// `init` refused.
    #[error("init failed: {0}")]
    Init(String),
    /// The call trapped (panic, unreachable, out of memory...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The call ran past `call_timeout_ms`.
    #[error("plugin call timed out")]
    Timeout,
    /// The plugin failed repeatedly and is backing off.
    #[error("plugin is backing off after repeated failures")]
    BackingOff,
    /// The plugin does not serve this role.
    #[error("plugin does not serve the {0} role")]
    NoRole(&'static str),
    /// The call ran out of wall-clock time while waiting in one of the host's bounded
    /// queues (password checks, kv I/O): load, not a fault of the plugin's, so it does
    /// not count towards backing off.
    #[error("plugin call did not finish in time (the host was busy)")]
    Overloaded,
    /// Too many calls are in progress.
    #[error("plugin is busy (too many calls in progress)")]
    Busy,
}

/// What host calls of one plugin may touch.
#[derive(Debug)]
pub struct PluginContext {
    /// Plugin name.
    pub name: String,
    /// Its settings.
    pub manifest: Manifest,
    /// The broker it acts on.
    pub broker: Broker,
    /// Its kv usage (shared by every version of the plugin).
    pub kv: Arc<super::kv::Account>,
    /// Its last log lines (shared by every version of the plugin).
    pub logs: Arc<super::logs::Ring>,
    /// Its calls, errors, latency, instances and memory (shared by every version).
    pub stats: Arc<super::stats::PluginStats>,
    /// Its outbound HTTP grant and figures.
    pub outbound: Arc<super::outbound::Outbound>,
}

/// Store data of one instance.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    http: wasmtime_wasi_http::WasiHttpCtx,
    outbound: super::outbound::Hooks,
    limits: super::stats::Limiter,
    /// Epoch ticks the current call may still run for.
    ticks_left: u64,
    /// Shared per-plugin context for host calls.
    pub ctx: Arc<PluginContext>,
    /// The API key this call acts as, once the plugin verified one (reset every call).
    pub(crate) acting: Option<crate::apikeys::ApiKey>,
    /// The address of the HTTP client this call serves, for the login throttle.
    pub(crate) peer: Option<std::net::IpAddr>,
    /// The guest is waiting in one of the host's bounded queues (password checks, kv I/O):
    /// running out of wall-clock time there is load, not the plugin's fault.
    pub(crate) waiting: bool,
}

impl wasmtime_wasi_http::WasiHttpView for PluginState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The engine, linker and compile cache shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginState>,
    cache_dir: PathBuf,
    /// Authenticates cache entries: a compiled plugin is native code, so an entry is
    /// only loaded if it carries a MAC made with this key (kept in the data dir).
    cache_key: [u8; 32],
}

/// A compiled component and where it came from.
pub struct Compiled {
    /// The component.
    pub component: Component,
    /// Content hash of the `.wasm`.
    pub hash: String,
    /// A cache entry existed but failed its integrity check (it was recompiled).
    pub cache_rejected: bool,
}

/// Bytes of the MAC after a cache entry's compiled code.
const TAG: usize = 32;

impl Runtime {
    /// Builds the engine (epoch interruption on) and the linker with the host interfaces
    /// and WASI (whose reach is decided per instance by its WasiCtx), and starts the epoch
    /// ticker thread.
    pub fn new(cache_dir: &Path, cache_key: [u8; 32]) -> Result<Arc<Self>, PluginError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // A profiling aid: `APIARY_PERFMAP=1` names JIT-compiled plugin functions for
        // `perf report` (docs/plugins.md, "Profiling a plugin").
        if std::env::var_os("APIARY_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(|e| PluginError::Load(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Load(e.to_string()))?;
        // Linked for every plugin; a request goes out only to an origin its toml grants.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| PluginError::Load(e.to_string()))?;
        Full::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Load(e.to_string()))?;
        let _ = std::fs::create_dir_all(cache_dir);
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("apiary-epoch".into())
            .spawn(move || loop {
                std::thread::sleep(TICK);
                match weak.upgrade() {
                    Some(e) => e.increment_epoch(),
                    None => return,
                }
            })
            .map_err(|e| PluginError::Load(e.to_string()))?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache_dir: cache_dir.to_path_buf(),
            cache_key,
        }))
    }

    /// Compiles a component, or loads it from the on-disk cache keyed by the content hash
    /// and the engine's compatibility hash. Returns it with its content hash. A cache
    /// entry is compiled code followed by an HMAC-SHA256 of its file name and code under
    /// the cache key; one whose MAC does not verify is never deserialised.
    pub fn compile(&self, bytes: &[u8]) -> Result<Compiled, PluginError> {
        let hash = hex(&Sha256::digest(bytes));
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        let name = format!("{hash}-{:016x}.cwasm", std::hash::Hasher::finish(&h));
        let cached = self.cache_dir.join(&name);
        let mut cache_rejected = false;
        if let Ok(entry) = std::fs::read(&cached) {
            match self.open_entry(&name, &entry) {
                Some(component) => {
                    return Ok(Compiled {
                        component,
                        hash,
                        cache_rejected,
                    })
                }
                None => {
                    cache_rejected = true;
                    tracing::warn!(entry = %cached.display(), "compiled-plugin cache entry failed its integrity check; recompiling");
                }
            }
        }
        let c =
            Component::new(&self.engine, bytes).map_err(|e| PluginError::Load(format!("{e:#}")))?;
        if let Ok(mut code) = c.serialize() {
            let tag = self.tag(&name, &code);
            code.extend_from_slice(&tag);
            let tmp = cached.with_extension(format!(
                "{}.{:x}.tmp",
                std::process::id(),
                rand::random::<u64>()
            ));
            if std::fs::write(&tmp, code).is_ok() {
                let _ = std::fs::rename(&tmp, &cached);
            }
        }
        Ok(Compiled {
            component: c,
            hash,
            cache_rejected,
        })
    }

    /// The MAC of a cache entry: its file name, then its compiled code.
    fn mac(&self, name: &str, code: &[u8]) -> hmac::Hmac<Sha256> {
        use hmac::Mac;
        let mut m =
            hmac::Hmac::<Sha256>::new_from_slice(&self.cache_key).expect("HMAC takes any key");
        m.update(name.as_bytes());
        m.update(&[0]);
        m.update(code);
        m
    }

    fn tag(&self, name: &str, code: &[u8]) -> [u8; TAG] {
        use hmac::Mac;
        self.mac(name, code).finalize().into_bytes().into()
    }

    /// The component in a cache entry, if its MAC verifies (compared in constant time).
    fn open_entry(&self, name: &str, entry: &[u8]) -> Option<Component> {
        use hmac::Mac;
        let split = entry.len().checked_sub(TAG)?;
        let (code, tag) = entry.split_at(split);
        self.mac(name, code).verify_slice(tag).ok()?;
        // SAFETY: the bytes carry a MAC under our key, so this process (or one holding
        // the same key) serialised them with this engine configuration (the name holds
        // its compatibility hash) and they were not changed since.
        unsafe { Component::deserialize(&self.engine, code) }.ok()
    }

    /// Links a component against the host, finding which roles it exports.
    pub fn prepare(&self, component: &Component) -> Result<Prepared, PluginError> {
        let pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| PluginError::Load(format!("{e:#}")))?;
        let lifecycle = lifecycle::GuestIndices::new(&pre).map_err(|e| {
            PluginError::Load(format!("does not export apiary:plugin/lifecycle: {e:#}"))
        })?;
        Ok(Prepared {
            http: http::GuestIndices::new(&pre).ok(),
            auth: auth::GuestIndices::new(&pre).ok(),
            events: events::GuestIndices::new(&pre).ok(),
            stream: stream::GuestIndices::new(&pre).ok(),
            message: message::GuestIndices::new(&pre).ok(),
            lifecycle,
            pre,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A linked component and the roles it exports.
pub struct Prepared {
    pre: InstancePre<PluginState>,
    lifecycle: lifecycle::GuestIndices,
    http: Option<http::GuestIndices>,
    auth: Option<auth::GuestIndices>,
    events: Option<events::GuestIndices>,
    stream: Option<stream::GuestIndices>,
    message: Option<message::GuestIndices>,
}

impl Prepared {
    /// The roles the component exports (served only as far as its toml grants them).
    pub fn exports(&self) -> Vec<Role> {
        let mut r = Vec::new();
        if self.http.is_some() {
            r.push(Role::Http);
        }
        if self.auth.is_some() {
            r.push(Role::Auth);
        }
        if self.events.is_some() {
            r.push(Role::Events);
        }
        if self.stream.is_some() {
            r.push(Role::Stream);
        }
        if self.message.is_some() {
            r.push(Role::Message);
        }
        r
    }

    /// Checks the toml's `roles` against the exports: every granted role must be
    /// exported, and at least one must be granted. Returns the exported roles that are
    /// not granted (served by nobody; the caller warns).
    pub fn check_roles(&self, granted: &[Role]) -> Result<Vec<Role>, PluginError> {
        let exports = self.exports();
        if let Some(r) = granted.iter().find(|r| !exports.contains(r)) {
            return Err(PluginError::Load(format!(
                "its toml grants the {} role, which the component does not export",
                r.as_str()
            )));
        }
        if granted.is_empty() {
            let names: Vec<&str> = exports.iter().map(|r| r.as_str()).collect();
            return Err(PluginError::Load(format!(
                "its toml grants no role: add roles = [{}] for the roles it should serve (it exports {})",
                names
                    .iter()
                    .map(|n| format!("\"{n}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                if names.is_empty() { "none".into() } else { names.join(", ") }
            )));
        }
        Ok(exports
            .into_iter()
            .filter(|r| !granted.contains(r))
            .collect())
    }
}

/// One initialised instance with its store.
pub struct Instance {
    pub(super) store: Store<PluginState>,
    http: Option<http::Guest>,
    auth: Option<auth::Guest>,
    events: Option<events::Guest>,
    pub(super) stream: Option<stream::Guest>,
    pub(super) message: Option<message::Guest>,
}

/// A loaded plugin version: linked component, pool of instances, counters.
pub struct LoadedPlugin {
    /// Shared context for host calls.
    pub ctx: Arc<PluginContext>,
    prepared: Prepared,
    pool: Mutex<Vec<Instance>>,
    /// Content hash of the `.wasm`.
    pub hash: String,
    /// When this version was loaded (Unix ms).
    pub loaded_at: i64,
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed.
    pub errors: AtomicU64,
    /// Calls that ran out of wall-clock time while waiting (not faults).
    pub overloaded: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
    consecutive_failures: AtomicU64,
    backoff_until: Mutex<Option<Instant>>,
    /// Bounds calls in progress (each may need an instance of its own).
    concurrency: tokio::sync::Semaphore,
    /// Frames rendered for recent messages (stream role): one call per message, not per
    /// receiving connection.
    pub(super) rendered: super::stream_calls::RenderCache,
}

impl LoadedPlugin {
    /// Links, instantiates and initialises one instance (which `init` must accept).
    pub async fn new(
        ctx: Arc<PluginContext>,
        prepared: Prepared,
        hash: String,
        runtime: &Runtime,
    ) -> Result<Arc<Self>, PluginError> {
        let ctx_max_instances = ctx.manifest.max_instances;
        let p = Arc::new(Self {
            ctx,
            prepared,
            pool: Mutex::new(Vec::new()),
            hash,
            loaded_at: crate::store::records::to_ms(std::time::SystemTime::now()),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            overloaded: AtomicU64::new(0),
            last_error: Mutex::new(None),
            consecutive_failures: AtomicU64::new(0),
            backoff_until: Mutex::new(None),
            concurrency: tokio::sync::Semaphore::new((ctx_max_instances * 2).max(4)),
            rendered: Default::default(),
        });
        let first = tokio::time::timeout(p.wall_timeout(), p.instantiate(runtime.engine()))
            .await
            .map_err(|_| {
                PluginError::Init("init did not finish within call_timeout_ms".into())
            })??;
        if p.ctx.manifest.max_instances > 0 {
            p.pool.lock().push(first);
        }
        Ok(p)
    }

    /// Roles this plugin serves: exported and granted by its toml.
    pub fn roles(&self) -> Vec<Role> {
        self.prepared
            .exports()
            .into_iter()
            .filter(|r| self.ctx.manifest.roles.contains(r))
            .collect()
    }

    /// Whether it serves `role`.
    pub fn serves(&self, role: Role) -> bool {
        self.ctx.manifest.roles.contains(&role)
            && match role {
                Role::Http => self.prepared.http.is_some(),
                Role::Auth => self.prepared.auth.is_some(),
                Role::Events => self.prepared.events.is_some(),
                Role::Stream => self.prepared.stream.is_some(),
                Role::Message => self.prepared.message.is_some(),
            }
    }

    fn deadline_ticks(&self) -> u64 {
        (self.ctx.manifest.call_timeout_ms / TICK.as_millis() as u64).max(1)
    }

    /// Gives the next guest entry its full CPU budget.
    fn arm(&self, store: &mut Store<PluginState>) {
        store.data_mut().ticks_left = self.deadline_ticks();
        store.data_mut().acting = None;
        store.data_mut().peer = None;
        store.data_mut().waiting = false;
        store.set_epoch_deadline(1);
    }

    /// Wall-clock bound on one call, for a guest blocked in a host call (where epochs
    /// do not reach it).
    fn wall_timeout(&self) -> Duration {
        Duration::from_millis(self.ctx.manifest.call_timeout_ms) + Duration::from_millis(100)
    }

    async fn instantiate(&self, engine: &Engine) -> Result<Instance, PluginError> {
        let m = &self.ctx.manifest;
        let mut wasi = WasiCtxBuilder::new();
        if m.wasi.stdio {
            wasi.inherit_stdout().inherit_stderr();
        }
        for (k, v) in &m.wasi.env {
            wasi.env(k, v);
        }
        for (guest, host) in &m.wasi.read_dirs {
            wasi.preopened_dir(host, guest, wasmtime_wasi::FsPerms::ReadOnly)
                .map_err(|e| {
                    PluginError::Load(format!("wasi.read_dirs {guest}: {}: {e}", host.display()))
                })?;
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size((m.memory_limit_mb as usize) << 20)
            .memories(4)
            .tables(16)
            .table_elements(100_000)
            .instances(16)
            .build();
        let mut store = Store::new(
            engine,
            PluginState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                http: wasmtime_wasi_http::WasiHttpCtx::new(),
                outbound: super::outbound::Hooks(self.ctx.outbound.clone()),
                limits: super::stats::Limiter::new(limits, self.ctx.stats.clone()),
                ticks_left: 0,
                acting: None,
                peer: None,
                waiting: false,
                ctx: self.ctx.clone(),
            },
        );
        store.limiter(|s| &mut s.limits);
        // Yield to the scheduler every tick (a busy guest never holds a worker thread for
        // long) and interrupt once the call's budget is spent.
        store.epoch_deadline_callback(|mut cx| {
            let s = cx.data_mut();
            if s.ticks_left == 0 {
                Ok(wasmtime::UpdateDeadline::Interrupt)
            } else {
                s.ticks_left -= 1;
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });
        self.arm(&mut store);
        let trap = |e: wasmtime::Error| classify(&e);
        let inst = self
            .prepared
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(trap)?;
        let p = &self.prepared;
        let lifecycle = p.lifecycle.load(&mut store, &inst).map_err(trap)?;
        let http = p
            .http
            .as_ref()
            .map(|i| i.load(&mut store, &inst))
            .transpose()
            .map_err(trap)?;
        let auth = p
            .auth
            .as_ref()
            .map(|i| i.load(&mut store, &inst))
            .transpose()
            .map_err(trap)?;
        let events = p
            .events
            .as_ref()
            .map(|i| i.load(&mut store, &inst))
            .transpose()
            .map_err(trap)?;
        let stream = p
            .stream
            .as_ref()
            .map(|i| i.load(&mut store, &inst))
            .transpose()
            .map_err(trap)?;
        let message = p
            .message
            .as_ref()
            .map(|i| i.load(&mut store, &inst))
            .transpose()
            .map_err(trap)?;
        self.arm(&mut store);
        let config = self.ctx.manifest.config_json();
        match lifecycle
            .call_init(&mut store, &config)
            .await
            .map_err(trap)?
        {
            Ok(()) => {}
            Err(lifecycle::InitError::InvalidConfig(m)) => {
                return Err(PluginError::Init(format!("invalid config: {m}")))
            }
            Err(lifecycle::InitError::Failed(m)) => return Err(PluginError::Init(m)),
        }
        Ok(Instance {
            store,
            http,
            auth,
            events,
            stream,
            message,
        })
    }

    /// Runs `f` for `role` (see [`LoadedPlugin::call_inner`]), counted in the plugin's
    /// figures: the call, its latency (waiting for an instance included), its failure.
    pub async fn call<R>(
        &self,
        role: Role,
        engine: &Engine,
        f: impl for<'a> FnOnce(
            &'a mut Instance,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R, PluginError> {
        let start = Instant::now();
        let r = self.call_inner(engine, f).await;
        self.ctx
            .stats
            .record(role, start.elapsed(), r.as_ref().map(|_| ()));
        r
    }

    /// Runs `f` on a pooled (or fresh) instance under the call deadline. A failed call
    /// drops its instance; repeated failures make the plugin back off.
    async fn call_inner<R>(
        &self,
        engine: &Engine,
        f: impl for<'a> FnOnce(
            &'a mut Instance,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = wasmtime::Result<R>> + Send + 'a>,
        >,
    ) -> Result<R, PluginError> {
        if let Some(until) = *self.backoff_until.lock() {
            if Instant::now() < until {
                return Err(PluginError::BackingOff);
            }
        }
        let Ok(_permit) =
            tokio::time::timeout(self.wall_timeout(), self.concurrency.acquire()).await
        else {
            return Err(PluginError::Busy);
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        let pooled = self.pool.lock().pop();
        let mut inst = match pooled {
            Some(i) => i,
            None => match tokio::time::timeout(self.wall_timeout(), self.instantiate(engine)).await
            {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => return Err(self.failed(e)),
                Err(_) => return Err(self.failed(PluginError::Timeout)),
            },
        };
        self.arm(&mut inst.store);
        let r = match tokio::time::timeout(self.wall_timeout(), f(&mut inst)).await {
            Ok(r) => r,
            // Out of wall-clock time. Waiting in one of the host's own bounded queues is
            // load; anything else (a guest sleeping, or stuck in WASI) is the plugin's
            // fault. Dropping the instance abandons the call.
            Err(_) if inst.store.data().waiting => return Err(self.overloaded()),
            Err(_) => return Err(self.failed(PluginError::Timeout)),
        };
        match r {
            Ok(r) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                let mut pool = self.pool.lock();
                if pool.len() < self.ctx.manifest.max_instances {
                    pool.push(inst);
                }
                Ok(r)
            }
            Err(e) => Err(self.failed(classify(&e))),
        }
    }

    /// A call that ran out of wall-clock time while waiting in the host's own queues:
    /// counted and logged, but no step towards backing off (under load every plugin would
    /// otherwise be locked out, and with an auth plugin, every client).
    fn overloaded(&self) -> PluginError {
        let e = PluginError::Overloaded;
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.overloaded.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
        tracing::warn!(plugin = %self.ctx.name, "plugin call did not finish in time while the host was busy");
        e
    }

    fn failed(&self, e: PluginError) -> PluginError {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock() = Some(e.to_string());
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= 5 {
            // 500 ms, doubling per further failure, at most 30 s.
            let ms = (500u64 << (n - 5).min(6)).min(30_000);
            *self.backoff_until.lock() = Some(Instant::now() + Duration::from_millis(ms));
        }
        tracing::warn!(plugin = %self.ctx.name, error = %e, "plugin call failed");
        e
    }

    /// Calls the http role.
    pub async fn handle_http(
        &self,
        engine: &Engine,
        req: http::Request,
        peer: Option<std::net::IpAddr>,
    ) -> Result<http::Response, PluginError> {
        if !self.serves(Role::Http) {
            return Err(PluginError::NoRole("http"));
        }
        self.call(Role::Http, engine, move |i| {
            Box::pin(async move {
                i.store.data_mut().peer = peer;
                let h = i.http.as_ref().expect("role checked");
                h.call_handle(&mut i.store, &req).await
            })
        })
        .await
    }

    /// Calls the auth role's authenticate.
    pub async fn authenticate(
        &self,
        engine: &Engine,
        req: auth::ConnectRequest,
    ) -> Result<auth::ConnectDecision, PluginError> {
        if !self.serves(Role::Auth) {
            return Err(PluginError::NoRole("auth"));
        }
        self.call(Role::Auth, engine, move |i| {
            Box::pin(async move {
                let a = i.auth.as_ref().expect("role checked");
                a.call_authenticate(&mut i.store, &req).await
            })
        })
        .await
    }

    /// Calls the auth role's authenticate-step (MQTT 5 enhanced authentication).
    pub async fn authenticate_step(
        &self,
        engine: &Engine,
        step: auth::AuthStep,
    ) -> Result<auth::AuthStepDecision, PluginError> {
        if !self.serves(Role::Auth) {
            return Err(PluginError::NoRole("auth"));
        }
        self.call(Role::Auth, engine, move |i| {
            Box::pin(async move {
                let a = i.auth.as_ref().expect("role checked");
                a.call_authenticate_step(&mut i.store, &step).await
            })
        })
        .await
    }

    /// Calls the auth role's authorize.
    pub async fn authorize(
        &self,
        engine: &Engine,
        req: auth::AuthorizeRequest,
    ) -> Result<auth::AuthorizeDecision, PluginError> {
        if !self.serves(Role::Auth) {
            return Err(PluginError::NoRole("auth"));
        }
        self.call(Role::Auth, engine, move |i| {
            Box::pin(async move {
                let a = i.auth.as_ref().expect("role checked");
                a.call_authorize(&mut i.store, &req).await
            })
        })
        .await
    }

    /// Delivers a batch of events.
    pub async fn on_events(
        &self,
        engine: &Engine,
        batch: Vec<events::Event>,
    ) -> Result<(), PluginError> {
        if !self.serves(Role::Events) {
            return Err(PluginError::NoRole("events"));
        }
        self.call(Role::Events, engine, move |i| {
            Box::pin(async move {
                let e = i.events.as_ref().expect("role checked");
                e.call_on_events(&mut i.store, &batch).await
            })
        })
        .await
    }
}

/// Maps a wasmtime error to what the operator should read.
fn classify(e: &wasmtime::Error) -> PluginError {
    // The wasm backtrace goes to the debug log; the error keeps the one-line cause.
    tracing::debug!(error = ?e, "plugin call failed");
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => PluginError::Timeout,
        Some(t) => PluginError::Trap(t.to_string()),
        None => PluginError::Trap(e.to_string()),
    }
}
