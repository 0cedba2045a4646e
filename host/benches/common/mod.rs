//! Shared by the benchmarks: a registry filled with varied sessions, and the reading of
//! an HTTP answer on a keep-alive connection.

use std::sync::Arc;

#[allow(dead_code)] // only the fan-out benchmarks
pub mod fanout;

use apiary::session::{ClientInfo, Session, Transport};

/// Inserts `n` sessions into the default tenant: 1000 usernames, half 3.1.1 and half 5,
/// two thirds connected, one in five clean start, 250 peers per /24.
#[allow(dead_code)] // not every benchmark needs sessions
pub fn populate(b: &apiary::Broker, n: usize) {
    for i in 0..n {
        let user: Arc<str> = format!("user{}", i % 1000).into();
        let info = ClientInfo {
            username: Some(user.clone()),
            user_id: Some(user),
            proto_name: "MQTT",
            proto_ver: if i % 2 == 0 { 4 } else { 5 },
            transport: Transport::Tcp,
            peer: Some(
                format!("10.0.{}.{}:1883", (i / 250) % 250, i % 250)
                    .parse()
                    .unwrap(),
            ),
            connected: i % 3 != 0,
            connected_at: Some(std::time::SystemTime::now()),
            disconnected_at: None,
            keepalive: 60,
            clean_start: i % 5 == 0,
            expiry_interval: 3600,
            inflight_max: 32,
            superuser: false,
            description: None,
        };
        let s = Session::new(
            b.next_id(),
            "default".into(),
            format!("client-{i:06}").into(),
            info,
        );
        b.registry.insert(Arc::new(s));
    }
}

/// Reads one HTTP answer (status line, headers, a `content-length` body) from a
/// keep-alive connection; returns the status.
#[allow(dead_code)] // not every benchmark speaks HTTP
pub async fn read_answer(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> u16 {
    read_answer_body(conn).await.0
}

/// [`read_answer`], with the body as text.
#[allow(dead_code)] // not every benchmark speaks HTTP
pub async fn read_answer_body(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status = line[9..12].parse().unwrap();
    let mut len = 0usize;
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await.unwrap();
    (status, String::from_utf8_lossy(&body).to_string())
}

/// A broker serving one stock plugin (built by `cargo xtask plugins`) from `dir/plugins`,
/// its toml with each `(from, to)` of `replace` applied (e.g. its listen address), with
/// `keys` as the API keys file; no WebSocket or TLS listeners.
#[allow(dead_code)] // not every benchmark loads a plugin
pub async fn with_stock_plugin(
    dir: &std::path::Path,
    name: &str,
    replace: &[(&str, &str)],
    keys: &str,
) -> apiary::Server {
    let mut cfg = apiary::Config::ephemeral(dir.join("data"));
    cfg.listeners.ws = None;
    cfg.listeners.tls = None;
    cfg.listeners.wss = None;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    cfg.plugin_cache_dir = Some(root.join("target/test-plugin-cache"));
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let built = root.join(format!("target/plugins/{name}.wasm"));
    assert!(built.exists(), "run `cargo xtask plugins` first");
    std::fs::copy(&built, plugins.join(format!("{name}.wasm"))).unwrap();
    let mut toml =
        std::fs::read_to_string(root.join(format!("plugins/{name}/{name}.toml"))).unwrap();
    for (from, to) in replace {
        toml = toml.replace(from, to);
    }
    std::fs::write(plugins.join(format!("{name}.toml")), toml).unwrap();
    let keys_file = dir.join("keys");
    std::fs::write(&keys_file, keys).unwrap();
    cfg.api_keys_file = Some(keys_file);
    cfg.plugins_dir = plugins;
    apiary::start(cfg).await.expect("broker starts")
}

/// [`with_stock_plugin`] for a plugin with a listener of its own: its stock `listen`
/// (`stock_listen`) becomes port 0 on loopback; returns where it was bound.
#[allow(dead_code)] // not every benchmark loads such a plugin
pub async fn with_listening_plugin(
    dir: &std::path::Path,
    name: &str,
    stock_listen: &str,
    keys: &str,
) -> (apiary::Server, std::net::SocketAddr) {
    let srv = with_stock_plugin(dir, name, &[(stock_listen, "127.0.0.1:0")], keys).await;
    let addr = srv
        .broker
        .plugins()
        .and_then(|m| m.listen_addr(name))
        .unwrap_or_else(|| panic!("the {name} plugin did not load (see the log)"));
    (srv, addr)
}

/// An MQTT string: its length, then its bytes.
#[allow(dead_code)] // not every benchmark writes MQTT by hand
pub fn mqtt_str(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// One MQTT packet: fixed header byte, remaining length, body.
#[allow(dead_code)] // not every benchmark writes MQTT by hand
pub fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    let mut n = body.len();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        p.push(b);
        if n == 0 {
            break;
        }
    }
    p.extend_from_slice(body);
    p
}
