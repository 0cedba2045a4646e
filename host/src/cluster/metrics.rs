//! The cluster's lines on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Cluster;
use crate::broker::Broker;

impl Cluster {
    /// Prometheus lines for the cluster.
    pub fn metrics(&self, b: &Broker, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.counters;
        let r = &self.retained.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let running = self
            .nodes(b)
            .iter()
            .filter(|n| n.state == "running")
            .count();
        for (name, kind, help, v) in [
            (
                "apiary_cluster_nodes_running",
                "gauge",
                "Nodes heard from within node_timeout_ms, this one included.",
                running as u64,
            ),
            (
                "apiary_cluster_subjects",
                "gauge",
                "NATS subjects this node listens on.",
                self.interest.lock().len() as u64,
            ),
            (
                "apiary_cluster_queue_subscriptions",
                "gauge",
                "NATS queue subscriptions this node holds for shared subscriptions.",
                self.queue_count() as u64,
            ),
            (
                "apiary_cluster_forwarded_total",
                "counter",
                "Messages sent to NATS for other nodes.",
                ld(&c.forwarded),
            ),
            (
                "apiary_cluster_forward_dropped_total",
                "counter",
                "Messages not sent to other nodes: max_pending were waiting.",
                ld(&c.forward_dropped),
            ),
            (
                "apiary_cluster_forward_failed_total",
                "counter",
                "Messages the NATS client refused.",
                ld(&c.forward_failed),
            ),
            (
                "apiary_cluster_subject_too_long_total",
                "counter",
                "Topics or filters too long for a NATS subject (kept local).",
                ld(&c.subject_too_long),
            ),
            (
                "apiary_cluster_received_total",
                "counter",
                "Messages from other nodes routed here.",
                ld(&c.received),
            ),
            (
                "apiary_cluster_duplicates_total",
                "counter",
                "Copies of a message already routed here (overlapping filters).",
                ld(&c.duplicates),
            ),
            (
                "apiary_cluster_slow_consumer_total",
                "counter",
                "Times the NATS client dropped messages for this node because it read them too slowly (no flow control between nodes yet).",
                ld(&self.slow),
            ),
            (
                "apiary_cluster_too_late_total",
                "counter",
                "Messages dropped: past the dedup window, they could not be told from copies.",
                ld(&c.too_late),
            ),
            (
                "apiary_cluster_retained_written_total",
                "counter",
                "Retained messages of this node written to the cluster's bucket.",
                ld(&r.written),
            ),
            (
                "apiary_cluster_retained_failed_total",
                "counter",
                "Retained messages the cluster's bucket refused (e.g. past NATS max_payload).",
                ld(&r.failed),
            ),
            (
                "apiary_cluster_retained_dropped_total",
                "counter",
                "Retained messages kept on this node only: queue full or no bucket (JetStream off).",
                ld(&r.dropped),
            ),
            (
                "apiary_cluster_retained_applied_total",
                "counter",
                "Other nodes' retained messages applied here.",
                ld(&r.applied),
            ),
            (
                "apiary_cluster_retained_undecodable_total",
                "counter",
                "Entries of the retained bucket that could not be read.",
                ld(&r.undecodable),
            ),
            (
                "apiary_cluster_rpc_served_total",
                "counter",
                "Admin requests about this node's sessions served for other nodes.",
                ld(&self.rpc.served),
            ),
            (
                "apiary_cluster_rpc_unanswered_total",
                "counter",
                "Admin requests to other nodes left without an answer in time.",
                ld(&self.rpc.unanswered),
            ),
            (
                "apiary_cluster_wills_published_total",
                "counter",
                "Wills of dead nodes' sessions this node published.",
                ld(&self.wills.counters.published),
            ),
            (
                "apiary_cluster_wills_failed_total",
                "counter",
                "Pending-will changes not stored in the cluster's bucket (queue full or refused).",
                ld(&self.wills.counters.failed) + ld(&self.wills.counters.dropped),
            ),
            (
                "apiary_cluster_sessions_adopted_total",
                "counter",
                "Persistent sessions of dead nodes adopted here.",
                ld(&self.sessions.counters.adopted),
            ),
            (
                "apiary_cluster_sessions_dropped_total",
                "counter",
                "Sessions restored at start that another node had adopted meanwhile, dropped.",
                ld(&self.sessions.counters.dropped),
            ),
            (
                "apiary_cluster_sessions_failed_total",
                "counter",
                "Persistent sessions not kept in (or not read from) the cluster's bucket.",
                ld(&self.sessions.counters.failed),
            ),
            (
                "apiary_cluster_undecodable_total",
                "counter",
                "Cluster messages that could not be read.",
                ld(&c.undecodable),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        self.kv_metrics(out);
    }
}
