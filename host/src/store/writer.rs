//! The queue between the broker and the store's writer thread, and the thread itself.
//! The queue counts the bytes it holds: over the soft limit the store is congested
//! (acknowledgements wait for the writer), over twice that `push` blocks until the
//! writer makes room. The writer takes everything queued (up to a batch), writes it as
//! one batch, makes it durable per the sync policy and publishes the last ticket it
//! carried. After a failed write or fsync it writes nothing more: the durable ticket
//! stays where it was, what is queued is discarded (and counted), and the store reports
//! itself failed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;
use tracing::error;

use super::{Backend, Op, StoreConfig, SyncMode};

/// Operations per batch at most.
const BATCH_OPS: usize = 4096;

/// What the store exports on `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Bytes of keys and values written.
    pub bytes_written: AtomicU64,
    /// Operations written.
    pub ops_written: AtomicU64,
    /// Failed writes or fsyncs (the first one poisons the store).
    pub write_errors: AtomicU64,
    /// Operations discarded because the store had failed.
    pub ops_discarded: AtomicU64,
    /// Times a submitter blocked on a full queue.
    pub stalls: AtomicU64,
    /// Acknowledgements held back because the writer was behind.
    pub acks_held: AtomicU64,
    /// Milliseconds the oldest batch written last waited in the queue (the writer's lag).
    pub lag_ms: AtomicU64,
    /// Batches written.
    pub batches: AtomicU64,
    /// How long making writes durable (fsync) took.
    pub fsync: crate::metrics::Histogram,
}

struct Pending {
    ops: VecDeque<(u64, Op, usize, Instant)>,
    bytes: usize,
    next: u64,
    closed: bool,
}

/// The bounded queue shared by submitters and the writer.
pub(super) struct Queue {
    pending: Mutex<Pending>,
    /// The writer waits here for work.
    work: Condvar,
    /// Blocked submitters wait here for room.
    room: Condvar,
    soft: usize,
    /// Mirrors of `Pending::bytes` and `Pending::next`, so the publish path reads them
    /// without taking the queue's lock.
    bytes: AtomicUsize,
    next: AtomicU64,
    /// Set with `failure`, read lock-free on the publish path.
    failed: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Wakes async waiters for room (below the hard limit).
    room_async: tokio::sync::Notify,
    stats: StoreStats,
}

impl Queue {
    pub fn new(soft: usize) -> Self {
        Self {
            pending: Mutex::new(Pending {
                ops: VecDeque::new(),
                bytes: 0,
                next: 0,
                closed: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            soft: soft.max(1),
            bytes: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            room_async: tokio::sync::Notify::new(),
            stats: StoreStats::default(),
        }
    }

    pub fn push(&self, op: Op) -> u64 {
        let size = op.queued_size();
        let mut p = self.pending.lock();
        if p.bytes > self.soft * 2 && !p.closed {
            self.stats.stalls.fetch_add(1, Relaxed);
            while p.bytes > self.soft * 2 && !p.closed {
                self.room.wait(&mut p);
            }
        }
        p.next += 1;
        let seq = p.next;
        self.next.store(seq, Relaxed);
        if !p.closed {
            p.bytes += size;
            self.bytes.store(p.bytes, Relaxed);
            p.ops.push_back((seq, op, size, Instant::now()));
            self.work.notify_one();
        }
        seq
    }

    /// The last ticket handed out. A thread sees at least the tickets of its own
    /// submissions (the mirror is stored before `push` returns).
    pub fn last_ticket(&self) -> u64 {
        self.next.load(Relaxed)
    }

    pub fn congested(&self) -> bool {
        self.bytes.load(Relaxed) > self.soft
    }

    fn full(&self) -> bool {
        self.bytes.load(Relaxed) > self.soft * 2
    }

    /// Waits, without blocking a thread, until the queue is under its hard limit (or the
    /// store is closed or failed): producers that can wait call this before taking any
    /// lock, so `push` rarely has to block.
    pub async fn room(&self) {
        while self.full() && !self.failed.load(Relaxed) {
            let n = self.room_async.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if !self.full() || self.pending.lock().closed {
                return;
            }
            n.await;
        }
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Relaxed)
    }

    /// Marks the store failed (the first failure's reason is kept).
    fn fail(&self, why: String) {
        let mut f = self.failure.lock();
        if f.is_none() {
            *f = Some(why);
        }
        self.failed.store(true, Relaxed);
    }

    /// Queued operations and their bytes.
    pub fn depth(&self) -> (usize, usize) {
        let p = self.pending.lock();
        (p.ops.len(), p.bytes)
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    pub fn close(&self) {
        self.pending.lock().closed = true;
        self.work.notify_all();
        self.room.notify_all();
        self.room_async.notify_waiters();
    }

    /// Waits (up to `timeout`) for work and takes a batch of it. None when closed and
    /// drained.
    fn take(&self, timeout: Duration, out: &mut Vec<(u64, Op)>) -> Option<Instant> {
        let mut p = self.pending.lock();
        if p.ops.is_empty() {
            if p.closed {
                return None;
            }
            self.work.wait_for(&mut p, timeout);
        }
        let mut oldest = None;
        while out.len() < BATCH_OPS {
            let Some((seq, op, size, at)) = p.ops.pop_front() else {
                break;
            };
            oldest.get_or_insert(at);
            p.bytes -= size;
            out.push((seq, op));
        }
        self.bytes.store(p.bytes, Relaxed);
        if !out.is_empty() {
            self.room.notify_all();
            self.room_async.notify_waiters();
        }
        Some(oldest.unwrap_or_else(Instant::now))
    }
}

impl StoreStats {
    /// Queue depth is read from the queue itself; see [`super::Store::queue_depth`].
    fn count_written(&self, ops: usize, bytes: usize) {
        self.ops_written.fetch_add(ops as u64, Relaxed);
        self.bytes_written.fetch_add(bytes as u64, Relaxed);
    }
}

impl super::Store {
    /// Operations and bytes waiting for the writer.
    pub fn queue_depth(&self) -> (usize, usize) {
        self.queue.depth()
    }

    /// Counts an acknowledgement held back because the writer was behind.
    pub fn ack_held(&self) {
        self.queue.stats.acks_held.fetch_add(1, Relaxed);
    }

    /// Waits (asynchronously) until the queue is under its hard limit: call before
    /// taking locks and submitting, so submitting does not block a thread.
    pub async fn room(&self) {
        self.queue.room().await
    }

    /// Whether the queue is over its hard limit (a submit would block).
    pub fn is_full(&self) -> bool {
        self.queue.full()
    }

    /// Whether a write or fsync has failed (lock-free; [`super::Store::failure`] says why).
    pub fn is_failed(&self) -> bool {
        self.queue.is_failed()
    }
}

/// Starts the writer thread.
pub(super) fn spawn(
    backend: Arc<dyn Backend>,
    queue: Arc<Queue>,
    durable: watch::Sender<u64>,
    cfg: &StoreConfig,
) -> std::thread::JoinHandle<()> {
    let interval = Duration::from_millis(cfg.batch_interval_ms.max(1));
    let sync = cfg.sync;
    std::thread::Builder::new()
        .name("apiary-store".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run(&*backend, &queue, &durable, sync, interval)
            }));
            if r.is_err() {
                // Nothing more will be written: say so, and let every waiter go.
                error!("the store writer thread panicked: the store is failed from now on");
                queue.fail("the writer thread panicked".into());
                queue.close();
                durable.send_modify(|_| {});
            }
        })
        .expect("spawning the store writer thread")
}

