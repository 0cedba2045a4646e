//! Durable state: persistent sessions, their subscriptions and inboxes (queued and
//! inflight QoS 1/2 messages), incoming QoS 2 state, retained messages and plugins' kv
//! data. The broker submits operations from any task; one writer thread (`writer`)
//! encodes them, writes them in batches (group commit) and makes them durable per the
//! sync policy, then publishes how far it got so acknowledgements that must wait for
//! the store are sent only after that point.
//!
//! The queue to the writer is bounded in bytes: past `max_queued_bytes` QoS 1/2
//! acknowledgements wait for the writer (so publishers slow down to the disk's pace),
//! and past twice that a submitter blocks until there is room. A write or fsync that
//! fails poisons the store: nothing is written after it, the durable point never passes
//! it, and `/healthz` reports the store unhealthy (docs/decisions/0008-store-failures.md).
//! Backend: fjall (docs/decisions/0004-store.md), behind the narrow [`Backend`] trait.

mod fjall_backend;
pub mod records;
pub mod recovery;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytestring::ByteString;
use tokio::sync::watch;

pub use fjall_backend::FjallBackend;
use records::{
    encode, inbox_key, rel_key, retained_key, session_key, sub_key, InboxRecord, MessageRecord,
    SessionRecord, SubRecord,
};
pub use writer::StoreStats;

use crate::message::{Delivery, Message};

pub use crate::config::{StoreConfig, SyncMode};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (I/O, corruption it detected).
    #[error("store at {path}: {detail}")]
    Backend {
        /// The data directory.
        path: PathBuf,
        /// What the backend said.
        detail: String,
    },
    /// A record could not be decoded.
    #[error("store at {path}: corrupt record in {space}: {detail}")]
    Corrupt {
        /// The data directory.
        path: PathBuf,
        /// Key space.
        space: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// Key spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    /// Persistent sessions.
    Sessions,
    /// Subscriptions of persistent sessions, one key each.
    Subs,
    /// Inbox messages.
    Inbox,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    Rel,
    /// Retained messages.
    Retained,
    /// Plugins' private key-value data.
    Kv,
    /// Plugins' kv data as releases before 0.1 keyed it (migrated at open).
    LegacyKv,
}

impl Space {
    /// Every space.
    pub const ALL: [Space; 7] = [
        Space::Sessions,
        Space::Subs,
        Space::Inbox,
        Space::Rel,
        Space::Retained,
        Space::Kv,
        Space::LegacyKv,
    ];

    /// Name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Sessions => "sessions",
            Space::Subs => "subs",
            Space::Inbox => "inbox",
            Space::Rel => "rel",
            Space::Retained => "retained",
            Space::Kv => "plugin_kv",
            Space::LegacyKv => "kv",
        }
    }
}

/// One low-level write.
#[derive(Debug)]
pub enum Write {
    /// Insert or replace.
    Put(Space, Vec<u8>, Vec<u8>),
    /// Delete one key.
    Delete(Space, Vec<u8>),
    /// Delete every key with this prefix.
    DeletePrefix(Space, Vec<u8>),
}

impl Write {
    /// Bytes of keys and values it carries (for the written-bytes counter).
    pub fn size(&self) -> usize {
        match self {
            Write::Put(_, k, v) => k.len() + v.len(),
            Write::Delete(_, k) | Write::DeletePrefix(_, k) => k.len(),
        }
    }
}

/// Visitor of one key/value during a scan; an error stops the scan.
pub type ScanFn<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), StoreError>;

/// What a storage engine must offer. Writes in one call are applied in order; a crash
/// may keep a prefix of them, never a later write without the earlier ones.
pub trait Backend: Send + Sync + 'static {
    /// Applies a batch atomically.
    fn write(&self, batch: Vec<Write>) -> Result<(), StoreError>;
    /// Pushes written data to the OS (`durable = false`) or to disk (`true`).
    fn flush(&self, durable: bool) -> Result<(), StoreError>;
    /// The value of one key.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Visits the keys/values of a space that start with `prefix`, in key order, until
    /// `f` returns false.
    fn scan_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;
    /// Visits every key/value of a space in key order.
    fn scan(&self, space: Space, f: ScanFn<'_>) -> Result<(), StoreError>;
}

