//! Admin operations over every node: this node's sessions, then, in a cluster, the
//! other nodes' (asked over NATS, `cluster/rpc.rs`). The admin APIs call these, so an
//! API on any node sees and acts on every session of the cluster.

use super::Broker;
use crate::registry::{
    Cursor, KickTarget, NodeCursor, OpError, Page, PageResult, Query, SessionSnapshot, SubPage,
    SubQuery,
};
use crate::session::{MessageSnapshot, SubOptions};

impl Broker {
    /// A page of the sessions matching `q` on every node.
    pub async fn query_all(&self, q: &Query, page: Page) -> PageResult {
        match self.cluster() {
            Some(c) => c.query(self, q, page).await,
            None => self.registry.query(q, page, &self.config()),
        }
    }

    /// Up to `limit` sessions matching `q` after the cursor text `after` (None: from
    /// the first), on every node, and the cursor text of the next page (None: no later
    /// session matches). Err: `after` is not a cursor.
    pub async fn query_after_all(
        &self,
        q: &Query,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<SessionSnapshot>, Option<String>), String> {
        let bad = || format!("bad cursor {after:?}");
        let Some(c) = self.cluster() else {
            let after = after
                .map(|t| Cursor::decode(t).ok_or_else(bad))
                .transpose()?;
            let p = self
                .registry
                .query_after(q, after.as_ref(), limit, &self.config());
            return Ok((p.items, p.next.map(|c| c.encode())));
        };
        let start = after
            .map(|t| NodeCursor::decode(t, c.node()).ok_or_else(bad))
            .transpose()?;
        let (items, next) = c.query_after(self, q, start, limit).await;
        Ok((items, next.map(|c| c.encode())))
    }

    /// A page of the subscriptions matching `q` on every node.
    pub async fn subscriptions_all(&self, q: &SubQuery, page: Page) -> SubPage {
        match self.cluster() {
            Some(c) => c.subscriptions(self, q, page).await,
            None => self.registry.subscriptions(q, page),
        }
    }

    /// Up to `limit` messages the session of `client_id` holds (queued, or in flight)
    /// after `after`, on whichever node holds it, and whether more follow. None: no
    /// such session.
    pub async fn messages_any(
        &self,
        tenant: &str,
        client_id: &str,
        inflight: bool,
        after: Option<u64>,
        limit: usize,
    ) -> Option<(Vec<MessageSnapshot>, bool)> {
        if let Some(s) = self.registry.get(tenant, client_id) {
            return Some(s.state.lock().messages_after(inflight, after, limit));
        }
        let c = self.cluster()?;
        c.messages(tenant, client_id, inflight, after, limit).await
    }

    /// The session of `client_id`, on whichever node holds it.
    pub async fn snapshot_any(&self, tenant: &str, client_id: &str) -> Option<SessionSnapshot> {
        if let Some(mut s) = self.registry.snapshot(tenant, client_id, &self.config()) {
            s.node = self.cluster().map(|c| c.node().to_string());
            return Some(s);
        }
        self.cluster()?.get(tenant, client_id).await
    }

    /// [`Broker::kick`] on every node; how many sessions were affected.
    pub async fn kick_all(&self, tenant: &str, target: &KickTarget, end_session: bool) -> usize {
        // Every node, also for a client id: until ownership is cluster-wide, two nodes
        // may each hold a session of one client id.
        let here = self.kick(tenant, target, end_session);
        match self.cluster() {
            Some(c) => here + c.kick(tenant, target, end_session).await,
            None => here,
        }
    }

    /// [`Broker::subscribe_for`] on whichever node holds the session.
    pub async fn subscribe_for_any(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
        opts: SubOptions,
    ) -> Result<bool, OpError> {
        match (
            self.subscribe_for(tenant, client_id, filter, opts).await,
            self.cluster(),
        ) {
            (Err(OpError::NotFound(m)), Some(c)) => c
                .subscribe_for(tenant, client_id, filter, opts)
                .await
                .unwrap_or(Err(OpError::NotFound(m))),
            (r, _) => r,
        }
    }

    /// [`Broker::unsubscribe_for`] on whichever node holds the session.
    pub async fn unsubscribe_for_any(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
    ) -> Result<bool, OpError> {
        match (
            self.unsubscribe_for(tenant, client_id, filter),
            self.cluster(),
        ) {
            (Err(OpError::NotFound(m)), Some(c)) => c
                .unsubscribe_for(tenant, client_id, filter)
                .await
                .unwrap_or(Err(OpError::NotFound(m))),
            (r, _) => r,
        }
    }

    /// [`Broker::expire_inactive`] on every node; how many sessions ended.
    pub async fn expire_all(&self, tenant: &str, secs: u64) -> usize {
        let here = self.expire_inactive(tenant, secs);
        match self.cluster() {
            Some(c) => here + c.expire(tenant, secs).await,
            None => here,
        }
    }
}
