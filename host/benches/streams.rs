//! Fan-out to stream connections (issue 12): one MQTT publisher to N WebSocket streams
//! through the stock `octave` plugin, next to the same fan-out to N MQTT subscribers, in
//! one process and run. Each message carries its publish time; deliveries per second (N ×
//! messages over the time from the first publish to the last delivery) and p99 latency
//! per path, rounds alternating. Also the memory an idle connection costs (process RSS
//! before and after opening them; client and server ends are both in this process, for
//! either protocol). Goal: the stream path at no less than half the MQTT rate. Full run:
//! `cargo bench -p apiary --bench streams` (after `cargo xtask plugins`); under
//! `cargo test` a small smoke version runs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::fanout::{mqtt, mqtt_subscriber, now_ns, report, rss_kib, stamp, Seen};
use common::{mqtt_packet as packet, mqtt_str as with_str};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A session id from `POST /session`.
async fn session_id(http: SocketAddr) -> String {
    let mut s = TcpStream::connect(http).await.unwrap();
    let req = "POST /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Auth-User: ops\r\nX-Auth-Token: s3cret\r\nX-Auth-Company: default\r\nContent-Length: 0\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let i = resp.find("\"id\":\"").expect("a session id") + 6;
    resp[i..].split('"').next().unwrap().to_string()
}

/// An Octave stream subscribed to `/topic`, counting events into `seen`.
async fn ws_subscriber(http: SocketAddr, topic: &str, seen: Arc<Seen>) {
    use tokio_tungstenite::tungstenite::Message as Ws;
    let id = session_id(http).await;
    let tcp = TcpStream::connect(http).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    // The client's read buffer as small as the server's, so the memory figure is not
    // mostly tungstenite's 128 KiB default on the client side.
    let cfg =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{http}/session/{id}/ws"),
        tcp,
        Some(cfg),
    )
    .await
    .unwrap();
    let sub = format!(r#"{{"msgId":"1","object":"event","type":"subscribe","path":"/{topic}"}}"#);
    ws.send(Ws::Text(sub.into())).await.unwrap();
    loop {
        if let Some(Ok(Ws::Text(t))) = ws.next().await {
            assert!(t.contains("\"ok\":true"), "subscribed: {t}");
            break;
        }
    }
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Ws::Text(t) = m {
                if let Some(t) = stamp(t.as_bytes()) {
                    seen.record(t);
                }
            }
        }
    });
}

/// Publishes `m` messages to `topic` and waits for `n` deliveries of each: (deliveries
/// per second, this round's latencies).
async fn round(publisher: &mut TcpStream, topic: &str, m: usize, n: usize, seen: &Seen) -> f64 {
    let before = seen.deliveries.load(Ordering::Relaxed);
    let start = now_ns();
    for _ in 0..m {
        let mut body = Vec::new();
        with_str(topic, &mut body);
        body.extend_from_slice(format!("{{\"t\":{}}}", now_ns()).as_bytes());
        publisher.write_all(&packet(0x30, &body)).await.unwrap();
        // A steady stream rather than one burst: the queues stay short on both paths.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    seen.rate(before, (m * n) as u64, start, topic).await
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, m, rounds) = if full { (1000, 200, 3) } else { (20, 5, 1) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, http) =
            common::with_listening_plugin(dir.path(), "octave", "0.0.0.0:8093", "ops:s3cret:admin:tenant=*\n").await;
        let tcp = srv.addrs.tcp.unwrap();
        let (mq, ws) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        let r0 = rss_kib();
        for i in 0..n {
            mqtt_subscriber(tcp, i, "bench/mqtt", mq.clone()).await;
        }
        let r1 = rss_kib();
        for _ in 0..n {
            ws_subscriber(http, "bench/ws", ws.clone()).await;
        }
        let r2 = rss_kib();
        let mut publisher = mqtt(tcp, "fan-publisher").await;
        let mut rate = [0.0f64; 2];
        for _ in 0..rounds {
            rate[0] += round(&mut publisher, "bench/mqtt", m, n, &mq).await / rounds as f64;
            rate[1] += round(&mut publisher, "bench/ws", m, n, &ws).await / rounds as f64;
        }
        let ratio = report(
            &format!("streams/fan-out 1 -> {n}"),
            [
                ("MQTT subscribers", rate[0], &mq),
                ("octave WebSocket streams", rate[1], &ws),
            ],
        );
        println!("streams/fan-out stream rate / MQTT rate: {ratio:.2} (goal: at least 0.50)");
        println!(
            "streams/memory per idle connection (both ends, RSS): MQTT {:.1} KiB, octave WebSocket {:.1} KiB",
            (r1.saturating_sub(r0)) as f64 / n as f64,
            (r2.saturating_sub(r1)) as f64 / n as f64
        );
    });
}
