//! Per-operation costs of the NATS operations Apiary's cluster uses (docs/cluster.md):
//! `natsprobe <nats url> <nats-server pid> <its JetStream store dir>`.
use futures_util::StreamExt;
use std::time::Instant;

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let url = std::env::args().nth(1).unwrap();
    let server_pid: u32 = std::env::args().nth(2).unwrap().parse().unwrap();
    let c = async_nats::connect(&url).await.unwrap();
    // 1. subscriptions: 100k distinct subjects
    let before = rss_kib(server_pid);
    let me_before = rss_kib(std::process::id());
    let t = Instant::now();
    let mut subs = Vec::new();
    for i in 0..100_000u32 {
        subs.push(
            c.subscribe(format!("apiary.m.default.dev{i}.state"))
                .await
                .unwrap(),
        );
    }
    c.flush().await.unwrap();
    let el = t.elapsed();
    println!("subscribe: 100000 subjects in {:?} ({:.2} us each); server RSS +{} KiB ({:.0} B/sub); client RSS +{} KiB ({:.0} B/sub)",
        el, el.as_secs_f64() * 1e6 / 1e5, rss_kib(server_pid) - before, (rss_kib(server_pid) - before) as f64 * 1024.0 / 1e5,
        rss_kib(std::process::id()) - me_before, (rss_kib(std::process::id()) - me_before) as f64 * 1024.0 / 1e5);
    drop(subs);
    // 2. publish throughput, one subscriber on another connection
    let c2 = async_nats::connect(&url).await.unwrap();
    let mut s = c2.subscribe("bench.p").await.unwrap();
    c2.flush().await.unwrap();
    let n = 500_000u32;
    // Counted until all came or none for a second (NATS drops for a slow consumer).
    let recv = tokio::spawn(async move {
        let mut k = 0u32;
        let idle = std::time::Duration::from_secs(1);
        while k < n {
            match tokio::time::timeout(idle, s.next()).await {
                Ok(Some(_)) => k += 1,
                _ => break,
            }
        }
        k
    });
    let t = Instant::now();
    let payload = bytes::Bytes::from_static(&[0u8; 64]);
    for _ in 0..n {
        c.publish("bench.p", payload.clone()).await.unwrap();
    }
    let got = recv.await.unwrap();
    let el = t.elapsed();
    let idle = if got < n { 1.0 } else { 0.0 }; // the wait that ended a short count
    let el = el.as_secs_f64() - idle;
    println!(
        "publish→deliver: {n} msgs (64 B) sent, {got} delivered in {el:.3} s: {:.0} msg/s, {:.2} us/msg{}",
        got as f64 / el,
        el * 1e6 / f64::from(got.max(1)),
        if got < n { " (the rest dropped by NATS: slow consumer)" } else { "" }
    );
    // 3. request/reply round trip
    let mut svc = c2.subscribe("bench.rpc").await.unwrap();
    let c3 = c2.clone();
    tokio::spawn(async move {
        while let Some(m) = svc.next().await {
            if let Some(r) = m.reply {
                c3.publish(r, bytes::Bytes::from_static(b"ok"))
                    .await
                    .unwrap();
            }
        }
    });
    c2.flush().await.unwrap();
    let mut lat = Vec::new();
    for _ in 0..5000 {
        let t = Instant::now();
        c.request("bench.rpc", bytes::Bytes::from_static(b"q"))
            .await
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "request/reply: p50 {:.0} us, p99 {:.0} us",
        lat[2500], lat[4950]
    );
    // 4. KV put (file storage, history 1), sequential and 100 in flight
    let js = async_nats::jetstream::new(c.clone());
    use async_nats::jetstream::stream::{Config, DiscardPolicy, StorageType};
    js.get_or_create_stream(Config {
        name: "KV_probe".into(),
        subjects: vec!["$KV.probe.>".into()],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let kv = js.get_key_value("probe").await.unwrap();
    let mut lat = Vec::new();
    for i in 0..3000 {
        let t = Instant::now();
        kv.put(
            format!("k{}", i % 500),
            bytes::Bytes::from_static(&[1u8; 64]),
        )
        .await
        .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "kv put sequential: p50 {:.0} us, p99 {:.0} us",
        lat[1500], lat[2970]
    );
    let t = Instant::now();
    let total = 50_000;
    let mut i = 0;
    while i < total {
        let futs: Vec<_> = (i..i + 200)
            .map(|k| {
                let kv = kv.clone();
                async move {
                    kv.put(format!("s{k}"), bytes::Bytes::from_static(&[1u8; 64]))
                        .await
                        .unwrap()
                }
            })
            .collect();
        futures_util::future::join_all(futs).await;
        i += 200;
    }
    let el = t.elapsed();
    println!(
        "kv put, 200 in flight: {total} distinct keys in {:?}: {:.0} puts/s; server RSS now {} KiB",
        el,
        total as f64 / el.as_secs_f64(),
        rss_kib(server_pid)
    );
    let du = std::process::Command::new("du")
        .arg("-sk")
        .arg(std::env::args().nth(3).unwrap())
        .output()
        .unwrap();
    println!("store dir: {}", String::from_utf8_lossy(&du.stdout).trim());
}
