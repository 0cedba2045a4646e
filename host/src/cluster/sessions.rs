//! Persistent sessions of a node that dies (decision 0023). Each node keeps the record
//! and subscriptions of its persistent sessions in the JetStream KV bucket
//! `apiary-sessions` under `<node>.<tenant>.<client id>`, rewritten (coalesced) when they
//! change and deleted when the session ends or moves. When a node is marked down, the
//! node that sees to its wills adopts its sessions: it restores each one here,
//! disconnected, with its subscriptions, so messages published for it from then on are
//! queued, and a client resuming on any node takes it over as from a live node. What the
//! dead node held for them (queued and in-flight messages) is lost with it. A node that
//! comes back drops the sessions that were adopted meanwhile (their keys were deleted).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parking_lot::Mutex;

use super::subject;
use crate::broker::Broker;
use crate::store::records::{SessionRecord, SubRecord};
use crate::store::recovery::{self, Recovered, StoredSession};

/// The bucket's name in JetStream.
const BUCKET: &str = "apiary-sessions";

/// How long changes gather before they are written (one write per session).
const COALESCE: Duration = Duration::from_millis(50);

/// A persistent session as the bucket keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Kept {
    tenant: String,
    client_id: String,
    record: SessionRecord,
    subs: Vec<SubRecord>,
}

/// Counters of the kept sessions, on `/metrics`.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Writes the bucket refused (e.g. a session over NATS's `max_payload`), and
    /// entries that could not be read.
    pub failed: AtomicU64,
    /// Sessions of dead nodes adopted here.
    pub adopted: AtomicU64,
    /// Sessions restored here at start that another node had adopted, dropped.
    pub dropped: AtomicU64,
}

/// This node's side of the bucket.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Sessions changed since the last write.
    dirty: Mutex<HashSet<(Arc<str>, Arc<str>)>>,
    wake: tokio::sync::Notify,
    /// Keys this node has put and not deleted (a session never kept costs no delete).
    held: Mutex<HashSet<String>>,
    store: OnceLock<kv::Store>,
    /// The counters.
    pub counters: SessionCounters,
}

impl Sessions {
    /// The session of `client_id` changed (its record, subscriptions, or its end):
    /// written to the bucket shortly.
    pub(super) fn changed(&self, tenant: &Arc<str>, client_id: &Arc<str>) {
        self.dirty
            .lock()
            .insert((tenant.clone(), client_id.clone()));
        self.wake.notify_one();
    }

