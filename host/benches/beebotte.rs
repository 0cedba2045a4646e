//! Beebotte through the stock `beebotte` plugin (issue 13). (1) REST publishes per second
//! over one keep-alive connection, each signed as the SDKs sign (HMAC-SHA1 over verb,
//! Content-MD5, Content-Type, Date and the target) and checked by the host, next to the
//! same publish authenticated by an IAM token (`X-Auth-Token`) in the same run: the cost
//! of signature checking. (2) Fan-out of REST publishes to N socket.io subscribers (raw
//! Engine.IO v4 over WebSocket, subscribed as the SDK subscribes), next to the same
//! publishes fanned out to N MQTT subscribers, rounds alternating. Full run:
//! `cargo bench -p apiary --bench beebotte` (after `cargo xtask plugins`); under
//! `cargo test` a small smoke version runs.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use base64::Engine;
use common::fanout::{mqtt_subscriber, now_ns, quantile_ms, report, rss_kib, stamp, Seen};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use md5::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Ws;

const KEYS: &str = "ops:s3cret:admin:tenant=*\n";

/// How a REST publish authenticates.
#[derive(Clone)]
enum Auth {
    /// Signed with the key `ops`.
    Signed,
    /// An IAM token.
    Token(String),
}

/// One signed (or token) `POST /v1/data/publish/bench/{resource}` with `body`.
fn publish_request(resource: &str, body: &str, auth: &Auth) -> String {
    let target = format!("/v1/data/publish/bench/{resource}");
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body.as_bytes()));
    let head = match auth {
        Auth::Signed => {
            let date = httpdate::fmt_http_date(std::time::SystemTime::now());
            let msg = format!("POST\n{md5}\napplication/json\n{date}\n{target}");
            let mut m = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
            m.update(msg.as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes());
            format!("Authorization: ops:{sig}\r\nDate: {date}\r\n")
        }
        Auth::Token(t) => format!("X-Auth-Token: {t}\r\n"),
    };
    format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-MD5: {md5}\r\n{head}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Sends `req` on a keep-alive connection and reads the answer; its status.
async fn exchange(conn: &mut BufReader<TcpStream>, req: &str) -> u16 {
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    common::read_answer(conn).await
}

async fn keep_alive(http: SocketAddr) -> BufReader<TcpStream> {
    let s = TcpStream::connect(http).await.unwrap();
    s.set_nodelay(true).unwrap();
    BufReader::new(s)
}

/// An IAM token with `data:write`, from the plugin's admin route (basic auth).
async fn iam_token(http: SocketAddr) -> String {
    let body = r#"{"kind":"iam","acl":["data:write"]}"#;
    let auth = base64::engine::general_purpose::STANDARD.encode("ops:s3cret");
    let req = format!(
        "POST /v1/apiary/tokens HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(http).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let i = resp.find("\"token\":\"").expect("a token") + 9;
    resp[i..].split('"').next().unwrap().to_string()
}

/// `n` sequential publishes: their latencies in ns.
async fn rest_round(conn: &mut BufReader<TcpStream>, auth: &Auth, n: usize) -> Vec<u64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let req = publish_request("rest", r#"{"data":1}"#, auth);
        let t = Instant::now();
        assert_eq!(exchange(conn, &req).await, 200);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// The next text frame of subscriber `i`, answering Engine.IO pings (the first comes at
/// once, before the namespace is connected; one unanswered closes the socket 25 s later).
async fn next_text(ws: &mut Socket, i: usize) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Ws::Text(t))) if t.as_str() == "2" => {
                ws.send(Ws::Text("3".into())).await.unwrap();
            }
            Some(Ok(Ws::Text(t))) => return t.to_string(),
            Some(Ok(_)) => {}
            other => panic!("socket.io subscriber {i} ended: {other:?}"),
        }
    }
}

