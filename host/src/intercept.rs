//! Message interceptors: what plugins of the `message` role do to a publish after ACL
//! and before routing (rewrite, enrich, drop), in priority order. The core sees them as
//! [`Interceptor`]s; the plugin manager puts the loaded set in force on every change.
//! A publish whose tenant and topic no interceptor asked for costs one atomic load.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use bytestring::ByteString;
use rmqtt_codec::types::QoS;
use rmqtt_codec::v5::PublishProperties;

use crate::broker::Broker;
use crate::message::Message;
use crate::refusal::PublishRefused;
use crate::BoxFuture;

/// What an interceptor decided about one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Route it as it is.
    Pass,
    /// Route this instead (tenant and publisher stay the original's).
    Rewrite(Changes),
    /// Do not route it; a v5 publisher sees `code` in its PUBACK/PUBREC.
    Drop {
        /// The reason code, as the plugin gave it (see [`drop_code`]).
        code: u8,
        /// Why, for the log.
        why: String,
    },
}

/// A publish as an interceptor sees it and may change it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// QoS, 0 to 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Content type.
    pub content_type: Option<String>,
    /// Response topic.
    pub response_topic: Option<String>,
    /// Correlation data.
    pub correlation_data: Option<Vec<u8>>,
    /// Payload format indicator: UTF-8 text.
    pub payload_utf8: bool,
    /// Message expiry interval in seconds, from now.
    pub message_expiry: Option<u32>,
}

impl Changes {
    /// `msg` with these changes, checked as a publish would be (topic, QoS, and a
    /// payload no larger than a client could have published).
    fn apply(self, msg: &Message, mqtt: &crate::config::MqttConfig) -> Result<Message, String> {
        crate::topic::validate_name(&self.topic, mqtt.max_topic_levels)
            .map_err(|e| format!("rewrote to an invalid topic {:?}: {e}", self.topic))?;
        // Roughly what the PUBLISH would take on the wire: a subscriber must be able to
        // receive what no client could have sent.
        let size = self.topic.len()
            + self.payload.len()
            + self.content_type.as_ref().map_or(0, String::len)
            + self.response_topic.as_ref().map_or(0, String::len)
            + self.correlation_data.as_ref().map_or(0, Vec::len)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len() + 5)
                .sum::<usize>();
        if size > mqtt.max_packet_size as usize {
            return Err(format!(
                "rewrote to a message of about {size} bytes, over max_packet_size"
            ));
        }
        let qos = QoS::try_from(self.qos).map_err(|_| format!("rewrote to QoS {}", self.qos))?;
        let props = PublishProperties {
            correlation_data: self.correlation_data.map(Bytes::from),
            message_expiry_interval: None,
            content_type: self.content_type.map(ByteString::from),
            user_properties: self
                .user_properties
                .into_iter()
                .map(|(k, v)| (ByteString::from(k), ByteString::from(v)))
                .collect(),
            is_utf8_payload: self.payload_utf8,
            response_topic: self.response_topic.map(ByteString::from),
            ..Default::default()
        };
        let empty = props == PublishProperties::default();
        let expires_at = self
            .message_expiry
            .filter(|s| *s > 0)
            .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(u64::from(s)));
        Ok(Message {
            tenant: msg.tenant.clone(),
            topic: ByteString::from(self.topic),
            payload: Bytes::from(self.payload),
            qos,
            // As for a client's publish: no retained message where retain is off.
            retain: self.retain && mqtt.retain_available,
            props: (!empty).then(|| Box::new(props)),
            publisher: msg.publisher,
            publisher_client: msg.publisher_client.clone(),
            received: msg.received,
            expires_at,
        })
    }
}

/// The reason code a drop gives a v5 publisher: the plugin's, if PUBACK may carry it,
/// else 0x83 (implementation specific error).
pub fn drop_code(code: u8) -> u8 {
    match code {
        0x80 | 0x83 | 0x87 | 0x90 | 0x97 | 0x99 => code,
        _ => 0x83,
    }
}

/// A publish after an interceptor: the message to route, or why it is not routed.
type Outcome = Result<Message, PublishRefused>;

/// What happens to a publish when its interceptor fails (traps, times out, is backing
/// off, or returns something invalid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Route it as if the interceptor had passed it (the default: a broken enricher
    /// does not stop traffic).
    #[default]
    Pass,
    /// Drop it (0x80 to a v5 publisher): for interceptors that enforce something.
    Drop,
}

