//! Retained messages: a topic tree per tenant so a wildcard subscribe finds its matches
//! without scanning every retained topic, with each tenant's count and payload bytes
//! kept beside it so its limits are checked without a walk. Expired messages are never
//! served and are removed by [`RetainedStore::prune_expired`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytestring::ByteString;
use parking_lot::RwLock;

use crate::config::RetainedConfig as Limits;
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

    fn get(&self, levels: &[&str]) -> Option<&Arc<Message>> {
        match levels.split_first() {
            None => self.msg.as_ref(),
            Some((first, rest)) => self.children.get(*first)?.get(rest),
        }
    }

    fn remove(&mut self, levels: &[&str]) -> Option<Arc<Message>> {
        let Some((first, rest)) = levels.split_first() else {
            return self.msg.take();
        };
        let child = self.children.get_mut(*first)?;
        let found = child.remove(rest);
        if child.is_empty() {
            self.children.remove(*first);
        }
        found
    }

    /// Removes expired messages below this node; returns them.
    fn prune(&mut self, now: Instant, out: &mut Vec<Arc<Message>>) {
        if self.msg.as_ref().is_some_and(|m| m.expired(now)) {
            out.extend(self.msg.take());
        }
        self.children.retain(|_, c| {
            c.prune(now, out);
            !c.is_empty()
        });
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

/// One tenant's retained messages and what they hold.
#[derive(Debug, Default)]
struct Tenant {
    root: Node,
    count: usize,
    bytes: usize,
}

/// Why a retained message was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RetainedRefused {
    /// The tenant holds as many retained messages as it may.
    #[error("the tenant's retained messages are at their limit ({0})")]
    Count(usize),
    /// The message would take the tenant's retained payloads over their byte limit.
    #[error("the tenant's retained payloads would exceed their limit of {0} bytes")]
    Bytes(usize),
}

/// Retained messages of every tenant.
#[derive(Debug, Default)]
pub struct RetainedStore {
    tenants: RwLock<HashMap<Arc<str>, Tenant>>,
    count: AtomicUsize,
    bytes: AtomicUsize,
}

fn levels(topic: &str) -> Vec<&str> {
    topic.split('/').collect()
}

impl RetainedStore {
    /// Stores `msg` as the retained message of its topic; an empty payload clears it.
    /// Refused when it would take its tenant over `limits` (0 = unlimited; replacing a
    /// topic's message counts only the change in bytes; clearing is always allowed).
    /// `stored` runs under the tree's lock once the change is made, so changes reach the
    /// store in the order they were made here.
    pub fn set(
        &self,
        msg: Arc<Message>,
        limits: &Limits,
        stored: impl FnOnce(&Arc<Message>),
    ) -> Result<(), RetainedRefused> {
        let mut tenants = self.tenants.write();
        let lv = levels(&msg.topic);
        if msg.payload.is_empty() {
            if let Some(t) = tenants.get_mut(&msg.tenant) {
                if let Some(old) = t.root.remove(&lv) {
                    self.account(t, -1, -(old.payload.len() as isize));
                }
                if t.root.is_empty() {
                    tenants.remove(&msg.tenant);
                }
            }
            stored(&msg);
            return Ok(());
        }
        let (count, bytes, old) = match tenants.get(&msg.tenant) {
            Some(t) => (t.count, t.bytes, t.root.get(&lv).map(|m| m.payload.len())),
            None => (0, 0, None),
        };
        let new_bytes = bytes - old.unwrap_or(0) + msg.payload.len();
        if limits.max_messages > 0 && old.is_none() && count + 1 > limits.max_messages {
            return Err(RetainedRefused::Count(limits.max_messages));
        }
        if limits.max_bytes > 0 && new_bytes > limits.max_bytes && new_bytes > bytes {
            return Err(RetainedRefused::Bytes(limits.max_bytes));
        }
        let t = tenants.entry(msg.tenant.clone()).or_default();
        let len = msg.payload.len() as isize;
        let mut node = &mut t.root;
        for level in &lv {
            node = node.children.entry((*level).into()).or_default();
        }
        let replaced = node.msg.replace(msg.clone());
        let (dc, db) = match replaced {
            Some(o) => (0, len - o.payload.len() as isize),
            None => (1, len),
        };
        self.account(t, dc, db);
        stored(&msg);
        Ok(())
    }

