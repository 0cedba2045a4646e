//! The lock-protected part of a session: subscriptions, the delivery queue, the outgoing
//! inflight window with packet ids, and the incoming QoS 2 state. Pure data and logic,
//! no I/O, so the flows are unit-tested here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::time::Instant;

use rmqtt_codec::types::QoS;

use crate::config::{QueueFullPolicy, SessionConfig};
use crate::message::Delivery;

/// Options of one subscription (MQTT 5 semantics; 3.1.1 uses the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// Granted QoS.
    pub qos: QoS,
    /// Do not deliver the session's own publishes.
    pub no_local: bool,
    /// Keep the retain flag of routed messages.
    pub retain_as_published: bool,
    /// 0 = send retained at subscribe, 1 = only for a new subscription, 2 = never.
    pub retain_handling: u8,
    /// Subscription identifier.
    pub sub_id: Option<NonZeroU32>,
}

impl SubOptions {
    /// Plain options with a QoS, as 3.1.1 subscribes.
    pub fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            sub_id: None,
        }
    }
}

/// Where an outgoing QoS 1/2 message is in its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflightState {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitComp,
}

/// An unacknowledged outgoing message.
#[derive(Debug, Clone)]
pub struct Inflight {
    /// Packet id.
    pub pid: u16,
    /// Flow state.
    pub state: InflightState,
    /// The delivery (kept for redelivery).
    pub delivery: Delivery,
    /// Not yet resent on the current connection (it reconnected with a smaller window).
    pub unsent: bool,
    /// Its place in send order (for listing it after a cursor).
    pub pos: u64,
}

impl Inflight {
    fn resend(&self) -> Outgoing {
        match self.state {
            InflightState::AwaitComp => Outgoing::PubRel(self.pid),
            _ => Outgoing::Publish {
                pid: Some(self.pid),
                dup: true,
                delivery: self.delivery.clone(),
            },
        }
    }
}

/// What the connection should write next.
#[derive(Debug)]
pub enum Outgoing {
    /// A PUBLISH (pid is None for QoS 0).
    Publish {
        /// Packet id.
        pid: Option<u16>,
        /// Redelivery.
        dup: bool,
        /// The delivery.
        delivery: Delivery,
    },
    /// A PUBREL to resend after reconnect.
    PubRel(u16),
}

impl Outgoing {
    /// About how many bytes it takes on the wire (without v5 properties), to size the
    /// write buffer for a batch at once.
    pub fn encoded_estimate(&self) -> usize {
        match self {
            Outgoing::Publish { delivery, .. } => {
                delivery.msg.topic.len() + delivery.msg.payload.len() + 9
            }
            Outgoing::PubRel(_) => 4,
        }
    }
}

/// Result of offering a delivery to the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    /// Queued.
    Queued,
    /// Queued, and the oldest message was dropped to make room.
    QueuedDroppedOldest,
    /// Refused: queue full.
    Dropped,
    /// Queued past the limit for a publisher that now waits (backpressure), in this
    /// pressure epoch.
    Held(u64),
}

/// Mutable session state, guarded by the session's mutex.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Subscriptions by raw filter (including `$share/group/`).
    pub subscriptions: HashMap<String, SubOptions>,
    /// Deliveries waiting for the connection or for room in the inflight window.
    pub queue: VecDeque<Delivery>,
    /// Payload bytes in `queue`.
    pub queue_bytes: usize,
    /// Outgoing unacknowledged messages in send order.
    pub inflight: VecDeque<Inflight>,
    /// How many of `inflight` wait to be resent on this connection.
    unsent: usize,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: HashSet<u16>,
    /// Last packet id handed out.
    pub last_pid: u16,
    /// Last inbox sequence number handed out (persistent sessions).
    pub next_seq: u64,
    /// Sequence numbers of stored deliveries that left without an ack (dropped, expired,
    /// too large): the caller deletes them from the store.
    pub store_dels: Vec<u64>,
    /// Messages dropped from this session's queue (EMQX's mqueue_dropped).
    pub dropped: u64,
    /// Messages dropped because they expired before delivery.
    pub expired: u64,
    /// The session was discarded: it takes no subscriptions and no deliveries any more
    /// (set under this lock, so a racing subscribe cannot outlive the session).
    pub ended: bool,
    /// Whether publishers wait for this queue (backpressure).
    pub pressure: super::pressure::Pressure,
    /// Position of `queue[0]` among every delivery ever queued, so that a listing's
    /// cursor survives the queue draining (`listing.rs`).
    pub(super) queue_base: u64,
    /// Next `Inflight::pos`.
    inflight_pos: u64,
}

