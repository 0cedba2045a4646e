//! Plugin runtime costs (issue 4): host→guest call overhead of an `http` and an `auth`
//! call with a pooled instance, the same with a fresh instance per call (instantiate +
//! init), and the time to reload a plugin. Full run: `cargo bench -p apiary --bench
//! plugins` (after `cargo xtask plugins`); under `cargo test` it runs a smoke version.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use apiary::apikeys::ApiKeyStore;
use apiary::plugins::bindings::exports::apiary::plugin::{auth, http};
use apiary::plugins::PluginManager;
use apiary::{Broker, Config};

fn req() -> http::Request {
    http::Request {
        method: "GET".into(),
        path: "/ok".into(),
        query: String::new(),
        headers: vec![("host".into(), "x".into())],
        body: vec![0u8; 64],
        peer: None,
    }
}

fn connect() -> auth::ConnectRequest {
    auth::ConnectRequest {
        client_id: "c".into(),
        username: Some("ok".into()),
        password: Some(b"pw".to_vec()),
        peer_ip: "127.0.0.1".into(),
        peer_port: 5000,
        proto_name: "MQTT".into(),
        proto_ver: 5,
        listener: "tcp:default".into(),
        cert_subject: None,
    }
}

async fn manager(dir: &Path, pooled: bool) -> Arc<PluginManager> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/faulty.wasm");
    assert!(built.exists(), "run `cargo xtask plugins` first");
    let p = dir.join("plugins");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::copy(&built, p.join("faulty.wasm")).unwrap();
    std::fs::write(
        p.join("faulty.toml"),
        format!("max_instances = {}\n", if pooled { 4 } else { 0 }),
    )
    .unwrap();
    let b = Broker::new(Config::embedded(), ApiKeyStore::default());
    let m = PluginManager::new(&p, &dir.join("cache"), b).unwrap();
    m.load_all().await;
    m
}

async fn per_call<F, Fut>(n: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let t = Instant::now();
    for _ in 0..n {
        f().await;
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20_000 } else { 200 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for pooled in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let m = manager(dir.path(), pooled).await;
            let p = m.get("faulty").expect("loaded");
            let engine = m.runtime().engine().clone();
            let mode = if pooled {
                "pooled instance"
            } else {
                "fresh instance per call"
            };
            let us = per_call(n, || {
                let (p, e) = (p.clone(), engine.clone());
                async move {
                    let r = p.handle_http(&e, req()).await.unwrap();
                    assert_eq!(r.status, 200);
                }
            })
            .await;
            println!("plugins/http_call ({mode}): {us:.1} µs/call");
            let us = per_call(n, || {
                let (p, e) = (p.clone(), engine.clone());
                async move {
                    let d = p.authenticate(&e, connect()).await.unwrap();
                    assert!(matches!(d, auth::ConnectDecision::Allow(_)));
                }
            })
            .await;
            println!("plugins/auth_call ({mode}): {us:.1} µs/call");
            if pooled {
                let reloads = if full { 50 } else { 3 };
                let t = Instant::now();
                for _ in 0..reloads {
                    m.load("faulty").await.unwrap();
                }
                let ms = t.elapsed().as_secs_f64() * 1e3 / reloads as f64;
                println!("plugins/reload (compile cache warm, instantiate + init): {ms:.2} ms");
            }
        }
    });
}
