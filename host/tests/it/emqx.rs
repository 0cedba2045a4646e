//! The stock `emqx` plugin end to end: loaded from the plugins directory with its stock
//! toml, answering real HTTP about real MQTT clients (3.1.1 and 5, TCP and WebSocket,
//! clean and persistent), with the effects of kicks and subscriptions seen by those
//! clients, and every 200 checked against the plugin's own OpenAPI document.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, v3, v5, TestBroker, Tr};

pub(crate) const ADMIN: (&str, &str) = ("ops", "s3cret");
const READER: (&str, &str) = ("ro", "ropw");

pub(crate) async fn start() -> (TestBroker, tempfile::TempDir) {
    let emqx = common::stock_toml("emqx");
    common::with_plugins(
        &[("emqx", "emqx", &emqx)],
        "ops:s3cret:admin\nro:ropw:connections:read\nacme:acmepw:admin:tenant=acme\n",
        |_| {},
    )
    .await
}

/// One HTTP request; returns the status and the body as JSON (Null when empty).
pub(crate) async fn call(
    tb: &TestBroker,
    method: &str,
    path: &str,
    who: Option<(&str, &str)>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    if let Some((k, p)) = who {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{k}:{p}"));
        head.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text[9..12].parse().unwrap();
    let b = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    (
        status,
        if b.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}"))
        },
    )
}

pub(crate) async fn get(tb: &TestBroker, path: &str) -> (u16, Value) {
    call(tb, "GET", &format!("/api/v5{path}"), Some(ADMIN), None).await
}

async fn post(tb: &TestBroker, path: &str, body: Value) -> (u16, Value) {
    call(
        tb,
        "POST",
        &format!("/api/v5{path}"),
        Some(ADMIN),
        Some(body),
    )
    .await
}

/// Checks `v` against an OpenAPI 3.0 schema (type, nullable, required, properties, items,
/// enum, oneOf, $ref): the subset the plugin's document uses.
fn check(doc: &Value, schema: &Value, v: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return check(doc, &doc["components"]["schemas"][name], v, at);
    }
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let fits = alts
            .iter()
            .filter(|s| std::panic::catch_unwind(|| check(doc, s, v, at)).is_ok())
            .count();
        assert_eq!(fits, 1, "{at}: {v} fits {fits} of oneOf");
        return;
    }
    if v.is_null() && schema.get("nullable") == Some(&json!(true)) {
        return;
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        assert!(e.contains(v), "{at}: {v} not in {e:?}");
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let ok = match ty {
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("boolean") => v.is_boolean(),
        _ => true,
    };
    assert!(ok, "{at}: {v} is not {ty:?}");
    if let Some(req) = schema.get("required").and_then(Value::as_array) {
        for k in req {
            assert!(v.get(k.as_str().unwrap()).is_some(), "{at}: missing {k}");
        }
    }
    if let (Some(props), Some(obj)) = (
        schema.get("properties").and_then(Value::as_object),
        v.as_object(),
    ) {
        for (k, val) in obj {
            let s = props
                .get(k)
                .unwrap_or_else(|| panic!("{at}: {k} is not in the document"));
            check(doc, s, val, &format!("{at}.{k}"));
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            check(doc, items, x, &format!("{at}[{i}]"));
        }
    }
}

/// Checks a real response against the document's schema for that path, method, status.
pub(crate) fn conforms(doc: &Value, path: &str, method: &str, status: u16, body: &Value) {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not in the document");
    let r = &op["responses"][status.to_string()];
    assert!(
        r.is_object(),
        "{method} {path} {status} is not in the document"
    );
    if let Some(s) = r.pointer("/content/application~1json/schema") {
        check(doc, s, body, &format!("{method} {path} {status}"));
    } else {
        assert!(
            body.is_null(),
            "{method} {path} {status}: body {body} but the document has none"
        );
    }
}

