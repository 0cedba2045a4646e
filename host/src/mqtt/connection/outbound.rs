//! The outbound half of a connection: draining the session queue into the write buffer
//! (packet ids, aliases, properties, the client's limits) up to a byte budget, so a slow
//! reader holds shared payloads in its queue rather than copies in its buffer;
//! acknowledgements held back until the store has written what their publish stored
//! (sync = "always", or whenever the writer is behind); and the store bookkeeping of
//! each delivery's flow.

use std::num::NonZeroU16;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use rmqtt_codec::error::EncodeError;
use rmqtt_codec::types::{Publish, QoS};
use tokio::sync::watch;

use super::{Connection, Exit};
use crate::message::Delivery;
use crate::mqtt::transport::Transport;
use crate::session::{Counters, InflightState, Outgoing};
use crate::store::Op;

/// An acknowledgement held back until the store has made its publish durable.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PendingAck {
    PubAck(u16, u8),
    PubRec(u16, u8),
}

pub(crate) async fn durable_changed(d: &mut Option<watch::Receiver<u64>>) {
    match d {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Payload bytes one pump moves into the write buffer at most (at least one message):
/// what is left stays queued as shared payloads until the buffer has been written.
pub(crate) const WRITE_BUDGET: usize = 256 << 10;

impl<T: Transport> Connection<T> {
    /// Acknowledges a publish now, or once the store has written `stored` (the ticket
    /// of the last operation its publish submitted; None when it stored nothing). Held
    /// when sync = "always", or when the store's writer is behind: then a publisher's
    /// acknowledgements come at the disk's pace, which slows it down. Acks leave in the
    /// order their publishes came.
    pub(crate) fn ack(&mut self, a: PendingAck, stored: Option<u64>) {
        if let (Some(d), Some(store), Some(ticket)) = (&self.durable, &self.broker.store, stored) {
            // A failed store holds them too: what it was given is not on disk, in any
            // sync mode, and `release_acks` ends the connection instead.
            let wait = store.sync == crate::store::SyncMode::Always
                || store.congested()
                || store.is_failed();
            if wait && ticket > *d.borrow() {
                if store.sync != crate::store::SyncMode::Always {
                    store.ack_held();
                }
                self.pending_acks.push_back((ticket, a));
                return;
            }
        }
        if !self.pending_acks.is_empty() {
            self.pending_acks.push_back((0, a));
            return;
        }
        self.write_ack(a);
    }

    /// The store ticket a publish must wait for: None if nothing was submitted since
    /// `before` (by anyone, so certainly not by this publish).
    pub(crate) fn stored_since(&self, before: u64) -> Option<u64> {
        let now = self.broker.store.as_ref()?.last_ticket();
        (now != before).then_some(now)
    }

    /// The store's last ticket now (0 without a store).
    pub(crate) fn ticket(&self) -> u64 {
        self.broker.store.as_ref().map_or(0, |s| s.last_ticket())
    }

    pub(crate) fn write_ack(&mut self, a: PendingAck) {
        match a {
            PendingAck::PubAck(pid, r) => self.wire.puback(pid, r, &mut self.wbuf),
            PendingAck::PubRec(pid, r) => self.wire.pubrec(pid, r, &mut self.wbuf),
        }
    }

    /// Sends the held-back acks whose publishes are written, in order. A failed store
    /// never writes them: the connection ends instead (the client resends unacknowledged
    /// publishes elsewhere or later), and no ack for what the failure carried ever goes.
    pub(crate) fn release_acks(&mut self) -> Result<(), Exit> {
        let Some(d) = &self.durable else {
            return Ok(());
        };
        let durable = *d.borrow();
        while self
            .pending_acks
            .front()
            .is_some_and(|(t, _)| *t <= durable)
        {
            if let Some((_, a)) = self.pending_acks.pop_front() {
                self.write_ack(a);
            }
        }
        let failed = self.broker.store.as_ref().filter(|s| s.is_failed());
        if let (false, Some(store)) = (self.pending_acks.is_empty(), failed) {
            let why = store.failure().unwrap_or_default();
            return Err(Exit::Protocol(
                0x80,
                format!("the store failed ({why}); unacknowledged publishes are not accepted"),
            ));
        }
        Ok(())
    }

    /// Whether reading from the client waits: a queue it fed is full (backpressure), or
    /// as many of its QoS 1/2 publishes as the receive maximum are awaiting their (held)
    /// acknowledgements.
    pub(crate) fn reading_paused(&self) -> bool {
        (self.blocked.is_some() && self.rbuf.len() >= super::pressure::BLOCKED_READ_MAX)
            || self.pending_acks.len() >= usize::from(self.broker.config().mqtt.receive_maximum)
    }

    pub(crate) fn store_op(&self, op: impl FnOnce(Arc<str>, Arc<str>) -> Op) {
        if let (Some(store), true) = (&self.broker.store, self.session.is_persistent()) {
            store.submit(op(
                self.session.tenant.clone(),
                self.session.client_id.clone(),
            ));
        }
    }

    /// Stores where a stored delivery is in its flow.
    pub(crate) fn store_delivery(&self, d: &Delivery, pid: u16, state: InflightState) {
        if d.seq == 0 {
            return;
        }
        let code = match state {
            InflightState::AwaitAck => 1,
            InflightState::AwaitRec => 2,
            InflightState::AwaitComp => 3,
        };
        self.store_op(|tenant, client_id| Op::PutInbox {
            tenant,
            client_id,
            delivery: d.clone(),
            pid: Some(pid),
            state: code,
        });
    }

    pub(crate) fn store_delete(&self, seq: u64) {
        if seq != 0 {
            self.store_op(|t, c| Op::DeleteInbox(t, c, seq));
        }
    }

    /// Moves deliverable messages from the session queue into the write buffer, up to
    /// [`WRITE_BUDGET`] bytes of it; `more_out` says whether the budget stopped it.
    pub fn pump(&mut self) {
        let budget = WRITE_BUDGET.saturating_sub(self.wbuf.len());
        if budget == 0 {
            self.more_out = true;
            return;
        }
        let now = Instant::now();
        let mut out = std::mem::take(&mut self.outgoing);
        let (dels, relieved) = {
            let mut st = self.session.state.lock();
            let expired_before = st.expired;
            self.more_out = st.take_outgoing(self.window, now, budget, &mut out);
            let relieved = st.relieve();
            let n = st.expired - expired_before;
            if n > 0 {
                self.broker
                    .metrics
                    .dropped_expired
                    .fetch_add(n, Ordering::Relaxed);
            }
            (std::mem::take(&mut st.store_dels), relieved)
        };
        if relieved {
            self.session.space.notify_waiters();
        }
        self.broker.store_deletes(&self.session, dels);
        if !out.is_empty() {
            // One allocation for the batch (the buffer is freed after small writes).
            let need: usize = out.iter().map(Outgoing::encoded_estimate).sum();
            self.wbuf.reserve(need.min(WRITE_BUDGET + 4096));
        }
        let mut sent = 0u64;
        for o in out.drain(..) {
            match o {
                Outgoing::Publish { pid, dup, delivery } => {
                    if let (Some(p), false) = (pid, dup) {
                        let state = if delivery.qos == QoS::AtLeastOnce {
                            InflightState::AwaitAck
                        } else {
                            InflightState::AwaitRec
                        };
                        self.store_delivery(&delivery, p, state);
                    }
                    sent += u64::from(self.write_publish(pid, dup, delivery, now));
                }
                Outgoing::PubRel(pid) => self.wire.pubrel(pid, true, &mut self.wbuf),
            }
        }
        self.outgoing = out;
        if sent > 0 {
            // Once per pump, not per message: the tenant's and the broker's counters are
            // shared by every connection, and an atomic add per delivery on both cores
            // keeps their cache lines moving between them.
            Counters::add(&self.session.counters.send_msg, sent);
            Counters::add(&self.tenant_counters.sent, sent);
            self.broker
                .metrics
                .messages_sent
                .fetch_add(sent, Ordering::Relaxed);
        }
        self.count_wbuf();
    }

    /// Brings the broker's write-buffer gauge up to date with this connection's buffer.
    pub(crate) fn count_wbuf(&mut self) {
        let now = self.wbuf.len();
        let gauge = &self.broker.metrics.write_buffer_bytes;
        if now > self.wbuf_counted {
            gauge.fetch_add((now - self.wbuf_counted) as u64, Ordering::Relaxed);
        } else if now < self.wbuf_counted {
            gauge.fetch_sub((self.wbuf_counted - now) as u64, Ordering::Relaxed);
        }
        self.wbuf_counted = now;
    }

    /// Encodes one delivery for this client (aliases, properties, limits); whether it
    /// was written (the caller counts it).
    pub fn write_publish(
        &mut self,
        pid: Option<u16>,
        dup: bool,
        d: Delivery,
        now: Instant,
    ) -> bool {
        let m = &d.msg;
        let plain = !self.wire.v5
            || (m.props.is_none()
                && d.sub_ids.is_empty()
                && m.expires_at.is_none()
                && self.alias_out_max == 0);
        if plain {
            let r = self.wire.publish_plain(
                dup,
                d.qos,
                d.retain,
                &m.topic,
                pid,
                &m.payload,
                &mut self.wbuf,
            );
            return self.published(r, pid, false, m);
        }
        let mut topic = m.topic.clone();
        let mut new_alias = false;
        let properties = if self.wire.v5 {
            let mut pr = m.props.as_deref().cloned().unwrap_or_default();
            pr.subscription_ids = d.sub_ids;
            pr.message_expiry_interval = m.remaining_expiry(now);
            if self.alias_out_max > 0 {
                if let Some(&a) = self.alias_out.get(&topic) {
                    pr.topic_alias = NonZeroU16::new(a);
                    topic = ByteString::new();
                } else if self.alias_out.len() < usize::from(self.alias_out_max) {
                    let a = self.alias_out.len() as u16 + 1;
                    self.alias_out.insert(topic.clone(), a);
                    pr.topic_alias = NonZeroU16::new(a);
                    new_alias = true;
                }
            }
            Some(pr)
        } else {
            None
        };
        let p = Publish {
            dup,
            retain: d.retain,
            qos: d.qos,
            topic,
            packet_id: pid.and_then(NonZeroU16::new),
            payload: m.payload.clone(),
            properties,
        };
        let r = self.wire.publish(p, &mut self.wbuf);
        self.published(r, pid, new_alias, &d.msg)
    }

    /// Notes a written PUBLISH (true; the pump counts them), or handles one that could
    /// not be encoded (false).
    fn published(
        &mut self,
        r: Result<(), EncodeError>,
        pid: Option<u16>,
        new_alias: bool,
        m: &crate::message::Message,
    ) -> bool {
        match r {
            Ok(()) => {
                self.wire.count_encoded();
                true
            }
            Err(e) => {
                // MQTT 5 §3.1.2.25: a packet over the client's maximum is discarded.
                if new_alias {
                    self.alias_out.remove(&m.topic);
                }
                if let Some(pid) = pid {
                    let dels = {
                        let mut st = self.session.state.lock();
                        st.forget(pid);
                        std::mem::take(&mut st.store_dels)
                    };
                    self.broker.store_deletes(&self.session, dels);
                }
                let reason = if matches!(e, EncodeError::OverMaxPacketSize { .. }) {
                    "too_large"
                } else {
                    "encode_error"
                };
                self.broker.dropped(&self.session, m, reason);
                false
            }
        }
    }
}
