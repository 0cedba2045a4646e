//! MQTT over every transport: listeners, the CONNECT phase, and the connection loop.

mod connection;
mod handshake;
pub mod listener;
pub mod transport;
pub mod wire;

use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rmqtt_codec::types::QoS;
use rmqtt_codec::{v3, v5};
use tracing::debug;

use crate::broker::Broker;
use crate::message::Message;
use crate::metrics::transport_index;
use crate::session::{ClientInfo, Transport as TransportKind, Will};
use crate::topic;
use connection::Connection;
use handshake::{read_connect, ConnectReq, HandshakeError};
use transport::Transport;
use wire::Wire;

/// Decrements the open-connections gauge when the connection task ends.
struct OpenGuard<'a>(&'a std::sync::atomic::AtomicU64);
impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted connection from CONNECT to close.
pub async fn serve<T: Transport>(broker: Broker, io: T, peer: SocketAddr, kind: TransportKind) {
    let idx = transport_index(kind);
    broker.metrics.accepted[idx].fetch_add(1, Ordering::Relaxed);
    broker.metrics.open[idx].fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(&broker.metrics.open[idx]);
    // Boxed, and freed once CONNACK is sent: the handshake's future (auth plugin calls
    // among it) is many times the size of the connection loop's, and a task is as large
    // as the largest future it ever awaits inline. The connection is boxed too, so the
    // task does not hold it twice (the handshake's result and the running connection).
    let conn = Box::pin(connect(broker.clone(), io, peer, kind)).await;
    if let Some(mut conn) = conn {
        conn.run().await;
    }
}

/// CONNECT to CONNACK: the connection to run, or None when it was refused or failed.
async fn connect<T: Transport>(
    broker: Broker,
    mut io: T,
    peer: SocketAddr,
    kind: TransportKind,
) -> Option<Box<Connection<T>>> {
    let cfg = broker.config();
    // Empty: the transport allocates it to the size of what arrives.
    let mut rbuf = BytesMut::new();
    let timeout = Duration::from_secs(cfg.listeners.connect_timeout_secs.max(1));
    let (wire, req) = match read_connect(&mut io, &mut rbuf, cfg.mqtt.max_packet_size, timeout)
        .await
    {
        Ok(x) => x,
        Err(HandshakeError::IdentifierRejected { v5 }) => {
            broker
                .metrics
                .connect_refused
                .fetch_add(1, Ordering::Relaxed);
            let ack: &[u8] = if v5 {
                &[0x20, 0x03, 0x00, 0x85, 0x00]
            } else {
                &[0x20, 0x02, 0x00, 0x02]
            };
            let _ = io.write(&mut BytesMut::from(ack)).await;
            io.close().await;
            transport::linger(&mut io, broker.stopped()).await;
            return None;
        }
        Err(e) => {
            if matches!(e, HandshakeError::Malformed(_) | HandshakeError::NotConnect) {
                broker
                    .metrics
                    .malformed_packets
                    .fetch_add(1, Ordering::Relaxed);
                if let HandshakeError::Malformed(rmqtt_codec::error::DecodeError::InvalidProtocol) =
                    e
                {
                    // Unknown protocol level: 3.1.1 CONNACK 0x01, which every version parses.
                    let _ = io
                        .write(&mut BytesMut::from(&[0x20u8, 0x02, 0x00, 0x01][..]))
                        .await;
                }
            }
            debug!(%peer, error = %e, "connection closed during CONNECT");
            io.close().await;
            return None;
        }
    };
    establish(broker.clone(), io, wire, req, rbuf, peer, kind).await
}

/// A CONNECT refusal: v5 reason code, and the 3.1.1 return code for the same cause.
struct Refusal(u8, v3::ConnectAckReason, String);

/// The 3.1.1 CONNACK return code for an MQTT 5 reason code.
pub(crate) fn v3_code(v5: u8) -> rmqtt_codec::v3::ConnectAckReason {
    use rmqtt_codec::v3::ConnectAckReason;
    match v5 {
        0x86 => ConnectAckReason::BadUserNameOrPassword,
        0x85 => ConnectAckReason::IdentifierRejected,
        0x84 => ConnectAckReason::UnacceptableProtocolVersion,
        0x88 | 0x89 => ConnectAckReason::ServiceUnavailable,
        _ => ConnectAckReason::NotAuthorized,
    }
}

