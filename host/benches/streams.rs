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
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{mqtt_packet as packet, mqtt_str as with_str};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static BASE: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

async fn server(dir: &Path, port: u16) -> apiary::Server {
    let listen = format!("127.0.0.1:{port}");
    common::with_stock_plugin(
        dir,
        "octave",
        &[("0.0.0.0:8093", &listen)],
        "ops:s3cret:admin:tenant=*\n",
    )
    .await
}

/// An MQTT 3.1.1 connection with CONNECT sent and CONNACK read.
async fn mqtt(tcp: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut body = Vec::new();
    with_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 120]);
    with_str(id, &mut body);
    s.write_all(&packet(0x10, &body)).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack[3], 0, "CONNACK accepted");
    s
}

/// The publish time a payload carries (`{"t":<ns>}`).
fn stamp(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let i = s.find("\"t\":")? + 4;
    let digits: String = s[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What one path's subscribers saw.
#[derive(Default)]
struct Seen {
    deliveries: AtomicU64,
    last_ns: AtomicU64,
    latencies: Mutex<Vec<u64>>,
}

impl Seen {
    fn record(&self, sent: u64) {
        let now = now_ns();
        self.latencies
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }
}

/// An MQTT subscriber to `topic` counting PUBLISH packets into `seen`.
async fn mqtt_subscriber(tcp: SocketAddr, i: usize, topic: &str, seen: Arc<Seen>) {
    let mut s = mqtt(tcp, &format!("fan-{i}")).await;
    let mut body = vec![0, 1];
    with_str(topic, &mut body);
    body.push(0);
    s.write_all(&packet(0x82, &body)).await.unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.unwrap();
    tokio::spawn(async move {
        let mut buf = bytes::BytesMut::with_capacity(64 << 10);
        loop {
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            while let Some((first, start, len)) = header(&buf) {
                if buf.len() < start + len {
                    break;
                }
                let p = buf.split_to(start + len);
                if first >> 4 == 3 {
                    let tl = u16::from_be_bytes([p[start], p[start + 1]]) as usize;
                    if let Some(t) = stamp(&p[start + 2 + tl..]) {
                        seen.record(t);
                    }
                }
            }
        }
    });
}

/// (first byte, header length, remaining length) of the packet at the buffer's start.
fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    for i in 1..5 {
        let x = *b.get(i)?;
        len |= ((x & 0x7f) as usize) << (7 * (i - 1));
        if x & 0x80 == 0 {
            return Some((b[0], i + 1, len));
        }
    }
    None
}

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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
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
    let want = before + (m * n) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.deliveries.load(Ordering::Relaxed) < want {
        assert!(
            Instant::now() < deadline,
            "{topic}: {} of {} deliveries",
            seen.deliveries.load(Ordering::Relaxed) - before,
            m * n
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = (seen.last_ns.load(Ordering::Relaxed) - start) as f64 / 1e9;
    (m * n) as f64 / secs
}

fn p(l: &mut [u64], q: f64) -> f64 {
    l.sort_unstable();
    l[((l.len() as f64 * q) as usize).min(l.len() - 1)] as f64 / 1e6
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let srv = server(dir.path(), port).await;
        let http: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
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
        let mut lat = [
            std::mem::take(&mut *mq.latencies.lock().unwrap()),
            std::mem::take(&mut *ws.latencies.lock().unwrap()),
        ];
        for (i, name) in ["MQTT subscribers", "octave WebSocket streams"]
            .iter()
            .enumerate()
        {
            println!(
                "streams/fan-out 1 -> {n} {name}: {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
                rate[i],
                p(&mut lat[i], 0.5),
                p(&mut lat[i], 0.99),
                lat[i].len()
            );
        }
        println!(
            "streams/fan-out stream rate / MQTT rate: {:.2} (goal: at least 0.50)",
            rate[1] / rate[0]
        );
        println!(
            "streams/memory per idle connection (both ends, RSS): MQTT {:.1} KiB, octave WebSocket {:.1} KiB",
            (r1.saturating_sub(r0)) as f64 / n as f64,
            (r2.saturating_sub(r1)) as f64 / n as f64
        );
    });
}
