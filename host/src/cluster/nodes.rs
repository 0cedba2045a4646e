//! Membership: each node says it is alive on `apiary.node.hb` every `heartbeat_ms` and
//! hears the others; a node not heard from for `node_timeout_ms` is down (its wills are
//! seen to, `wills.rs`); `GET /cluster` shows what this node knows.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::broker::Broker;

/// Subject of the nodes' heartbeats.
const HEARTBEAT: &str = "apiary.node.hb";

/// What one node says of itself in its heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Beat {
    node: String,
    origin: String,
    started_ms: u64,
    sessions: u64,
    connections: u64,
}

/// What a beat told.
enum Heard {
    /// Nothing new.
    Known,
    /// A node new here, or back after being down.
    New,
    /// A node back as a new incarnation (its old one is gone).
    Back { node: String, origin: String },
}

/// Another node, as last heard.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    beat: Beat,
    seen: Instant,
    /// Found not heard from for `node_timeout_ms` (its wills were seen to).
    down: bool,
}

/// One node as `GET /cluster` shows it.
#[derive(Debug, Serialize)]
pub struct NodeView {
    /// Its name.
    pub node: String,
    /// `running`, or `down` when not heard from for `node_timeout_ms`.
    pub state: &'static str,
    /// Whether it is the node answering.
    #[serde(rename = "self")]
    pub this: bool,
    /// Milliseconds since it was last heard from.
    pub last_seen_ms: u64,
    /// When it started (Unix ms).
    pub started_at: u64,
    /// Its sessions, as it last said.
    pub sessions: u64,
    /// Its open connections, as it last said.
    pub connections: u64,
}

impl Cluster {
    /// Says this node is alive every `heartbeat_ms`, and hears the others.
    pub(super) async fn heartbeats(self: Arc<Self>, b: Broker) {
        let mut beats = match self.client.subscribe(HEARTBEAT).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: cannot hear other nodes");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.heartbeat_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let beat = Beat {
                        node: self.node.clone(),
                        origin: self.origin.clone(),
                        started_ms: self.started_ms,
                        sessions: b.registry.len() as u64,
                        connections: b.registry.connected_count() as u64,
                    };
                    if let Ok(bytes) = rmp_serde::to_vec_named(&beat) {
                        let _ = self.client.publish(HEARTBEAT, bytes.into()).await;
                    }
                    self.refresh_max_payload();
                    for node in self.newly_down() {
                        self.see_to_wills(&b, node, None);
                    }
                }
                m = beats.next() => match m {
                    // A node new to this one hears from it at once, not a beat later:
                    // takeovers and admin calls ask only the nodes they know.
                    Some(m) => match self.heard(&m.payload) {
                        Heard::New => tick.reset_immediately(),
                        Heard::Back { node, origin } => {
                            tick.reset_immediately();
                            self.see_to_wills(&b, node, Some(origin));
                        }
                        Heard::Known => {}
                    },
                    None => return,
                },
                _ = b.stopped() => return,
            }
        }
    }

    /// Notes another node's beat.
    fn heard(&self, payload: &[u8]) -> Heard {
        let Ok(beat) = rmp_serde::from_slice::<Beat>(payload) else {
            self.counters.undecodable.fetch_add(1, Ordering::Relaxed);
            return Heard::Known;
        };
        if beat.node == self.node {
            if beat.origin != self.origin {
                tracing::warn!(node = %beat.node, "cluster: another node uses this node's name");
            }
            return Heard::Known;
        }
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        let mut peers = self.peers.lock();
        let new = match peers.get(&beat.node) {
            Some(p) if p.beat.origin != beat.origin => {
                tracing::info!(node = %beat.node, "cluster: node (re)joined");
                // Its old incarnation sends nothing more.
                self.seen.lock().forget(&p.beat.origin);
                Heard::Back {
                    node: beat.node.clone(),
                    origin: beat.origin.clone(),
                }
            }
            Some(p) if p.seen.elapsed() >= timeout => Heard::New,
            Some(_) => Heard::Known,
            None => {
                tracing::info!(node = %beat.node, "cluster: node joined");
                Heard::New
            }
        };
        peers.insert(
            beat.node.clone(),
            Peer {
                beat,
                seen: Instant::now(),
                down: false,
            },
        );
        new
    }

    /// Nodes not heard from for `node_timeout_ms` since the last call.
    fn newly_down(&self) -> Vec<String> {
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        let mut peers = self.peers.lock();
        let mut out = Vec::new();
        for p in peers.values_mut() {
            if !p.down && p.seen.elapsed() >= timeout {
                p.down = true;
                tracing::warn!(node = %p.beat.node, "cluster: node down");
                out.push(p.beat.node.clone());
            }
        }
        out
    }

    /// Publishes the wills `node` left (but its incarnation `live`'s) and, when it is
    /// down, adopts its persistent sessions, when this node is the first by name of
    /// those running (one node does it).
    fn see_to_wills(self: &Arc<Self>, b: &Broker, node: String, live: Option<String>) {
        let first = self
            .running_peers()
            .iter()
            .filter(|p| **p != node)
            .all(|p| *p > self.node);
        if !first {
            return;
        }
        let (c, b) = (self.clone(), b.clone());
        tokio::spawn(async move {
            // Down, not back: its persistent sessions live on here, first, so that a
            // will still waiting for its delay waits here rather than going out now.
            let adopted = match live {
                None => c.sessions.adopt(&b, &c, &node).await,
                Some(_) => Default::default(),
            };
            c.wills.orphaned(&b, &node, live.as_deref(), &adopted).await;
        });
    }

    /// The other nodes heard from within `node_timeout_ms`.
    pub(super) fn running_peers(&self) -> Vec<String> {
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        self.peers
            .lock()
            .values()
            .filter(|p| p.seen.elapsed() < timeout)
            .map(|p| p.beat.node.clone())
            .collect()
    }

    /// Every node heard of, this one first.
    pub fn nodes(&self, b: &Broker) -> Vec<NodeView> {
        let timeout = Duration::from_millis(self.settings.node_timeout_ms);
        let mut out = vec![NodeView {
            node: self.node.clone(),
            state: "running",
            this: true,
            last_seen_ms: 0,
            started_at: self.started_ms,
            sessions: b.registry.len() as u64,
            connections: b.registry.connected_count() as u64,
        }];
        for p in self.peers.lock().values() {
            let age = p.seen.elapsed();
            out.push(NodeView {
                node: p.beat.node.clone(),
                state: if age < timeout { "running" } else { "down" },
                this: false,
                last_seen_ms: age.as_millis() as u64,
                started_at: p.beat.started_ms,
                sessions: p.beat.sessions,
                connections: p.beat.connections,
            });
        }
        out
    }
}
