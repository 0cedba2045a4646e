//! The admin APIs across the nodes of a cluster: the stock EMQX plugin on node c lists
//! the clients of nodes a and b with c's own (counted, paged, filtered), shows one of
//! another node, subscribes it on its behalf, and kicks one on another node; rows name
//! their node, cursor pages walk the nodes, the subscription listing spans them, and a
//! session's queued messages are read on the node that holds it.

use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

use crate::cluster::{cluster_config, nats, node, running, ADMIN};
use crate::common::{self, v5, TestBroker, Tr};
use crate::emqx::call;

fn client_ids(body: &Value) -> Vec<String> {
    let mut v: Vec<String> = body["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|c| c["clientid"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

async fn get(tb: &TestBroker, path: &str) -> (u16, Value) {
    call(tb, "GET", &format!("/api/v5{path}"), Some(ADMIN), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emqx_api_on_one_node_sees_and_acts_on_the_clients_of_every_node() {
    let Some(nats) = nats().await else { return };
    let (a, b) = (node(&nats, "a").await, node(&nats, "b").await);
    let emqx = common::stock_toml("emqx");
    let (c, _dir) =
        common::with_plugins(&[("emqx", "emqx", &emqx)], "", cluster_config(&nats, "c")).await;
    common::eventually("c hears a and b", || running(&c) == 3).await;
    let (mut on_a, _) = v5::connect(v5::opts(&a, "dev-a", Tr::Tcp)).await;
    let (mut on_b, _) = v5::connect(v5::opts(&b, "dev-b", Tr::Tcp)).await;
    let (on_c, _) = v5::connect(v5::opts(&c, "dev-c", Tr::Tcp)).await;

    let (st, body) = get(&c, "/clients?limit=10").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(client_ids(&body), ["dev-a", "dev-b", "dev-c"]);
    assert_eq!(body["meta"]["count"], 3, "{body}");
    // Pages split the cluster's clients without a repeat or a gap.
    let (_, p1) = get(&c, "/clients?limit=2&page=1").await;
    let (_, p2) = get(&c, "/clients?limit=2&page=2").await;
    let mut both = [client_ids(&p1), client_ids(&p2)].concat();
    both.sort();
    assert_eq!(both, ["dev-a", "dev-b", "dev-c"], "{p1} {p2}");
    assert_eq!(p1["meta"]["hasnext"], true, "{p1}");
    assert_eq!(p2["meta"]["hasnext"], false, "{p2}");
    let (_, one) = get(&c, "/clients?like_clientid=v-b").await;
    assert_eq!(client_ids(&one), ["dev-b"]);
    // Each row names the node holding the session.
    let nodes: Vec<_> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["clientid"].clone(), r["node"].clone()))
        .collect();
    for (id, node) in [("dev-a", "a"), ("dev-b", "b"), ("dev-c", "c")] {
        assert!(nodes.contains(&(json!(id), json!(node))), "{body}");
    }
    // Cursor pages walk the nodes: every client once, the last page without a cursor.
    let mut seen = Vec::new();
    let mut path = "/clients_v2?limit=1".to_string();
    for _ in 0..3 {
        let (st, p) = get(&c, &path).await;
        assert_eq!(st, 200, "{p}");
        seen.extend(client_ids(&p));
        match p["meta"]["cursor"].as_str() {
            Some(cur) => path = format!("/clients_v2?limit=1&cursor={cur}"),
            None => path.clear(),
        }
    }
    assert!(path.is_empty(), "the third page is the last");
    assert_eq!(seen, ["dev-a", "dev-b", "dev-c"]);
    let (_, two) = get(&c, "/clients_v2?limit=2").await;
    let cur = two["meta"]["cursor"].as_str().unwrap().to_string();
    let (_, rest) = get(&c, &format!("/clients_v2?limit=2&cursor={cur}")).await;
    assert_eq!(
        [client_ids(&two), client_ids(&rest)].concat(),
        ["dev-a", "dev-b", "dev-c"]
    );
    assert!(rest["meta"].get("cursor").is_none(), "{rest}");
    assert_eq!(get(&c, "/clients_v2?cursor=bm9wZQ").await.0, 400);

    // One client of another node, by id.
    let (st, body) = get(&c, "/clients/dev-b").await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        (&body["clientid"], &body["connected"]),
        (&json!("dev-b"), &json!(true))
    );
    assert_eq!(get(&c, "/clients/nobody").await.0, 404);

    // Subscribed on its behalf through c: a's client gets what c's client publishes.
    let (st, body) = call(
        &c,
        "POST",
        "/api/v5/clients/dev-a/subscribe",
        Some(ADMIN),
        Some(json!({"topic": "x/y", "qos": 1})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    a.broker().cluster().unwrap().settled().await;
    on_c.c
        .publish("x/y", QoS::AtLeastOnce, false, "via c")
        .await
        .unwrap();
    assert_eq!(&on_a.publish().await.payload[..], b"via c");
    // The subscription listing spans the nodes, each row naming its node.
    let (st, subs) = get(&c, "/subscriptions?topic=x/y").await;
    assert_eq!(st, 200, "{subs}");
    assert_eq!(subs["data"][0]["clientid"], "dev-a", "{subs}");
    assert_eq!(subs["data"][0]["node"], "a", "{subs}");
    assert_eq!(subs["meta"]["count"], 1, "{subs}");

    // Kicked through c: b's client is disconnected and its session gone.
    let (st, body) = call(&c, "DELETE", "/api/v5/clients/dev-b", Some(ADMIN), None).await;
    assert_eq!(st, 204, "{body}");
    let (err, _) = on_b.closed().await;
    assert!(!err.is_empty());
    common::eventually("b drops dev-b", || {
        b.broker().registry.get("default", "dev-b").is_none()
    })
    .await;
    assert_eq!(get(&c, "/clients/dev-b").await.0, 404);
    assert!(common::metric(&b, "apiary_cluster_rpc_served_total") > 0);

    // A session's queued messages, read on another node.
    let mut o = v5::opts(&b, "off-b", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(600));
    let (mut off, _) = v5::connect(o).await;
    off.c.subscribe("q/#", QoS::AtLeastOnce).await.unwrap();
    off.suback().await;
    off.c.disconnect().await.unwrap();
    common::eventually("off-b is offline", || {
        b.broker()
            .registry
            .get("default", "off-b")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    b.broker().cluster().unwrap().settled().await;
    on_c.c
        .publish("q/1", QoS::AtLeastOnce, false, "kept")
        .await
        .unwrap();
    common::eventually("queued on b", || {
        let s = b.broker().registry.get("default", "off-b").unwrap();
        let n = s.state.lock().queue.len();
        n == 1
    })
    .await;
    let (st, m) = get(&c, "/clients/off-b/mqueue_messages?payload=plain").await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["data"][0]["payload"], "kept", "{m}");
    assert_eq!(m["data"][0]["topic"], "q/1", "{m}");
    assert_eq!(
        get(&c, "/clients/nobody/mqueue_messages").await.0,
        404,
        "no node holds it"
    );
}
