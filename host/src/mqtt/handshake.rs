//! The CONNECT phase: detect the protocol version from the first packet, decode CONNECT
//! into a version-neutral request, and refuse what cannot be served with the right code.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishProperties;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5, MqttCodec, MqttPacket};
use tokio_util::codec::Decoder;

use super::transport::Transport;
use super::wire::Wire;

/// Why the CONNECT phase ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Nothing (complete) arrived in time.
    #[error("no CONNECT within {0:?}")]
    Timeout(Duration),
    /// The peer closed first.
    #[error("connection closed before CONNECT")]
    Closed,
    /// Socket error.
    #[error("i/o error before CONNECT: {0}")]
    Io(#[from] std::io::Error),
    /// Bytes that are not an MQTT CONNECT of a known version.
    #[error("malformed or unsupported CONNECT: {0}")]
    Malformed(DecodeError),
    /// CONNECT with a client id the protocol does not allow (3.1.1: empty with clean
    /// session 0).
    #[error("client identifier rejected")]
    IdentifierRejected {
        /// Whether the client speaks MQTT 5.
        v5: bool,
    },
    /// The first packet was not CONNECT.
    #[error("first packet was not CONNECT")]
    NotConnect,
}

/// The will from CONNECT.
#[derive(Debug, Clone)]
pub struct WillReq {
    /// Topic.
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS.
    pub qos: QoS,
    /// Retain.
    pub retain: bool,
    /// v5 will delay interval.
    pub delay_secs: u32,
    /// v5 message expiry interval.
    pub expiry: Option<NonZeroU32>,
    /// v5 properties passed through.
    pub props: Option<Box<PublishProperties>>,
}

/// CONNECT in version-neutral form.
#[derive(Debug, Clone)]
pub struct ConnectReq {
    /// "MQTT" or "MQIsdp".
    pub proto_name: &'static str,
    /// 3, 4 or 5.
    pub proto_ver: u8,
    /// Clean start / clean session.
    pub clean_start: bool,
    /// Keepalive asked for.
    pub keepalive: u16,
    /// Client id (may be empty).
    pub client_id: ByteString,
    /// Username.
    pub username: Option<ByteString>,
    /// Password.
    pub password: Option<Bytes>,
    /// Will.
    pub will: Option<WillReq>,
    /// Session expiry interval asked for (3.1.1: from config, set by the caller).
    pub session_expiry: u32,
    /// Client's receive maximum.
    pub receive_max: u16,
    /// Client's maximum packet size.
    pub max_packet_size: Option<u32>,
    /// Topic aliases the client accepts from us.
    pub topic_alias_max: u16,
    /// v5 enhanced authentication method.
    pub auth_method: Option<ByteString>,
    /// v5 enhanced authentication data.
    pub auth_data: Option<bytes::Bytes>,
}

/// Reads until a whole CONNECT is decoded. Returns the wire codec for the rest of the
/// connection and the request; bytes after CONNECT stay in `buf`.
pub async fn read_connect<T: Transport>(
    io: &mut T,
    buf: &mut BytesMut,
    max_packet_size: u32,
    timeout: Duration,
) -> Result<(Wire, ConnectReq), HandshakeError> {
    let work = async {
        let mut version = VersionCodec;
        let v = loop {
            match version.decode(buf) {
                Ok(Some(v)) => break v,
                Ok(None) => {}
                Err(DecodeError::InvalidProtocol) if buf.first().is_some_and(|b| *b != 0x10) => {
                    return Err(HandshakeError::NotConnect)
                }
                Err(e) => return Err(HandshakeError::Malformed(e)),
            }
            if io.read(buf).await? == 0 {
                return Err(HandshakeError::Closed);
            }
        };
        let mut codec = match v {
            ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max_packet_size)),
            ProtocolVersion::MQTT5 => {
                MqttCodec::V5(v5::Codec::new(max_packet_size, max_packet_size))
            }
        };
        let pkt = loop {
            // Only a whole packet reaches the codec (see `frame_ready`): before CONNECT is
            // authenticated, a peer makes the broker hold only what it actually sent.
            let ready = super::wire::frame_ready(buf, max_packet_size);
            match if ready { codec.decode(buf) } else { Ok(None) } {
                Ok(Some((p, _))) => break p,
                Ok(None) => {}
                Err(DecodeError::InvalidClientId) => {
                    return Err(HandshakeError::IdentifierRejected {
                        v5: v == ProtocolVersion::MQTT5,
                    })
                }
                Err(e) => return Err(HandshakeError::Malformed(e)),
            }
            if io.read(buf).await? == 0 {
                return Err(HandshakeError::Closed);
            }
        };
        let req = match pkt {
            MqttPacket::V3(v3::Packet::Connect(c)) => from_v3(*c),
            MqttPacket::V5(v5::Packet::Connect(c)) => from_v5(*c),
            _ => return Err(HandshakeError::NotConnect),
        };
        let mut wire = Wire::new(codec, max_packet_size);
        if matches!(req.proto_ver, 5) {
            // The fast PUBLISH path keeps to the codec's outbound limit until the client
            // names its own.
            wire.set_max_outbound(max_packet_size);
        }
        Ok((wire, req))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| HandshakeError::Timeout(timeout))?
}

