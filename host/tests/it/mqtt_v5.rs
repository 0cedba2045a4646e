//! MQTT 5 behaviour over real sockets with rumqttc's v5 client (and hand-built packets
//! for what it will not send).

use crate::common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{self, Raw};
use common::v5::{self, Packet, QoS};
use common::{eventually, metric, TestBroker, Tr};
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, DisconnectReasonCode, Filter, PubAckReason, PublishProperties,
    RetainForwardRule, SubscribeProperties, SubscribeReasonCode, UnsubAckReason,
};

fn connack(p: &Packet) -> &rumqttc::v5::mqttbytes::v5::ConnAck {
    match p {
        Packet::ConnAck(a) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

async fn sub(c: &mut v5::Client, filter: Filter) -> Vec<SubscribeReasonCode> {
    c.c.subscribe_many(vec![filter]).await.unwrap();
    match c.suback().await {
        Packet::SubAck(s) => s.return_codes,
        _ => unreachable!(),
    }
}

async fn sub_qos(c: &mut v5::Client, f: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
    sub(c, Filter::new(f, qos)).await
}

async fn next_puback(c: &mut v5::Client) -> PubAckReason {
    loop {
        if let Packet::PubAck(a) = c.next().await.expect("connection alive") {
            return a.reason;
        }
    }
}

#[tokio::test]
async fn connack_advertises_limits_and_assigns_a_client_id() {
    let tb = TestBroker::start_with(|c| c.mqtt.max_keepalive_secs = 5).await;
    let (_c, ack) = v5::connect(v5::opts(&tb, "", Tr::Tcp)).await;
    let a = connack(&ack);
    assert_eq!(a.code, ConnectReturnCode::Success);
    let p = a.properties.as_ref().expect("CONNACK properties");
    let assigned = p
        .assigned_client_identifier
        .as_deref()
        .expect("assigned client id");
    assert!(assigned.starts_with("apiary-"), "{assigned}");
    assert_eq!(p.receive_max, Some(32));
    assert_eq!(p.max_packet_size, Some(1024 * 1024));
    assert_eq!(p.topic_alias_max, Some(1024));
    assert_eq!(
        p.server_keep_alive,
        Some(5),
        "client asked 30 s, the limit is 5"
    );
    assert!(
        tb.broker().registry.get("default", assigned).is_some(),
        "registered under the assigned id"
    );
}

#[tokio::test]
async fn reason_codes_on_every_ack() {
    let tb = TestBroker::start_with(|c| c.mqtt.max_subscriptions = 1).await;
    let (mut c, _) = v5::connect(v5::opts(&tb, "rc", Tr::Tcp)).await;
    c.c.publish("nobody/listens", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(
        next_puback(&mut c).await,
        PubAckReason::NoMatchingSubscribers
    );
    assert_eq!(
        sub_qos(&mut c, "one", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    assert_eq!(
        sub_qos(&mut c, "two", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::QuotaExceeded]
    );
    c.c.publish("one", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(next_puback(&mut c).await, PubAckReason::Success);
    c.c.unsubscribe("never-subscribed").await.unwrap();
    loop {
        if let Packet::UnsubAck(u) = c.next().await.unwrap() {
            assert_eq!(u.reasons, vec![UnsubAckReason::NoSubscriptionExisted]);
            break;
        }
    }
}

#[tokio::test]
async fn topic_aliases_in_both_directions() {
    let tb = TestBroker::start().await;
    let mut o = v5::opts(&tb, "aliased", Tr::Tcp);
    o.set_topic_alias_max(Some(4));
    let (mut s, _) = v5::connect(o).await;
    sub_qos(&mut s, "alias/#", QoS::AtMostOnce).await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    let props = PublishProperties {
        topic_alias: Some(3),
        ..Default::default()
    };
    p.c.publish_with_properties("alias/t", QoS::AtMostOnce, false, "1", props.clone())
        .await
        .unwrap();
    // Same alias, empty topic: the broker resolves it.
    p.c.publish_with_properties("", QoS::AtMostOnce, false, "2", props)
        .await
        .unwrap();
    let m1 = s.publish().await;
    let m2 = s.publish().await;
    assert_eq!(
        (&m1.topic[..], &m1.payload[..]),
        (&b"alias/t"[..], &b"1"[..])
    );
    assert_eq!(&m2.payload[..], b"2");
    // Towards the subscriber the broker assigned alias 1 and then sent an empty topic.
    assert_eq!(m1.properties.as_ref().and_then(|p| p.topic_alias), Some(1));
    assert_eq!(m2.properties.as_ref().and_then(|p| p.topic_alias), Some(1));
    assert!(
        m2.topic.is_empty(),
        "second delivery carries only the alias"
    );
}

#[tokio::test]
async fn receive_maximum_limits_what_is_in_flight() {
    let tb = TestBroker::start().await;
    let mut o = v5::opts(&tb, "rm", Tr::Tcp);
    o.set_receive_maximum(Some(1));
    o.set_manual_acks(true);
    let (mut s, _) = v5::connect(o).await;
    sub_qos(&mut s, "rm", QoS::AtLeastOnce).await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    for i in 0..3u8 {
        p.c.publish("rm", QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    let first = s.publish().await;
    s.no_publish(Duration::from_millis(300)).await;
    let snap = tb
        .broker()
        .registry
        .snapshot("default", "rm", &tb.broker().config())
        .unwrap();
    assert_eq!(
        (snap.inflight_cnt, snap.inflight_max, snap.mqueue_len),
        (1, 1, 2)
    );
    s.c.ack(&first).await.unwrap();
    let second = s.publish().await;
    assert_eq!(second.payload[..], [1]);
    s.c.ack(&second).await.unwrap();
    assert_eq!(s.publish().await.payload[..], [2]);
}

#[tokio::test]
async fn subscription_ids_no_local_and_retain_as_published() {
    let tb = TestBroker::start().await;
    let (mut c, _) = v5::connect(v5::opts(&tb, "opts", Tr::Tcp)).await;
    c.c.subscribe_with_properties(
        "ids/#",
        QoS::AtLeastOnce,
        SubscribeProperties {
            id: Some(7),
            user_properties: vec![],
        },
    )
    .await
    .unwrap();
    c.suback().await;
    let mut nl = Filter::new("nl", QoS::AtMostOnce);
    nl.nolocal = true;
    sub(&mut c, nl).await;
    let mut rap = Filter::new("rap/yes", QoS::AtMostOnce);
    rap.preserve_retain = true;
    sub(&mut c, rap).await;
    sub_qos(&mut c, "rap/no", QoS::AtMostOnce).await;

    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("ids/a", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    let m = c.publish().await;
    assert_eq!(m.properties.unwrap().subscription_identifiers, vec![7]);

    c.c.publish("nl", QoS::AtMostOnce, false, "own")
        .await
        .unwrap();
    p.c.publish("nl", QoS::AtMostOnce, false, "other")
        .await
        .unwrap();
    assert_eq!(
        &c.publish().await.payload[..],
        b"other",
        "own message suppressed by no-local"
    );

    p.c.publish("rap/yes", QoS::AtMostOnce, true, "r1")
        .await
        .unwrap();
    let m = c.publish().await;
    assert!(m.retain, "retain-as-published keeps the flag");
    p.c.publish("rap/no", QoS::AtMostOnce, true, "r2")
        .await
        .unwrap();
    let m = c.publish().await;
    assert!(
        !m.retain,
        "without it the flag is cleared on routed messages"
    );
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let tb = TestBroker::start().await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("rh", QoS::AtMostOnce, true, "kept")
        .await
        .unwrap();
    eventually("retained", || tb.broker().retained.len() == 1).await;

    let (mut c, _) = v5::connect(v5::opts(&tb, "c", Tr::Tcp)).await;
    let mut f = Filter::new("rh", QoS::AtMostOnce);
    f.retain_forward_rule = RetainForwardRule::Never;
    sub(&mut c, f.clone()).await;
    c.no_publish(Duration::from_millis(200)).await;

    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub(&mut c, f.clone()).await; // not new: it replaces the existing subscription
    c.no_publish(Duration::from_millis(200)).await;

    f.retain_forward_rule = RetainForwardRule::OnEverySubscribe;
    sub(&mut c, f.clone()).await;
    assert!(c.publish().await.retain);

    let (mut d, _) = v5::connect(v5::opts(&tb, "d", Tr::Tcp)).await;
    f.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
    sub(&mut d, f).await;
    assert_eq!(
        &d.publish().await.payload[..],
        b"kept",
        "new subscription gets it"
    );
}

#[tokio::test]
async fn properties_pass_through() {
    let tb = TestBroker::start().await;
    let (mut s, _) = v5::connect(v5::opts(&tb, "s", Tr::Tcp)).await;
    sub_qos(&mut s, "props", QoS::AtLeastOnce).await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(Bytes::from_static(b"corr-1")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        content_type: Some("application/json".into()),
        message_expiry_interval: Some(120),
        ..Default::default()
    };
    p.c.publish_with_properties("props", QoS::AtLeastOnce, false, "{}", props)
        .await
        .unwrap();
    let got = s.publish().await.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr-1"[..]));
    assert_eq!(
        got.user_properties,
        vec![("k".into(), "v".into()), ("k".into(), "v2".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("application/json"));
    let left = got.message_expiry_interval.expect("expiry forwarded");
    assert!((1..=120).contains(&left), "{left}");
}

#[tokio::test]
async fn expired_messages_are_not_delivered() {
    let tb = TestBroker::start().await;
    let mut o = v5::opts(&tb, "late", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut c, _) = v5::connect(o.clone()).await;
    sub_qos(&mut c, "exp", QoS::AtLeastOnce).await;
    c.c.disconnect().await.unwrap();
    let reg = &tb.broker().registry;
    eventually("offline", || {
        reg.get("default", "late").is_some_and(|s| !s.is_online())
    })
    .await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    p.c.publish_with_properties("exp", QoS::AtLeastOnce, false, "short", short)
        .await
        .unwrap();
    p.c.publish("exp", QoS::AtLeastOnce, false, "forever")
        .await
        .unwrap();
    eventually("queued", || {
        reg.get("default", "late").unwrap().state.lock().queue.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut c, ack) = v5::connect(o).await;
    assert!(connack(&ack).session_present);
    assert_eq!(&c.publish().await.payload[..], b"forever");
    c.no_publish(Duration::from_millis(200)).await;
    assert_eq!(
        metric(&tb, "apiary_messages_dropped_total{reason=\"expired\"}"),
        1
    );
}

#[tokio::test]
async fn session_expiry_ends_offline_sessions() {
    let tb = TestBroker::start().await;
    let reg = &tb.broker().registry;
    // Expiry 0 with clean start 0: the session ends with the connection.
    let mut o = v5::opts(&tb, "zero", Tr::Tcp);
    o.set_clean_start(false);
    let (c, _) = v5::connect(o).await;
    c.c.disconnect().await.unwrap();
    eventually("zero gone", || reg.get("default", "zero").is_none()).await;

    let mut o = v5::opts(&tb, "one", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(1));
    let (mut c, _) = v5::connect(o).await;
    sub_qos(&mut c, "x", QoS::AtLeastOnce).await;
    c.c.disconnect().await.unwrap();
    eventually("one offline", || {
        reg.get("default", "one").is_some_and(|s| !s.is_online())
    })
    .await;
    let snap = reg
        .snapshot("default", "one", &tb.broker().config())
        .unwrap();
    assert_eq!(snap.expiry_interval, 1);
    eventually("one expired", || reg.get("default", "one").is_none()).await;
    assert_eq!(metric(&tb, "apiary_sessions_expired_total"), 1);
    assert_eq!(
        metric(&tb, "apiary_subscriptions"),
        0,
        "its subscriptions left the router"
    );
}

#[tokio::test]
async fn will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise() {
    let tb = TestBroker::start().await;
    let (mut w, _) = v5::connect(v5::opts(&tb, "watch", Tr::Tcp)).await;
    sub_qos(&mut w, "will/#", QoS::AtLeastOnce).await;
    let will = |topic: &str| crate::common::will_v5(topic, "bye", 1);
    let mut o = v5::opts(&tb, "back", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(will("will/back"));
    let (c, _) = v5::connect(o.clone()).await;
    c.kill();
    let reg = &tb.broker().registry;
    eventually("offline", || {
        reg.get("default", "back").is_some_and(|s| !s.is_online())
    })
    .await;
    let (_c, _) = v5::connect(o).await; // back within the delay
    w.no_publish(Duration::from_millis(1500)).await;

    let mut o = v5::opts(&tb, "gone", Tr::Tcp);
    o.set_session_expiry_interval(Some(60));
    o.set_last_will(will("will/gone"));
    let (c, _) = v5::connect(o).await;
    c.kill();
    let m = w.publish().await;
    assert_eq!(&m.topic[..], b"will/gone");
}

#[tokio::test]
async fn client_maximum_packet_size_is_respected() {
    let tb = TestBroker::start().await;
    let mut o = v5::opts(&tb, "small", Tr::Tcp);
    o.set_max_packet_size(Some(128));
    let (mut s, _) = v5::connect(o).await;
    sub_qos(&mut s, "sz", QoS::AtLeastOnce).await;
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("sz", QoS::AtLeastOnce, false, vec![0u8; 1000])
        .await
        .unwrap();
    p.c.publish("sz", QoS::AtLeastOnce, false, "small")
        .await
        .unwrap();
    assert_eq!(&s.publish().await.payload[..], b"small");
    assert_eq!(
        metric(&tb, "apiary_messages_dropped_total{reason=\"too_large\"}"),
        1
    );
    let reg = &tb.broker().registry;
    eventually("the dropped QoS 1 message left the inflight window", || {
        reg.snapshot("default", "small", &tb.broker().config())
            .unwrap()
            .inflight_cnt
            == 0
    })
    .await;
}

#[tokio::test]
async fn takeover_tells_the_old_connection_why() {
    let tb = TestBroker::start().await;
    let (mut a, _) = v5::connect(v5::opts(&tb, "same", Tr::Tcp)).await;
    let (_b, _) = v5::connect(v5::opts(&tb, "same", Tr::Tls)).await;
    let (err, seen) = a.closed().await;
    let told = seen.iter().any(|p| {
        matches!(p, Packet::Disconnect(d) if d.reason_code == DisconnectReasonCode::SessionTakenOver)
    });
    assert!(told || err.contains("SessionTakenOver"), "{err} {seen:?}");
}

/// v5 PUBLISH with QoS 2 and optional topic alias (hand-built).
fn publish_v5(topic: &str, pid: u16, alias: Option<u16>) -> Vec<u8> {
    let mut b = (topic.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    match alias {
        Some(a) => {
            b.push(3);
            b.push(0x23);
            b.extend_from_slice(&a.to_be_bytes());
        }
        None => b.push(0),
    }
    b.extend_from_slice(b"payload");
    raw::packet(0x34, &b)
}

#[tokio::test]
async fn protocol_violations_get_a_disconnect_with_the_reason_code() {
    let tb = TestBroker::start_with(|c| {
        c.mqtt.receive_maximum = 2;
        c.mqtt.topic_alias_maximum = 5;
    })
    .await;
    let connect = |id: &str| raw::connect(5, id, true, 0);

    // More QoS 2 publishes awaiting PUBREL than our receive maximum: 0x93.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&connect("greedy")).await;
    let ack = r.read_n(2).await;
    r.read_n(ack[1] as usize).await;
    for pid in 1..=3 {
        r.send(&publish_v5("t", pid, None)).await;
    }
    let rest = r.until_closed().await;
    let disconnect = rest.iter().position(|&b| b == 0xE0).expect("DISCONNECT");
    assert_eq!(rest[disconnect + 2], 0x93, "{rest:?}");

    // A topic alias over the maximum: 0x94.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&connect("alias")).await;
    let ack = r.read_n(2).await;
    r.read_n(ack[1] as usize).await;
    r.send(&publish_v5("t", 1, Some(9))).await;
    let rest = r.until_closed().await;
    assert_eq!(&rest[..1], &[0xE0]);
    assert_eq!(rest[2], 0x94, "{rest:?}");

    // An unknown alias with an empty topic: 0x82.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&connect("alias2")).await;
    let ack = r.read_n(2).await;
    r.read_n(ack[1] as usize).await;
    r.send(&publish_v5("", 1, Some(2))).await;
    let rest = r.until_closed().await;
    assert_eq!(rest[2], 0x82, "{rest:?}");
}
