//! The stock webhook plugin against a receiver the test runs: EMQX-shaped bodies, the
//! HMAC signature, retries while the receiver answers 500, and nothing lost across a
//! receiver restart within the queue bound (what is over it dropped and counted).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, v3, TestBroker, Tr};
use crate::plugins::install;

/// One request the receiver accepted.
#[derive(Debug, Clone)]
struct Hook {
    path: String,
    signature: String,
    body: serde_json::Value,
    raw: Vec<u8>,
}

/// A receiver on `addr` (port 0: any) answering 500 to its first `fail` requests and 200
/// after; the task serving it (abort it to stop the receiver).
async fn receiver(
    addr: SocketAddr,
    fail: usize,
    tx: tokio::sync::mpsc::UnboundedSender<Hook>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let failing = Arc::new(AtomicUsize::new(fail));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (tx, failing) = (tx.clone(), failing.clone());
            tokio::spawn(async move {
                let Some((head, raw)) = read_request(&mut s).await else {
                    return;
                };
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix(&format!("{name}: "))
                                .map(|v| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                let fail = failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if !fail {
                    let _ = tx.send(Hook {
                        path: head.split(' ').nth(1).unwrap_or("").to_string(),
                        signature: header("x-apiary-signature"),
                        body: serde_json::from_slice(&raw).unwrap_or_default(),
                        raw,
                    });
                }
                let status = if fail {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let resp =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

async fn read_request(s: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some((head, buf[end + 4..end + 4 + len].to_vec()));
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn toml(port: u16, targets: &str) -> String {
    format!(
        "mount = \"/webhook\"\nroles = [\"events\", \"http\"]\ncapabilities = [\"kv\", \"apikeys\", \"events.messages\"]\n\
         tenants = [\"*\"]\n\
         call_timeout_ms = 5000\n[events]\ntick_ms = 100\n\
         [outbound_http]\nallowed_hosts = [\"http://127.0.0.1:{port}\"]\ntimeout_ms = 1000\n\
         [config]\nsecret = \"s3cret\"\n{targets}"
    )
}

async fn broker(toml: &str) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (d, keys) = (dir.path().join("plugins"), dir.path().join("keys"));
    std::fs::create_dir_all(&d).unwrap();
    install(&d, "webhook", "webhook", Some(toml));
    std::fs::write(
        &keys,
        "ops:s3cret:admin:tenant=*\nview:s3cret:metrics:read:tenant=default\n",
    )
    .unwrap();
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = d;
        c.api_keys_file = Some(keys);
    })
    .await;
    (tb, dir)
}

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Hook>) -> Hook {
    tokio::time::timeout(common::WAIT, rx.recv())
        .await
        .expect("a webhook in time")
        .unwrap()
}

async fn stats(tb: &TestBroker) -> serde_json::Value {
    let ops = Some(("ops", "s3cret"));
    let (s, body) = common::http(tb.http_addr(), "GET", "/webhook/stats", ops, b"").await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn events_and_messages_arrive_signed_after_retries() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _r) = receiver("127.0.0.1:0".parse().unwrap(), 2, tx).await;
    let target = format!(
        "[[config.targets]]\nurl = \"http://127.0.0.1:{}/hook\"\n\
         events = [\"client.connected\", \"message.publish\"]\ntopics = [\"sensors/#\"]\n\
         batch_size = 1\nmax_backoff_ms = 500\n",
        addr.port()
    );
    let (tb, _dir) = broker(&toml(addr.port(), &target)).await;
    let (c, _) = v3::connect(v3::opts(&tb, "dev-1", Tr::Tcp)).await;
    c.c.publish("other/x", rumqttc::QoS::AtLeastOnce, false, "not wanted")
        .await
        .unwrap();
    c.c.publish("sensors/t", rumqttc::QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();

    let h = next(&mut rx).await;
    assert_eq!(h.path, "/hook");
    assert_eq!(
        (h.body["event"].as_str(), h.body["clientid"].as_str()),
        (Some("client.connected"), Some("dev-1"))
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
    mac.update(&h.raw);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(h.signature, format!("sha256={hex}"));
    let h = next(&mut rx).await;
    assert_eq!(h.body["event"], "message.publish");
    assert_eq!(
        (h.body["topic"].as_str(), h.body["payload"].as_str()),
        (Some("sensors/t"), Some("21.5"))
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(rx.try_recv().is_err(), "other/x is not one of its topics");
    // Its figures name the targets: not for a key of one tenant, nor without a key.
    let addr = tb.http_addr();
    let viewer = Some(("view", "s3cret"));
    assert_eq!(
        common::http(addr, "GET", "/webhook/stats", viewer, b"")
            .await
            .0,
        403
    );
    assert_eq!(
        common::http(addr, "GET", "/webhook/stats", None, b"")
            .await
            .0,
        401
    );
    let s = &stats(&tb).await["targets"][0];
    assert_eq!(
        (s["delivered"].as_u64(), s["failed_attempts"].as_u64()),
        (Some(2), Some(2)),
        "{s}"
    );
}

#[tokio::test]
async fn a_receiver_restart_loses_nothing_within_the_queue_bound() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, r) = receiver("127.0.0.1:0".parse().unwrap(), 0, tx.clone()).await;
    let target = |path: &str, max: u32| {
        format!(
            "[[config.targets]]\nurl = \"http://127.0.0.1:{}/{path}\"\nevents = [\"message.publish\"]\n\
             batch_size = 1\nmax_queued = {max}\nmax_backoff_ms = 300\n",
            addr.port()
        )
    };
    let targets = format!("{}{}", target("roomy", 10), target("tight", 2));
    let (tb, _dir) = broker(&toml(addr.port(), &targets)).await;
    let (c, _) = v3::connect(v3::opts(&tb, "dev", Tr::Tcp)).await;
    c.c.publish("t/0", rumqttc::QoS::AtLeastOnce, false, "0")
        .await
        .unwrap();
    let mut first: Vec<String> = vec![next(&mut rx).await.path, next(&mut rx).await.path];
    first.sort();
    assert_eq!(first, ["/roomy", "/tight"]);

    r.abort(); // The receiver goes away.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 1..=5 {
        c.c.publish(
            format!("t/{i}"),
            rumqttc::QoS::AtLeastOnce,
            false,
            i.to_string(),
        )
        .await
        .unwrap();
    }
    common::eventually_async("deliveries fail while it is away", || async {
        stats(&tb).await["targets"][0]["failed_attempts"].as_u64() >= Some(1)
    })
    .await;
    let (_, _r2) = receiver(addr, 0, tx).await; // Back on the same port.
    let mut roomy = Vec::new();
    let mut tight = Vec::new();
    while roomy.len() < 5 {
        let h = next(&mut rx).await;
        let payload = h.body["payload"].as_str().unwrap().to_string();
        if h.path == "/roomy" {
            roomy.push(payload)
        } else {
            tight.push(payload)
        }
    }
    assert_eq!(roomy, ["1", "2", "3", "4", "5"], "all of them, in order");
    common::eventually_async("the tight target drains", || async {
        stats(&tb).await["targets"][1]["queued_requests"].as_u64() == Some(0)
    })
    .await;
    while let Ok(h) = rx.try_recv() {
        tight.push(h.body["payload"].as_str().unwrap().to_string());
    }
    let s = stats(&tb).await;
    assert_eq!(s["targets"][1]["dropped"].as_u64(), Some(3), "{s}");
    assert_eq!(tight, ["1", "2"], "{s}");
    assert_eq!(s["targets"][0]["dropped"].as_u64(), Some(0));
}
