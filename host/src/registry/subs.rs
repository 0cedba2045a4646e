//! Listing subscriptions across sessions, for admin APIs such as EMQX's
//! `GET /subscriptions`: a scan of the tenant's sessions in creation order, each session's
//! filters in name order, filtered and paged.

use std::sync::Arc;

use super::query::{Page, SubscriptionSnapshot};
use super::Registry;
use crate::session::Session;

/// Which subscriptions to list; every field set must match.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SubQuery {
    /// Tenant (None: every tenant).
    pub tenant: Option<String>,
    /// Exact client id.
    pub client_id: Option<String>,
    /// Exact filter as subscribed.
    pub topic: Option<String>,
    /// Granted QoS.
    pub qos: Option<u8>,
    /// Shared subscriptions of this group.
    pub share_group: Option<String>,
    /// Filters that match this topic name.
    pub match_topic: Option<String>,
}

/// One subscription with its owner.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SubEntry {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Client id.
    pub client_id: Arc<str>,
    /// The cluster node holding its session; None on a single node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The subscription.
    pub sub: SubscriptionSnapshot,
}

/// A page of subscriptions.
#[derive(Debug, Clone)]
pub struct SubPage {
    /// This page.
    pub items: Vec<SubEntry>,
    /// Matching subscriptions in total.
    pub count: usize,
    /// Whether a later page has items.
    pub has_next: bool,
}

impl Registry {
    /// Every subscription of a tenant (or of all), one page: whole blocks of sessions
    /// before the page are skipped by their noted counts, and only the sessions on the
    /// page are locked, so the last page costs what the first does.
    fn subscriptions_unfiltered(&self, tenant: Option<&str>, page: Page) -> SubPage {
        let skip = (page.page.max(1) - 1).saturating_mul(page.limit) as u64;
        let mut count = 0u64;
        // (sessions on the page, subscriptions before the first of them)
        let mut on_page: Vec<(Vec<Arc<Session>>, u64)> = Vec::new();
        {
            let map = self.tenants.read();
            let mut tenants: Vec<_> = match tenant {
                Some(t) => map.get_key_value(t).into_iter().collect(),
                None => map.iter().collect(),
            };
            tenants.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let end = skip + page.limit as u64;
            for (_, t) in tenants {
                let total = t.subscription_total();
                if count < end && count + total > skip {
                    let (before, rows) = t.rows_from_subscription(skip.saturating_sub(count));
                    let mut seen = count + before;
                    let mut sessions = Vec::new();
                    for r in rows {
                        if seen >= end {
                            break;
                        }
                        seen += r.subs.load(std::sync::atomic::Ordering::Relaxed);
                        sessions.push(r.session.clone());
                    }
                    on_page.push((sessions, count + before));
                }
                count += total;
            }
        }
        let mut items = Vec::with_capacity(page.limit.min(1024));
        for (sessions, mut at) in on_page {
            for s in sessions {
                let st = s.state.lock();
                let mut subs: Vec<_> = st.subscriptions.iter().collect();
                subs.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (topic, o) in subs {
                    if at >= skip && items.len() < page.limit {
                        items.push(entry(&s, topic, o));
                    }
                    at += 1;
                }
            }
        }
        SubPage {
            has_next: count > skip + items.len() as u64,
            items,
            count: count as usize,
        }
    }
}

/// A subscription with its owner, as listed.
fn entry(s: &Session, topic: &str, o: &crate::session::SubOptions) -> SubEntry {
    SubEntry {
        node: None,
        tenant: s.tenant.clone(),
        client_id: s.client_id.clone(),
        sub: SubscriptionSnapshot {
            topic: topic.to_string(),
            qos: o.qos.value(),
            nl: u8::from(o.no_local),
            rap: u8::from(o.retain_as_published),
            rh: o.retain_handling,
        },
    }
}

/// Whether `q` filters single subscriptions (not only tenant and client id).
fn self_filters(q: &SubQuery) -> bool {
    q.topic.is_some() || q.qos.is_some() || q.share_group.is_some() || q.match_topic.is_some()
}

