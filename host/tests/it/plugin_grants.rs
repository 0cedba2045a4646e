//! What plugins may do and what reaches them, over real HTTP and MQTT: roles are
//! granted in a plugin's toml like capabilities, kv has a quota, the compiled-plugin
//! cache is authenticated, reading a plugin's files never reloads it, and nothing served
//! by default answers without credentials but /healthz.

use std::time::Duration;

use sha2::Digest;

use crate::common::{self, metric, v3, TestBroker, Tr};
use crate::plugins::{built, install};

const OPS: (&str, &str) = ("ops", "s3cret");
const HELLO: &str = "mount = \"/hello\"\nroles = [\"http\"]\ncapabilities = [\"registry.read\", \"kv\", \"apikeys\"]\n[config]\ngreeting = \"Hi\"\n";
const FAULTY: &str =
    "mount = \"/faulty\"\nroles = [\"http\"]\ncall_timeout_ms = 200\n[config]\nversion = \"v1\"\n";

async fn broker(pdir: &std::path::Path, f: impl FnOnce(&mut apiary::Config)) -> TestBroker {
    let keys = pdir.join("../keys");
    std::fs::write(&keys, "ops:s3cret:admin:tenant=*\n").unwrap();
    let dir = pdir.to_path_buf();
    TestBroker::start_with(move |c| {
        c.plugins_dir = dir;
        c.api_keys_file = Some(keys);
        f(c);
    })
    .await
}

fn plugins_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    (root, pdir)
}

