//! Overload: backpressure instead of loss for QoS 1 (`[session] backpressure`), its
//! bounded wait for a stalled subscriber, and the lingering close that lets a client
//! still sending read the DISCONNECT it was sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common;
use common::raw::{self, Raw};
use common::v3::{self, Packet, QoS};
use common::{metric, TestBroker, Tr};
use rumqttc::{AsyncClient, Event, MqttOptions};

const N: u32 = 2000;

/// A subscriber that takes `delay` per message: rumqttc reads the socket only once its
/// events are consumed, so polling slowly reads slowly.
async fn slow_subscriber(
    tb: &TestBroker,
    id: &str,
    delay: Duration,
) -> tokio::task::JoinHandle<Vec<u32>> {
    let (host, port, _) = tb.endpoint(Tr::Tcp);
    let mut o = MqttOptions::new(id, host, port);
    o.set_keep_alive(Duration::from_secs(30));
    let (c, mut el) = AsyncClient::new(o, 10);
    c.subscribe("flood", QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.expect("subscribe") {
            break;
        }
    }
    tokio::spawn(async move {
        let _keep = c;
        let mut got = Vec::new();
        while got.len() < N as usize {
            match tokio::time::timeout(Duration::from_secs(10), el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                    got.push(u32::from_be_bytes(p.payload[..4].try_into().unwrap()));
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
                Ok(Ok(_)) => {}
                // Nothing more is coming: what arrived is the answer.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        got
    })
}

/// Publishes N QoS 1 messages as fast as the client's window allows; returns how many
/// the broker acknowledged.
async fn flood(tb: &TestBroker, id: &str) -> u32 {
    let (mut p, _) = v3::connect(v3::opts(tb, id, Tr::Tcp)).await;
    let sender = p.c.clone();
    let send = tokio::spawn(async move {
        for i in 0..N {
            sender
                .publish("flood", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    // Bounded: a lost wake-up must fail the test, not hang it.
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < N {
            match p.next().await {
                Ok(Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher failed: {e}"),
            }
        }
    })
    .await
    .expect("every publish acknowledged within 60 s");
    send.await.unwrap();
    acked
}

/// The longest the subscriber's queue got while `f` ran.
async fn watch_queue<F: std::future::Future>(
    tb: &TestBroker,
    id: &str,
    f: F,
) -> (F::Output, usize) {
    let longest = Arc::new(AtomicUsize::new(0));
    let (broker, id, l) = (tb.broker().clone(), id.to_string(), longest.clone());
    let sampler = tokio::spawn(async move {
        loop {
            if let Some(s) = broker.registry.get("default", &id) {
                l.fetch_max(s.state.lock().queue.len(), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let out = f.await;
    sampler.abort();
    (out, longest.load(Ordering::Relaxed))
}

fn small_queues(backpressure: bool) -> impl FnOnce(&mut apiary::config::Config) {
    move |c| {
        c.session.max_queued_messages = 20;
        c.session.max_inflight = 4;
        c.session.backpressure = backpressure;
    }
}

/// A slow subscriber and a flooding publisher: every acknowledged message arrives, in
/// order, nothing is dropped, the publisher waited, and no wait timed out. Returns the
/// longest the subscriber's queue got.
async fn lossless_flood(tb: &TestBroker) -> usize {
    let sub = slow_subscriber(tb, "slow", Duration::from_micros(500)).await;
    let (acked, longest) = watch_queue(tb, "slow", flood(tb, "pub")).await;
    assert_eq!(acked, N);
    let got = tokio::time::timeout(Duration::from_secs(60), sub)
        .await
        .expect("the subscriber got everything")
        .unwrap();
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every acknowledged message, in order"
    );
    assert_eq!(
        metric(tb, "apiary_messages_dropped_total{reason=\"queue_full\"}"),
        0
    );
    assert!(metric(tb, "apiary_backpressure_waits_total") > 0);
    assert_eq!(metric(tb, "apiary_backpressure_timeouts_total"), 0);
    longest
}

#[tokio::test]
async fn a_flooding_publisher_waits_for_a_slow_subscriber_and_nothing_acknowledged_is_lost() {
    let tb = TestBroker::start_with(small_queues(true)).await;
    let longest = lossless_flood(&tb).await;
    // Past the limit only by what the waiting publisher had already sent: bounded.
    assert!(
        longest <= 40,
        "queue stayed within twice its limit: {longest}"
    );
}

#[tokio::test]
async fn a_queue_full_by_bytes_holds_the_publisher_too() {
    // 1000 messages allowed but only 40 payload bytes: 10 of these 4-byte messages.
    let tb = TestBroker::start_with(|c| {
        small_queues(true)(c);
        c.session.max_queued_messages = 1000;
        c.session.max_queued_bytes = 40;
    })
    .await;
    let longest = lossless_flood(&tb).await;
    assert!(longest <= 20, "within twice the byte limit: {longest}");
}

#[tokio::test]
async fn a_publisher_that_also_subscribes_is_not_held_by_its_own_queue() {
    // A client publishing to a topic it subscribes to, with a slow subscriber beside it:
    // the slow one's queue holds it (nothing lost there), its own never does (that queue
    // drains only as the client's acks are read, and they wait behind its publishes), so
    // its own deliveries keep queue_full: each one arrives or is counted as dropped.
    let tb = TestBroker::start_with(small_queues(true)).await;
    let sub = slow_subscriber(&tb, "slow", Duration::from_micros(500)).await;
    let (mut p, _) = v3::connect(v3::opts(&tb, "echo", Tr::Tcp)).await;
    p.c.subscribe("flood", QoS::AtLeastOnce).await.unwrap();
    p.suback().await;
    let sender = p.c.clone();
    tokio::spawn(async move {
        for i in 0..N {
            sender
                .publish("flood", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    });
    let (mut own, mut acked) = (0u64, 0u32);
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked < N {
            match p.next().await {
                Ok(Packet::Publish(_)) => own += 1,
                Ok(Packet::PubAck(_)) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("every publish acknowledged");
    // The rest of its own deliveries: they arrive or are counted as dropped.
    let dropped = || metric(&tb, "apiary_messages_dropped_total{reason=\"queue_full\"}");
    while own + dropped() < u64::from(N) {
        match tokio::time::timeout(Duration::from_secs(2), p.next()).await {
            Ok(Ok(Packet::Publish(_))) => own += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(
        own + dropped(),
        u64::from(N),
        "each own delivery arrived or was counted"
    );
    let got = tokio::time::timeout(Duration::from_secs(60), sub)
        .await
        .expect("the slow subscriber got everything")
        .unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert_eq!(metric(&tb, "apiary_backpressure_timeouts_total"), 0);
    drop(tb);
}

#[tokio::test]
async fn without_backpressure_the_same_flood_drops_at_the_full_queue() {
    // The scenario above really overloads the subscriber: with the option off, a full
    // queue drops (counted), as before.
    let tb = TestBroker::start_with(small_queues(false)).await;
    let sub = slow_subscriber(&tb, "slow", Duration::from_micros(500)).await;
    assert_eq!(flood(&tb, "pub").await, N);
    let dropped = metric(&tb, "apiary_messages_dropped_total{reason=\"queue_full\"}");
    assert!(
        dropped > 0,
        "a slow subscriber loses messages without backpressure"
    );
    drop(sub);
}

#[tokio::test]
async fn a_stalled_subscriber_falls_back_to_dropping_and_does_not_hold_up_the_others() {
    let tb = TestBroker::start_with(|c| {
        small_queues(true)(c);
        c.session.backpressure_timeout_ms = 300;
    })
    .await;
    // Subscribes and then never reads or acknowledges again.
    let mut stalled = Raw::connect(tb.tcp_addr()).await;
    stalled.send(&raw::connect(4, "stalled", true, 0)).await;
    stalled.read_n(4).await;
    stalled.send(&raw::subscribe_v3(1, "flood", 1)).await;
    stalled.read_n(5).await;
    let healthy = slow_subscriber(&tb, "healthy", Duration::ZERO).await;
    assert_eq!(flood(&tb, "pub").await, N);
    let got = tokio::time::timeout(Duration::from_secs(30), healthy)
        .await
        .expect("the healthy subscriber was not held up")
        .unwrap();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert!(metric(&tb, "apiary_backpressure_timeouts_total") >= 1);
    assert!(metric(&tb, "apiary_messages_dropped_total{reason=\"queue_full\"}") > 0);
    let queued = tb
        .broker()
        .registry
        .get("default", "stalled")
        .unwrap()
        .state
        .lock()
        .queue
        .len();
    assert!(queued <= 40, "{queued}");
}

/// An MQTT 5 PUBLISH with no properties.
fn publish_v5(qos: u8, pid: u16) -> Vec<u8> {
    let mut b = vec![0, 1, b't'];
    b.extend_from_slice(&pid.to_be_bytes());
    b.extend_from_slice(&[0, b'x']);
    raw::packet(0x30 | qos << 1, &b)
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_disconnect_still_reads_the_reason_code() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = TestBroker::start_with(|c| c.mqtt.receive_maximum = 2).await;
    // A client that is not reading (a small receive buffer, so what the broker writes
    // waits in the broker's send queue), and that keeps writing after its violation.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(tb.tcp_addr()).await.unwrap();
    let mut burst = raw::connect(5, "greedy", true, 0);
    // 12 KB of PUBACKs to come back: more than the client's receive buffer takes.
    for pid in 1..=3000u16 {
        burst.extend(publish_v5(1, pid));
    }
    // QoS 2 publishes past the receive maximum: DISCONNECT 0x93.
    for pid in 1..=3u16 {
        burst.extend(publish_v5(2, pid));
    }
    s.write_all(&burst).await.unwrap();
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    while tokio::time::Instant::now() < until {
        // PINGREQ: it goes on sending, as a client with an independent writer would.
        if s.write_all(&[0xC0, 0x00]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(common::WAIT, s.read(&mut buf)).await {
            Err(_) => panic!("still open after {:?}", common::WAIT),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
    // Without a lingering close the broker's socket, closed with unread input, resets:
    // the queued PUBACKs and the DISCONNECT behind them never reach the client.
    assert!(
        all.ends_with(&[0xE0, 0x02, 0x93, 0x00]),
        "DISCONNECT 0x93 last; got {} bytes ending {:?}",
        all.len(),
        &all[all.len().saturating_sub(8)..]
    );
    assert!(metric(&tb, "apiary_malformed_packets_total") >= 1);
}
