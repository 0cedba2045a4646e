//! Retained messages cluster-wide (decision 0023): a JetStream KV bucket holds the last
//! retained message of every tenant and topic. Each node puts its own retained publishes
//! there (a clear is a put of an empty message, so every entry says who wrote it) and
//! applies every entry it watches to its own retained store in the bucket's order, so
//! all nodes converge on the bucket's last write and serve retained messages locally.
//! Order is the bucket's revision: a watch may skip entries a later one replaced (one
//! entry per key is kept), so a node keeps per key the revision it reflects. Its own
//! writes are applied when published; while one is on its way (its revision unknown)
//! entries for its key wait, and when the bucket answers the newer of the two holds, so
//! no node steps back or stays on a message the bucket has replaced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{subject, wire};
use crate::broker::Broker;
use crate::message::Message;

/// The bucket's name in JetStream.
const BUCKET: &str = "apiary-retained";

/// Where the cluster's retained messages stand, for `GET /cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetainedState {
    /// Opening the bucket.
    Starting,
    /// Shared through the bucket.
    Shared,
    /// The bucket cannot be opened (JetStream off?); retained messages stay per node
    /// and the node keeps trying.
    Unavailable(String),
}

/// Counters of the retained traffic, on `/metrics`.
#[derive(Debug, Default)]
pub struct RetainedCounters {
    /// Entries this node wrote to the bucket.
    pub written: AtomicU64,
    /// Entries the bucket refused (e.g. past NATS's `max_payload`).
    pub failed: AtomicU64,
    /// Retained publishes not queued for the bucket (queue full or bucket unavailable).
    pub dropped: AtomicU64,
    /// Other nodes' entries applied here.
    pub applied: AtomicU64,
    /// Entries that could not be read.
    pub undecodable: AtomicU64,
}

/// A write queued for the bucket.
pub(super) struct Write {
    key: String,
    seq: u64,
    msg: Arc<Message>,
}

/// This node's side of the bucket.
#[derive(Debug)]
pub struct Retained {
    tx: mpsc::Sender<Write>,
    /// Per key, where this node stands against the bucket; taken by local retained
    /// publishes, by the bucket's answers and by applies alike, so none comes between
    /// another's check and its change.
    inflight: Mutex<Inflight>,
    state: Mutex<RetainedState>,
    /// The counters.
    pub counters: RetainedCounters,
}

#[derive(Debug, Default)]
struct Inflight {
    seq: u64,
    keys: HashMap<String, KeyState>,
}

/// One key as this node knows it.
#[derive(Debug, Default)]
struct KeyState {
    /// The number of this node's latest write of it not yet answered by the bucket.
    pending: Option<u64>,
    /// The bucket revision the local store reflects.
    applied: u64,
    /// The newest entry watched while a write was pending, with its revision.
    deferred: Option<(u64, Message)>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Write").field("key", &self.key).finish()
    }
}

impl Retained {
    /// A side whose writes wait in a queue of `capacity` for [`Retained::run`].
    pub(super) fn new(capacity: usize) -> (Self, mpsc::Receiver<Write>) {
        let (tx, rx) = mpsc::channel(capacity);
        let r = Self {
            tx,
            inflight: Mutex::default(),
            state: Mutex::new(RetainedState::Starting),
            counters: RetainedCounters::default(),
        };
        (r, rx)
    }

    /// The bucket's state.
    pub(super) fn state(&self) -> RetainedState {
        self.state.lock().clone()
    }

