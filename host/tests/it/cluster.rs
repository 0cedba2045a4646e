//! Three nodes as one broker over a NATS server each test starts (Debian's
//! `nats-server`): messages cross nodes once with a single node's QoS rules, NATS is
//! asked only for what subscribers need, nodes see each other and notice one that stops.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;

use crate::common::{self, v5, TestBroker, Tr};

#[path = "../support/nats_server.rs"]
mod nats_server;

/// The nodes' admin key.
pub(crate) const ADMIN: (&str, &str) = ("root", "rootsecret");

/// A NATS server for one test; its `dir` also holds the nodes' key file.
pub(crate) type Nats = nats_server::NatsServer;

/// A NATS server with JetStream on (its store in the server's temporary directory).
pub(crate) async fn nats() -> Option<Nats> {
    nats_with(true).await
}

/// A NATS server, with or without JetStream (missing: fails in CI, see `skip_missing`).
pub(crate) async fn nats_with(jetstream: bool) -> Option<Nats> {
    if !std::path::Path::new(nats_server::NATS_SERVER).exists() {
        common::skip_missing("nats-server (apt-get install nats-server)");
        return None;
    }
    let n = nats_server::start(jetstream).await;
    std::fs::write(
        n.dir.path().join("keys"),
        "root:rootsecret:admin:tenant=*\n",
    )
    .unwrap();
    Some(n)
}

/// A node named `name` of the cluster `nats` runs.
pub(crate) async fn node(nats: &Nats, name: &str) -> TestBroker {
    TestBroker::start_with(cluster_config(nats, name)).await
}

pub(crate) fn cluster_config(nats: &Nats, name: &str) -> impl FnOnce(&mut apiary::Config) {
    let (url, name, keys) = (
        nats.url.clone(),
        name.to_string(),
        nats.dir.path().join("keys"),
    );
    move |c: &mut apiary::Config| {
        c.api_keys_file = Some(keys);
        c.cluster = Some(apiary::cluster::ClusterConfig {
            nats: vec![url],
            node: Some(name),
            heartbeat_ms: 100,
            node_timeout_ms: 1500,
            ..Default::default()
        });
    }
}

/// How many nodes `tb` sees running, itself included.
pub(crate) fn running(tb: &TestBroker) -> usize {
    let c = tb.broker().cluster().expect("clustered");
    c.nodes(tb.broker())
        .iter()
        .filter(|n| n.state == "running")
        .count()
}

/// Waits until NATS has every subscription `tb`'s sessions asked for.
pub(crate) async fn settled(tb: &TestBroker) {
    tb.broker().cluster().expect("clustered").settled().await;
}

