//! Authentication and authorisation through real auth plugins over real MQTT: the stock
//! auth-file plugin (argon2id, bcrypt and plain passwords, tenants, superusers, first-match
//! ACL rules with wildcards, %u and %c), chained with the faulty fixture (ignore, trap,
//! MQTT 5 enhanced authentication), decision caching across a reload, and API keys seen
//! by a plugin through the host (tenant and rights scope).

use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::raw::{self, Raw};
use crate::common::{self, metric, v3, v5, TestBroker, Tr};
use crate::plugins::install;

const BOB_BCRYPT: &str = "$2b$04$4VKZ3.PSVf4B.AEHwwRRmOl1g/wCxwrDT8nKiAJSEfIUm3BwEzJ.a";

fn argon2id(pw: &str) -> String {
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    argon2::Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

/// auth-file with alice (argon2id), bob (bcrypt), carol (plain, tenant acme) and root
/// (superuser), and rules exercising order, actions, wildcards, %u and %c.
fn auth_file_toml(extra_rule: &str) -> String {
    format!(
        r#"priority = -10
roles = ["auth"]
capabilities = ["passwords"]
tenants = ["*"]
[config]
default = "deny"
[[config.users]]
username = "alice"
password_hash = "{alice}"
[[config.users]]
username = "bob"
password_hash = "{bob}"
[[config.users]]
username = "carol"
password = "carolpw"
tenant = "acme"
[[config.users]]
username = "root"
password = "rootpw"
superuser = true
{extra_rule}
[[config.rules]]
permission = "allow"
topic = "users/%u/#"
[[config.rules]]
permission = "deny"
action = "publish"
topic = "public/locked"
[[config.rules]]
permission = "allow"
action = "publish"
topic = "public/+"
[[config.rules]]
permission = "allow"
action = "subscribe"
topic = "public/#"
[[config.rules]]
permission = "allow"
topic = "clients/%c/#"
[[config.rules]]
permission = "allow"
username = "bob"
topic = "bob-only/#"
"#,
        alice = argon2id("alicepw"),
        bob = BOB_BCRYPT,
    )
}

/// The faulty fixture as a second auth plugin (and an HTTP route that acts as API keys).
const GATE: &str = "mount = \"/gate\"\nroles = [\"http\", \"auth\"]\ncapabilities = [\"apikeys\", \"registry.kick\"]\ntenants = [\"*\"]\n[config]\nversion = \"v1\"\n";

async fn start(anonymous: bool, with_faulty: bool) -> (TestBroker, tempfile::TempDir) {
    let users = auth_file_toml("");
    let mut plugins = vec![("auth-file", "auth-file", users.as_str())];
    if with_faulty {
        plugins.push(("faulty", "gate", GATE));
    }
    common::with_plugins(
        &plugins,
        "ops:s3cret:admin\nacme-rw:acmepw:connections:write:tenant=acme\nacme-ro:ropw:connections:read:tenant=acme\n",
        |c| {
            c.auth.allow_anonymous = if anonymous {
                apiary::config::Anonymous::Always
            } else {
                apiary::config::Anonymous::Never
            }
        },
    )
    .await
}

/// Raw CONNECT at `level` (4 or 5), optional username/password; the CONNACK code.
pub(crate) async fn connack(
    tb: &TestBroker,
    level: u8,
    id: &str,
    user: Option<&str>,
    pw: Option<&str>,
) -> u8 {
    let flags = 0x02 | if user.is_some() { 0x80 } else { 0 } | if pw.is_some() { 0x40 } else { 0 };
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 30];
    if level == 5 {
        body.push(0);
    }
    for s in [Some(id), user, pw].into_iter().flatten() {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::packet(0x10, &body)).await;
    r.read_n(4).await[3]
}

