//! Message interceptors (the `message` role) end to end: the `stamper` test plugin,
//! loaded twice under different names and priorities, rewriting, enriching and dropping
//! publishes of real MQTT clients; one that traps under each failure policy; filters that
//! leave other topics alone; a will and a plugin's publish going through them too.

use std::path::Path;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, PubAckReason};

use crate::common::{self, v5, TestBroker, Tr};
use crate::plugins::install;
use v5::{Packet, QoS};

fn stamper(name: &str, priority: i32, filters: &str, on_failure: &str) -> String {
    format!(
        "roles = [\"message\"]\npriority = {priority}\ncall_timeout_ms = 200\n\
         [message]\nfilters = [{filters}]\non_failure = \"{on_failure}\"\n\
         [config]\nname = \"{name}\"\n"
    )
}

async fn broker_with(dir: &Path) -> TestBroker {
    let dir = dir.to_path_buf();
    TestBroker::start_with(move |c| c.plugins_dir = dir).await
}

/// Publishes `payload` on `topic` at QoS 1; the PUBACK's reason.
async fn send(c: &mut v5::Client, topic: &str, payload: &str) -> PubAckReason {
    c.c.publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    puback(c).await
}

async fn puback(c: &mut v5::Client) -> PubAckReason {
    loop {
        if let Packet::PubAck(a) = c.next().await.expect("connection alive") {
            return a.reason;
        }
    }
}

/// Subscribes a v5 client to `#` (QoS 1).
async fn watcher(tb: &TestBroker, id: &str) -> v5::Client {
    let (mut w, _) = v5::connect(v5::opts(tb, id, Tr::Tcp)).await;
    w.c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    w.suback().await;
    w
}

/// A broker with one `stamper` called `name` on `t/#` (failure policy pass), and a v5
/// watcher subscribed to `#`.
async fn one_stamper(name: &str) -> (tempfile::TempDir, TestBroker, v5::Client) {
    let dir = tempfile::tempdir().unwrap();
    let toml = stamper(name, 0, "\"t/#\"", "pass");
    install(dir.path(), "stamper", name, Some(&toml));
    let tb = broker_with(dir.path()).await;
    let w = watcher(&tb, "watcher").await;
    (dir, tb, w)
}