#[tokio::test]
async fn clients_listing_filters_paging_and_errors() {
    let (tb, _dir) = start().await;
    let (doc_status, doc) = call(&tb, "GET", "/api/v5/openapi.json", Some(READER), None).await;
    assert_eq!(doc_status, 200);
    assert_eq!(doc["openapi"], "3.0.3");

    let mut o = v3::opts(&tb, "dev-v3-tcp", Tr::Tcp);
    o.set_credentials("alice", "x");
    let (_a, _) = v3::connect(o).await;
    let mut o = v5::opts(&tb, "dev-v5-ws", Tr::Ws);
    o.set_credentials("bob", "x");
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    let (_b, _) = v5::connect(o).await;
    let mut o = v5::opts(&tb, "gone-v5", Tr::Tcp);
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(300),
        ..Default::default()
    });
    let (gone, _) = v5::connect(o).await;
    gone.c.disconnect().await.unwrap();
    common::eventually("gone-v5 offline", || {
        tb.broker()
            .registry
            .get("default", "gone-v5")
            .is_some_and(|s| !s.online.load(std::sync::atomic::Ordering::Relaxed))
    })
    .await;

    let (st, all) = get(&tb, "/clients").await;
    assert_eq!(st, 200);
    conforms(&doc, "/clients", "get", 200, &all);
    assert_eq!(
        all["meta"],
        json!({"page": 1, "limit": 100, "count": 3, "hasnext": false})
    );
    let ids = |v: &Value| -> Vec<String> {
        let mut x: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["clientid"].as_str().unwrap().to_string())
            .collect();
        x.sort();
        x
    };
    for (q, want) in [
        ("username=alice", vec!["dev-v3-tcp"]),
        ("like_clientid=v5", vec!["dev-v5-ws", "gone-v5"]),
        ("like_username=li", vec!["dev-v3-tcp"]),
        ("conn_state=connected", vec!["dev-v3-tcp", "dev-v5-ws"]),
        ("conn_state=disconnected", vec!["gone-v5"]),
        ("conn_state=idle", vec![]),
        ("proto_ver=4", vec!["dev-v3-tcp"]),
        ("clean_start=false", vec!["dev-v5-ws", "gone-v5"]),
        (
            "ip_address=127.0.0.1&proto_name=MQTT",
            vec!["dev-v3-tcp", "dev-v5-ws", "gone-v5"],
        ),
        ("zone=elsewhere", vec![]),
        ("clientid=dev-v5-ws", vec!["dev-v5-ws"]),
        ("gte_created_at=2999-01-01T00:00:00Z", vec![]),
        (
            "_lte_created_at=4102444800",
            vec!["dev-v3-tcp", "dev-v5-ws", "gone-v5"],
        ),
        (
            "gte_connected_at=1000000000000",
            vec!["dev-v3-tcp", "dev-v5-ws", "gone-v5"],
        ),
    ] {
        let (st, v) = get(&tb, &format!("/clients?{q}")).await;
        assert_eq!(st, 200, "{q}: {v}");
        assert_eq!(ids(&v), want, "{q}");
        assert_eq!(v["meta"]["count"], want.len(), "{q}");
    }
    // Paging: both spellings, the last page, a page past the end.
    let (_, p2) = get(&tb, "/clients?_page=2&_limit=2").await;
    assert_eq!(
        p2["meta"],
        json!({"page": 2, "limit": 2, "count": 3, "hasnext": false})
    );
    assert_eq!(p2["data"].as_array().unwrap().len(), 1);
    let (_, p1) = get(&tb, "/clients?page=1&limit=2").await;
    assert_eq!(p1["meta"]["hasnext"], true);
    let (st, empty) = get(&tb, "/clients?page=9&limit=2").await;
    assert_eq!(
        (st, empty["data"].clone(), empty["meta"]["hasnext"].clone()),
        (200, json!([]), json!(false))
    );
    for bad in [
        "limit=10001",
        "limit=0",
        "page=0",
        "conn_state=asleep",
        "proto_ver=x",
        "gte_created_at=soon",
    ] {
        let (st, e) = get(&tb, &format!("/clients?{bad}")).await;
        assert_eq!(
            (st, e["code"].as_str()),
            (400, Some("INVALID_PARAMETER")),
            "{bad}"
        );
        conforms(&doc, "/clients", "get", 400, &e);
    }
    // The client object.
    let (st, c) = get(&tb, "/clients/dev-v5-ws").await;
    assert_eq!(st, 200);
    conforms(&doc, "/clients/{clientid}", "get", 200, &c);
    assert_eq!(
        (
            c["username"].as_str(),
            c["proto_ver"].as_u64(),
            c["listener"].as_str()
        ),
        (Some("bob"), Some(5), Some("ws:default"))
    );
    assert_eq!(
        (
            c["clean_start"].clone(),
            c["expiry_interval"].clone(),
            c["is_persistent"].clone()
        ),
        (json!(false), json!(300), json!(true))
    );
    assert_eq!(c["ip_address"], "127.0.0.1");
    assert!(c["port"].as_u64().unwrap() > 0);
    let ts = c["connected_at"].as_str().unwrap();
    assert!(
        ts.len() == 29 && ts.ends_with("+00:00") && &ts[19..20] == ".",
        "RFC 3339 with ms: {ts}"
    );
    assert!(
        c.get("disconnected_at").is_none(),
        "only for disconnected clients"
    );
    let (_, g) = get(&tb, "/clients/gone-v5").await;
    assert_eq!(g["connected"], false);
    assert!(g["disconnected_at"].is_string());
    let (st, e) = get(&tb, "/clients/nobody").await;
    assert_eq!(
        (st, e),
        (
            404,
            json!({"code": "CLIENTID_NOT_FOUND", "message": "Client ID not found"})
        )
    );

    // Auth.
    let (st, e) = call(&tb, "GET", "/api/v5/clients", None, None).await;
    assert_eq!((st, e["code"].as_str()), (401, Some("BAD_USERNAME_OR_PWD")));
    let (st, _) = call(&tb, "GET", "/api/v5/clients", Some(("ops", "wrong")), None).await;
    assert_eq!(st, 401);
    let (st, _) = call(&tb, "GET", "/api/v5/clients", Some(READER), None).await;
    assert_eq!(st, 200, "a read key reads");
    let (st, e) = call(
        &tb,
        "DELETE",
        "/api/v5/clients/dev-v3-tcp",
        Some(READER),
        None,
    )
    .await;
    assert_eq!(st, 403, "a read key may not kick: {e}");
    conforms(&doc, "/clients/{clientid}", "delete", 403, &e);
    // A key of another tenant sees none of these clients.
    let (_, other) = call(
        &tb,
        "GET",
        "/api/v5/clients",
        Some(("acme", "acmepw")),
        None,
    )
    .await;
    assert_eq!(other["meta"]["count"], 0);
}

