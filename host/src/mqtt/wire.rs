//! Codec glue: one connection-facing vocabulary over rmqtt-codec's separate 3.1.1 and 5
//! packet types, so the connection logic is written once. Reason codes are MQTT 5 values
//! throughout and mapped down to 3.1.1 where the older protocol has a code at all.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::{v3, v5, MqttCodec, MqttPacket};
use tokio_util::codec::{Decoder, Encoder};

use crate::session::SubOptions;

/// A packet from a client after CONNECT, in version-neutral form.
#[derive(Debug)]
pub enum Incoming {
    /// PUBLISH.
    Publish(Box<Publish>),
    /// PUBACK.
    PubAck(u16),
    /// PUBREC; `ok` is false for a v5 error reason code.
    PubRec {
        /// Packet id.
        pid: u16,
        /// Reason code < 0x80.
        ok: bool,
    },
    /// PUBREL.
    PubRel(u16),
    /// PUBCOMP.
    PubComp(u16),
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        pid: u16,
        /// Subscription identifier (v5).
        id: Option<NonZeroU32>,
        /// Filters with options.
        filters: Vec<(ByteString, SubOptions)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        pid: u16,
        /// Filters.
        filters: Vec<ByteString>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT with its v5 reason code and session expiry (0 / None for 3.1.1).
    Disconnect {
        /// Reason code.
        reason: u8,
        /// New session expiry interval.
        session_expiry: Option<u32>,
    },
    /// AUTH (v5).
    Auth(Box<v5::Auth>),
    /// A packet a client must not send now (a second CONNECT, or a server-only packet).
    Unexpected(&'static str),
}

/// Encoder/decoder state of one connection after CONNECT.
#[derive(Debug)]
pub struct Wire {
    codec: MqttCodec,
    /// Whether the connection speaks MQTT 5.
    pub v5: bool,
    /// Packets encoded since the last [`Wire::take_encoded`].
    encoded: u64,
    /// The client's maximum packet size (v5), for the PUBLISH fast path.
    max_out: u32,
    /// Our maximum packet size (the codec refuses larger headers at once).
    max_in: u32,
}

/// Whether `buf` holds a whole packet, or a fixed header the codec will refuse (over
/// `max`, or malformed). Only then is the codec called: given a header alone, it would
/// reserve room for the whole announced packet, so a peer could make the broker
/// allocate up to the maximum packet size per connection without sending it.
pub fn frame_ready(buf: &[u8], max: u32) -> bool {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return false;
        };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (max != 0 && len > max as usize) || buf.len() >= 2 + i + len;
        }
    }
    true
}

/// Whether the next packet in `buf` is a PUBLISH (packet type 3), before decoding it.
pub fn starts_with_publish(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| b >> 4 == 3)
}

fn pid(p: NonZeroU16) -> u16 {
    p.get()
}

fn nz(p: u16) -> NonZeroU16 {
    NonZeroU16::new(p).unwrap_or(NonZeroU16::MIN)
}

impl Wire {
    /// Wraps a version-specific codec that accepts packets up to `max_in` bytes.
    pub fn new(codec: MqttCodec, max_in: u32) -> Self {
        let v5 = matches!(codec, MqttCodec::V5(_));
        Self {
            codec,
            v5,
            encoded: 0,
            max_out: u32::MAX,
            max_in,
        }
    }

    /// Packets encoded since the last call (for the session's send_pkt counter).
    pub fn take_encoded(&mut self) -> u64 {
        std::mem::take(&mut self.encoded)
    }

    /// Counts a PUBLISH written by the caller (send_pkt counts every packet).
    pub fn count_encoded(&mut self) {
        self.encoded += 1;
    }

    /// Applies the client's maximum packet size to what we send (v5).
    pub fn set_max_outbound(&mut self, size: u32) {
        if let MqttCodec::V5(c) = &mut self.codec {
            c.set_max_outbound_size(size);
        }
        if size > 0 {
            self.max_out = size;
        }
    }

