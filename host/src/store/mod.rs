//! Durable state: persistent sessions, their inboxes (queued and inflight QoS 1/2
//! messages), incoming QoS 2 state, and retained messages. The broker submits operations
//! from any task; one writer thread encodes them, writes them in batches (group commit)
//! and makes them durable per the sync policy, then publishes how far it got so a
//! connection under `sync = "always"` can send PUBACK/PUBREC only after that point.
//! Backend: fjall (docs/decisions/0004-store.md), behind the narrow [`Backend`] trait.

mod fjall_backend;
pub mod records;
pub mod recovery;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{error, warn};

pub use fjall_backend::FjallBackend;
use records::{
    encode, inbox_key, rel_key, retained_key, session_key, InboxRecord, MessageRecord,
    SessionRecord,
};

use crate::message::{Delivery, Message};

/// When writes become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    /// fsync every group of writes before acknowledging the publishes they carry.
    Always,
    /// Write at once (to OS buffers), fsync every `batch_interval_ms`.
    Batch,
    /// Write at once (to OS buffers), never fsync.
    Never,
}

/// Store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Durability policy.
    pub sync: SyncMode,
    /// fsync interval in `batch` mode, in ms.
    pub batch_interval_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            sync: SyncMode::Batch,
            batch_interval_ms: 10,
        }
    }
}

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
    /// Inbox messages.
    Inbox,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    Rel,
    /// Retained messages.
    Retained,
    /// Plugins' private key-value data.
    Kv,
}

impl Space {
    /// Name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Sessions => "sessions",
            Space::Inbox => "inbox",
            Space::Rel => "rel",
            Space::Retained => "retained",
            Space::Kv => "kv",
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
    /// Remove a session with its inbox and QoS 2 state.
    DeleteSession(Arc<str>, Arc<str>),
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
    fn write_into(self, out: &mut Vec<Write>) {
        let w = match self {
            Op::PutSession(t, c, r) => {
                Write::Put(Space::Sessions, session_key(&t, &c), encode(&*r))
            }
            Op::DeleteSession(t, c) => {
                let k = session_key(&t, &c);
                out.push(Write::DeletePrefix(Space::Inbox, k.clone()));
                out.push(Write::DeletePrefix(Space::Rel, k.clone()));
                Write::Delete(Space::Sessions, k)
            }
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

struct Submit {
    tx: Option<std::sync::mpsc::Sender<(u64, Op)>>,
    next: u64,
}

/// Handle to the store: submit operations, learn how far they are durable.
pub struct Store {
    submit: Mutex<Submit>,
    durable: watch::Receiver<u64>,
    /// The durability policy.
    pub sync: SyncMode,
    /// The data directory.
    pub path: PathBuf,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Write failures (batches lost).
    pub errors: AtomicU64,
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
        Ok(Self::with_backend(backend, dir, cfg))
    }

    /// Starts a store over any backend.
    pub fn with_backend(backend: Arc<dyn Backend>, dir: &Path, cfg: &StoreConfig) -> Arc<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (durable_tx, durable) = watch::channel(0u64);
        let store = Arc::new(Self {
            submit: Mutex::new(Submit {
                tx: Some(tx),
                next: 0,
            }),
            durable,
            sync: cfg.sync,
            path: dir.to_path_buf(),
            writer: Mutex::new(None),
            errors: AtomicU64::new(0),
            backend: backend.clone(),
        });
        let weak = Arc::downgrade(&store);
        let interval = Duration::from_millis(cfg.batch_interval_ms.max(1));
        let sync = cfg.sync;
        let handle = std::thread::Builder::new()
            .name("apiary-store".into())
            .spawn(move || writer(backend, rx, durable_tx, sync, interval, weak))
            .expect("spawning the store writer thread");
        *store.writer.lock() = Some(handle);
        store
    }

    /// The backend, for recovery scans.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Queues an operation; returns its ticket (the writer applies tickets in order).
    pub fn submit(&self, op: Op) -> u64 {
        let mut s = self.submit.lock();
        s.next += 1;
        let seq = s.next;
        if let Some(tx) = &s.tx {
            let _ = tx.send((seq, op));
        }
        seq
    }

    /// The ticket of the last operation submitted so far.
    pub fn last_ticket(&self) -> u64 {
        self.submit.lock().next
    }

    /// A receiver of the highest ticket that is written (and, in `always` mode, on disk).
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Stops the writer after it drained everything submitted, with a final fsync.
    pub fn close(&self) {
        self.submit.lock().tx = None;
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }
}

fn writer(
    backend: Arc<dyn Backend>,
    rx: std::sync::mpsc::Receiver<(u64, Op)>,
    durable: watch::Sender<u64>,
    sync: SyncMode,
    interval: Duration,
    store: std::sync::Weak<Store>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut batch = Vec::with_capacity(1024);
    loop {
        let first = match rx.recv_timeout(interval) {
            Ok(x) => Some(x),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut last = None;
        if let Some((seq, op)) = first {
            op.write_into(&mut batch);
            last = Some(seq);
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok((seq, op)) => {
                        op.write_into(&mut batch);
                        last = Some(seq);
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(seq) = last {
            let r = backend.write(std::mem::take(&mut batch)).and_then(|()| {
                dirty = true;
                match sync {
                    SyncMode::Always => {
                        last_sync = Instant::now();
                        dirty = false;
                        backend.flush(true)
                    }
                    SyncMode::Batch | SyncMode::Never => backend.flush(false),
                }
            });
            match r {
                Ok(()) => {
                    durable.send_replace(seq);
                }
                Err(e) => {
                    error!(error = %e, "store write failed; the batch is lost");
                    if let Some(s) = store.upgrade() {
                        s.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if sync == SyncMode::Batch && dirty && last_sync.elapsed() >= interval {
            if let Err(e) = backend.flush(true) {
                warn!(error = %e, "store fsync failed");
            }
            last_sync = Instant::now();
            dirty = false;
        }
    }
    if let Err(e) = backend.flush(true) {
        error!(error = %e, "final store fsync failed");
    }
}
