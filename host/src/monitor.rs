//! The broker's recent history for the dashboard, in the shape of EMQX's
//! `/api/v5/monitor` and `/api/v5/monitor_current`: a sample of the gauges and of the
//! message counters' growth every [`INTERVAL`], the last hour kept in memory, so a page
//! opened now can chart the minutes before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::broker::Broker;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept: one hour.
const KEEP: usize = 360;

/// One sample: gauges as they were, counters as their growth since the previous sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix milliseconds.
    pub time_stamp: u64,
    /// Open connections over every listener (connected or still in CONNECT).
    pub connections: u64,
    /// Sessions with a connection attached.
    pub live_connections: u64,
    /// Sessions, online or not.
    pub sessions: u64,
    /// Subscriptions.
    pub subscriptions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Messages received since the previous sample.
    pub received: u64,
    /// Messages sent since the previous sample.
    pub sent: u64,
    /// Messages dropped since the previous sample.
    pub dropped: u64,
    #[serde(skip)]
    totals: Totals,
}

/// The message counters' values at one instant.
#[derive(Debug, Clone, Copy)]
struct Totals {
    at: Instant,
    received: u64,
    sent: u64,
    dropped: u64,
}

/// One MQTT listener's figures.
#[derive(Debug, Serialize)]
pub struct ListenerFigures {
    /// `tcp`, `tls`, `ws` or `wss`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The configured address.
    pub bind: String,
    /// Connections open on it now.
    pub current_connections: u64,
    /// Connections it has accepted since the start.
    pub accepted: u64,
}

/// The figures now, with rates over the last sample's interval.
#[derive(Debug, Serialize)]
pub struct Current {
    /// The gauges now (counter fields hold the growth since the last sample).
    #[serde(flatten)]
    pub now: Sample,
    /// Messages received per second.
    pub received_msg_rate: f64,
    /// Messages sent per second.
    pub sent_msg_rate: f64,
    /// Messages dropped per second.
    pub dropped_msg_rate: f64,
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    /// The broker's version.
    pub version: &'static str,
    /// Per listener.
    pub listeners: Vec<ListenerFigures>,
}

/// The kept samples.
#[derive(Debug, Default)]
pub struct Monitor {
    samples: parking_lot::Mutex<VecDeque<Sample>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn totals(b: &Broker) -> Totals {
    let m = &b.metrics;
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Totals {
        at: Instant::now(),
        received: ld(&m.messages_received),
        sent: ld(&m.messages_sent),
        dropped: ld(&m.dropped_queue_full)
            + ld(&m.dropped_qos0_offline)
            + ld(&m.dropped_expired)
            + ld(&m.dropped_too_large),
    }
}

/// The figures now, counters as growth since `prev` (or zero without one).
fn measure(b: &Broker, prev: Option<&Sample>) -> Sample {
    let t = totals(b);
    let grew =
        |now: u64, f: fn(&Totals) -> u64| prev.map_or(0, |p| now.saturating_sub(f(&p.totals)));
    Sample {
        time_stamp: unix_ms(),
        connections: b
            .metrics
            .open
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum(),
        live_connections: b.registry.connected_count() as u64,
        sessions: b.registry.len() as u64,
        subscriptions: b.metrics.subscriptions.load(Ordering::Relaxed),
        retained: b.retained.len() as u64,
        received: grew(t.received, |x| x.received),
        sent: grew(t.sent, |x| x.sent),
        dropped: grew(t.dropped, |x| x.dropped),
        totals: t,
    }
}

impl Monitor {
    /// Takes a sample, dropping the oldest past an hour.
    pub fn sample(&self, b: &Broker) {
        let prev = self.samples.lock().back().copied();
        let s = measure(b, prev.as_ref());
        let mut samples = self.samples.lock();
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back(s);
    }

    /// The samples of the last `secs` seconds, oldest first.
    pub fn history(&self, secs: u64) -> Vec<Sample> {
        let since = unix_ms().saturating_sub(secs.saturating_mul(1000));
        let samples = self.samples.lock();
        samples
            .iter()
            .filter(|s| s.time_stamp > since)
            .copied()
            .collect()
    }

    /// The figures now; rates over the time since the newest sample at least a second
    /// old (zero before there is one).
    pub fn current(&self, b: &Broker) -> Current {
        let base = {
            let samples = self.samples.lock();
            samples
                .iter()
                .rev()
                .find(|s| s.totals.at.elapsed() >= Duration::from_secs(1))
                .copied()
        };
        let now = measure(b, base.as_ref());
        let secs = base.map_or(0.0, |s| {
            now.totals.at.duration_since(s.totals.at).as_secs_f64()
        });
        let rate = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        Current {
            received_msg_rate: rate(now.received),
            sent_msg_rate: rate(now.sent),
            dropped_msg_rate: rate(now.dropped),
            uptime_secs: b.started.elapsed().as_secs(),
            version: env!("CARGO_PKG_VERSION"),
            listeners: listeners(b),
            now,
        }
    }
}

fn listeners(b: &Broker) -> Vec<ListenerFigures> {
    let c = b.config();
    let l = &c.listeners;
    [("tcp", l.tcp), ("tls", l.tls), ("ws", l.ws), ("wss", l.wss)]
        .into_iter()
        .enumerate()
        .filter_map(|(i, (kind, addr))| {
            let addr = addr?;
            Some(ListenerFigures {
                kind,
                bind: addr.to_string(),
                current_connections: b.metrics.open[i].load(Ordering::Relaxed),
                accepted: b.metrics.accepted[i].load(Ordering::Relaxed),
            })
        })
        .collect()
}

/// Samples every [`INTERVAL`] until shutdown (the first at once).
pub async fn run(broker: Broker) {
    let mut tick = tokio::time::interval(INTERVAL);
    // After a stall, one late sample rather than a burst of them milliseconds apart.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => broker.monitor.sample(&broker),
            _ = broker.stopped() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikeys::ApiKeyStore;
    use crate::config::Config;

    #[tokio::test]
    async fn samples_hold_counter_growth_and_the_history_is_bounded() {
        let b = Broker::new(Config::default(), ApiKeyStore::default());
        b.monitor.sample(&b);
        b.metrics.messages_received.fetch_add(7, Ordering::Relaxed);
        b.metrics.dropped_expired.fetch_add(2, Ordering::Relaxed);
        b.monitor.sample(&b);
        let h = b.monitor.history(3600);
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].received, h[1].received, h[1].dropped), (0, 7, 2));
        for _ in 0..KEEP + 5 {
            b.monitor.sample(&b);
        }
        assert_eq!(b.monitor.history(u64::MAX).len(), KEEP);
        assert_eq!(b.monitor.history(0).len(), 0);
    }

    #[tokio::test]
    async fn current_rates_are_over_the_last_sample_a_second_old() {
        let b = Broker::new(Config::default(), ApiKeyStore::default());
        assert_eq!(b.monitor.current(&b).received_msg_rate, 0.0);
        b.monitor.sample(&b);
        {
            // Age the sample by hand: a second-old base without sleeping.
            let mut s = b.monitor.samples.lock();
            let back = s.back_mut().unwrap();
            back.totals.at -= Duration::from_secs(2);
        }
        b.metrics.messages_sent.fetch_add(10, Ordering::Relaxed);
        let c = b.monitor.current(&b);
        assert_eq!(c.now.sent, 10);
        assert!(
            c.sent_msg_rate > 4.0 && c.sent_msg_rate <= 5.0,
            "{}",
            c.sent_msg_rate
        );
    }
}
