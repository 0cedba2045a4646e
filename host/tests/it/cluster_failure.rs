//! A node killed with SIGKILL: the `apiary` binary as node a, an in-process node b.
//! b marks a down within the node timeout and publishes the will of a's client that
//! was still connected (kept in the cluster's wills bucket), not the will of one that
//! disconnected normally; the EMQX-style view on b no longer counts a's sessions.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;

use crate::cluster::ADMIN;
use crate::cluster::{nats, node, subscriber, Nats};
use crate::common::{self, v5, TestBroker, Tr};

/// Node `a` as its own process, clustered on `nats` (its data in `dir`, kept across
/// restarts); its MQTT port and HTTP address.
fn spawn_a(nats: &Nats, dir: &std::path::Path) -> (crate::process::Proc, u16, SocketAddr) {
    let cfg = dir.join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\napi_keys_file = {:?}\n[listeners]\ntcp = \"127.0.0.1:0\"\n\
             [http]\nlisten = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n\
             [cluster]\nnats = [{:?}]\nnode = \"a\"\nheartbeat_ms = 100\nnode_timeout_ms = 1500\n",
            dir.join("data"),
            nats.dir.path().join("keys"),
            nats.url
        ),
    )
    .unwrap();
    let (child, addrs, _) = crate::process::spawn(&cfg, &["tcp", "http"]);
    let port = addrs["tcp"].parse::<SocketAddr>().unwrap().port();
    (child, port, addrs["http"].parse().unwrap())
}

/// A v5 client of a's port with a will on `wills/<id>`.
async fn with_will(port: u16, id: &str) -> v5::Client {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_last_will(LastWill::new(
        format!("wills/{id}"),
        format!("{id} is gone"),
        QoS::AtLeastOnce,
        false,
        None,
    ));
    v5::connect(o).await.0
}

fn state_of(b: &TestBroker, name: &str) -> Option<&'static str> {
    let c = b.broker().cluster().unwrap();
    c.nodes(b.broker())
        .into_iter()
        .find(|n| n.node == name)
        .map(|n| n.state)
}

/// Whether the wills bucket holds `key`.
async fn will_kept(nats: &Nats, key: &str) -> bool {
    kept(nats, "apiary-wills", key).await
}