/// What the auth chain sees of a CONNECT.
fn connect_attempt(
    req: &ConnectReq,
    peer: SocketAddr,
    transport: crate::session::Transport,
) -> crate::auth::ConnectAttempt {
    crate::auth::ConnectAttempt {
        client_id: req.client_id.to_string(),
        username: req.username.as_deref().map(str::to_string),
        password: req.password.as_ref().map(|p| p.to_vec()),
        peer,
        proto_name: req.proto_name.to_string(),
        proto_ver: req.proto_ver,
        listener: transport.listener().to_string(),
        cert_subject: None,
    }
}

fn check(broker: &Broker, req: &ConnectReq, peer: SocketAddr) -> Result<(), Refusal> {
    use v3::ConnectAckReason as R3;
    if !broker.connect_rate.allow(peer.ip(), Instant::now()) {
        broker
            .metrics
            .connect_rate_limited
            .fetch_add(1, Ordering::Relaxed);
        return Err(Refusal(
            0x9F,
            R3::ServiceUnavailable,
            "connection rate exceeded for this address".into(),
        ));
    }
    if req.client_id.is_empty() && !req.clean_start && req.proto_ver < 5 {
        return Err(Refusal(
            0x85,
            R3::IdentifierRejected,
            "empty client id with clean session 0".into(),
        ));
    }
    if let Some(w) = &req.will {
        if topic::validate_name(&w.topic, broker.config().mqtt.max_topic_levels).is_err() {
            return Err(Refusal(
                0x90,
                R3::NotAuthorized,
                "invalid will topic".into(),
            ));
        }
        if w.retain && !broker.config().mqtt.retain_available {
            return Err(Refusal(
                0x9A,
                R3::NotAuthorized,
                "retain is not supported".into(),
            ));
        }
    }
    Ok(())
}

/// MQTT 5 enhanced authentication at CONNECT: plugin steps, and AUTH (continue) packets
/// both ways, until a plugin accepts or refuses; bounded by the connect timeout.
async fn enhanced_connect<T: Transport>(
    broker: &Broker,
    io: &mut T,
    wire: &mut Wire,
    rbuf: &mut BytesMut,
    req: &ConnectReq,
    peer: SocketAddr,
    kind: TransportKind,
) -> Result<(crate::auth::Identity, Option<Vec<u8>>), Refusal> {
    use crate::auth::Step;
    let refuse = |code: u8, why: String| Refusal(code, v3_code(code), why);
    let method = req.auth_method.as_deref().unwrap_or_default();
    let connect = connect_attempt(req, peer, kind);
    // One deadline and a bounded number of rounds for the whole exchange, so a plugin
    // that keeps answering `continue` cannot hold an unauthenticated socket open.
    let deadline = tokio::time::Instant::now()
        + Duration::from_secs(broker.config().listeners.connect_timeout_secs.max(1));
    let mut data = req.auth_data.as_ref().map(|d| d.to_vec());
    let mut conv = None;
    for _round in 0..MAX_AUTH_ROUNDS {
        match crate::auth::enhanced_step(broker, &connect, method, data.take(), conv.take(), false)
            .await
        {
            Step::Success(id, d) => return Ok((id, d)),
            Step::Denied(d) => return Err(refuse(d.code, d.message)),
            Step::Continue(challenge, c) => {
                let mut out = BytesMut::new();
                wire.auth(0x18, method, Some(challenge), &mut out);
                let answer = tokio::time::timeout_at(deadline, async {
                    io.write(&mut out).await?;
                    loop {
                        match wire.decode(rbuf) {
                            Ok(Some((pkt, _))) => return Ok::<_, std::io::Error>(Some(pkt)),
                            Ok(None) => {}
                            Err(_) => return Ok(None),
                        }
                        if io.read(rbuf).await? == 0 {
                            return Err(std::io::ErrorKind::UnexpectedEof.into());
                        }
                    }
                })
                .await;
                match answer {
                    Ok(Ok(Some(wire::Incoming::Auth(a))))
                        if a.reason_code == v5::AuthReasonCode::ContinueAuth
                            && a.auth_method.as_deref() == Some(method) =>
                    {
                        data = a.auth_data.map(|d| d.to_vec());
                        conv = Some(c);
                    }
                    Ok(Ok(_)) => {
                        return Err(refuse(
                            0x82,
                            "expected AUTH (continue) with the same method".into(),
                        ))
                    }
                    Ok(Err(e)) => return Err(refuse(0x80, format!("during AUTH exchange: {e}"))),
                    Err(_) => return Err(refuse(0x87, "AUTH exchange timed out".into())),
                }
            }
        }
    }
    Err(refuse(
        0x87,
        format!("AUTH exchange took more than {MAX_AUTH_ROUNDS} rounds"),
    ))
}