    /// Decodes the next packet; the u32 is its remaining length.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(Incoming, u32)>, DecodeError> {
        if !frame_ready(buf, self.max_in) {
            return Ok(None);
        }
        let Some((pkt, len)) = self.codec.decode(buf)? else {
            return Ok(None);
        };
        let inc = match pkt {
            MqttPacket::V3(p) => from_v3(p),
            MqttPacket::V5(p) => from_v5(p),
            MqttPacket::Version(_) => Incoming::Unexpected("CONNECT"),
        };
        Ok(Some((inc, len)))
    }

    fn put(
        &mut self,
        v3p: impl FnOnce() -> Option<v3::Packet>,
        v5p: impl FnOnce() -> v5::Packet,
        out: &mut BytesMut,
    ) {
        let r = if self.v5 {
            self.codec.encode(MqttPacket::V5(v5p()), out)
        } else {
            match v3p() {
                Some(p) => self.codec.encode(MqttPacket::V3(p), out),
                None => Ok(()),
            }
        };
        match r {
            Ok(()) => self.encoded += 1,
            // Control packets built here always encode; a failure is a bug worth a log line.
            Err(e) => tracing::error!(error = %e, "failed to encode a control packet"),
        }
    }

    /// PUBACK with a v5 reason code.
    pub fn puback(&mut self, p: u16, reason: u8, out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::PublishAck { packet_id: nz(p) }),
            || v5::Packet::PublishAck(ack(p, reason)),
            out,
        );
    }

    /// PUBREC with a v5 reason code.
    pub fn pubrec(&mut self, p: u16, reason: u8, out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::PublishReceived { packet_id: nz(p) }),
            || v5::Packet::PublishReceived(ack(p, reason)),
            out,
        );
    }

    /// PUBREL; `found` false gives v5 0x92 Packet Identifier Not Found.
    pub fn pubrel(&mut self, p: u16, found: bool, out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::PublishRelease { packet_id: nz(p) }),
            || v5::Packet::PublishRelease(ack2(p, found)),
            out,
        );
    }

    /// PUBCOMP; `found` false gives v5 0x92 Packet Identifier Not Found.
    pub fn pubcomp(&mut self, p: u16, found: bool, out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::PublishComplete { packet_id: nz(p) }),
            || v5::Packet::PublishComplete(ack2(p, found)),
            out,
        );
    }

    /// SUBACK with one v5 reason code per filter (granted QoS or >= 0x80).
    pub fn suback(&mut self, p: u16, codes: &[u8], out: &mut BytesMut) {
        self.put(
            || {
                Some(v3::Packet::SubscribeAck {
                    packet_id: nz(p),
                    status: codes
                        .iter()
                        .map(|&c| match QoS::try_from(c) {
                            Ok(q) => v3::SubscribeReturnCode::Success(q),
                            Err(_) => v3::SubscribeReturnCode::Failure,
                        })
                        .collect(),
                })
            },
            || {
                v5::Packet::SubscribeAck(v5::SubscribeAck {
                    packet_id: nz(p),
                    properties: Vec::new(),
                    reason_string: None,
                    status: codes
                        .iter()
                        .map(|&c| {
                            v5::SubscribeAckReason::try_from(c)
                                .unwrap_or(v5::SubscribeAckReason::UnspecifiedError)
                        })
                        .collect(),
                })
            },
            out,
        );
    }

    /// UNSUBACK with one v5 reason code per filter.
    pub fn unsuback(&mut self, p: u16, codes: &[u8], out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::UnsubscribeAck { packet_id: nz(p) }),
            || {
                v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
                    packet_id: nz(p),
                    properties: Vec::new(),
                    reason_string: None,
                    status: codes
                        .iter()
                        .map(|&c| {
                            v5::UnsubscribeAckReason::try_from(c)
                                .unwrap_or(v5::UnsubscribeAckReason::UnspecifiedError)
                        })
                        .collect(),
                })
            },
            out,
        );
    }

    /// PINGRESP.
    pub fn pingresp(&mut self, out: &mut BytesMut) {
        self.put(
            || Some(v3::Packet::PingResponse),
            || v5::Packet::PingResponse,
            out,
        );
    }

    /// DISCONNECT from the server (v5 only; 3.1.1 just closes).
    pub fn disconnect(&mut self, reason: u8, out: &mut BytesMut) {
        self.put(
            || None,
            || {
                v5::Packet::Disconnect(v5::Disconnect {
                    reason_code: v5::DisconnectReasonCode::try_from(reason)
                        .unwrap_or(v5::DisconnectReasonCode::UnspecifiedError),
                    session_expiry_interval_secs: None,
                    server_reference: None,
                    reason_string: None,
                    user_properties: Vec::new(),
                })
            },
            out,
        );
    }

    /// A PUBLISH (properties must be None for 3.1.1).
    pub fn publish(&mut self, p: Publish, out: &mut BytesMut) -> Result<(), EncodeError> {
        if self.v5 {
            self.codec
                .encode(MqttPacket::V5(v5::Packet::Publish(Box::new(p))), out)
        } else {
            self.codec
                .encode(MqttPacket::V3(v3::Packet::Publish(Box::new(p))), out)
        }
    }

    /// A PUBLISH without properties (3.1.1, or v5 with none to send), written straight
    /// from the shared message: the fan-out hot path, with no per-delivery allocation and
    /// no reference-count traffic on the payload. Other PUBLISHes go through the codec.
    #[allow(clippy::too_many_arguments)]
    pub fn publish_plain(
        &mut self,
        dup: bool,
        qos: QoS,
        retain: bool,
        topic: &str,
        packet_id: Option<u16>,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        if topic.len() > usize::from(u16::MAX) {
            return Err(EncodeError::InvalidLength);
        }
        let pid_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
        let remaining = 2 + topic.len() + pid_len + usize::from(self.v5) + payload.len();
        let var_len = match remaining {
            0..=127 => 1,
            128..=16_383 => 2,
            16_384..=2_097_151 => 3,
            2_097_152..=268_435_455 => 4,
            _ => return Err(EncodeError::InvalidLength),
        };
        let total = 1 + var_len + remaining;
        if total > self.max_out as usize {
            return Err(EncodeError::OverMaxPacketSize {
                size: total as u32,
                max: self.max_out,
            });
        }
        out.reserve(total);
        out.put_u8(0x30 | u8::from(dup) << 3 | qos.value() << 1 | u8::from(retain));
        let mut n = remaining;
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.put_u8(b);
            if n == 0 {
                break;
            }
        }
        out.put_u16(topic.len() as u16);
        out.put_slice(topic.as_bytes());
        if pid_len > 0 {
            out.put_u16(packet_id.unwrap_or(1));
        }
        if self.v5 {
            out.put_u8(0); // no properties
        }
        out.put_slice(payload);
        Ok(())
    }

    /// A v5 AUTH: `reason` 0x00 success or 0x18 continue.
    pub fn auth(&mut self, reason: u8, method: &str, data: Option<Vec<u8>>, out: &mut BytesMut) {
        self.put(
            || None,
            || {
                v5::Packet::Auth(v5::Auth {
                    reason_code: if reason == 0x18 {
                        v5::AuthReasonCode::ContinueAuth
                    } else {
                        v5::AuthReasonCode::Success
                    },
                    auth_method: Some(method.into()),
                    auth_data: data.map(Into::into),
                    reason_string: None,
                    user_properties: Vec::new(),
                })
            },
            out,
        );
    }

    /// A v5 CONNACK.
    pub fn connack_v5(&mut self, ack: v5::ConnectAck, out: &mut BytesMut) {
        self.put(|| None, || v5::Packet::ConnectAck(Box::new(ack)), out);
    }

    /// A 3.1.1 CONNACK.
    pub fn connack_v3(
        &mut self,
        code: v3::ConnectAckReason,
        session_present: bool,
        out: &mut BytesMut,
    ) {
        let p = v3::Packet::ConnectAck(v3::ConnectAck {
            return_code: code,
            session_present,
        });
        match self.codec.encode(MqttPacket::V3(p), out) {
            Ok(()) => self.encoded += 1,
            Err(e) => tracing::error!(error = %e, "failed to encode CONNACK"),
        }
    }
}

