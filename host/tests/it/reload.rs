//! Runtime reload: `POST /reload` (and SIGHUP on the binary) puts changed limits, auth
//! settings and the TLS certificate in force without dropping a connection, reports
//! restart-only keys, and applies nothing when the new configuration is bad.

use std::sync::Arc;

use crate::common::{self, v3, with_plugins, TestBroker, Tr};

const ROOT: (&str, &str) = ("root", "rootsecret");

async fn reload(tb: &TestBroker) -> (u16, serde_json::Value) {
    let (st, body) = common::http(tb.http_addr(), "POST", "/reload", Some(ROOT), b"").await;
    (
        st,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A TLS handshake with the broker's TLS listener, trusting only `roots`.
async fn handshake(tb: &TestBroker, roots_pem: &std::path::Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(roots_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(tb.server.addrs.tls.unwrap())
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_reload_applies_what_it_can_keeps_connections_and_refuses_a_bad_config() {
    let (tb, root) = with_plugins(&[], "root:rootsecret:admin:tenant=*\n", |_| {}).await;
    let b = tb.broker().clone();
    assert_eq!(
        reload(&tb).await.0,
        503,
        "no source yet: nothing to reload from"
    );

    // A connected client, before the reload.
    let (mut old, _) = v3::connect(v3::opts(&tb, "before", Tr::Tcp)).await;
    old.c.subscribe("r/t", v3::QoS::AtMostOnce).await.unwrap();
    old.suback().await;

    let base = (**b.config()).clone();
    let fresh = root.path().join("newtls");
    let (cert, key) = apiary::mqtt::listener::ensure_self_signed(&fresh).unwrap();
    let next = Arc::new(parking_lot::Mutex::new(Ok(base.clone())));
    let n = next.clone();
    b.set_config_source(Box::new(move || n.lock().clone()));

    // A bad file: nothing changes.
    *next.lock() = Err("line 3: expected a value".to_string());
    let (st, v) = reload(&tb).await;
    assert_eq!(st, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("line 3"), "{v}");
    // A certificate that does not load: nothing changes either.
    let mut c = base.clone();
    c.auth.allow_anonymous = apiary::config::Anonymous::Never;
    c.listeners.cert = Some(root.path().join("missing.pem"));
    c.listeners.key = Some(key.clone());
    *next.lock() = Ok(c.clone());
    let (st, v) = reload(&tb).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(
        b.config().auth.allow_anonymous,
        apiary::config::Anonymous::Always
    );

    // A good one: live keys applied, restart-only keys reported and kept.
    c.listeners.cert = Some(cert.clone());
    c.session.max_queued_messages = 7;
    c.data_dir = "/elsewhere".into();
    *next.lock() = Ok(c);
    let (st, v) = reload(&tb).await;
    assert_eq!(st, 200, "{v}");
    let names = |k: &str| -> Vec<String> {
        let mut x: Vec<String> = v[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        x.sort();
        x
    };
    assert_eq!(
        names("applied"),
        [
            "auth.allow_anonymous",
            "listeners.cert",
            "listeners.key",
            "session.max_queued_messages"
        ]
    );
    assert_eq!(names("needs_restart"), ["data_dir"]);
    assert_eq!(b.config().session.max_queued_messages, 7);
    assert_ne!(b.config().data_dir, std::path::PathBuf::from("/elsewhere"));

    // New anonymous clients are refused now; the one connected before keeps working.
    let mut r = common::raw::Raw::connect(tb.tcp_addr()).await;
    r.send(&common::raw::connect(5, "after", true, 30)).await;
    let ack = r.read_n(4).await;
    assert_eq!(
        (ack[0], ack[3]),
        (0x20, 0x87),
        "CONNACK: not authorized: {ack:?}"
    );
    old.c
        .publish("r/t", v3::QoS::AtMostOnce, false, "still here")
        .await
        .unwrap();
    assert_eq!(&old.publish().await.payload[..], b"still here");

    // New TLS handshakes present the new certificate.
    handshake(&tb, &cert)
        .await
        .expect("the new certificate is served");
    let old_cert = tb.dir.path().join("data/tls/server.pem");
    assert!(
        handshake(&tb, &old_cert).await.is_err(),
        "the old certificate is gone"
    );
}
