//! Fan-out measurement shared by the streams and beebotte benchmarks: publish times
//! carried in payloads (`"t":<ns>`), what each path's subscribers saw, raw MQTT 3.1.1
//! subscribers, waiting for a round's deliveries, and process memory.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{mqtt_packet as packet, mqtt_str as with_str};

static BASE: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (the clock payloads carry).
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The publish time a payload carries (its first `"t":<ns>`).
pub fn stamp(payload: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(payload).ok()?;
    let i = s.find("\"t\":")? + 4;
    let digits: String = s[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What one path's subscribers saw.
#[derive(Default)]
pub struct Seen {
    /// Deliveries counted.
    pub deliveries: AtomicU64,
    /// When the last one arrived.
    pub last_ns: AtomicU64,
    /// Publish-to-delivery times.
    pub latencies: Mutex<Vec<u64>>,
}

impl Seen {
    /// Counts a delivery published at `sent`.
    pub fn record(&self, sent: u64) {
        let now = now_ns();
        self.latencies
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent));
        self.last_ns.fetch_max(now, Ordering::Relaxed);
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until `want` more deliveries than `before` arrived (at most a minute);
    /// deliveries per second since `start_ns`.
    pub async fn rate(&self, before: u64, want: u64, start_ns: u64, what: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.deliveries.load(Ordering::Relaxed) < before + want {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {want} deliveries",
                self.deliveries.load(Ordering::Relaxed) - before,
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let secs = (self.last_ns.load(Ordering::Relaxed) - start_ns) as f64 / 1e9;
        want as f64 / secs
    }
}

/// Prints a line per path (`prefix name: rate, p50, p99`) from its round rates and the
/// latencies its subscribers saw; returns the second path's rate over the first's.
pub fn report(prefix: &str, paths: [(&str, f64, &Seen); 2]) -> f64 {
    for (name, rate, seen) in &paths {
        let mut lat = std::mem::take(&mut *seen.latencies.lock().unwrap());
        println!(
            "{prefix} {name}: {rate:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
            quantile_ms(&mut lat, 0.5),
            quantile_ms(&mut lat, 0.99),
            lat.len()
        );
    }
    paths[1].1 / paths[0].1
}

/// The `q` quantile of latencies in ns, in ms.
pub fn quantile_ms(l: &mut [u64], q: f64) -> f64 {
    l.sort_unstable();
    l[((l.len() as f64 * q) as usize).min(l.len() - 1)] as f64 / 1e6
}

/// The process's resident memory in KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// An MQTT 3.1.1 connection (anonymous: tenant `default`) with CONNECT sent and CONNACK read.
pub async fn mqtt(tcp: SocketAddr, id: &str) -> TcpStream {
    let mut s = TcpStream::connect(tcp).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut body = Vec::new();
    with_str("MQTT", &mut body);
    body.extend_from_slice(&[4, 0x02, 0, 120]);
    with_str(id, &mut body);
    s.write_all(&packet(0x10, &body)).await.unwrap();
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack[3], 0, "CONNACK accepted");
    s
}

/// An MQTT subscriber to `topic` counting PUBLISH packets into `seen`.
pub async fn mqtt_subscriber(tcp: SocketAddr, i: usize, topic: &str, seen: Arc<Seen>) {
    let mut s = mqtt(tcp, &format!("fan-{i}")).await;
    let mut body = vec![0, 1];
    with_str(topic, &mut body);
    body.push(0);
    s.write_all(&packet(0x82, &body)).await.unwrap();
    let mut suback = [0u8; 5];
    s.read_exact(&mut suback).await.unwrap();
    tokio::spawn(async move {
        let mut buf = bytes::BytesMut::with_capacity(64 << 10);
        loop {
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            while let Some((first, start, len)) = header(&buf) {
                if buf.len() < start + len {
                    break;
                }
                let p = buf.split_to(start + len);
                if first >> 4 == 3 {
                    let tl = u16::from_be_bytes([p[start], p[start + 1]]) as usize;
                    if let Some(t) = stamp(&p[start + 2 + tl..]) {
                        seen.record(t);
                    }
                }
            }
        }
    });
}

/// (first byte, header length, remaining length) of the packet at the buffer's start.
fn header(b: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    for i in 1..5 {
        let x = *b.get(i)?;
        len |= ((x & 0x7f) as usize) << (7 * (i - 1));
        if x & 0x80 == 0 {
            return Some((b[0], i + 1, len));
        }
    }
    None
}
