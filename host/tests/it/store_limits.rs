//! The store under pressure and failure, over real sockets with real clients: the bytes a
//! SUBSCRIBE writes grow with its filters only, a slow disk slows QoS 1 publishers down
//! instead of growing the writer's queue, a failed write is never acknowledged, QoS 2
//! awaiting PUBREL and held PUBACKs count together against the receive maximum, and a
//! graceful restart keeps wills as a crash does.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use apiary::store::SyncMode;
use apiary::Config;

use crate::common::raw::{self, Raw};
use crate::common::{self, metric, v3, v5, FaultyBackend, TestBroker, Tr};

/// A broker over a fault-injecting store backend, and the backend.
async fn over_faulty(f: impl FnOnce(&mut Config)) -> (TestBroker, Arc<FaultyBackend>) {
    let slot = Arc::new(std::sync::Mutex::new(None));
    let s2 = slot.clone();
    let tb = TestBroker::start_with_backend(f, move |dir| {
        let b = FaultyBackend::open(dir);
        *s2.lock().unwrap() = Some(b.clone());
        b
    })
    .await;
    let b = slot.lock().unwrap().take().expect("backend made");
    (tb, b)
}

/// A persistent subscriber to `filter` that then goes away: what matches is stored.
async fn offline_subscriber(tb: &TestBroker, id: &str, filter: &str) {
    let mut o = v3::opts(tb, id, Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, _) = v3::connect(o).await;
    c.c.subscribe(filter, v3::QoS::ExactlyOnce).await.unwrap();
    c.suback().await;
    c.c.disconnect().await.unwrap();
    common::eventually("subscriber offline", || {
        tb.broker()
            .registry
            .get("default", id)
            .is_some_and(|s| !s.is_online())
    })
    .await;
}

/// Waits until the store has written everything submitted so far.
async fn written(tb: &TestBroker) {
    let store = tb.broker().store.clone().unwrap();
    common::eventually("the store wrote everything", || {
        *store.durable().borrow() >= store.last_ticket()
    })
    .await;
}

#[tokio::test]
async fn a_subscribe_writes_store_bytes_for_its_own_filters_only() {
    let tb = TestBroker::start_with(|c| c.mqtt.max_subscriptions = 10_000).await;
    let mut o = v3::opts(&tb, "many", Tr::Tcp);
    o.set_clean_session(false);
    let (mut c, _) = v3::connect(o).await;
    written(&tb).await;
    let bytes = || {
        tb.broker()
            .store
            .as_ref()
            .unwrap()
            .stats()
            .bytes_written
            .load(SeqCst)
    };
    let mut per_round = Vec::new();
    for round in 0..2 {
        let before = bytes();
        for packet in 0..10 {
            let filters = (0..100)
                .map(|i| {
                    let n = round * 1000 + packet * 100 + i;
                    rumqttc::SubscribeFilter::new(format!("sensors/{n}/+"), v3::QoS::AtLeastOnce)
                })
                .collect::<Vec<_>>();
            c.c.subscribe_many(filters).await.unwrap();
            c.suback().await;
        }
        written(&tb).await;
        per_round.push(bytes() - before);
    }
    // 1,000 filters of ~16 bytes: a record each (so at least their bytes), not a rewrite
    // of every earlier one.
    assert!(per_round[0] >= 1000 * 16, "they were stored: {per_round:?}");
    assert!(per_round[0] < 1000 * 200, "{per_round:?}");
    assert!(
        per_round[1] <= per_round[0] + per_round[0] / 4,
        "the second thousand costs what the first did: {per_round:?}"
    );
}

