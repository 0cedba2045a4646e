//! The plugin runtime end to end: real components built by `cargo xtask plugins` (which
//! `cargo xtask test` runs first), loaded from a plugins directory, called over real HTTP,
//! hot-added, replaced and removed while MQTT clients stay connected, and misbehaving
//! (trap, endless loop, unbounded allocation, ungranted host call) without taking
//! anything else down.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::{v3, TestBroker, Tr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) fn built(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask plugins` (cargo xtask test does)",
        p.display()
    );
    p
}

/// Whether a plugin that needs another language's toolchain was built. Missing is a
/// failure, in CI (`CI=true`) always; elsewhere it may be skipped (with a message) only
/// when `APIARY_SKIP_MISSING_TOOLCHAINS=1` says so, as `cargo xtask test` then did too.
pub(crate) fn built_with(name: &str, tool: &str) -> bool {
    let wasm = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/plugins/{name}.wasm"));
    if wasm.exists() {
        return true;
    }
    common::skip_missing(&format!(
        "{} (it needs {tool}): run `cargo xtask plugins`",
        wasm.display()
    ));
    false
}

pub(crate) fn install(dir: &Path, name: &str, as_name: &str, toml: Option<&str>) {
    // Write to a temporary name and rename, as an operator's `cp` + `mv` would.
    let tmp = dir.join(format!(".{as_name}.tmp"));
    std::fs::copy(built(name), &tmp).unwrap();
    if let Some(t) = toml {
        std::fs::write(dir.join(format!("{as_name}.toml")), t).unwrap();
    }
    std::fs::rename(&tmp, dir.join(format!("{as_name}.wasm"))).unwrap();
}

async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ops:s3cret");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut resp))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

async fn broker_with(plugins: &Path) -> TestBroker {
    let keys = plugins.join("../keys");
    std::fs::write(&keys, "ops:s3cret:admin:tenant=*\n").unwrap();
    let dir = plugins.to_path_buf();
    TestBroker::start_with(move |c| {
        c.plugins_dir = dir;
        c.api_keys_file = Some(keys);
    })
    .await
}

const HELLO: &str = "mount = \"/hello\"\nroles = [\"http\"]\ncapabilities = [\"registry.read\", \"kv\", \"apikeys\"]\n[config]\ngreeting = \"Hi\"\n";
const FAULTY: &str = "mount = \"/faulty\"\nroles = [\"http\"]\nmemory_limit_mb = 16\ncall_timeout_ms = 200\n[config]\nversion = \"v1\"\n";

#[tokio::test]
async fn a_plugin_serves_http_with_registry_and_kv_access() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(&pdir, "hello", "hello", Some(HELLO));
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (_c, _) = v3::connect(v3::opts(&tb, "seen-by-plugin", Tr::Tcp)).await;

    assert_eq!(
        http(a, "GET", "/hello/hello/bob", b"").await,
        (200, "{\"message\":\"Hi, bob!\"}".into())
    );
    let (s, body) = http(a, "GET", "/hello/sessions?connected=true", b"").await;
    assert_eq!(s, 200);
    assert!(
        body.contains("seen-by-plugin") && body.contains("\"count\":1"),
        "{body}"
    );
    assert_eq!(http(a, "PUT", "/hello/kv/colour", b"blue").await.0, 204);
    assert_eq!(
        http(a, "GET", "/hello/kv/colour", b"").await,
        (200, "blue".into())
    );
    assert_eq!(http(a, "GET", "/hello/nope", b"").await.0, 404);
    assert_eq!(http(a, "GET", "/elsewhere", b"").await.0, 404);

    let (s, list) = http(a, "GET", "/plugins", b"").await;
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["name"], "hello");
    assert_eq!(v[0]["state"], "running");
    assert_eq!(v[0]["roles"][0], "http");
    assert!(v[0]["calls"].as_u64().unwrap() >= 5);
}

