//! What is stored, and how: keys are length-prefixed byte strings (no separator can
//! collide with an id), values are MessagePack maps with field names inside a versioned
//! envelope, so a later release can add fields (`#[serde(default)]`) and still read these.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishProperties;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::message::Message;

/// Current value format version.
pub const FORMAT: u8 = 1;

/// Why a stored value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not MessagePack of the expected shape.
    #[error("undecodable record: {0}")]
    Decode(String),
    /// Written by a newer release.
    #[error("record format {found} is newer than this release understands ({FORMAT})")]
    Version {
        /// Version found.
        found: u8,
    },
    /// A key that does not have the expected layout.
    #[error("malformed key")]
    Key,
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u8,
    r: T,
}

/// Encodes a record in the current format.
pub fn encode<T: Serialize>(r: &T) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail.
    rmp_serde::to_vec_named(&Envelope { v: FORMAT, r }).expect("records serialise")
}

/// Decodes a record written by this or an older release.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    #[derive(Deserialize)]
    struct Version {
        v: u8,
    }
    let v: Version =
        rmp_serde::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
    if v.v > FORMAT {
        return Err(RecordError::Version { found: v.v });
    }
    let e: Envelope<T> =
        rmp_serde::from_slice(bytes).map_err(|e| RecordError::Decode(e.to_string()))?;
    Ok(e.r)
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    k.extend_from_slice(&(s.len() as u32).to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

fn take_str<'a>(k: &mut &'a [u8]) -> Result<&'a str, RecordError> {
    if k.len() < 4 {
        return Err(RecordError::Key);
    }
    let n = u32::from_be_bytes([k[0], k[1], k[2], k[3]]) as usize;
    let rest = &k[4..];
    if rest.len() < n {
        return Err(RecordError::Key);
    }
    let s = std::str::from_utf8(&rest[..n]).map_err(|_| RecordError::Key)?;
    *k = &rest[n..];
    Ok(s)
}

/// Key of a session: tenant, client id. Also the prefix of its inbox and QoS 2 state.
pub fn session_key(tenant: &str, client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + tenant.len() + client_id.len() + 8);
    push_str(&mut k, tenant);
    push_str(&mut k, client_id);
    k
}

/// Key of one inbox message: session key + sequence number (big-endian: ordered).
pub fn inbox_key(tenant: &str, client_id: &str, seq: u64) -> Vec<u8> {
    let mut k = session_key(tenant, client_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Key of one incoming QoS 2 packet id awaiting PUBREL.
pub fn rel_key(tenant: &str, client_id: &str, pid: u16) -> Vec<u8> {
    let mut k = session_key(tenant, client_id);
    k.extend_from_slice(&pid.to_be_bytes());
    k
}

/// Key of one subscription of a session: session key + the filter as subscribed (last,
/// unprefixed, so a session's subscriptions are one prefix scan).
pub fn sub_key(tenant: &str, client_id: &str, filter: &str) -> Vec<u8> {
    let mut k = session_key(tenant, client_id);
    k.extend_from_slice(filter.as_bytes());
    k
}

/// Key of a plugin's kv entry: plugin name, then the key itself (unprefixed, so keys
/// with a common prefix are one prefix scan, in key order).
pub fn kv_key(plugin: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + plugin.len() + key.len());
    push_str(&mut k, plugin);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Splits a kv key into (plugin, key).
pub fn split_kv_key(mut k: &[u8]) -> Result<(&str, &str), RecordError> {
    let p = take_str(&mut k)?;
    let key = std::str::from_utf8(k).map_err(|_| RecordError::Key)?;
    Ok((p, key))
}

/// Key of a retained message: tenant, topic.
pub fn retained_key(tenant: &str, topic: &str) -> Vec<u8> {
    session_key(tenant, topic)
}

/// Splits a session-prefixed key into (tenant, client id, suffix).
pub fn split_key(mut k: &[u8]) -> Result<(&str, &str, &[u8]), RecordError> {
    let t = take_str(&mut k)?;
    let c = take_str(&mut k)?;
    Ok((t, c, k))
}

fn ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// A stored message (inbox entry, retained message, or will).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Topic.
    pub topic: String,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// QoS as published.
    pub qos: u8,
    /// Retain flag as published.
    pub retain: bool,
    /// v5 properties.
    #[serde(default)]
    pub props: Option<PublishProperties>,
    /// Expiry as Unix ms.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Receipt as Unix ms.
    #[serde(default)]
    pub received_ms: i64,
}

impl MessageRecord {
    /// Captures a message for storage.
    pub fn from_message(m: &Message) -> Self {
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        let to_sys = |i: Instant| {
            if i >= now_i {
                now_s + (i - now_i)
            } else {
                now_s - (now_i - i)
            }
        };
        Self {
            topic: m.topic.to_string(),
            payload: m.payload.to_vec(),
            qos: m.qos.value(),
            retain: m.retain,
            props: m.props.as_deref().cloned(),
            expires_at_ms: m.expires_at.map(|e| ms(to_sys(e))),
            received_ms: ms(to_sys(m.received)),
        }
    }

    /// Rebuilds the message for `tenant`.
    pub fn into_message(self, tenant: Arc<str>) -> Message {
        let now_i = Instant::now();
        let now_s = SystemTime::now();
        let to_instant = |ms: i64| {
            let t = from_ms(ms);
            match t.duration_since(now_s) {
                Ok(ahead) => now_i + ahead,
                Err(e) => now_i.checked_sub(e.duration()).unwrap_or(now_i),
            }
        };
        Message {
            tenant,
            topic: ByteString::from(self.topic),
            payload: Bytes::from(self.payload),
            qos: QoS::try_from(self.qos.min(2)).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            props: self.props.map(Box::new),
            publisher: 0,
            publisher_client: None,
            received: to_instant(self.received_ms),
            expires_at: self.expires_at_ms.map(to_instant),
        }
    }
}

/// One message in a session's inbox, with its delivery state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InboxRecord {
    /// The message.
    pub msg: MessageRecord,
    /// Delivery QoS.
    pub qos: u8,
    /// Retain flag on the wire.
    pub retain: bool,
    /// Subscription identifiers.
    #[serde(default)]
    pub sub_ids: Vec<u32>,
    /// Packet id once sent (inflight); None while queued.
    #[serde(default)]
    pub pid: Option<u16>,
    /// Inflight state: 0 queued, 1 awaiting PUBACK, 2 awaiting PUBREC, 3 awaiting PUBCOMP.
    #[serde(default)]
    pub state: u8,
}

