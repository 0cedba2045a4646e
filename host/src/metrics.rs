//! Broker-wide counters, rendered as Prometheus text on `GET /metrics`. Relaxed atomics:
//! a counter is a statistic, never a synchronisation point.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Every counter the broker exports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted per transport: tcp, tls, ws, wss.
    pub accepted: [AtomicU64; 4],
    /// Connections currently open per transport (CONNACKed or not).
    pub open: [AtomicU64; 4],
    /// Connections refused at accept because of max_connections.
    pub refused_max_connections: AtomicU64,
    /// CONNECTs refused (bad protocol, identifier, auth).
    pub connect_refused: AtomicU64,
    /// TLS or WebSocket handshakes that failed.
    pub handshake_failed: AtomicU64,
    /// Packets that failed to decode or broke the protocol.
    pub malformed_packets: AtomicU64,
    /// Packets over max_packet_size.
    pub packets_too_large: AtomicU64,
    /// Connections closed for keepalive timeout.
    pub keepalive_timeouts: AtomicU64,
    /// Application messages received (from clients and the broker itself).
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients.
    pub messages_sent: AtomicU64,
    /// Messages that matched no subscriber.
    pub messages_no_subscriber: AtomicU64,
    /// Messages dropped because a session queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 messages not queued for offline sessions.
    pub dropped_qos0_offline: AtomicU64,
    /// Messages that expired before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages not sent because they exceeded the client's maximum packet size.
    pub dropped_too_large: AtomicU64,
    /// Times an MQTT publisher stopped being read because a queue it fed was full.
    pub backpressure_waits: AtomicU64,
    /// Times a wait timed out and the session fell back to `queue_full`.
    pub backpressure_timeouts: AtomicU64,
    /// Publishes refused for an invalid topic.
    pub invalid_topic: AtomicU64,
    /// Current subscriptions (router entries).
    pub subscriptions: AtomicU64,
    /// Bytes received from clients.
    pub bytes_received: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_sent: AtomicU64,
    /// Wills published.
    pub wills_published: AtomicU64,
    /// Sessions expired.
    pub sessions_expired: AtomicU64,
    /// Admin API requests refused for bad credentials.
    pub api_auth_failed: AtomicU64,
    /// Admin API requests refused because their address failed too many logins.
    pub api_auth_throttled: AtomicU64,
    /// CONNECTs refused because their address was over its CONNECT rate.
    pub connect_rate_limited: AtomicU64,
    /// CONNECTs the auth chain accepted.
    pub auth_allowed: AtomicU64,
    /// CONNECTs the auth chain refused.
    pub auth_denied: AtomicU64,
    /// Auth plugin calls that failed (each one a denial).
    pub auth_failed: AtomicU64,
    /// Publish/subscribe decisions the ACL chain allowed (cache misses only).
    pub acl_allowed: AtomicU64,
    /// Publish/subscribe decisions the ACL chain refused (cache misses only).
    pub acl_denied: AtomicU64,
    /// ACL plugin calls that failed (each one a refusal).
    pub acl_failed: AtomicU64,
    /// ACL checks answered from a connection's cache.
    pub acl_cache_hits: AtomicU64,
    /// Publishes refused by ACL (v5: PUBACK/PUBREC 0x87; 3.1.1: dropped).
    pub acl_publish_denied: AtomicU64,
    /// Subscriptions refused by ACL (SUBACK 0x87 / 0x80).
    pub acl_subscribe_denied: AtomicU64,
    /// Publishes handed to a message interceptor (one per interceptor that saw it).
    pub intercepted: AtomicU64,
    /// Publishes an interceptor rewrote.
    pub intercept_rewritten: AtomicU64,
    /// Publishes an interceptor dropped (by its verdict or its failure policy).
    pub intercept_dropped: AtomicU64,
    /// Publishes an interceptor failed on (trap or timeout of its batch, invalid rewrite).
    pub intercept_failed: AtomicU64,
    /// Plugin versions loaded (first loads and reloads).
    pub plugin_loads: AtomicU64,
    /// Plugin loads that failed (the previous version, if any, kept serving).
    pub plugin_load_failures: AtomicU64,
    /// Compiled-plugin cache entries refused by their integrity check (recompiled).
    pub plugin_cache_rejected: AtomicU64,
    /// Retained publishes refused because their tenant was at its retained limits.
    pub retained_refused: AtomicU64,
    /// Retained messages removed because they expired.
    pub retained_expired: AtomicU64,
    /// Bytes in every connection's write buffer now (a gauge).
    pub write_buffer_bytes: AtomicU64,
}

