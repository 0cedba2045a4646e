//! Tenant isolation end to end: two tenants (users of the stock auth-file) publishing
//! and subscribing the same topics, retained and shared subscriptions included, the same
//! client id in both, admin calls with one tenant's API keys against the other's sessions
//! through the EMQX API and the native routes, and each tenant's `$SYS` figures.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, metric, v3, TestBroker, Tr};

const ACME: (&str, &str) = ("acme-admin", "a");
const GLOBEX: (&str, &str) = ("globex-admin", "g");

const USERS: &str = r#"roles = ["auth"]
capabilities = ["passwords"]
tenants = ["*"]
[config]
default = "allow"
[[config.users]]
username = "ann"
password = "pw"
tenant = "acme"
[[config.users]]
username = "art"
password = "pw"
tenant = "acme"
[[config.users]]
username = "gus"
password = "pw"
tenant = "globex"
"#;

async fn start() -> (TestBroker, tempfile::TempDir) {
    let emqx = common::stock_toml("emqx");
    common::with_plugins(
        &[("auth-file", "auth-file", USERS), ("emqx", "emqx", &emqx)],
        "acme-admin:a:admin:tenant=acme\nglobex-admin:g:admin:tenant=globex\nops:s3cret:admin:tenant=*\n",
        |c| c.auth.allow_anonymous = apiary::config::Anonymous::Never,
    )
    .await
}

async fn user(tb: &TestBroker, id: &str, name: &str) -> v3::Client {
    let mut o = v3::opts(tb, id, Tr::Tcp);
    o.set_credentials(name, "pw");
    let (c, ack) = v3::connect(o).await;
    assert!(
        matches!(ack, v3::Packet::ConnAck(a) if a.code == rumqttc::ConnectReturnCode::Success),
        "{name} connects"
    );
    c
}

async fn sub(c: &mut v3::Client, f: &str) {
    c.c.subscribe(f, v3::QoS::AtLeastOnce).await.unwrap();
    c.suback().await;
}