impl SessionState {
    /// The place in send order of the next inflight message.
    pub fn next_inflight_pos(&mut self) -> u64 {
        self.inflight_pos += 1;
        self.inflight_pos
    }

    /// Offers a delivery to the queue, applying the limits.
    pub fn enqueue(&mut self, d: Delivery, cfg: &SessionConfig) -> EnqueueOutcome {
        self.offer(d, cfg, false)
    }

    /// Offers a delivery; with `hold`, a full queue takes it past its limit (up to twice
    /// the limit) and the publisher is to wait for room, unless the queue sheds load.
    pub fn offer(&mut self, d: Delivery, cfg: &SessionConfig, hold: bool) -> EnqueueOutcome {
        let len = d.msg.payload.len();
        if cfg.max_queued_bytes > 0 && len > cfg.max_queued_bytes {
            // Larger than the whole queue may hold: refuse it rather than empty the queue.
            self.dropped += 1;
            return EnqueueOutcome::Dropped;
        }
        let full = |s: &Self| {
            s.queue.len() >= cfg.max_queued_messages
                || (cfg.max_queued_bytes > 0 && s.queue_bytes + len > cfg.max_queued_bytes)
        };
        if !full(self) {
            self.push(d);
            return EnqueueOutcome::Queued;
        }
        let within_twice = self.queue.len() < 2 * cfg.max_queued_messages
            && (cfg.max_queued_bytes == 0 || self.queue_bytes + len <= 2 * cfg.max_queued_bytes);
        if hold && within_twice && self.pressure.may_overfill() {
            self.push(d);
            let epoch = self
                .pressure
                .overfilled(cfg.max_queued_messages, cfg.max_queued_bytes);
            return EnqueueOutcome::Held(epoch);
        }
        if cfg.queue_full == QueueFullPolicy::DropNewest || cfg.max_queued_messages == 0 {
            self.dropped += 1;
            return EnqueueOutcome::Dropped;
        }
        while full(self) {
            match self.queue.pop_front() {
                Some(old) => {
                    self.queue_base += 1;
                    self.queue_bytes -= old.msg.payload.len();
                    self.dropped += 1;
                    if old.seq != 0 {
                        self.store_dels.push(old.seq);
                    }
                }
                None => {
                    // A single message larger than the byte limit.
                    self.dropped += 1;
                    return EnqueueOutcome::Dropped;
                }
            }
        }
        self.push(d);
        EnqueueOutcome::QueuedDroppedOldest
    }

    /// After the queue shrank: true when publishers waiting for room should be woken
    /// (through the session's `space`, once the lock is released).
    pub fn relieve(&mut self) -> bool {
        self.pressure.relieve(self.queue.len(), self.queue_bytes)
    }

    fn push(&mut self, d: Delivery) {
        self.queue_bytes += d.msg.payload.len();
        self.queue.push_back(d);
    }

