//! Shared subscriptions across the nodes of a cluster: a group with members on several
//! nodes gets each message once cluster-wide, balanced over its nodes, whichever node
//! publishes (also one holding members); each group gets its copy; a node whose last
//! member leaves stops taking the group's messages.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;

use crate::cluster::{nats, node, settled, subscriber};
use crate::common::{v5, TestBroker, Tr};

/// Reads publishes until none comes for a while; the payloads, and the client back.
fn collect(mut c: v5::Client) -> tokio::task::JoinHandle<(Vec<String>, v5::Client)> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(p) = tokio::time::timeout(Duration::from_millis(1500), c.publish()).await {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        (got, c)
    })
}

async fn publish_all(tb: &TestBroker, id: &str, prefix: &str, n: usize) {
    let (mut p, _) = v5::connect(v5::opts(tb, id, Tr::Tcp)).await;
    for i in 0..n {
        p.c.publish(
            format!("job/{i}"),
            QoS::AtLeastOnce,
            false,
            format!("{prefix}{i}"),
        )
        .await
        .unwrap();
    }
    // Every one acknowledged (so handed on) before the client goes.
    let mut acked = 0;
    while acked < n {
        if let Packet::PubAck(_) = p.next().await.unwrap() {
            acked += 1;
        }
    }
}

/// Every payload of `want`, each once, across the members' shares.
fn once_across(shares: &[&Vec<String>], want: usize, prefix: &str) {
    let mut all: Vec<&String> = shares.iter().flat_map(|v| v.iter()).collect();
    all.sort();
    let mut expected: Vec<String> = (0..want).map(|i| format!("{prefix}{i}")).collect();
    expected.sort();
    assert_eq!(
        all,
        expected.iter().collect::<Vec<_>>(),
        "each message once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_group_spread_over_nodes_gets_each_message_once() {
    let Some(nats) = nats().await else { return };
    let (a, b, c) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    let group = [("$share/g/job/+", QoS::AtLeastOnce)];
    let ma = subscriber(&a, "m-a", &group).await;
    let mb = subscriber(&b, "m-b", &group).await;
    let h = subscriber(&c, "h-c", &[("$share/h/job/#", QoS::AtLeastOnce)]).await;
    let plain = subscriber(&c, "plain-c", &[("job/+", QoS::AtLeastOnce)]).await;
    // Published on a node that holds a member: balanced over both nodes all the same.
    let tasks = [ma, mb, h, plain].map(collect);
    publish_all(&a, "pub-a", "a", 40).await;
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    let Ok([(ga, ma), (gb, mb), (gh, h), (gp, plain)]) = <[_; 4]>::try_from(out) else {
        unreachable!()
    };
    once_across(&[&ga, &gb], 40, "a");
    assert!(!ga.is_empty() && !gb.is_empty(), "a: {ga:?}, b: {gb:?}");
    once_across(&[&gh], 40, "a");
    once_across(&[&gp], 40, "a");
    // From a node without members.
    let tasks = [ma, mb].map(collect);
    publish_all(&c, "pub-c", "c", 40).await;
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    let Ok([(ga, ma), (gb, mb)]) = <[_; 2]>::try_from(out) else {
        unreachable!()
    };
    once_across(&[&ga, &gb], 40, "c");
    assert!(!ga.is_empty() && !gb.is_empty(), "a: {ga:?}, b: {gb:?}");
    // b's member leaves: a's takes everything.
    mb.kill();
    crate::common::eventually("b leaves the queue group", || {
        crate::common::metric(&b, "apiary_cluster_queue_subscriptions") == 0
    })
    .await;
    settled(&b).await;
    let task = collect(ma);
    publish_all(&c, "pub-c2", "d", 20).await;
    let (ga, _) = task.await.unwrap();
    once_across(&[&ga], 20, "d");
    h.kill();
    plain.kill();
}
