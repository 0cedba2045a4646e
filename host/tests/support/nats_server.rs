//! A NATS server (Debian's `nats-server`) on a port it picks (`-p -1`, read back from
//! its ports file), stopped when dropped: one starter for the cluster tests and the
//! cluster benchmark, each including this file with `#[path]`.

use std::time::Duration;

/// Where Debian's package puts it (`cargo xtask test` installs it).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running NATS server; `dir` holds its ports file (and, with JetStream, its store).
pub struct NatsServer {
    _child: tokio::process::Child,
    /// Its client URL.
    pub url: String,
    /// Its temporary directory.
    pub dir: tempfile::TempDir,
}

/// Starts one, with or without JetStream; panics when it cannot (callers check first
/// that the binary is there, each in its own way).
pub async fn start(jetstream: bool) -> NatsServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = tokio::process::Command::new(NATS_SERVER);
    cmd.args(["-a", "127.0.0.1", "-p", "-1", "--ports_file_dir"])
        .arg(dir.path());
    if jetstream {
        cmd.arg("-js").arg("-sd").arg(dir.path().join("js"));
    }
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("nats-server starts");
    let ports = dir
        .path()
        .join(format!("nats-server_{}.ports", child.id().expect("pid")));
    let mut text = String::new();
    for _ in 0..1000 {
        text = std::fs::read_to_string(&ports).unwrap_or_default();
        if text.contains("nats://") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v: serde_json::Value = serde_json::from_str(&text).expect("nats-server's ports file");
    let url = v["nats"][0].as_str().expect("client URL").to_string();
    NatsServer {
        _child: child,
        url,
        dir,
    }
}
