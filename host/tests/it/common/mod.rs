//! Shared test harness: an in-process broker on ephemeral ports and thin wrappers over
//! rumqttc's 3.1.1 and 5 clients that surface every incoming packet to the test.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use apiary::{Config, Server};

/// Upper bound for waiting on something that should happen; a failure, not a benchmark.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker running in this test's runtime.
pub struct TestBroker {
    pub server: Server,
    pub dir: tempfile::TempDir,
}

impl TestBroker {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(tempfile::tempdir().expect("tempdir"), f, None).await
    }

    /// A broker over a store backend the test controls (faults, slowness).
    pub async fn start_with_backend(
        f: impl FnOnce(&mut Config),
        backend: impl FnOnce(&std::path::Path) -> Arc<dyn apiary::store::Backend>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let b = backend(&dir.path().join("data/store"));
        Self::start_in(dir, f, Some(b)).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        f: impl FnOnce(&mut Config),
        backend: Option<Arc<dyn apiary::store::Backend>>,
    ) -> Self {
        let mut cfg = Config::ephemeral(dir.path().join("data"));
        // Compiled plugins are keyed by content hash: every test may share them, with one
        // key authenticating the entries.
        let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
        cfg.plugin_cache_dir = Some(target.join("test-plugin-cache"));
        cfg.plugin_cache_key_file = Some(target.join("test-plugin-cache.key"));
        f(&mut cfg);
        let server = apiary::start_with_backend(cfg, backend)
            .await
            .expect("broker starts");
        Self { server, dir }
    }

    /// Stops the broker gracefully and starts a new one over the same data dir (new
    /// ports), configured by `f` again.
    pub async fn restart(self, f: impl FnOnce(&mut Config)) -> Self {
        let TestBroker { server, dir } = self;
        server.shutdown().await;
        Self::start_in(dir, f, None).await
    }

    pub fn broker(&self) -> &apiary::Broker {
        &self.server.broker
    }

    pub fn port(&self, t: Tr) -> u16 {
        let a = &self.server.addrs;
        match t {
            Tr::Tcp => a.tcp,
            Tr::Ws => a.ws,
            Tr::Tls => a.tls,
            Tr::Wss => a.wss,
        }
        .expect("listener enabled")
        .port()
    }

    /// rumqttc's host argument and transport for a listener.
    pub fn endpoint(&self, t: Tr) -> (String, u16, rumqttc::Transport) {
        let port = self.port(t);
        match t {
            Tr::Tcp => ("127.0.0.1".into(), port, rumqttc::Transport::Tcp),
            Tr::Ws => (
                format!("ws://127.0.0.1:{port}/mqtt"),
                port,
                rumqttc::Transport::Ws,
            ),
            Tr::Tls => (
                "localhost".into(),
                port,
                rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(self.tls_client())),
            ),
            Tr::Wss => (
                format!("wss://localhost:{port}/mqtt"),
                port,
                rumqttc::Transport::Wss(rumqttc::TlsConfiguration::Rustls(self.tls_client())),
            ),
        }
    }

    /// A rustls client config trusting the broker's generated certificate.
    pub fn tls_client(&self) -> Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let pem = self.dir.path().join("data/tls/server.pem");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pem).expect("cert file") {
            roots.add(c.expect("cert")).expect("add root");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    pub fn tcp_addr(&self) -> std::net::SocketAddr {
        self.server.addrs.tcp.expect("tcp")
    }

    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.server.addrs.http.expect("http")
    }
}

/// The toml a stock plugin ships with (`plugins/NAME/NAME.toml`).
pub fn stock_toml(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../plugins/{name}/{name}.toml"));
    std::fs::read_to_string(p).expect("stock toml")
}