#[tokio::test]
async fn passwords_decide_connects_in_both_protocol_versions() {
    let (tb, _dir) = start(false, false).await;
    for level in [4u8, 5] {
        let ok = 0;
        let (bad_pw, not_auth) = if level == 5 { (0x86, 0x87) } else { (4, 5) };
        let c = |s: &str| format!("{s}-{level}");
        assert_eq!(
            connack(&tb, level, &c("a"), Some("alice"), Some("alicepw")).await,
            ok,
            "argon2id"
        );
        assert_eq!(
            connack(&tb, level, &c("b"), Some("bob"), Some("bobpw")).await,
            ok,
            "bcrypt"
        );
        assert_eq!(
            connack(&tb, level, &c("c"), Some("carol"), Some("carolpw")).await,
            ok,
            "plain"
        );
        assert_eq!(
            connack(&tb, level, &c("a2"), Some("alice"), Some("wrong")).await,
            bad_pw
        );
        assert_eq!(
            connack(&tb, level, &c("b2"), Some("bob"), Some("alicepw")).await,
            bad_pw
        );
        assert_eq!(
            connack(&tb, level, &c("a3"), Some("alice"), None).await,
            bad_pw,
            "no password"
        );
        // A username no plugin knows gets what a wrong password gets: the answer never
        // tells whether a username exists (and, below, neither does the cost).
        assert_eq!(
            connack(&tb, level, &c("m"), Some("mallory"), Some("x")).await,
            bad_pw
        );
        // No username and anonymous access off: not authorized.
        assert_eq!(connack(&tb, level, &c("anon"), None, None).await, not_auth);
    }
    // carol's sessions live in her tenant.
    let (_carol, _) = v3::connect(v3_user(&tb, "carol-9", "carol", "carolpw")).await;
    common::eventually("carol registered in acme", || {
        tb.broker().registry.get("acme", "carol-9").is_some()
    })
    .await;
    assert!(tb.broker().registry.get("default", "carol-9").is_none());
    assert!(metric(&tb, "apiary_auth_allowed_total") >= 6);
    assert!(metric(&tb, "apiary_auth_denied_total") >= 10);

    // With anonymous access on, clients without a username get in; a username nobody
    // accepts still does not (it could otherwise claim a user's ACL rules), nor does a
    // wrong password for a known user.
    let (tb, _dir) = start(true, false).await;
    assert_eq!(connack(&tb, 5, "anon", None, None).await, 0);
    assert_eq!(connack(&tb, 4, "m", Some("mallory"), Some("x")).await, 4);
    assert_eq!(connack(&tb, 4, "a", Some("alice"), Some("wrong")).await, 4);
}

/// An unknown username costs what a known one with a wrong password costs: one password
/// check each (against a dummy hash for the unknown one), so timing does not tell them
/// apart either. (The time itself is measured by `cargo bench --bench auth`.)
#[tokio::test]
async fn unknown_users_cost_one_password_check_as_known_ones_do() {
    let (tb, _dir) = start(false, false).await;
    let before = metric(&tb, "apiary_password_checks_total");
    assert_eq!(
        connack(&tb, 5, "u1", Some("alice"), Some("wrong")).await,
        0x86
    );
    assert_eq!(metric(&tb, "apiary_password_checks_total"), before + 1);
    assert_eq!(
        connack(&tb, 5, "u2", Some("mallory"), Some("wrong")).await,
        0x86
    );
    assert_eq!(metric(&tb, "apiary_password_checks_total"), before + 2);
}

fn v5_user(tb: &TestBroker, id: &str, user: &str, pw: &str) -> rumqttc::v5::MqttOptions {
    let mut o = v5::opts(tb, id, Tr::Tcp);
    o.set_credentials(user, pw);
    o
}

fn v3_user(tb: &TestBroker, id: &str, user: &str, pw: &str) -> rumqttc::MqttOptions {
    let mut o = v3::opts(tb, id, Tr::Tcp);
    o.set_credentials(user, pw);
    o
}

/// The reason codes of the next v5 SUBACK.
async fn suback_v5(c: &mut v5::Client) -> Vec<u8> {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as R;
    match c.suback().await {
        v5::Packet::SubAck(s) => s
            .return_codes
            .iter()
            .map(|r| match r {
                R::Success(q) => *q as u8,
                R::NotAuthorized => 0x87,
                other => panic!("unexpected reason {other:?}"),
            })
            .collect(),
        _ => unreachable!(),
    }
}

/// The reason of the next v5 PUBACK.
async fn puback_v5(c: &mut v5::Client) -> rumqttc::v5::mqttbytes::v5::PubAckReason {
    loop {
        match c.next().await {
            Ok(v5::Packet::PubAck(a)) => return a.reason,
            Ok(_) => continue,
            Err(e) => panic!("connection failed waiting for PUBACK: {e}"),
        }
    }
}

