//! Listing what a session holds (EMQX's `mqueue_messages` and `inflight_messages`): pages
//! after a position, so that a cursor stays good while the queue drains and fills.

use crate::message::Delivery;

use super::state::SessionState;

/// A queued or inflight message and where it stands.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its position (queue: among every delivery ever queued; inflight: send order).
    pub pos: u64,
    /// The delivery.
    pub delivery: Delivery,
    /// Its packet id, once sent.
    pub pid: Option<u16>,
}

/// A listed message as the admin APIs show it, sent between nodes for a session that
/// lives on another.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct MessageSnapshot {
    /// Its position (see [`Listed::pos`]).
    pub position: u64,
    /// Topic.
    pub topic: String,
    /// Payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// QoS it is delivered with.
    pub qos: u8,
    /// Retain flag it is delivered with.
    pub retain: bool,
    /// Its packet id, once sent.
    pub packet_id: Option<u16>,
    /// When the broker received it, Unix milliseconds.
    pub published_at: i64,
    /// The publishing client, when a client published it.
    pub from_client_id: Option<String>,
}

impl Listed {
    /// The message as the admin APIs show it.
    pub fn snapshot(&self) -> MessageSnapshot {
        let m = &self.delivery.msg;
        let now = (std::time::SystemTime::now(), std::time::Instant::now());
        let at = now.0 - now.1.saturating_duration_since(m.received);
        MessageSnapshot {
            position: self.pos,
            topic: m.topic.to_string(),
            payload: m.payload.to_vec(),
            qos: self.delivery.qos as u8,
            retain: self.delivery.retain,
            packet_id: self.pid,
            published_at: crate::store::records::to_ms(at),
            from_client_id: m.publisher_client.as_deref().map(str::to_string),
        }
    }
}

/// One page: the messages and whether more follow.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Messages, oldest first.
    pub items: Vec<Listed>,
    /// Whether a later page has messages.
    pub has_next: bool,
}

impl SessionState {
    /// Up to `limit` queued (or in-flight) messages after position `after`, as the
    /// admin APIs show them, and whether more follow.
    pub fn messages_after(
        &self,
        inflight: bool,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<MessageSnapshot>, bool) {
        let l = if inflight {
            self.inflight_after(after, limit)
        } else {
            self.queued_after(after, limit)
        };
        (l.items.iter().map(Listed::snapshot).collect(), l.has_next)
    }

    /// Up to `limit` queued messages after position `after` (None: from the oldest).
    pub fn queued_after(&self, after: Option<u64>, limit: usize) -> Listing {
        let start = after.map_or(0, |a| a.saturating_add(1).saturating_sub(self.queue_base));
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        let rest = self.queue.iter().enumerate().skip(start);
        let items: Vec<Listed> = rest
            .take(limit)
            .map(|(i, d)| Listed {
                pos: self.queue_base + i as u64,
                delivery: d.clone(),
                pid: None,
            })
            .collect();
        Listing {
            has_next: self.queue.len() > start + items.len(),
            items,
        }
    }

    /// Up to `limit` inflight messages sent after position `after`.
    pub fn inflight_after(&self, after: Option<u64>, limit: usize) -> Listing {
        let mut rest = self
            .inflight
            .iter()
            .filter(|i| after.is_none_or(|a| i.pos > a));
        let items: Vec<Listed> = rest
            .by_ref()
            .take(limit)
            .map(|i| Listed {
                pos: i.pos,
                delivery: i.delivery.clone(),
                pid: Some(i.pid),
            })
            .collect();
        Listing {
            has_next: rest.next().is_some(),
            items,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use bytes::Bytes;
    use rmqtt_codec::types::QoS;

    use super::*;
    use crate::config::SessionConfig;
    use crate::message::Message;

    fn d(n: u8) -> Delivery {
        let m = Message::new(
            "t".into(),
            "a".into(),
            Bytes::from(vec![n]),
            QoS::AtLeastOnce,
            false,
        );
        Delivery {
            msg: Arc::new(m),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            seq: 0,
        }
    }

    fn payloads(l: &Listing) -> Vec<u8> {
        l.items.iter().map(|i| i.delivery.msg.payload[0]).collect()
    }

    #[test]
    fn a_cursor_survives_the_queue_draining_into_flight() {
        let cfg = SessionConfig::default();
        let mut s = SessionState::default();
        for n in 0..5 {
            s.enqueue(d(n), &cfg);
        }
        let p1 = s.queued_after(None, 2);
        assert_eq!((payloads(&p1), p1.has_next), (vec![0, 1], true));
        // Three go in flight (a window of 3) and two more arrive.
        let mut out = Vec::new();
        s.take_outgoing(3, Instant::now(), usize::MAX, &mut out);
        s.enqueue(d(5), &cfg);
        s.enqueue(d(6), &cfg);
        let p2 = s.queued_after(p1.items.last().map(|i| i.pos), 2);
        assert_eq!((payloads(&p2), p2.has_next), (vec![3, 4], true));
        let p3 = s.queued_after(p2.items.last().map(|i| i.pos), 2);
        assert_eq!((payloads(&p3), p3.has_next), (vec![5, 6], false));
        let f1 = s.inflight_after(None, 2);
        assert_eq!((payloads(&f1), f1.has_next), (vec![0, 1], true));
        assert!(f1.items.iter().all(|i| i.pid.is_some()));
        let f2 = s.inflight_after(f1.items.last().map(|i| i.pos), 2);
        assert_eq!((payloads(&f2), f2.has_next), (vec![2], false));
    }
}
