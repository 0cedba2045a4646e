//! The `kv` host interface: a plugin's private durable key-value store in the broker's
//! store, bounded by the quota in its toml (`kv_max_keys`, `kv_max_bytes`). Store I/O
//! runs on the blocking pool, never on a runtime thread. A plugin's usage is counted by
//! one scan of its keys at first use and kept up to date by every write after, under a
//! lock per plugin, so concurrent instances cannot overshoot the quota together. In a
//! cluster the store is a replica of the plugin's bucket (`cluster/kv.rs`): reads stay
//! here, writes go through the bucket.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::bindings::apiary::plugin::{kv, types};
use super::manifest::Capability;
use super::runtime::PluginState;
use crate::cluster::{PluginBucket, Replica};
use crate::store::records::{kv_key, split_kv_key};
use crate::store::{Backend, Space, StoreError, Write};

type Error = types::Error;

/// Longest kv key a plugin may use.
const MAX_KEY: usize = 1024;
/// Largest kv value a plugin may store.
const MAX_VALUE: usize = 1 << 20;
/// Most keys one `list-keys` returns.
const MAX_LIST: usize = 10_000;

/// Keys and bytes (keys + values) one plugin holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// One plugin's kv account: its usage once counted. Shared by every version of the
/// plugin, so a reload does not recount (or forget) it.
#[derive(Debug, Default)]
pub struct Account(Mutex<Option<Usage>>);

/// The accounts of every plugin, by name.
#[derive(Debug, Default)]
pub struct Accounts(Mutex<HashMap<String, Arc<Account>>>);

impl Accounts {
    /// The account of plugin `name`.
    pub fn of(&self, name: &str) -> Arc<Account> {
        self.0.lock().entry(name.to_string()).or_default().clone()
    }
}

fn unavailable(e: StoreError) -> Error {
    Error::Unavailable(e.to_string())
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY {
        return Err(Error::InvalidArgument(format!(
            "kv keys are at most {MAX_KEY} bytes"
        )));
    }
    Ok(())
}

/// What one kv call needs, detached from the instance so it can run on the blocking pool.
#[derive(Clone)]
struct Job {
    backend: Arc<dyn Backend>,
    plugin: String,
    account: Arc<Account>,
    max_keys: u64,
    max_bytes: u64,
}

impl Job {
    fn usage(&self, slot: &mut Option<Usage>) -> Result<Usage, Error> {
        if let Some(u) = *slot {
            return Ok(u);
        }
        let mut u = Usage::default();
        self.backend
            .scan_prefix(Space::Kv, &kv_key(&self.plugin, ""), &mut |k, v| {
                u.keys += 1;
                u.bytes += (k.len() + v.len()) as u64;
                true
            })
            .map_err(unavailable)?;
        *slot = Some(u);
        Ok(u)
    }

    /// The usage after setting `key` to a value of `len` bytes, and the key as stored;
    /// with `quota`, refused past the plugin's quota.
    fn next_usage(
        &self,
        slot: &mut Option<Usage>,
        key: &str,
        len: usize,
        quota: bool,
    ) -> Result<(Usage, Vec<u8>), Error> {
        let k = kv_key(&self.plugin, key);
        let u = self.usage(slot)?;
        let old = self.backend.get(Space::Kv, &k).map_err(unavailable)?;
        let add = (k.len() + len) as u64;
        let next = match &old {
            Some(o) => Usage {
                keys: u.keys,
                bytes: u.bytes - (k.len() + o.len()) as u64 + add,
            },
            None => Usage {
                keys: u.keys + 1,
                bytes: u.bytes + add,
            },
        };
        if quota {
            self.within_quota(u, next)?;
        }
        Ok((next, k))
    }

    fn within_quota(&self, u: Usage, next: Usage) -> Result<(), Error> {
        if next.keys > self.max_keys && next.keys > u.keys {
            return Err(Error::QuotaExceeded(format!(
                "kv holds {} keys, its quota (kv_max_keys)",
                self.max_keys
            )));
        }
        if next.bytes > self.max_bytes && next.bytes > u.bytes {
            return Err(Error::QuotaExceeded(format!(
                "kv would hold {} bytes, over its quota of {} (kv_max_bytes)",
                next.bytes, self.max_bytes
            )));
        }
        Ok(())
    }

    /// Sets `key` within the quota.
    fn set(&self, key: &str, value: Vec<u8>) -> Result<(), Error> {
        let mut slot = self.account.0.lock();
        let (next, k) = self.next_usage(&mut slot, key, value.len(), true)?;
        self.backend
            .write(vec![Write::Put(Space::Kv, k, value)])
            .map_err(unavailable)?;
        *slot = Some(next);
        Ok(())
    }

