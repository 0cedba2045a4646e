//! The stock `bifromq` plugin end to end: BifroMQ's API service on a listener of its own,
//! every parameter a header, against real MQTT clients (3.1.1 and 5, clean and persistent
//! inboxes), with the stock auth-file for users, tenants and ACL, and two tenants.

use std::time::Duration;

use crate::common::{self, v3, v5, Answer, TestBroker, Tr};

const OPS: (&str, &str) = ("ops", "s3cret");
const KEYS: &str = "ops:s3cret:admin:tenant=*\nacme:ak:connections:write,publish,connections:read:tenant=acme\nreader:rk:connections:read:tenant=*\npublisher:pk:publish:tenant=*\n";

struct Api {
    tb: TestBroker,
    addr: std::net::SocketAddr,
    _root: tempfile::TempDir,
}

async fn start(f: impl FnOnce(&mut apiary::Config)) -> Api {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = common::stock_toml("bifromq").replace(
        "listen = \"0.0.0.0:8091\"",
        &format!("listen = \"127.0.0.1:{port}\""),
    );
    let (tb, root) = common::with_plugins(
        &[
            ("auth-file", "auth-file", common::USERS_DENY_SECRET),
            ("bifromq", "bifromq", &toml),
        ],
        KEYS,
        f,
    )
    .await;
    Api {
        tb,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        _root: root,
    }
}

fn sub_qos(a: &Answer) -> Option<&str> {
    a.headers.get("sub_qos").map(String::as_str)
}

/// One request with headers (and basic auth when `key` is given).
async fn call(
    a: &Api,
    method: &str,
    path: &str,
    key: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    common::request(a.addr, method, path, key, headers, body).await
}

/// `PUT /sub` as ops.
async fn sub(a: &Api, tenant: &str, inbox: &str, filter: &str, qos: &str, broker: &str) -> Answer {
    call(
        a,
        "PUT",
        "/sub",
        Some(OPS),
        &[
            ("tenant_id", tenant),
            ("inbox_id", inbox),
            ("topic_filter", filter),
            ("sub_qos", qos),
            ("subbroker_id", broker),
        ],
        b"",
    )
    .await
}

async fn publish(
    a: &Api,
    tenant: &str,
    topic: &str,
    qos: &str,
    retain: Option<&str>,
    body: &[u8],
) -> Answer {
    let mut h = vec![
        ("tenant_id", tenant),
        ("topic", topic),
        ("pub_qos", qos),
        ("client_type", "test"),
        ("client_meta_app", "bifromq-it"),
    ];
    if let Some(r) = retain {
        h.push(("retain", r));
    }
    call(a, "POST", "/pub", Some(OPS), &h, body).await
}

fn user_v3(a: &Api, id: &str, user: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut o = v3::opts(&a.tb, id, Tr::Tcp);
    o.set_credentials(user, "pw");
    o.set_clean_session(clean);
    o
}

fn user_v5(a: &Api, id: &str, user: &str, expiry: Option<u32>) -> rumqttc::v5::MqttOptions {
    let mut o = v5::opts(&a.tb, id, Tr::Tcp);
    o.set_credentials(user, "pw");
    o.set_session_expiry_interval(expiry);
    // A persistent session is resumed, not started over.
    o.set_clean_start(expiry.is_none());
    o
}

#[tokio::test]
async fn sub_on_an_online_clean_session_delivers_at_once_with_retained() {
    let a = start(|_| {}).await;
    assert_eq!(
        publish(&a, "default", "r/kept", "1", Some("true"), b"old")
            .await
            .status,
        200
    );
    for (v, id) in [(3, "c3"), (5, "c5")] {
        let r = if v == 3 {
            let (mut c, _) = v3::connect(user_v3(&a, id, "dan", true)).await;
            let r = sub(&a, "default", id, "r/#", "1", "0").await;
            assert_eq!((r.status, sub_qos(&r)), (200, Some("1")), "{}", r.body);
            let m = c.publish().await;
            assert!(m.retain && &m.payload[..] == b"old", "retained pushed");
            publish(&a, "default", "r/new", "1", None, b"fresh").await;
            let m = c.publish().await;
            (m.qos as u8, m.payload.to_vec())
        } else {
            let (mut c, _) = v5::connect(user_v5(&a, id, "dan", None)).await;
            let r = sub(&a, "default", id, "r/#", "2", "0").await;
            assert_eq!((r.status, sub_qos(&r)), (200, Some("2")), "{}", r.body);
            assert_eq!(&c.publish().await.payload[..], b"old");
            publish(&a, "default", "r/new", "2", None, b"fresh").await;
            let m = c.publish().await;
            (m.qos as u8, m.payload.to_vec())
        };
        assert_eq!(r.1, b"fresh");
        assert_eq!(r.0, if v == 3 { 1 } else { 2 }, "min(pub_qos, sub_qos)");
    }
}

