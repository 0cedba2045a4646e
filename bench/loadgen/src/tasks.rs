//! The tasks of a run: publishers, subscribers, idle connections, the progress line, and
//! the order they start and stop in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use tokio::sync::{mpsc, watch, Notify};

use super::client::{Conn, In};
use super::{BenchError, Opts, Report, Scenario, Stats};

/// A client id and the topic it publishes to or the filter it subscribes to.
type Client = (String, String);

fn qos(o: &Opts) -> QoS {
    match o.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// One run: subscribers first (all subscribed before anyone publishes), then publishers,
/// then a drain until every expected message arrived or nothing moved for a second.
pub async fn run(scenario: Scenario, o: Arc<Opts>) -> Result<Report, BenchError> {
    let stats = Arc::new(Stats::default());
    let tag = format!("bench-{}-{:x}", std::process::id(), rand::random::<u32>());
    let n = o.clients;
    let (subs, pubs, factor): (Vec<Client>, Vec<Client>, u64) = match scenario {
        Scenario::P2p => (
            (0..n)
                .map(|i| (format!("{tag}-s{i}"), format!("bench/p2p/{tag}/{i}")))
                .collect(),
            (0..n)
                .map(|i| (format!("{tag}-p{i}"), format!("bench/p2p/{tag}/{i}")))
                .collect(),
            1,
        ),
        Scenario::FanOut => (
            (0..n)
                .map(|i| (format!("{tag}-s{i}"), format!("bench/fanout/{tag}")))
                .collect(),
            vec![(format!("{tag}-p0"), format!("bench/fanout/{tag}"))],
            n as u64,
        ),
        Scenario::FanIn => (
            vec![(format!("{tag}-s0"), format!("bench/fanin/{tag}/+"))],
            (0..n)
                .map(|i| (format!("{tag}-p{i}"), format!("bench/fanin/{tag}/{i}")))
                .collect(),
            1,
        ),
        Scenario::FanInShared => (
            (0..2)
                .map(|i| {
                    (
                        format!("{tag}-s{i}"),
                        format!("$share/bench/bench/fanin/{tag}/+"),
                    )
                })
                .collect(),
            (0..n)
                .map(|i| (format!("{tag}-p{i}"), format!("bench/fanin/{tag}/{i}")))
                .collect(),
            1,
        ),
        Scenario::Pub => (
            vec![],
            (0..n)
                .map(|i| (format!("{tag}-p{i}"), format!("bench/pub/{tag}/{i}")))
                .collect(),
            0,
        ),
        Scenario::Sub => (
            (0..n)
                .map(|i| (format!("{tag}-s{i}"), "bench/sub/#".to_string()))
                .collect(),
            vec![],
            0,
        ),
        Scenario::Conn => return conn(o, stats, &tag).await,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = o
        .progress
        .then(|| tokio::spawn(progress_line(scenario, stats.clone())));

    let mut sub_tasks = Vec::new();
    for (i, (id, filter)) in subs.into_iter().enumerate() {
        let (o, st, stop) = (o.clone(), stats.clone(), stop_rx.clone());
        let port = match o.sub_ports.len() {
            0 => o.port,
            n => o.sub_ports[i % n],
        };
        let mut conn = Conn::open(&o, &id, port).await?;
        conn.subscribe(&filter, qos(&o)).await?;
        sub_tasks.push(tokio::spawn(subscriber(conn, o, st, stop)));
    }
    let started = Instant::now();
    let mut pub_tasks = Vec::new();
    for (id, topic) in pubs {
        let conn = Conn::open(&o, &id, o.port).await?;
        pub_tasks.push(tokio::spawn(publisher(
            conn,
            o.clone(),
            stats.clone(),
            topic.into(),
        )));
    }
    if pub_tasks.is_empty() {
        tokio::time::sleep(o.duration).await;
    }
    for t in pub_tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            Stats::add(&stats.errors, 1);
        }
    }
    let published = Instant::now();
    let seconds = started.elapsed().as_secs_f64();
    let sent = stats.sent.load(Ordering::Relaxed);
    let expected = sent * factor;
    // Drain: until all arrived, or no progress for a second. Deliveries per second count
    // up to the last arrival, so a broker that buffers and delivers late is not credited
    // with late messages as if they had arrived while publishing.
    let mut last = (stats.received.load(Ordering::Relaxed), published);
    while scenario != Scenario::Sub && stats.received.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = stats.received.load(Ordering::Relaxed);
        if r != last.0 {
            last = (r, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let _ = stop_tx.send(true);
    for t in sub_tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            Stats::add(&stats.errors, 1);
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let received = stats.received.load(Ordering::Relaxed);
    let recv_seconds = last.1.duration_since(started).as_secs_f64();
    Ok(Report {
        scenario,
        clients: n,
        qos: o.qos,
        size: o.size,
        version: o.version,
        transport: if o.ws { "ws" } else { "tcp" },
        seconds,
        sent,
        received,
        expected,
        lost: expected.saturating_sub(received),
        errors: stats.errors.load(Ordering::Relaxed),
        connected: 0,
        sent_per_sec: sent as f64 / seconds.max(1e-9),
        received_per_sec: received as f64 / recv_seconds.max(1e-9),
        latency_us: stats.percentiles(),
    })
}

async fn progress_line(scenario: Scenario, st: Arc<Stats>) {
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (s, r) = (
            st.sent.load(Ordering::Relaxed),
            st.received.load(Ordering::Relaxed),
        );
        eprint!(
            "\r[{}] {:>4.0}s sent {s} ({}/s) received {r} ({}/s) connected {} errors {}   ",
            scenario.name(),
            st.base.elapsed().as_secs_f64(),
            s - last.0,
            r - last.1,
            st.connected.load(Ordering::Relaxed),
            st.errors.load(Ordering::Relaxed)
        );
        last = (s, r);
    }
}

/// A payload: send time (ns since the run began), a sequence number, zero padding.
fn payload(st: &Stats, seq: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64(st.now_ns());
    b.put_u64(seq);
    b.resize(size, 0);
    b.freeze()
}

/// Publishes until the duration or count is reached, pipelining up to the inflight window
/// (QoS 1/2) and pacing to the rate if one is set.
async fn publisher(
    conn: Conn,
    o: Arc<Opts>,
    st: Arc<Stats>,
    topic: ByteString,
) -> Result<(), BenchError> {
    let q = qos(&o);
    let Conn {
        mut tx,
        mut rx,
        mut enc,
        mut dec,
        mut rbuf,
        receive_max,
    } = conn;
    let acked = Arc::new(AtomicU64::new(0));
    let woke = Arc::new(Notify::new());
    let (rel_tx, mut rel_rx) = mpsc::unbounded_channel::<u16>();
    let reader = {
        let (acked, woke, st) = (acked.clone(), woke.clone(), st.clone());
        tokio::spawn(async move {
            loop {
                let p = loop {
                    match dec.decode(&mut rbuf) {
                        Ok(Some(p)) => break Ok(p),
                        Ok(None) => {}
                        Err(e) => break Err(e),
                    }
                    match rx.fill(&mut rbuf).await {
                        Ok(true) => {}
                        Ok(false) => break Err(BenchError::Closed),
                        Err(e) => break Err(e),
                    }
                };
                match p {
                    Ok(In::PubAck | In::PubComp) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        Stats::add(&st.sent, 1);
                        woke.notify_one();
                    }
                    Ok(In::PubRec(pid)) => {
                        let _ = rel_tx.send(pid);
                        woke.notify_one();
                    }
                    Ok(_) => {}
                    Err(_) => {
                        woke.notify_one();
                        return;
                    }
                }
            }
        })
    };
    let window = u64::from(o.inflight.min(receive_max).max(1));
    let deadline = Instant::now() + o.duration;
    let limit = o.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let mut seq = 0u64;
    let mut pid = 0u16;
    let mut out = BytesMut::with_capacity(64 * (o.size + 64));
    while seq < limit && (o.count.is_some() || Instant::now() < deadline) {
        let mut room = 64u64.min(limit - seq);
        if let Some(r) = o.rate {
            let allowed = (start.elapsed().as_secs_f64() * r as f64) as u64 + 1;
            if seq >= allowed {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            room = room.min(allowed - seq);
        }
        if q != QoS::AtMostOnce {
            while let Ok(p) = rel_rx.try_recv() {
                enc.ack(6, p, &mut out)?;
            }
            let inflight = seq - acked.load(Ordering::Relaxed);
            if inflight >= window {
                tx.send(&mut out).await?;
                if reader.is_finished() {
                    return Err(BenchError::Closed);
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), woke.notified()).await;
                continue;
            }
            room = room.min(window - inflight);
        }
        for _ in 0..room {
            pid = if pid == u16::MAX { 1 } else { pid + 1 };
            enc.publish(&topic, q, pid, payload(&st, seq, o.size), &mut out)?;
            seq += 1;
        }
        tx.send(&mut out).await?;
        if q == QoS::AtMostOnce {
            Stats::add(&st.sent, room);
            tokio::task::yield_now().await;
        }
    }
    // Wait for the last acknowledgements (QoS 1/2), completing QoS 2 flows.
    let until = Instant::now() + Duration::from_secs(5);
    while q != QoS::AtMostOnce && acked.load(Ordering::Relaxed) < seq && Instant::now() < until {
        while let Ok(p) = rel_rx.try_recv() {
            enc.ack(6, p, &mut out)?;
        }
        tx.send(&mut out).await?;
        let _ = tokio::time::timeout(Duration::from_millis(20), woke.notified()).await;
    }
    reader.abort();
    if q != QoS::AtMostOnce && acked.load(Ordering::Relaxed) < seq {
        return Err(BenchError::Protocol("acknowledgements missing".into()));
    }
    Ok(())
}

