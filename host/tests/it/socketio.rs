//! socket.io stream connections with real clients: npm `socket.io-client@2.3.0`
//! (Engine.IO v3, Beebotte's SDK's, over `b64=1` polling) and `socket.io-client@4.8.1`
//! (Engine.IO v4, upgrading to WebSocket), both driven by `js/sio-client.js` under Node
//! against the `stream-echo` template's socket.io endpoint, and MQTT publishers.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::common::{self, v5, TestBroker, Tr};

/// The Node clients `cargo xtask test` installs (it fails when it cannot). Missing here
/// is a failure, never a skip: these tests are the only proof the transports work with
/// the clients people use.
pub(crate) fn node_tools() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/node-tools/node_modules");
    assert!(
        dir.join("sio2").exists() && dir.join("sio4").exists() && dir.join(".bin/wscat").exists(),
        "{} (wscat and socket.io-client 2 and 4) is missing: run `cargo xtask test`, which installs them with npm",
        dir.display()
    );
    dir
}

struct Client {
    child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Client {
    async fn start(tb: &TestBroker, module: &str, query: &str, transports: &str) -> Client {
        let dir = node_tools();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/js/sio-client.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg(dir.join(module))
            .arg(format!("http://{}", tb.http_addr()))
            .arg("/echo/socket.io")
            .arg(query)
            .arg(transports)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            child,
            stdin,
            lines,
        }
    }

    /// The next line the client printed.
    async fn line(&mut self) -> String {
        tokio::time::timeout(common::WAIT, self.lines.next_line())
            .await
            .expect("the client said something in time")
            .unwrap()
            .expect("the client is running")
    }

    /// The next line starting with `prefix`, skipping others.
    async fn until(&mut self, prefix: &str) -> String {
        loop {
            let l = self.line().await;
            if l.starts_with(prefix) {
                return l;
            }
        }
    }

    async fn emit(&mut self, event: &str, arg: &str) {
        let cmd = format!("emit {event} {arg}\n");
        self.stdin.write_all(cmd.as_bytes()).await.unwrap();
    }

    /// Lines printed within `d`.
    async fn lines_for(&mut self, d: Duration) -> Vec<String> {
        let mut v = Vec::new();
        let _ = tokio::time::timeout(d, async {
            while let Ok(Some(l)) = self.lines.next_line().await {
                v.push(l);
            }
        })
        .await;
        v
    }
}

async fn start() -> (TestBroker, tempfile::TempDir) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/templates/stream-echo/stream-echo.toml");
    let toml = std::fs::read_to_string(p).unwrap();
    common::with_plugins(&[("stream-echo", "stream-echo", &toml)], "", |_| {}).await
}

/// One client generation end to end: connect, the registry session, a greeting, a
/// subscription, an MQTT publish delivered, an echo, and a kick the client does not
/// reconnect after.
async fn round_trip(module: &str, transports: &str, engine_io: u8) {
    let (tb, _root) = start().await;
    let mut c = Client::start(&tb, module, "token=letmein", transports).await;
    let connect = c.until("connect ").await;
    let sid = connect.strip_prefix("connect ").unwrap().to_string();
    let welcome = c.until("message ").await;
    let client_id = welcome
        .strip_prefix("message welcome ")
        .expect(&welcome)
        .to_string();
    let s = tb
        .broker()
        .registry
        .get("default", &client_id)
        .expect("a registry session");
    {
        let i = s.info.read();
        assert_eq!(i.proto_name, "socketio");
        assert_eq!(i.proto_ver, engine_io, "Engine.IO version");
    }
    c.emit("sub", "news/+").await;
    assert_eq!(c.until("subscribed").await, "subscribed news/+");
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("news/a", v5::QoS::AtMostOnce, false, "hi")
        .await
        .unwrap();
    assert_eq!(c.until("message ").await, "message news/a hi");
    c.emit("echo", "round trip").await;
    assert_eq!(c.until("echo").await, "echo round trip");
    // The client was given a socket.io session id.
    assert!(!sid.is_empty());

    // Kicked: the DISCONNECT packet, and no reconnect.
    let n = tb.broker().kick(
        "default",
        &apiary::registry::KickTarget::ClientId(client_id.clone()),
        false,
    );
    assert_eq!(n, 1);
    assert_eq!(
        c.until("disconnect").await,
        "disconnect io server disconnect"
    );
    let after = c.lines_for(Duration::from_millis(1500)).await;
    assert!(
        !after
            .iter()
            .any(|l| l.starts_with("reconnect") || l.starts_with("connect")),
        "the client reconnected: {after:?}"
    );
    common::eventually("session gone", || {
        tb.broker().registry.get("default", &client_id).is_none()
    })
    .await;
    let _ = c.child.kill().await;
}

#[tokio::test]
async fn socket_io_v2_client_over_b64_polling() {
    round_trip("sio2", "polling", 3).await;
}

#[tokio::test]
async fn socket_io_v2_client_upgrading_to_websocket() {
    round_trip("sio2", "polling,websocket", 3).await;
}

#[tokio::test]
async fn socket_io_v4_client() {
    round_trip("sio4", "polling,websocket", 4).await;
}

#[tokio::test]
async fn a_refused_socket_io_client_is_told_why() {
    let (tb, _root) = start().await;
    for module in ["sio2", "sio4"] {
        let mut c = Client::start(&tb, module, "token=wrong", "polling,websocket").await;
        let l = loop {
            let l = c.line().await;
            if l.starts_with("error") || l.starts_with("connect_error") {
                break l;
            }
        };
        assert!(l.contains("add ?token=letmein"), "{module}: {l}");
        assert_eq!(tb.broker().streams.count("stream-echo"), 0);
        let _ = c.child.kill().await;
    }
}

/// An event sent the moment the namespace CONNECT is answered (as socket.io clients send
/// their buffered ones) is served, however late the broker's connect handler runs: the
/// events are queued from the handshake on. Before, socketioxide dropped such an event
/// when its handler was not yet in place (the beebotte bench's rare "subscriber was not
/// subscribed"); the delay makes that window certain.
#[tokio::test]
async fn an_event_right_after_the_connect_answer_is_not_lost() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let (tb, _root) = start().await;
    apiary::stream::delay_connect_handlers(Duration::from_millis(300));
    let url = format!(
        "ws://{}/echo/socket.io/?EIO=4&transport=websocket&token=letmein",
        tb.http_addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    type Socket = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;
    async fn next(ws: &mut Socket) -> String {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Ws::Text(t)))) if t.as_str() == "2" => {
                    ws.send(Ws::Text("3".into())).await.unwrap();
                }
                Ok(Some(Ok(Ws::Text(t)))) => return t.to_string(),
                Ok(Some(Ok(_))) => {}
                other => return format!("ended: {other:?}"),
            }
        }
    }
    while !next(&mut ws).await.starts_with('0') {}
    ws.send(Ws::Text("40".into())).await.unwrap();
    let answer = next(&mut ws).await;
    assert!(answer.starts_with("40"), "{answer}");
    ws.send(Ws::Text(r#"42["sub","early/#"]"#.into()))
        .await
        .unwrap();
    // The plugin's greeting comes first; then the answer to the early event.
    let mut seen = Vec::new();
    let served = loop {
        let t = next(&mut ws).await;
        if t.contains("subscribed") || t.starts_with("ended") {
            break t.contains("subscribed");
        }
        seen.push(t);
    };
    apiary::stream::delay_connect_handlers(Duration::ZERO);
    assert!(served, "the early event was never served; frames: {seen:?}");
}