impl SubQuery {
    fn matches(&self, topic: &str, qos: u8) -> bool {
        let (group, filter) = crate::topic::split_share(topic);
        self.topic.as_deref().is_none_or(|t| t == topic)
            && self.qos.is_none_or(|q| q == qos)
            && self.share_group.as_deref().is_none_or(|g| group == Some(g))
            && self
                .match_topic
                .as_deref()
                .is_none_or(|t| crate::topic::matches(filter, t))
    }
}

impl Registry {
    /// Subscriptions matching `q`, one page of them.
    pub fn subscriptions(&self, q: &SubQuery, page: Page) -> SubPage {
        if q.client_id.is_none() && !self_filters(q) {
            return self.subscriptions_unfiltered(q.tenant.as_deref(), page);
        }
        let skip = (page.page.max(1) - 1).saturating_mul(page.limit);
        let mut items = Vec::new();
        let mut count = 0usize;
        let sessions = match &q.client_id {
            Some(cid) => match &q.tenant {
                Some(t) => self.get(t, cid).into_iter().collect(),
                None => self
                    .sessions_of(None)
                    .into_iter()
                    .filter(|s| &*s.client_id == cid.as_str())
                    .collect(),
            },
            None => match &q.tenant {
                Some(t) => self.sessions_of(Some(t)),
                None => {
                    // Tenants in name order, so pages are stable.
                    let mut tenants = self.tenants();
                    tenants.sort_unstable();
                    tenants
                        .iter()
                        .flat_map(|t| self.sessions_of(Some(t)))
                        .collect()
                }
            },
        };
        for s in sessions {
            let st = s.state.lock();
            let mut subs: Vec<(&String, &crate::session::SubOptions)> =
                st.subscriptions.iter().collect();
            subs.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (topic, o) in subs {
                let qos = o.qos.value();
                if !q.matches(topic, qos) {
                    continue;
                }
                if count >= skip && items.len() < page.limit {
                    items.push(entry(&s, topic, o));
                }
                count += 1;
            }
        }
        SubPage {
            has_next: count > skip.saturating_add(items.len()),
            items,
            count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{ClientInfo, SubOptions};
    use rmqtt_codec::types::QoS;

    fn set_subs(r: &Registry, s: &Session, n: usize) {
        let mut st = s.state.lock();
        st.subscriptions.clear();
        for k in 0..n {
            let o = SubOptions::qos(QoS::AtMostOnce);
            st.subscriptions.insert(format!("f/{}/{k}", s.client_id), o);
        }
        s.set_subscription_count(n);
        r.note_subscriptions(s);
    }

    /// Every (client id, filter) in listing order, by brute force.
    fn expected(r: &Registry) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in r.sessions_of(Some("t")) {
            let st = s.state.lock();
            let mut f: Vec<&String> = st.subscriptions.keys().collect();
            f.sort();
            out.extend(f.into_iter().map(|f| (s.client_id.to_string(), f.clone())));
        }
        out
    }

    fn check_every_page(r: &Registry, limit: usize) {
        let want = expected(r);
        let pages = want.len().div_ceil(limit) + 1;
        for page in 1..=pages {
            let p = r.subscriptions_unfiltered(Some("t"), Page { page, limit });
            let got: Vec<(String, String)> = p
                .items
                .iter()
                .map(|e| (e.client_id.to_string(), e.sub.topic.clone()))
                .collect();
            let lo = ((page - 1) * limit).min(want.len());
            let hi = (page * limit).min(want.len());
            assert_eq!(got, want[lo..hi], "page {page}");
            assert_eq!(p.count, want.len());
            assert_eq!(p.has_next, hi < want.len(), "page {page}");
        }
    }

    #[test]
    fn pages_across_tenants_neither_skip_nor_repeat() {
        let r = Registry::default();
        // Tenant a: one session with 3 subscriptions; b: 20 sessions with one each.
        let a0 = Arc::new(Session::new(
            0,
            "a".into(),
            "a0".into(),
            ClientInfo::default(),
        ));
        r.insert(a0.clone());
        set_subs(&r, &a0, 3);
        for i in 1..=20u64 {
            let s = Arc::new(Session::new(
                i,
                "b".into(),
                format!("b{i:02}").into(),
                ClientInfo::default(),
            ));
            r.insert(s.clone());
            set_subs(&r, &s, 1);
        }
        let mut all = Vec::new();
        for page in 1..=3 {
            let p = r.subscriptions_unfiltered(None, Page { page, limit: 10 });
            assert_eq!(p.count, 23);
            assert_eq!(p.has_next, page < 3, "page {page}");
            assert_eq!(p.items.len(), if page < 3 { 10 } else { 3 }, "page {page}");
            all.extend(p.items.into_iter().map(|e| e.sub.topic));
        }
        assert_eq!(all.len(), 23);
        let mut sorted = all.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 23, "no repeats");
        assert!(all[..3].iter().all(|t| t.starts_with("f/a0/")));
    }

