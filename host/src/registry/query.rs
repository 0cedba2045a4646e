//! Registry queries: filters as the EMQX clients API offers them, stable paging in
//! (tenant, client id) order, and the snapshot an admin API serialises.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Serialize;

use super::{epoch_ms, Registry};
use crate::session::{Session, Transport};

/// Filters over sessions; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this tenant (None = every tenant, for admin callers).
    pub tenant: Option<String>,
    /// Exact client id.
    pub client_id: Option<String>,
    /// Exact username.
    pub username: Option<String>,
    /// Exact user id.
    pub user_id: Option<String>,
    /// Peer IP.
    pub ip: Option<IpAddr>,
    /// Protocol name ("MQTT", "MQIsdp").
    pub proto_name: Option<String>,
    /// Protocol version (3, 4, 5).
    pub proto_ver: Option<u8>,
    /// Transport.
    pub transport: Option<Transport>,
    /// Connected or not.
    pub connected: Option<bool>,
    /// Clean start flag.
    pub clean_start: Option<bool>,
    /// Substring of the client id.
    pub like_client_id: Option<String>,
    /// Substring of the username.
    pub like_username: Option<String>,
    /// Created at or after.
    pub created_from: Option<SystemTime>,
    /// Created at or before.
    pub created_to: Option<SystemTime>,
    /// Connected at or after.
    pub connected_from: Option<SystemTime>,
    /// Connected at or before.
    pub connected_to: Option<SystemTime>,
}

/// Which slice of the result to return.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// 1-based page number.
    pub page: usize,
    /// Items per page.
    pub limit: usize,
}

/// One page of results.
#[derive(Debug, Clone, Serialize)]
pub struct PageResult {
    /// The sessions on this page.
    pub items: Vec<SessionSnapshot>,
    /// Matching sessions in total.
    pub count: usize,
    /// Whether a later page has items.
    pub has_next: bool,
}

/// A subscription as the registry shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SubscriptionSnapshot {
    /// Filter as subscribed (with `$share/group/` if shared).
    pub topic: String,
    /// Granted QoS.
    pub qos: u8,
    /// No local.
    pub nl: u8,
    /// Retain as published.
    pub rap: u8,
    /// Retain handling.
    pub rh: u8,
}

/// Everything the registry knows about one session at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSnapshot {
    /// Tenant.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Username.
    pub username: Option<String>,
    /// User id.
    pub user_id: Option<String>,
    /// "MQTT" / "MQIsdp".
    pub proto_name: String,
    /// 3, 4, 5.
    pub proto_ver: u8,
    /// Transport of the last connection.
    pub transport: Transport,
    /// Listener name (`tcp:default`, ...).
    pub listener: String,
    /// Peer IP.
    pub ip_address: Option<String>,
    /// Peer port.
    pub port: Option<u16>,
    /// Online.
    pub connected: bool,
    /// Epoch ms.
    pub connected_at: Option<i64>,
    /// Epoch ms.
    pub disconnected_at: Option<i64>,
    /// Epoch ms.
    pub created_at: i64,
    /// Keepalive seconds.
    pub keepalive: u16,
    /// Clean start.
    pub clean_start: bool,
    /// Session expiry interval seconds.
    pub expiry_interval: u32,
    /// Subscriptions.
    pub subscriptions: Vec<SubscriptionSnapshot>,
    /// Number of subscriptions.
    pub subscriptions_cnt: usize,
    /// Subscription limit (0 = unlimited).
    pub subscriptions_max: usize,
    /// Inflight messages.
    pub inflight_cnt: usize,
    /// Inflight window.
    pub inflight_max: u16,
    /// Queued messages.
    pub mqueue_len: usize,
    /// Queue limit.
    pub mqueue_max: usize,
    /// Messages dropped from the queue.
    pub mqueue_dropped: u64,
    /// Incoming QoS 2 awaiting PUBREL.
    pub awaiting_rel_cnt: usize,
    /// Limit of awaiting_rel.
    pub awaiting_rel_max: usize,
    /// Bytes received.
    pub recv_oct: u64,
    /// Socket reads.
    pub recv_cnt: u64,
    /// Packets received.
    pub recv_pkt: u64,
    /// PUBLISH received.
    pub recv_msg: u64,
    /// Bytes sent.
    pub send_oct: u64,
    /// Socket writes.
    pub send_cnt: u64,
    /// Packets sent.
    pub send_pkt: u64,
    /// PUBLISH sent.
    pub send_msg: u64,
}

