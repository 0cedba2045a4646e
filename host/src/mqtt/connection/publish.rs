//! A client's PUBLISH: the connection's checks (topic alias, topic, receive maximum,
//! QoS 2 duplicates, ACL), then routing and the acknowledgement. Publishes that some
//! message interceptor asked for wait in a batch until the read is handled (or the batch
//! is full), so each interceptor is called once per batch rather than once per publish
//! (decision 0024). Acks keep the order of the publishes.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytestring::ByteString;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::v5::PublishProperties;

use super::outbound::PendingAck;
use super::{Connection, Exit};
use crate::acl::{Action, Ask};
use crate::message::Message;
use crate::mqtt::transport::Transport;
use crate::refusal::PublishRefused;
use crate::session::{Counters, Session};
use crate::store::Op;
use crate::topic;

/// At most this many publishes wait for the interceptors together: a bound on how far
/// past a full queue (backpressure) one read may route. In bytes, a batch never holds
/// more than one read brought (a WebSocket message, or the read buffer: about twice
/// `max_packet_size` at most), which each interceptor copies into its memory.
const MAX_BATCH: usize = 64;

/// A publish that passed its checks, on its way to the interceptors and routing.
pub(super) struct Admitted {
    msg: Message,
    pid: u16,
    qos: QoS,
}

/// Publishes waiting for the interceptors: the messages (which the interceptors change
/// in place) and, alongside, what acknowledging each needs.
#[derive(Default)]
pub(super) struct Batch {
    msgs: Vec<Result<Message, PublishRefused>>,
    acks: Vec<(u16, QoS)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    fn len(&self) -> usize {
        self.acks.len()
    }

    fn push(&mut self, a: Admitted) {
        self.msgs.push(Ok(a.msg));
        self.acks.push((a.pid, a.qos));
    }

    /// Whether a publish of `qos` with packet id `pid` waits in it.
    fn holds(&self, pid: u16, qos: QoS) -> bool {
        self.acks.contains(&(pid, qos))
    }

    /// How many QoS 2 publishes wait in it.
    fn exactly_once(&self) -> usize {
        let two = self.acks.iter().filter(|(_, q)| *q == QoS::ExactlyOnce);
        two.count()
    }

    /// How many QoS 1 publishes wait in it.
    fn at_least_once(&self) -> usize {
        let one = self.acks.iter().filter(|(_, q)| *q == QoS::AtLeastOnce);
        one.count()
    }
}

/// Sessions a publish overfilled (backpressure), with their pressure epochs.
type Held = Vec<(Arc<Session>, u64)>;

impl<T: Transport> Connection<T> {
    pub(super) async fn on_publish(&mut self, p: Box<Publish>) -> Result<(), Exit> {
        let Some(a) = self.admit(p).await? else {
            return Ok(());
        };
        if self.batch.is_empty() && !self.broker.intercepts(&a.msg) {
            // Nothing asked for it: routed at once, as if no interceptor were loaded.
            let mut held = Vec::new();
            self.deliver(a.pid, a.qos, Ok(a.msg), &mut held).await;
            self.wait_for(held);
            return Ok(());
        }
        self.batch.push(a);
        if self.batch.len() >= MAX_BATCH {
            self.flush_batch().await;
        }
        Ok(())
    }