#[tokio::test]
async fn a_slow_disk_slows_qos1_publishers_instead_of_growing_the_queue() {
    const SOFT: usize = 256 << 10;
    let (tb, disk) = over_faulty(|c| {
        c.store.max_queued_bytes = SOFT;
        c.session.max_queued_messages = 10_000;
        c.session.max_queued_bytes = 0;
    })
    .await;
    offline_subscriber(&tb, "sink", "load/#").await;
    disk.delay_ms.store(30, SeqCst);
    let store = tb.broker().store.clone().unwrap();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (p2, s2) = (peak.clone(), store.clone());
    let sampler = tokio::spawn(async move {
        loop {
            p2.fetch_max(s2.queue_depth().1, SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let mut o = v3::opts(&tb, "loader", Tr::Tcp);
    o.set_inflight(100);
    let (mut p, _) = v3::connect(o).await;
    let payload = vec![b'x'; 1024];
    let n = 1000;
    let pubs = {
        let c = p.c.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                c.publish("load/x", v3::QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .unwrap();
            }
        })
    };
    let mut acks = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acks < n {
        assert!(tokio::time::Instant::now() < deadline, "{acks} acks");
        if let Ok(v3::Packet::PubAck(_)) = p.next().await {
            acks += 1;
        }
    }
    pubs.await.unwrap();
    sampler.abort();
    let peak = peak.load(SeqCst);
    assert!(
        peak <= 2 * SOFT + 4096,
        "queued at most twice the soft limit: {peak}"
    );
    assert!(
        metric(&tb, "apiary_store_acks_held_total") > 0,
        "acks waited for the disk"
    );
    let snap = tb
        .broker()
        .registry
        .snapshot("default", "sink", &tb.broker().config())
        .unwrap();
    assert_eq!(snap.mqueue_len, n, "nothing was lost on the way");
}

#[tokio::test]
async fn a_failed_write_is_never_acknowledged_and_fails_the_store() {
    failed_write(SyncMode::Always).await;
}

/// In the default mode acks do not wait for the disk, but once the store has failed they
/// do: what it is given from then on is thrown away, so nothing it would carry is acked.
#[tokio::test]
async fn after_a_failure_nothing_stored_is_acknowledged_in_batch_mode_either() {
    failed_write(SyncMode::Batch).await;
}

async fn failed_write(sync: SyncMode) {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let (tb, disk) = over_faulty(|c| c.store.sync = sync).await;
    offline_subscriber(&tb, "keeper", "kept/#").await;
    let (mut p, _) = v5::connect(v5::opts(&tb, "pub", Tr::Tcp)).await;
    p.c.publish("kept/1", v5::QoS::AtLeastOnce, false, "one")
        .await
        .unwrap();
    loop {
        if let v5::Packet::PubAck(a) = p.next().await.unwrap() {
            assert_eq!(a.reason, PubAckReason::Success);
            break;
        }
    }
    disk.fail_writes.store(1, SeqCst);
    p.c.publish("kept/2", v5::QoS::AtLeastOnce, false, "two")
        .await
        .unwrap();
    if sync == SyncMode::Always {
        let (_, seen) = p.closed().await;
        assert!(
            !seen.iter().any(|x| matches!(x, v5::Packet::PubAck(_))),
            "the publish whose write failed was not acknowledged: {seen:?}"
        );
    } else {
        // Batch mode acknowledged it before the write (its contract: a crash, or a disk
        // error, may lose the last batch); the failure is what matters from here.
        common::eventually("the store failed", || {
            tb.broker().store.as_ref().unwrap().is_failed()
        })
        .await;
    }
    // Later writes would succeed, but nothing after the failure is acknowledged as
    // stored: not this publish, nor (by a later write) the failed one.
    let (mut q, _) = v5::connect(v5::opts(&tb, "pub2", Tr::Tcp)).await;
    q.c.publish("kept/3", v5::QoS::AtLeastOnce, false, "three")
        .await
        .unwrap();
    let (_, seen) = q.closed().await;
    assert!(
        !seen.iter().any(|x| matches!(x, v5::Packet::PubAck(_))),
        "{seen:?}"
    );
    let (st, body) = common::http(tb.http_addr(), "GET", "/healthz", None, b"").await;
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("injected write failure"), "{body}");
    assert!(metric(&tb, "apiary_store_write_errors_total") >= 1);
    assert_eq!(metric(&tb, "apiary_store_healthy"), 0);
    // What stores nothing is still served.
    let (mut r, _) = v5::connect(v5::opts(&tb, "pub3", Tr::Tcp)).await;
    r.c.publish("unstored/x", v5::QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    loop {
        if let v5::Packet::PubAck(a) = r.next().await.unwrap() {
            assert_eq!(a.reason, PubAckReason::NoMatchingSubscribers);
            break;
        }
    }
}

/// A v5 PUBLISH with no properties.
fn publish_v5(qos: u8, pid: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = (topic.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(topic.as_bytes());
    b.extend_from_slice(&pid.to_be_bytes());
    b.push(0);
    b.extend_from_slice(payload);
    raw::packet(0x30 | (qos << 1), &b)
}

/// Reads one packet: (first byte, body).
async fn read_packet(r: &mut Raw) -> (u8, Vec<u8>) {
    let first = r.read_n(1).await[0];
    let mut len = 0usize;
    for i in 0..4 {
        let b = r.read_n(1).await[0];
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    (first, r.read_n(len).await)
}

#[tokio::test]
async fn qos2_awaiting_pubrel_and_held_pubacks_count_together_against_receive_maximum() {
    let (tb, disk) = over_faulty(|c| {
        c.store.sync = SyncMode::Always;
        c.mqtt.receive_maximum = 2;
    })
    .await;
    offline_subscriber(&tb, "sink", "rm/#").await;
    written(&tb).await;
    disk.delay_ms.store(300, SeqCst);
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::connect(5, "rm-pub", true, 30)).await;
    assert_eq!(read_packet(&mut r).await.0, 0x20, "CONNACK");
    // QoS 2, acknowledged with PUBREC once stored; no PUBREL: it stays awaiting.
    r.send(&publish_v5(2, 1, "rm/a", b"x")).await;
    assert_eq!(read_packet(&mut r).await.0, 0x50, "PUBREC");
    // One QoS 1 publish whose PUBACK waits for the disk: with the QoS 2 one, that is
    // the receive maximum of 2; a third is one too many.
    let mut both = publish_v5(1, 2, "rm/b", b"y");
    both.extend(publish_v5(1, 3, "rm/c", b"z"));
    r.send(&both).await;
    loop {
        let (t, body) = read_packet(&mut r).await;
        match t {
            0x40 => assert_ne!(body[..2], 3u16.to_be_bytes(), "the third was acknowledged"),
            0xE0 => {
                assert_eq!(body[0], 0x93, "DISCONNECT Receive Maximum exceeded");
                break;
            }
            other => panic!("unexpected packet {other:#x}"),
        }
    }
}

#[tokio::test]
async fn a_graceful_restart_keeps_wills_as_a_crash_does() {
    let tb = TestBroker::start().await;
    offline_subscriber(&tb, "watcher", "wills/#").await;
    let will = |topic: &str, delay: u32| common::will_v5(topic, "gone", delay);
    // A session that ends with its connection: its will goes out as the server stops.
    let mut o = v5::opts(&tb, "w-now", Tr::Tcp);
    o.set_last_will(will("wills/now", 0));
    let (_now, _) = v5::connect(o).await;
    // A kept session with a will delay: the will waits in its stored session, and goes
    // out after the restart once the delay has passed.
    let mut o = v5::opts(&tb, "w-later", Tr::Tcp);
    o.set_session_expiry_interval(Some(600));
    o.set_last_will(will("wills/later", 1));
    let (_later, _) = v5::connect(o).await;

    let tb = tb.restart(|_| {}).await;
    let mut o = v3::opts(&tb, "watcher", Tr::Tcp);
    o.set_clean_session(false);
    let (mut w, _) = v3::connect(o).await;
    let mut topics = vec![w.publish().await.topic, w.publish().await.topic];
    topics.sort();
    assert_eq!(topics, vec!["wills/later", "wills/now"]);
    assert!(metric(&tb, "apiary_wills_published_total") >= 1);
}