    /// Opens the bucket (retrying while it cannot), drops the sessions restored here
    /// that were adopted elsewhere, then writes changes until the broker stops.
    pub(super) async fn run(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        replicas: usize,
        b: Broker,
        node: String,
    ) {
        let about = "Apiary: the persistent sessions of each node";
        let mut backoff = Duration::from_millis(250);
        let store = loop {
            tokio::select! {
                s = super::bucket::open(&js, BUCKET, about, replicas) => match s {
                    Ok(s) => break s,
                    Err(e) => tracing::debug!(error = %e, "cluster: no sessions bucket yet"),
                },
                _ = b.stopped() => return,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        };
        let store = self.store.get_or_init(|| store);
        self.drop_adopted(store, &b, &node).await;
        for s in b.registry.sessions_of(None) {
            if s.is_persistent() {
                self.changed(&s.tenant, &s.client_id);
            }
        }
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = b.stopped() => return,
            }
            tokio::time::sleep(COALESCE).await;
            let batch = std::mem::take(&mut *self.dirty.lock());
            for (tenant, client_id) in batch {
                self.write(store, &b, &node, &tenant, &client_id).await;
            }
        }
    }

    /// Writes a session as it is now, or deletes its key when it is no longer kept here.
    async fn write(&self, store: &kv::Store, b: &Broker, node: &str, tenant: &str, cid: &str) {
        let key = subject::will_key(node, tenant, cid);
        let kept = b.registry.get(tenant, cid).and_then(|s| {
            let st = s.state.lock();
            (s.is_persistent() && !st.ended).then(|| Kept {
                tenant: tenant.to_string(),
                client_id: cid.to_string(),
                record: recovery::session_record(&s, &st),
                subs: st
                    .subscriptions
                    .iter()
                    .map(|(f, o)| recovery::sub_record(f, o))
                    .collect(),
            })
        });
        let r = match kept.map(|k| rmp_serde::to_vec_named(&k)) {
            Some(Ok(v)) => {
                self.held.lock().insert(key.clone());
                let put = store.put(&key, v.into()).await;
                put.map(|_| ()).map_err(|e| e.to_string())
            }
            Some(Err(e)) => Err(e.to_string()),
            None if self.held.lock().remove(&key) => {
                store.delete(&key).await.map_err(|e| e.to_string())
            }
            None => Ok(()),
        };
        if let Err(e) = r {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%key, error = %e, "cluster: a persistent session was not kept in the bucket");
        }
    }

    /// Drops the sessions restored here whose key another node deleted (adopted while
    /// this node was down), their wills included (published by the adopter).
    async fn drop_adopted(&self, store: &kv::Store, b: &Broker, node: &str) {
        for s in b.registry.sessions_of(None) {
            if !s.is_persistent() || s.info.read().connected {
                continue;
            }
            let key = subject::will_key(node, &s.tenant, &s.client_id);
            let entry = store.entry(key).await;
            if matches!(entry, Ok(Some(e)) if e.operation != kv::Operation::Put) {
                *s.will.lock() = None;
                b.will_changed(&s);
                b.discard(&s, "adopted");
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::info!(tenant = %s.tenant, client_id = %s.client_id, "cluster: a session adopted by another node while this one was down was dropped here");
            }
        }
    }

    /// Adopts the persistent sessions `node` left in the bucket: each one not kept by
    /// another node (it moved there first) is restored here, and its key deleted.
    /// Returns the keys of those restored with a will delay running (their wills wait
    /// here for the delay, or for the client to come back).
    pub(super) async fn adopt(
        &self,
        b: &Broker,
        cluster: &super::Cluster,
        node: &str,
    ) -> HashSet<String> {
        let mut delayed = HashSet::new();
        let Some(store) = self.store.get() else {
            return delayed;
        };
        let Ok(mut keys) = store.keys().await else {
            return delayed;
        };
        let prefix = format!("{node}.");
        let (mut theirs, mut elsewhere) = (Vec::new(), HashSet::new());
        while let Some(Ok(k)) = keys.next().await {
            match k.strip_prefix(&prefix) {
                Some(rest) => theirs.push((k.clone(), rest.to_string())),
                None => {
                    elsewhere.insert(k.split_once('.').map_or("", |(_, r)| r).to_string());
                }
            }
        }
        for (key, rest) in theirs {
            if !elsewhere.contains(&rest) {
                match store
                    .get(&key)
                    .await
                    .map(|v| v.map(|v| rmp_serde::from_slice(&v)))
                {
                    Ok(Some(Ok(k))) => {
                        if self.restore(b, cluster, k).await {
                            delayed.insert(key.clone());
                        }
                    }
                    Ok(None) => {}
                    Ok(Some(Err(e))) => self.unreadable(&key, &e.to_string()),
                    Err(e) => self.unreadable(&key, &e.to_string()),
                }
            }
            let _ = store.delete(&key).await;
        }
        delayed
    }

    fn unreadable(&self, key: &str, e: &str) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%key, error = %e, "cluster: a dead node's session could not be read");
    }

    /// Restores an adopted session here, disconnected now (its expiry and will delay
    /// run from here), unless its client id already has a session here (it resumed
    /// meanwhile). Whether its will was kept, to wait for its delay here.
    async fn restore(&self, b: &Broker, cluster: &super::Cluster, mut k: Kept) -> bool {
        // As a CONNECT does: one at a time per client id.
        let _serial = b.connect_lock(&k.tenant, &k.client_id).lock().await;
        if b.registry.get(&k.tenant, &k.client_id).is_some() {
            return false;
        }
        // A will without a delay is published with the dead node's wills, at once.
        k.record.will = k.record.will.filter(|w| w.delay_secs > 0);
        let delayed = k.record.will.is_some();
        k.record.disconnected_ms = None;
        let subs = k.subs.clone();
        b.restore(Recovered {
            sessions: vec![StoredSession {
                tenant: k.tenant.clone(),
                client_id: k.client_id.clone(),
                record: k.record,
                subs: k.subs,
                inbox: Vec::new(),
                rel: Vec::new(),
            }],
            ..Default::default()
        });
        let Some(s) = b.registry.get(&k.tenant, &k.client_id) else {
            return false;
        };
        b.store_subscriptions(&s, &subs);
        {
            // Under the session's lock, as subscribe and unsubscribe change both.
            let st = s.state.lock();
            for f in st.subscriptions.keys() {
                let (group, filter) = crate::topic::split_share(f);
                cluster.interest_add(&s.tenant, group, filter);
            }
        }
        b.session_changed(&s);
        self.counters.adopted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(tenant = %s.tenant, client_id = %s.client_id, "cluster: adopted a dead node's session");
        if delayed {
            b.will_changed(&s); // Kept for if this node dies too.
        }
        delayed
    }
}