fn run(
    backend: &dyn Backend,
    q: &Queue,
    durable: &watch::Sender<u64>,
    sync: SyncMode,
    interval: Duration,
) {
    let mut last_sync = Instant::now();
    let mut dirty = false;
    let mut ops = Vec::with_capacity(BATCH_OPS);
    let mut writes = Vec::with_capacity(BATCH_OPS);
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        q.stats.write_errors.fetch_add(1, Relaxed);
        if !q.is_failed() {
            error!(error = %e, "store {what} failed: the store is failed from now on (nothing more is written, acknowledgements that wait for it are never sent); restart the broker once the disk is fixed");
        }
        q.fail(format!("{what} failed: {e}"));
        // Wake waiters so they notice the failure.
        durable.send_modify(|_| {});
        q.room_async.notify_waiters();
    };
    let fsync = |backend: &dyn Backend| {
        let t = Instant::now();
        let r = backend.flush(true);
        q.stats.fsync.observe(t.elapsed());
        r
    };
    while let Some(oldest) = q.take(interval, &mut ops) {
        let Some(&(last, _)) = ops.last() else {
            if sync == SyncMode::Batch && dirty && last_sync.elapsed() >= interval {
                if let Err(e) = fsync(backend) {
                    fail("fsync", &e);
                }
                last_sync = Instant::now();
                dirty = false;
            }
            continue;
        };
        if q.is_failed() {
            q.stats.ops_discarded.fetch_add(ops.len() as u64, Relaxed);
            ops.clear();
            continue;
        }
        q.stats
            .lag_ms
            .store(oldest.elapsed().as_millis() as u64, Relaxed);
        let n = ops.len();
        for (_, op) in ops.drain(..) {
            op.write_into(&mut writes);
        }
        let bytes: usize = writes.iter().map(|w| w.size()).sum();
        let r = backend.write(std::mem::take(&mut writes));
        let r = r.map_err(|e| ("write", e)).and_then(|()| {
            dirty = true;
            let durable_now = sync == SyncMode::Always;
            let r = if durable_now {
                fsync(backend)
            } else {
                backend.flush(false)
            };
            let r = r.map_err(|e| ("fsync", e));
            if durable_now {
                last_sync = Instant::now();
                dirty = false;
            }
            r
        });
        match r {
            Ok(()) => {
                q.stats.batches.fetch_add(1, Relaxed);
                q.stats.count_written(n, bytes);
                durable.send_replace(last);
            }
            Err((what, e)) => fail(what, &e),
        }
        if sync == SyncMode::Batch && dirty && last_sync.elapsed() >= interval {
            if let Err(e) = fsync(backend) {
                fail("fsync", &e);
            }
            last_sync = Instant::now();
            dirty = false;
        }
    }
    if !q.is_failed() {
        if let Err(e) = backend.flush(true) {
            fail("final fsync", &e);
        }
    }
}
