//! Durable state across restarts: persistent sessions, their queued and inflight messages
//! and retained messages survive SIGKILL of the real binary (sync = "always"), unacked
//! deliveries come back with DUP, and a corrupt store stops startup with its path.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use apiary::store::records::session_key;
use apiary::store::{Backend, FjallBackend, Space, Write};
use common::{v3, TestBroker, Tr, WAIT};
use rumqttc::{ConnectReturnCode, Event, MqttOptions, Packet, QoS};

/// The broker binary on ephemeral ports over `dir`.
struct Proc {
    child: Child,
    tcp: u16,
}

impl Proc {
    fn start(dir: &std::path::Path, sync: &str) -> Self {
        let cfg = dir.join("apiary.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\nsys_interval_secs = 0\n[listeners]\ntcp = \"127.0.0.1:0\"\n[store]\nsync = \"{sync}\"\n[auth]\nallow_anonymous = true\n",
                dir.join("data")
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_apiary"))
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if line.contains("listening") && line.contains("listener=\"tcp\"") {
                    let addr = line
                        .split("addr=")
                        .nth(1)
                        .unwrap()
                        .split_whitespace()
                        .next()
                        .unwrap();
                    let _ = tx.send(addr.parse::<std::net::SocketAddr>().unwrap().port());
                }
            }
        });
        let tcp = rx.recv_timeout(WAIT).expect("tcp listener line");
        Proc { child, tcp }
    }

    fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn opts(id: &str, port: u16, clean: bool) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_clean_session(clean);
    o
}

/// Polls until `want` packets matching `f` arrived; returns them.
async fn collect(
    el: &mut rumqttc::EventLoop,
    n: usize,
    mut f: impl FnMut(&Packet) -> bool,
) -> Vec<Packet> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < n {
            if let Event::Incoming(p) = el.poll().await.expect("connection") {
                if f(&p) {
                    got.push(p);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("only {} of {n} packets", got.len()));
    got
}

#[tokio::test]
async fn sigkill_with_sync_always_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), "always");

    // A persistent subscriber goes offline.
    let (sub, mut sel) = rumqttc::AsyncClient::new(opts("keeper", p.tcp, false), 10);
    sub.subscribe("d/#", QoS::AtLeastOnce).await.unwrap();
    collect(&mut sel, 1, |p| matches!(p, Packet::SubAck(_))).await;
    sub.disconnect().await.unwrap();
    let _ = tokio::time::timeout(WAIT, async { while sel.poll().await.is_ok() {} }).await;

    // N messages and a retained one, each acknowledged (so durable: sync = "always").
    const N: usize = 50;
    let (pubc, mut pel) = rumqttc::AsyncClient::new(opts("pub", p.tcp, true), 100);
    for i in 0..N {
        pubc.publish("d/x", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    pubc.publish("r/state", QoS::AtLeastOnce, true, "retained")
        .await
        .unwrap();
    collect(&mut pel, N + 1, |p| matches!(p, Packet::PubAck(_))).await;

    p.kill9();
    let p = Proc::start(dir.path(), "always");

    let (_sub, mut sel) = rumqttc::AsyncClient::new(opts("keeper", p.tcp, false), 10);
    let ack = collect(&mut sel, 1, |p| matches!(p, Packet::ConnAck(_))).await;
    assert!(
        matches!(&ack[0], Packet::ConnAck(a) if a.session_present && a.code == ConnectReturnCode::Success)
    );
    let msgs = collect(&mut sel, N, |p| matches!(p, Packet::Publish(_))).await;
    for (i, m) in msgs.iter().enumerate() {
        let Packet::Publish(m) = m else {
            unreachable!()
        };
        assert_eq!(
            &m.payload[..],
            format!("m{i}").as_bytes(),
            "all {N}, in order"
        );
    }
    let (late, mut lel) = rumqttc::AsyncClient::new(opts("late", p.tcp, true), 10);
    late.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let r = collect(&mut lel, 1, |p| matches!(p, Packet::Publish(_))).await;
    assert!(matches!(&r[0], Packet::Publish(m) if m.retain && &m.payload[..] == b"retained"));
}

#[tokio::test]
async fn unacknowledged_deliveries_come_back_with_dup_after_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), "always");
    let mut o = opts("slow", p.tcp, false);
    o.set_manual_acks(true);
    let (c, mut el) = rumqttc::AsyncClient::new(o.clone(), 10);
    c.subscribe("u/#", QoS::ExactlyOnce).await.unwrap();
    collect(&mut el, 1, |p| matches!(p, Packet::SubAck(_))).await;
    let (pubc, mut pel) = rumqttc::AsyncClient::new(opts("pub", p.tcp, true), 10);
    pubc.publish("u/1", QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    pubc.publish("u/2", QoS::ExactlyOnce, false, "two")
        .await
        .unwrap();
    collect(&mut pel, 1, |p| matches!(p, Packet::PubAck(_))).await;
    let first = collect(&mut el, 2, |p| matches!(p, Packet::Publish(_))).await;
    // Never acknowledged. The packet ids were written when sent; give the writer a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.kill9();
    drop(el);

    let p = Proc::start(dir.path(), "always");
    o.set_manual_acks(false);
    let mut o2 = opts("slow", p.tcp, false);
    o2.set_manual_acks(false);
    let (_c, mut el) = rumqttc::AsyncClient::new(o2, 10);
    let again = collect(&mut el, 2, |p| matches!(p, Packet::Publish(_))).await;
    for (a, b) in first.iter().zip(again.iter()) {
        let (Packet::Publish(a), Packet::Publish(b)) = (a, b) else {
            unreachable!()
        };
        assert!(b.dup, "redelivered with DUP: {b:?}");
        assert_eq!(
            (a.pkid, &a.payload),
            (b.pkid, &b.payload),
            "same packet id and payload"
        );
    }
}

