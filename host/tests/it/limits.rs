//! What one client can make the broker hold, over real sockets: a subscriber that stops
//! reading keeps shared payloads queued rather than copies in its write buffer, retained
//! messages are bounded per tenant and expire, and a subscription racing a session's end
//! never outlives it. (A header announcing a huge packet reserving nothing is tested over
//! a real socket in `mqtt::handshake`.)

use std::sync::Arc;
use std::time::Duration;

use apiary::apikeys::ApiKeyStore;
use apiary::session::{ClientInfo, Session, SubOptions};
use apiary::{Broker, Config};
use rmqtt_codec::types::QoS;

use crate::common::raw::{self, Raw};
use crate::common::{self, metric, v5, TestBroker, Tr};

#[tokio::test]
async fn a_subscriber_that_stops_reading_holds_queued_payloads_not_copies() {
    let tb = TestBroker::start().await;
    // A persistent subscriber collects 12.5 MiB while away...
    let mut o = crate::common::v3::opts(&tb, "slow", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, _) = crate::common::v3::connect(o).await;
    c.c.subscribe("big/#", crate::common::v3::QoS::AtLeastOnce)
        .await
        .unwrap();
    c.suback().await;
    c.c.disconnect().await.unwrap();
    let session = tb.broker().registry.get("default", "slow").unwrap();
    common::eventually("offline", || !session.is_online()).await;
    let mut p = Raw::connect(tb.tcp_addr()).await;
    p.send(&raw::connect(4, "firehose", true, 0)).await;
    p.read_n(4).await;
    let msg = raw::publish_v3("big/x", &[0xA5; 64 << 10]);
    for _ in 0..200 {
        p.send(&msg).await;
    }
    common::eventually("queued", || session.state.lock().queue.len() == 200).await;
    // ... and comes back on a socket it never reads from.
    let mut slow = Raw::connect(tb.tcp_addr()).await;
    slow.send(&raw::connect(4, "slow", false, 0)).await;
    slow.read_n(4).await;
    common::eventually("online", || session.is_online()).await;
    let mut peak = 0;
    for _ in 0..300 {
        peak = peak.max(metric(&tb, "apiary_write_buffer_bytes"));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        peak <= (256 + 64 + 16) << 10,
        "the write buffer holds one budget at a time ({peak} bytes), the queue the rest"
    );
    assert!(
        session.state.lock().queue_bytes > 4 << 20,
        "the rest waits in the queue, as shared payloads"
    );
}

#[tokio::test]
async fn retained_messages_are_bounded_per_tenant_and_expired_ones_pruned() {
    use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};
    let tb = TestBroker::start_with(|c| {
        c.retained.max_messages = 3;
        c.retained.prune_interval_secs = 1;
    })
    .await;
    let (mut c, _) = v5::connect(v5::opts(&tb, "keeper", Tr::Tcp)).await;
    let client = c.c.clone();
    let publish = |topic: &'static str, payload: &'static str, expiry: Option<u32>| {
        let c = client.clone();
        async move {
            let props = PublishProperties {
                message_expiry_interval: expiry,
                ..Default::default()
            };
            c.publish_with_properties(topic, v5::QoS::AtLeastOnce, true, payload, props)
                .await
                .unwrap();
        }
    };
    let mut acks = Vec::new();
    for t in ["r/1", "r/2", "r/3", "r/4"] {
        publish(t, "v", None).await;
        loop {
            if let v5::Packet::PubAck(a) = c.next().await.unwrap() {
                acks.push(a.reason);
                break;
            }
        }
    }
    assert_eq!(acks[3], PubAckReason::QuotaExceeded, "{acks:?}");
    assert!(acks[..3]
        .iter()
        .all(|r| *r == PubAckReason::NoMatchingSubscribers));
    assert_eq!(metric(&tb, "apiary_retained_refused_total"), 1);
    // Replacing a topic's message and clearing one always fit.
    publish("r/1", "v2", None).await;
    publish("r/3", "", None).await;
    // A message that expires in a second takes the freed place, then leaves it.
    publish("r/exp", "short-lived", Some(1)).await;
    common::eventually("3 retained", || tb.broker().retained.len() == 3).await;
    common::eventually("the expired one pruned", || tb.broker().retained.len() == 2).await;
    assert!(metric(&tb, "apiary_retained_expired_total") >= 1);
    assert_eq!(metric(&tb, "apiary_retained_messages"), 2);
    let (mut s, _) = v5::connect(v5::opts(&tb, "reader", Tr::Tcp)).await;
    s.c.subscribe("r/#", v5::QoS::AtMostOnce).await.unwrap();
    let mut got = vec![s.publish().await.topic, s.publish().await.topic];
    got.sort();
    assert_eq!(got, vec!["r/1", "r/2"]);
    s.no_publish(Duration::from_millis(300)).await;
}

