//! The stock `octave` plugin end to end: `POST /session` with an API key, the WebSocket
//! at `/session/{id}/ws` (tokio-tungstenite as the client), subscriptions by path and by
//! stream id, events from rumqttc publishers (3.1.1 and 5), the stream sessions seen and
//! kicked through the EMQX clients API, tenant isolation, limits, reload and unload.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Ws;

use crate::common::{self, v3, v5, TestBroker, Tr};

const KEYS: &str =
    "ops:s3cret:admin:tenant=*\nacme:ak:connections:read:tenant=acme\nwriter:wk:publish:tenant=*\n";

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

struct Octave {
    tb: TestBroker,
    addr: std::net::SocketAddr,
    pdir: std::path::PathBuf,
    _root: tempfile::TempDir,
}

/// The stock toml on port 0 (the system picks a free port: one picked beforehand could be
/// taken by a parallel test before the plugin binds it), with lines of it replaced.
fn toml(replace: &[(&str, &str)]) -> String {
    let mut t = common::stock_toml("octave")
        .replace("listen = \"0.0.0.0:8093\"", "listen = \"127.0.0.1:0\"");
    for (from, to) in replace {
        assert!(t.contains(from), "the stock toml has {from}");
        t = t.replace(from, to);
    }
    t
}

/// Where the octave plugin's listener is bound.
fn listen_addr(tb: &TestBroker) -> std::net::SocketAddr {
    tb.broker()
        .plugins()
        .and_then(|m| m.listen_addr("octave"))
        .expect("the octave plugin listens")
}

async fn start(replace: &[(&str, &str)]) -> Octave {
    let (tb, root) = common::with_plugins(
        &[
            ("octave", "octave", &toml(replace)),
            ("emqx", "emqx", &common::stock_toml("emqx")),
        ],
        KEYS,
        |_| {},
    )
    .await;
    Octave {
        addr: listen_addr(&tb),
        tb,
        pdir: root.path().join("plugins"),
        _root: root,
    }
}

/// `POST /session` with the given auth headers; (status, envelope).
async fn post_session(o: &Octave, headers: &[(&str, &str)]) -> (u16, Value) {
    let a = common::request(o.addr, "POST", "/session", None, headers, b"").await;
    let v: Value = serde_json::from_str(&a.body).unwrap_or(Value::Null);
    (a.status, v)
}

async fn session_id(o: &Octave, company: &str) -> String {
    let headers = [
        ("X-Auth-User", "ops"),
        ("X-Auth-Token", "s3cret"),
        ("X-Auth-Company", company),
    ];
    let (mut st, mut v) = post_session(o, &headers).await;
    // A gateway timeout while the test machine is saturated (every test in parallel on
    // two cores) is load, which a client retries; anything else is an answer.
    for _ in 0..3 {
        if st != 503 && st != 504 {
            break;
        }
        eprintln!("POST /session answered {st} under load, retrying: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        (st, v) = post_session(o, &headers).await;
    }
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["head"], json!({"ok": true, "status": 201, "errors": []}));
    v["body"]["id"].as_str().expect("id").to_string()
}

/// Opens the WebSocket of a session id; Err(status) when the upgrade is refused.
async fn connect(o: &Octave, id: &str) -> Result<Socket, u16> {
    let tcp = tokio::net::TcpStream::connect(o.addr).await.unwrap();
    let url = format!("ws://{}/session/{id}/ws", o.addr);
    match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

async fn stream(o: &Octave, company: &str) -> Socket {
    let id = session_id(o, company).await;
    connect(o, &id).await.expect("upgrade")
}

/// The next text frame as JSON (pings are skipped); panics after WAIT.
async fn next(ws: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("socket open")
            .expect("frame");
        match m {
            Ws::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
            Ws::Close(c) => panic!("closed: {c:?}"),
            _ => continue,
        }
    }
}

/// Nothing but control frames for `d`.
async fn quiet(ws: &mut Socket, d: Duration) {
    let r = tokio::time::timeout(d, async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Text(t))) => return t.to_string(),
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => return "closed".into(),
                _ => continue,
            }
        }
    })
    .await;
    if let Ok(t) = r {
        panic!("expected nothing, got {t}");
    }
}

/// The close frame's code, once the broker closes the socket.
async fn closed(ws: &mut Socket) -> u16 {
    loop {
        let m = tokio::time::timeout(common::WAIT, ws.next())
            .await
            .expect("closed in time");
        match m {
            Some(Ok(Ws::Close(Some(c)))) => return u16::from(c.code),
            Some(Ok(Ws::Close(None))) | None | Some(Err(_)) => return 0,
            _ => continue,
        }
    }
}

