//! rumqttd with its stock settings (from rumqttd.toml) on `127.0.0.1:PORT`, MQTT 3.1.1,
//! no console, no prometheus: the peer `cargo xtask bench` measures Apiary against.

fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: rumqttd-peer PORT");
    let config = format!(
        r#"id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:{port}"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config).expect("valid rumqttd config");
    let mut broker = rumqttd::Broker::new(config);
    println!("rumqttd listening on 127.0.0.1:{port}");
    broker.start().expect("rumqttd runs");
}
