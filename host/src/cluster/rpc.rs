//! The admin view across nodes (decision 0023): the registry operations the admin APIs
//! use, answered by each node for its own sessions over NATS request/reply on
//! `apiary.rpc.<node>`. An admin API on any node lists every session of the cluster
//! (each node's first matches merged), finds one wherever it lives, and kicks,
//! subscribes on behalf or expires on the node that holds it. A node that does not
//! answer within [`TIMEOUT`] is left out (counted, logged).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::takeover::{self, MovedSession};
use super::Cluster;
use crate::broker::Broker;
use crate::registry::{
    Cursor, KickTarget, OpError, Page, Query, SessionSnapshot, SubEntry, SubQuery, Via,
};
use crate::session::{MessageSnapshot, SubOptions};

/// How long a node waits for another's answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Most rows one node sends for a page (deep pages across nodes are capped).
pub(super) const MAX_ROWS: usize = 10_000;
/// Requests one node serves at once.
const CONCURRENCY: usize = 64;

/// A question to another node about its own sessions.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// Its first `want` sessions matching `q` (creation order) and how many match.
    Query { q: Box<Query>, want: usize },
    /// Its first `want` subscriptions matching `q` and how many match.
    Subscriptions { q: Box<SubQuery>, want: usize },
    /// Up to `limit` messages its session of `client_id` holds, after `after`.
    Messages {
        tenant: String,
        client_id: String,
        inflight: bool,
        after: Option<u64>,
        limit: usize,
    },
    /// Up to `limit` of its sessions matching `q` after `after` (cursor order).
    QueryAfter {
        q: Box<Query>,
        after: Option<Cursor>,
        limit: usize,
    },
    /// One session.
    Get { tenant: String, client_id: String },
    /// Kick by client id or by user id (limited to a transport or protocol).
    Kick {
        tenant: String,
        client_id: Option<String>,
        user_id: Option<String>,
        via: Option<String>,
        end_session: bool,
    },
    /// Subscribe on behalf.
    Subscribe {
        tenant: String,
        client_id: String,
        filter: String,
        qos: u8,
        nl: bool,
        rap: bool,
        rh: u8,
    },
    /// Unsubscribe on behalf.
    Unsubscribe {
        tenant: String,
        client_id: String,
        filter: String,
    },
    /// End sessions inactive that long.
    Expire { tenant: String, secs: u64 },
    /// Give up the session of a client id connecting elsewhere (with its state unless
    /// it starts clean).
    Take {
        tenant: String,
        client_id: String,
        clean_start: bool,
    },
}

/// An operation's outcome: not found, done, or refused/invalid with the reason.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Outcome {
    NotFound,
    Done(bool),
    Failed { refused: bool, message: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Page {
        count: usize,
        items: Vec<SessionSnapshot>,
    },
    Session(Option<Box<SessionSnapshot>>),
    After {
        items: Vec<SessionSnapshot>,
        next: Option<Cursor>,
    },
    Subscriptions {
        node: String,
        count: usize,
        items: Vec<SubEntry>,
    },
    /// A session's messages and whether more follow; None: no session here.
    Messages(Option<(Vec<MessageSnapshot>, bool)>),
    Count(usize),
    Op(Outcome),
    Taken(Option<Box<MovedSession>>),
}

/// Counters of the admin traffic between nodes.
#[derive(Debug, Default)]
pub struct RpcCounters {
    /// Requests served for other nodes.
    pub served: AtomicU64,
    /// Requests to other nodes that got no (readable) answer in time.
    pub unanswered: AtomicU64,
}

impl Cluster {
    /// The subject a node answers on.
    fn rpc_subject(node: &str) -> String {
        format!("apiary.rpc.{node}")
    }

    /// Asks every other running node; the answers that came.
    pub(super) async fn ask_all(&self, req: &Request) -> Vec<Reply> {
        let Ok(bytes) = rmp_serde::to_vec_named(req) else {
            return Vec::new();
        };
        let bytes = bytes::Bytes::from(bytes);
        let asks = self
            .running_peers()
            .into_iter()
            .map(|node| self.ask_one(node, bytes.clone()));
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Asks `node` (an encoded request); its answer if one came in time.
    pub(super) async fn ask_one(&self, node: String, bytes: bytes::Bytes) -> Option<Reply> {
        let r = tokio::time::timeout(
            TIMEOUT,
            self.client.request(Self::rpc_subject(&node), bytes),
        )
        .await;
        let reply = match r {
            Ok(Ok(m)) => rmp_serde::from_slice::<Reply>(&m.payload).ok(),
            _ => None,
        };
        if reply.is_none() {
            self.rpc.unanswered.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%node, "cluster: no answer from a node");
        }
        reply
    }

