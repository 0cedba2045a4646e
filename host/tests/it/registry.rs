//! The session registry as admin API plugins will use it, driven against real MQTT
//! clients: queries and paging, kick, subscribe on behalf, publish as the broker, expiry of
//! a tenant's sessions, events, and tenant isolation.

use crate::common;

use std::time::Duration;

use apiary::registry::{Event, KickTarget, Page, Query};
use apiary::session::{SubOptions, Transport};
use bytes::Bytes;
use common::{eventually, v3, v5, TestBroker, Tr};
use rmqtt_codec::types::QoS as CQoS;

fn page(limit: usize, page: usize) -> Page {
    Page { page, limit }
}

#[tokio::test]
async fn query_filters_and_paging() {
    let tb = TestBroker::start().await;
    let mut keep = Vec::new();
    for (id, user, tr) in [
        ("alpha-1", "ann", Tr::Tcp),
        ("alpha-2", "bob", Tr::Ws),
        ("beta-1", "ann", Tr::Tls),
    ] {
        let mut o = v3::opts(&tb, id, tr);
        o.set_credentials(user, "pw");
        keep.push(v3::connect(o).await.0);
    }
    let mut o = v5::opts(&tb, "gamma", Tr::Wss);
    o.set_credentials("cy", "pw");
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    let (g, _) = v5::connect(o).await;
    g.c.disconnect().await.unwrap();
    let b = tb.broker();
    eventually("gamma offline", || {
        b.registry
            .get("default", "gamma")
            .is_some_and(|s| !s.is_online())
    })
    .await;

    let q = |q: Query| b.registry.query(&q, page(100, 1), &b.config());
    let ids = |r: apiary::registry::PageResult| {
        r.items.into_iter().map(|s| s.client_id).collect::<Vec<_>>()
    };
    assert_eq!(q(Query::default()).count, 4);
    assert_eq!(
        ids(q(Query {
            username: Some("ann".into()),
            ..Default::default()
        })),
        vec!["alpha-1", "beta-1"]
    );
    assert_eq!(
        ids(q(Query {
            like_client_id: Some("alpha".into()),
            ..Default::default()
        })),
        vec!["alpha-1", "alpha-2"]
    );
    assert_eq!(
        ids(q(Query {
            connected: Some(false),
            ..Default::default()
        })),
        vec!["gamma"]
    );
    assert_eq!(
        ids(q(Query {
            proto_ver: Some(5),
            ..Default::default()
        })),
        vec!["gamma"]
    );
    assert_eq!(
        ids(q(Query {
            transport: Some(Transport::Ws),
            ..Default::default()
        })),
        vec!["alpha-2"]
    );
    assert_eq!(
        ids(q(Query {
            ip: Some("127.0.0.1".parse().unwrap()),
            ..Default::default()
        }))
        .len(),
        4
    );
    assert_eq!(
        ids(q(Query {
            like_username: Some("o".into()),
            ..Default::default()
        })),
        vec!["alpha-2"]
    );
    assert_eq!(
        ids(q(Query {
            client_id: Some("beta-1".into()),
            ..Default::default()
        })),
        vec!["beta-1"]
    );
    let future = std::time::SystemTime::now() + Duration::from_secs(60);
    assert_eq!(
        q(Query {
            created_from: Some(future),
            ..Default::default()
        })
        .count,
        0
    );
    assert_eq!(
        q(Query {
            connected_to: Some(future),
            ..Default::default()
        })
        .count,
        4
    );

    // Paging: stable order, has_next, empty page past the end.
    let p1 = b.registry.query(&Query::default(), page(3, 1), &b.config());
    let p2 = b.registry.query(&Query::default(), page(3, 2), &b.config());
    let p3 = b.registry.query(&Query::default(), page(3, 3), &b.config());
    assert_eq!((p1.items.len(), p1.has_next), (3, true));
    assert_eq!((p2.items.len(), p2.has_next), (1, false));
    assert!(p3.items.is_empty() && p3.count == 4);
    let filtered = b.registry.query(
        &Query {
            username: Some("ann".into()),
            ..Default::default()
        },
        page(1, 2),
        &b.config(),
    );
    assert_eq!(
        (ids(filtered.clone()), filtered.count, filtered.has_next),
        (vec!["beta-1".to_string()], 2, false)
    );

    // The snapshot carries what the EMQX clients API shows.
    let s = b
        .registry
        .snapshot("default", "gamma", &b.config())
        .unwrap();
    assert_eq!(
        (
            s.username.as_deref(),
            s.proto_ver,
            s.clean_start,
            s.expiry_interval
        ),
        (Some("cy"), 5, false, 300)
    );
    assert!(
        s.connected_at.is_some()
            && s.disconnected_at.is_some()
            && s.recv_pkt >= 2
            && s.send_pkt >= 1
    );
    assert_eq!(s.listener, "wss:default");
}

