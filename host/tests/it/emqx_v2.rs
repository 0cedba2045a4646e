//! What EMQX users ask of its clients API, in the stock `emqx` plugin: repeated
//! `clientid`/`username` (EMQX #4502), `fields=`, and `clients_v2` cursor paging that holds
//! still while clients come and go (EMQX #7870) with no cursor on the last page (#18531).

use serde_json::Value;

use crate::common::{v3, TestBroker, Tr};
use crate::emqx::{call, conforms, get, start, ADMIN};

async fn client(tb: &TestBroker, id: &str, user: &str) -> v3::Client {
    let mut o = v3::opts(tb, id, Tr::Tcp);
    o.set_credentials(user, "x");
    v3::connect(o).await.0
}

fn ids(v: &Value) -> Vec<&str> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|c| c["clientid"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn repeated_ids_and_usernames_and_chosen_fields() {
    let (tb, _dir) = start().await;
    let _a = client(&tb, "rep-a", "u0").await;
    let _b = client(&tb, "rep-b", "u1").await;
    let _c = client(&tb, "rep-c", "u2").await;
    let (st, v) = get(
        &tb,
        "/clients?clientid=rep-a&clientid=rep-c&clientid=nobody",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(ids(&v), ["rep-a", "rep-c"]);
    assert_eq!(v["meta"]["count"], 2);
    let (_, v) = get(&tb, "/clients?username=u0&username=u1").await;
    assert_eq!(ids(&v), ["rep-a", "rep-b"]);
    // Both repeated: the intersection.
    let (_, v) = get(
        &tb,
        "/clients?username=u0&username=u1&clientid=rep-b&clientid=rep-c",
    )
    .await;
    assert_eq!(ids(&v), ["rep-b"]);

    let (_, v) = get(&tb, "/clients?clientid=rep-a&fields=clientid,username").await;
    let keys: Vec<&String> = v["data"][0].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["clientid", "username"], "{v}");
    // Every field a client shows can be asked for by name.
    let (_, full) = get(&tb, "/clients?clientid=rep-a").await;
    let all: Vec<String> = full["data"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let (st, v) = get(
        &tb,
        &format!("/clients?clientid=rep-a&fields={}", all.join(",")),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"][0].as_object().unwrap().len(), all.len());
    let (st, v) = get(&tb, "/clients?fields=clientid,heap").await;
    assert_eq!(st, 400);
    assert!(v["message"].as_str().unwrap().contains("\"heap\""), "{v}");
}

#[tokio::test]
async fn cursor_pages_hold_still_while_clients_come_and_go() {
    let (tb, _dir) = start().await;
    let _a = client(&tb, "cur-a", "u").await;
    let _b = client(&tb, "cur-b", "u").await;
    let _c = client(&tb, "cur-c", "u").await;
    let (st, p1) = get(&tb, "/clients_v2?limit=2").await;
    assert_eq!(st, 200, "{p1}");
    assert_eq!(ids(&p1), ["cur-a", "cur-b"]);
    assert_eq!(p1["meta"]["hasnext"], true);
    let cursor = p1["meta"]["cursor"].as_str().unwrap().to_string();
    // A client shown goes away and a new one arrives between the requests.
    let (st, _) = call(&tb, "DELETE", "/api/v5/clients/cur-a", Some(ADMIN), None).await;
    assert_eq!(st, 204);
    let _d = client(&tb, "cur-d", "u").await;
    let (_, p2) = get(&tb, &format!("/clients_v2?limit=2&cursor={cursor}")).await;
    assert_eq!(
        ids(&p2),
        ["cur-c", "cur-d"],
        "nothing skipped, nothing repeated"
    );
    assert_eq!(p2["meta"]["hasnext"], false);
    let (_, doc) = get(&tb, "/openapi.json").await;
    conforms(&doc, "/clients_v2", "get", 200, &p1);
    conforms(&doc, "/clients_v2", "get", 200, &p2);
    assert!(
        p2["meta"].get("cursor").is_none(),
        "no phantom cursor: {p2}"
    );
    // Filters and fields apply as on /clients.
    let (_, v) = get(
        &tb,
        "/clients_v2?clientid=cur-b&clientid=cur-d&fields=clientid",
    )
    .await;
    assert_eq!(ids(&v), ["cur-b", "cur-d"]);
    assert_eq!(v["data"][0].as_object().unwrap().len(), 1);
    let (st, v) = get(&tb, "/clients_v2?cursor=garbage!").await;
    assert_eq!(st, 400, "{v}");
}

#[tokio::test]
async fn queued_and_inflight_messages_page_by_position_with_hasnext() {
    use crate::common::raw;
    let (tb, _dir) = start().await;
    // An offline persistent session with five queued messages.
    let mut o = v3::opts(&tb, "mq-off", Tr::Tcp);
    o.set_clean_session(false);
    let (mut sub, _) = v3::connect(o).await;
    sub.c.subscribe("mq/t", v3::QoS::AtLeastOnce).await.unwrap();
    sub.suback().await;
    sub.c.disconnect().await.unwrap();
    crate::common::eventually("mq-off offline", || {
        tb.broker()
            .registry
            .get("default", "mq-off")
            .is_some_and(|s| !s.online.load(std::sync::atomic::Ordering::Relaxed))
    })
    .await;
    let (publ, _) = v3::connect(v3::opts(&tb, "mq-pub", Tr::Tcp)).await;
    for i in 0..5 {
        publ.c
            .publish("mq/t", v3::QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    crate::common::eventually("five queued", || {
        tb.broker()
            .registry
            .get("default", "mq-off")
            .is_some_and(|s| s.state.lock().queue.len() == 5)
    })
    .await;
    let path = "/clients/mq-off/mqueue_messages?limit=2&payload=plain";
    let (st, p1) = get(&tb, path).await;
    assert_eq!(st, 200, "{p1}");
    let texts = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["payload"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(texts(&p1), ["m0", "m1"]);
    assert_eq!(p1["data"][0]["from_clientid"], "mq-pub");
    assert_eq!(p1["data"][0]["topic"], "mq/t");
    assert_eq!(p1["meta"]["hasnext"], true);
    let pos = p1["meta"]["position"].as_str().unwrap().to_string();
    let (_, p2) = get(&tb, &format!("{path}&position={pos}")).await;
    assert_eq!(texts(&p2), ["m2", "m3"]);
    let pos = p2["meta"]["position"].as_str().unwrap().to_string();
    let (_, p3) = get(&tb, &format!("{path}&position={pos}")).await;
    assert_eq!(texts(&p3), ["m4"]);
    assert_eq!(p3["meta"]["hasnext"], false);
    assert!(p3["meta"].get("position").is_none(), "{p3}");
    let (_, doc) = get(&tb, "/openapi.json").await;
    conforms(&doc, "/clients/{clientid}/mqueue_messages", "get", 200, &p1);
    // Default payloads are base64.
    let (_, b64) = get(&tb, "/clients/mq-off/mqueue_messages?limit=1").await;
    assert_eq!(b64["data"][0]["payload"], "bTA=");

    // A client that never acknowledges: its messages stay in flight, with packet ids.
    let mut r = raw::Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::connect(4, "mq-slow", true, 60)).await;
    r.read_n(4).await;
    r.send(&raw::subscribe_v3(1, "mq/slow", 1)).await;
    r.read_n(5).await;
    for i in 0..3 {
        publ.c
            .publish("mq/slow", v3::QoS::AtLeastOnce, false, format!("s{i}"))
            .await
            .unwrap();
    }
    crate::common::eventually("three in flight", || {
        tb.broker()
            .registry
            .get("default", "mq-slow")
            .is_some_and(|s| s.state.lock().inflight.len() == 3)
    })
    .await;
    let (_, f) = get(
        &tb,
        "/clients/mq-slow/inflight_messages?payload=plain&limit=2",
    )
    .await;
    assert_eq!(texts(&f), ["s0", "s1"], "{f}");
    assert!(f["data"][0]["packet_id"].as_u64().is_some(), "{f}");
    let pos = f["meta"]["position"].as_str().unwrap().to_string();
    let (_, f2) = get(
        &tb,
        &format!("/clients/mq-slow/inflight_messages?payload=plain&position={pos}"),
    )
    .await;
    assert_eq!(texts(&f2), ["s2"]);
    let (st, _) = get(&tb, "/clients/nobody/mqueue_messages").await;
    assert_eq!(st, 404);
    let (st, _) = get(&tb, "/clients/mq-off/mqueue_messages?position=abc").await;
    assert_eq!(st, 400);
}
