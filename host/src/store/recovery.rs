//! Startup recovery: read every stored session, inbox, QoS 2 state and retained message,
//! and rebuild the registry, the router, the session queues and the retained set before
//! any listener opens. A record that cannot be decoded stops startup with its location.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rmqtt_codec::types::QoS;

use super::records::{
    decode, split_key, system_time, to_ms, InboxRecord, MessageRecord, SessionRecord, SubRecord,
    WillRecord,
};
use super::{Op, Space, Store, StoreError};
use crate::broker::Broker;
use crate::message::Delivery;
use crate::router::Subscriber;
use crate::session::{
    ClientInfo, Inflight, InflightState, Session, SessionState, SubOptions, Transport, Will,
};
use crate::topic;

/// The stored form of one subscription.
pub fn sub_record(filter: &str, o: &SubOptions) -> SubRecord {
    SubRecord {
        filter: filter.to_string(),
        qos: o.qos.value(),
        nl: o.no_local,
        rap: o.retain_as_published,
        rh: o.retain_handling,
        sub_id: o.sub_id.map(|i| i.get()),
    }
}

/// The stored record of a session as it is now (its subscriptions are keys of their
/// own). Built under the session's state lock, which the caller holds, so records are
/// submitted in the order the session changed.
pub fn session_record(s: &Session, st: &SessionState) -> SessionRecord {
    let i = s.info.read().clone();
    let last_pid = st.last_pid;
    let will = s.will.lock().as_ref().map(|w| WillRecord {
        msg: MessageRecord::from_message(&w.msg),
        delay_secs: w.delay_secs,
        expiry_secs: w.expiry.map(|e| e.get()),
    });
    SessionRecord {
        created_ms: to_ms(s.created_at),
        username: i.username.as_deref().map(str::to_string),
        user_id: i.user_id.as_deref().map(str::to_string),
        proto_ver: i.proto_ver,
        transport: i.transport.as_str().to_string(),
        peer: i.peer.map(|p| p.to_string()),
        keepalive: i.keepalive,
        clean_start: i.clean_start,
        superuser: i.superuser,
        expiry_interval: i.expiry_interval,
        connected_ms: i.connected_at.map(to_ms),
        disconnected_ms: if i.connected {
            None
        } else {
            i.disconnected_at.map(to_ms)
        },
        subscriptions: Vec::new(),
        will,
        last_pid,
    }
}

/// One stored session with its inbox and QoS 2 state.
#[derive(Debug)]
pub struct StoredSession {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// The record.
    pub record: SessionRecord,
    /// Its subscriptions.
    pub subs: Vec<SubRecord>,
    /// Inbox entries in sequence order.
    pub inbox: Vec<(u64, InboxRecord)>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub rel: Vec<u16>,
}

/// Everything read at startup.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Sessions.
    pub sessions: Vec<StoredSession>,
    /// Retained messages by tenant.
    pub retained: Vec<(String, MessageRecord)>,
    /// Inbox or QoS 2 entries without a session (removed).
    pub orphans: usize,
}

/// What recovery rebuilt, for the startup log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecoveryStats {
    /// Sessions restored.
    pub sessions: usize,
    /// Inbox messages restored (queued + inflight).
    pub messages: usize,
    /// Retained messages restored.
    pub retained: usize,
    /// Subscriptions restored.
    pub subscriptions: usize,
    /// Orphaned entries removed.
    pub orphans: usize,
    /// Sessions whose subscriptions were moved out of their record (older layout).
    pub migrated: usize,
    /// Time taken.
    pub elapsed: Duration,
}

fn corrupt(store: &Store, space: Space, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: store.path.clone(),
        space: space.name(),
        detail: e.to_string(),
    }
}

