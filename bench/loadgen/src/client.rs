//! A minimal MQTT client for load: rmqtt-codec for the wire, TCP or WebSocket, split into
//! a reader and a writer so publishers can pipeline and subscribers can ack in batches.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};
use rmqtt_codec::types::{Protocol, Publish, QoS};
use rmqtt_codec::{v3, v5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::codec::{Decoder, Encoder};

use super::{BenchError, Opts};

type Ws = WebSocketStream<TcpStream>;

/// Where bytes go.
pub enum Tx {
    /// Plain TCP.
    Tcp(OwnedWriteHalf),
    /// WebSocket, binary frames.
    Ws(futures_util::stream::SplitSink<Ws, WsMessage>),
}

/// Where bytes come from.
pub enum Rx {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// WebSocket.
    Ws(futures_util::stream::SplitStream<Ws>),
}

impl Tx {
    /// Writes (and empties) `buf`.
    pub async fn send(&mut self, buf: &mut BytesMut) -> Result<(), BenchError> {
        if buf.is_empty() {
            return Ok(());
        }
        match self {
            Tx::Tcp(w) => w.write_all(buf).await?,
            Tx::Ws(w) => w
                .send(WsMessage::Binary(buf.split().freeze()))
                .await
                .map_err(|e| BenchError::Protocol(e.to_string()))?,
        }
        buf.clear();
        Ok(())
    }
}

impl Rx {
    /// Reads more into `buf`; Ok(false) at end of stream.
    pub async fn fill(&mut self, buf: &mut BytesMut) -> Result<bool, BenchError> {
        match self {
            Rx::Tcp(r) => Ok(r.read_buf(buf).await? > 0),
            Rx::Ws(r) => loop {
                match r.next().await {
                    Some(Ok(WsMessage::Binary(b))) => {
                        buf.extend_from_slice(&b);
                        return Ok(true);
                    }
                    Some(Ok(WsMessage::Close(_))) | None => return Ok(false),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(BenchError::Protocol(e.to_string())),
                }
            },
        }
    }
}

/// What the load generator cares about in a packet from the broker.
#[derive(Debug)]
pub enum In {
    /// CONNACK with its code and (v5) the broker's receive maximum.
    ConnAck(u8, Option<u16>),
    /// SUBACK with its codes.
    SubAck(Vec<u8>),
    /// PUBLISH.
    Publish(QoS, u16, Bytes),
    /// PUBACK.
    PubAck,
    /// PUBREC.
    PubRec(u16),
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp,
    /// Anything else (PINGRESP, DISCONNECT, ...); the name shows in error messages.
    Other(#[allow(dead_code)] &'static str),
}

/// The codec of one direction of one connection.
pub enum Codec {
    /// MQTT 3.1.1.
    V3(v3::Codec),
    /// MQTT 5.
    V5(v5::Codec),
}

fn pid(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).unwrap_or(NonZeroU16::MIN)
}

impl Codec {
    /// A codec for `version` (4 or 5).
    pub fn new(version: u8) -> Self {
        if version == 5 {
            Codec::V5(v5::Codec::new(16 << 20, 16 << 20))
        } else {
            Codec::V3(v3::Codec::new(16 << 20))
        }
    }

    fn put3(&mut self, p: v3::Packet, out: &mut BytesMut) -> Result<(), BenchError> {
        match self {
            Codec::V3(c) => c
                .encode(p, out)
                .map_err(|e| BenchError::Protocol(e.to_string())),
            Codec::V5(_) => Err(BenchError::Protocol("v3 packet on a v5 codec".into())),
        }
    }

    fn put5(&mut self, p: v5::Packet, out: &mut BytesMut) -> Result<(), BenchError> {
        match self {
            Codec::V5(c) => c
                .encode(p, out)
                .map_err(|e| BenchError::Protocol(e.to_string())),
            Codec::V3(_) => Err(BenchError::Protocol("v5 packet on a v3 codec".into())),
        }
    }

    /// CONNECT (clean start, keepalive 60).
    pub fn connect(&mut self, id: &str, o: &Opts, out: &mut BytesMut) -> Result<(), BenchError> {
        let username = o.username.as_deref().map(ByteString::from);
        let password = o
            .password
            .as_deref()
            .map(|p| Bytes::copy_from_slice(p.as_bytes()));
        match self {
            Codec::V3(_) => self.put3(
                v3::Packet::Connect(Box::new(v3::Connect {
                    protocol: Protocol(4),
                    clean_session: true,
                    keep_alive: 60,
                    last_will: None,
                    client_id: id.into(),
                    username,
                    password,
                    cert: None,
                })),
                out,
            ),
            Codec::V5(_) => self.put5(
                v5::Packet::Connect(Box::new(v5::Connect {
                    clean_start: true,
                    keep_alive: 60,
                    client_id: id.into(),
                    username,
                    password,
                    receive_max: NonZeroU16::new(u16::MAX),
                    ..Default::default()
                })),
                out,
            ),
        }
    }

    /// SUBSCRIBE to one filter.
    pub fn subscribe(
        &mut self,
        filter: &str,
        qos: QoS,
        out: &mut BytesMut,
    ) -> Result<(), BenchError> {
        match self {
            Codec::V3(_) => self.put3(
                v3::Packet::Subscribe {
                    packet_id: pid(1),
                    topic_filters: vec![(filter.into(), qos)],
                },
                out,
            ),
            Codec::V5(_) => self.put5(
                v5::Packet::Subscribe(v5::Subscribe {
                    packet_id: pid(1),
                    id: None,
                    user_properties: Vec::new(),
                    topic_filters: vec![(
                        filter.into(),
                        v5::SubscriptionOptions {
                            qos,
                            no_local: false,
                            retain_as_published: false,
                            retain_handling: v5::RetainHandling::AtSubscribe,
                        },
                    )],
                }),
                out,
            ),
        }
    }

    /// PUBLISH.
    pub fn publish(
        &mut self,
        topic: &ByteString,
        qos: QoS,
        packet_id: u16,
        payload: Bytes,
        out: &mut BytesMut,
    ) -> Result<(), BenchError> {
        let p = Box::new(Publish {
            dup: false,
            retain: false,
            qos,
            topic: topic.clone(),
            packet_id: (qos != QoS::AtMostOnce).then(|| pid(packet_id)),
            payload,
            properties: None,
        });
        match self {
            Codec::V3(_) => self.put3(v3::Packet::Publish(p), out),
            Codec::V5(_) => self.put5(v5::Packet::Publish(p), out),
        }
    }

    /// An acknowledgement: `kind` is 4 PUBACK, 5 PUBREC, 6 PUBREL, 7 PUBCOMP.
    pub fn ack(&mut self, kind: u8, packet_id: u16, out: &mut BytesMut) -> Result<(), BenchError> {
        let id = pid(packet_id);
        match self {
            Codec::V3(_) => self.put3(
                match kind {
                    4 => v3::Packet::PublishAck { packet_id: id },
                    5 => v3::Packet::PublishReceived { packet_id: id },
                    6 => v3::Packet::PublishRelease { packet_id: id },
                    _ => v3::Packet::PublishComplete { packet_id: id },
                },
                out,
            ),
            Codec::V5(_) => {
                let a = v5::PublishAck {
                    packet_id: id,
                    reason_code: v5::PublishAckReason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                };
                let a2 = v5::PublishAck2 {
                    packet_id: id,
                    reason_code: v5::PublishAck2Reason::Success,
                    properties: Vec::new(),
                    reason_string: None,
                };
                self.put5(
                    match kind {
                        4 => v5::Packet::PublishAck(a),
                        5 => v5::Packet::PublishReceived(a),
                        6 => v5::Packet::PublishRelease(a2),
                        _ => v5::Packet::PublishComplete(a2),
                    },
                    out,
                )
            }
        }
    }

    /// The next whole packet in `buf`, if any.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, BenchError> {
        let err = |e: rmqtt_codec::error::DecodeError| BenchError::Protocol(e.to_string());
        Ok(match self {
            Codec::V3(c) => c.decode(buf).map_err(err)?.map(|(p, _)| match p {
                v3::Packet::ConnectAck(a) => In::ConnAck(u8::from(a.return_code), None),
                v3::Packet::SubscribeAck { status, .. } => In::SubAck(
                    status
                        .iter()
                        .map(|s| match s {
                            v3::SubscribeReturnCode::Success(q) => q.value(),
                            v3::SubscribeReturnCode::Failure => 0x80,
                        })
                        .collect(),
                ),
                v3::Packet::Publish(p) => {
                    In::Publish(p.qos, p.packet_id.map_or(0, |x| x.get()), p.payload)
                }
                v3::Packet::PublishAck { .. } => In::PubAck,
                v3::Packet::PublishReceived { packet_id } => In::PubRec(packet_id.get()),
                v3::Packet::PublishRelease { packet_id } => In::PubRel(packet_id.get()),
                v3::Packet::PublishComplete { .. } => In::PubComp,
                _ => In::Other("packet"),
            }),
            Codec::V5(c) => c.decode(buf).map_err(err)?.map(|(p, _)| match p {
                v5::Packet::ConnectAck(a) => {
                    In::ConnAck(u8::from(a.reason_code), Some(a.receive_max.get()))
                }
                v5::Packet::SubscribeAck(a) => {
                    In::SubAck(a.status.iter().map(|s| u8::from(*s)).collect())
                }
                v5::Packet::Publish(p) => {
                    In::Publish(p.qos, p.packet_id.map_or(0, |x| x.get()), p.payload)
                }
                v5::Packet::PublishAck(_) => In::PubAck,
                v5::Packet::PublishReceived(a) => In::PubRec(a.packet_id.get()),
                v5::Packet::PublishRelease(a) => In::PubRel(a.packet_id.get()),
                v5::Packet::PublishComplete(_) => In::PubComp,
                v5::Packet::Disconnect(_) => In::Other("DISCONNECT"),
                _ => In::Other("packet"),
            }),
        })
    }
}

