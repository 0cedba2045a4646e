//! The stock `beebotte` plugin driven by Beebotte's official SDKs, unchanged: npm
//! `beebotte@1.7.0` (Connector over REST, Stream over socket.io and over MQTT, through
//! `js/bbt.js`) and PyPI `beebotte==0.5.0` (`py/bbt.py`), next to rumqttc clients on the
//! same topics, raw signed requests for the edge cases, and the EMQX clients API seeing
//! the same sessions. `cargo xtask test` installs both SDKs; missing is a failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::auth::connack;
use crate::common::{self, v3, TestBroker, Tr};

const KEYS: &str = "acme:acme-secret:admin:tenant=acme\n\
                    reader:reader-secret:connections:read:tenant=acme\n\
                    zeta:zeta-secret:admin:tenant=zeta\n";

struct Bee {
    tb: TestBroker,
    port: u16,
    _root: tempfile::TempDir,
}

impl Bee {
    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }
}

async fn start(replace: &[(&str, &str)]) -> Bee {
    // Port 0: the system picks a free one (a port picked beforehand could be taken by a
    // parallel test's listener before the plugin binds it).
    let mut t = common::stock_toml("beebotte")
        .replace("listen = \"0.0.0.0:8092\"", "listen = \"127.0.0.1:0\"");
    for (from, to) in replace {
        assert!(t.contains(from), "the stock toml has {from}");
        t = t.replace(from, to);
    }
    let (tb, root) = common::with_plugins(
        &[
            ("beebotte", "beebotte", &t),
            ("emqx", "emqx", &common::stock_toml("emqx")),
        ],
        KEYS,
        |_| {},
    )
    .await;
    let port = tb
        .broker()
        .plugins()
        .and_then(|m| m.listen_addr("beebotte"))
        .expect("the beebotte plugin listens")
        .port();
    Bee {
        tb,
        port,
        _root: root,
    }
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target")
}

/// Beebotte's Node SDK through `js/bbt.js`: JSON commands in, JSON events out.
struct Node {
    _child: Child,
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Events read while waiting for another.
    backlog: Vec<Value>,
    next_id: u64,
}

