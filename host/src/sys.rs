//! `$SYS/broker/...` topics: statistics published retained at an interval into every
//! tenant that has subscriptions, each tenant seeing its own figures (its clients,
//! sessions, subscriptions, retained messages and messages), never the broker's totals
//! or another tenant's: those are for `/metrics`, behind a key spanning every tenant.
//! `#` and `+` never match them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rmqtt_codec::types::QoS;

use crate::broker::Broker;

/// Publishes the `$SYS` topics every `interval` until shutdown.
pub async fn run(broker: Broker, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_once(&broker),
            _ = broker.stopped() => return,
        }
    }
}

/// One round of `$SYS` publications.
pub fn publish_once(b: &Broker) {
    let mut tenants = b.router.tenants();
    if !tenants.iter().any(|t| &**t == "default") {
        tenants.push("default".into());
    }
    for t in tenants {
        for (topic, v) in figures(b, &t) {
            let _ = b.publish_as_broker(&t, topic, Bytes::from(v), QoS::AtMostOnce, true);
        }
    }
}

/// The `$SYS` figures of one tenant.
pub fn figures(b: &Broker, tenant: &std::sync::Arc<str>) -> [(&'static str, String); 8] {
    let (sessions, connected, subscriptions) = b.registry.tenant_counts(tenant);
    let counters = b.tenant_stats.of(tenant);
    [
        ("$SYS/broker/version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "$SYS/broker/uptime",
            b.started.elapsed().as_secs().to_string(),
        ),
        ("$SYS/broker/clients/connected", connected.to_string()),
        ("$SYS/broker/sessions/count", sessions.to_string()),
        ("$SYS/broker/subscriptions/count", subscriptions.to_string()),
        (
            "$SYS/broker/retained/count",
            b.retained.tenant_usage(tenant).0.to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            counters.received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            counters.sent.load(Ordering::Relaxed).to_string(),
        ),
    ]
}
