//! EMQX clients API latency (issue 6): `GET /api/v5/clients?limit=100` through the stock
//! emqx plugin, over real HTTP (one keep-alive connection), with 100k sessions in the
//! registry; p50/p99/max per query. The target is a p99 under 10 ms. Full run: `cargo
//! bench -p apiary --bench emqx` (after `cargo xtask plugins`); under `cargo test` (no
//! `--bench` argument) a small smoke version runs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

async fn server(dir: &Path) -> apiary::Server {
    common::with_stock_plugin(dir, "emqx", &[], "ops:s3cret:admin\n").await
}

/// One GET on a keep-alive connection; returns the status.
async fn get(conn: &mut BufReader<TcpStream>, path: &str) -> u16 {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic b3BzOnMzY3JldA==\r\n\r\n");
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    common::read_answer(conn).await
}

async fn measure(addr: SocketAddr, path: &str, n: usize) -> Vec<Duration> {
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut conn = BufReader::new(s);
    for _ in 0..n.min(20) {
        assert_eq!(get(&mut conn, path).await, 200, "{path}");
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        assert_eq!(get(&mut conn, path).await, 200, "{path}");
        t.push(start.elapsed());
    }
    t.sort();
    t
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (sessions, n) = if full { (100_000, 2_000) } else { (1_000, 20) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let srv = server(dir.path()).await;
        common::populate(&srv.broker, sessions);
        let addr = srv.addrs.http.unwrap();
        for path in [
            "/api/v5/clients?limit=100",
            "/api/v5/clients?_page=500&_limit=100",
            "/api/v5/clients?username=user7&limit=100",
            "/api/v5/clients?conn_state=connected&proto_ver=5&like_clientid=client-09&limit=100",
        ] {
            let t = measure(addr, path, n).await;
            let pct = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
            println!(
                "emqx/{sessions} sessions GET {path}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({n} requests)",
                pct(0.50).as_secs_f64() * 1e3,
                pct(0.99).as_secs_f64() * 1e3,
                t[t.len() - 1].as_secs_f64() * 1e3,
            );
        }
    });
}
