//! `apiary bench` in smoke mode against a real broker: every scenario delivers every
//! message it should (counts, never timings), over TCP and WebSocket, 3.1.1 and 5,
//! QoS 0 (paced), 1 and 2.

use std::time::Duration;

use apiary_bench::{run, Opts, Scenario};

use crate::common::{TestBroker, Tr};

fn opts(tb: &TestBroker, t: Tr) -> Opts {
    Opts {
        port: tb.port(t),
        ws: t == Tr::Ws,
        clients: 3,
        count: Some(200),
        duration: Duration::from_secs(30),
        ..Opts::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_delivers_its_messages() {
    let tb = TestBroker::start().await;
    for (sc, qos, version, t) in [
        (Scenario::P2p, 1, 4, Tr::Tcp),
        (Scenario::FanOut, 2, 5, Tr::Tcp),
        (Scenario::FanIn, 1, 5, Tr::Ws),
        (Scenario::FanInShared, 1, 4, Tr::Tcp),
        (Scenario::P2p, 0, 4, Tr::Ws),
    ] {
        let mut o = opts(&tb, t);
        o.qos = qos;
        o.version = version;
        if qos == 0 {
            o.rate = Some(2000);
        }
        let r = run(sc, o).await.unwrap();
        // Fan-out: one publisher, three receivers each; otherwise three publishers.
        let want = 600;
        assert_eq!(
            r.sent,
            if sc == Scenario::FanOut { 200 } else { 600 },
            "{}",
            r.line()
        );
        assert_eq!(
            (r.expected, r.received, r.lost, r.errors),
            (want, want, 0, 0),
            "{}",
            r.line()
        );
        assert_eq!(
            r.latency_us.samples, want,
            "every message carried a timestamp"
        );
    }
    let r = run(
        Scenario::Pub,
        Opts {
            qos: 1,
            ..opts(&tb, Tr::Tcp)
        },
    )
    .await
    .unwrap();
    assert_eq!((r.sent, r.errors), (600, 0), "{}", r.line());
    let mut o = opts(&tb, Tr::Tcp);
    o.clients = 20;
    o.rate = Some(1000);
    o.duration = Duration::from_millis(300);
    let r = run(Scenario::Conn, o).await.unwrap();
    assert_eq!((r.connected, r.errors), (20, 0), "{}", r.line());
}

#[tokio::test]
async fn a_refused_connection_is_an_error_not_a_hang() {
    let tb =
        TestBroker::start_with(|c| c.auth.allow_anonymous = apiary::config::Anonymous::Never).await;
    let err = run(Scenario::P2p, opts(&tb, Tr::Tcp)).await.unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}