    /// The session of `client_id` on another node.
    pub async fn get(&self, tenant: &str, client_id: &str) -> Option<SessionSnapshot> {
        let req = Request::Get {
            tenant: tenant.into(),
            client_id: client_id.into(),
        };
        self.ask_all(&req).await.into_iter().find_map(|r| match r {
            Reply::Session(s) => s.map(|s| *s),
            _ => None,
        })
    }

    /// Kicks on the other nodes; how many sessions they affected.
    pub async fn kick(&self, tenant: &str, target: &KickTarget, end_session: bool) -> usize {
        let (client_id, user_id, via) = match target {
            KickTarget::ClientId(c) => (Some(c.clone()), None, None),
            KickTarget::UserId { user_id, only } => (
                None,
                Some(user_id.clone()),
                only.map(|v| v.name().to_string()),
            ),
        };
        let req = Request::Kick {
            tenant: tenant.into(),
            client_id,
            user_id,
            via,
            end_session,
        };
        self.counts(&req).await
    }

    /// Expires inactive sessions on the other nodes; how many ended.
    pub async fn expire(&self, tenant: &str, secs: u64) -> usize {
        self.counts(&Request::Expire {
            tenant: tenant.into(),
            secs,
        })
        .await
    }

    async fn counts(&self, req: &Request) -> usize {
        self.ask_all(req)
            .await
            .into_iter()
            .map(|r| match r {
                Reply::Count(n) => n,
                _ => 0,
            })
            .sum()
    }

    /// Subscribes on behalf of a session another node holds (None: none holds it).
    pub async fn subscribe_for(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
        o: SubOptions,
    ) -> Option<Result<bool, OpError>> {
        self.operate(Request::Subscribe {
            tenant: tenant.into(),
            client_id: client_id.into(),
            filter: filter.into(),
            qos: o.qos.value(),
            nl: o.no_local,
            rap: o.retain_as_published,
            rh: o.retain_handling,
        })
        .await
    }

    /// Unsubscribes on behalf of a session another node holds (None: none holds it).
    pub async fn unsubscribe_for(
        &self,
        tenant: &str,
        client_id: &str,
        filter: &str,
    ) -> Option<Result<bool, OpError>> {
        self.operate(Request::Unsubscribe {
            tenant: tenant.into(),
            client_id: client_id.into(),
            filter: filter.into(),
        })
        .await
    }

    /// Takes the session of `client_id` over from whichever other node holds it: its
    /// state, unless `clean_start` (None: no other node had it, or a clean start).
    pub async fn take_session(
        &self,
        tenant: &str,
        client_id: &str,
        clean_start: bool,
    ) -> Option<MovedSession> {
        let req = Request::Take {
            tenant: tenant.into(),
            client_id: client_id.into(),
            clean_start,
        };
        self.ask_all(&req).await.into_iter().find_map(|r| match r {
            Reply::Taken(m) => m.map(|m| *m),
            _ => None,
        })
    }

    async fn operate(&self, req: Request) -> Option<Result<bool, OpError>> {
        self.ask_all(&req).await.into_iter().find_map(|r| match r {
            Reply::Op(Outcome::Done(b)) => Some(Ok(b)),
            Reply::Op(Outcome::Failed { refused, message }) => {
                Some(Err(OpError::Remote { refused, message }))
            }
            _ => None,
        })
    }

    /// Answers the other nodes' requests about this node's sessions until the broker
    /// stops.
    pub(super) async fn serve_rpc(self: Arc<Self>, b: Broker) {
        let mut reqs = match self.client.subscribe(Self::rpc_subject(&self.node)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot answer other nodes");
                return;
            }
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
        loop {
            let m = tokio::select! {
                m = reqs.next() => match m { Some(m) => m, None => return },
                _ = b.stopped() => return,
            };
            let (Some(reply_to), Ok(req)) = (m.reply, rmp_serde::from_slice::<Request>(&m.payload))
            else {
                self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (c, b) = (self.clone(), b.clone());
            tokio::spawn(async move {
                let reply = answer(&b, req).await;
                let sent = match rmp_serde::to_vec_named(&reply) {
                    Ok(bytes) => c.client.publish(reply_to, bytes.into()).await.is_ok(),
                    Err(_) => false,
                };
                if !sent {
                    c.rpc.unanswered.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "cluster: an answer to another node could not be sent (over max_payload?)"
                    );
                }
                c.rpc.served.fetch_add(1, Ordering::Relaxed);
                drop(slot);
            });
        }
    }
}

/// Marks snapshots of this node's sessions as this node's.
fn stamp(b: &Broker, items: &mut [SessionSnapshot]) {
    if let Some(c) = b.cluster() {
        c.stamp(items);
    }
}

