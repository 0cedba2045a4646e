//! Stream connections as the host owns them, through the `stream-echo` template plugin
//! mounted on the main HTTP listener: the handshake decided by the plugin, frames both
//! ways, subscriptions through the router, the registry session, a slow reader's bounded
//! queue with counted drops, and the keepalive that closes a silent client.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, v5, TestBroker, Tr};

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn echo_toml(replace: &[(&str, &str)]) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/templates/stream-echo/stream-echo.toml");
    let mut t = std::fs::read_to_string(p).expect("template toml");
    for (from, to) in replace {
        assert!(t.contains(from), "the template toml has {from}");
        t = t.replace(from, to);
    }
    t
}

async fn start(
    replace: &[(&str, &str)],
    f: impl FnOnce(&mut apiary::Config),
) -> (TestBroker, tempfile::TempDir) {
    common::with_plugins(
        &[("stream-echo", "stream-echo", &echo_toml(replace))],
        "",
        f,
    )
    .await
}

async fn open(tb: &TestBroker, query: &str) -> Result<Socket, (u16, String)> {
    let tcp = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let url = format!("ws://{}/echo/ws{query}", tb.http_addr());
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((mut ws, _)) => {
            // The plugin's on-open greeting comes first.
            assert!(text(&mut ws).await.starts_with("welcome stream-echo-"));
            Ok(ws)
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err((
            r.status().as_u16(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).to_string(),
        )),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

async fn text(ws: &mut Socket) -> String {
    loop {
        match tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Ws::Text(t))) => return t.to_string(),
            Some(Ok(Ws::Close(c))) => panic!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn say(ws: &mut Socket, s: &str) -> String {
    ws.send(Ws::Text(s.into())).await.unwrap();
    text(ws).await
}

#[tokio::test]
async fn the_plugin_decides_answers_and_renders() {
    let (tb, _root) = start(&[], |_| {}).await;
    assert_eq!(
        open(&tb, "").await.err(),
        Some((401, "add ?token=letmein".into()))
    );
    let mut ws = open(&tb, "?token=letmein").await.expect("accepted");
    assert_eq!(say(&mut ws, "hello").await, "hello");
    assert_eq!(say(&mut ws, "sub news/+").await, "subscribed news/+");
    let e = say(&mut ws, "sub bad/#/x").await;
    assert!(
        e.starts_with("error:") && e.contains("InvalidArgument"),
        "{e}"
    );

    // A registry session of protocol websocket, with its subscription.
    let s = tb
        .broker()
        .streams
        .sessions("stream-echo")
        .pop()
        .expect("a session");
    assert!(s.client_id.starts_with("stream-echo-"), "{}", s.client_id);
    assert!(tb.broker().registry.get("default", &s.client_id).is_some());
    {
        let i = s.info.read();
        assert_eq!(i.proto_name, "websocket");
        assert!(i.connected);
        assert!(i.description.as_deref().unwrap().contains("127.0.0.1"));
    }
    assert!(s.state.lock().subscriptions.contains_key("news/+"));

    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("news/today", v5::QoS::AtLeastOnce, false, "sunny")
        .await
        .unwrap();
    assert_eq!(text(&mut ws).await, "news/today sunny");
    assert_eq!(
        say(&mut ws, "unsub news/+").await,
        "unsubscribed news/+ (true)"
    );
    // At QoS 1 too: a stream has no acks, so nothing waits in the inflight window.
    assert_eq!(say(&mut ws, "sub q1 1").await, "subscribed q1");
    for i in 0..3 {
        p.c.publish("q1", v5::QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
        assert_eq!(text(&mut ws).await, format!("q1 m{i}"));
    }
    assert!(
        s.state.lock().inflight.is_empty(),
        "no inflight on a stream"
    );
    drop(ws);
    common::eventually("session ends with its socket", || {
        tb.broker().registry.get("default", &s.client_id).is_none()
    })
    .await;
}

#[tokio::test]
async fn a_slow_reader_costs_bounded_memory_and_counted_drops() {
    let (tb, _root) = start(&[], |c| {
        c.session.max_queued_messages = 20;
    })
    .await;
    // A reader that subscribes and then never reads again.
    let mut slow = open(&tb, "?token=letmein").await.unwrap();
    assert_eq!(say(&mut slow, "sub flood").await, "subscribed flood");
    let mut fast = open(&tb, "?token=letmein").await.unwrap();
    assert_eq!(say(&mut fast, "sub flood").await, "subscribed flood");
    let (p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    let payload = vec![b'x'; 32 << 10];
    let n = 400; // 12.5 MiB for the slow reader: more than any socket buffers hold.
    let reader = tokio::spawn(async move {
        for _ in 0..n {
            let t = text(&mut fast).await;
            assert!(t.starts_with("flood "));
        }
        fast
    });
    for _ in 0..n {
        p.c.publish("flood", v5::QoS::AtMostOnce, false, payload.clone())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The fast reader got everything: the slow one held nobody up.
    let _fast = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the fast reader kept up")
        .unwrap();
    common::eventually("drops counted for the slow reader", || {
        common::metric(&tb, "apiary_messages_dropped_total{reason=\"queue_full\"}") > 0
    })
    .await;
    let s = tb
        .broker()
        .streams
        .sessions("stream-echo")
        .into_iter()
        .map(|s| s.state.lock().queue.len())
        .max()
        .unwrap();
    assert!(s <= 20, "the queue stays within max_queued_messages: {s}");
    drop(slow);
}

#[tokio::test]
async fn a_client_that_answers_no_ping_is_closed() {
    let (tb, _root) = start(
        &[("ping_interval_secs = 20", "ping_interval_secs = 1")],
        |_| {},
    )
    .await;
    // A raw client: the upgrade, then silence (it never reads, so never answers a ping).
    let mut s = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let req = "GET /echo/ws?token=letmein HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let session = loop {
        if let Some(s) = tb.broker().streams.sessions("stream-echo").pop() {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Pings at 1 s, 2 s; closed at the third tick for having heard nothing.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed by the broker")
        .unwrap();
    common::eventually("session gone", || {
        tb.broker()
            .registry
            .get("default", &session.client_id)
            .is_none()
    })
    .await;
    // A close frame (0x88) with 1000 and the reason.
    let i = rest.iter().position(|&b| b == 0x88).expect("a close frame");
    assert!(String::from_utf8_lossy(&rest[i..]).contains("keepalive_timeout"));
}

#[tokio::test]
async fn plain_requests_at_a_stream_path_are_refused_and_counted() {
    let (tb, _root) = start(&[], |_| {}).await;
    let a = common::request(
        tb.http_addr(),
        "GET",
        "/echo/ws?token=letmein",
        None,
        &[],
        b"",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("WebSocket upgrade"), "{}", a.body);
    assert_eq!(common::metric(&tb, "apiary_stream_bad_upgrades_total"), 1);
    // Other paths under the mount are not the plugin's (it has no http role).
    let a = common::request(tb.http_addr(), "GET", "/echo/other", None, &[], b"").await;
    assert_eq!(a.status, 404);
}
