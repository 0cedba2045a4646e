//! Plugin runtime costs (issue 4): host→guest call overhead of an `http` and an `auth`
//! call with a pooled instance, the same with a fresh instance per call (instantiate +
//! init), and the time to reload a plugin (criterion). Run: `cargo bench -p apiary --bench
//! plugins` after `cargo xtask plugins`; under `cargo test` each runs once.

use std::path::Path;
use std::sync::Arc;

use apiary::apikeys::ApiKeyStore;
use apiary::plugins::bindings::exports::apiary::plugin::{auth, http};
use apiary::plugins::PluginManager;
use apiary::{Broker, Config};
use criterion::{criterion_group, criterion_main, Criterion};

fn req() -> http::Request {
    http::Request {
        method: "GET".into(),
        path: "/ok".into(),
        query: String::new(),
        target: "/ok".into(),
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
        format!(
            "roles = [\"http\", \"auth\"]\nmax_instances = {}\n",
            if pooled { 4 } else { 0 }
        ),
    )
    .unwrap();
    let b = Broker::new(Config::embedded(), ApiKeyStore::default());
    let m = PluginManager::new(&p, &dir.join("cache"), [7; 32], b).unwrap();
    m.load_all().await;
    m
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("plugins");
    for pooled in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let m = rt.block_on(manager(dir.path(), pooled));
        let p = m.get("faulty").expect("loaded");
        let engine = m.runtime().engine().clone();
        let mode = if pooled { "pooled" } else { "fresh_instance" };
        g.bench_function(format!("http_call/{mode}"), |b| {
            b.to_async(&rt).iter(|| async {
                let r = p.handle_http(&engine, req(), None).await.unwrap();
                assert_eq!(r.status, 200);
            })
        });
        g.bench_function(format!("auth_call/{mode}"), |b| {
            b.to_async(&rt).iter(|| async {
                let d = p.authenticate(&engine, connect()).await.unwrap();
                assert!(matches!(d, auth::ConnectDecision::Allow(_)));
            })
        });
        if pooled {
            g.sample_size(20);
            g.bench_function("reload/compile_cache_warm", |b| {
                b.to_async(&rt)
                    .iter(|| async { m.load("faulty").await.unwrap() })
            });
        }
        drop(p);
        drop(m);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