/// This node's answer about its own sessions.
async fn answer(b: &Broker, req: Request) -> Reply {
    let received = std::time::Instant::now();
    let outcome = |r: Result<bool, OpError>| {
        Reply::Op(match r {
            Ok(x) => Outcome::Done(x),
            Err(OpError::NotFound(_)) => Outcome::NotFound,
            Err(e) => Outcome::Failed {
                refused: !matches!(e, OpError::Topic(_)),
                message: e.to_string(),
            },
        })
    };
    match req {
        Request::Query { q, want } => {
            let page = Page {
                page: 1,
                limit: want.clamp(1, MAX_ROWS),
            };
            let mut r = b.registry.query(&q, page, &b.config());
            stamp(b, &mut r.items);
            Reply::Page {
                count: r.count,
                items: r.items,
            }
        }
        Request::Subscriptions { q, want } => {
            let page = Page {
                page: 1,
                limit: want.clamp(1, MAX_ROWS),
            };
            let mut r = b.registry.subscriptions(&q, page);
            let node = b.cluster().map_or(String::new(), |c| c.node().to_string());
            for e in &mut r.items {
                e.node = Some(node.clone());
            }
            Reply::Subscriptions {
                node,
                count: r.count,
                items: r.items,
            }
        }
        Request::Messages {
            tenant,
            client_id,
            inflight,
            after,
            limit,
        } => Reply::Messages(b.registry.get(&tenant, &client_id).map(|s| {
            let limit = limit.clamp(1, MAX_ROWS);
            s.state.lock().messages_after(inflight, after, limit)
        })),
        Request::QueryAfter { q, after, limit } => {
            let limit = limit.clamp(1, MAX_ROWS);
            let mut p = b
                .registry
                .query_after(&q, after.as_ref(), limit, &b.config());
            stamp(b, &mut p.items);
            Reply::After {
                items: p.items,
                next: p.next,
            }
        }
        Request::Get { tenant, client_id } => Reply::Session(
            b.registry
                .snapshot(&tenant, &client_id, &b.config())
                .map(|mut s| {
                    stamp(b, std::slice::from_mut(&mut s));
                    Box::new(s)
                }),
        ),
        Request::Kick {
            tenant,
            client_id,
            user_id,
            via,
            end_session,
        } => {
            let target = match (client_id, user_id) {
                (Some(c), _) => KickTarget::ClientId(c),
                (None, Some(user_id)) => {
                    // A kind this node does not know kicks nothing, rather than all.
                    let only = match via.as_deref().map(Via::parse) {
                        Some(None) => return Reply::Count(0),
                        v => v.flatten(),
                    };
                    KickTarget::UserId { user_id, only }
                }
                (None, None) => return Reply::Count(0),
            };
            Reply::Count(b.kick(&tenant, &target, end_session))
        }
        Request::Subscribe {
            tenant,
            client_id,
            filter,
            qos,
            nl,
            rap,
            rh,
        } => {
            let Ok(qos) = rmqtt_codec::types::QoS::try_from(qos) else {
                return outcome(Ok(false));
            };
            let opts = SubOptions {
                qos,
                no_local: nl,
                retain_as_published: rap,
                retain_handling: rh.min(2),
                sub_id: None,
            };
            outcome(b.subscribe_for(&tenant, &client_id, &filter, opts).await)
        }
        Request::Unsubscribe {
            tenant,
            client_id,
            filter,
        } => outcome(b.unsubscribe_for(&tenant, &client_id, &filter)),
        Request::Expire { tenant, secs } => Reply::Count(b.expire_inactive(&tenant, secs)),
        Request::Take {
            tenant,
            client_id,
            clean_start,
        } => {
            // The asker waits TIMEOUT from sending; a margin for the way here.
            let wait = TIMEOUT - Duration::from_millis(250);
            let moved = takeover::give_up(b, &tenant, &client_id, clean_start, received, wait);
            Reply::Taken(moved.await.map(Box::new))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikeys::ApiKeyStore;
    use crate::config::Config;
    use crate::session::{ClientInfo, Session};

    #[tokio::test]
    async fn a_kick_limited_to_a_kind_this_node_does_not_know_kicks_nothing() {
        let b = Broker::new(Config::default(), ApiKeyStore::default());
        let info = ClientInfo {
            user_id: Some("u".into()),
            ..ClientInfo::default()
        };
        b.registry.insert(Arc::new(Session::new(
            1,
            "default".into(),
            "c".into(),
            info,
        )));
        let kick = |via: &str| Request::Kick {
            tenant: "default".into(),
            client_id: None,
            user_id: Some("u".into()),
            via: Some(via.into()),
            end_session: true,
        };
        assert!(matches!(
            answer(&b, kick("carrier-pigeon")).await,
            Reply::Count(0)
        ));
        assert!(b.registry.get("default", "c").is_some());
        assert!(matches!(answer(&b, kick("tcp")).await, Reply::Count(1)));
        assert!(b.registry.get("default", "c").is_none());
    }
}