fn via(p: &v5::Publish) -> Vec<String> {
    p.properties
        .as_ref()
        .map(|pr| {
            pr.user_properties
                .iter()
                .filter(|(k, _)| k == "via")
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn interceptors_rewrite_enrich_and_drop_in_priority_order() {
    let dir = tempfile::tempdir().unwrap();
    // Installed in the opposite order of their priorities.
    let both = "\"t/#\", \"rename/#\"";
    install(
        dir.path(),
        "stamper",
        "second",
        Some(&stamper("second", 20, both, "pass")),
    );
    install(
        dir.path(),
        "stamper",
        "first",
        Some(&stamper("first", 10, both, "pass")),
    );
    let tb = broker_with(dir.path()).await;
    let mut w = watcher(&tb, "watcher").await;
    let (mut p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;

    assert_eq!(send(&mut p, "t/1", "hello").await, PubAckReason::Success);
    let m = w.publish().await;
    assert_eq!((&m.topic[..], &m.payload[..]), (&b"t/1"[..], &b"hello"[..]));
    assert_eq!(via(&m), ["first", "second"], "priority order");

    assert_eq!(
        send(&mut p, "rename/x", "upper").await,
        PubAckReason::Success
    );
    let m = w.publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..]),
        (&b"renamed/x"[..], &b"UPPER"[..])
    );
    // The second is matched against the topic the first made: not one of its filters.
    assert_eq!(via(&m), ["first"]);

    // Dropped by the first: the v5 publisher reads its reason code, nobody gets it.
    assert_eq!(
        send(&mut p, "t/2", "drop").await,
        PubAckReason::PayloadFormatInvalid
    );
    p.c.publish("t/2", QoS::ExactlyOnce, false, "drop")
        .await
        .unwrap();
    loop {
        if let Packet::PubRec(r) = p.next().await.unwrap() {
            assert_eq!(
                r.reason,
                rumqttc::v5::mqttbytes::v5::PubRecReason::PayloadFormatInvalid
            );
            break;
        }
    }
    w.no_publish(Duration::from_millis(300)).await;

    // Topics no filter names are not touched.
    assert_eq!(send(&mut p, "other/1", "drop").await, PubAckReason::Success);
    let m = w.publish().await;
    assert_eq!(
        (&m.topic[..], &m.payload[..]),
        (&b"other/1"[..], &b"drop"[..])
    );
    assert!(via(&m).is_empty());
    assert_eq!(common::metric(&tb, "apiary_intercept_dropped_total"), 2);
    assert_eq!(common::metric(&tb, "apiary_intercept_rewritten_total"), 3);

    // Removed: its publishes go through untouched, with no connection dropped.
    std::fs::remove_file(dir.path().join("first.wasm")).unwrap();
    std::fs::remove_file(dir.path().join("second.wasm")).unwrap();
    common::eventually("unloaded", || {
        tb.broker().plugins().unwrap().list().is_empty()
    })
    .await;
    assert_eq!(send(&mut p, "t/3", "drop").await, PubAckReason::Success);
    let m = w.publish().await;
    assert_eq!((&m.payload[..], via(&m).len()), (&b"drop"[..], 0));
}

#[tokio::test]
async fn a_failing_interceptor_passes_or_drops_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    install(
        dir.path(),
        "stamper",
        "strict",
        Some(&stamper("strict", 0, "\"strict/#\"", "drop")),
    );
    install(
        dir.path(),
        "stamper",
        "lenient",
        Some(&stamper("lenient", 0, "\"lenient/#\"", "pass")),
    );
    let tb = broker_with(dir.path()).await;
    let mut w = watcher(&tb, "watcher").await;
    let (mut p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;

    assert_eq!(
        send(&mut p, "strict/1", "trap").await,
        PubAckReason::UnspecifiedError
    );
    // An invalid rewrite is a failure too.
    assert_eq!(
        send(&mut p, "strict/2", "bad-topic").await,
        PubAckReason::UnspecifiedError
    );
    w.no_publish(Duration::from_millis(300)).await;

    assert_eq!(
        send(&mut p, "lenient/1", "trap").await,
        PubAckReason::Success
    );
    let m = w.publish().await;
    assert_eq!(
        (&m.payload[..], via(&m).len()),
        (&b"trap"[..], 0),
        "as published"
    );
    assert_eq!(common::metric(&tb, "apiary_intercept_failures_total"), 3);

    // The instance that trapped was replaced: the next publish is served.
    assert_eq!(send(&mut p, "strict/3", "ok").await, PubAckReason::Success);
    assert_eq!(via(&w.publish().await), ["strict"]);
}

#[tokio::test]
async fn wills_and_a_3_1_1_publisher_go_through_interceptors() {
    let (_dir, tb, mut w) = one_stamper("stamp").await;

    let mut o = v5::opts(&tb, "dies", Tr::Tcp);
    o.set_last_will(LastWill::new(
        "t/will",
        "bye",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (dies, _) = v5::connect(o).await;
    dies.kill();
    let m = w.publish().await;
    assert_eq!(
        (&m.topic[..], via(&m)),
        (&b"t/will"[..], vec!["stamp".to_string()])
    );

    // 3.1.1 has no reason codes: a dropped QoS 1 publish is acknowledged, not routed.
    let (mut v3c, _) = common::v3::connect(common::v3::opts(&tb, "old", Tr::Tcp)).await;
    v3c.c
        .publish("t/old", rumqttc::QoS::AtLeastOnce, false, "drop")
        .await
        .unwrap();
    loop {
        if let rumqttc::Packet::PubAck(_) = v3c.next().await.unwrap() {
            break;
        }
    }
    w.no_publish(Duration::from_millis(300)).await;
    v3c.c
        .publish("t/old", rumqttc::QoS::AtLeastOnce, false, "upper")
        .await
        .unwrap();
    assert_eq!(&w.publish().await.payload[..], b"UPPER");
}

#[test]
fn a_message_role_without_filters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.toml");
    std::fs::write(&p, "roles = [\"message\"]\n").unwrap();
    let e = apiary::plugins::manifest::Manifest::load(&p).unwrap_err();
    assert!(e.contains("[message] filters"), "{e}");
    std::fs::write(
        &p,
        "roles = [\"message\"]\n[message]\nfilters = [\"a/#/b\"]\n",
    )
    .unwrap();
    let e = apiary::plugins::manifest::Manifest::load(&p).unwrap_err();
    assert!(e.contains("not a valid topic filter"), "{e}");
}

/// A message plugin written in Python (plugins/testing/py-stamp, componentize-py).
#[tokio::test]
async fn a_python_interceptor_enriches_and_drops() {
    if !crate::plugins::built_with("py-stamp", "python3 and componentize-py") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let toml =
        "roles = [\"message\"]\n[message]\nfilters = [\"py/#\"]\n[config]\nname = \"snake\"\n";
    install(dir.path(), "py-stamp", "py-stamp", Some(toml));
    let tb = broker_with(dir.path()).await;
    let mut w = watcher(&tb, "watcher").await;
    let (mut p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    assert_eq!(send(&mut p, "py/1", "hi").await, PubAckReason::Success);
    let m = w.publish().await;
    let props = m.properties.expect("user properties");
    assert_eq!(
        props.user_properties,
        [("stamped-by".to_string(), "snake".to_string())]
    );
    assert_eq!(
        send(&mut p, "py/2", "").await,
        PubAckReason::PayloadFormatInvalid
    );
    w.no_publish(Duration::from_millis(300)).await;
}

/// A v5 PUBLISH (no properties) for a raw connection.
fn publish_v5(topic: &str, qos: u8, dup: bool, pid: u16, payload: &str) -> Vec<u8> {
    let mut b = (topic.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(topic.as_bytes());
    if qos > 0 {
        b.extend_from_slice(&pid.to_be_bytes());
    }
    b.push(0);
    b.extend_from_slice(payload.as_bytes());
    common::raw::packet(0x30 | qos << 1 | u8::from(dup) << 3, &b)
}

/// The next packet on a raw connection: its first byte and body.
async fn next_packet(r: &mut common::raw::Raw) -> (u8, Vec<u8>) {
    let head = r.read_n(2).await;
    assert!(head[1] < 0x80, "a short packet: {head:?}");
    (head[0], r.read_n(usize::from(head[1])).await)
}

/// Publishes pipelined in one write are intercepted together (far fewer plugin calls
/// than publishes), yet answered and routed in their order, with each one's verdict:
/// enriched, dropped (0x99), untouched on another topic, QoS 0, and a QoS 2 duplicate
/// of a publish in the same batch routed once.
#[tokio::test]
async fn pipelined_publishes_are_intercepted_as_a_batch_in_order() {
    let (_dir, tb, mut w) = one_stamper("batch").await;

    let mut r = common::raw::Raw::connect(tb.tcp_addr()).await;
    let mut burst = common::raw::connect(5, "pipeliner", true, 0);
    let mut expected = Vec::new();
    // 31 unanswered at most: within the receive maximum (32).
    for pid in 1..=30u16 {
        let (topic, payload) = match pid {
            p if p % 5 == 0 => (format!("t/{p}"), "drop"),
            p if p % 7 == 0 => (format!("other/{p}"), "x"),
            p => (format!("t/{p}"), "x"),
        };
        let qos = if pid == 13 { 0 } else { 1 };
        burst.extend(publish_v5(&topic, qos, false, pid, payload));
        if payload != "drop" {
            expected.push(topic);
        }
    }
    burst.extend(publish_v5("t/twice", 2, false, 31, "x"));
    burst.extend(publish_v5("t/twice", 2, true, 31, "x"));
    expected.push("t/twice".into());
    r.send(&burst).await;

    let (connack, _) = next_packet(&mut r).await;
    assert_eq!(connack, 0x20);
    let mut acks = Vec::new();
    while acks.len() < 31 {
        let (first, body) = next_packet(&mut r).await;
        let pid = u16::from_be_bytes([body[0], body[1]]);
        acks.push((first, pid, body.get(2).copied().unwrap_or(0)));
    }
    let mut want = Vec::new();
    for pid in (1..=30u16).filter(|&p| p != 13) {
        want.push((0x40, pid, if pid % 5 == 0 { 0x99 } else { 0 }));
    }
    want.push((0x50, 31, 0));
    want.push((0x50, 31, 0));
    assert_eq!(acks, want, "acks in the order of the publishes");

    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let m = w.publish().await;
        let enriched = via(&m) == ["batch"];
        let topic = String::from_utf8(m.topic.to_vec()).unwrap();
        assert_eq!(enriched, topic.starts_with("t/"), "{topic}");
        got.push(topic);
    }
    assert_eq!(got, expected, "routed in order, the duplicate once");
    w.no_publish(Duration::from_millis(300)).await;
    let calls = common::metric(
        &tb,
        "apiary_plugin_calls_total{plugin=\"batch\",role=\"message\"}",
    );
    assert!(
        (1..=4).contains(&calls),
        "{calls} calls for 28 intercepted publishes"
    );
}

/// MQTT 5 properties a publisher set reach the interceptor and, through its rewrite,
/// the subscriber: user properties in order, content type, response topic, correlation
/// data, payload format and expiry.
#[tokio::test]
async fn properties_survive_a_rewrite() {
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    let (_dir, tb, mut w) = one_stamper("props").await;
    let (mut p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(600),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![("k".into(), "v".into())],
        ..Default::default()
    };
    p.c.publish_with_properties("t/p", QoS::AtLeastOnce, false, "hi", props)
        .await
        .unwrap();
    assert_eq!(puback(&mut p).await, PubAckReason::Success);
    let m = w.publish().await;
    let got = m.properties.expect("properties");
    assert_eq!(
        got.user_properties,
        [("k".into(), "v".into()), ("via".into(), "props".into())]
    );
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(got.payload_format_indicator, Some(1));
    let left = got.message_expiry_interval.expect("expiry");
    assert!((590..=600).contains(&left), "{left}");
}

/// Publishes waiting in a batch are not acknowledged yet: a v5 client that sends more
/// than the receive maximum of them before any PUBACK is disconnected with 0x93.
#[tokio::test]
async fn batched_publishes_count_against_the_receive_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let toml = stamper("rm", 0, "\"t/#\"", "pass");
    install(dir.path(), "stamper", "rm", Some(&toml));
    let plugins = dir.path().to_path_buf();
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = plugins;
        c.mqtt.receive_maximum = 4;
    })
    .await;
    let mut r = common::raw::Raw::connect(tb.tcp_addr()).await;
    let mut burst = common::raw::connect(5, "greedy", true, 0);
    for pid in 1..=5u16 {
        burst.extend(publish_v5("t/x", 1, false, pid, "x"));
    }
    r.send(&burst).await;
    let rest = r.until_closed().await;
    let at = rest.iter().position(|&b| b == 0xE0).expect("DISCONNECT");
    assert_eq!(rest[at + 2], 0x93, "{rest:?}");
}
