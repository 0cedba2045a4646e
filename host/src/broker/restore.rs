//! Startup recovery, the broker's half: rebuild sessions, subscriptions, queues and
//! retained messages from what `store::recovery::load` read, before any listener opens.

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rmqtt_codec::types::QoS;

use super::Broker;
use crate::message::Delivery;
use crate::router::Subscriber;
use crate::session::{ClientInfo, Inflight, InflightState, Session, SubOptions, Transport, Will};
use crate::store::records::{system_time, SubRecord};
use crate::store::recovery::{Recovered, RecoveryStats};
use crate::store::Op;
use crate::topic;

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
    /// Stores the subscriptions of a session restored from elsewhere (a dead node's,
    /// adopted): [`Broker::restore`] takes them as stored already.
    pub(crate) fn store_subscriptions(&self, s: &Session, subs: &[SubRecord]) {
        if let Some(store) = &self.store {
            for sub in subs {
                store.submit(Op::PutSub(
                    s.tenant.clone(),
                    s.client_id.clone(),
                    Box::new(sub.clone()),
                ));
            }
        }
    }

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
        let max_levels = self.config().mqtt.max_topic_levels;
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
                inflight_max: self.config().session.max_inflight,
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
                        (Some(pid), Some(state)) => {
                            let pos = st.next_inflight_pos();
                            st.inflight.push_back(Inflight {
                                pid,
                                state,
                                delivery: d,
                                unsent: false,
                                pos,
                            })
                        }
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
                session.set_subscription_count(st.subscriptions.len());
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
                *session.will.lock() = Some(Box::new(will));
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