impl Node {
    async fn start() -> Node {
        let modules = target_dir().join("node-tools/node_modules");
        assert!(
            modules.join("beebotte").exists(),
            "{} has no beebotte SDK: run `cargo xtask test`, which installs it with npm",
            modules.display()
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/js/bbt.js");
        let mut child = Command::new("node")
            .arg(script)
            .arg(modules)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        Node {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            _child: child,
            backlog: Vec::new(),
            next_id: 0,
        }
    }

    async fn send(&mut self, mut cmd: Value) -> u64 {
        self.next_id += 1;
        cmd["id"] = self.next_id.into();
        let line = format!("{cmd}\n");
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.next_id
    }

    /// The first event (backlog first) that `f` accepts; panics after a while or when the
    /// SDK crashed.
    async fn expect(&mut self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&f) {
            return self.backlog.remove(i);
        }
        // Generous: every test runs at once on two cores in `cargo xtask test`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let l = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} from the Node SDK; saw {:?}", self.backlog))
                .unwrap()
                .expect("the Node driver is running");
            let v: Value = serde_json::from_str(&l).expect("a JSON line");
            assert!(
                v["ev"] != "crash" && v["ev"] != "throw",
                "the Node SDK failed: {v}"
            );
            if f(&v) {
                return v;
            }
            self.backlog.push(v);
        }
    }

    fn seen(&self, ev: &str, name: &str) -> bool {
        self.backlog
            .iter()
            .any(|v| v["ev"] == ev && v["name"] == name)
    }

    async fn connector(&mut self, b: &Bee, key: &str, secret: &str) {
        let opts = json!({"apiKey": key, "secretKey": secret, "hostname": "127.0.0.1",
                          "port": b.port, "protocol": "http"});
        let id = self.send(json!({"op": "connector", "opts": opts})).await;
        self.expect("connector", |v| v["id"] == id).await;
    }

    async fn token_connector(&mut self, b: &Bee, token: &str) {
        let opts =
            json!({"token": token, "hostname": "127.0.0.1", "port": b.port, "protocol": "http"});
        let id = self.send(json!({"op": "connector", "opts": opts})).await;
        self.expect("connector", |v| v["id"] == id).await;
    }

    /// A Connector method's (err, res).
    async fn call(&mut self, method: &str, args: Value) -> (Value, Value) {
        let id = self
            .send(json!({"op": "call", "method": method, "args": args}))
            .await;
        let v = self
            .expect(method, |v| v["ev"] == "result" && v["id"] == id)
            .await;
        (v["err"].clone(), v["res"].clone())
    }

    /// Opens a Stream named `name` and waits until it is connected.
    async fn stream(&mut self, name: &str, opts: Value) {
        self.send(json!({"op": "stream", "name": name, "opts": opts}))
            .await;
        self.expect("connected", |v| v["ev"] == "connected" && v["name"] == name)
            .await;
    }

    /// The session id the SDK knows (socket.io: from `getsid`; MQTT: the client id).
    async fn sid(&mut self, name: &str) -> String {
        for _ in 0..100 {
            let id = self.send(json!({"op": "sid", "name": name})).await;
            let v = self
                .expect("sid", |v| v["ev"] == "sid" && v["id"] == id)
                .await;
            if let Some(s) = v["sid"].as_str() {
                return s.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the SDK never learnt its sid");
    }

    /// Subscribes; the SDK's answer event (`subscribed` or `subscribeError`).
    async fn subscribe(&mut self, name: &str, channel: &str, resource: &str, args: Value) -> Value {
        let cmd = json!({"op": "subscribe", "name": name, "channel": channel,
                         "resource": resource, "args": args});
        self.send(cmd).await;
        self.expect("subscribe answer", |v| {
            (v["ev"] == "subscribed" || v["ev"] == "subscribeError") && v["name"] == name
        })
        .await
    }

    /// The next message a stream's subscription delivered.
    async fn message(&mut self, name: &str) -> Value {
        self.expect("message", |v| v["ev"] == "message" && v["name"] == name)
            .await["msg"]
            .clone()
    }
}

fn sio(b: &Bee, key: &str, secret: &str, userid: &str, username: &str) -> Value {
    json!({"transport": {"type": "socketio", "apiKey": key, "secretKey": secret,
                         "ws_host": "127.0.0.1", "port": b.port, "ssl": false},
           "userinfo": {"userid": userid, "username": username}})
}

fn mqtt(b: &Bee, transport: Value) -> Value {
    let mut t = transport;
    t["type"] = "mqtt".into();
    t["mqtt_host"] = "127.0.0.1".into();
    t["port"] = b.tb.port(Tr::Tcp).into();
    t["ssl"] = false.into();
    json!({ "transport": t })
}

/// Beebotte's Python SDK: runs `calls` ([method, args, kwargs]) on one `BBT(**kwargs)`.
async fn py(b: &Bee, mut kwargs: Value, calls: Value) -> Vec<Value> {
    let python = target_dir().join("py-beebotte/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask test`, which installs beebotte==0.5.0 there",
        python.display()
    );
    kwargs["hostname"] = "127.0.0.1".into();
    kwargs["port"] = b.port.into();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/py/bbt.py");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(python)
            .arg(script)
            .arg(kwargs.to_string())
            .arg(calls.to_string())
            .output(),
    )
    .await
    .expect("the Python SDK finished in time")
    .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// base64(HMAC-SHA1(secret, msg)).
fn hmac_b64(secret: &str, msg: &str) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

/// Creates a token through the plugin's admin route; (token, id).
async fn token(b: &Bee, spec: Value) -> (String, String) {
    let (st, body) = common::http(
        b.addr(),
        "POST",
        "/v1/apiary/tokens",
        Some(("acme", "acme-secret")),
        spec.to_string().as_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    (
        v["token"].as_str().unwrap().into(),
        v["id"].as_str().unwrap().into(),
    )
}

/// The EMQX clients API's list for the acme tenant.
async fn emqx_clients(b: &Bee) -> Value {
    let (st, body) = common::http(
        b.tb.http_addr(),
        "GET",
        "/api/v5/clients?limit=100",
        Some(("acme", "acme-secret")),
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(
        !body.contains("acme-secret"),
        "no secret in the listing: {body}"
    );
    serde_json::from_str(&body).unwrap()
}

fn by<'a>(list: &'a Value, key: &str, val: &str) -> Vec<&'a Value> {
    list.as_array()
        .expect("an array")
        .iter()
        .filter(|e| e[key] == val)
        .collect()
}

#[tokio::test]
async fn node_sdk_lists_and_drops_socketio_and_mqtt_connections() {
    let b = start(&[]).await;
    let mut n = Node::start().await;
    n.connector(&b, "acme", "acme-secret").await;
    n.stream("s1", sio(&b, "acme", "acme-secret", "uid-1", "bob"))
        .await;
    let sid = n.sid("s1").await;
    let m = json!({"secretKey": "acme-secret", "clientId": "cid-m"});
    n.stream("m1", mqtt(&b, m)).await;

    let (err, all) = n.call("getUserConnections", json!([])).await;
    assert_eq!(err, Value::Null, "{all}");
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let s = by(&all, "protocol", "socketio")[0];
    assert_eq!(
        s,
        &json!({"clientid": "uid-1", "clientip": "127.0.0.1", "owner": "acme",
                "protocol": "socketio", "sid": sid, "userid": "uid-1", "subscriptions": [],
                "userinfo": {"userid": "uid-1", "username": "bob"}})
    );
    let mq = by(&all, "protocol", "mqtt")[0];
    assert_eq!(
        mq,
        &json!({"clientid": "cid-m", "clientip": "127.0.0.1", "owner": "acme",
                "protocol": "mqtt", "sid": "cid-m", "userid": "cid-m"})
    );

    // Every filter the SDK can send (a trailing `?` signed on the empty query included),
    // combined with AND.
    for (args, want) in [
        (json!([{}]), 2),
        (json!([{"userid": "uid-1"}]), 1),
        (json!([{"userid": "uid-1", "sid": sid}]), 1),
        (json!([{"userid": "uid-1", "sid": "nope"}]), 0),
        (json!([{"userid": "uid-1", "protocol": "mqtt"}]), 0),
        (json!([{"protocol": "mqtt"}]), 1),
        (json!([{"sid": sid}]), 1),
        (json!([{"userid": "cid-m"}]), 1),
        (json!([{"userid": "nobody"}]), 0),
    ] {
        let (err, res) = n.call("getUserConnections", args.clone()).await;
        assert_eq!(err, Value::Null, "{args}: {res}");
        assert_eq!(res.as_array().unwrap().len(), want, "{args}: {res}");
    }

    // A subscription shows in the listing.
    let ok = n.subscribe("s1", "demo", "res", json!({})).await;
    assert_eq!(ok["ev"], "subscribed", "{ok}");
    let (_, res) = n
        .call("getUserConnections", json!([{"userid": "uid-1"}]))
        .await;
    assert_eq!(
        res[0]["subscriptions"],
        json!([{"channel": "demo", "resource": "res", "read": true, "write": false}])
    );

    // The EMQX API sees the same sessions, the MQTT one under its key's id, not its secret.
    let list = emqx_clients(&b).await;
    let data = &list["data"];
    assert_eq!(by(data, "clientid", "cid-m")[0]["username"], "bbt-key:acme");
    assert_eq!(by(data, "proto_name", "socketio").len(), 1, "{list}");

    // A stream that names no user gets a generated one, `uid-...`, as its client id too.
    let anon = json!({"transport": {"type": "socketio", "apiKey": "acme", "secretKey": "acme-secret",
                                    "ws_host": "127.0.0.1", "port": b.port, "ssl": false}});
    n.stream("anon", anon).await;
    let (_, res) = n
        .call("getUserConnections", json!([{"protocol": "socketio"}]))
        .await;
    let others: Vec<&Value> = res
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["userid"] != "uid-1")
        .collect();
    assert_eq!(others.len(), 1, "{res}");
    let uid = others[0]["userid"].as_str().unwrap();
    assert!(uid.starts_with("uid-") && uid.len() > 10, "{res}");
    assert_eq!(others[0]["clientid"], uid);
    n.send(json!({"op": "disconnect", "name": "anon"})).await;
    n.expect("disconnected", |v| {
        v["ev"] == "disconnected" && v["name"] == "anon"
    })
    .await;

    // Dropping the socket.io user: 200 with an empty body, the client is told not to come
    // back (no `reconnected`), the listing no longer has it.
    let (err, res) = n
        .call(
            "dropUserConnection",
            json!([{"userid": "uid-1", "protocol": "socketio"}]),
        )
        .await;
    assert_eq!((err, res), (Value::Null, json!("")));
    n.expect("disconnected", |v| {
        v["ev"] == "disconnected" && v["name"] == "s1"
    })
    .await;
    let (_, res) = n.call("getUserConnections", json!([])).await;
    assert_eq!(by(&res, "protocol", "mqtt").len(), 1, "{res}");
    assert_eq!(by(&res, "protocol", "socketio").len(), 0, "{res}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, res) = n
        .call("getUserConnections", json!([{"protocol": "socketio"}]))
        .await;
    assert_eq!(res, json!([]), "the dropped socket.io client came back");
    assert!(!n.seen("reconnected", "s1"));

    // Dropping by sid (the MQTT client id), and dropping nothing, both answer ''.
    let (err, res) = n
        .call(
            "dropUserConnection",
            json!([{"userid": "cid-m", "sid": "cid-m"}]),
        )
        .await;
    assert_eq!((err, res), (Value::Null, json!("")));
    n.expect("disconnected", |v| {
        v["ev"] == "disconnected" && v["name"] == "m1"
    })
    .await;
    let (err, res) = n
        .call("dropUserConnection", json!([{"userid": "nobody"}]))
        .await;
    assert_eq!((err, res), (Value::Null, json!("")));

    // A key with connections:read lists but cannot drop; another account sees nothing.
    n.connector(&b, "reader", "reader-secret").await;
    let (err, _) = n.call("getUserConnections", json!([])).await;
    assert_eq!(err, Value::Null);
    let (err, _) = n
        .call("dropUserConnection", json!([{"userid": "cid-m"}]))
        .await;
    assert!(err.as_str().unwrap_or("").contains("1102"), "{err}");
    n.connector(&b, "zeta", "zeta-secret").await;
    let (_, res) = n.call("getUserConnections", json!([])).await;
    assert_eq!(res, json!([]));
}

#[tokio::test]
async fn socketio_mqtt_and_rest_meet_on_channel_resource_topics() {
    let b = start(&[]).await;
    let mut n = Node::start().await;
    n.connector(&b, "acme", "acme-secret").await;
    n.stream("a", sio(&b, "acme", "acme-secret", "uid-a", "alice"))
        .await;
    assert_eq!(
        n.subscribe("a", "demo", "res", json!({})).await["ev"],
        "subscribed"
    );
    // Private and write access: the SDK signs with the secret key, the host checks it.
    let rw = json!({"read": true, "write": true});
    let ok = n.subscribe("a", "private-demo", "*", rw.clone()).await;
    assert_eq!(ok["ev"], "subscribed", "{ok}");

    // A wrong secret: refused by the server at once (not the SDK's 6 s timeout), and the
    // refused subscription never shows in the listing.
    n.stream("w", sio(&b, "acme", "not-the-secret", "uid-w", "mallory"))
        .await;
    let no = n.subscribe("w", "private-demo", "res", json!({})).await;
    assert_eq!(no["ev"], "subscribeError", "{no}");
    assert!(
        no["message"].as_str().unwrap().contains("signature"),
        "{no}"
    );
    let (_, res) = n
        .call("getUserConnections", json!([{"userid": "uid-w"}]))
        .await;
    assert_eq!(res[0]["subscriptions"], json!([]), "{res}");

    // A plain MQTT client of the same account, with the secret key as username.
    let mut o = v3::opts(&b.tb, "plain", Tr::Tcp);
    o.set_credentials("acme-secret", "");
    let (mut m, _) = v3::connect(o).await;
    m.c.subscribe("private-demo/res", v3::QoS::AtMostOnce)
        .await
        .unwrap();
    m.c.subscribe("demo/res", v3::QoS::AtMostOnce)
        .await
        .unwrap();
    m.suback().await;
    m.suback().await;

    // socket.io publish: back to its own session, and to MQTT as the SDK's JSON.
    let cmd = json!({"op": "publish", "name": "a", "channel": "private-demo",
                     "resource": "res", "data": {"t": 1}});
    n.send(cmd).await;
    let msg = n.message("a").await;
    assert_eq!(
        (&msg["channel"], &msg["resource"], &msg["data"]),
        (&json!("private-demo"), &json!("res"), &json!({"t": 1}))
    );
    let p = m.publish().await;
    let v: Value = serde_json::from_slice(&p.payload)
        .unwrap_or_else(|e| panic!("{e}: {:?} on {}", p.payload, p.topic));
    assert_eq!(v["data"], json!({"t": 1}));
    assert_eq!(v["ispublic"], false);

    // A raw MQTT payload reaches socket.io wrapped as data.
    m.c.publish("demo/res", v3::QoS::AtMostOnce, false, "Hello World")
        .await
        .unwrap();
    let msg = n.message("a").await;
    assert_eq!(
        (&msg["channel"], &msg["data"]),
        (&json!("demo"), &json!("Hello World"))
    );
    // ...and back to its publisher unchanged, as Beebotte's tests expect of plain MQTT.
    assert_eq!(&m.publish().await.payload[..], b"Hello World");

    // A REST publish (signed by the Connector) reaches both.
    let (err, res) = n
        .call(
            "publish",
            json!([{"channel": "demo", "resource": "res", "data": {"x": 1}}]),
        )
        .await;
    assert_eq!((err, res), (Value::Null, json!(true)));
    assert_eq!(n.message("a").await["data"], json!({"x": 1}));
    let p = m.publish().await;
    assert_eq!(p.topic, "demo/res");
    let v: Value = serde_json::from_slice(&p.payload).unwrap();
    assert_eq!(v["data"], json!({"x": 1}));

    // A socket.io write is kept: the Connector reads it back (the SDK reads and writes
    // only public channels).
    let rw_ok = n.subscribe("a", "logs", "temp", rw).await;
    assert_eq!(rw_ok["ev"], "subscribed", "{rw_ok}");
    let cmd =
        json!({"op": "write", "name": "a", "channel": "logs", "resource": "temp", "data": 42});
    n.send(cmd).await;
    assert_eq!(n.message("a").await["write"], true);
    let (err, recs) = n
        .call(
            "readResource",
            json!([{"channel": "logs", "resource": "temp", "limit": 5}]),
        )
        .await;
    assert_eq!(err, Value::Null, "{recs}");
    assert_eq!(recs.as_array().unwrap().len(), 1, "{recs}");
    assert_eq!(recs[0]["data"], 42);

    // Bulk calls: a write answers one `true` per record, a publish `true`; both deliver.
    let bulk = json!([{"channel": "logs", "records": [{"resource": "temp", "data": 1},
                                                      {"resource": "temp", "data": 2}]}]);
    let (err, res) = n.call("writeBulk", bulk).await;
    assert_eq!((err, res), (Value::Null, json!([true, true])));
    assert_eq!(n.message("a").await["data"], 1);
    assert_eq!(n.message("a").await["data"], 2);
    let bulk = json!([{"channel": "demo", "records": [{"resource": "res", "data": "b1"}]}]);
    let (err, res) = n.call("publishBulk", bulk).await;
    assert_eq!((err, res), (Value::Null, json!(true)));
    assert_eq!(n.message("a").await["data"], "b1");
}

#[tokio::test]
async fn python_sdk_publishes_writes_reads_and_manages_connections() {
    let b = start(&[
        ("records_per_resource = 1000", "records_per_resource = 3"),
        ("resources_per_account = 100", "resources_per_account = 2"),
    ])
    .await;
    let acme = json!({"akey": "acme", "skey": "acme-secret"});
    let r = py(
        &b,
        acme.clone(),
        json!([
            ["publish", ["demo", "res", "hello"], {}],
            ["write", ["demo", "res", 1], {}],
            ["write", ["demo", "res", 2], {}],
            ["write", ["demo", "res", 3], {}],
            ["write", ["demo", "res", 4], {}],
            ["read", ["demo", "res"], {"limit": 10}],
            ["read", ["demo", "res"], {}],
            ["getUserConnections", [], {}],
            ["write", ["demo", "other", 1], {}],
            ["write", ["demo", "third", 1], {}],
        ]),
    )
    .await;
    assert_eq!(r[0], json!({"ok": true}), "{r:?}");
    assert_eq!(r[4], json!({"ok": true}), "{r:?}");
    let data: Vec<&Value> = r[5]["ok"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["data"])
        .collect();
    assert_eq!(
        data,
        [&json!(2), &json!(3), &json!(4)],
        "the newest 3, oldest first"
    );
    assert_eq!(
        r[6]["ok"].as_array().unwrap().len(),
        1,
        "limit defaults to 1"
    );
    assert_eq!(r[6]["ok"][0]["data"], 4);
    assert_eq!(r[7], json!({"ok": []}));
    // One account writes to at most resources_per_account resources.
    assert_eq!(r[8], json!({"ok": true}), "{r:?}");
    assert_eq!(r[9]["error"], "PayloadLimitError", "{r:?}");

    // Python lists by user id and by sid, and drops by user id + sid.
    let mut n = Node::start().await;
    n.stream("p", sio(&b, "acme", "acme-secret", "uid-p", "pat"))
        .await;
    let sid = n.sid("p").await;
    let r = py(
        &b,
        acme.clone(),
        json!([
            ["getUserConnections", [], {"userid": "uid-p"}],
            ["getUserConnections", [], {"sid": sid}],
            ["dropUserConnection", ["uid-p"], {"sid": sid}],
        ]),
    )
    .await;
    assert_eq!(r[0]["ok"][0]["sid"], sid, "{r:?}");
    assert_eq!(r[1]["ok"][0]["userid"], "uid-p", "{r:?}");
    assert_eq!(r[2], json!({"ok": {}}), "{r:?}");
    n.expect("disconnected", |v| {
        v["ev"] == "disconnected" && v["name"] == "p"
    })
    .await;

    // Errors arrive as the SDK's own exception classes.
    let (iam, _) = token(&b, json!({"kind": "iam", "acl": ["data:write"]})).await;
    let (chan, _) = token(
        &b,
        json!({"kind": "channel", "channel": "demo", "read": true}),
    )
    .await;
    let wrong = py(
        &b,
        json!({"akey": "acme", "skey": "nope"}),
        json!([["publish", ["demo", "res", 1], {}]]),
    )
    .await;
    assert_eq!(wrong[0]["error"], "AuthenticationError", "{wrong:?}");
    let r = py(
        &b,
        json!({"token": iam}),
        json!([["publish", ["demo", "res", 1], {}]]),
    )
    .await;
    assert_eq!(r[0], json!({"ok": true}), "{r:?}");
    let r = py(
        &b,
        json!({"token": chan}),
        json!([["publish", ["demo", "res", 1], {}]]),
    )
    .await;
    assert_eq!(r[0]["error"], "NotAllowedError", "{r:?}");
    let r = py(
        &b,
        json!({"token": "iamtkn_unknown"}),
        json!([["publish", ["demo", "res", 1], {}]]),
    )
    .await;
    assert_eq!(r[0]["error"], "AuthenticationError", "{r:?}");
}

/// A signed request built by hand: (status, body).
async fn signed(
    b: &Bee,
    method: &str,
    target: &str,
    date: &str,
    sign_target: &str,
) -> (u16, Value) {
    let sig = hmac_b64(
        "acme-secret",
        &format!("{method}\n\n\n{date}\n{sign_target}"),
    );
    let auth = format!("acme:{sig}");
    let a = common::request(
        b.addr(),
        method,
        target,
        None,
        &[("Authorization", &auth), ("Date", date)],
        b"",
    )
    .await;
    (
        a.status,
        serde_json::from_str(&a.body).unwrap_or(json!(a.body)),
    )
}

fn http_date(offset_secs: i64) -> String {
    let now = std::time::SystemTime::now();
    let t = if offset_secs >= 0 {
        now + Duration::from_secs(offset_secs as u64)
    } else {
        now - Duration::from_secs(offset_secs.unsigned_abs())
    };
    httpdate::fmt_http_date(t)
}

#[tokio::test]
async fn signed_requests_and_tokens_are_checked_exactly() {
    let b = start(&[]).await;
    let now = http_date(0);
    let auth_failed = json!({"error": {"code": 1101}});
    let code = |v: &Value| v["error"]["code"].clone();

    // The raw target is what is signed: a trailing `?` matters, both ways.
    assert_eq!(
        signed(&b, "GET", "/v1/connections?", &now, "/v1/connections?")
            .await
            .0,
        200
    );
    let (st, v) = signed(&b, "GET", "/v1/connections", &now, "/v1/connections?").await;
    assert_eq!(
        (st, code(&v)),
        (400, auth_failed["error"]["code"].clone()),
        "{v}"
    );
    // Python's Date spelling is accepted; a stale Date or none is refused.
    let py_date = now.replace("GMT", "-0000");
    assert_eq!(
        signed(&b, "GET", "/v1/connections", &py_date, "/v1/connections")
            .await
            .0,
        200
    );
    let stale = http_date(-2 * 3600);
    let (st, v) = signed(&b, "GET", "/v1/connections", &stale, "/v1/connections").await;
    assert_eq!((st, code(&v)), (400, json!(1101)), "{v}");
    let no_date = common::request(
        b.addr(),
        "GET",
        "/v1/connections",
        None,
        &[("Authorization", "acme:AAAA")],
        b"",
    )
    .await;
    assert_eq!(no_date.status, 400, "{}", no_date.body);
    // No credentials, a malformed header, a body whose Content-MD5 does not match.
    let a = common::request(b.addr(), "GET", "/v1/connections", None, &[], b"").await;
    assert_eq!(a.status, 400);
    assert_eq!(code(&serde_json::from_str(&a.body).unwrap()), 1101);
    let a = common::request(
        b.addr(),
        "GET",
        "/v1/connections",
        None,
        &[("Authorization", "garbage"), ("Date", &now)],
        b"",
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = common::request(
        b.addr(),
        "POST",
        "/v1/data/publish/demo/res",
        None,
        &[
            ("Authorization", "acme:AAAA"),
            ("Date", &now),
            ("Content-MD5", "AAAA"),
            ("Content-Type", "application/json"),
        ],
        b"{\"data\":1}",
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);

    // IAM tokens: the right decides (405/1102 without it); unknown tokens are 400/1101.
    let (read_tok, _) = token(&b, json!({"kind": "iam", "acl": ["admin:connection:read"]})).await;
    let (data_tok, _) = token(&b, json!({"kind": "iam", "acl": ["data:read"]})).await;
    let addr = b.addr();
    let get = |t: String| async move {
        let a = common::request(
            addr,
            "GET",
            "/v1/connections",
            None,
            &[("X-Auth-Token", &t)],
            b"",
        )
        .await;
        (
            a.status,
            serde_json::from_str::<Value>(&a.body).unwrap_or(Value::Null),
        )
    };
    assert_eq!(get(read_tok.clone()).await, (200, json!([])));
    let (st, v) = get(data_tok).await;
    assert_eq!((st, code(&v)), (405, json!(1102)), "{v}");
    let (st, v) = get("iamtkn_nope".into()).await;
    assert_eq!((st, code(&v)), (400, json!(1101)), "{v}");
    // Node's Connector uses an IAM token for connection management.
    let mut n = Node::start().await;
    n.token_connector(&b, &read_tok).await;
    let (err, res) = n.call("getUserConnections", json!([])).await;
    assert_eq!((err, res), (Value::Null, json!([])));
    // Tokens are admin-only to manage and never listed with their secret.
    let (st, body) = common::http(
        b.addr(),
        "GET",
        "/v1/apiary/tokens",
        Some(("reader", "reader-secret")),
        b"",
    )
    .await;
    assert_eq!(st, 405, "{body}");
    let (st, body) = common::http(
        b.addr(),
        "GET",
        "/v1/apiary/tokens",
        Some(("acme", "acme-secret")),
        b"",
    )
    .await;
    assert_eq!(st, 200);
    assert!(
        !body.contains(&read_tok) && body.contains("admin:connection:read"),
        "{body}"
    );
    let (st, body) = common::http(
        b.addr(),
        "POST",
        "/v1/apiary/tokens",
        Some(("acme", "acme-secret")),
        br#"{"kind":"iam","acl":["fly"]}"#,
    )
    .await;
    assert_eq!(st, 400, "{body}");

    // Parameters and routes.
    let (st, v) = signed(
        &b,
        "GET",
        "/v1/connections?protocol=ftp",
        &now,
        "/v1/connections?protocol=ftp",
    )
    .await;
    assert_eq!((st, code(&v)), (400, json!(1401)), "{v}");
    let (st, v) = signed(&b, "GET", "/v1/nothing", &now, "/v1/nothing").await;
    assert_eq!((st, code(&v)), (404, json!(1301)), "{v}");
    // No channel registry, so no public channels: the unsigned public read is a 404.
    let a = common::request(
        b.addr(),
        "GET",
        "/v1/public/data/read/acme/demo/res",
        None,
        &[],
        b"",
    )
    .await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(code(&serde_json::from_str(&a.body).unwrap()), 1301);
    let (st, v) = signed(
        &b,
        "DELETE",
        "/v1/connections/drop/nobody?",
        &now,
        "/v1/connections/drop/nobody?",
    )
    .await;
    assert_eq!((st, v), (200, json!("")));
}

#[tokio::test]
async fn mqtt_credentials_and_topic_rules() {
    let b = start(&[]).await;
    let tb = &b.tb;
    let (iam, iam_id) = token(
        &b,
        json!({"kind": "iam", "acl": ["data:read", "data:write"]}),
    )
    .await;
    let (chan, _) = token(
        &b,
        json!({"kind": "channel", "channel": "ch", "read": true}),
    )
    .await;

    // The SDK's CONNECT modes (3.1.1: 0 accepted, 4 bad credentials).
    let sig = format!("alice:{}", hmac_b64("acme-secret", "alice"));
    assert_eq!(
        connack(tb, 4, "m1", Some("acme-secret"), Some("")).await,
        0,
        "secret key"
    );
    assert_eq!(
        connack(tb, 4, "m2", Some("acme"), Some(&sig)).await,
        0,
        "signature"
    );
    assert_eq!(
        connack(tb, 4, "m3", Some("acme"), Some("alice:AAAA")).await,
        4,
        "bad signature"
    );
    assert_eq!(
        connack(tb, 4, "m4", Some(&iam), Some("")).await,
        0,
        "IAM token"
    );
    assert_eq!(
        connack(tb, 4, "m5", Some("token:nope"), Some("")).await,
        4,
        "unknown token"
    );
    assert_eq!(
        connack(tb, 4, "m6", Some("not-a-secret"), Some("")).await,
        4,
        "unknown secret"
    );

    // A read-only channel token: its channel only, no publishing.
    let mut o = v3::opts(tb, "ct", Tr::Tcp);
    o.set_credentials(chan.as_str(), "");
    let (mut c, _) = v3::connect(o).await;
    c.c.subscribe("other/r", v3::QoS::AtMostOnce).await.unwrap();
    let v3::Packet::SubAck(s) = c.suback().await else {
        unreachable!()
    };
    assert_eq!(s.return_codes, [rumqttc::SubscribeReasonCode::Failure]);
    c.c.subscribe("ch/r", v3::QoS::AtMostOnce).await.unwrap();
    let v3::Packet::SubAck(s) = c.suback().await else {
        unreachable!()
    };
    assert_eq!(
        s.return_codes,
        [rumqttc::SubscribeReasonCode::Success(v3::QoS::AtMostOnce)]
    );
    c.c.publish("ch/r", v3::QoS::AtMostOnce, false, "refused")
        .await
        .unwrap();

    // A key's client: topics are channel/resource; deeper ones are refused.
    let mut o = v3::opts(tb, "k", Tr::Tcp);
    o.set_credentials("acme-secret", "");
    let (mut k, _) = v3::connect(o).await;
    k.c.subscribe("ch/#", v3::QoS::AtMostOnce).await.unwrap();
    k.suback().await;
    k.c.publish("ch/r/deeper", v3::QoS::AtMostOnce, false, "no")
        .await
        .unwrap();
    k.c.publish("ch/r", v3::QoS::AtMostOnce, false, "yes")
        .await
        .unwrap();
    let p = k.publish().await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..]),
        ("ch/r", &b"yes"[..]),
        "own publish, deeper and token's refused"
    );
    // The channel token's client got the key's publish, not its own refused one.
    let p = c.publish().await;
    assert_eq!(&p.payload[..], b"yes");

    // The registry records the credential, never a secret or token.
    let list = emqx_clients(&b).await;
    let k_entry = by(&list["data"], "clientid", "k")[0];
    assert_eq!(k_entry["username"], "bbt-key:acme");
    assert_eq!(k_entry["proto_name"], "MQTT");
    let body = list.to_string();
    assert!(!body.contains(&chan) && !body.contains(&iam), "{body}");

    // Revoking a token drops the connections it opened.
    let mut o = v3::opts(tb, "it", Tr::Tcp);
    o.set_credentials(iam.as_str(), "");
    let (mut it, _) = v3::connect(o).await;
    let (st, body) = common::http(
        b.addr(),
        "DELETE",
        &format!("/v1/apiary/tokens/{iam_id}"),
        Some(("acme", "acme-secret")),
        b"",
    )
    .await;
    assert_eq!((st, body.as_str()), (200, ""));
    it.closed().await;
    assert_eq!(
        connack(tb, 4, "m7", Some(&iam), Some("")).await,
        4,
        "revoked"
    );
}