/// One interceptor as the core calls it.
pub trait Interceptor: Send + Sync {
    /// Its name, for logs.
    fn name(&self) -> &str;
    /// Decides a batch of publishes, one verdict each, in order. An error (or a list of
    /// another length) is a failure of the whole batch (its policy applies to each).
    fn intercept<'a>(
        &'a self,
        msgs: &'a [&'a Message],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, String>>;
}

/// One interceptor with what it asked for.
#[derive(Clone)]
pub struct Entry {
    /// The interceptor.
    pub interceptor: Arc<dyn Interceptor>,
    /// Topic filters it intercepts.
    pub filters: Vec<String>,
    /// Tenants it may see (`*`: all).
    pub tenants: Vec<String>,
    /// Its failure policy.
    pub on_failure: OnFailure,
}

impl Entry {
    fn wants(&self, msg: &Message) -> bool {
        self.tenants.iter().any(|t| t == "*" || **t == *msg.tenant)
            && self
                .filters
                .iter()
                .any(|f| crate::topic::matches(f, &msg.topic))
    }
}

/// The interceptors in force, in priority order.
#[derive(Default)]
pub struct Interceptors {
    set: ArcSwap<Vec<Entry>>,
}

impl std::fmt::Debug for Interceptors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Interceptors({})", self.set.load().len())
    }
}

impl Interceptors {
    /// Puts `entries` (in priority order) in force for the next publishes.
    pub fn set(&self, entries: Vec<Entry>) {
        self.set.store(Arc::new(entries));
    }

    /// Whether some interceptor asks for `msg`.
    fn wants(&self, msg: &Message) -> bool {
        let set = self.set.load();
        !set.is_empty() && set.iter().any(|e| e.wants(msg))
    }
}

impl Broker {
    /// Whether some interceptor asks for `msg` (one atomic load when none is loaded):
    /// a publisher goes through [`Broker::intercept_batch`] only then.
    pub fn intercepts(&self, msg: &Message) -> bool {
        self.interceptors.wants(msg)
    }

    /// Runs `msg` through the interceptors that asked for it, in priority order: each
    /// sees what the previous one made of it. A drop stops there.
    pub async fn intercept(&self, msg: Message) -> Result<Message, PublishRefused> {
        if self.interceptors.set.load().is_empty() {
            return Ok(msg);
        }
        let mut one = [Ok(msg)];
        self.intercept_batch(&mut one).await;
        let [r] = one;
        r
    }

    /// [`Broker::intercept`] for several publishes (in their order), in place, with one
    /// call per interceptor for all those it asked for: a component call costs
    /// microseconds, a publish through the broker a fraction of one (decision 0024).
    /// A publish passed stays where it is (no copy); a drop becomes its refusal.
    pub async fn intercept_batch(&self, msgs: &mut [Result<Message, PublishRefused>]) {
        let set = self.interceptors.set.load_full();
        for e in set.iter() {
            let asked: Vec<usize> = (0..msgs.len())
                .filter(|&i| msgs[i].as_ref().is_ok_and(|m| e.wants(m)))
                .collect();
            if asked.is_empty() {
                continue;
            }
            let verdicts = {
                let refs: Vec<&Message> = asked
                    .iter()
                    .filter_map(|&i| msgs[i].as_ref().ok())
                    .collect();
                match e.interceptor.intercept(&refs).await {
                    Ok(v) if v.len() == refs.len() => Ok(v),
                    Ok(v) => Err(format!(
                        "returned {} verdicts for {} publishes",
                        v.len(),
                        refs.len()
                    )),
                    Err(err) => Err(err),
                }
            };
            self.metrics
                .intercepted
                .fetch_add(asked.len() as u64, Ordering::Relaxed);
            let mut verdicts = match verdicts {
                Ok(v) => Some(v.into_iter()),
                Err(err) => {
                    let (name, n) = (e.interceptor.name(), asked.len());
                    tracing::warn!(plugin = name, publishes = n, error = %err, policy = ?e.on_failure, "an interceptor failed");
                    None
                }
            };
            for i in asked {
                let Ok(msg) = &msgs[i] else {
                    unreachable!("asked only of messages not dropped");
                };
                let changed = match verdicts.as_mut().and_then(Iterator::next) {
                    Some(v) => self.settle(e, msg, v),
                    None => self.failure(e),
                };
                if let Some(r) = changed {
                    msgs[i] = r;
                }
            }
        }
    }

