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
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
        .arg("--config")
        .arg(&cfg)
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
    let mut listening = std::collections::HashMap::new();
    while listening.len() < 5 {
        let line = rx
            .recv_timeout(common::WAIT)
            .expect("a log line per listener");
        if line.contains("listening") {
            let l = line
                .split("listener=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            let addr = line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            listening.insert(l, addr);
        }
    }
    let tcp: std::net::SocketAddr = listening["tcp"].parse().unwrap();
    for l in ["tcp", "ws", "tls", "wss", "http"] {
        assert!(listening.contains_key(l), "{listening:?}");
    }

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

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
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