/// Messages of one tenant's clients, for the tenant's own `$SYS` topics.
#[derive(Debug, Default)]
pub struct TenantCounters {
    /// PUBLISH packets received from the tenant's clients.
    pub received: AtomicU64,
    /// PUBLISH packets sent to the tenant's clients.
    pub sent: AtomicU64,
}

/// [`TenantCounters`] by tenant. A connection looks its tenant's up once, at CONNECT.
#[derive(Debug, Default)]
pub struct TenantStats {
    map: parking_lot::RwLock<
        std::collections::HashMap<std::sync::Arc<str>, std::sync::Arc<TenantCounters>>,
    >,
}

impl TenantStats {
    /// The counters of `tenant` (created on first use).
    pub fn of(&self, tenant: &std::sync::Arc<str>) -> std::sync::Arc<TenantCounters> {
        if let Some(c) = self.map.read().get(tenant) {
            return c.clone();
        }
        self.map.write().entry(tenant.clone()).or_default().clone()
    }

    /// Every tenant's (received, sent), by name.
    pub fn snapshot(&self) -> Vec<(std::sync::Arc<str>, u64, u64)> {
        let mut v: Vec<_> = self
            .map
            .read()
            .iter()
            .map(|(t, c)| {
                let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
                (t.clone(), ld(&c.received), ld(&c.sent))
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Index of a transport in the per-transport arrays.
pub fn transport_index(t: crate::session::Transport) -> usize {
    use crate::session::Transport::*;
    match t {
        Tcp => 0,
        Tls => 1,
        Ws => 2,
        Wss => 3,
    }
}

const TRANSPORTS: [&str; 4] = ["tcp", "tls", "ws", "wss"];

impl Metrics {
    /// Counts a dropped message by reason.
    pub fn drop(&self, reason: &str) {
        let c = match reason {
            "queue_full" => &self.dropped_queue_full,
            "qos0_offline" => &self.dropped_qos0_offline,
            "expired" => &self.dropped_expired,
            _ => &self.dropped_too_large,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition; `gauges` and `counters` add values the caller read
    /// from elsewhere.
    pub fn render(&self, gauges: &[(&str, &str, u64)], counters: &[(&str, &str, u64)]) -> String {
        let mut s = String::with_capacity(4096);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "apiary_connections_refused_total",
            "Connections refused at accept (max_connections).",
            g(&self.refused_max_connections),
        );
        counter(
            "apiary_connect_refused_total",
            "CONNECT packets answered with a refusal.",
            g(&self.connect_refused),
        );
        counter(
            "apiary_handshake_failed_total",
            "TLS or WebSocket handshakes that failed.",
            g(&self.handshake_failed),
        );
        counter(
            "apiary_malformed_packets_total",
            "Packets that failed to decode or broke the protocol.",
            g(&self.malformed_packets),
        );
        counter(
            "apiary_packets_too_large_total",
            "Packets over max_packet_size.",
            g(&self.packets_too_large),
        );
        counter(
            "apiary_keepalive_timeouts_total",
            "Connections closed for keepalive timeout.",
            g(&self.keepalive_timeouts),
        );
        counter(
            "apiary_messages_received_total",
            "Application messages received.",
            g(&self.messages_received),
        );
        counter(
            "apiary_messages_sent_total",
            "PUBLISH packets sent to clients.",
            g(&self.messages_sent),
        );
        counter(
            "apiary_messages_no_subscriber_total",
            "Messages that matched no subscriber.",
            g(&self.messages_no_subscriber),
        );
        counter(
            "apiary_invalid_topic_total",
            "Publishes refused for an invalid topic name.",
            g(&self.invalid_topic),
        );
        counter(
            "apiary_bytes_received_total",
            "Bytes received from clients.",
            g(&self.bytes_received),
        );
        counter(
            "apiary_bytes_sent_total",
            "Bytes sent to clients.",
            g(&self.bytes_sent),
        );
        counter(
            "apiary_wills_published_total",
            "Will messages published.",
            g(&self.wills_published),
        );
        counter(
            "apiary_sessions_expired_total",
            "Sessions removed by expiry.",
            g(&self.sessions_expired),
        );
        counter(
            "apiary_api_auth_failed_total",
            "Admin API requests with bad credentials.",
            g(&self.api_auth_failed),
        );
        counter(
            "apiary_api_auth_throttled_total",
            "Admin API requests refused (429) after too many failed logins from their address.",
            g(&self.api_auth_throttled),
        );
        counter(
            "apiary_connect_rate_limited_total",
            "CONNECTs refused (0x9F) because their address was over its CONNECT rate.",
            g(&self.connect_rate_limited),
        );
        counter(
            "apiary_auth_allowed_total",
            "CONNECTs the auth chain accepted.",
            g(&self.auth_allowed),
        );
        counter(
            "apiary_auth_denied_total",
            "CONNECTs the auth chain refused.",
            g(&self.auth_denied),
        );
        counter(
            "apiary_auth_plugin_failures_total",
            "Auth plugin calls that failed (each one a denial).",
            g(&self.auth_failed),
        );
        counter(
            "apiary_acl_allowed_total",
            "Publish/subscribe decisions the ACL chain allowed (cache misses).",
            g(&self.acl_allowed),
        );
        counter(
            "apiary_acl_denied_total",
            "Publish/subscribe decisions the ACL chain refused (cache misses).",
            g(&self.acl_denied),
        );
        counter(
            "apiary_acl_plugin_failures_total",
            "ACL plugin calls that failed (each one a refusal).",
            g(&self.acl_failed),
        );
        counter(
            "apiary_acl_cache_hits_total",
            "ACL checks answered from a connection's decision cache.",
            g(&self.acl_cache_hits),
        );
        counter(
            "apiary_acl_publish_denied_total",
            "Publishes refused by ACL (v5 PUBACK/PUBREC 0x87; 3.1.1 dropped).",
            g(&self.acl_publish_denied),
        );
        counter(
            "apiary_acl_subscribe_denied_total",
            "Subscriptions refused by ACL (SUBACK 0x87, or 0x80 in 3.1.1).",
            g(&self.acl_subscribe_denied),
        );
        counter(
            "apiary_intercept_calls_total",
            "Publishes handed to a message interceptor (one per interceptor that saw it).",
            g(&self.intercepted),
        );
        counter(
            "apiary_intercept_rewritten_total",
            "Publishes a message interceptor rewrote.",
            g(&self.intercept_rewritten),
        );
        counter(
            "apiary_intercept_dropped_total",
            "Publishes a message interceptor dropped (its verdict or its failure policy).",
            g(&self.intercept_dropped),
        );
        counter(
            "apiary_intercept_failures_total",
            "Publishes a message interceptor failed on (a trap or timeout of their batch, an invalid rewrite).",
            g(&self.intercept_failed),
        );
        counter(
            "apiary_plugin_loads_total",
            "Plugin versions loaded (first loads and reloads).",
            g(&self.plugin_loads),
        );
        counter(
            "apiary_plugin_load_failures_total",
            "Plugin loads that failed (any previous version kept serving).",
            g(&self.plugin_load_failures),
        );
        counter(
            "apiary_plugin_cache_rejected_total",
            "Compiled-plugin cache entries that failed their integrity check (recompiled).",
            g(&self.plugin_cache_rejected),
        );
        counter(
            "apiary_retained_refused_total",
            "Retained publishes refused (0x97) because their tenant was at its retained limits.",
            g(&self.retained_refused),
        );
        counter(
            "apiary_backpressure_waits_total",
            "Times an MQTT publisher stopped being read because a session queue it fed was full.",
            g(&self.backpressure_waits),
        );
        counter(
            "apiary_backpressure_timeouts_total",
            "Times a publisher's wait for a full queue timed out and that session fell back to queue_full.",
            g(&self.backpressure_timeouts),
        );
        counter(
            "apiary_retained_expired_total",
            "Retained messages removed because they expired.",
            g(&self.retained_expired),
        );
        let _ = writeln!(s, "# HELP apiary_messages_dropped_total Messages dropped, by reason.\n# TYPE apiary_messages_dropped_total counter");
        for (reason, c) in [
            ("queue_full", &self.dropped_queue_full),
            ("qos0_offline", &self.dropped_qos0_offline),
            ("expired", &self.dropped_expired),
            ("too_large", &self.dropped_too_large),
        ] {
            let _ = writeln!(
                s,
                "apiary_messages_dropped_total{{reason=\"{reason}\"}} {}",
                g(c)
            );
        }
        let _ = writeln!(s, "# HELP apiary_connections_accepted_total Connections accepted per listener.\n# TYPE apiary_connections_accepted_total counter");
        for (i, t) in TRANSPORTS.iter().enumerate() {
            let _ = writeln!(
                s,
                "apiary_connections_accepted_total{{listener=\"{t}\"}} {}",
                g(&self.accepted[i])
            );
        }
        let _ = writeln!(s, "# HELP apiary_connections Open connections per listener.\n# TYPE apiary_connections gauge");
        for (i, t) in TRANSPORTS.iter().enumerate() {
            let _ = writeln!(
                s,
                "apiary_connections{{listener=\"{t}\"}} {}",
                g(&self.open[i])
            );
        }
        let _ = writeln!(s, "# HELP apiary_write_buffer_bytes Bytes waiting in connections' write buffers.\n# TYPE apiary_write_buffer_bytes gauge\napiary_write_buffer_bytes {}", g(&self.write_buffer_bytes));
        let _ = writeln!(s, "# HELP apiary_subscriptions Current subscriptions.\n# TYPE apiary_subscriptions gauge\napiary_subscriptions {}", g(&self.subscriptions));
        for (name, help, v) in gauges {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        for (name, help, v) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        s
    }
}

/// Upper bounds of the latency buckets, in seconds (Prometheus `le`).
pub const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram: counts per bucket (the last is +Inf) and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Adds `other`'s observations to this one's.
    pub fn add(&self, other: &Histogram) {
        for (a, b) in self.counts.iter().zip(&other.counts) {
            a.fetch_add(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add(other.sum_us.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Observations, and their sum in seconds.
    pub fn totals(&self) -> (u64, f64) {
        let n = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        (n, self.sum_us.load(Ordering::Relaxed) as f64 / 1e6)
    }

    /// The upper bound (seconds) of the bucket holding the `q` quantile: None with no
    /// observations, infinity when it falls past the last bound.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            if cum >= rank {
                return Some(BUCKETS.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }

    /// [`Histogram::render`] for a histogram without labels.
    pub fn render_unlabelled(&self, name: &str, out: &mut String) {
        self.render(name, "", out);
    }

    /// Prometheus lines `name_bucket{labels,le=..}`, `name_sum`, `name_count`.
    pub fn render(&self, name: &str, labels: &str, out: &mut String) {
        let (sep, braced) = if labels.is_empty() {
            ("", String::new())
        } else {
            (",", format!("{{{labels}}}"))
        };
        let mut cum = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {cum}");
    }
}