#[tokio::test]
async fn node_sdk_streams_over_mqtt() {
    let b = start(&[]).await;
    let mut n = Node::start().await;
    n.connector(&b, "acme", "acme-secret").await;
    // Signature mode: username = API key, password = name:HMAC(secret, name).
    let t = json!({"apiKey": "acme", "secretKey": "acme-secret", "username": "alice", "clientId": "uid-m"});
    n.stream("m", mqtt(&b, t)).await;
    assert_eq!(
        n.subscribe("m", "demo", "res", json!({})).await["ev"],
        "subscribed"
    );
    // Its own publish comes back, as the SDK's tests expect.
    n.send(
        json!({"op": "publish", "name": "m", "channel": "demo", "resource": "res", "data": "hi"}),
    )
    .await;
    let msg = n.message("m").await;
    assert_eq!(
        (&msg["channel"], &msg["data"]),
        (&json!("demo"), &json!("hi"))
    );
    // A channel-wide subscription (`other/#`) gets a REST publish.
    let sub = json!({"op": "subscribe", "name": "m", "channel": "other", "args": {}});
    n.send(sub).await;
    n.expect("subscribed", |v| {
        v["ev"] == "subscribed" && v["channel"] == "other"
    })
    .await;
    let (err, _) = n
        .call(
            "publish",
            json!([{"channel": "other", "resource": "xy", "data": [1, 2]}]),
        )
        .await;
    assert_eq!(err, Value::Null);
    let msg = n.message("m").await;
    assert_eq!(
        (&msg["resource"], &msg["data"]),
        (&json!("xy"), &json!([1, 2]))
    );

    // Token mode with a read-only channel token: another channel is refused (SUBACK 0x80).
    let (chan, _) = token(
        &b,
        json!({"kind": "channel", "channel": "demo", "read": true}),
    )
    .await;
    n.stream("t", mqtt(&b, json!({"token": chan, "clientId": "uid-t"})))
        .await;
    let no = n.subscribe("t", "elsewhere", "r", json!({})).await;
    assert_eq!(no["ev"], "subscribeError", "{no}");
    assert_eq!(
        n.subscribe("t", "demo", "res", json!({})).await["ev"],
        "subscribed"
    );

    // The same token over socket.io: held to its channel even for public reads, and
    // revoking it drops the socket too.
    let (chan2, chan2_id) = token(
        &b,
        json!({"kind": "channel", "channel": "demo", "read": true, "write": true}),
    )
    .await;
    let opts = json!({"transport": {"type": "socketio", "token": chan2, "ws_host": "127.0.0.1",
                                    "port": b.port, "ssl": false},
                      "userinfo": {"userid": "uid-s", "username": "sam"}});
    n.stream("s", opts).await;
    let no = n.subscribe("s", "elsewhere", "r", json!({})).await;
    assert_eq!(no["ev"], "subscribeError", "{no}");
    let rw = json!({"read": true, "write": true});
    assert_eq!(
        n.subscribe("s", "demo", "res", rw).await["ev"],
        "subscribed"
    );
    let (st, _) = common::http(
        b.addr(),
        "DELETE",
        &format!("/v1/apiary/tokens/{chan2_id}"),
        Some(("acme", "acme-secret")),
        b"",
    )
    .await;
    assert_eq!(st, 200);
    n.expect("disconnected", |v| {
        v["ev"] == "disconnected" && v["name"] == "s"
    })
    .await;
}

