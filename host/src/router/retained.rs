//! Retained messages: a topic tree per tenant so a wildcard subscribe finds its matches
//! without scanning every retained topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::message::Message;

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    msg: Option<Arc<Message>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.msg.is_none()
    }

    fn remove(&mut self, levels: &[&str]) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return self.msg.take().is_some();
        };
        let Some(child) = self.children.get_mut(*first) else {
            return false;
        };
        let found = child.remove(rest);
        if child.is_empty() {
            self.children.remove(*first);
        }
        found
    }

    fn all(&self, now: Instant, out: &mut Vec<Arc<Message>>) {
        if let Some(m) = &self.msg {
            if !m.expired(now) {
                out.push(m.clone());
            }
        }
        for c in self.children.values() {
            c.all(now, out);
        }
    }

    fn find(&self, filter: &[&str], root: bool, now: Instant, out: &mut Vec<Arc<Message>>) {
        let Some((first, rest)) = filter.split_first() else {
            if let Some(m) = &self.msg {
                if !m.expired(now) {
                    out.push(m.clone());
                }
            }
            return;
        };
        match *first {
            "#" => {
                // `a/#` also matches `a` itself.
                if let Some(m) = &self.msg {
                    if !root && !m.expired(now) {
                        out.push(m.clone());
                    }
                }
                for (k, c) in &self.children {
                    if !(root && k.starts_with('$')) {
                        c.all(now, out);
                    }
                }
            }
            "+" => {
                for (k, c) in &self.children {
                    if !(root && k.starts_with('$')) {
                        c.find(rest, false, now, out);
                    }
                }
            }
            level => {
                if let Some(c) = self.children.get(level) {
                    c.find(rest, false, now, out);
                }
            }
        }
    }
}

/// Retained messages of every tenant.
#[derive(Debug, Default)]
pub struct RetainedStore {
    tenants: RwLock<HashMap<Arc<str>, Node>>,
    count: AtomicUsize,
}

impl RetainedStore {
    /// Stores `msg` as the retained message of its topic; an empty payload clears it.
    pub fn set(&self, msg: Arc<Message>) {
        let mut tenants = self.tenants.write();
        if msg.payload.is_empty() {
            if let Some(root) = tenants.get_mut(&msg.tenant) {
                let levels: Vec<&str> = msg.topic.split('/').collect();
                if root.remove(&levels) {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                }
                if root.is_empty() {
                    tenants.remove(&msg.tenant);
                }
            }
            return;
        }
        let mut node = tenants.entry(msg.tenant.clone()).or_default();
        for level in msg.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.msg.replace(msg).is_none() {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Retained messages matching `filter` (not expired).
    pub fn matching(&self, tenant: &str, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        if let Some(root) = self.tenants.read().get(tenant) {
            let levels: Vec<&str> = filter.split('/').collect();
            root.find(&levels, true, Instant::now(), &mut out);
        }
        out
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rmqtt_codec::types::QoS;

    fn msg(topic: &'static str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            "default".into(),
            topic.into(),
            Bytes::from_static(payload.as_bytes()),
            QoS::AtMostOnce,
            true,
        ))
    }

    fn topics(s: &RetainedStore, f: &str) -> Vec<String> {
        let mut v: Vec<String> = s
            .matching("default", f)
            .iter()
            .map(|m| m.topic.to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn set_match_clear() {
        let s = RetainedStore::default();
        s.set(msg("a", "1"));
        s.set(msg("a/b", "2"));
        s.set(msg("a/c/d", "3"));
        s.set(msg("$SYS/x", "4"));
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&s, "#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&s, "+"), vec!["a"]);
        assert_eq!(topics(&s, "a/+"), vec!["a/b"]);
        assert_eq!(topics(&s, "$SYS/#"), vec!["$SYS/x"]);
        s.set(msg("a/b", ""));
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/c/d"]);
        assert_eq!(s.len(), 3);
        s.set(msg("a", "replaced"));
        assert_eq!(s.len(), 3);
    }
}