#[tokio::test]
async fn hot_add_replace_and_remove_keep_mqtt_connections() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (mut c, _) = v3::connect(v3::opts(&tb, "stays", Tr::Tcp)).await;
    c.c.subscribe("still/here", v3::QoS::AtLeastOnce)
        .await
        .unwrap();
    c.suback().await;
    let connected_at = tb
        .broker()
        .registry
        .snapshot("default", "stays", &tb.broker().config())
        .unwrap()
        .connected_at;

    // Add.
    install(
        &pdir,
        "faulty",
        "svc",
        Some(&FAULTY.replace("/faulty", "/svc")),
    );
    let mut ok = false;
    for _ in 0..100 {
        if http(a, "GET", "/svc/ok", b"").await == (200, "v1".into()) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "added plugin serves");

    // Replace (new version: another config and another component).
    install(
        &pdir,
        "hello",
        "svc",
        Some(&HELLO.replace("/hello", "/svc")),
    );
    let mut replaced = false;
    for _ in 0..100 {
        if http(a, "GET", "/svc/hello/x", b"").await.0 == 200 {
            replaced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(replaced, "replaced plugin serves the new version");

    // Remove.
    std::fs::remove_file(pdir.join("svc.wasm")).unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if http(a, "GET", "/svc/hello/x", b"").await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "removed plugin stops serving");

    // The MQTT client never noticed.
    b_publish(&tb, "still/here").await;
    assert_eq!(&c.publish().await.payload[..], b"ping");
    let snap = tb
        .broker()
        .registry
        .snapshot("default", "stays", &tb.broker().config())
        .unwrap();
    assert!(
        snap.connected && snap.connected_at == connected_at,
        "same connection throughout"
    );
}

async fn b_publish(tb: &TestBroker, topic: &str) {
    tb.broker()
        .publish_as_broker(
            "default",
            topic,
            bytes::Bytes::from_static(b"ping"),
            rmqtt_codec::types::QoS::AtLeastOnce,
            false,
        )
        .unwrap();
}

#[tokio::test]
async fn misbehaving_plugins_fail_only_their_own_call() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(&pdir, "faulty", "faulty", Some(FAULTY));
    install(&pdir, "hello", "hello", Some(HELLO));
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    for (path, status, expect) in [
        ("/faulty/trap", 500, "unreachable"),
        ("/faulty/loop", 504, "timed out"),
        ("/faulty/sleep", 504, "timed out"),
        ("/faulty/alloc", 500, "trapped"),
    ] {
        let (s, body) = http(a, "GET", path, b"").await;
        assert_eq!(s, status, "{path}: {body}");
        assert!(
            body.contains("PLUGIN_") && body.contains(expect),
            "{path}: {body}"
        );
        // The same plugin answers the next call, and so does every other.
        assert_eq!(http(a, "GET", "/faulty/ok", b"").await, (200, "v1".into()));
        assert_eq!(http(a, "GET", "/hello/hello/z", b"").await.0, 200);
    }
    let (s, body) = http(a, "GET", "/faulty/forbidden", b"").await;
    assert_eq!(
        s, 403,
        "a host call outside the grants returns permission-denied: {body}"
    );
    assert!(body.contains("not granted broker.publish"), "{body}");

    let (_, list) = http(a, "GET", "/plugins", b"").await;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let faulty = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "faulty")
        .unwrap();
    assert_eq!(faulty["errors"], 4, "{faulty}");

    // The same calls in /metrics, per plugin and role, errors by kind.
    let text = apiary::http::metrics_text(tb.broker());
    let value = |line: &str| common::metric(&tb, line);
    let faulty = "{plugin=\"faulty\",role=\"http\"";
    // Four failing, four fine and the forbidden one (a call that answered 403).
    assert_eq!(value(&format!("apiary_plugin_calls_total{faulty}}}")), 9);
    assert_eq!(
        value(&format!(
            "apiary_plugin_errors_total{faulty},kind=\"trap\"}}"
        )),
        2
    );
    assert_eq!(
        value(&format!(
            "apiary_plugin_errors_total{faulty},kind=\"timeout\"}}"
        )),
        2
    );
    assert_eq!(
        value(&format!("apiary_plugin_call_seconds_count{faulty}}}")),
        9
    );
    assert!(
        value(&format!(
            "apiary_plugin_call_seconds_bucket{faulty},le=\"0.1\"}}"
        )) >= 7
    );
    assert!(value("apiary_plugin_instances_created_total{plugin=\"faulty\"}") >= 5);
    assert!(value("apiary_plugin_memory_bytes{plugin=\"hello\"}") > 0);
    assert!(value("apiary_plugin_instances{plugin=\"hello\"}") >= 1);

    // The shipped Grafana dashboard asks only for families the broker exports.
    let dash = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/grafana/apiary-dashboard.json");
    let dash: serde_json::Value = serde_json::from_slice(&std::fs::read(dash).unwrap()).unwrap();
    let mut asked = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for name in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(n) = name.strip_prefix("apiary_") {
                    let family = format!("apiary_{}", n.strip_suffix("_bucket").unwrap_or(n));
                    assert!(
                        text.contains(&format!("# TYPE {family} ")),
                        "{family} in the dashboard is not exported"
                    );
                    asked += 1;
                }
            }
        }
    }
    assert!(asked > 20, "{asked}");

    // Repeated failures back off (503) instead of burning CPU.
    for _ in 0..5 {
        http(a, "GET", "/faulty/trap", b"").await;
    }
    let (s, body) = http(a, "GET", "/faulty/ok", b"").await;
    assert_eq!(s, 503, "{body}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(http(a, "GET", "/faulty/ok", b"").await, (200, "v1".into()));
}

