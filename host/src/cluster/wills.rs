//! Wills of a node that dies (decision 0023). While a session of a node has a will
//! pending (its connection is up, or its will delay runs), the will is in the JetStream
//! KV bucket `apiary-wills` under `<node>.<tenant>.<client id>`; it is deleted when the
//! will is published or dropped. When a node stops being heard from (killed, cut off)
//! or comes back as a new incarnation, one surviving node (the first by name among those
//! running) publishes that node's wills left in the bucket and deletes them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{subject, wire};
use crate::broker::Broker;
use crate::session::Will;

/// The bucket's name in JetStream.
const BUCKET: &str = "apiary-wills";

/// A change to queue for the bucket.
#[derive(Debug)]
pub(super) enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Counters of the wills kept for node failures, on `/metrics`.
#[derive(Debug, Default)]
pub struct WillCounters {
    /// Changes not queued (queue full).
    pub dropped: AtomicU64,
    /// Changes the bucket refused.
    pub failed: AtomicU64,
    /// Wills of dead nodes this node published.
    pub published: AtomicU64,
}

/// This node's side of the wills bucket.
#[derive(Debug)]
pub struct Wills {
    tx: mpsc::Sender<Op>,
    store: OnceLock<kv::Store>,
    /// Keys this node has put and not yet deleted (so a connection without a will
    /// costs nothing).
    held: Mutex<HashSet<String>>,
    /// The counters.
    pub counters: WillCounters,
}

impl Wills {
    /// A side whose changes wait in a queue of `capacity` for [`Wills::run`].
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel(capacity);
        let w = Self {
            tx,
            store: OnceLock::new(),
            held: Mutex::default(),
            counters: WillCounters::default(),
        };
        (w, rx)
    }

    /// The will pending for a session of this node is now `will` (None: none).
    pub(super) fn set(
        &self,
        node: &str,
        origin: &str,
        tenant: &str,
        client_id: &str,
        will: Option<&Will>,
    ) {
        let key = subject::will_key(node, tenant, client_id);
        let mut held = self.held.lock();
        let op = match will {
            Some(w) => {
                held.insert(key.clone());
                Op::Put(key, wire::encode(origin, 0, &w.msg))
            }
            None if held.remove(&key) => Op::Delete(key),
            None => return,
        };
        if self.tx.try_send(op).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens the bucket (retrying while it cannot), then applies the queued changes
    /// in order until the broker stops.
    pub(super) async fn run(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        replicas: usize,
        mut rx: mpsc::Receiver<Op>,
        b: Broker,
        node: String,
    ) {
        let about = "Apiary: the pending wills of each node's sessions";
        let mut backoff = Duration::from_millis(250);
        let store = loop {
            tokio::select! {
                s = super::bucket::open(&js, BUCKET, about, replicas) => match s {
                    Ok(s) => break s,
                    Err(e) => tracing::debug!(error = %e, "cluster: no wills bucket yet"),
                },
                _ = b.stopped() => return,
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        };
        let store = self.store.get_or_init(|| store);
        loop {
            let op = tokio::select! {
                op = rx.recv() => match op { Some(op) => op, None => return },
                _ = b.stopped() => {
                    // A node that stops on purpose sees to its own wills (published as its
                    // connections close, or kept in its store): none is left for the
                    // others to publish again. Bounded: shutdown waits for this task.
                    let purge = self.take_all(store, &node, |_, _| true);
                    let _ = tokio::time::timeout(Duration::from_secs(2), purge).await;
                    return;
                }
            };
            let r = match op {
                Op::Put(k, v) => store
                    .put(k, v.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Op::Delete(k) => store.delete(k).await.map_err(|e| e.to_string()),
            };
            if let Err(e) = r {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "cluster: a will change was not stored");
            }
        }
    }

    /// Publishes (here, to the whole cluster) and deletes the wills `node` left, but
    /// those of its incarnation `live` (a node that came back keeps its own); the keys
    /// in `adopted` are only deleted (their sessions were adopted here with the will
    /// still waiting for its delay).
    pub(super) async fn orphaned(
        &self,
        b: &Broker,
        node: &str,
        live: Option<&str>,
        adopted: &HashSet<String>,
    ) {
        let Some(store) = self.store.get() else {
            return;
        };
        self.take_all(store, node, |key, env| {
            if live.is_some_and(|l| l == env.origin) {
                return false;
            }
            if adopted.contains(key) {
                return true;
            }
            let mut msg = env.into_message();
            msg.received = std::time::Instant::now();
            b.publish_detached(msg, "a dead node's will");
            self.counters.published.fetch_add(1, Ordering::Relaxed);
            true
        })
        .await;
    }

    /// Deletes the wills `node` left in the bucket that `take` takes (true).
    async fn take_all(
        &self,
        store: &kv::Store,
        node: &str,
        mut take: impl FnMut(&str, wire::Envelope) -> bool,
    ) {
        let prefix = format!("{node}.");
        let Ok(mut keys) = store.keys().await else {
            return;
        };
        let mut mine = Vec::new();
        while let Some(k) = keys.next().await {
            match k {
                Ok(k) if k.starts_with(&prefix) => mine.push(k),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for k in mine {
            let Ok(Some(v)) = store.get(&k).await else {
                continue;
            };
            let taken = wire::decode(&v).map(|e| take(&k, e)).unwrap_or(true);
            if taken {
                let _ = store.delete(&k).await;
            }
        }
    }
}
