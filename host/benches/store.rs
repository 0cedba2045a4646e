//! Durable-state benchmark (issues 3 and 10): QoS 1 throughput into offline persistent
//! inboxes for each sync mode, recovery time of 100k persistent sessions with 10 queued
//! messages each, and the store bytes written for 10k, 50k and 100k subscriptions of one
//! session added in packets of 1000 (they must grow linearly: each subscription is one
//! record). Full run: `cargo bench -p apiary --bench store`. Under `cargo test` (no `--bench`
//! argument) it runs a small smoke version of the same code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apiary::apikeys::ApiKeyStore;
use apiary::message::Message;
use apiary::session::{ClientInfo, Session, SubOptions};
use apiary::store::{recovery, Store, StoreConfig, SyncMode};
use apiary::{Broker, Config};
use bytes::Bytes;
use rmqtt_codec::types::QoS;

/// An offline 3.1.1 persistent session's client.
fn info() -> ClientInfo {
    ClientInfo {
        proto_ver: 4,
        disconnected_at: Some(std::time::SystemTime::now()),
        clean_start: false,
        expiry_interval: u32::MAX,
        ..ClientInfo::default()
    }
}

/// A broker over a store in `dir` with `sessions` offline persistent sessions, session i
/// subscribed to `t/i` at QoS 1.
fn broker(dir: &std::path::Path, sync: SyncMode, sessions: usize) -> Broker {
    let mut cfg = Config::embedded();
    cfg.session.max_queued_messages = 1_000_000;
    let store = Store::open(
        dir,
        &StoreConfig {
            sync,
            batch_interval_ms: 10,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    let b = Broker::with_store(cfg, ApiKeyStore::default(), Some(store));
    for i in 0..sessions {
        let s = Arc::new(Session::new(
            b.next_id(),
            "default".into(),
            format!("c{i}").into(),
            info(),
        ));
        s.persistent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        b.registry.insert(s.clone());
        // As a CONNECT does: the session's record first, then its subscriptions.
        b.persist_session(&s);
        b.subscribe(&s, &format!("t/{i}"), SubOptions::qos(QoS::AtLeastOnce))
            .expect("subscribe");
    }
    b
}

fn wait_durable(b: &Broker) {
    let store = b.store.as_ref().expect("store");
    let target = store.last_ticket();
    let mut rx = store.durable();
    while *rx.borrow_and_update() < target {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn throughput(sync: SyncMode, n: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path(), sync, 100);
    wait_durable(&b);
    let payload = Bytes::from(vec![b'x'; 64]);
    let topics: Vec<bytestring::ByteString> = (0..100).map(|i| format!("t/{i}").into()).collect();
    let t = Instant::now();
    for i in 0..n {
        let m = Message::new(
            "default".into(),
            topics[i % 100].clone(),
            payload.clone(),
            QoS::AtLeastOnce,
            false,
        );
        b.publish(m).expect("no retained limits here");
    }
    wait_durable(&b);
    let rate = n as f64 / t.elapsed().as_secs_f64();
    b.store.as_ref().unwrap().close();
    rate
}

/// Store bytes written for `n` subscriptions of one persistent session added 1000 at a
/// time; also the bytes of the first and the last packet of 1000.
fn subscription_bytes(n: usize) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::embedded();
    cfg.mqtt.max_subscriptions = n;
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("store");
    let b = Broker::with_store(cfg, ApiKeyStore::default(), Some(store));
    let s = Arc::new(Session::new(
        b.next_id(),
        "default".into(),
        "many".into(),
        info(),
    ));
    s.persistent
        .store(true, std::sync::atomic::Ordering::Relaxed);
    b.registry.insert(s.clone());
    b.persist_session(&s);
    wait_durable(&b);
    let written = || {
        b.store
            .as_ref()
            .unwrap()
            .stats()
            .bytes_written
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let start = written();
    let (mut first, mut last) = (0, 0);
    for packet in 0..n / 1000 {
        let before = written();
        for i in 0..1000 {
            let f = format!("sensors/{}/+/temperature", packet * 1000 + i);
            b.subscribe(&s, &f, SubOptions::qos(QoS::AtLeastOnce))
                .expect("subscribe");
        }
        wait_durable(&b);
        let d = written() - before;
        if packet == 0 {
            first = d;
        }
        last = d;
    }
    let total = written() - start;
    b.store.as_ref().unwrap().close();
    (total, first, last)
}

fn recovery_time(sessions: usize, per_session: usize) -> (Duration, recovery::RecoveryStats) {
    let dir = tempfile::tempdir().unwrap();
    {
        let b = broker(dir.path(), SyncMode::Never, sessions);
        let payload = Bytes::from(vec![b'x'; 64]);
        for i in 0..sessions {
            let topic: bytestring::ByteString = format!("t/{i}").into();
            for _ in 0..per_session {
                b.publish(Message::new(
                    "default".into(),
                    topic.clone(),
                    payload.clone(),
                    QoS::AtLeastOnce,
                    false,
                ))
                .expect("not retained");
            }
        }
        wait_durable(&b);
        b.store.as_ref().unwrap().close();
    }
    let t = Instant::now();
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    let rec = recovery::load(&store).expect("load");
    let b = Broker::with_store(
        Config::embedded(),
        ApiKeyStore::default(),
        Some(store.clone()),
    );
    let stats = b.restore(rec);
    let elapsed = t.elapsed();
    assert_eq!(stats.sessions, sessions);
    assert_eq!(stats.messages, sessions * per_session);
    store.close();
    (elapsed, stats)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let n = if full { 200_000 } else { 2_000 };
    for (name, mode) in [
        ("always", SyncMode::Always),
        ("batch", SyncMode::Batch),
        ("never", SyncMode::Never),
    ] {
        let rate = throughput(mode, n);
        println!("store/qos1_into_offline_inboxes sync={name:6} {rate:>10.0} msg/s ({n} messages, 100 sessions, 64-byte payloads)");
    }
    let sizes: &[usize] = if full {
        &[10_000, 50_000, 100_000]
    } else {
        &[1_000, 2_000]
    };
    for &n in sizes {
        let (total, first, last) = subscription_bytes(n);
        println!(
            "store/subscriptions {n:>7} added 1000 per packet: {total:>10} bytes written, {:.0} per subscription; first packet {first} bytes, last {last}",
            total as f64 / n as f64
        );
        assert!(
            last <= first + first / 4,
            "linear: the last 1000 cost what the first did"
        );
    }
    let (sessions, per) = if full { (100_000, 10) } else { (1_000, 10) };
    let (elapsed, stats) = recovery_time(sessions, per);
    println!(
        "store/recovery {} sessions x {per} messages ({} subscriptions) in {:.2} s",
        stats.sessions,
        stats.subscriptions,
        elapsed.as_secs_f64()
    );
}