    #[test]
    fn connected_sessions_are_counted_without_a_scan_through_replace_refresh_and_compaction() {
        let r = Registry::default();
        let scan = |r: &Registry| {
            r.sessions_of(None)
                .iter()
                .filter(|s| s.info.read().connected)
                .count()
        };
        let mk = |i: u64, id: &str, connected: bool| {
            let info = ClientInfo {
                connected,
                ..ClientInfo::default()
            };
            Arc::new(Session::new(i, "t".into(), id.into(), info))
        };
        let sessions: Vec<Arc<Session>> = (0..400u64)
            .map(|i| {
                let s = mk(i, &format!("c{i}"), i % 2 == 0);
                r.insert(s.clone());
                s
            })
            .collect();
        assert_eq!(r.connected_count(), 200);
        // Disconnects seen through refresh; a replaced session; removals past a compaction.
        for s in sessions.iter().step_by(4) {
            s.info.write().connected = false;
            r.refresh(s);
        }
        r.insert(mk(1000, "c1", true));
        for s in sessions.iter().skip(200) {
            r.remove(s);
        }
        assert_eq!(r.connected_count(), scan(&r));
        assert_eq!(r.tenant_counts("t").1, scan(&r));
        assert_eq!(
            r.connected_count(),
            51,
            "c0..c199: 50 even ones left, plus c1"
        );
    }

    #[test]
    fn deep_pages_by_block_sums_equal_a_full_scan_as_sessions_and_subscriptions_change() {
        let r = Registry::default();
        let sessions: Vec<Arc<Session>> = (0..3000u64)
            .map(|i| {
                let s = Arc::new(Session::new(
                    i,
                    "t".into(),
                    format!("c{i:05}").into(),
                    ClientInfo::default(),
                ));
                r.insert(s.clone());
                set_subs(&r, &s, (i % 4) as usize);
                s
            })
            .collect();
        check_every_page(&r, 97);
        // A third go away (tombstones, then a compaction) and some change their count.
        for (i, s) in sessions.iter().enumerate() {
            if i % 3 == 0 {
                r.remove(s);
            } else if i % 7 == 0 {
                set_subs(&r, s, 5);
            }
        }
        check_every_page(&r, 97);
        check_every_page(&r, 1000);
        // Session pages skip whole blocks the same way.
        let cfg = crate::config::Config::embedded();
        let all: Vec<String> = r
            .sessions_of(Some("t"))
            .iter()
            .map(|s| s.client_id.to_string())
            .collect();
        for page in 1..=all.len().div_ceil(97) {
            let q = super::super::Query {
                tenant: Some("t".into()),
                ..Default::default()
            };
            let p = r.query(&q, Page { page, limit: 97 }, &cfg);
            let got: Vec<String> = p.items.iter().map(|s| s.client_id.to_string()).collect();
            let lo = (page - 1) * 97;
            assert_eq!(
                got,
                all[lo..(lo + 97).min(all.len())],
                "session page {page}"
            );
        }
        // The general path agrees.
        let q = SubQuery {
            tenant: Some("t".into()),
            ..Default::default()
        };
        let page = Page { page: 3, limit: 50 };
        let slow = r.subscriptions(
            &SubQuery {
                qos: Some(0),
                ..q.clone()
            },
            page,
        );
        let fast = r.subscriptions(&q, page);
        assert_eq!(slow.count, fast.count);
        let names = |p: &SubPage| {
            p.items
                .iter()
                .map(|e| e.sub.topic.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&slow), names(&fast));
    }
}
