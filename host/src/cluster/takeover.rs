//! Session takeover across nodes (decision 0023): a client id connecting to one node
//! while its session lives on another takes it over. The connecting node asks the
//! others (`apiary.rpc.<node>`); the one holding the session closes its connection
//! (MQTT 5: 0x8E, session taken over) and, unless the client starts clean, hands over
//! its subscriptions and the messages it still owes (in flight first, then queued),
//! which the connecting node installs in the new session (CONNACK: session present).
//! The old node then ends its copy without the will (the session lives on).

use std::num::NonZeroU32;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::broker::Broker;
use crate::message::Delivery;
use crate::session::{Session, SubOptions};
use crate::store::records::MessageRecord;

/// Bytes (about, as encoded) one hand-over carries at most (NATS's default
/// `max_payload` is 1 MiB); owed messages past it are counted as dropped.
const MAX_MOVED_BYTES: usize = 768 << 10;

/// A subscription as it moves.
#[derive(Debug, Serialize, Deserialize)]
struct MovedSub {
    filter: String,
    qos: u8,
    nl: bool,
    rap: bool,
    rh: u8,
    sub_id: Option<u32>,
}

/// An owed message as it moves.
#[derive(Debug, Serialize, Deserialize)]
struct MovedMessage {
    msg: MessageRecord,
    qos: u8,
    retain: bool,
    sub_ids: Vec<u32>,
}

/// What a session takes to its new node.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MovedSession {
    subs: Vec<MovedSub>,
    messages: Vec<MovedMessage>,
    /// Owed messages left behind (past [`MAX_MOVED_BYTES`]).
    left: u64,
}

impl MovedSession {
    /// Captures `s`'s subscriptions and owed messages.
    fn capture(s: &Session) -> Self {
        let st = s.state.lock();
        let subs = st
            .subscriptions
            .iter()
            .map(|(f, o)| MovedSub {
                filter: f.clone(),
                qos: o.qos.value(),
                nl: o.no_local,
                rap: o.retain_as_published,
                rh: o.retain_handling,
                sub_id: o.sub_id.map(NonZeroU32::get),
            })
            .collect();
        let mut out = Self {
            subs,
            ..Self::default()
        };
        // Counted as encoded, about: payload, topic, properties and the record's fields.
        let mut bytes: usize = out.subs.iter().map(|s| s.filter.len() + 16).sum();
        let owed = st
            .inflight
            .iter()
            .map(|i| &i.delivery)
            .chain(st.queue.iter());
        for d in owed {
            let props = d.msg.props.as_ref().map_or(0, |_| 256);
            bytes += d.msg.payload.len() + d.msg.topic.len() + props + 64;
            if bytes > MAX_MOVED_BYTES {
                out.left += 1;
                continue;
            }
            out.messages.push(MovedMessage {
                msg: MessageRecord::from_message(&d.msg),
                qos: d.qos.value(),
                retain: d.retain,
                sub_ids: d.sub_ids.iter().map(|i| i.get()).collect(),
            });
        }
        out
    }

    /// Installs the moved state in `s` (a session just attached here, its connection
    /// not yet running): its subscriptions, then its owed messages in order.
    pub fn install(self, b: &Broker, s: &Arc<Session>) {
        for m in self.subs {
            let Ok(qos) = rmqtt_codec::types::QoS::try_from(m.qos.min(2)) else {
                continue;
            };
            let opts = SubOptions {
                qos,
                no_local: m.nl,
                retain_as_published: m.rap,
                retain_handling: m.rh.min(2),
                sub_id: m.sub_id.and_then(NonZeroU32::new),
            };
            if let Err(e) = b.subscribe(s, &m.filter, opts) {
                tracing::warn!(client_id = %s.client_id, filter = %m.filter, error = %e, "cluster: a moved subscription was refused");
            }
        }
        for m in self.messages {
            let Ok(qos) = rmqtt_codec::types::QoS::try_from(m.qos.min(2)) else {
                continue;
            };
            b.deliver(
                s,
                Delivery {
                    msg: Arc::new(m.msg.into_message(s.tenant.clone())),
                    qos,
                    retain: m.retain,
                    sub_ids: m.sub_ids.into_iter().filter_map(NonZeroU32::new).collect(),
                    seq: 0,
                },
            );
        }
        if self.left > 0 {
            s.state.lock().dropped += self.left;
            tracing::warn!(client_id = %s.client_id, left = self.left, "cluster: owed messages past the hand-over limit were dropped");
        }
    }
}

/// This node's answer to a takeover: its session of `client_id` ends here; its state,
/// unless the client starts clean (None: no session here, or a clean start). Nothing is
/// done once the asking node stopped waiting (`wait` after the request was `received`,
/// timed here: the nodes' clocks need not agree).
pub(super) async fn give_up(
    b: &Broker,
    tenant: &str,
    client_id: &str,
    clean_start: bool,
    received: std::time::Instant,
    wait: std::time::Duration,
) -> Option<MovedSession> {
    // As a local CONNECT would: one at a time per client id.
    let _serial = b.connect_lock(tenant, client_id).lock().await;
    if received.elapsed() >= wait {
        return None; // The asking node gave up waiting: leave the session alone.
    }
    let s = b.registry.get(tenant, client_id)?;
    b.take_over(&s).await;
    if s.state.lock().ended {
        // Its connection ended it on letting go (session expiry 0): nothing to move.
        return None;
    }
    let moved = (!clean_start).then(|| {
        // The session lives on elsewhere: no will for it here.
        *s.will.lock() = None;
        b.will_changed(&s);
        MovedSession::capture(&s)
    });
    b.discard(&s, "taken_over");
    moved
}
