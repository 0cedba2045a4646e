//! Clients that behave badly in ways the protocol allows or that happen on real networks:
//! packets pipelined behind CONNECT, a client that stops reading, CONNECT races on one
//! client id.

use crate::common;

use std::time::Duration;

use common::raw::{self, Raw};
use common::{eventually, v3, TestBroker, Tr};

#[tokio::test]
async fn packets_sent_with_connect_are_served_without_waiting_for_more_input() {
    let tb = TestBroker::start().await;
    let mut r = Raw::connect(tb.tcp_addr()).await;
    let mut burst = raw::connect(4, "eager", true, 0);
    burst.extend(raw::subscribe_v3(1, "e/#", 0));
    burst.extend(raw::packet(0xC0, &[])); // PINGREQ
    r.send(&burst).await;
    // CONNACK, SUBACK, PINGRESP, with nothing more sent.
    assert_eq!(
        r.read_n(4 + 5 + 2).await,
        vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00, 0xD0, 0x00]
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_can_still_be_taken_over_and_times_out() {
    let tb = TestBroker::start_with(|c| c.listeners.write_timeout_secs = 2).await;
    let mut stuck = Raw::connect(tb.tcp_addr()).await;
    stuck.send(&raw::connect(4, "stuck", true, 0)).await;
    stuck.read_n(4).await;
    stuck.send(&raw::subscribe_v3(1, "flood", 0)).await;
    stuck.read_n(5).await;
    // Fill every buffer between us: the broker's write blocks.
    let mut o = v3::opts(&tb, "pub", Tr::Tcp);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (p, _) = v3::connect(o).await;
    let big = vec![0u8; 256 * 1024];
    for _ in 0..200 {
        p.c.publish("flood", v3::QoS::AtMostOnce, false, big.clone())
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new connection with the same id gets through while the old write is blocked.
    let (mut again, _) = v3::connect(v3::opts(&tb, "stuck", Tr::Tcp)).await;
    again
        .c
        .subscribe("still", v3::QoS::AtMostOnce)
        .await
        .unwrap();
    again.suback().await;
    assert_eq!(tb.broker().registry.len(), 2);

    // And a stuck client alone is closed after the write timeout.
    let mut stuck2 = Raw::connect(tb.tcp_addr()).await;
    stuck2.send(&raw::connect(4, "stuck2", true, 0)).await;
    stuck2.read_n(4).await;
    stuck2.send(&raw::subscribe_v3(1, "flood2", 0)).await;
    stuck2.read_n(5).await;
    for _ in 0..200 {
        p.c.publish("flood2", v3::QoS::AtMostOnce, false, big.clone())
            .await
            .unwrap();
    }
    eventually("stuck2 closed by the write timeout", || {
        tb.broker().registry.get("default", "stuck2").is_none()
    })
    .await;
}

#[tokio::test]
async fn racing_connects_with_one_client_id_leave_exactly_one_connection() {
    let tb = TestBroker::start().await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut o = v3::opts(&tb, "racer", if i % 2 == 0 { Tr::Tcp } else { Tr::Ws });
        o.set_clean_session(i % 3 == 0);
        tasks.push(tokio::spawn(async move { v3::connect(o).await.0 }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    // All but one get closed; the survivor is the registered, online session.
    let b = tb.broker().clone();
    eventually("one session online", || {
        b.registry.len() == 1 && b.registry.connected_count() == 1
    })
    .await;
    let mut closed = 0;
    for c in clients.iter_mut() {
        if tokio::time::timeout(Duration::from_millis(500), c.closed())
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 7, "every connection but one was told to go");
}