impl Query {
    fn matches(&self, s: &Session) -> bool {
        if let Some(c) = &self.client_id {
            if &*s.client_id != c.as_str() {
                return false;
            }
        }
        if let Some(l) = &self.like_client_id {
            if !s.client_id.contains(l.as_str()) {
                return false;
            }
        }
        if let Some(from) = self.created_from {
            if s.created_at < from {
                return false;
            }
        }
        if let Some(to) = self.created_to {
            if s.created_at > to {
                return false;
            }
        }
        let i = s.info.read();
        let opt_eq = |want: &Option<String>, have: &Option<std::sync::Arc<str>>| match want {
            None => true,
            Some(w) => have.as_deref() == Some(w.as_str()),
        };
        opt_eq(&self.username, &i.username)
            && opt_eq(&self.user_id, &i.user_id)
            && self.ip.is_none_or(|ip| i.peer.map(|p| p.ip()) == Some(ip))
            && self.proto_name.as_deref().is_none_or(|n| n == i.proto_name)
            && self.proto_ver.is_none_or(|v| v == i.proto_ver)
            && self.transport.is_none_or(|t| t == i.transport)
            && self.connected.is_none_or(|c| c == i.connected)
            && self.clean_start.is_none_or(|c| c == i.clean_start)
            && self
                .like_username
                .as_deref()
                .is_none_or(|l| i.username.as_deref().is_some_and(|u| u.contains(l)))
            && self
                .connected_from
                .is_none_or(|f| i.connected_at.is_some_and(|t| t >= f))
            && self
                .connected_to
                .is_none_or(|f| i.connected_at.is_some_and(|t| t <= f))
    }
}

impl Registry {
    /// Sessions matching `q`, one page of them, in (tenant, client id) order.
    pub fn query(&self, q: &Query, page: Page, limits: &crate::config::Config) -> PageResult {
        let page_no = page.page.max(1);
        let skip = (page_no - 1).saturating_mul(page.limit);
        let mut items = Vec::with_capacity(page.limit.min(1024));
        let mut count = 0usize;
        let map = self.sessions.read();
        let tenants: Box<dyn Iterator<Item = _>> = match &q.tenant {
            Some(t) => Box::new(map.get(t.as_str()).into_iter()),
            None => Box::new(map.values()),
        };
        for t in tenants {
            // An exact client id is a point lookup, not a scan.
            if let Some(cid) = &q.client_id {
                if let Some(s) = t.get(cid.as_str()) {
                    if q.matches(s) {
                        if count >= skip && items.len() < page.limit {
                            items.push(snapshot(s, limits));
                        }
                        count += 1;
                    }
                }
                continue;
            }
            for s in t.values() {
                if q.matches(s) {
                    if count >= skip && items.len() < page.limit {
                        items.push(snapshot(s, limits));
                    }
                    count += 1;
                }
            }
        }
        PageResult {
            has_next: count > skip.saturating_add(items.len()),
            items,
            count,
        }
    }

    /// The snapshot of one session.
    pub fn snapshot(
        &self,
        tenant: &str,
        client_id: &str,
        limits: &crate::config::Config,
    ) -> Option<SessionSnapshot> {
        self.get(tenant, client_id).map(|s| snapshot(&s, limits))
    }
}

/// Builds the snapshot of a session.
pub fn snapshot(s: &Session, cfg: &crate::config::Config) -> SessionSnapshot {
    let c = &s.counters;
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let (subscriptions, inflight_cnt, mqueue_len, mqueue_dropped, awaiting_rel_cnt) = {
        let st = s.state.lock();
        let mut subs: Vec<SubscriptionSnapshot> = st
            .subscriptions
            .iter()
            .map(|(f, o)| SubscriptionSnapshot {
                topic: f.clone(),
                qos: o.qos.value(),
                nl: u8::from(o.no_local),
                rap: u8::from(o.retain_as_published),
                rh: o.retain_handling,
            })
            .collect();
        subs.sort_by(|a, b| a.topic.cmp(&b.topic));
        (
            subs,
            st.inflight.len(),
            st.queue.len(),
            st.dropped,
            st.awaiting_rel.len(),
        )
    };
    let i = s.info.read();
    SessionSnapshot {
        tenant: s.tenant.to_string(),
        client_id: s.client_id.to_string(),
        username: i.username.as_deref().map(str::to_string),
        user_id: i.user_id.as_deref().map(str::to_string),
        proto_name: i.proto_name.to_string(),
        proto_ver: i.proto_ver,
        transport: i.transport,
        listener: i.transport.listener().to_string(),
        ip_address: i.peer.map(|p| p.ip().to_string()),
        port: i.peer.map(|p| p.port()),
        connected: i.connected,
        connected_at: i.connected_at.map(epoch_ms),
        disconnected_at: i.disconnected_at.map(epoch_ms),
        created_at: epoch_ms(s.created_at),
        keepalive: i.keepalive,
        clean_start: i.clean_start,
        expiry_interval: i.expiry_interval,
        subscriptions_cnt: subscriptions.len(),
        subscriptions,
        subscriptions_max: cfg.mqtt.max_subscriptions,
        inflight_cnt,
        inflight_max: i.inflight_max,
        mqueue_len,
        mqueue_max: cfg.session.max_queued_messages,
        mqueue_dropped,
        awaiting_rel_cnt,
        awaiting_rel_max: cfg.session.max_awaiting_rel,
        recv_oct: ld(&c.recv_oct),
        recv_cnt: ld(&c.recv_cnt),
        recv_pkt: ld(&c.recv_pkt),
        recv_msg: ld(&c.recv_msg),
        send_oct: ld(&c.send_oct),
        send_cnt: ld(&c.send_cnt),
        send_pkt: ld(&c.send_pkt),
        send_msg: ld(&c.send_msg),
    }
}
