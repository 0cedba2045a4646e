//! Every listener (TCP, WebSocket, TLS, secure WebSocket) with both protocol versions:
//! a real rumqttc client connects, subscribes, publishes QoS 1 and receives it.

mod common;

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
            .snapshot("default", &format!("v3-{t:?}"), &tb.broker().config)
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
            .snapshot("default", &format!("v5-{t:?}"), &tb.broker().config)
            .unwrap();
        assert_eq!(snap.proto_ver, 5);
        assert!(snap.connected);
        c.c.disconnect().await.unwrap();
    }
}