    /// What `e`'s verdict makes of `msg`: None to route it as it is.
    fn settle(&self, e: &Entry, msg: &Message, verdict: Verdict) -> Option<Outcome> {
        let m = &self.metrics;
        let name = e.interceptor.name();
        match verdict {
            Verdict::Pass => None,
            Verdict::Drop { code, why } => {
                m.intercept_dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(plugin = name, topic = %&*msg.topic, %why, "a publish was dropped by an interceptor");
                Some(Err(PublishRefused::Intercepted(drop_code(code))))
            }
            Verdict::Rewrite(c) => match c.apply(msg, &self.config().mqtt) {
                Ok(out) => {
                    m.intercept_rewritten.fetch_add(1, Ordering::Relaxed);
                    Some(Ok(out))
                }
                Err(err) => {
                    tracing::warn!(plugin = name, topic = %&*msg.topic, error = %err, policy = ?e.on_failure, "an interceptor failed");
                    self.failure(e)
                }
            },
        }
    }

    /// `e` failed on a publish (counted): its policy decides (None: route it as it is).
    fn failure(&self, e: &Entry) -> Option<Outcome> {
        let m = &self.metrics;
        m.intercept_failed.fetch_add(1, Ordering::Relaxed);
        match e.on_failure {
            OnFailure::Pass => None,
            OnFailure::Drop => {
                m.intercept_dropped.fetch_add(1, Ordering::Relaxed);
                Some(Err(PublishRefused::Intercepted(0x80)))
            }
        }
    }

    /// Puts the interceptors in force (the plugin manager, on every change of its set).
    pub fn set_interceptors(&self, entries: Vec<Entry>) {
        self.interceptors.set(entries);
    }

    /// Publishes `msg` (from the broker itself: a will, a plugin's or an admin API's
    /// publish) once the interceptors that asked for it have seen it.
    pub async fn publish_intercepted(&self, msg: Message) -> Result<usize, PublishRefused> {
        let msg = self.intercept(msg).await?;
        self.publish(msg)
    }

    /// [`Broker::publish`] for callers that cannot wait: a publish some interceptor asked
    /// for goes through them on a task of its own; any other is published at once.
    pub fn publish_detached(&self, msg: Message, what: &'static str) {
        if !self.interceptors.wants(&msg) {
            if let Err(e) = self.publish(msg) {
                tracing::info!(error = %e, "{what} was refused");
            }
            return;
        }
        let b = self.clone();
        tokio::spawn(async move {
            if let Err(e) = b.publish_intercepted(msg).await {
                tracing::info!(error = %e, "{what} was refused");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_round_trip_and_are_checked() {
        let mut msg = Message::new(
            Arc::from("default"),
            ByteString::from("a/b"),
            Bytes::from_static(b"x"),
            QoS::AtLeastOnce,
            false,
        );
        let mqtt = crate::config::Config::default().mqtt;
        let c = Changes {
            topic: "a/b".into(),
            payload: b"x".to_vec(),
            qos: 1,
            ..Default::default()
        };
        let same = c.clone().apply(&msg, &mqtt).unwrap();
        assert!(same.props.is_none(), "no properties made up");
        let mut c2 = c.clone();
        c2.user_properties.push(("k".into(), "v".into()));
        c2.message_expiry = Some(60);
        let out = c2.apply(&msg, &mqtt).unwrap();
        assert_eq!(out.props.unwrap().user_properties.len(), 1);
        assert!(out.expires_at.is_some());
        let huge = vec![0u8; mqtt.max_packet_size as usize + 1];
        for (topic, qos, payload) in [
            ("a/+", 0, vec![]),
            ("", 0, vec![]),
            ("a", 3, vec![]),
            ("a", 0, huge),
        ] {
            let bad = Changes {
                topic: topic.into(),
                qos,
                payload,
                ..c.clone()
            };
            assert!(bad.apply(&msg, &mqtt).is_err(), "{topic} {qos}");
        }
        let mut no_retain = crate::config::Config::default().mqtt;
        no_retain.retain_available = false;
        let kept = Changes {
            retain: true,
            ..c.clone()
        };
        assert!(
            !kept.apply(&msg, &no_retain).unwrap().retain,
            "retain is off"
        );
        msg.publisher = 7;
        assert_eq!(c.apply(&msg, &mqtt).unwrap().publisher, 7);
        assert_eq!(
            (drop_code(0x87), drop_code(0), drop_code(0x10)),
            (0x87, 0x83, 0x83)
        );
    }
}
