//! Every listener (TCP, WebSocket, TLS, secure WebSocket) with both protocol versions:
//! a real rumqttc client connects, subscribes, publishes QoS 1 and receives it.

use crate::common;

use common::{v3, v5, TestBroker, ALL_TRANSPORTS};

#[tokio::test]
async fn v3_over_every_transport() {
    let tb = TestBroker::start().await;
    for t in ALL_TRANSPORTS {
        let (mut c, ack) = v3::connect(v3::opts(&tb, &format!("v3-{t:?}"), t)).await;
        assert!(
            matches!(ack, v3::Packet::ConnAck(ref a) if a.code == rumqttc::ConnectReturnCode::Success),
            "{t:?}: {ack:?}"
        );
        c.c.subscribe(format!("t/{t:?}"), v3::QoS::AtLeastOnce)
            .await
            .unwrap();
        c.suback().await;
        c.c.publish(format!("t/{t:?}"), v3::QoS::AtLeastOnce, false, "hello")
            .await
            .unwrap();
        let p = c.publish().await;
        assert_eq!(&p.payload[..], b"hello", "{t:?}");
        assert_eq!(p.qos, v3::QoS::AtLeastOnce);
        let snap = tb
            .broker()
            .registry
            .snapshot("default", &format!("v3-{t:?}"), &tb.broker().config())
            .unwrap();
        assert_eq!(snap.proto_ver, 4);
        assert_eq!(
            snap.transport,
            match t {
                common::Tr::Tcp => apiary::session::Transport::Tcp,
                common::Tr::Ws => apiary::session::Transport::Ws,
                common::Tr::Tls => apiary::session::Transport::Tls,
                common::Tr::Wss => apiary::session::Transport::Wss,
            }
        );
        c.c.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn v5_over_every_transport() {
    let tb = TestBroker::start().await;
    for t in ALL_TRANSPORTS {
        let (mut c, ack) = v5::connect(v5::opts(&tb, &format!("v5-{t:?}"), t)).await;
        assert!(matches!(ack, v5::Packet::ConnAck(_)), "{t:?}: {ack:?}");
        c.c.subscribe(format!("t/{t:?}"), v5::QoS::ExactlyOnce)
            .await
            .unwrap();
        c.suback().await;
        c.c.publish(format!("t/{t:?}"), v5::QoS::ExactlyOnce, false, "hi")
            .await
            .unwrap();
        let p = c.publish().await;
        assert_eq!(&p.payload[..], b"hi", "{t:?}");
        assert_eq!(p.qos, v5::QoS::ExactlyOnce);
        let snap = tb
            .broker()
            .registry
            .snapshot("default", &format!("v5-{t:?}"), &tb.broker().config())
            .unwrap();
        assert_eq!(snap.proto_ver, 5);
        assert!(snap.connected);
        c.c.disconnect().await.unwrap();
    }
}

/// The session features that depend on the connection's lifecycle, on every listener and
/// both versions: QoS 2, retained on subscribe, persistent session resume with a queued
/// message, and the will of a connection that drops.
#[tokio::test]
async fn session_features_on_every_listener_and_version() {
    let tb = TestBroker::start().await;
    let b = tb.broker().clone();
    for t in ALL_TRANSPORTS {
        for v5_client in [false, true] {
            let tag = format!("{t:?}-{}", if v5_client { "v5" } else { "v3" });
            let topic = format!("m/{tag}");
            let retained = format!("r/{tag}");
            b.publish_as_broker(
                "default",
                &retained,
                bytes::Bytes::from_static(b"kept"),
                rmqtt_codec::types::QoS::AtLeastOnce,
                true,
            )
            .unwrap();
            let id = format!("feat-{tag}");
            let will_topic = format!("w/{tag}");
            // Watcher for the will, over plain TCP.
            let (mut watch, _) =
                v3::connect(v3::opts(&tb, &format!("watch-{tag}"), common::Tr::Tcp)).await;
            watch
                .c
                .subscribe(&will_topic, v3::QoS::AtLeastOnce)
                .await
                .unwrap();
            watch.suback().await;

            if v5_client {
                let mut o = v5::opts(&tb, &id, t);
                o.set_clean_start(false);
                o.set_session_expiry_interval(Some(600));
                let (mut c, _) = v5::connect(o.clone()).await;
                c.c.subscribe(&topic, v5::QoS::ExactlyOnce).await.unwrap();
                c.c.subscribe(&retained, v5::QoS::AtLeastOnce)
                    .await
                    .unwrap();
                let r = c.publish().await;
                assert!(r.retain && &r.payload[..] == b"kept", "{tag}: retained");
                c.c.publish(&topic, v5::QoS::ExactlyOnce, false, "q2")
                    .await
                    .unwrap();
                assert_eq!(
                    c.publish().await.qos,
                    v5::QoS::ExactlyOnce,
                    "{tag}: QoS 2 round trip"
                );
                // Let the QoS 2 flow finish: a fresh client would not know a resent PUBREL.
                common::eventually("flows done", || {
                    b.registry
                        .get("default", &id)
                        .unwrap()
                        .state
                        .lock()
                        .inflight
                        .is_empty()
                })
                .await;
                c.c.disconnect().await.unwrap();
                common::eventually("offline", || {
                    b.registry
                        .get("default", &id)
                        .is_some_and(|s| !s.is_online())
                })
                .await;
                b.publish_as_broker(
                    "default",
                    &topic,
                    bytes::Bytes::from_static(b"while away"),
                    rmqtt_codec::types::QoS::AtLeastOnce,
                    false,
                )
                .unwrap();
                o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
                    &will_topic,
                    "gone",
                    v5::QoS::AtLeastOnce,
                    false,
                    None,
                ));
                let (mut c, ack) = v5::connect(o).await;
                assert!(
                    matches!(ack, v5::Packet::ConnAck(ref a) if a.session_present),
                    "{tag}: session present"
                );
                assert_eq!(
                    &c.publish().await.payload[..],
                    b"while away",
                    "{tag}: queued while offline"
                );
                c.kill();
            } else {
                let mut o = v3::opts(&tb, &id, t);
                o.set_clean_session(false);
                let (mut c, _) = v3::connect(o.clone()).await;
                c.c.subscribe(&topic, v3::QoS::ExactlyOnce).await.unwrap();
                c.c.subscribe(&retained, v3::QoS::AtLeastOnce)
                    .await
                    .unwrap();
                let r = c.publish().await;
                assert!(r.retain && &r.payload[..] == b"kept", "{tag}: retained");
                c.c.publish(&topic, v3::QoS::ExactlyOnce, false, "q2")
                    .await
                    .unwrap();
                assert_eq!(
                    c.publish().await.qos,
                    v3::QoS::ExactlyOnce,
                    "{tag}: QoS 2 round trip"
                );
                common::eventually("flows done", || {
                    b.registry
                        .get("default", &id)
                        .unwrap()
                        .state
                        .lock()
                        .inflight
                        .is_empty()
                })
                .await;
                c.c.disconnect().await.unwrap();
                common::eventually("offline", || {
                    b.registry
                        .get("default", &id)
                        .is_some_and(|s| !s.is_online())
                })
                .await;
                b.publish_as_broker(
                    "default",
                    &topic,
                    bytes::Bytes::from_static(b"while away"),
                    rmqtt_codec::types::QoS::AtLeastOnce,
                    false,
                )
                .unwrap();
                o.set_last_will(rumqttc::LastWill::new(
                    &will_topic,
                    "gone",
                    v3::QoS::AtLeastOnce,
                    false,
                ));
                let (mut c, ack) = v3::connect(o).await;
                assert!(
                    matches!(ack, v3::Packet::ConnAck(ref a) if a.session_present),
                    "{tag}: session present"
                );
                assert_eq!(
                    &c.publish().await.payload[..],
                    b"while away",
                    "{tag}: queued while offline"
                );
                c.kill();
            }
            let w = watch.publish().await;
            assert_eq!(
                (w.topic.as_str(), &w.payload[..]),
                (will_topic.as_str(), &b"gone"[..]),
                "{tag}: will"
            );
        }
    }
}