    /// Moves queued deliveries to `out` while the inflight window (`window`) has room,
    /// assigning packet ids, until about `budget` payload bytes are taken (at least one
    /// message). Messages not yet resent on this connection go first. Expired messages
    /// are dropped and counted. Order is kept: a QoS 0 message behind a blocked QoS 1 one
    /// waits too. Returns true when the budget stopped it with more to send.
    pub fn take_outgoing(
        &mut self,
        window: usize,
        now: Instant,
        budget: usize,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        let mut sent = self.inflight.len() - self.unsent;
        let mut bytes = 0usize;
        if self.unsent > 0 {
            for i in self.inflight.iter_mut().filter(|i| i.unsent) {
                if sent >= window {
                    return false;
                }
                if bytes >= budget {
                    return true;
                }
                i.unsent = false;
                self.unsent -= 1;
                sent += 1;
                bytes += i.delivery.msg.payload.len();
                out.push(i.resend());
            }
        }
        while let Some(front) = self.queue.front() {
            if front.msg.expired(now) {
                let d = self.queue.pop_front().expect("front exists");
                self.queue_base += 1;
                self.queue_bytes -= d.msg.payload.len();
                self.expired += 1;
                if d.seq != 0 {
                    self.store_dels.push(d.seq);
                }
                continue;
            }
            if front.qos != QoS::AtMostOnce && sent >= window {
                return false;
            }
            if bytes >= budget {
                return true;
            }
            let d = self.queue.pop_front().expect("front exists");
            self.queue_base += 1;
            let len = d.msg.payload.len();
            self.queue_bytes -= len;
            bytes += len;
            if d.qos == QoS::AtMostOnce {
                out.push(Outgoing::Publish {
                    pid: None,
                    dup: false,
                    delivery: d,
                });
                continue;
            }
            let Some(pid) = self.next_pid() else {
                // Every id is in use: put it back and wait for acks.
                self.queue_bytes += len;
                self.queue_base -= 1;
                self.queue.push_front(d);
                return false;
            };
            let state = if d.qos == QoS::AtLeastOnce {
                InflightState::AwaitAck
            } else {
                InflightState::AwaitRec
            };
            let pos = self.next_inflight_pos();
            self.inflight.push_back(Inflight {
                pid,
                state,
                delivery: d.clone(),
                unsent: false,
                pos,
            });
            sent += 1;
            out.push(Outgoing::Publish {
                pid: Some(pid),
                dup: false,
                delivery: d,
            });
        }
        false
    }

    /// A new connection attached: everything unacknowledged is to be resent (PUBLISH
    /// with DUP, or PUBREL) by `take_outgoing`, within the new connection's window
    /// (MQTT 5 §4.9: the client's Receive Maximum applies to resends too) and byte budget.
    pub fn resend_all(&mut self) {
        for i in self.inflight.iter_mut() {
            i.unsent = true;
        }
        self.unsent = self.inflight.len();
    }

    fn remove_at(&mut self, p: usize) -> Option<Inflight> {
        let i = self.inflight.remove(p)?;
        if i.unsent {
            self.unsent -= 1;
        }
        Some(i)
    }