/// A socket.io client by hand (Engine.IO v4 over WebSocket), for what the SDK never sends.
struct RawSio {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    sid: String,
}

impl RawSio {
    async fn connect(b: &Bee, query: &str) -> RawSio {
        let tcp = tokio::net::TcpStream::connect(b.addr()).await.unwrap();
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket&{query}",
            b.addr()
        );
        let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        let mut c = RawSio {
            ws,
            sid: String::new(),
        };
        assert!(c.text().await.starts_with('0'), "Engine.IO open");
        c.send("40").await;
        assert!(c.text().await.starts_with("40"), "namespace connected");
        let getsid = c.event().await;
        assert_eq!(getsid[0], "getsid", "{getsid}");
        c.sid = getsid[1].as_str().unwrap().to_string();
        c
    }

    async fn send(&mut self, t: &str) {
        use futures_util::SinkExt;
        let m = tokio_tungstenite::tungstenite::Message::Text(t.to_string().into());
        self.ws.send(m).await.unwrap();
    }

    /// The next text frame (Engine.IO pings answered).
    async fn text(&mut self) -> String {
        use futures_util::StreamExt;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("a frame");
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                if t.as_str() == "2" {
                    self.send("3").await;
                    continue;
                }
                return t.to_string();
            }
        }
    }

    /// The next socket.io event as its JSON array.
    async fn event(&mut self) -> Value {
        let t = self.text().await;
        let body = t
            .strip_prefix("42")
            .unwrap_or_else(|| panic!("an event: {t}"));
        serde_json::from_str(body).unwrap()
    }

    async fn message(&mut self, req: Value) {
        self.send(&format!("42{}", json!(["message", req]))).await;
    }

    /// A control subscribe of `data`; the `control` answer's event name and message.
    async fn subscribe(&mut self, data: Value) -> (String, String) {
        let req = json!({"version": 1, "channel": "control", "event": "subscribe", "data": data});
        self.message(req).await;
        let ev = self.event().await;
        assert_eq!(ev[0], "control", "{ev}");
        let msg = ev[1]["message"].as_str().unwrap_or("").to_string();
        (ev[1]["event"].as_str().unwrap().to_string(), msg)
    }
}