/// Reads everything stored.
pub fn load(store: &Store) -> Result<Recovered, StoreError> {
    let b = store.backend();
    let mut rec = Recovered::default();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    b.scan(Space::Sessions, &mut |k, v| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Sessions, e))?;
        if !rest.is_empty() {
            return Err(corrupt(store, Space::Sessions, "trailing key bytes"));
        }
        let record: SessionRecord =
            decode(v).map_err(|e| corrupt(store, Space::Sessions, format!("{t}/{c}: {e}")))?;
        index.insert((t.to_string(), c.to_string()), rec.sessions.len());
        rec.sessions.push(StoredSession {
            tenant: t.to_string(),
            client_id: c.to_string(),
            record,
            subs: Vec::new(),
            inbox: Vec::new(),
            rel: Vec::new(),
        });
        Ok(())
    })?;
    let mut orphans = Vec::new();
    b.scan(Space::Subs, &mut |k, v| {
        let (t, c, filter) = split_key(k).map_err(|e| corrupt(store, Space::Subs, e))?;
        let filter = std::str::from_utf8(filter)
            .map_err(|_| corrupt(store, Space::Subs, "filter not UTF-8"))?;
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => {
                let r: SubRecord = decode(v)
                    .map_err(|e| corrupt(store, Space::Subs, format!("{t}/{c} {filter}: {e}")))?;
                rec.sessions[i].subs.push(r);
            }
            None => orphans.push(Op::DeleteSub(t.into(), c.into(), filter.to_string())),
        }
        Ok(())
    })?;
    b.scan(Space::Inbox, &mut |k, v| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Inbox, e))?;
        let seq = u64::from_be_bytes(
            rest.try_into()
                .map_err(|_| corrupt(store, Space::Inbox, "bad sequence"))?,
        );
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => {
                let r: InboxRecord = decode(v)
                    .map_err(|e| corrupt(store, Space::Inbox, format!("{t}/{c}#{seq}: {e}")))?;
                rec.sessions[i].inbox.push((seq, r));
            }
            None => orphans.push(Op::DeleteInbox(t.into(), c.into(), seq)),
        }
        Ok(())
    })?;
    b.scan(Space::Rel, &mut |k, _| {
        let (t, c, rest) = split_key(k).map_err(|e| corrupt(store, Space::Rel, e))?;
        let pid = u16::from_be_bytes(
            rest.try_into()
                .map_err(|_| corrupt(store, Space::Rel, "bad packet id"))?,
        );
        match index.get(&(t.to_string(), c.to_string())) {
            Some(&i) => rec.sessions[i].rel.push(pid),
            None => orphans.push(Op::DeleteRel(t.into(), c.into(), pid)),
        }
        Ok(())
    })?;
    b.scan(Space::Retained, &mut |k, v| {
        let (t, topic, _) = split_key(k).map_err(|e| corrupt(store, Space::Retained, e))?;
        let m: MessageRecord =
            decode(v).map_err(|e| corrupt(store, Space::Retained, format!("{t}/{topic}: {e}")))?;
        rec.retained.push((t.to_string(), m));
        Ok(())
    })?;
    rec.orphans = orphans.len();
    for op in orphans {
        store.submit(op);
    }
    Ok(rec)
}

fn transport(name: &str) -> Transport {
    match name {
        "tls" => Transport::Tls,
        "ws" => Transport::Ws,
        "wss" => Transport::Wss,
        _ => Transport::Tcp,
    }
}

fn state_of(code: u8) -> Option<InflightState> {
    match code {
        1 => Some(InflightState::AwaitAck),
        2 => Some(InflightState::AwaitRec),
        3 => Some(InflightState::AwaitComp),
        _ => None,
    }
}