/// An admin subscribe racing the end of the session it targets: the session's
/// subscriptions, the router and the store change in one critical section, so either the
/// subscription is refused or the discard removes it. Never a dead session left routed.
#[test]
fn a_subscription_racing_a_discard_never_outlives_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let store = apiary::store::Store::open(dir.path(), &Default::default()).unwrap();
    let b = Broker::with_store(
        Config::embedded(),
        ApiKeyStore::default(),
        Some(store.clone()),
    );
    let opts = SubOptions::qos(QoS::AtLeastOnce);
    for i in 0..2000 {
        let s = Arc::new(Session::new(
            b.next_id(),
            "default".into(),
            format!("c{i}").into(),
            ClientInfo::default(),
        ));
        s.persistent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        b.registry.insert(s.clone());
        b.persist_session(&s);
        let go = Arc::new(std::sync::Barrier::new(2));
        let (b2, s2, go2) = (b.clone(), s.clone(), go.clone());
        let t = std::thread::spawn(move || {
            go2.wait();
            for f in ["race/a", "race/b", "race/c"] {
                let _ = b2.subscribe(&s2, f, opts);
            }
        });
        go.wait();
        b.discard(&s, "test");
        t.join().unwrap();
    }
    for topic in ["race/a", "race/b", "race/c"] {
        let n = b
            .publish_as_broker(
                "default",
                topic,
                bytes::Bytes::new(),
                QoS::AtLeastOnce,
                false,
            )
            .unwrap();
        assert_eq!(n, 0, "{topic} still routes to a discarded session");
    }
    assert_eq!(
        b.metrics
            .subscriptions
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(b.registry.is_empty());
    // Nor in the store: no session, and no subscription written after its session's
    // delete (recovery would find it an orphan).
    store.close();
    drop((b, store));
    let store = apiary::store::Store::open(dir.path(), &Default::default()).unwrap();
    let rec = apiary::store::recovery::load(&store).unwrap();
    assert_eq!((rec.sessions.len(), rec.orphans), (0, 0));
    store.close();
}

/// A subscribe that reaches a session after it ended is refused, not recorded.
#[tokio::test]
async fn a_subscribe_to_an_ended_session_is_refused() {
    let tb = TestBroker::start().await;
    let (c, _) = v5::connect(v5::opts(&tb, "short", Tr::Tcp)).await;
    let s = tb.broker().registry.get("default", "short").unwrap();
    drop(c);
    tb.broker().discard(&s, "test");
    let r = tb
        .broker()
        .subscribe(&s, "x/y", SubOptions::qos(QoS::AtMostOnce));
    assert_eq!(r, Err(apiary::broker::SubscribeError::SessionEnded));
    assert!(s.state.lock().subscriptions.is_empty());
}

/// Past its CONNECT rate an address is refused before anything is checked: 0x9F
/// Connection rate exceeded (3.1.1: 3, server unavailable), counted.
#[tokio::test]
async fn connects_over_an_addresss_rate_are_refused_with_0x9f() {
    let tb = TestBroker::start_with(|c| {
        c.listeners.connect_rate_per_ip = 1;
        c.listeners.connect_burst_per_ip = 2;
        c.listeners.connect_rate_loopback = true;
    })
    .await;
    let code = |level: u8, id: String| {
        let addr = tb.tcp_addr();
        async move {
            let mut r = Raw::connect(addr).await;
            r.send(&raw::connect(level, &id, true, 30)).await;
            r.read_n(4).await[3]
        }
    };
    // One token a second: of a quick run of CONNECTs most are refused, whatever the
    // machine's pace.
    let mut codes = Vec::new();
    for (i, level) in [4u8, 5, 4, 5, 4, 5, 4, 5].into_iter().enumerate() {
        codes.push((level, code(level, format!("r{i}")).await));
    }
    let refused: Vec<_> = codes.iter().filter(|(_, c)| *c != 0).collect();
    assert!(refused.len() >= 4, "{codes:?}");
    for (level, c) in &refused {
        assert_eq!(*c, if *level == 5 { 0x9F } else { 3 }, "{codes:?}");
    }
    assert_eq!(
        metric(&tb, "apiary_connect_rate_limited_total"),
        refused.len() as u64
    );
}
