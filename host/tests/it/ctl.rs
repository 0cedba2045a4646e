//! `apiary ctl`, the real binary, against a running broker with the stock EMQX clients
//! API: tables and JSON, the exit codes a script relies on, keys it creates acting at once.

use crate::common::{self, stock_toml, v3, with_plugins, TestBroker, Tr};

/// Runs `apiary ctl ARGS` against `tb` as `key`; (exit code, stdout, stderr).
async fn ctl(tb: &TestBroker, key: (&str, &str), args: &[&str]) -> (i32, String, String) {
    let url = format!("http://{}", tb.http_addr());
    ctl_at(&url, key, args).await
}

async fn ctl_at(url: &str, key: (&str, &str), args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("ctl")
        .args(["--url", url])
        .args(["--data-dir", "/nonexistent"])
        .env("HOME", home.path())
        .env("APIARY_KEY", key.0)
        .env("APIARY_SECRET", key.1)
        .args(args)
        .output()
        .await
        .expect("apiary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const ROOT: (&str, &str) = ("root", "rootsecret");

#[tokio::test]
async fn ctl_lists_kicks_publishes_and_manages_keys_with_meaningful_exit_codes() {
    let plugins = [("emqx", "emqx", stock_toml("emqx").leak() as &str)];
    let (tb, _root) = with_plugins(&plugins, "root:rootsecret:admin:tenant=*\n", |_| {}).await;
    let (mut c, _) = v3::connect(v3::opts(&tb, "ctl-dev-1", Tr::Tcp)).await;
    c.c.subscribe("ctl/in", v3::QoS::AtLeastOnce).await.unwrap();
    c.suback().await;

    let (code, out, err) = ctl(&tb, ROOT, &["clients", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("CLIENT ID") && out.contains("ctl-dev-1"),
        "{out}"
    );
    let (code, out, _) = ctl(
        &tb,
        ROOT,
        &["--json", "subscriptions", "--clientid", "ctl-dev-1"],
    )
    .await;
    assert_eq!(code, 0);
    let subs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(subs["data"][0]["topic"], "ctl/in", "{out}");

    // Publish reaches the subscriber; a retained one is listed and deleted.
    let (code, _, err) = ctl(&tb, ROOT, &["publish", "ctl/in", "hello", "--qos", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(&c.publish().await.payload[..], b"hello");
    ctl(&tb, ROOT, &["publish", "ctl/kept", "v", "--retain"]).await;
    let (code, out, _) = ctl(&tb, ROOT, &["retained", "list", "--topic", "ctl/#"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("ctl/kept"), "{out}");
    assert_eq!(
        ctl(&tb, ROOT, &["retained", "delete", "ctl/kept"]).await.0,
        0
    );
    assert_eq!(
        ctl(&tb, ROOT, &["retained", "delete", "ctl/kept"]).await.0,
        5
    );
    assert!(tb.broker().retained.matching("default", "ctl/#").is_empty());

    // Plugins, with their log lines.
    let (code, out, _) = ctl(&tb, ROOT, &["plugins", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("emqx") && out.contains("running"), "{out}");
    let (code, out, _) = ctl(&tb, ROOT, &["plugins", "logs", "emqx"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("loaded version"), "{out}");
    assert_eq!(ctl(&tb, ROOT, &["plugins", "logs", "nothing"]).await.0, 5);

    // A viewer key made by ctl works at once; it may read but not manage keys.
    let (code, out, err) = ctl(
        &tb,
        ROOT,
        &["--json", "keys", "create", "ci", "--role", "viewer"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let k: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ci = (
        k["api_key"].as_str().unwrap(),
        k["api_secret"].as_str().unwrap(),
    );
    assert_eq!(ctl(&tb, ci, &["clients", "show", "ctl-dev-1"]).await.0, 0);
    assert_eq!(ctl(&tb, ci, &["keys", "list"]).await.0, 4);
    assert_eq!(
        ctl(&tb, ROOT, &["keys", "update", "ci", "--disable"])
            .await
            .0,
        0
    );
    assert_eq!(ctl(&tb, ci, &["clients", "list"]).await.0, 4);

    // Kick; then exit codes: not found 5, bad secret 4, unreachable 3, usage 2.
    let (code, out, _) = ctl(&tb, ROOT, &["clients", "kick", "ctl-dev-1"]).await;
    assert_eq!(code, 0, "{out}");
    c.closed().await;
    common::eventually("the kicked session is gone", || {
        tb.broker().registry.get("default", "ctl-dev-1").is_none()
    })
    .await;
    assert_eq!(ctl(&tb, ROOT, &["clients", "show", "ctl-dev-1"]).await.0, 5);
    let (code, _, err) = ctl(&tb, ("root", "wrong"), &["status"]).await;
    assert_eq!(code, 4, "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (code, _, err) = ctl_at(&url, ROOT, &["status"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach"), "{err}");
    assert_eq!(ctl(&tb, ROOT, &["keys", "update", "ci"]).await.0, 2);
    let (code, out, _) = ctl(&tb, ROOT, &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("health   ok") && out.contains("emqx"), "{out}");

    // Reload: without a configuration source the broker says so (exit 1); with one, the
    // report of what changed.
    assert_eq!(ctl(&tb, ROOT, &["reload"]).await.0, 1);
    let mut next = (**tb.broker().config()).clone();
    next.session.max_queued_messages = 11;
    next.store.batch_interval_ms += 1;
    tb.broker()
        .set_config_source(Box::new(move || Ok(next.clone())));
    let (code, out, err) = ctl(&tb, ROOT, &["reload"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("applied:       session.max_queued_messages"),
        "{out}"
    );
    assert!(
        out.contains("needs restart: store.batch_interval_ms"),
        "{out}"
    );
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_apiary"))
            .args(["completions", shell])
            .output()
            .await
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ctl") && text.contains("rotate"), "{shell}");
    }
}