/// A connected client: its halves, codecs and read buffer.
pub struct Conn {
    /// Writer.
    pub tx: Tx,
    /// Reader.
    pub rx: Rx,
    /// Encoder.
    pub enc: Codec,
    /// Decoder.
    pub dec: Codec,
    /// Bytes read and not yet decoded.
    pub rbuf: BytesMut,
    /// The broker's receive maximum (v5), else 65535.
    pub receive_max: u16,
}

impl Conn {
    /// Connects to `port` and waits for CONNACK.
    pub async fn open(o: &Opts, id: &str, port: u16) -> Result<Self, BenchError> {
        let tcp = TcpStream::connect((o.host.as_str(), port)).await?;
        tcp.set_nodelay(true)?;
        let (tx, rx) = if o.ws {
            let url = format!("ws://{}:{}/mqtt", o.host, port);
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                )
                .map_err(|e| BenchError::Protocol(e.to_string()))?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "mqtt".parse().expect("static header"),
            );
            let (ws, _) = tokio_tungstenite::client_async(req, tcp)
                .await
                .map_err(|e| BenchError::Protocol(format!("websocket handshake: {e}")))?;
            let (w, r) = ws.split();
            (Tx::Ws(w), Rx::Ws(r))
        } else {
            let (r, w) = tcp.into_split();
            (Tx::Tcp(w), Rx::Tcp(r))
        };
        let mut c = Conn {
            tx,
            rx,
            enc: Codec::new(o.version),
            dec: Codec::new(o.version),
            rbuf: BytesMut::with_capacity(64 << 10),
            receive_max: u16::MAX,
        };
        let mut out = BytesMut::new();
        c.enc.connect(id, o, &mut out)?;
        c.tx.send(&mut out).await?;
        match c.next().await? {
            In::ConnAck(0, rm) => {
                c.receive_max = rm.unwrap_or(u16::MAX);
                Ok(c)
            }
            In::ConnAck(code, _) => Err(BenchError::Refused(code)),
            other => Err(BenchError::Protocol(format!(
                "expected CONNACK, got {other:?}"
            ))),
        }
    }

    /// The next packet.
    pub async fn next(&mut self) -> Result<In, BenchError> {
        loop {
            if let Some(p) = self.dec.decode(&mut self.rbuf)? {
                return Ok(p);
            }
            if !self.rx.fill(&mut self.rbuf).await? {
                return Err(BenchError::Closed);
            }
        }
    }

    /// Subscribes and waits for SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), BenchError> {
        let mut out = BytesMut::new();
        self.enc.subscribe(filter, qos, &mut out)?;
        self.tx.send(&mut out).await?;
        loop {
            match self.next().await? {
                In::SubAck(codes) if codes.iter().all(|c| *c < 0x80) => return Ok(()),
                In::SubAck(codes) => {
                    return Err(BenchError::Protocol(format!(
                        "subscription refused: {codes:?}"
                    )))
                }
                _ => continue,
            }
        }
    }
}
