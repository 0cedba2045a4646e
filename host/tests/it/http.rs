//! The native HTTP API over a real socket: /healthz open, /metrics behind an API key with
//! the admin right (401 without, 403 with the wrong right).

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

#[tokio::test]
async fn healthz_is_open_and_metrics_need_an_admin_key() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "ops:s3cret:admin\nreader:r:connections:read\n").unwrap();
    let path = keys.path().to_path_buf();
    let tb = TestBroker::start_with(|c| c.api_keys_file = Some(path)).await;

    let (status, body) = get(&tb, "/healthz", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("ok"));

    assert_eq!(get(&tb, "/metrics", None).await.0, 401);
    assert_eq!(get(&tb, "/metrics", Some(("ops", "wrong"))).await.0, 401);
    assert_eq!(get(&tb, "/metrics", Some(("reader", "r"))).await.0, 403);
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
