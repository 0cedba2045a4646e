//! The loaded plugin set. Loading compiles and initialises the new version first and
//! swaps it in atomically; calls in flight finish on the version they started with; a
//! version that fails to compile or init leaves the previous one serving. A directory
//! watcher (debounced) loads added files, reloads changed ones, and unloads removed ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use super::manifest::{Manifest, Role};
use super::runtime::{LoadedPlugin, PluginContext, PluginError, Runtime};
use crate::broker::Broker;
use crate::stream::SocketIoServer;

/// What `GET /plugins` shows about one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Name (the file stem).
    pub name: String,
    /// Short content hash of the serving version.
    pub version: Option<String>,
    /// Roles it serves (exported and granted by its toml).
    pub roles: Vec<Role>,
    /// Full content hash.
    pub file_hash: Option<String>,
    /// "running", or "failed" when no version could be loaded.
    pub state: &'static str,
    /// When the serving version was loaded (Unix ms).
    pub loaded_at: Option<i64>,
    /// Calls made to the serving version.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The last load or call failure.
    pub last_error: Option<String>,
    /// Mount point on the main HTTP listener.
    pub mount: Option<String>,
    /// Call latency since the broker started (None before the first call).
    pub latency: Option<super::stats::CallLatency>,
    /// Live instances.
    pub instances: u64,
    /// Linear memory of its live instances, bytes.
    pub memory_bytes: u64,
}

/// A plugin's dedicated HTTP listener.
#[derive(Debug)]
struct Listener {
    /// `listen` as configured (a reload with the same value keeps the listener).
    configured: std::net::SocketAddr,
    /// Where it is bound.
    local: std::net::SocketAddr,
    /// Its accept loop.
    task: tokio::task::JoinHandle<()>,
}

/// Every loaded plugin.
pub struct PluginManager {
    /// Itself (`weak`).
    me: Weak<PluginManager>,
    runtime: Arc<Runtime>,
    dir: PathBuf,
    broker: Broker,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    load_errors: RwLock<BTreeMap<String, String>>,
    listeners: Mutex<HashMap<String, Listener>>,
    /// socket.io endpoints of stream plugins, with the settings they were made with.
    socketio: Mutex<HashMap<String, (crate::stream::StreamSettings, Arc<SocketIoServer>)>>,
    serial: tokio::sync::Mutex<()>,
    /// Digest of the files (wasm + toml) of each plugin's last load attempt, so that
    /// events that change nothing (reads, `touch`) never reload.
    attempted: Mutex<HashMap<String, [u8; 32]>>,
    /// Every plugin's kv usage, kept across reloads.
    kv_accounts: super::kv::Accounts,
    /// Every plugin's last log lines, kept across reloads.
    logs: super::logs::Logs,
    /// Every plugin's call figures, kept across reloads.
    stats: Mutex<BTreeMap<String, Arc<super::stats::PluginStats>>>,
    /// Signalled when the loaded set changes (the events pump starts or stops on it).
    pub(crate) changed: tokio::sync::Notify,
}

impl std::fmt::Debug for PluginManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginManager")
            .field("dir", &self.dir)
            .finish()
    }
}