/// A socket.io subscriber as Beebotte's SDK makes one (Engine.IO v4 over WebSocket here,
/// `key=` in the handshake, a `control`/`subscribe` message), counting deliveries.
async fn sio_subscriber(http: SocketAddr, i: usize, resource: &str, seen: Arc<Seen>) {
    let tcp = TcpStream::connect(http).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let cfg =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let url = format!("ws://{http}/socket.io/?EIO=4&transport=websocket&key=ops&userid=u{i}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(cfg))
        .await
        .unwrap();
    ws.send(Ws::Text("40".into())).await.unwrap();
    // Events before the namespace CONNECT is answered would be a protocol error.
    loop {
        let t = next_text(&mut ws, i).await;
        assert!(
            !t.starts_with("44"),
            "socket.io subscriber {i} refused: {t}"
        );
        if t.starts_with("40") {
            break;
        }
    }
    let sub = format!(
        r#"42["message",{{"version":1,"channel":"control","event":"subscribe","data":{{"channel":"bench","resource":"{resource}","ttl":0,"read":true,"write":false}}}}]"#
    );
    ws.send(Ws::Text(sub.into())).await.unwrap();
    loop {
        let t = next_text(&mut ws, i).await;
        if t.contains("\"subscribed\"") {
            break;
        }
        assert!(!t.contains("Error"), "{t}");
    }
    tokio::spawn(async move {
        while let Some(Ok(m)) = ws.next().await {
            if let Ws::Text(t) = m {
                if t.as_str() == "2" {
                    // Engine.IO v4 ping.
                    let _ = ws.send(Ws::Text("3".into())).await;
                } else if let Some(t) = stamp(t.as_bytes()) {
                    seen.record(t);
                }
            }
        }
    });
}

/// `m` REST publishes to `bench/{resource}`, then waits for `n` deliveries of each:
/// deliveries per second.
async fn fan_round(
    conn: &mut BufReader<TcpStream>,
    resource: &str,
    m: usize,
    n: usize,
    seen: &Seen,
) -> f64 {
    let before = seen.deliveries.load(Ordering::Relaxed);
    let start = now_ns();
    for _ in 0..m {
        let body = format!("{{\"data\":{{\"t\":{}}}}}", now_ns());
        let req = publish_request(resource, &body, &Auth::Signed);
        assert_eq!(exchange(conn, &req).await, 200);
        // A steady stream rather than one burst, as in the streams benchmark.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    seen.rate(before, (m * n) as u64, start, resource).await
}

async fn rest(http: SocketAddr, requests: usize, rounds: usize) {
    let token = Auth::Token(iam_token(http).await);
    let mut conn = keep_alive(http).await;
    // Warm the plugin's instances and the connection.
    rest_round(&mut conn, &Auth::Signed, requests / 10 + 1).await;
    let mut lat = [Vec::new(), Vec::new()];
    let mut secs = [0f64; 2];
    for _ in 0..rounds {
        for (i, auth) in [Auth::Signed, token.clone()].iter().enumerate() {
            let t = Instant::now();
            lat[i].extend(rest_round(&mut conn, auth, requests).await);
            secs[i] += t.elapsed().as_secs_f64();
        }
    }
    let total = (requests * rounds) as f64;
    for (i, name) in ["signed (HMAC-SHA1)", "IAM token"].iter().enumerate() {
        println!(
            "beebotte/rest publish {name}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
            total / secs[i],
            quantile_ms(&mut lat[i], 0.5),
            quantile_ms(&mut lat[i], 0.99)
        );
    }
    println!(
        "beebotte/rest signed rate / token rate: {:.2}",
        secs[1] / secs[0]
    );
}

async fn fan_out(http: SocketAddr, tcp: SocketAddr, n: usize, m: usize, rounds: usize) {
    let (mq, sio) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let r0 = rss_kib();
    // Bounded: a subscriber the broker never answers fails here, naming itself, instead
    // of hanging the run.
    let bound = Duration::from_secs(10);
    for i in 0..n {
        let sub = mqtt_subscriber(tcp, i, "bench/mqtt", mq.clone());
        if tokio::time::timeout(bound, sub).await.is_err() {
            panic!("MQTT subscriber {i} got no CONNACK or SUBACK in {bound:?}");
        }
    }
    let r1 = rss_kib();
    for i in 0..n {
        let sub = sio_subscriber(http, i, "sio", sio.clone());
        if tokio::time::timeout(bound, sub).await.is_err() {
            panic!("socket.io subscriber {i} was not subscribed in {bound:?}");
        }
    }
    let r2 = rss_kib();
    let mut conn = keep_alive(http).await;
    let mut rate = [0.0f64; 2];
    for _ in 0..rounds {
        rate[0] += fan_round(&mut conn, "mqtt", m, n, &mq).await / rounds as f64;
        rate[1] += fan_round(&mut conn, "sio", m, n, &sio).await / rounds as f64;
    }
    let ratio = report(
        &format!("beebotte/fan-out REST publish -> {n}"),
        [
            ("MQTT subscribers", rate[0], &mq),
            ("socket.io subscribers", rate[1], &sio),
        ],
    );
    println!("beebotte/fan-out socket.io rate / MQTT rate: {ratio:.2}");
    println!(
        "beebotte/memory per idle connection (both ends, RSS): MQTT {:.1} KiB, socket.io {:.1} KiB",
        r1.saturating_sub(r0) as f64 / n as f64,
        r2.saturating_sub(r1) as f64 / n as f64
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (requests, rest_rounds, n, m, rounds) = if full {
        (5000, 3, 1000, 200, 3)
    } else {
        (20, 1, 10, 5, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, http) =
            common::with_listening_plugin(dir.path(), "beebotte", "0.0.0.0:8092", KEYS).await;
        rest(http, requests, rest_rounds).await;
        fan_out(http, srv.addrs.tcp.unwrap(), n, m, rounds).await;
    });
}