#[tokio::test]
async fn kick_by_client_id_ends_connection_and_session_and_sends_the_will() {
    let tb = TestBroker::start().await;
    let (mut w, _) = v3::connect(v3::opts(&tb, "watch", Tr::Tcp)).await;
    w.c.subscribe("will/#", v3::QoS::AtLeastOnce).await.unwrap();
    w.suback().await;
    let mut o = v5::opts(&tb, "victim", Tr::Tcp);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(3600));
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "will/victim",
        "kicked",
        v5::QoS::AtLeastOnce,
        false,
        None,
    ));
    let (mut v, _) = v5::connect(o).await;
    let b = tb.broker();
    assert_eq!(
        b.kick("default", &KickTarget::ClientId("victim".into()), true),
        1
    );
    let (err, seen) = v.closed().await;
    let told = seen.iter().any(|p| matches!(p, v5::Packet::Disconnect(d) if d.reason_code == rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::AdministrativeAction));
    assert!(
        told || err.contains("AdministrativeAction"),
        "{err} {seen:?}"
    );
    assert_eq!(&w.publish().await.payload[..], b"kicked");
    eventually("session ended", || {
        b.registry.get("default", "victim").is_none()
    })
    .await;
    assert_eq!(
        b.kick("default", &KickTarget::ClientId("victim".into()), true),
        0
    );
}

