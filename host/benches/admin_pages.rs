//! Deep pages of the EMQX clients API at 200k sessions and 200k subscriptions (issue 15,
//! EMQX #17945: page 14130 of 200k subscriptions took over 15 s there). Over HTTP through
//! the stock `emqx` plugin, one keep-alive connection: the first, middle and last page of
//! `GET /clients` and `GET /subscriptions` (100 per page), a filtered scan, and a whole
//! `clients_v2` cursor walk; p50 and p99 per case, against the 10 ms goal. Full run:
//! `cargo bench -p apiary --bench admin_pages -- --bench` (after `cargo xtask plugins`);
//! `APIARY_BENCH_JSON=FILE` writes the figures; under `cargo test` a small smoke version.

use std::time::{Duration, Instant};

mod common;

use apiary::session::SubOptions;
use rmqtt_codec::types::QoS;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const AUTH: &str = "Authorization: Basic b3BzOnMzY3JldA=="; // ops:s3cret

/// GET `path`; (status, body).
async fn get(conn: &mut BufReader<TcpStream>, path: &str) -> (u16, String) {
    let req = format!("GET /api/v5{path} HTTP/1.1\r\nHost: x\r\n{AUTH}\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    common::read_answer_body(conn).await
}

/// `n` timed requests of `path`: sorted latencies.
async fn time(conn: &mut BufReader<TcpStream>, path: &str, n: usize) -> Vec<Duration> {
    let (st, body) = get(conn, path).await;
    assert_eq!(st, 200, "{path}: {body}");
    let mut t: Vec<Duration> = (0..n).map(|_| Duration::ZERO).collect();
    for x in &mut t {
        let s = Instant::now();
        assert_eq!(get(conn, path).await.0, 200);
        *x = s.elapsed();
    }
    t.sort();
    t
}

fn ms(t: &[Duration], q: f64) -> f64 {
    t[((t.len() as f64 * q) as usize).min(t.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sessions, n) = if full { (200_000, 200) } else { (2_000, 5) };
    let pages = sessions / 100;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let srv =
            common::with_stock_plugin(dir.path(), "emqx", &[], "ops:s3cret:admin:tenant=*\n").await;
        let b = srv.broker.clone();
        common::populate(&b, sessions);
        for i in 0..sessions {
            let s = b.registry.get("default", &format!("client-{i:06}")).unwrap();
            let opts = SubOptions::qos(QoS::AtLeastOnce);
            let mut st = s.state.lock();
            st.subscriptions.insert(format!("dev/{i}/cmd"), opts);
            s.set_subscription_count(st.subscriptions.len());
            drop(st);
            b.registry.note_subscriptions(&s);
        }
        let s = TcpStream::connect(srv.addrs.http.unwrap()).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut conn = BufReader::new(s);
        let mid = pages / 2;
        let cases = [
            (
                "GET /clients?clientid=nobody (the fixed cost)",
                "/clients?clientid=nobody".to_string(),
            ),
            ("GET /clients page 1", "/clients?limit=100&page=1".to_string()),
            (
                "GET /clients page 1 fields=clientid",
                "/clients?limit=100&page=1&fields=clientid".to_string(),
            ),
            (
                "GET /clients middle page",
                format!("/clients?limit=100&page={mid}"),
            ),
            (
                "GET /clients last page",
                format!("/clients?limit=100&page={pages}"),
            ),
            (
                "GET /clients?username=user7 (scan)",
                "/clients?username=user7&limit=100".to_string(),
            ),
            ("GET /subscriptions page 1", "/subscriptions?limit=100&page=1".to_string()),
            (
                "GET /subscriptions middle page",
                format!("/subscriptions?limit=100&page={mid}"),
            ),
            (
                "GET /subscriptions last page",
                format!("/subscriptions?limit=100&page={pages}"),
            ),
        ];
        let mut rows = Vec::new();
        for (name, path) in &cases {
            let t = time(&mut conn, path, n).await;
            rows.push((name.to_string(), ms(&t, 0.5), ms(&t, 0.99), t.len()));
        }
        // A whole cursor walk: every page timed once.
        let mut walk = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => "/clients_v2?limit=100".to_string(),
                Some(c) => format!("/clients_v2?limit=100&cursor={c}"),
            };
            let s = Instant::now();
            let (st, body) = get(&mut conn, &path).await;
            walk.push(s.elapsed());
            assert_eq!(st, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            cursor = v["meta"]["cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(walk.len(), pages, "the walk saw every page once");
        walk.sort();
        rows.push((
            "GET /clients_v2 every page by cursor".into(),
            ms(&walk, 0.5),
            ms(&walk, 0.99),
            walk.len(),
        ));
        let mut json = Vec::new();
        for (name, p50, p99, k) in &rows {
            println!(
                "admin_pages/{name} at {sessions} sessions: p50 {p50:.2} ms, p99 {p99:.2} ms ({k} requests){}",
                if *p99 > 10.0 { "  OVER the 10 ms goal" } else { "" }
            );
            json.push(serde_json::json!({"case": name, "sessions": sessions, "p50_ms": p50, "p99_ms": p99, "requests": k}));
        }
        if let Ok(p) = std::env::var("APIARY_BENCH_JSON") {
            std::fs::write(p, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        }
        srv.shutdown().await;
    });
}