    /// Whether setting `key` to a value of `len` bytes stays within the quota (a write
    /// through the cluster's bucket is checked here first).
    fn admits(&self, key: &str, len: usize) -> Result<(), Error> {
        let mut slot = self.account.0.lock();
        self.next_usage(&mut slot, key, len, true).map(|_| ())
    }

    fn delete(&self, key: &str) -> Result<bool, Error> {
        let k = kv_key(&self.plugin, key);
        let mut slot = self.account.0.lock();
        let u = self.usage(&mut slot)?;
        let Some(old) = self.backend.get(Space::Kv, &k).map_err(unavailable)? else {
            return Ok(false);
        };
        self.backend
            .write(vec![Write::Delete(Space::Kv, k.clone())])
            .map_err(unavailable)?;
        *slot = Some(Usage {
            keys: u.keys.saturating_sub(1),
            bytes: u.bytes.saturating_sub((k.len() + old.len()) as u64),
        });
        Ok(true)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.backend
            .get(Space::Kv, &kv_key(&self.plugin, key))
            .map_err(unavailable)
    }

    fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        if limit == 0 {
            return Ok(keys);
        }
        self.backend
            .scan_prefix(Space::Kv, &kv_key(&self.plugin, prefix), &mut |k, _| {
                if let Ok((_, key)) = split_kv_key(k) {
                    keys.push(key.to_string());
                }
                keys.len() < limit
            })
            .map_err(unavailable)?;
        Ok(keys)
    }
}

