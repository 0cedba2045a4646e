//! Retained messages across the nodes of a cluster, through the JetStream KV bucket:
//! published on one node, served by every node (also one started later), cleared
//! everywhere, the same last message on every node after concurrent writes, and kept
//! per node (said so on `GET /cluster`) when the NATS server has no JetStream.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::cluster::{nats, nats_with, node, subscriber, ADMIN};
use crate::common::{self, v5, TestBroker, Tr};

/// The retained payload of `topic` on a node, if any.
fn retained(tb: &TestBroker, topic: &str) -> Option<Vec<u8>> {
    let m = tb.broker().retained.matching("default", topic);
    m.first().map(|m| m.payload.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_published_on_one_node_are_served_by_every_node() {
    let Some(nats) = nats().await else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (pa, _) = v5::connect(v5::opts(&a, "pub-a", Tr::Tcp)).await;
    for (t, p) in [("r/1", "one"), ("r/2", "two")] {
        pa.c.publish(t, QoS::AtLeastOnce, true, p).await.unwrap();
    }
    common::eventually("b holds a's retained messages", || {
        retained(&b, "r/1").as_deref() == Some(b"one")
            && retained(&b, "r/2").as_deref() == Some(b"two")
    })
    .await;
    // A subscriber on b gets them from b, flagged retained.
    let mut s = subscriber(&b, "sub-b", &[("r/#", QoS::AtLeastOnce)]).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = s.publish().await;
        assert!(p.retain, "{p:?}");
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    got.sort();
    assert_eq!(got, ["one", "two"]);
    // Cleared on b (an empty retained publish): gone from a too.
    let (pb, _) = v5::connect(v5::opts(&b, "pub-b", Tr::Tcp)).await;
    pb.c.publish("r/1", QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    common::eventually("a drops the cleared message", || {
        retained(&a, "r/1").is_none()
    })
    .await;
    // Deleted through the admin API on a: gone from b.
    let (status, body) =
        crate::emqx::call(&a, "DELETE", "/retained?topic=r%2F2", Some(ADMIN), None).await;
    assert_eq!(status, 204, "{body}");
    common::eventually("b drops the deleted message", || {
        retained(&b, "r/2").is_none()
    })
    .await;
    // A node that joins later gets what is retained now, and only that.
    pa.c.publish("r/3", QoS::AtLeastOnce, true, "three")
        .await
        .unwrap();
    common::eventually("b has r/3", || retained(&b, "r/3").is_some()).await;
    let c = node(&nats, "c").await;
    common::eventually("c starts with r/3", || {
        retained(&c, "r/3").as_deref() == Some(b"three")
    })
    .await;
    assert!(retained(&c, "r/1").is_none() && retained(&c, "r/2").is_none());
    assert_eq!(c.broker().retained.len(), 1);
    let (status, body) = crate::emqx::call(&c, "GET", "/cluster", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retained"]["state"], "shared", "{body}");
    assert!(common::metric(&b, "apiary_cluster_retained_applied_total") >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retained_writes_leave_every_node_with_the_same_message() {
    let Some(nats) = nats().await else { return };
    let (a, b, c) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    let (pa, _) = v5::connect(v5::opts(&a, "pub-a", Tr::Tcp)).await;
    let (pb, _) = v5::connect(v5::opts(&b, "pub-b", Tr::Tcp)).await;
    for i in 0..50 {
        pa.c.publish("race", QoS::AtMostOnce, true, format!("a{i}"))
            .await
            .unwrap();
        pb.c.publish("race", QoS::AtMostOnce, true, format!("b{i}"))
            .await
            .unwrap();
    }
    common::eventually("all 100 writes are in the bucket", || {
        common::metric(&a, "apiary_cluster_retained_written_total")
            + common::metric(&b, "apiary_cluster_retained_written_total")
            == 100
    })
    .await;
    let all = || [&a, &b, &c].map(|n| retained(n, "race"));
    common::eventually("the nodes agree", || {
        let v = all();
        v[0].is_some() && v.iter().all(|x| *x == v[0])
    })
    .await;
    let agreed = all();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(all(), agreed, "and stay agreed");
    let last = String::from_utf8(agreed[0].clone().unwrap()).unwrap();
    assert!(
        last == "a49" || last == "b49",
        "the last write of one of them: {last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_retained_messages_stay_per_node_and_the_cluster_says_why() {
    let Some(nats) = nats_with(false).await else {
        return;
    };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    common::eventually("a finds no bucket", || {
        a.broker().cluster().unwrap().retained_state().0 == "local"
    })
    .await;
    let (status, body) = crate::emqx::call(&a, "GET", "/cluster", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["retained"]["state"], "local", "{body}");
    assert!(body["retained"]["reason"].is_string(), "{body}");
    // Still a broker: retained on its own node, messages across nodes.
    let mut s = subscriber(&b, "sub-b", &[("x", QoS::AtLeastOnce)]).await;
    let (pa, _) = v5::connect(v5::opts(&a, "pub-a", Tr::Tcp)).await;
    pa.c.publish("x", QoS::AtLeastOnce, true, "kept")
        .await
        .unwrap();
    assert_eq!(&s.publish().await.payload[..], b"kept");
    common::eventually("a keeps it", || retained(&a, "x").is_some()).await;
    assert!(retained(&b, "x").is_none());
    assert_eq!(
        common::metric(&a, "apiary_cluster_retained_dropped_total"),
        1
    );
}
