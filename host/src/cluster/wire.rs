//! What travels between nodes: a message with its origin (node and incarnation) and a
//! sequence number, MessagePack; and each origin's window of sequence numbers seen, so
//! a node that hears one message through several of its NATS subscriptions (overlapping
//! filters) routes it once, whatever order those subscriptions hand it over in.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::store::records::MessageRecord;

/// Format version of [`Envelope`].
const VERSION: u8 = 1;

/// A message between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version.
    pub v: u8,
    /// `node/incarnation` of the sender.
    pub origin: String,
    /// Rises by one per message the sender sends.
    pub seq: u64,
    /// Tenant.
    pub tenant: String,
    /// Publisher's client id, if a client published it.
    pub from: Option<String>,
    /// The message.
    pub msg: MessageRecord,
}

/// Why an envelope was not taken.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Not MessagePack of an envelope.
    #[error("undecodable cluster message: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A newer format than this node reads.
    #[error("cluster message format {0} is newer than this node's ({VERSION})")]
    Version(u8),
}

/// Encodes `m` as sent by `origin`.
pub fn encode(origin: &str, seq: u64, m: &Message) -> Vec<u8> {
    let e = Envelope {
        v: VERSION,
        origin: origin.to_string(),
        seq,
        tenant: m.tenant.to_string(),
        from: m.publisher_client.as_deref().map(str::to_string),
        msg: MessageRecord::from_message(m),
    };
    rmp_serde::to_vec_named(&e).unwrap_or_default()
}

/// Decodes an envelope.
pub fn decode(bytes: &[u8]) -> Result<Envelope, WireError> {
    let e: Envelope = rmp_serde::from_slice(bytes)?;
    if e.v > VERSION {
        return Err(WireError::Version(e.v));
    }
    Ok(e)
}

impl Envelope {
    /// The message as this node routes it (publisher 0: no local session published it).
    pub fn into_message(self) -> Message {
        let mut m = self.msg.into_message(Arc::from(self.tenant));
        m.publisher_client = self.from.map(Arc::from);
        m
    }
}

/// Sequence numbers seen per origin: the highest, and which of the [`WINDOW`] before it.
#[derive(Debug, Default)]
pub struct Seen {
    origins: HashMap<String, Window>,
}

/// How far back out-of-order arrivals are still told apart from duplicates.
const WINDOW: u64 = 4096;

#[derive(Debug)]
struct Window {
    high: u64,
    bits: Box<[u64; (WINDOW / 64) as usize]>,
}

impl Window {
    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let i = (seq % WINDOW) as usize;
        (&mut self.bits[i / 64], 1 << (i % 64))
    }
}

/// What [`Seen::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: route it.
    First,
    /// A copy of one already routed.
    Repeat,
    /// Older than the window: it cannot be told from a repeat, so it is dropped.
    TooLate,
}

impl Seen {
    /// True the first time `(origin, seq)` is seen.
    #[cfg(test)]
    fn first(&mut self, origin: &str, seq: u64) -> bool {
        self.check(origin, seq) == Verdict::First
    }

    /// Whether `(origin, seq)` is new, a repeat, or too late to tell.
    pub fn check(&mut self, origin: &str, seq: u64) -> Verdict {
        let w = match self.origins.get_mut(origin) {
            Some(w) => w,
            None => {
                let mut w = Window {
                    high: seq,
                    bits: Box::new([0; (WINDOW / 64) as usize]),
                };
                let (word, bit) = w.bit(seq);
                *word |= bit;
                self.origins.insert(origin.to_string(), w);
                return Verdict::First;
            }
        };
        if seq > w.high {
            // Clear the slots between the old high and the new one: they are new seqs.
            let gap = (seq - w.high).min(WINDOW);
            for s in (seq - gap + 1)..=seq {
                let (word, bit) = w.bit(s);
                *word &= !bit;
            }
            w.high = seq;
        } else if w.high - seq >= WINDOW {
            return Verdict::TooLate;
        }
        let (word, bit) = w.bit(seq);
        let fresh = *word & bit == 0;
        *word |= bit;
        if fresh {
            Verdict::First
        } else {
            Verdict::Repeat
        }
    }

    /// Forgets an origin (its node restarted under a new incarnation, or is gone).
    pub fn forget(&mut self, origin: &str) {
        self.origins.remove(origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rmqtt_codec::types::QoS;

    #[test]
    fn envelopes_round_trip_and_newer_formats_are_refused() {
        let mut m = Message::new(
            "acme".into(),
            "a/b".into(),
            Bytes::from_static(b"hi"),
            QoS::ExactlyOnce,
            true,
        );
        m.publisher_client = Some("c1".into());
        let e = decode(&encode("n1/7", 42, &m)).unwrap();
        assert_eq!((e.origin.as_str(), e.seq), ("n1/7", 42));
        let back = e.into_message();
        assert_eq!(
            (&*back.tenant, &*back.topic, &back.payload[..]),
            ("acme", "a/b", &b"hi"[..])
        );
        assert_eq!(
            (back.qos, back.retain, back.publisher),
            (QoS::ExactlyOnce, true, 0)
        );
        assert_eq!(back.publisher_client.as_deref(), Some("c1"));
        assert!(decode(b"\x01\x02").is_err());
        let mut newer = decode(&encode("n", 1, &m)).unwrap();
        newer.v = 9;
        let bytes = rmp_serde::to_vec_named(&newer).unwrap();
        assert!(matches!(decode(&bytes), Err(WireError::Version(9))));
    }

    #[test]
    fn each_sequence_number_is_first_once_in_any_order() {
        let mut s = Seen::default();
        assert!(s.first("a", 5));
        assert!(!s.first("a", 5));
        assert!(s.first("a", 3), "older but unseen");
        assert!(!s.first("a", 3));
        assert!(s.first("a", 9));
        assert!(s.first("a", 6));
        assert!(s.first("b", 5), "origins are apart");
        // Far ahead: the window moves, and what fell out of it counts as seen.
        assert!(s.first("a", 9 + WINDOW + 10));
        assert_eq!(s.check("a", 9), Verdict::TooLate);
        assert_eq!(s.check("a", 9 + WINDOW + 10), Verdict::Repeat);
        assert!(
            s.first("a", 9 + WINDOW + 5),
            "inside the new window, unseen"
        );
        s.forget("a");
        assert!(s.first("a", 1));
    }
}