/// Whether the cluster's `bucket` holds `key`.
async fn kept(nats: &Nats, bucket: &str, key: &str) -> bool {
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let Ok(kv) = js.get_key_value(bucket).await else {
        return false;
    };
    matches!(kv.get(key).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_marked_down_and_its_clients_wills_are_published() {
    let Some(nats) = nats().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let b = node(&nats, "b").await;
    let (mut a, port, _) = spawn_a(&nats, dir.path());
    common::eventually("b hears a", || state_of(&b, "a") == Some("running")).await;
    let mut watcher = subscriber(&b, "watcher", &[("wills/#", QoS::AtLeastOnce)]).await;

    let _stays = with_will(port, "stays").await;
    let leaves = with_will(port, "leaves").await;
    leaves.c.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    // The will of "stays" kept, of "leaves" gone (it disconnected normally).
    let settled = || async {
        will_kept(&nats, "a.default.stays").await && !will_kept(&nats, "a.default.leaves").await
    };
    while !settled().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the will of 'stays' kept, of 'leaves' not"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    a.kill().unwrap(); // SIGKILL: no will is published by a itself.
    a.wait().unwrap();
    let p = watcher.publish().await;
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        (&b"wills/stays"[..], &b"stays is gone"[..])
    );
    assert_eq!(state_of(&b, "a"), Some("down"));
    watcher.no_publish(Duration::from_millis(500)).await;
    assert_eq!(
        common::metric(&b, "apiary_cluster_wills_published_total"),
        1
    );
    assert!(
        !will_kept(&nats, "a.default.stays").await,
        "published once, then gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_on_purpose_leaves_no_will_to_be_published_again() {
    let Some(nats) = nats().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let b = node(&nats, "b").await;
    let (a, port, _) = spawn_a(&nats, dir.path());
    common::eventually("b hears a", || state_of(&b, "a") == Some("running")).await;
    let mut watcher = subscriber(&b, "watcher", &[("wills/#", QoS::AtLeastOnce)]).await;
    let _stays = with_will(port, "stays").await;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !will_kept(&nats, "a.default.stays").await {
        assert!(tokio::time::Instant::now() < deadline, "the will is kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::process::stop(a); // SIGTERM: a sees to its own clients' wills.
    assert!(
        !will_kept(&nats, "a.default.stays").await,
        "a took its wills out"
    );
    common::eventually("b marks a down", || state_of(&b, "a") == Some("down")).await;
    // Whatever a did with the will itself, b publishes none.
    let mut seen = 0;
    while tokio::time::timeout(Duration::from_millis(500), watcher.publish())
        .await
        .is_ok()
    {
        seen += 1;
    }
    assert!(seen <= 1, "published {seen} times");
    assert_eq!(
        common::metric(&b, "apiary_cluster_wills_published_total"),
        0
    );
}

/// A metric of the node serving `http`.
async fn metric_of(http: SocketAddr, name: &str) -> Option<u64> {
    let (st, body) = common::http(http, "GET", "/metrics", Some(ADMIN), b"").await;
    assert_eq!(st, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

/// A persistent session `id` of the node at `port`, with a will delayed `delay` seconds.
fn persistent(id: &str, port: u16, clean: bool, delay: u32) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_start(clean);
    o.set_session_expiry_interval(Some(600));
    o.set_last_will(common::will_v5(
        &format!("wills/{id}"),
        &format!("{id} is gone"),
        delay,
    ));
    o
}

fn keeper(port: u16, clean: bool) -> rumqttc::v5::MqttOptions {
    persistent("keeper", port, clean, 60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_persistent_session_resumes_on_another_node() {
    let Some(nats) = nats().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let b = node(&nats, "b").await;
    let (mut a, port, _) = spawn_a(&nats, dir.path());
    common::eventually("b hears a", || state_of(&b, "a") == Some("running")).await;
    let mut watcher = subscriber(&b, "watcher", &[("wills/#", QoS::AtLeastOnce)]).await;
    let (mut k, _) = v5::connect(keeper(port, true)).await;
    k.c.subscribe("orders/#", QoS::AtLeastOnce).await.unwrap();
    k.suback().await;
    // Another one that will not come back: its will waits out its 1 s delay on b.
    let (_gone, _) = v5::connect(persistent("gone", port, true, 1)).await;
    common::eventually_async("a keeps the sessions in the cluster", || async {
        kept(&nats, "apiary-sessions", "a.default.keeper").await
            && kept(&nats, "apiary-sessions", "a.default.gone").await
    })
    .await;

    a.kill().unwrap(); // SIGKILL, the client still connected.
    a.wait().unwrap();
    common::eventually("b adopts the sessions", || {
        common::metric(&b, "apiary_cluster_sessions_adopted_total") == 2
    })
    .await;
    let adopted = std::time::Instant::now();
    let w = watcher.publish().await;
    assert_eq!(
        &w.topic[..],
        b"wills/gone",
        "only the will of the one not back"
    );
    assert!(
        adopted.elapsed() >= Duration::from_millis(700),
        "published after its delay, not at once"
    );
    let s = b.broker().registry.get("default", "keeper").unwrap();
    assert!(!s.is_online());
    // Published for it while it is away: queued on b.
    let (p, _) = v5::connect(v5::opts(&b, "pub-b", Tr::Tcp)).await;
    p.c.publish("orders/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    common::eventually("queued", || s.state.lock().queue.len() == 1).await;
    drop(k);

    let (mut back, ack) = v5::connect(keeper(b.port(Tr::Tcp), false)).await;
    match ack {
        rumqttc::v5::mqttbytes::v5::Packet::ConnAck(a) => assert!(a.session_present),
        other => panic!("not a CONNACK: {other:?}"),
    }
    assert_eq!(&back.publish().await.payload[..], b"one");
    common::eventually_async("b keeps it under its own name", || {
        kept(&nats, "apiary-sessions", "b.default.keeper")
    })
    .await;
    assert!(!kept(&nats, "apiary-sessions", "a.default.keeper").await);

    // a comes back with the session in its store: dropped there, b's is the one.
    let (a, _, http) = spawn_a(&nats, dir.path());
    common::eventually_async("a drops its stale copies", || async {
        // Both: keeper and gone were adopted by b.
        metric_of(http, "apiary_cluster_sessions_dropped_total").await == Some(2)
    })
    .await;
    back.no_publish(Duration::from_millis(300)).await;
    let on_b = b.broker().registry.get("default", "keeper").unwrap();
    assert!(on_b.is_online());
    watcher.no_publish(Duration::from_millis(300)).await; // keeper came back in time.
    crate::process::stop(a);
}