/// A high-level operation, encoded on the writer thread (off the publish path).
#[derive(Debug)]
pub enum Op {
    /// Create or replace a session record.
    PutSession(Arc<str>, Arc<str>, Box<SessionRecord>),
    /// Remove a session with its subscriptions, inbox and QoS 2 state.
    DeleteSession(Arc<str>, Arc<str>),
    /// Add or replace one subscription of a session.
    PutSub(Arc<str>, Arc<str>, Box<SubRecord>),
    /// Remove one subscription of a session.
    DeleteSub(Arc<str>, Arc<str>, String),
    /// Store an inbox message with its delivery state.
    PutInbox {
        /// Tenant.
        tenant: Arc<str>,
        /// Client id.
        client_id: Arc<str>,
        /// Delivery (its `seq` is the key).
        delivery: Delivery,
        /// Packet id once sent.
        pid: Option<u16>,
        /// 0 queued, 1 awaiting PUBACK, 2 awaiting PUBREC, 3 awaiting PUBCOMP.
        state: u8,
    },
    /// Remove an inbox message.
    DeleteInbox(Arc<str>, Arc<str>, u64),
    /// Record an incoming QoS 2 packet id.
    PutRel(Arc<str>, Arc<str>, u16),
    /// Forget an incoming QoS 2 packet id.
    DeleteRel(Arc<str>, Arc<str>, u16),
    /// Store a retained message.
    PutRetained(Arc<Message>),
    /// Clear a retained message.
    DeleteRetained(Arc<str>, ByteString),
}

impl Op {
    /// About how many bytes it holds while queued (payloads dominate).
    pub fn queued_size(&self) -> usize {
        const BASE: usize = 96;
        BASE + match self {
            Op::PutInbox { delivery, .. } => delivery.msg.payload.len() + delivery.msg.topic.len(),
            Op::PutRetained(m) => m.payload.len() + m.topic.len(),
            Op::PutSession(..) => 256,
            Op::PutSub(_, _, r) => r.filter.len(),
            Op::DeleteSub(_, _, f) => f.len(),
            Op::DeleteRetained(_, t) => t.len(),
            Op::DeleteSession(..) | Op::DeleteInbox(..) | Op::PutRel(..) | Op::DeleteRel(..) => 0,
        }
    }

    fn write_into(self, out: &mut Vec<Write>) {
        let w = match self {
            Op::PutSession(t, c, r) => {
                Write::Put(Space::Sessions, session_key(&t, &c), encode(&*r))
            }
            Op::DeleteSession(t, c) => {
                let k = session_key(&t, &c);
                out.push(Write::DeletePrefix(Space::Subs, k.clone()));
                out.push(Write::DeletePrefix(Space::Inbox, k.clone()));
                out.push(Write::DeletePrefix(Space::Rel, k.clone()));
                Write::Delete(Space::Sessions, k)
            }
            Op::PutSub(t, c, r) => Write::Put(Space::Subs, sub_key(&t, &c, &r.filter), encode(&*r)),
            Op::DeleteSub(t, c, f) => Write::Delete(Space::Subs, sub_key(&t, &c, &f)),
            Op::PutInbox {
                tenant,
                client_id,
                delivery,
                pid,
                state,
            } => {
                let r = InboxRecord {
                    msg: MessageRecord::from_message(&delivery.msg),
                    qos: delivery.qos.value(),
                    retain: delivery.retain,
                    sub_ids: delivery.sub_ids.iter().map(|i| i.get()).collect(),
                    pid,
                    state,
                };
                Write::Put(
                    Space::Inbox,
                    inbox_key(&tenant, &client_id, delivery.seq),
                    encode(&r),
                )
            }
            Op::DeleteInbox(t, c, seq) => Write::Delete(Space::Inbox, inbox_key(&t, &c, seq)),
            Op::PutRel(t, c, pid) => Write::Put(Space::Rel, rel_key(&t, &c, pid), Vec::new()),
            Op::DeleteRel(t, c, pid) => Write::Delete(Space::Rel, rel_key(&t, &c, pid)),
            Op::PutRetained(m) => Write::Put(
                Space::Retained,
                retained_key(&m.tenant, &m.topic),
                encode(&MessageRecord::from_message(&m)),
            ),
            Op::DeleteRetained(t, topic) => {
                Write::Delete(Space::Retained, retained_key(&t, &topic))
            }
        };
        out.push(w);
    }
}

