//! What authentication and authorisation cost (issues 5 and 10), over real sockets against
//! a running broker: CONNECT-to-CONNACK with no auth plugin (anonymous) versus the stock
//! auth-file plugin (argon2id with its default cost, checked natively by the host, and a
//! plain password to show the plugin call alone); a refused CONNECT for a known user with a
//! wrong password versus an unknown user (which must cost the same); one native argon2id
//! check on its own; and QoS 1 publish throughput with ACL checking on every publish
//! (decision cache on, and off so every publish calls the plugin) versus no ACL.
//! Run: `cargo bench -p apiary --bench auth` after `cargo xtask plugins`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use apiary::{Config, Server};
use argon2::password_hash::{PasswordHasher, SaltString};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::{mqtt_packet as packet, mqtt_str as string};

/// Publishes per iteration of the throughput benchmarks.
const BATCH: usize = 1000;
/// Topics the publisher rotates over (a device's handful of topics).
const TOPICS: usize = 10;

fn auth_file_toml() -> String {
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"alicepw", &salt)
        .unwrap();
    format!(
        r##"tenants = ["*"]
roles = ["auth"]
capabilities = ["passwords"]
[config]
[[config.users]]
username = "alice"
password_hash = "{hash}"
[[config.users]]
username = "plain"
password = "plainpw"
[[config.rules]]
permission = "deny"
topic = "admin/#"
[[config.rules]]
permission = "allow"
topic = "devices/%c/#"
[[config.rules]]
permission = "allow"
action = "subscribe"
topic = "devices/#"
[[config.rules]]
permission = "deny"
topic = "#"
"##
    )
}

async fn server(dir: &Path, with_auth: bool, cache: usize) -> Server {
    let mut cfg = Config::ephemeral(dir.join("data"));
    cfg.listeners.ws = None;
    cfg.listeners.tls = None;
    cfg.listeners.wss = None;
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    cfg.plugin_cache_dir = Some(target.join("test-plugin-cache"));
    cfg.plugin_cache_key_file = Some(target.join("test-plugin-cache.key"));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    if with_auth {
        let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/auth-file.wasm");
        assert!(built.exists(), "run `cargo xtask plugins` first");
        std::fs::copy(&built, plugins.join("auth-file.wasm")).unwrap();
        std::fs::write(plugins.join("auth-file.toml"), auth_file_toml()).unwrap();
        cfg.auth.allow_anonymous = apiary::config::Anonymous::Never;
    }
    cfg.auth.acl_cache_max = cache;
    cfg.plugins_dir = plugins;
    apiary::start(cfg).await.expect("broker starts")
}

fn connect_packet(id: &str, creds: Option<(&str, &str)>) -> Vec<u8> {
    let flags = 0x02 | if creds.is_some() { 0xC0 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    string(id, &mut body);
    if let Some((u, p)) = creds {
        string(u, &mut body);
        string(p, &mut body);
    }
    packet(0x10, &body)
}

/// Connects and waits for CONNACK; panics unless its return code is `want`.
async fn connect_as(
    addr: SocketAddr,
    id: &str,
    creds: Option<(&str, &str)>,
    want: u8,
) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&connect_packet(id, creds)).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack[3], want, "CONNACK return code");
    s
}

/// Connects and waits for CONNACK; panics unless accepted.
async fn connect(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>) -> TcpStream {
    connect_as(addr, id, creds, 0).await
}

/// BATCH QoS 1 publishes over TOPICS topics the client may publish to, pids 1..=BATCH.
fn publishes(client_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..BATCH {
        let mut body = Vec::new();
        string(&format!("devices/{client_id}/m{}", i % TOPICS), &mut body);
        body.extend_from_slice(&(i as u16 + 1).to_be_bytes());
        body.extend_from_slice(&[0u8; 32]);
        out.extend(packet(0x32, &body));
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = rt.block_on(server(&dir.path().join("open"), false, 256));
    let guarded = rt.block_on(server(&dir.path().join("auth"), true, 256));
    let uncached = rt.block_on(server(&dir.path().join("nocache"), true, 0));
    let addr = |s: &Server| s.addrs.tcp.unwrap();

    let mut g = c.benchmark_group("connect");
    g.measurement_time(Duration::from_secs(5));
    for (name, srv, creds, want) in [
        ("no_plugin", &open, None, 0),
        ("auth_file_plain", &guarded, Some(("plain", "plainpw")), 0),
        (
            "auth_file_argon2id",
            &guarded,
            Some(("alice", "alicepw")),
            0,
        ),
        (
            "refused_wrong_password",
            &guarded,
            Some(("alice", "wrong")),
            4,
        ),
        (
            "refused_unknown_user",
            &guarded,
            Some(("mallory", "wrong")),
            4,
        ),
    ] {
        let a = addr(srv);
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async move {
                drop(connect_as(a, "bench-connect", creds, want).await);
            })
        });
    }
    g.finish();

    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"alicepw", &salt)
        .unwrap()
        .to_string();
    c.bench_function("argon2id_check_native", |b| {
        b.iter(|| apiary::passwords::verify_phc(&hash, b"alicepw").unwrap())
    });
    // An unknown API key id must cost what a wrong secret costs.
    let keys = apiary::apikeys::ApiKeyStore::default();
    keys.add("ops", "s3cret", vec![apiary::apikeys::Right::Admin], "*");
    let mut g = c.benchmark_group("api_key_verify");
    g.bench_function("wrong_secret", |b| b.iter(|| keys.verify("ops", "guess")));
    g.bench_function("unknown_key", |b| b.iter(|| keys.verify("nobody", "guess")));
    g.finish();

    let mut g = c.benchmark_group("publish_qos1");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, srv, creds) in [
        ("acl_off", &open, None),
        ("acl_on_cached", &guarded, Some(("plain", "plainpw"))),
        ("acl_on_uncached", &uncached, Some(("plain", "plainpw"))),
    ] {
        let a = addr(srv);
        let mut s = rt.block_on(connect(a, "pub1", creds));
        let burst = publishes("pub1");
        let mut acks = vec![0u8; 4 * BATCH];
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    s.write_all(&burst).await.unwrap();
                    s.read_exact(&mut acks).await.unwrap();
                })
            })
        });
        assert_eq!(acks[0], 0x40, "PUBACKs came back");
    }
    g.finish();
    drop((open, guarded, uncached));
}

criterion_group!(benches, bench);
criterion_main!(benches);