#[tokio::test]
async fn acl_rules_decide_publish_and_subscribe_in_v5() {
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    use v5::QoS;
    let (tb, _dir) = start(false, false).await;
    let (mut watcher, _) = v5::connect(v5_user(&tb, "watch", "root", "rootpw")).await;
    watcher.c.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    assert_eq!(
        suback_v5(&mut watcher).await,
        vec![1],
        "superuser skips ACL"
    );

    let (mut a, _) = v5::connect(v5_user(&tb, "a1", "alice", "alicepw")).await;
    for f in [
        "users/alice/#",
        "public/+/x",
        "users/bob/#",
        "secret/#",
        "private",
    ] {
        a.c.subscribe(f, QoS::AtLeastOnce).await.unwrap();
    }
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.extend(suback_v5(&mut a).await);
    }
    // %u expands to alice; public/# covers public/+/x; nothing allows "private".
    assert_eq!(codes, vec![1, 1, 0x87, 0x87, 0x87]);
    // One SUBSCRIBE with several filters: only the refused one fails.
    a.c.subscribe_many(vec![
        rumqttc::v5::mqttbytes::v5::Filter::new("clients/a1/#", QoS::AtMostOnce),
        rumqttc::v5::mqttbytes::v5::Filter::new("clients/a2/#", QoS::AtMostOnce),
    ])
    .await
    .unwrap();
    assert_eq!(
        suback_v5(&mut a).await,
        vec![0, 0x87],
        "%c expands to the client id"
    );

    a.c.publish("users/alice/t", QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    assert_eq!(puback_v5(&mut a).await, PubAckReason::Success);
    assert_eq!(&watcher.publish().await.payload[..], b"mine");
    a.c.publish("public/locked", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    assert_eq!(
        puback_v5(&mut a).await,
        PubAckReason::NotAuthorized,
        "first match: deny"
    );
    a.c.publish("public/open", QoS::AtLeastOnce, false, "yes")
        .await
        .unwrap();
    assert_eq!(puback_v5(&mut a).await, PubAckReason::Success);
    assert_eq!(
        &watcher.publish().await.payload[..],
        b"yes",
        "the refused one never arrived"
    );
    a.c.publish("bob-only/x", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    assert_eq!(
        puback_v5(&mut a).await,
        PubAckReason::NotAuthorized,
        "rule scoped to bob"
    );
    // QoS 2 refused at PUBREC.
    a.c.publish("secret/x", QoS::ExactlyOnce, false, "no")
        .await
        .unwrap();
    loop {
        match a.next().await.unwrap() {
            v5::Packet::PubRec(r) => {
                assert_eq!(
                    r.reason,
                    rumqttc::v5::mqttbytes::v5::PubRecReason::NotAuthorized
                );
                break;
            }
            _ => continue,
        }
    }
    watcher.no_publish(Duration::from_millis(300)).await;
    // The same refused topic again comes from the cache, still refused.
    let hits = metric(&tb, "apiary_acl_cache_hits_total");
    a.c.publish("public/locked", QoS::AtLeastOnce, false, "no")
        .await
        .unwrap();
    assert_eq!(puback_v5(&mut a).await, PubAckReason::NotAuthorized);
    assert!(metric(&tb, "apiary_acl_cache_hits_total") > hits);
    assert!(metric(&tb, "apiary_acl_publish_denied_total") >= 4);
    assert!(metric(&tb, "apiary_acl_subscribe_denied_total") >= 4);
}

#[tokio::test]
async fn acl_in_v3_drops_refused_publishes_and_fails_refused_filters() {
    use rumqttc::SubscribeReasonCode as R;
    use v3::QoS;
    let (tb, _dir) = start(false, false).await;
    let (mut watcher, _) = v3::connect(v3_user(&tb, "w3", "root", "rootpw")).await;
    watcher.c.subscribe("#", QoS::AtMostOnce).await.unwrap();
    watcher.suback().await;
    let (mut b, _) = v3::connect(v3_user(&tb, "b3", "bob", "bobpw")).await;
    b.c.subscribe("users/alice/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    match b.suback().await {
        v3::Packet::SubAck(s) => assert_eq!(s.return_codes, vec![R::Failure]),
        _ => unreachable!(),
    }
    b.c.subscribe("bob-only/#", QoS::AtLeastOnce).await.unwrap();
    match b.suback().await {
        v3::Packet::SubAck(s) => assert_eq!(s.return_codes, vec![R::Success(QoS::AtLeastOnce)]),
        _ => unreachable!(),
    }
    let before = metric(&tb, "apiary_acl_publish_denied_total");
    // Refused: acknowledged (3.1.1 has no refusal code) and dropped.
    b.c.publish("users/alice/x", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    b.c.publish("users/bob/x", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(
        &watcher.publish().await.payload[..],
        b"ok",
        "the forged one was dropped"
    );
    let mut acks = 0;
    while acks < 2 {
        if let Ok(v3::Packet::PubAck(_)) = b.next().await {
            acks += 1;
        }
    }
    assert_eq!(metric(&tb, "apiary_acl_publish_denied_total"), before + 1);
}

/// A 3.1.1 CONNECT as alice with a will on `topic`; the CONNACK code.
async fn connack_with_will(tb: &TestBroker, id: &str, topic: &str) -> u8 {
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x80 | 0x40 | 0x04 | 0x02,
        0,
        30,
    ];
    for s in [id, topic, "gone", "alice", "alicepw"] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&raw::packet(0x10, &body)).await;
    r.read_n(4).await[3]
}

#[tokio::test]
async fn a_will_the_client_may_not_publish_refuses_the_connect() {
    let (tb, _dir) = start(false, false).await;
    assert_eq!(connack_with_will(&tb, "wl", "secret/will").await, 5);
    assert_eq!(connack_with_will(&tb, "wl2", "users/alice/will").await, 0);
}

#[tokio::test]
async fn chained_plugins_ignore_trap_and_reload_clears_cached_decisions() {
    let (tb, dir) = start(false, true).await;
    // auth-file (priority -10) ignores "ok", the fixture (priority 0) allows it.
    assert_eq!(connack(&tb, 4, "k1", Some("ok"), Some("pw")).await, 0);
    // A trapping plugin refuses (server unavailable): auth never fails open.
    let failures = metric(&tb, "apiary_auth_plugin_failures_total");
    assert_eq!(connack(&tb, 5, "t1", Some("trap"), Some("pw")).await, 0x88);
    assert_eq!(
        metric(&tb, "apiary_auth_plugin_failures_total"),
        failures + 1
    );

    // A decision cached before a reload does not survive it.
    use rumqttc::v5::mqttbytes::v5::PubAckReason;
    let (mut a, _) = v5::connect(v5_user(&tb, "a9", "alice", "alicepw")).await;
    a.c.publish("users/alice/r", v5::QoS::AtLeastOnce, false, "1")
        .await
        .unwrap();
    // No subscriber, so 0x10 rather than 0x00: either way, accepted.
    assert_eq!(puback_v5(&mut a).await, PubAckReason::NoMatchingSubscribers);
    let pdir = dir.path().join("plugins");
    let deny_first =
        "[[config.rules]]\npermission = \"deny\"\ntopic = \"users/alice/r\"\n".to_string();
    std::fs::write(pdir.join("auth-file.toml"), auth_file_toml(&deny_first)).unwrap();
    let mgr = tb.broker().plugins().unwrap();
    mgr.load("auth-file").await.unwrap();
    a.c.publish("users/alice/r", v5::QoS::AtLeastOnce, false, "2")
        .await
        .unwrap();
    assert_eq!(puback_v5(&mut a).await, PubAckReason::NotAuthorized);
}

/// Reads one MQTT packet from a raw connection: (first byte, body).
async fn read_packet(r: &mut Raw) -> (u8, Vec<u8>) {
    let head = r.read_n(2).await;
    assert!(head[1] < 128, "test packets are short");
    (head[0], r.read_n(head[1] as usize).await)
}

/// A v5 AUTH packet: reason, method, data.
fn auth_packet(reason: u8, method: &str, data: &[u8]) -> Vec<u8> {
    let mut props = vec![0x15];
    props.extend_from_slice(&(method.len() as u16).to_be_bytes());
    props.extend_from_slice(method.as_bytes());
    props.push(0x16);
    props.extend_from_slice(&(data.len() as u16).to_be_bytes());
    props.extend_from_slice(data);
    let mut body = vec![reason, props.len() as u8];
    body.extend(props);
    raw::packet(0xF0, &body)
}

/// A v5 CONNECT with username and an authentication method.
fn enhanced_connect(id: &str, user: &str, method: &str) -> Vec<u8> {
    let mut props = vec![0x15];
    props.extend_from_slice(&(method.len() as u16).to_be_bytes());
    props.extend_from_slice(method.as_bytes());
    let mut body = vec![
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        5,
        0x82,
        0,
        30,
        props.len() as u8,
    ];
    body.extend(props);
    for s in [id, user] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    raw::packet(0x10, &body)
}

fn has(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn mqtt5_enhanced_authentication_and_reauthentication_go_through_the_role() {
    let (tb, _dir) = start(false, true).await;
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&enhanced_connect("e1", "eve", "echo-2")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[0]), (0xF0, 0x18), "AUTH continue");
    assert!(has(&body, b"nonce"));
    r.send(&auth_packet(0x18, "echo-2", b"nonce:eve")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[1]), (0x20, 0x00), "CONNACK success");
    assert!(
        has(&body, b"welcome"),
        "the plugin's closing data is in CONNACK"
    );
    // Re-authentication on the live connection.
    r.send(&auth_packet(0x19, "echo-2", b"")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[0]), (0xF0, 0x18));
    r.send(&auth_packet(0x18, "echo-2", b"nonce:eve")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[0]), (0xF0, 0x00), "AUTH success");

    // A wrong answer is refused with the plugin's code.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&enhanced_connect("e2", "eve", "echo-2")).await;
    read_packet(&mut r).await;
    r.send(&auth_packet(0x18, "echo-2", b"guess")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[1]), (0x20, 0x86));
    // A method no plugin takes: bad authentication method.
    let mut r = Raw::connect(tb.tcp_addr()).await;
    r.send(&enhanced_connect("e3", "eve", "SCRAM-SHA-1")).await;
    let (t, body) = read_packet(&mut r).await;
    assert_eq!((t, body[1]), (0x20, 0x8C));
}