#[tokio::test]
async fn broken_files_and_failed_reloads_leave_the_rest_serving() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("garbage.wasm"), b"\0asm but not really").unwrap();
    install(&pdir, "faulty", "faulty", Some(FAULTY));
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (_, list) = http(a, "GET", "/plugins", b"").await;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let g = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "garbage")
        .unwrap();
    assert_eq!(g["state"], "failed");
    assert!(
        g["last_error"].as_str().unwrap().contains("cannot load"),
        "{g}"
    );

    // A new version whose init fails: the old one keeps serving, the error is reported.
    std::fs::write(
        pdir.join("faulty.toml"),
        FAULTY.replace("version = \"v1\"", "fail_init = true"),
    )
    .unwrap();
    let (s, body) = http(a, "POST", "/plugins/faulty/reload", b"").await;
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("fail_init"), "{body}");
    assert_eq!(http(a, "GET", "/faulty/ok", b"").await, (200, "v1".into()));
    // A fixed config reloads.
    std::fs::write(pdir.join("faulty.toml"), FAULTY.replace("v1", "v2")).unwrap();
    assert_eq!(http(a, "POST", "/plugins/faulty/reload", b"").await.0, 200);
    assert_eq!(http(a, "GET", "/faulty/ok", b"").await, (200, "v2".into()));
    assert_eq!(http(a, "POST", "/plugins/nothing/reload", b"").await.0, 404);
}

#[tokio::test]
async fn a_plugin_can_have_a_listener_of_its_own() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free_port();
    install(
        &pdir,
        "hello",
        "hello",
        Some(&format!(
            "listen = \"127.0.0.1:{port}\"\nroles = [\"http\"]\ncapabilities = [\"kv\", \"apikeys\"]\n"
        )),
    );
    let tb = broker_with(&pdir).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        http(addr, "GET", "/hello/there", b"").await,
        (200, "{\"message\":\"Hello, there!\"}".into())
    );

    // Moving it to another address on reload: the new one serves, the old one stops.
    let port2 = free_port();
    std::fs::write(
        pdir.join("hello.toml"),
        format!(
            "listen = \"127.0.0.1:{port2}\"\nroles = [\"http\"]\ncapabilities = [\"apikeys\"]\n"
        ),
    )
    .unwrap();
    assert_eq!(
        http(tb.http_addr(), "POST", "/plugins/hello/reload", b"")
            .await
            .0,
        200
    );
    let addr2: std::net::SocketAddr = format!("127.0.0.1:{port2}").parse().unwrap();
    assert_eq!(http(addr2, "GET", "/hello/again", b"").await.0, 200);
    let mut closed = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(closed, "the old listener stopped");
}

