//! What `/metrics` shows per plugin and role: calls, errors by kind, a call latency
//! histogram, instances and linear memory. Kept per plugin name across reloads (so
//! counters only grow), updated with relaxed atomics outside any lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{ResourceLimiter, StoreLimits};

use crate::metrics::Histogram;

use super::manifest::Role;
use super::runtime::PluginError;

/// Kinds of failed calls, as the `kind` label names them.
const KINDS: [&str; 7] = [
    "trap",
    "timeout",
    "busy",
    "backing_off",
    "overloaded",
    "instantiate",
    "other",
];

fn kind(e: &PluginError) -> usize {
    match e {
        PluginError::Trap(_) => 0,
        PluginError::Timeout => 1,
        PluginError::Busy => 2,
        PluginError::BackingOff => 3,
        PluginError::Overloaded => 4,
        PluginError::Load(_) | PluginError::Init(_) => 5,
        PluginError::NoRole(_) => 6,
    }
}

const ROLES: [Role; 5] = [
    Role::Http,
    Role::Auth,
    Role::Events,
    Role::Stream,
    Role::Message,
];

fn role_index(r: Role) -> usize {
    ROLES.iter().position(|&x| x == r).unwrap_or(0)
}

/// One role's figures.
#[derive(Debug, Default)]
struct RoleStats {
    calls: AtomicU64,
    errors: [AtomicU64; KINDS.len()],
    latency: Histogram,
}

/// One plugin's figures.
#[derive(Debug, Default)]
pub struct PluginStats {
    roles: [RoleStats; 5],
    /// Instances created (each runs `init`).
    pub instances_created: AtomicU64,
    /// Instances alive (pooled or in a call).
    pub instances: AtomicU64,
    /// Linear memory of its live instances, bytes.
    pub memory_bytes: AtomicU64,
    /// Outbound HTTP requests it made.
    pub outbound_requests: AtomicU64,
    /// Outbound HTTP requests refused (origin not granted, no slot in time).
    pub outbound_refused: AtomicU64,
    /// Outbound HTTP requests that failed (connect, TLS, timeout, protocol).
    pub outbound_failed: AtomicU64,
}

/// Call latency over every role, for `GET /plugins`.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct CallLatency {
    /// Mean, milliseconds.
    pub mean_ms: f64,
    /// The histogram bucket bound the 99th percentile falls under, milliseconds (None
    /// past the last bound, 2.5 s).
    pub p99_ms: Option<f64>,
}

impl PluginStats {
    /// Latency over all roles' calls (None before the first call).
    pub fn latency(&self) -> Option<CallLatency> {
        let merged = Histogram::default();
        for r in &self.roles {
            merged.add(&r.latency);
        }
        let (n, sum) = merged.totals();
        (n > 0).then(|| CallLatency {
            mean_ms: sum * 1000.0 / n as f64,
            p99_ms: merged
                .quantile_bound(0.99)
                .filter(|b| b.is_finite())
                .map(|b| b * 1000.0),
        })
    }