/// One subscription of a stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubRecord {
    /// Filter as subscribed.
    pub filter: String,
    /// Granted QoS.
    pub qos: u8,
    /// No local.
    pub nl: bool,
    /// Retain as published.
    pub rap: bool,
    /// Retain handling.
    pub rh: u8,
    /// Subscription identifier.
    #[serde(default)]
    pub sub_id: Option<u32>,
}

/// A session's will.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WillRecord {
    /// The message.
    pub msg: MessageRecord,
    /// Will delay interval.
    pub delay_secs: u32,
    /// Message expiry interval, applied when published.
    #[serde(default)]
    pub expiry_secs: Option<u32>,
}

/// A persistent session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Creation time, Unix ms.
    pub created_ms: i64,
    /// Username.
    #[serde(default)]
    pub username: Option<String>,
    /// User id.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Protocol version.
    pub proto_ver: u8,
    /// Transport name of the last connection.
    #[serde(default)]
    pub transport: String,
    /// Peer of the last connection.
    #[serde(default)]
    pub peer: Option<String>,
    /// Keepalive.
    #[serde(default)]
    pub keepalive: u16,
    /// Clean start of the last CONNECT.
    #[serde(default)]
    pub clean_start: bool,
    /// Authentication made the client a superuser.
    #[serde(default)]
    pub superuser: bool,
    /// Session expiry interval (u32::MAX = never).
    pub expiry_interval: u32,
    /// Last connect, Unix ms.
    #[serde(default)]
    pub connected_ms: Option<i64>,
    /// Last disconnect, Unix ms; None while connected (a crash then counts as a disconnect).
    #[serde(default)]
    pub disconnected_ms: Option<i64>,
    /// Subscriptions, as releases before 0.1 stored them (inside the record, rewritten
    /// whole at every change). Read for migration; now each is a key of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<SubRecord>,
    /// The will (pending, or for the next abnormal disconnect).
    #[serde(default)]
    pub will: Option<WillRecord>,
    /// Last packet id handed out.
    #[serde(default)]
    pub last_pid: u16,
}

/// Milliseconds helpers for other store modules.
pub fn to_ms(t: SystemTime) -> i64 {
    ms(t)
}

/// The inverse of [`to_ms`].
pub fn system_time(ms: i64) -> SystemTime {
    from_ms(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_order_by_seq() {
        let a = inbox_key("t", "c\0x", 2);
        let b = inbox_key("t", "c\0x", 10);
        assert!(a < b);
        let (t, c, rest) = split_key(&a).unwrap();
        assert_eq!((t, c, rest), ("t", "c\0x", &2u64.to_be_bytes()[..]));
        assert!(a.starts_with(&session_key("t", "c\0x")));
        assert!(!inbox_key("t", "c", 1).starts_with(&session_key("t", "c\0x")));
        assert!(split_key(&[0, 0, 0, 9, b'a']).is_err());
        let s = sub_key("t", "c", "a/+");
        assert_eq!(split_key(&s).unwrap(), ("t", "c", &b"a/+"[..]));
        assert!(s.starts_with(&session_key("t", "c")));
        let k = kv_key("hello", "colour");
        assert_eq!(split_kv_key(&k).unwrap(), ("hello", "colour"));
        assert!(k.starts_with(&kv_key("hello", "col")));
        assert!(!kv_key("hell", "ocolour").starts_with(&kv_key("hello", "")));
    }

    #[test]
    fn records_round_trip_and_reject_newer_formats() {
        let m = Message::new(
            "t".into(),
            "a/b".into(),
            Bytes::from_static(b"\x00\x01"),
            QoS::AtLeastOnce,
            true,
        );
        let r = InboxRecord {
            msg: MessageRecord::from_message(&m),
            qos: 1,
            retain: false,
            sub_ids: vec![3],
            pid: Some(7),
            state: 1,
        };
        let bytes = encode(&r);
        let back: InboxRecord = decode(&bytes).unwrap();
        assert_eq!((back.pid, back.state, back.sub_ids), (Some(7), 1, vec![3]));
        let msg = back.msg.into_message("t".into());
        assert_eq!(
            (&*msg.topic, &msg.payload[..], msg.retain),
            ("a/b", &b"\x00\x01"[..], true)
        );

        let newer = rmp_serde::to_vec_named(&Envelope {
            v: FORMAT + 1,
            r: &r,
        })
        .unwrap();
        assert!(matches!(
            decode::<InboxRecord>(&newer),
            Err(RecordError::Version { .. })
        ));
        assert!(matches!(
            decode::<InboxRecord>(b"\xc1garbage"),
            Err(RecordError::Decode(_))
        ));
    }
}
