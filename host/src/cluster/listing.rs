//! The admin listings across nodes (decision 0023): pages of sessions (each node's
//! first matches merged), cursor listings walking the nodes in name order, the
//! subscription listing (nodes in name order), and a session's messages on the node
//! that holds it. Asked over `rpc.rs`'s request/reply; a node that does not answer is
//! left out.

use super::rpc::{Reply, Request, MAX_ROWS};
use super::Cluster;
use crate::broker::Broker;
use crate::registry::{
    Cursor, CursorPage, NodeCursor, Page, PageResult, Query, SessionSnapshot, SubPage, SubQuery,
};
use crate::session::MessageSnapshot;

impl Cluster {
    /// Marks snapshots of this node's sessions as this node's.
    pub(super) fn stamp(&self, items: &mut [SessionSnapshot]) {
        for s in items {
            s.node = Some(self.node.clone());
        }
    }

    /// Up to `limit` sessions matching `q` from `start` on (None: the first node's
    /// first), walking the running nodes in name order, and where the next page starts
    /// (None: no later session matches). A node that does not answer is passed over.
    pub async fn query_after(
        &self,
        b: &Broker,
        q: &Query,
        start: Option<NodeCursor>,
        limit: usize,
    ) -> (Vec<SessionSnapshot>, Option<NodeCursor>) {
        let limit = limit.clamp(1, MAX_ROWS);
        let mut nodes = self.running_peers();
        nodes.push(self.node.clone());
        nodes.sort_unstable();
        let (first, mut at) = start.map_or((String::new(), None), |c| (c.node, c.at));
        let mut items = Vec::new();
        for node in nodes.into_iter().filter(|n| *n >= first) {
            let at = if node == first { at.take() } else { None };
            // A full page still says whether a later node has a match (no cursor to an
            // empty page).
            let want = (limit - items.len()).max(1);
            let Some(p) = self.page_after(b, &node, q, at, want).await else {
                continue;
            };
            if items.len() == limit {
                let more = !p.items.is_empty();
                return (items, more.then_some(NodeCursor { node, at: None }));
            }
            items.extend(p.items);
            if let Some(next) = p.next {
                return (
                    items,
                    Some(NodeCursor {
                        node,
                        at: Some(next),
                    }),
                );
            }
        }
        (items, None)
    }

    /// One node's part of [`Cluster::query_after`] (None: it did not answer).
    async fn page_after(
        &self,
        b: &Broker,
        node: &str,
        q: &Query,
        after: Option<Cursor>,
        limit: usize,
    ) -> Option<CursorPage> {
        if node == self.node {
            let mut p = b
                .registry
                .query_after(q, after.as_ref(), limit, &b.config());
            self.stamp(&mut p.items);
            return Some(p);
        }
        let req = Request::QueryAfter {
            q: Box::new(q.clone()),
            after,
            limit,
        };
        let bytes = rmp_serde::to_vec_named(&req).ok()?;
        match self.ask_one(node.to_string(), bytes.into()).await? {
            Reply::After { items, next } => Some(CursorPage { items, next }),
            _ => None,
        }
    }

    /// A page of the sessions matching `q` on every node: each node's first
    /// `page * limit` (at most [`MAX_ROWS`]) merged in creation order.
    pub async fn query(&self, b: &Broker, q: &Query, page: Page) -> PageResult {
        let want = page.page.saturating_mul(page.limit).min(MAX_ROWS);
        let mine = b.registry.query(
            q,
            Page {
                page: 1,
                limit: want,
            },
            &b.config(),
        );
        let (mut count, mut items) = (mine.count, mine.items);
        self.stamp(&mut items);
        let req = Request::Query {
            q: Box::new(q.clone()),
            want,
        };
        for r in self.ask_all(&req).await {
            if let Reply::Page { count: c, items: i } = r {
                count += c;
                items.extend(i.into_iter().take(want));
            }
        }
        items.sort_by(|x, y| {
            (x.created_at, &x.tenant, &x.client_id).cmp(&(y.created_at, &y.tenant, &y.client_id))
        });
        let skip = (page.page - 1).saturating_mul(page.limit);
        let items: Vec<_> = items.into_iter().skip(skip).take(page.limit).collect();
        PageResult {
            has_next: count > skip + items.len(),
            items,
            count,
        }
    }

    /// A page of the subscriptions matching `q` on every node, the nodes' in name
    /// order: each node's first `page * limit` (at most [`MAX_ROWS`]) and its count.
    pub async fn subscriptions(&self, b: &Broker, q: &SubQuery, page: Page) -> SubPage {
        let want = page.page.saturating_mul(page.limit).clamp(1, MAX_ROWS);
        let first = Page {
            page: 1,
            limit: want,
        };
        let mut mine = b.registry.subscriptions(q, first);
        for e in &mut mine.items {
            e.node = Some(self.node.clone());
        }
        let mut parts = vec![(self.node.clone(), mine.count, mine.items)];
        let req = Request::Subscriptions {
            q: Box::new(q.clone()),
            want,
        };
        for r in self.ask_all(&req).await {
            if let Reply::Subscriptions { node, count, items } = r {
                parts.push((node, count, items));
            }
        }
        parts.sort_by(|x, y| x.0.cmp(&y.0));
        let count = parts.iter().map(|p| p.1).sum();
        let skip = (page.page.max(1) - 1).saturating_mul(page.limit);
        // Node i's rows sit after the counts of the nodes before it.
        let mut items = Vec::new();
        let mut offset = 0;
        for (_, n, rows) in parts {
            for (i, row) in rows.into_iter().enumerate() {
                if (skip..skip + page.limit).contains(&(offset + i)) {
                    items.push(row);
                }
            }
            offset += n;
        }
        SubPage {
            has_next: count > skip + items.len(),
            items,
            count,
        }
    }

    /// Up to `limit` messages the session of `client_id` on another node holds (queued,
    /// or in flight), after `after`, and whether more follow. None: no node holds it.
    pub async fn messages(
        &self,
        tenant: &str,
        client_id: &str,
        inflight: bool,
        after: Option<u64>,
        limit: usize,
    ) -> Option<(Vec<MessageSnapshot>, bool)> {
        let req = Request::Messages {
            tenant: tenant.into(),
            client_id: client_id.into(),
            inflight,
            after,
            limit,
        };
        self.ask_all(&req).await.into_iter().find_map(|r| match r {
            Reply::Messages(m) => m,
            _ => None,
        })
    }
}