#[tokio::test]
async fn sub_on_an_offline_persistent_inbox_records_only_and_queues() {
    let a = start(|_| {}).await;
    publish(&a, "default", "q/kept", "1", Some("true"), b"old").await;
    let (c, _) = v3::connect(user_v3(&a, "p3", "dan", false)).await;
    c.c.disconnect().await.unwrap();
    let (c5, _) = v5::connect(user_v5(&a, "p5", "dora", Some(3600))).await;
    c5.c.disconnect().await.unwrap();
    let reg = &a.tb.broker().registry;
    common::eventually("offline", || {
        ["p3", "p5"]
            .iter()
            .all(|id| reg.get("default", id).is_some_and(|s| !s.is_online()))
    })
    .await;
    for id in ["p3", "p5"] {
        let r = sub(&a, "default", id, "q/#", "1", "1").await;
        assert_eq!((r.status, sub_qos(&r)), (200, Some("1")), "{}", r.body);
        let s = reg.get("default", id).unwrap();
        assert_eq!(s.state.lock().queue.len(), 0, "no retained push");
    }
    publish(&a, "default", "q/later", "1", None, b"queued").await;
    let (mut c, _) = v3::connect(user_v3(&a, "p3", "dan", false)).await;
    assert_eq!(&c.publish().await.payload[..], b"queued");
    let (mut c5, _) = v5::connect(user_v5(&a, "p5", "dora", Some(3600))).await;
    assert_eq!(&c5.publish().await.payload[..], b"queued");
}

#[tokio::test]
async fn subscriptions_that_cannot_be_made_grant_128() {
    let a = start(|c| c.mqtt.max_subscriptions = 1).await;
    let (mut c, _) = v3::connect(user_v3(&a, "full", "dan", true)).await;
    c.c.subscribe("already/one", v3::QoS::AtMostOnce)
        .await
        .unwrap();
    c.suback().await;
    let (_p, _) = v3::connect(user_v3(&a, "kept", "dora", false)).await;
    for (what, inbox, filter, broker) in [
        ("no such inbox", "nobody", "a/b", "0"),
        ("a persistent inbox named as clean", "kept", "a/b", "0"),
        ("a clean inbox named as persistent", "full", "a/b", "1"),
        ("an external inbox", "full", "a/b", "7"),
        ("over the subscription quota", "full", "a/b", "0"),
        ("refused by the inbox's ACL", "kept", "secret/x", "1"),
    ] {
        let r = sub(&a, "default", inbox, filter, "1", broker).await;
        assert_eq!(
            (r.status, sub_qos(&r)),
            (200, Some("128")),
            "{what}: {}",
            r.body
        );
    }
    for bad in ["a/#/b", "", "x+"] {
        let r = sub(&a, "default", "kept", bad, "1", "1").await;
        assert_eq!((r.status, sub_qos(&r)), (403, Some("128")), "{bad:?}");
        assert!(r.body.contains("invalid topic filter"), "{}", r.body);
    }
    assert!(a
        .tb
        .broker()
        .registry
        .get("default", "kept")
        .unwrap()
        .state
        .lock()
        .subscriptions
        .is_empty());
}

#[tokio::test]
async fn unsub_answers_200_404_and_403() {
    let a = start(|_| {}).await;
    let (mut c, _) = v5::connect(user_v5(&a, "u5", "dan", None)).await;
    assert_eq!(sub(&a, "default", "u5", "u/#", "0", "0").await.status, 200);
    let un = |inbox: &'static str, filter: &'static str| {
        let a = &a;
        async move {
            call(
                a,
                "DELETE",
                "/unsub",
                Some(OPS),
                &[
                    ("tenant_id", "default"),
                    ("inbox_id", inbox),
                    ("topic_filter", filter),
                    ("subbroker_id", "0"),
                ],
                b"",
            )
            .await
        }
    };
    assert_eq!(un("u5", "u/#").await.status, 200);
    publish(&a, "default", "u/x", "0", None, b"gone").await;
    c.no_publish(Duration::from_millis(200)).await;
    let r = un("u5", "u/#").await;
    assert_eq!((r.status, r.body.as_str()), (404, "Topic filter not found"));
    assert_eq!(un("nobody", "u/#").await.status, 404);
    assert_eq!(un("u5", "u/#/x").await.status, 403);
}

