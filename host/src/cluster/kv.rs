//! Plugins' kv stores cluster-wide (decision 0023): one JetStream KV bucket per plugin
//! holds its keys, and every node keeps a replica in its own store that serves reads, so
//! `get` and `list-keys` cost what they cost on one node. A watch applies the bucket's
//! entries to the replica in the bucket's order; a node's own writes go to the bucket
//! first and are applied when it answers, their revision ordering them against what the
//! watch brings. The bucket is the truth: a node that opens it drops the keys of its
//! replica the bucket lacks, except the node that makes it, which copies its keys in.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use futures_util::StreamExt;
use parking_lot::Mutex;

/// How long a kv call waits for the bucket to open and the replica to catch up.
const READY_WAIT: Duration = Duration::from_secs(5);

/// A plugin's kv store on this node, which the bucket's entries are applied to.
pub trait Replica: Send + Sync + 'static {
    /// Sets `key` (Some) or deletes it (None).
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String>;
    /// Every key and value held.
    fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, String>;
}

/// Counters of the plugins' kv traffic, on `/metrics`.
#[derive(Debug, Default)]
pub struct KvCounters {
    /// Writes this node made to the buckets.
    pub written: AtomicU64,
    /// Writes the buckets refused (e.g. a value past NATS's `max_payload`).
    pub failed: AtomicU64,
    /// Entries of other nodes applied here.
    pub applied: AtomicU64,
    /// Entries that are not Apiary's (written by hand), skipped.
    pub undecodable: AtomicU64,
}

/// Where a plugin's bucket stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvState {
    /// Opening the bucket or catching up with it.
    Opening,
    /// Shared through the bucket.
    Shared,
    /// The bucket cannot be opened (JetStream off?): the store stays per node while
    /// the node keeps trying.
    Local(String),
}

/// What the watch and this node's writes have applied to the replica.
#[derive(Debug, Default)]
struct Order {
    /// The last revision the watch applied (it brings revisions in order).
    watched: u64,
    /// Own writes applied ahead of the watch, by key.
    own: HashMap<String, u64>,
}

/// One plugin's bucket on this node.
pub struct PluginBucket {
    name: String,
    js: jetstream::Context,
    replica: Arc<dyn Replica>,
    state: tokio::sync::watch::Sender<KvState>,
    store: OnceLock<kv::Store>,
    order: Mutex<Order>,
    counters: Arc<KvCounters>,
    /// This node's writes, one at a time, so that a quota check and its write are one.
    pub writes: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for PluginBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginBucket")
            .field("name", &self.name)
            .finish()
    }
}

/// The bucket of plugin `plugin`: `apiary-kv-<name>`, the name in base64url when it has
/// characters a stream name cannot.
pub fn bucket_name(plugin: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !plugin.is_empty() && plugin.chars().all(plain) {
        format!("apiary-kv-{plugin}")
    } else {
        format!("apiary-kvx-{}", B64.encode(plugin))
    }
}

/// A plugin's key as a bucket key: any string, as `k` and its bytes in base64url (NATS
/// keys take only some characters; the order of keys matters only in the replica).
fn encode_key(key: &str) -> String {
    format!("k{}", B64.encode(key))
}

fn decode_key(key: &str) -> Option<String> {
    let bytes = B64.decode(key.strip_prefix('k')?).ok()?;
    String::from_utf8(bytes).ok()
}

impl PluginBucket {
    /// A bucket for plugin `plugin` over `replica`; [`PluginBucket::run`] opens it.
    pub(super) fn new(
        plugin: &str,
        js: jetstream::Context,
        replica: Arc<dyn Replica>,
        counters: Arc<KvCounters>,
    ) -> Self {
        Self {
            name: bucket_name(plugin),
            js,
            replica,
            state: tokio::sync::watch::Sender::new(KvState::Opening),
            store: OnceLock::new(),
            order: Mutex::default(),
            counters,
            writes: tokio::sync::Mutex::new(()),
        }
    }

    /// The bucket's state.
    pub fn state(&self) -> KvState {
        self.state.borrow().clone()
    }

    /// Waits (a bounded time) until the bucket is open and the replica caught up: true
    /// when shared, false when the store is per node for now.
    pub async fn ready(&self) -> Result<bool, String> {
        let mut rx = self.state.subscribe();
        let waited =
            tokio::time::timeout(READY_WAIT, rx.wait_for(|s| !matches!(s, KvState::Opening))).await;
        match waited {
            Ok(Ok(s)) => Ok(*s == KvState::Shared),
            Ok(Err(_)) => Err("the cluster is stopping".into()),
            Err(_) => Err(format!(
                "the cluster's kv bucket {} is still opening",
                self.name
            )),
        }
    }