/// AUTH round trips one enhanced authentication may take.
const MAX_AUTH_ROUNDS: usize = 16;

/// The client's ACL, once its will (if any) passed it: a will the client may not publish
/// refuses the CONNECT, rather than failing silently when the client goes away.
async fn will_allowed(
    broker: &Broker,
    identity: crate::auth::Identity,
    req: &ConnectReq,
    client_id: &str,
) -> Result<crate::acl::Acl, Refusal> {
    let mut acl = crate::acl::Acl::new(identity, &broker.config().auth);
    if let Some(w) = &req.will {
        let ok = acl
            .check(
                broker,
                client_id,
                crate::acl::Ask {
                    action: crate::acl::Action::Publish,
                    topic: &w.topic,
                    qos: w.qos.value(),
                    retain: w.retain,
                },
                Instant::now(),
            )
            .await;
        if !ok {
            broker
                .metrics
                .acl_publish_denied
                .fetch_add(1, Ordering::Relaxed);
            return Err(Refusal(
                0x87,
                v3::ConnectAckReason::NotAuthorized,
                format!("ACL refuses the will topic {}", &*w.topic),
            ));
        }
    }
    Ok(acl)
}

async fn establish<T: Transport>(
    broker: Broker,
    mut io: T,
    mut wire: Wire,
    req: ConnectReq,
    rbuf: BytesMut,
    peer: SocketAddr,
    kind: TransportKind,
) -> Option<Box<Connection<T>>> {
    let cfg = broker.config();
    let mut wbuf = BytesMut::with_capacity(64);
    let mut rbuf = rbuf;
    let mut auth_data = None;
    let checked = match check(&broker, &req, peer) {
        Ok(()) if req.auth_method.is_some() => {
            enhanced_connect(&broker, &mut io, &mut wire, &mut rbuf, &req, peer, kind)
                .await
                .map(|(id, data)| {
                    auth_data = data;
                    id
                })
        }
        Ok(()) => crate::auth::authenticate(&broker, &connect_attempt(&req, peer, kind))
            .await
            .map_err(|d| Refusal(d.code, v3_code(d.code), d.message)),
        Err(r) => Err(r),
    };
    let assigned = req
        .client_id
        .is_empty()
        .then(|| format!("apiary-{:016x}", rand::random::<u64>()));
    let client_id: Arc<str> = assigned.as_deref().unwrap_or(&req.client_id).into();
    let checked = match checked {
        Ok(id) => will_allowed(&broker, id, &req, &client_id).await,
        Err(r) => Err(r),
    };
    let acl = match checked {
        Ok(acl) => acl,
        Err(Refusal(c5, c3, why)) => {
            broker
                .metrics
                .connect_refused
                .fetch_add(1, Ordering::Relaxed);
            debug!(%peer, client_id = %&*req.client_id, reason = why, "CONNECT refused");
            if wire.v5 {
                let ack = v5::ConnectAck {
                    reason_code: v5::ConnectAckReason::try_from(c5)
                        .unwrap_or(v5::ConnectAckReason::UnspecifiedError),
                    reason_string: Some(why.into()),
                    ..Default::default()
                };
                wire.connack_v5(ack, &mut wbuf);
            } else {
                wire.connack_v3(c3, false, &mut wbuf);
            }
            let _ = io.write(&mut wbuf).await;
            io.close().await;
            transport::linger(&mut io, broker.stopped()).await;
            return None;
        }
    };

    let mut server_keepalive = None;
    let mut keepalive = req.keepalive;
    let max_ka = cfg.mqtt.max_keepalive_secs;
    if max_ka > 0 && (keepalive == 0 || keepalive > max_ka) && req.proto_ver == 5 {
        keepalive = max_ka;
        server_keepalive = Some(max_ka);
    }
    let session_expiry = if req.proto_ver == 5 {
        req.session_expiry.min(cfg.session.max_session_expiry_secs)
    } else if req.clean_start {
        0
    } else {
        cfg.session.v3_session_expiry_secs
    };
    let identity = acl.identity().clone();
    let tenant = identity.tenant.clone();
    // What authentication recorded (it may replace a secret sent as username).
    let username: Option<Arc<str>> = identity.username.clone();
    let window = usize::from(cfg.session.max_inflight.min(req.receive_max));
    let info = ClientInfo {
        username: username.clone(),
        user_id: identity.user_id.clone(),
        proto_name: req.proto_name,
        proto_ver: req.proto_ver,
        transport: kind,
        peer: Some(peer),
        connected: false,
        connected_at: None,
        disconnected_at: None,
        keepalive,
        clean_start: req.clean_start,
        expiry_interval: session_expiry,
        inflight_max: window as u16,
        superuser: identity.superuser,
        description: None,
    };
    let will = req.will.clone().map(|w| {
        let mut msg = Message::new(tenant.clone(), w.topic, w.payload, w.qos, w.retain);
        msg.props = w.props;
        Box::new(Will {
            msg,
            delay_secs: w.delay_secs,
            expiry: w.expiry,
        })
    });
    let attach = broker
        .attach(tenant, client_id, req.clean_start, info, will)
        .await;
    if let Some(w) = attach.session.will.lock().as_mut() {
        w.msg.publisher = attach.session.id;
    }

    if wire.v5 {
        let ack = v5::ConnectAck {
            session_present: attach.session_present,
            session_expiry_interval_secs: (session_expiry != req.session_expiry)
                .then_some(session_expiry),
            receive_max: NonZeroU16::new(cfg.mqtt.receive_maximum).unwrap_or(NonZeroU16::MIN),
            max_qos: QoS::ExactlyOnce,
            max_packet_size: Some(cfg.mqtt.max_packet_size),
            assigned_client_id: assigned.map(Into::into),
            topic_alias_max: cfg.mqtt.topic_alias_maximum,
            retain_available: cfg.mqtt.retain_available,
            wildcard_subscription_available: cfg.mqtt.wildcard_subscription_available,
            subscription_identifiers_available: true,
            shared_subscription_available: cfg.mqtt.shared_subscription_available,
            server_keepalive_sec: server_keepalive,
            auth_method: req.auth_method.clone(),
            auth_data: auth_data.map(Into::into),
            ..Default::default()
        };
        wire.connack_v5(ack, &mut wbuf);
        if let Some(max) = req.max_packet_size {
            wire.set_max_outbound(max);
        }
    } else {
        wire.connack_v3(
            v3::ConnectAckReason::ConnectionAccepted,
            attach.session_present,
            &mut wbuf,
        );
    }

    Some(Box::new(Connection::new(connection::Accepted {
        broker: broker.clone(),
        io,
        wire,
        rbuf,
        wbuf,
        attach,
        keepalive_secs: keepalive,
        window,
        alias_out_max: req.topic_alias_max,
        session_expiry,
        acl,
        reauth: req.auth_method.as_deref().map(|m| {
            Box::new(connection::ReAuth {
                method: m.to_string(),
                connect: connect_attempt(&req, peer, kind),
                conv: None,
            })
        }),
    })))
}