/// POST with extra headers; returns the status.
async fn post(tb: &TestBroker, path: &str, headers: &[(&str, String)]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(tb.http_addr())
        .await
        .unwrap();
    let mut head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut resp))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (text[9..12].parse().unwrap(), body)
}

fn hmac_hex(secret: &str, msg: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn api_keys_verified_by_a_plugin_hold_its_calls_to_the_keys_scope() {
    let (tb, _dir) = start(false, true).await;
    // carol lives in acme; alice in default.
    let (_carol, _) = v3::connect(v3_user(&tb, "carol-1", "carol", "carolpw")).await;
    let (_alice, _) = v3::connect(v3_user(&tb, "alice-1", "alice", "alicepw")).await;
    let key = |k: &str, s: &str| vec![("x-key", k.to_string()), ("x-secret", s.to_string())];
    assert_eq!(
        post(
            &tb,
            "/gate/as-key/kick?tenant=acme&client=carol-1",
            &key("acme-rw", "bad")
        )
        .await
        .0,
        401
    );
    let (st, body) = post(
        &tb,
        "/gate/as-key/kick?tenant=default&client=alice-1",
        &key("acme-rw", "acmepw"),
    )
    .await;
    assert_eq!(
        st, 403,
        "a key of tenant acme may not kick in default: {body}"
    );
    let (st, body) = post(
        &tb,
        "/gate/as-key/kick?tenant=acme&client=carol-1",
        &key("acme-ro", "ropw"),
    )
    .await;
    assert_eq!(st, 403, "a read-only key may not kick: {body}");
    let (st, body) = post(
        &tb,
        "/gate/as-key/kick?tenant=acme&client=carol-1",
        &key("acme-rw", "acmepw"),
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "1"));
    // A signed request: the MAC is computed and compared inside the host.
    let sig = hmac_hex("s3cret", "default/alice-1");
    let signed = vec![("x-key", "ops".to_string()), ("x-sig", sig)];
    let (st, body) = post(
        &tb,
        "/gate/as-key/kick?tenant=default&client=alice-1",
        &signed,
    )
    .await;
    assert_eq!((st, body.as_str()), (200, "1"));
    let forged = vec![
        ("x-key", "ops".to_string()),
        ("x-sig", hmac_hex("guess", "default/alice-1")),
    ];
    assert_eq!(
        post(
            &tb,
            "/gate/as-key/kick?tenant=default&client=alice-1",
            &forged
        )
        .await
        .0,
        401
    );
}