    /// Writes `key` (None: deletes it) to the bucket, then to the replica unless the
    /// watch has already brought this write or a later one.
    pub async fn write(self: &Arc<Self>, key: &str, value: Option<Vec<u8>>) -> Result<(), String> {
        let store = self
            .store
            .get()
            .ok_or("the cluster's kv bucket is not open")?;
        let subject = encode_key(key);
        let sent = match &value {
            Some(v) => store
                .put(&subject, bytes::Bytes::copy_from_slice(v))
                .await
                .map_err(|e| e.to_string()),
            None => self.delete_marker(&subject).await,
        };
        let revision = sent.inspect_err(|e| {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(bucket = %self.name, error = %e, "cluster: kv write refused");
        })?;
        self.counters.written.fetch_add(1, Ordering::Relaxed);
        let (me, key) = (self.clone(), key.to_string());
        tokio::task::spawn_blocking(move || {
            let mut order = me.order.lock();
            if revision <= order.watched {
                return Ok(()); // The watch brought it, or a later write of the key.
            }
            me.replica.apply(&key, value.as_deref())?;
            order.own.insert(key, revision);
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Deletes a key as NATS KV does (a `KV-Operation: DEL` marker), returning the
    /// marker's revision, which `kv::Store::delete` does not tell.
    async fn delete_marker(&self, key: &str) -> Result<u64, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("KV-Operation", "DEL");
        let ack = self
            .js
            .publish_with_headers(
                format!("$KV.{}.{key}", self.name),
                headers,
                bytes::Bytes::new(),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(ack.sequence)
    }

    /// Opens the bucket (retrying while it cannot), catches the replica up with it, then
    /// applies its entries as they come, until aborted.
    pub(super) async fn run(self: Arc<Self>, replicas: usize) {
        let (store, watch, pending) = self.open(replicas).await;
        let _ = self.store.set(store.clone());
        let mut watch = self.catch_up(watch, pending).await;
        self.state.send_replace(KvState::Shared);
        tracing::info!(bucket = %self.name, "cluster: plugin kv shared");
        loop {
            while let Some(e) = watch.next().await {
                match e {
                    Ok(e) => self.apply_watched(e).await,
                    Err(e) => {
                        tracing::debug!(bucket = %self.name, error = %e, "cluster: kv watch ended");
                        break;
                    }
                }
            }
            watch = loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let from = self.order.lock().watched + 1;
                match store.watch_all_from_revision(from).await {
                    Ok(w) => break w,
                    Err(e) => {
                        tracing::warn!(bucket = %self.name, error = %e, "cluster: cannot watch a plugin's kv")
                    }
                }
            };
        }
    }

    /// The bucket (made when missing, then seeded with the replica's keys), a watch of
    /// its last entry per key, and how many messages it held then.
    async fn open(&self, replicas: usize) -> (kv::Store, kv::Watch, u64) {
        let mut backoff = Duration::from_millis(250);
        loop {
            match self.try_open(replicas).await {
                Ok(o) => return o,
                Err(e) => {
                    if !matches!(self.state(), KvState::Local(_)) {
                        tracing::warn!(bucket = %self.name, error = %e, "cluster: no JetStream bucket for a plugin's kv (is JetStream on?); it stays per node until there is");
                    }
                    self.state.send_replace(KvState::Local(e));
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn try_open(&self, replicas: usize) -> Result<(kv::Store, kv::Watch, u64), String> {
        let about = "Apiary: a plugin's kv store";
        let store = super::bucket::open(&self.js, &self.name, about, replicas).await?;
        let mut stream = self
            .js
            .get_stream(format!("KV_{}", self.name))
            .await
            .map_err(|e| e.to_string())?;
        let mut held = stream
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .messages;
        if held == 0 {
            // A new bucket: this node's keys (from before the cluster) go in.
            let replica = self.replica.clone();
            let mine = tokio::task::spawn_blocking(move || replica.entries())
                .await
                .map_err(|e| e.to_string())??;
            for (k, v) in mine {
                store
                    .put(encode_key(&k), v.into())
                    .await
                    .map_err(|e| e.to_string())?;
                held += 1;
            }
        }
        let watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        Ok((store, watch, held))
    }

    /// Applies the bucket's last entry of every key, then drops the replica's keys the
    /// bucket does not have; returns the watch, now live.
    async fn catch_up(self: &Arc<Self>, mut watch: kv::Watch, held: u64) -> kv::Watch {
        let mut seen = HashSet::new();
        if held > 0 {
            while let Some(e) = watch.next().await {
                let Ok(e) = e else { break };
                let last = e.delta == 0;
                if let Some(k) = decode_key(&e.key) {
                    seen.insert(k);
                }
                self.apply_watched(e).await;
                if last {
                    break;
                }
            }
        }
        let replica = self.replica.clone();
        let stale = tokio::task::spawn_blocking(move || {
            let keys = replica.entries()?;
            let mut dropped = 0;
            for (k, _) in keys.iter().filter(|(k, _)| !seen.contains(k)) {
                replica.apply(k, None)?;
                dropped += 1;
            }
            Ok::<_, String>(dropped)
        })
        .await;
        match stale.map_err(|e| e.to_string()) {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                tracing::warn!(bucket = %self.name, dropped = n, "cluster: this node's kv keys that the plugin's bucket lacks were dropped (the bucket holds the cluster's store)")
            }
            Err(e) | Ok(Err(e)) => {
                tracing::warn!(bucket = %self.name, error = %e, "cluster: a plugin's kv replica kept keys the bucket lacks")
            }
        }
        watch
    }

    /// Applies an entry of the watch, unless an own write of its key is newer.
    async fn apply_watched(self: &Arc<Self>, e: kv::Entry) {
        let Some(key) = decode_key(&e.key) else {
            self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let value = (e.operation == kv::Operation::Put).then_some(e.value);
        let me = self.clone();
        let applied = tokio::task::spawn_blocking(move || {
            let mut order = me.order.lock();
            order.watched = order.watched.max(e.revision);
            match order.own.get(&key) {
                Some(&mine) if mine > e.revision => return Ok(false),
                Some(_) => {
                    order.own.remove(&key);
                }
                None => {}
            }
            me.replica.apply(&key, value.as_deref()).map(|()| true)
        })
        .await;
        match applied {
            Ok(Ok(true)) => {
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                tracing::warn!(bucket = %self.name, error = %e, "cluster: a plugin's kv entry not applied")
            }
            Err(e) => tracing::warn!(error = %e, "cluster: kv apply task failed"),
        }
    }
}

impl super::Cluster {
    /// Plugin `plugin`'s kv bucket on this node, opened at its first use over the
    /// replica `replica` makes (a plugin that never uses its kv costs nothing).
    pub fn plugin_kv(
        &self,
        plugin: &str,
        replica: impl FnOnce() -> Arc<dyn Replica>,
    ) -> Arc<PluginBucket> {
        let mut open = self.plugin_kvs.lock();
        if let Some((b, _)) = open.get(plugin) {
            return b.clone();
        }
        let js = jetstream::new(self.client.clone());
        let b = Arc::new(PluginBucket::new(
            plugin,
            js,
            replica(),
            self.kv_counters.clone(),
        ));
        let task = tokio::spawn(b.clone().run(self.settings.replicas)).abort_handle();
        open.insert(plugin.to_string(), (b.clone(), task));
        b
    }

    /// The plugins' kv lines on `/metrics`.
    pub(super) fn kv_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.kv_counters;
        for (name, help, v) in [
            (
                "apiary_cluster_kv_written_total",
                "Plugins' kv writes this node made to their buckets.",
                &c.written,
            ),
            (
                "apiary_cluster_kv_failed_total",
                "Plugins' kv writes the buckets refused (the plugin got an error).",
                &c.failed,
            ),
            (
                "apiary_cluster_kv_applied_total",
                "Plugins' kv entries from the buckets applied here.",
                &c.applied,
            ),
            (
                "apiary_cluster_kv_undecodable_total",
                "Entries of plugins' kv buckets not written by Apiary, skipped.",
                &c.undecodable,
            ),
        ] {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_and_keys_take_any_plugin_name_and_key() {
        assert_eq!(bucket_name("beebotte"), "apiary-kv-beebotte");
        assert_eq!(bucket_name("my_plugin-2"), "apiary-kv-my_plugin-2");
        assert_eq!(
            bucket_name("a.b"),
            format!("apiary-kvx-{}", B64.encode("a.b"))
        );
        for k in ["", "ev/00000001", "a b.c*>", "ünï"] {
            let e = encode_key(k);
            assert!(
                e.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{e}"
            );
            assert_eq!(decode_key(&e).as_deref(), Some(k));
        }
        assert_eq!(decode_key("zz"), None);
        assert_eq!(decode_key("k!!"), None);
    }
}