    /// Records a finished call of `role`.
    pub fn record(&self, role: Role, took: Duration, result: Result<(), &PluginError>) {
        let r = &self.roles[role_index(role)];
        r.calls.fetch_add(1, Ordering::Relaxed);
        r.latency.observe(took);
        if let Err(e) = result {
            r.errors[kind(e)].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Every plugin's figures as Prometheus text, one family at a time.
pub fn render(plugins: &[(String, Arc<PluginStats>)]) -> String {
    let mut out = String::new();
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let used = |s: &PluginStats, i: usize| ld(&s.roles[i].calls) > 0;
    let family = |name: &str, kind: &str, help: &str, out: &mut String| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "apiary_plugin_calls_total",
        "counter",
        "Plugin calls by role.",
        &mut out,
    );
    for (p, s) in plugins {
        for (i, r) in ROLES.iter().enumerate().filter(|(i, _)| used(s, *i)) {
            let n = ld(&s.roles[i].calls);
            let _ = writeln!(
                out,
                "apiary_plugin_calls_total{{plugin=\"{p}\",role=\"{}\"}} {n}",
                r.as_str()
            );
        }
    }
    family("apiary_plugin_errors_total", "counter", "Failed plugin calls by role and kind (trap, timeout, busy, backing_off, overloaded, instantiate, other).", &mut out);
    for (p, s) in plugins {
        for (i, r) in ROLES.iter().enumerate().filter(|(i, _)| used(s, *i)) {
            for (k, name) in KINDS.iter().enumerate() {
                let n = ld(&s.roles[i].errors[k]);
                let _ = writeln!(
                    out,
                    "apiary_plugin_errors_total{{plugin=\"{p}\",role=\"{}\",kind=\"{name}\"}} {n}",
                    r.as_str()
                );
            }
        }
    }
    family(
        "apiary_plugin_call_seconds",
        "histogram",
        "Plugin call latency by role (queueing for an instance included).",
        &mut out,
    );
    for (p, s) in plugins {
        for (i, r) in ROLES.iter().enumerate().filter(|(i, _)| used(s, *i)) {
            let labels = format!("plugin=\"{p}\",role=\"{}\"", r.as_str());
            s.roles[i]
                .latency
                .render("apiary_plugin_call_seconds", &labels, &mut out);
        }
    }
    type Field = fn(&PluginStats) -> &AtomicU64;
    let families: [(&str, &str, &str, Field); 6] = [
        (
            "apiary_plugin_instances",
            "gauge",
            "Live instances of the plugin (pooled or in a call).",
            |s| &s.instances,
        ),
        (
            "apiary_plugin_instances_created_total",
            "counter",
            "Instances created (each ran init).",
            |s| &s.instances_created,
        ),
        (
            "apiary_plugin_memory_bytes",
            "gauge",
            "Linear memory of the plugin's live instances.",
            |s| &s.memory_bytes,
        ),
        (
            "apiary_plugin_outbound_requests_total",
            "counter",
            "Outbound HTTP requests the plugin made.",
            |s| &s.outbound_requests,
        ),
        (
            "apiary_plugin_outbound_refused_total",
            "counter",
            "Outbound HTTP requests refused (origin not granted, or no slot in time).",
            |s| &s.outbound_refused,
        ),
        (
            "apiary_plugin_outbound_failed_total",
            "counter",
            "Outbound HTTP requests that failed (connect, TLS, timeout, protocol).",
            |s| &s.outbound_failed,
        ),
    ];
    for (name, kind, help, get) in families {
        family(name, kind, help, &mut out);
        for (p, s) in plugins {
            let _ = writeln!(out, "{name}{{plugin=\"{p}\"}} {}", ld(get(s)));
        }
    }
    out
}

/// The store limits of an instance, counting its linear memory into its plugin's
/// figures (and out again when the instance is dropped).
pub struct Limiter {
    inner: StoreLimits,
    stats: Arc<PluginStats>,
    bytes: u64,
}

impl Limiter {
    /// Limits `inner`, accounted to `stats`; one more live instance.
    pub fn new(inner: StoreLimits, stats: Arc<PluginStats>) -> Self {
        stats.instances.fetch_add(1, Ordering::Relaxed);
        stats.instances_created.fetch_add(1, Ordering::Relaxed);
        Limiter {
            inner,
            stats,
            bytes: 0,
        }
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.stats.instances.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .memory_bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.inner.memory_growing(current, desired, maximum)?;
        if ok && desired > current {
            let grew = (desired - current) as u64;
            self.bytes += grew;
            self.stats.memory_bytes.fetch_add(grew, Ordering::Relaxed);
        }
        Ok(ok)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_errors_counted_by_kind() {
        let s = Arc::new(PluginStats::default());
        s.record(Role::Http, Duration::from_micros(50), Ok(()));
        s.record(
            Role::Http,
            Duration::from_millis(3),
            Err(&PluginError::Timeout),
        );
        s.record(
            Role::Http,
            Duration::from_secs(9),
            Err(&PluginError::Trap("x".into())),
        );
        let text = render(&[("p".into(), s)]);
        assert!(
            text.contains("apiary_plugin_calls_total{plugin=\"p\",role=\"http\"} 3"),
            "{text}"
        );
        assert!(text
            .contains("apiary_plugin_errors_total{plugin=\"p\",role=\"http\",kind=\"timeout\"} 1"));
        assert!(
            text.contains("apiary_plugin_errors_total{plugin=\"p\",role=\"http\",kind=\"trap\"} 1")
        );
        assert!(text.contains(
            "apiary_plugin_call_seconds_bucket{plugin=\"p\",role=\"http\",le=\"0.0001\"} 1"
        ));
        assert!(text.contains(
            "apiary_plugin_call_seconds_bucket{plugin=\"p\",role=\"http\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "apiary_plugin_call_seconds_bucket{plugin=\"p\",role=\"http\",le=\"+Inf\"} 3"
        ));
        assert!(text.contains("apiary_plugin_call_seconds_count{plugin=\"p\",role=\"http\"} 3"));
        assert!(!text.contains("role=\"auth\""), "unused roles are left out");
    }
    #[test]
    fn latency_summary_spans_roles_and_bounds_the_99th_percentile() {
        let s = PluginStats::default();
        assert!(s.latency().is_none(), "no calls, no figures");
        for _ in 0..98 {
            s.record(Role::Http, Duration::from_micros(80), Ok(()));
        }
        s.record(Role::Auth, Duration::from_millis(4), Ok(()));
        s.record(Role::Auth, Duration::from_millis(4), Ok(()));
        let l = s.latency().unwrap();
        // 100 calls: the 99th is one of the 4 ms auth calls, in the <= 5 ms bucket.
        assert_eq!(l.p99_ms, Some(5.0));
        assert!(
            (l.mean_ms - (98.0 * 0.08 + 8.0) / 100.0).abs() < 1e-9,
            "{}",
            l.mean_ms
        );
        s.record(Role::Http, Duration::from_secs(9), Ok(()));
        s.record(Role::Http, Duration::from_secs(9), Ok(()));
        assert_eq!(s.latency().unwrap().p99_ms, None, "past the last bound");
    }
}
