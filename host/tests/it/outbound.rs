//! Outbound HTTP for plugins: the `fetcher` test plugin calling a local HTTP receiver the
//! test runs, through `wasi:http`, only where its toml grants the origin.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, TestBroker};
use crate::plugins::install;

/// A receiver answering every request `200 got <body>`; its address and the requests'
/// `x-from` header values.
async fn receiver() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then a 4-byte body ("ping").
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") || !buf.ends_with(b"ping") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_lowercase();
                let from = text
                    .lines()
                    .find_map(|l| l.strip_prefix("x-from: "))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                let _ = tx.send(from);
                let body = "got ping";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, rx)
}

fn fetcher(allowed: &[String]) -> String {
    let hosts: Vec<String> = allowed.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "mount = \"/fetch-{}\"\nroles = [\"http\"]\ncall_timeout_ms = 3000\n\
         [outbound_http]\nallowed_hosts = [{}]\ntimeout_ms = 2000\n",
        allowed.len(),
        hosts.join(", ")
    )
}

async fn fetch(tb: &TestBroker, mount: &str, url: &str) -> (u16, String) {
    common::http(
        tb.http_addr(),
        "POST",
        &format!("{mount}/fetch"),
        None,
        url.as_bytes(),
    )
    .await
}

#[tokio::test]
async fn a_plugin_reaches_only_the_origins_its_toml_grants() {
    let (addr, mut seen) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let granted = vec![format!("http://127.0.0.1:{}", addr.port())];
    install(dir.path(), "fetcher", "granted", Some(&fetcher(&granted)));
    install(dir.path(), "fetcher", "denied", Some(&fetcher(&[])));
    let d = dir.path().to_path_buf();
    let tb = TestBroker::start_with(move |c| c.plugins_dir = d).await;

    let url = format!("http://127.0.0.1:{}/hook", addr.port());
    assert_eq!(
        fetch(&tb, "/fetch-1", &url).await,
        (200, "200 got ping".into())
    );
    assert_eq!(seen.recv().await.as_deref(), Some("fetcher"));

    // Not granted: no grant at all, another port, another host name for the same address.
    let (s, body) = fetch(&tb, "/fetch-0", &url).await;
    assert_eq!(s, 502, "{body}");
    assert!(body.contains("HttpRequestDenied"), "{body}");
    let other = format!("http://127.0.0.1:{}/hook", addr.port() + 1);
    assert!(fetch(&tb, "/fetch-1", &other)
        .await
        .1
        .contains("HttpRequestDenied"));
    let named = format!("http://localhost:{}/hook", addr.port());
    assert!(fetch(&tb, "/fetch-1", &named)
        .await
        .1
        .contains("HttpRequestDenied"));
    assert!(
        seen.try_recv().is_err(),
        "nothing refused reached the receiver"
    );

    for (line, n) in [
        (
            "apiary_plugin_outbound_requests_total{plugin=\"granted\"}",
            3,
        ),
        (
            "apiary_plugin_outbound_refused_total{plugin=\"granted\"}",
            2,
        ),
        ("apiary_plugin_outbound_refused_total{plugin=\"denied\"}", 1),
        ("apiary_plugin_outbound_failed_total{plugin=\"granted\"}", 0),
    ] {
        assert_eq!(common::metric(&tb, line), n, "{line}");
    }
}

#[test]
fn an_invalid_grant_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.toml");
    std::fs::write(
        &p,
        "roles = [\"http\"]\n[outbound_http]\nallowed_hosts = [\"example.com\"]\n",
    )
    .unwrap();
    let e = apiary::plugins::manifest::Manifest::load(&p).unwrap_err();
    assert!(e.contains("scheme://host"), "{e}");
}
