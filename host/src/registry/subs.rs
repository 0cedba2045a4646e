//! Listing subscriptions across sessions, for admin APIs such as EMQX's
//! `GET /subscriptions`: a scan of the tenant's sessions in creation order, each session's
//! filters in name order, filtered and paged.

use std::sync::Arc;

use super::query::{Page, SubscriptionSnapshot};
use super::Registry;

/// Which subscriptions to list; every field set must match.
#[derive(Debug, Clone, Default)]
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
#[derive(Debug, Clone)]
pub struct SubEntry {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Client id.
    pub client_id: Arc<str>,
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
                    items.push(SubEntry {
                        tenant: s.tenant.clone(),
                        client_id: s.client_id.clone(),
                        sub: SubscriptionSnapshot {
                            topic: topic.clone(),
                            qos,
                            nl: u8::from(o.no_local),
                            rap: u8::from(o.retain_as_published),
                            rh: o.retain_handling,
                        },
                    });
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
