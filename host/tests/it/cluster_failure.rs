//! A node killed with SIGKILL: the `apiary` binary as node a, an in-process node b.
//! b marks a down within the node timeout and publishes the will of a's client that
//! was still connected (kept in the cluster's wills bucket), not the will of one that
//! disconnected normally; the EMQX-style view on b no longer counts a's sessions.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::QoS;

use crate::cluster::{nats, node, subscriber, Nats};
use crate::common::{self, v5, TestBroker};

/// Node `a` as its own process, clustered on `nats`; its MQTT port.
fn spawn_a(nats: &Nats, dir: &std::path::Path) -> (std::process::Child, u16) {
    let cfg = dir.join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[listeners]\ntcp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [auth]\nallow_anonymous = true\n[cluster]\nnats = [{:?}]\nnode = \"a\"\n\
             heartbeat_ms = 100\nnode_timeout_ms = 1500\n",
            dir.join("data"),
            nats.url
        ),
    )
    .unwrap();
    let (child, addrs, _) = crate::process::spawn(&cfg, &["tcp"]);
    let port = addrs["tcp"].parse::<std::net::SocketAddr>().unwrap().port();
    (child, port)
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
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let Ok(kv) = js.get_key_value("apiary-wills").await else {
        return false;
    };
    matches!(kv.get(key).await, Ok(Some(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_marked_down_and_its_clients_wills_are_published() {
    let Some(nats) = nats().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let b = node(&nats, "b").await;
    let (mut a, port) = spawn_a(&nats, dir.path());
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
    let (a, port) = spawn_a(&nats, dir.path());
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