    fn next_pid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pid = self.last_pid.wrapping_add(1).max(1);
            let pid = self.last_pid;
            if !self.inflight.iter().any(|i| i.pid == pid) {
                return Some(pid);
            }
        }
        None
    }

    fn position(&self, pid: u16, state: InflightState) -> Option<usize> {
        self.inflight
            .iter()
            .position(|i| i.pid == pid && i.state == state)
    }

    /// PUBACK received; the acknowledged message if it matched an inflight QoS 1 one.
    pub fn puback(&mut self, pid: u16) -> Option<Inflight> {
        self.position(pid, InflightState::AwaitAck)
            .and_then(|p| self.remove_at(p))
    }

    /// PUBREC received: the message moves to awaiting PUBCOMP. Returns it if it matched
    /// a message awaiting PUBREC (a repeated PUBREC returns None).
    pub fn pubrec(&mut self, pid: u16) -> Option<&Inflight> {
        let p = self.position(pid, InflightState::AwaitRec)?;
        self.inflight[p].state = InflightState::AwaitComp;
        Some(&self.inflight[p])
    }

    /// PUBREC with an error reason code (v5): the flow ends there.
    pub fn pubrec_failed(&mut self, pid: u16) -> Option<Inflight> {
        self.position(pid, InflightState::AwaitRec)
            .and_then(|p| self.remove_at(p))
    }

    /// PUBCOMP received; the completed message if it matched.
    pub fn pubcomp(&mut self, pid: u16) -> Option<Inflight> {
        self.position(pid, InflightState::AwaitComp)
            .and_then(|p| self.remove_at(p))
    }

    /// Forgets an inflight message that could not be sent (too large for the client).
    pub fn forget(&mut self, pid: u16) {
        if let Some(p) = self.inflight.iter().position(|i| i.pid == pid) {
            if let Some(i) = self.remove_at(p) {
                if i.delivery.seq != 0 {
                    self.store_dels.push(i.delivery.seq);
                }
            }
        }
    }

    /// Drops everything queued and inflight (used when a session is discarded).
    pub fn clear_messages(&mut self) {
        self.queue_base += self.queue.len() as u64;
        self.queue.clear();
        self.queue_bytes = 0;
        self.inflight.clear();
        self.unsent = 0;
        self.awaiting_rel.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use bytes::Bytes;
    use std::sync::Arc;

    fn delivery(qos: QoS, payload: &'static str) -> Delivery {
        Delivery {
            msg: Arc::new(Message::new(
                "default".into(),
                "t".into(),
                Bytes::from_static(payload.as_bytes()),
                qos,
                false,
            )),
            qos,
            retain: false,
            sub_ids: Vec::new(),
            seq: 0,
        }
    }

    fn cfg(max: usize, policy: QueueFullPolicy) -> SessionConfig {
        SessionConfig {
            max_queued_messages: max,
            queue_full: policy,
            ..SessionConfig::default()
        }
    }

    #[test]
    fn window_limits_qos1_and_acks_free_it() {
        let mut s = SessionState::default();
        let c = cfg(100, QueueFullPolicy::DropOldest);
        for _ in 0..5 {
            s.enqueue(delivery(QoS::AtLeastOnce, "x"), &c);
        }
        let mut out = Vec::new();
        s.take_outgoing(2, Instant::now(), usize::MAX, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(s.queue.len(), 3);
        let pids: Vec<u16> = out
            .iter()
            .map(|o| match o {
                Outgoing::Publish { pid, .. } => pid.unwrap(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(pids, vec![1, 2]);
        assert!(s.puback(1).is_some());
        assert!(
            s.puback(1).is_none(),
            "second ack of the same id matches nothing"
        );
        out.clear();
        s.take_outgoing(2, Instant::now(), usize::MAX, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn qos2_flow_and_resend() {
        let mut s = SessionState::default();
        let c = cfg(100, QueueFullPolicy::DropOldest);
        s.enqueue(delivery(QoS::ExactlyOnce, "a"), &c);
        s.enqueue(delivery(QoS::ExactlyOnce, "b"), &c);
        let mut out = Vec::new();
        s.take_outgoing(10, Instant::now(), usize::MAX, &mut out);
        assert!(s.pubrec(1).is_some());
        out.clear();
        s.resend_all();
        s.take_outgoing(10, Instant::now(), usize::MAX, &mut out);
        assert!(matches!(out[0], Outgoing::PubRel(1)));
        assert!(matches!(
            out[1],
            Outgoing::Publish {
                pid: Some(2),
                dup: true,
                ..
            }
        ));
        assert!(
            s.pubcomp(2).is_none(),
            "PUBCOMP before PUBREC does not complete"
        );
        assert!(s.pubcomp(1).is_some());
        assert_eq!(s.inflight.len(), 1);
    }

    #[test]
    fn drop_oldest_and_newest() {
        let mut s = SessionState::default();
        let c = cfg(2, QueueFullPolicy::DropOldest);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), &c);
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), &c);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "3"), &c),
            EnqueueOutcome::QueuedDroppedOldest
        );
        assert_eq!(&s.queue[0].msg.payload[..], b"2");
        assert_eq!(s.dropped, 1);

        let mut s = SessionState::default();
        let c = cfg(2, QueueFullPolicy::DropNewest);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), &c);
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), &c);
        assert_eq!(
            s.enqueue(delivery(QoS::AtLeastOnce, "3"), &c),
            EnqueueOutcome::Dropped
        );
        assert_eq!(&s.queue[1].msg.payload[..], b"2");
        assert_eq!(s.dropped, 1);
    }

    #[test]
    fn resend_respects_a_smaller_window() {
        let mut s = SessionState::default();
        let c = cfg(100, QueueFullPolicy::DropOldest);
        for _ in 0..3 {
            s.enqueue(delivery(QoS::AtLeastOnce, "x"), &c);
        }
        let mut out = Vec::new();
        s.take_outgoing(10, Instant::now(), usize::MAX, &mut out);
        s.enqueue(delivery(QoS::AtLeastOnce, "new"), &c);
        out.clear();
        s.resend_all();
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert_eq!(out.len(), 1, "only the window is resent");
        out.clear();
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert!(out.is_empty(), "window still full");
        assert!(s.puback(1).is_some());
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert!(
            matches!(
                out[..],
                [Outgoing::Publish {
                    pid: Some(2),
                    dup: true,
                    ..
                }]
            ),
            "{out:?}"
        );
        assert!(s.puback(2).is_some());
        out.clear();
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert!(
            matches!(
                out[..],
                [Outgoing::Publish {
                    pid: Some(3),
                    dup: true,
                    ..
                }]
            ),
            "{out:?}"
        );
        assert!(s.puback(3).is_some());
        out.clear();
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert!(
            matches!(
                out[..],
                [Outgoing::Publish {
                    pid: Some(4),
                    dup: false,
                    ..
                }]
            ),
            "then new messages: {out:?}"
        );
    }

    #[test]
    fn a_message_larger_than_the_byte_limit_does_not_empty_the_queue() {
        let mut s = SessionState::default();
        let c = SessionConfig {
            max_queued_bytes: 3,
            ..cfg(100, QueueFullPolicy::DropOldest)
        };
        s.enqueue(delivery(QoS::AtMostOnce, "ab"), &c);
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, "abcd"), &c),
            EnqueueOutcome::Dropped
        );
        assert_eq!(s.queue.len(), 1);
    }

    #[test]
    fn byte_limit() {
        let mut s = SessionState::default();
        let c = SessionConfig {
            max_queued_bytes: 3,
            ..cfg(100, QueueFullPolicy::DropNewest)
        };
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, "ab"), &c),
            EnqueueOutcome::Queued
        );
        assert_eq!(
            s.enqueue(delivery(QoS::AtMostOnce, "cd"), &c),
            EnqueueOutcome::Dropped
        );
        assert_eq!(s.queue_bytes, 2);
    }

    #[test]
    fn qos0_waits_behind_blocked_qos1() {
        let mut s = SessionState::default();
        let c = cfg(100, QueueFullPolicy::DropOldest);
        s.enqueue(delivery(QoS::AtLeastOnce, "1"), &c);
        s.enqueue(delivery(QoS::AtLeastOnce, "2"), &c);
        s.enqueue(delivery(QoS::AtMostOnce, "3"), &c);
        let mut out = Vec::new();
        s.take_outgoing(1, Instant::now(), usize::MAX, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.queue.len(), 2);
    }

    #[test]
    fn a_pump_stops_at_its_byte_budget_and_says_so() {
        let mut s = SessionState::default();
        let c = cfg(100, QueueFullPolicy::DropOldest);
        for _ in 0..10 {
            s.enqueue(delivery(QoS::AtMostOnce, "0123456789"), &c);
        }
        let mut out = Vec::new();
        assert!(
            s.take_outgoing(10, Instant::now(), 25, &mut out),
            "more to send"
        );
        assert_eq!(out.len(), 3, "stops once 25 bytes are taken");
        assert_eq!(s.queue.len(), 7);
        assert_eq!(s.queue_bytes, 70);
        out.clear();
        assert!(!s.take_outgoing(10, Instant::now(), 1000, &mut out));
        assert_eq!(out.len(), 7);
        let mut big = SessionState::default();
        big.enqueue(delivery(QoS::AtMostOnce, "a message over budget"), &c);
        out.clear();
        assert!(!big.take_outgoing(10, Instant::now(), 1, &mut out));
        assert_eq!(out.len(), 1, "at least one message goes");
    }
}