pub(crate) async fn subscriber(tb: &TestBroker, id: &str, filters: &[(&str, QoS)]) -> v5::Client {
    let (mut c, _) = v5::connect(v5::opts(tb, id, Tr::Tcp)).await;
    for (f, q) in filters {
        c.c.subscribe(*f, *q).await.unwrap();
        c.suback().await;
    }
    settled(tb).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_on_one_node_reaches_subscribers_on_the_others_once_with_its_qos() {
    let Some(nats) = nats().await else { return };
    let (a, b, c) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    // Overlapping filters on one session, and a second session on another node.
    let mut on_a = subscriber(
        &a,
        "sub-a",
        &[("t/#", QoS::AtLeastOnce), ("t/+/x", QoS::ExactlyOnce)],
    )
    .await;
    let mut on_b = subscriber(&b, "sub-b", &[("t/1/x", QoS::AtMostOnce)]).await;
    let mut on_c = subscriber(&c, "sub-c", &[("t/1/x", QoS::ExactlyOnce)]).await;
    let (pubr, _) = v5::connect(v5::opts(&c, "pub-c", Tr::Tcp)).await;
    for q in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        pubr.c
            .publish("t/1/x", q, false, format!("{q:?}"))
            .await
            .unwrap();
        // Node a: once (two matching filters), at the highest QoS the publish allows.
        let p = on_a.publish().await;
        assert_eq!((&p.payload[..], p.qos), (format!("{q:?}").as_bytes(), q));
        // Node b: capped by its QoS 0 subscription.
        let p = on_b.publish().await;
        assert_eq!(p.qos, QoS::AtMostOnce);
        // The publisher's own node: once, from its own router (no echo through NATS).
        let p = on_c.publish().await;
        assert_eq!(p.qos, q);
    }
    for s in [&mut on_a, &mut on_b, &mut on_c] {
        s.no_publish(Duration::from_millis(300)).await;
    }
    // `#` reaches the parent level; `+` does not reach two levels; `$` topics stay out.
    let mut all = subscriber(&b, "all-b", &[("#", QoS::AtMostOnce)]).await;
    pubr.c
        .publish("t", QoS::AtMostOnce, false, "parent")
        .await
        .unwrap();
    assert_eq!(&on_a.publish().await.payload[..], b"parent");
    assert_eq!(&all.publish().await.payload[..], b"parent");
    pubr.c
        .publish("$x/y", QoS::AtMostOnce, false, "dollar")
        .await
        .unwrap();
    pubr.c
        .publish("u/1 2/.*>/", QoS::AtMostOnce, false, "odd")
        .await
        .unwrap();
    assert_eq!(
        &all.publish().await.payload[..],
        b"odd",
        "odd levels cross, $ topics do not"
    );
    on_b.no_publish(Duration::from_millis(200)).await;
    let forwarded = common::metric(&c, "apiary_cluster_forwarded_total");
    assert!(forwarded >= 6, "{forwarded}");
    assert!(common::metric(&a, "apiary_cluster_duplicates_total") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_listen_only_for_what_their_sessions_hold() {
    let Some(nats) = nats().await else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let (pubr, _) = v5::connect(v5::opts(&b, "pub-b", Tr::Tcp)).await;
    // Nobody subscribed on a: nothing it would route arrives there.
    pubr.c
        .publish("q/1", QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    common::eventually("b sent it", || {
        common::metric(&b, "apiary_cluster_forwarded_total") == 1
    })
    .await;
    settled(&b).await;
    let mut s = subscriber(&a, "sub-a", &[("q/+", QoS::AtMostOnce)]).await;
    assert_eq!(common::metric(&a, "apiary_cluster_subjects"), 1);
    pubr.c
        .publish("q/2", QoS::AtMostOnce, false, "y")
        .await
        .unwrap();
    assert_eq!(&s.publish().await.payload[..], b"y");
    assert_eq!(common::metric(&a, "apiary_cluster_received_total"), 1);
    s.c.unsubscribe("q/+").await.unwrap();
    common::eventually("a stops listening", || {
        common::metric(&a, "apiary_cluster_subjects") == 0
    })
    .await;
    // The listening task ends (dropping its NATS subscription) as it is next polled.
    tokio::time::sleep(Duration::from_millis(100)).await;
    settled(&a).await;
    pubr.c
        .publish("q/3", QoS::AtMostOnce, false, "z")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(common::metric(&a, "apiary_cluster_received_total"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_other_and_notice_one_that_stops() {
    let Some(nats) = nats().await else { return };
    let (a, b, c) = (
        node(&nats, "a").await,
        node(&nats, "b").await,
        node(&nats, "c").await,
    );
    let listed = |tb: &TestBroker| {
        let c = tb.broker().cluster().unwrap();
        let mut v: Vec<(String, &'static str)> = c
            .nodes(tb.broker())
            .into_iter()
            .map(|n| (n.node, n.state))
            .collect();
        v.sort();
        v
    };
    common::eventually("a hears b and c", || listed(&a).len() == 3).await;
    assert_eq!(
        listed(&a),
        [
            ("a".into(), "running"),
            ("b".into(), "running"),
            ("c".into(), "running")
        ]
    );
    let (status, body) = crate::emqx::call(&a, "GET", "/cluster", None, None).await;
    assert_eq!(status, 401, "{body}");
    drop(b);
    tokio::time::sleep(Duration::from_millis(100)).await;
    common::eventually("a marks b down", || {
        listed(&a).contains(&("b".into(), "down"))
    })
    .await;
    assert!(listed(&c).contains(&("a".into(), "running")));
    common::eventually("a counts two nodes running", || {
        common::metric(&a, "apiary_cluster_nodes_running") == 2
    })
    .await;
    let (status, body) = crate::emqx::call(&a, "GET", "/cluster", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["node"], &body["nats"]),
        (&"a".into(), &"connected".into()),
        "{body}"
    );
    assert_eq!(body["nodes"][0]["self"], true, "{body}");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3, "{body}");
}

#[tokio::test]
async fn a_bad_cluster_section_is_refused_at_start_with_the_key() {
    for (toml, want) in [
        ("[cluster]\nnats = []\n", "cluster.nats"),
        ("[cluster]\nnode = \"has space\"\n", "cluster.node"),
        (
            "[cluster]\nheartbeat_ms = 1000\nnode_timeout_ms = 1500\n",
            "node_timeout_ms",
        ),
        ("[cluster]\nuser = \"u\"\n", "cluster.user"),
        (
            "[cluster]\nnats = [\"nats://127.0.0.1:4222\"]\nbogus = 1\n",
            "bogus",
        ),
    ] {
        let err = apiary::Config::from_toml(toml, "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{toml}: {err}");
    }
    let ok = apiary::Config::from_toml("[cluster]\nnode = \"n1\"\n", "t").unwrap();
    assert_eq!(ok.cluster.unwrap().nats, ["nats://127.0.0.1:4222"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_listens_again_for_its_stored_sessions_and_dollar_topics_cross() {
    let Some(nats) = nats().await else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    // A persistent session on a, subscribed to a `$` filter.
    let mut o = v5::opts(&a, "keeper", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut k, _) = v5::connect(o).await;
    k.c.subscribe("$x/+", QoS::AtLeastOnce).await.unwrap();
    k.suback().await;
    settled(&a).await;
    let (pubr, _) = v5::connect(v5::opts(&b, "pub-b", Tr::Tcp)).await;
    pubr.c
        .publish("$x/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    assert_eq!(&k.publish().await.payload[..], b"one");
    k.kill();
    // Restarted (new ports, same data dir): the stored session's filter is asked for again,
    // so a message published on b while its client is away waits in its queue.
    let a = a.restart(cluster_config(&nats, "a")).await;
    assert_eq!(common::metric(&a, "apiary_cluster_subjects"), 1);
    settled(&a).await;
    pubr.c
        .publish("$x/2", QoS::AtLeastOnce, false, "two")
        .await
        .unwrap();
    common::eventually("the message reached the stored session on a", || {
        common::metric(&a, "apiary_cluster_received_total") == 1
    })
    .await;
    let mut o = v5::opts(&a, "keeper", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut k, _) = v5::connect(o).await;
    // "one" comes again first if its PUBACK was not in before the kill (a redelivery).
    let mut got = k.publish().await;
    if &got.payload[..] == b"one" {
        got = k.publish().await;
    }
    assert_eq!(&got.payload[..], b"two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_publishers_are_held_not_dropped_when_the_queue_to_nats_is_full() {
    let Some(nats) = nats().await else { return };
    let b = node(&nats, "b").await;
    // A queue to NATS of 4 messages: a burst of 300 QoS 1 publishes overflows it at once.
    let f = cluster_config(&nats, "a");
    let a = TestBroker::start_with(move |c| {
        f(c);
        c.cluster.as_mut().unwrap().max_pending = 4;
    })
    .await;
    let mut s = subscriber(&b, "sub-b", &[("burst/#", QoS::AtLeastOnce)]).await;
    let o = v5::opts(&a, "pub-a", Tr::Tcp);
    let (p, _) = v5::connect(o).await;
    for i in 0..300 {
        p.c.publish(format!("burst/{i}"), QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    for i in 0..300 {
        let m = s.publish().await;
        assert_eq!(
            &m.topic[..],
            format!("burst/{i}").as_bytes(),
            "in order, none missing"
        );
    }
    assert_eq!(
        common::metric(&a, "apiary_cluster_forward_dropped_total"),
        0
    );
}
