//! `$SYS/broker/...` topics: the broker's own statistics, published retained at an
//! interval into every tenant that has subscriptions. `#` and `+` never match them.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rmqtt_codec::types::QoS;

use crate::broker::Broker;

/// Publishes the `$SYS` topics every `interval` until shutdown.
pub async fn run(broker: Broker, interval: Duration) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_once(&broker),
            _ = shutdown.changed() => return,
        }
    }
}

/// One round of `$SYS` publications.
pub fn publish_once(b: &Broker) {
    let m = &b.metrics;
    let values: [(&str, String); 8] = [
        ("$SYS/broker/version", env!("CARGO_PKG_VERSION").to_string()),
        (
            "$SYS/broker/uptime",
            b.started.elapsed().as_secs().to_string(),
        ),
        (
            "$SYS/broker/clients/connected",
            b.registry.connected_count().to_string(),
        ),
        ("$SYS/broker/sessions/count", b.registry.len().to_string()),
        (
            "$SYS/broker/subscriptions/count",
            m.subscriptions.load(Ordering::Relaxed).to_string(),
        ),
        ("$SYS/broker/retained/count", b.retained.len().to_string()),
        (
            "$SYS/broker/messages/received",
            m.messages_received.load(Ordering::Relaxed).to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            m.messages_sent.load(Ordering::Relaxed).to_string(),
        ),
    ];
    let mut tenants = b.router.tenants();
    if !tenants.iter().any(|t| &**t == "default") {
        tenants.push("default".into());
    }
    for t in tenants {
        for (topic, v) in &values {
            // These count in messages/received themselves, as Mosquitto's $SYS messages do.
            let _ = b.publish_as_broker(&t, topic, Bytes::from(v.clone()), QoS::AtMostOnce, true);
        }
    }
}