#[tokio::test]
async fn kicks_subscriptions_and_publish_as_the_clients_see_them() {
    let (tb, _dir) = start().await;
    let doc = call(&tb, "GET", "/api/v5/openapi.json", Some(READER), None)
        .await
        .1;
    let (mut on, _) = v5::connect(v5::opts(&tb, "online", Tr::Tcp)).await;
    let (mut v3c, _) = v3::connect(v3::opts(&tb, "old", Tr::Ws)).await;

    // Subscribe an online client on its behalf; a publish through the API reaches it.
    let (st, s) = post(
        &tb,
        "/clients/online/subscribe",
        json!({"topic": "t/a", "qos": 1}),
    )
    .await;
    assert_eq!(st, 200);
    conforms(&doc, "/clients/{clientid}/subscribe", "post", 200, &s);
    assert_eq!(
        (
            s["clientid"].as_str(),
            s["topic"].as_str(),
            s["qos"].as_u64(),
            s["nl"].as_u64()
        ),
        (Some("online"), Some("t/a"), Some(1), Some(0))
    );
    let (st, r) = post(
        &tb,
        "/publish",
        json!({"topic": "t/a", "payload": "hi", "qos": 1}),
    )
    .await;
    assert_eq!(st, 200);
    conforms(&doc, "/publish", "post", 200, &r);
    assert!(r["id"].is_string());
    let p = on.publish().await;
    assert_eq!((&p.topic[..], &p.payload[..]), (&b"t/a"[..], &b"hi"[..]));
    // Bulk subscribe for the 3.1.1 client, base64 publish to it.
    let (st, b) = post(
        &tb,
        "/clients/old/subscribe/bulk",
        json!([{"topic": "x/1", "qos": 0}, {"topic": "x/+", "qos": 1}]),
    )
    .await;
    assert_eq!(st, 200);
    conforms(&doc, "/clients/{clientid}/subscribe/bulk", "post", 200, &b);
    assert_eq!(b["data"].as_array().unwrap().len(), 2);
    let payload = base64::engine::general_purpose::STANDARD.encode([0u8, 159, 146, 150]);
    let (st, r) = post(&tb, "/publish/bulk", json!([{"topic": "x/2", "payload": payload, "payload_encoding": "base64"}, {"topic": "nobody/here"}])).await;
    assert_eq!(st, 200);
    conforms(&doc, "/publish/bulk", "post", 200, &r);
    assert_eq!(
        r[1],
        json!({"reason_code": 16, "message": "no_matching_subscribers"})
    );
    assert_eq!(&v3c.publish().await.payload[..], &[0u8, 159, 146, 150]);

    // Listing subscriptions.
    let (st, l) = get(&tb, "/subscriptions").await;
    assert_eq!(st, 200);
    conforms(&doc, "/subscriptions", "get", 200, &l);
    assert_eq!(l["meta"]["count"], 3);
    for (q, n) in [
        ("clientid=old", 2),
        ("topic=x/%2B", 1),
        ("qos=1", 2),
        ("match_topic=x/1", 2),
        ("match_topic=t/b", 0),
        ("limit=1&page=3", 3),
    ] {
        let (st, v) = get(&tb, &format!("/subscriptions?{q}")).await;
        assert_eq!(
            (st, v["meta"]["count"].as_u64()),
            (200, Some(n)),
            "{q}: {v}"
        );
    }
    let (st, cs) = get(&tb, "/clients/old/subscriptions").await;
    assert_eq!((st, cs.as_array().unwrap().len()), (200, 2));
    conforms(&doc, "/clients/{clientid}/subscriptions", "get", 200, &cs);

    // Unsubscribe: the client stops receiving, the API says no subscriber matched.
    let (st, _) = post(&tb, "/clients/online/unsubscribe", json!({"topic": "t/a"})).await;
    assert_eq!(st, 204);
    let (st, r) = post(&tb, "/publish", json!({"topic": "t/a", "payload": "again"})).await;
    assert_eq!(st, 202);
    conforms(&doc, "/publish", "post", 202, &r);
    on.no_publish(Duration::from_millis(200)).await;
    let (st, _) = post(
        &tb,
        "/clients/old/unsubscribe/bulk",
        json!([{"topic": "x/1"}, {"topic": "x/+"}]),
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(get(&tb, "/subscriptions").await.1["meta"]["count"], 0);

    // An offline persistent session: the subscription is recorded and its messages queue.
    let mut o = v5::opts(&tb, "sleeper", Tr::Tcp);
    o.set_clean_start(false);
    o.set_connect_properties(rumqttc::v5::mqttbytes::v5::ConnectProperties {
        session_expiry_interval: Some(600),
        ..Default::default()
    });
    let (s1, _) = v5::connect(o.clone()).await;
    s1.c.disconnect().await.unwrap();
    common::eventually("sleeper offline", || {
        tb.broker()
            .registry
            .get("default", "sleeper")
            .is_some_and(|s| !s.online.load(std::sync::atomic::Ordering::Relaxed))
    })
    .await;
    let (st, _) = post(
        &tb,
        "/clients/sleeper/subscribe",
        json!({"topic": "wake/up", "qos": 1}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        post(
            &tb,
            "/publish",
            json!({"topic": "wake/up", "payload": "morning", "qos": 1})
        )
        .await
        .0,
        200
    );
    let (mut s2, _) = v5::connect(o).await;
    assert_eq!(&s2.publish().await.payload[..], b"morning");

    // Errors in EMQX's shape, never a 500.
    for (path, body, want) in [
        ("/clients/online/subscribe", json!({"topic": "a/#/b"}), 400),
        (
            "/clients/online/subscribe",
            json!({"topic": "a", "qos": 3}),
            400,
        ),
        ("/clients/online/subscribe", json!({"qos": 1}), 400),
        ("/clients/nobody/subscribe", json!({"topic": "a"}), 404),
        ("/clients/nobody/unsubscribe", json!({"topic": "a"}), 404),
        ("/publish", json!({"topic": "a/+"}), 400),
        (
            "/publish",
            json!({"topic": "a", "payload": "%%%", "payload_encoding": "base64"}),
            400,
        ),
        ("/publish", json!("not an object"), 400),
        ("/clients/kickout/bulk", json!({}), 400),
    ] {
        let (st, e) = post(&tb, path, body.clone()).await;
        assert_eq!(st, want, "{path} {body}: {e}");
        assert!(e["code"].is_string() && e["message"].is_string(), "{e}");
    }

    // Kick: the client is disconnected and its session ends.
    let (st, _) = call(&tb, "DELETE", "/api/v5/clients/online", Some(ADMIN), None).await;
    assert_eq!(st, 204);
    let (err, _) = on.closed().await;
    assert!(!err.is_empty());
    assert_eq!(get(&tb, "/clients/online").await.0, 404);
    assert_eq!(
        call(&tb, "DELETE", "/api/v5/clients/online", Some(ADMIN), None)
            .await
            .0,
        404
    );
    let (st, _) = post(
        &tb,
        "/clients/kickout/bulk",
        json!(["old", "sleeper", "never-existed"]),
    )
    .await;
    assert_eq!(st, 204);
    v3c.closed().await;
    assert_eq!(get(&tb, "/clients").await.1["meta"]["count"], 0);
}

/// A subscription made through the API goes through the client's own ACL: what the
/// client could not subscribe to itself is 403 FORBIDDEN, and is not recorded.
#[tokio::test]
async fn admin_subscriptions_go_through_the_clients_acl() {
    let (tb, _root) = common::with_plugins(
        &[
            ("auth-file", "auth-file", common::USERS_DENY_SECRET),
            ("emqx", "emqx", &common::stock_toml("emqx")),
        ],
        "ops:s3cret:admin\n",
        |_| {},
    )
    .await;
    let mut o = v3::opts(&tb, "dan-c", Tr::Tcp);
    o.set_credentials("dan", "pw");
    let (_c, _) = v3::connect(o).await;
    let (st, body) = post(
        &tb,
        "/clients/dan-c/subscribe",
        json!({"topic": "secret/x", "qos": 1}),
    )
    .await;
    assert_eq!((st, &body["code"]), (403, &json!("FORBIDDEN")), "{body}");
    let (st, _) = post(&tb, "/clients/dan-c/subscribe", json!({"topic": "open/x"})).await;
    assert_eq!(st, 200);
    let (_, subs) = get(&tb, "/clients/dan-c/subscriptions").await;
    let topics: Vec<&str> = subs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["topic"].as_str())
        .collect();
    assert_eq!(topics, ["open/x"], "{subs}");
}