impl PluginManager {
    /// A manager over `dir`, compiling into `cache_dir` (entries authenticated with
    /// `cache_key`).
    pub fn new(
        dir: &Path,
        cache_dir: &Path,
        cache_key: [u8; 32],
        broker: Broker,
    ) -> Result<Arc<Self>, PluginError> {
        let runtime = Runtime::new(cache_dir, cache_key)?;
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            runtime,
            dir: dir.to_path_buf(),
            broker,
            plugins: RwLock::new(BTreeMap::new()),
            load_errors: RwLock::new(BTreeMap::new()),
            listeners: Mutex::new(HashMap::new()),
            socketio: Mutex::new(HashMap::new()),
            serial: tokio::sync::Mutex::new(()),
            attempted: Mutex::new(HashMap::new()),
            kv_accounts: super::kv::Accounts::default(),
            logs: super::logs::Logs::default(),
            stats: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::Notify::new(),
        }))
    }

    /// Itself, weakly: for what must find the manager again later (interceptors).
    pub(super) fn weak(&self) -> Weak<Self> {
        self.me.clone()
    }

    /// The runtime (engine) calls run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads every `*.wasm` in the directory. Failures are logged and shown in `list`.
    pub async fn load_all(self: &Arc<Self>) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            info!(dir = %self.dir.display(), "no plugins directory; no plugins loaded");
            return;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "wasm").then(|| p.file_stem()?.to_str().map(str::to_string))?
            })
            .collect();
        names.sort();
        for n in names {
            let _ = self.load(&n).await;
        }
    }

    /// Loads or reloads `NAME.wasm` (+ `NAME.toml`), whether or not they changed (an
    /// operator's explicit reload). On failure the previous version, if any, keeps serving
    /// and the error is recorded.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        self.load_with(name, true)
            .await
            .map(|p| p.expect("a forced load always loads"))
    }

    /// Loads `NAME` only if its files differ from those of the last attempt (the
    /// watcher's path). Ok(None): unchanged, nothing done.
    pub async fn load_if_changed(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<Arc<LoadedPlugin>>, PluginError> {
        self.load_with(name, false).await
    }

    async fn load_with(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<Option<Arc<LoadedPlugin>>, PluginError> {
        let _serial = self.serial.lock().await;
        let r = match Sources::read(&self.dir, name) {
            Ok(src) => {
                let same = self.attempted.lock().get(name) == Some(&src.digest);
                if same && !force {
                    debug!(plugin = name, "plugin files unchanged; not reloaded");
                    return Ok(None);
                }
                self.attempted.lock().insert(name.to_string(), src.digest);
                self.load_inner(name, src).await
            }
            Err(e) => Err(e),
        };
        let m = &self.broker.metrics;
        match &r {
            Ok(p) => {
                m.plugin_loads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.load_errors.write().remove(name);
                let msg = format!("loaded version {}", &p.hash[..12]);
                self.logs.of(name).push("info", &msg);
                info!(plugin = name, version = &p.hash[..12], roles = ?p.roles(), "plugin loaded");
            }
            Err(e) => {
                m.plugin_load_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(plugin = name, error = %e, "plugin failed to load; any previous version keeps serving");
                self.load_errors
                    .write()
                    .insert(name.to_string(), e.to_string());
                let msg = format!("failed to load: {e}");
                self.logs.of(name).push("error", &msg);
            }
        }
        r.map(Some)
    }

    async fn load_inner(
        self: &Arc<Self>,
        name: &str,
        src: Sources,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let manifest = Manifest::parse(src.toml.as_deref(), &self.dir.join(format!("{name}.toml")))
            .map_err(PluginError::Load)?;
        let rt = self.runtime.clone();
        let bytes = src.wasm;
        let compiled = tokio::task::spawn_blocking(move || rt.compile(&bytes))
            .await
            .map_err(|e| PluginError::Load(e.to_string()))??;
        if compiled.cache_rejected {
            self.broker
                .metrics
                .plugin_cache_rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let hash = compiled.hash;
        let prepared = self.runtime.prepare(&compiled.component)?;
        let unserved = prepared.check_roles(&manifest.roles)?;
        if !unserved.is_empty() {
            warn!(plugin = name, roles = ?unserved, "the component exports roles its toml does not grant; they are not served");
        }
        let listen = manifest.listen;
        let stats = self
            .stats
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone();
        let outbound = Arc::new(super::outbound::Outbound::new(
            name,
            &manifest.outbound_http,
            stats.clone(),
        ));
        let ctx = Arc::new(PluginContext {
            name: name.to_string(),
            manifest,
            broker: self.broker.clone(),
            kv: self.kv_accounts.of(name),
            logs: self.logs.of(name),
            stats,
            outbound,
        });
        let plugin = LoadedPlugin::new(ctx, prepared, hash, &self.runtime).await?;
        // A new listen address is bound before the swap: if it fails, the old version
        // (and its listener) keeps serving.
        let current = self.listeners.lock().get(name).map(|l| l.configured);
        let bound = match listen {
            Some(addr) if current != Some(addr) => Some((
                addr,
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| PluginError::Load(format!("cannot listen on {addr}: {e}")))?,
            )),
            _ => None,
        };
        self.plugins
            .write()
            .insert(name.to_string(), plugin.clone());
        self.set_changed();
        // Stream connections survive a reload (the next call reaches the new version)
        // unless the new version no longer speaks over them.
        if !plugin.serves(Role::Stream) {
            self.broker
                .streams
                .close_plugin(name, "plugin_reloaded_without_stream_role");
        }
        let old = match bound {
            Some((configured, l)) => {
                let local = l.local_addr().unwrap_or(configured);
                let task = tokio::spawn(crate::http::serve_plugin(
                    l,
                    self.broker.clone(),
                    name.to_string(),
                ));
                let entry = Listener {
                    configured,
                    local,
                    task,
                };
                self.listeners.lock().insert(name.to_string(), entry)
            }
            None if listen.is_none() => self.listeners.lock().remove(name),
            None => None,
        };
        if let Some(l) = old {
            l.task.abort();
        }
        Ok(plugin)
    }

    /// The address a plugin's dedicated listener is bound to (its `listen`, with the port
    /// the system chose when that was 0).
    pub fn listen_addr(&self, name: &str) -> Option<std::net::SocketAddr> {
        self.listeners.lock().get(name).map(|l| l.local)
    }

    /// Unloads a plugin (its dedicated listener stops; calls in flight finish).
    pub async fn unload(&self, name: &str) -> bool {
        let _serial = self.serial.lock().await;
        self.load_errors.write().remove(name);
        self.attempted.lock().remove(name);
        if let Some(l) = self.listeners.lock().remove(name) {
            l.task.abort();
        }
        let gone = self.plugins.write().remove(name).is_some();
        self.set_changed();
        if gone {
            self.socketio.lock().remove(name);
            let closed = self.broker.streams.close_plugin(name, "plugin_unloaded");
            info!(
                plugin = name,
                stream_connections_closed = closed,
                "plugin unloaded"
            );
        }
        gone
    }

    /// Every loaded plugin's call figures, by name (for `/metrics`).
    pub fn stats(&self) -> Vec<(String, Arc<super::stats::PluginStats>)> {
        let loaded = self.plugins.read();
        let stats = self.stats.lock();
        stats
            .iter()
            .filter(|(n, _)| loaded.contains_key(*n))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// A plugin's last log lines (None: it never loaded nor logged).
    pub fn logs(&self, name: &str) -> Option<Arc<super::logs::Ring>> {
        self.logs.get(name)
    }

    /// The serving version of a plugin.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.read().get(name).cloned()
    }

    /// The http plugin whose mount is the longest prefix of `path`, with the rest of it.
    pub fn http_route(&self, path: &str) -> Option<(Arc<LoadedPlugin>, String)> {
        self.route(path, Role::Http)
    }

    /// The stream plugin whose mount is the longest prefix of `path` and whose socket.io
    /// endpoint holds the rest of it, with that rest.
    pub fn socketio_route(&self, path: &str) -> Option<(Arc<LoadedPlugin>, String)> {
        self.route(path, Role::Stream)
            .filter(|(p, rest)| p.ctx.manifest.stream.socketio_path(rest))
    }

    /// The socket.io endpoint of a stream plugin, made at its first request and kept
    /// across reloads (its sessions live in it) while its `[stream]` settings stay the same.
    pub fn socketio_server(self: &Arc<Self>, plugin: &LoadedPlugin) -> Option<Arc<SocketIoServer>> {
        let s = &plugin.ctx.manifest.stream;
        let path = s.socketio.clone()?;
        let name = &plugin.ctx.name;
        let mut map = self.socketio.lock();
        if let Some((kept, srv)) = map.get(name) {
            if kept == s {
                return Some(srv.clone());
            }
        }
        // A request that raced an unload must not bring the endpoint back.
        self.get(name)?;
        let proto = super::PluginProtocol::new(self, name);
        let srv = SocketIoServer::new(self.broker.clone(), proto, s, &path);
        map.insert(name.clone(), (s.clone(), srv.clone()));
        Some(srv)
    }

    /// The stream plugin whose mount is the longest prefix of `path` and which declares
    /// the rest of it a WebSocket path, with that rest.
    pub fn stream_route(&self, path: &str) -> Option<(Arc<LoadedPlugin>, String)> {
        self.route(path, Role::Stream)
            .filter(|(p, rest)| p.ctx.manifest.stream.websocket_path(rest))
    }

    fn route(&self, path: &str, role: Role) -> Option<(Arc<LoadedPlugin>, String)> {
        let plugins = self.plugins.read();
        let mut best: Option<(&Arc<LoadedPlugin>, usize)> = None;
        for p in plugins.values() {
            let Some(mount) = p.ctx.manifest.mount.as_deref() else {
                continue;
            };
            let fits = mount == "/"
                || path == mount
                || (path.starts_with(mount) && path.as_bytes().get(mount.len()) == Some(&b'/'));
            if fits && p.serves(role) && best.is_none_or(|(_, l)| mount.len() > l) {
                best = Some((p, mount.len()));
            }
        }
        best.map(|(p, l)| {
            let rest = if p.ctx.manifest.mount.as_deref() == Some("/") {
                path
            } else {
                &path[l..]
            };
            let rest = if rest.is_empty() { "/" } else { rest };
            (p.clone(), rest.to_string())
        })
    }

    /// The loaded set changed: wake the events pump, and stale every ACL decision cache.
    fn set_changed(&self) {
        let all: Vec<_> = self.plugins.read().values().cloned().collect();
        let auth = all.iter().filter(|p| p.serves(Role::Auth)).count();
        self.broker.acl.plugins_changed(auth);
        self.broker.set_interceptors(self.interceptors(&all));
        self.changed.notify_one();
    }

    /// Plugins serving the auth role, in priority order.
    pub fn auth_chain(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut v: Vec<_> = self
            .plugins
            .read()
            .values()
            .filter(|p| p.serves(Role::Auth))
            .cloned()
            .collect();
        v.sort_by_key(|p| (p.ctx.manifest.priority, p.ctx.name.clone()));
        v
    }

    /// Plugins serving the events role, in priority order.
    pub fn events_plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut v: Vec<_> = self
            .plugins
            .read()
            .values()
            .filter(|p| p.serves(Role::Events))
            .cloned()
            .collect();
        v.sort_by_key(|p| (p.ctx.manifest.priority, p.ctx.name.clone()));
        v
    }

    /// The broker the plugins act on.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// What `GET /plugins` shows.
    pub fn list(&self) -> Vec<PluginInfo> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut out: BTreeMap<String, PluginInfo> = BTreeMap::new();
        let stats = self.stats.lock().clone();
        for (name, p) in self.plugins.read().iter() {
            let s = stats.get(name);
            out.insert(
                name.clone(),
                PluginInfo {
                    name: name.clone(),
                    version: Some(p.hash[..12].to_string()),
                    roles: p.roles(),
                    file_hash: Some(p.hash.clone()),
                    state: "running",
                    loaded_at: Some(p.loaded_at),
                    calls: p.calls.load(Relaxed),
                    errors: p.errors.load(Relaxed),
                    last_error: p.last_error.lock().clone(),
                    mount: p.ctx.manifest.mount.clone(),
                    latency: s.and_then(|s| s.latency()),
                    instances: s.map_or(0, |s| s.instances.load(Relaxed)),
                    memory_bytes: s.map_or(0, |s| s.memory_bytes.load(Relaxed)),
                },
            );
        }
        for (name, e) in self.load_errors.read().iter() {
            out.entry(name.clone())
                .and_modify(|i| i.last_error = Some(e.clone()))
                .or_insert_with(|| PluginInfo {
                    name: name.clone(),
                    version: None,
                    roles: Vec::new(),
                    file_hash: None,
                    state: "failed",
                    loaded_at: None,
                    calls: 0,
                    errors: 0,
                    last_error: Some(e.clone()),
                    mount: None,
                    latency: None,
                    instances: 0,
                    memory_bytes: 0,
                });
        }
        out.into_values().collect()
    }

    /// Starts watching the directory (before the first load, so no change between the
    /// two is missed); [`PluginManager::watch`] then acts on what it sees. None when the
    /// directory cannot be watched (logged: hot loading is off).
    pub fn watcher(&self) -> Option<Watching> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Only what can change a file's content: the broker's own reads of a plugin
            // (and anyone's `cat`) raise open/close events too.
            if let Some(ev) = ev.ok().filter(|ev| changes_content(&ev.kind)) {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        });
        let mut watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the plugins directory; hot loading is off");
                return None;
            }
        };
        let _ = std::fs::create_dir_all(&self.dir);
        if let Err(e) = watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            warn!(dir = %self.dir.display(), error = %e, "cannot watch the plugins directory; hot loading is off");
            return None;
        }
        Some(Watching { watcher, rx })
    }

    /// Watches the directory until shutdown: `.wasm`/`.toml` writes, renames and removals
    /// settle for 250 ms, then each affected plugin is loaded, reloaded (if its files
    /// changed) or unloaded.
    pub async fn watch(self: Arc<Self>, watching: Watching) {
        let Watching {
            watcher: _watcher,
            mut rx,
        } = watching;
        loop {
            let first = tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = self.broker.stopped() => return,
            };
            let mut changed = std::collections::BTreeSet::new();
            let mut note = |p: PathBuf| {
                let ext = p.extension().and_then(|e| e.to_str()).map(str::to_string);
                if matches!(ext.as_deref(), Some("wasm") | Some("toml")) {
                    if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                        changed.insert(stem.to_string());
                    }
                }
            };
            note(first);
            // Debounce: a copy arrives as several events.
            loop {
                match tokio::time::timeout(Duration::from_millis(250), rx.recv()).await {
                    Ok(Some(p)) => note(p),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            for name in changed {
                if self.dir.join(format!("{name}.wasm")).exists() {
                    let _ = self.load_if_changed(&name).await;
                } else {
                    self.unload(&name).await;
                }
            }
        }
    }
}

