//! The loaded plugin set. Loading compiles and initialises the new version first and
//! swaps it in atomically; calls in flight finish on the version they started with; a
//! version that fails to compile or init leaves the previous one serving. A directory
//! watcher (debounced) loads added files, reloads changed ones, and unloads removed ones.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tracing::{info, warn};

use super::manifest::Manifest;
use super::runtime::{LoadedPlugin, PluginContext, PluginError, Runtime};
use crate::broker::Broker;

/// What `GET /plugins` shows about one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginInfo {
    /// Name (the file stem).
    pub name: String,
    /// Short content hash of the serving version.
    pub version: Option<String>,
    /// Roles it serves.
    pub roles: Vec<&'static str>,
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
}

/// Every loaded plugin.
pub struct PluginManager {
    runtime: Arc<Runtime>,
    dir: PathBuf,
    broker: Broker,
    plugins: RwLock<BTreeMap<String, Arc<LoadedPlugin>>>,
    load_errors: RwLock<BTreeMap<String, String>>,
    listeners: Mutex<HashMap<String, (std::net::SocketAddr, tokio::task::JoinHandle<()>)>>,
    serial: tokio::sync::Mutex<()>,
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
    /// A manager over `dir`, compiling into `cache_dir`.
    pub fn new(dir: &Path, cache_dir: &Path, broker: Broker) -> Result<Arc<Self>, PluginError> {
        Ok(Arc::new(Self {
            runtime: Runtime::new(cache_dir)?,
            dir: dir.to_path_buf(),
            broker,
            plugins: RwLock::new(BTreeMap::new()),
            load_errors: RwLock::new(BTreeMap::new()),
            listeners: Mutex::new(HashMap::new()),
            serial: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        }))
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

    /// Loads or reloads `NAME.wasm` (+ `NAME.toml`). On failure the previous version, if
    /// any, keeps serving and the error is recorded.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        let _serial = self.serial.lock().await;
        let r = self.load_inner(name).await;
        match &r {
            Ok(p) => {
                self.load_errors.write().remove(name);
                info!(plugin = name, version = &p.hash[..12], roles = ?p.roles(), "plugin loaded");
            }
            Err(e) => {
                warn!(plugin = name, error = %e, "plugin failed to load; any previous version keeps serving");
                self.load_errors
                    .write()
                    .insert(name.to_string(), e.to_string());
            }
        }
        r
    }

    async fn load_inner(self: &Arc<Self>, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        let wasm = self.dir.join(format!("{name}.wasm"));
        let bytes = std::fs::read(&wasm)
            .map_err(|e| PluginError::Load(format!("{}: {e}", wasm.display())))?;
        let manifest =
            Manifest::load(&self.dir.join(format!("{name}.toml"))).map_err(PluginError::Load)?;
        let rt = self.runtime.clone();
        let (component, hash) = tokio::task::spawn_blocking(move || rt.compile(&bytes))
            .await
            .map_err(|e| PluginError::Load(e.to_string()))??;
        let prepared = self.runtime.prepare(&component)?;
        let listen = manifest.listen;
        let ctx = Arc::new(PluginContext {
            name: name.to_string(),
            manifest,
            broker: self.broker.clone(),
        });
        let plugin = LoadedPlugin::new(ctx, prepared, hash, &self.runtime).await?;
        // A new listen address is bound before the swap: if it fails, the old version
        // (and its listener) keeps serving.
        let current = self.listeners.lock().get(name).map(|(a, _)| *a);
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
        let old = match bound {
            Some((addr, l)) => {
                let h = tokio::spawn(crate::http::serve_plugin(
                    l,
                    self.broker.clone(),
                    name.to_string(),
                ));
                self.listeners.lock().insert(name.to_string(), (addr, h))
            }
            None if listen.is_none() => self.listeners.lock().remove(name),
            None => None,
        };
        if let Some((_, h)) = old {
            h.abort();
        }
        Ok(plugin)
    }

    /// Unloads a plugin (its dedicated listener stops; calls in flight finish).
    pub async fn unload(&self, name: &str) -> bool {
        let _serial = self.serial.lock().await;
        self.load_errors.write().remove(name);
        if let Some((_, h)) = self.listeners.lock().remove(name) {
            h.abort();
        }
        let gone = self.plugins.write().remove(name).is_some();
        self.set_changed();
        if gone {
            info!(plugin = name, "plugin unloaded");
        }
        gone
    }

    /// The serving version of a plugin.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.read().get(name).cloned()
    }

    /// The http plugin whose mount is the longest prefix of `path`, with the rest of it.
    pub fn http_route(&self, path: &str) -> Option<(Arc<LoadedPlugin>, String)> {
        let plugins = self.plugins.read();
        let mut best: Option<(&Arc<LoadedPlugin>, usize)> = None;
        for p in plugins.values() {
            let Some(mount) = p.ctx.manifest.mount.as_deref() else {
                continue;
            };
            let fits = mount == "/"
                || path == mount
                || (path.starts_with(mount) && path.as_bytes().get(mount.len()) == Some(&b'/'));
            if fits && p.roles().contains(&"http") && best.is_none_or(|(_, l)| mount.len() > l) {
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
        let auth = self
            .plugins
            .read()
            .values()
            .filter(|p| p.roles().contains(&"auth"))
            .count();
        self.broker.acl.plugins_changed(auth);
        self.changed.notify_one();
    }

    /// Plugins serving the auth role, in priority order.
    pub fn auth_chain(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut v: Vec<_> = self
            .plugins
            .read()
            .values()
            .filter(|p| p.roles().contains(&"auth"))
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
            .filter(|p| p.roles().contains(&"events"))
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
        for (name, p) in self.plugins.read().iter() {
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
                });
        }
        out.into_values().collect()
    }

    /// Watches the directory until shutdown: `.wasm`/`.toml` changes settle for 250 ms,
    /// then each affected plugin is loaded, reloaded or unloaded.
    pub async fn watch(self: Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
        let mut watcher =
            match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if let Ok(ev) = ev {
                    for p in ev.paths {
                        let _ = tx.send(p);
                    }
                }
            }) {
                Ok(w) => w,
                Err(e) => {
                    warn!(error = %e, "cannot watch the plugins directory; hot loading is off");
                    return;
                }
            };
        let _ = std::fs::create_dir_all(&self.dir);
        if let Err(e) = watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            warn!(dir = %self.dir.display(), error = %e, "cannot watch the plugins directory; hot loading is off");
            return;
        }
        let mut shutdown = self.broker.shutdown_signal();
        loop {
            let first = tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = shutdown.changed() => return,
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
                    let _ = self.load(&name).await;
                } else {
                    self.unload(&name).await;
                }
            }
        }
    }
}
