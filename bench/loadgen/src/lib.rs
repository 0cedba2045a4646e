//! `apiary bench`: a load generator for any MQTT broker (like `nats bench` or
//! emqtt-bench). Scenarios: `pub`, `sub`, `conn`, and the composed point-to-point,
//! fan-out, fan-in and shared fan-in. Publishers stamp each payload with the send time, so
//! subscribers measure end-to-end latency; the run reports msg/s each way, latency
//! percentiles, losses and errors, with a live progress line and an optional JSON file.

mod client;
mod stats;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

pub use stats::{Percentiles, Stats};

/// Why a bench client failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Unexpected or undecodable packet, or a WebSocket failure.
    #[error("protocol: {0}")]
    Protocol(String),
    /// CONNACK refused the connection with this code.
    #[error("connection refused with code {0}")]
    Refused(u8),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
}

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N publishers, nobody subscribed: broker ingress.
    Pub,
    /// N subscribers on `bench/sub/#` for the duration, for an external publisher.
    Sub,
    /// N connections at `rate` per second, held idle.
    Conn,
    /// N publisher/subscriber pairs, each pair on its own topic.
    P2p,
    /// One publisher, N subscribers on one topic.
    FanOut,
    /// N publishers, one subscriber on a wildcard.
    FanIn,
    /// N publishers, two subscribers sharing one wildcard subscription.
    FanInShared,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 7] = [
        Scenario::P2p,
        Scenario::FanOut,
        Scenario::FanIn,
        Scenario::FanInShared,
        Scenario::Pub,
        Scenario::Sub,
        Scenario::Conn,
    ];

    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Conn => "conn",
            Scenario::P2p => "p2p",
            Scenario::FanOut => "fan-out",
            Scenario::FanIn => "fan-in",
            Scenario::FanInShared => "fan-in-shared",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Options of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Ports subscribers connect to instead, round robin (other nodes of a cluster);
    /// empty: `port`.
    pub sub_ports: Vec<u16>,
    /// WebSocket (path /mqtt) instead of TCP.
    pub ws: bool,
    /// 4 (3.1.1) or 5.
    pub version: u8,
    /// QoS of publishes and subscriptions.
    pub qos: u8,
    /// Payload bytes (at least 16: send time and sequence number).
    pub size: usize,
    /// Publishers, subscribers or connections (by scenario).
    pub clients: usize,
    /// Messages per second per publisher (conn: connections per second); None = unbounded.
    pub rate: Option<u64>,
    /// How long publishers publish (conn: how long connections are held).
    pub duration: Duration,
    /// Messages per publisher instead of a duration.
    pub count: Option<u64>,
    /// QoS 1/2 messages a publisher keeps unacknowledged (capped by the broker's receive
    /// maximum).
    pub inflight: u16,
    /// Username for CONNECT.
    pub username: Option<String>,
    /// Password for CONNECT.
    pub password: Option<String>,
    /// Print a progress line to stderr every second.
    pub progress: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 1883,
            sub_ports: Vec::new(),
            ws: false,
            version: 4,
            qos: 0,
            size: 16,
            clients: 10,
            rate: None,
            duration: Duration::from_secs(10),
            count: None,
            inflight: 64,
            username: None,
            password: None,
            progress: false,
        }
    }
}

/// The result of one run (also the JSON result file).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// Clients (publishers, subscribers or connections).
    pub clients: usize,
    /// QoS.
    pub qos: u8,
    /// Payload bytes.
    pub size: usize,
    /// Protocol level.
    pub version: u8,
    /// "tcp" or "ws".
    pub transport: &'static str,
    /// Seconds publishers published (conn: seconds to establish every connection).
    pub seconds: f64,
    /// Messages published (QoS 1/2: acknowledged).
    pub sent: u64,
    /// Messages subscribers received.
    pub received: u64,
    /// Messages subscribers should have received.
    pub expected: u64,
    /// expected - received (0 when more arrived).
    pub lost: u64,
    /// Connection and protocol errors.
    pub errors: u64,
    /// Connections established (conn).
    pub connected: u64,
    /// Published per second.
    pub sent_per_sec: f64,
    /// Received per second.
    pub received_per_sec: f64,
    /// End-to-end latency in µs (conn: CONNECT to CONNACK).
    pub latency_us: Percentiles,
}

impl Report {
    /// One human line.
    pub fn line(&self) -> String {
        let l = &self.latency_us;
        if self.scenario == Scenario::Conn {
            return format!(
                "{}: {} of {} connections in {:.2} s, connect p50 {} µs p99 {} µs max {} µs, {} errors",
                self.scenario.name(), self.connected, self.clients, self.seconds, l.p50, l.p99, l.max, self.errors
            );
        }
        format!(
            "{}: sent {} ({:.0}/s), received {} of {} ({:.0}/s), lost {}, errors {}, latency p50 {} µs p90 {} µs p99 {} µs max {} µs",
            self.scenario.name(), self.sent, self.sent_per_sec, self.received, self.expected,
            self.received_per_sec, self.lost, self.errors, l.p50, l.p90, l.p99, l.max
        )
    }
}

/// Runs one scenario against the broker in `o`.
pub async fn run(scenario: Scenario, o: Opts) -> Result<Report, BenchError> {
    if o.qos > 2 || !(o.version == 4 || o.version == 5) {
        return Err(BenchError::Protocol("qos is 0-2 and version 4 or 5".into()));
    }
    let o = Arc::new(Opts {
        size: o.size.max(16),
        clients: o.clients.max(1),
        ..o
    });
    tasks::run(scenario, o).await
}