/// A watch on the plugins directory and the paths it reports.
pub struct Watching {
    watcher: notify::RecommendedWatcher,
    rx: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
}

/// Whether a watcher event can mean new content: created, written, renamed or removed.
/// Opens, reads and metadata changes (`touch`, `chmod`) are not.
fn changes_content(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// The files of one plugin as read for a load, and their digest.
struct Sources {
    wasm: Vec<u8>,
    toml: Option<String>,
    digest: [u8; 32],
}

impl Sources {
    fn read(dir: &Path, name: &str) -> Result<Self, PluginError> {
        let wasm_path = dir.join(format!("{name}.wasm"));
        let wasm = std::fs::read(&wasm_path)
            .map_err(|e| PluginError::Load(format!("{}: {e}", wasm_path.display())))?;
        let toml_path = dir.join(format!("{name}.toml"));
        let toml = match std::fs::read_to_string(&toml_path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(PluginError::Load(format!("{}: {e}", toml_path.display()))),
        };
        let mut h = Sha256::new();
        h.update(Sha256::digest(&wasm));
        h.update(
            toml.as_deref()
                .map(|t| Sha256::digest(t.as_bytes()))
                .unwrap_or_default(),
        );
        h.update([u8::from(toml.is_some())]);
        Ok(Self {
            wasm,
            toml,
            digest: h.finalize().into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind, RenameMode};

    #[test]
    fn only_content_changes_count() {
        for k in [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Any,
        ] {
            assert!(!changes_content(&k), "{k:?}");
        }
        for k in [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ] {
            assert!(changes_content(&k), "{k:?}");
        }
    }
}