impl Broker {
    /// Rebuilds sessions, subscriptions, queues and retained messages from the store.
    /// Sessions whose connection was open at the crash count as disconnected now: their
    /// will follows its delay and their expiry runs from now.
    pub fn restore(&self, rec: Recovered) -> RecoveryStats {
        let started = Instant::now();
        let now = SystemTime::now();
        let mut stats = RecoveryStats {
            orphans: rec.orphans,
            ..Default::default()
        };
        let unlimited = crate::config::RetainedConfig {
            max_messages: 0,
            max_bytes: 0,
            ..Default::default()
        };
        for (tenant, m) in rec.retained {
            let msg = Arc::new(m.into_message(tenant.as_str().into()));
            // What was stored is kept, whatever the limits say now.
            if !msg.expired(Instant::now()) && self.retained.set(msg, &unlimited, |_| {}).is_ok() {
                stats.retained += 1;
            }
        }
        let max_levels = self.config.mqtt.max_topic_levels;
        for mut ss in rec.sessions {
            // Releases before 0.1 kept subscriptions inside the record: move them out.
            let legacy = std::mem::take(&mut ss.record.subscriptions);
            let migrate = !legacy.is_empty();
            ss.subs.extend(legacy);
            let r = ss.record;
            let subs = ss.subs;
            let tenant: Arc<str> = ss.tenant.as_str().into();
            let disconnected_at = r.disconnected_ms.map(system_time).unwrap_or(now);
            let info = ClientInfo {
                username: r.username.as_deref().map(Arc::from),
                user_id: r.user_id.as_deref().map(Arc::from),
                proto_name: if r.proto_ver == 3 { "MQIsdp" } else { "MQTT" },
                proto_ver: r.proto_ver,
                transport: transport(&r.transport),
                peer: r.peer.as_deref().and_then(|p| p.parse().ok()),
                connected: false,
                connected_at: r.connected_ms.map(system_time),
                disconnected_at: Some(disconnected_at),
                keepalive: r.keepalive,
                clean_start: r.clean_start,
                expiry_interval: r.expiry_interval,
                inflight_max: self.config.session.max_inflight,
                superuser: r.superuser,
                description: None,
            };
            let mut session = Session::new(
                self.next_id(),
                tenant.clone(),
                ss.client_id.as_str().into(),
                info,
            );
            session.created_at = system_time(r.created_ms);
            session.persistent.store(true, Ordering::Relaxed);
            let session = Arc::new(session);
            {
                let mut st = session.state.lock();
                st.last_pid = r.last_pid;
                st.awaiting_rel.extend(ss.rel);
                for (seq, e) in ss.inbox {
                    st.next_seq = st.next_seq.max(seq);
                    let d = Delivery {
                        msg: Arc::new(e.msg.into_message(tenant.clone())),
                        qos: QoS::try_from(e.qos.min(2)).unwrap_or(QoS::AtLeastOnce),
                        retain: e.retain,
                        sub_ids: e.sub_ids.into_iter().filter_map(NonZeroU32::new).collect(),
                        seq,
                    };
                    stats.messages += 1;
                    match (e.pid, state_of(e.state)) {
                        (Some(pid), Some(state)) => st.inflight.push_back(Inflight {
                            pid,
                            state,
                            delivery: d,
                            unsent: false,
                        }),
                        _ => {
                            st.queue_bytes += d.msg.payload.len();
                            st.queue.push_back(d);
                        }
                    }
                }
                for sub in &subs {
                    let opts = SubOptions {
                        qos: QoS::try_from(sub.qos.min(2)).unwrap_or(QoS::AtMostOnce),
                        no_local: sub.nl,
                        retain_as_published: sub.rap,
                        retain_handling: sub.rh,
                        sub_id: sub.sub_id.and_then(NonZeroU32::new),
                    };
                    st.subscriptions.insert(sub.filter.clone(), opts);
                }
            }
            for sub in &subs {
                let Ok(parsed) = topic::parse_filter(&sub.filter, max_levels) else {
                    continue;
                };
                let opts = session.state.lock().subscriptions[&sub.filter];
                if self.router.subscribe(
                    &tenant,
                    &parsed,
                    Subscriber {
                        session: session.clone(),
                        opts,
                    },
                ) {
                    self.metrics.subscriptions.fetch_add(1, Ordering::Relaxed);
                    stats.subscriptions += 1;
                }
            }
            self.registry.insert(session.clone());
            stats.sessions += 1;

            let since = now.duration_since(disconnected_at).unwrap_or_default();
            let epoch = session.epoch.load(Ordering::Acquire);
            if let Some(w) = r.will {
                let will = Will {
                    msg: w.msg.into_message(tenant.clone()),
                    delay_secs: w.delay_secs,
                    expiry: w.expiry_secs.and_then(NonZeroU32::new),
                };
                *session.will.lock() = Some(will);
                let left = Duration::from_secs(u64::from(w.delay_secs)).saturating_sub(since);
                self.arm_will(&session, epoch, left);
            }
            if r.expiry_interval != u32::MAX {
                let left = Duration::from_secs(u64::from(r.expiry_interval)).saturating_sub(since);
                self.arm_expiry(&session, epoch, left);
            }
            if migrate {
                if let Some(store) = &self.store {
                    for sub in subs {
                        store.submit(Op::PutSub(
                            tenant.clone(),
                            session.client_id.clone(),
                            Box::new(sub),
                        ));
                    }
                }
                stats.migrated += 1;
            }
            if r.disconnected_ms.is_none() || migrate {
                // It was connected when the broker stopped (record the disconnect), or
                // its record still holds its subscriptions (rewrite it without them).
                self.persist_session(&session);
            }
        }
        stats.elapsed = started.elapsed();
        stats
    }
}
