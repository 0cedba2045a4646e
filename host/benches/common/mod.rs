//! Shared by the registry and emqx benchmarks: a registry filled with varied sessions.

use std::sync::Arc;

use apiary::session::{ClientInfo, Session, Transport};

/// Inserts `n` sessions into the default tenant: 1000 usernames, half 3.1.1 and half 5,
/// two thirds connected, one in five clean start, 250 peers per /24.
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
