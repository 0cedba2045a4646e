//! The native HTTP API over real sockets (HTTP and HTTPS): /healthz open, the
//! broker-wide routes behind an API key spanning every tenant (401 without, 403 with the
//! wrong right or a tenant-scoped key), failed logins throttled per address.

use crate::common;

use base64::Engine as _;
use common::TestBroker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(tb: &TestBroker, path: &str, auth: Option<(&str, &str)>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some((k, sec)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{k}:{sec}"));
        req.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

const KEYS: &str = "ops:s3cret:admin:tenant=*\nreader:r:connections:read:tenant=*\nscrape:m:metrics:read:tenant=*\nacme-admin:a:admin:tenant=acme\n";

/// A broker whose API keys are [`KEYS`] (the file lives as long as the second value).
async fn with_keys(f: impl FnOnce(&mut apiary::Config)) -> (TestBroker, tempfile::NamedTempFile) {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), KEYS).unwrap();
    let path = keys.path().to_path_buf();
    let tb = TestBroker::start_with(|c| {
        c.api_keys_file = Some(path);
        f(c);
    })
    .await;
    (tb, keys)
}

#[tokio::test]
async fn healthz_is_open_and_broker_wide_routes_need_a_key_for_every_tenant() {
    let (tb, _keys) = with_keys(|_| {}).await;

    let (status, body) = get(&tb, "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("ok"));

    assert_eq!(get(&tb, "/metrics", None).await.0, 401);
    assert_eq!(get(&tb, "/metrics", Some(("ops", "wrong"))).await.0, 401);
    assert_eq!(get(&tb, "/metrics", Some(("reader", "r"))).await.0, 403);
    // An admin of one tenant is no admin of the broker: metrics and plugins span every
    // tenant.
    for path in ["/metrics", "/plugins"] {
        let (st, body) = get(&tb, path, Some(("acme-admin", "a"))).await;
        assert_eq!(st, 403, "{path}: {body}");
        assert!(body.contains("tenant=*"), "{body}");
    }
    assert_eq!(
        post(&tb, "/plugins/anything/reload", ("acme-admin", "a")).await,
        403
    );
    // A scraping key reads metrics and nothing else.
    assert_eq!(get(&tb, "/metrics", Some(("scrape", "m"))).await.0, 200);
    assert_eq!(get(&tb, "/plugins", Some(("scrape", "m"))).await.0, 403);
    assert_eq!(
        post(&tb, "/plugins/anything/reload", ("scrape", "m")).await,
        403
    );
    let (status, body) = get(&tb, "/metrics", Some(("ops", "s3cret"))).await;
    assert_eq!(status, 200);
    for name in [
        "apiary_connections{listener=\"tcp\"}",
        "apiary_sessions ",
        "apiary_messages_received_total",
        "apiary_messages_dropped_total{reason=\"queue_full\"}",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert!(common::metric(&tb, "apiary_api_auth_failed_total") >= 2);
}

async fn post(tb: &TestBroker, path: &str, (k, sec): (&str, &str)) -> u16 {
    let mut s = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{k}:{sec}"));
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\nAuthorization: Basic {b}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    resp[9..12].parse().unwrap()
}

#[tokio::test]
async fn failed_logins_are_throttled_per_address() {
    let (tb, _keys) = with_keys(|c| c.http.max_auth_failures = 3).await;
    for _ in 0..3 {
        assert_eq!(get(&tb, "/metrics", Some(("ops", "guess"))).await.0, 401);
    }
    // Even the right secret waits now: guessing cannot go on at network speed.
    let (st, body) = get(&tb, "/metrics", Some(("ops", "s3cret"))).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(get(&tb, "/metrics", Some(("nokey", "x"))).await.0, 429);
    assert!(common::metric(&tb, "apiary_api_auth_throttled_total") >= 2);
    // /healthz stays open.
    assert_eq!(get(&tb, "/healthz", None).await.0, 200);
}

#[tokio::test]
async fn the_admin_api_is_served_over_https_with_the_brokers_certificate() {
    use tokio_rustls::rustls::pki_types::ServerName;
    let (tb, _keys) = with_keys(|_| {}).await;
    let addr = tb.server.addrs.https.expect("https listener");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(tb.tls_client());
    let mut s = tls
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the generated certificate");
    let b = base64::engine::general_purpose::STANDARD.encode("scrape:m");
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Basic {b}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut resp = String::new();
    tokio::time::timeout(common::WAIT, s.read_to_string(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("apiary_sessions "), "{resp}");
    // Plain HTTP on the HTTPS port is not served.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, plain.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
}

#[tokio::test]
async fn a_bad_api_keys_file_stops_startup_with_the_line() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "ops:s3cret:admin\nbroken-line\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = apiary::Config::ephemeral(dir.path().to_path_buf());
    cfg.api_keys_file = Some(keys.path().to_path_buf());
    let err = apiary::start(cfg).await.err().expect("refused").to_string();
    assert!(err.contains("line 2"), "{err}");
}

#[tokio::test]
async fn metrics_show_tenants_and_the_stores_batches_and_fsyncs() {
    use crate::common::{v3, Tr};
    let tb = TestBroker::start().await;
    let mut o = v3::opts(&tb, "metered", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, _) = v3::connect(o).await;
    c.c.subscribe("m/t", v3::QoS::AtLeastOnce).await.unwrap();
    c.suback().await;
    c.c.publish("m/t", v3::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    c.publish().await;
    use crate::common::metric;
    crate::common::eventually("the store wrote and synced", || {
        metric(&tb, "apiary_store_batches_total") > 0
            && metric(&tb, "apiary_store_fsync_seconds_count") > 0
    })
    .await;
    let d = "{tenant=\"default\"}";
    assert_eq!(metric(&tb, &format!("apiary_tenant_connections{d}")), 1);
    assert_eq!(metric(&tb, &format!("apiary_tenant_sessions{d}")), 1);
    assert_eq!(metric(&tb, &format!("apiary_tenant_subscriptions{d}")), 1);
    assert_eq!(
        metric(&tb, &format!("apiary_tenant_messages_received_total{d}")),
        1
    );
    assert_eq!(
        metric(&tb, &format!("apiary_tenant_messages_sent_total{d}")),
        1
    );
    assert!(metric(&tb, "apiary_store_fsync_seconds_bucket{le=\"+Inf\"}") > 0);
}