    /// Applies a retained publish of this node with `set` (the local store) and queues
    /// it for the bucket when `set` took it. Topics too long for a key stay local.
    pub(super) fn publish<E>(
        &self,
        msg: &Arc<Message>,
        set: impl FnOnce() -> Result<(), E>,
    ) -> Result<(), E> {
        let mut inflight = self.inflight.lock();
        set()?;
        let Some(key) = subject::retained_key(&msg.tenant, &msg.topic) else {
            return Ok(());
        };
        if matches!(*self.state.lock(), RetainedState::Unavailable(_)) {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        inflight.seq += 1;
        let seq = inflight.seq;
        let w = Write {
            key: key.clone(),
            seq,
            msg: msg.clone(),
        };
        if self.tx.try_send(w).is_ok() {
            inflight.keys.entry(key).or_default().pending = Some(seq);
        } else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Opens the bucket (retrying while it cannot), then writes this node's retained
    /// publishes and applies every entry, until the broker stops.
    pub(super) async fn run(
        self: Arc<Self>,
        js: async_nats::jetstream::Context,
        replicas: usize,
        origin: String,
        rx: mpsc::Receiver<Write>,
        b: Broker,
    ) {
        let (store, entries) = tokio::select! {
            s = self.open(&js, replicas) => s,
            _ = b.stopped() => return,
        };
        *self.state.lock() = RetainedState::Shared;
        tracing::info!(bucket = BUCKET, "cluster: retained messages shared");
        // Watching before the first write: every own write is seen back (a watch that
        // began after it would show only the key's last entry, and the write would
        // stay "on its way" for good).
        tokio::select! {
            _ = self.clone().write(&store, &origin, rx, &b) => {}
            _ = self.watch(&store, entries, &b) => {}
            _ = b.stopped() => {}
        }
    }

    /// The bucket (made when missing) and a watch over it, retrying while they cannot
    /// be had.
    async fn open(
        &self,
        js: &async_nats::jetstream::Context,
        replicas: usize,
    ) -> (kv::Store, kv::Watch) {
        let mut backoff = Duration::from_millis(250);
        loop {
            let about = "Apiary: the last retained message per tenant and topic";
            let opened = match super::bucket::open(js, BUCKET, about, replicas).await {
                Ok(s) => match s.watch_with_history(">").await {
                    Ok(w) => Ok((s, w)),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e),
            };
            match opened {
                Ok(s) => return s,
                Err(e) => {
                    let first = !matches!(*self.state.lock(), RetainedState::Unavailable(_));
                    if first {
                        tracing::warn!(error = %e, "cluster: no JetStream bucket for retained messages (is JetStream on?); they stay per node until there is");
                    }
                    *self.state.lock() = RetainedState::Unavailable(e);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn write(
        self: Arc<Self>,
        store: &kv::Store,
        origin: &str,
        mut rx: mpsc::Receiver<Write>,
        b: &Broker,
    ) {
        while let Some(w) = rx.recv().await {
            let bytes = wire::encode(origin, w.seq, &w.msg);
            drop(w.msg);
            let put = store.put(&w.key, bytes.into()).await;
            let c = match &put {
                Ok(_) => &self.counters.written,
                Err(e) => {
                    tracing::debug!(key = %w.key, error = %e, "cluster: retained message not shared");
                    &self.counters.failed
                }
            };
            c.fetch_add(1, Ordering::Relaxed);
            self.answered(&w.key, w.seq, put.ok(), b);
        }
    }

    /// The bucket answered this node's write `seq` of `key` (with its revision, or
    /// refused it). Once the latest write is answered, whichever is newer holds: it, or
    /// what was watched meanwhile.
    fn answered(&self, key: &str, seq: u64, revision: Option<u64>, b: &Broker) {
        let mut inflight = self.inflight.lock();
        let Some(ks) = inflight.keys.get_mut(key) else {
            return;
        };
        if ks.pending != Some(seq) {
            return; // A later write of this node is on its way.
        }
        ks.pending = None;
        let mine = revision.unwrap_or(0);
        match ks.deferred.take() {
            Some((r, m)) if r > mine.max(ks.applied) => {
                ks.applied = r;
                self.set_local(m, b);
            }
            _ => ks.applied = ks.applied.max(mine),
        }
    }

    /// Applies the bucket's entries, from the last of each key on; watches again if the
    /// watch ends (what is older than a key's applied revision is skipped).
    async fn watch(&self, store: &kv::Store, mut entries: kv::Watch, b: &Broker) {
        loop {
            while let Some(e) = entries.next().await {
                match e {
                    Ok(e) => self.apply(e, b),
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster: retained watch ended");
                        break;
                    }
                }
            }
            entries = loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match store.watch_with_history(">").await {
                    Ok(w) => break w,
                    Err(e) => tracing::warn!(error = %e, "cluster: cannot watch retained messages"),
                }
            };
        }
    }

    fn apply(&self, e: kv::Entry, b: &Broker) {
        if e.operation != kv::Operation::Put {
            return; // Apiary only puts; a purge by hand leaves the nodes' copies alone.
        }
        let env = match wire::decode(&e.value) {
            Ok(env) => env,
            Err(err) => {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(key = %e.key, error = %err, "cluster: unreadable retained entry");
                return;
            }
        };
        let mut m = env.into_message();
        if m.expires_at.is_some_and(|t| t <= Instant::now()) {
            m.payload = bytes::Bytes::new(); // Expired on the way: a clear.
        }
        let mut inflight = self.inflight.lock();
        let ks = inflight.keys.entry(e.key).or_default();
        if e.revision <= ks.applied {
            return; // Already reflected, or older than what is.
        }
        if ks.pending.is_some() {
            // Ordered before or after this node's own write? Its answer tells.
            if ks.deferred.as_ref().is_none_or(|(r, _)| e.revision > *r) {
                ks.deferred = Some((e.revision, m));
            }
            return;
        }
        ks.applied = e.revision;
        // An own entry holds what the store has already, or is the bucket's last word
        // after a new watch: set either way.
        self.set_local(m, b);
    }

    fn set_local(&self, m: Message, b: &Broker) {
        b.retain_from_cluster(m);
        self.counters.applied.fetch_add(1, Ordering::Relaxed);
    }
}