/// Handle to the store: submit operations, learn how far they are durable.
pub struct Store {
    queue: Arc<writer::Queue>,
    durable: watch::Receiver<u64>,
    /// The durability policy.
    pub sync: SyncMode,
    /// The data directory.
    pub path: PathBuf,
    writer: parking_lot::Mutex<Option<std::thread::JoinHandle<()>>>,
    backend: Arc<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("sync", &self.sync)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store under `dir` and starts its writer thread.
    pub fn open(dir: &Path, cfg: &StoreConfig) -> Result<Arc<Self>, StoreError> {
        let backend: Arc<dyn Backend> = Arc::new(FjallBackend::open(dir)?);
        Self::with_backend(backend, dir, cfg)
    }

    /// Starts a store over any backend (migrating data older releases wrote).
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        dir: &Path,
        cfg: &StoreConfig,
    ) -> Result<Arc<Self>, StoreError> {
        migrate_kv(&*backend)?;
        let (durable_tx, durable) = watch::channel(0u64);
        let queue = Arc::new(writer::Queue::new(cfg.max_queued_bytes));
        let handle = writer::spawn(backend.clone(), queue.clone(), durable_tx, cfg);
        Ok(Arc::new(Self {
            queue,
            durable,
            sync: cfg.sync,
            path: dir.to_path_buf(),
            writer: parking_lot::Mutex::new(Some(handle)),
            backend,
        }))
    }

    /// The backend, for recovery scans.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// The backend, shared (for reads off the async runtime).
    pub fn backend_arc(&self) -> Arc<dyn Backend> {
        self.backend.clone()
    }

    /// Queues an operation; returns its ticket (the writer applies tickets in order).
    /// Blocks while the queue is over twice `max_queued_bytes` (counted as a stall).
    pub fn submit(&self, op: Op) -> u64 {
        self.queue.push(op)
    }

    /// The ticket of the last operation submitted so far.
    pub fn last_ticket(&self) -> u64 {
        self.queue.last_ticket()
    }

    /// A receiver of the highest ticket that is written (and, in `always` mode, on disk).
    /// It never passes a failed write; receivers are woken when the store fails.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Whether the writer is behind by more than `max_queued_bytes`: acknowledgements
    /// of publishes that were stored wait for it.
    pub fn congested(&self) -> bool {
        self.queue.congested()
    }

    /// Why the store failed, once a write or fsync has (it stays failed).
    pub fn failure(&self) -> Option<String> {
        self.queue.failure()
    }

    /// Counters and gauges for `/metrics`.
    pub fn stats(&self) -> &StoreStats {
        self.queue.stats()
    }

    /// Stops the writer after it drained everything submitted, with a final fsync.
    pub fn close(&self) {
        self.queue.close();
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

/// Moves kv entries from the key layout of releases before 0.1 (plugin and key both
/// length-prefixed, which made prefix listing a full scan) to the current one.
fn migrate_kv(b: &dyn Backend) -> Result<(), StoreError> {
    let mut batch = Vec::new();
    b.scan(Space::LegacyKv, &mut |k, v| {
        if let Ok((plugin, key, rest)) = records::split_key(k) {
            if rest.is_empty() {
                batch.push(Write::Put(
                    Space::Kv,
                    records::kv_key(plugin, key),
                    v.to_vec(),
                ));
            }
        }
        batch.push(Write::Delete(Space::LegacyKv, k.to_vec()));
        Ok(())
    })?;
    if batch.is_empty() {
        return Ok(());
    }
    tracing::info!(
        entries = batch.len() / 2,
        "migrating plugin kv data to the prefix-ordered layout"
    );
    b.write(batch)?;
    b.flush(true)
}