#[tokio::test]
async fn auth_file_reads_a_users_file_from_a_granted_directory() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    let data = root.path().join("auth-data");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("users"),
        format!("# htpasswd -B style\nbob:{BOB_BCRYPT}\n"),
    )
    .unwrap();
    let toml = "roles = [\"auth\"]\ncapabilities = [\"passwords\"]\n[wasi.read_dirs]\n\"/cfg\" = \"../auth-data\"\n[config]\nusers_file = \"/cfg/users\"\n";
    install(&pdir, "auth-file", "auth-file", Some(toml));
    let dir = pdir.clone();
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = dir;
        c.auth.allow_anonymous = apiary::config::Anonymous::Never;
    })
    .await;
    assert_eq!(connack(&tb, 4, "f1", Some("bob"), Some("bobpw")).await, 0);
    assert_eq!(connack(&tb, 4, "f2", Some("bob"), Some("nope")).await, 4);
    // Without the directory grant the plugin cannot read the file and does not load:
    // nothing decides, anonymous access is off, so bob is refused (fail closed).
    install(
        &pdir,
        "auth-file",
        "auth-file",
        Some("roles = [\"auth\"]\ncapabilities = [\"passwords\"]\n[config]\nusers_file = \"/cfg/users\"\n"),
    );
    let mgr = tb.broker().plugins().unwrap();
    let err = match mgr.load("auth-file").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded without the directory grant"),
    };
    assert!(err.contains("users_file"), "{err}");
    mgr.unload("auth-file").await;
    assert_eq!(connack(&tb, 4, "f3", Some("bob"), Some("bobpw")).await, 5);
}