/// The plugin's store as the replica of its cluster bucket: what the bucket holds is set
/// here whatever the quota (every node holds the same keys; the quota is checked where a
/// write is made).
impl Replica for Job {
    fn apply(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Some(value) = value else {
            return self.delete(key).map(|_| ()).map_err(|e| format!("{e:?}"));
        };
        let mut slot = self.account.0.lock();
        let (next, k) = self
            .next_usage(&mut slot, key, value.len(), false)
            .map_err(|e| format!("{e:?}"))?;
        self.backend
            .write(vec![Write::Put(Space::Kv, k, value.to_vec())])
            .map_err(|e| e.to_string())?;
        *slot = Some(next);
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut out = Vec::new();
        self.backend
            .scan_prefix(Space::Kv, &kv_key(&self.plugin, ""), &mut |k, v| {
                if let Ok((_, key)) = split_kv_key(k) {
                    out.push((key.to_string(), v.to_vec()));
                }
                true
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

impl PluginState {
    fn kv_job(&self) -> Result<Job, Error> {
        self.check(Capability::Kv, None)?;
        let store = self
            .ctx
            .broker
            .store
            .as_ref()
            .ok_or_else(|| Error::Unavailable("no store".into()))?;
        if let Some(why) = store.failure() {
            return Err(Error::Unavailable(format!("the store failed: {why}")));
        }
        let m = &self.ctx.manifest;
        Ok(Job {
            backend: store.backend_arc(),
            plugin: self.ctx.name.clone(),
            account: self.ctx.kv.clone(),
            max_keys: m.kv_max_keys,
            max_bytes: m.kv_max_bytes,
        })
    }
}

impl PluginState {
    /// Runs a kv job on the blocking pool (time spent there is the host's, not the
    /// plugin's: see `PluginState::waiting`).
    async fn blocking<R: Send + 'static>(
        &mut self,
        job: Result<Job, Error>,
        f: impl FnOnce(Job) -> Result<R, Error> + Send + 'static,
    ) -> Result<R, Error> {
        let job = job?;
        self.waiting = true;
        let r = tokio::task::spawn_blocking(move || f(job))
            .await
            .unwrap_or_else(|e| Err(Error::Unavailable(format!("kv call failed: {e}"))));
        self.waiting = false;
        r
    }

    /// In a cluster, the plugin's bucket once this node's replica has caught up with
    /// it; None on a single node, or while the bucket cannot be opened (the store is per
    /// node meanwhile, as retained messages are).
    async fn bucket(&mut self, job: &Job) -> Result<Option<Arc<PluginBucket>>, Error> {
        let Some(cluster) = self.ctx.broker.cluster() else {
            return Ok(None);
        };
        let replica = job.clone();
        let bucket = cluster.plugin_kv(&self.ctx.name, move || {
            Arc::new(replica) as Arc<dyn Replica>
        });
        self.waiting = true;
        let ready = bucket.ready().await;
        self.waiting = false;
        match ready {
            Ok(true) => Ok(Some(bucket)),
            Ok(false) => Ok(None),
            Err(e) => Err(Error::Unavailable(e)),
        }
    }

    /// A kv job, with the plugin's bucket when in a cluster.
    async fn kv_call(&mut self, key: &str) -> Result<(Job, Option<Arc<PluginBucket>>), Error> {
        let job = check_key(key).and_then(|()| self.kv_job())?;
        let bucket = self.bucket(&job).await?;
        Ok((job, bucket))
    }

    /// Writes `key` through the cluster's bucket: this node's writes one at a time, a
    /// set checked against the quota first.
    async fn write_shared(
        &mut self,
        job: Job,
        bucket: Arc<PluginBucket>,
        key: String,
        value: Option<Vec<u8>>,
    ) -> Result<bool, Error> {
        self.waiting = true;
        let _one = bucket.writes.lock().await;
        let (k, len) = (key.clone(), value.as_ref().map(Vec::len));
        let checked = tokio::task::spawn_blocking(move || match len {
            Some(len) => job.admits(&k, len).map(|()| true),
            None => job.get(&k).map(|v| v.is_some()),
        })
        .await
        .unwrap_or_else(|e| Err(Error::Unavailable(format!("kv call failed: {e}"))));
        let r = match checked {
            Ok(true) => bucket
                .write(&key, value)
                .await
                .map(|()| true)
                .map_err(Error::Unavailable),
            other => other,
        };
        self.waiting = false;
        r
    }
}

impl kv::Host for PluginState {
    async fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let job = self.kv_call(&key).await.map(|(j, _)| j);
        Ok(self.blocking(job, move |j| j.get(&key)).await)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        if value.len() > MAX_VALUE {
            return Ok(Err(Error::InvalidArgument(format!(
                "kv values are at most {MAX_VALUE} bytes"
            ))));
        }
        Ok(match self.kv_call(&key).await {
            Ok((job, Some(b))) => self
                .write_shared(job, b, key, Some(value))
                .await
                .map(|_| ()),
            Ok((job, None)) => self.blocking(Ok(job), move |j| j.set(&key, value)).await,
            Err(e) => Err(e),
        })
    }

    async fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        Ok(match self.kv_call(&key).await {
            Ok((job, Some(b))) => self.write_shared(job, b, key, None).await,
            Ok((job, None)) => self.blocking(Ok(job), move |j| j.delete(&key)).await,
            Err(e) => Err(e),
        })
    }

    async fn list_keys(
        &mut self,
        prefix: String,
        limit: u32,
    ) -> wasmtime::Result<Result<Vec<String>, Error>> {
        if limit as usize > MAX_LIST {
            return Ok(Err(Error::InvalidArgument(format!(
                "list-keys returns at most {MAX_LIST} keys per call"
            ))));
        }
        let job = self.kv_call(&prefix).await.map(|(j, _)| j);
        Ok(self
            .blocking(job, move |j| j.list(&prefix, limit as usize))
            .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(dir: &std::path::Path, max_keys: u64, max_bytes: u64) -> Job {
        let b: Arc<dyn Backend> = Arc::new(crate::store::FjallBackend::open(dir).unwrap());
        Job {
            backend: b,
            plugin: "p".into(),
            account: Arc::new(Account::default()),
            max_keys,
            max_bytes,
        }
    }

    #[test]
    fn quota_counts_keys_and_bytes_and_listing_stops_at_its_limit() {
        let d = tempfile::tempdir().unwrap();
        let j = job(d.path(), 3, 1000);
        j.set("a1", vec![0; 10]).unwrap();
        j.set("a2", vec![0; 10]).unwrap();
        j.set("b", vec![0; 10]).unwrap();
        assert!(matches!(j.set("c", vec![]), Err(Error::QuotaExceeded(_))));
        j.set("a1", vec![0; 20])
            .expect("replacing is not a new key");
        assert_eq!(j.list("a", 10).unwrap(), vec!["a1", "a2"]);
        assert_eq!(j.list("", 2).unwrap(), vec!["a1", "a2"]);
        assert!(j.delete("b").unwrap());
        assert!(!j.delete("b").unwrap());
        j.set("c", vec![]).expect("room after a delete");
        let bytes = j.account.0.lock().unwrap().bytes;
        assert!(matches!(
            j.set("a2", vec![0; 990]),
            Err(Error::QuotaExceeded(_))
        ));
        assert_eq!(
            j.account.0.lock().unwrap().bytes,
            bytes,
            "a refused write counts nothing"
        );

        // A fresh account (another process, a reload) counts what is stored.
        let again = Job {
            account: Arc::new(Account::default()),
            ..j
        };
        let mut slot = None;
        assert_eq!(again.usage(&mut slot).unwrap().keys, 3);
    }
}
