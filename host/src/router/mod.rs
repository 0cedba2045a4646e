//! Subscription routing: a topic-level trie per tenant mapping filters to subscribers,
//! with shared-subscription groups served round-robin. Matching takes a read lock only;
//! subscribe and unsubscribe take the write lock briefly.

pub mod retained;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::session::{Session, SubOptions};
use crate::topic::ParsedFilter;

/// One subscriber of a filter.
#[derive(Debug, Clone)]
pub struct Subscriber {
    /// The subscribing session.
    pub session: Arc<Session>,
    /// Its options for this filter.
    pub opts: SubOptions,
}

#[derive(Debug, Default)]
struct SharedGroup {
    name: Box<str>,
    members: Vec<Subscriber>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    subs: Vec<Subscriber>,
    shared: Vec<SharedGroup>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subs.is_empty() && self.shared.is_empty()
    }

    fn collect(&self, shared: bool, out: &mut Vec<Subscriber>) {
        out.extend(self.subs.iter().cloned());
        if shared {
            for g in &self.shared {
                if let Some(s) = pick(g) {
                    out.push(s.clone());
                }
            }
        }
    }

    fn walk(&self, levels: &[&str], dollar: bool, shared: bool, out: &mut Vec<Subscriber>) {
        if !dollar {
            if let Some(n) = self.children.get("#") {
                n.collect(shared, out);
            }
        }
        let Some((first, rest)) = levels.split_first() else {
            self.collect(shared, out);
            return;
        };
        if let Some(n) = self.children.get(*first) {
            n.walk(rest, false, shared, out);
        }
        if !dollar {
            if let Some(n) = self.children.get("+") {
                n.walk(rest, false, shared, out);
            }
        }
    }

    /// Removes `session_id` from the node at `levels`; prunes empty nodes. Returns whether found.
    fn remove(&mut self, levels: &[&str], group: Option<&str>, session_id: u64) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return match group {
                None => remove_sub(&mut self.subs, session_id),
                Some(g) => {
                    let Some(i) = self.shared.iter().position(|x| &*x.name == g) else {
                        return false;
                    };
                    let found = remove_sub(&mut self.shared[i].members, session_id);
                    if self.shared[i].members.is_empty() {
                        self.shared.swap_remove(i);
                    }
                    found
                }
            };
        };
        let Some(child) = self.children.get_mut(*first) else {
            return false;
        };
        let found = child.remove(rest, group, session_id);
        if child.is_empty() {
            self.children.remove(*first);
        }
        found
    }
}

