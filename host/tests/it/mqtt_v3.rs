//! MQTT 3.1.1 behaviour over real sockets with rumqttc (and hand-built packets where a
//! well-behaved client library refuses to send what we need to test).

use crate::common;

use std::time::Duration;

use common::raw::{self, Raw};
use common::v3::{self, Packet, QoS};
use common::{eventually, metric, TestBroker, Tr};
use rumqttc::{ConnectReturnCode, LastWill, SubscribeReasonCode};

fn connack(p: &Packet) -> (bool, ConnectReturnCode) {
    match p {
        Packet::ConnAck(a) => (a.session_present, a.code),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn sub(c: &mut v3::Client, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
    c.c.subscribe(filter, qos).await.unwrap();
    match c.suback().await {
        Packet::SubAck(s) => s.return_codes,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn qos_levels_and_delivered_qos_is_the_minimum() {
    let tb = TestBroker::start().await;
    let (mut s1, _) = v3::connect(v3::opts(&tb, "s1", Tr::Tcp)).await;
    let (mut s2, _) = v3::connect(v3::opts(&tb, "s2", Tr::Tcp)).await;
    assert_eq!(
        sub(&mut s1, "q/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        sub(&mut s2, "q/#", QoS::ExactlyOnce).await,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        p.c.publish(format!("q/{i}"), qos, false, vec![i as u8])
            .await
            .unwrap();
        let m1 = s1.publish().await;
        let m2 = s2.publish().await;
        assert_eq!(m1.payload[..], [i as u8]);
        assert_eq!(
            m1.qos,
            if qos == QoS::AtMostOnce {
                qos
            } else {
                QoS::AtLeastOnce
            },
            "s1 granted 1, published {qos:?}"
        );
        assert_eq!(m2.qos, qos, "s2 granted 2, published {qos:?}");
        assert!(!m1.retain);
    }
}

#[tokio::test]
async fn retained_set_delivered_and_cleared_only_by_retained_empty() {
    let tb = TestBroker::start().await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("r/1", QoS::AtLeastOnce, true, "one")
        .await
        .unwrap();
    p.c.publish("r/2", QoS::AtMostOnce, true, "two")
        .await
        .unwrap();
    eventually("two retained", || tb.broker().retained.len() == 2).await;

    let (mut s, _) = v3::connect(v3::opts(&tb, "s", Tr::Tcp)).await;
    sub(&mut s, "r/1", QoS::AtLeastOnce).await;
    let m = s.publish().await;
    assert!(m.retain, "retained-on-subscribe carries retain=1");
    assert_eq!(&m.payload[..], b"one");

    // Empty payload without retain is an ordinary message: the retained one stays.
    p.c.publish("r/1", QoS::AtLeastOnce, false, "")
        .await
        .unwrap();
    let m = s.publish().await;
    assert!(!m.retain && m.payload.is_empty());
    assert_eq!(tb.broker().retained.len(), 2);

    // Empty retained payload clears it.
    p.c.publish("r/1", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    eventually("r/1 cleared", || tb.broker().retained.len() == 1).await;
    let (mut s2, _) = v3::connect(v3::opts(&tb, "s2", Tr::Tcp)).await;
    sub(&mut s2, "r/#", QoS::AtLeastOnce).await;
    let m = s2.publish().await;
    assert_eq!(&m.payload[..], b"two");
    s2.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn will_published_on_abnormal_close_not_on_disconnect() {
    let tb = TestBroker::start().await;
    let (mut w, _) = v3::connect(v3::opts(&tb, "watcher", Tr::Tcp)).await;
    sub(&mut w, "will/#", QoS::AtLeastOnce).await;

    let mut o = v3::opts(&tb, "dies", Tr::Tcp);
    o.set_last_will(LastWill::new("will/dies", "gone", QoS::AtLeastOnce, false));
    let (dies, _) = v3::connect(o).await;
    dies.kill();
    let m = w.publish().await;
    assert_eq!(m.topic, "will/dies");
    assert_eq!(&m.payload[..], b"gone");
    assert_eq!(metric(&tb, "apiary_wills_published_total"), 1);

    let mut o = v3::opts(&tb, "polite", Tr::Tcp);
    o.set_last_will(LastWill::new(
        "will/polite",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, _) = v3::connect(o).await;
    polite.c.disconnect().await.unwrap();
    eventually("polite disconnected", || {
        tb.broker().registry.get("default", "polite").is_none()
    })
    .await;
    w.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn persistent_session_queues_while_offline_and_resumes() {
    let tb = TestBroker::start().await;
    let mut o = v3::opts(&tb, "persist", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, ack) = v3::connect(o.clone()).await;
    assert_eq!(connack(&ack), (false, ConnectReturnCode::Success));
    sub(&mut c, "p/#", QoS::AtLeastOnce).await;
    c.c.disconnect().await.unwrap();
    let reg = &tb.broker().registry;
    eventually("offline", || {
        reg.get("default", "persist")
            .is_some_and(|s| !s.is_online())
    })
    .await;

    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    for i in 0..3u8 {
        p.c.publish("p/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    eventually("3 queued", || {
        reg.get("default", "persist")
            .unwrap()
            .state
            .lock()
            .queue
            .len()
            == 3
    })
    .await;

    let (mut c, ack) = v3::connect(o).await;
    assert_eq!(
        connack(&ack),
        (true, ConnectReturnCode::Success),
        "session present"
    );
    for i in 0..3u8 {
        assert_eq!(c.publish().await.payload[..], [i], "in order");
    }

    // A clean session discards it.
    c.c.disconnect().await.unwrap();
    eventually("offline again", || {
        reg.get("default", "persist")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    let mut o = v3::opts(&tb, "persist", Tr::Tcp);
    o.set_clean_session(true);
    let (_c, ack) = v3::connect(o).await;
    assert_eq!(connack(&ack), (false, ConnectReturnCode::Success));
    assert!(reg
        .get("default", "persist")
        .unwrap()
        .state
        .lock()
        .subscriptions
        .is_empty());
}

#[tokio::test]
async fn unacknowledged_qos1_and_qos2_are_redelivered_with_dup() {
    let tb = TestBroker::start().await;
    let mut o = v3::opts(&tb, "slow", Tr::Tcp);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    let (mut c, _) = v3::connect(o.clone()).await;
    sub(&mut c, "d/#", QoS::ExactlyOnce).await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("d/1", QoS::AtLeastOnce, false, "a")
        .await
        .unwrap();
    p.c.publish("d/2", QoS::ExactlyOnce, false, "b")
        .await
        .unwrap();
    let first = c.publish().await;
    let second = c.publish().await;
    assert!(!first.dup && !second.dup);
    c.kill(); // no PUBACK / PUBREC ever sent
    let reg = &tb.broker().registry;
    eventually("offline", || {
        reg.get("default", "slow").is_some_and(|s| !s.is_online())
    })
    .await;
    assert_eq!(
        reg.get("default", "slow")
            .unwrap()
            .state
            .lock()
            .inflight
            .len(),
        2
    );

    o.set_manual_acks(false);
    let (mut c, ack) = v3::connect(o).await;
    assert!(connack(&ack).0, "session present");
    let r1 = c.publish().await;
    let r2 = c.publish().await;
    assert!(r1.dup && r2.dup, "redelivery sets DUP");
    assert_eq!((&r1.payload[..], r1.pkid), (&b"a"[..], first.pkid));
    assert_eq!((&r2.payload[..], r2.pkid), (&b"b"[..], second.pkid));
    eventually("acked", || {
        reg.get("default", "slow")
            .unwrap()
            .state
            .lock()
            .inflight
            .is_empty()
    })
    .await;
}

#[tokio::test]
async fn second_connection_with_same_client_id_takes_over() {
    let tb = TestBroker::start().await;
    let (mut a, _) = v3::connect(v3::opts(&tb, "same", Tr::Tcp)).await;
    let (mut b, _) = v3::connect(v3::opts(&tb, "same", Tr::Ws)).await;
    let (err, _) = a.closed().await;
    assert!(!err.is_empty());
    sub(&mut b, "still/here", QoS::AtMostOnce).await;
    assert_eq!(tb.broker().registry.len(), 1);
}

#[tokio::test]
async fn sys_topics_are_served_and_never_match_leading_wildcards() {
    let tb = TestBroker::start().await;
    let (mut all, _) = v3::connect(v3::opts(&tb, "all", Tr::Tcp)).await;
    let (mut sys, _) = v3::connect(v3::opts(&tb, "sys", Tr::Tcp)).await;
    sub(&mut all, "#", QoS::AtMostOnce).await;
    sub(&mut all, "+/broker/uptime", QoS::AtMostOnce).await;
    sub(&mut sys, "$SYS/broker/clients/connected", QoS::AtMostOnce).await;
    apiary::sys::publish_once(tb.broker());
    let m = sys.publish().await;
    assert_eq!(m.topic, "$SYS/broker/clients/connected");
    assert_eq!(&m.payload[..], b"2");
    all.no_publish(Duration::from_millis(300)).await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("plain", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(all.publish().await.topic, "plain");
}

#[tokio::test]
async fn shared_subscription_round_robin() {
    let tb = TestBroker::start().await;
    let (mut a, _) = v3::connect(v3::opts(&tb, "a", Tr::Tcp)).await;
    let (mut b, _) = v3::connect(v3::opts(&tb, "b", Tr::Tcp)).await;
    sub(&mut a, "$share/g/work/+", QoS::AtLeastOnce).await;
    sub(&mut b, "$share/g/work/+", QoS::AtLeastOnce).await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    for i in 0..4u8 {
        p.c.publish("work/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let got_a = [a.publish().await.payload[0], a.publish().await.payload[0]];
    let got_b = [b.publish().await.payload[0], b.publish().await.payload[0]];
    a.no_publish(Duration::from_millis(200)).await;
    let mut all: Vec<u8> = got_a.iter().chain(got_b.iter()).copied().collect();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3], "each message to exactly one member");
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_with_the_highest_qos() {
    let tb = TestBroker::start().await;
    let (mut c, _) = v3::connect(v3::opts(&tb, "c", Tr::Tcp)).await;
    sub(&mut c, "o/#", QoS::AtMostOnce).await;
    sub(&mut c, "o/+", QoS::AtLeastOnce).await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("o/x", QoS::ExactlyOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(c.publish().await.qos, QoS::AtLeastOnce);
    c.no_publish(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn keepalive_expiry_closes_the_connection_and_publishes_the_will() {
    let tb = TestBroker::start().await;
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::connect(4, "sleepy", true, 1)).await;
    assert_eq!(r.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);
    // Send nothing more: after 1.5 s the broker must close.
    r.until_closed().await;
    assert_eq!(metric(&tb, "apiary_keepalive_timeouts_total"), 1);

    // Keepalive 0 disables the check: the connection outlives 1.5 x any small value.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::connect(4, "awake", true, 0)).await;
    r.read_n(4).await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    r.send(&raw::packet(0xC0, &[])).await;
    assert_eq!(r.read_n(2).await, vec![0xD0, 0x00], "PINGRESP after idling");
}

#[tokio::test]
async fn bad_input_gets_a_refusal_or_a_close_and_a_counter() {
    let tb = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let addr = tb.tcp_addr();

    // Unknown protocol level: CONNACK 0x01.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(7, "x", true, 0)).await;
    assert_eq!(r.until_closed().await, vec![0x20, 0x02, 0x00, 0x01]);

    // Empty client id with clean session 0: CONNACK 0x02.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "", false, 0)).await;
    assert_eq!(r.until_closed().await, vec![0x20, 0x02, 0x00, 0x02]);
    assert_eq!(metric(&tb, "apiary_connect_refused_total"), 1);

    // Empty client id with clean session 1 is accepted (an id is assigned).
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "", true, 0)).await;
    assert_eq!(r.read_n(4).await, vec![0x20, 0x02, 0x00, 0x00]);

    // A first packet that is not CONNECT.
    let before = metric(&tb, "apiary_malformed_packets_total");
    let mut r = Raw::connect(addr).await;
    r.send(&raw::packet(0xC0, &[])).await;
    assert!(r.until_closed().await.is_empty());
    assert_eq!(metric(&tb, "apiary_malformed_packets_total"), before + 1);

    // Garbage after CONNECT.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "garbage", true, 0)).await;
    r.read_n(4).await;
    r.send(&[0xF0, 0x00, 0xFF, 0xFF]).await;
    r.until_closed().await;
    assert_eq!(metric(&tb, "apiary_malformed_packets_total"), before + 2);

    // A wildcard in a PUBLISH topic.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "wild", true, 0)).await;
    r.read_n(4).await;
    r.send(&raw::publish_v3("a/+", b"x")).await;
    r.until_closed().await;
    assert_eq!(metric(&tb, "apiary_invalid_topic_total"), 1);

    // Over max_packet_size.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "big", true, 0)).await;
    r.read_n(4).await;
    r.send(&raw::publish_v3("big", &[0u8; 2000])).await;
    r.until_closed().await;
    assert_eq!(metric(&tb, "apiary_packets_too_large_total"), 1);

    // An invalid filter gets 0x80 for that filter only; the connection stays.
    let mut r = Raw::connect(addr).await;
    r.send(&raw::connect(4, "filters", true, 0)).await;
    r.read_n(4).await;
    r.send(&raw::subscribe_v3(7, "a/#/b", 1)).await;
    assert_eq!(r.read_n(5).await, vec![0x90, 0x03, 0x00, 0x07, 0x80]);
    r.send(&raw::subscribe_v3(8, "a/#", 1)).await;
    assert_eq!(r.read_n(5).await, vec![0x90, 0x03, 0x00, 0x08, 0x01]);

    // The broker still serves everyone else.
    let (mut ok, _) = v3::connect(v3::opts(&tb, "fine", Tr::Tcp)).await;
    sub(&mut ok, "fine", QoS::AtMostOnce).await;
}

#[tokio::test]
async fn max_connections_refuses_at_accept() {
    let tb = TestBroker::start_with(|c| c.listeners.max_connections = 2).await;
    let (_a, _) = v3::connect(v3::opts(&tb, "a", Tr::Tcp)).await;
    let (_b, _) = v3::connect(v3::opts(&tb, "b", Tr::Tcp)).await;
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::connect(4, "c", true, 0)).await;
    assert!(r.until_closed().await.is_empty());
    assert_eq!(metric(&tb, "apiary_connections_refused_total"), 1);
}

#[tokio::test]
async fn queue_limit_drops_oldest_and_counts_per_session() {
    let tb = TestBroker::start_with(|c| c.session.max_queued_messages = 3).await;
    let mut o = v3::opts(&tb, "q", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, _) = v3::connect(o.clone()).await;
    sub(&mut c, "q", QoS::AtLeastOnce).await;
    c.c.disconnect().await.unwrap();
    let reg = &tb.broker().registry;
    eventually("offline", || {
        reg.get("default", "q").is_some_and(|s| !s.is_online())
    })
    .await;
    let (p, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    for i in 0..5u8 {
        p.c.publish("q", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    eventually("dropped 2", || {
        reg.snapshot("default", "q", &tb.broker().config())
            .unwrap()
            .mqueue_dropped
            == 2
    })
    .await;
    assert_eq!(
        metric(&tb, "apiary_messages_dropped_total{reason=\"queue_full\"}"),
        2
    );
    let (mut c, _) = v3::connect(o).await;
    for i in 2..5u8 {
        assert_eq!(c.publish().await.payload[..], [i]);
    }
}