    /// Runs the waiting publishes through the interceptors (one call each for the
    /// batch), then routes and acknowledges them in order.
    pub(super) async fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // Boxed: rare next to a publish nothing intercepts, and its future (a plugin
        // call's) would otherwise be part of every connection's task.
        Box::pin(async {
            let mut batch = std::mem::take(&mut self.batch);
            self.broker.intercept_batch(&mut batch.msgs).await;
            let mut held = Vec::new();
            let acks = batch.acks.drain(..);
            for ((pid, qos), r) in acks.zip(batch.msgs.drain(..)) {
                self.deliver(pid, qos, r, &mut held).await;
            }
            self.wait_for(held);
            // Its (empty) vectors serve the next batch.
            self.batch = batch;
        })
        .await;
    }

    /// Routes one admitted publish (or what its interceptors made of it) and queues its
    /// acknowledgement.
    async fn deliver(
        &mut self,
        pid: u16,
        qos: QoS,
        msg: Result<Message, PublishRefused>,
        held: &mut Held,
    ) {
        let before = self.ticket();
        let published = match msg {
            Err(dropped) => Err(dropped),
            Ok(msg) if qos == QoS::AtMostOnce => self.broker.publish_from(msg, Some(held)),
            Ok(msg) => self.broker.publish_waiting(msg, held).await,
        };
        let reason = match published {
            Ok(0) => 0x10,
            Ok(_) => 0x00,
            Err(refused) => refused.reason_code(),
        };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let stored = self.stored_since(before);
                // 3.1.1 has no reason codes: a refusal is acknowledged and dropped.
                let code = if self.wire.v5 || reason < 0x80 {
                    reason
                } else {
                    0
                };
                self.ack(PendingAck::PubAck(pid, code), stored)
            }
            QoS::ExactlyOnce if reason >= 0x80 => {
                let code = if self.wire.v5 { reason } else { 0 };
                self.ack(PendingAck::PubRec(pid, code), None)
            }
            QoS::ExactlyOnce => {
                self.session.state.lock().awaiting_rel.insert(pid);
                self.store_op(|t, c| Op::PutRel(t, c, pid));
                let stored = self.stored_since(before);
                self.ack(PendingAck::PubRec(pid, reason), stored);
            }
        }
    }

    /// Answers a publish here (a refusal, or a QoS 2 duplicate), after those waiting
    /// in the batch, so acks keep the order of the publishes.
    async fn answer(&mut self, ack: PendingAck, stored: Option<u64>) {
        self.flush_batch().await;
        self.ack(ack, stored);
    }

    /// The connection's checks and the ACL: the message to route, or None when the
    /// publish was answered here.
    async fn admit(&mut self, mut p: Box<Publish>) -> Result<Option<Admitted>, Exit> {
        Counters::add(&self.session.counters.recv_msg, 1);
        Counters::add(&self.tenant_counters.received, 1);
        if let Some(store) = self.broker.store.as_ref().filter(|s| s.is_full()) {
            // Over the store's hard limit: wait here, holding no lock, rather than block
            // a runtime thread inside a submit.
            let store = store.clone();
            store.room().await;
        }
        self.resolve_alias(&mut p)?;
        let cfg = self.broker.config();
        if let Err(e) = topic::validate_name(&p.topic, cfg.mqtt.max_topic_levels) {
            self.broker
                .metrics
                .invalid_topic
                .fetch_add(1, Ordering::Relaxed);
            return Err(Exit::Protocol(
                0x90,
                format!("invalid topic name {:?}: {e}", &*p.topic),
            ));
        }
        if p.retain && !cfg.mqtt.retain_available {
            return Err(self.protocol_error(0x9A, "retain is not supported"));
        }
        let pid = p.packet_id.map_or(0, NonZeroU16::get);
        if p.qos != QoS::AtMostOnce && !self.within_limits(&p, pid).await? {
            return Ok(None);
        }
        let now = Instant::now();
        let ask = Ask {
            action: Action::Publish,
            topic: &p.topic,
            qos: p.qos.value(),
            retain: p.retain,
        };
        let allowed = (self.acl)
            .check(&self.broker, &self.session.client_id, ask, now)
            .await;
        if !allowed {
            self.broker
                .metrics
                .acl_publish_denied
                .fetch_add(1, Ordering::Relaxed);
            // v5 says why; 3.1.1 has no way to, so the message is acknowledged and dropped
            // (as Mosquitto and EMQX do).
            let code = if self.wire.v5 { 0x87 } else { 0x00 };
            match p.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => self.answer(PendingAck::PubAck(pid, code), None).await,
                QoS::ExactlyOnce => self.answer(PendingAck::PubRec(pid, code), None).await,
            }
            return Ok(None);
        }
        let props = p.properties.take().and_then(strip_props);
        let expires_at = props
            .as_ref()
            .and_then(|pr| pr.message_expiry_interval)
            .map(|s| now + Duration::from_secs(u64::from(s.get())));
        let msg = Message {
            tenant: self.session.tenant.clone(),
            topic: std::mem::take(&mut p.topic),
            payload: std::mem::take(&mut p.payload),
            qos: p.qos,
            retain: p.retain,
            props,
            publisher: self.session.id,
            publisher_client: Some(self.session.client_id.clone()),
            received: now,
            expires_at,
        };
        Ok(Some(Admitted {
            msg,
            pid,
            qos: p.qos,
        }))
    }

    /// MQTT 5 topic aliases: an empty topic takes the alias's, a topic sets it.
    fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), Exit> {
        if !self.wire.v5 {
            return Ok(());
        }
        if let Some(alias) = p.properties.as_mut().and_then(|pr| pr.topic_alias.take()) {
            let a = alias.get();
            if a > self.broker.config().mqtt.topic_alias_maximum {
                return Err(self.protocol_error(0x94, format!("topic alias {a} over the maximum")));
            }
            if p.topic.is_empty() {
                match self.alias_in.get(&a) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        return Err(self.protocol_error(0x82, format!("unknown topic alias {a}")))
                    }
                }
            } else {
                // A copy: the decoded topic is a slice that would pin the read buffer.
                self.alias_in.insert(a, ByteString::from(&*p.topic));
            }
        }
        if p.topic.is_empty() {
            return Err(self.protocol_error(0x82, "empty topic without a topic alias"));
        }
        Ok(())
    }

    /// A QoS 1/2 publish against the receive maximum and the QoS 2 limits: false when
    /// it was answered here (a duplicate, or a refusal).
    async fn within_limits(&mut self, p: &Publish, pid: u16) -> Result<bool, Exit> {
        let two = p.qos == QoS::ExactlyOnce;
        if two && self.batch.holds(pid, QoS::ExactlyOnce) {
            // Its duplicate waits in the batch: routed first, it is a duplicate below.
            self.flush_batch().await;
        }
        let (duplicate, awaiting_rel) = {
            let st = self.session.state.lock();
            (two && st.awaiting_rel.contains(&pid), st.awaiting_rel.len())
        };
        if duplicate {
            // A DUP of a message already routed: acknowledge again (after the original,
            // if that is held), do not route twice.
            let t = self.ticket();
            self.answer(PendingAck::PubRec(pid, 0), Some(t)).await;
            return Ok(false);
        }
        let cfg = self.broker.config();
        // QoS 2 publishes in the batch count as awaiting PUBREL, as they would without
        // interceptors.
        let awaiting_rel = awaiting_rel + self.batch.exactly_once();
        // MQTT 5 §4.9: QoS 1 publishes count until their PUBACK is sent and QoS 2 ones
        // until PUBCOMP, together, against the receive maximum (those in the batch are
        // not answered yet either).
        let unacked = self
            .pending_acks
            .iter()
            .filter(|(_, a)| matches!(a, PendingAck::PubAck(..)))
            .count()
            + self.batch.at_least_once();
        if self.wire.v5 && awaiting_rel + unacked >= usize::from(cfg.mqtt.receive_maximum) {
            return Err(self.protocol_error(0x93, "receive maximum exceeded"));
        }
        if two && awaiting_rel >= cfg.session.max_awaiting_rel {
            if !self.wire.v5 {
                // 3.1.1 PUBREC has no reason code: a refusal would read as success.
                return Err(self.protocol_error(0x97, "too many QoS 2 messages awaiting PUBREL"));
            }
            self.answer(PendingAck::PubRec(pid, 0x97), None).await;
            return Ok(false);
        }
        Ok(true)
    }
}

/// Keeps what a subscriber should see; None when nothing is left (no allocation then).
fn strip_props(mut pr: PublishProperties) -> Option<Box<PublishProperties>> {
    pr.topic_alias = None;
    pr.subscription_ids.clear();
    let empty = pr.user_properties.is_empty()
        && pr.correlation_data.is_none()
        && pr.content_type.is_none()
        && pr.response_topic.is_none()
        && pr.message_expiry_interval.is_none()
        && !pr.is_utf8_payload;
    (!empty).then(|| Box::new(pr))
}