fn remove_sub(v: &mut Vec<Subscriber>, session_id: u64) -> bool {
    match v.iter().position(|s| s.session.id == session_id) {
        Some(i) => {
            v.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Round-robin over the group, preferring members that are online.
fn pick(g: &SharedGroup) -> Option<&Subscriber> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.fetch_add(1, Ordering::Relaxed);
    for k in 0..n {
        let s = &g.members[(start + k) % n];
        if s.session.is_online() {
            if k > 0 {
                g.next.fetch_add(k, Ordering::Relaxed);
            }
            return Some(s);
        }
    }
    Some(&g.members[start % n])
}

/// The subscription table of every tenant.
#[derive(Debug, Default)]
pub struct Router {
    tenants: RwLock<HashMap<Arc<str>, Node>>,
}

impl Router {
    /// Adds or replaces a subscription. Returns true if it is new for this session.
    pub fn subscribe(&self, tenant: &Arc<str>, filter: &ParsedFilter<'_>, sub: Subscriber) -> bool {
        let mut tenants = self.tenants.write();
        let mut node = tenants.entry(tenant.clone()).or_default();
        for level in filter.filter.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        let list = match filter.group {
            None => &mut node.subs,
            Some(g) => {
                let i = match node.shared.iter().position(|x| &*x.name == g) {
                    Some(i) => i,
                    None => {
                        node.shared.push(SharedGroup {
                            name: g.into(),
                            ..Default::default()
                        });
                        node.shared.len() - 1
                    }
                };
                &mut node.shared[i].members
            }
        };
        match list.iter_mut().find(|s| s.session.id == sub.session.id) {
            Some(existing) => {
                *existing = sub;
                false
            }
            None => {
                list.push(sub);
                true
            }
        }
    }

    /// Removes a subscription. Returns whether it existed.
    pub fn unsubscribe(&self, tenant: &str, filter: &ParsedFilter<'_>, session_id: u64) -> bool {
        let mut tenants = self.tenants.write();
        let Some(root) = tenants.get_mut(tenant) else {
            return false;
        };
        let levels: Vec<&str> = filter.filter.split('/').collect();
        let found = root.remove(&levels, filter.group, session_id);
        if root.is_empty() {
            tenants.remove(tenant);
        }
        found
    }

    /// Appends every subscriber whose filter matches `topic` (one member per shared group).
    /// A session with several matching filters appears once per filter.
    pub fn matches(&self, tenant: &str, topic: &str, out: &mut Vec<Subscriber>) {
        self.matches_with(tenant, topic, true, out);
    }

    /// [`Router::matches`], leaving out shared groups unless `shared` (in a cluster the
    /// nodes' groups are served through NATS queue groups, one member cluster-wide).
    pub fn matches_with(&self, tenant: &str, topic: &str, shared: bool, out: &mut Vec<Subscriber>) {
        let tenants = self.tenants.read();
        let Some(root) = tenants.get(tenant) else {
            return;
        };
        // Topics have at most a few dozen levels; avoid a heap allocation for the split.
        let mut buf: [&str; 32] = [""; 32];
        let mut n = 0;
        let mut heap: Vec<&str> = Vec::new();
        for (i, l) in topic.split('/').enumerate() {
            if i < 32 {
                buf[i] = l;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&buf);
                }
                heap.push(l);
            }
            n = i + 1;
        }
        let levels = if n <= 32 { &buf[..n] } else { &heap[..] };
        root.walk(levels, topic.starts_with('$'), shared, out);
    }

    /// One member (round-robin, online first) of the shared subscription `group` on
    /// `filter` (without `$share/`), if it has any here.
    pub fn pick_shared(&self, tenant: &str, group: &str, filter: &str) -> Option<Subscriber> {
        let tenants = self.tenants.read();
        let mut node = tenants.get(tenant)?;
        for level in filter.split('/') {
            node = node.children.get(level)?;
        }
        let g = node.shared.iter().find(|g| &*g.name == group)?;
        pick(g).cloned()
    }

    /// Tenants that currently have subscriptions.
    pub fn tenants(&self) -> Vec<Arc<str>> {
        self.tenants.read().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ClientInfo;
    use crate::topic::parse_filter;
    use rmqtt_codec::types::QoS;

    pub(crate) fn session(id: u64) -> Arc<Session> {
        Arc::new(Session::new(
            id,
            "default".into(),
            format!("c{id}").into(),
            ClientInfo::default(),
        ))
    }

    fn sub(r: &Router, id: u64, f: &str) -> Arc<Session> {
        let s = session(id);
        let t: Arc<str> = "default".into();
        r.subscribe(
            &t,
            &parse_filter(f, 32).unwrap(),
            Subscriber {
                session: s.clone(),
                opts: SubOptions::qos(QoS::AtLeastOnce),
            },
        );
        s
    }

    fn ids(r: &Router, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        r.matches("default", topic, &mut out);
        let mut v: Vec<u64> = out.iter().map(|s| s.session.id).collect();
        v.sort();
        v
    }

    #[test]
    fn wildcards_and_dollar() {
        let r = Router::default();
        sub(&r, 1, "a/b");
        sub(&r, 2, "a/+");
        sub(&r, 3, "#");
        sub(&r, 4, "a/#");
        sub(&r, 5, "$SYS/#");
        sub(&r, 6, "+/+/c");
        assert_eq!(ids(&r, "a/b"), vec![1, 2, 3, 4]);
        assert_eq!(ids(&r, "a"), vec![3, 4]);
        assert_eq!(ids(&r, "a/x/c"), vec![3, 4, 6]);
        assert_eq!(ids(&r, "$SYS/broker/uptime"), vec![5]);
        let mut out = Vec::new();
        r.matches("other", "a/b", &mut out);
        assert!(out.is_empty(), "tenants are isolated");
    }

    #[test]
    fn unsubscribe_prunes() {
        let r = Router::default();
        sub(&r, 1, "a/b/c");
        assert!(r.unsubscribe("default", &parse_filter("a/b/c", 32).unwrap(), 1));
        assert!(!r.unsubscribe("default", &parse_filter("a/b/c", 32).unwrap(), 1));
        assert!(r.tenants().is_empty());
    }

    #[test]
    fn shared_round_robin() {
        let r = Router::default();
        sub(&r, 1, "$share/g/t");
        sub(&r, 2, "$share/g/t");
        sub(&r, 3, "$share/h/t");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let v = ids(&r, "t");
            assert_eq!(v.len(), 2, "one member per group: {v:?}");
            assert!(v.contains(&3));
            seen.push(v[0]);
        }
        assert!(seen.contains(&1) && seen.contains(&2), "{seen:?}");
    }

    #[test]
    fn shared_groups_left_out_or_picked_alone() {
        let r = Router::default();
        sub(&r, 1, "$share/g/t/+");
        sub(&r, 2, "t/x");
        let mut out = Vec::new();
        r.matches_with("default", "t/x", false, &mut out);
        assert_eq!(out.iter().map(|s| s.session.id).collect::<Vec<_>>(), [2]);
        assert_eq!(r.pick_shared("default", "g", "t/+").unwrap().session.id, 1);
        assert!(r.pick_shared("default", "g", "t/x").is_none());
        assert!(r.pick_shared("default", "h", "t/+").is_none());
        assert!(r.pick_shared("other", "g", "t/+").is_none());
    }

    #[test]
    fn deep_topics() {
        let r = Router::default();
        sub(&r, 1, "#");
        let topic = vec!["x"; 40].join("/");
        assert_eq!(ids(&r, &topic), vec![1]);
    }
}
