//! The broker's internal message: one allocation per publish, shared by every subscriber
//! it fans out to (`Arc<Message>` holding `Bytes`), whatever protocol version each speaks.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishProperties;

/// A published application message as routed inside the broker.
#[derive(Debug, Clone)]
pub struct Message {
    /// Tenant whose subscribers may see it.
    pub tenant: Arc<str>,
    /// Topic name (never an alias).
    pub topic: ByteString,
    /// Payload, shared across deliveries.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag as published.
    pub retain: bool,
    /// MQTT 5 properties passed through to subscribers (topic alias and subscription
    /// identifiers are per-delivery and never stored here).
    pub props: Option<Box<PublishProperties>>,
    /// Session id of the publisher (0 = the broker itself), for no-local.
    pub publisher: u64,
    /// Client id of the publisher (None = the broker or an admin API), for protocols that
    /// show who sent an event (Octave's `creatorId`).
    pub publisher_client: Option<Arc<str>>,
    /// When the broker received it.
    pub received: Instant,
    /// When it expires (v5 message expiry interval).
    pub expires_at: Option<Instant>,
}

impl Message {
    /// Builds a message published by the broker or an admin operation.
    pub fn new(
        tenant: Arc<str>,
        topic: ByteString,
        payload: Bytes,
        qos: QoS,
        retain: bool,
    ) -> Self {
        Self {
            tenant,
            topic,
            payload,
            qos,
            retain,
            props: None,
            publisher: 0,
            publisher_client: None,
            received: Instant::now(),
            expires_at: None,
        }
    }

    /// Sets the expiry from a v5 message expiry interval.
    pub fn with_expiry(mut self, secs: Option<NonZeroU32>) -> Self {
        self.expires_at = secs.map(|s| self.received + Duration::from_secs(u64::from(s.get())));
        self
    }

    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Remaining expiry interval to put in a forwarded PUBLISH (at least 1 s while alive).
    pub fn remaining_expiry(&self, now: Instant) -> Option<NonZeroU32> {
        self.expires_at.map(|t| {
            let secs = t
                .saturating_duration_since(now)
                .as_secs()
                .clamp(1, u64::from(u32::MAX));
            NonZeroU32::new(secs as u32).unwrap_or(NonZeroU32::MIN)
        })
    }
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS it is delivered with: min(published, granted).
    pub qos: QoS,
    /// Retain flag on the wire (true for retained-on-subscribe, or retain-as-published).
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions (v5).
    pub sub_ids: Vec<NonZeroU32>,
    /// Inbox sequence number when stored for a persistent session (0 = not stored).
    pub seq: u64,
}