#[tokio::test]
async fn pub_distributes_with_pub_qos_retains_and_refuses_bad_topics() {
    let a = start(|_| {}).await;
    let (mut c, _) = v5::connect(user_v5(&a, "s5", "dan", None)).await;
    c.c.subscribe("p/#", v5::QoS::ExactlyOnce).await.unwrap();
    c.suback().await;
    assert_eq!(
        publish(&a, "default", "p/empty", "2", None, b"")
            .await
            .status,
        200
    );
    let m = c.publish().await;
    assert_eq!(
        (m.qos, m.payload.len()),
        (v5::QoS::ExactlyOnce, 0),
        "empty payload, QoS 2"
    );
    assert_eq!(
        publish(&a, "default", "p/keep", "0", Some("TRUE"), b"r")
            .await
            .status,
        200
    );
    c.publish().await;
    let (mut late, _) = v5::connect(user_v5(&a, "late", "dan", None)).await;
    late.c
        .subscribe("p/keep", v5::QoS::AtMostOnce)
        .await
        .unwrap();
    assert_eq!(&late.publish().await.payload[..], b"r", "retained");
    for bad in ["p/+", "p/#", ""] {
        let r = publish(&a, "default", bad, "0", None, b"x").await;
        assert_eq!(r.status, 400, "{bad:?}: {}", r.body);
        assert!(r.body.contains("topic"), "{}", r.body);
    }
}

#[tokio::test]
async fn kill_disconnects_every_connection_of_a_user_and_keeps_sessions() {
    let a = start(|_| {}).await;
    let (mut c1, _) = v3::connect(user_v3(&a, "k1", "dora", false)).await;
    let (mut c2, _) = v5::connect(user_v5(&a, "k2", "dora", None)).await;
    let (mut other, _) = v3::connect(user_v3(&a, "k3", "dan", true)).await;
    let kill = |user: &'static str| {
        let a = &a;
        async move {
            call(
                a,
                "DELETE",
                "/kill",
                Some(OPS),
                &[
                    ("tenant_id", "default"),
                    ("user_id", user),
                    ("client_type", "ops"),
                ],
                b"",
            )
            .await
        }
    };
    assert_eq!(kill("dora").await.status, 200);
    c1.closed().await;
    c2.closed().await;
    assert!(
        a.tb.broker().registry.get("default", "k1").is_some(),
        "the persistent session stays"
    );
    other.no_publish(Duration::from_millis(100)).await;
    assert!(a
        .tb
        .broker()
        .registry
        .get("default", "k3")
        .unwrap()
        .is_online());
    let reg = &a.tb.broker().registry;
    common::eventually("k1 offline", || {
        reg.get("default", "k1").is_some_and(|s| !s.is_online())
    })
    .await;
    assert_eq!(kill("dora").await.status, 404, "nobody left to kill");
    assert_eq!(kill("nobody").await.status, 404);
}