/// A broker serving built plugins from a fresh plugins directory: each entry is (built
/// plugin, name installed as, its toml); `keys` becomes its API keys file. The directory
/// lives as long as the returned `TempDir`.
pub async fn with_plugins(
    plugins: &[(&str, &str, &str)],
    keys: &str,
    f: impl FnOnce(&mut Config),
) -> (TestBroker, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).expect("plugins dir");
    for (built, name, toml) in plugins {
        crate::plugins::install(&pdir, built, name, Some(toml));
    }
    let keys_file = root.path().join("keys");
    std::fs::write(&keys_file, keys).expect("keys file");
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = pdir;
        c.api_keys_file = Some(keys_file);
        f(c);
    })
    .await;
    (tb, root)
}

/// A v5 will on `topic` (QoS 1, payload `payload`) with a will delay.
pub fn will_v5(topic: &str, payload: &str, delay: u32) -> rumqttc::v5::mqttbytes::v5::LastWill {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    LastWill::new(
        topic,
        payload.to_string(),
        rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        false,
        Some(LastWillProperties {
            delay_interval: Some(delay),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![],
        }),
    )
}

/// A listener kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tr {
    Tcp,
    Ws,
    Tls,
    Wss,
}

pub const ALL_TRANSPORTS: [Tr; 4] = [Tr::Tcp, Tr::Ws, Tr::Tls, Tr::Wss];

/// Waits until `f` holds, polling; panics with `what` after [`WAIT`].
/// [`eventually`] for a condition that must be awaited (an HTTP call, a kv read).
pub async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

macro_rules! client_module {
    ($name:ident, $root:path, $packet:path, $publish:path, $qos:path) => {
        pub mod $name {
            use super::*;
            use tokio::sync::mpsc;
            pub use $packet as Packet;
            #[allow(unused_imports)]
            pub use $publish as Publish;
            #[allow(unused_imports)]
            pub use $qos as QoS;
            use $root::{AsyncClient, Event, MqttOptions};

            /// A connected client whose event loop runs in a task; incoming packets are
            /// queued for the test. The loop stops at the first error (no reconnect).
            pub struct Client {
                pub c: AsyncClient,
                rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
                task: tokio::task::JoinHandle<()>,
            }

            pub fn opts(tb: &TestBroker, id: &str, t: Tr) -> MqttOptions {
                let (host, port, transport) = tb.endpoint(t);
                let mut o = MqttOptions::new(id, host, port);
                o.set_transport(transport);
                o.set_keep_alive(Duration::from_secs(30));
                o
            }

            /// Connects and returns the client with its CONNACK.
            pub async fn connect(o: MqttOptions) -> (Client, Packet) {
                let (c, mut el) = AsyncClient::new(o, 100);
                let (tx, rx) = mpsc::unbounded_channel();
                let task = tokio::spawn(async move {
                    loop {
                        match el.poll().await {
                            Ok(Event::Incoming(p)) => {
                                if tx.send(Ok(p)).is_err() {
                                    return;
                                }
                            }
                            Ok(Event::Outgoing(_)) => {}
                            Err(e) => {
                                let _ = tx.send(Err(e.to_string()));
                                return;
                            }
                        }
                    }
                });
                let mut client = Client { c, rx, task };
                let ack = client.next().await.expect("CONNACK");
                (client, ack)
            }

            impl Client {
                /// Next incoming packet; Err when the connection failed; panics after WAIT.
                pub async fn next(&mut self) -> Result<Packet, String> {
                    match tokio::time::timeout(WAIT, self.rx.recv()).await {
                        Ok(Some(p)) => p,
                        Ok(None) => Err("event loop ended".into()),
                        Err(_) => panic!("no packet within {WAIT:?}"),
                    }
                }

                /// Waits for the next PUBLISH, skipping other packets.
                pub async fn publish(&mut self) -> Publish {
                    loop {
                        match self.next().await {
                            Ok(Packet::Publish(p)) => return p,
                            Ok(_) => continue,
                            Err(e) => panic!("connection failed while waiting for PUBLISH: {e}"),
                        }
                    }
                }

                /// Asserts no PUBLISH arrives within `d`.
                pub async fn no_publish(&mut self, d: Duration) {
                    let deadline = tokio::time::Instant::now() + d;
                    loop {
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Err(_) => return,
                            Ok(Some(Ok(Packet::Publish(p)))) => panic!("unexpected PUBLISH {p:?}"),
                            Ok(Some(Ok(_))) => continue,
                            Ok(Some(Err(_))) | Ok(None) => return,
                        }
                    }
                }

                /// Waits for the next SUBACK.
                pub async fn suback(&mut self) -> Packet {
                    loop {
                        match self.next().await {
                            Ok(p @ Packet::SubAck(_)) => return p,
                            Ok(_) => continue,
                            Err(e) => panic!("connection failed while waiting for SUBACK: {e}"),
                        }
                    }
                }

                /// Waits until the connection fails or is closed; returns the error and
                /// every packet seen before it.
                pub async fn closed(&mut self) -> (String, Vec<Packet>) {
                    let mut seen = Vec::new();
                    loop {
                        match self.next().await {
                            Ok(p) => seen.push(p),
                            Err(e) => return (e, seen),
                        }
                    }
                }

                /// Drops the network connection without DISCONNECT (the event loop dies).
                pub fn kill(self) {
                    self.task.abort();
                }
            }
        }
    };
}