#[tokio::test]
async fn kick_by_user_id_with_transport_filter() {
    let tb = TestBroker::start().await;
    let mut keep = Vec::new();
    for (id, tr) in [("u-tcp", Tr::Tcp), ("u-ws", Tr::Ws)] {
        let mut o = v3::opts(&tb, id, tr);
        o.set_credentials("dana", "pw");
        keep.push(v3::connect(o).await.0);
    }
    let b = tb.broker();
    let target = KickTarget::UserId {
        user_id: "dana".into(),
        only: Some(apiary::registry::Via::Transport(Transport::Ws)),
    };
    assert_eq!(b.kick("default", &target, false), 1);
    keep[1].closed().await;
    eventually("ws one offline", || {
        b.registry.get("default", "u-ws").is_none()
    })
    .await;
    assert!(b.registry.get("default", "u-tcp").unwrap().is_online());
    // An offline persistent session of the user is not affected by a kick that keeps it.
    let mut o = v3::opts(&tb, "u-kept", Tr::Tcp);
    o.set_credentials("dana", "pw");
    o.set_clean_session(false);
    let (c, _) = v3::connect(o).await;
    c.c.disconnect().await.unwrap();
    eventually("u-kept offline", || {
        b.registry
            .get("default", "u-kept")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    let offline_only = KickTarget::UserId {
        user_id: "dana".into(),
        only: Some(apiary::registry::Via::Transport(Transport::Tcp)),
    };
    keep[0].c.disconnect().await.unwrap();
    eventually("u-tcp gone", || {
        b.registry.get("default", "u-tcp").is_none()
    })
    .await;
    assert_eq!(b.kick("default", &offline_only, false), 0);
    assert_eq!(b.kick("default", &offline_only, true), 1, "ended");
    assert!(b.registry.get("default", "u-kept").is_none());
    assert_eq!(
        b.kick(
            "other-tenant",
            &KickTarget::UserId {
                user_id: "dana".into(),
                only: None
            },
            true
        ),
        0
    );
}

#[tokio::test]
async fn subscribe_on_behalf_online_and_offline() {
    let tb = TestBroker::start().await;
    let b = tb.broker();
    b.publish_as_broker(
        "default",
        "news/today",
        Bytes::from_static(b"retained"),
        CQoS::AtLeastOnce,
        true,
    )
    .unwrap();

    // Online: receives at once, retained included.
    let (mut on, _) = v3::connect(v3::opts(&tb, "online", Tr::Tcp)).await;
    assert!(b
        .subscribe_for(
            "default",
            "online",
            "news/#",
            SubOptions::qos(CQoS::AtLeastOnce)
        )
        .await
        .unwrap());
    let m = on.publish().await;
    assert!(m.retain && &m.payload[..] == b"retained");
    b.publish_as_broker(
        "default",
        "news/now",
        Bytes::from_static(b"live"),
        CQoS::AtLeastOnce,
        false,
    )
    .unwrap();
    assert_eq!(&on.publish().await.payload[..], b"live");

    // Offline persistent: only recorded; messages after that are queued.
    let mut o = v3::opts(&tb, "offline", Tr::Tcp);
    o.set_clean_session(false);
    let (off, _) = v3::connect(o.clone()).await;
    off.c.disconnect().await.unwrap();
    eventually("offline", || {
        b.registry
            .get("default", "offline")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    b.subscribe_for(
        "default",
        "offline",
        "news/#",
        SubOptions::qos(CQoS::AtLeastOnce),
    )
    .await
    .unwrap();
    assert_eq!(
        b.registry
            .get("default", "offline")
            .unwrap()
            .state
            .lock()
            .queue
            .len(),
        0,
        "no retained push"
    );
    b.publish_as_broker(
        "default",
        "news/later",
        Bytes::from_static(b"queued"),
        CQoS::AtLeastOnce,
        false,
    )
    .unwrap();
    let (mut off, _) = v3::connect(o).await;
    assert_eq!(&off.publish().await.payload[..], b"queued");
    assert_eq!(
        &on.publish().await.payload[..],
        b"queued",
        "the online one got it too"
    );

    // Unsubscribe on behalf; unknown client ids and bad filters are errors.
    assert!(b.unsubscribe_for("default", "online", "news/#").unwrap());
    b.publish_as_broker(
        "default",
        "news/x",
        Bytes::from_static(b"x"),
        CQoS::AtMostOnce,
        false,
    )
    .unwrap();
    on.no_publish(Duration::from_millis(200)).await;
    assert!(b
        .subscribe_for("default", "nobody", "a", SubOptions::qos(CQoS::AtMostOnce))
        .await
        .is_err());
    assert!(b
        .subscribe_for(
            "default",
            "online",
            "a/#/b",
            SubOptions::qos(CQoS::AtMostOnce)
        )
        .await
        .is_err());
    assert!(b
        .publish_as_broker("default", "a/+", Bytes::new(), CQoS::AtMostOnce, false)
        .is_err());
    assert!(
        b.subscribe_for("tenant-b", "online", "a", SubOptions::qos(CQoS::AtMostOnce))
            .await
            .is_err(),
        "other tenant"
    );
}

#[tokio::test]
async fn expire_inactive_and_expire_all() {
    let tb = TestBroker::start().await;
    let b = tb.broker();
    let mut o = v3::opts(&tb, "idle", Tr::Tcp);
    o.set_clean_session(false);
    let (idle, _) = v3::connect(o).await;
    idle.c.disconnect().await.unwrap();
    eventually("idle offline", || {
        b.registry
            .get("default", "idle")
            .is_some_and(|s| !s.is_online())
    })
    .await;
    let mut o = v3::opts(&tb, "active", Tr::Tcp);
    o.set_clean_session(false);
    let (mut active, _) = v3::connect(o).await;
    let (mut clean, _) = v3::connect(v3::opts(&tb, "clean", Tr::Tcp)).await;

    assert_eq!(
        b.expire_inactive("default", 3600),
        0,
        "nobody inactive for an hour"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(b.expire_inactive("default", 1), 1);
    assert!(b.registry.get("default", "idle").is_none());
    assert!(b.registry.get("default", "active").is_some());

    assert_eq!(
        b.expire_inactive("default", 0),
        1,
        "0 = every persistent session, online included"
    );
    active.closed().await;
    eventually("persistent ones gone", || {
        b.registry.get("default", "active").is_none()
    })
    .await;
    clean.no_publish(Duration::from_millis(100)).await;
    assert!(
        b.registry.get("default", "clean").unwrap().is_online(),
        "clean sessions are never expired"
    );
}

#[tokio::test]
async fn events_describe_the_session_lifecycle() {
    let tb = TestBroker::start().await;
    let b = tb.broker();
    let mut ev = b.registry.subscribe_events(true);
    let (mut c, _) = v5::connect(v5::opts(&tb, "evt", Tr::Tcp)).await;
    c.c.subscribe("e/#", v5::QoS::AtMostOnce).await.unwrap();
    c.suback().await;
    c.c.publish("e/1", v5::QoS::AtMostOnce, false, "p")
        .await
        .unwrap();
    c.publish().await;
    c.c.disconnect().await.unwrap();
    let mut kinds = Vec::new();
    while kinds.last().map(String::as_str) != Some("session_ended") {
        let e = tokio::time::timeout(common::WAIT, ev.rx.recv())
            .await
            .expect("event")
            .expect("open");
        let v = serde_json::to_value(&e).unwrap();
        kinds.push(v["event"].as_str().unwrap().to_string());
        if let Event::Connected { client_id, .. } = &e {
            assert_eq!(&**client_id, "evt");
        }
    }
    assert_eq!(
        kinds,
        vec![
            "connected",
            "subscribed",
            "message_published",
            "disconnected",
            "unsubscribed",
            "session_ended"
        ]
    );
}

#[tokio::test]
async fn tenants_are_isolated() {
    let tb = TestBroker::start().await;
    let b = tb.broker();
    let (_c, _) = v3::connect(v3::opts(&tb, "mine", Tr::Tcp)).await;
    let q = Query {
        tenant: Some("other".into()),
        ..Default::default()
    };
    assert_eq!(b.registry.query(&q, page(10, 1), &b.config()).count, 0);
    assert!(b.registry.get("other", "mine").is_none());
    assert_eq!(b.expire_inactive("other", 0), 0);
    assert!(b.registry.get("default", "mine").unwrap().is_online());
}