async fn send(ws: &mut Socket, v: Value) -> Value {
    ws.send(Ws::Text(v.to_string().into())).await.unwrap();
    next(ws).await
}

async fn subscribe(ws: &mut Socket, msg_id: &str, by: (&str, &str)) -> Value {
    send(
        ws,
        json!({"msgId": msg_id, "object": "event", "type": "subscribe", by.0: by.1}),
    )
    .await
}

#[tokio::test]
async fn the_seed_session_streams_mqtt_publishes_as_events() {
    let o = start(&[]).await;
    let mut ws = stream(&o, "default").await;
    let ack = subscribe(&mut ws, "my-path-request", ("path", "/my/stream/path")).await;
    assert_eq!(
        ack["head"],
        json!({"msgId": "my-path-request", "ok": true, "errors": [],
               "messages": ["Your request has been processed successfully."]})
    );
    let sid = ack["body"]["streamId"].as_str().unwrap().to_string();
    assert!(sid.starts_with('s') && sid.len() == 25, "{sid}");
    assert_eq!(ack["body"]["path"], "/my/stream/path");
    // The same stream by id: still one subscription, so each event arrives once.
    let ack = subscribe(&mut ws, "my-request", ("streamId", &sid)).await;
    assert_eq!(ack["head"]["ok"], true, "{ack}");
    assert_eq!(ack["body"]["path"], "/my/stream/path");

    // An MQTT 5 publisher with a JSON object and user properties.
    let mut po = v5::opts(&o.tb, "sensor-5", Tr::Tcp);
    po.set_clean_start(true);
    let (p5, _) = v5::connect(po).await;
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("unit".into(), "C".into())],
        ..Default::default()
    };
    p5.c.publish_with_properties(
        "my/stream/path",
        v5::QoS::AtLeastOnce,
        false,
        r#"{"temp":21.5}"#,
        props,
    )
    .await
    .unwrap();
    let ev = next(&mut ws).await;
    assert_eq!(ev["type"], "message");
    assert_eq!(ev["resource"], sid.as_str());
    let e = &ev["value"];
    assert!(e["id"].as_str().unwrap().starts_with('e'), "{e}");
    assert_eq!(e["id"].as_str().unwrap().len(), 25);
    assert_eq!(e["streamId"], sid.as_str());
    assert_eq!(e["path"], "/my/stream/path");
    assert_eq!(e["creatorId"], "sensor-5");
    assert_eq!(e["elems"], json!({"temp": 21.5}));
    assert_eq!(e["metadata"], json!({"unit": "C"}));
    assert_eq!(e["hash"], Value::Null);
    assert!(e["creationDate"].as_i64().unwrap() > 1_700_000_000_000);
    quiet(&mut ws, Duration::from_millis(300)).await;

    // A 3.1.1 publisher: a number, then bytes that are not JSON.
    let (p3, _) = v3::connect(v3::opts(&o.tb, "sensor-3", Tr::Ws)).await;
    p3.c.publish("my/stream/path", v3::QoS::AtMostOnce, false, "42")
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["value"]["elems"], json!({"value": 42}));
    p3.c.publish(
        "my/stream/path",
        v3::QoS::AtMostOnce,
        false,
        vec![0xffu8, 0],
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut ws).await["value"]["elems"],
        json!({"raw": "/wA="})
    );
    // A child topic is another stream.
    p3.c.publish("my/stream/path/child", v3::QoS::AtMostOnce, false, "1")
        .await
        .unwrap();
    quiet(&mut ws, Duration::from_millis(300)).await;

    // Unsubscribe (by id), and again: both ok; then nothing arrives.
    for _ in 0..2 {
        let a = send(
            &mut ws,
            json!({"msgId": "u", "object": "event", "type": "unsubscribe", "streamId": sid}),
        )
        .await;
        assert_eq!(a["head"]["ok"], true, "{a}");
    }
    p3.c.publish("my/stream/path", v3::QoS::AtMostOnce, false, "2")
        .await
        .unwrap();
    quiet(&mut ws, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn bad_frames_get_an_error_envelope_and_the_socket_stays_open() {
    let o = start(&[]).await;
    let mut ws = stream(&o, "default").await;
    for (frame, msg_id) in [
        (json!("not an object"), None),
        (
            json!({"msgId": "a", "object": "device", "type": "subscribe", "path": "/x"}),
            Some("a"),
        ),
        (
            json!({"msgId": "b", "object": "event", "type": "publish", "path": "/x"}),
            Some("b"),
        ),
        (
            json!({"msgId": "c", "object": "event", "type": "subscribe"}),
            Some("c"),
        ),
        (
            json!({"msgId": "d", "object": "event", "type": "subscribe", "path": "/x/#"}),
            Some("d"),
        ),
        (
            json!({"msgId": "e", "object": "event", "type": "subscribe", "streamId": "zzz"}),
            Some("e"),
        ),
        (
            json!({"msgId": "f", "object": "event", "type": "subscribe", "path": "/a", "streamId": "s0"}),
            Some("f"),
        ),
    ] {
        let a = send(&mut ws, frame.clone()).await;
        assert_eq!(a["head"]["ok"], false, "{frame} -> {a}");
        assert_eq!(a["head"]["status"], 400, "{frame} -> {a}");
        assert!(!a["head"]["errors"][0].as_str().unwrap().is_empty());
        assert_eq!(a["head"]["msgId"].as_str(), msg_id, "{frame} -> {a}");
    }
    ws.send(Ws::Text("{{{".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["head"]["status"], 400);
    ws.send(Ws::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(next(&mut ws).await["head"]["status"], 400);
    // A well-formed id nobody named by path: 404, and another tenant's id is unknown too.
    let other = stream(&o, "acme").await;
    drop(other);
    let a = subscribe(&mut ws, "g", ("streamId", "s0123456789abcdef01234567")).await;
    assert_eq!(a["head"]["status"], 404, "{a}");
    // Still open and serving.
    let a = subscribe(&mut ws, "h", ("path", "/ok")).await;
    assert_eq!(a["head"]["ok"], true, "{a}");
}

#[tokio::test]
async fn session_ids_are_checked_single_use_and_expire() {
    let o = start(&[]).await;
    let h = |u: &'static str, t: &'static str, c: &'static str| {
        let mut v = vec![];
        if !u.is_empty() {
            v.push(("X-Auth-User", u));
        }
        if !t.is_empty() {
            v.push(("X-Auth-Token", t));
        }
        if !c.is_empty() {
            v.push(("X-Auth-Company", c));
        }
        v
    };
    for (headers, status) in [
        (h("ops", "wrong", "default"), 401),
        (h("ops", "", "default"), 401),
        (h("nobody", "x", "default"), 401),
        (h("", "ops", "default"), 401),
        (h("acme", "ak", "default"), 403),
        (h("writer", "wk", "default"), 403),
        (h("ops", "s3cret", ""), 400),
    ] {
        let (st, v) = post_session(&o, &headers).await;
        assert_eq!(st, status, "{headers:?}: {v}");
        assert_eq!(v["head"]["ok"], false);
        assert_eq!(v["head"]["status"], status);
        assert!(!v["head"]["errors"][0].as_str().unwrap().is_empty(), "{v}");
    }
    // A key of the company itself, and the restricted-token form (key:secret).
    let (st, _) = post_session(&o, &h("acme", "ak", "acme")).await;
    assert_eq!(st, 201);
    let (st, v) = post_session(&o, &h("", "acme:ak", "acme")).await;
    assert_eq!(st, 201, "{v}");
    let id = v["body"]["id"].as_str().unwrap().to_string();

    // The upgrade headers without `Upgrade: websocket` is not an upgrade: 400, and the id
    // is not used up by it.
    let not_upgrade = [
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let path = format!("/session/{id}/ws");
    let a = common::request(o.addr, "GET", &path, None, &not_upgrade, b"").await;
    assert_eq!(a.status, 400);
    let ws = connect(&o, &id).await.expect("first use");
    assert_eq!(connect(&o, &id).await.err(), Some(404), "single use");
    assert_eq!(connect(&o, "nope").await.err(), Some(404));
    let long = "x".repeat(4000);
    assert_eq!(
        connect(&o, &long).await.err(),
        Some(404),
        "malformed: not looked up"
    );
    drop(ws);
    // Not an upgrade at all.
    let a = common::request(o.addr, "GET", &format!("/session/{id}/ws"), None, &[], b"").await;
    assert_eq!(a.status, 400);
}

#[tokio::test]
async fn an_unused_session_id_expires() {
    let t = toml(&[("session_ttl_secs = 60", "session_ttl_secs = 1")]);
    let (tb, root) = common::with_plugins(&[("octave", "octave", &t)], KEYS, |_| {}).await;
    let o = Octave {
        addr: listen_addr(&tb),
        tb,
        pdir: root.path().join("plugins"),
        _root: root,
    };
    let id = session_id(&o, "default").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(connect(&o, &id).await.err(), Some(410));
}

async fn emqx(o: &Octave, method: &str, path: &str) -> (u16, Value) {
    let (st, body) =
        common::http(o.tb.http_addr(), method, path, Some(("ops", "s3cret")), b"").await;
    (st, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn stream_sessions_are_listed_kicked_and_isolated_by_tenant() {
    let o = start(&[]).await;
    let mut a = stream(&o, "default").await;
    let mut b = stream(&o, "acme").await;
    subscribe(&mut a, "1", ("path", "/t")).await;
    subscribe(&mut b, "1", ("path", "/t")).await;

    let (st, list) = emqx(&o, "GET", "/api/v5/clients?proto_name=websocket").await;
    assert_eq!(st, 200, "{list}");
    let items = list["data"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the default tenant's stream only: {list}");
    let c = &items[0];
    let cid = c["clientid"].as_str().unwrap().to_string();
    assert!(cid.starts_with("octave-"), "{c}");
    assert_eq!(c["proto_name"], "websocket");
    assert_eq!(c["username"], "ops");
    assert_eq!(c["connected"], true);
    assert_eq!(c["subscriptions_cnt"], 1);

    // Tenant isolation: a publish in acme reaches b only.
    let (p, _) = v5::connect(v5::opts(&o.tb, "pub", Tr::Tcp)).await;
    p.c.publish("t", v5::QoS::AtMostOnce, false, "x")
        .await
        .unwrap();
    assert_eq!(next(&mut a).await["value"]["path"], "/t");
    quiet(&mut b, Duration::from_millis(200)).await;
    let n =
        o.tb.broker()
            .publish(apiary::message::Message::new(
                "acme".into(),
                "t".into(),
                bytes::Bytes::from_static(b"{}"),
                rmqtt_codec::types::QoS::AtMostOnce,
                false,
            ))
            .unwrap();
    assert_eq!(n, 1);
    let ev = next(&mut b).await;
    assert_eq!(
        ev["value"]["creatorId"],
        Value::Null,
        "published by the broker"
    );
    quiet(&mut a, Duration::from_millis(200)).await;

    // Kick through the EMQX API: a close frame, and the session is gone.
    let (st, _) = emqx(&o, "DELETE", &format!("/api/v5/clients/{cid}")).await;
    assert_eq!(st, 204);
    assert_eq!(closed(&mut a).await, 1000);
    common::eventually("session gone", || {
        o.tb.broker().registry.get("default", &cid).is_none()
    })
    .await;
}

#[tokio::test]
async fn limits_close_oversized_frames_and_refuse_connections_over_the_cap() {
    let o = start(&[
        ("max_frame_bytes = 65536", "max_frame_bytes = 1024"),
        ("max_connections = 10000", "max_connections = 2"),
    ])
    .await;
    let mut a = stream(&o, "default").await;
    let _b = stream(&o, "default").await;
    let id = session_id(&o, "default").await;
    assert_eq!(
        connect(&o, &id).await.err(),
        Some(503),
        "over max_connections"
    );
    a.send(Ws::Text("x".repeat(4096).into())).await.unwrap();
    assert_eq!(closed(&mut a).await, 1009);
    assert!(common::metric(&o.tb, "apiary_stream_frames_too_large_total") >= 1);
    assert!(common::metric(&o.tb, "apiary_stream_refused_total") >= 1);
    // The slot is free again once the socket is gone.
    common::eventually("slot released", || {
        o.tb.broker().streams.count("octave") == 1
    })
    .await;
    let _c = stream(&o, "default").await;
}

#[tokio::test]
async fn streams_survive_a_reload_and_close_on_unload() {
    let o = start(&[]).await;
    let mut ws = stream(&o, "default").await;
    subscribe(&mut ws, "1", ("path", "/r")).await;
    let before = o.tb.server.plugins.get("octave").unwrap().hash.clone();
    // Replace the component (same code, new bytes: a custom section appended).
    let wasm = o.pdir.join("octave.wasm");
    let mut bytes = std::fs::read(&wasm).unwrap();
    bytes.extend_from_slice(&[0, 4, 1, b'x', 0, 0]);
    std::fs::write(o.pdir.join(".octave.tmp"), &bytes).unwrap();
    std::fs::rename(o.pdir.join(".octave.tmp"), &wasm).unwrap();
    common::eventually("reloaded", || {
        o.tb.server
            .plugins
            .get("octave")
            .is_some_and(|p| p.hash != before)
    })
    .await;
    let (p, _) = v5::connect(v5::opts(&o.tb, "pub", Tr::Tcp)).await;
    p.c.publish("r", v5::QoS::AtMostOnce, false, "1")
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await["value"]["elems"], json!({"value": 1}));
    std::fs::remove_file(&wasm).unwrap();
    assert_eq!(
        closed(&mut ws).await,
        1001,
        "going away: the plugin was unloaded"
    );
}

#[tokio::test]
async fn kick_user_can_be_limited_to_one_protocol() {
    use apiary::registry::{KickTarget, Via};
    let o = start(&[]).await;
    let mut ws = stream(&o, "default").await; // user id: the key, ops
    let mut mo = v5::opts(&o.tb, "ops-device", Tr::Tcp);
    mo.set_credentials("ops", "pw");
    let (_m, _) = v5::connect(mo).await;
    let kick = |only: &str| {
        o.tb.broker().kick(
            "default",
            &KickTarget::UserId {
                user_id: "ops".into(),
                only: Via::parse(only),
            },
            false,
        )
    };
    assert_eq!(kick("socketio"), 0);
    assert_eq!(kick("websocket"), 1);
    assert_eq!(closed(&mut ws).await, 1000);
    let device = o.tb.broker().registry.get("default", "ops-device").unwrap();
    assert!(
        device.is_online(),
        "the MQTT session of the same user stays"
    );
    assert_eq!(Via::parse("carrier-pigeon"), None);
}

/// The seed's session with its own tool: wscat (npm) connects with the session id, the
/// subscribe request is typed into it, an MQTT client publishes, and wscat prints the
/// acknowledgement and the event.
#[tokio::test]
async fn wscat_replays_the_seed_session() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let tools = crate::socketio::node_tools();
    let o = start(&[]).await;
    let id = session_id(&o, "default").await;
    let mut wscat = tokio::process::Command::new(tools.join(".bin/wscat"))
        .arg("-c")
        .arg(format!("ws://{}/session/{id}/ws", o.addr))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("wscat runs");
    let mut stdin = wscat.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(wscat.stdout.take().unwrap()).lines();
    common::eventually("wscat connected", || {
        o.tb.broker().streams.count("octave") == 1
    })
    .await;
    let sub = r#"{"msgId":"my-path-request","object":"event","type":"subscribe","path":"/my/stream/path"}"#;
    // wscat may take a moment after the server accepted it to open its side (a line typed
    // before that is lost): type again until the acknowledgement comes.
    let mut answer = None;
    for _ in 0..10 {
        stdin
            .write_all(format!("{sub}\n").as_bytes())
            .await
            .unwrap();
        if let Ok(a) = tokio::time::timeout(Duration::from_secs(1), wscat_frame(&mut lines)).await {
            answer = Some(a);
            break;
        }
    }
    let (line, ack) = answer.expect("wscat printed the acknowledgement");

    assert!(
        line.contains(r#"{"head":{"msgId":"my-path-request","ok":true,"#),
        "Octave's order: {line}"
    );
    assert_eq!(ack["body"]["path"], "/my/stream/path");
    let (p, _) = v3::connect(v3::opts(&o.tb, "sensor-1", Tr::Tcp)).await;
    p.c.publish(
        "my/stream/path",
        v3::QoS::AtLeastOnce,
        false,
        r#"{"temp":21.5}"#,
    )
    .await
    .unwrap();
    // (Skipping the acknowledgement of a retyped subscribe, if any.)
    let (line, ev) = loop {
        let (l, v) = wscat_frame(&mut lines).await;
        if v["type"] == "message" {
            break (l, v);
        }
    };
    assert!(
        line.contains(r#"{"type":"message","resource":"s"#),
        "{line}"
    );
    assert_eq!(ev["value"]["elems"], json!({"temp": 21.5}));
    assert_eq!(ev["value"]["creatorId"], "sensor-1");
    drop(stdin);
    let _ = wscat.kill().await;
}

/// The next JSON message wscat printed (each on a line of its own, after its prompt).
async fn wscat_frame(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> (String, Value) {
    loop {
        let l = tokio::time::timeout(common::WAIT, lines.next_line())
            .await
            .expect("wscat printed in time")
            .unwrap()
            .expect("wscat is running");
        let json = l.trim_start_matches(['>', '<', ' ']);
        if let Ok(v) = serde_json::from_str::<Value>(json) {
            return (l, v);
        }
    }
}