#[tokio::test]
async fn graceful_restart_restores_sessions_subscriptions_and_queues() {
    let tb = TestBroker::start().await;
    let data = tb.dir.path().join("data");
    let mut o = v3::opts(&tb, "p", Tr::Tcp);
    o.set_clean_session(false);
    o.set_credentials("user-p", "pw");
    let (mut c, _) = v3::connect(o).await;
    c.c.subscribe("q/#", v3::QoS::ExactlyOnce).await.unwrap();
    c.suback().await;
    c.c.disconnect().await.unwrap();
    common::eventually("offline", || {
        tb.broker()
            .registry
            .get("default", "p")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    let (pubc, _) = v3::connect(v3::opts(&tb, "pub", Tr::Tcp)).await;
    for i in 0..3u8 {
        pubc.c
            .publish("q/1", v3::QoS::AtLeastOnce, false, vec![i])
            .await
            .unwrap();
    }
    common::eventually("queued", || {
        tb.broker()
            .registry
            .get("default", "p")
            .unwrap()
            .state
            .lock()
            .queue
            .len()
            == 3
    })
    .await;
    let TestBroker { server, dir } = tb;
    server.shutdown().await;

    let mut cfg = apiary::Config::ephemeral(data);
    cfg.sys_interval_secs = 0;
    let server = apiary::start(cfg).await.unwrap();
    let snap = server
        .broker
        .registry
        .snapshot("default", "p", &server.broker.config())
        .expect("session restored");
    assert_eq!(
        (snap.connected, snap.mqueue_len, snap.username.as_deref()),
        (false, 3, Some("user-p"))
    );
    assert_eq!(snap.subscriptions[0].topic, "q/#");
    assert_eq!(snap.subscriptions[0].qos, 2);
    // Routing works for the restored subscription.
    server
        .broker
        .publish_as_broker(
            "default",
            "q/2",
            bytes::Bytes::from_static(b"after"),
            rmqtt_codec::types::QoS::AtLeastOnce,
            false,
        )
        .unwrap();
    let tb = TestBroker { server, dir };
    let mut o = v3::opts(&tb, "p", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, ack) = v3::connect(o).await;
    assert!(matches!(ack, v3::Packet::ConnAck(a) if a.session_present));
    let got: Vec<Vec<u8>> = vec![
        c.publish().await.payload.to_vec(),
        c.publish().await.payload.to_vec(),
        c.publish().await.payload.to_vec(),
        c.publish().await.payload.to_vec(),
    ];
    assert_eq!(got, vec![vec![0], vec![1], vec![2], b"after".to_vec()]);
}

#[tokio::test]
async fn a_corrupt_store_stops_startup_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/store");
    {
        let b = FjallBackend::open(&store).unwrap();
        b.write(vec![Write::Put(
            Space::Sessions,
            session_key("default", "x"),
            b"\xc1 not msgpack".to_vec(),
        )])
        .unwrap();
        b.flush(true).unwrap();
    }
    let cfg = apiary::Config::ephemeral(dir.path().join("data"));
    let err = apiary::start(cfg).await.err().expect("refused").to_string();
    assert!(
        err.contains(&store.display().to_string()) && err.contains("sessions"),
        "{err}"
    );

    // A data dir whose store path is not a directory at all.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/store"), b"not a directory").unwrap();
    let cfg = apiary::Config::ephemeral(dir.path().join("data"));
    let err = apiary::start(cfg).await.err().expect("refused").to_string();
    assert!(err.contains("store"), "{err}");
}

/// A broker stopped the moment it started (before its tasks first ran) still ends them
/// all and lets go of its store: a new one opens the same data dir at once.
#[tokio::test]
async fn a_broker_stopped_right_after_starting_lets_go_of_everything() {
    let tb = TestBroker::start().await;
    let data = tb.dir.path().join("data");
    let TestBroker { server, dir } = tb;
    server.shutdown().await;
    FjallBackend::open(&data.join("store")).expect("the store was released");
    drop(dir);
}