#[tokio::test]
async fn expireinbox_ends_persistent_inboxes_and_leaves_clean_sessions() {
    let a = start(|_| {}).await;
    let (gone, _) = v3::connect(user_v3(&a, "stale", "dan", false)).await;
    gone.c.disconnect().await.unwrap();
    let (mut live_p, _) = v5::connect(user_v5(&a, "live-p", "dan", Some(600))).await;
    let (mut live_c, _) = v3::connect(user_v3(&a, "live-c", "dan", true)).await;
    let reg = &a.tb.broker().registry;
    common::eventually("stale offline", || {
        reg.get("default", "stale").is_some_and(|s| !s.is_online())
    })
    .await;
    let expire = |secs: &'static str| {
        let a = &a;
        async move {
            call(
                a,
                "DELETE",
                "/expireinbox",
                Some(OPS),
                &[("tenant_id", "default"), ("expiry_seconds", secs)],
                b"",
            )
            .await
        }
    };
    let r = expire("3600").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "0"),
        "none inactive that long"
    );
    for bad in ["-1", "9223372036854775808", "soon", ""] {
        let r = expire(bad).await;
        assert!(
            r.status == 400 && r.body.contains("expiry_seconds"),
            "{bad:?}: {}",
            r.body
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = expire("1").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "1"),
        "the one offline for over 1s"
    );
    assert!(reg.get("default", "stale").is_none());
    assert!(reg.get("default", "live-p").unwrap().is_online());
    let r = expire("0").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "1"),
        "0: every persistent one, online too"
    );
    live_p.closed().await;
    assert!(reg.get("default", "live-p").is_none());
    live_c.no_publish(Duration::from_millis(100)).await;
    assert!(
        reg.get("default", "live-c").unwrap().is_online(),
        "clean session untouched"
    );
}

#[tokio::test]
async fn headers_are_checked_and_matched_case_insensitively() {
    let a = start(|_| {}).await;
    let (_c, _) = v3::connect(user_v3(&a, "h1", "dan", true)).await;
    let base = [
        ("tenant_id", "default"),
        ("inbox_id", "h1"),
        ("topic_filter", "h/#"),
        ("sub_qos", "1"),
        ("subbroker_id", "0"),
    ];
    let with = |name: &str, value: Option<&'static str>| {
        let mut h: Vec<(String, String)> = base
            .iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        if let Some(v) = value {
            h.push((name.to_string(), v.to_string()));
        }
        h
    };
    let put = |h: Vec<(String, String)>| {
        let a = &a;
        async move {
            let refs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            call(a, "PUT", "/sub", Some(OPS), &refs, b"").await
        }
    };
    for name in [
        "tenant_id",
        "inbox_id",
        "topic_filter",
        "sub_qos",
        "subbroker_id",
    ] {
        let r = put(with(name, None)).await;
        assert_eq!(r.status, 400, "{name}");
        assert!(r.body.contains(name), "{name}: {}", r.body);
    }
    for (name, bad) in [
        ("sub_qos", "3"),
        ("subbroker_id", "one"),
        ("req_id", "x"),
        ("tenant_id", ""),
    ] {
        let r = put(with(name, Some(bad))).await;
        assert_eq!(r.status, 400, "{name}={bad}");
        assert!(r.body.contains(name), "{}", r.body);
    }
    let r = publish(&a, "default", "h/x", "1", Some("maybe"), b"").await;
    assert!(r.status == 400 && r.body.contains("retain"), "{}", r.body);
    // Names in any case, underscores kept; req_id echoed.
    let r = call(
        &a,
        "PUT",
        "/sub",
        Some(OPS),
        &[
            ("Tenant_Id", "default"),
            ("INBOX_ID", "h1"),
            ("Topic_Filter", "h/#"),
            ("Sub_QoS", "1"),
            ("SubBroker_Id", "0"),
            ("Req_Id", "42"),
        ],
        b"",
    )
    .await;
    assert_eq!((r.status, sub_qos(&r)), (200, Some("1")), "{}", r.body);
    assert_eq!(r.headers.get("req_id").map(String::as_str), Some("42"));
}