client_module!(v3, rumqttc, rumqttc::Packet, rumqttc::Publish, rumqttc::QoS);
client_module!(
    v5,
    rumqttc::v5,
    rumqttc::v5::mqttbytes::v5::Packet,
    rumqttc::v5::mqttbytes::v5::Publish,
    rumqttc::v5::mqttbytes::QoS
);

/// Hand-built packets for what real client libraries refuse to send.
pub mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::WAIT;

    fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    /// A packet from its first byte and body.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![first];
        remaining_length(body.len(), &mut v);
        v.extend_from_slice(body);
        v
    }

    fn string(s: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    /// CONNECT for protocol `level` (4 = 3.1.1, 5 = 5.0) with no will or credentials.
    pub fn connect(level: u8, client_id: &str, clean: bool, keepalive: u16) -> Vec<u8> {
        let mut b = Vec::new();
        string("MQTT", &mut b);
        b.push(level);
        b.push(if clean { 0x02 } else { 0x00 });
        b.extend_from_slice(&keepalive.to_be_bytes());
        if level == 5 {
            b.push(0); // no properties
        }
        string(client_id, &mut b);
        packet(0x10, &b)
    }

    /// PUBLISH QoS 0 (3.1.1 layout) with an arbitrary topic string.
    pub fn publish_v3(topic: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        string(topic, &mut b);
        b.extend_from_slice(payload);
        packet(0x30, &b)
    }

    /// SUBSCRIBE (3.1.1 layout) of one filter.
    pub fn subscribe_v3(pid: u16, filter: &str, qos: u8) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        string(filter, &mut b);
        b.push(qos);
        packet(0x82, &b)
    }

    /// A raw TCP connection to the broker.
    pub struct Raw(pub TcpStream);

    impl Raw {
        pub async fn connect(addr: SocketAddr) -> Self {
            Raw(TcpStream::connect(addr).await.expect("tcp connect"))
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            // The broker may already have closed: that is what some tests wait for.
            let _ = self.0.write_all(bytes).await;
        }

        /// Reads exactly n bytes (panics after WAIT).
        pub async fn read_n(&mut self, n: usize) -> Vec<u8> {
            let mut buf = vec![0u8; n];
            tokio::time::timeout(WAIT, self.0.read_exact(&mut buf))
                .await
                .expect("bytes within WAIT")
                .expect("read");
            buf
        }

        /// Reads until EOF (or reset); returns what arrived. Panics if the socket stays
        /// open past WAIT.
        pub async fn until_closed(&mut self) -> Vec<u8> {
            let mut all = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(WAIT, self.0.read(&mut buf)).await {
                    Err(_) => panic!("connection still open after {WAIT:?}; got {all:?}"),
                    Ok(Ok(0)) | Ok(Err(_)) => return all,
                    Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                }
            }
        }
    }
}