#[tokio::test]
async fn events_plugins_receive_registry_events() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(
        &pdir,
        "recorder",
        "recorder",
        Some("mount = \"/rec\"\nroles = [\"http\", \"events\"]\ncapabilities = [\"kv\", \"events.messages\"]\n"),
    );
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (mut c, _) = v3::connect(v3::opts(&tb, "watched", Tr::Tcp)).await;
    c.c.subscribe("ev/t", v3::QoS::AtMostOnce).await.unwrap();
    c.suback().await;
    c.c.publish("ev/t", v3::QoS::AtMostOnce, false, "payload-1")
        .await
        .unwrap();
    c.publish().await;
    c.c.disconnect().await.unwrap();
    let want = [
        "connected:watched",
        "subscribed:watched:ev/t",
        "published:ev/t:payload-1",
        "disconnected:watched",
    ];
    let mut seen = String::new();
    for _ in 0..100 {
        seen = http(a, "GET", "/rec/seen", b"").await.1;
        if want.iter().all(|w| seen.contains(w)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v: Vec<String> = serde_json::from_str(&seen).unwrap();
    let pos = |w: &str| {
        v.iter()
            .position(|s| s == w)
            .unwrap_or_else(|| panic!("{w} missing from {v:?}"))
    };
    assert!(
        pos(want[0]) < pos(want[1]) && pos(want[1]) < pos(want[2]) && pos(want[2]) < pos(want[3]),
        "in order: {v:?}"
    );
}

/// A plugin written in JavaScript (plugins/testing/js-hello, componentize-js). Skipped,
/// with a message, only where the JavaScript toolchain (node) is absent.
#[tokio::test]
async fn a_javascript_plugin_serves_http_and_calls_the_host() {
    if !built_with("js-hello", "node") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(
        &pdir,
        "js-hello",
        "js-hello",
        Some("mount = \"/js\"\nroles = [\"http\"]\ncapabilities = [\"registry.read\"]\n[config]\ngreeting = \"Hey\"\n"),
    );
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (_c, _) = v3::connect(v3::opts(&tb, "js-sees-me", Tr::Tcp)).await;
    let (s, body) = http(a, "GET", "/js/hello/ada", b"").await;
    assert_eq!(
        (s, body.as_str()),
        (
            200,
            "{\"message\":\"Hey, ada!\",\"language\":\"javascript\"}"
        )
    );
    let (s, body) = http(a, "GET", "/js/sessions", b"").await;
    assert_eq!(s, 200);
    assert!(body.contains("js-sees-me"), "{body}");
    assert_eq!(http(a, "GET", "/js/other", b"").await.0, 404);
}

/// A plugin written in C (plugins/testing/c-hello, wit-bindgen c + clang). Skipped, with
/// a message, only where clang-22 is absent.
#[tokio::test]
async fn a_c_plugin_serves_http_and_calls_the_host() {
    if !built_with("c-hello", "clang-22") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(
        &pdir,
        "c-hello",
        "c-hello",
        Some("mount = \"/c\"\nroles = [\"http\"]\n[config]\ngreeting = \"Ahoy\"\n"),
    );
    let tb = broker_with(&pdir).await;
    let a = tb.http_addr();
    let (s, body) = http(a, "GET", "/c/hello/grace", b"").await;
    assert_eq!(
        (s, body.as_str()),
        (200, "{\"message\":\"Ahoy, grace!\",\"language\":\"c\"}")
    );
    let (s, body) = http(a, "GET", "/c/now", b"").await;
    assert_eq!(s, 200);
    let now: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ms = now["now_ms"].as_i64().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (real - ms).abs() < 60_000,
        "host clock reached the guest: {ms} vs {real}"
    );
    assert_eq!(http(a, "GET", "/c/other", b"").await.0, 404);
}

/// CONNECT at protocol `level` (4 or 5) with a username and password; returns the
/// CONNACK return (3.1.1) or reason (5) code.
async fn connack_code_at(tb: &TestBroker, level: u8, user: &str) -> u8 {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0xC2, 0, 30];
    if level == 5 {
        body.push(0); // no properties
    }
    for s in [
        format!("c{level}-{user}"),
        user.to_string(),
        "pw".to_string(),
    ] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut r = common::raw::Raw::connect(tb.tcp_addr()).await;
    r.send(&common::raw::packet(0x10, &body)).await;
    r.read_n(4).await[3]
}

pub(crate) async fn connack_code(tb: &TestBroker, user: &str) -> u8 {
    connack_code_at(tb, 4, user).await
}

#[tokio::test]
async fn auth_plugins_decide_connects_and_a_failing_one_denies() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    install(
        &pdir,
        "faulty",
        "gate",
        Some("roles = [\"auth\"]\n[config]\nversion = \"v1\"\n"),
    );
    let keys = pdir.join("../keys");
    std::fs::write(&keys, "ops:s3cret:admin:tenant=*\n").unwrap();
    let dir = pdir.clone();
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = dir;
        c.api_keys_file = Some(keys);
        c.auth.allow_anonymous = apiary::config::Anonymous::Never;
    })
    .await;
    assert_eq!(connack_code(&tb, "ok").await, 0, "the plugin allows ok");
    common::eventually("registered", || {
        tb.broker().registry.get("default", "c4-ok").is_some()
    })
    .await;
    let user_id = tb
        .broker()
        .registry
        .get("default", "c4-ok")
        .unwrap()
        .info
        .read()
        .user_id
        .clone();
    assert_eq!(user_id.as_deref(), Some("ok"));
    // A username no plugin accepts: refused as a wrong password would be (3.1.1 code 4),
    // so a refusal does not tell which usernames exist.
    assert_eq!(connack_code(&tb, "nobody").await, 4);
    // A panicking auth plugin refuses: auth never fails open. The client did nothing
    // wrong, so it is "server unavailable" (3.1.1 code 3), which clients retry.
    assert_eq!(connack_code(&tb, "trap").await, 3);
    assert!(common::metric(&tb, "apiary_auth_plugin_failures_total") >= 1);
    assert!(common::metric(&tb, "apiary_auth_allowed_total") >= 1);
    assert!(common::metric(&tb, "apiary_auth_denied_total") >= 2);
    // MQTT 5 gets 0x86 and 0x88.
    assert_eq!(connack_code_at(&tb, 5, "nobody").await, 0x86);
    assert_eq!(connack_code_at(&tb, 5, "trap").await, 0x88);
}