async fn api(
    tb: &TestBroker,
    method: &str,
    path: &str,
    who: (&str, &str),
    body: Value,
) -> (u16, Value) {
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (st, text) = common::http(tb.http_addr(), method, path, Some(who), &body).await;
    (st, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn tenants_share_topic_names_and_client_ids_but_nothing_else() {
    let (tb, _root) = start().await;
    let mut ann = user(&tb, "ann-1", "ann").await;
    let mut gus = user(&tb, "gus-1", "gus").await;
    let art = user(&tb, "art-1", "art").await;
    sub(&mut ann, "shared/#").await;
    sub(&mut gus, "shared/#").await;
    art.c
        .publish("shared/x", v3::QoS::AtLeastOnce, false, "from-acme")
        .await
        .unwrap();
    gus.c
        .publish("shared/x", v3::QoS::AtLeastOnce, false, "from-globex")
        .await
        .unwrap();
    assert_eq!(&ann.publish().await.payload[..], b"from-acme");
    assert_eq!(&gus.publish().await.payload[..], b"from-globex");
    ann.no_publish(Duration::from_millis(200)).await;
    gus.no_publish(Duration::from_millis(200)).await;

    // Retained messages and shared groups are per tenant too.
    art.c
        .publish("status/door", v3::QoS::AtLeastOnce, true, "open")
        .await
        .unwrap();
    common::eventually("retained in acme", || {
        tb.broker().retained.tenant_usage("acme").0 == 1
    })
    .await;
    let mut gus2 = user(&tb, "gus-2", "gus").await;
    sub(&mut gus2, "status/#").await;
    gus2.no_publish(Duration::from_millis(200)).await;
    let mut ann2 = user(&tb, "ann-2", "ann").await;
    sub(&mut ann2, "$share/g/jobs/#").await;
    sub(&mut gus2, "$share/g/jobs/#").await;
    art.c
        .publish("jobs/1", v3::QoS::AtLeastOnce, false, "acme-job")
        .await
        .unwrap();
    assert_eq!(&ann2.publish().await.payload[..], b"acme-job");
    gus2.no_publish(Duration::from_millis(200)).await;

    // One client id in both tenants: two sessions, neither takes the other over.
    let _a = user(&tb, "same-id", "ann").await;
    let _g = user(&tb, "same-id", "gus").await;
    let reg = &tb.broker().registry;
    common::eventually("both online", || {
        reg.get("acme", "same-id").is_some_and(|s| s.is_online())
            && reg.get("globex", "same-id").is_some_and(|s| s.is_online())
    })
    .await;
}

#[tokio::test]
async fn one_tenants_admin_keys_cannot_see_or_touch_another_tenants_sessions() {
    let (tb, _root) = start().await;
    let mut ann = user(&tb, "ann-1", "ann").await;
    sub(&mut ann, "shared/#").await;
    let mut gus = user(&tb, "gus-1", "gus").await;
    sub(&mut gus, "shared/#").await;

    let (st, list) = api(&tb, "GET", "/api/v5/clients", ACME, Value::Null).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["clientid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["ann-1"]);
    assert_eq!(
        api(&tb, "GET", "/api/v5/clients/gus-1", ACME, Value::Null)
            .await
            .0,
        404
    );
    assert_eq!(
        api(&tb, "DELETE", "/api/v5/clients/gus-1", ACME, Value::Null)
            .await
            .0,
        404
    );
    let sub_body = json!({"topic": "spy/#", "qos": 1});
    assert_eq!(
        api(
            &tb,
            "POST",
            "/api/v5/clients/gus-1/subscribe",
            ACME,
            sub_body
        )
        .await
        .0,
        404
    );
    let (st, subs) = api(&tb, "GET", "/api/v5/subscriptions", ACME, Value::Null).await;
    assert_eq!(st, 200);
    assert!(
        subs["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["clientid"] == "ann-1"),
        "{subs}"
    );
    // A publish through acme's key reaches acme's subscribers only.
    let (st, _) = api(
        &tb,
        "POST",
        "/api/v5/publish",
        ACME,
        json!({"topic": "shared/api", "payload": "via-api", "qos": 1}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(&ann.publish().await.payload[..], b"via-api");
    gus.no_publish(Duration::from_millis(200)).await;
    // gus was never touched.
    let g = tb.broker().registry.get("globex", "gus-1").unwrap();
    assert!(g.is_online());
    assert!(!g.state.lock().subscriptions.contains_key("spy/#"));
    // globex's own key does see him.
    assert_eq!(
        api(&tb, "GET", "/api/v5/clients/gus-1", GLOBEX, Value::Null)
            .await
            .0,
        200
    );
    // Broker-wide native routes are for keys spanning every tenant.
    let a = tb.http_addr();
    assert_eq!(
        common::http(a, "GET", "/metrics", Some(ACME), b"").await.0,
        403
    );
    assert_eq!(
        common::http(a, "GET", "/plugins", Some(ACME), b"").await.0,
        403
    );
    assert_eq!(
        common::http(a, "POST", "/plugins/emqx/reload", Some(ACME), b"")
            .await
            .0,
        403,
        "one tenant's admin cannot reload what every tenant depends on"
    );
    assert_eq!(
        common::http(a, "GET", "/metrics", Some(("ops", "s3cret")), b"")
            .await
            .0,
        200
    );
}

/// The eight `$SYS/broker/...` figures a client receives, by topic.
async fn figures(c: &mut v3::Client) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::new();
    while m.len() < 8 {
        let p = c.publish().await;
        m.insert(
            p.topic.clone(),
            String::from_utf8_lossy(&p.payload).to_string(),
        );
    }
    m
}

#[tokio::test]
async fn each_tenant_sees_its_own_sys_figures() {
    let (tb, _root) = start().await;
    let mut ann = user(&tb, "ann-1", "ann").await;
    let art = user(&tb, "art-1", "art").await;
    let mut gus = user(&tb, "gus-1", "gus").await;
    for _ in 0..3 {
        art.c
            .publish("x", v3::QoS::AtLeastOnce, false, "m")
            .await
            .unwrap();
    }
    common::eventually("acme's publishes counted", || {
        tb.broker()
            .tenant_stats
            .of(&"acme".into())
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    })
    .await;
    sub(&mut ann, "$SYS/broker/#").await;
    sub(&mut gus, "$SYS/broker/#").await;
    apiary::sys::publish_once(tb.broker());
    let a = figures(&mut ann).await;
    let g = figures(&mut gus).await;
    assert_eq!(a["$SYS/broker/clients/connected"], "2");
    assert_eq!(g["$SYS/broker/clients/connected"], "1");
    assert_eq!(a["$SYS/broker/subscriptions/count"], "1");
    assert_eq!(a["$SYS/broker/messages/received"], "3");
    assert_eq!(g["$SYS/broker/messages/received"], "0");
    assert!(
        metric(&tb, "apiary_sessions_connected") >= 3,
        "the totals are on /metrics"
    );
}