#[tokio::test]
async fn hostile_socketio_requests_are_refused_and_the_connection_serves_on() {
    let b = start(&[]).await;
    let mut c = RawSio::connect(&b, "key=acme&userid=uid-r").await;

    // Garbage is ignored; a bad name is refused; the connection still serves.
    c.send(r#"42["message","not an object"]"#).await;
    c.send(r#"42["message"]"#).await;
    c.send(r#"42["elsewhere",{"x":1}]"#).await;
    let (ev, why) = c
        .subscribe(json!({"channel": "a/b", "resource": "r", "read": true}))
        .await;
    assert_eq!(ev, "subscribeError", "{why}");
    let (ev, _) = c
        .subscribe(json!({"channel": "demo", "resource": "res", "read": true}))
        .await;
    assert_eq!(ev, "subscribed");

    // Private: a signature made for another sid, or naming another user, is refused; the
    // right one is accepted.
    let sign = |sid: &str, userid: &str| {
        let s = format!("{sid}:private-c.r:ttl=0:read=true:write=false:userid={userid}");
        format!("acme:{}", hmac_b64("acme-secret", &s))
    };
    let sub = |sid: &str, userid: &str, sig: String| {
        json!({"channel": "private-c", "resource": "r", "ttl": 0, "read": true, "write": false,
               "sid": sid, "userid": userid, "sig": sig})
    };
    let sid = c.sid.clone();
    let (ev, why) = c
        .subscribe(sub("other-sid", "uid-r", sign("other-sid", "uid-r")))
        .await;
    assert_eq!(ev, "subscribeError", "{why}");
    let (ev, why) = c.subscribe(sub(&sid, "uid-x", sign(&sid, "uid-x"))).await;
    assert_eq!(
        (ev.as_str(), why.contains("userid")),
        ("subscribeError", true),
        "{why}"
    );
    let (ev, why) = c.subscribe(sub(&sid, "uid-r", sign(&sid, "uid-r"))).await;
    assert_eq!(ev, "subscribed", "{why}");

    // A publisher cannot make its message look like another channel's.
    let mut o = v3::opts(&b.tb, "forger", Tr::Tcp);
    o.set_credentials("acme-secret", "");
    let (m, _) = v3::connect(o).await;
    let forged = r#"{"data":1,"channel":"private-c","resource":"r"}"#;
    m.c.publish("demo/res", v3::QoS::AtMostOnce, false, forged)
        .await
        .unwrap();
    let ev = c.event().await;
    assert_eq!(ev[0], "message", "{ev}");
    assert_eq!(
        (&ev[1]["channel"], &ev[1]["resource"]),
        (&json!("demo"), &json!("res"))
    );
}
