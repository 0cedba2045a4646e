//! Shared subscriptions across nodes (`$share/<group>/<filter>`): every node holding
//! members of a group listens on the filter's subjects in one NATS queue group per
//! group and filter, so NATS hands each message to one node, whose router picks one of
//! its members. The queue subscriptions live on a connection with echo, so a node's own
//! publishes are balanced over the whole cluster too; a publishing node therefore leaves
//! shared groups out of its local routing whenever it hands the message to NATS.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{subject, Cluster};
use crate::message::Message;

/// A shared subscription as NATS carries it.
#[derive(Debug)]
pub(super) struct QueueKey {
    /// The MQTT share group.
    pub group: String,
    /// The filter, without `$share/<group>/`.
    pub filter: String,
    /// The NATS queue group.
    pub name: String,
}

impl Cluster {
    /// A member of `group` on `filter` joined here: listen in its queue group.
    pub(super) fn queue_add(&self, tenant: &str, group: &str, filter: &str) {
        let Some(subjects) = subject::of_filter(tenant, filter) else {
            self.counters
                .subject_too_long
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let key = Arc::new(QueueKey {
            group: group.to_string(),
            filter: filter.to_string(),
            name: subject::queue_name(group, filter),
        });
        let mut queues = self.queues.lock();
        for s in subjects {
            let k = (s, key.name.clone());
            if let Some((n, _)) = queues.get_mut(&k) {
                *n += 1;
                continue;
            }
            let task = self.listen(&self.shared_client, k.0.clone(), Some(key.clone()));
            queues.insert(k, (1, task));
        }
    }

    /// A member of `group` on `filter` left: leave its queue group with the last one.
    pub(super) fn queue_remove(&self, tenant: &str, group: &str, filter: &str) {
        let Some(subjects) = subject::of_filter(tenant, filter) else {
            return;
        };
        let name = subject::queue_name(group, filter);
        let mut queues = self.queues.lock();
        for s in subjects {
            let k = (s, name.clone());
            if let Some((n, task)) = queues.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    task.abort();
                    queues.remove(&k);
                }
            }
        }
    }

    /// Whether NATS serves the shared groups for `msg`: it goes out (both connections up,
    /// under the server's `max_payload`, its topic fits a subject). When not, the
    /// publishing node serves its own groups. A message dropped at a full queue to NATS
    /// (`apiary_cluster_forward_dropped_total`) reaches no member of a group.
    pub fn serves_shared(&self, msg: &Message) -> bool {
        use async_nats::connection::State::Connected;
        self.client.connection_state() == Connected
            && self.shared_client.connection_state() == Connected
            // What NATS refuses (the client's `max_payload`, 1 MiB by default) stays here.
            && msg.payload.len() + msg.topic.len() + 512 <= self.max_payload()
            && subject::fits(&msg.tenant, &msg.topic)
    }

    /// The NATS server's `max_payload`, as last read (1 MiB until known).
    pub(super) fn max_payload(&self) -> usize {
        match self.max_payload.load(Ordering::Relaxed) {
            0 => 1 << 20,
            n => n,
        }
    }

    /// Reads the server's `max_payload` again (cheap to read, dear to ask for: the
    /// client clones its whole server info).
    pub(super) fn refresh_max_payload(&self) {
        let n = self.client.server_info().max_payload;
        self.max_payload.store(n, Ordering::Relaxed);
    }

    /// How many queue subscriptions this node holds.
    pub(super) fn queue_count(&self) -> usize {
        self.queues.lock().len()
    }
}