/// Receives until told to stop: records latency, acknowledges in batches.
async fn subscriber(
    mut c: Conn,
    _o: Arc<Opts>,
    st: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), BenchError> {
    let mut hist = Stats::local();
    let mut out = BytesMut::new();
    let mut n = 0u64;
    let r = loop {
        let mut err = None;
        loop {
            match c.dec.decode(&mut c.rbuf) {
                Ok(Some(In::Publish(q, pid, payload))) => {
                    if payload.len() >= 8 {
                        let ts = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                        let _ = hist.record(st.now_ns().saturating_sub(ts) / 1000);
                    }
                    n += 1;
                    match q {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => c.enc.ack(4, pid, &mut out)?,
                        QoS::ExactlyOnce => c.enc.ack(5, pid, &mut out)?,
                    }
                }
                Ok(Some(In::PubRel(pid))) => c.enc.ack(7, pid, &mut out)?,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        Stats::add(&st.received, std::mem::take(&mut n));
        if let Some(e) = err {
            break Err(e);
        }
        c.tx.send(&mut out).await?;
        tokio::select! {
            r = c.rx.fill(&mut c.rbuf) => match r {
                Ok(true) => {}
                Ok(false) => break Err(BenchError::Closed),
                Err(e) => break Err(e),
            },
            _ = stop.changed() => break Ok(()),
        }
    };
    st.merge(&hist);
    r
}

/// `conn`: connections at a rate, held until the duration ends.
async fn conn(o: Arc<Opts>, st: Arc<Stats>, tag: &str) -> Result<Report, BenchError> {
    let progress = o
        .progress
        .then(|| tokio::spawn(progress_line(Scenario::Conn, st.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..o.clients {
        if let Some(r) = o.rate {
            let at = start + Duration::from_secs_f64(i as f64 / r.max(1) as f64);
            tokio::time::sleep_until(at.into()).await;
        }
        let (o, st, mut stop, id) = (
            o.clone(),
            st.clone(),
            stop_rx.clone(),
            format!("{tag}-c{i}"),
        );
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            // A broker that never answers must not hold the run past its duration.
            let opened = tokio::select! {
                r = Conn::open(&o, &id, o.port) => r,
                _ = stop.changed() => return,
            };
            match opened {
                Ok(mut c) => {
                    let us = t.elapsed().as_micros() as u64;
                    Stats::add(&st.connected, 1);
                    let mut h = Stats::local();
                    let _ = h.record(us);
                    st.merge(&h);
                    tokio::select! {
                        _ = stop.changed() => {}
                        _ = c.next() => { Stats::add(&st.errors, 1); }
                    }
                }
                Err(_) => Stats::add(&st.errors, 1),
            }
        }));
    }
    // Every connection attempt finished (or the duration passed).
    let until = start + o.duration;
    while st.connected.load(Ordering::Relaxed) + st.errors.load(Ordering::Relaxed)
        < o.clients as u64
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep_until(until.into()).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let connected = st.connected.load(Ordering::Relaxed);
    Ok(Report {
        scenario: Scenario::Conn,
        clients: o.clients,
        qos: o.qos,
        size: o.size,
        version: o.version,
        transport: if o.ws { "ws" } else { "tcp" },
        seconds,
        sent: 0,
        received: 0,
        expected: 0,
        lost: 0,
        errors: st.errors.load(Ordering::Relaxed),
        connected,
        sent_per_sec: connected as f64 / seconds.max(1e-9),
        received_per_sec: 0.0,
        latency_us: st.percentiles(),
    })
}