#[tokio::test]
async fn reading_or_touching_a_plugins_files_never_reloads_it() {
    let (_root, pdir) = plugins_dir();
    install(&pdir, "hello", "hello", Some(HELLO));
    install(
        &pdir,
        "faulty",
        "control",
        Some(&FAULTY.replace("/faulty", "/control")),
    );
    let tb = broker(&pdir, |_| {}).await;
    let loads = metric(&tb, "apiary_plugin_loads_total");
    // What `cat` does, and what a reload of the broker's own does.
    for _ in 0..3 {
        std::fs::read(pdir.join("hello.wasm")).unwrap();
        std::fs::read_to_string(pdir.join("hello.toml")).unwrap();
    }
    // What `touch` does.
    std::fs::File::options()
        .write(true)
        .open(pdir.join("hello.toml"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    // A real change to another plugin, after those: once it is served, the watcher has
    // seen everything before it.
    std::fs::write(
        pdir.join("control.toml"),
        FAULTY.replace("/faulty", "/control").replace("v1", "v2"),
    )
    .unwrap();
    let a = tb.http_addr();
    let mut served = false;
    for _ in 0..100 {
        if common::http(a, "GET", "/control/ok", None, b"").await.1 == "v2" {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the changed plugin reloaded");
    // Past the watcher's debounce: still only that one reload.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&tb, "apiary_plugin_loads_total"), loads + 1);
}

#[tokio::test]
async fn nothing_served_by_default_answers_without_credentials() {
    // The stock set as `cargo xtask run` serves it, with no API key configured.
    let (_root, pdir) = plugins_dir();
    for name in ["auth-file", "emqx"] {
        let stock = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../plugins/{name}/{name}.toml"));
        install(
            &pdir,
            name,
            name,
            Some(&std::fs::read_to_string(stock).unwrap()),
        );
    }
    let dir = pdir.clone();
    let tb = TestBroker::start_with(move |c| c.plugins_dir = dir).await;
    let a = tb.http_addr();
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/plugins"),
        ("POST", "/plugins/emqx/reload"),
        ("GET", "/api/v5/clients"),
        ("GET", "/api/v5/subscriptions"),
        ("POST", "/api/v5/publish"),
        ("GET", "/api/v5/openapi.json"),
    ] {
        let (st, body) = common::http(a, method, path, None, b"").await;
        assert_eq!(st, 401, "{method} {path}: {body}");
    }
    assert_eq!(common::http(a, "GET", "/healthz", None, b"").await.0, 200);
    // The first start made an admin key, readable by the broker's user only, and it
    // opens the API.
    let file = tb.dir.path().join("data/api-keys.txt");
    let text = std::fs::read_to_string(&file).unwrap();
    let line = text.lines().find(|l| !l.starts_with('#')).unwrap();
    let mut parts = line.splitn(3, ':');
    let (k, s) = (parts.next().unwrap(), parts.next().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        common::http(a, "GET", "/api/v5/clients", Some((k, s)), b"")
            .await
            .0,
        200
    );
    assert_eq!(
        common::http(a, "GET", "/metrics", Some((k, s)), b"")
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn the_hello_template_checks_api_keys_and_keeps_to_its_kv_quota() {
    let (_root, pdir) = plugins_dir();
    install(
        &pdir,
        "hello",
        "hello",
        Some(&format!("{HELLO}\n").replace("[config]", "kv_max_keys = 2\n[config]")),
    );
    let tb = broker(&pdir, |_| {}).await;
    let a = tb.http_addr();
    assert_eq!(
        common::http(a, "GET", "/hello/hello/x", None, b"").await.0,
        401
    );
    assert_eq!(
        common::http(a, "GET", "/hello/hello/x", Some(("ops", "nope")), b"")
            .await
            .0,
        401
    );
    assert_eq!(
        common::http(a, "GET", "/hello/hello/x", Some(OPS), b"")
            .await
            .0,
        200
    );
    for k in ["k1", "k2"] {
        let path = format!("/hello/kv/{k}");
        assert_eq!(common::http(a, "PUT", &path, Some(OPS), b"v").await.0, 204);
    }
    let (st, body) = common::http(a, "PUT", "/hello/kv/k3", Some(OPS), b"v").await;
    assert_eq!(st, 507, "{body}");
    assert!(body.contains("kv_max_keys"), "{body}");
    assert_eq!(
        common::http(a, "PUT", "/hello/kv/k1", Some(OPS), b"replaced")
            .await
            .0,
        204,
        "replacing a key is within the quota"
    );
}

#[tokio::test]
async fn roles_are_grants_not_just_exports() {
    let (_root, pdir) = plugins_dir();
    // faulty exports http and auth; its toml grants http only: it is no auth plugin.
    install(&pdir, "faulty", "faulty", Some(FAULTY));
    let tb = broker(&pdir, |c| {
        c.auth.allow_anonymous = apiary::config::Anonymous::Never;
    })
    .await;
    // The fixture accepts "ok"; ungranted, it decides nothing: not authorized.
    assert_eq!(crate::plugins::connack_code(&tb, "ok").await, 5);
    let (_, list) = common::http(tb.http_addr(), "GET", "/plugins", Some(OPS), b"").await;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(v[0]["roles"], serde_json::json!(["http"]), "{v}");

    // A toml granting no role, or a role the component does not export, does not load,
    // and says what to write.
    let mgr = tb.broker().plugins().unwrap();
    install(&pdir, "hello", "hello", Some("mount = \"/hello\"\n"));
    let err = mgr.load("hello").await.err().unwrap().to_string();
    assert!(err.contains("roles = [\"http\"]"), "{err}");
    std::fs::write(pdir.join("hello.toml"), "roles = [\"auth\"]\n").unwrap();
    let err = mgr.load("hello").await.err().unwrap().to_string();
    assert!(err.contains("auth role"), "{err}");
}

#[tokio::test]
async fn message_payloads_reach_events_plugins_only_with_their_grant() {
    let (_root, pdir) = plugins_dir();
    let toml = |mount: &str, caps: &str| {
        format!("mount = \"/{mount}\"\nroles = [\"http\", \"events\"]\ncapabilities = [{caps}]\n")
    };
    install(&pdir, "recorder", "plain", Some(&toml("plain", "\"kv\"")));
    install(
        &pdir,
        "recorder",
        "granted",
        Some(&toml("granted", "\"kv\", \"events.messages\"")),
    );
    let tb = broker(&pdir, |_| {}).await;
    let (mut c, _) = v3::connect(v3::opts(&tb, "watched", Tr::Tcp)).await;
    c.c.subscribe("ev/t", v3::QoS::AtMostOnce).await.unwrap();
    c.suback().await;
    c.c.publish("ev/t", v3::QoS::AtMostOnce, false, "secret-payload")
        .await
        .unwrap();
    c.publish().await;
    c.c.disconnect().await.unwrap();
    let seen = |mount: &'static str| {
        let a = tb.http_addr();
        async move {
            let mut seen = String::new();
            for _ in 0..100 {
                seen = common::http(a, "GET", &format!("/{mount}/seen"), None, b"")
                    .await
                    .1;
                if seen.contains("disconnected:watched") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        }
    };
    let granted = seen("granted").await;
    assert!(
        granted.contains("published:ev/t:secret-payload"),
        "{granted}"
    );
    let plain = seen("plain").await;
    assert!(plain.contains("subscribed:watched:ev/t"), "{plain}");
    assert!(
        !plain.contains("published:"),
        "no payloads without events.messages: {plain}"
    );
}

fn sha_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[tokio::test]
async fn a_tampered_compiled_plugin_cache_entry_is_never_run() {
    let (root, pdir) = plugins_dir();
    install(&pdir, "hello", "hello", Some(HELLO));
    install(&pdir, "faulty", "faulty", Some(FAULTY));
    let cache = root.path().join("cache");
    let c2 = cache.clone();
    let tb = broker(&pdir, move |c| {
        c.plugin_cache_dir = Some(c2);
        c.plugin_cache_key_file = None;
    })
    .await;
    let entry = |name: &str| {
        let hash = sha_hex(&std::fs::read(built(name)).unwrap());
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&hash))
            .unwrap_or_else(|| panic!("cache entry of {name}"))
    };
    // Whoever can write the cache swaps hello's compiled code for faulty's (a valid
    // entry, with a valid MAC, of another name).
    std::fs::copy(entry("faulty"), entry("hello")).unwrap();
    let tb = tb
        .restart(|c| {
            c.plugins_dir = pdir.clone();
            c.api_keys_file = Some(pdir.join("../keys"));
            c.plugin_cache_dir = Some(cache.clone());
            c.plugin_cache_key_file = None;
        })
        .await;
    let (st, body) =
        common::http(tb.http_addr(), "GET", "/hello/hello/there", Some(OPS), b"").await;
    assert_eq!(
        (st, body.as_str()),
        (200, "{\"message\":\"Hi, there!\"}"),
        "hello runs hello's code"
    );
    assert!(metric(&tb, "apiary_plugin_cache_rejected_total") >= 1);
    // The key that authenticates entries is the broker's alone.
    use std::os::unix::fs::PermissionsExt;
    let key = tb.dir.path().join("data/plugin-cache.key");
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tls_key = tb.dir.path().join("data/tls/server.key");
    assert_eq!(
        std::fs::metadata(tls_key).unwrap().permissions().mode() & 0o777,
        0o600,
        "the generated TLS key too"
    );
}
