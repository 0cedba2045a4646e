//! BifroMQ's `POST /pub` through the stock bifromq plugin (issue 11), next to the same
//! publish made by a native axum route of the host in the same process and run: both check
//! HTTP basic auth against the key store, the tenant and the `publish` right, parse the
//! headers and publish to a subscribed MQTT client. Sequential requests over one keep-alive
//! connection; rounds alternate between the two paths; requests per second and p99 per
//! path, and the plugin's overhead over the native route (the goal: at most 25%). Full run:
//! `cargo bench -p apiary --bench bifromq` (after `cargo xtask plugins`); under `cargo test`
//! a small smoke version runs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use apiary::apikeys::Right;
use apiary::Broker;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use rmqtt_codec::types::QoS;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOPIC: &str = "bench/pub";

/// The native route: what the plugin does for `/pub`, written against the host directly.
async fn native_pub(State(b): State<Broker>, h: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let Some((key, secret)) = header("authorization").and_then(apiary_common::credentials::basic)
    else {
        return StatusCode::UNAUTHORIZED;
    };
    let Some(k) = b.api_keys.verify(&key, &secret) else {
        return StatusCode::UNAUTHORIZED;
    };
    let (Some(tenant), Some(topic), Some(_client), Some(q)) = (
        header("tenant_id"),
        header("topic"),
        header("client_type"),
        header("pub_qos"),
    ) else {
        return StatusCode::BAD_REQUEST;
    };
    if !k.may_touch(tenant) || !k.has(Right::Publish) {
        return StatusCode::FORBIDDEN;
    }
    let qos = match q {
        "0" => QoS::AtMostOnce,
        "1" => QoS::AtLeastOnce,
        "2" => QoS::ExactlyOnce,
        _ => return StatusCode::BAD_REQUEST,
    };
    let retain = match header("retain") {
        None => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return StatusCode::BAD_REQUEST,
    };
    match b.publish_as_broker(tenant, topic, body, qos, retain) {
        Ok(_) => StatusCode::OK,
        Err(_) => StatusCode::BAD_REQUEST,
    }
}

async fn native(b: Broker) -> SocketAddr {
    let app = axum::Router::new()
        .route("/pub", axum::routing::post(native_pub))
        .with_state(b);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A subscriber to the topic over MQTT; counts what it receives.
async fn subscriber(tcp: SocketAddr) -> Arc<AtomicUsize> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let o = MqttOptions::new("bench-sub", tcp.ip().to_string(), tcp.port());
    let (c, mut el) = AsyncClient::new(o, 100);
    c.subscribe(TOPIC, QoS::AtMostOnce).await.unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    tokio::spawn(async move {
        let _c = c;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    g.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => panic!("subscriber: {e}"),
            }
        }
    });
    rx.await.unwrap();
    got
}

/// One `POST /pub` on a keep-alive connection; returns the status.
async fn post(conn: &mut BufReader<TcpStream>, req: &[u8]) -> u16 {
    conn.get_mut().write_all(req).await.unwrap();
    common::read_answer(conn).await
}

/// `n` requests on one connection: (requests per second, sorted latencies).
async fn round(addr: SocketAddr, n: usize) -> (f64, Vec<Duration>) {
    let payload = [b'x'; 64];
    let mut req = format!(
        "POST /pub HTTP/1.1\r\nHost: x\r\nAuthorization: Basic b3BzOnMzY3JldA==\r\n\
         tenant_id: default\r\ntopic: {TOPIC}\r\nclient_type: bench\r\npub_qos: 0\r\n\
         Content-Length: {}\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    req.extend_from_slice(&payload);
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut conn = BufReader::new(s);
    for _ in 0..n.min(200) {
        assert_eq!(post(&mut conn, &req).await, 200);
    }
    let mut t = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let s = Instant::now();
        assert_eq!(post(&mut conn, &req).await, 200);
        t.push(s.elapsed());
    }
    let rps = n as f64 / start.elapsed().as_secs_f64();
    t.sort();
    (rps, t)
}

/// The plugin call alone, without HTTP: mean time of `n` calls of `/pub` in the guest.
async fn call_alone(srv: &apiary::Server, n: usize) -> Duration {
    use apiary::plugins::bindings::exports::apiary::plugin::http;
    let p = srv.plugins.get("bifromq").expect("loaded");
    let engine = srv.plugins.runtime().engine().clone();
    let req = || http::Request {
        method: "POST".into(),
        path: "/pub".into(),
        query: String::new(),
        target: "/pub".into(),
        headers: [
            ("host", "x"),
            ("authorization", "Basic b3BzOnMzY3JldA=="),
            ("tenant_id", "default"),
            ("topic", TOPIC),
            ("client_type", "bench"),
            ("pub_qos", "0"),
            ("content-length", "64"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        body: vec![b'x'; 64],
        peer: Some("127.0.0.1:5000".into()),
    };
    let start = Instant::now();
    for _ in 0..n {
        let r = p.handle_http(&engine, req(), None).await.unwrap();
        assert_eq!(r.status, 200);
    }
    start.elapsed() / n as u32
}

fn p99(t: &[Duration]) -> f64 {
    t[((t.len() as f64 * 0.99) as usize).min(t.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (n, rounds) = if full { (10_000, 6) } else { (50, 1) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let (srv, plugin) =
            common::with_listening_plugin(dir.path(), "bifromq", "0.0.0.0:8091", "ops:s3cret:publish:tenant=default\n").await;
        let native = native(srv.broker.clone()).await;
        let got = subscriber(srv.addrs.tcp.unwrap()).await;
        let mut all = [(0.0, Vec::new()), (0.0, Vec::new())];
        for _ in 0..rounds {
            for (i, addr) in [native, plugin].into_iter().enumerate() {
                let (rps, t) = round(addr, n).await;
                all[i].0 += rps / rounds as f64;
                all[i].1.extend(t);
            }
        }
        let alone = call_alone(&srv, n).await;
        let sent = 2 * rounds * (n + n.min(200)) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.load(Ordering::Relaxed), sent, "every publish reached the subscriber");
        for (name, (rps, t)) in ["native axum route", "bifromq plugin"].iter().zip(&mut all) {
            t.sort();
            println!(
                "bifromq/POST /pub via {name}: {rps:.0} req/s, p50 {:.3} ms, p99 {:.3} ms ({} requests)",
                t[t.len() / 2].as_secs_f64() * 1e3,
                p99(t),
                t.len()
            );
        }
        println!(
            "bifromq/POST /pub the plugin call alone (no HTTP): {:.1} µs ({n} calls)",
            alone.as_secs_f64() * 1e6
        );
        println!(
            "bifromq/POST /pub plugin overhead: {:+.1}% time per request (native req/s / plugin req/s - 1), p99 {:+.1}%",
            (all[0].0 / all[1].0 - 1.0) * 100.0,
            (p99(&all[1].1) / p99(&all[0].1) - 1.0) * 100.0
        );
    });
}