#[tokio::test]
async fn every_request_needs_a_key_of_the_tenant_with_the_right() {
    let a = start(|_| {}).await;
    let h = [
        ("tenant_id", "default"),
        ("topic", "k/x"),
        ("pub_qos", "0"),
        ("client_type", "t"),
    ];
    let r = call(&a, "POST", "/pub", None, &h, b"").await;
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));
    let s = [
        ("tenant_id", "default"),
        ("inbox_id", "x"),
        ("topic_filter", "a"),
        ("sub_qos", "0"),
        ("subbroker_id", "0"),
    ];
    for (method, path, key, headers, want, why) in [
        (
            "POST",
            "/pub",
            ("ops", "nope"),
            &h[..],
            401,
            "a wrong secret",
        ),
        (
            "POST",
            "/pub",
            ("acme", "ak"),
            &h,
            403,
            "an acme key naming tenant default",
        ),
        (
            "POST",
            "/pub",
            ("reader", "rk"),
            &h,
            403,
            "a key without publish",
        ),
        (
            "POST",
            "/pub",
            ("publisher", "pk"),
            &h,
            200,
            "a key with publish",
        ),
        (
            "PUT",
            "/sub",
            ("publisher", "pk"),
            &s,
            403,
            "a key without connections:write",
        ),
    ] {
        let r = call(&a, method, path, Some(key), headers, b"").await;
        assert_eq!(r.status, want, "{why}: {}", r.body);
    }
    let doc = call(&a, "GET", "/openapi.yaml", Some(("reader", "rk")), &[], b"").await;
    assert_eq!(doc.status, 200);
    assert!(doc.body.contains("/expireinbox") && doc.body.contains("/sessions"));
    let r = call(&a, "GET", "/openapi.yaml", None, &[], b"").await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn one_tenant_never_touches_anothers_sessions() {
    let a = start(|_| {}).await;
    // The same client id in both tenants.
    let (mut d, _) = v3::connect(user_v3(&a, "same", "dan", true)).await;
    let (mut n, _) = v3::connect(user_v3(&a, "same", "ann", true)).await;
    let acme = |method: &'static str, path: &'static str, h: Vec<(&'static str, &'static str)>| {
        let a = &a;
        async move { call(a, method, path, Some(("acme", "ak")), &h, b"").await }
    };
    let r = acme(
        "PUT",
        "/sub",
        vec![
            ("tenant_id", "acme"),
            ("inbox_id", "same"),
            ("topic_filter", "t/#"),
            ("sub_qos", "0"),
            ("subbroker_id", "0"),
        ],
    )
    .await;
    assert_eq!(sub_qos(&r), Some("0"));
    let r = acme(
        "POST",
        "/pub",
        vec![
            ("tenant_id", "acme"),
            ("topic", "t/1"),
            ("pub_qos", "0"),
            ("client_type", "t"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(n.publish().await.topic, "t/1");
    d.no_publish(Duration::from_millis(200)).await;
    assert!(a
        .tb
        .broker()
        .registry
        .get("default", "same")
        .unwrap()
        .state
        .lock()
        .subscriptions
        .is_empty());
    // acme's kill and expire reach acme's sessions only.
    let r = acme(
        "DELETE",
        "/kill",
        vec![
            ("tenant_id", "acme"),
            ("user_id", "dan"),
            ("client_type", "t"),
        ],
    )
    .await;
    assert_eq!(r.status, 404, "dan is in default, not acme");
    assert!(a
        .tb
        .broker()
        .registry
        .get("default", "same")
        .unwrap()
        .is_online());
}

#[tokio::test]
async fn sessions_lists_a_tenants_online_sessions_paged() {
    let a = start(|_| {}).await;
    let mut keep = Vec::new();
    for i in 0..5 {
        let user = if i < 3 { "dan" } else { "dora" };
        keep.push(
            v3::connect(user_v3(&a, &format!("dev-{i}"), user, true))
                .await
                .0,
        );
    }
    keep.push(v3::connect(user_v3(&a, "acme-dev", "ann", true)).await.0);
    let list = |query: &'static str, h: Vec<(&'static str, &'static str)>| {
        let a = &a;
        async move {
            let mut h = h;
            h.push(("tenant_id", "default"));
            let r = call(a, "GET", query, Some(("reader", "rk")), &h, b"").await;
            assert_eq!(r.status, 200, "{}", r.body);
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
        }
    };
    let v = list("/sessions", vec![]).await;
    assert_eq!(v["count"], 5, "{v}");
    let v = list("/sessions", vec![("user_id", "dora")]).await;
    assert_eq!(v["count"], 2);
    let v = list("/sessions", vec![("client_id", "dev-1")]).await;
    assert_eq!(v["sessions"][0]["client_id"], "dev-1");
    let v = list("/sessions?page=2&limit=2", vec![]).await;
    assert_eq!(
        (
            v["sessions"].as_array().unwrap().len(),
            v["has_next"].clone()
        ),
        (2, serde_json::json!(true))
    );
    let v = list("/sessions", vec![("page", "3"), ("limit", "2")]).await;
    assert_eq!(
        v["sessions"].as_array().unwrap().len(),
        1,
        "paging by header"
    );
    let r = call(
        &a,
        "GET",
        "/sessions?limit=10001",
        Some(OPS),
        &[("tenant_id", "default")],
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
}
