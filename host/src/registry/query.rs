//! Registry queries: filters as the EMQX clients API offers them, stable paging in
//! (tenant, client id) order, and the snapshot an admin API serialises.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde::Serialize;

use std::sync::Arc;

use super::index::{Row, TenantIndex};
use super::Registry;
use crate::session::{Session, Transport};
use crate::store::records::to_ms as epoch_ms;

/// Filters over sessions; every field set must match (serialisable: nodes of a cluster
/// ask each other).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct Query {
    /// Only this tenant (None = every tenant, for admin callers).
    pub tenant: Option<String>,
    /// Exact client id.
    pub client_id: Option<String>,
    /// One of these client ids (empty: any).
    pub client_ids: Vec<String>,
    /// Exact username.
    pub username: Option<String>,
    /// One of these usernames (empty: any).
    pub usernames: Vec<String>,
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
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionSnapshot {
    /// The cluster node holding the session; None on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
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
    /// What a stream plugin says about the connection (JSON).
    pub description: Option<String>,
}

impl Query {
    /// The rows of `t` a query needs to look at, after insertion number `from`, in
    /// creation order: exact client ids are point lookups, not a scan.
    pub(super) fn rows<'a>(
        &'a self,
        t: &'a TenantIndex,
        from: Option<u64>,
    ) -> Box<dyn Iterator<Item = (u64, &'a Row)> + 'a> {
        let after = move |seq: &u64| from.is_none_or(|f| *seq > f);
        match (&self.client_id, self.client_ids.is_empty()) {
            (Some(cid), _) => Box::new(t.row_seq(cid).filter(|(s, _)| after(s)).into_iter()),
            (None, false) => {
                let mut rows: Vec<_> = self
                    .client_ids
                    .iter()
                    .filter_map(|c| t.row_seq(c))
                    .filter(|(s, _)| after(s))
                    .collect();
                rows.sort_unstable_by_key(|(s, _)| *s);
                rows.dedup_by_key(|(s, _)| *s);
                Box::new(rows.into_iter())
            }
            (None, true) => Box::new(t.rows_after(from)),
        }
    }

    /// True when only the tenant is set: counting and paging need no scan.
    fn is_unfiltered(&self) -> bool {
        let Query {
            tenant: _,
            client_id,
            client_ids,
            username,
            usernames,
            user_id,
            ip,
            proto_name,
            proto_ver,
            transport,
            connected,
            clean_start,
            like_client_id,
            like_username,
            created_from,
            created_to,
            connected_from,
            connected_to,
        } = self;
        client_id.is_none()
            && client_ids.is_empty()
            && username.is_none()
            && usernames.is_empty()
            && user_id.is_none()
            && ip.is_none()
            && proto_name.is_none()
            && proto_ver.is_none()
            && transport.is_none()
            && connected.is_none()
            && clean_start.is_none()
            && like_client_id.is_none()
            && like_username.is_none()
            && created_from.is_none()
            && created_to.is_none()
            && connected_from.is_none()
            && connected_to.is_none()
    }

    pub(super) fn matches(&self, r: &Row) -> bool {
        fn eq(want: &Option<String>, have: &Option<compact_str::CompactString>) -> bool {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        }
        self.client_id.as_deref().is_none_or(|c| r.client_id == c)
            && (self.client_ids.is_empty() || self.client_ids.iter().any(|c| r.client_id == c))
            && (self.usernames.is_empty()
                || self
                    .usernames
                    .iter()
                    .any(|u| r.username.as_deref() == Some(u.as_str())))
            && self
                .like_client_id
                .as_deref()
                .is_none_or(|l| r.client_id.contains(l))
            && eq(&self.username, &r.username)
            && eq(&self.user_id, &r.user_id)
            && self.ip.is_none_or(|ip| r.ip == Some(ip))
            && self.proto_name.as_deref().is_none_or(|n| n == r.proto_name)
            && self.proto_ver.is_none_or(|v| v == r.proto_ver)
            && self.transport.is_none_or(|t| t == r.transport)
            && self.connected.is_none_or(|c| c == r.connected)
            && self.clean_start.is_none_or(|c| c == r.clean_start)
            && self
                .like_username
                .as_deref()
                .is_none_or(|l| r.username.as_deref().is_some_and(|u| u.contains(l)))
            && self.created_from.is_none_or(|f| r.created_at >= f)
            && self.created_to.is_none_or(|f| r.created_at <= f)
            && self
                .connected_from
                .is_none_or(|f| r.connected_at.is_some_and(|t| t >= f))
            && self
                .connected_to
                .is_none_or(|f| r.connected_at.is_some_and(|t| t <= f))
    }
}

impl Registry {
    /// Sessions matching `q`, one page of them, tenants in name order and sessions in
    /// creation order within a tenant.
    pub fn query(&self, q: &Query, page: Page, cfg: &crate::config::Config) -> PageResult {
        let skip = (page.page.max(1) - 1).saturating_mul(page.limit);
        let mut items = Vec::with_capacity(page.limit.min(1024));
        let mut count = 0usize;
        let map = self.tenants.read();
        let mut tenants: Vec<(&Arc<str>, &TenantIndex)> = match &q.tenant {
            Some(t) => map.get_key_value(t.as_str()).into_iter().collect(),
            None => map.iter().collect(),
        };
        tenants.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let unfiltered = q.is_unfiltered();
        for (_, t) in tenants {
            if unfiltered {
                // Only the page's rows are touched; the count is known.
                let start = skip.saturating_sub(count);
                let want = page.limit - items.len();
                if want > 0 && start < t.len() {
                    items.extend(
                        t.rows_from(start)
                            .take(want)
                            .map(|r| snapshot(&r.session, cfg)),
                    );
                }
                count += t.len();
                continue;
            }
            for (_, r) in q.rows(t, None).filter(|(_, r)| q.matches(r)) {
                if count >= skip && items.len() < page.limit {
                    items.push(snapshot(&r.session, cfg));
                }
                count += 1;
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
        cfg: &crate::config::Config,
    ) -> Option<SessionSnapshot> {
        self.get(tenant, client_id).map(|s| snapshot(&s, cfg))
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
        node: None,
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
        description: i.description.as_deref().map(str::to_string),
    }
}
