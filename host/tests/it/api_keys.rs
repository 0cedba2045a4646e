//! Managed API keys over `/api/v5/api_key`: created, changed, rotated and deleted with an
//! admin key, each change holding at once on the native routes and in a plugin's API
//! (the EMQX clients API checks keys through the host), and surviving a restart.

use std::time::Duration;

use crate::common::{http, stock_toml, with_plugins, TestBroker};

const ROOT: (&str, &str) = ("root", "rootsecret");

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Statuses of the EMQX clients API and `/metrics` for a key.
async fn statuses(tb: &TestBroker, key: (&str, &str)) -> (u16, u16) {
    let a = tb.http_addr();
    let clients = http(a, "GET", "/api/v5/clients", Some(key), b"").await.0;
    let metrics = http(a, "GET", "/metrics", Some(key), b"").await.0;
    (clients, metrics)
}

#[tokio::test]
async fn managed_keys_hold_on_every_surface_at_once_and_survive_a_restart() {
    let plugins = [("emqx", "emqx", stock_toml("emqx").leak() as &str)];
    let (tb, root) = with_plugins(&plugins, "root:rootsecret:admin:tenant=*\n", |_| {}).await;
    let a = tb.http_addr();
    let (st, body) = http(
        a,
        "POST",
        "/api/v5/api_key",
        Some(ROOT),
        br#"{"name":"ops","role":"viewer","desc":"dashboards"}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let created = json(&body);
    let id = created["api_key"].as_str().unwrap().to_string();
    let secret = created["api_secret"].as_str().unwrap().to_string();
    assert_eq!(created["role"], "viewer");
    assert_eq!(created["expired_at"], "infinity");
    let ops = (id.as_str(), secret.as_str());
    assert_eq!(statuses(&tb, ops).await, (200, 200));
    // A viewer cannot publish nor manage keys.
    let (st, _) = http(
        a,
        "POST",
        "/api/v5/publish",
        Some(ops),
        br#"{"topic":"t","payload":"x"}"#,
    )
    .await;
    assert_eq!(st, 403);
    assert_eq!(
        http(a, "GET", "/api/v5/api_key", Some(ops), b"").await.0,
        403
    );

    // Listed without secrets, the file key beside it; the secret is not on disk.
    let (_, body) = http(a, "GET", "/api/v5/api_key", Some(ROOT), b"").await;
    assert!(!body.contains(&secret), "{body}");
    let list = json(&body);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ops", "root"]);
    assert_eq!(list[1]["source"], "file");
    assert!(list[0]["last_used_at"].is_string(), "{body}");
    let on_disk = std::fs::read_to_string(tb.dir.path().join("data/api-keys.json")).unwrap();
    assert!(on_disk.contains(&id) && !on_disk.contains(&secret));

    // Disabled: refused at once by the plugin and the native routes; enabled again: back.
    let put = |b: &'static str| http(a, "PUT", "/api/v5/api_key/ops", Some(ROOT), b.as_bytes());
    assert_eq!(put(r#"{"enable":false}"#).await.0, 200);
    assert_eq!(statuses(&tb, ops).await, (401, 401));
    assert_eq!(put(r#"{"enable":true}"#).await.0, 200);
    assert_eq!(statuses(&tb, ops).await, (200, 200));

    // Rotated: the old secret is refused, the new one works.
    let ans = crate::common::request(
        a,
        "POST",
        "/api/v5/api_key/ops/rotate",
        Some(ROOT),
        &[],
        b"",
    )
    .await;
    assert_eq!(ans.status, 200, "{}", ans.body);
    assert_eq!(
        ans.headers["cache-control"], "no-store",
        "a secret is never cached"
    );
    let fresh = json(&ans.body)["api_secret"].as_str().unwrap().to_string();
    assert_eq!(statuses(&tb, ops).await.0, 401);
    let ops = (id.as_str(), fresh.as_str());
    assert_eq!(statuses(&tb, ops).await, (200, 200));

    // A restart keeps it; then deleted, refused everywhere.
    let (pdir, keys) = (root.path().join("plugins"), root.path().join("keys"));
    let tb = tb
        .restart(move |c| {
            c.plugins_dir = pdir;
            c.api_keys_file = Some(keys);
        })
        .await;
    let a = tb.http_addr();
    assert_eq!(statuses(&tb, ops).await, (200, 200));
    let (_, body) = http(a, "GET", "/api/v5/api_key/ops", Some(ROOT), b"").await;
    assert_eq!(json(&body)["desc"], "dashboards");
    assert_eq!(
        http(a, "DELETE", "/api/v5/api_key/ops", Some(ROOT), b"")
            .await
            .0,
        204
    );
    assert_eq!(statuses(&tb, ops).await, (401, 401));
    assert_eq!(
        http(a, "GET", "/api/v5/api_key/ops", Some(ROOT), b"")
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn careless_requests_get_clear_errors_and_file_keys_stay_as_written() {
    let (tb, _root) = with_plugins(&[], "root:rootsecret:admin:tenant=*\n", |_| {}).await;
    let a = tb.http_addr();
    let post = |b: &'static str| http(a, "POST", "/api/v5/api_key", Some(ROOT), b.as_bytes());
    for (body, says) in [
        (r#"{"role":"viewer"}"#, "name is required"),
        (r#"{"name":"a b"}"#, "letters, digits"),
        (
            r#"{"name":"a","role":"boss"}"#,
            "administrator, viewer or publisher",
        ),
        (r#"{"name":"a","rights":["fly"]}"#, "unknown right"),
        (
            r#"{"name":"a","role":"viewer","rights":["publish"]}"#,
            "not both",
        ),
        (
            r#"{"name":"a","expired_at":"2001-01-01T00:00:00Z"}"#,
            "in the past",
        ),
        (r#"{"name":"a","expired_at":"tomorrow"}"#, "RFC 3339"),
        (r#"{"name":"a","enabel":true}"#, "unknown field"),
        ("not json", "body"),
    ] {
        let (st, got) = post(body).await;
        assert_eq!(st, 400, "{body}: {got}");
        assert!(got.contains(says), "{body}: {got}");
    }
    let (st, got) = http(
        a,
        "PUT",
        "/api/v5/api_key/root",
        Some(ROOT),
        br#"{"enable":false}"#,
    )
    .await;
    assert_eq!(st, 409, "{got}");
    assert!(got.contains("edit that file"), "{got}");
    assert_eq!(
        http(a, "DELETE", "/api/v5/api_key/root", Some(ROOT), b"")
            .await
            .0,
        409
    );
    assert_eq!(post(r#"{"name":"dup"}"#).await.0, 200);
    assert_eq!(post(r#"{"name":"dup"}"#).await.0, 400);

    // An expiry a moment away: accepted now, refused once it passes.
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let body = format!(r#"{{"name":"brief","role":"viewer","expired_at":{at}}}"#);
    let (st, got) = http(a, "POST", "/api/v5/api_key", Some(ROOT), body.as_bytes()).await;
    assert_eq!(st, 200, "{got}");
    let k = json(&got);
    let key = (
        k["api_key"].as_str().unwrap(),
        k["api_secret"].as_str().unwrap(),
    );
    assert_eq!(http(a, "GET", "/metrics", Some(key), b"").await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, _) = http(a, "GET", "/metrics", Some(key), b"").await;
    assert_eq!(st, 401);
    let (_, got) = http(a, "GET", "/api/v5/api_key/brief", Some(ROOT), b"").await;
    assert_eq!(json(&got)["expired"], true, "{got}");
}