/// A raw 3.1.1 CONNECT to `addr`; the CONNACK return code.
async fn connack_at(addr: std::net::SocketAddr, id: String, user: &str, pw: &str) -> u8 {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 30];
    for s in [id.as_str(), user, pw] {
        body.extend_from_slice(&(s.len() as u16).to_be_bytes());
        body.extend_from_slice(s.as_bytes());
    }
    let mut r = Raw::connect(addr).await;
    r.send(&raw::packet(0x10, &body)).await;
    r.read_n(4).await[3]
}

/// A flood of CONNECTs for a known username with wrong passwords (argon2id, the costly
/// kind) must not lock anyone out: the flood gets "bad password" or "server busy, retry",
/// and the real user, retrying on "busy" as clients do, gets in. The plugin's calls time
/// out while the machine is saturated; that is load, not a plugin fault, so it does not
/// put the auth plugin into backoff (which refused every CONNECT for up to 30 s).
#[tokio::test]
async fn a_connect_flood_with_a_known_username_locks_nobody_out() {
    let root = tempfile::tempdir().unwrap();
    let pdir = root.path().join("plugins");
    std::fs::create_dir_all(&pdir).unwrap();
    let toml =
        auth_file_toml("").replace("priority = -10", "priority = -10\ncall_timeout_ms = 100");
    install(&pdir, "auth-file", "auth-file", Some(&toml));
    let dir = pdir.clone();
    let tb = TestBroker::start_with(move |c| {
        c.plugins_dir = dir;
        c.auth.allow_anonymous = apiary::config::Anonymous::Never;
    })
    .await;
    let addr = tb.tcp_addr();
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..64 {
        flood.spawn(connack_at(addr, format!("flood-{i}"), "alice", "wrong"));
    }
    let mut codes = Vec::new();
    while let Some(c) = flood.join_next().await {
        codes.push(c.unwrap());
    }
    assert!(
        codes.iter().all(|c| *c == 4 || *c == 3),
        "bad password (4) or server unavailable (3), never not-authorized: {codes:?}"
    );
    let mut got = Vec::new();
    for i in 0..40 {
        let c = connack_at(addr, format!("alice-{i}"), "alice", "alicepw").await;
        got.push(c);
        if c != 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(got.last(), Some(&0), "the real user gets in: {got:?}");
}