fn from_v3(c: v3::Connect) -> ConnectReq {
    let level = c.protocol.level();
    ConnectReq {
        proto_name: if level == 3 { "MQIsdp" } else { "MQTT" },
        proto_ver: level,
        clean_start: c.clean_session,
        keepalive: c.keep_alive,
        client_id: c.client_id,
        username: c.username,
        password: c.password,
        will: c.last_will.map(|w| WillReq {
            topic: w.topic,
            payload: w.message,
            qos: w.qos,
            retain: w.retain,
            delay_secs: 0,
            expiry: None,
            props: None,
        }),
        session_expiry: 0,
        receive_max: u16::MAX,
        max_packet_size: None,
        topic_alias_max: 0,
        auth_method: None,
        auth_data: None,
    }
}

fn from_v5(c: v5::Connect) -> ConnectReq {
    ConnectReq {
        proto_name: "MQTT",
        proto_ver: 5,
        clean_start: c.clean_start,
        keepalive: c.keep_alive,
        client_id: c.client_id,
        username: c.username,
        password: c.password,
        will: c.last_will.map(|w| WillReq {
            topic: w.topic,
            payload: w.message,
            qos: w.qos,
            retain: w.retain,
            delay_secs: w.will_delay_interval_sec.unwrap_or(0),
            expiry: w.message_expiry_interval,
            props: Some(Box::new(PublishProperties {
                topic_alias: None,
                correlation_data: w.correlation_data,
                message_expiry_interval: None,
                content_type: w.content_type,
                user_properties: w.user_properties,
                is_utf8_payload: w.is_utf8_payload.unwrap_or(false),
                response_topic: w.response_topic,
                subscription_ids: Vec::new(),
            })),
        }),
        session_expiry: c.session_expiry_interval_secs,
        receive_max: c.receive_max.map_or(u16::MAX, |r| r.get()),
        max_packet_size: c.max_packet_size.map(|m| m.get()),
        topic_alias_max: c.topic_alias_max,
        auth_method: c.auth_method,
        auth_data: c.auth_data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::transport::StreamTransport;
    use tokio::io::AsyncWriteExt;

    /// A client announcing a CONNECT of ~1 MiB and sending 12 bytes of it: before the
    /// CONNECT is whole (let alone authenticated) the broker holds what arrived, not room
    /// for what was announced.
    #[tokio::test]
    async fn an_announced_connect_reserves_only_what_arrived() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&[0x10, 0xFF, 0xFF, 0x3F, 0, 4, b'M', b'Q', b'T', b'T', 4, 2])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let (sock, _) = l.accept().await.unwrap();
        let mut io = StreamTransport(sock);
        let mut buf = BytesMut::new();
        let r = read_connect(&mut io, &mut buf, 1 << 20, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(HandshakeError::Timeout(_))), "{r:?}");
        assert!(
            buf.capacity() < 64 << 10,
            "reserved {} bytes",
            buf.capacity()
        );
        client.abort();
    }
}
