//! The `apiary` binary as an operator runs it: config file, one log line per listener,
//! real clients, SIGTERM for a graceful stop, and a clear error for a bad config.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("apiary.toml");
    let data = dir.join("data");
    std::fs::write(
        &p,
        format!(
            "data_dir = {data:?}\nsys_interval_secs = 1\n{extra}\n[listeners]\ntcp = \"127.0.0.1:0\"\nws = \"127.0.0.1:0\"\ntls = \"127.0.0.1:0\"\nwss = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[auth]\nallow_anonymous = true\n"
        ),
    )
    .unwrap();
    p
}

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let (child, listening, _) = spawn(&cfg, &["tcp", "ws", "tls", "wss", "http"]);
    let tcp: std::net::SocketAddr = listening["tcp"].parse().unwrap();

    let mut o = rumqttc::MqttOptions::new("proc", "127.0.0.1", tcp.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = rumqttc::AsyncClient::new(o, 10);
    c.subscribe("$SYS/broker/uptime", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let got_sys = tokio::time::timeout(common::WAIT, async {
        loop {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) = el.poll().await.unwrap()
            {
                return p.topic;
            }
        }
    })
    .await
    .expect("$SYS publication within the interval");
    assert_eq!(got_sys, "$SYS/broker/uptime");

    // Stops with success on SIGTERM.
    stop(child);
    // The client was told (v3: the socket closed); its next poll fails.
    let r = tokio::time::timeout(common::WAIT, async {
        loop {
            if el.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(r.is_ok());
}

#[test]
fn unknown_config_keys_are_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "allow_anonymus = true");
    let out = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("allow_anonymus"), "{err}");
}

/// Starts the binary with `cfg`; returns it, the addresses it logged per listener, and
/// every log line seen until they were all there.
pub(crate) fn spawn(
    cfg: &std::path::Path,
    want: &[&str],
) -> (Proc, std::collections::HashMap<String, String>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addrs = std::collections::HashMap::new();
    let mut lines = Vec::new();
    while want.iter().any(|w| !addrs.contains_key(*w)) {
        let line = rx.recv_timeout(common::WAIT).expect("log lines");
        if line.contains("listening") {
            let field = |name: &str| {
                line.split(&format!("{name}=")).nth(1).map(|r| {
                    r.trim_start_matches('"')
                        .split(['"', ' '])
                        .next()
                        .unwrap()
                        .to_string()
                })
            };
            if let (Some(l), Some(a)) = (field("listener"), field("addr")) {
                addrs.insert(l, a);
            }
        }
        lines.push(line);
    }
    (Proc(child), addrs, lines)
}

/// A spawned `apiary`, killed when dropped still running: a failed test leaves no
/// node behind (one would hold the test's output open and hang whoever reads it).
pub(crate) struct Proc(std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub(crate) fn stop(mut child: Proc) {
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a new user gets from the defaults: anonymous clients accepted from this machine,
/// an admin API key made once (mode 0600, secret logged once) that opens the EMQX API.
#[tokio::test]
async fn a_first_start_serves_local_clients_and_makes_an_admin_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let stock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/emqx/emqx.toml");
    std::fs::copy(stock, plugins.join("emqx.toml")).unwrap();
    std::fs::copy(crate::plugins::built("emqx"), plugins.join("emqx.wasm")).unwrap();
    let cfg = dir.path().join("apiary.toml");
    // The shipped defaults but for the addresses: no [auth] table, no api_keys_file.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nplugins_dir = {:?}\nsys_interval_secs = 0\n[listeners]\ntcp = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("data"),
            plugins
        ),
    )
    .unwrap();
    let (child, addrs, lines) = spawn(&cfg, &["tcp", "http"]);
    let created = lines
        .iter()
        .find(|l| l.contains("created an admin API key"))
        .expect("the first start says it made a key");
    let field = |name: &str| {
        created
            .split(&format!(" {name}="))
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let (key, secret) = (field("key"), field("secret"));
    let file = dir.path().join("data/api-keys.txt");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains(&format!("{key}:{secret}:admin:tenant=*")));

    let tcp: std::net::SocketAddr = addrs["tcp"].parse().unwrap();
    let mut o = rumqttc::MqttOptions::new("local-anon", "127.0.0.1", tcp.port());
    o.set_keep_alive(Duration::from_secs(30));
    let (_c, mut el) = rumqttc::AsyncClient::new(o, 10);
    let ack = tokio::time::timeout(common::WAIT, el.poll())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(&ack, rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) if a.code == rumqttc::ConnectReturnCode::Success),
        "anonymous from loopback is accepted: {ack:?}"
    );
    let poller = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let http: std::net::SocketAddr = addrs["http"].parse().unwrap();
    let (st, body) = common::http(http, "GET", "/api/v5/clients", Some((&key, &secret)), b"").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains("local-anon"), "{body}");
    assert_eq!(
        common::http(http, "GET", "/api/v5/clients", None, b"")
            .await
            .0,
        401
    );
    poller.abort();
    stop(child);

    // The next start reads the key and never logs the secret again.
    let (child, _, lines) = spawn(&cfg, &["tcp", "http"]);
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(&secret) && !l.contains("created an admin")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("loaded API keys")),
        "{lines:?}"
    );
    stop(child);
}

#[tokio::test]
async fn sighup_reloads_the_config_file_without_dropping_connections() {
    use crate::common::raw;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let (child, listening, _) = spawn(&cfg, &["tcp", "http"]);
    let tcp: std::net::SocketAddr = listening["tcp"].parse().unwrap();
    // v5 CONNECT without credentials: the CONNACK's reason code.
    let anonymous = |id: &'static str| async move {
        let mut r = raw::Raw::connect(tcp).await;
        r.send(&raw::connect(5, id, true, 30)).await;
        let head = r.read_n(2).await;
        let rest = r.read_n(usize::from(head[1])).await;
        (rest[1], r)
    };
    let (rc, mut kept) = anonymous("kept").await;
    assert_eq!(rc, 0);
    // The operator turns anonymous access off and sends SIGHUP.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("allow_anonymous = true", "allow_anonymous = false"),
    )
    .unwrap();
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if anonymous("late").await.0 == 0x87 {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "after SIGHUP anonymous CONNECTs are refused");
    // The connection made before is still served (PINGREQ, PINGRESP).
    kept.send(&[0xC0, 0x00]).await;
    assert_eq!(kept.read_n(2).await, [0xD0, 0x00]);
    stop(child);
}