fn ack(p: u16, reason: u8) -> v5::PublishAck {
    v5::PublishAck {
        packet_id: nz(p),
        reason_code: v5::PublishAckReason::try_from(reason)
            .unwrap_or(v5::PublishAckReason::UnspecifiedError),
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2(p: u16, found: bool) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id: nz(p),
        reason_code: if found {
            v5::PublishAck2Reason::Success
        } else {
            v5::PublishAck2Reason::PacketIdNotFound
        },
        properties: Vec::new(),
        reason_string: None,
    }
}

fn from_v3(p: v3::Packet) -> Incoming {
    use v3::Packet as P;
    match p {
        P::Publish(p) => Incoming::Publish(p),
        P::PublishAck { packet_id } => Incoming::PubAck(pid(packet_id)),
        P::PublishReceived { packet_id } => Incoming::PubRec {
            pid: pid(packet_id),
            ok: true,
        },
        P::PublishRelease { packet_id } => Incoming::PubRel(pid(packet_id)),
        P::PublishComplete { packet_id } => Incoming::PubComp(pid(packet_id)),
        P::Subscribe {
            packet_id,
            topic_filters,
        } => Incoming::Subscribe {
            pid: pid(packet_id),
            id: None,
            filters: topic_filters
                .into_iter()
                .map(|(f, q)| (f, SubOptions::qos(q)))
                .collect(),
        },
        P::Unsubscribe {
            packet_id,
            topic_filters,
        } => Incoming::Unsubscribe {
            pid: pid(packet_id),
            filters: topic_filters,
        },
        P::PingRequest => Incoming::PingReq,
        P::Disconnect => Incoming::Disconnect {
            reason: 0,
            session_expiry: None,
        },
        P::Connect(_) => Incoming::Unexpected("CONNECT"),
        P::ConnectAck(_) => Incoming::Unexpected("CONNACK"),
        P::SubscribeAck { .. } => Incoming::Unexpected("SUBACK"),
        P::UnsubscribeAck { .. } => Incoming::Unexpected("UNSUBACK"),
        P::PingResponse => Incoming::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> Incoming {
    use v5::Packet as P;
    match p {
        P::Publish(p) => Incoming::Publish(p),
        P::PublishAck(a) => Incoming::PubAck(pid(a.packet_id)),
        P::PublishReceived(a) => Incoming::PubRec {
            pid: pid(a.packet_id),
            ok: u8::from(a.reason_code) < 0x80,
        },
        P::PublishRelease(a) => Incoming::PubRel(pid(a.packet_id)),
        P::PublishComplete(a) => Incoming::PubComp(pid(a.packet_id)),
        P::Subscribe(s) => Incoming::Subscribe {
            pid: pid(s.packet_id),
            id: s.id,
            filters: s
                .topic_filters
                .into_iter()
                .map(|(f, o)| {
                    (
                        f,
                        SubOptions {
                            qos: o.qos,
                            no_local: o.no_local,
                            retain_as_published: o.retain_as_published,
                            retain_handling: u8::from(o.retain_handling),
                            sub_id: s.id,
                        },
                    )
                })
                .collect(),
        },
        P::Unsubscribe(u) => Incoming::Unsubscribe {
            pid: pid(u.packet_id),
            filters: u.topic_filters,
        },
        P::PingRequest => Incoming::PingReq,
        P::Disconnect(d) => Incoming::Disconnect {
            reason: u8::from(d.reason_code),
            session_expiry: d.session_expiry_interval_secs,
        },
        P::Auth(a) => Incoming::Auth(Box::new(a)),
        P::Connect(_) => Incoming::Unexpected("CONNECT"),
        P::ConnectAck(_) => Incoming::Unexpected("CONNACK"),
        P::SubscribeAck(_) => Incoming::Unexpected("SUBACK"),
        P::UnsubscribeAck(_) => Incoming::Unexpected("UNSUBACK"),
        P::PingResponse => Incoming::Unexpected("PINGRESP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The fast path writes exactly what the codec writes, for both versions, every QoS,
    /// and payloads around the remaining-length boundaries.
    #[test]
    fn publish_plain_matches_the_codec() {
        for v5 in [false, true] {
            for (qos, pid) in [
                (QoS::AtMostOnce, None),
                (QoS::AtLeastOnce, Some(7)),
                (QoS::ExactlyOnce, Some(65535)),
            ] {
                for len in [0usize, 1, 100, 127, 128, 16_380, 16_400, 70_000] {
                    let codec = || {
                        if v5 {
                            MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20))
                        } else {
                            MqttCodec::V3(v3::Codec::new(1 << 20))
                        }
                    };
                    let payload = Bytes::from(vec![0xA5u8; len]);
                    let mut fast = BytesMut::new();
                    Wire::new(codec(), 1 << 20)
                        .publish_plain(true, qos, true, "a/b", pid, &payload, &mut fast)
                        .unwrap();
                    let mut slow = BytesMut::new();
                    let p = Publish {
                        dup: true,
                        retain: true,
                        qos,
                        topic: "a/b".into(),
                        packet_id: pid.and_then(NonZeroU16::new),
                        payload,
                        properties: v5.then(Default::default),
                    };
                    Wire::new(codec(), 1 << 20).publish(p, &mut slow).unwrap();
                    assert_eq!(fast, slow, "v5={v5} qos={qos:?} len={len}");
                }
            }
        }
    }

    #[test]
    fn frames_are_decoded_only_when_whole() {
        // A header announcing 1,000,000 bytes, then a few of them.
        let mut hdr = vec![0x30u8, 0xC0, 0x84, 0x3D];
        assert!(!frame_ready(&hdr[..1], 1 << 20));
        assert!(!frame_ready(&hdr[..3], 1 << 20), "header incomplete");
        assert!(!frame_ready(&hdr, 1 << 20), "body missing");
        assert!(
            frame_ready(&hdr, 1000),
            "over the maximum: let the codec refuse it"
        );
        hdr.extend(vec![0; 1_000_000]);
        assert!(frame_ready(&hdr, 1 << 20));
        assert!(
            frame_ready(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], 1 << 20),
            "malformed"
        );
        assert!(frame_ready(&[0xC0, 0x00], 1 << 20), "PINGREQ");

        let mut w = Wire::new(MqttCodec::V3(v3::Codec::new(1 << 20)), 1 << 20);
        let mut buf = BytesMut::from(&[0x30u8, 0xC0, 0x84, 0x3D, 0, 1][..]);
        assert!(w.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() < 4096,
            "nothing reserved for the announced bytes"
        );
    }

    #[test]
    fn publish_plain_respects_the_clients_maximum_packet_size() {
        let mut w = Wire::new(MqttCodec::V5(v5::Codec::new(1 << 20, 1 << 20)), 1 << 20);
        w.set_max_outbound(20);
        let mut out = BytesMut::new();
        // 1 + 1 + (2 + 3 + 1 + 13) = 21 bytes: one over.
        let e = w
            .publish_plain(
                false,
                QoS::AtMostOnce,
                false,
                "a/b",
                None,
                &[0; 13],
                &mut out,
            )
            .unwrap_err();
        assert!(
            matches!(e, EncodeError::OverMaxPacketSize { size: 21, max: 20 }),
            "{e}"
        );
        assert!(out.is_empty());
        w.publish_plain(
            false,
            QoS::AtMostOnce,
            false,
            "a/b",
            None,
            &[0; 12],
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 20);
    }
}
