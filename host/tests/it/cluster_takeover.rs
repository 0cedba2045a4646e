//! Session takeover across the nodes of a cluster: a client id connecting to node b
//! while its session lives on node a takes it over (a's connection closed, session
//! present, its subscriptions and owed messages moved), and a clean start on another
//! node ends it there.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;

use crate::cluster::{nats, node, running, settled};
use crate::common::{self, v5, TestBroker, Tr};

fn opts(tb: &TestBroker, clean: bool) -> rumqttc::v5::MqttOptions {
    let mut o = v5::opts(tb, "roamer", Tr::Tcp);
    o.set_clean_start(clean);
    o.set_session_expiry_interval(Some(600));
    o
}

fn session_present(ack: &Packet) -> bool {
    match ack {
        Packet::ConnAck(a) => a.session_present,
        other => panic!("not a CONNACK: {other:?}"),
    }
}

fn holds(tb: &TestBroker) -> bool {
    tb.broker().registry.get("default", "roamer").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_connecting_to_another_node_takes_its_session_over() {
    let Some(nats) = nats().await else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    common::eventually("a and b hear each other", || {
        running(&a) == 2 && running(&b) == 2
    })
    .await;
    let (pubr, _) = v5::connect(v5::opts(&a, "pub-a", Tr::Tcp)).await;

    // Online on a, subscribed; the same client id connects to b.
    let (mut on_a, ack) = v5::connect(opts(&a, true)).await;
    assert!(!session_present(&ack));
    on_a.c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    on_a.suback().await;
    let (mut on_b, ack) = v5::connect(opts(&b, false)).await;
    assert!(session_present(&ack), "the session came along");
    let (err, seen) = on_a.closed().await;
    assert!(
        seen.iter()
            .any(|p| matches!(p, Packet::Disconnect(d) if d.reason_code as u8 == 0x8E))
            || !err.is_empty(),
        "a's connection ends: {err} {seen:?}"
    );
    assert!(!holds(&a) && holds(&b));
    // Its subscription moved: a publish on a reaches it on b.
    settled(&b).await;
    pubr.c
        .publish("r/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    assert_eq!(&on_b.publish().await.payload[..], b"one");

    // Offline on b with messages owed; back on a: they come with it.
    on_b.kill();
    common::eventually("b sees it go", || {
        !b.broker()
            .registry
            .get("default", "roamer")
            .unwrap()
            .is_online()
    })
    .await;
    for p in ["two", "three"] {
        pubr.c
            .publish(format!("r/{p}"), QoS::AtLeastOnce, false, p)
            .await
            .unwrap();
    }
    common::eventually("both wait on b", || {
        let s = b.broker().registry.get("default", "roamer").unwrap();
        let n = s.state.lock().queue.len();
        n >= 2
    })
    .await;
    let (mut back, ack) = v5::connect(opts(&a, false)).await;
    assert!(session_present(&ack));
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = back.publish().await;
        if &p.payload[..] != b"one" {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
    }
    assert_eq!(got, ["two", "three"], "in order");
    assert!(holds(&a) && !holds(&b));
    back.no_publish(Duration::from_millis(300)).await;
    back.kill();

    // A clean start on b ends the session on a: nothing comes along.
    let (mut fresh, ack) = v5::connect(opts(&b, true)).await;
    assert!(!session_present(&ack));
    assert!(!holds(&a));
    settled(&b).await;
    pubr.c
        .publish("r/4", QoS::AtLeastOnce, false, "four")
        .await
        .unwrap();
    fresh.no_publish(Duration::from_millis(300)).await;
    fresh.kill();

    // A session that ends with its connection (expiry 0) is not present elsewhere.
    let mut o = v5::opts(&a, "brief", Tr::Tcp);
    o.set_session_expiry_interval(Some(0));
    let (mut brief, _) = v5::connect(o).await;
    brief.c.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    brief.suback().await;
    let mut o = v5::opts(&b, "brief", Tr::Tcp);
    o.set_clean_start(false);
    let (_again, ack) = v5::connect(o).await;
    assert!(!session_present(&ack), "nothing came along: it ended");
}