    fn account(&self, t: &mut Tenant, count: isize, bytes: isize) {
        t.count = t.count.saturating_add_signed(count);
        t.bytes = t.bytes.saturating_add_signed(bytes);
        if count >= 0 {
            self.count.fetch_add(count as usize, Ordering::Relaxed);
        } else {
            self.count
                .fetch_sub(count.unsigned_abs(), Ordering::Relaxed);
        }
        if bytes >= 0 {
            self.bytes.fetch_add(bytes as usize, Ordering::Relaxed);
        } else {
            self.bytes
                .fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Retained messages matching `filter` (not expired).
    pub fn matching(&self, tenant: &str, filter: &str) -> Vec<Arc<Message>> {
        let mut out = Vec::new();
        if let Some(t) = self.tenants.read().get(tenant) {
            t.root.find(&levels(filter), true, Instant::now(), &mut out);
        }
        out
    }

    /// Removes every expired message, calling `removed` for each under the tree's lock
    /// (so a new message set on the same topic right after reaches the store after the
    /// removal); returns how many.
    pub fn prune_expired(
        &self,
        now: Instant,
        mut removed: impl FnMut(&Arc<str>, &ByteString),
    ) -> usize {
        let mut n = 0;
        let mut tenants = self.tenants.write();
        for t in tenants.values_mut() {
            let mut out = Vec::new();
            t.root.prune(now, &mut out);
            let bytes: usize = out.iter().map(|m| m.payload.len()).sum();
            self.account(t, -(out.len() as isize), -(bytes as isize));
            for m in &out {
                removed(&m.tenant, &m.topic);
            }
            n += out.len();
        }
        tenants.retain(|_, t| !t.root.is_empty());
        n
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Payload bytes of every retained message.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// One tenant's retained messages and their payload bytes.
    pub fn tenant_usage(&self, tenant: &str) -> (usize, usize) {
        self.tenants
            .read()
            .get(tenant)
            .map_or((0, 0), |t| (t.count, t.bytes))
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

    fn msg(tenant: &'static str, topic: &'static str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            tenant.into(),
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

    const NONE: Limits = Limits {
        max_messages: 0,
        max_bytes: 0,
        prune_interval_secs: 0,
    };

    #[test]
    fn set_match_clear() {
        let s = RetainedStore::default();
        s.set(msg("default", "a", "1"), &NONE, |_| {}).unwrap();
        s.set(msg("default", "a/b", "2"), &NONE, |_| {}).unwrap();
        s.set(msg("default", "a/c/d", "3"), &NONE, |_| {}).unwrap();
        s.set(msg("default", "$SYS/x", "4"), &NONE, |_| {}).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&s, "#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(topics(&s, "+"), vec!["a"]);
        assert_eq!(topics(&s, "a/+"), vec!["a/b"]);
        assert_eq!(topics(&s, "$SYS/#"), vec!["$SYS/x"]);
        s.set(msg("default", "a/b", ""), &NONE, |_| {}).unwrap();
        assert_eq!(topics(&s, "a/#"), vec!["a", "a/c/d"]);
        assert_eq!(s.len(), 3);
        s.set(msg("default", "a", "replaced"), &NONE, |_| {})
            .unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), "replaced".len() + 2);
    }

    #[test]
    fn limits_are_per_tenant_and_replacements_fit() {
        let s = RetainedStore::default();
        let l = &Limits {
            max_messages: 2,
            max_bytes: 10,
            prune_interval_secs: 0,
        };
        s.set(msg("t1", "a", "12345"), l, |_| {}).unwrap();
        s.set(msg("t1", "b", "1"), l, |_| {}).unwrap();
        assert_eq!(
            s.set(msg("t1", "c", "1"), l, |_| {}),
            Err(RetainedRefused::Count(2))
        );
        s.set(msg("t2", "c", "1"), l, |_| {})
            .expect("another tenant has its own limit");
        s.set(msg("t1", "a", "123456789"), l, |_| {})
            .expect("a replacement that fits");
        assert_eq!(
            s.set(msg("t1", "b", "12"), l, |_| {}),
            Err(RetainedRefused::Bytes(10))
        );
        s.set(msg("t1", "a", ""), l, |_| {}).unwrap();
        s.set(msg("t1", "c", "1"), l, |_| {})
            .expect("room again after a clear");
        assert_eq!(s.tenant_usage("t1"), (2, 2));
        let big = Limits { max_bytes: 1, ..*l };
        assert!(s.set(msg("t3", "a", "too big"), &big, |_| {}).is_err());
        assert!(
            !s.tenants.read().contains_key("t3"),
            "a refusal leaves nothing behind"
        );
        assert!(s
            .tenants
            .read()
            .get("t1")
            .unwrap()
            .root
            .get(&["z"])
            .is_none());
    }

    #[test]
    fn expired_messages_are_pruned_with_their_nodes() {
        let s = RetainedStore::default();
        let mut m = Message::new(
            "default".into(),
            "x/y/z".into(),
            Bytes::from_static(b"gone"),
            QoS::AtMostOnce,
            true,
        );
        m.expires_at = Some(Instant::now());
        s.set(Arc::new(m), &NONE, |_| {}).unwrap();
        s.set(msg("default", "x/keep", "k"), &NONE, |_| {}).unwrap();
        let mut gone = Vec::new();
        let n = s.prune_expired(
            Instant::now() + std::time::Duration::from_millis(1),
            |_, t| gone.push(t.to_string()),
        );
        assert_eq!((n, gone), (1, vec!["x/y/z".to_string()]));
        assert_eq!((s.len(), s.bytes()), (1, 1));
        assert!(!s.tenants.read()["default"].root.children["x"]
            .children
            .contains_key("y"));
    }
}
