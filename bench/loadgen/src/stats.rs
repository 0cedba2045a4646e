//! Counters and a latency histogram shared by a bench run's tasks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

/// Counters every task adds to, and per-subscriber histograms merged at the end.
#[derive(Debug)]
pub struct Stats {
    /// When the run started: payload timestamps are nanoseconds since this.
    pub base: Instant,
    /// Messages published (QoS 0: written; QoS 1/2: acknowledged).
    pub sent: AtomicU64,
    /// Messages received by subscribers.
    pub received: AtomicU64,
    /// Connection or protocol errors.
    pub errors: AtomicU64,
    /// Connections established (conn scenario).
    pub connected: AtomicU64,
    latency: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            latency: Mutex::new(hdrhistogram::Histogram::new(3).expect("3 significant digits")),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Maximum.
    pub max: u64,
    /// Samples.
    pub samples: u64,
}

impl Stats {
    /// Nanoseconds since the run started (the payload timestamp).
    pub fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Adds a task's local histogram (microseconds).
    pub fn merge(&self, h: &hdrhistogram::Histogram<u64>) {
        let _ = self.latency.lock().add(h);
    }

    /// A local histogram for one task.
    pub fn local() -> hdrhistogram::Histogram<u64> {
        hdrhistogram::Histogram::new(3).expect("3 significant digits")
    }

    /// The merged percentiles.
    pub fn percentiles(&self) -> Percentiles {
        let h = self.latency.lock();
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            samples: h.len(),
        }
    }

    /// Adds one to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