/// A store backend over fjall that a test can slow down or make fail.
pub struct FaultyBackend {
    inner: apiary::store::FjallBackend,
    /// Writes still to fail (each failing one decrements it).
    pub fail_writes: std::sync::atomic::AtomicU32,
    /// Milliseconds every write sleeps first.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl FaultyBackend {
    pub fn open(dir: &std::path::Path) -> Arc<Self> {
        Arc::new(Self {
            inner: apiary::store::FjallBackend::open(dir).expect("fjall"),
            fail_writes: Default::default(),
            delay_ms: Default::default(),
        })
    }
}

impl apiary::store::Backend for FaultyBackend {
    fn write(&self, batch: Vec<apiary::store::Write>) -> Result<(), apiary::store::StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let d = self.delay_ms.load(SeqCst);
        if d > 0 {
            std::thread::sleep(Duration::from_millis(d));
        }
        if self
            .fail_writes
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(apiary::store::StoreError::Backend {
                path: "test".into(),
                detail: "injected write failure (EIO)".into(),
            });
        }
        self.inner.write(batch)
    }
    fn flush(&self, durable: bool) -> Result<(), apiary::store::StoreError> {
        self.inner.flush(durable)
    }
    fn get(
        &self,
        space: apiary::store::Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, apiary::store::StoreError> {
        self.inner.get(space, key)
    }
    fn scan_prefix(
        &self,
        space: apiary::store::Space,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), apiary::store::StoreError> {
        self.inner.scan_prefix(space, prefix, f)
    }
    fn scan(
        &self,
        space: apiary::store::Space,
        f: apiary::store::ScanFn<'_>,
    ) -> Result<(), apiary::store::StoreError> {
        self.inner.scan(space, f)
    }
}

/// An auth-file toml: users dan and dora (tenant default), ann (tenant acme); a rule refuses `secret/#`.
pub const USERS_DENY_SECRET: &str = r#"roles = ["auth"]
capabilities = ["passwords"]
tenants = ["*"]
[config]
default = "allow"
[[config.users]]
username = "dan"
password = "pw"
[[config.users]]
username = "dora"
password = "pw"
[[config.users]]
username = "ann"
password = "pw"
tenant = "acme"
[[config.rules]]
permission = "deny"
topic = "secret/#"
"#;

/// One HTTP request over a fresh connection (basic auth if given); (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    body: &[u8],
) -> (u16, String) {
    let a = request(addr, method, path, auth, &[], body).await;
    (a.status, a.body)
}

/// An HTTP answer: status (0 if unreadable), headers (names lower case), body.
pub struct Answer {
    pub status: u16,
    pub headers: std::collections::HashMap<String, String>,
    pub body: String,
}

/// One HTTP request with extra headers over a fresh connection (basic auth if given).
pub async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    auth: Option<(&str, &str)>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some((k, sec)) = auth {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{k}:{sec}"));
        head.push_str(&format!("Authorization: Basic {b}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write");
    let mut resp = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut resp))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// Reads a counter from the broker's metrics text.
pub fn metric(tb: &TestBroker, name: &str) -> u64 {
    let text = apiary::http::metrics_text(tb.broker());
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

/// A test needs something a toolchain makes (a plugin in another language, the Node
/// clients) and it is missing: a failure in CI (`CI=true`) always, elsewhere unless
/// `APIARY_SKIP_MISSING_TOOLCHAINS=1` says to skip (as `cargo xtask test` then did too).
pub fn skip_missing(what: &str) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    let skip = std::env::var("APIARY_SKIP_MISSING_TOOLCHAINS").is_ok_and(|v| v == "1");
    assert!(
        skip && !ci,
        "{what} is missing; or set APIARY_SKIP_MISSING_TOOLCHAINS=1 outside CI to skip"
    );
    eprintln!("skipped (APIARY_SKIP_MISSING_TOOLCHAINS=1): {what} is missing");
}
